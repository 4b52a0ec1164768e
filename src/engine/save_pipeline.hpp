// engine/save_pipeline.hpp — one save, in two halves, so an async save can split them over
// two threads:
//   prepare_save (the caller's thread): validate the meta, allocate name and sequence,
//     check free space, open the SaveTransaction, call every save hook and plan the write
//     of what it returned (snapshotting it for async saves)
//   finish_save (the caller's or the async saver's thread): run the writes (io_threads at a
//     time), record every file's digest, commit
#pragma once

#include "catalog.hpp"
#include "payload_writer.hpp"
#include "save_transaction.hpp"
#include "snapshot.hpp"

#include <savepoint/hooks.hpp>

#include <nlohmann/json.hpp>

#include <memory>
#include <vector>

namespace savepoint::engine {

struct PreparedSave {
  struct File {
    FileRecord record;  // key, file name, hook; digest filled in by the write
    FileWrite write;
    std::shared_ptr<nlohmann::json> shard = nullptr;  // a sharded key's record "shard", once written
  };
  std::unique_ptr<SaveTransaction> transaction;
  std::vector<File> files;
  std::shared_ptr<detail::DirectoryLock> lock;  // records the allocated sequence before the commit
  int io_threads = 1;  // copied: the caller may change its options during an async save
  /// An overlapped async save's tensor copies, still to be done (null: none deferred).
  std::shared_ptr<OverlappedSnapshot> snapshot;
};

/// How prepare_save captures and writes the data (from CheckpointerOptions).
struct SavePlan {
  int io_threads = 1;
  /// Non-null for an async save: data is copied into it (or reserved in it) before returning.
  StagingBuffers* staging = nullptr;
  /// With staging: tensor copies deferred to PreparedSave::snapshot (AsyncSnapshot::overlapped).
  bool overlapped = false;
  bool direct_io = false;
};

/// `staging`: non-null for an async save (data is copied into it before returning).
std::unique_ptr<PreparedSave> prepare_save(const Catalog& catalog, const std::vector<Recoverable>& recoverables,
                                           const nlohmann::json& meta, const SaveOptions& options,
                                           const SavePlan& plan);
/// With a deferred snapshot: copies it first (on this thread, the caller's guard may help),
/// and checks it just before the rename.
Checkpoint finish_save(PreparedSave& save);
/// The user's meta checked and normalised as a reader will see it, reserved keys added.
nlohmann::json checked_meta(const nlohmann::json& meta, double unixtime, bool end_of_epoch);
/// The checkpoint a save will commit: the options checked, the meta normalised, a name and
/// sequence allocated from a strict listing, free space checked. Path, sequence and meta set.
Checkpoint allocate_target(const Catalog& catalog, const nlohmann::json& meta, const SaveOptions& options,
                           int io_threads);

}  // namespace savepoint::engine
