// engine/incremental.hpp — incremental saves: bytes a committed checkpoint already holds are
// not written again (CheckpointerOptions::incremental, docs/guide.md).
//
// A key's tensors are stored in parts (format/parts.hpp). A part whose bytes equal those of
// the file of the same name in the reference checkpoint (the newest committed one) becomes a
// hard link to that file: nothing is written, the link count is the reference count, and
// retention stays a plain delete. Whether the bytes are equal:
//   - the part's XXH3 is computed in memory and compared with the reference's record. Version
//     counters alone never decide that a part is unchanged, so a change made through
//     data_ptr() that bumped no counter is still written;
//   - except that a part which changed at the last save and whose tensors' version counters
//     (or data pointers) moved since is written without hashing it first: a full fine-tune
//     pays no hash. Its checksum, computed while writing, says whether it did change: if not,
//     the next save hashes it again. (A counter is per tensor, not per segment: a moved
//     counter alone does not say which segments of a large tensor changed.)
// Nothing shared is ever changed in place: a save only creates files (written or linked) in its
// own temporary directory and renames that directory.
// Nothing damaged is ever shared: every linked file is read and hashed against its record
// before the save commits (in the write phase, io_threads at a time); one that does not match
// is replaced by the part written from memory, and its inode is never linked again.
// What one damaged file can still destroy is bounded by engine/sharing.hpp.
#pragma once

#include <savepoint/checkpoint.hpp>
#include <savepoint/payload.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace savepoint::engine {

namespace fs = std::filesystem;

/// The identity and version of each tensor of a part, when every one has both.
using PartSignature = std::vector<std::pair<const void*, std::int64_t>>;

/// What the last committed save saw of a part.
struct PartHistory {
  std::optional<PartSignature> signature;
  bool changed = false;  ///< its bytes differed from the reference's file of the same name
};

/// One part of a key, planned: written, or linked from the reference.
struct PlannedPart {
  std::string file;  ///< "model.part00003.safetensors" (a whole key's: its file)
  Payload payload;
  const FileRecord* unchanged = nullptr;  ///< the reference's record of identical bytes: link it
  std::optional<PartSignature> signature;
  std::optional<std::uint64_t> reference_xxh3;  ///< the reference's file of that name, if any
};

/// Per Checkpointer (per rank): the part size and what the last committed save saw.
class IncrementalSaves {
 public:
  explicit IncrementalSaves(std::uint64_t part_bytes) : part_bytes_(part_bytes) {}
  std::uint64_t part_bytes() const noexcept { return part_bytes_; }

  /// Splits the payload of the key stored as `file` into parts and decides, for each, whether
  /// `reference` (may be null) already holds its bytes.
  /// The parts' in-memory hashes run on up to `threads` threads.
  std::vector<PlannedPart> plan(const std::string& file, const Payload& payload, const Checkpoint* reference,
                                int threads = 1) const;
  /// The same decision for a key kept as one file (a sharded key's file of this rank).
  PlannedPart plan_whole(const std::string& file, Payload payload, const Checkpoint* reference) const;

  /// The save committed: what it saw of each part (by file name) guides the next one.
  void committed(std::map<std::string, PartHistory> parts);

  /// A link failed (`why`): the part is written instead. Logged once per Checkpointer.
  void link_failed(const fs::path& file, const std::string& why);

  /// The reference's `file` does not match its record (`why`): its inode is never linked
  /// again. Warns, naming the file and every checkpoint that holds it. Thread-safe.
  void reference_damaged(const fs::path& file, const std::string& why);

 private:
  bool known_damaged(const fs::path& file) const;
  mutable std::mutex damaged_mutex_;
  std::set<std::uint64_t> damaged_;  // inodes
  // `hash`: the in-memory XXH3 is compared now (else by confirm(), which plan() runs in parallel).
  PlannedPart decide(std::string file, Payload payload, int part, const Checkpoint* reference, bool hash) const;
  static void confirm(PlannedPart& p);  // unchanged only if its bytes hash to the record's XXH3
  std::uint64_t part_bytes_;
  std::map<std::string, PartHistory> last_;
  std::once_flag warned_;
};

}  // namespace savepoint::engine
