// format/parts.hpp — a key's tensors split into several safetensors files ("parts"), and put
// back together. What makes incremental checkpoints possible: a part whose bytes did not
// change is the same file as in the previous checkpoint (docs/format.md, "Parts").
#pragma once

#include <savepoint/checkpoint.hpp>
#include <savepoint/file_contents.hpp>
#include <savepoint/payload.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace savepoint::safetensors {

/// Part metadata: every part's index; a segment's first row and the tensor's row count.
inline constexpr const char* kPartMetadata = "savepoint.part";
inline constexpr const char* kSegmentMetadata = "savepoint.segment";

/// "model.safetensors", 3 → "model.part00003.safetensors".
std::string part_file_name(const std::string& file, std::size_t index);

/// Splits a tensor payload into parts, in the payload's tensor order: tensors grouped while a
/// part stays within `part_bytes`; a larger tensor alone, in segments of whole dim-0 rows of at
/// most `part_bytes` each (at least one row). Part 0 carries the payload's metadata. The
/// parts' TensorData read the same bytes as the payload's (a segment of a tensor that must be
/// copied to the host copies the whole tensor once, shared by its segments).
std::vector<Payload> split_into_parts(const Payload& payload, std::uint64_t part_bytes);

/// The bytes the unsplit file would have held, byte for byte, from the key's verified parts
/// in part order: a fresh buffer. CorruptCheckpointError naming the part file and key when
/// the parts do not fit together.
std::shared_ptr<const FileContents> assemble_parts(const std::vector<std::shared_ptr<const FileContents>>& parts,
                                                   const std::string& key);

/// A key's verified bytes, given its (first) record: the one file, or, for a key split into
/// parts, every part opened by `open` (which verifies it) and assembled.
using OpenVerified = std::function<std::shared_ptr<const FileContents>(const FileRecord&)>;
std::shared_ptr<const FileContents> key_contents(const Checkpoint& checkpoint, const FileRecord& first,
                                                 const OpenVerified& open);

}  // namespace savepoint::safetensors
