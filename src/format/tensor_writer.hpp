// format/tensor_writer.hpp — writes a tensor payload (savepoint/payload.hpp) as a safetensors
// file, with the block checksums a partial read verifies (sharded keys).
#pragma once

#include <savepoint/detail/io.hpp>
#include <savepoint/format/safetensors.hpp>
#include <savepoint/payload.hpp>

#include <cstdint>
#include <filesystem>
#include <vector>

namespace savepoint::safetensors {

/// Checksums a partial read can check (sharded keys, docs/format.md): XXH3 of the header
/// (length prefix + JSON) and of every `block_bytes` block of the tensor bytes after it.
struct BlockDigests {
  std::uint64_t block_bytes = 0;  ///< set by the caller
  std::uint64_t header_bytes = 0;
  std::uint64_t header_xxh3 = 0;
  std::vector<std::uint64_t> blocks;
};

/// Writes a tensor payload in the safetensors layout (fsynced), straight from host bytes
/// where it can, one tensor-sized copy at a time where it cannot, the way `mode` says (O_DIRECT:
/// the same bytes; reuse: over a recycled file); with `blocks`, the block checksums too.
/// `defer_sync`: not fsynced, its writeback started (FileWriter::finish_deferred); the caller
/// calls detail::sync_file before relying on it.
detail::FileDigest write_tensors(const std::filesystem::path& file, const Payload& payload,
                                 detail::WriteMode mode = detail::WriteMode::buffered,
                                 BlockDigests* blocks = nullptr, bool defer_sync = false);
/// The size and XXH3 the file write_tensors would write for `payload`, computed in memory.
detail::FileDigest digest_tensors(const Payload& payload, const std::filesystem::path& file_for_errors);

}  // namespace savepoint::safetensors
