// The memory tier with state that depends on the world size: a sharded key (dim-0 rows) and
// the DistributedSampler, saved by 4 ranks as threads on 2 "nodes" (tests/thread_group.hpp),
// one node lost, recovered by 2 and by 3 ranks from the buddy copies alone.
#include <savepoint/savepoint.hpp>

#include "support.hpp"
#include "thread_group.hpp"

#include <torch/torch.h>

#include "catch.hpp"

namespace fs = std::filesystem;

namespace memory_tier_torch_test {

constexpr std::int64_t kRows = 37, kSamples = 96, kGlobalBatch = 12;

torch::Tensor global_rows(int step) { return torch::arange(kRows * 5, torch::kFloat).reshape({kRows, 5}) + step; }

struct TierShardRank {
  savepoint::ShardedTensors shards;
  torch::Tensor local;
  savepoint::RowRange rows;
  savepoint::DistributedSampler sampler{kSamples, /*seed=*/42};
  std::unique_ptr<savepoint::Checkpointer> ckpt;
  TierShardRank(const fs::path& root, int rank, int world, int node, std::shared_ptr<savepoint::ProcessGroup> group,
                std::shared_ptr<savepoint::ProcessGroup> replication) {
    rows = savepoint::even_rows(kRows, rank, world);
    local = torch::zeros({rows.rows, 5});
    shards.add("w", local, kRows, rows.offset);
    savepoint::MemoryTierOptions tier(root / ("node" + std::to_string(node)));
    tier.node_id("node" + std::to_string(node)).replication_group(std::move(replication));
    ckpt = std::make_unique<savepoint::Checkpointer>(
        root / "disk", savepoint::CheckpointerOptions().process_group(std::move(group)).memory_tier(tier));
    ckpt->add_recoverable("w", shards, savepoint::sharded());
    ckpt->add_recoverable("sampler", sampler);
  }
};

}  // namespace memory_tier_torch_test

using namespace memory_tier_torch_test;

TEST_CASE("memory tier: sharded rows and the sampler saved by 4 ranks on 2 nodes reload at 2 and 3 ranks from the "
          "buddy copies of a lost node",
          "[memory_tier]") {
  test::TempDir tmp;
  {
    test::ThreadWorld world(4), replication(4);
    const auto out = world.run([&](int rank, std::shared_ptr<savepoint::ProcessGroup> group) {
      TierShardRank s(tmp.path(), rank, 4, rank / 2, group, replication.group(rank));
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
  fs::remove_all(tmp.path() / "node0");  // node 0 is lost with its memory
  for (const int survivors : {2, 3}) {
    INFO(survivors << " ranks on node 1");
    test::ThreadWorld world(survivors), replication(survivors);
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
