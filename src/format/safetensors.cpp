// The safetensors layout: strict reader (every rule of the spec) and header builder.
#include <savepoint/errors.hpp>
#include <savepoint/format/safetensors.hpp>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <set>

namespace savepoint::safetensors {

using nlohmann::json;

namespace {
struct DTypeRow {
  DType dtype;
  const char* name;
  std::size_t size;
};
constexpr DTypeRow kDTypes[] = {
    {DType::BOOL, "BOOL", 1}, {DType::U8, "U8", 1},     {DType::I8, "I8", 1},
    {DType::I16, "I16", 2},   {DType::U16, "U16", 2},   {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2}, {DType::I32, "I32", 4},   {DType::U32, "U32", 4},
    {DType::F32, "F32", 4},   {DType::I64, "I64", 8},   {DType::U64, "U64", 8},
    {DType::F64, "F64", 8},   {DType::C64, "C64", 8},   {DType::F8_E5M2, "F8_E5M2", 1},
    {DType::F8_E4M3, "F8_E4M3", 1},
};

[[noreturn]] void bad(const std::filesystem::path& path, const std::string& why) {
  detail::throw_corrupt(fmt::format("tensor file '{}' is invalid: {}", path.string(), why), path);
}

std::uint64_t read_u64_le(const char* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
}  // namespace

std::size_t dtype_size(DType dtype) noexcept {
  for (const auto& row : kDTypes)
    if (row.dtype == dtype) return row.size;
  return 0;
}
const char* dtype_name(DType dtype) noexcept {
  for (const auto& row : kDTypes)
    if (row.dtype == dtype) return row.name;
  return "?";
}
std::optional<DType> parse_dtype(std::string_view name) noexcept {
  for (const auto& row : kDTypes)
    if (name == row.name) return row.dtype;
  return std::nullopt;
}

const TensorInfo* Header::find(std::string_view name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

namespace {
// The one validator behind parse and parse_header: `bytes` starts with the length prefix and
// holds at least the whole header; `file_size` is the size of the whole file, against which
// the header's offsets are checked.
Header parse_validated(std::string_view bytes, std::uint64_t file_size, const std::filesystem::path& path) {
  if (file_size < 8) bad(path, fmt::format("only {} bytes, shorter than the 8-byte header length", file_size));
  if (bytes.size() < 8) bad(path, fmt::format("only {} bytes given, shorter than the 8-byte header length", bytes.size()));
  const std::uint64_t n = read_u64_le(bytes.data());
  if (n > kMaxHeaderBytes) bad(path, fmt::format("header length {} exceeds the {} byte cap", n, kMaxHeaderBytes));
  if (n > file_size - 8) bad(path, fmt::format("header length {} runs past the end of the {}-byte file", n, file_size));
  if (n > bytes.size() - 8)
    bad(path, fmt::format("header length {} but only {} header bytes given", n, bytes.size() - 8));
  const std::string_view text = bytes.substr(8, static_cast<std::size_t>(n));
  if (text.empty() || text.front() != '{') bad(path, "header does not start with '{'");

  // Duplicate names are illegal; nlohmann would keep the last silently, so watch the keys.
  std::set<std::string> seen;
  std::string duplicate;
  const json::parser_callback_t watch = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1) {
      const auto name = parsed.get<std::string>();
      if (!seen.insert(name).second && duplicate.empty()) duplicate = name;
    }
    return true;
  };
  json doc;
  try {
    doc = json::parse(text.begin(), text.end(), watch);
  } catch (const json::exception& e) {
    bad(path, fmt::format("header is not valid JSON ({})", e.what()));
  }
  if (!duplicate.empty()) bad(path, fmt::format("tensor name '{}' appears twice", duplicate));
  if (!doc.is_object()) bad(path, "header is not a JSON object");

  Header header;
  header.data_start = 8 + n;
  const std::uint64_t buffer_size = file_size - header.data_start;
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    const std::string& name = it.key();
    const json& entry = it.value();
    if (name == "__metadata__") {
      if (!entry.is_object()) bad(path, "__metadata__ is not an object");
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        if (!m.value().is_string()) bad(path, fmt::format("__metadata__ value '{}' is not a string", m.key()));
        header.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!entry.is_object()) bad(path, fmt::format("entry '{}' is not an object", name));
    TensorInfo info;
    info.name = name;
    const auto dt = entry.find("dtype");
    if (dt == entry.end() || !dt->is_string()) bad(path, fmt::format("tensor '{}' has no dtype", name));
    const auto dtype = parse_dtype(dt->get<std::string>());
    if (!dtype) bad(path, fmt::format("tensor '{}' has unknown dtype '{}'", name, dt->get<std::string>()));
    info.dtype = *dtype;
    const auto shape = entry.find("shape");
    if (shape == entry.end() || !shape->is_array()) bad(path, fmt::format("tensor '{}' has no shape", name));
    std::uint64_t elements = 1;
    bool overflow = false;
    for (const auto& d : *shape) {
      if (!d.is_number_unsigned()) bad(path, fmt::format("tensor '{}' has a dimension that is not a non-negative integer", name));
      const std::uint64_t dim = d.get<std::uint64_t>();
      if (dim > static_cast<std::uint64_t>(INT64_MAX)) overflow = true;
      if (dim != 0 && elements > UINT64_MAX / dim) overflow = true;
      elements *= dim;
      info.shape.push_back(static_cast<std::int64_t>(dim));
    }
    const auto offsets = entry.find("data_offsets");
    if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 ||
        !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned())
      bad(path, fmt::format("tensor '{}' has no valid data_offsets [begin, end]", name));
    info.begin = (*offsets)[0].get<std::uint64_t>();
    info.end = (*offsets)[1].get<std::uint64_t>();
    if (info.end < info.begin) bad(path, fmt::format("tensor '{}' ends before it begins", name));
    if (info.end > buffer_size)
      bad(path, fmt::format("tensor '{}' ends at byte {} but the data buffer has only {}", name, info.end, buffer_size));
    const std::uint64_t size = dtype_size(info.dtype);
    if (overflow || elements > UINT64_MAX / size || elements * size != info.nbytes())
      bad(path, fmt::format("tensor '{}' has {} bytes but its shape and dtype {} need a different size",
                            name, info.nbytes(), dtype_name(info.dtype)));
    header.tensors.push_back(std::move(info));
  }
  // The buffer must be covered exactly: sorted by offset, each tensor starts where the last ended.
  std::sort(header.tensors.begin(), header.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t expected = 0;
  for (const auto& t : header.tensors) {
    if (t.begin < expected) bad(path, fmt::format("tensor '{}' overlaps the previous tensor", t.name));
    if (t.begin > expected) bad(path, fmt::format("hole in the data buffer before tensor '{}'", t.name));
    expected = t.end;
  }
  if (expected != buffer_size)
    bad(path, fmt::format("{} bytes after the last tensor are not described by the header", buffer_size - expected));
  return header;
}
}  // namespace

Header parse(std::string_view bytes, const std::filesystem::path& path) {
  return parse_validated(bytes, bytes.size(), path);
}

Header parse_header(std::string_view prefix_and_header, std::uint64_t file_size, const std::filesystem::path& path) {
  if (prefix_and_header.size() > file_size)
    bad(path, fmt::format("{} header bytes given for a file of only {} bytes", prefix_and_header.size(), file_size));
  return parse_validated(prefix_and_header, file_size, path);
}

std::string build_header(std::vector<TensorSpec>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  std::stable_sort(tensors.begin(), tensors.end(), [](const TensorSpec& a, const TensorSpec& b) {
    const auto sa = dtype_size(a.dtype), sb = dtype_size(b.dtype);
    return sa != sb ? sa > sb : a.name < b.name;
  });
  json doc = json::object();
  if (!metadata.empty()) doc["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const auto& t : tensors) {
    doc[t.name] = {{"dtype", dtype_name(t.dtype)},
                   {"shape", t.shape},
                   {"data_offsets", {offset, offset + t.nbytes}}};
    offset += t.nbytes;
  }
  std::string text = doc.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  std::uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + text;
}

}  // namespace savepoint::safetensors
