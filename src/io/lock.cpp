// The advisory lock that lets one process at a time write a checkpoint directory.
#include <savepoint/detail/io.hpp>
#include <savepoint/detail/object_store.hpp>
#include <savepoint/errors.hpp>

#include <fmt/format.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>

namespace savepoint::detail {

// ---------------------------------------------------------------- DirectoryLock
namespace {
std::mutex g_locks_mutex;
std::map<fs::path, std::weak_ptr<DirectoryLock>>& lock_registry() {
  static std::map<fs::path, std::weak_ptr<DirectoryLock>> registry;
  return registry;
}
}  // namespace

std::shared_ptr<DirectoryLock> DirectoryLock::acquire(const fs::path& root) {
  const bool in_store = is_object_store_path(root);
  std::error_code ec;
  fs::path key = in_store ? root : fs::weakly_canonical(root, ec);
  if (ec) key = fs::absolute(root);
  std::lock_guard<std::mutex> guard(g_locks_mutex);
  auto& registry = lock_registry();
  if (auto it = registry.find(key); it != registry.end()) {
    // Same process: share the lock. A forked child inherits the registry but not the right
    // to the lock, so it must take its own.
    if (auto existing = it->second.lock(); existing && existing->pid_ == ::getpid()) return existing;
  }
  const fs::path file = root / ".savepoint.lock";
  if (in_store) {
    // An object store has no lock: the marks live in an object only this process writes, and
    // one writer per prefix is the job's to ensure; a commit never replaces a meta.json, so
    // a second writer fails its commit instead of overwriting (docs/object-storage.md).
    std::shared_ptr<DirectoryLock> lock(new DirectoryLock(key, file, -1));
    lock->pid_ = ::getpid();
    lock->owner_ = fmt::format("pid {} on host {}", ::getpid(), host_name());
    lock->read_marks(object_io::read_marks(file));
    registry[key] = lock;
    return lock;
  }
  check_fault(IoOp::open, file);
  const int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw_io(fmt::format("cannot open lock file '{}': {}", file.string(), std::strerror(errno)), file, errno);
  char buf[1024] = {};
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  const std::string contents = n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    std::string owner = contents.substr(0, contents.find('\n'));
    if (owner.empty()) owner = "another process";
    ::close(fd);
    if (err == EWOULDBLOCK) {
      throw LockError(fmt::format(
          "checkpoint directory '{}' is in use by {} (lock file '{}'); open it read-only to "
          "inspect it while that run is going",
          root.string(), owner, file.string()));
    }
    throw_io(fmt::format("cannot lock '{}': {}", file.string(), std::strerror(err)), file, err);
  }
  std::shared_ptr<DirectoryLock> lock(new DirectoryLock(key, file, fd));
  lock->pid_ = ::getpid();
  lock->owner_ = fmt::format("pid {} on host {}", ::getpid(), host_name());
  // Re-read under the lock: the previous holder may have written since.
  const ssize_t m = ::pread(fd, buf, sizeof buf - 1, 0);
  lock->read_marks(m > 0 ? std::string(buf, static_cast<std::size_t>(m)) : std::string());
  lock->write_contents();
  registry[key] = lock;
  return lock;
}

void DirectoryLock::read_marks(const std::string& held) {
  const auto line = held.find("\nhigh-water ");
  if (line != std::string::npos) {
    std::istringstream in(held.substr(line + 12));
    HighWater mark;
    if (in >> mark.sequence >> mark.name) high_water_ = mark;
  }
  const auto allocated = held.find("\nallocated ");
  if (allocated != std::string::npos) {
    std::istringstream in(held.substr(allocated + 11));
    std::uint64_t sequence = 0;
    if (in >> sequence) allocated_ = sequence;
  }
}

// The new text over the old, then cut to its length: never an empty file in between, so a
// power cut before the fsync leaves the old marks or the new ones (with at worst a tail of
// the old text after the new lines, which the reader above never reaches: it reads the
// first "high-water" and "allocated" lines, and both only ever grow).
std::string DirectoryLock::contents() const {
  std::string text = owner_ + "\n";
  if (high_water_.sequence > 0) text += fmt::format("high-water {} {}\n", high_water_.sequence, high_water_.name);
  if (allocated_ > 0) text += fmt::format("allocated {}\n", allocated_);
  return text;
}

void DirectoryLock::write_contents() {
  const std::string text = contents();
  const ssize_t w = ::pwrite(fd_, text.data(), text.size(), 0);
  if (w == static_cast<ssize_t>(text.size())) {
    [[maybe_unused]] const int t = ::ftruncate(fd_, static_cast<off_t>(text.size()));
  }
  if (io_recording()) record_io({IoRecord::Kind::replace, file_, nullptr, text});
}

void DirectoryLock::sync_contents() {
  check_fault(IoOp::write, file_);
  if (fd_ < 0) return object_io::write_marks(file_, contents());  // an object store's root
  write_contents();
  check_fault(IoOp::fsync, file_);
  if (::fdatasync(fd_) != 0)
    throw_io(fmt::format("fsync failed for '{}': {}", file_.string(), std::strerror(errno)), file_, errno);
  if (io_recording()) record_io({IoRecord::Kind::fsync, file_});
}

HighWater DirectoryLock::high_water() const { return high_water_; }

void DirectoryLock::raise_high_water(const HighWater& mark) {
  if (mark.sequence <= high_water_.sequence) return;
  high_water_ = mark;
  sync_contents();
}

void DirectoryLock::raise_allocated(std::uint64_t sequence) {
  if (sequence <= allocated_) return;
  allocated_ = sequence;
  sync_contents();
}

DirectoryLock::~DirectoryLock() {
  {
    std::lock_guard<std::mutex> guard(g_locks_mutex);
    auto& registry = lock_registry();
    auto it = registry.find(key_);
    if (it != registry.end() && (it->second.expired() || pid_ != ::getpid())) registry.erase(it);
  }
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

}  // namespace savepoint::detail
