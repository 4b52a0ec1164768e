// tier/persistence.hpp — the memory tier's newest complete checkpoint written to the
// Checkpointer's directory (the disk tier), by the background thread, from the tier's files:
// the training thread's state is not read again.
#pragma once

#include "layout.hpp"

#include "../engine/catalog.hpp"
#include "../engine/nodes.hpp"
#include "../engine/world.hpp"

#include <savepoint/retention.hpp>

#include <optional>

namespace savepoint::tier {

/// Collective on `replication`: each node's leader copies its node's part of the newest
/// complete checkpoint into `disk`, verifying every checksum; rank 0 commits it (the state's
/// time, not the copy's) and applies `keep`. nullopt when there is no complete checkpoint.
std::optional<Checkpoint> persist(const Layout& layout, const engine::NodeMap& nodes,
                                  const engine::World& replication, engine::Catalog& disk,
                                  const std::optional<KeepOptions>& keep, const detail::ChunkBuffer& buffer);

}  // namespace savepoint::tier
