// Checkpoint bundles: a checkpoint directory as one checksummed file, written and parsed.
// Layout: docs/format.md. Loading one runs the engine's one load (engine/bundle_loader.cpp).
#include "bundle_layout.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/errors.hpp>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstring>

namespace savepoint {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {
constexpr char kMagic[8] = {'S', 'P', 'B', 'U', 'N', 'D', 'L', '1'};
constexpr char kEndMagic[8] = {'S', 'P', 'B', 'E', 'N', 'D', '\0', '\0'};
constexpr std::uint64_t kAlign = 64;       // members start at multiples of 64 (aligned tensors when mapped)
constexpr std::uint64_t kMaxIndexBytes = std::uint64_t{16} << 20;

void put_u64(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
std::uint64_t get_u64(const char* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
std::uint64_t padded(std::uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

[[noreturn]] void damaged(const std::string& name, const std::string& why) {
  throw CorruptCheckpointError(fmt::format("checkpoint bundle '{}' is damaged: {}", name, why), fs::path(name));
}
}  // namespace

// ------------------------------------------------------------------ writing
std::uint64_t write_bundle(const Checkpoint& given, const fs::path& output) {
  if (detail::path_status(output)) {
    detail::throw_usage(fmt::format("savepoint: '{}' already exists; the bundle is not written over it", output.string()));
  }
  // What the directory holds now (a stale value is refused), with its meta.json text.
  const std::string meta_text = detail::read_small_file(given.path / detail::kMetaFileName, detail::kMaxMetaBytes);
  const Checkpoint checkpoint = detail::parse_meta(given.path, meta_text);
  if (given.sequence != 0 && checkpoint.sequence != given.sequence) {
    throw StaleCheckpointError(fmt::format("checkpoint '{}' now holds another checkpoint (sequence {}, not {})",
                                           given.path.string(), checkpoint.sequence, given.sequence),
                               given.path);
  }
  // Every member verified before a byte is written (the same check as a load).
  std::vector<std::shared_ptr<const detail::MappedFile>> files;
  for (const auto& rec : checkpoint.files) files.push_back(detail::open_verified(checkpoint, rec));

  json members = json::array();
  std::uint64_t offset = 0;  // relative to the start of the data area
  for (std::size_t i = 0; i < files.size(); ++i) {
    members.push_back({{"file", checkpoint.files[i].file}, {"offset", offset}, {"bytes", checkpoint.files[i].bytes}});
    offset = padded(offset + checkpoint.files[i].bytes);
  }
  const std::string index = json{{"meta", meta_text}, {"members", members}}.dump();
  std::string head(kMagic, sizeof kMagic);
  put_u64(head, index.size());
  head += index;
  head.append(padded(head.size()) - head.size(), '\0');  // the data area starts aligned

  std::uint64_t total = 0;
  detail::write_new_file(output, [&](detail::FileWriter& writer) {
    detail::Hasher hasher;
    auto emit = [&](std::string_view bytes) {
      writer.write(bytes);
      hasher.update(bytes.data(), bytes.size());
      total += bytes.size();
    };
    emit(head);
    const std::string zeros(kAlign, '\0');
    for (const auto& f : files) {
      emit(f->bytes());
      emit(std::string_view(zeros).substr(0, padded(f->bytes().size()) - f->bytes().size()));
    }
    std::string trailer;
    put_u64(trailer, hasher.digest());
    trailer.append(kEndMagic, sizeof kEndMagic);
    writer.write(trailer);
    total += trailer.size();
  });
  return total;
}

// ------------------------------------------------------------------ reading
std::shared_ptr<Bundle::Impl> Bundle::parse(std::string_view bytes, std::string name, std::shared_ptr<const void> owner) {
  auto impl = std::make_shared<Bundle::Impl>();
  impl->name = name;
  impl->owner = std::move(owner);
  const std::size_t size = bytes.size();
  if (size < 32) damaged(name, fmt::format("only {} bytes, shorter than any bundle (truncated?)", size));
  if (std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0) damaged(name, "it does not start with the bundle magic 'SPBUNDL1'");
  if (std::memcmp(bytes.data() + size - 8, kEndMagic, sizeof kEndMagic) != 0)
    damaged(name, "it does not end with the bundle end marker (truncated or extended?)");
  // The whole-bundle checksum first: any flipped byte is found before anything is parsed.
  const std::uint64_t recorded = get_u64(bytes.data() + size - 16);
  const std::uint64_t actual = detail::digest_bytes(bytes.substr(0, size - 16)).xxh3;
  if (recorded != actual) {
    damaged(name, fmt::format("its checksum is xxh3 {} but the bundle recorded {} (bytes changed after it was written)",
                              detail::to_hex(actual), detail::to_hex(recorded)));
  }
  const std::uint64_t index_bytes = get_u64(bytes.data() + 8);
  if (index_bytes > kMaxIndexBytes || index_bytes > size - 32) damaged(name, fmt::format("index length {} is impossible", index_bytes));
  const std::uint64_t data_start = padded(16 + index_bytes);
  const std::uint64_t data_end = size - 16;
  if (data_start > data_end) damaged(name, "the index runs into the trailer");
  json index;
  try {
    index = json::parse(bytes.substr(16, static_cast<std::size_t>(index_bytes)));
  } catch (const json::exception& e) {
    damaged(name, fmt::format("its index is not valid JSON ({})", e.what()));
  }
  if (!index.is_object() || !index.contains("meta") || !index["meta"].is_string() || !index.contains("members") ||
      !index["members"].is_array())
    damaged(name, "its index lacks 'meta' (string) or 'members' (array)");
  // meta.json as a directory's: its own checksum, format version, file records.
  impl->checkpoint = detail::parse_meta(fs::path(name), index["meta"].get<std::string>());
  impl->checkpoint.paramfiles = detail::paramfiles_of(impl->checkpoint.files, fs::path(name));

  std::uint64_t expected = 0;  // members follow each other, aligned, covering the data area
  for (const auto& m : index["members"]) {
    if (!m.is_object() || !m.contains("file") || !m["file"].is_string() || !m.contains("offset") ||
        !m["offset"].is_number_unsigned() || !m.contains("bytes") || !m["bytes"].is_number_unsigned())
      damaged(name, "a member entry lacks file, offset or bytes");
    const auto file = m["file"].get<std::string>();
    const auto offset = m["offset"].get<std::uint64_t>();
    const auto length = m["bytes"].get<std::uint64_t>();
    if (offset != expected) damaged(name, fmt::format("member '{}' starts at {} instead of {}", file, offset, expected));
    if (length > data_end - data_start || offset > data_end - data_start - length)
      damaged(name, fmt::format("member '{}' runs past the end of the bundle", file));
    if (!impl->members.emplace(file, bytes.substr(static_cast<std::size_t>(data_start + offset), static_cast<std::size_t>(length))).second)
      damaged(name, fmt::format("member '{}' appears twice", file));
    expected = padded(offset + length);
  }
  if (data_start + expected != data_end) damaged(name, "bytes after the last member are not described by the index");
  for (const auto& rec : impl->checkpoint.files) {
    const auto it = impl->members.find(rec.file);
    if (it == impl->members.end()) damaged(name, fmt::format("meta.json lists '{}' (key '{}') but the bundle lacks it", rec.file, rec.key));
    if (it->second.size() != rec.bytes || detail::digest_bytes(it->second).xxh3 != rec.xxh3)
      damaged(name, fmt::format("member '{}' (key '{}') does not match its meta.json record (size or xxh3)", rec.file, rec.key));
  }
  if (impl->members.size() != impl->checkpoint.files.size()) damaged(name, "it holds files that meta.json does not list");
  return impl;
}

Bundle Bundle::open(const fs::path& file) {
  const auto st = detail::path_status(file);
  if (!st) throw CorruptCheckpointError(fmt::format("checkpoint bundle '{}' does not exist", file.string()), file);
  if (st->type != detail::FileType::regular)
    throw CorruptCheckpointError(fmt::format("checkpoint bundle '{}' is not a regular file", file.string()), file);
  auto map = std::make_shared<const detail::MappedFile>(file);
  const std::string_view bytes = map->bytes();
  return Bundle(parse(bytes, file.string(), std::move(map)));
}

Bundle Bundle::view(std::string_view bytes, std::string name) {
  return Bundle(parse(bytes, std::move(name), nullptr));
}

const Checkpoint& Bundle::checkpoint() const noexcept { return impl_->checkpoint; }

std::string_view Bundle::file_bytes(const std::string& key) const {
  const FileRecord* rec = impl_->checkpoint.file(key);
  if (!rec) {
    throw MissingKeyError(fmt::format("checkpoint bundle '{}' has no key '{}'", impl_->name, key), fs::path(impl_->name),
                          key);
  }
  return impl_->members.at(rec->file);
}

}  // namespace savepoint
