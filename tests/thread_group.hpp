// An in-process process group for tests: N threads as N ranks, so that the engine's agreement
// logic (engine/world.hpp: from_root, agree; the save pipeline; recovery) runs in the core test
// binary with no Gloo and no fork. Faults are injected by rank and collective index:
//   fails   — that collective raises on that rank, and the group breaks for every rank (as a
//             c10d group does when a peer's socket closes)
//   dies    — the rank's thread ends there (RankDied); the others' collectives raise at once
//   stalls  — the rank never arrives; the others raise when the group's timeout passes (the
//             stalled thread is released when the test's ThreadWorld ends)
// Catch2's assertions are not thread-safe: rank functions return values, the test checks them.
#pragma once

#include <savepoint/distributed.hpp>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace test {

/// Thrown on the rank a `dies` fault hits; ends that rank's function.
struct RankDied : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Fault {
  enum Kind { fails, dies, stalls };
  Kind kind;
  int rank;
  int collective;  // 0-based index among that rank's collectives
};

class ThreadHub {
 public:
  ThreadHub(int world_size, std::chrono::milliseconds timeout)
      : n_(world_size), timeout_(timeout), inputs_(world_size), ops_(world_size), counts_(world_size, 0) {}

  void inject(Fault f) {
    std::lock_guard<std::mutex> lock(m_);
    faults_.push_back(f);
  }
  int collectives(int rank) const {
    std::lock_guard<std::mutex> lock(m_);
    return counts_.at(rank);
  }
  /// Frees stalled ranks (their collective then raises).
  void release() {
    std::lock_guard<std::mutex> lock(m_);
    released_ = true;
    cv_.notify_all();
  }
  int world_size() const { return n_; }
  std::chrono::milliseconds timeout() const { return timeout_; }

  /// One collective: every rank's bytes, indexed by rank; `op` must match on every rank.
  std::vector<std::string> exchange(int rank, char op, const std::string& bytes) {
    std::unique_lock<std::mutex> lock(m_);
    const int k = counts_.at(rank)++;
    for (const Fault& f : faults_) {
      if (f.rank != rank || f.collective != k) continue;
      if (f.kind == Fault::fails) {
        break_group(lock, "rank " + std::to_string(rank) + "'s collective " + std::to_string(k) + " failed (injected)");
        throw std::runtime_error("injected failure of collective " + std::to_string(k) + " on rank " +
                                 std::to_string(rank));
      }
      if (f.kind == Fault::dies) {
        break_group(lock, "rank " + std::to_string(rank) + " died (injected, at collective " + std::to_string(k) + ")");
        throw RankDied("rank " + std::to_string(rank) + " died at collective " + std::to_string(k));
      }
      cv_.wait(lock, [&] { return released_; });  // stalls
      throw std::runtime_error("stalled rank " + std::to_string(rank) + " released");
    }
    cv_.wait(lock, [&] { return !draining_ || !broken_.empty(); });
    if (!broken_.empty()) throw std::runtime_error("the group is broken: " + broken_);
    inputs_[rank] = bytes;
    ops_[rank] = op;
    if (++arrived_ == n_) {
      ready_ = true;
      draining_ = true;
      cv_.notify_all();
    } else if (!cv_.wait_for(lock, timeout_, [&] { return ready_ || !broken_.empty(); })) {
      break_group(lock, "a collective timed out on rank " + std::to_string(rank));
      throw std::runtime_error("collective " + std::to_string(k) + " timed out on rank " + std::to_string(rank) +
                               " after " + std::to_string(timeout_.count()) + " ms");
    }
    if (!ready_) throw std::runtime_error("the group is broken: " + broken_);
    for (char o : ops_)
      if (o != op) {
        break_group(lock, "ranks called different collectives");
        throw std::runtime_error("ranks called different collectives at collective " + std::to_string(k));
      }
    std::vector<std::string> out = inputs_;
    if (++departed_ == n_) {
      arrived_ = departed_ = 0;
      ready_ = draining_ = false;
      cv_.notify_all();
    }
    return out;
  }

  /// Point to point: `from`'s message to `to`, in order (not a collective: not counted).
  void post(int from, int to, std::string bytes) {
    std::lock_guard<std::mutex> lock(m_);
    mail_[{from, to}].push_back(std::move(bytes));
    cv_.notify_all();
  }
  std::string take(int from, int to) {
    std::unique_lock<std::mutex> lock(m_);
    auto& box = mail_[{from, to}];
    if (!cv_.wait_for(lock, timeout_, [&] { return !box.empty() || !broken_.empty(); }))
      throw std::runtime_error("a receive from rank " + std::to_string(from) + " timed out on rank " + std::to_string(to));
    if (box.empty()) throw std::runtime_error("the group is broken: " + broken_);
    std::string out = std::move(box.front());
    box.pop_front();
    return out;
  }

 private:
  void break_group(std::unique_lock<std::mutex>&, const std::string& why) {
    if (broken_.empty()) broken_ = why;
    cv_.notify_all();
  }

  const int n_;
  const std::chrono::milliseconds timeout_;
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::vector<std::string> inputs_;
  std::vector<char> ops_;
  std::vector<int> counts_;
  std::vector<Fault> faults_;
  int arrived_ = 0, departed_ = 0;
  bool ready_ = false, draining_ = false, released_ = false;
  std::string broken_;
  std::map<std::pair<int, int>, std::deque<std::string>> mail_;
};

/// One rank's view of a ThreadHub.
class ThreadGroup final : public savepoint::ProcessGroup {
 public:
  ThreadGroup(std::shared_ptr<ThreadHub> hub, int rank) : hub_(std::move(hub)), rank_(rank) {}
  int rank() const override { return rank_; }
  int world_size() const override { return hub_->world_size(); }
  std::string broadcast(const std::string& bytes) override { return hub_->exchange(rank_, 'b', bytes).at(0); }
  std::vector<std::string> all_gather(const std::string& bytes) override { return hub_->exchange(rank_, 'g', bytes); }
  void barrier() override { (void)hub_->exchange(rank_, 'r', std::string()); }
  void send_and_receive(const std::vector<Outgoing>& sends, const std::vector<Incoming>& receives) override {
    for (const auto& out : sends)
      if (out.size > 0) hub_->post(rank_, out.to, std::string(out.data, out.size));
    for (const auto& in : receives) {
      if (in.size == 0) continue;
      const std::string bytes = hub_->take(in.from, rank_);
      if (bytes.size() != in.size)
        throw std::runtime_error("rank " + std::to_string(in.from) + " sent " + std::to_string(bytes.size()) +
                                 " bytes, rank " + std::to_string(rank_) + " expected " + std::to_string(in.size));
      std::memcpy(in.data, bytes.data(), bytes.size());
    }
  }
  std::chrono::milliseconds timeout() const override { return hub_->timeout(); }

 private:
  std::shared_ptr<ThreadHub> hub_;
  int rank_;
};

/// What one rank's function returned, or the exception it ended with.
template <class T>
struct RankOutcome {
  std::optional<T> value;
  std::exception_ptr error;
  std::string message() const {  // the error's what(), empty when it returned
    if (!error) return {};
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      return e.what();
    } catch (...) {
      return "a non-standard exception";
    }
  }
  template <class E>
  bool raised() const {
    if (!error) return false;
    try {
      std::rethrow_exception(error);
    } catch (const E&) {
      return true;
    } catch (...) {
      return false;
    }
  }
};

/// N ranks as threads on one hub. run() starts them and joins them all; a stalled rank is
/// released once every other rank has ended.
class ThreadWorld {
 public:
  explicit ThreadWorld(int world_size, std::chrono::milliseconds timeout = std::chrono::milliseconds(2000))
      : hub_(std::make_shared<ThreadHub>(world_size, timeout)) {}
  ThreadHub& hub() { return *hub_; }
  std::shared_ptr<savepoint::ProcessGroup> group(int rank) { return std::make_shared<ThreadGroup>(hub_, rank); }

  template <class Fn>
  auto run(Fn fn) -> std::vector<RankOutcome<decltype(fn(0, std::shared_ptr<savepoint::ProcessGroup>()))>> {
    using T = decltype(fn(0, std::shared_ptr<savepoint::ProcessGroup>()));
    const int n = hub_->world_size();
    std::vector<RankOutcome<T>> out(n);
    std::vector<std::thread> threads;
    std::mutex m;
    std::condition_variable cv;
    int ended = 0;
    for (int r = 0; r < n; ++r) {
      threads.emplace_back([&, r] {
        try {
          out[r].value = fn(r, group(r));
        } catch (...) {
          out[r].error = std::current_exception();
        }
        std::lock_guard<std::mutex> lock(m);
        ++ended;
        cv.notify_all();
      });
    }
    {
      // Bounded: each collective waits at most the timeout, and a stalled rank is released
      // once the others have ended (or failed).
      std::unique_lock<std::mutex> lock(m);
      cv.wait(lock, [&] { return ended >= n - stalled_ranks(); });
    }
    hub_->release();
    for (auto& t : threads) t.join();
    return out;
  }
  void inject(Fault f) {
    hub_->inject(f);
    if (f.kind == Fault::stalls) ++stalls_;
  }

 private:
  int stalled_ranks() const { return stalls_; }
  std::shared_ptr<ThreadHub> hub_;
  int stalls_ = 0;
};

}  // namespace test
