// Fuzzes the safetensors reader: any bytes must give a header whose tensors lie inside the
// file, or a savepoint::Error; never a crash, a hang or undefined behaviour. The same for the
// header-only reader (parse_header) that the CLI uses.
#include <savepoint/errors.hpp>
#include <savepoint/format/safetensors.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    const auto header = savepoint::safetensors::parse(bytes, "/fuzz/x.safetensors");
    std::uint64_t sum = 0;
    for (const auto& t : header.tensors) {
      // The guarantees the loaders rely on; a violation is a reader bug.
      if (t.begin > t.end || header.data_start + t.end > size) __builtin_trap();
      for (std::uint64_t i = t.begin; i < t.end; i += 4096) sum += data[header.data_start + i];
    }
    volatile std::uint64_t sink = sum;
    (void)sink;
  } catch (const savepoint::Error&) {
  }
  // The CLI's header-only reader: the same bytes, the first few as the "file size".
  if (size >= 8) {
    std::uint64_t file_size = 0;
    for (int i = 0; i < 8; ++i) file_size |= std::uint64_t{data[i]} << (8 * i);
    try {
      const auto header = savepoint::safetensors::parse_header(bytes.substr(8), file_size, "/fuzz/x.safetensors");
      for (const auto& t : header.tensors)
        if (t.begin > t.end || header.data_start + t.end > file_size) __builtin_trap();
    } catch (const savepoint::Error&) {
    }
  }
  return 0;
}
