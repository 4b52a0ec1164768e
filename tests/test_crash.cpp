// Crash consistency: a child saves in a loop and is killed with SIGKILL at random moments.
// The child reports every committed save through a pipe; the parent picks the kill moment
// from those reports (after k of them, plus a random part of one save's duration), so the
// test does not depend on how fast this machine saves. After every kill, recovery must load
// a checkpoint whose contents are exactly what one save wrote (all values derive from that
// save's counter) and that is at least as new as the last save the child reported committed.
//
// Rounds: 200 by default (CI); SAVEPOINT_CRASH_ROUNDS=1000 for a longer run (docs/reliability.md).
#include "spawn.hpp"
#include "support.hpp"

#include "catch.hpp"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <optional>
#include <random>
#include <string>
#include <thread>

using namespace savepoint;
using test::TempDir;
namespace fs = std::filesystem;

namespace {
// A recoverable whose file is written by a user hook (read back for its checksum): 256 KiB of
// bytes derived from the counter.
struct Blob {
  std::int64_t counter = 0;
  std::string bytes;
  static std::string pattern(std::int64_t c) {
    std::string s(256 * 1024, '\0');
    std::mt19937_64 gen(static_cast<std::uint64_t>(c));
    for (auto& ch : s) ch = static_cast<char>(gen());
    return s;
  }
  void save(const fs::path& p) const {
    std::ofstream out(p, std::ios::binary);
    out.write(reinterpret_cast<const char*>(&counter), sizeof counter);
    out << bytes;
  }
  void load(const fs::path& p, bool) {
    const std::string all = test::read_file(p);
    REQUIRE(all.size() >= sizeof counter);
    std::memcpy(&counter, all.data(), sizeof counter);
    bytes = all.substr(sizeof counter);
  }
};

// The child reports each committed save by writing its counter (8 bytes) to `report_fd`.
// Sync: save_and_keep_only returned, so save `counter` is committed. Async: one save is in
// flight, and save_and_keep_only_async waits for the previous one before it returns, so
// save `counter - 1` is committed then; every third save the child also calls wait() and
// reports the checkpoint it committed.
void report(int fd, std::int64_t committed) {
  const char* p = reinterpret_cast<const char*>(&committed);
  std::size_t left = sizeof committed;
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) ::_exit(4);
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

[[noreturn]] void child_loop(const fs::path& dir, bool async, int report_fd) {
  std::int64_t counter = 0;
  std::vector<std::int64_t> history;  // JSON file written by savepoint's own writer
  Blob blob;
  try {
    Checkpointer ckpt(dir, {{"counter", counter}, {"history", history}, {"blob", blob}});
    ckpt.recover_if_possible();
    bool in_flight = false;  // async: a save of this process may not be committed yet
    for (;;) {
      ++counter;
      history.assign(64, counter);
      blob.counter = counter;
      blob.bytes = Blob::pattern(counter);
      // Async: the next iteration changes the state while the previous save is written.
      if (async) {
        ckpt.save_and_keep_only_async({{"i", counter}}, keep(2));
        if (in_flight) report(report_fd, counter - 1);
        in_flight = true;
        if (counter % 3 == 0) {
          const auto committed = ckpt.wait();
          if (!committed) ::_exit(5);
          report(report_fd, committed->meta.at("i").get<std::int64_t>());
          in_flight = false;
        }
      } else {
        ckpt.save_and_keep_only({{"i", counter}}, keep(2));
        report(report_fd, counter);
      }
    }
  } catch (...) {
    ::_exit(3);
  }
}

// How a child process ended, for failure messages.
std::string describe(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status)) +
                                " (3: a save threw, 4: the report pipe failed, 5: wait() returned nothing)";
  if (WIFSIGNALED(status)) return "was killed by signal " + std::to_string(WTERMSIG(status));
  return "ended with wait status " + std::to_string(status);
}

// One forked saving child (tests/spawn.hpp); killed (SIGKILL) and reaped on destruction if
// still running, so a failed REQUIRE never leaves it behind. A child that has not ended
// `hang_limit` after its start is a hang, not slowness (a save takes milliseconds even under
// sanitizers): it is SIGKILLed and the test fails naming it.
class Child {
 public:
  Child(const fs::path& dir, bool async, std::chrono::seconds hang_limit) : children_(hang_limit) {
    children_.start_fork(async ? "the child saving asynchronously" : "the child saving",
                         [&](int report_fd) { child_loop(dir, async, report_fd); });
  }

  // The next committed counter the child reports; nullopt when the child ended (its status
  // is then in `failure`).
  std::optional<std::int64_t> next_report(std::string& failure) {
    std::int64_t value = 0;
    if (children_.read_report(0, &value, sizeof value)) return value;
    failure = "the child " + describe(children_.wait(0));  // end of file: the child is gone
    return std::nullopt;
  }

  // SIGKILL, then the wait status.
  int kill_and_reap() {
    children_.signal(0, SIGKILL);
    return children_.wait(0);
  }

 private:
  test::Children children_;
};
}  // namespace

namespace {
// Each round: fork a saving child, wait until it reported k committed saves (k random in
// 1..4), then kill it after a random extra delay measured from that report: a random fraction
// of the time its last save took, so on a fast or a slow (sanitized, loaded) machine the kill
// lands at a random point of the next save. No timing window assumes how long a save takes.
void crash_rounds(int default_rounds, bool async) {
  const char* env = std::getenv("SAVEPOINT_CRASH_ROUNDS");
  const int rounds = env ? std::atoi(env) : default_rounds;
  TempDir dir;
  std::mt19937 rng(12345);
  std::uniform_int_distribution<int> reports_before_kill(1, 4);
  std::uniform_real_distribution<double> fraction_of_a_save(0.0, 1.0);
  const std::chrono::seconds hang_limit(120);
  std::int64_t last_seen = 0;
  int recovered = 0, empty = 0;
  for (int round = 0; round < rounds; ++round) {
    INFO("round " << round);
    const int k = reports_before_kill(rng);
    std::int64_t last_reported = 0;  // the newest save the child reported as committed
    int status = 0;
    {
      auto previous = std::chrono::steady_clock::now();
      Child child(dir.path(), async, hang_limit);
      std::chrono::steady_clock::duration one_save{};
      for (int r = 0; r < k; ++r) {
        std::string failure;
        const auto reported = child.next_report(failure);
        if (!reported) FAIL("round " << round << ": " << failure);
        last_reported = std::max(last_reported, *reported);
        const auto now = std::chrono::steady_clock::now();
        one_save = now - previous;
        previous = now;
      }
      std::this_thread::sleep_for(std::chrono::duration_cast<std::chrono::microseconds>(
          one_save * fraction_of_a_save(rng)));
      status = child.kill_and_reap();
    }
    INFO("the child reported save " << last_reported << " as committed before the kill");
    // The child never exits on its own (3 = it hit an error).
    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL) FAIL("the child " << describe(status));
    REQUIRE(WIFSIGNALED(status));

    std::int64_t counter = -1;
    std::vector<std::int64_t> history;
    Blob blob;
    Checkpointer ckpt(dir.path(), {{"counter", counter}, {"history", history}, {"blob", blob}},
                      CheckpointerOptions().read_only(true).strict_recovery(true));
    const auto loaded = ckpt.recover_if_possible();
    if (!loaded) {
      ++empty;
      CHECK(last_seen == 0);  // once something was committed, it never disappears
      CHECK(last_reported == 0);  // nor does what the child reported as committed
      continue;
    }
    ++recovered;
    const auto i = loaded->meta.at("i").get<std::int64_t>();
    INFO("round " << round << ", recovered save " << i);
    REQUIRE(counter == i);
    REQUIRE(history == std::vector<std::int64_t>(64, i));
    REQUIRE(blob.counter == i);
    REQUIRE(blob.bytes == Blob::pattern(i));
    REQUIRE(i >= last_seen);  // progress is never lost
    REQUIRE(i >= last_reported);  // nor is a save the child saw committed
    last_seen = i;
    for (const auto& c : ckpt.list_checkpoints()) REQUIRE(ckpt.verify(c).empty());
  }
  WARN(rounds << " kills: " << recovered << " recoveries, " << empty << " with nothing committed yet, last save " << last_seen);
  CHECK(recovered > rounds / 2);
}
}  // namespace

TEST_CASE("crash: SIGKILL at random moments never yields a wrong or partial recovery", "[crash]") {
  crash_rounds(200, /*async=*/false);
}

TEST_CASE("crash: SIGKILL during background (async) saves never yields a wrong or partial recovery", "[crash][async]") {
  crash_rounds(100, /*async=*/true);
}
