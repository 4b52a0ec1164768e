// The memory tier (engine/memory_tier.hpp) with ranks as threads (tests/thread_group.hpp):
// several "nodes" on one machine, each with its own memory directory. Real processes and Gloo
// are in test_distributed.cpp.
#include "support.hpp"
#include "thread_group.hpp"

#include <savepoint/detail/io.hpp>

#include "../src/tier/cadence.hpp"  // header-only: its arithmetic tested with its own clock

#include "catch.hpp"

#include <atomic>
#include <cerrno>
#include <fstream>
#include <mutex>

using namespace savepoint;
using test::TempDir;
namespace fs = std::filesystem;

namespace memory_tier_test {

// A value with hooks that return payloads.
struct TierCell {
  double value = 0;
};
void register_tier_cell() {
  TypeHooks h;
  h.name = "test.TierCell";
  h.extension = ".json";
  h.save = [](void* object, const SaveContext&) {
    return Payload::json({{"value", static_cast<TierCell*>(object)->value}});
  };
  h.prepare_load = [](void* object, const LoadContext& ctx) -> Apply {
    const auto bytes = ctx.bytes();
    const double v = nlohmann::json::parse(bytes.begin(), bytes.end()).at("value").get<double>();
    return [object, v] { static_cast<TierCell*>(object)->value = v; };
  };
  hook_table().add<TierCell>(h);
}

// TierWarnings from every thread, for assertions.
struct TierWarnings {
  std::mutex m;
  std::vector<std::string> lines;
  TierWarnings() {
    set_log_sink([this](LogLevel level, std::string_view line) {
      if (level < LogLevel::warn) return;
      std::lock_guard<std::mutex> lock(m);
      lines.emplace_back(line);
    });
  }
  ~TierWarnings() { set_log_sink(nullptr); }
  bool contain(const std::string& needle) {
    std::lock_guard<std::mutex> lock(m);
    for (const auto& l : lines)
      if (l.find(needle) != std::string::npos) return true;
    return false;
  }
};

// A job of `ranks` ranks on `nodes` nodes (rank r on node r * nodes / ranks), each node with
// its memory directory under `memory`, the disk tier in `disk`.
struct TierJob {
  fs::path disk, memory;
  int nodes;
  int persist_every = 0;
  int keep = 1;
  Redundancy redundancy = Redundancy::partner;
  bool strict = false;
  fs::path node_dir(int node) const { return memory / ("node" + std::to_string(node)); }
};

struct TierRank {
  TierCell shared;  // replicated
  TierCell own;     // per rank (optional: the job may come back at another size)
  std::unique_ptr<Checkpointer> ckpt;
  TierRank(const TierJob& job, int node, std::shared_ptr<ProcessGroup> group, std::shared_ptr<ProcessGroup> replication) {
    CheckpointerOptions options;
    MemoryTierOptions tier(job.node_dir(node));
    tier.node_id("node" + std::to_string(node)).keep(job.keep).persist_every(job.persist_every);
    tier.redundancy(job.redundancy);
    options.strict_recovery(job.strict);
    if (group) {
      options.process_group(group);
      tier.replication_group(replication);
    }
    ckpt = std::make_unique<Checkpointer>(job.disk, options.memory_tier(tier));
    ckpt->add_recoverable("shared", shared);
    ckpt->add_recoverable("own", own, per_rank().optional(true));
  }
};

// Runs `steps` memory saves on `ranks` thread-ranks over `nodes` nodes: at step s, shared = s
// and own = 100 * s + rank. Returns the name of the last memory checkpoint.
std::string tier_train(const TierJob& job, int ranks, int steps) {
  test::ThreadWorld world(ranks), replication(ranks);
  const auto out = world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
    TierRank s(job, rank * job.nodes / ranks, group, replication.group(rank));
    for (int step = 1; step <= steps; ++step) {
      s.shared.value = step;
      s.own.value = 100 * step + rank;
      s.ckpt->save_to_memory({{"step", step}});
    }
    return s.ckpt->wait().value().name();
  });
  for (int r = 0; r < ranks; ++r) {
    INFO("rank " << r << ": " << out[r].message());
    REQUIRE(out[r].value.has_value());
  }
  return *out[0].value;
}

struct TierRecovered {
  double shared = -1, own = -1;
  std::string path;
};

// Starts `ranks` ranks over `nodes` (node ids as in tier_train, offset by `first_node`) and recovers.
std::vector<test::RankOutcome<TierRecovered>> tier_recover(const TierJob& job, int ranks, int nodes, int first_node = 0) {
  test::ThreadWorld world(ranks), replication(ranks);
  return world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
    TierRank s(job, first_node + rank * nodes / ranks, ranks > 1 ? group : nullptr,
                ranks > 1 ? replication.group(rank) : nullptr);
    const auto loaded = s.ckpt->recover_if_possible();
    return TierRecovered{s.shared.value, s.own.value, loaded ? loaded->path.string() : std::string()};
  });
}

// Starts one rank on each of `nodes` (node indices) and recovers.
std::vector<test::RankOutcome<TierRecovered>> tier_recover_on(const TierJob& job, const std::vector<int>& nodes) {
  const int ranks = static_cast<int>(nodes.size());
  test::ThreadWorld world(ranks), replication(ranks);
  return world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
    TierRank s(job, nodes[rank], ranks > 1 ? group : nullptr, ranks > 1 ? replication.group(rank) : nullptr);
    const auto loaded = s.ckpt->recover_if_possible();
    return TierRecovered{s.shared.value, s.own.value, loaded ? loaded->path.string() : std::string()};
  });
}

std::string tier_read(const fs::path& file) {
  std::ifstream f(file, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Every rank of a 2-node job recovered `last` (saved at `step`) from its node's memory tier.
void check_recovered_from_memory(const TierJob& job, const std::vector<test::RankOutcome<TierRecovered>>& out,
                                 int step, const std::string& last) {
  const int ranks = static_cast<int>(out.size());
  for (int r = 0; r < ranks; ++r) {
    INFO("rank " << r << ": " << out[r].message());
    REQUIRE(out[r].value.has_value());
    CHECK(out[r].value->shared == step);
    CHECK(out[r].value->own == 100 * step + r);
    CHECK(out[r].value->path == (job.node_dir(r * job.nodes / ranks) / "recovery" / last).string());
  }
}

std::size_t tier_count(const fs::path& dir, const std::string& prefix = "CKPT+") {
  std::size_t n = 0;
  if (!fs::exists(dir)) return 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind(prefix, 0) == 0) ++n;
  return n;
}

bool tier_disk_has(const fs::path& disk) { return tier_count(disk) > 0; }

void tier_flip_byte(const fs::path& file) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  REQUIRE(f);
  char c = 0;
  f.seekg(2);
  f.read(&c, 1);
  c ^= 0x20;
  f.seekp(2);
  f.write(&c, 1);
}

// Runs 3 memory saves on 4 thread-ranks (rank r on node r * job.nodes / 4), step 3's opening
// of any file whose path contains `fragment` failing with EIO: every rank hears of it at
// wait(). The 4 ranks then restart and recover step 2, the one complete before it.
void tier_fail_third_save(const TierJob& job, const std::string& fragment) {
  test::ThreadWorld world(4), replication(4);
  std::atomic<bool> fail{false};
  const auto out = [&] {
    test::FaultGuard guard([&](detail::IoOp op, const fs::path& path) {
      detail::Fault f;
      if (fail && op == detail::IoOp::open && path.string().find(fragment) != std::string::npos) f.error = EIO;
      return f;
    });
    return world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
      TierRank s(job, rank * job.nodes / 4, group, replication.group(rank));
      for (int step = 1; step <= 3; ++step) {
        s.shared.value = step;
        s.own.value = 100 * step + rank;
        s.ckpt->save_to_memory({{"step", step}});
        s.ckpt->wait();
        // Step 2 is complete everywhere once rank 0's wait returns; step 3's save cannot start
        // its copies (or parity shares) before rank 0 joins it.
        if (step == 2 && rank == 0) fail = true;
      }
      return 0;
    });
  }();
  for (int r = 0; r < 4; ++r) {
    INFO("rank " << r);
    CHECK(out[r].raised<DistributedError>());
  }
  const auto back = tier_recover(job, 4, job.nodes);
  for (int r = 0; r < 4; ++r) {
    INFO("rank " << r << ": " << back[r].message());
    REQUIRE(back[r].value.has_value());
    CHECK(back[r].value->shared == 2);
    CHECK(back[r].value->own == 200 + r);
  }
}

}  // namespace memory_tier_test

using namespace memory_tier_test;

TEST_CASE("memory tier: 2 nodes x 2 ranks keep one complete checkpoint and its buddy copies", "[memory_tier]") {
  register_tier_cell();
  TempDir tmp;
  const TierJob job{tmp.path() / "disk", tmp.path() / "shm", 2};
  const std::string last = tier_train(job, 4, 5);
  for (int node = 0; node < 2; ++node) {
    INFO("node " << node);
    // Its part of the newest checkpoint (older ones dropped: keep 1), its marker, and the
    // buddy copies of the other node's two ranks.
    CHECK(tier_count(job.node_dir(node) / "own") == 1);
    CHECK(fs::exists(job.node_dir(node) / "own" / last / "meta.json"));
    CHECK(fs::exists(job.node_dir(node) / "complete" / last));
    CHECK(tier_count(job.node_dir(node) / "complete") == 1);
    const int other = 1 - node;
    for (int sender : {2 * other, 2 * other + 1}) {
      const fs::path copy = job.node_dir(node) / "replicas" / ("rank" + std::to_string(sender)) / last;
      INFO("copy of rank " << sender);
      CHECK(fs::exists(copy / "meta.json"));
      CHECK(fs::exists(copy / ("own.rank" + std::to_string(sender) + ".json")));
    }
  }
  // Each node's part holds only its ranks' files: node 0 has rank 0's per-rank file, not rank 2's.
  CHECK(fs::exists(job.node_dir(0) / "own" / last / "own.rank0.json"));
  CHECK_FALSE(fs::exists(job.node_dir(0) / "own" / last / "own.rank2.json"));
  CHECK_FALSE(tier_disk_has(job.disk));  // persist_every 0: nothing on disk
}

TEST_CASE("memory tier: all ranks restart and recover the newest step from memory", "[memory_tier]") {
  register_tier_cell();
  TempDir tmp;
  const TierJob job{tmp.path() / "disk", tmp.path() / "shm", 2};
  const std::string last = tier_train(job, 4, 5);
  check_recovered_from_memory(job, tier_recover(job, 4, 2), 5, last);
  CHECK_FALSE(tier_disk_has(job.disk));  // so it came from memory
}

TEST_CASE("memory tier: a lost node's part comes from its buddy, at another world size", "[memory_tier]") {
  register_tier_cell();
  TempDir tmp;
  const TierJob job{tmp.path() / "disk", tmp.path() / "shm", 2};
  tier_train(job, 4, 3);
  fs::remove_all(job.node_dir(0));  // node 0 and its memory are gone
  // Node 1's two ranks come back as a world of 2: node 0's part is in their buddy copies.
  const auto out = tier_recover(job, 2, 1, /*first_node=*/1);
  for (int r = 0; r < 2; ++r) {
    INFO("rank " << r << ": " << out[r].message());
    REQUIRE(out[r].value.has_value());
    CHECK(out[r].value->shared == 3);
    CHECK(out[r].value->own == 0);  // per-rank keys follow the disk rules: another world size skips them
  }
  CHECK_FALSE(tier_disk_has(job.disk));
}

TEST_CASE("memory tier: a damaged byte in one copy: the other copy is used", "[memory_tier]") {
  register_tier_cell();
  TempDir tmp;
  const TierJob job{tmp.path() / "disk", tmp.path() / "shm", 2};
  const std::string last = tier_train(job, 4, 4);
  // Node 0's own copy of rank 0's file is damaged; node 1 keeps rank 0's buddy copy.
  tier_flip_byte(job.node_dir(0) / "own" / last / "own.rank0.json");
  TierWarnings warnings;
  check_recovered_from_memory(job, tier_recover(job, 4, 2), 4, last);
  // The load found the damage (copies are only size-checked first), then every copy was
  // verified and the damaged one left out.
  CHECK(warnings.contain("fails its checksum"));
  CHECK(warnings.contain("verifying every copy"));
  CHECK(warnings.contain("damaged copy"));
}

TEST_CASE("memory tier: an intact recovery reads each byte once: a damaged copy nobody loads is not read",
          "[memory_tier]") {
  register_tier_cell();
  TempDir tmp;
  const TierJob job{tmp.path() / "disk", tmp.path() / "shm", 2};
  const std::string last = tier_train(job, 4, 4);
  // Node 1's buddy copy of rank 0's file is damaged; node 0's own copy is intact and is the
  // one loaded. Verifying every copy before the load would have read (and reported) it.
  tier_flip_byte(job.node_dir(1) / "replicas" / "rank0" / last / "own.rank0.json");
  TierWarnings warnings;
  check_recovered_from_memory(job, tier_recover(job, 4, 2), 4, last);
  CHECK_FALSE(warnings.contain("damaged"));
  CHECK_FALSE(warnings.contain("checksum"));
}

TEST_CASE("memory tier: a truncated copy is left out by its size, before the load, and its other copy used",
          "[memory_tier]") {
  register_tier_cell();
  TempDir tmp;
  const TierJob job{tmp.path() / "disk", tmp.path() / "shm", 2};
  const std::string last = tier_train(job, 4, 4);
  const fs::path own = job.node_dir(0) / "own" / last / "own.rank0.json";
  fs::resize_file(own, fs::file_size(own) - 1);
  TierWarnings warnings;
  check_recovered_from_memory(job, tier_recover(job, 4, 2), 4, last);
  CHECK(warnings.contain("a damaged copy, not used: '" + own.string() + "'"));
  CHECK_FALSE(warnings.contain("verifying every copy"));  // found without a second pass
  CHECK_FALSE(tier_disk_has(job.disk));
}

TEST_CASE("memory tier: a node and its buddy both lost: recovery uses the disk and says so", "[memory_tier]") {
  register_tier_cell();
  TempDir tmp;
  TierJob job{tmp.path() / "disk", tmp.path() / "shm", 3};
  job.persist_every = 2;
  tier_train(job, 3, 5);  // complete at steps 1..5; persisted at steps 2 and 4
  REQUIRE(tier_count(job.disk) == 2);
  // Node 0 and node 1 (which kept node 0's buddy copy) are lost; node 2 survives alone.
  fs::remove_all(job.node_dir(0));
  fs::remove_all(job.node_dir(1));
  TierWarnings warnings;
  const auto out = tier_recover(job, 1, 1, /*first_node=*/2);
  INFO(out[0].message());
  REQUIRE(out[0].value.has_value());
  CHECK(out[0].value->shared == 4);  // the newest persisted step
  CHECK(out[0].value->path.rfind(job.disk.string(), 0) == 0);
  CHECK(warnings.contain("recovering from disk"));
}

TEST_CASE("memory tier: a failed buddy copy leaves the step incomplete, the one before is recovered",
          "[memory_tier]") {
  register_tier_cell();
  TempDir tmp;
  const TierJob job{tmp.path() / "disk", tmp.path() / "shm", 2};
  // Step 3's copy of rank 1's part fails on node 1.
  tier_fail_third_save(job, "replicas/rank1/");
}

TEST_CASE("memory tier: a single process recovers from memory and persists to disk", "[memory_tier]") {
  register_tier_cell();
  TempDir tmp;
  TierJob job{tmp.path() / "disk", tmp.path() / "shm", 1};
  job.keep = 2;
  {
    TierRank s(job, 0, nullptr, nullptr);
    for (int step = 1; step <= 4; ++step) {
      s.shared.value = step;
      s.ckpt->save_to_memory({{"step", step}});
    }
    s.ckpt->wait();
    CHECK(tier_count(job.node_dir(0) / "own") == 2);  // keep 2
    const auto persisted = s.ckpt->persist_memory_checkpoint();
    REQUIRE(persisted);
    CHECK(persisted->meta.at("step") == 4);
    CHECK(s.ckpt->verify(*persisted).empty());
  }
  {
    TierRank s(job, 0, nullptr, nullptr);
    const auto loaded = s.ckpt->recover_if_possible();
    REQUIRE(loaded);
    CHECK(s.shared.value == 4);
    CHECK(loaded->path.parent_path() == job.node_dir(0) / "recovery");
  }
  // Without the memory directory, the persisted checkpoint is what a plain Checkpointer loads.
  fs::remove_all(job.node_dir(0));
  TierCell plain;
  Checkpointer ckpt(job.disk);
  ckpt.add_recoverable("shared", plain);
  REQUIRE(ckpt.recover_if_possible());
  CHECK(plain.value == 4);
}

TEST_CASE("memory tier: keep and persist_every changed through options() take effect at the next save",
          "[memory_tier]") {
  register_tier_cell();
  TempDir tmp;
  TierJob job{tmp.path() / "disk", tmp.path() / "shm", 1};
  TierRank s(job, 0, nullptr, nullptr);
  auto save = [&](int step) {
    s.shared.value = step;
    REQUIRE(s.ckpt->save_to_memory({{"step", step}}));
    s.ckpt->wait();
  };
  save(1);
  save(2);
  CHECK(tier_count(job.node_dir(0) / "own") == 1);  // keep 1
  CHECK(s.ckpt->list_checkpoints().empty());         // persist_every 0
  MemoryTierOptions tier = *s.ckpt->options().memory_tier();
  s.ckpt->options().memory_tier(tier.keep(3).persist_every(1));
  for (int step = 3; step <= 5; ++step) save(step);
  CHECK(tier_count(job.node_dir(0) / "own") == 3);
  const auto persisted = s.ckpt->list_checkpoints();
  REQUIRE(persisted.size() == 3);  // every save persisted
  CHECK(persisted.back().meta.at("step") == 5);
}

TEST_CASE("memory tier: the cadence starts the next save once the last one's duration has passed", "[memory_tier]") {
  tier::SaveCadence c;
  const auto call = [&c](double now, double returns) {  // a call at `now` that returns at `returns`
    const bool started = c.call(now);
    c.returned(returns);
    return started;
  };
  // The first call always saves; with no save measured yet, so does the next.
  CHECK(call(0.0, 0.0));
  c.set_next(c.plan_next(0.0));
  CHECK(c.call(0.1));
  const std::uint64_t next = c.plan_next(0.1);
  c.set_next(next);
  c.returned(0.1);
  c.completed(0.45);  // that save took 0.35 s
  CHECK(next == 2);
  // Calls 0.1 s apart: 0.35 s is 3.5 calls, 4.2 with a fifth more room, so the save at call 2
  // is followed by the one at call 2 + 5. The call waited 0.05 s for the save before it: the
  // interval is still measured from its return (a wait does not make calls look slower).
  CHECK(c.call(0.2));
  c.set_next(c.plan_next(0.2));
  c.returned(0.2);
  for (double t : {0.3, 0.4, 0.5, 0.6}) CHECK_FALSE(call(t, t));
  CHECK(call(0.7, 0.75));
  CHECK(c.calls() == 8);
  // A pause of 10 s (an evaluation) counts as two intervals, not as 100: after it, the next
  // save is still planned several calls on.
  tier::SaveCadence paused;
  for (int i = 0; i < 8; ++i) {
    const double t = i < 7 ? i * 0.1 : 10.0;
    if (paused.call(t)) {
      paused.set_next(paused.plan_next(t));
      paused.completed(t + 0.35);
    }
    paused.returned(t);
  }
  const std::uint64_t after_pause = paused.plan_next(10.0);
  CHECK(after_pause >= paused.calls() + 1);  // not every call: the pause did not set the pace
  // Saves faster than calls: every call saves.
  tier::SaveCadence fast;
  for (int i = 0; i < 5; ++i) {
    CHECK(fast.call(i * 1.0));
    fast.set_next(fast.plan_next(i * 1.0));
    fast.returned(i * 1.0);
    fast.completed(i * 1.0 + 0.1);
  }
}

TEST_CASE("memory tier: saves asked for every step skip the same calls on every rank", "[memory_tier]") {
  register_tier_cell();
  TempDir tmp;
  const TierJob job{tmp.path() / "disk", tmp.path() / "shm", 2};
  constexpr int kCalls = 40;
  std::vector<std::vector<bool>> started(4);
  {
    test::ThreadWorld world(4), replication(4);
    const auto out = world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
      CheckpointerOptions options;
      MemoryTierOptions tier(job.node_dir(rank / 2));
      tier.node_id("node" + std::to_string(rank / 2)).skip_while_busy(true).replication_group(replication.group(rank));
      Checkpointer ckpt(job.disk, options.process_group(group).memory_tier(tier));
      TierCell shared;
      ckpt.add_recoverable("shared", shared);
      for (int step = 1; step <= kCalls; ++step) {
        shared.value = step;
        started[rank].push_back(ckpt.save_to_memory({{"step", step}}));
      }
      return ckpt.wait().value().meta.at("step").get<int>();
    });
    for (int r = 0; r < 4; ++r) {
      INFO("rank " << r << ": " << out[r].message());
      REQUIRE(out[r].value.has_value());
      CHECK(started[r] == started[0]);  // a rank that decided alone would hang the collectives
    }
    REQUIRE(started[0].size() == kCalls);
    CHECK(started[0][0]);
    int last = 0;
    for (int i = 0; i < kCalls; ++i)
      if (started[0][i]) last = i + 1;
    CHECK(*out[0].value == last);  // the newest save is the last call that started one
    // The newest complete one is what all ranks recover: the last call that started a save.
    const auto recovered = tier_recover(job, 4, 2);
    for (int r = 0; r < 4; ++r) {
      INFO("rank " << r << ": " << recovered[r].message());
      REQUIRE(recovered[r].value.has_value());
      CHECK(recovered[r].value->shared == last);
    }
  }
}

TEST_CASE("memory tier: skip_while_busy set on some ranks only is a UsageError naming it", "[memory_tier]") {
  register_tier_cell();
  TempDir tmp;
  const TierJob job{tmp.path() / "disk", tmp.path() / "shm", 2};
  test::ThreadWorld world(2, std::chrono::milliseconds(500)), replication(2, std::chrono::milliseconds(500));
  const auto out = world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
    MemoryTierOptions tier(job.node_dir(rank));
    tier.node_id("node" + std::to_string(rank)).skip_while_busy(rank == 1).replication_group(replication.group(rank));
    Checkpointer ckpt(job.disk, CheckpointerOptions().process_group(group).memory_tier(tier));
    TierCell shared;
    ckpt.add_recoverable("shared", shared);
    try {
      ckpt.save_to_memory();
      ckpt.wait();  // rank 0: the others never write their part
      return std::string("no error");
    } catch (const UsageError& e) {
      return "UsageError: " + std::string(e.what());
    } catch (const Error& e) {
      return "Error: " + std::string(e.what());
    }
  });
  REQUIRE(out[1].value.has_value());
  INFO(*out[1].value);
  CHECK(out[1].value->rfind("UsageError: ", 0) == 0);
  CHECK(out[1].value->find("skip_while_busy differs between ranks: true on rank 1, false on rank 0") != std::string::npos);
  REQUIRE(out[0].value.has_value());
  CHECK(out[0].value->rfind("Error: ", 0) == 0);  // rank 0 hears it as the group's timeout, not a hang
}

TEST_CASE("memory tier: what is missing is a UsageError naming it", "[memory_tier]") {
  register_tier_cell();
  TempDir tmp;
  TierCell c;
  Checkpointer plain(tmp.path() / "disk");
  plain.add_recoverable("c", c);
  CHECK_THROWS_AS(plain.save_to_memory(), UsageError);
  CHECK_THROWS_WITH(plain.persist_memory_checkpoint(), Catch::Contains("memory tier"));
  CHECK_THROWS_WITH(Checkpointer(tmp.path() / "d2", CheckpointerOptions().memory_tier(MemoryTierOptions())),
                    Catch::Contains("directory is required"));
  test::ThreadWorld world(2);
  const auto out = world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
    Checkpointer ckpt(tmp.path() / "d3", CheckpointerOptions().process_group(group).memory_tier(
                                             MemoryTierOptions(tmp.path() / ("m" + std::to_string(rank)))));
    return 0;
  });
  for (const auto& o : out) CHECK(o.message().find("replication_group") != std::string::npos);
}

TEST_CASE("memory tier: a memory directory too small for keep + 1 checkpoints is an error at the first save",
          "[memory_tier]") {
  register_tier_cell();
  TempDir tmp;
  TierJob job{tmp.path() / "disk", tmp.path() / "shm", 1};
  job.keep = 2;
  TierRank s(job, 0, nullptr, nullptr);
  const std::string shm = job.node_dir(0).string();
  test::FaultGuard guard([&](detail::IoOp op, const fs::path& path) {
    detail::Fault f;
    if (op == detail::IoOp::statfs && path.string().rfind(shm, 0) == 0) f.max_bytes = 10;  // 10 bytes free
    return f;
  });
  s.shared.value = 1;
  s.ckpt->save_to_memory();
  try {
    s.ckpt->wait();
    FAIL("the first memory save should have failed");
  } catch (const IoError& e) {
    const std::string what = e.what();
    CHECK(what.find(shm) != std::string::npos);
    CHECK(what.find("needs about") != std::string::npos);
    CHECK(e.error_code() == ENOSPC);
  }
  CHECK(tier_count(job.node_dir(0) / "complete") == 0);  // never counted as complete
}

// ------------------------------------------------------------------ parity sets
TEST_CASE("memory tier parity: 4 nodes in one set keep their parts and a third of a parity each, no buddy copies",
          "[memory_tier][parity]") {
  register_tier_cell();
  TempDir tmp;
  TierJob job{tmp.path() / "disk", tmp.path() / "shm", 4};
  job.redundancy = Redundancy::parity;
  const std::string last = tier_train(job, 4, 3);
  for (int node = 0; node < 4; ++node) {
    INFO("node " << node);
    CHECK(tier_count(job.node_dir(node) / "own") == 1);
    CHECK(tier_count(job.node_dir(node) / "replicas" / ("rank" + std::to_string((node + 3) % 4))) == 0);
    const fs::path share = job.node_dir(node) / "parity" / ("rank" + std::to_string(node)) / last;
    REQUIRE(fs::exists(share / "parity.bin"));
    // Each rank's data (its files, concatenated) is cut in 3 segments: the parity is one of them.
    std::uintmax_t longest = 0;
    for (int r = 0; r < 4; ++r) {
      std::uintmax_t length = fs::file_size(job.node_dir(r) / "own" / last / ("own.rank" + std::to_string(r) + ".json"));
      if (r == 0) length += fs::file_size(job.node_dir(0) / "own" / last / "shared.json");
      longest = std::max(longest, length);
    }
    CHECK(fs::file_size(share / "parity.bin") == (longest + 2) / 3);
  }
}

TEST_CASE("memory tier parity: one lost node is rebuilt from its set, bit-exact, at world 3 and at world 4",
          "[memory_tier][parity]") {
  register_tier_cell();
  TempDir tmp;
  TierJob job{tmp.path() / "disk", tmp.path() / "shm", 4};
  job.redundancy = Redundancy::parity;
  const std::string last = tier_train(job, 4, 3);
  const std::string lost_file = tier_read(job.node_dir(2) / "own" / last / "own.rank2.json");
  REQUIRE_FALSE(lost_file.empty());
  fs::remove_all(job.node_dir(2));
  SECTION("world 3: the surviving nodes") {
    TierWarnings warnings;
    const auto out = tier_recover_on(job, {0, 1, 3});
    for (int r = 0; r < 3; ++r) {
      INFO("rank " << r << ": " << out[r].message());
      REQUIRE(out[r].value.has_value());
      CHECK(out[r].value->shared == 3);
      CHECK(out[r].value->path.rfind((job.memory).string(), 0) == 0);  // from memory, not disk
    }
    CHECK(warnings.contain("rebuilt rank 2's part from its parity set"));
    // The assembled checkpoint holds rank 2's file, byte for byte as it was saved.
    CHECK(tier_read(job.node_dir(0) / "recovery" / last / "own.rank2.json") == lost_file);
  }
  SECTION("world 4: node 2 replaced by an empty one") {
    const auto out = tier_recover_on(job, {0, 1, 2, 3});
    for (int r = 0; r < 4; ++r) {
      INFO("rank " << r << ": " << out[r].message());
      REQUIRE(out[r].value.has_value());
      CHECK(out[r].value->shared == 3);
      CHECK(out[r].value->own == 300 + r);  // rank 2's own state came back from the parity
    }
  }
  CHECK_FALSE(tier_disk_has(job.disk));
}

TEST_CASE("memory tier parity: two lost nodes in one set fall back to the disk, with a warning",
          "[memory_tier][parity]") {
  register_tier_cell();
  TempDir tmp;
  TierJob job{tmp.path() / "disk", tmp.path() / "shm", 4};
  job.redundancy = Redundancy::parity;
  job.persist_every = 2;
  tier_train(job, 4, 3);  // persisted at step 2
  fs::remove_all(job.node_dir(1));
  fs::remove_all(job.node_dir(2));
  TierWarnings warnings;
  const auto out = tier_recover_on(job, {0, 3});
  for (int r = 0; r < 2; ++r) {
    INFO("rank " << r << ": " << out[r].message());
    REQUIRE(out[r].value.has_value());
    CHECK(out[r].value->shared == 2);
    CHECK(out[r].value->path.rfind(job.disk.string(), 0) == 0);
  }
  CHECK(warnings.contain("are both lost"));
  CHECK(warnings.contain("recovering from disk"));
}

TEST_CASE("memory tier parity: a damaged parity share is detected and the disk used", "[memory_tier][parity]") {
  register_tier_cell();
  TempDir tmp;
  TierJob job{tmp.path() / "disk", tmp.path() / "shm", 4};
  job.redundancy = Redundancy::parity;
  job.persist_every = 2;
  const std::string last = tier_train(job, 4, 3);
  fs::remove_all(job.node_dir(2));
  SECTION("found by the rebuild's checksums") {
    tier_flip_byte(job.node_dir(3) / "parity" / "rank3" / last / "parity.bin");
  }
  SECTION("found by its size") {
    const fs::path p = job.node_dir(0) / "parity" / "rank0" / last / "parity.bin";
    fs::resize_file(p, fs::file_size(p) - 1);
  }
  TierWarnings warnings;
  const auto out = tier_recover_on(job, {0, 1, 3});
  for (int r = 0; r < 3; ++r) {
    INFO("rank " << r << ": " << out[r].message());
    REQUIRE(out[r].value.has_value());
    CHECK(out[r].value->shared == 2);  // the persisted step, not a wrong rebuild of step 3
    CHECK(out[r].value->path.rfind(job.disk.string(), 0) == 0);
  }
  CHECK((warnings.contain("do not match their records") || warnings.contain("damaged parity share")));
}

TEST_CASE("memory tier parity: a parity computation that fails leaves the step incomplete, the one before recovers",
          "[memory_tier][parity]") {
  register_tier_cell();
  TempDir tmp;
  TierJob job{tmp.path() / "disk", tmp.path() / "shm", 4};
  job.redundancy = Redundancy::parity;
  // Step 3's parity share of rank 1 fails on node 1.
  tier_fail_third_save(job, "parity/rank1/");
  // Rank 1's half-written share is a temporary: removed when the tier opened again (the recovery).
  CHECK(tier_count(job.node_dir(1) / "parity" / "rank1", ".savepoint-tmp-") == 0);
}

TEST_CASE("memory tier parity: nodes with different numbers of ranks are a UsageError naming them",
          "[memory_tier][parity]") {
  register_tier_cell();
  TempDir tmp;
  TierJob job{tmp.path() / "disk", tmp.path() / "shm", 2};
  job.redundancy = Redundancy::parity;
  test::ThreadWorld world(3), replication(3);
  const auto out = world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
    TierRank s(job, rank == 0 ? 0 : 1, group, replication.group(rank));
    return 0;
  });
  for (int r = 0; r < 3; ++r) {
    INFO("rank " << r << ": " << out[r].message());
    CHECK(out[r].raised<UsageError>());
    CHECK(out[r].message().find("same number of ranks on every node") != std::string::npos);
  }
}

// ------------------------------------------------------------------ strict recovery
TEST_CASE("memory tier: strict_recovery with a damaged memory checkpoint raises instead of falling back",
          "[memory_tier]") {
  register_tier_cell();
  TempDir tmp;
  TierJob job{tmp.path() / "disk", tmp.path() / "shm", 1};
  job.persist_every = 1;
  std::string last;
  {
    TierRank s(job, 0, nullptr, nullptr);
    for (int step = 1; step <= 2; ++step) {
      s.shared.value = step;
      s.ckpt->save_to_memory({{"step", step}});
    }
    last = s.ckpt->wait().value().name();
  }
  REQUIRE(tier_disk_has(job.disk));
  tier_flip_byte(job.node_dir(0) / "own" / last / "shared.json");
  SECTION("strict: raised, the state untouched") {
    job.strict = true;
    TierRank s(job, 0, nullptr, nullptr);
    CHECK_THROWS_AS(s.ckpt->recover_if_possible(), CorruptCheckpointError);
    CHECK(s.shared.value == 0);
  }
  SECTION("not strict: the disk's copy of the same step") {
    TierWarnings warnings;
    TierRank s(job, 0, nullptr, nullptr);
    const auto loaded = s.ckpt->recover_if_possible();
    REQUIRE(loaded);
    CHECK(s.shared.value == 2);
    CHECK(loaded->path.parent_path() == job.disk);
    CHECK(warnings.contain("verifying every copy"));
  }
}

TEST_CASE("memory tier: every copy damaged and nothing on disk: every rank raises CorruptCheckpointError, never "
          "starts afresh",
          "[memory_tier]") {
  register_tier_cell();
  TempDir tmp;
  const TierJob job{tmp.path() / "disk", tmp.path() / "shm", 2};
  const std::string last = tier_train(job, 2, 2);
  // Rank 0's file: its own copy on node 0 and its buddy copy on node 1.
  tier_flip_byte(job.node_dir(0) / "own" / last / "own.rank0.json");
  tier_flip_byte(job.node_dir(1) / "replicas" / "rank0" / last / "own.rank0.json");
  const auto out = tier_recover(job, 2, 2);
  for (int r = 0; r < 2; ++r) {
    INFO("rank " << r << ": " << out[r].message());
    CHECK(out[r].raised<CorruptCheckpointError>());
    CHECK(out[r].message().find("could be restored") != std::string::npos);
  }
}
