// The memory tier with state that depends on the world size: a sharded key (dim-0 rows) and
// the DistributedSampler, saved by 4 ranks as threads on 2 "nodes" (tests/thread_group.hpp),
// one node lost, recovered by 2 and by 3 ranks from the buddy copies alone.
#include <savepoint/savepoint.hpp>

#include "support.hpp"
#include "thread_group.hpp"

#include <torch/torch.h>

#include <fstream>

#include "catch.hpp"

namespace fs = std::filesystem;

namespace memory_tier_torch_test {

// Tens of MiB per rank through the thread group: a collective may wait long for a loaded
// machine's slowest rank (the bound is only there so that a hang ends).
constexpr std::chrono::milliseconds kCollectiveTimeout{60000};

constexpr std::int64_t kRows = 37, kSamples = 96, kGlobalBatch = 12;

torch::Tensor global_rows(int step) { return torch::arange(kRows * 5, torch::kFloat).reshape({kRows, 5}) + step; }

struct TierShardRank {
  savepoint::ShardedTensors shards;
  torch::Tensor local;
  savepoint::RowRange rows;
  savepoint::DistributedSampler sampler{kSamples, /*seed=*/42};
  std::unique_ptr<savepoint::Checkpointer> ckpt;
  TierShardRank(const fs::path& root, int rank, int world, int node, std::shared_ptr<savepoint::ProcessGroup> group,
                std::shared_ptr<savepoint::ProcessGroup> replication,
                savepoint::Redundancy redundancy = savepoint::Redundancy::partner) {
    rows = savepoint::even_rows(kRows, rank, world);
    local = torch::zeros({rows.rows, 5});
    shards.add("w", local, kRows, rows.offset);
    savepoint::MemoryTierOptions tier(root / ("node" + std::to_string(node)));
    tier.node_id("node" + std::to_string(node)).replication_group(std::move(replication)).redundancy(redundancy);
    ckpt = std::make_unique<savepoint::Checkpointer>(
        root / "disk", savepoint::CheckpointerOptions().process_group(std::move(group)).memory_tier(tier));
    ckpt->add_recoverable("w", shards, savepoint::sharded());
    ckpt->add_recoverable("sampler", sampler);
  }
};

// 4 ranks, rank r on node r * nodes / 4 under `root`, save 3 steps to memory with
// `redundancy`: at step s the sharded rows are global_rows(s) and the sampler is s global
// batches into epoch 1. `big`, where defined, is saved too, as the replicated key "big".
void tier_save_three_steps(const fs::path& root, int nodes, savepoint::Redundancy redundancy,
                           const torch::Tensor& big = torch::Tensor()) {
  test::ThreadWorld world(4, kCollectiveTimeout), replication(4, kCollectiveTimeout);
  const auto out = world.run([&](int rank, std::shared_ptr<savepoint::ProcessGroup> group) {
    torch::Tensor b;  // declared first: it outlives the checkpointer that saves it
    TierShardRank s(root, rank, 4, rank * nodes / 4, group, replication.group(rank), redundancy);
    if (big.defined()) {
      b = big.clone();
      s.ckpt->add_recoverable("big", b);
    }
    s.sampler.begin_epoch(1);
    for (int step = 1; step <= 3; ++step) {
      if (!s.sampler.next(rank, 4, kGlobalBatch / 4)) return std::string("the sampler ran out");
      s.local.copy_(global_rows(step).narrow(0, s.rows.offset, s.rows.rows));
      s.ckpt->save_to_memory({{"step", step}}, savepoint::intra_epoch());
    }
    s.ckpt->wait();
    return std::string();
  });
  for (int r = 0; r < 4; ++r) {
    INFO("rank " << r << ": " << out[r].message());
    REQUIRE(out[r].value == std::string());
  }
}

}  // namespace memory_tier_torch_test

using namespace memory_tier_torch_test;

TEST_CASE("memory tier: sharded rows and the sampler saved by 4 ranks on 2 nodes reload at 2 and 3 ranks from the "
          "buddy copies of a lost node",
          "[memory_tier]") {
  test::TempDir tmp;
  tier_save_three_steps(tmp.path(), /*nodes=*/2, savepoint::Redundancy::partner);
  fs::remove_all(tmp.path() / "node0");  // node 0 is lost with its memory
  for (const int survivors : {2, 3}) {
    INFO(survivors << " ranks on node 1");
    test::ThreadWorld world(survivors, kCollectiveTimeout), replication(survivors, kCollectiveTimeout);
    const auto out = world.run([&](int rank, std::shared_ptr<savepoint::ProcessGroup> group) {
      TierShardRank s(tmp.path(), rank, survivors, 1, group, replication.group(rank));
      const auto loaded = s.ckpt->recover_if_possible();
      std::string wrong;
      if (!loaded || loaded->meta.value("step", 0) != 3) wrong += "not the step-3 memory checkpoint; ";
      if (!torch::equal(s.local, global_rows(3).narrow(0, s.rows.offset, s.rows.rows))) wrong += "rows differ; ";
      if (s.sampler.position() != 3 * kGlobalBatch) wrong += "sampler at " + std::to_string(s.sampler.position());
      return wrong;
    });
    for (int r = 0; r < survivors; ++r) {
      INFO("rank " << r << ": " << out[r].message());
      REQUIRE(out[r].value.has_value());
      CHECK(*out[r].value == "");
    }
  }
  for (const auto& e : fs::directory_iterator(tmp.path() / "disk"))  // so it all came from memory
    CHECK(e.path().filename().string().rfind("CKPT+", 0) != 0);
}

TEST_CASE("memory tier: a file larger than a buddy-copy chunk is copied, fetched and recovered bit-exactly",
          "[memory_tier]") {
  // 38 MiB: more than one 32 MiB chunk, ending inside the second (memory_tier.cpp, kChunk).
  const torch::Tensor big = torch::rand({static_cast<std::int64_t>(9.5 * (1 << 20))},
                                        torch::TensorOptions().dtype(torch::kFloat));
  const torch::Tensor small = torch::arange(10, torch::kFloat);
  test::TempDir tmp;
  const auto options = [&](int node, std::shared_ptr<savepoint::ProcessGroup> group,
                           std::shared_ptr<savepoint::ProcessGroup> replication) {
    savepoint::MemoryTierOptions tier(tmp.path() / ("node" + std::to_string(node)));
    tier.node_id("node" + std::to_string(node)).replication_group(std::move(replication));
    savepoint::CheckpointerOptions o;
    if (group) o.process_group(std::move(group));
    return o.memory_tier(tier);
  };
  {
    test::ThreadWorld world(2, kCollectiveTimeout), replication(2, kCollectiveTimeout);
    const auto out = world.run([&](int rank, std::shared_ptr<savepoint::ProcessGroup> group) {
      torch::Tensor b = big.clone(), s = small.clone();
      savepoint::Checkpointer ckpt(tmp.path() / "disk", options(rank, group, replication.group(rank)));
      ckpt.add_recoverable("big", b);  // replicated: rank 0 writes it, node 1 keeps its buddy copy
      ckpt.add_recoverable("small", s);
      ckpt.save_to_memory();
      return ckpt.wait().value().name();
    });
    for (int r = 0; r < 2; ++r) {
      INFO("rank " << r << ": " << out[r].message());
      REQUIRE(out[r].value.has_value());
    }
  }
  const auto recover = [&](int ranks, int first_node) {
    test::ThreadWorld world(ranks, kCollectiveTimeout), replication(ranks, kCollectiveTimeout);
    return world.run([&](int rank, std::shared_ptr<savepoint::ProcessGroup> group) {
      torch::Tensor b = torch::zeros_like(big), s = torch::zeros_like(small);
      savepoint::Checkpointer ckpt(tmp.path() / "disk", options(first_node + rank, ranks > 1 ? group : nullptr,
                                                                  ranks > 1 ? replication.group(rank) : nullptr));
      ckpt.add_recoverable("big", b);
      ckpt.add_recoverable("small", s);
      const auto loaded = ckpt.recover_if_possible();
      std::string wrong;
      if (!loaded) wrong += "nothing recovered; ";
      if (!torch::equal(b, big)) wrong += "big differs; ";
      if (!torch::equal(s, small)) wrong += "small differs";
      return wrong;
    });
  };
  // Node 0's own copy damaged at its end (in the second chunk): it is fetched from node 1.
  fs::path own_file;
  for (const auto& e : fs::recursive_directory_iterator(tmp.path() / "node0" / "own"))
    if (e.is_regular_file() && e.file_size() > (std::uint64_t{32} << 20)) own_file = e.path();
  REQUIRE_FALSE(own_file.empty());
  {
    std::fstream f(own_file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(own_file) - 5));
    f.put('\x7f');
  }
  for (const auto& o : recover(2, 0)) {
    INFO(o.message());
    REQUIRE(o.value.has_value());
    CHECK(*o.value == "");
  }
  // Node 0 lost: node 1 alone loads the buddy copy it keeps.
  fs::remove_all(tmp.path() / "node0");
  for (const auto& o : recover(1, 1)) {
    INFO(o.message());
    REQUIRE(o.value.has_value());
    CHECK(*o.value == "");
  }
  for (const auto& e : fs::directory_iterator(tmp.path() / "disk"))  // so it all came from memory
    CHECK(e.path().filename().string().rfind("CKPT+", 0) != 0);
}

TEST_CASE("memory tier parity: 4 nodes, one lost: sharded rows, the sampler and a tensor larger than a chunk are "
          "rebuilt from the parity and reload bit-exactly at 3 ranks",
          "[memory_tier][parity]") {
  // 60 MiB, written by rank 0 (a replicated key): its parity segments (20 MiB) span several
  // of the ring's 8 MiB chunks and of the rebuild's 16 MiB ones.
  const torch::Tensor big = torch::rand({15 << 20}, torch::TensorOptions().dtype(torch::kFloat));
  test::TempDir tmp;
  const auto parity = savepoint::Redundancy::parity;
  tier_save_three_steps(tmp.path(), /*nodes=*/4, parity, big);
  fs::remove_all(tmp.path() / "node0");  // node 0 (rank 0's part: the big tensor) is lost
  test::ThreadWorld world(3, kCollectiveTimeout), replication(3, kCollectiveTimeout);
  const auto out = world.run([&](int rank, std::shared_ptr<savepoint::ProcessGroup> group) {
    TierShardRank s(tmp.path(), rank, 3, rank + 1, group, replication.group(rank), parity);
    torch::Tensor b = torch::zeros_like(big);
    s.ckpt->add_recoverable("big", b);
    const auto loaded = s.ckpt->recover_if_possible();
    std::string wrong;
    if (!loaded || loaded->meta.value("step", 0) != 3) wrong += "not the step-3 memory checkpoint; ";
    if (!torch::equal(s.local, global_rows(3).narrow(0, s.rows.offset, s.rows.rows))) wrong += "rows differ; ";
    if (s.sampler.position() != 3 * kGlobalBatch) wrong += "sampler at " + std::to_string(s.sampler.position());
    if (!torch::equal(b, big)) wrong += "big differs; ";
    return wrong;
  });
  for (int r = 0; r < 3; ++r) {
    INFO("rank " << r << ": " << out[r].message());
    REQUIRE(out[r].value.has_value());
    CHECK(*out[r].value == "");
  }
  for (const auto& e : fs::directory_iterator(tmp.path() / "disk"))  // so it all came from memory
    CHECK(e.path().filename().string().rfind("CKPT+", 0) != 0);
}
