// savepoint/checkpointer.hpp — the Checkpointer: a registry of recoverables and a checkpoint
// directory.
//
//   savepoint::Checkpointer ckpt("runs/exp1/save");
//   ckpt.add_recoverable("model", net);          // torch::nn::Module (holder, shared_ptr or ref)
//   ckpt.add_recoverable("optimizer", opt);      // any torch::optim optimizer, lr included
//   ckpt.add_recoverable("epochs", epochs);      // savepoint::EpochCounter
//   ckpt.recover_if_possible();                  // newest valid checkpoint, if any
//   ...
//   ckpt.save_and_keep_only({{"loss", loss}}, savepoint::keep(2).min_key("loss"));
//
// Lifetime: objects added by reference must outlive every save/load that uses them; objects
// given as std::shared_ptr or module holders are kept alive by the Checkpointer.
// Thread safety: one Checkpointer is used from one thread at a time (saves, loads and
// registry changes are not synchronised against each other); an async save's background
// thread touches only its own snapshot and the directory. Several processes may read a
// directory; only one may write to it (an advisory lock file enforces it, see LockError).
// Durability: a save is atomic. It is written into a hidden temporary directory, every file
// and the directory are fsync'ed, and it is renamed into place; a failed or interrupted save
// leaves every earlier checkpoint intact and is never listed.
#pragma once

#include <savepoint/checkpoint.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/hooks.hpp>
#include <savepoint/log.hpp>
#include <savepoint/options.hpp>
#include <savepoint/retention.hpp>
#include <savepoint/scrub.hpp>
#include <savepoint/selection.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <future>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace savepoint {

class Checkpointer {
 public:
  explicit Checkpointer(std::filesystem::path directory, CheckpointerOptions options = {});
  Checkpointer(std::filesystem::path directory, std::initializer_list<Recoverable> recoverables,
               CheckpointerOptions options = {});
  ~Checkpointer();
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;
  Checkpointer(Checkpointer&&) noexcept;
  Checkpointer& operator=(Checkpointer&&) noexcept;

  // ---- registry (insertion order; re-adding a key replaces it in place)
  template <class T>
  void add_recoverable(std::string key, T&& object, RecoverableOptions options = {}) {
    add_recoverable(Recoverable(std::move(key), std::forward<T>(object), options));
  }
  /// With per-object hooks: save(T&, path) and load(T&, path, end_of_epoch).
  template <class T, class SaveFn, class LoadFn>
  void add_recoverable(std::string key, T&& object, SaveFn save, LoadFn load,
                       RecoverableOptions options = {}) {
    add_recoverable(Recoverable(std::move(key), std::forward<T>(object), std::move(save), std::move(load),
                    options));
  }
  /// ckpt.add_recoverables({{"opt", opt}, {"epochs", epochs}});
  void add_recoverables(std::initializer_list<Recoverable> recoverables);
  /// A collection known at run time: any range of (key, object) pairs, e.g.
  ///   std::map<std::string, torch::nn::Linear> heads;  ckpt.add_recoverables(heads);
  /// Each element is registered as add_recoverable(key, element.second) would: module holders
  /// and shared_ptrs by shared ownership, anything else by reference (the range must then
  /// outlive the Checkpointer's use of it; a temporary range does not compile).
  template <class Range, class = decltype(std::get<1>(*std::begin(std::declval<Range&>())))>
  void add_recoverables(Range& pairs) {
    for (auto& pair : pairs) add_recoverable(std::string(std::get<0>(pair)), std::get<1>(pair));
  }
  /// An object already bound to its hooks (savepoint::Recoverable).
  void add_recoverable(Recoverable recoverable);
  [[deprecated("use add_recoverable(recoverable)")]] void add(Recoverable recoverable) {
    add_recoverable(std::move(recoverable));
  }
  /// Removes a key; returns whether it was registered.
  bool remove_recoverable(const std::string& key);
  std::vector<std::string> keys() const;

  // ---- saving
  /// Writes a new checkpoint of every recoverable and returns it. `meta` must be a JSON
  /// object; the keys "unixtime" and "end_of_epoch" are reserved.
  Checkpoint save_checkpoint(const nlohmann::json& meta = nlohmann::json::object(),
                             const SaveOptions& options = {});
  /// save_checkpoint, then delete_checkpoints(keep). Returns the saved checkpoint (which
  /// retention itself may have removed, e.g. with num_to_keep(0)).
  Checkpoint save_and_keep_only(const nlohmann::json& meta = nlohmann::json::object(),
                                const KeepOptions& keep = {}, const SaveOptions& options = {});

  // ---- saving in the background
  /// Snapshots every recoverable and returns; a background thread then writes, commits and
  /// (for the keep-only variant) applies retention after the commit. Tensors are copied into
  /// reusable host buffers (pinned for CUDA tensors), JSON values are serialized; objects
  /// with their own file-writing hooks are written before the call returns. At most one save
  /// is in flight: the next save (sync or async), delete, pin or wait() waits for it, and a
  /// background failure is raised there. The destructor waits too (and logs an unobserved
  /// failure). Keep predicates and importance functions run on the background thread.
  void save_checkpoint_async(const nlohmann::json& meta = nlohmann::json::object(),
                             const SaveOptions& options = {});
  void save_and_keep_only_async(const nlohmann::json& meta = nlohmann::json::object(),
                                const KeepOptions& keep = {}, const SaveOptions& options = {});
  /// Blocks until the save in flight (if any) is committed; returns the checkpoint committed
  /// by the last async save since the previous wait(), or rethrows its failure.
  std::optional<Checkpoint> wait();
  /// The guard of an overlapped async save (CheckpointerOptions::async_snapshot): call it
  /// after save_checkpoint_async and before the optimizer step or any other in-place change
  /// to saved tensors. It copies what the background has not copied yet (on this thread) and
  /// checks that no saved tensor changed since the call; a change fails that save (raised by
  /// wait() or the next save, nothing committed). Returns at once when nothing is pending.
  /// Loads and every call that waits for the save in flight act as the guard too; a save
  /// whose guard never ran is checked again just before its commit.
  void before_update();

  // ---- the memory tier (CheckpointerOptions::memory_tier; docs/distributed.md)
  /// Snapshots every recoverable as save_checkpoint_async does (the same one save in flight,
  /// the same snapshot modes) into the memory tier; the background thread then writes this
  /// node's part, copies it to the buddy node, agrees with every rank that every part and
  /// copy is in place (then the checkpoint is complete), drops the memory checkpoints `keep`
  /// no longer covers, and every `persist_every` complete ones persists the newest to this
  /// directory. Collective. Logged at debug level. Of `options` only end_of_epoch is used (a
  /// memory checkpoint is never named, overwritten or pinned). UsageError without a memory tier.
  /// Returns true; false for a call skipped by MemoryTierOptions::skip_while_busy (on every rank).
  bool save_to_memory(const nlohmann::json& meta = nlohmann::json::object(), const SaveOptions& options = {});
  /// Persists the newest complete memory checkpoint to this directory now (on preemption,
  /// say), after the save in flight; returns it, or nullopt when there is none. Collective.
  std::optional<Checkpoint> persist_memory_checkpoint();

  // ---- finding
  /// Every committed checkpoint with a valid meta.json, oldest first.
  std::vector<Checkpoint> list_checkpoints() const;
  /// Best first by `selector`; at most `max_num_checkpoints` when given.
  std::vector<Checkpoint> find_checkpoints(const Selector& selector = {},
                                           std::optional<std::size_t> max_num_checkpoints = {}) const;
  std::optional<Checkpoint> find_checkpoint(const Selector& selector = {}) const;

  // ---- loading
  /// Loads the best checkpoint by `selector` (default: most recent). A checkpoint that fails
  /// verification is skipped with a warning and the next best is tried (unless
  /// strict_recovery). Returns the loaded checkpoint, or nullopt when there is none.
  /// With a memory tier and the default selector, the newest complete memory checkpoint that
  /// the surviving nodes hold is loaded (its path: the node's memory recovery directory),
  /// unless this directory has a newer one; else this directory's, as without the tier.
  std::optional<Checkpoint> recover_if_possible(const Selector& selector = {});
  /// For evaluation (SpeechBrain's on_evaluate_start): loads the best checkpoint by
  /// `selector`, e.g. savepoint::min_key("val_loss"), with the same fallback over damaged
  /// ones; throws CheckpointError when there is none. Deletes and changes nothing on disk.
  Checkpoint load_best(const Selector& selector);
  /// Verifies every file, prepares every object, then applies: a failure leaves every
  /// registered object untouched (for built-in hooks).
  void load_checkpoint(const Checkpoint& checkpoint);

  // ---- deleting
  // Every operation taking a Checkpoint value (load, verify, delete, pin, unpin) first checks
  // that its directory still holds that checkpoint (same sequence number) and throws
  // StaleCheckpointError when it was deleted or replaced since: a directory name and a
  // sequence number are never reused within a root.
  /// Deletes what `keep` does not protect; returns the deleted checkpoints.
  std::vector<Checkpoint> delete_checkpoints(const KeepOptions& keep);
  /// What delete_checkpoints(keep) would delete now, deleting nothing (prune --dry-run).
  std::vector<Checkpoint> plan_deletions(const KeepOptions& keep) const;
  void delete_checkpoint(const Checkpoint& checkpoint);
  /// Protects a checkpoint from retention (GoMLX's backups, Orbax's preservation): writes a
  /// PINNED file into its directory. delete_checkpoint still deletes it when asked directly.
  /// Returns the checkpoint with `pinned` updated.
  Checkpoint pin(const Checkpoint& checkpoint);
  Checkpoint unpin(const Checkpoint& checkpoint);

  // ---- integrity
  /// Everything wrong with a checkpoint's files (missing, size or checksum mismatch, bad meta);
  /// empty means it is intact.
  std::vector<Problem> verify(const Checkpoint& checkpoint) const;
  /// Directories that look like checkpoints but whose meta.json cannot be trusted.
  std::vector<Problem> unreadable_checkpoints() const;
  /// Checks every committed checkpoint's files, each distinct file once: incremental saves
  /// hard-link unchanged parts, so one damaged file breaks every checkpoint that holds it, and
  /// each damage is reported with all of them. Missing and wrong-size files are found by stat
  /// even when options.subset_percent reads only a share. Reads every meta.json again (a
  /// damaged one is in `unreadable`) and changes nothing: works read-only, waits for no save,
  /// and leaves out checkpoints deleted meanwhile.
  ScrubReport scrub(const ScrubOptions& options = {}) const;
  /// scrub() on a thread of its own at the lowest CPU and I/O priority (nice 19, idle I/O
  /// class, on Linux), so it can run beside training. The future does not refer to this
  /// Checkpointer and stays valid after it is destroyed; it holds a failure as an exception.
  /// Destroying the future waits for the scrub (std::async).
  std::future<ScrubReport> scrub_in_background(ScrubOptions options = {}) const;

  const std::filesystem::path& directory() const noexcept;
  CheckpointerOptions& options() noexcept;
  const CheckpointerOptions& options() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace savepoint
