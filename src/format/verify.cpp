// Verification of one key's file against its meta.json record: what makes a load safe.
#include "parts.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/detail/object_store.hpp>
#include <savepoint/detail/phases.hpp>
#include <savepoint/errors.hpp>

#include <fmt/format.h>

#include <cerrno>

namespace savepoint::detail {

namespace {
// The file is a regular file of the recorded size (checked before reading a byte).
fs::path check_file(const Checkpoint& ckpt, const FileRecord& rec) {
  const fs::path file = ckpt.path / rec.file;
  const auto st = path_status(file);
  if (!st) {
    throw CorruptCheckpointError(
        fmt::format("checkpoint '{}' is missing file '{}' of key '{}'", ckpt.path.string(), rec.file, rec.key), file,
        rec.key);
  }
  if (st->type != FileType::regular) {
    throw CorruptCheckpointError(
        fmt::format("'{}' (key '{}') is not a regular file (symlinks are refused)", file.string(), rec.key), file,
        rec.key);
  }
  if (st->size != rec.bytes) {
    throw CorruptCheckpointError(fmt::format("'{}' (key '{}') has {} bytes, meta.json recorded {} (truncated or "
                                             "overwritten)",
                                             file.string(), rec.key, st->size, rec.bytes),
                                 file, rec.key);
  }
  return file;
}

void check_digest(const fs::path& file, const FileRecord& rec, const FileDigest& digest) {
  if (digest.bytes != rec.bytes) {
    throw CorruptCheckpointError(fmt::format("'{}' (key '{}') read {} bytes, meta.json recorded {} (changed while "
                                             "being read)",
                                             file.string(), rec.key, digest.bytes, rec.bytes),
                                 file, rec.key);
  }
  if (digest.xxh3 != rec.xxh3) {
    throw CorruptCheckpointError(fmt::format("'{}' (key '{}') fails its checksum: xxh3 {} but meta.json recorded {} "
                                             "(the data was damaged after it was written)",
                                             file.string(), rec.key, to_hex(digest.xxh3), to_hex(rec.xxh3)),
                                 file, rec.key);
  }
}
// An object: one ranged GET per part of the recorded size (no HEAD), hashed as it arrives.
std::shared_ptr<const MappedFile> read_object_verified(const Checkpoint& ckpt, const FileRecord& rec) {
  const fs::path file = ckpt.path / rec.file;
  auto& phases = load_phases();
  PhaseTimer timer(phases.read_ns);
  FreshRead read;
  try {
    read = object_io::read_fresh(file, rec.bytes);
  } catch (const CorruptCheckpointError& e) {
    throw CorruptCheckpointError(fmt::format("{} (key '{}')", e.what(), rec.key), file, rec.key);
  } catch (const IoError& e) {
    if (e.error_code() != ENOENT) throw;
    throw CorruptCheckpointError(
        fmt::format("checkpoint '{}' is missing file '{}' of key '{}'", ckpt.path.string(), rec.file, rec.key), file,
        rec.key);
  }
  phases.bytes_read += read.digest.bytes;
  check_digest(file, rec, read.digest);
  return std::move(read.contents);
}
}  // namespace

std::shared_ptr<const MappedFile> open_verified(const Checkpoint& ckpt, const FileRecord& rec, bool copy_on_write,
                                                bool direct) {
  if (is_object_store_path(ckpt.path)) return read_object_verified(ckpt, rec);
  const fs::path file = check_file(ckpt, rec);
  auto& phases = load_phases();
  FileDigest digest;
  std::shared_ptr<const MappedFile> mapped;
  if (direct) {
    PhaseTimer timer(phases.read_ns);
    mapped = read_file_direct(file, digest);
    phases.bytes_read += digest.bytes;
  } else {
    {
      PhaseTimer timer(phases.map_ns);
      mapped = std::make_shared<const MappedFile>(file, Mapping{/*read_all=*/true, copy_on_write});
    }
    phases.bytes_mapped += mapped->bytes().size();
    PhaseTimer timer(phases.hash_ns);
    digest = digest_bytes(mapped->bytes());
  }
  check_digest(file, rec, digest);
  return mapped;
}

void check_file_size(const Checkpoint& ckpt, const FileRecord& rec) { (void)check_file(ckpt, rec); }

void verify_file(const Checkpoint& ckpt, const FileRecord& rec) {
  if (is_object_store_path(ckpt.path)) {
    (void)read_object_verified(ckpt, rec);
    return;
  }
  const fs::path file = check_file(ckpt, rec);
  check_digest(file, rec, digest_file(file));
}

std::shared_ptr<const MappedFile> read_verified(const Checkpoint& ckpt, const FileRecord& rec) {
  if (is_object_store_path(ckpt.path)) return read_object_verified(ckpt, rec);
  const fs::path file = check_file(ckpt, rec);
  FreshRead read = read_into_fresh_memory(file);
  check_digest(file, rec, read.digest);
  return std::move(read.contents);
}

std::shared_ptr<const FileContents> open_key_verified(const Checkpoint& ckpt, const FileRecord& first,
                                                      bool copy_on_write, bool direct) {
  return safetensors::key_contents(ckpt, first, [&](const FileRecord& rec) -> std::shared_ptr<const FileContents> {
    return open_verified(ckpt, rec, copy_on_write && first.part < 0, direct);
  });
}

}  // namespace savepoint::detail
