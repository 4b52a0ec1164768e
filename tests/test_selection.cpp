// Selecting checkpoints: SpeechBrain's min/max/importance/predicate semantics, ported tests.
#include "support.hpp"

#include "catch.hpp"

#include <cmath>

using namespace savepoint;
using test::TempDir;

namespace {
struct Selection {
  TempDir dir;
  int v = 0;
  Checkpointer ckpt{dir.path(), {{"v", v}}};
  Checkpoint save(const nlohmann::json& meta) { return ckpt.save_checkpoint(meta); }
};
}  // namespace

TEST_CASE("min_key, max_key and importance_key pick the best checkpoint", "[select]") {
  Selection f;
  const auto a = f.save({{"loss", 3.0}, {"acc", 0.5}});
  const auto b = f.save({{"loss", 1.0}, {"acc", 0.9}});
  const auto c = f.save({{"loss", 2.0}, {"acc", 0.7}});
  CHECK(*f.ckpt.find_checkpoint() == c);
  CHECK(*f.ckpt.find_checkpoint(min_key("loss")) == b);
  CHECK(*f.ckpt.find_checkpoint(max_key("acc")) == b);
  CHECK(*f.ckpt.find_checkpoint(importance_key([](const Checkpoint& x) { return -std::abs(x.meta["loss"].get<double>() - 3.1); })) == a);
  CHECK(f.ckpt.find_checkpoints(min_key("loss")) == std::vector<Checkpoint>{b, c, a});
  CHECK(f.ckpt.find_checkpoints(max_key("acc"), 2) == std::vector<Checkpoint>{b, c});
}

TEST_CASE("only checkpoints that have the key are considered for min/max", "[select]") {
  Selection f;
  const auto with = f.save({{"loss", 5.0}});
  f.save({{"other", 1}});
  CHECK(*f.ckpt.find_checkpoint(min_key("loss")) == with);
  CHECK(f.ckpt.find_checkpoints(max_key("loss")).size() == 1);
  CHECK_FALSE(f.ckpt.find_checkpoint(min_key("absent")).has_value());
  CHECK_FALSE(f.ckpt.recover_if_possible(min_key("absent")).has_value());
}

TEST_CASE("NaN and infinite metrics never win best", "[select]") {
  Selection f;
  f.save({{"loss", std::nan("")}});  // JSON stores NaN as null
  const auto real = f.save({{"loss", 7.0}});
  f.save({{"loss", -INFINITY}});
  f.save({{"loss", "not a number"}});
  CHECK(*f.ckpt.find_checkpoint(min_key("loss")) == real);
  CHECK(*f.ckpt.find_checkpoint(max_key("loss")) == real);
  CHECK(f.ckpt.find_checkpoints(min_key("loss")).front() == real);
  // importance functions returning NaN rank last
  const auto ranked = f.ckpt.find_checkpoints(importance_key([](const Checkpoint& c) {
    return c.meta["loss"].is_number() ? c.meta["loss"].get<double>() : std::nan("");
  }));
  CHECK(ranked.front() == real);
}

TEST_CASE("a predicate filters what can be selected", "[select]") {
  Selection f;
  const auto fast = f.save({{"loss", 1.0}, {"validation", "fast"}});
  f.save({{"loss", 0.5}, {"validation", "full"}});
  const auto is_fast = [](const Checkpoint& c) { return c.meta.value("validation", "") == "fast"; };
  CHECK(*f.ckpt.find_checkpoint(min_key("loss").where(is_fast)) == fast);
  CHECK(*f.ckpt.find_checkpoint(where(is_fast)) == fast);
  // SpeechBrain's tutorial: importance + predicate
  const auto c = f.save({{"loss", 12.1}, {"validation", "fast"}, {"num-examples", 2}});
  const auto best = f.ckpt.find_checkpoint(
      importance_key([](const Checkpoint& x) { return -x.meta["loss"].get<double>() / x.meta.value("num-examples", 1.0); })
          .where(is_fast));
  CHECK(*best == fast);
  (void)c;
}

TEST_CASE("conflicting selectors raise", "[select]") {
  Selection f;
  f.save({{"loss", 1.0}});
  Selector s = min_key("loss");
  s.max_key = "acc";
  CHECK_THROWS_AS(f.ckpt.find_checkpoint(s), UsageError);
  Selector t = importance_key([](const Checkpoint&) { return 1.0; });
  t.min_key = "loss";
  CHECK_THROWS_WITH(f.ckpt.recover_if_possible(t), Catch::Contains("only one of"));
  CHECK_THROWS_AS(f.ckpt.find_checkpoint(min_key("")), UsageError);
}

TEST_CASE("equal metrics break ties by recency, newest first (SpeechBrain)", "[select]") {
  // Port of speechbrain test_multiple_ckpts_and_criteria.
  Selection f;
  f.ckpt.save_and_keep_only({{"error", 5}}, KeepOptions().min_key("error"));
  const auto first = *f.ckpt.find_checkpoint();
  f.ckpt.save_and_keep_only({{"error", 5}}, KeepOptions().min_key("error"));
  const auto second = *f.ckpt.find_checkpoint();
  CHECK(first.meta["unixtime"].get<double>() < second.meta["unixtime"].get<double>());
  f.ckpt.save_and_keep_only({{"error", 6}}, KeepOptions().min_key("error"));
  const auto third = *f.ckpt.find_checkpoint();
  const auto remaining = f.ckpt.list_checkpoints();
  CHECK(std::find(remaining.begin(), remaining.end(), first) == remaining.end());
  CHECK(std::find(remaining.begin(), remaining.end(), second) != remaining.end());
  CHECK(std::find(remaining.begin(), remaining.end(), third) != remaining.end());
  const auto fourth = f.save({{"error", 5}});
  CHECK(*f.ckpt.find_checkpoint(min_key("error")) == fourth);
  const auto fifth = f.save({{"error", 5}});
  CHECK(f.ckpt.find_checkpoints(min_key("error"), 2) == std::vector<Checkpoint>{fifth, fourth});
}

TEST_CASE("recover_if_possible with min_key loads the best model", "[select]") {
  TempDir dir;
  double weight = 0;
  Checkpointer ckpt(dir.path(), {{"w", weight}});
  for (double w : {4.0, 1.0, 3.0}) {
    weight = w;
    ckpt.save_checkpoint({{"loss", w * w}});
  }
  weight = -1;
  const auto loaded = ckpt.recover_if_possible(min_key("loss"));
  REQUIRE(loaded);
  CHECK(weight == 1.0);
  CHECK(loaded->meta["loss"] == 1.0);
}
