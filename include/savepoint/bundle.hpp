// savepoint/bundle.hpp — a whole checkpoint in one file, loadable from disk or from memory.
//
//   savepoint::write_bundle(*ckpt.find_checkpoint(savepoint::min_key("loss")), "model.spb");
//   // later, in a program that ships without a checkpoint directory:
//   auto bundle = savepoint::Bundle::open("model.spb");           // or, embedded in the binary:
//   auto bundle = savepoint::Bundle::view({reinterpret_cast<const char*>(model_spb), model_spb_len});
//   bundle.load({{"model", model}});                               // verified, then loaded
//
// A bundle holds a checkpoint's meta.json and every file it lists (format: docs/format.md,
// "Bundles"). Opening one validates everything a directory load validates, and more: the
// bundle's own XXH3 over every byte, its structure, meta.json's checksum and format version,
// and every member's size and XXH3 against meta.json. A damaged bundle (a byte flipped,
// truncated, extended) throws CorruptCheckpointError naming it before anything is loaded;
// loading is two-phase like a directory's (every hook prepares, then every one applies), so
// a mismatch leaves every object as it was. Keys written by built-in or JSON hooks load
// straight from the bundle's bytes; a key written by a path-based hook of your own (which
// reads a file) is written to a private temporary directory for its load hook, then removed.
// A Bundle is immutable; its views stay valid while the Bundle (or a copy) lives, and, for
// Bundle::view, while the caller's bytes do.
#pragma once

#include <savepoint/checkpoint.hpp>
#include <savepoint/hooks.hpp>
#include <savepoint/options.hpp>

#include <filesystem>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace savepoint {

/// Writes `checkpoint` (a committed checkpoint; every file is verified against meta.json while
/// it is copied) as one bundle file at `output` (temporary file, fsync, rename; an existing
/// `output` is a UsageError). Returns the bundle's size in bytes.
std::uint64_t write_bundle(const Checkpoint& checkpoint, const std::filesystem::path& output);

class Bundle {
 public:
  /// Maps and validates a bundle file.
  static Bundle open(const std::filesystem::path& file);
  /// Validates a bundle held in memory by the caller (an array from `xxd -i`, linker
  /// symbols, a download): no copy; the bytes must outlive the Bundle and its loads.
  /// `name` stands for the bundle in messages.
  static Bundle view(std::string_view bytes, std::string name = "<bundle in memory>");

  /// The checkpoint it holds: meta, file records, sequence; `path` is the bundle's name and
  /// `paramfiles` point inside it (they are not files on disk).
  const Checkpoint& checkpoint() const noexcept;
  /// The verified bytes of `key`'s file (MissingKeyError if the bundle has none).
  std::string_view file_bytes(const std::string& key) const;
  /// Loads the bundle into `recoverables` with the rules of Checkpointer::load_checkpoint:
  /// MissingKeyError for a key it lacks (unless the key is optional or `partial`),
  /// MismatchError for another built-in hook's file, HookError for a hook that throws.
  void load(const std::vector<Recoverable>& recoverables, bool partial = false) const;
  void load(std::initializer_list<Recoverable> recoverables, bool partial = false) const {
    load(std::vector<Recoverable>(recoverables), partial);
  }

 private:
  struct Impl;
  static std::shared_ptr<Impl> parse(std::string_view bytes, std::string name, std::shared_ptr<const void> owner);
  explicit Bundle(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace savepoint
