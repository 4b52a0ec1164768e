// Reading a whole file into fresh private memory while hashing it, for loads whose bytes
// become new tensors (an optimizer without state at start-up): the tensors keep this memory,
// so the bytes are copied once (kernel to user) instead of mapped, hashed and copied again.
#include <savepoint/detail/io.hpp>
#include <savepoint/detail/object_store.hpp>
#include <savepoint/detail/phases.hpp>
#include <savepoint/errors.hpp>

#include <fmt/format.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

namespace savepoint::detail {

LoadPhases& load_phases() {
  static LoadPhases phases;
  return phases;
}

void reset_load_phases() {
  auto& p = load_phases();
  for (auto* c : {&p.map_ns, &p.fault_ns, &p.read_ns, &p.hash_ns, &p.prepare_ns, &p.apply_ns, &p.bytes_mapped,
                  &p.bytes_read})
    c->store(0);
}

namespace {
// Small enough that a chunk is still in the CPU cache when it is hashed right after its read.
constexpr std::size_t kReadChunk = std::size_t{2} << 20;

[[noreturn]] void throw_errno(const char* what, const fs::path& path) {
  const int err = errno;
  throw_io(fmt::format("{} failed for '{}': {}", what, path.string(), std::strerror(err)), path, err);
}

struct AnonymousMemory {
  void* data = nullptr;
  std::size_t size = 0;
  ~AnonymousMemory() {
    if (data != nullptr) ::munmap(data, size);
  }
};

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

// Faults [data, data + size) in on a thread of its own, in chunks, until done or stopped.
class Prefault {
 public:
  Prefault(char* data, std::size_t size, std::atomic<std::uint64_t>& counter) {
    if (size < (std::size_t{16} << 20)) return;  // small files: not worth a thread
    thread_ = std::thread([this, data, size, &counter] {
      PhaseTimer timer(counter);
      constexpr std::size_t kChunk = std::size_t{8} << 20;
      for (std::size_t at = 0; at < size && !stop_.load(std::memory_order_relaxed); at += kChunk)
        if (::madvise(data + at, std::min(kChunk, size - at), MADV_POPULATE_WRITE) != 0) return;  // old kernel
    });
  }
  ~Prefault() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  void wait() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

struct Fd {
  int fd;
  ~Fd() { ::close(fd); }
};
}  // namespace

FreshRead read_into_fresh_memory(const fs::path& path) {
  check_fault(IoOp::read, path);
  if (is_object_store_path(path)) return object_io::read_fresh(path);
  const Fd fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (fd.fd < 0) throw_errno("open", path);
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) throw_errno("stat", path);
  if (!S_ISREG(st.st_mode)) throw_corrupt(fmt::format("'{}' is not a regular file", path.string()), path);
  const auto size = static_cast<std::size_t>(st.st_size);
  auto memory = std::make_shared<AnonymousMemory>();
  auto& phases = load_phases();
  if (size > 0) {
    void* data = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (data == MAP_FAILED) throw_errno("mmap (fresh memory)", path);
    memory->data = data;
    memory->size = size;
  }
  // On a VM the first touch of a page is the dominant cost (docs/performance.md): a helper
  // thread faults the memory in ahead of the reads, so the faults overlap the disk and the
  // copies. A read that catches up faults its own pages: correct whoever comes first.
  Prefault prefault(static_cast<char*>(memory->data), size, phases.fault_ns);
  ::posix_fadvise(fd.fd, 0, 0, POSIX_FADV_SEQUENTIAL);  // larger readahead: the disk runs ahead of the hash
  char* bytes = static_cast<char*>(memory->data);
  Hasher hasher;
  std::uint64_t read_ns = 0, hash_ns = 0;
  for (std::size_t done = 0; done < size;) {
    const auto t0 = std::chrono::steady_clock::now();
    const ssize_t n = ::read(fd.fd, bytes + done, std::min(kReadChunk, size - done));
    const auto t1 = std::chrono::steady_clock::now();
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("read", path);
    }
    if (n == 0) {
      throw_corrupt(fmt::format("'{}' ended after {} of its {} bytes while being read (truncated meanwhile?)",
                                path.string(), done, size),
                    path);
    }
    hasher.update(bytes + done, static_cast<std::size_t>(n));
    done += static_cast<std::size_t>(n);
    read_ns += static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
    hash_ns += static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t1).count());
  }
  prefault.wait();  // its time is counted whole, though it overlapped the reads
  phases.read_ns += read_ns;
  phases.hash_ns += hash_ns;
  phases.bytes_read += size;
  const std::string_view view(bytes, size);
  return {std::make_shared<const MappedFile>(path, view, memory, /*fresh=*/true), {size, hasher.digest()}};
}

}  // namespace savepoint::detail
