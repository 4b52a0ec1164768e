#include "load_source.hpp"

#include "../format/parts.hpp"

#include <savepoint/detail/meta.hpp>
#include <savepoint/detail/object_store.hpp>
#include <savepoint/errors.hpp>

#include <fmt/format.h>

namespace savepoint::engine {

std::shared_ptr<const FileContents> verified_key(const LoadSource& source, const Checkpoint& checkpoint,
                                                 const FileRecord& record, bool fresh) {
  // Parts are assembled into fresh memory anyway: each is mapped, not read a second time.
  return safetensors::key_contents(checkpoint, record, [&](const FileRecord& part) {
    return source.verified(part, fresh && record.part < 0);
  });
}

std::string DirectorySource::describe() const { return fmt::format("checkpoint '{}'", checkpoint_.path.string()); }

std::shared_ptr<const FileContents> DirectorySource::verified(const FileRecord& record, bool fresh) const {
  if (fresh) return detail::read_verified(checkpoint_, record);
  return detail::open_verified(checkpoint_, record);
}

fs::path DirectorySource::file_for_hook(const FileRecord& record, const FileContents& contents) const {
  const fs::path file = checkpoint_.path / record.file;
  if (!is_object_store_path(file)) return file;
  fs::path local = detail::scratch_file_for(file);  // the bytes already read and verified
  detail::write_file(local, contents.bytes(), /*sync=*/false);
  return local;  // a hook may read it when its load is applied, after this source is gone
}

detail::PositionalReader DirectorySource::positional(const FileRecord& record) const {
  const fs::path file = checkpoint_.path / record.file;
  const auto status = detail::path_status(file);
  if (!status || status->type != detail::FileType::regular) {
    throw CorruptCheckpointError(fmt::format("checkpoint '{}' is missing file '{}' of key '{}' (or it is not a "
                                             "regular file)",
                                             checkpoint_.path.string(), record.file, record.key),
                                 file, record.key);
  }
  if (status->size != record.bytes) {
    throw CorruptCheckpointError(fmt::format("'{}' (key '{}') has {} bytes, meta.json recorded {} (truncated or "
                                             "overwritten)",
                                             file.string(), record.key, status->size, record.bytes),
                                 file, record.key);
  }
  return detail::PositionalReader::file(file);
}

}  // namespace savepoint::engine
