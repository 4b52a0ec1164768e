// engine/catalog.hpp — the checkpoints of one root directory: listing (with a meta.json
// cache), where the next one goes, identity checks, deletion, pinning, the retention plan.
#pragma once

#include <savepoint/checkpoint.hpp>
#include <savepoint/detail/io.hpp>
#include <savepoint/options.hpp>
#include <savepoint/retention.hpp>

#include <filesystem>
#include <memory>
#include <optional>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace savepoint::engine {

namespace fs = std::filesystem;

/// "<pid>-<counter>-<random>": names temporary and trash directories uniquely.
std::string unique_suffix();

class Catalog {
 public:
  using Shared = std::shared_ptr<const Checkpoint>;

  /// `lock` is null for a read-only Catalog (it can list and read, never change anything).
  Catalog(fs::path root, std::shared_ptr<detail::DirectoryLock> lock);
  const fs::path& root() const noexcept { return root_; }
  bool writable() const noexcept { return lock_ != nullptr; }
  /// An s3:// root: no rename, no fsync, no hard links; commits by a conditional create.
  bool in_store() const noexcept { return in_store_; }
  const std::shared_ptr<detail::DirectoryLock>& lock() const noexcept { return lock_; }

  /// Every committed checkpoint with a valid meta.json, oldest first. A damaged or unreadable
  /// one is reported in `unreadable` (else logged) and left out. With `strict`, an I/O error
  /// reading any of them throws instead: what a new sequence number is allocated from must
  /// not have missed a checkpoint.
  std::vector<Shared> list(std::vector<Problem>* unreadable = nullptr, bool strict = false) const;

  /// Where the next checkpoint goes and its sequence number: after every listed one, every
  /// deleted one (the lock file's high-water mark) and every one ever allocated (the lock
  /// file's allocated mark, so also after a checkpoint the listing missed), so a directory
  /// name or a sequence number is never reused within a root.
  struct Slot {
    fs::path path;
    std::uint64_t sequence = 0;
  };
  Slot allocate(const SaveOptions& options, const std::vector<Shared>& existing, double unixtime) const;
  /// Fails early when the next checkpoint would not fit (estimated from the newest one).
  /// `bytes`: what the save will write (an incremental save's estimate); else the last one's size.
  void check_free_space(const std::vector<Shared>& existing, std::optional<std::uint64_t> bytes = std::nullopt) const;
  /// Removes temporary and trash directories left by crashed saves and deletions; in an object
  /// store, the objects of saves that never committed (clean_orphans).
  void clean_stale() const;
  /// An object store's clean-up: every name with a claim or objects but no meta.json, whose
  /// newest object is at least ObjectStoreOptions::orphan_grace old by the server's clock, is
  /// removed (a save in progress writes an object at least that often). Returns how many.
  std::size_t clean_orphans() const;

  /// `checkpoint` as it is on disk now. Throws StaleCheckpointError when its directory was
  /// deleted or now holds another checkpoint (another sequence number), UsageError when it is
  /// not a checkpoint of this root (unless `any_root`: loading may read another root's).
  Checkpoint current(const Checkpoint& checkpoint, bool any_root = false) const;
  /// Deletes a checkpoint (identity checked): renamed away atomically, then removed.
  void remove(const Checkpoint& checkpoint);
  /// Writes or removes its PINNED file; returns it as it now is.
  Checkpoint set_pinned(const Checkpoint& checkpoint, bool pinned);

  /// The one retention planner (save_and_keep_only, delete_checkpoints, the CLI's prune and
  /// prune --dry-run): what `keep` deletes now. A checkpoint whose files are missing or of
  /// the wrong size never counts as kept and is not deleted (left for inspection).
  /// `*note` (if given): what retention kept beyond `keep`'s rules, and why (engine/sharing.hpp).
  std::vector<Checkpoint> plan_deletions(const KeepOptions& keep, std::string* note = nullptr) const;
  /// Retention now: deletes what plan_deletions(keep) names and logs one line at
  /// keep.verbosity() (what was kept, by which rule, what was deleted). Returns the deleted.
  /// Every retention of committed checkpoints runs this (after a save, a persist, a prune).
  std::vector<Checkpoint> retain(const KeepOptions& keep);

 private:
  /// Whether the name `path` is free for a new checkpoint; in an object store, it is claimed.
  bool claim(const fs::path& path) const;
  Shared read_cached(const fs::path& dir, const std::string& name, const detail::FileStatus& st) const;
  void forget(const fs::path& dir) const;
  void require_writable(const char* operation) const;

  fs::path root_;
  std::shared_ptr<detail::DirectoryLock> lock_;
  bool in_store_ = false;  // an s3:// root (detail/object_store.hpp)
  // Parsed meta.json by directory name, valid while the directory's identity (inode, mtime,
  // ctime) is unchanged: a listing re-reads only what changed. A committed directory never
  // changes except for PINNED (which changes its mtime); replacing it gives a new inode.
  struct CachedMeta {
    detail::FileStatus status;
    Shared checkpoint;
  };
  mutable std::mutex cache_mutex_;  // the async saver lists too
  mutable std::unordered_map<std::string, CachedMeta> cache_;
  mutable std::vector<std::string> uncommitted_;  // object store: names without meta.json, at the last list()
};

}  // namespace savepoint::engine
