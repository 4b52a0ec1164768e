// tier/parity.hpp — XOR parity sets (Redundancy::parity), after LLNL's SCR.
//
// Nodes are grouped in sets of n (MemoryTierOptions::parity_set_size); a rank's parity group
// is the rank of the same local index on each node of its set, m ranks in order. A member's
// data D is its files of a checkpoint, concatenated in order and zero-padded to the group's
// longest, L bytes, cut into m-1 segments of S = ceil(L / (m-1)) bytes. Member p keeps
//     P_p = XOR over j != p of segment ((p - j - 1) mod m) of D_j
// so each segment of each member is in exactly one other member's parity, and any one lost
// member's data is rebuilt from the m-2 others and m-1 parities. Each node keeps its part and
// S bytes per rank: 1 + 1/(m-1) times the state (1.33x at n = 4) instead of 2x.
//
// Encoding is a ring reduce-scatter, chunk by chunk: in step k = 1..m-1 every member XORs its
// segment m-1-k into what it received from the member before it and sends the result to the
// member after; after step m-1 what it received is its own parity. Each member sends L bytes
// per save, as a buddy copy does, and holds two chunk buffers.
//
// A share (parity/rank<R>/<name>/) holds parity.bin and manifest.json: the group's ranks, each
// member's files and sizes, S, and parity.bin's XXH3, committed by a rename.
#pragma once

#include "layout.hpp"

#include "../engine/nodes.hpp"
#include "../engine/world.hpp"

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace savepoint::tier {

/// A parity share's manifest.
struct ParityManifest {
  std::vector<int> ranks;                                              // the group, in order
  std::vector<std::vector<std::pair<std::string, std::uint64_t>>> files;  // by member: (file, bytes)
  std::uint64_t segment = 0;                                           // S
  std::uint64_t parity_xxh3 = 0;                                       // of parity.bin (S bytes)
  int position_of(int rank) const;                                     // -1: not a member
  std::uint64_t length(std::size_t member) const;                      // the member's L (unpadded)
};
/// A share's manifest from its text (CorruptCheckpointError naming the share when malformed).
ParityManifest parse_manifest(const fs::path& share, const std::string& text);
ParityManifest read_manifest(const fs::path& share);
/// CorruptCheckpointError naming parity.bin when its size (and with `verify`, its XXH3) is
/// not what the manifest records.
void check_parity_share(const fs::path& share, const ParityManifest& manifest, bool verify);

class ParitySets {
 public:
  /// UsageError when the nodes have different numbers of ranks, or `set_size` < 2.
  ParitySets(const Layout& layout, const engine::NodeMap& nodes, const engine::World& replication, int set_size);

  /// `rank`'s parity group, in order (empty: a single node, no parity).
  std::vector<int> group_of(int rank) const;

  /// Collective on the replication group: computes this rank's share of `committed`'s parity
  /// from `my_files` (in own/) and commits it under parity/rank<me>/.
  void encode(const Checkpoint& committed, const std::vector<std::string>& my_files);
  /// Bytes this rank sent in its last encode.
  std::uint64_t bytes_sent() const noexcept { return bytes_sent_; }

 private:
  const Layout& layout_;
  const engine::NodeMap& nodes_;
  const engine::World& replication_;
  std::vector<int> node_set_;  // by node: its set's index
  std::uint64_t bytes_sent_ = 0;
  std::unique_ptr<detail::ChunkBuffer> out_, in_;
};

/// Where a rebuild reads: a member's data (its files in a directory) or a parity share, and
/// which rank of the recovering world reads it.
struct Holding {
  int rank = -1;  // in the recovering world
  fs::path dir;
};

/// Collective on `world` (the recovering job): rebuilds the files of the group member at
/// `lost` from the others' data (`data[j]`, every j but `lost`) and every other member's
/// parity (`parity[p]`), on rank `at` into `into` (created there), each file checked against
/// its record in `records`. Every rank takes part (the same steps everywhere). Returns on
/// every rank whether the rebuilt files matched their records (false: logged).
bool rebuild(const engine::World& world, const ParityManifest& manifest, int lost, const std::vector<Holding>& data,
             const std::vector<Holding>& parity, int at, const fs::path& into, const Checkpoint& records,
             const detail::ChunkBuffer& buffer);

}  // namespace savepoint::tier
