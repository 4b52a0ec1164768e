// savepoint/detail/arg.hpp — the options-class idiom shared by every *Options class.
#pragma once

// Setter/getter pairs in LibTorch's TORCH_ARG style: options.num_to_keep(3), options.num_to_keep().
#define SAVEPOINT_ARG(T, name)                              \
 public:                                                    \
  auto name(const T& new_##name)->decltype(*this) {         \
    this->name##_ = new_##name;                             \
    return *this;                                           \
  }                                                         \
  const T& name() const noexcept { return this->name##_; } \
                                                            \
 private:                                                   \
  T name##_
