// Training-loop helpers: DataPosition, interval saves and preemption signals.
#include "support.hpp"

#include "catch.hpp"

#include <chrono>
#include <csignal>

using namespace savepoint;
using test::TempDir;

TEST_CASE("DataPosition resumes the epoch an intra-epoch checkpoint interrupted", "[training]") {
  TempDir dir;
  EpochCounter epochs(3);
  DataPosition position(42);
  Checkpointer ckpt(dir.path(), {{"epochs", epochs}, {"position", position}});
  std::vector<std::pair<std::int64_t, std::uint64_t>> seen;  // (epoch, batch) trained
  for (auto epoch : epochs) {
    CHECK(position.begin_epoch(epoch));
    for (int b = 0; b < 4; ++b) {
      position.advance();
      if (epoch == 2 && b == 1) ckpt.save_checkpoint({}, intra_epoch());
    }
  }
  CHECK(position.epoch() == 3);
  const std::uint64_t seed_epoch3 = position.epoch_seed();

  // A new process: the intra-epoch checkpoint of epoch 2 after 2 batches.
  EpochCounter epochs2(3);
  DataPosition position2(42);
  Checkpointer ckpt2(dir.path(), {{"epochs", epochs2}, {"position", position2}});
  REQUIRE(ckpt2.recover_if_possible());
  std::vector<std::pair<std::int64_t, std::uint64_t>> resumed;
  for (auto epoch : epochs2) {
    const bool fresh = position2.begin_epoch(epoch);
    CHECK(fresh == (epoch != 2));
    for (std::uint64_t b = position2.batches_done(); b < 4; ++b) {
      resumed.emplace_back(epoch, b);
      position2.advance();
    }
  }
  using P = std::pair<std::int64_t, std::uint64_t>;
  CHECK(resumed == std::vector<P>{{2, 2}, {2, 3}, {3, 0}, {3, 1}, {3, 2}, {3, 3}});
  CHECK(position2.epoch_seed() == seed_epoch3);  // the same shuffle seed on every machine
  DataPosition other_seed(43);
  other_seed.begin_epoch(3);
  CHECK(other_seed.epoch_seed() != seed_epoch3);
}

TEST_CASE("every_steps: an intra-epoch checkpoint every N steps, only the newest kept", "[training]") {
  TempDir dir;
  int step = 0;
  Checkpointer ckpt(dir.path(), {{"step", step}});
  const auto end_of_epoch = ckpt.save_checkpoint({{"epoch", 0}});
  IntervalSaver saver(ckpt, IntervalOptions().every_steps(3));
  int saves = 0;
  for (step = 1; step <= 10; ++step) saves += saver.after_step({{"step", step}}) ? 1 : 0;
  CHECK(saves == 3);  // after steps 3, 6, 9
  const auto left = ckpt.list_checkpoints();
  REQUIRE(left.size() == 2);
  CHECK(left[0] == end_of_epoch);  // end-of-epoch checkpoints are never touched
  CHECK_FALSE(left[1].end_of_epoch());
  CHECK(left[1].meta["step"] == 9);
  CHECK(left[1].meta["saved_by"] == "interval");
  CHECK(saver.steps_since_save() == 1);
  CHECK_FALSE(saver.preempted());

  // The end-of-epoch save makes the intra-epoch checkpoint redundant; it is removed.
  const auto eoe = saver.save_end_of_epoch({{"epoch", 1}}, keep(5));
  const auto after = ckpt.list_checkpoints();
  CHECK(after == std::vector<Checkpoint>{end_of_epoch, eoe});
  CHECK(saver.steps_since_save() == 0);
}

TEST_CASE("intra_epoch_to_keep keeps more than one", "[training]") {
  TempDir dir;
  int step = 0;
  Checkpointer ckpt(dir.path(), {{"step", step}});
  IntervalSaver saver(ckpt, IntervalOptions().every_steps(1).intra_epoch_to_keep(2).preemption_signals({}));
  for (step = 1; step <= 5; ++step) saver.after_step({{"step", step}});
  const auto left = ckpt.list_checkpoints();
  REQUIRE(left.size() == 2);
  CHECK(left[0].meta["step"] == 4);
  CHECK(left[1].meta["step"] == 5);
  CHECK_THROWS_AS(IntervalSaver(ckpt, IntervalOptions().intra_epoch_to_keep(0)), UsageError);
}

TEST_CASE("every_minutes: saves once the time has passed, not before", "[training]") {
  TempDir dir;
  int step = 0;
  Checkpointer ckpt(dir.path(), {{"step", step}});
  // A fake clock, advanced by hand: no sleeping, no dependence on how fast the machine is.
  auto now = std::chrono::steady_clock::time_point{} + std::chrono::hours(1);
  const auto fake_clock = [&now] { return now; };
  IntervalSaver saver(ckpt, IntervalOptions().every_minutes(0.2 / 60).clock(fake_clock));  // 200 ms
  CHECK_FALSE(saver.after_step());
  CHECK(ckpt.list_checkpoints().empty());
  now += std::chrono::milliseconds(199);
  CHECK_FALSE(saver.after_step());  // not before the time has passed
  CHECK(ckpt.list_checkpoints().empty());
  now += std::chrono::milliseconds(51);  // 250 ms since the start
  CHECK(saver.after_step());
  CHECK_FALSE(saver.after_step());  // the clock restarted
  CHECK(ckpt.list_checkpoints().size() == 1);
  now += std::chrono::milliseconds(250);  // the interval passed again since that save
  CHECK(saver.after_step());
  CHECK(ckpt.list_checkpoints().size() == 1);  // the older intra-epoch checkpoint was replaced
  CHECK_THROWS_AS(IntervalSaver(ckpt, IntervalOptions().clock(nullptr)), UsageError);
}

TEST_CASE("every_minutes uses the steady clock by default", "[training]") {
  const IntervalOptions defaults;
  REQUIRE(defaults.clock());
  const auto before = std::chrono::steady_clock::now();
  const auto t = defaults.clock()();
  CHECK(t >= before);
  CHECK(t <= std::chrono::steady_clock::now());
}

TEST_CASE("SIGTERM and SIGUSR1 request a save at the next step and a clean exit", "[training][signal]") {
  for (int signo : {SIGTERM, SIGUSR1}) {
    INFO("signal " << signo);
    TempDir dir;
    int step = 0;
    Checkpointer ckpt(dir.path(), {{"step", step}});
    struct sigaction before {};
    ::sigaction(signo, nullptr, &before);  // the test framework's own handler, or the default
    {
      IntervalSaver saver(ckpt, IntervalOptions().every_steps(1000));
      struct sigaction during {};
      ::sigaction(signo, nullptr, &during);
      CHECK(during.sa_handler != before.sa_handler);
      step = 1;
      CHECK_FALSE(saver.after_step({{"step", step}}));
      std::raise(signo);  // the handler only records it; nothing is saved inside the handler
      CHECK(IntervalSaver::pending_signal() == signo);
      CHECK(ckpt.list_checkpoints().empty());
      CHECK_FALSE(saver.preempted());
      step = 2;
      CHECK(saver.after_step({{"step", step}}));
      CHECK(saver.preempted());
      CHECK(IntervalSaver::pending_signal() == 0);
      const auto left = ckpt.list_checkpoints();
      REQUIRE(left.size() == 1);
      CHECK(left[0].meta["saved_by"] == "preemption");
      CHECK(left[0].meta["step"] == 2);
      CHECK_FALSE(left[0].end_of_epoch());
    }
    // The saver is gone: its handler was removed and the previous one is back.
    struct sigaction now {};
    ::sigaction(signo, nullptr, &now);
    CHECK(now.sa_handler == before.sa_handler);
  }
}

TEST_CASE("without preemption signals the saver leaves signal handling alone", "[training][signal]") {
  TempDir dir;
  int step = 0;
  Checkpointer ckpt(dir.path(), {{"step", step}});
  struct sigaction before {};
  ::sigaction(SIGTERM, nullptr, &before);
  IntervalSaver saver(ckpt, IntervalOptions().preemption_signals({}));
  struct sigaction now {};
  ::sigaction(SIGTERM, nullptr, &now);
  CHECK(now.sa_handler == before.sa_handler);
}
