// engine/sharing.hpp — which committed checkpoints share files (the hard links of incremental
// saves), and the bound on what one damaged file can destroy (docs/reliability.md):
//
//   whenever two or more checkpoints are kept, one of them shares no file with the newest one
//   kept, so one damaged file always leaves an intact checkpoint.
//
// Two halves keep it: a save writes every part (links nothing) when the checkpoint it would
// link from has no such "independent" checkpoint, or only one CheckpointerOptions::
// full_save_every saves older (write_all_decision); and retention never deletes the
// independent checkpoint the kept set relies on (spare_independent). Sharing is read from the
// disk (inode numbers: one root is one file system), never from bookkeeping a crash can lose.
#pragma once

#include <savepoint/checkpoint.hpp>
#include <savepoint/retention.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace savepoint::engine {

/// The inode of each file of each checkpoint, looked up once per checkpoint (by path).
class SharingMap {
 public:
  const std::set<std::uint64_t>& files_of(const Checkpoint& c);
  bool share_a_file(const Checkpoint& a, const Checkpoint& b);
  /// The newest of `all` other than `of` that shares no file with it (null: none).
  const Checkpoint* newest_independent(const std::vector<const Checkpoint*>& all, const Checkpoint& of);
  /// Bytes of `of`'s files that the one of `all` saved just before it does not hold: about
  /// what the save that made it wrote.
  std::uint64_t unshared_bytes(const std::vector<const Checkpoint*>& all, const Checkpoint& of);

 private:
  std::map<std::string, std::set<std::uint64_t>> files_;
};

/// Retention: `doomed` (what the policy deletes from `all`) less the checkpoint the bound
/// relies on, when two or more survive and none shares no file with the newest survivor.
/// `*note` (if given) says which it kept, and why.
std::vector<Checkpoint> spare_independent(const std::vector<Checkpoint>& all, std::vector<Checkpoint> doomed,
                                          std::string* note = nullptr);

/// Whether an incremental save must write every part, and why (for the log).
struct WriteAll {
  bool write_all = false;
  std::string why;
  std::optional<std::uint64_t> estimate;  ///< bytes it will write, for the free-space check
};
/// Decided on rank 0 when the save is allocated. `existing`: the committed checkpoints;
/// `target`: the checkpoint being saved (meta and sequence set); `keep`: the retention the
/// save runs (null: keeps everything); `every`: CheckpointerOptions::full_save_every.
WriteAll write_all_decision(const std::vector<const Checkpoint*>& existing, const Checkpoint& target,
                            const KeepOptions* keep, std::uint32_t every);

}  // namespace savepoint::engine
