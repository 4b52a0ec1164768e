// savepoint/scrub.hpp — checking a whole checkpoint root, each file once (Checkpointer::scrub).
//
// Incremental saves hard-link unchanged parts, so one file (one inode) can belong to several
// checkpoints, and one flipped bit damages all of them. A scrub groups the files of every
// checkpoint by inode, reads each distinct file once (or a random share of them, by bytes) and
// reports each damaged file with every checkpoint that depends on it. Missing files and files of
// the wrong size are found by stat alone, so they are reported even when a subset is read.
#pragma once

#include <savepoint/options.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace savepoint {

struct ScrubOptions {
  /// Share of the distinct files' bytes to read, in percent, in (0, 100]: files are chosen at
  /// random and read whole until their bytes reach it. 100: every file.
  double subset_percent = 100;
  /// Seed of the random choice: 0 picks one at random; any other value repeats the same choice
  /// for the same files.
  std::uint64_t seed = 0;
  /// Called on the scrubbing thread after each file read: bytes read so far, of those to read.
  std::function<void(std::uint64_t bytes_read, std::uint64_t bytes_to_read)> progress;

  ScrubOptions& subset(double percent) {
    subset_percent = percent;
    return *this;
  }
  ScrubOptions& with_seed(std::uint64_t s) {
    seed = s;
    return *this;
  }
  ScrubOptions& on_progress(std::function<void(std::uint64_t, std::uint64_t)> f) {
    progress = std::move(f);
    return *this;
  }
};

/// One damaged file, however many checkpoints hold it.
struct ScrubDamage {
  std::string key;             ///< the record's key
  std::string file;            ///< file name inside a checkpoint, e.g. "model.part00003.safetensors"
  std::filesystem::path path;  ///< one path of it (the newest checkpoint's)
  std::string reason;          ///< e.g. "... fails its checksum ...", "... is missing file ...", "has N bytes, ..."
  /// Every checkpoint that holds this file (the same inode) or, for a missing file, lists it in
  /// its meta.json and lacks it: all that this damage breaks, oldest first.
  std::vector<std::string> checkpoints;
};

struct ScrubReport {
  std::size_t checkpoints = 0;
  std::size_t files = 0, files_read = 0;    ///< distinct files (by device and inode; each missing one counts)
  std::uint64_t bytes = 0, bytes_read = 0;  ///< of the distinct files
  std::vector<ScrubDamage> damaged;
  std::vector<Problem> unreadable;  ///< checkpoints whose meta.json cannot be read (as unreadable_checkpoints())
  bool clean() const noexcept { return damaged.empty() && unreadable.empty(); }
};

}  // namespace savepoint
