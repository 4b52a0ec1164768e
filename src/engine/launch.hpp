// engine/launch.hpp — what the engine takes from the launcher's environment (savepoint/launch.hpp).
#pragma once

#include <string>

namespace savepoint::engine {

/// The memory tier's node id when MemoryTierOptions::node_id is empty: SAVEPOINT_NODE_ID, else
/// SLURMD_NODENAME in a SLURM task, else the host name.
std::string default_node_id();

}  // namespace savepoint::engine
