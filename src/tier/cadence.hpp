// tier/cadence.hpp — which save_to_memory() calls start a memory save when the caller asks
// every step (MemoryTierOptions::skip_while_busy): as many as complete, no more, and never a
// wait for the one before.
//
// Every rank must skip the same calls (a save is collective), so no rank decides from its own
// state. Rank 0 measures how long a memory save takes to complete and how often calls come;
// each save that starts carries, with its allocation (a collective it makes anyway), the call
// at which the next one starts. Calls before it return at once on every rank. When a save
// takes longer than foreseen, the next one waits for it, as without the option.
// Times are passed in (seconds on any steady clock): tests give their own.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace savepoint::tier {

class SaveCadence {
 public:
  /// A call at `now`; true when it starts a save (the first call always does).
  bool call(double now) {
    if (last_return_ >= 0) {
      // The caller's own time between calls: a call's wait for the save before it is not
      // counted (it would make calls look slower, so that more are started, and waited for).
      // A pause (an evaluation, say) counts as twice the usual interval, not its length: one
      // long gap does not make every later step slow.
      const double interval = interval_ < 0 ? now - last_return_ : std::min(now - last_return_, 2 * interval_);
      interval_ = interval_ < 0 ? interval : kSmoothing * interval + (1 - kSmoothing) * interval_;
    }
    return calls_++ >= next_;
  }
  /// When the call returns (at once when it skipped, after its wait and snapshot otherwise).
  void returned(double now) { last_return_ = now; }
  /// Rank 0, when a save starts at `now`: the call index at which the next one starts.
  std::uint64_t plan_next(double now) {
    started_ = now;
    const double took = took_.load();
    std::uint64_t gap = 1;
    if (took > 0 && interval_ > 0) {
      const double calls = kMargin * took / interval_;
      gap = calls < 1 ? 1 : static_cast<std::uint64_t>(calls) + 1;
    }
    return calls_ - 1 + gap;
  }
  /// Rank 0's background thread, when the save that started last is complete at `now`.
  void completed(double now) { took_.store(now - started_); }
  /// Every rank: the call index plan_next chose on rank 0.
  void set_next(std::uint64_t next) { next_ = next; }
  std::uint64_t calls() const noexcept { return calls_; }

 private:
  static constexpr double kSmoothing = 0.25;  // the call interval, smoothed over a few calls
  static constexpr double kMargin = 1.2;      // saves vary: leave a fifth more room
  std::uint64_t calls_ = 0;
  std::uint64_t next_ = 0;
  double last_return_ = -1, interval_ = -1;
  double started_ = 0;              // only read after the save it names completed
  std::atomic<double> took_{-1};  // how long the last complete save took, start to complete
};

}  // namespace savepoint::tier
