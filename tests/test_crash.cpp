// Crash consistency: a child saves in a loop and is killed with SIGKILL at random moments.
// After every kill, recovery must load a checkpoint whose contents are exactly what one save
// wrote (all values derive from that save's counter), or find none if none was committed.
//
// Rounds: 200 by default (CI); SAVEPOINT_CRASH_ROUNDS=1000 for a longer run (docs/reliability.md).
#include "support.hpp"

#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <random>
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

[[noreturn]] void child_loop(const fs::path& dir, bool async) {
  std::int64_t counter = 0;
  std::vector<std::int64_t> history;  // JSON file written by savepoint's own writer
  Blob blob;
  try {
    Checkpointer ckpt(dir, {{"counter", counter}, {"history", history}, {"blob", blob}});
    ckpt.recover_if_possible();
    for (;;) {
      ++counter;
      history.assign(64, counter);
      blob.counter = counter;
      blob.bytes = Blob::pattern(counter);
      // Async: the next iteration changes the state while the previous save is written.
      if (async) ckpt.save_and_keep_only_async({{"i", counter}}, keep(2));
      else ckpt.save_and_keep_only({{"i", counter}}, keep(2));
    }
  } catch (...) {
    ::_exit(3);
  }
}
}  // namespace

namespace {
void crash_rounds(int default_rounds, bool async) {
  const char* env = std::getenv("SAVEPOINT_CRASH_ROUNDS");
  const int rounds = env ? std::atoi(env) : default_rounds;
  TempDir dir;
  std::mt19937 rng(12345);
  std::uniform_int_distribution<int> delay_us(0, 40000);
  std::int64_t last_seen = 0;
  int recovered = 0, empty = 0;
  for (int round = 0; round < rounds; ++round) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) child_loop(dir.path(), async);
    std::this_thread::sleep_for(std::chrono::microseconds(delay_us(rng)));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    REQUIRE(WIFSIGNALED(status));  // the child never exits on its own (3 = it hit an error)

    std::int64_t counter = -1;
    std::vector<std::int64_t> history;
    Blob blob;
    Checkpointer ckpt(dir.path(), {{"counter", counter}, {"history", history}, {"blob", blob}},
                      CheckpointerOptions().read_only(true).strict_recovery(true));
    const auto loaded = ckpt.recover_if_possible();
    if (!loaded) {
      ++empty;
      CHECK(last_seen == 0);  // once something was committed, it never disappears
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
