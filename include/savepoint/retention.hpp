// savepoint/retention.hpp — which checkpoints to keep when old ones are deleted.
//
// One type, KeepOptions, says what to keep; every rule is one, and rules combine with `|`
// (or .also()): a checkpoint survives if any rule keeps it.
//
// SpeechBrain's keep rules, for save_and_keep_only / delete_checkpoints:
//     savepoint::keep(2).min_key("loss")       the 2 lowest-loss and the 2 newest
// For each key (each min/max/importance key, plus recency when keep_recent) the best
// num_to_keep checkpoints are protected; the union is kept. A checkpoint may be deleted only
// if `predicate` (read: "may be deleted") accepts it and some key ranks it.
//
// Named rules (what SuperGradients, Lightning, Orbax and TF users know):
//     savepoint::keep_latest(3)                      the 3 newest
//     savepoint::keep_best(2, savepoint::min_key("val_loss"))   NaN/inf never count as best
//     savepoint::keep_every_nth_epoch(10)            meta["epoch"] % 10 == 0, forever
//     savepoint::keep_epochs({1, 50, 100})           SuperGradients' save_ckpt_epoch_list
//     savepoint::keep_every_hours(6)                 one per 6 hours of run time (TF)
//     savepoint::keep_if(predicate)                  anything else
//   ckpt.save_and_keep_only(meta, savepoint::keep_latest(3) | savepoint::keep_every_nth_epoch(10));
//   ckpt.save_and_keep_only(meta, savepoint::keep(2).min_key("loss") | savepoint::keep_epochs({5}));
// (KeepPolicy, the former name of a named rule, is a deprecated alias of KeepOptions.)
//
// Pinned checkpoints (Checkpointer::pin, SaveOptions::pinned) are never deleted by retention.
// The newest checkpoint (the one recover_if_possible() resumes from) is never deleted by
// retention either, whatever the rules, unless the caller asks for that explicitly: keep(0)
// (num_to_keep 0 with keep_recent and no rule that keeps anything), keep_latest(0), or
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
  /// Log level of retention's one line: how many it kept, by which rules, what it deleted.
  SAVEPOINT_ARG(LogLevel, verbosity) = LogLevel::info;

 public:
  /// A rule: given every committed checkpoint (oldest first), the paths it keeps.
  using Fn = std::function<std::set<std::filesystem::path>(const std::vector<Checkpoint>&)>;

  KeepOptions() = default;
  /// A named rule alone (what keep_latest, keep_best... return): every checkpoint it does not
  /// keep may be deleted. `description` is for logs and the CLI ("latest 3").
  KeepOptions(std::string description, Fn rule);

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
  /// Additionally keeps what `other` keeps (its keys protect what they protect on their own;
  /// its predicate, keep_newest and verbosity are not taken over). The same as `*this | other`.
  KeepOptions& also(const KeepOptions& other);
  friend KeepOptions operator|(KeepOptions a, const KeepOptions& b) {
    a.also(b);
    return a;
  }

  /// What this keeps, in words: "2 lowest loss, 2 newest | every 10th epoch".
  std::string description() const;
  /// The checkpoints the named rules keep, given every committed one oldest first (the
  /// SpeechBrain keys of this object excluded: they decide with the deletion, see the top).
  std::set<std::filesystem::path> kept(const std::vector<Checkpoint>& oldest_first) const;
  bool has_rules() const noexcept { return !rules_.empty(); }
  /// Do the rules explicitly give up the newest checkpoint (keep(0), keep_latest(0))? A union
  /// does only if every part does; keep_newest() overrides.
  bool releases_newest() const;
  KeepOptions& releases_newest(bool value) &;

 private:
  struct Rule {
    std::string description;
    Fn keep;
    bool releases_newest = false;
  };
  std::vector<Rule> rules_;
  bool rule_only_ = false;  // made by KeepOptions(description, rule): no SpeechBrain keys of its own
};

/// Deprecated: the former name of a named rule; every rule is a KeepOptions now.
using KeepPolicy [[deprecated("use savepoint::KeepOptions: every retention rule is one")]] = KeepOptions;

KeepOptions keep_latest(int n);
/// The n best by `selector`'s metric (min_key, max_key or importance_key, with its where()).
KeepOptions keep_best(int n, Selector selector);
/// Checkpoints whose integer meta[key] is a multiple of n.
KeepOptions keep_every_nth_epoch(std::int64_t n, std::string key = "epoch");
/// Checkpoints whose integer meta[key] is in `values`.
KeepOptions keep_epochs(std::vector<std::int64_t> values, std::string key = "epoch");
/// The oldest checkpoint, then each first one at least `hours` after the last one so kept.
KeepOptions keep_every_hours(double hours);
KeepOptions keep_if(Predicate keep);

/// Shorthand: savepoint::keep(2).min_key("loss"). keep(0) deletes every candidate, the
/// newest included.
inline KeepOptions keep(int num_to_keep) { return KeepOptions().num_to_keep(num_to_keep); }

}  // namespace savepoint
