// savepoint/selection.hpp — which checkpoint to load.
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
// Which checkpoints to keep (retention) is in retention.hpp.
#pragma once

#include <savepoint/checkpoint.hpp>

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

namespace detail {
/// Ranks `candidates` best first by `selector` (the predicate and has-key filter applied);
/// recency breaks ties. Exposed for the Checkpointer and the CLI.
std::vector<Checkpoint> rank(std::vector<Checkpoint> candidates, const Selector& selector);
/// The same, without copying checkpoints (for scans over thousands of them).
std::vector<const Checkpoint*> rank_pointers(const std::vector<const Checkpoint*>& candidates,
                                            const Selector& selector);
/// Numeric value of meta[key] if it is a finite number.
std::optional<double> finite_metric(const Checkpoint& c, const std::string& key);
}  // namespace detail

}  // namespace savepoint
