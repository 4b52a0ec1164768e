// tier/transport.hpp — buddy copies: after a memory save, each rank sends the files it wrote
// to the rank on the next node that keeps its copy, and receives the parts it keeps
// (engine/nodes.hpp says who keeps whose). Headers first (name, meta.json, file sizes), then
// the bytes in chunks through reused buffers, each kept part committed by a rename.
#pragma once

#include "layout.hpp"

#include "../engine/nodes.hpp"
#include "../engine/world.hpp"

#include <memory>
#include <string>
#include <vector>

namespace savepoint::tier {

/// What one chunk of a transfer between nodes holds (one receive buffer per sender).
constexpr std::size_t kChunk = std::size_t{32} << 20;

class BuddyCopies {
 public:
  BuddyCopies(const Layout& layout, const engine::NodeMap& nodes, const engine::World& replication)
      : layout_(layout), nodes_(nodes), replication_(replication) {}

  /// Collective on the replication group: sends `my_files` of `committed` (in own/) to this
  /// rank's buddy and commits the parts this rank keeps under replicas/rank<S>/.
  void exchange(const Checkpoint& committed, const std::vector<std::string>& my_files);

 private:
  const Layout& layout_;
  const engine::NodeMap& nodes_;
  const engine::World& replication_;
  // Reused across saves (bounded staging, faulted in once): what this rank sends, and one
  // buffer per sender whose part it keeps.
  std::unique_ptr<detail::ChunkBuffer> send_buffer_;
  std::vector<std::unique_ptr<detail::ChunkBuffer>> receive_buffers_;
};

}  // namespace savepoint::tier
