// engine/memory_tier.hpp — checkpoints every few steps in node-local memory, each node's part
// copied to a buddy node, the newest complete one persisted to disk now and then, and recovery
// from the fastest source that is complete (docs/distributed.md, "The memory tier").
//
// On each node, under the tier's directory (a tmpfs such as /dev/shm):
//   own/                    the node's parts of the checkpoints: a checkpoint root; the node's
//                           leader (its lowest rank) commits, with the same commit, meta.json
//                           and checksums as on disk (meta.json lists every rank's files)
//   replicas/rank<S>/       rank S's part, as received by the rank that keeps its buddy copy
//   complete/<name>         one marker per complete checkpoint (the node's leader writes it)
//   recovery/<name>/        a recovery's checkpoint, assembled from links to the copies
// A checkpoint is complete when every rank's part is committed on its node and its buddy copy
// on the next node, and every rank said so (one all-gather on the replication group). Only a
// complete checkpoint is loaded; a node keeps the newest `keep` complete ones and nothing else.
#pragma once

#include "catalog.hpp"
#include "nodes.hpp"
#include "world.hpp"

#include <savepoint/checkpoint.hpp>
#include <savepoint/detail/io.hpp>
#include <savepoint/hooks.hpp>
#include <savepoint/options.hpp>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace savepoint::engine {

class MemoryTier {
 public:
  /// Collective on `world`: names the nodes (one all-gather); each node's leader creates the
  /// directories, takes own/'s lock and removes what crashed saves and copies left.
  MemoryTier(const World& world, const MemoryTierOptions& options);

  const NodeMap& nodes() const noexcept { return nodes_; }
  /// own/ of this node: where save_pipeline writes this node's parts (SavePlan::nodes).
  const Catalog& catalog() const noexcept { return *catalog_; }
  const fs::path& directory() const noexcept { return root_; }

  /// After a node-local save committed `committed` on every node (finish_save), on the
  /// background thread: sends the files this rank wrote to its buddy and receives the parts
  /// it keeps, agrees on the replication group that every part and copy is in place, marks
  /// the checkpoint complete and drops what `keep` no longer covers. Raises DistributedError
  /// on every rank when some copy failed (the checkpoint then never counts as complete).
  /// Returns how many checkpoints were marked complete since the tier was created.
  long complete(const Checkpoint& committed, const std::vector<std::string>& my_files);

  /// Writes the newest complete checkpoint to `disk` (collective on the replication group):
  /// each node's leader copies its node's part, verifying every checksum; rank 0 commits and
  /// applies `keep`. The training thread's state is not read again. nullopt when there is no
  /// complete checkpoint yet.
  std::optional<Checkpoint> persist(Catalog& disk, const std::optional<KeepOptions>& keep);

  /// Recovery, collective on `world`: the newest complete checkpoint whose every file the
  /// surviving nodes hold in a copy (own parts and buddy copies), assembled in every node's
  /// recovery/ from links (and files fetched from other nodes where a node lacks some, each
  /// verified as it arrives). Returns it as this rank should load it (its path is this node's
  /// recovery directory), or nullopt (logged as a warning when copies existed but none was
  /// complete). `verify_copies`: every copy's checksum is checked first and damaged copies
  /// are left out; without it a copy of the recorded size counts, and the load's own
  /// verification finds damage (one pass over the bytes instead of three: the caller then
  /// asks again with verify_copies).
  std::optional<Checkpoint> prepare_recovery(bool verify_copies);

 private:
  void replicate(const Checkpoint& committed, const std::vector<std::string>& my_files);
  void apply_retention();
  /// IoError (ENOSPC) naming the directory when this node cannot hold keep + 1 checkpoints.
  void check_capacity(const Checkpoint& committed) const;
  /// false (logged) when a file fetched from another node did not match its record.
  bool assemble(const Checkpoint& records, const std::string& meta,
                const std::map<std::string, std::vector<std::pair<int, fs::path>>>& holders);

  /// The buffer every copy between files and the network goes through (allocated once).
  detail::ChunkBuffer& buffer();

  const World& world_;  // the job's ranks (the Checkpointer's World)
  World replication_;   // the replication group: used by the background thread only
  fs::path root_;
  int keep_;
  NodeMap nodes_;
  std::unique_ptr<Catalog> catalog_;
  long completed_ = 0;
  // Reused across saves (bounded staging, faulted in once): what this rank sends, and one
  // buffer per sender whose part it keeps. Used by one thread at a time (saves, persists and
  // recoveries do not overlap).
  std::unique_ptr<detail::ChunkBuffer> send_buffer_;
  std::vector<std::unique_ptr<detail::ChunkBuffer>> receive_buffers_;
};

}  // namespace savepoint::engine
