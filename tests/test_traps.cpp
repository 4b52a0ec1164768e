// The traps a SpeechBrain user falls into when porting line by line (issue 12, item 7).
#include "support.hpp"

#include "catch.hpp"

#include <cmath>
#include <map>

using namespace savepoint;
using test::TempDir;

namespace {
std::vector<std::int64_t> epochs_of(const std::vector<Checkpoint>& cs) {
  std::vector<std::int64_t> out;
  for (const auto& c : cs) out.push_back(c.meta_value<std::int64_t>("epoch").value_or(-1));
  return out;
}
}  // namespace

TEST_CASE("keep_best alone never deletes the checkpoint just saved: recovery resumes from the newest epoch",
          "[traps][retention]") {
  TempDir dir;
  int state = 0;
  Checkpointer ckpt(dir.path(), {{"state", state}});
  // Epoch 3's loss is the worst of the three: keep_best(2) alone would have deleted it.
  for (auto [epoch, loss] : std::vector<std::pair<int, double>>{{1, 0.5}, {2, 0.4}, {3, 0.9}}) {
    state = epoch;
    ckpt.save_and_keep_only({{"epoch", epoch}, {"loss", loss}}, keep_best(2, min_key("loss")));
  }
  CHECK(epochs_of(ckpt.list_checkpoints()) == std::vector<std::int64_t>{1, 2, 3});
  int resumed = 0;
  Checkpointer again(dir.path(), {{"state", resumed}});
  REQUIRE(again.recover_if_possible());
  CHECK(resumed == 3);  // not 2: no training progress lost

  // Epoch 4 is better: now epoch 3 is neither among the best 2 nor the newest, and goes.
  state = 4;
  ckpt.save_and_keep_only({{"epoch", 4}, {"loss", 0.1}}, keep_best(2, min_key("loss")));
  CHECK(epochs_of(ckpt.list_checkpoints()) == std::vector<std::int64_t>{2, 4});
  // The same for every policy and key rule that does not mention recency.
  state = 5;
  ckpt.save_and_keep_only({{"epoch", 5}, {"loss", 7.0}}, keep_epochs({2}));
  CHECK(epochs_of(ckpt.list_checkpoints()) == std::vector<std::int64_t>{2, 5});
  state = 6;
  ckpt.save_and_keep_only({{"epoch", 6}, {"loss", 8.0}},
                          KeepOptions().keep_recent(false).min_key("loss"));  // protects epoch 2 (best)
  CHECK(epochs_of(ckpt.list_checkpoints()) == std::vector<std::int64_t>{2, 6});
}

TEST_CASE("the newest checkpoint goes only when the caller says so explicitly", "[traps][retention]") {
  TempDir dir;
  int state = 0;
  Checkpointer ckpt(dir.path(), {{"state", state}});
  for (int epoch = 1; epoch <= 3; ++epoch) ckpt.save_checkpoint({{"epoch", epoch}, {"loss", 1.0 / epoch}});
  // Explicit: keep(0), keep_latest(0), keep_newest(false).
  CHECK(ckpt.plan_deletions(keep(0)).size() == 3);
  CHECK(ckpt.plan_deletions(keep_latest(0)).size() == 3);
  CHECK(ckpt.plan_deletions(KeepOptions(keep_best(1, max_key("loss"))).keep_newest(false)).size() == 2);
  // Not explicit: a rule that keeps something else, or keep_latest(0) joined with one.
  CHECK(ckpt.plan_deletions(keep_best(1, max_key("loss"))).size() == 1);
  CHECK(ckpt.plan_deletions(keep_latest(0) | keep_epochs({1})).size() == 1);
  CHECK(ckpt.plan_deletions(keep(0).also(keep_epochs({1}))).size() == 1);
  // keep_newest(true) protects it even under keep(0).
  CHECK(ckpt.plan_deletions(keep(0).keep_newest(true)).size() == 2);
  ckpt.delete_checkpoints(keep_best(1, max_key("loss")));
  CHECK(epochs_of(ckpt.list_checkpoints()) == std::vector<std::int64_t>{1, 3});
}

TEST_CASE("metric() and meta_value() read meta safely in selector lambdas", "[traps][selection]") {
  TempDir dir;
  int state = 0;
  Checkpointer ckpt(dir.path(), {{"state", state}});
  ckpt.save_checkpoint({{"loss", 15.5}, {"validation-type", "fast"}, {"num-examples", 3}});
  ckpt.save_checkpoint({{"loss", 14.4}, {"validation-type", "full"}});  // no num-examples
  ckpt.save_checkpoint({{"loss", "n/a"}});                              // not a number
  const auto all = ckpt.list_checkpoints();
  CHECK(all[0].metric("loss") == 15.5);
  CHECK(all[0].metric("num-examples") == 3.0);
  CHECK_FALSE(all[1].metric("num-examples"));
  CHECK_FALSE(all[2].metric("loss"));
  CHECK(all[1].meta_value<std::string>("validation-type") == "full");
  CHECK_FALSE(all[2].meta_value<std::string>("validation-type"));
  CHECK_FALSE(all[2].meta_value<double>("loss"));  // a string is not a double
  // An importance over checkpoints that lack the key: no UB, such checkpoints rank last.
  const auto best = ckpt.find_checkpoint(importance_key([](const Checkpoint& c) {
    const auto loss = c.metric("loss");
    const auto n = c.metric("num-examples");
    return loss && n ? -*loss / *n : NAN;
  }));
  REQUIRE(best);
  CHECK(best->metric("loss") == 15.5);
}

namespace {
struct Counter {
  int value = 0;
};
void to_json(nlohmann::json& j, const Counter& c) { j = c.value; }
void from_json(const nlohmann::json& j, Counter& c) { c.value = j.get<int>(); }
}  // namespace

TEST_CASE("add_recoverables takes a map built at run time", "[traps][registry]") {
  TempDir dir;
  std::map<std::string, Counter> heads;
  for (int i = 0; i < 3; ++i) heads["head" + std::to_string(i)].value = 10 * i;
  std::vector<std::pair<std::string, int>> extras{{"a", 1}, {"b", 2}};
  {
    Checkpointer ckpt(dir.path());
    ckpt.add_recoverables(heads);
    ckpt.add_recoverables(extras);
    CHECK(ckpt.keys() == std::vector<std::string>{"head0", "head1", "head2", "a", "b"});
    ckpt.save_checkpoint();
  }
  std::map<std::string, Counter> loaded{{"head0", {}}, {"head1", {}}, {"head2", {}}};
  Checkpointer again(dir.path(), CheckpointerOptions().allow_partial_load(true));
  again.add_recoverables(loaded);
  REQUIRE(again.recover_if_possible());
  CHECK(loaded["head2"].value == 20);
  CHECK(loaded["head1"].value == 10);
}

TEST_CASE("IntervalSaver deletes only the intra-epoch checkpoints it wrote", "[traps][training]") {
  TempDir dir;
  int step = 0;
  Checkpointer ckpt(dir.path(), {{"step", step}});
  IntervalSaver saver(ckpt, IntervalOptions().every_steps(2).preemption_signals({}));
  const auto mine = ckpt.save_checkpoint({{"note", "user's own"}}, intra_epoch());
  const auto labelled = ckpt.save_checkpoint({{"saved_by", "me"}}, intra_epoch());
  for (step = 1; step <= 6; ++step) saver.after_step({{"step", step}});
  auto left = ckpt.list_checkpoints();
  REQUIRE(left.size() == 3);  // the two of the program, the newest of the saver
  CHECK(left[0] == mine);
  CHECK(left[1] == labelled);
  CHECK(left[2].meta_value<std::string>("saved_by") == "interval");
  CHECK(left[2].meta_value<int>("step") == 6);
  saver.save_end_of_epoch({{"epoch", 1}}, keep_latest(10));
  left = ckpt.list_checkpoints();
  REQUIRE(left.size() == 3);
  CHECK(left[0] == mine);
  CHECK(left[1] == labelled);
  CHECK(left[2].end_of_epoch());
}
