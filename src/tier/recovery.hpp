// tier/recovery.hpp — recovery from the memory tier: the newest complete checkpoint that the
// surviving nodes hold every file of (own parts, buddy copies, or rebuilt from a parity set),
// assembled on every node and offered to the one recovery loop (engine/loader.hpp) as its
// first candidates, before the directory's.
#pragma once

#include "layout.hpp"
#include "parity.hpp"

#include "../engine/catalog.hpp"
#include "../engine/loader.hpp"
#include "../engine/nodes.hpp"
#include "../engine/world.hpp"

#include <savepoint/hooks.hpp>
#include <savepoint/options.hpp>

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace savepoint::tier {

class Recovery {
 public:
  Recovery(const Layout& layout, const engine::NodeMap& nodes, const engine::World& world,
           const detail::ChunkBuffer& buffer)
      : layout_(layout), nodes_(nodes), world_(world), buffer_(buffer) {}

  /// Collective on `world`: the newest complete checkpoint whose every file the surviving
  /// nodes hold a copy of (or can rebuild), assembled in every node's recovery/ from links
  /// (and files fetched from other nodes, each verified as it arrives). Returned as this rank
  /// loads it, or nullopt (a warning when copies existed but none was complete).
  /// `verify_copies`: every copy's checksum is checked first and damaged copies left out;
  /// without, a copy of the recorded size counts and the load's own verification finds
  /// damage (one pass over the bytes instead of three: the caller then asks again).
  std::optional<Checkpoint> prepare(bool verify_copies);

  /// The memory tier as a source of recovery candidates: its newest complete checkpoint,
  /// unless `disk` holds a newer one; after damage, the same checkpoint from verified copies
  /// (with strict_recovery an older one raises instead of loading).
  engine::CandidateSource candidates(const std::vector<Recoverable>& recoverables, const CheckpointerOptions& options,
                                     const engine::Catalog& disk);

 private:
  using Holders = std::map<std::string, std::vector<std::pair<int, fs::path>>>;  // file -> (rank, dir)
  struct Share {  // a parity share one node holds
    int holder;     // the rank that computed it (of the job that saved)
    Holding holding;
    ParityManifest manifest;
  };
  /// Rebuilds every file no node holds from its parity set (adding the rebuilt copies to
  /// `holders`); the reason when some cannot be ("" when all were).
  std::string rebuild_missing(const Checkpoint& records, Holders& holders, const std::vector<Share>& shares);
  /// false (logged) when a file fetched from another node did not match its record.
  bool assemble(const Checkpoint& records, const std::string& meta, const Holders& holders);
  bool disk_is_newer(const engine::Catalog& disk, const Checkpoint& memory) const;

  const Layout& layout_;
  const engine::NodeMap& nodes_;
  const engine::World& world_;
  const detail::ChunkBuffer& buffer_;
};

}  // namespace savepoint::tier
