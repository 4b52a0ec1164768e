// Fuzzes the assembly of a key split into parts (format 2, src/format/parts.cpp): any part
// files must assemble into a valid safetensors file or raise a savepoint::Error; never a crash,
// a hang or undefined behaviour. The input is the part files joined by the marker "|PART|".
#include "../src/format/parts.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/format/safetensors.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view all(reinterpret_cast<const char*>(data), size);
  constexpr std::string_view kMarker = "|PART|";
  std::vector<std::shared_ptr<const savepoint::FileContents>> parts;
  std::size_t at = 0;
  while (parts.size() < 16) {
    const auto next = all.find(kMarker, at);
    const auto piece = all.substr(at, next == std::string_view::npos ? std::string_view::npos : next - at);
    parts.push_back(std::make_shared<const savepoint::detail::MappedFile>(
        "/fuzz/w.part" + std::to_string(parts.size()) + ".safetensors", piece, nullptr));
    if (next == std::string_view::npos) break;
    at = next + kMarker.size();
  }
  std::shared_ptr<const savepoint::FileContents> assembled;
  try {
    assembled = savepoint::safetensors::assemble_parts(parts, "w");
  } catch (const savepoint::Error&) {
    return 0;
  }
  // What the parts assemble into is one valid file: a load hook parses it next.
  try {
    (void)savepoint::safetensors::parse(assembled->bytes(), "/fuzz/assembled.safetensors");
  } catch (const savepoint::Error&) {
    __builtin_trap();
  }
  return 0;
}
