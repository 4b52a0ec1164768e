// savepoint/sharded.hpp — tensors split by rows over the ranks of a job (ZeRO-style flat
// optimizer state, a large embedding table): the third kind of state (docs/distributed.md).
//
//   auto [offset, rows] = savepoint::even_rows(vocab, rank, world);  // this rank's rows
//   torch::Tensor table = torch::empty({rows, dim});                   // this rank's part
//   savepoint::ShardedTensors shards;
//   shards.add("embedding", table, /*global_rows=*/vocab, offset);     // rows [offset, offset + rows)
//   ckpt.add_recoverable("embedding", shards, savepoint::sharded());
//
// Each rank saves its rows into its own file. Loading fills each registered tensor in place
// with the rows its *current* registration names, whatever world size saved them: a job
// restarted on another number of ranks allocates its new partition and registers it. A
// Checkpointer without a process group loads too (register offset 0 and all rows to get the
// whole tensor back). Only dim 0 is split; the other dims and the dtype must match the saved
// tensor (MismatchError naming key, tensor and rank otherwise).
#pragma once

#include <savepoint/hooks.hpp>
#include <savepoint/shard_reader.hpp>
#include <savepoint/torch_builtins.hpp>

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace savepoint {

class ShardedTensors {
 public:
  struct Shard {
    std::string name;
    torch::Tensor local;  ///< this rank's rows (shares storage with the tensor given to add)
    std::int64_t global_rows = 0;
    std::int64_t offset = 0;
  };
  /// `local` holds rows [offset, offset + local.size(0)) of a tensor of `global_rows` rows (its
  /// other dims as `local`'s). It is held by reference to its storage: loads write into it.
  /// UsageError for an undefined or 0-dim tensor, rows outside [0, global_rows), a name twice.
  ShardedTensors& add(std::string name, torch::Tensor local, std::int64_t global_rows, std::int64_t offset);
  const std::vector<Shard>& shards() const noexcept { return shards_; }

 private:
  std::vector<Shard> shards_;
};

/// A range of rows: [offset, offset + rows).
struct RowRange {
  std::int64_t offset = 0;
  std::int64_t rows = 0;
};
/// The rows of `rank` when `global_rows` rows are split as evenly as possible over `world`
/// ranks, in rank order (the first global_rows % world ranks get one row more).
RowRange even_rows(std::int64_t global_rows, int rank, int world);

}  // namespace savepoint
