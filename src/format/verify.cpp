// Verification of one key's file against its meta.json record: what makes a load safe.
#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/errors.hpp>

#include <fmt/format.h>

namespace savepoint::detail {

std::shared_ptr<const MappedFile> open_verified(const Checkpoint& ckpt, const FileRecord& rec, bool copy_on_write,
                                                bool direct) {
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
  FileDigest digest;
  std::shared_ptr<const MappedFile> mapped;
  if (direct) {
    mapped = read_file_direct(file, digest);
  } else {
    mapped = std::make_shared<const MappedFile>(file, Mapping{/*read_all=*/true, copy_on_write});
    digest = digest_bytes(mapped->bytes());
  }
  if (digest.xxh3 != rec.xxh3) {
    throw CorruptCheckpointError(fmt::format("'{}' (key '{}') fails its checksum: xxh3 {} but meta.json recorded {} "
                                             "(the data was damaged after it was written)",
                                             file.string(), rec.key, to_hex(digest.xxh3), to_hex(rec.xxh3)),
                                 file, rec.key);
  }
  return mapped;
}

}  // namespace savepoint::detail
