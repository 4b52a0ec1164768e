// savepoint/detail/meta.hpp — meta.json and checkpoint directory names (internal).
#pragma once

#include <savepoint/checkpoint.hpp>

#include <savepoint/detail/io.hpp>

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace savepoint::detail {

inline constexpr const char* kMetaFileName = "meta.json";
inline constexpr const char* kCheckpointPrefix = "CKPT+";
inline constexpr const char* kTempPrefix = ".savepoint-tmp-";
inline constexpr const char* kTrashPrefix = ".savepoint-trash-";
inline constexpr const char* kTempMarker = ".savepoint-incomplete";
/// In an object store, the object that claims a checkpoint's name for one save (its first).
inline constexpr const char* kClaimFile = ".savepoint-claim";
inline constexpr const char* kPinFileName = "PINNED";  // outside meta.json: pinning is reversible
inline constexpr std::size_t kMaxMetaBytes = std::size_t{16} << 20;

/// meta.json text for `ckpt` (its meta must hold unixtime and end_of_epoch).
std::string serialize_meta(const Checkpoint& ckpt);
/// One entry of meta.json's "files" (also what a rank sends rank 0 about a file it wrote).
nlohmann::json file_record_json(const FileRecord& record);
/// Parses and validates meta.json of the checkpoint directory `dir`; throws
/// CorruptCheckpointError / FormatVersionError naming the file.
Checkpoint parse_meta(const std::filesystem::path& dir, std::string_view text);
/// Reads `dir`/meta.json and parses it.
Checkpoint read_checkpoint(const std::filesystem::path& dir);
/// Checkpoint::paramfiles of `files`, the one rule for every Checkpoint a save, a listing or a
/// bundle makes: for each key, `dir` / the file of its record with the smallest (rank, part),
/// rank -1 (shared) or 0 and part -1 (the key's one file) or 0 first. `dir` is the
/// checkpoint's directory, or the bundle's name for a bundle.
std::map<std::string, std::filesystem::path> paramfiles_of(const std::vector<FileRecord>& files,
                                                           const std::filesystem::path& dir);

/// The one file of `key`, for operations on a whole key outside a load (averaging, export,
/// transfer, load_tensors): nullptr when the checkpoint has no such key; UsageError naming the
/// key and checkpoint when the key has one file per rank (per-rank or sharded state of a
/// process group), which `operation` cannot take as one.
const FileRecord* whole_key_record(const Checkpoint& ckpt, const std::string& key, const char* operation);

/// Is `name` a plain file name inside one directory (no separators, not . or .., no NUL)?
bool is_plain_file_name(std::string_view name);
/// "CKPT+2026-11-23+18-56-00" (local time, SpeechBrain's format) without the +NN suffix.
std::string timestamp_dir_stem(double unixtime);
double now_unixtime();

/// Maps a key's file and checks it against its record: a regular file inside the checkpoint
/// (no symlinks), the recorded size and XXH3. Throws CorruptCheckpointError naming file and key.
/// `copy_on_write` maps it writable and private (for tensors that view the mapping);
/// `direct` reads it with O_DIRECT into fresh memory instead (read_file_direct), hashed inline.
std::shared_ptr<const MappedFile> open_verified(const Checkpoint& ckpt, const FileRecord& rec,
                                                bool copy_on_write = false, bool direct = false);
/// A key's bytes, verified: open_verified of its one file, or of each of its parts (a key split
/// by an incremental save), assembled in fresh memory into the bytes the unsplit file holds.
std::shared_ptr<const FileContents> open_key_verified(const Checkpoint& ckpt, const FileRecord& first,
                                                      bool copy_on_write = false, bool direct = false);
/// The same checks, keeping nothing: the file is read in chunks and hashed (a copy checked
/// before it is used or sent).
void verify_file(const Checkpoint& ckpt, const FileRecord& rec);
/// Only the checks made before reading a byte: a regular file of the recorded size (a copy
/// whose bytes a later load verifies).
void check_file_size(const Checkpoint& ckpt, const FileRecord& rec);
/// The same checks, reading the file into fresh private memory (read_into_fresh_memory)
/// instead of mapping it: for loads whose tensors are all new (MappedFile::fresh()).
std::shared_ptr<const MappedFile> read_verified(const Checkpoint& ckpt, const FileRecord& rec);

}  // namespace savepoint::detail
