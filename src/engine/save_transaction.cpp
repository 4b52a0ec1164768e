#include "save_transaction.hpp"

#include "catalog.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/detail/object_store.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include <fmt/format.h>
#include <unistd.h>

namespace savepoint::engine {

using namespace detail;

SaveTransaction::SaveTransaction(fs::path root, Checkpoint target, SaveOptions options, const std::string& temp_name,
                                 bool reuse)
    : root_(std::move(root)), ckpt_(std::move(target)), options_(std::move(options)), reuse_(reuse) {
  if (is_object_store_path(root_)) {
    // No rename in an object store: the objects go under the final name, claimed for this save
    // (Catalog::allocate), and nothing there is a checkpoint until meta.json is created.
    temp_ = ckpt_.path;
    in_store_ = true;
    return;
  }
  const fs::path temp = root_ / (temp_name.empty() ? std::string(kTempPrefix) + unique_suffix() : temp_name);
  const bool claimed = reuse && claim_spare_directory(temp);  // a spare: its files are overwritten in place
  if (!claimed && temp_name.empty()) make_directory(temp);
  else if (!claimed) make_directories(temp);
  temp_ = temp;  // from here on, a failure removes it
  // Not fsynced: until the commit's directory fsync no entry in it is durable anyway, and
  // this runs on the training thread of an async save.
  try {
    write_file(temp_ / kTempMarker, fmt::format("pid {} on {}\n", ::getpid(), host_name()), /*sync=*/false);
  } catch (...) {
    try {
      remove_tree(temp_);  // the destructor of a half-constructed object never runs
    } catch (const Error&) {
    }
    throw;
  }
}

SaveTransaction::~SaveTransaction() {
  if (temp_.empty()) return;
  try {
    remove_tree(temp_);  // our own temporary directory, never a committed one
  } catch (const Error& e) {
    detail::log(LogLevel::warn, "Could not remove the temporary directory of a failed save: {}", e.what());
  }
}

void SaveTransaction::record(FileRecord file) { ckpt_.files.push_back(std::move(file)); }

Checkpoint SaveTransaction::commit(const std::function<void()>& before_rename) {
  const fs::path& final_path = ckpt_.path;
  ckpt_.paramfiles = paramfiles_of(ckpt_.files, final_path);  // from every record, as a listing reads them
  if (in_store_) return commit_in_store(before_rename);
  if (options_.pinned()) {
    write_file(temp_ / kPinFileName, "pinned at save\n");
    ckpt_.pinned = true;
  }
  if (reuse_) empty_recycle_bin(temp_);  // what this save did not overwrite is not its own
  write_file(temp_ / kMetaFileName, serialize_meta(ckpt_));
  remove_file(temp_ / kTempMarker);
  // Makes the directory's entries (every file, meta.json) durable before the rename can be.
  // protocol_breaks() is the crash-state explorer's proof that it catches its absence.
  if (!protocol_breaks().skip_directory_fsync_before_rename) fsync_directory(temp_);
  if (before_rename) before_rename();
  fs::path replaced;  // a checkpoint of the same name being replaced, moved aside
  if (options_.overwrite() && path_status(final_path)) {
    // Swap the two directories atomically where the kernel can (RENAME_EXCHANGE).
    if (rename_exchange(temp_, final_path)) {
      replaced = temp_;  // now holds the old checkpoint
    } else {
      replaced = root_ / (std::string(kTrashPrefix) + unique_suffix());
      rename_no_replace(final_path, replaced);
      try {
        rename_no_replace(temp_, final_path);
      } catch (...) {
        try {
          rename_no_replace(replaced, final_path);  // put the old checkpoint back
        } catch (const Error& e) {
          detail::log(LogLevel::error, "Could not put '{}' back after a failed overwrite: {}",
                      final_path.string(), e.what());
        }
        throw;
      }
    }
  } else {
    rename_no_replace(temp_, final_path);
  }
  temp_.clear();  // committed: nothing of ours to roll back
  // A failure from here on cannot corrupt the checkpoint (at worst a power cut undoes the
  // rename), so it is a warning, not an error.
  try {
    fsync_directory(root_);
    if (!replaced.empty()) remove_tree(replaced);
  } catch (const Error& e) {
    detail::log(LogLevel::warn, "Checkpoint {} was committed, but: {}", final_path.string(), e.what());
  }
  return ckpt_;  // the save pipeline says it was saved (one line per save, not per node)
}

// The commit is the manifest: one create of meta.json with If-None-Match: *, after every
// object is in place. Before it, listings skip the name; after it, everything is there.
Checkpoint SaveTransaction::commit_in_store(const std::function<void()>& before_rename) {
  if (options_.pinned()) {
    write_file(temp_ / kPinFileName, "pinned at save\n");
    ckpt_.pinned = true;
  }
  if (before_rename) before_rename();
  const fs::path meta = temp_ / kMetaFileName;
  if (!create_object_if_absent(meta, serialize_meta(ckpt_))) {
    temp_.clear();  // not ours to remove: another writer committed this name
    throw CheckpointError(fmt::format("savepoint: cannot commit '{}': its meta.json exists already (another writer "
                                      "uses this prefix; one writer per prefix)",
                                      ckpt_.path.string()),
                          ckpt_.path);
  }
  temp_.clear();
  return ckpt_;
}

}  // namespace savepoint::engine
