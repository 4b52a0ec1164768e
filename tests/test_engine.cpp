// The engine's contracts: hooks that return payloads, errors that keep their cause, stale
// Checkpoint values refused, names and sequence numbers never reused, one retention planner,
// the I/O seam under listing and commit.
#include "support.hpp"

#include <savepoint/detail/io.hpp>

#include "catch.hpp"

#include <new>
#include <set>

using namespace savepoint;
using test::TempDir;
namespace fs = std::filesystem;

namespace {
// A type whose hooks return payloads directly (the TypeHooks level).
struct Gauge {
  double value = 0;
  bool write_own_file = false;
};
TypeHooks gauge_hooks() {
  TypeHooks h;
  h.name = "test.Gauge";
  h.extension = ".json";
  h.save = [](void* object, const SaveContext& ctx) {
    const auto& g = *static_cast<Gauge*>(object);
    if (!g.write_own_file) return Payload::json({{"value", g.value}});
    test::write_text(ctx.file, nlohmann::json{{"value", g.value}}.dump());
    return Payload::file();
  };
  h.prepare_load = [](void* object, const LoadContext& ctx) -> Apply {
    const auto bytes = ctx.bytes();
    const double v = nlohmann::json::parse(bytes.begin(), bytes.end()).at("value").get<double>();
    return [object, v] { static_cast<Gauge*>(object)->value = v; };
  };
  return h;
}

struct Thrower {
  bool on_save = false, on_load = false, bad_alloc = false;
  void save(const fs::path& p) const {
    if (on_save) throw std::runtime_error("sensor offline");
    test::write_text(p, "x");
  }
  void load(const fs::path&, bool) {
    if (bad_alloc) throw std::bad_alloc();
    if (on_load) throw std::runtime_error("cannot parse my own file");
  }
};
}  // namespace

TEST_CASE("a hook returns what to store, the engine writes and checksums it", "[engine][payload]") {
  hook_table().add<Gauge>(gauge_hooks());
  TempDir dir;
  Gauge g{2.5};
  Checkpointer ckpt(dir.path(), {{"gauge", g}});
  const auto json_saved = ckpt.save_checkpoint();
  CHECK(nlohmann::json::parse(test::read_file(json_saved.path / "gauge.json")) == nlohmann::json{{"value", 2.5}});
  CHECK(json_saved.file("gauge")->hook == "test.Gauge");
  CHECK(json_saved.file("gauge")->bytes == fs::file_size(json_saved.path / "gauge.json"));
  g.write_own_file = true;
  g.value = 4;
  const auto file_saved = ckpt.save_checkpoint();
  CHECK(ckpt.verify(file_saved).empty());  // the engine read the hook's own file back
  g.value = 0;
  ckpt.load_checkpoint(json_saved);
  CHECK(g.value == 2.5);
  ckpt.load_checkpoint(file_saved);
  CHECK(g.value == 4);
  // Async: the JSON document is captured at the call.
  g.write_own_file = false;
  g.value = 7;
  ckpt.save_checkpoint_async();
  g.value = 8;
  const auto async_saved = ckpt.wait();
  REQUIRE(async_saved);
  ckpt.load_checkpoint(*async_saved);
  CHECK(g.value == 7);
}

TEST_CASE("a failing save hook raises HookError naming key, hook and checkpoint, cause nested", "[engine][errors]") {
  TempDir dir;
  Thrower t;
  Checkpointer ckpt(dir.path(), {{"sensor", t}});
  const auto good = ckpt.save_checkpoint();
  t.on_save = true;
  try {
    ckpt.save_checkpoint();
    FAIL("expected HookError");
  } catch (const HookError& e) {
    CHECK(e.key() == "sensor");
    CHECK_FALSE(e.hook().empty());
    CHECK(e.checkpoint().parent_path() == dir.path());
    CHECK(std::string(e.what()).find("sensor offline") != std::string::npos);
    try {
      e.rethrow_nested();
      FAIL("no nested exception");
    } catch (const std::runtime_error& cause) {
      CHECK(std::string(cause.what()) == "sensor offline");
    }
  }
  CHECK(ckpt.list_checkpoints() == std::vector<Checkpoint>{good});
  CHECK(test::leftovers(dir.path()).empty());
}

TEST_CASE("a hook failing during a load is raised as it is, never as damage, and recovery does not fall back",
          "[engine][errors]") {
  TempDir dir;
  Thrower t;
  int counter = 1;
  Checkpointer ckpt(dir.path(), {{"sensor", t}, {"counter", counter}});
  ckpt.save_checkpoint();
  counter = 2;
  ckpt.save_checkpoint();
  counter = 0;
  t.on_load = true;
  test::CaptureLog log;
  CHECK_THROWS_AS(ckpt.recover_if_possible(), HookError);
  CHECK_FALSE(log.contains("Skipping"));  // the older checkpoint was not tried
  CHECK(counter == 0);  // its Apply comes after the failing one (registration order)
  t.on_load = false;
  t.bad_alloc = true;
  CHECK_THROWS_AS(ckpt.recover_if_possible(), std::bad_alloc);
  CHECK_FALSE(log.contains("Skipping"));
}

TEST_CASE("a stale Checkpoint value never acts on the checkpoint that took its place", "[engine][identity]") {
  TempDir dir;
  int v = 1;
  Checkpointer ckpt(dir.path(), {{"v", v}});
  const auto first = ckpt.save_checkpoint();
  ckpt.delete_checkpoints(keep(0));  // retention deletes `first`
  v = 2;
  const auto second = ckpt.save_checkpoint();  // within the same second, as often as not
  CHECK(second.path != first.path);            // a directory name is never reused
  CHECK(second.sequence > first.sequence);     // nor a sequence number
  CHECK_THROWS_AS(ckpt.delete_checkpoint(first), StaleCheckpointError);
  CHECK_THROWS_AS(ckpt.pin(first), StaleCheckpointError);
  CHECK_THROWS_AS(ckpt.load_checkpoint(first), StaleCheckpointError);
  CHECK(ckpt.list_checkpoints() == std::vector<Checkpoint>{second});

  // A named checkpoint replaced by overwrite: the old value is stale, even for verify.
  const auto best = ckpt.save_checkpoint({}, named("best"));
  const auto best2 = ckpt.save_checkpoint({}, named("best").overwrite(true));
  CHECK(best2.path == best.path);
  CHECK_THROWS_AS(ckpt.verify(best), StaleCheckpointError);
  CHECK_THROWS_WITH(ckpt.unpin(best), Catch::Contains("sequence"));
  CHECK(ckpt.verify(best2).empty());
  ckpt.delete_checkpoint(best2);
  CHECK(ckpt.list_checkpoints() == std::vector<Checkpoint>{second});
}

TEST_CASE("names and sequence numbers stay unique across processes and deletions of the newest", "[engine][identity]") {
  TempDir dir;
  int v = 0;
  std::set<std::string> names;
  std::uint64_t last_sequence = 0;
  for (int round = 0; round < 5; ++round) {
    Checkpointer ckpt(dir.path(), {{"v", v}});  // a new process's view: only the disk remembers
    for (int i = 0; i < 3; ++i) {
      const auto c = ckpt.save_and_keep_only({}, keep(0));  // deletes the newest every time
      CHECK(names.insert(c.name()).second);
      CHECK(c.sequence > last_sequence);
      last_sequence = c.sequence;
    }
  }
  CHECK(test::entries(dir.path()) == std::vector<std::string>{".savepoint.lock"});
}

TEST_CASE("prune's plan is the deletion itself: plan_deletions equals what delete_checkpoints deletes", "[engine][retention]") {
  TempDir dir;
  double loss = 0;
  Checkpointer ckpt(dir.path(), {{"loss", loss}});
  for (double l : {0.5, 0.2, 0.9, 0.4, 0.7}) {
    loss = l;
    ckpt.save_checkpoint({{"loss", l}});
  }
  // A damaged checkpoint is neither kept nor deleted, by the plan and by the deletion alike.
  const auto all = ckpt.list_checkpoints();
  fs::resize_file(all[1].path / "loss.json", 1);
  const auto rule = keep(2).min_key("loss");
  const auto plan = ckpt.plan_deletions(rule);
  CHECK(ckpt.list_checkpoints().size() == 5);  // planning deletes nothing
  const auto deleted = ckpt.delete_checkpoints(rule);
  CHECK(deleted == plan);
  CHECK(ckpt.list_checkpoints().size() == 5 - plan.size());
  CHECK(std::find(plan.begin(), plan.end(), all[1]) == plan.end());
}

TEST_CASE("listing errors fail a save instead of hiding a checkpoint from sequence allocation", "[engine][io]") {
  TempDir dir;
  int v = 0;
  Checkpointer ckpt(dir.path(), {{"v", v}});
  const auto first = ckpt.save_checkpoint();
  for (auto op : {detail::IoOp::list, detail::IoOp::stat}) {
    INFO(detail::io_op_name(op));
    test::FaultGuard fail_op([op](detail::IoOp o, const fs::path&) {
      return o == op ? detail::Fault{EIO} : detail::Fault{};
    });
    CHECK_THROWS_AS(ckpt.save_checkpoint(), IoError);
  }
  CHECK(ckpt.list_checkpoints() == std::vector<Checkpoint>{first});
  CHECK(test::leftovers(dir.path()).empty());
}

TEST_CASE("a CKPT+ directory without meta.json does not stop saves", "[engine][io]") {
  TempDir dir;
  int v = 0;
  fs::create_directories(dir / "CKPT+not-a-checkpoint");
  Checkpointer ckpt(dir.path(), {{"v", v}});
  const auto saved = ckpt.save_checkpoint();
  CHECK(ckpt.list_checkpoints() == std::vector<Checkpoint>{saved});
  CHECK(fs::exists(dir / "CKPT+not-a-checkpoint"));
}
