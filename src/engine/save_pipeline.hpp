// engine/save_pipeline.hpp — the one save, on any World (a process group, or a single process
// as a world of one), in two halves so that an async save can run the second on its
// background thread:
//   prepare_save (the caller's thread)
//     1. rank 0 checks the meta, allocates name and sequence, checks free space and opens the
//        SaveTransaction's temporary directory; every rank learns its name (from_root)
//     2. this rank's save hooks run, and the write of what each returned is planned
//        (snapshotted into staging buffers, or deferred to an overlapped snapshot, for async
//        saves). A hook's failure is kept for step 3 in a group, so no rank leaves the others
//        waiting; a world of one raises it at once
//   finish_save (the caller's or the async saver's thread)
//     3. every rank writes its files (io_threads at a time) into the same temporary directory,
//        then fsyncs its tensor files (written without fsync, their writeback started: the
//        fsyncs share one journal commit instead of paying one each), checks its overlapped
//        snapshot, and its records reach rank 0 (agree)
//     4. rank 0 writes meta.json listing every rank's files, commits (the rename), runs
//        retention, and hands the committed checkpoint to every rank (from_root)
// Which rank writes what: per-rank and sharded keys, every rank its own file; replicated
// key i, rank i % world_size (spread) or rank 0.
// Node-local roots (SavePlan::nodes, the memory tier): step 1 also opens the temporary
// directory on every node, and in step 4 every node's leader commits its node's part.
#pragma once

#include "catalog.hpp"
#include "incremental.hpp"
#include "nodes.hpp"
#include "payload_writer.hpp"
#include "save_transaction.hpp"
#include "sharing.hpp"
#include "snapshot.hpp"
#include "world.hpp"

#include <savepoint/hooks.hpp>
#include <savepoint/log.hpp>

#include <nlohmann/json.hpp>

#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <vector>

namespace savepoint::engine {

/// How prepare_save captures and writes the data (from CheckpointerOptions).
struct SavePlan {
  int io_threads = 1;
  /// Non-null for an async save: data is copied into it (or reserved in it) before returning.
  StagingBuffers* staging = nullptr;
  /// With staging: tensor copies deferred to PreparedSave::snapshot (AsyncSnapshot::overlapped).
  bool overlapped = false;
  /// How tensor files are written: buffered, O_DIRECT (CheckpointerOptions::direct_io), or over
  /// the files of a reused directory (the memory tier's slots; the transaction claims a spare).
  detail::WriteMode write_mode = detail::WriteMode::buffered;
  /// Replicated key i written by rank i % world_size (else all by rank 0).
  bool spread_replicated_writes = true;
  /// Non-null: node-local roots (the memory tier). Each node's ranks write into their own
  /// node's root, and each node's leader commits that node's part there; meta.json lists
  /// every rank's files everywhere. Null: one root every rank sees (a shared file system).
  const NodeMap* nodes = nullptr;
  /// Non-null: an incremental save (CheckpointerOptions::incremental). Tensor keys other than
  /// sharded ones are stored in parts; a part the newest committed checkpoint holds is linked.
  IncrementalSaves* incremental = nullptr;
  /// Incremental saves: CheckpointerOptions::full_save_every, and the retention this save
  /// runs (null: keeps everything), which together decide whether it writes every part
  /// (engine/sharing.hpp).
  std::uint32_t full_save_every = 0;
  const KeepOptions* keep = nullptr;
  /// Non-null: run on rank 0 while it allocates the checkpoint; what it returns reaches every
  /// rank as PreparedSave::root_decision (the memory tier's cadence rides on this collective).
  std::function<nlohmann::json()> decide_on_root;
};

struct PreparedSave {
  struct File {
    FileRecord record;  // key, file name, hook, rank; digest filled in by the write
    std::size_t index;  // registration index: meta.json lists files in registration order
    FileWrite write;
    std::shared_ptr<nlohmann::json> shard = nullptr;  // a sharded key's record "shard", once written
    bool needs_sync = false;  // written without fsync: synced with the others after every write
  };
  fs::path directory;  // the temporary directory this rank writes into
  std::unique_ptr<SaveTransaction> transaction;  // rank 0 (or a node's leader); its destructor rolls back
  std::shared_ptr<detail::DirectoryLock> lock;   // rank 0 only: records the allocated sequence
  std::vector<File> files;
  nlohmann::json keys = nlohmann::json::array();  // (key, sharing) of every recoverable
  std::exception_ptr error;                        // a failure of this rank's hooks (a group only)
  int io_threads = 1;  // copied: the caller may change its options during an async save
  /// An overlapped async save's tensor copies, still to be done (null: none deferred).
  std::shared_ptr<OverlappedSnapshot> snapshot;
  bool node_local = false;  // SavePlan::nodes was given
  nlohmann::json root_decision;  // SavePlan::decide_on_root's value, on every rank (else null)
  /// An incremental save: what it saw of each part, handed to `incremental` once committed
  /// (with whether the part's bytes changed, known once written).
  IncrementalSaves* incremental = nullptr;
  std::map<std::string, std::pair<PartHistory, std::optional<std::uint64_t>>> parts_seen;
  std::size_t verified_links = 0;  // linked files to read and hash in the write phase
  LogLevel verbosity = LogLevel::info;  // SaveOptions::verbosity: of the line saying it was saved
};

std::unique_ptr<PreparedSave> prepare_save(const World& world, const Catalog& catalog,
                                           const std::vector<Recoverable>& recoverables,
                                           const nlohmann::json& meta, const SaveOptions& options,
                                           const SavePlan& plan);
/// `retention` (may be empty) runs on rank 0 after the commit, before any rank returns.
Checkpoint finish_save(const World& world, PreparedSave& save, const std::function<void()>& retention);

/// The last step of every commit to a checkpoint directory (a save, the memory tier's
/// persist), on the committing rank: the sequence made durable in `lock` (may be null), the
/// commit, `committed` (may be empty) told, then `retention` (may be empty).
Checkpoint commit_and_retain(SaveTransaction& transaction, detail::DirectoryLock* lock,
                             const std::function<void(const Checkpoint&)>& committed,
                             const std::function<void()>& retention);

/// The user's meta checked and normalised as a reader will see it, reserved keys added.
nlohmann::json checked_meta(const nlohmann::json& meta, double unixtime, bool end_of_epoch);
/// The checkpoint a save will commit: the options checked, the meta normalised, a name and
/// sequence allocated from a strict listing, free space checked. Path, sequence and meta set.
/// `newest` (may be null): set to the name of the newest committed checkpoint ("": none).
/// `incremental` (may be null): an incremental save's plan; then `*write_all` (not null) says
/// whether it writes every part, and the free-space check counts what it will write.
Checkpoint allocate_target(const Catalog& catalog, const nlohmann::json& meta, const SaveOptions& options,
                           int io_threads, std::string* newest = nullptr, const SavePlan* incremental = nullptr,
                           WriteAll* write_all = nullptr);

}  // namespace savepoint::engine
