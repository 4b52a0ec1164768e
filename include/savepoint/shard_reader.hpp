// savepoint/shard_reader.hpp — what the load hook of a sharded key reads from (torch-free).
//
// A sharded key (savepoint::ShardedTensors, savepoint/sharded.hpp) is saved as one file per
// rank, each holding rows [offset, offset + rows) of every tensor. At load time the world size
// may differ: the hook asks for the rows the *current* registration holds and the reader finds
// the saved files those rows lie in, reads only the blocks it needs (pread) and verifies each
// against meta.json's per-block XXH3 before copying (docs/format.md, docs/distributed.md).
#pragma once

#include <savepoint/format/safetensors.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace savepoint {

/// The hook name of savepoint::ShardedTensors, as written to meta.json.
inline constexpr const char* kShardedTensorsHook = "savepoint.ShardedTensors";
/// Block size of the per-block checksums of a sharded file.
inline constexpr std::uint64_t kShardBlockBytes = std::uint64_t{1} << 20;

/// One tensor of a sharded key as the checkpoint holds it: the whole (global) tensor.
struct ShardedTensorInfo {
  std::string name;
  safetensors::DType dtype = safetensors::DType::F32;
  std::vector<std::int64_t> global_shape;  ///< dim 0 is split over the saving ranks
};

class ShardReader {
 public:
  virtual ~ShardReader() = default;
  /// Every tensor the checkpoint holds for this key.
  virtual const std::vector<ShardedTensorInfo>& tensors() const = 0;
  /// The loading rank (0 without a process group), for messages.
  virtual int rank() const = 0;
  /// Copies global rows [row_begin, row_end) of `tensor` into `dst` (contiguous, row-major).
  /// Reads only the blocks of the saved files those rows lie in, and verifies each one before
  /// using it: CorruptCheckpointError naming the file and key when one fails, IoError when a
  /// read fails. Nothing of `dst` is meaningful after an error.
  virtual void read_rows(const std::string& tensor, std::int64_t row_begin, std::int64_t row_end,
                         void* dst) const = 0;
};

}  // namespace savepoint
