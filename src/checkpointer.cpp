// The Checkpointer: registry, commit protocol, listing, verified two-phase loading, retention.
#include <savepoint/checkpointer.hpp>
#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>

#include <fmt/format.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <atomic>
#include <map>
#include <unordered_map>
#include <unordered_set>
#include <mutex>
#include <random>
#include <set>
#include <thread>

namespace savepoint {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace detail;

namespace {

std::string temp_dir_name() {
  static std::atomic<unsigned> counter{0};
  std::random_device rd;
  return fmt::format("{}{}-{}-{:08x}", kTempPrefix, ::getpid(), counter.fetch_add(1), rd());
}

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

bool is_builtin_hook(const std::string& name) {
  return starts_with(name, "torch.") || starts_with(name, "savepoint.");
}

}  // namespace

namespace detail {
// Opens a key's file and checks it against its record: a regular file inside the checkpoint
// (no symlinks), the recorded size, the recorded XXH3. Throws CorruptCheckpointError.
std::shared_ptr<const MappedFile> open_verified(const Checkpoint& ckpt, const FileRecord& rec, bool copy_on_write) {
  const fs::path file = ckpt.path / rec.file;
  struct stat st {};
  if (::lstat(file.c_str(), &st) != 0) {
    throw CorruptCheckpointError(
        fmt::format("checkpoint '{}' is missing file '{}' of key '{}'", ckpt.path.string(),
                    rec.file, rec.key),
        file, rec.key);
  }
  if (S_ISLNK(st.st_mode) || !S_ISREG(st.st_mode)) {
    throw CorruptCheckpointError(
        fmt::format("'{}' (key '{}') is not a regular file (symlinks are refused)", file.string(),
                    rec.key),
        file, rec.key);
  }
  if (static_cast<std::uint64_t>(st.st_size) != rec.bytes) {
    throw CorruptCheckpointError(
        fmt::format("'{}' (key '{}') has {} bytes, meta.json recorded {} (truncated or "
                    "overwritten)",
                    file.string(), rec.key, st.st_size, rec.bytes),
        file, rec.key);
  }
  auto mapped = std::make_shared<const MappedFile>(file, Mapping{/*read_all=*/true, copy_on_write});
  const auto digest = digest_bytes(mapped->bytes());
  if (digest.xxh3 != rec.xxh3) {
    throw CorruptCheckpointError(
        fmt::format("'{}' (key '{}') fails its checksum: xxh3 {} but meta.json recorded {} "
                    "(the data was damaged after it was written)",
                    file.string(), rec.key, to_hex(digest.xxh3), to_hex(rec.xxh3)),
        file, rec.key);
  }
  return mapped;
}
}  // namespace detail

struct PendingSave;

namespace {
// Runs `tasks` on up to `threads` threads (this one included). After a failure no new task
// starts; the first exception is rethrown once every started task has finished.
void run_all(const std::vector<std::function<void()>>& tasks, int threads) {
  const std::size_t n = std::min<std::size_t>(tasks.size(), static_cast<std::size_t>(std::max(threads, 1)));
  if (n <= 1) {
    for (const auto& task : tasks) task();
    return;
  }
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr first_error;
  std::mutex error_mutex;
  auto work = [&] {
    for (std::size_t i; !failed && (i = next++) < tasks.size();) {
      try {
        tasks[i]();
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!first_error) first_error = std::current_exception();
        failed = true;
      }
    }
  };
  std::vector<std::thread> helpers;
  for (std::size_t t = 1; t < n; ++t) helpers.emplace_back(work);
  work();
  for (auto& h : helpers) h.join();
  if (first_error) std::rethrow_exception(first_error);
}
}  // namespace

void check_keep(const KeepOptions& keep) {
  if (keep.num_to_keep() < 0) {
    throw UsageError(fmt::format("savepoint: the number of checkpoints to keep must be >= 0 "
                                 "(got {})",
                                 keep.num_to_keep()));
  }
}

struct Checkpointer::Impl {
  fs::path root;
  CheckpointerOptions options;
  std::vector<Recoverable> recoverables;
  std::shared_ptr<DirectoryLock> lock;
  // Async saves: one background writer at a time. Its results are read only after join().
  std::shared_ptr<void> staging;  // reusable host buffers (see save_tensors)
  std::thread worker;
  std::exception_ptr background_error;
  std::optional<Checkpoint> last_async;
  // Parsed meta.json of each checkpoint directory, keyed by the directory's identity (inode,
  // mtime, ctime): a listing re-reads only what changed, so retention at every save and
  // finding among thousands of checkpoints stay cheap. A committed directory never changes,
  // except for PINNED (which changes its mtime); replacing it gives a new inode. What is
  // cached is what this process read and validated; verify() always reads the disk.
  using Shared = std::shared_ptr<const Checkpoint>;
  struct CachedMeta {
    ino_t ino;
    struct timespec mtime, ctime;
    Shared checkpoint;
  };
  mutable std::mutex cache_mutex;  // the background writer lists too
  mutable std::unordered_map<std::string, CachedMeta> meta_cache;

  static bool same_time(const struct timespec& a, const struct timespec& b) {
    return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
  }
  Shared read_cached(const fs::path& dir, const std::string& name, const struct stat& st) const {
    {
      std::lock_guard<std::mutex> guard(cache_mutex);
      const auto it = meta_cache.find(name);
      if (it != meta_cache.end() && it->second.ino == st.st_ino && same_time(it->second.mtime, st.st_mtim) &&
          same_time(it->second.ctime, st.st_ctim))
        return it->second.checkpoint;
    }
    auto c = std::make_shared<const Checkpoint>(read_checkpoint(dir));
    std::lock_guard<std::mutex> guard(cache_mutex);
    meta_cache[name] = CachedMeta{st.st_ino, st.st_mtim, st.st_ctim, c};
    return c;
  }
  void forget(const fs::path& dir) const {
    std::lock_guard<std::mutex> guard(cache_mutex);
    meta_cache.erase(dir.filename().string());
  }

  ~Impl() {
    if (worker.joinable()) worker.join();  // destruction waits for the save in flight
    if (background_error) {
      try {
        std::rethrow_exception(background_error);
      } catch (const std::exception& e) {
        detail::log(LogLevel::error, "An asynchronous save into '{}' failed and nobody called wait(): {}",
                    root.string(), e.what());
      } catch (...) {
      }
    }
  }

  std::unique_ptr<PendingSave> begin_save(const nlohmann::json& meta, const SaveOptions& options, bool async);
  Checkpoint finish_save(PendingSave& pending);
  void launch(const nlohmann::json& meta, const SaveOptions& options, std::optional<KeepOptions> keep);
  void wait_background();
  std::vector<Checkpoint> delete_checkpoints(const KeepOptions& keep);
  void delete_checkpoint(const Checkpoint& checkpoint);

  void open_for_writing() {
    std::error_code ec;
    fs::create_directories(root, ec);
    if (ec) {
      throw IoError(fmt::format("cannot create checkpoint directory '{}': {}", root.string(),
                                ec.message()),
                    root, ec.value());
    }
    lock = DirectoryLock::acquire(root);
    if (options.clean_stale_temporaries()) clean_stale();
  }

  void require_writable(const char* operation) const {
    if (options.read_only() || !lock) {
      throw UsageError(fmt::format("savepoint: cannot {} in '{}': the Checkpointer is read-only",
                                   operation, root.string()));
    }
  }

  // Removes what crashed saves and deletions left: hidden directories of ours, recognised by
  // name and by the marker (or completed meta.json) inside. Only called while holding the lock.
  void clean_stale() {
    std::error_code ec;
    for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      const bool temp = starts_with(name, kTempPrefix);
      const bool trash = starts_with(name, kTrashPrefix);
      if (!temp && !trash) continue;
      std::error_code ec2;
      if (!fs::is_directory(fs::symlink_status(it->path(), ec2))) continue;
      if (temp && !fs::exists(it->path() / kTempMarker, ec2) &&
          !fs::exists(it->path() / kMetaFileName, ec2))
        continue;
      try {
        remove_tree(it->path());
        detail::log(LogLevel::info, "Removed '{}' left by an interrupted save or delete",
                    it->path().string());
      } catch (const Error& e) {
        detail::log(LogLevel::warn, "Could not remove stale '{}': {}", it->path().string(),
                    e.what());
      }
    }
  }

  // Fails early when the new checkpoint would not fit (estimated from the newest one).
  void check_free_space(const std::vector<std::shared_ptr<const Checkpoint>>& existing) const {
    if (existing.empty()) return;
    std::uint64_t estimate = 0;
    for (const auto& f : existing.back()->files) estimate += f.bytes;
    estimate += estimate / 20 + (std::uint64_t{1} << 20);
    std::uint64_t free = 0;
    try {
      free = available_bytes(root);
    } catch (const IoError&) {
      return;  // cannot tell: let the writes report ENOSPC if it happens
    }
    if (free < estimate) {
      throw IoError(fmt::format("not enough free space in '{}' for a new checkpoint: about {:.1f} "
                                "MiB needed (the last one's size), {:.1f} MiB free; earlier "
                                "checkpoints are intact",
                                root.string(), static_cast<double>(estimate) / (1 << 20),
                                static_cast<double>(free) / (1 << 20)),
                    root, ENOSPC);
    }
  }

  // Every committed checkpoint with a valid meta.json, oldest first (shared with the cache).
  std::vector<Shared> list_shared(std::vector<Problem>* unreadable) const {
    std::vector<Shared> out;
    // readdir + one fstatat per checkpoint: the type (real directory, never a symlink) and
    // the identity the cache is keyed by.
    std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(root.c_str()), ::closedir);
    if (!dir) {
      if (errno == ENOENT) return out;
      const int err = errno;
      throw IoError(fmt::format("cannot list '{}': {}", root.string(), std::strerror(err)), root, err);
    }
    std::unordered_set<std::string> seen;
    errno = 0;
    bool complete = true;
    while (const dirent* entry = ::readdir(dir.get())) {
      const std::string name = entry->d_name;
      if (!starts_with(name, kCheckpointPrefix)) continue;
      if (entry->d_type != DT_DIR && entry->d_type != DT_UNKNOWN) continue;  // files, symlinks
      struct stat st {};
      if (::fstatat(::dirfd(dir.get()), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(st.st_mode))
        continue;
      seen.insert(name);
      const fs::path path = root / name;
      try {
        out.push_back(read_cached(path, name, st));
      } catch (const Error& e) {
        if (unreadable) {
          unreadable->push_back({"", path / kMetaFileName, e.what()});
        } else {
          detail::log(LogLevel::warn, "Ignoring '{}': {}", path.string(), e.what());
        }
      }
      errno = 0;
    }
    if (errno != 0) complete = false;
    if (complete) {  // forget deleted checkpoints
      std::lock_guard<std::mutex> guard(cache_mutex);
      for (auto c = meta_cache.begin(); c != meta_cache.end();)
        c = seen.count(c->first) ? std::next(c) : meta_cache.erase(c);
    }
    std::sort(out.begin(), out.end(), [](const Shared& a, const Shared& b) {
      if (a->sequence != b->sequence) return a->sequence < b->sequence;
      return a->path < b->path;
    });
    return out;
  }
  std::vector<Checkpoint> list(std::vector<Problem>* unreadable) const {
    std::vector<Checkpoint> out;
    for (const auto& c : list_shared(unreadable)) out.push_back(*c);
    return out;
  }
  // Best first by `selector`, without copying (pointers into `all`).
  static std::vector<const Checkpoint*> ranked(const std::vector<Shared>& all, const Selector& selector) {
    std::vector<const Checkpoint*> pointers;
    pointers.reserve(all.size());
    for (const auto& c : all) pointers.push_back(c.get());
    return rank_pointers(pointers, selector);
  }
};

Checkpointer::Checkpointer(fs::path directory, CheckpointerOptions options)
    : impl_(std::make_unique<Impl>()) {
  impl_->root = std::move(directory);
  impl_->options = std::move(options);
  if (!impl_->options.read_only()) impl_->open_for_writing();
}

Checkpointer::Checkpointer(fs::path directory, std::initializer_list<Recoverable> recoverables,
                           CheckpointerOptions options)
    : Checkpointer(std::move(directory), std::move(options)) {
  add_recoverables(recoverables);
}

Checkpointer::~Checkpointer() = default;
Checkpointer::Checkpointer(Checkpointer&&) noexcept = default;
Checkpointer& Checkpointer::operator=(Checkpointer&&) noexcept = default;

const fs::path& Checkpointer::directory() const noexcept { return impl_->root; }
CheckpointerOptions& Checkpointer::options() noexcept { return impl_->options; }
const CheckpointerOptions& Checkpointer::options() const noexcept { return impl_->options; }

// ------------------------------------------------------------------ registry
void Checkpointer::add(Recoverable recoverable) {
  const std::string file = recoverable.file_name();
  if (file == kMetaFileName || file == kPinFileName) {
    throw UsageError(fmt::format("savepoint: key '{}' would be stored as '{}', a file name "
                                 "savepoint itself uses; choose another key",
                                 recoverable.key(), file));
  }
  for (auto& r : impl_->recoverables) {
    if (r.key() == recoverable.key()) {
      r = std::move(recoverable);  // re-adding a key replaces it, keeping its position
      return;
    }
    if (r.file_name() == file) {
      throw UsageError(fmt::format("savepoint: keys '{}' and '{}' would both be stored as '{}'",
                                   r.key(), recoverable.key(), file));
    }
  }
  impl_->recoverables.push_back(std::move(recoverable));
}

void Checkpointer::add_recoverables(std::initializer_list<Recoverable> recoverables) {
  for (const auto& r : recoverables) add(r);
}

bool Checkpointer::remove_recoverable(const std::string& key) {
  auto& v = impl_->recoverables;
  const auto it = std::find_if(v.begin(), v.end(), [&](const Recoverable& r) { return r.key() == key; });
  if (it == v.end()) return false;
  v.erase(it);
  return true;
}

std::vector<std::string> Checkpointer::keys() const {
  std::vector<std::string> out;
  for (const auto& r : impl_->recoverables) out.push_back(r.key());
  return out;
}

// ------------------------------------------------------------------ saving
// A save in two phases. begin_save (caller's thread) validates, creates the temporary
// directory and runs every hook; hooks that can snapshot (tensors, JSON) only copy their data
// when `async`. finish_save (caller's thread, or the background thread of an async save) runs
// the deferred writes, checksums and fsyncs, writes meta.json and commits.
struct PendingSave {
  struct Entry {
    std::string key, file_name, hook;
    std::unique_ptr<SaveContext> ctx;  // stable address: deferred writes fill its digest
  };
  Checkpoint ckpt;
  fs::path temp;
  SaveOptions options;
  int write_threads = 1;  // copied: the caller may change its options during an async save
  std::vector<Entry> entries;
  detail::Snapshot snapshot;
  ~PendingSave() {
    if (!temp.empty()) {
      std::error_code ignored;
      fs::remove_all(temp, ignored);  // our own temporary directory (never a committed one)
    }
  }
};

std::unique_ptr<PendingSave> Checkpointer::Impl::begin_save(const json& meta_in, const SaveOptions& save_options,
                                                            bool async) {
  require_writable("save a checkpoint");
  if (options.io_threads() < 1) {
    throw UsageError(fmt::format("savepoint: CheckpointerOptions::io_threads must be >= 1 (got {})",
                                 options.io_threads()));
  }
  // `{}` at a call site is a JSON null: treat it as "no meta".
  const json meta = meta_in.is_null() ? json::object() : meta_in;
  if (!meta.is_object()) {
    throw UsageError(fmt::format("savepoint: checkpoint meta must be a JSON object such as "
                                 "{{{{\"loss\", 0.5}}}}, got {}",
                                 meta.type_name()));
  }
  for (const char* reserved : {"unixtime", "end_of_epoch"}) {
    if (meta.contains(reserved)) {
      throw UsageError(fmt::format("savepoint: meta key '{}' is reserved (savepoint records it)",
                                   reserved));
    }
  }
  try {
    (void)meta.dump();
  } catch (const json::exception& e) {
    throw UsageError(fmt::format("savepoint: checkpoint meta cannot be stored: {}", e.what()));
  }

  const auto existing = list_shared(nullptr);
  std::uint64_t sequence = 1;
  for (const auto& c : existing) sequence = std::max(sequence, c->sequence + 1);
  const double unixtime = now_unixtime();

  fs::path final_path;
  std::error_code ec;
  if (!save_options.name().empty()) {
    const std::string& name = save_options.name();
    if (!is_plain_file_name(name) || name.find("..") != std::string::npos) {
      throw UsageError(fmt::format("savepoint: checkpoint name '{}' must be a plain name without "
                                   "'/', '..' or NUL",
                                   name));
    }
    final_path = root / (std::string(kCheckpointPrefix) + name);
    if (fs::exists(fs::symlink_status(final_path, ec)) && !save_options.overwrite()) {
      throw UsageError(fmt::format("savepoint: checkpoint '{}' already exists; pass "
                                   "SaveOptions().overwrite(true) to replace it",
                                   final_path.string()));
    }
  } else {
    const std::string stem = timestamp_dir_stem(unixtime);
    for (int n = 0;; ++n) {
      final_path = root / fmt::format("{}+{:02d}", stem, n);
      if (!fs::exists(fs::symlink_status(final_path, ec))) break;
    }
  }

  check_free_space(existing);

  auto p = std::make_unique<PendingSave>();
  p->options = save_options;
  p->write_threads = options.io_threads();
  p->snapshot.staging = async ? &staging : nullptr;  // a synchronous caller waits: no copies
  Checkpoint& ckpt = p->ckpt;
  ckpt.path = final_path;
  ckpt.sequence = sequence;
  ckpt.meta = json::parse(meta.dump());  // exactly what a reader will see (NaN becomes null)
  ckpt.meta["unixtime"] = unixtime;
  ckpt.meta["end_of_epoch"] = save_options.end_of_epoch();

  // The commit protocol (docs/format.md): write everything into a hidden temporary directory,
  // fsync each file, write meta.json last, fsync the directory, rename it into place, fsync
  // the parent. Until the rename nothing is visible; after it everything is durable.
  const fs::path temp = root / temp_dir_name();
  make_directory(temp);
  p->temp = temp;  // from here on, a failure removes it
  // Not fsynced: until the commit's directory fsync no entry in `temp` is durable anyway, and
  // this runs on the training thread of an async save (an fsync here cost ~1-2 ms a save).
  write_file(temp / kTempMarker, fmt::format("pid {} on {}\n", ::getpid(), host_name()), /*sync=*/false);
  for (const auto& r : recoverables) {
    auto ctx = std::make_unique<SaveContext>();
    ctx->file = temp / r.file_name();
    ctx->key = r.key();
    // Writes are deferred for async saves, and for parallel ones where savepoint's own hooks
    // write (a user's hook may change its tensors after handing them over: it writes now).
    const bool parallel = options.io_threads() > 1 && is_builtin_hook(r.hook_name());
    ctx->snapshot = async || parallel ? &p->snapshot : nullptr;
    try {
      r.save(*ctx);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw Error(fmt::format("savepoint: saving key '{}' to '{}' failed: {}", r.key(),
                              ctx->file.string(), e.what()));
    }
    ckpt.paramfiles[r.key()] = final_path / r.file_name();
    p->entries.push_back({r.key(), r.file_name(), r.hook_name(), std::move(ctx)});
  }
  return p;
}

Checkpoint Checkpointer::Impl::finish_save(PendingSave& p) {
  Checkpoint& ckpt = p.ckpt;
  const fs::path& temp = p.temp;
  const fs::path& final_path = ckpt.path;
  run_all(p.snapshot.deferred_writes, p.write_threads);
  p.snapshot.deferred_writes.clear();  // releases the references to the tensors and buffers
  for (const auto& e : p.entries) {
    const SaveContext& ctx = *e.ctx;
    struct stat st {};
    if (::lstat(ctx.file.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
      throw UsageError(fmt::format("savepoint: the save hook of key '{}' ({}) did not write "
                                   "its file '{}'",
                                   e.key, e.hook, e.file_name));
    }
    FileDigest digest;
    if (ctx.digest) digest = {ctx.digest->first, ctx.digest->second};
    else digest = digest_and_sync_file(ctx.file);
    ckpt.files.push_back({e.key, e.file_name, e.hook, digest.bytes, digest.xxh3});
  }
  if (p.options.pinned()) {
    write_file(temp / kPinFileName, "pinned at save\n");
    ckpt.pinned = true;
  }
  write_file(temp / kMetaFileName, serialize_meta(ckpt));
  if (::unlink((temp / kTempMarker).c_str()) != 0) {
    throw IoError(fmt::format("cannot remove '{}'", (temp / kTempMarker).string()),
                  temp / kTempMarker, errno);
  }
  fsync_directory(temp);
  std::error_code ec;
  fs::path replaced;  // a checkpoint of the same name being replaced, moved aside
  if (p.options.overwrite() && fs::exists(fs::symlink_status(final_path, ec))) {
    // Swap the two directories atomically where the kernel can (RENAME_EXCHANGE).
    if (rename_exchange(temp, final_path)) {
      replaced = temp;  // now holds the old checkpoint; ~PendingSave would remove it too
    } else {
      replaced = root / (std::string(kTrashPrefix) + temp.filename().string());
      rename_no_replace(final_path, replaced);
      try {
        rename_no_replace(temp, final_path);
      } catch (...) {
        std::error_code ignored;
        fs::rename(replaced, final_path, ignored);  // put the old checkpoint back
        throw;
      }
    }
  } else {
    rename_no_replace(temp, final_path);
  }
  p.temp.clear();  // committed: nothing of ours to remove any more
  // A failure from here on cannot corrupt the checkpoint (at worst a power cut undoes the
  // rename), so it is a warning, not an error.
  try {
    fsync_directory(root);
    if (!replaced.empty()) remove_tree(replaced);
  } catch (const Error& e) {
    detail::log(LogLevel::warn, "Checkpoint {} was committed, but: {}", final_path.string(), e.what());
  }
  detail::log(p.options.verbosity(), "Saved an {} checkpoint in {}",
              p.options.end_of_epoch() ? "end-of-epoch" : "intra-epoch", final_path.string());
  return ckpt;
}

void Checkpointer::Impl::wait_background() {
  if (worker.joinable()) worker.join();
  if (background_error) {
    auto error = background_error;
    background_error = nullptr;
    std::rethrow_exception(error);
  }
}

Checkpoint Checkpointer::save_checkpoint(const json& meta, const SaveOptions& options) {
  impl_->wait_background();
  auto pending = impl_->begin_save(meta, options, /*async=*/false);
  return impl_->finish_save(*pending);
}

Checkpoint Checkpointer::save_and_keep_only(const json& meta, const KeepOptions& keep,
                                            const SaveOptions& options) {
  check_keep(keep);  // before saving: a bad argument must not half-run
  Checkpoint saved = save_checkpoint(meta, options);
  impl_->delete_checkpoints(keep);
  return saved;
}

void Checkpointer::save_checkpoint_async(const json& meta, const SaveOptions& options) {
  impl_->launch(meta, options, std::nullopt);
}

void Checkpointer::save_and_keep_only_async(const json& meta, const KeepOptions& keep,
                                            const SaveOptions& options) {
  check_keep(keep);
  impl_->launch(meta, options, keep);
}

void Checkpointer::Impl::launch(const json& meta, const SaveOptions& save_options,
                                std::optional<KeepOptions> keep) {
  wait_background();  // one save in flight; an earlier background failure is raised here
  last_async.reset();
  std::shared_ptr<PendingSave> pending = begin_save(meta, save_options, /*async=*/true);
  worker = std::thread([this, pending, keep = std::move(keep)] {
    try {
      Checkpoint saved = finish_save(*pending);
      if (keep) delete_checkpoints(*keep);
      last_async = std::move(saved);
    } catch (...) {
      background_error = std::current_exception();
    }
  });
}

std::optional<Checkpoint> Checkpointer::wait() {
  impl_->wait_background();
  auto out = std::move(impl_->last_async);
  impl_->last_async.reset();
  return out;
}

// ------------------------------------------------------------------ finding
std::vector<Checkpoint> Checkpointer::list_checkpoints() const { return impl_->list(nullptr); }

std::vector<Checkpoint> Checkpointer::find_checkpoints(const Selector& selector,
                                                       std::optional<std::size_t> max_num) const {
  const auto all = impl_->list_shared(nullptr);
  const auto best = Impl::ranked(all, selector);
  const std::size_t n = max_num ? std::min(*max_num, best.size()) : best.size();
  std::vector<Checkpoint> out;
  out.reserve(n);
  for (std::size_t i = 0; i < n; ++i) out.push_back(*best[i]);  // only what is returned is copied
  return out;
}

std::optional<Checkpoint> Checkpointer::find_checkpoint(const Selector& selector) const {
  auto ranked = find_checkpoints(selector, 1);
  if (ranked.empty()) return std::nullopt;
  return std::move(ranked.front());
}

// ------------------------------------------------------------------ loading
std::optional<Checkpoint> Checkpointer::recover_if_possible(const Selector& selector) {
  const auto all = impl_->list_shared(nullptr);
  const auto ranked = Impl::ranked(all, selector);
  if (ranked.empty()) {
    detail::log(LogLevel::info, "Would load a checkpoint here, but none found yet in '{}'",
                impl_->root.string());
    return std::nullopt;
  }
  std::string failures;
  for (const Checkpoint* candidate : ranked) {
    const Checkpoint& c = *candidate;
    try {
      load_checkpoint(c);
      detail::log(LogLevel::info, "Loaded checkpoint {}", c.path.string());
      return c;
    } catch (const CorruptCheckpointError& e) {
      if (impl_->options.strict_recovery()) throw;
      detail::log(LogLevel::warn, "Skipping checkpoint '{}': {}", c.path.string(), e.what());
      failures += fmt::format("\n  {}: {}", c.name(), e.what());
    } catch (const IoError& e) {
      if (impl_->options.strict_recovery()) throw;
      detail::log(LogLevel::warn, "Skipping checkpoint '{}': {}", c.path.string(), e.what());
      failures += fmt::format("\n  {}: {}", c.name(), e.what());
    }
  }
  throw CorruptCheckpointError(
      fmt::format("no checkpoint in '{}' could be restored ({} candidates, all damaged):{}",
                  impl_->root.string(), ranked.size(), failures),
      impl_->root);
}

Checkpoint Checkpointer::load_best(const Selector& selector) {
  if (auto loaded = recover_if_possible(selector)) return std::move(*loaded);
  const std::string what = selector.min_key   ? "with meta key '" + *selector.min_key + "'"
                           : selector.max_key ? "with meta key '" + *selector.max_key + "'"
                                              : std::string("matching the selector");
  throw CheckpointError(fmt::format("no checkpoint {} in '{}' to load", what, impl_->root.string()),
                        impl_->root);
}

void Checkpointer::load_checkpoint(const Checkpoint& checkpoint) {
  const bool end_of_epoch = checkpoint.meta.value("end_of_epoch", true);
  struct Prepared {
    bool last;
    Apply apply;
  };
  struct ToLoad {
    const Recoverable* recoverable;
    const FileRecord* rec;
    std::shared_ptr<const MappedFile> contents;
  };
  std::vector<ToLoad> to_load;
  std::vector<Prepared> prepared;
  // Phase 1: verify and prepare everything; nothing is modified yet.
  for (const auto& r : impl_->recoverables) {
    const FileRecord* rec = checkpoint.file(r.key());
    if (rec == nullptr) {
      if (impl_->options.allow_partial_load()) continue;
      if (r.options().optional) {
        detail::log(LogLevel::warn, "Checkpoint '{}' has no '{}' (optional): leaving it as is",
                    checkpoint.path.string(), r.key());
        continue;
      }
      std::string present;
      for (const auto& f : checkpoint.files) present += (present.empty() ? "" : ", ") + f.key;
      throw MissingKeyError(fmt::format("checkpoint '{}' has no file for key '{}' (it holds: {}); "
                                        "mark the key optional or allow partial loads",
                                        checkpoint.path.string(), r.key(),
                                        present.empty() ? "nothing" : present),
                            checkpoint.path, r.key());
    }
    if (rec->hook != r.hook_name() && rec->hook != "custom" && r.hook_name() != "custom") {
      const std::string what =
          fmt::format("key '{}' of checkpoint '{}' was written by hook '{}' but the registered "
                      "object uses hook '{}'",
                      r.key(), checkpoint.path.string(), rec->hook, r.hook_name());
      if (is_builtin_hook(rec->hook) && is_builtin_hook(r.hook_name()))
        throw MismatchError(what, checkpoint.path / rec->file, r.key());
      detail::log(LogLevel::warn, "{}", what);
    }
    to_load.push_back({&r, rec, nullptr});
  }
  // Verification reads every byte; with io_threads > 1 the files are read side by side.
  std::vector<std::function<void()>> reads;
  for (auto& item : to_load)
    reads.push_back([&item, &checkpoint] { item.contents = open_verified(checkpoint, *item.rec); });
  run_all(reads, impl_->options.io_threads());
  for (auto& [recoverable, rec, contents] : to_load) {
    const Recoverable& r = *recoverable;
    LoadContext ctx{checkpoint.path / rec->file, r.key(), checkpoint.path, end_of_epoch,
                    std::move(contents)};
    try {
      prepared.push_back({r.load_last(), r.prepare_load(ctx)});
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw CorruptCheckpointError(fmt::format("loading key '{}' from '{}' failed: {}", r.key(),
                                               ctx.file.string(), e.what()),
                                   ctx.file, r.key());
    }
  }
  // Phase 2: apply, in registration order, with "load last" hooks (RNG state) at the end.
  std::stable_partition(prepared.begin(), prepared.end(), [](const Prepared& p) { return !p.last; });
  for (auto& p : prepared) p.apply();
}

// ------------------------------------------------------------------ deleting
std::vector<Checkpoint> Checkpointer::delete_checkpoints(const KeepOptions& keep) {
  impl_->wait_background();
  return impl_->delete_checkpoints(keep);
}

std::vector<Checkpoint> Checkpointer::Impl::delete_checkpoints(const KeepOptions& keep) {
  require_writable("delete checkpoints");
  // A damaged checkpoint must not take the place of a good one among the kept (keep(1) with
  // a truncated newest would otherwise delete the only loadable checkpoint). The check is
  // cheap (file present, regular, recorded size); damaged ones are left for inspection.
  std::vector<Checkpoint> intact;
  for (auto& c : list(nullptr)) {
    bool ok = true;
    for (const auto& f : c.files) {
      struct stat st {};
      const auto file = c.path / f.file;
      ok = ok && ::lstat(file.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
           static_cast<std::uint64_t>(st.st_size) == f.bytes;
    }
    if (ok) intact.push_back(std::move(c));
    else detail::log(LogLevel::warn, "Retention: not counting damaged checkpoint '{}' as kept (left in place; see verify())",
                     c.path.string());
  }
  auto doomed = deletion_set(intact, keep);
  for (const auto& c : doomed) {
    delete_checkpoint(c);
    detail::log(keep.verbosity(), "Deleted checkpoint in {}", c.path.string());
  }
  return doomed;
}

void Checkpointer::delete_checkpoint(const Checkpoint& checkpoint) {
  impl_->wait_background();
  impl_->delete_checkpoint(checkpoint);
}

void Checkpointer::Impl::delete_checkpoint(const Checkpoint& checkpoint) {
  require_writable("delete a checkpoint");
  const fs::path& p = checkpoint.path;
  std::error_code ec;
  const bool ours = p.parent_path() == root &&
                    starts_with(p.filename().string(), kCheckpointPrefix) &&
                    fs::is_directory(fs::symlink_status(p, ec)) &&
                    fs::exists(p / kMetaFileName, ec);
  if (!ours) {
    throw UsageError(fmt::format("savepoint: '{}' does not appear to be a checkpoint of '{}'; "
                                 "refusing to delete it",
                                 p.string(), root.string()));
  }
  // Rename first, so the checkpoint disappears atomically; then remove the files.
  const fs::path trash = root / (std::string(kTrashPrefix) + temp_dir_name().substr(
                                                                        std::string(kTempPrefix).size()));
  rename_no_replace(p, trash);
  fsync_directory(root);
  remove_tree(trash);
}

Checkpoint Checkpointer::pin(const Checkpoint& checkpoint) {
  impl_->wait_background();
  impl_->require_writable("pin a checkpoint");
  Checkpoint on_disk = read_checkpoint(checkpoint.path);  // a checkpoint, not any directory
  if (!on_disk.pinned) {
    write_file(on_disk.path / kPinFileName,
               fmt::format("pinned at unixtime {:.0f} by pid {}\n", now_unixtime(), ::getpid()));
    fsync_directory(on_disk.path);
    on_disk.pinned = true;
  }
  impl_->forget(on_disk.path);
  return on_disk;
}

Checkpoint Checkpointer::unpin(const Checkpoint& checkpoint) {
  impl_->wait_background();
  impl_->require_writable("unpin a checkpoint");
  Checkpoint on_disk = read_checkpoint(checkpoint.path);
  if (on_disk.pinned) {
    remove_tree(on_disk.path / kPinFileName);  // remove_all: a plain file too
    fsync_directory(on_disk.path);
    on_disk.pinned = false;
  }
  impl_->forget(on_disk.path);
  return on_disk;
}

// ------------------------------------------------------------------ integrity
std::vector<Problem> Checkpointer::verify(const Checkpoint& checkpoint) const {
  std::vector<Problem> problems;
  try {
    const Checkpoint on_disk = read_checkpoint(checkpoint.path);
    for (const auto& rec : on_disk.files) {
      try {
        (void)open_verified(on_disk, rec);
      } catch (const Error& e) {
        problems.push_back({rec.key, on_disk.path / rec.file, e.what()});
      }
    }
  } catch (const Error& e) {
    problems.push_back({"", checkpoint.path / kMetaFileName, e.what()});
  }
  return problems;
}

std::vector<Problem> Checkpointer::unreadable_checkpoints() const {
  std::vector<Problem> problems;
  (void)impl_->list(&problems);
  return problems;
}

}  // namespace savepoint
