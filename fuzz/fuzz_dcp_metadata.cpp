// Fuzzes the reader of DCP's .metadata (a pickle read by restricted unpickling): any bytes must
// give a Metadata whose keys are sorted and unique and whose chunks each name a file inside
// the directory, or a savepoint::Error; never a crash, a hang or undefined behaviour. What it
// accepts must survive the writer: write_metadata(parse(x)) parses to the same items.
#include <savepoint/errors.hpp>
#include <savepoint/format/dcp.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  savepoint::dcp::Metadata m;
  try {
    m = savepoint::dcp::parse_metadata(bytes, "/fuzz/.metadata");
  } catch (const savepoint::Error&) {
    return 0;
  }
  for (std::size_t i = 0; i < m.items.size(); ++i) {
    if (i > 0 && !(m.items[i - 1].key < m.items[i].key)) __builtin_trap();
    for (const auto& c : m.items[i].chunks)
      if (c.file.empty() || c.file.find('/') != std::string::npos || c.file == "..") __builtin_trap();
    if (!m.items[i].tensor && m.items[i].chunks.size() != 1) __builtin_trap();
  }
  bool writable = true;
  for (const auto& item : m.items)
    if (item.tensor && !savepoint::safetensors::dtype_size(item.dtype)) writable = false;
  if (!writable) return 0;
  const auto again = savepoint::dcp::parse_metadata(savepoint::dcp::write_metadata(m), "/fuzz/.metadata");
  if (again.items.size() != m.items.size()) __builtin_trap();
  for (std::size_t i = 0; i < m.items.size(); ++i) {
    const auto &a = m.items[i], &b = again.items[i];
    if (a.key != b.key || a.tensor != b.tensor || a.size != b.size || a.chunks.size() != b.chunks.size()) __builtin_trap();
    for (std::size_t c = 0; c < a.chunks.size(); ++c)
      if (a.chunks[c].file != b.chunks[c].file || a.chunks[c].offset != b.chunks[c].offset ||
          a.chunks[c].length != b.chunks[c].length)
        __builtin_trap();
  }
  return 0;
}
