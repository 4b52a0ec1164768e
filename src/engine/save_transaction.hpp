// engine/save_transaction.hpp — the commit protocol of one checkpoint (docs/format.md).
//
//   1. constructor: a hidden temporary directory `.savepoint-tmp-*` with a marker file
//   2. the files are written into directory() and record()ed with their digests
//   3. commit(): PINNED (if asked), meta.json last, marker removed, directory fsynced,
//      renamed into place (swapped with a checkpoint of the same name when overwriting),
//      parent fsynced
// Until the rename nothing is visible; after it everything is durable. A transaction that
// is destroyed uncommitted removes its temporary directory (rollback).
// In an object store (s3://), the files go under the final name, claimed by the allocation,
// and step 3 is one conditional create of meta.json (If-None-Match: *): the commit.
#pragma once

#include <savepoint/checkpoint.hpp>
#include <savepoint/options.hpp>

#include <filesystem>
#include <functional>

namespace savepoint::engine {

namespace fs = std::filesystem;

class SaveTransaction {
 public:
  /// `target` carries the final path, sequence and meta (with unixtime and end_of_epoch).
  /// `temp_name`: the temporary directory's name, when another process chose it (a node's
  /// part of a memory-tier checkpoint); it may exist already (the node's other ranks create
  /// it too). Empty: a new unique name.
  /// `reuse`: the temporary directory is a spare of `root` where one is left (detail::
  /// recycle_directory), its files overwritten in place by the writes (WriteMode::reuse);
  /// what they did not reuse is removed before the commit.
  SaveTransaction(fs::path root, Checkpoint target, SaveOptions options, const std::string& temp_name = {},
                  bool reuse = false);
  ~SaveTransaction();
  SaveTransaction(const SaveTransaction&) = delete;
  SaveTransaction& operator=(const SaveTransaction&) = delete;

  /// Where the checkpoint's files are written until the commit.
  const fs::path& directory() const noexcept { return temp_; }
  const Checkpoint& target() const noexcept { return ckpt_; }
  const SaveOptions& options() const noexcept { return options_; }
  /// A file written into directory(), in registration order.
  void record(FileRecord file);
  /// Makes the checkpoint visible and durable; returns it as a reader will see it.
  /// `before_rename` (may throw: nothing is committed) runs right before the rename.
  Checkpoint commit(const std::function<void()>& before_rename = nullptr);

 private:
  fs::path root_;
  Checkpoint ckpt_;
  SaveOptions options_;
  Checkpoint commit_in_store(const std::function<void()>& before_rename);
  fs::path temp_;  // empty once committed (or when creating it failed)
  bool in_store_ = false;  // an object store: temp_ is the final name (no rename)
  bool reuse_ = false;
};

}  // namespace savepoint::engine
