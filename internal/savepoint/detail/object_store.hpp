// savepoint/detail/object_store.hpp — the object store behind `s3://` paths (internal).
//
// The I/O seam (detail/io.hpp) dispatches every call on an `s3://bucket/key` path here, so the
// engine keeps one code path: listing, reading, writing (multipart, streamed), server-side
// copies for incremental saves, and deletion. What an object store cannot do (rename, fsync,
// hard links that share bytes) the engine asks for by the calls below instead
// (SaveTransaction commits by create_if_absent; Catalog cleans up orphans).
#pragma once

#include <savepoint/detail/io.hpp>
#include <savepoint/object_store.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace savepoint::detail {

namespace fs = std::filesystem;

/// "s3://bucket/a/b" -> {"bucket", "a/b"}; UsageError for a path without a bucket or with an
/// empty, "." or ".." segment.
struct ObjectPath {
  std::string bucket;
  std::string key;  ///< no leading or trailing '/'; empty for the bucket itself
};
ObjectPath split_object_path(const fs::path& path);
/// The options that reach `path` (configure_object_store's longest prefix, else defaults).
ObjectStoreOptions object_store_options(const fs::path& path);

/// Requests and body bytes of every object store this process used, since it started (the
/// benchmark's and the docs' "requests per save").
struct ObjectStoreTraffic {
  std::uint64_t requests = 0, retries = 0, bytes_sent = 0, bytes_received = 0;
};
ObjectStoreTraffic object_store_traffic();
/// Test seam (tests/test_object_store.cpp): called after each request that got a response,
/// with its method, bucket, key (query included) and HTTP status. nullptr removes it.
void s3_set_request_observer(
    std::function<void(const char* method, const std::string& bucket, const std::string& key, int status)> observer);

/// Creates `file` with `bytes` only if no object has that name (If-None-Match: *): true when
/// created, false when one existed. Where the root accepted an unconditional commit
/// (ObjectStoreOptions::accept_unconditional_commit), a HEAD then a PUT.
bool create_object_if_absent(const fs::path& file, std::string_view bytes);
/// Once per root and process: checks that the store honours If-None-Match (a probe object
/// created twice: the second must fail). UsageError naming the endpoint and the reason when it
/// does not, unless the root's options accept an unconditional commit (then a warning).
void probe_conditional_create(const fs::path& root);
/// The store's clock (seconds since the epoch), from a response's Date header.
std::int64_t object_store_time(const fs::path& root);
/// Server-side copy (no byte passes through this process); `size`: the source's, if known.
void copy_object(const fs::path& from, const fs::path& to, std::optional<std::uint64_t> size = std::nullopt);
/// A file for a hook that writes or reads by path (a user hook): a new local path in this
/// process's scratch directory (removed at exit), uploaded to `object` by upload_scratch_file
/// after a save hook ran; on a load, the object's verified bytes are written there.
fs::path scratch_file_for(const fs::path& object);
void upload_scratch_file(const fs::path& scratch, const fs::path& object);

// What the I/O seam calls for object paths (src/io/fs.cpp and friends).
namespace object_io {
std::optional<FileStatus> status(const fs::path& path);
std::vector<DirectoryEntry> list(const fs::path& directory, std::string_view prefix);
std::string read_small(const fs::path& path, std::size_t max_bytes);  ///< IoError ENOENT when none
void write(const fs::path& path, std::string_view bytes);
void remove(const fs::path& path);
/// Every object under `directory/`; its meta.json first, so a checkpoint disappears at once.
void remove_tree(const fs::path& directory);
/// The whole object in fresh memory, read in parallel ranges and hashed in order as they
/// arrive. With `expected` (its recorded size) no HEAD is sent: one GET reads a small object,
/// and an object of another size is CorruptCheckpointError (IoError ENOENT when missing).
FreshRead read_fresh(const fs::path& path, std::optional<std::uint64_t> expected = std::nullopt);
/// One ranged read; false when the object is shorter.
bool read_at(const fs::path& path, std::uint64_t offset, std::uint64_t size, char* out);
/// A streaming upload (multipart for large files) behind FileWriter.
class Upload {
 public:
  explicit Upload(const fs::path& path);
  ~Upload();
  void write(const void* data, std::size_t size);
  std::uint64_t finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};
/// The lock file's text of an object root (empty when none), and its replacement.
std::string read_marks(const fs::path& file);
void write_marks(const fs::path& file, const std::string& text);
}  // namespace object_io

}  // namespace savepoint::detail
