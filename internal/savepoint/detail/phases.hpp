// savepoint/detail/phases.hpp — where a load's time goes (internal; the benchmark prints it).
//
// Each phase adds its wall time, in nanoseconds, summed over files (and over threads with
// io_threads > 1, so the sum can exceed the load's wall time). A few clock reads per file:
// always on.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace savepoint::detail {

struct LoadPhases {
  std::atomic<std::uint64_t> map_ns{0};      ///< mmap + MAP_POPULATE of a file (disk -> page cache, mapped)
  std::atomic<std::uint64_t> fault_ns{0};    ///< fresh private memory faulted in for a file's bytes
  std::atomic<std::uint64_t> read_ns{0};     ///< read() of a file into that memory
  std::atomic<std::uint64_t> hash_ns{0};     ///< XXH3 over every byte (mapped or read)
  std::atomic<std::uint64_t> prepare_ns{0};  ///< the hooks' prepare_load: validation, new tensors
  std::atomic<std::uint64_t> apply_ns{0};    ///< the hooks' Apply: copies into live tensors
  std::atomic<std::uint64_t> bytes_mapped{0};
  std::atomic<std::uint64_t> bytes_read{0};  ///< read into fresh memory
};

/// The process-wide counters, and a reset (to zero) before the load to be measured.
LoadPhases& load_phases();
void reset_load_phases();

/// Adds the time from construction to destruction to one counter.
class PhaseTimer {
 public:
  explicit PhaseTimer(std::atomic<std::uint64_t>& counter) : counter_(counter), start_(std::chrono::steady_clock::now()) {}
  ~PhaseTimer() {
    counter_ += static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start_).count());
  }
  PhaseTimer(const PhaseTimer&) = delete;
  PhaseTimer& operator=(const PhaseTimer&) = delete;

 private:
  std::atomic<std::uint64_t>& counter_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace savepoint::detail
