#include "catalog.hpp"
#include "sharing.hpp"

#include "retention.hpp"

#include <savepoint/detail/meta.hpp>
#include <savepoint/detail/object_store.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <atomic>
#include <random>
#include <unordered_set>

namespace savepoint::engine {

using namespace detail;

std::string unique_suffix() {
  static std::atomic<unsigned> counter{0};
  std::random_device rd;
  return fmt::format("{}-{}-{:08x}", ::getpid(), counter.fetch_add(1), rd());
}

namespace {
bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

// "<pid>-<counter>-<8 hex digits>", exactly what unique_suffix() makes.
bool is_unique_suffix(const std::string& s) {
  std::size_t i = 0;
  for (int field = 0; field < 2; ++field) {
    const std::size_t start = i;
    while (i < s.size() && ::isdigit(static_cast<unsigned char>(s[i]))) ++i;
    if (i == start || i >= s.size() || s[i] != '-') return false;
    ++i;
  }
  if (s.size() - i != 8) return false;
  for (; i < s.size(); ++i)
    if (!::isdigit(static_cast<unsigned char>(s[i])) && (s[i] < 'a' || s[i] > 'f')) return false;
  return true;
}

// "CKPT+2026-11-23+18-56-00+07" -> stem "CKPT+2026-11-23+18-56-00", number 7.
bool split_timestamp_name(const std::string& name, std::string& stem, long& number) {
  const auto plus = name.rfind('+');
  if (plus == std::string::npos || plus + 1 >= name.size()) return false;
  const std::string digits = name.substr(plus + 1);
  if (digits.size() > 9 || !std::all_of(digits.begin(), digits.end(), ::isdigit)) return false;
  stem = name.substr(0, plus);
  number = std::stol(digits);
  return true;
}
}  // namespace

Catalog::Catalog(fs::path root, std::shared_ptr<DirectoryLock> lock)
    : root_(std::move(root)), lock_(std::move(lock)), in_store_(is_object_store_path(root_)) {}

bool Catalog::claim(const fs::path& path) const {
  if (!in_store_) return !path_status(path);
  // The name is this save's once its claim object exists: two writers of one prefix never
  // upload into the same name (docs/object-storage.md, "The commit").
  return create_object_if_absent(path / kClaimFile,
                                 fmt::format("claimed by pid {} on {} at unixtime {:.6f} ({})\n", ::getpid(), host_name(),
                                             now_unixtime(), unique_suffix()));
}

void Catalog::require_writable(const char* operation) const {
  if (!lock_) {
    throw UsageError(fmt::format("savepoint: cannot {} in '{}': the Checkpointer is read-only",
                                 operation, root_.string()));
  }
}

Catalog::Shared Catalog::read_cached(const fs::path& dir, const std::string& name, const FileStatus& st) const {
  {
    std::lock_guard<std::mutex> guard(cache_mutex_);
    const auto it = cache_.find(name);
    if (it != cache_.end() && it->second.status.same_identity(st)) return it->second.checkpoint;
  }
  auto c = std::make_shared<const Checkpoint>(read_checkpoint(dir));
  std::lock_guard<std::mutex> guard(cache_mutex_);
  cache_[name] = CachedMeta{st, c};
  return c;
}

void Catalog::forget(const fs::path& dir) const {
  std::lock_guard<std::mutex> guard(cache_mutex_);
  cache_.erase(dir.filename().string());
}

std::vector<Catalog::Shared> Catalog::list(std::vector<Problem>* unreadable, bool strict) const {
  std::vector<Shared> out;
  std::vector<std::string> uncommitted;
  std::unordered_set<std::string> seen;
  for (const auto& entry : list_directory(root_, kCheckpointPrefix)) {
    if (entry.status.type != FileType::directory) continue;  // files, symlinks
    seen.insert(entry.name);
    const fs::path path = root_ / entry.name;
    try {
      out.push_back(read_cached(path, entry.name, entry.status));
    } catch (const IoError& e) {
      // In an object store, a name without meta.json is a save in progress or one that never
      // committed: not a checkpoint, and nothing to warn about (clean_stale removes it).
      if (e.error_code() == ENOENT && in_store_) {
        uncommitted.push_back(entry.name);
        continue;
      }
      // A directory without meta.json is no checkpoint (ENOENT); any other read error may
      // hide one, which a save allocating a sequence number must not overlook.
      if (strict && e.error_code() != ENOENT) throw;
      if (unreadable) unreadable->push_back({"", path / kMetaFileName, e.what()});
      else detail::log(LogLevel::warn, "Ignoring '{}': {}", path.string(), e.what());
    } catch (const Error& e) {
      if (unreadable) unreadable->push_back({"", path / kMetaFileName, e.what()});
      else detail::log(LogLevel::warn, "Ignoring '{}': {}", path.string(), e.what());
    }
  }
  {  // forget deleted checkpoints
    std::lock_guard<std::mutex> guard(cache_mutex_);
    for (auto c = cache_.begin(); c != cache_.end();) c = seen.count(c->first) ? std::next(c) : cache_.erase(c);
    uncommitted_ = std::move(uncommitted);
  }
  std::sort(out.begin(), out.end(), [](const Shared& a, const Shared& b) {
    if (a->sequence != b->sequence) return a->sequence < b->sequence;
    return a->path < b->path;
  });
  return out;
}

Catalog::Slot Catalog::allocate(const SaveOptions& options, const std::vector<Shared>& existing,
                                double unixtime) const {
  const HighWater mark = lock_ ? lock_->high_water() : HighWater{};
  Slot slot;
  slot.sequence = std::max(mark.sequence, lock_ ? lock_->allocated() : 0) + 1;
  for (const auto& c : existing) slot.sequence = std::max(slot.sequence, c->sequence + 1);

  if (!options.name().empty()) {
    const std::string& name = options.name();
    if (!is_plain_file_name(name) || name.find("..") != std::string::npos) {
      throw UsageError(fmt::format("savepoint: checkpoint name '{}' must be a plain name without "
                                   "'/', '..' or NUL",
                                   name));
    }
    slot.path = root_ / (std::string(kCheckpointPrefix) + name);
    if (in_store_ && options.overwrite()) {
      throw UsageError(fmt::format("savepoint: SaveOptions().overwrite(true) is not available in an object store "
                                   "('{}'): a committed meta.json is never replaced; delete the checkpoint first",
                                   root_.string()));
    }
    if (in_store_ ? !claim(slot.path) : (path_status(slot.path) && !options.overwrite())) {
      throw UsageError(fmt::format("savepoint: checkpoint '{}' already exists; pass "
                                   "SaveOptions().overwrite(true) to replace it",
                                   slot.path.string()));
    }
    return slot;
  }
  // CKPT+<second>+NN: NN continues after every name of that second, listed or deleted.
  const std::string stem = timestamp_dir_stem(unixtime);
  long next = 0;
  std::string s;
  long n = 0;
  if (split_timestamp_name(mark.name, s, n) && s == stem) next = std::max(next, n + 1);
  for (const auto& c : existing)
    if (split_timestamp_name(c->name(), s, n) && s == stem) next = std::max(next, n + 1);
  for (;; ++next) {
    slot.path = root_ / fmt::format("{}+{:02d}", stem, next);
    if (claim(slot.path)) return slot;
  }
}

void Catalog::check_free_space(const std::vector<Shared>& existing, std::optional<std::uint64_t> bytes) const {
  if (existing.empty()) return;
  std::uint64_t estimate = 0;
  if (bytes) estimate = *bytes;
  else
    for (const auto& f : existing.back()->files) estimate += f.bytes;
  estimate += estimate / 20 + (std::uint64_t{1} << 20);
  std::uint64_t free = 0;
  try {
    free = available_bytes(root_);
  } catch (const IoError&) {
    return;  // cannot tell: let the writes report ENOSPC if it happens
  }
  if (free < estimate) {
    throw IoError(fmt::format("not enough free space in '{}' for a new checkpoint: about {:.1f} "
                              "MiB needed (the bytes it will write, judged by the last one), {:.1f} MiB free; earlier "
                              "checkpoints are intact",
                              root_.string(), static_cast<double>(estimate) / (1 << 20),
                              static_cast<double>(free) / (1 << 20)),
                  root_, ENOSPC);
  }
}

void Catalog::clean_stale() const {
  // Ours: hidden directories recognised by name and by the marker (or a completed meta.json)
  // inside, or by the exact name a save gives them: a power cut may keep the directory but
  // lose the marker's entry (it is fsynced with the rest at the commit), and a temporary
  // directory must not outlive its crash (the crash-state explorer finds such leftovers).
  // Only called while holding the lock.
  if (in_store_) {
    (void)clean_orphans();
    return;
  }
  for (const auto& entry : list_directory(root_, ".savepoint-")) {
    const bool temp = starts_with(entry.name, kTempPrefix);
    const bool trash = starts_with(entry.name, kTrashPrefix);
    if ((!temp && !trash) || entry.status.type != FileType::directory) continue;
    const fs::path path = root_ / entry.name;
    try {
      if (temp && !is_unique_suffix(entry.name.substr(std::strlen(kTempPrefix))) && !path_status(path / kTempMarker) &&
          !path_status(path / kMetaFileName))
        continue;
      remove_tree(path);
      detail::log(LogLevel::info, "Removed '{}' left by an interrupted save or delete", path.string());
    } catch (const Error& e) {
      detail::log(LogLevel::warn, "Could not remove stale '{}': {}", path.string(), e.what());
    }
  }
}

std::size_t Catalog::clean_orphans() const {
  if (!in_store_ || !lock_) return 0;
  (void)list();  // finds the names without meta.json
  std::vector<std::string> names;
  {
    std::lock_guard<std::mutex> guard(cache_mutex_);
    names = uncommitted_;
  }
  if (names.empty()) return 0;
  const std::int64_t grace = object_store_options(root_).orphan_grace().count();
  const std::int64_t now = object_store_time(root_);
  std::size_t removed = 0;
  for (const auto& name : names) {
    const fs::path path = root_ / name;
    try {
      std::int64_t newest = 0;
      for (const auto& object : list_directory(path)) newest = std::max(newest, object.status.mtime_ns / 1000000000);
      if (now - newest < grace) continue;  // may still be a save in progress
      remove_tree(path);
      ++removed;
      detail::log(LogLevel::info, "Removed '{}' left by a save that never committed ({} s old)", path.string(),
                  now - newest);
    } catch (const Error& e) {
      detail::log(LogLevel::warn, "Could not remove the uncommitted '{}': {}", path.string(), e.what());
    }
  }
  return removed;
}

Checkpoint Catalog::current(const Checkpoint& checkpoint, bool any_root) const {
  const fs::path& p = checkpoint.path;
  const auto st = path_status(p);
  if ((!any_root && p.parent_path() != root_) || !starts_with(p.filename().string(), kCheckpointPrefix) ||
      (st && st->type != FileType::directory)) {
    throw UsageError(fmt::format("savepoint: '{}' does not appear to be a checkpoint of '{}'",
                                 p.string(), root_.string()));
  }
  if (!st) {
    throw StaleCheckpointError(fmt::format("checkpoint '{}' no longer exists (deleted since this "
                                           "Checkpoint value was obtained)",
                                           p.string()),
                               p);
  }
  Checkpoint on_disk = read_checkpoint(p);
  if (checkpoint.sequence != 0 && on_disk.sequence != checkpoint.sequence) {
    throw StaleCheckpointError(
        fmt::format("'{}' now holds another checkpoint (sequence {}, this Checkpoint value is "
                    "sequence {}): it was deleted or replaced; list the checkpoints again",
                    p.string(), on_disk.sequence, checkpoint.sequence),
        p);
  }
  return on_disk;
}

void Catalog::remove(const Checkpoint& checkpoint) {
  require_writable("delete a checkpoint");
  const fs::path& p = checkpoint.path;
  const auto st = path_status(p);
  const auto meta = st ? path_status(p / kMetaFileName) : std::nullopt;
  if (p.parent_path() != root_ || !starts_with(p.filename().string(), kCheckpointPrefix) ||
      (st && st->type != FileType::directory) || (st && !meta)) {
    throw UsageError(fmt::format("savepoint: '{}' does not appear to be a checkpoint of '{}'; refusing to delete it",
                                 p.string(), root_.string()));
  }
  const Checkpoint on_disk = current(checkpoint);
  // The newest checkpoint leaves its sequence number and name behind in the high-water mark.
  std::uint64_t newest = 0;
  for (const auto& c : list()) newest = std::max(newest, c->sequence);
  if (on_disk.sequence >= newest) lock_->raise_high_water({on_disk.sequence, on_disk.name()});
  if (in_store_) {  // meta.json first (the checkpoint is gone at once), then its objects
    forget(on_disk.path);
    remove_tree(on_disk.path);
    return;
  }
  // Rename first, so the checkpoint disappears atomically; then remove the files.
  const fs::path trash = root_ / (std::string(kTrashPrefix) + unique_suffix());
  rename_no_replace(on_disk.path, trash);
  forget(on_disk.path);
  fsync_directory(root_);
  remove_tree(trash);
}

Checkpoint Catalog::set_pinned(const Checkpoint& checkpoint, bool pinned) {
  require_writable(pinned ? "pin a checkpoint" : "unpin a checkpoint");
  Checkpoint on_disk = current(checkpoint);
  if (on_disk.pinned != pinned) {
    if (pinned) {
      write_file(on_disk.path / kPinFileName,
                 fmt::format("pinned at unixtime {:.0f} by pid {}\n", now_unixtime(), ::getpid()));
    } else {
      remove_tree(on_disk.path / kPinFileName);  // a plain file, or whatever took its name
    }
    fsync_directory(on_disk.path);
    on_disk.pinned = pinned;
  }
  forget(on_disk.path);
  return on_disk;
}

std::vector<Checkpoint> Catalog::plan_deletions(const KeepOptions& keep, std::string* note) const {
  std::vector<Checkpoint> intact;
  for (const auto& c : list()) {
    bool ok = true;
    if (in_store_) {  // one listing per checkpoint, not a HEAD per object
      std::unordered_map<std::string, std::uint64_t> sizes;
      for (const auto& e : list_directory(c->path))
        if (e.status.type == FileType::regular) sizes[e.name] = e.status.size;
      for (const auto& f : c->files) {
        const auto found = sizes.find(f.file);
        ok = ok && found != sizes.end() && found->second == f.bytes;
      }
    } else {
      for (const auto& f : c->files) {
        const auto st = path_status(c->path / f.file);
        ok = ok && st && st->type == FileType::regular && st->size == f.bytes;
      }
    }
    if (ok) intact.push_back(*c);
    else detail::log(LogLevel::warn, "Retention: not counting damaged checkpoint '{}' as kept (left in place; see verify())",
                     c->path.string());
  }
  // An object store's checkpoints share no object (copies are the server's): nothing to spare.
  if (in_store_) return deletion_set(intact, keep);
  return spare_independent(intact, deletion_set(intact, keep), note);
}

std::vector<Checkpoint> Catalog::retain(const KeepOptions& keep) {
  std::string note;
  auto doomed = plan_deletions(keep, &note);
  std::vector<std::string> deleted;
  for (const auto& c : doomed) {
    remove(c);
    deleted.push_back(c.name());
  }
  if (keep.verbosity() >= log_level()) {
    const std::size_t kept = list().size();
    std::string why = keep.description();
    if (!keep.releases_newest()) why += ", the newest protected";
    if (!note.empty()) why += "; " + note;
    detail::log(keep.verbosity(), "Retention in {}: kept {} ({}); deleted {}", root_.string(), kept, why,
                deleted.empty() ? std::string("none") : fmt::format("{}", fmt::join(deleted, ", ")));
  }
  return doomed;
}

}  // namespace savepoint::engine
