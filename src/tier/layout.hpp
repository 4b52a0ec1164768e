// tier/layout.hpp — what the memory tier keeps under its directory on each node, and the
// node's bookkeeping of it: which checkpoints are complete, which copies it holds, retention
// and capacity (docs/distributed.md, "The memory tier").
//
// On each node, under the tier's directory (a tmpfs such as /dev/shm):
//   own/                    the node's parts of the checkpoints: a checkpoint root; the node's
//                           leader (its lowest rank) commits, with the same commit, meta.json
//                           and checksums as on disk (meta.json lists every rank's files)
//   replicas/rank<S>/<name> rank S's part, as received by the rank that keeps its buddy copy
//   parity/rank<R>/<name>   rank R's share of its parity set's XOR parity (parity sets)
//   complete/<name>         one marker per complete checkpoint (the node's leader writes it)
//   recovery/<name>/        a recovery's checkpoint, assembled from links to the copies
//   rebuilt/<name>/         a lost rank's files, rebuilt from its parity set
// A checkpoint is complete when every rank's part is committed on its node and its
// redundancy (buddy copy or parity) is in place, and every rank said so (one all-gather on
// the replication group). Only a complete checkpoint is loaded; a node keeps the newest
// `keep` complete ones and nothing else.
#pragma once

#include <savepoint/checkpoint.hpp>
#include <savepoint/detail/io.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <vector>

namespace savepoint::tier {

namespace fs = std::filesystem;

/// The files of a parity share (parity/rank<R>/<name>/): the XOR parity, and what it covers.
inline constexpr const char* kParityFile = "parity.bin";
inline constexpr const char* kManifestFile = "manifest.json";

/// A complete checkpoint as its marker names it.
struct Marker {
  std::string name;
  double unixtime = 0;
  /// Newest first by (unixtime, name).
  friend bool operator<(const Marker& a, const Marker& b);
};

class Layout {
 public:
  explicit Layout(fs::path root) : root_(std::move(root)) {}

  const fs::path& root() const noexcept { return root_; }
  fs::path own() const { return root_ / "own"; }
  fs::path replicas(int sender) const;
  fs::path parity(int holder) const;
  fs::path recovery(const std::string& name) const { return root_ / "recovery" / name; }
  fs::path rebuilt(const std::string& name) const { return root_ / "rebuilt" / name; }

  /// The node's leader, at open: creates the directories and removes what crashed receives,
  /// parity computations and recoveries left (own/ is cleaned by its Catalog).
  void create_and_clean() const;

  /// Complete checkpoints on this node, newest first.
  std::vector<Marker> markers() const;
  void mark_complete(const Checkpoint& checkpoint) const;

  /// Every committed copy of checkpoint files on this node: own/<name>, replicas/rank*/<name>.
  std::vector<fs::path> copies() const;
  /// Every committed parity share on this node: parity/rank*/<name>.
  std::vector<fs::path> parity_shares() const;

  /// Keeps the newest `keep` complete checkpoints (their copies, parity and markers) and
  /// removes everything else: data first, markers last. With `spares`, a directory let go
  /// becomes its parent's spare (detail::recycle_directory) while it has none.
  void retain(int keep, bool spares) const;
  /// Removes every spare (own/, replicas/rank*/, parity/rank*/).
  void remove_spares() const;
  /// IoError (ENOSPC) naming the directory when this node cannot hold keep + 1 checkpoints
  /// the size of `committed` (its part and the redundancy it keeps).
  void check_capacity(const Checkpoint& committed, int keep) const;

 private:
  fs::path root_;
};

/// Copies `from` into the new file `to` through `buffer`, checking it against `record` as it
/// goes: CorruptCheckpointError naming the file and key when it does not match.
void copy_verified(const fs::path& from, const fs::path& to, const FileRecord& record, bool sync,
                   const detail::ChunkBuffer& buffer);

/// JSON text for the tier's own records (invalid UTF-8 replaced, never thrown).
std::string dump(const nlohmann::json& j);

}  // namespace savepoint::tier
