// savepoint/checkpoint.hpp — the Checkpoint value: one committed checkpoint directory.
//
// A Checkpoint is a plain value read from (or just written to) disk. Copying it copies the
// description, not the files. `meta` holds the user's meta plus the reserved "unixtime" and
// "end_of_epoch" keys, so `ckpt.meta["loss"]` reads what the training loop passed to save.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace savepoint {

/// One recoverable's file inside a checkpoint, as recorded in meta.json.
struct FileRecord {
  std::string key;     ///< recoverable name, e.g. "model"
  std::string file;    ///< file name inside the checkpoint directory, e.g. "model.safetensors"
  std::string hook;    ///< stable hook name that wrote it, e.g. "torch.nn.Module"
  std::uint64_t bytes = 0;
  std::uint64_t xxh3 = 0;  ///< XXH3-64 of the file's bytes
  int rank = -1;  ///< the rank that owns a per-rank or sharded key's file; -1: shared by all ranks
  /// Sharded keys only (null otherwise): the rows each tensor of the file holds and the
  /// per-block checksums a partial read verifies (docs/format.md, "shard").
  nlohmann::json shard = nullptr;
  /// Incremental checkpoints only (format 2): the index of this file among the parts a key's
  /// tensors were split into (docs/format.md, "Parts"); -1: the key's one file.
  int part = -1;

  friend bool operator==(const FileRecord& a, const FileRecord& b) {
    return a.key == b.key && a.file == b.file && a.hook == b.hook && a.bytes == b.bytes &&
           a.xxh3 == b.xxh3 && a.rank == b.rank && a.shard == b.shard && a.part == b.part;
  }
};

struct Checkpoint {
  std::filesystem::path path;  ///< the checkpoint directory, e.g. runs/x/CKPT+2026-...+00
  nlohmann::json meta = nlohmann::json::object();
  /// key -> file path: the file of the key's record with the smallest (rank, part), joined to
  /// `path` (a Bundle's: its name). So the shared file (rank -1) or else the lowest rank's
  /// (rank 0's), and of a key split into parts its part 0. Save, listing and bundle agree.
  std::map<std::string, std::filesystem::path> paramfiles;
  std::uint64_t sequence = 0;     ///< save order within the directory (newer = larger)
  std::vector<FileRecord> files;  ///< integrity records, in registration order
  bool pinned = false;            ///< retention never deletes it (Checkpointer::pin)
  int world_size = 0;             ///< ranks of the job that wrote it; 0: no process group

  /// Directory name, e.g. "CKPT+2026-11-23+18-56-00+00" or "CKPT+best".
  std::string name() const { return path.filename().string(); }
  double unixtime() const { return meta.at("unixtime").get<double>(); }
  bool end_of_epoch() const { return meta.at("end_of_epoch").get<bool>(); }
  /// meta[key] as a number, or nullopt when the key is missing or not a number (NaN is
  /// stored as null). Safe in selector and predicate lambdas, where `c.meta["loss"]` on a
  /// const Checkpoint is undefined behaviour for a missing key (nlohmann's const operator[]):
  ///   savepoint::importance_key([](const Checkpoint& c) { return -c.metric("loss").value_or(INFINITY); })
  std::optional<double> metric(const std::string& key) const {
    const auto it = meta.find(key);
    if (it == meta.end() || !it->is_number()) return std::nullopt;
    return it->get<double>();
  }
  /// meta[key] converted to T, or nullopt when the key is missing or holds another type:
  ///   c.meta_value<std::string>("validation-type") == "full"
  template <class T>
  std::optional<T> meta_value(const std::string& key) const {
    const auto it = meta.find(key);
    if (it == meta.end()) return std::nullopt;
    try {
      return it->get<T>();
    } catch (const nlohmann::json::exception&) {
      return std::nullopt;
    }
  }
  /// The record of `key`, or nullptr.
  const FileRecord* file(const std::string& key) const {
    for (const auto& f : files)
      if (f.key == key) return &f;
    return nullptr;
  }
  /// The record of `key` owned by `rank` (-1: the shared one), or nullptr. For a key split
  /// into parts, its part 0.
  const FileRecord* file(const std::string& key, int rank) const {
    for (const auto& f : files)
      if (f.key == key && f.rank == rank) return &f;
    return nullptr;
  }
  /// Every file of the key `first` belongs to (with its rank): `first` itself, or all its parts
  /// in part order.
  std::vector<const FileRecord*> parts_of(const FileRecord& first) const {
    std::vector<const FileRecord*> out;
    for (const auto& f : files)
      if (f.key == first.key && f.rank == first.rank) out.push_back(&f);
    if (first.part < 0) return {&first};
    std::sort(out.begin(), out.end(), [](const FileRecord* a, const FileRecord* b) { return a->part < b->part; });
    return out;
  }
};

/// SpeechBrain's equality: same directory, same meta, same files.
inline bool operator==(const Checkpoint& a, const Checkpoint& b) {
  return a.path == b.path && a.meta == b.meta && a.paramfiles == b.paramfiles;
}
inline bool operator!=(const Checkpoint& a, const Checkpoint& b) { return !(a == b); }

}  // namespace savepoint
