// savepoint/format/safetensors.hpp — the safetensors file layout, without torch.
//
//   u64 little-endian N | N bytes of JSON header (padded with spaces) | raw tensor bytes
//   header: {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//            "__metadata__": {"key": "string value"}}
// Offsets are relative to the byte buffer. The reader enforces the spec: known dtype, offsets
// matching shape x dtype size, no overlaps, no holes, buffer fully covered, header <= 100 MB,
// no duplicate names. Every violation throws CorruptCheckpointError naming the file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace savepoint::safetensors {

enum class DType { BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, I64, U64, F64, C64,
                   F8_E5M2, F8_E4M3 };

std::size_t dtype_size(DType dtype) noexcept;
const char* dtype_name(DType dtype) noexcept;
std::optional<DType> parse_dtype(std::string_view name) noexcept;

inline constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;  ///< offset in the byte buffer
  std::uint64_t end = 0;    ///< one past the last byte
  std::uint64_t nbytes() const noexcept { return end - begin; }
};

struct Header {
  std::vector<TensorInfo> tensors;  ///< in file (offset) order
  std::map<std::string, std::string> metadata;
  std::uint64_t data_start = 0;  ///< file offset of the byte buffer
  const TensorInfo* find(std::string_view name) const;
};

/// Parses and validates the whole file held in `file_bytes`.
Header parse(std::string_view file_bytes, const std::filesystem::path& path_for_errors);

/// Parses and validates the header alone, without the tensor bytes: `prefix_and_header` holds
/// the file's first 8 + N bytes (the length prefix and the N-byte header; bytes past them are
/// ignored) and `file_size` is the size of the whole file. Applies every rule `parse` applies,
/// the offsets checked against `file_size` (the bytes themselves are not read, nor checked).
Header parse_header(std::string_view prefix_and_header, std::uint64_t file_size,
                    const std::filesystem::path& path_for_errors);

/// What a writer plans to store; `nbytes` must equal the element count times the dtype size.
struct TensorSpec {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::uint64_t nbytes = 0;
};

/// Sorts `tensors` into the order their bytes must follow (by descending dtype alignment,
/// then name, as the reference writer does, so each tensor is naturally aligned) and returns
/// the 8-byte length prefix + JSON header, padded so the data starts at a multiple of 8.
std::string build_header(std::vector<TensorSpec>& tensors,
                         const std::map<std::string, std::string>& metadata);

}  // namespace savepoint::safetensors
