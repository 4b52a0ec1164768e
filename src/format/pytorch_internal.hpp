// format/pytorch_internal.hpp — what the PyTorch-file code shares (private to src/format:
// zip.cpp, unpickler.cpp, pytorch.cpp): the errors that name the file, little-endian reads,
// the storage classes torch.save names.
#pragma once

#include <savepoint/errors.hpp>
#include <savepoint/format/pytorch.hpp>

#include <fmt/format.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace savepoint::pickle {
class Writer;
}

namespace savepoint::pytorch::internal {

namespace fs = std::filesystem;

[[noreturn]] inline void damaged(const fs::path& path, const std::string& why) {
  detail::throw_corrupt(fmt::format("PyTorch file '{}' is damaged: {}", path.string(), why), path);
}
[[noreturn]] inline void unsupported(const fs::path& path, const std::string& why) {
  throw FormatVersionError(fmt::format("PyTorch file '{}' is not supported: {}", path.string(), why), path);
}

/// The little-endian unsigned integer of `n` bytes at `p`.
inline std::uint64_t le(const char* p, int n) {
  std::uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

// ---------------------------------------------------------------- the storage classes
struct StorageRow {
  DType dtype;
  const char* name;
};
inline constexpr StorageRow kStorages[] = {
    {DType::F32, "FloatStorage"},   {DType::F64, "DoubleStorage"},  {DType::F16, "HalfStorage"},
    {DType::BF16, "BFloat16Storage"}, {DType::I64, "LongStorage"},  {DType::I32, "IntStorage"},
    {DType::I16, "ShortStorage"},   {DType::I8, "CharStorage"},     {DType::U8, "ByteStorage"},
    {DType::BOOL, "BoolStorage"},   {DType::C64, "ComplexFloatStorage"},
};

/// torch.save's pickle of one tensor: _rebuild_tensor_v2(('storage', torch.<cls>, key, 'cpu',
/// numel), 0, shape, contiguous strides, False, OrderedDict()), onto `w` (pytorch.cpp's
/// state_dicts, dcp.cpp's chunks).
void pickle_tensor(pickle::Writer& w, const char* storage_class, const std::string& storage_key,
                   const std::vector<std::int64_t>& shape);

}  // namespace savepoint::pytorch::internal
