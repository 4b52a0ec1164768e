// One engine for one process or many: the agreement logic of saves and recovery, run by N
// threads as N ranks on an in-process group (tests/thread_group.hpp), with no Gloo and no
// fork. Real-Gloo tests (test_distributed.cpp) keep the c10d adapter and end-to-end runs.
//
// To see these tests catch a broken agreement, run them with the record gather switched off:
//   SAVEPOINT_BREAK_AGREEMENT=records savepoint_core_tests '[world]'
// (rank 0 then commits without the other ranks' records; several tests must fail).
#include "support.hpp"
#include "sharded_rows.hpp"
#include "thread_group.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/shard_reader.hpp>

#include "catch.hpp"

#include <cstdlib>
#include <set>

using namespace savepoint;
using test::TempDir;
namespace fs = std::filesystem;

namespace {
[[maybe_unused]] const bool agreement_broken = [] {
  const char* env = std::getenv("SAVEPOINT_BREAK_AGREEMENT");
  const bool records = env != nullptr && std::string(env) == "records";
  savepoint::detail::protocol_breaks().skip_gathering_records = records;
  return records;
}();

// A value with hooks that return payloads; `fail_save` makes its save hook throw.
struct Tally {
  double value = 0;
  bool fail_save = false;
};
void register_tally() {
  TypeHooks h;
  h.name = "test.Tally";
  h.extension = ".json";
  h.save = [](void* object, const SaveContext&) {
    const auto& c = *static_cast<Tally*>(object);
    if (c.fail_save) throw std::runtime_error("counter sensor offline");
    return Payload::json({{"value", c.value}});
  };
  h.prepare_load = [](void* object, const LoadContext& ctx) -> Apply {
    const auto bytes = ctx.bytes();
    const double v = nlohmann::json::parse(bytes.begin(), bytes.end()).at("value").get<double>();
    return [object, v] { static_cast<Tally*>(object)->value = v; };
  };
  hook_table().add<Tally>(h);
}

// One rank's state: a replicated value and a per-rank one.
struct RankState {
  Tally shared;
  Tally own;
  std::unique_ptr<Checkpointer> ckpt;
  RankState(const fs::path& dir, std::shared_ptr<ProcessGroup> group, CheckpointerOptions options = {}) {
    ckpt = std::make_unique<Checkpointer>(dir, options.process_group(std::move(group)));
    ckpt->add_recoverable("shared", shared);
    ckpt->add_recoverable("own", own, per_rank());
  }
};

template <class T>
void require_all_returned(const std::vector<test::RankOutcome<T>>& outcomes) {
  for (std::size_t r = 0; r < outcomes.size(); ++r) {
    INFO("rank " << r << ": " << outcomes[r].message());
    REQUIRE(outcomes[r].value.has_value());
  }
}
}  // namespace

TEST_CASE("world: ranks as threads save one checkpoint that lists every rank's file", "[world]") {
  register_tally();
  TempDir dir;
  test::ThreadWorld world(3);
  const auto saved = world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
    RankState s(dir.path(), group);
    s.shared.value = 7;
    s.own.value = 100 + rank;
    return s.ckpt->save_checkpoint({{"step", 1}});
  });
  require_all_returned(saved);
  const Checkpoint& c = *saved[0].value;
  for (const auto& other : saved) CHECK(other.value->path == c.path);  // every rank got rank 0's commit
  CHECK(c.world_size == 3);
  std::set<std::string> files;
  for (const auto& f : c.files) files.insert(f.file);
  CHECK(files == std::set<std::string>{"shared.json", "own.rank0.json", "own.rank1.json", "own.rank2.json"});
  for (int r = 0; r < 3; ++r)
    CHECK(nlohmann::json::parse(test::read_file(c.path / fmt::format("own.rank{}.json", r))).at("value") == 100 + r);
  // A save costs three collectives on every rank, opening the directory one.
  for (int r = 0; r < 3; ++r) CHECK(world.hub().collectives(r) == 4);
}

TEST_CASE("world: recovery gives every rank its own per-rank state and the shared state", "[world]") {
  register_tally();
  TempDir dir;
  {
    test::ThreadWorld world(3);
    require_all_returned(world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
      RankState s(dir.path(), group);
      s.shared.value = 7;
      s.own.value = 100 + rank;
      return s.ckpt->save_checkpoint();
    }));
  }
  test::ThreadWorld world(3);
  const auto loaded = world.run([&](int, std::shared_ptr<ProcessGroup> group) {
    RankState s(dir.path(), group);
    const auto c = s.ckpt->recover_if_possible();
    return std::make_pair(c.has_value(), std::make_pair(s.shared.value, s.own.value));
  });
  require_all_returned(loaded);
  for (int r = 0; r < 3; ++r) {
    CHECK(loaded[r].value->first);
    CHECK(loaded[r].value->second.first == 7);
    CHECK(loaded[r].value->second.second == 100 + r);
  }
  // Opening (1) and recovery: choose, prepare everywhere, apply (3).
  for (int r = 0; r < 3; ++r) CHECK(world.hub().collectives(r) == 4);
}

TEST_CASE("world: a save hook failing on one rank fails the save on every rank and commits nothing", "[world]") {
  register_tally();
  TempDir dir;
  test::ThreadWorld world(3);
  const auto outcomes = world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
    RankState s(dir.path(), group);
    const auto first = s.ckpt->save_checkpoint();
    s.own.fail_save = rank == 2;
    try {
      s.ckpt->save_checkpoint();
    } catch (const DistributedError& e) {
      return std::make_pair(e.failing_rank(), std::string(e.what()));
    }
    return std::make_pair(-2, std::string("no error"));
  });
  require_all_returned(outcomes);
  for (const auto& o : outcomes) {
    CHECK(o.value->first == 2);
    CHECK_THAT(o.value->second, Catch::Contains("failed on rank 2") && Catch::Contains("counter sensor offline"));
  }
  Checkpointer reader(dir.path(), CheckpointerOptions().read_only(true));
  CHECK(reader.list_checkpoints().size() == 1);
  CHECK(test::leftovers(dir.path()).empty());
}

TEST_CASE("world: damage that only one rank reads sends every rank back to an older checkpoint", "[world]") {
  register_tally();
  TempDir dir;
  test::ThreadWorld world(3);
  const auto saved = world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
    RankState s(dir.path(), group);
    s.own.value = 10 + rank;
    s.ckpt->save_checkpoint();
    s.own.value = 20 + rank;
    return s.ckpt->save_checkpoint();
  });
  require_all_returned(saved);
  test::flip_byte(saved[0].value->path / "own.rank1.json", -3);  // read by rank 1 alone
  test::ThreadWorld again(3);
  const auto loaded = again.run([&](int, std::shared_ptr<ProcessGroup> group) {
    RankState s(dir.path(), group);
    const auto c = s.ckpt->recover_if_possible();
    return std::make_pair(c->sequence, s.own.value);
  });
  require_all_returned(loaded);
  for (int r = 0; r < 3; ++r) {
    CHECK(loaded[r].value->first == saved[0].value->sequence - 1);
    CHECK(loaded[r].value->second == 10 + r);
  }
  // Rejecting the damaged one costs one more choice and one more preparation.
  CHECK(again.hub().collectives(0) == 1 + 3 + 2);
}

TEST_CASE("world: a rank that dies or fails mid-save leaves the others with an error and earlier checkpoints intact",
          "[world]") {
  register_tally();
  // Collectives of a rank: 0 opens the directory, 1-3 the first save, 4-6 the second.
  for (const test::Fault::Kind kind : {test::Fault::dies, test::Fault::fails}) {
    for (const int at : {4, 5, 6}) {
      DYNAMIC_SECTION("fault " << int(kind) << " at collective " << at) {
        TempDir dir;
        test::ThreadWorld world(3);
        world.inject({kind, 1, at});
        const auto outcomes = world.run([&](int, std::shared_ptr<ProcessGroup> group) {
          RankState s(dir.path(), group);
          s.ckpt->save_checkpoint();
          return s.ckpt->save_checkpoint().sequence;
        });
        for (int r : {0, 2}) {
          INFO("rank " << r);
          CHECK(outcomes[r].raised<DistributedError>());
        }
        CHECK(!outcomes[1].value.has_value());
        // Rank 0 commits before the last collective: a rank lost there no longer matters.
        Checkpointer reader(dir.path(), CheckpointerOptions().read_only(true));
        const auto listed = reader.list_checkpoints();
        CHECK(listed.size() == (at == 6 ? 2u : 1u));
        for (const auto& c : listed) CHECK(reader.verify(c).empty());
        CHECK(test::leftovers(dir.path()).empty());
      }
    }
  }
}

TEST_CASE("world: a stalled rank makes the others raise within the group's timeout", "[world]") {
  register_tally();
  TempDir dir;
  test::ThreadWorld world(2, std::chrono::milliseconds(200));
  world.inject({test::Fault::stalls, 1, 2});  // rank 1 never arrives at the save's writes
  const auto outcomes = world.run([&](int, std::shared_ptr<ProcessGroup> group) {
    RankState s(dir.path(), group);
    return s.ckpt->save_checkpoint().sequence;
  });
  REQUIRE(outcomes[0].raised<DistributedError>());
  CHECK_THAT(outcomes[0].message(), Catch::Contains("timeout of 200 ms"));
  CHECK(test::leftovers(dir.path()).empty());
}

TEST_CASE("world: ranks that registered different keys get an error naming the rank", "[world]") {
  register_tally();
  TempDir dir;
  test::ThreadWorld world(2);
  const auto outcomes = world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
    RankState s(dir.path(), group);
    Tally extra;
    if (rank == 1) s.ckpt->add_recoverable("extra", extra);
    return s.ckpt->save_checkpoint().sequence;
  });
  for (const auto& o : outcomes) {
    CHECK(o.raised<DistributedError>());
    CHECK_THAT(o.message(), Catch::Contains("rank 1 registered other keys than rank 0"));
  }
}

TEST_CASE("world: retention, pinning and deletion agree over the ranks", "[world]") {
  register_tally();
  TempDir dir;
  test::ThreadWorld world(3);
  const auto outcomes = world.run([&](int, std::shared_ptr<ProcessGroup> group) {
    RankState s(dir.path(), group);
    for (int i = 0; i < 3; ++i) s.ckpt->save_and_keep_only({{"i", i}}, KeepOptions().num_to_keep(2));
    auto listed = s.ckpt->list_checkpoints();
    const auto oldest = std::min_element(listed.begin(), listed.end(),
                                         [](const Checkpoint& a, const Checkpoint& b) { return a.sequence < b.sequence; });
    const auto pinned = s.ckpt->pin(*oldest);
    s.ckpt->save_and_keep_only({{"i", 3}}, KeepOptions().num_to_keep(1));
    std::vector<std::uint64_t> sequences = test::sequences(s.ckpt->list_checkpoints());
    s.ckpt->delete_checkpoint(s.ckpt->unpin(pinned));
    return std::make_pair(sequences, s.ckpt->list_checkpoints().size());
  });
  require_all_returned(outcomes);
  for (const auto& o : outcomes) {
    CHECK(o.value->first.size() == 2);  // the pinned one and the newest
    CHECK(o.value->second == 1);
  }
}


using test::Rows;
using test::register_rows;

TEST_CASE("world: a bundle of a group's checkpoint loads in one process by the one load", "[world][bundle]") {
  register_tally();
  register_rows();
  TempDir dir;
  test::ThreadWorld world(3);
  const auto saved = world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
    RankState s(dir.path(), group);
    s.shared.value = 7;
    s.own.value = 100 + rank;
    Rows rows{2 * rank, 6, {float(10 * rank), float(10 * rank + 1)}};
    s.ckpt->add_recoverable("rows", rows, sharded());
    return s.ckpt->save_checkpoint();
  });
  require_all_returned(saved);
  const fs::path file = dir.path() / "job.spb";
  write_bundle(*saved[0].value, file);
  const std::string bytes = test::read_file(file);
  for (const Bundle& bundle : {Bundle::open(file), Bundle::view(bytes, "job in memory")}) {
    // One process: the shared key, rank 0's file of the per-rank key, and every row of the
    // sharded key, read from the bundle's members block by block.
    Tally shared, own;
    Rows rows{0, 6, std::vector<float>(6, -1.0f)};
    bundle.load({{"shared", shared}, {"own", own, per_rank()}, {"rows", rows, sharded()}});
    CHECK(shared.value == 7);
    CHECK(own.value == 100);
    CHECK(rows.values == std::vector<float>{0, 1, 10, 11, 20, 21});
    // A window of rows, as a rank of a smaller job would ask for.
    Rows middle{1, 6, std::vector<float>(3, -1.0f)};
    bundle.load({{"rows", middle, sharded()}}, /*partial=*/true);
    CHECK(middle.values == std::vector<float>{1, 10, 11});
  }
  // The bundle's checks are the directory's: a key it lacks names the bundle and the key.
  Tally missing;
  try {
    Bundle::open(file).load({{"absent", missing}});
    FAIL("no MissingKeyError");
  } catch (const MissingKeyError& e) {
    CHECK_THAT(e.what(), Catch::Contains("checkpoint bundle '" + file.string() + "' has no file for key 'absent'"));
  }
}

TEST_CASE("world: averaging a key that has one file per rank is refused, naming the key", "[world][average]") {
  register_tally();
  register_rows();
  TempDir dir;
  test::ThreadWorld world(2);
  const auto saved = world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
    RankState s(dir.path(), group);
    Rows rows{2 * rank, 4, {float(rank), float(rank)}};
    s.ckpt->add_recoverable("rows", rows, sharded());
    const Checkpoint first = s.ckpt->save_checkpoint();
    return std::make_pair(first, s.ckpt->save_checkpoint());
  });
  require_all_returned(saved);
  const std::vector<Checkpoint> both{saved[0].value->first, saved[0].value->second};
  for (const char* key : {"rows", "own"}) {
    INFO(key);
    try {
      write_average(both, key, dir.path() / "avg.safetensors");
      FAIL("no UsageError");
    } catch (const UsageError& e) {
      CHECK_THAT(e.what(), Catch::Contains(std::string("key '") + key + "'") && Catch::Contains("one per rank of the job"));
    }
  }
  CHECK_FALSE(fs::exists(dir.path() / "avg.safetensors"));
}
