// Retention: delete_checkpoints / save_and_keep_only with SpeechBrain's semantics.
#include "support.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join

#include "catch.hpp"

using namespace savepoint;
using test::TempDir;

namespace {
bool contains(const std::vector<Checkpoint>& v, const Checkpoint& c) {
  return std::find(v.begin(), v.end(), c) != v.end();
}
}  // namespace

TEST_CASE("delete_checkpoints keeps the newest by default (SpeechBrain test_checkpoint_deletion)", "[retention]") {
  TempDir dir;
  int v = 0;
  Checkpointer ckpt(dir.path(), {{"recoverable", v}});
  const auto first = ckpt.save_checkpoint();
  ckpt.delete_checkpoints(KeepOptions());
  CHECK(contains(ckpt.list_checkpoints(), first));  // the only checkpoint survives
  const auto second = ckpt.save_checkpoint();
  ckpt.delete_checkpoints(KeepOptions());
  CHECK_FALSE(contains(ckpt.list_checkpoints(), first));
  ckpt.save_and_keep_only();
  CHECK_FALSE(contains(ckpt.list_checkpoints(), second));
  CHECK(ckpt.list_checkpoints().size() == 1);
  ckpt.delete_checkpoints(KeepOptions().num_to_keep(0));
  CHECK(ckpt.list_checkpoints().empty());
  CHECK(test::entries(dir.path()) == std::vector<std::string>{".savepoint.lock"});
}

TEST_CASE("keep(2).min_key protects the 2 best by loss and the 2 newest", "[retention]") {
  TempDir dir;
  int v = 0;
  Checkpointer ckpt(dir.path(), {{"v", v}});
  std::vector<Checkpoint> saved;
  for (double loss : {5.0, 2.0, 4.0, 1.0, 3.0, 6.0}) {
    saved.push_back(ckpt.save_and_keep_only({{"loss", loss}}, keep(2).min_key("loss")));
  }
  // SpeechBrain: num_to_keep applies to each key, recency included.
  CHECK(ckpt.list_checkpoints() == std::vector<Checkpoint>{saved[1], saved[3], saved[4], saved[5]});
}

TEST_CASE("a save with retention logs two lines at info: the save, and what retention kept by which rule",
          "[retention][log]") {
  TempDir dir;
  int v = 0;
  Checkpointer ckpt(dir.path(), {{"v", v}});
  set_log_level(LogLevel::info);
  struct Restore {
    ~Restore() { set_log_level(LogLevel::warn); }
  } restore;
  std::vector<Checkpoint> saved;
  for (double loss : {0.3, 0.4, 0.5}) {
    test::CaptureLog log;
    saved.push_back(ckpt.save_and_keep_only({{"loss", loss}}, keep(2).min_key("loss")));
    INFO(fmt::format("{}", fmt::join(log.lines, "\n")));
    REQUIRE(log.lines.size() == 2);
    CHECK(log.lines[0] == "Saved an end-of-epoch checkpoint in " + saved.back().path.string() + " (1 files, 0.0 MiB)");
    CHECK(log.lines[1] == "Retention in " + dir.path().string() + ": kept " + std::to_string(saved.size()) +
                              " (2 lowest loss, 2 newest, the newest protected); deleted none");
  }
  test::CaptureLog log;
  ckpt.save_and_keep_only({{"loss", 0.35}}, keep(2).min_key("loss"));  // 0.4 is neither of the 2 best nor 2 newest
  REQUIRE(log.lines.size() == 2);
  CHECK(log.lines[1] == "Retention in " + dir.path().string() +
                            ": kept 3 (2 lowest loss, 2 newest, the newest protected); deleted " + saved[1].name());
  set_log_level(LogLevel::warn);
  test::CaptureLog quiet;
  ckpt.save_and_keep_only({{"loss", 0.7}}, keep(2).min_key("loss"));
  CHECK(quiet.lines.empty());  // info is off by default
}

TEST_CASE("several keys protect the union of their top-N", "[retention]") {
  TempDir dir;
  int v = 0;
  Checkpointer ckpt(dir.path(), {{"v", v}});
  const auto a = ckpt.save_checkpoint({{"loss", 1.0}, {"acc", 0.1}});
  const auto b = ckpt.save_checkpoint({{"loss", 9.0}, {"acc", 0.9}});
  const auto c = ckpt.save_checkpoint({{"loss", 5.0}, {"acc", 0.5}});
  const auto d = ckpt.save_checkpoint({{"loss", 6.0}, {"acc", 0.4}});
  // keep_newest(false): without it d, the newest, would be kept too (test_traps.cpp).
  const auto deleted =
      ckpt.delete_checkpoints(keep(1).min_key("loss").max_key("acc").keep_recent(false).keep_newest(false));
  const auto left = ckpt.list_checkpoints();
  CHECK(left == std::vector<Checkpoint>{a, b});
  CHECK(deleted == std::vector<Checkpoint>{c, d});
}

TEST_CASE("the predicate says what may be deleted", "[retention]") {
  // Brain's intra-epoch pattern: keep only the newest intra-epoch checkpoint, never touch others.
  TempDir dir;
  int v = 0;
  Checkpointer ckpt(dir.path(), {{"v", v}});
  const auto eoe = ckpt.save_checkpoint({{"loss", 1.0}});
  const auto intra = [](const Checkpoint& c) { return c.meta.contains("intra_epoch_ckpt"); };
  for (int i = 0; i < 3; ++i)
    ckpt.save_and_keep_only({{"intra_epoch_ckpt", true}}, keep(1).predicate(intra), intra_epoch());
  auto left = ckpt.list_checkpoints();
  REQUIRE(left.size() == 2);
  CHECK(left[0] == eoe);
  CHECK(left[1].meta.contains("intra_epoch_ckpt"));
  // The next end-of-epoch save with min_keys removes the leftover intra-epoch checkpoint.
  const auto next = ckpt.save_and_keep_only({{"loss", 2.0}}, keep(1).min_key("loss"));
  left = ckpt.list_checkpoints();
  CHECK(left == std::vector<Checkpoint>{eoe, next});
}

TEST_CASE("checkpoints lacking a min/max key stay candidates through recency", "[retention]") {
  TempDir dir;
  int v = 0;
  Checkpointer ckpt(dir.path(), {{"v", v}});
  const auto nokey = ckpt.save_checkpoint({{"other", 1}});
  ckpt.save_checkpoint({{"loss", 2.0}});
  const auto last = ckpt.save_checkpoint({{"loss", 1.0}});
  ckpt.delete_checkpoints(keep(1).min_key("loss"));
  CHECK(ckpt.list_checkpoints() == std::vector<Checkpoint>{last});
  (void)nokey;
}

TEST_CASE("NaN metrics are never protected as best", "[retention]") {
  TempDir dir;
  int v = 0;
  Checkpointer ckpt(dir.path(), {{"v", v}});
  ckpt.save_checkpoint({{"loss", std::nan("")}});
  const auto good = ckpt.save_checkpoint({{"loss", 3.0}});
  ckpt.save_checkpoint({{"loss", std::nan("")}});
  const auto newest = ckpt.save_checkpoint({{"loss", std::nan("")}});
  ckpt.delete_checkpoints(keep(2).min_key("loss").keep_recent(true).num_to_keep(1));
  CHECK(ckpt.list_checkpoints() == std::vector<Checkpoint>{good, newest});
}

TEST_CASE("keep_recent(false) without keys deletes nothing (SpeechBrain semantics)", "[retention]") {
  TempDir dir;
  int v = 0;
  Checkpointer ckpt(dir.path(), {{"v", v}});
  for (int i = 0; i < 3; ++i) ckpt.save_checkpoint();
  CHECK(ckpt.delete_checkpoints(KeepOptions().keep_recent(false)).empty());
  CHECK(ckpt.list_checkpoints().size() == 3);
}

TEST_CASE("num_to_keep < 0 raises before anything is saved", "[retention]") {
  TempDir dir;
  int v = 0;
  Checkpointer ckpt(dir.path(), {{"v", v}});
  CHECK_THROWS_AS(ckpt.save_and_keep_only({}, keep(-1)), UsageError);
  CHECK(ckpt.list_checkpoints().empty());
  CHECK_THROWS_AS(ckpt.delete_checkpoints(keep(-1)), UsageError);
}

TEST_CASE("save_and_keep_only with num_to_keep(0) may delete the new checkpoint itself", "[retention]") {
  TempDir dir;
  int v = 0;
  Checkpointer ckpt(dir.path(), {{"v", v}});
  const auto saved = ckpt.save_and_keep_only({}, keep(0));
  CHECK(ckpt.list_checkpoints().empty());
  CHECK_FALSE(std::filesystem::exists(saved.path));
}

TEST_CASE("delete_checkpoint refuses what is not one of our checkpoints", "[retention]") {
  TempDir dir;
  int v = 0;
  Checkpointer ckpt(dir.path(), {{"v", v}});
  Checkpoint fake;
  fake.path = dir.path();  // the root itself
  CHECK_THROWS_WITH(ckpt.delete_checkpoint(fake), Catch::Contains("refusing"));
  std::filesystem::create_directories(dir / "CKPT+nometa");
  fake.path = dir / "CKPT+nometa";
  CHECK_THROWS_AS(ckpt.delete_checkpoint(fake), UsageError);
  CHECK(std::filesystem::exists(dir / "CKPT+nometa"));
}
