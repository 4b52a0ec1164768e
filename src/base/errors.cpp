#include <savepoint/errors.hpp>

namespace savepoint::detail {

void throw_io(const std::string& what, const std::filesystem::path& path, int err) {
  throw IoError(what, path, err);
}
void throw_usage(const std::string& what) { throw UsageError(what); }
void throw_corrupt(const std::string& what, const std::filesystem::path& path,
                   const std::string& key) {
  throw CorruptCheckpointError(what, path, key);
}

}  // namespace savepoint::detail
