// Fuzzes the PyTorch file reader (zip records + the state_dict pickle subset): any bytes must
// give tensors that lie inside their storages, and storages inside the file, or a
// savepoint::Error; never a crash, a hang or undefined behaviour. Under
// FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION the reader skips the CRC-32 check, so mutations
// reach the unpickler behind it.
#include <savepoint/errors.hpp>
#include <savepoint/format/pytorch.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    const auto file = savepoint::pytorch::parse(bytes, "/fuzz/x.pt");
    for (const auto& [key, s] : file.storages) {
      if (s.bytes.data() < bytes.data() || s.bytes.data() + s.bytes.size() > bytes.data() + size) __builtin_trap();
      if (s.bytes.size() != s.numel * savepoint::safetensors::dtype_size(s.dtype)) __builtin_trap();
    }
    for (const auto& t : file.tensors) {
      const auto& s = file.storages.at(t.storage);
      if (t.shape.size() != t.strides.size() || t.storage_offset < 0) __builtin_trap();
      std::uint64_t last = static_cast<std::uint64_t>(t.storage_offset);
      bool empty = false;
      for (std::size_t d = 0; d < t.shape.size(); ++d) {
        if (t.shape[d] < 0 || t.strides[d] < 0) __builtin_trap();
        if (t.shape[d] == 0) empty = true;
        else last += static_cast<std::uint64_t>(t.shape[d] - 1) * static_cast<std::uint64_t>(t.strides[d]);
      }
      if (!empty && last >= s.numel) __builtin_trap();
    }
  } catch (const savepoint::Error&) {
  }
  return 0;
}
