// EpochCounter and EpochCounterWithStopper: SpeechBrain's semantics, plus the stopper state
// that SpeechBrain forgets to save.
#include "support.hpp"

#include "catch.hpp"

using namespace savepoint;
using test::TempDir;

TEST_CASE("EpochCounter yields 1..limit and records the epoch in progress", "[epochs]") {
  EpochCounter epochs(3);
  std::vector<std::int64_t> seen;
  for (auto e : epochs) {
    seen.push_back(e);
    CHECK(epochs.current == e);
  }
  CHECK(seen == std::vector<std::int64_t>{1, 2, 3});
  for (auto e : epochs) FAIL("exhausted counter yielded " << e);
}

TEST_CASE("the nutshell loop: each run trains one epoch and resumes where it stopped", "[epochs]") {
  TempDir dir;
  std::vector<std::int64_t> trained;
  for (int run = 0; run < 4; ++run) {
    EpochCounter epochs(3);
    Checkpointer ckpt(dir.path(), {{"epochs", epochs}});
    ckpt.recover_if_possible();
    for (auto e : epochs) {
      trained.push_back(e);
      ckpt.save_and_keep_only({{"epoch", e}});
      break;  // "crash" after one epoch
    }
  }
  CHECK(trained == std::vector<std::int64_t>{1, 2, 3});
}

TEST_CASE("an intra-epoch checkpoint re-runs its epoch", "[epochs]") {
  TempDir dir;
  EpochCounter epochs(5);
  Checkpointer ckpt(dir.path(), {{"epochs", epochs}});
  epochs.next();
  epochs.next();  // in epoch 2
  const auto intra = ckpt.save_checkpoint({}, intra_epoch());
  CHECK(nlohmann::json::parse(test::read_file(intra.path / "epochs.json"))["current"] == 2);
  EpochCounter resumed(5);
  Checkpointer again(dir.path(), {{"epochs", resumed}});
  again.recover_if_possible();
  CHECK(*resumed.begin() == 2);
}

TEST_CASE("EpochCounterWithStopper stops after patience (SpeechBrain doctest)", "[epochs]") {
  EpochCounterWithStopper epochs(10, 5, 2, EpochCounterWithStopper::Direction::min);
  std::vector<std::int64_t> seen;
  for (auto e : epochs) {
    seen.push_back(e);
    epochs.update_metric(0.0);
  }
  CHECK(seen == std::vector<std::int64_t>{1, 2, 3, 4, 5, 6, 7, 8});
  CHECK(epochs.best_epoch == 3);
  CHECK_THROWS_AS(EpochCounterWithStopper(10, -1), UsageError);
}

TEST_CASE("stopper direction max and relative delta", "[epochs]") {
  EpochCounterWithStopper up(100, 2, 0, EpochCounterWithStopper::Direction::max, 0.1);
  up.next();
  up.update_metric(1.0);  // first real score always improves
  up.next();
  up.update_metric(1.05);  // +5% < 10%: no improvement
  CHECK(up.best_epoch == 1);
  up.next();
  up.update_metric(1.2);
  CHECK(up.best_epoch == 3);
  up.next();
  up.update_metric(std::nan(""));  // NaN never improves
  CHECK(up.best_epoch == 3);
  CHECK(up.best_score == 1.2);
}

TEST_CASE("the stopper's whole state survives a resume", "[epochs]") {
  TempDir dir;
  {
    EpochCounterWithStopper epochs(20, 3, 0);
    Checkpointer ckpt(dir.path(), {{"epochs", epochs}});
    for (auto e : epochs) {
      epochs.update_metric(e <= 2 ? 10.0 - static_cast<double>(e) : 50.0);  // best at epoch 2
      ckpt.save_and_keep_only();
      if (e == 4) break;
    }
  }
  EpochCounterWithStopper resumed(20, 3, 0);
  Checkpointer ckpt(dir.path(), {{"epochs", resumed}});
  ckpt.recover_if_possible();
  CHECK(resumed.current == 4);
  CHECK(resumed.best_epoch == 2);
  CHECK(resumed.best_score == 8.0);
  std::vector<std::int64_t> rest;
  for (auto e : resumed) {
    rest.push_back(e);
    resumed.update_metric(50.0);
  }
  CHECK(rest == std::vector<std::int64_t>{5});  // 5 - 2 >= 3: stop, as without the restart
  // Infinity (no score yet) round-trips through JSON too.
  EpochCounterWithStopper fresh(5, 1);
  Checkpointer c2(dir / "fresh", {{"e", fresh}});
  c2.save_checkpoint();
  fresh.best_score = 0;
  c2.recover_if_possible();
  CHECK(std::isinf(fresh.best_score));
}
