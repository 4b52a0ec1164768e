// Sharded tensors over real Gloo (docs/distributed.md, "sharded"): N dist_worker processes
// save a key split by rows, and M processes (another world size, or one without a process
// group) load it. The worker's scenarios are in tests/dist_worker_sharded.cpp. Every run is
// bounded (tests/spawn.hpp): leftovers are SIGKILLed after kRunTimeout.
#include "spawn.hpp"
#include "support.hpp"

#include <savepoint/core.hpp>
#include <savepoint/detail/meta.hpp>

#include <chrono>
#include <fstream>

#ifndef SAVEPOINT_DIST_WORKER
#error "SAVEPOINT_DIST_WORKER (the path of tests/dist_worker) must be defined"
#endif

namespace {
namespace fs = std::filesystem;
constexpr auto kRunTimeout = std::chrono::seconds(60);

struct Run {
  bool ok = true;
  std::string output;  // every rank's status and output
};

// Runs `world` workers of `scenario` on `root`/ckpt and waits for all (at most kRunTimeout,
// tests/spawn.hpp: leftovers SIGKILLed, a failure naming them).
Run run_ranks(const fs::path& root, const std::string& scenario, int world, int step) {
  static int run = 0;
  const fs::path store = root / ("store-" + std::to_string(run++));
  test::Children ranks(kRunTimeout);
  for (int r = 0; r < world; ++r)
    ranks.start({"rank " + std::to_string(r) + " of '" + scenario + "' at world " + std::to_string(world),
                 {SAVEPOINT_DIST_WORKER, scenario, std::to_string(r), std::to_string(world), store.string(),
                  (root / "ckpt").string(), std::to_string(step)}});
  ranks.wait_all();
  Run result;
  for (int r = 0; r < world; ++r) {
    const bool exited_ok = ranks.exited_ok(r);
    result.ok = result.ok && exited_ok;
    result.output += ranks.name(r) + (exited_ok ? " ok" : " FAILED (status " + std::to_string(ranks.status(r)) + ")") +
                     ":\n" + ranks.output(r);
  }
  return result;
}

void require_ok(const Run& run) {
  INFO(run.output);
  REQUIRE(run.ok);
}

std::vector<savepoint::Checkpoint> listed(const fs::path& root) {
  savepoint::Checkpointer reader(root / "ckpt", savepoint::CheckpointerOptions().read_only(true));
  return reader.list_checkpoints();
}

std::vector<savepoint::Problem> verify(const fs::path& root, const savepoint::Checkpoint& c) {
  savepoint::Checkpointer reader(root / "ckpt", savepoint::CheckpointerOptions().read_only(true));
  return reader.verify(c);
}

// Flips one byte of `file` at `offset`.
void damage(const fs::path& file, std::uint64_t offset) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  REQUIRE(f);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5a);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

const savepoint::Checkpoint& newest(const std::vector<savepoint::Checkpoint>& all) {
  REQUIRE(!all.empty());
  return *std::max_element(all.begin(), all.end(),
                           [](const auto& a, const auto& b) { return a.sequence < b.sequence; });
}
}  // namespace

// (No ';' in test names: ctest's discovery splits names there.)
TEST_CASE("sharded tensors: saved by 4 ranks and loaded by 4, 3, 2 and one, saved by 2 (async) and loaded by 4 and one",
          "[sharded]") {
  test::TempDir tmp;
  require_ok(run_ranks(tmp.path(), "sharded_save", 4, 1));
  const auto saved = listed(tmp.path());
  REQUIRE(saved.size() == 1);
  const auto& c = saved.front();
  CHECK(c.world_size == 4);
  for (int r = 0; r < 4; ++r) {
    const auto* rec = c.file("state", r);
    REQUIRE(rec != nullptr);
    CHECK(rec->file == "state.rank" + std::to_string(r) + ".safetensors");
    CHECK(rec->hook == "savepoint.ShardedTensors");
    REQUIRE(rec->shard.is_object());
    CHECK(rec->shard.at("block_bytes") == 1048576);
    const auto& cols = rec->shard.at("tensors").at("C");
    CHECK(cols.at("global_shape") == nlohmann::json::array({600, 2048}));
    CHECK(cols.at("offset") == 150 * r);
    CHECK(cols.at("rows") == 150);
    // 150 rows of C (1.2 MB) and a few of A and B after the header: two 1 MiB blocks.
    CHECK(rec->shard.at("block_xxh3").size() == 2);
  }
  CHECK(verify(tmp.path(), c).empty());  // whole-file checksums, as for any key
  require_ok(run_ranks(tmp.path(), "sharded_recover", 4, 1));
  require_ok(run_ranks(tmp.path(), "sharded_load", 3, 1));  // load_checkpoint: the same reads, 2 collectives
  require_ok(run_ranks(tmp.path(), "sharded_recover", 2, 1));
  require_ok(run_ranks(tmp.path(), "sharded_reassemble", 1, 1));
  // Saved by 2 ranks, loaded by 4 and by one process.
  require_ok(run_ranks(tmp.path(), "sharded_save", 2, 2));
  CHECK(newest(listed(tmp.path())).world_size == 2);
  require_ok(run_ranks(tmp.path(), "sharded_recover", 4, 2));
  require_ok(run_ranks(tmp.path(), "sharded_reassemble", 1, 2));
}

TEST_CASE("sharded tensors: a damaged block in one rank's file sends every rank back to the previous checkpoint",
          "[sharded]") {
  test::TempDir tmp;
  require_ok(run_ranks(tmp.path(), "sharded_save", 4, 1));
  require_ok(run_ranks(tmp.path(), "sharded_save", 4, 2));
  const auto second = newest(listed(tmp.path()));
  const auto* rec = second.file("state", 2);
  REQUIRE(rec != nullptr);
  // A byte of the second block of rank 2's file: read at world 2 by new rank 1 only.
  damage(second.path / rec->file, rec->shard.at("header_bytes").get<std::uint64_t>() + 1048576 + 100);
  CHECK(!verify(tmp.path(), second).empty());
  const Run run = run_ranks(tmp.path(), "sharded_recover", 2, 1);  // every rank expects step 1
  require_ok(run);
  CHECK(run.output.find("fails the checksum of block 1") != std::string::npos);
  CHECK(listed(tmp.path()).size() == 2);  // nothing deleted
}

TEST_CASE("sharded tensors: a rank reads only the blocks of the rows it holds", "[sharded]") {
  test::TempDir tmp;
  require_ok(run_ranks(tmp.path(), "sharded_save", 4, 3));
  const auto c = newest(listed(tmp.path()));
  // Damage a block of rank 3's file: the rows of that file are not registered, so the load
  // never reads it and succeeds, while whole-file verification reports it.
  const auto* rec = c.file("state", 3);
  REQUIRE(rec != nullptr);
  damage(c.path / rec->file, rec->bytes - 10);
  const auto problems = verify(tmp.path(), c);
  REQUIRE(problems.size() == 1);
  CHECK(problems.front().file.filename() == "state.rank3.safetensors");
  const Run run = run_ranks(tmp.path(), "sharded_partial", 1, 3);
  require_ok(run);
  // Rank 0's header, then the one block holding rows [0, 100) of C and [0, 10) of A and B
  // (2 preads of rank 0's file, of its 2 blocks; no read of the 3 other files).
  CHECK(run.output.find("read state.rank0.safetensors 2 time(s)") != std::string::npos);
}

TEST_CASE("sharded tensors: another global shape raises on every rank, naming key, tensor and rank", "[sharded]") {
  test::TempDir tmp;
  require_ok(run_ranks(tmp.path(), "sharded_save", 2, 1));
  require_ok(run_ranks(tmp.path(), "sharded_mismatch", 2, 1));
}

TEST_CASE("sharded tensors: saved by a process without a group, loaded by 3 ranks", "[sharded]") {
  test::TempDir tmp;
  require_ok(run_ranks(tmp.path(), "sharded_single_save", 1, 5));
  const auto c = newest(listed(tmp.path()));
  CHECK(c.world_size == 0);
  REQUIRE(c.file("state") != nullptr);
  CHECK(c.file("state")->file == "state.safetensors");
  CHECK(c.file("state")->shard.at("tensors").at("C").at("rows") == 600);
  require_ok(run_ranks(tmp.path(), "sharded_recover", 3, 5));
}

TEST_CASE("sharded tensors: the shard record round-trips through meta.json, a malformed one is refused", "[sharded]") {
  savepoint::Checkpoint c;
  c.path = "/x/CKPT+a";
  c.sequence = 3;
  c.world_size = 2;
  c.meta = {{"unixtime", 1.5}, {"end_of_epoch", true}};
  const nlohmann::json shard = {{"header_bytes", 96},
                                {"header_xxh3", "0123456789abcdef"},
                                {"block_bytes", 1048576},
                                {"block_xxh3", {"00000000000000ff"}},
                                {"tensors", {{"w", {{"dtype", "F32"}, {"global_shape", {4, 2}}, {"offset", 2}, {"rows", 2}}}}}};
  c.files.push_back({"state", "state.rank1.safetensors", "savepoint.ShardedTensors", 128, 7, 1, shard});
  const auto text = savepoint::detail::serialize_meta(c);
  const auto back = savepoint::detail::parse_meta(c.path, text);
  REQUIRE(back.files.size() == 1);
  CHECK(back.files[0] == c.files[0]);
  CHECK(back.files[0].shard == shard);
  auto doc = nlohmann::json::parse(text);
  doc["files"][0]["shard"] = "not an object";
  doc.erase("checksum");
  doc["checksum"] = savepoint::detail::to_hex(savepoint::detail::digest_bytes(doc.dump()).xxh3);
  CHECK_THROWS_AS(savepoint::detail::parse_meta(c.path, doc.dump()), savepoint::CorruptCheckpointError);
}
