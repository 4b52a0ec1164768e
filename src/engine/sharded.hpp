// engine/sharded.hpp — the third kind of state: dim-0 shards of larger tensors
// (docs/distributed.md). Torch-free: the hook (src/torch/sharded.cpp) hands over named tensor
// payloads with their global shape and offset; the engine writes one file per rank with
// per-block checksums, and at load time hands the hook a ShardReader that reads and verifies
// only the blocks the current rank's rows lie in, whatever the saving world size was.
#pragma once

#include "catalog.hpp"
#include "payload_writer.hpp"

#include <savepoint/checkpoint.hpp>
#include <savepoint/distributed.hpp>
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
                             bool direct_io = false);

/// The reader a sharded key's load hook gets: every record of `key` in `checkpoint` (one per
/// saving rank), their layout checked (the rows of each tensor tile its global dim 0 exactly),
/// the files checked to exist with their recorded size; nothing read yet.
/// CorruptCheckpointError naming the key and file when the layout is malformed.
std::shared_ptr<const ShardReader> open_shards(const Checkpoint& checkpoint, const std::string& key, int rank);
/// A sharded key's file exists as a regular file of its recorded size (what recovery checks on
/// rank 0 instead of reading it whole: each rank verifies the blocks it reads).
void check_shard_file(const Checkpoint& checkpoint, const FileRecord& record);

/// Recovery with sharded keys: all or nothing over the ranks. Per candidate (best first):
/// rank 0 verifies the non-sharded files and chooses (1 broadcast); every rank reads and
/// verifies what it needs, changing nothing (1 all-gather); if any rank found damage, all move
/// on to the next candidate; else every rank applies (1 all-gather). 3 collectives when the
/// first choice loads, 2 more per candidate a rank found damaged.
std::optional<Checkpoint> recover_sharded(ProcessGroup& group, const Catalog& catalog,
                                          const std::vector<Recoverable>& recoverables,
                                          const CheckpointerOptions& options,
                                          const std::vector<const Checkpoint*>& candidates);
/// load_checkpoint with sharded keys: prepare everywhere (1 all-gather), then apply (1 all-gather).
void load_sharded_collectively(ProcessGroup& group, const Catalog& catalog,
                               const std::vector<Recoverable>& recoverables, const CheckpointerOptions& options,
                               const Checkpoint& checkpoint);

}  // namespace savepoint::engine
