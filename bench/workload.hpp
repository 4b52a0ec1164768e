// The benchmarks' workload and baselines: a model + Adam state of a given size, raw write()/read()
// of the same bytes, a host copy, page-cache eviction and the VM's memory warm-up.
#pragma once

#include <torch/torch.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace savepoint::bench {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

inline long status_kib_meminfo_available() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("MemAvailable:", 0) == 0) return std::stol(line.substr(13));
  return 0;
}

inline void fsync_path(const fs::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// Evicts a file's (clean) pages from the page cache so the next read comes from the disk.
inline void drop_cache(const fs::path& p) {
  if (fs::is_directory(p)) {
    for (const auto& e : fs::recursive_directory_iterator(p))
      if (e.is_regular_file()) drop_cache(e.path());
    return;
  }
  const int fd = ::open(p.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

// A model of Linear layers holding `bytes` of float32 parameters.
struct Model : torch::nn::Module {
  explicit Model(std::int64_t bytes) {
    const std::int64_t width = 2048;
    std::int64_t left = bytes / 4;
    for (int i = 0; left > 0; ++i) {
      const std::int64_t rows = std::min<std::int64_t>(left / width + 1, 4096);
      layers.push_back(register_module("l" + std::to_string(i), torch::nn::Linear(width, rows)));
      left -= rows * width + rows;
    }
  }
  std::vector<torch::nn::Linear> layers;
};

struct State {
  std::shared_ptr<Model> model;
  std::unique_ptr<torch::optim::Adam> opt;
  std::int64_t bytes = 0;  // parameters + Adam's two moments
  std::vector<torch::Tensor> tensors() const {
    std::vector<torch::Tensor> out;
    for (const auto& p : model->parameters()) out.push_back(p);
    for (const auto& s : opt->state()) {
      const auto& adam = static_cast<const torch::optim::AdamParamState&>(*s.second);
      out.push_back(adam.exp_avg());
      out.push_back(adam.exp_avg_sq());
    }
    return out;
  }
};

// Builds a model + Adam with `total_mib` of state (a third each: weights, exp_avg, exp_avg_sq).
inline State make_state(std::int64_t total_mib, bool with_moments = true) {
  State s;
  s.model = std::make_shared<Model>(total_mib * (1 << 20) / 3);
  s.opt = std::make_unique<torch::optim::Adam>(s.model->parameters(), 1e-3);
  if (!with_moments) return s;
  for (auto& p : s.model->parameters()) p.mutable_grad() = torch::ones_like(p);
  s.opt->step();  // creates the moments
  for (const auto& t : s.tensors()) s.bytes += t.numel() * t.element_size();
  return s;
}

// Raw write()+fsync() of the same bytes, one file per tensor group like savepoint writes.
inline double raw_write(const State& s, const fs::path& file) {
  const auto t0 = Clock::now();
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  for (const auto& t : s.tensors()) {
    const char* p = static_cast<const char*>(t.data_ptr());
    std::size_t left = t.numel() * t.element_size();
    while (left > 0) {
      const auto n = ::write(fd, p, std::min<std::size_t>(left, 64u << 20));
      if (n <= 0) throw std::runtime_error("raw write failed");
      p += n;
      left -= static_cast<std::size_t>(n);
    }
  }
  ::fsync(fd);
  ::close(fd);
  return seconds_since(t0);
}

inline double raw_read(const fs::path& file, std::int64_t bytes) {
  std::vector<char> buffer(64u << 20);
  const auto t0 = Clock::now();
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  std::int64_t total = 0;
  for (ssize_t n; (n = ::read(fd, buffer.data(), buffer.size())) > 0;) total += n;
  ::close(fd);
  if (total != bytes) throw std::runtime_error("raw read short");
  return seconds_since(t0);
}

// A cold read into fresh memory, the start-up baseline: a new buffer of the file's size
// (allocated lazily, so read() faults its pages in, as a loader's new tensors would be), then
// freed. Returns seconds including the allocation.
inline double raw_read_fresh(const fs::path& file, std::int64_t bytes) {
  const auto t0 = Clock::now();
  std::unique_ptr<char[]> buffer(new char[static_cast<std::size_t>(bytes)]);
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  std::int64_t total = 0;
  for (ssize_t n; (n = ::read(fd, buffer.get() + total, std::min<std::int64_t>(bytes - total, 64 << 20))) > 0;)
    total += n;
  ::close(fd);
  if (total != bytes) throw std::runtime_error("raw read short");
  buffer.reset();
  return seconds_since(t0);
}

// raw_read_fresh with the trick savepoint's start-up uses: a second thread faults the new
// buffer in (MADV_POPULATE_WRITE, 8 MiB at a time) ahead of the reads. Shows how much of a
// start-up's lead over raw_read_fresh is that overlap rather than less work.
inline double raw_read_fresh_prefaulted(const fs::path& file, std::int64_t bytes) {
  const auto t0 = Clock::now();
  const auto size = static_cast<std::size_t>(bytes);
  char* buffer = static_cast<char*>(::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (buffer == MAP_FAILED) throw std::runtime_error("mmap failed");
  std::thread prefault([buffer, size] {
    for (std::size_t at = 0; at < size; at += std::size_t{8} << 20)
      if (::madvise(buffer + at, std::min(std::size_t{8} << 20, size - at), 23 /* MADV_POPULATE_WRITE */) != 0) return;
  });
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  std::int64_t total = 0;
  for (ssize_t n; (n = ::read(fd, buffer + total, std::min<std::int64_t>(bytes - total, 2 << 20))) > 0;) total += n;
  ::close(fd);
  prefault.join();
  ::munmap(buffer, size);
  if (total != bytes) throw std::runtime_error("raw read short");
  return seconds_since(t0);
}

// A cold read into a buffer of the file's size that was touched before (the load-into-live-
// state baseline: the destination is memory in use).
inline double raw_read_into(const fs::path& file, char* buffer, std::int64_t bytes) {
  const auto t0 = Clock::now();
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  std::int64_t total = 0;
  for (ssize_t n; (n = ::read(fd, buffer + total, std::min<std::int64_t>(bytes - total, 64 << 20))) > 0;) total += n;
  ::close(fd);
  if (total != bytes) throw std::runtime_error("raw read short");
  return seconds_since(t0);
}

// Faulting in `bytes` of fresh memory (anonymous mmap, MAP_POPULATE), then freeing it: what
// the first touch of new memory costs here, by itself.
inline double fault_fresh(std::int64_t bytes) {
  const auto t0 = Clock::now();
  void* p = ::mmap(nullptr, static_cast<std::size_t>(bytes), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED) throw std::runtime_error("mmap failed");
  const double took = seconds_since(t0);
  ::munmap(p, static_cast<std::size_t>(bytes));
  return took;
}

// The host copy the async goal is measured against: every tensor into a preallocated buffer.
inline double host_copy(const State& s) {
  std::vector<torch::Tensor> buffers;
  for (const auto& t : s.tensors()) buffers.push_back(torch::empty_like(t));
  const auto tensors = s.tensors();
  for (std::size_t i = 0; i < tensors.size(); ++i) buffers[i].copy_(tensors[i]);  // first touch
  const auto t0 = Clock::now();  // then a copy into warm buffers, as the reused staging is
  for (std::size_t i = 0; i < tensors.size(); ++i) buffers[i].copy_(tensors[i]);
  return seconds_since(t0);
}

inline double gbps(std::int64_t bytes, double seconds) { return static_cast<double>(bytes) / seconds / 1e9; }

// Touches `gib` GiB of fresh memory and frees it. On a VM whose memory the host backs lazily
// (this machine is a Firecracker guest), the first use of a guest page is several times
// slower than any later use; a training machine has long since touched its memory, so the
// table is measured after this warm-up, by default of all but 1 GiB of the available memory
// (--warm-memory-gib 0 shows the cold effect: large sync saves then run at ~0.3x raw; with
// 70% touched, 2 GiB saves, whose page cache outgrew the touched part, still ran at ~0.45x).
inline void warm_memory(std::int64_t gib) {
  std::vector<std::unique_ptr<char[]>> blocks;  // all held at once: distinct pages
  for (std::int64_t i = 0; i < gib; ++i) {
    blocks.emplace_back(new char[std::size_t{1} << 30]);
    for (std::size_t off = 0; off < (std::size_t{1} << 30); off += 4096) blocks.back()[off] = 1;
  }
}

}  // namespace savepoint::bench
