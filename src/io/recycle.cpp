// io/recycle.cpp — reused directories (the memory tier's ring of slots, io.hpp): a directory
// retention would remove becomes a spare, and the next save overwrites its files in place.
//
// Why a crash never leaves a slot that verifies as a checkpoint it is not: the spare's files
// leave their checkpoint's name (into the bin, the directory to a hidden name) and those
// renames are durable before the spare can be claimed; a claim renames the spare to the
// save's temporary name before any byte is overwritten; the commit renames the temporary
// directory into place only after every file is written and meta.json names their digests.
#include <savepoint/detail/io.hpp>
#include <savepoint/errors.hpp>

#include <cerrno>
#include <string>

namespace savepoint::detail {

void recycle_directory(const fs::path& dir, std::size_t max_spares) {
  const fs::path parent = dir.parent_path();
  if (list_directory(parent, kSparePrefix).size() >= max_spares) return remove_tree(dir);
  const fs::path bin = dir / kRecycleBin;
  if (!path_status(bin)) make_directory(bin);
  for (const auto& e : list_directory(dir)) {
    if (e.status.type == FileType::regular) rename_no_replace(dir / e.name, bin / e.name);
    else if (e.name != kRecycleBin) remove_tree(dir / e.name);
  }
  const bool sync = !protocol_breaks().skip_recycle_fsyncs;
  if (sync) fsync_directory(dir);
  const fs::path spare = parent / (std::string(kSparePrefix) + dir.filename().string());
  rename_no_replace(dir, spare);
  if (sync) fsync_directory(parent);  // the checkpoint's name is gone before any of its bytes can change
}

bool claim_spare_directory(const fs::path& to) {
  for (const auto& e : list_directory(to.parent_path(), kSparePrefix)) {
    if (e.status.type != FileType::directory) continue;
    try {
      rename_no_replace(to.parent_path() / e.name, to);
    } catch (const IoError& error) {
      // Another writer of the same node claimed it, or created `to` first: a fresh directory.
      if (error.error_code() == ENOENT || error.error_code() == EEXIST || error.error_code() == ENOTEMPTY) return false;
      throw;
    }
    // Renamed away before the first byte is overwritten.
    if (!protocol_breaks().skip_recycle_fsyncs) fsync_directory(to.parent_path());
    return true;
  }
  return false;
}

void empty_recycle_bin(const fs::path& dir) {
  const fs::path bin = dir / kRecycleBin;
  if (path_status(bin)) remove_tree(bin);
}

}  // namespace savepoint::detail
