// savepoint/retention.hpp — which checkpoints to keep when old ones are deleted.
//
// Two vocabularies, freely combined; a checkpoint survives if anything keeps it.
//
// SpeechBrain's keep rules (KeepOptions), for save_and_keep_only / delete_checkpoints:
//     savepoint::keep(2).min_key("loss")       the 2 lowest-loss and the 2 newest
// For each key (each min/max/importance key, plus recency when keep_recent) the best
// num_to_keep checkpoints are protected; the union is kept. A checkpoint may be deleted only
// if `predicate` (read: "may be deleted") accepts it and some key ranks it.
//
// Named policies (what SuperGradients, Lightning, Orbax and TF users know), joined with `|`:
//     savepoint::keep_latest(3)                      the 3 newest
//     savepoint::keep_best(2, savepoint::min_key("val_loss"))   NaN/inf never count as best
//     savepoint::keep_every_nth_epoch(10)            meta["epoch"] % 10 == 0, forever
//     savepoint::keep_epochs({1, 50, 100})           SuperGradients' save_ckpt_epoch_list
//     savepoint::keep_every_hours(6)                 one per 6 hours of run time (TF)
//     savepoint::keep_if(predicate)                  anything else
//   ckpt.save_and_keep_only(meta, savepoint::keep_latest(3) | savepoint::keep_every_nth_epoch(10));
//   ckpt.save_and_keep_only(meta, savepoint::keep(2).min_key("loss").also(savepoint::keep_epochs({5})));
//
// Pinned checkpoints (Checkpointer::pin, SaveOptions::pinned) are never deleted by retention.
// The newest checkpoint (the one recover_if_possible() resumes from) is never deleted by
// retention either, whatever the rules, unless the caller asks for that explicitly: keep(0)
// (num_to_keep 0 with keep_recent and no policy that keeps anything), keep_latest(0), or
// KeepOptions::keep_newest(false). So keep_best(2, min_key("loss")) alone cannot delete the
// checkpoint it was just given and make the next recovery resume from an older epoch.
#pragma once

#include <savepoint/checkpoint.hpp>
#include <savepoint/detail/arg.hpp>
#include <savepoint/log.hpp>
#include <savepoint/selection.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace savepoint {

/// A named rule that picks checkpoints to keep. Compose with `|` (kept if either keeps).
class KeepPolicy {
 public:
  /// Given every committed checkpoint (oldest first), returns the paths to keep.
  using Fn = std::function<std::set<std::filesystem::path>(const std::vector<Checkpoint>&)>;
  KeepPolicy(std::string description, Fn fn);

  std::set<std::filesystem::path> kept(const std::vector<Checkpoint>& oldest_first) const;
  /// E.g. "latest 3 | every 10th epoch", for logs and the CLI.
  const std::string& description() const noexcept { return description_; }

  friend KeepPolicy operator|(KeepPolicy a, KeepPolicy b);

  /// Does this policy explicitly give up the newest checkpoint (keep_latest(0))? A union
  /// does only if every part does.
  bool releases_newest() const noexcept { return releases_newest_; }
  KeepPolicy& releases_newest(bool value) & {
    releases_newest_ = value;
    return *this;
  }

 private:
  std::string description_;
  bool releases_newest_ = false;
  std::vector<Fn> parts_;
};

KeepPolicy keep_latest(int n);
/// The n best by `selector`'s metric (min_key, max_key or importance_key, with its where()).
KeepPolicy keep_best(int n, Selector selector);
/// Checkpoints whose integer meta[key] is a multiple of n.
KeepPolicy keep_every_nth_epoch(std::int64_t n, std::string key = "epoch");
/// Checkpoints whose integer meta[key] is in `values`.
KeepPolicy keep_epochs(std::vector<std::int64_t> values, std::string key = "epoch");
/// The oldest checkpoint, then each first one at least `hours` after the last one so kept.
KeepPolicy keep_every_hours(double hours);
KeepPolicy keep_if(Predicate keep);

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
  /// Protect the newest checkpoint whatever the other rules say. Unset: protected, except
  /// when the rules ask for zero recent checkpoints (keep(0), keep_latest(0)).
  SAVEPOINT_ARG(std::optional<bool>, keep_newest);
  /// Log level of the "Deleted checkpoint" messages.
  SAVEPOINT_ARG(LogLevel, verbosity) = LogLevel::info;

 public:
  KeepOptions() = default;
  /// Only the policy decides: every checkpoint it does not keep may be deleted.
  KeepOptions(KeepPolicy policy);  // NOLINT(google-explicit-constructor): keep_latest(3) reads as options
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
  /// Additionally keeps what `policy` keeps.
  KeepOptions& also(KeepPolicy policy) {
    policies_.push_back(std::move(policy));
    return *this;
  }
  const std::vector<KeepPolicy>& policies() const noexcept { return policies_; }

 private:
  std::vector<KeepPolicy> policies_;
};

/// Shorthand: savepoint::keep(2).min_key("loss"). keep(0) deletes every candidate, the
/// newest included.
inline KeepOptions keep(int num_to_keep) { return KeepOptions().num_to_keep(num_to_keep); }

namespace detail {
/// The checkpoints `keep` would delete from `all` (committed, any order). Pinned ones never,
/// the newest one only when `keep` releases it (see the top of this header).
std::vector<Checkpoint> deletion_set(const std::vector<Checkpoint>& all, const KeepOptions& keep);
}  // namespace detail

}  // namespace savepoint
