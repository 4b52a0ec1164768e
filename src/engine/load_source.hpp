// engine/load_source.hpp — where the bytes of a checkpoint being loaded come from: its
// directory, or a bundle (a file, or bytes in memory; engine/bundle_loader.cpp). The one
// load (loader.hpp) reads through a LoadSource, so a bundle loads by the same steps, with
// the same checks and messages, as a directory.
#pragma once

#include <savepoint/checkpoint.hpp>
#include <savepoint/detail/io.hpp>
#include <savepoint/file_contents.hpp>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace savepoint::engine {

namespace fs = std::filesystem;

class LoadSource {
 public:
  virtual ~LoadSource() = default;
  /// "checkpoint 'runs/x/CKPT+…'" or "checkpoint bundle 'model.spb'", for messages.
  virtual std::string describe() const = 0;
  /// The bytes of `record`, verified against it (size, XXH3): CorruptCheckpointError naming
  /// the file and key when they differ. `fresh`: in private memory that tensors may keep.
  virtual std::shared_ptr<const FileContents> verified(const FileRecord& record, bool fresh) const = 0;
  /// `record`'s bytes for reads at offsets, checked to exist with the recorded size but not
  /// read (a sharded key verifies each block it reads).
  virtual detail::PositionalReader positional(const FileRecord& record) const = 0;
  /// The file a path-based hook (one of the user's, which reads a file) is given for `record`,
  /// whose verified bytes are `contents` (a source without local files writes them out).
  virtual fs::path file_for_hook(const FileRecord& record, const FileContents& contents) const = 0;
};

/// The verified bytes of the key whose (first) record is `record`: LoadSource::verified, or
/// for a key split into parts (an incremental save) every part verified and assembled.
std::shared_ptr<const FileContents> verified_key(const LoadSource& source, const Checkpoint& checkpoint,
                                                 const FileRecord& record, bool fresh);

/// A committed checkpoint directory.
class DirectorySource final : public LoadSource {
 public:
  explicit DirectorySource(const Checkpoint& checkpoint) : checkpoint_(checkpoint) {}
  std::string describe() const override;
  std::shared_ptr<const FileContents> verified(const FileRecord& record, bool fresh) const override;
  detail::PositionalReader positional(const FileRecord& record) const override;
  /// In an object store: a local copy of the verified bytes (detail::scratch_file_for).
  fs::path file_for_hook(const FileRecord& record, const FileContents& contents) const override;

 private:
  const Checkpoint& checkpoint_;
};

}  // namespace savepoint::engine
