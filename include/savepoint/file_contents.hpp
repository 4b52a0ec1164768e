// savepoint/file_contents.hpp — the verified bytes a load hook reads (LoadContext::contents).
#pragma once

#include <filesystem>
#include <string_view>

namespace savepoint {

/// The verified bytes of one file of a checkpoint: mapped from its directory, read into
/// memory, or a view into a bundle. Shared, so that a tensor made from the bytes can keep
/// them alive (a deleter that holds the pointer).
class FileContents {
 public:
  virtual ~FileContents() = default;
  virtual std::string_view bytes() const noexcept = 0;
  /// The file, or for a bundle its name inside the bundle (for messages).
  virtual const std::filesystem::path& path() const noexcept = 0;
  /// The bytes are private, writable memory of this object's own (not a mapping of the
  /// file): tensors may keep them as storage instead of copying (TypeHooks::fresh_state).
  virtual bool fresh() const noexcept = 0;
};

}  // namespace savepoint
