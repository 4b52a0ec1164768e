// engine/payload_writer.hpp — turns what a hook returned into a file: now, on a writer
// thread, or after a snapshot into reusable host buffers (async saves).
#pragma once

#include "../format/tensor_writer.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/payload.hpp>

#include <cstddef>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace savepoint::engine {

namespace fs = std::filesystem;

class OverlappedSnapshot;  // snapshot.hpp

/// Host copies of an async save's tensors, reused from save to save (one save is in flight
/// at a time, so the previous write is done before the next snapshot overwrites them).
class StagingBuffers {
 public:
  /// At least `bytes` bytes for tensor `index` of the file `file`; pinned when `pinned` and a pinned
  /// allocator is installed (device tensors copy to pinned memory at full speed).
  std::shared_ptr<void> get(const std::string& file, std::size_t index, std::size_t bytes, bool pinned);

 private:
  struct Buffer {
    std::shared_ptr<void> memory;
    std::size_t bytes = 0;
    bool pinned = false;
  };
  std::map<std::string, std::vector<Buffer>> by_file_;
};

/// Allocates page-locked host memory; installed by the LibTorch layer (null: plain memory).
using PinnedAllocator = std::shared_ptr<void> (*)(std::size_t bytes);
void set_pinned_allocator(PinnedAllocator allocator);

/// One file to produce; returns its size and XXH3.
using FileWrite = std::function<detail::FileDigest()>;

/// Plans the write of `payload` to `file`. With `staging` the data is captured now (tensors
/// copied into the staging buffers, JSON serialized), so the caller may change its objects
/// before the write runs; without, the write reads them when it runs. A Payload::file() is
/// checked to exist now and read back (checksum + fsync) when the write runs.
/// With `overlapped` (and `staging`), the copies of tensors that have a version function are
/// deferred to it (the staging buffers are reserved now); the others are copied now.
/// `mode`: how tensor files are written (detail::WriteMode: buffered, O_DIRECT, over recycled files).
/// With `blocks` (a tensor payload only), the write also fills in the block checksums.
/// A tensor payload's file is not fsynced by the write (the save pipeline syncs all of them
/// after the writes: one journal commit for many files); `*needs_sync` (if given) says so.
FileWrite plan_write(const fs::path& file, const std::string& key, const std::string& hook, Payload payload,
                     StagingBuffers* staging, OverlappedSnapshot* overlapped = nullptr,
                     detail::WriteMode mode = detail::WriteMode::buffered,
                     std::shared_ptr<safetensors::BlockDigests> blocks = nullptr, bool* needs_sync = nullptr);

}  // namespace savepoint::engine
