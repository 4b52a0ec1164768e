// engine/distributed.hpp — the collective versions of save, recover and delete, for a
// Checkpointer with a process group (docs/distributed.md). Torch-free: they talk to
// savepoint::ProcessGroup only.
//
// Two agreement primitives carry every decision:
//   from_root: rank 0 runs a step and broadcasts its result or its error (1 broadcast)
//   agree:     every rank runs a step; one all-gather of results or errors
// Either raises DistributedError with the same message on every rank when a step failed
// on some rank (naming it) or the collective itself failed (a rank died, the timeout).
#pragma once

#include "catalog.hpp"
#include "payload_writer.hpp"
#include "save_transaction.hpp"

#include <savepoint/checkpoint.hpp>
#include <savepoint/distributed.hpp>
#include <savepoint/hooks.hpp>
#include <savepoint/options.hpp>
#include <savepoint/retention.hpp>

#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace savepoint::engine {

/// Rank 0 runs `step`; its string result (or error) reaches every rank.
std::string from_root(ProcessGroup& group, const char* what, const std::function<std::string()>& step);
/// Every rank runs `step`; returns every rank's result, indexed by rank.
std::vector<std::string> agree(ProcessGroup& group, const char* what, const std::function<std::string()>& step);

/// The directory lock on rank 0 (stale temporaries cleaned there), null on the other ranks;
/// rank 0's failure (LockError...) is raised on every rank.
std::shared_ptr<detail::DirectoryLock> open_collectively(ProcessGroup& group, const fs::path& root,
                                                         bool clean_stale);

/// One checkpoint written by every rank and committed once by rank 0, in two halves (an
/// async save runs the second on its background thread):
///   prepare_collective_save: rank 0 allocates the name and the temporary directory
///     (collective 1); this rank's save hooks run and its writes are planned (snapshotted
///     into `staging` for an async save); a hook's failure is kept for the next collective
///   finish_collective_save: the writes; every rank's records or error to rank 0
///     (collective 2); rank 0 commits, runs `retention` (if any), and sends the result
///     (collective 3)
struct CollectiveSave {
  struct File {
    FileRecord record;
    std::size_t index;  // registration index: meta.json lists files in registration order
    FileWrite write;
    std::shared_ptr<nlohmann::json> shard = nullptr;  // a sharded key's record "shard", once written
  };
  std::unique_ptr<SaveTransaction> transaction;  // rank 0 only; its destructor rolls back
  std::shared_ptr<detail::DirectoryLock> lock;   // rank 0 only
  std::vector<File> files;
  nlohmann::json keys = nlohmann::json::array();  // (key, sharing) of every recoverable
  std::string error;                               // a failure of this rank's hooks
  int io_threads = 1;
};
/// `spread`: replicated key i written by rank i % world (else all by rank 0).
std::unique_ptr<CollectiveSave> prepare_collective_save(ProcessGroup& group, const Catalog& catalog,
                                                        const std::vector<Recoverable>& recoverables,
                                                        const nlohmann::json& meta, const SaveOptions& options,
                                                        int io_threads, bool spread, StagingBuffers* staging);
Checkpoint finish_collective_save(ProcessGroup& group, CollectiveSave& save, const std::function<void()>& retention);

/// Rank 0 picks the first of `candidates` whose every file verifies; all ranks load it.
std::optional<Checkpoint> recover_collectively(ProcessGroup& group, const Catalog& catalog,
                                               const std::vector<Recoverable>& recoverables,
                                               const CheckpointerOptions& options,
                                               const std::vector<const Checkpoint*>& candidates);

/// Checkpoint values through a string (meta.json's own text), so rank 0 can hand them over.
std::string encode_checkpoints(const std::vector<Checkpoint>& checkpoints);
std::vector<Checkpoint> decode_checkpoints(const std::string& text);

}  // namespace savepoint::engine
