// The zip archive of a PyTorch file: CRC-32, the reader of stored records, the writer.
#include "zip.hpp"

#include "pytorch_internal.hpp"

#include <fmt/format.h>

#include <array>

namespace savepoint::pytorch::internal {

namespace {

// ---------------------------------------------------------------- CRC-32 (zip's polynomial)
// Slicing-by-8: eight bytes per step (about 4x the byte-wise loop), so that checking a
// large file costs a fraction of reading it.
using CrcTables = std::array<std::array<std::uint32_t, 256>, 8>;
const CrcTables& crc_tables() {
  static const CrcTables tables = [] {
    CrcTables t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (std::size_t k = 1; k < 8; ++k)
      for (std::size_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFFu];
    return t;
  }();
  return tables;
}

}  // namespace

std::uint32_t crc32(std::string_view bytes) {
  const auto& t = crc_tables();
  std::uint32_t c = 0xFFFFFFFFu;
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  std::size_t n = bytes.size();
  auto word = [](const unsigned char* q) {
    return std::uint32_t{q[0]} | std::uint32_t{q[1]} << 8 | std::uint32_t{q[2]} << 16 | std::uint32_t{q[3]} << 24;
  };
  for (; n >= 8; n -= 8, p += 8) {
    const std::uint32_t one = word(p) ^ c, two = word(p + 4);
    c = t[7][one & 0xFFu] ^ t[6][(one >> 8) & 0xFFu] ^ t[5][(one >> 16) & 0xFFu] ^ t[4][one >> 24] ^
        t[3][two & 0xFFu] ^ t[2][(two >> 8) & 0xFFu] ^ t[1][(two >> 16) & 0xFFu] ^ t[0][two >> 24];
  }
  for (; n > 0; --n, ++p) c = t[0][(c ^ *p) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

// ---------------------------------------------------------------- reader (stored records)
const ZipRecord* ZipReader::find(const std::string& name) {
  const auto it = records_.find(name);
  if (it == records_.end()) return nullptr;
  ZipRecord& r = it->second;
  if (r.compressed)
    unsupported(path_, fmt::format("record '{}' is compressed (torch.save stores records uncompressed)", name));
  if (!r.checked) {
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION  // the fuzzer's mutations must reach the unpickler
    if (crc32(r.data) != r.crc) damaged(path_, fmt::format("record '{}' fails its CRC-32 check", name));
#endif
    r.checked = true;
  }
  return &r;
}

std::string_view ZipReader::at(std::uint64_t offset, std::uint64_t size, const char* what) const {
  if (offset > bytes_.size() || size > bytes_.size() - offset)
    damaged(path_, fmt::format("the {} lies outside the file (truncated?)", what));
  return bytes_.substr(offset, size);
}

void ZipReader::read_directory() {
  constexpr std::size_t kEocd = 22;
  if (bytes_.size() < kEocd) damaged(path_, "too short for a zip archive");
  std::size_t eocd = std::string_view::npos;
  const std::size_t lowest = bytes_.size() > kEocd + 0xFFFF ? bytes_.size() - kEocd - 0xFFFF : 0;
  for (std::size_t i = bytes_.size() - kEocd + 1; i-- > lowest;)
    if (le(bytes_.data() + i, 4) == 0x06054b50) {
      eocd = i;
      break;
    }
  if (eocd == std::string_view::npos) damaged(path_, "no zip end-of-directory record (truncated?)");
  const char* e = bytes_.data() + eocd;
  std::uint64_t entries = le(e + 10, 2), dir_size = le(e + 12, 4), dir_offset = le(e + 16, 4);
  if (entries == 0xFFFF || dir_size == 0xFFFFFFFF || dir_offset == 0xFFFFFFFF) {  // zip64
    if (eocd < 20 || le(e - 20, 4) != 0x07064b50) damaged(path_, "zip64 locator missing");
    const auto z = at(le(e - 20 + 8, 8), 56, "zip64 end-of-directory record");
    if (le(z.data(), 4) != 0x06064b50) damaged(path_, "bad zip64 end-of-directory record");
    entries = le(z.data() + 32, 8);
    dir_size = le(z.data() + 40, 8);
    dir_offset = le(z.data() + 48, 8);
  }
  const auto dir = at(dir_offset, dir_size, "zip central directory");
  std::size_t pos = 0;
  for (std::uint64_t n = 0; n < entries; ++n) {
    if (dir.size() - pos < 46 || le(dir.data() + pos, 4) != 0x02014b50)
      damaged(path_, "bad zip central directory entry");
    const char* c = dir.data() + pos;
    const auto method = le(c + 10, 2);
    const auto crc = static_cast<std::uint32_t>(le(c + 16, 4));
    std::uint64_t comp = le(c + 20, 4), size = le(c + 24, 4), local = le(c + 42, 4);
    const auto name_len = le(c + 28, 2), extra_len = le(c + 30, 2), comment_len = le(c + 32, 2);
    if (dir.size() - pos - 46 < name_len + extra_len + comment_len) damaged(path_, "bad zip central directory entry");
    std::string name(c + 46, name_len);
    // zip64: the fields set to 0xFFFFFFFF follow in the extra field 0x0001, in this order
    for (std::size_t x = 0; x + 4 <= extra_len;) {
      const char* f = c + 46 + name_len + x;
      const auto id = le(f, 2), len = le(f + 2, 2);
      if (x + 4 + len > extra_len) damaged(path_, "bad zip extra field");
      if (id == 0x0001) {
        std::size_t k = 4;
        auto next = [&](std::uint64_t& v) {
          if (v != 0xFFFFFFFF) return;
          if (k + 8 > 4 + len) damaged(path_, "bad zip64 extra field");
          v = le(f + k, 8);
          k += 8;
        };
        next(size);
        next(comp);
        next(local);
      }
      x += 4 + len;
    }
    if (method == 0 && comp != size) damaged(path_, fmt::format("record '{}' has inconsistent sizes", name));
    const auto header = at(local, 30, "zip local header");
    if (le(header.data(), 4) != 0x04034b50) damaged(path_, fmt::format("record '{}' has a bad local header", name));
    const auto data_start = local + 30 + le(header.data() + 26, 2) + le(header.data() + 28, 2);
    const auto data = at(data_start, comp, ("record '" + name + "'").c_str());
    if (!records_.emplace(name, ZipRecord{data, crc, method != 0}).second)
      damaged(path_, fmt::format("record '{}' appears twice", name));
    pos += 46 + name_len + extra_len + comment_len;
  }
}

// ---------------------------------------------------------------- writer
void ZipWriter::put(std::string_view s) {
  out->write(s.data(), s.size());
  offset += s.size();
}

std::string ZipWriter::le_bytes(std::uint64_t v, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  return s;
}

void ZipWriter::add(const std::string& name, std::string_view data) {
  Entry e{name, crc32(data), data.size(), offset};
  std::uint64_t pad = (64 - (offset + 30 + name.size()) % 64) % 64;
  if (pad != 0 && pad < 4) pad += 64;
  std::string h = le_bytes(0x04034b50, 4) + le_bytes(20, 2) + le_bytes(0, 2) + le_bytes(0, 2) + le_bytes(0, 2) +
                  le_bytes(0x21, 2) /*date 1980-01-01*/ + le_bytes(e.crc, 4) + le_bytes(e.size, 4) +
                  le_bytes(e.size, 4) + le_bytes(name.size(), 2) + le_bytes(pad, 2) + name;
  if (pad) h += le_bytes(0x4246, 2) + le_bytes(pad - 4, 2) + std::string(pad - 4, 'Z');
  put(h);
  put(data);
  entries.push_back(std::move(e));
}

void ZipWriter::finish() {
  const std::uint64_t dir_offset = offset;
  for (const auto& e : entries) {
    put(le_bytes(0x02014b50, 4) + le_bytes(20, 2) + le_bytes(20, 2) + le_bytes(0, 2) + le_bytes(0, 2) +
        le_bytes(0, 2) + le_bytes(0x21, 2) + le_bytes(e.crc, 4) + le_bytes(e.size, 4) + le_bytes(e.size, 4) +
        le_bytes(e.name.size(), 2) + le_bytes(0, 2) + le_bytes(0, 2) + le_bytes(0, 2) + le_bytes(0, 2) +
        le_bytes(0, 4) + le_bytes(e.offset, 4) + e.name);
  }
  const std::uint64_t dir_size = offset - dir_offset;
  put(le_bytes(0x06054b50, 4) + le_bytes(0, 2) + le_bytes(0, 2) + le_bytes(entries.size(), 2) +
      le_bytes(entries.size(), 2) + le_bytes(dir_size, 4) + le_bytes(dir_offset, 4) + le_bytes(0, 2));
  if (owned) owned->finish();
}

}  // namespace savepoint::pytorch::internal
