// engine/nodes.hpp — which ranks share a node (a host, or whatever a test names one), and which
// rank keeps whose buddy copy (the memory tier, engine/memory_tier.hpp).
//
// Nodes are ordered by their lowest rank; node i's ranks send their parts to node i+1 (a ring),
// local rank j to local rank j of that node (modulo its size). With one node nobody has a buddy.
#pragma once

#include "world.hpp"

#include <string>
#include <vector>

namespace savepoint::engine {

class NodeMap {
 public:
  /// `ids[r]`: rank r's node id.
  explicit NodeMap(std::vector<std::string> ids);
  /// One all-gather of every rank's node id (free in a world of one).
  static NodeMap gather(const World& world, const std::string& my_node_id);

  int ranks() const noexcept { return static_cast<int>(ids_.size()); }
  int nodes() const noexcept { return static_cast<int>(members_.size()); }
  const std::string& id_of(int rank) const { return ids_.at(rank); }
  int node_of(int rank) const { return node_.at(rank); }
  const std::vector<int>& members(int node) const { return members_.at(node); }
  /// The lowest rank of `rank`'s node: it commits the node's part and keeps its directory.
  int leader_of(int rank) const { return members_.at(node_of(rank)).front(); }
  bool is_leader(int rank) const { return leader_of(rank) == rank; }
  /// The rank on the next node that keeps `rank`'s buddy copy; -1 with a single node.
  int buddy_of(int rank) const;
  /// The ranks whose buddy copies `rank` keeps.
  std::vector<int> kept_for(int rank) const;

 private:
  std::vector<std::string> ids_;
  std::vector<int> node_;                  // by rank
  std::vector<std::vector<int>> members_;  // by node, ascending
};

}  // namespace savepoint::engine
