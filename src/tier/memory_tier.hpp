// tier/memory_tier.hpp — checkpoints every few steps in node-local memory, each node's part
// kept redundantly on other nodes (buddy copies or parity sets), the newest complete one
// persisted to disk now and then, and recovery from the fastest source that is complete
// (docs/distributed.md, "The memory tier"). The Checkpointer makes one call here per method.
//
// The tier's rooms: layout.hpp (what is where on a node, completeness, retention),
// transport.hpp (buddy copies), parity.hpp (parity sets), persistence.hpp (to the disk tier),
// recovery.hpp (back from memory), cadence.hpp (skip_while_busy).
#pragma once

#include "cadence.hpp"
#include "layout.hpp"
#include "parity.hpp"
#include "recovery.hpp"
#include "transport.hpp"

#include "../engine/catalog.hpp"
#include "../engine/loader.hpp"
#include "../engine/nodes.hpp"
#include "../engine/save_pipeline.hpp"
#include "../engine/world.hpp"

#include <savepoint/checkpoint.hpp>
#include <savepoint/hooks.hpp>
#include <savepoint/options.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace savepoint::tier {

class MemoryTier {
 public:
  /// Collective on `world`: names the nodes (one all-gather); each node's leader creates the
  /// directories, takes own/'s lock and removes what crashed saves and copies left.
  MemoryTier(const engine::World& world, const MemoryTierOptions& options);

  const engine::NodeMap& nodes() const noexcept { return nodes_; }
  const Layout& layout() const noexcept { return layout_; }

  /// save_to_memory on the caller's thread: null when skip_while_busy skips this call; else
  /// `make_plan` (which waits for the save in flight) gives the plan, and the save is
  /// prepared into this node's own/ (hooks run, the snapshot taken or deferred). `now`: the
  /// options as they are at this call (CheckpointerOptions::memory_tier may change between
  /// saves: keep, persist_every, persist_keep, skip_while_busy, background_priority and
  /// reuse_files take effect at the next save; the rest is read once, at construction).
  std::shared_ptr<engine::PreparedSave> prepare_save(const MemoryTierOptions& now,
                                                     const std::vector<Recoverable>& recoverables,
                                                     const nlohmann::json& meta, const SaveOptions& options,
                                                     const std::function<engine::SavePlan()>& make_plan);
  /// On the background thread (at background_priority): commits on every node, makes the
  /// checkpoint complete (redundancy, agreement, the tier's retention) and persists it to
  /// `disk` when persist_every says so.
  Checkpoint finish_save(engine::PreparedSave& save, engine::Catalog& disk);
  /// After prepare_save's call returned (the cadence measures the caller's step).
  void returned();

  /// Writes the newest complete checkpoint to `disk` (collective on the replication group),
  /// with `now`'s persist_keep; the caller waited for the save in flight.
  std::optional<Checkpoint> persist(engine::Catalog& disk, const MemoryTierOptions& now);
  /// The options the tier was opened with (its directory, node, groups, redundancy).
  const MemoryTierOptions& options() const noexcept { return options_; }

  /// The tier as recovery's first source of candidates (engine/loader.hpp).
  engine::CandidateSource candidates(const std::vector<Recoverable>& recoverables, const CheckpointerOptions& options,
                                     const engine::Catalog& disk);

 private:
  /// The newest complete checkpoint to `disk`, with runtime_'s persist_keep.
  std::optional<Checkpoint> persist_newest(engine::Catalog& disk);
  /// Redundancy, agreement, marker and retention for a checkpoint committed on every node.
  long complete(const Checkpoint& committed, const std::vector<std::string>& my_files);

  const engine::World& world_;  // the job's ranks (the Checkpointer's World)
  MemoryTierOptions options_;  // as opened: directory, node, groups, redundancy, parity sets
  MemoryTierOptions runtime_;  // as at the last save's call (set while no save is in flight)
  engine::World replication_;   // the replication group: used by the background thread only
  engine::NodeMap nodes_;
  Layout layout_;
  std::unique_ptr<engine::Catalog> catalog_;  // own/: where save_pipeline writes this node's parts
  BuddyCopies buddies_;
  std::unique_ptr<ParitySets> parity_;  // Redundancy::parity with several nodes
  detail::ChunkBuffer buffer_;          // what persists and recoveries copy through
  Recovery recovery_;
  SaveCadence cadence_;
  long completed_ = 0;
};

}  // namespace savepoint::tier
