// Async saves: snapshot then background write; one in flight; errors surface; destruction waits.
#include "support.hpp"

#include <savepoint/detail/io.hpp>

#include "catch.hpp"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <thread>

using namespace savepoint;
using test::TempDir;
namespace fs = std::filesystem;

namespace {
// Makes every background open() wait, so the training thread surely runs ahead of the write.
// Like every test::FaultGuard, it must outlive the save it slows down.
struct SlowWrites : test::FaultGuard {
  explicit SlowWrites(int ms)
      : test::FaultGuard([ms](detail::IoOp op, const fs::path&) {
          if (op == detail::IoOp::open) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
          return detail::Fault{};
        }) {}
};

}  // namespace

TEST_CASE("async: the checkpoint holds the state at the call, not what the loop changed later", "[async]") {
  TempDir dir;
  std::vector<double> weights{1, 2, 3};
  std::string note = "epoch 1";
  Checkpointer ckpt(dir.path(), {{"weights", weights}, {"note", note}});
  {
    SlowWrites slow(100);
    ckpt.save_checkpoint_async({{"epoch", 1}});
    weights = {7, 8, 9};  // the training thread moves on at once
    note = "epoch 2";
    CHECK(ckpt.list_checkpoints().empty());  // not committed yet: nobody sees it
    const auto saved = ckpt.wait();
    REQUIRE(saved);
    CHECK(saved->meta["epoch"] == 1);
    CHECK(ckpt.verify(*saved).empty());
  }
  CHECK_FALSE(ckpt.wait());  // nothing new since the last wait
  weights.clear();
  note.clear();
  REQUIRE(ckpt.recover_if_possible());
  CHECK(weights == std::vector<double>{1, 2, 3});
  CHECK(note == "epoch 1");
}

TEST_CASE("async: one save in flight, the next call waits, order and retention follow commits", "[async]") {
  TempDir dir;
  int step = 0;
  Checkpointer ckpt(dir.path(), {{"step", step}});
  for (step = 1; step <= 5; ++step) ckpt.save_and_keep_only_async({{"step", step}}, keep(2));
  const auto last = ckpt.wait();
  REQUIRE(last);
  CHECK(last->meta["step"] == 5);
  const auto left = ckpt.list_checkpoints();
  REQUIRE(left.size() == 2);
  CHECK(left[0].meta["step"] == 4);
  CHECK(left[1].meta["step"] == 5);
  CHECK(left[0].sequence < left[1].sequence);
  // A synchronous save after an async one waits for it too.
  ckpt.save_checkpoint_async({{"step", 6}});
  const auto sync = ckpt.save_checkpoint({{"step", 7}});
  CHECK(ckpt.list_checkpoints().size() == 4);
  CHECK(ckpt.find_checkpoint()->meta["step"] == 7);
  (void)sync;
}

TEST_CASE("async: a background failure is raised by wait() and earlier checkpoints stay intact", "[async][io]") {
  TempDir dir;
  int step = 1;
  Checkpointer ckpt(dir.path(), {{"step", step}});
  const auto good = ckpt.save_checkpoint({{"step", 1}});
  {
    // Installed before the save starts, removed only after wait() saw it finish.
    test::FaultGuard eio([&](detail::IoOp op, const fs::path& p) {
      const bool meta = p.filename() == "meta.json";
      return op == detail::IoOp::write && meta ? detail::Fault{EIO} : detail::Fault{};
    });
    step = 2;
    CHECK_NOTHROW(ckpt.save_checkpoint_async({{"step", 2}}));  // the failure happens later
    CHECK_THROWS_AS(ckpt.wait(), IoError);
  }
  CHECK_NOTHROW(ckpt.wait());  // raised once, not forever
  CHECK(ckpt.list_checkpoints() == std::vector<Checkpoint>{good});
  CHECK(test::leftovers(dir.path()).empty());

  // Without wait(): the next save raises it, before starting anything. The hook stays
  // installed until that next save returned (it waits for the background save first), and
  // fails only the first meta.json write, so the only ENOSPC there is is step 3's.
  {
    std::atomic<int> meta_writes{0};
    test::FaultGuard enospc([&](detail::IoOp op, const fs::path& p) {
      const bool first_meta = op == detail::IoOp::write && p.filename() == "meta.json" &&
                              meta_writes.fetch_add(1) == 0;
      return first_meta ? detail::Fault{ENOSPC} : detail::Fault{};
    });
    ckpt.save_checkpoint_async({{"step", 3}});
    try {
      ckpt.save_checkpoint({{"step", 4}});
      FAIL("the earlier background failure must surface");
    } catch (const IoError& e) {
      CHECK(e.error_code() == ENOSPC);
    }
    CHECK(meta_writes.load() == 1);  // step 4 did not start writing
  }
  CHECK(ckpt.list_checkpoints() == std::vector<Checkpoint>{good});
  ckpt.save_checkpoint({{"step", 4}});  // and then saving works again
  CHECK(ckpt.list_checkpoints().size() == 2);
}

TEST_CASE("async: destroying the Checkpointer waits for the save in flight", "[async]") {
  TempDir dir;
  int step = 3;
  {
    SlowWrites slow(50);  // outlives the Checkpointer, whose destructor waits for the save
    Checkpointer ckpt(dir.path(), {{"step", step}});
    ckpt.save_checkpoint_async({{"step", 3}});
  }
  step = 0;
  Checkpointer again(dir.path(), {{"step", step}});
  REQUIRE(again.recover_if_possible());
  CHECK(step == 3);
  CHECK(test::leftovers(dir.path()).empty());
}

TEST_CASE("async: usage errors are raised at the call, nothing starts", "[async]") {
  TempDir dir;
  int step = 0;
  Checkpointer ckpt(dir.path(), {{"step", step}});
  CHECK_THROWS_AS(ckpt.save_checkpoint_async({{"unixtime", 1}}), UsageError);
  CHECK_THROWS_AS(ckpt.save_and_keep_only_async({}, keep(-1)), UsageError);
  CHECK_FALSE(ckpt.wait());
  CHECK(ckpt.list_checkpoints().empty());
  Checkpointer reader(dir.path(), CheckpointerOptions().read_only(true));
  CHECK_THROWS_AS(reader.save_checkpoint_async(), UsageError);
}
