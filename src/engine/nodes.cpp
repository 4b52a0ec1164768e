#include "nodes.hpp"

#include <savepoint/errors.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <map>

namespace savepoint::engine {

NodeMap::NodeMap(std::vector<std::string> ids) : ids_(std::move(ids)), node_(ids_.size(), -1) {
  std::map<std::string, int> index;
  for (int r = 0; r < ranks(); ++r) {
    if (ids_[r].empty()) throw UsageError(fmt::format("savepoint: rank {} has an empty node id", r));
    const auto [it, added] = index.emplace(ids_[r], nodes());
    if (added) members_.emplace_back();
    node_[r] = it->second;
    members_[it->second].push_back(r);
  }
}

NodeMap NodeMap::gather(const World& world, const std::string& my_node_id) {
  return NodeMap(agree(world, "memory tier (naming the nodes)", [&] { return my_node_id; }));
}

int NodeMap::buddy_of(int rank) const {
  if (nodes() < 2) return -1;
  const int node = node_of(rank);
  const auto& mine = members_[node];
  const auto& next = members_[(node + 1) % nodes()];
  const int local = static_cast<int>(std::find(mine.begin(), mine.end(), rank) - mine.begin());
  return next[local % next.size()];
}

std::vector<int> NodeMap::kept_for(int rank) const {
  std::vector<int> out;
  for (int r = 0; r < ranks(); ++r)
    if (buddy_of(r) == rank) out.push_back(r);
  return out;
}

}  // namespace savepoint::engine
