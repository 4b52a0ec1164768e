// format/zip.hpp — the zip archive of a PyTorch file (private to src/format): zip's CRC-32,
// a reader of stored records (zip64 included) and a writer of them.
#pragma once

#include <savepoint/detail/io.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace savepoint::pytorch::internal {

namespace fs = std::filesystem;

/// CRC-32 with zip's polynomial (slicing-by-8).
std::uint32_t crc32(std::string_view bytes);

// ---------------------------------------------------------------- reader (stored records)
struct ZipRecord {
  std::string_view data;
  std::uint32_t crc = 0;
  bool compressed = false;  // refused when read (a TorchScript archive compresses its code)
  bool checked = false;
};

/// The records of a zip archive held in memory, by name. A damaged directory throws
/// CorruptCheckpointError naming `path` (which must outlive the reader).
class ZipReader {
 public:
  ZipReader(std::string_view bytes, const fs::path& path) : bytes_(bytes), path_(path) { read_directory(); }

  /// The record `name`, CRC-checked, or nullptr.
  const ZipRecord* find(const std::string& name);
  const std::unordered_map<std::string, ZipRecord>& records() const { return records_; }

 private:
  std::string_view at(std::uint64_t offset, std::uint64_t size, const char* what) const;
  void read_directory();

  std::string_view bytes_;
  const fs::path& path_;
  std::unordered_map<std::string, ZipRecord> records_;
};

// ---------------------------------------------------------------- writer
/// A zip archive of stored records, written as a new file (through detail::FileWriter:
/// O_EXCL, fsynced by finish()) or into an open writer at its current position (a DCP chunk
/// inside a .distcp file: the archive's offsets count from its own first byte).
struct ZipWriter {
  std::unique_ptr<detail::FileWriter> owned;
  detail::FileWriter* out;
  std::uint64_t offset = 0;
  struct Entry {
    std::string name;
    std::uint32_t crc;
    std::uint64_t size;
    std::uint64_t offset;
  };
  std::vector<Entry> entries;

  explicit ZipWriter(const fs::path& path) : owned(std::make_unique<detail::FileWriter>(path)), out(owned.get()) {}
  explicit ZipWriter(detail::FileWriter& into) : out(&into) {}

  void put(std::string_view s);
  static std::string le_bytes(std::uint64_t v, int n);
  // A stored record whose data starts at a multiple of 64 bytes, as LibTorch writes them
  // (the padding is an extra field 'FB', like PyTorchStreamWriter's).
  void add(const std::string& name, std::string_view data);
  /// The central directory and its end record; then, for a file of its own, fsync and close.
  void finish();
};

}  // namespace savepoint::pytorch::internal
