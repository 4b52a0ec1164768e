// savepoint/selection.hpp — which checkpoint to load, which to keep.
//
// Selectors (for find_checkpoint / recover_if_possible / load):
//     savepoint::most_recent()                       the default
//     savepoint::min_key("loss")                     smallest meta["loss"]
//     savepoint::max_key("accuracy")                 largest meta["accuracy"]
//     savepoint::importance_key(fn)                  largest fn(checkpoint)
//     any of them .where(predicate)                  only checkpoints with predicate(c) == true
//     savepoint::where(predicate)                    most recent among those
// Only checkpoints whose meta has the key are ranked by min_key/max_key; a value that is not
// a finite number (NaN is stored as null, inf, strings) is never selected as best.
// Ties break by recency, newest first (recency = the save sequence number, never listing order).
//
// Keep rules (for save_and_keep_only / delete_checkpoints), SpeechBrain's semantics:
//     savepoint::KeepOptions().num_to_keep(2).min_keys({"loss"})
// For each key (each min/max/importance key, plus recency when keep_recent) the best
// num_to_keep checkpoints are protected; the union of those is kept. A checkpoint may be
// deleted only if `predicate` (meaning "may be deleted") accepts it and some key ranks it.
#pragma once

#include <savepoint/checkpoint.hpp>
#include <savepoint/log.hpp>

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace savepoint {

using Predicate = std::function<bool(const Checkpoint&)>;
/// Larger = more important. Returning NaN ranks the checkpoint last.
using ImportanceFn = std::function<double(const Checkpoint&)>;

struct Selector {
  std::optional<std::string> min_key;
  std::optional<std::string> max_key;
  ImportanceFn importance_key;
  Predicate predicate;  ///< only checkpoints for which it returns true are considered

  /// Adds (ANDs) a filter.
  Selector& where(Predicate p) &;
  Selector&& where(Predicate p) &&;
  /// Throws UsageError if more than one of min_key, max_key, importance_key is set.
  void validate() const;
};

Selector most_recent();
Selector min_key(std::string key);
Selector max_key(std::string key);
Selector importance_key(ImportanceFn fn);
Selector where(Predicate predicate);

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

class KeepOptions {
  /// How many checkpoints each key protects (0 allowed: delete every candidate).
  SAVEPOINT_ARG(int, num_to_keep) = 1;
  /// Also protect the num_to_keep most recent checkpoints.
  SAVEPOINT_ARG(bool, keep_recent) = true;
  SAVEPOINT_ARG(std::vector<std::string>, min_keys);
  SAVEPOINT_ARG(std::vector<std::string>, max_keys);
  SAVEPOINT_ARG(std::vector<ImportanceFn>, importance_keys);
  /// "May be deleted": checkpoints it rejects are never deleted. Empty = all may be.
  SAVEPOINT_ARG(Predicate, predicate);
  /// Log level of the "Deleted checkpoint" messages.
  SAVEPOINT_ARG(LogLevel, verbosity) = LogLevel::info;

 public:
  KeepOptions() = default;
  KeepOptions& min_key(std::string key) {
    min_keys_.push_back(std::move(key));
    return *this;
  }
  KeepOptions& max_key(std::string key) {
    max_keys_.push_back(std::move(key));
    return *this;
  }
  KeepOptions& importance_key(ImportanceFn fn) {
    importance_keys_.push_back(std::move(fn));
    return *this;
  }
};

/// Shorthand: savepoint::keep(2).min_key("loss").
inline KeepOptions keep(int num_to_keep) { return KeepOptions().num_to_keep(num_to_keep); }

namespace detail {
/// Ranks `candidates` best first by `selector` (the predicate and has-key filter applied);
/// recency breaks ties. Exposed for the Checkpointer and the CLI.
std::vector<Checkpoint> rank(std::vector<Checkpoint> candidates, const Selector& selector);
/// The checkpoints `keep` would delete from `all` (already committed, any order).
std::vector<Checkpoint> deletion_set(const std::vector<Checkpoint>& all, const KeepOptions& keep);
/// Numeric value of meta[key] if it is a finite number.
std::optional<double> finite_metric(const Checkpoint& c, const std::string& key);
}  // namespace detail

}  // namespace savepoint
