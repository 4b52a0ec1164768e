// Saving and loading: the on-disk contract, names, atomicity, partial loads, locking.
#include "spawn.hpp"
#include "support.hpp"
#include "thread_group.hpp"

#include "catch.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <regex>

using namespace savepoint;
using test::TempDir;
namespace fs = std::filesystem;

TEST_CASE("a checkpoint is a CKPT+<timestamp>+NN directory of per-key files plus meta.json", "[save]") {
  TempDir dir;
  int epoch = 3;
  std::string note = "hi";
  Checkpointer ckpt(dir.path(), {{"epoch", epoch}, {"note", note}});
  const Checkpoint saved = ckpt.save_checkpoint({{"loss", 0.25}, {"tag", "fast"}});

  CHECK(std::regex_match(saved.name(), std::regex(R"(CKPT\+\d{4}-\d\d-\d\d\+\d\d-\d\d-\d\d\+00)")));
  CHECK(saved.path.parent_path() == dir.path());
  CHECK(test::entries(saved.path) == std::vector<std::string>{"epoch.json", "meta.json", "note.json"});
  CHECK(saved.meta["loss"] == 0.25);
  CHECK(saved.meta["end_of_epoch"] == true);
  CHECK(saved.paramfiles.at("epoch") == saved.path / "epoch.json");

  const auto meta = nlohmann::json::parse(test::read_file(saved.path / "meta.json"));
  CHECK(meta["format"] == "savepoint");
  CHECK(meta["format_version"] == 1);
  CHECK(meta["meta"] == nlohmann::json({{"loss", 0.25}, {"tag", "fast"}}));
  CHECK(meta["sequence"] == 1);
  CHECK(meta["unixtime"].is_number());
  REQUIRE(meta["files"].size() == 2);
  CHECK(meta["files"][0]["key"] == "epoch");
  CHECK(meta["files"][0]["hook"] == "json");
  CHECK(meta["files"][0]["bytes"] == fs::file_size(saved.path / "epoch.json"));
  CHECK(meta["files"][0]["xxh3"].get<std::string>().size() == 16);

  // Listing finds exactly what save returned (SpeechBrain's equality).
  const auto listed = ckpt.list_checkpoints();
  REQUIRE(listed.size() == 1);
  CHECK(listed[0] == saved);
  CHECK(listed[0].sequence == saved.sequence);
  CHECK(listed[0].files == saved.files);
}

TEST_CASE("saves within one second get +00, +01, ... and order by sequence", "[save]") {
  TempDir dir;
  int v = 0;
  Checkpointer ckpt(dir.path(), {{"v", v}});
  std::vector<Checkpoint> saved;
  for (int i = 0; i < 5; ++i) {
    v = i;
    saved.push_back(ckpt.save_checkpoint({{"i", i}}));
  }
  for (std::size_t i = 1; i < saved.size(); ++i) CHECK(saved[i].sequence == saved[i - 1].sequence + 1);
  // Most recent = highest sequence, regardless of directory listing order or equal unixtimes.
  CHECK(ckpt.find_checkpoint()->meta["i"] == 4);
  const auto listed = ckpt.list_checkpoints();
  REQUIRE(listed.size() == 5);
  for (std::size_t i = 0; i < listed.size(); ++i) CHECK(listed[i].meta["i"] == static_cast<int>(i));
}

TEST_CASE("recover_if_possible loads the newest checkpoint and returns it", "[load]") {
  TempDir dir;
  int v = 1;
  Checkpointer ckpt(dir.path(), {{"v", v}});
  CHECK_FALSE(ckpt.recover_if_possible().has_value());
  ckpt.save_checkpoint();
  v = 2;
  const auto second = ckpt.save_checkpoint();
  v = 100;
  const auto loaded = ckpt.recover_if_possible();
  REQUIRE(loaded);
  CHECK(*loaded == second);
  CHECK(v == 2);
}

TEST_CASE("named checkpoints: CKPT+<name>, reuse is an error unless overwrite is asked", "[save]") {
  TempDir dir;
  int v = 1;
  Checkpointer ckpt(dir.path(), {{"v", v}});
  const auto first = ckpt.save_checkpoint({}, named("best"));
  CHECK(first.name() == "CKPT+best");
  v = 2;
  CHECK_THROWS_AS(ckpt.save_checkpoint({}, named("best")), UsageError);
  CHECK(test::read_file(first.path / "v.json") == "1\n");  // untouched
  const auto second = ckpt.save_checkpoint({{"round", 2}}, named("best").overwrite(true));
  CHECK(second.path == first.path);
  CHECK(test::read_file(second.path / "v.json") == "2\n");
  CHECK(ckpt.list_checkpoints().size() == 1);
  CHECK(ckpt.list_checkpoints()[0].meta["round"] == 2);
  // No temporary or trash directory is left behind.
  CHECK(test::entries(dir.path()) == std::vector<std::string>{".savepoint.lock", "CKPT+best"});
  CHECK_THROWS_AS(ckpt.save_checkpoint({}, named("../escape")), UsageError);
  CHECK_THROWS_AS(ckpt.save_checkpoint({}, named("a/b")), UsageError);
}

TEST_CASE("meta must be an object and may not use reserved keys", "[save]") {
  TempDir dir;
  int v = 1;
  Checkpointer ckpt(dir.path(), {{"v", v}});
  CHECK_THROWS_AS(ckpt.save_checkpoint(nlohmann::json::array({1, 2})), UsageError);
  CHECK_THROWS_WITH(ckpt.save_checkpoint({{"unixtime", 5}}), Catch::Contains("reserved"));
  CHECK_THROWS_AS(ckpt.save_checkpoint({{"end_of_epoch", false}}), UsageError);
  CHECK(ckpt.list_checkpoints().empty());
}

TEST_CASE("a failing save hook leaves no checkpoint and earlier ones intact", "[save][atomic]") {
  TempDir dir;
  int good = 1;
  bool fail = false;
  Checkpointer ckpt(dir.path());
  ckpt.add_recoverable("good", good);
  ckpt.add_recoverable(
      "flaky", good,
      [&](int&, const fs::path& p) {
        test::write_text(p, "partial");
        if (fail) throw std::runtime_error("disk on fire");
      },
      [](int&, const fs::path&, bool) {});
  const auto first = ckpt.save_checkpoint({{"n", 1}});
  fail = true;
  good = 2;
  CHECK_THROWS_WITH(ckpt.save_checkpoint({{"n", 2}}), Catch::Contains("flaky") && Catch::Contains("disk on fire"));
  const auto listed = ckpt.list_checkpoints();
  REQUIRE(listed.size() == 1);
  CHECK(listed[0] == first);
  CHECK(test::entries(dir.path()).size() == 2);  // lock file + the first checkpoint: no temp dir
  good = 0;
  ckpt.recover_if_possible();
  CHECK(good == 1);
}

TEST_CASE("a hook that writes no file is reported", "[save]") {
  TempDir dir;
  int v = 0;
  Checkpointer ckpt(dir.path());
  ckpt.add_recoverable("lazy", v, [](int&, const fs::path&) {}, [](int&, const fs::path&, bool) {});
  CHECK_THROWS_WITH(ckpt.save_checkpoint(), Catch::Contains("lazy") && Catch::Contains("did not write"));
}

TEST_CASE("missing keys raise unless optional or partial loads are allowed", "[load]") {
  TempDir dir;
  int a = 1, b = 2;
  {
    Checkpointer writer(dir.path(), {{"a", a}});
    writer.save_checkpoint();
  }
  a = 0;
  Checkpointer reader(dir.path(), {{"a", a}, {"b", b}});
  CHECK_THROWS_AS(reader.recover_if_possible(), MissingKeyError);
  CHECK_THROWS_WITH(reader.recover_if_possible(), Catch::Contains("'b'") && Catch::Contains("holds: a"));
  CHECK(a == 0);  // nothing was loaded

  reader.add_recoverable("b", b, optional_load());
  test::CaptureLog log;
  REQUIRE(reader.recover_if_possible());
  CHECK(a == 1);
  CHECK(b == 2);
  CHECK(log.contains("'b' (optional)"));

  a = 0;
  reader.add_recoverable("b", b);  // no longer optional
  reader.options().allow_partial_load(true);
  REQUIRE(reader.recover_if_possible());
  CHECK(a == 1);
}

TEST_CASE("extra files in the checkpoint are ignored on load", "[load]") {
  TempDir dir;
  int a = 1, b = 2;
  {
    Checkpointer writer(dir.path(), {{"a", a}, {"b", b}});
    writer.save_checkpoint();
  }
  int a2 = 0;
  Checkpointer reader(dir.path(), {{"a", a2}});
  REQUIRE(reader.recover_if_possible());
  CHECK(a2 == 1);
}

TEST_CASE("intra-epoch checkpoints are marked in meta", "[save]") {
  TempDir dir;
  int v = 0;
  Checkpointer ckpt(dir.path(), {{"v", v}});
  const auto c = ckpt.save_checkpoint({}, intra_epoch());
  CHECK_FALSE(c.end_of_epoch());
  CHECK(ckpt.list_checkpoints()[0].meta["end_of_epoch"] == false);
}

TEST_CASE("read-only checkpointers never write", "[lock]") {
  TempDir dir;
  int v = 3;
  {
    Checkpointer writer(dir.path(), {{"v", v}});
    writer.save_checkpoint();
  }
  int r = 0;
  Checkpointer reader(dir.path(), {{"v", r}}, CheckpointerOptions().read_only(true));
  REQUIRE(reader.recover_if_possible());
  CHECK(r == 3);
  CHECK_THROWS_WITH(reader.save_checkpoint(), Catch::Contains("read-only"));
  CHECK_THROWS_AS(reader.delete_checkpoints(KeepOptions()), UsageError);
  Checkpointer missing(dir / "nope", CheckpointerOptions().read_only(true));
  CHECK(missing.list_checkpoints().empty());
  CHECK_FALSE(fs::exists(dir / "nope"));
}

TEST_CASE("a second process cannot write to a directory in use", "[lock]") {
  TempDir dir;
  Checkpointer owner(dir.path());
  // Same process: Checkpointers share the lock.
  CHECK_NOTHROW(Checkpointer(dir.path()));
  // Another process (tests/spawn.hpp: bounded, a hang fails naming it).
  test::Children children(std::chrono::seconds(60));
  children.start_fork("the intruding process", [&](int /*report_fd*/) {
    int code = 1;
    try {
      Checkpointer intruder(dir.path());
    } catch (const LockError& e) {
      code = std::string(e.what()).find("pid " + std::to_string(::getppid())) != std::string::npos ? 0 : 2;
    } catch (...) {
      code = 3;
    }
    try {  // readers are welcome
      Checkpointer reader(dir.path(), CheckpointerOptions().read_only(true));
      (void)reader.list_checkpoints();
    } catch (...) {
      code = 4;
    }
    ::_exit(code);
  });
  const int status = children.wait(0);
  INFO(children.describe(0));
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("stale temporary directories of crashed saves are removed at start-up", "[atomic]") {
  TempDir dir;
  fs::create_directories(dir / ".savepoint-tmp-123-0-deadbeef");
  test::write_text(dir / ".savepoint-tmp-123-0-deadbeef" / ".savepoint-incomplete", "pid 123");
  test::write_text(dir / ".savepoint-tmp-123-0-deadbeef" / "model.safetensors", "half");
  fs::create_directories(dir / ".savepoint-trash-1-2-3");
  fs::create_directories(dir / ".savepoint-tmp-unrelated");  // no marker: not ours, kept
  fs::create_directories(dir / "CKPT+half-written");         // no meta.json: ignored, kept
  {
    Checkpointer ckpt(dir.path());
    CHECK(ckpt.list_checkpoints().empty());
  }
  CHECK(test::entries(dir.path()) ==
        std::vector<std::string>{".savepoint-tmp-unrelated", ".savepoint.lock", "CKPT+half-written"});
}

TEST_CASE("load_checkpoint is all-or-nothing when a later key is damaged", "[load][atomic]") {
  TempDir dir;
  int a = 1;
  std::vector<int> b{1, 2, 3};
  Checkpointer ckpt(dir.path(), {{"a", a}, {"b", b}});
  const auto saved = ckpt.save_checkpoint();
  test::flip_byte(saved.path / "b.json", 2);
  a = 0;
  b.clear();
  CHECK_THROWS_AS(ckpt.load_checkpoint(saved), CorruptCheckpointError);
  CHECK(a == 0);
  CHECK(b.empty());
}

namespace paramfiles_test {
// What save returned against the same checkpoint listed back: SpeechBrain's equality, and the
// paramfiles key by key (a failure names the key and both paths).
void check_same_as_listed(const Checkpoint& saved, const Checkpoint& listed) {
  CHECK(saved == listed);
  CHECK(saved.files == listed.files);
  REQUIRE(saved.paramfiles.size() == listed.paramfiles.size());
  for (const auto& entry : listed.paramfiles) {
    INFO("key '" << entry.first << "'");
    REQUIRE(saved.paramfiles.count(entry.first) == 1);
    CHECK(saved.paramfiles.at(entry.first) == entry.second);
  }
}
}  // namespace paramfiles_test

TEST_CASE("a saved checkpoint equals the same checkpoint listed back, paramfiles included (one process and "
          "per-rank keys of 2 ranks)",
          "[save][paramfiles]") {
  SECTION("a plain save") {
    TempDir dir;
    int epoch = 3;
    std::vector<double> weights{0.5, 1.5};
    Checkpointer ckpt(dir.path(), {{"epoch", epoch}, {"weights", weights}});
    const Checkpoint saved = ckpt.save_checkpoint({{"loss", 0.5}});
    CHECK(saved.paramfiles == std::map<std::string, fs::path>{{"epoch", saved.path / "epoch.json"},
                                                              {"weights", saved.path / "weights.json"}});
    const auto listed = ckpt.list_checkpoints();
    REQUIRE(listed.size() == 1);
    paramfiles_test::check_same_as_listed(saved, listed[0]);
  }
  SECTION("a per-rank key saved by 2 ranks: rank 0's file, on every rank") {
    TempDir dir;
    test::ThreadWorld world(2);
    const auto saved = world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
      int shared = 7;
      int own = 100 + rank;
      Checkpointer ckpt(dir.path(), CheckpointerOptions().process_group(std::move(group)));
      ckpt.add_recoverable("shared", shared);
      ckpt.add_recoverable("own", own, per_rank());
      return ckpt.save_checkpoint({{"step", 1}});
    });
    for (int r = 0; r < 2; ++r) {
      INFO("rank " << r << ": " << saved[r].message());
      REQUIRE(saved[r].value.has_value());
    }
    Checkpointer reader(dir.path(), CheckpointerOptions().read_only(true));
    const auto listed = reader.list_checkpoints();
    REQUIRE(listed.size() == 1);
    REQUIRE(listed[0].files.size() == 3);  // shared.json, own.rank0.json, own.rank1.json
    CHECK(listed[0].paramfiles == std::map<std::string, fs::path>{{"own", listed[0].path / "own.rank0.json"},
                                                                  {"shared", listed[0].path / "shared.json"}});
    for (int r = 0; r < 2; ++r) {
      INFO("the checkpoint rank " << r << "'s save returned");
      paramfiles_test::check_same_as_listed(*saved[r].value, listed[0]);
    }
  }
}
