// The examples' proof of an exact resume: XXH3-64 over every byte of the training state, in a
// fixed order: the module's parameters and buffers (by name), then the optimizer's state param
// group by param group, parameter by parameter (Adam's step, exp_avg, exp_avg_sq,
// max_exp_avg_sq) and each group's learning rate; each tensor made contiguous on the CPU.
// Two runs print the same hash exactly when all of it is bit-identical (scripts/run-examples.sh
// and scripts/ddp-demo.sh compare it).
#pragma once

#include <torch/torch.h>

#include <cstdio>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

#define XXH_INLINE_ALL  // header-only, as savepoint itself uses xxhash
#include <xxhash.h>

struct StateHash {
  std::string hex;  // 16 hex digits
  int tensors = 0;  // how many tensors it covers
};

// The key of a parameter's state in Optimizer::state(): LibTorch 1.13 keys it by the address
// printed as a string, 2.x by the address itself.
template <class Map>
auto optimizer_state_key(const Map&, const torch::Tensor& param) {
  using Key = typename Map::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream os;
    os << param.unsafeGetTensorImpl();
    return os.str();
  } else {
    return static_cast<Key>(param.unsafeGetTensorImpl());
  }
}

inline StateHash state_hash(const torch::nn::Module& net, torch::optim::Adam& opt) {
  XXH3_state_t h;
  XXH3_64bits_reset(&h);
  StateHash out;
  const auto tensor = [&](const torch::Tensor& t) {
    if (!t.defined()) return;  // max_exp_avg_sq without amsgrad
    const auto c = t.detach().to(torch::kCPU).contiguous();
    XXH3_64bits_update(&h, c.data_ptr(), static_cast<std::size_t>(c.numel()) * c.element_size());
    ++out.tensors;
  };
  const auto value = [&](const auto& v) { XXH3_64bits_update(&h, &v, sizeof v); };
  for (const auto& p : net.named_parameters()) tensor(p.value());
  for (const auto& b : net.named_buffers()) tensor(b.value());
  std::size_t states = 0;
  for (auto& group : opt.param_groups()) {
    for (const auto& p : group.params()) {
      const auto it = opt.state().find(optimizer_state_key(opt.state(), p));
      if (it == opt.state().end()) continue;  // no step taken for it yet
      ++states;
      const auto& s = static_cast<const torch::optim::AdamParamState&>(*it->second);
      value(s.step());
      tensor(s.exp_avg());
      tensor(s.exp_avg_sq());
      tensor(s.max_exp_avg_sq());
    }
    value(group.options().get_lr());
  }
  // Every state found by its parameter: none left out of the hash.
  if (states != opt.state().size()) throw std::runtime_error("state_hash: an optimizer state of no parameter");
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(XXH3_64bits_digest(&h)));
  out.hex = text;
  return out;
}
