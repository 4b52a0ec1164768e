// engine/sharded.hpp — the third kind of state: dim-0 shards of larger tensors
// (docs/distributed.md). Torch-free: the hook (src/torch/sharded.cpp) hands over named tensor
// payloads with their global shape and offset; the engine writes one file per rank with
// per-block checksums, and at load time hands the hook a ShardReader that reads and verifies
// only the blocks the current rank's rows lie in, whatever the saving world size was.
#pragma once

#include "catalog.hpp"
#include "load_source.hpp"
#include "payload_writer.hpp"

#include <savepoint/checkpoint.hpp>
#include <savepoint/hooks.hpp>
#include <savepoint/options.hpp>
#include <savepoint/shard_reader.hpp>

#include <nlohmann/json.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace savepoint::engine {

/// Is `r` a sharded key? (Sharing::sharded or the ShardedTensors hook; UsageError when the two
/// disagree: a ShardedTensors registered per-rank, a module registered sharded.)
bool is_sharded(const Recoverable& r);
bool has_sharded(const std::vector<Recoverable>& recoverables);

/// Plans the write of a sharded key's payload (tensors whose metadata "savepoint.shards" gives
/// each one's global shape and offset). Once the write ran, `*shard` holds the record's
/// "shard" object (layout, header and block checksums).
FileWrite plan_sharded_write(const fs::path& file, const Recoverable& r, Payload payload, StagingBuffers* staging,
                             std::shared_ptr<nlohmann::json>& shard, OverlappedSnapshot* overlapped = nullptr,
                             detail::WriteMode mode = detail::WriteMode::buffered, bool* needs_sync = nullptr);

/// The reader a sharded key's load hook gets: every record of `key` in `checkpoint` (one per
/// saving rank), their layout checked (the rows of each tensor tile its global dim 0 exactly),
/// the files checked by `source` to exist with their recorded size; nothing read yet.
/// CorruptCheckpointError naming the key and file when the layout is malformed.
std::shared_ptr<const ShardReader> open_shards(const Checkpoint& checkpoint, const std::string& key, int rank,
                                               const LoadSource& source);
}  // namespace savepoint::engine
