// O_DIRECT writes and reads: aligned chunks, two I/Os in flight, the XXH3 computed inline.
// Threads with pwrite/pread rather than io_uring: no new dependency, and two threads already
// keep two requests in flight (each large request is split further by the block layer).
#include "direct.hpp"

#include <savepoint/detail/object_store.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include <fmt/format.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <set>

namespace savepoint::detail {
namespace {
constexpr std::size_t kAlign = 4096;            // logical block of every disk we meet, and a page
constexpr std::size_t kChunk = std::size_t{8} << 20;
constexpr std::size_t kSlots = 4;               // two being written, one filling, one spare
constexpr int kWriters = 2;
constexpr std::size_t kReadChunk = std::size_t{32} << 20;  // reads: larger requests, more in flight
constexpr int kReaders = 4;

std::size_t round_up(std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

[[noreturn]] void throw_errno(const char* what, const fs::path& path, int err) {
  throw_io(fmt::format("{} failed for '{}': {}", what, path.string(), std::strerror(err)), path, err);
}

// Aligned chunks reused from file to file: fresh memory costs a page fault per page (on this
// project's VM a host fault), warm memory does not.
class ChunkPool {
 public:
  char* take() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!free_.empty()) {
        char* p = free_.back();
        free_.pop_back();
        return p;
      }
    }
    void* p = std::aligned_alloc(kAlign, kChunk);
    if (!p) throw std::bad_alloc();
    return static_cast<char*>(p);
  }
  void give(char* p) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (free_.size() < 2 * kSlots) free_.push_back(p);  // two files at a time stay warm
    else std::free(p);
  }

 private:
  std::mutex mutex_;
  std::vector<char*> free_;
};
ChunkPool& pool() {
  static ChunkPool* p = new ChunkPool;  // never destroyed: writers may finish at exit
  return *p;
}

// O_DIRECT on an open descriptor (F_SETFL, so a refused O_DIRECT leaves no half-created
// file behind); false with a log line, once per file system, where it is refused.
bool enable_direct(int fd, const fs::path& path) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_DIRECT) == 0) return true;
  const int err = errno;
  if (err != EINVAL && err != EOPNOTSUPP) throw_errno("fcntl(O_DIRECT)", path, err);
  struct stat st {};
  ::fstat(fd, &st);
  static std::mutex mutex;
  static std::set<dev_t> logged;
  std::lock_guard<std::mutex> lock(mutex);
  if (logged.insert(st.st_dev).second) {
    log(LogLevel::warn, "The file system of '{}' refuses O_DIRECT ({}): direct I/O falls back to the page cache there",
        path.parent_path().string(), std::strerror(err));
  }
  return false;
}
}  // namespace

// ---------------------------------------------------------------- DirectWriter
DirectWriter::DirectWriter(int fd, fs::path path) : fd_(fd), path_(std::move(path)), slots_(kSlots) {}

DirectWriter::~DirectWriter() {
  stop_writers();
  for (auto& s : slots_)
    if (s.data) pool().give(s.data);
}

void DirectWriter::stop_writers() noexcept {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : writers_) t.join();
  writers_.clear();
}

void DirectWriter::write_block(const char* data, std::size_t size, std::uint64_t offset) {
  while (size > 0) {
    std::size_t chunk = size;
    const Fault fault = fault_for(IoOp::write, path_);
    if (fault.error != 0) {
      throw_io(fmt::format("write failed for '{}': {} (injected)", path_.string(), std::strerror(fault.error)), path_,
               fault.error);
    }
    // A short write is simulated in whole blocks: O_DIRECT cannot go on from a torn one.
    if (fault.max_bytes < chunk) chunk = std::max(kAlign, fault.max_bytes / kAlign * kAlign);
    const ssize_t n = ::pwrite(fd_, data, chunk, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("write", path_, errno);
    }
    if (n == 0 || static_cast<std::size_t>(n) % kAlign != 0) {
      throw_io(fmt::format("write failed for '{}': {} of {} bytes written (disk full?)", path_.string(), n, chunk),
               path_, ENOSPC);
    }
    data += n;
    offset += static_cast<std::uint64_t>(n);
    size -= static_cast<std::size_t>(n);
  }
}

void DirectWriter::writer_loop() {
  for (;;) {
    Slot* slot;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      slot = queue_.front();
      queue_.pop_front();
    }
    std::exception_ptr error;
    try {
      write_block(slot->data, round_up(slot->used), slot->offset);
    } catch (...) {
      error = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (error && !error_) error_ = error;
      slot->in_flight = false;
    }
    cv_.notify_all();
  }
}

void DirectWriter::submit(Slot& slot) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    slot.in_flight = true;
    slot.unrecorded = true;
    queue_.push_back(&slot);
  }
  if (writers_.empty())
    for (int i = 0; i < kWriters; ++i) writers_.emplace_back([this] { writer_loop(); });
  cv_.notify_all();
}

void DirectWriter::reclaim(Slot& slot) {
  std::unique_lock<std::mutex> lock(mutex_);
  cv_.wait(lock, [&] { return !slot.in_flight; });
  if (error_) std::rethrow_exception(error_);
  lock.unlock();
  // Slots are reclaimed in the order they were filled: the recorder sees the file in order.
  if (slot.unrecorded && io_recording()) record_io({IoRecord::Kind::append, path_, nullptr, {slot.data, slot.used}});
  slot.unrecorded = false;
  slot.used = 0;
}

void DirectWriter::write(const void* data, std::size_t size) {
  const char* bytes = static_cast<const char*>(data);
  while (size > 0) {
    Slot& slot = slots_[current_];
    if (!slot.data) slot.data = pool().take();
    if (slot.used == 0) slot.offset = bytes_;
    const std::size_t n = std::min(size, kChunk - slot.used);
    std::memcpy(slot.data + slot.used, bytes, n);
    hasher_.update(slot.data + slot.used, n);  // the staged bytes: exactly what is written
    slot.used += n;
    bytes_ += n;
    bytes += n;
    size -= n;
    if (slot.used == kChunk) {
      submit(slot);
      current_ = (current_ + 1) % kSlots;
      reclaim(slots_[current_]);  // the oldest write: two stay in flight
    }
  }
}

FileDigest DirectWriter::finish() {
  Slot& last = slots_[current_];
  if (last.used > 0) {  // padded to the block; the file is cut back below
    std::memset(last.data + last.used, 0, round_up(last.used) - last.used);
    if (writers_.empty()) {  // a file smaller than one chunk: no threads for one write
      write_block(last.data, round_up(last.used), last.offset);
      last.unrecorded = true;
    } else {
      submit(last);
    }
  }
  for (std::size_t i = 1; i <= kSlots; ++i) reclaim(slots_[(current_ + i) % kSlots]);
  stop_writers();
  if (bytes_ % kAlign != 0) {
    const Fault fault = fault_for(IoOp::write, path_);
    if (fault.error != 0) {
      throw_io(fmt::format("write failed for '{}': {} (injected)", path_.string(), std::strerror(fault.error)), path_,
               fault.error);
    }
    if (::ftruncate(fd_, static_cast<off_t>(bytes_)) != 0) throw_errno("ftruncate", path_, errno);
  }
  return {bytes_, hasher_.digest()};
}

std::unique_ptr<DirectWriter> make_direct_writer(int fd, const fs::path& path) {
  if (!enable_direct(fd, path)) return nullptr;
  return std::make_unique<DirectWriter>(fd, path);
}

// ---------------------------------------------------------------- read_file_direct
std::shared_ptr<const MappedFile> read_file_direct(const fs::path& path, FileDigest& digest) {
  check_fault(IoOp::read, path);
  if (is_object_store_path(path)) {  // parallel ranged GETs, hashed as they arrive
    FreshRead read = object_io::read_fresh(path);
    digest = read.digest;
    return std::move(read.contents);
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_errno("open", path, errno);
  struct Close {
    int fd;
    ~Close() { ::close(fd); }
  } close_fd{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw_errno("stat", path, errno);
  if (!S_ISREG(st.st_mode)) throw_corrupt(fmt::format("'{}' is not a regular file", path.string()), path);
  const std::size_t size = static_cast<std::size_t>(st.st_size);
  const std::size_t capacity = std::max(round_up(size), kAlign);
  std::shared_ptr<char> memory(static_cast<char*>(std::aligned_alloc(kAlign, capacity)), std::free);
  if (!memory) throw std::bad_alloc();
  const bool direct = enable_direct(fd, path);
  Hasher hasher;
  const std::size_t chunks = (size + kReadChunk - 1) / kReadChunk;
  // Reader threads claim chunks in order; this thread hashes each as soon as it has arrived.
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<char> arrived(chunks, 0);
  std::exception_ptr error;
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  auto reader = [&] {
    for (std::size_t i; !failed && (i = next++) < chunks;) {
      const std::size_t begin = i * kReadChunk, want = std::min(kReadChunk, size - begin);
      std::size_t got = 0;
      try {
        while (got < want) {
          const std::size_t ask = direct ? round_up(want - got) : want - got;
          const ssize_t n = ::pread(fd, memory.get() + begin + got, ask, static_cast<off_t>(begin + got));
          if (n < 0) {
            if (errno == EINTR) continue;
            throw_errno("read", path, errno);
          }
          if (n == 0) throw_corrupt(fmt::format("'{}' ended while it was read (changed meanwhile?)", path.string()), path);
          got += static_cast<std::size_t>(n);
        }
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex);
        if (!error) error = std::current_exception();
        failed = true;
      }
      {
        std::lock_guard<std::mutex> lock(mutex);
        arrived[i] = 1;
      }
      cv.notify_all();
    }
  };
  std::vector<std::thread> readers;
  for (std::size_t i = 0; i < std::min<std::size_t>(chunks, kReaders); ++i) readers.emplace_back(reader);
  for (std::size_t i = 0; i < chunks; ++i) {
    std::unique_lock<std::mutex> lock(mutex);
    cv.wait(lock, [&] { return arrived[i] || failed; });
    if (failed) break;
    lock.unlock();
    const std::size_t begin = i * kReadChunk;
    hasher.update(memory.get() + begin, std::min(kReadChunk, size - begin));
  }
  for (auto& t : readers) t.join();
  if (error) std::rethrow_exception(error);
  digest = {size, hasher.digest()};
  return std::make_shared<const MappedFile>(path, std::string_view(memory.get(), size), memory);
}

}  // namespace savepoint::detail
