// Parts: splitting a tensor payload for an incremental save, and assembling a split key.
#include "parts.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/format/safetensors.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

namespace savepoint::safetensors {

std::string part_file_name(const std::string& file, std::size_t index) {
  const auto dot = file.rfind('.');  // before the extension: "rng.rank1.safetensors" -> "rng.rank1.part00000..."
  const std::size_t stem = dot == std::string::npos ? file.size() : dot;
  return fmt::format("{}.part{:05}{}", file.substr(0, stem), index, file.substr(stem));
}

namespace {
// A tensor without host bytes (a device or strided tensor) copied to the host once, for all
// of its segments.
class WholeCopy {
 public:
  explicit WholeCopy(TensorData t) : tensor_(std::move(t)) {}
  const char* bytes() {
    std::call_once(once_, [this] {
      memory_.reset(new char[tensor_.spec.nbytes]);
      tensor_.copy_to_host(memory_.get());
    });
    return memory_.get();
  }

 private:
  TensorData tensor_;
  std::once_flag once_;
  std::unique_ptr<char[]> memory_;
};

TensorData segment_of(const TensorData& t, std::int64_t first_row, std::int64_t rows, std::uint64_t row_bytes,
                      const std::shared_ptr<WholeCopy>& whole) {
  TensorData s = t;
  s.spec.shape[0] = rows;
  s.spec.nbytes = static_cast<std::uint64_t>(rows) * row_bytes;
  const std::uint64_t offset = static_cast<std::uint64_t>(first_row) * row_bytes;
  if (t.host_bytes) {
    s.host_bytes = static_cast<const char*>(t.host_bytes) + offset;
    s.copy_to_host = [src = s.host_bytes, n = s.spec.nbytes](void* dst) { std::memcpy(dst, src, n); };
  } else {
    s.copy_to_host = [whole, offset, n = s.spec.nbytes](void* dst) { std::memcpy(dst, whole->bytes() + offset, n); };
  }
  return s;
}
}  // namespace

std::vector<Payload> split_into_parts(const Payload& payload, std::uint64_t part_bytes) {
  part_bytes = std::max<std::uint64_t>(part_bytes, 1);
  std::vector<Payload> parts;
  std::vector<TensorData> group;
  std::uint64_t group_bytes = 0;
  const auto add_part = [&](std::vector<TensorData> tensors, std::map<std::string, std::string> extra) {
    std::map<std::string, std::string> metadata = parts.empty() ? payload.metadata() : std::map<std::string, std::string>{};
    metadata[kPartMetadata] = std::to_string(parts.size());
    for (auto& [k, v] : extra) metadata[k] = v;
    parts.push_back(Payload::tensors(std::move(tensors), std::move(metadata)));
  };
  const auto flush = [&] {
    if (group.empty()) return;
    add_part(std::move(group), {});
    group.clear();
    group_bytes = 0;
  };
  for (const auto& t : payload.tensor_data()) {
    const auto& shape = t.spec.shape;
    if (t.spec.nbytes > part_bytes && !shape.empty() && shape[0] >= 2) {
      flush();
      const std::int64_t rows = shape[0];
      const std::uint64_t row_bytes = t.spec.nbytes / static_cast<std::uint64_t>(rows);
      const std::int64_t per_part = static_cast<std::int64_t>(std::max<std::uint64_t>(1, part_bytes / std::max<std::uint64_t>(row_bytes, 1)));
      const auto whole = t.host_bytes ? nullptr : std::make_shared<WholeCopy>(t);
      for (std::int64_t first = 0; first < rows; first += per_part) {
        const std::int64_t n = std::min(per_part, rows - first);
        add_part({segment_of(t, first, n, row_bytes, whole)}, {{kSegmentMetadata, fmt::format("{}/{}", first, rows)}});
      }
      continue;
    }
    if (!group.empty() && group_bytes + t.spec.nbytes > part_bytes) flush();
    group.push_back(t);
    group_bytes += t.spec.nbytes;
  }
  if (!group.empty() || parts.empty()) add_part(std::move(group), {});
  return parts;
}

namespace {
struct Piece {  // bytes of one tensor (or of one segment of it) inside a part
  std::size_t part;
  std::string_view bytes;
};
struct Assembled {
  TensorSpec spec;
  std::int64_t rows_seen = 0;  // a segmented tensor: rows gathered so far
  std::int64_t rows_total = -1;
  std::vector<Piece> pieces;
};

bool parse_segment(const std::string& text, std::int64_t& first, std::int64_t& total) {
  const auto slash = text.find('/');
  if (slash == std::string::npos) return false;
  char* end = nullptr;
  first = std::strtoll(text.c_str(), &end, 10);
  if (end != text.c_str() + slash) return false;
  total = std::strtoll(text.c_str() + slash + 1, &end, 10);
  return *end == '\0' && first >= 0 && total > first;
}
}  // namespace

std::shared_ptr<const FileContents> assemble_parts(const std::vector<std::shared_ptr<const FileContents>>& parts,
                                                   const std::string& key) {
  if (parts.empty()) throw UsageError(fmt::format("savepoint: key '{}' has no parts to assemble", key));
  std::vector<Assembled> tensors;
  std::map<std::string, std::string> metadata;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const auto& file = parts[i]->path();
    const auto bad = [&](const std::string& why) {
      throw CorruptCheckpointError(fmt::format("part {} of key '{}' ('{}') {}", i, key, file.string(), why), file, key);
    };
    const Header header = parse(parts[i]->bytes(), file);
    const auto index = header.metadata.find(kPartMetadata);
    if (index == header.metadata.end() || index->second != std::to_string(i))
      bad(fmt::format("does not say it is part {} (its \"{}\" metadata)", i, kPartMetadata));
    if (i == 0) {
      metadata = header.metadata;
      metadata.erase(kPartMetadata);
      metadata.erase(kSegmentMetadata);
    }
    const auto data = [&](const TensorInfo& info) { return parts[i]->bytes().substr(header.data_start + info.begin, info.nbytes()); };
    // Tensors in file order within a part; the part order is the payload's.
    const auto segment = header.metadata.find(kSegmentMetadata);
    if (segment == header.metadata.end()) {
      if (!tensors.empty() && tensors.back().rows_total >= 0 && tensors.back().rows_seen != tensors.back().rows_total)
        bad(fmt::format("follows an unfinished segmented tensor '{}'", tensors.back().spec.name));
      for (const auto& info : header.tensors)
        tensors.push_back({{info.name, info.dtype, info.shape, info.nbytes()}, 0, -1, {{i, data(info)}}});
      continue;
    }
    std::int64_t first = 0, total = 0;
    if (!parse_segment(segment->second, first, total)) bad(fmt::format("has a malformed \"{}\" metadata", kSegmentMetadata));
    if (header.tensors.size() != 1 || header.tensors[0].shape.empty())
      bad("is a segment but does not hold exactly one tensor with rows");
    const TensorInfo& info = header.tensors[0];
    if (first == 0) {
      if (!tensors.empty() && tensors.back().rows_total >= 0 && tensors.back().rows_seen != tensors.back().rows_total)
        bad(fmt::format("starts a tensor before segmented tensor '{}' is complete", tensors.back().spec.name));
      tensors.push_back({{info.name, info.dtype, info.shape, 0}, 0, total, {}});
      tensors.back().spec.shape[0] = total;
    }
    if (tensors.empty())  // a segment after row 0 opens the key
      bad(fmt::format("holds rows {} to {} of tensor '{}', but no part before it starts that tensor", first,
                      first + info.shape[0], info.name));
    Assembled& t = tensors.back();
    std::vector<std::int64_t> trailing(info.shape.begin() + 1, info.shape.end());
    std::vector<std::int64_t> expected(t.spec.shape.begin() + 1, t.spec.shape.end());
    if (t.rows_total != total || t.spec.name != info.name || t.spec.dtype != info.dtype || trailing != expected ||
        t.rows_seen != first || first + info.shape[0] > total)
      bad(fmt::format("holds rows {} to {} of tensor '{}', which do not continue the parts before it", first,
                      first + info.shape[0], info.name));
    t.rows_seen += info.shape[0];
    t.spec.nbytes += info.nbytes();
    t.pieces.push_back({i, data(info)});
  }
  if (!tensors.empty() && tensors.back().rows_total >= 0 && tensors.back().rows_seen != tensors.back().rows_total) {
    const auto& file = parts.back()->path();
    throw CorruptCheckpointError(fmt::format("key '{}': tensor '{}' ends at row {} of {} in its last part ('{}')", key,
                                             tensors.back().spec.name, tensors.back().rows_seen,
                                             tensors.back().rows_total, file.string()),
                                 file, key);
  }
  // The unsplit file: the same header its writer would build, then each tensor's bytes at its offset.
  std::vector<TensorSpec> specs;
  std::map<std::string, const Assembled*> by_name;
  for (const auto& t : tensors) {
    specs.push_back(t.spec);
    if (!by_name.emplace(t.spec.name, &t).second) {
      const auto& file = parts.front()->path();
      throw CorruptCheckpointError(fmt::format("key '{}': tensor '{}' appears in two parts", key, t.spec.name), file, key);
    }
  }
  const std::string header = build_header(specs, metadata);
  std::uint64_t total = header.size();
  for (const auto& s : specs) total += s.nbytes;
  const std::size_t size = static_cast<std::size_t>(total);
  void* memory = std::aligned_alloc(64, std::max<std::size_t>((size + 63) / 64 * 64, 64));
  if (!memory) throw std::bad_alloc();
  std::shared_ptr<void> owner(memory, std::free);
  char* out = static_cast<char*>(memory);
  std::memcpy(out, header.data(), header.size());
  std::uint64_t at = header.size();
  for (const auto& s : specs)
    for (const auto& piece : by_name.at(s.name)->pieces) {
      std::memcpy(out + at, piece.bytes.data(), piece.bytes.size());
      at += piece.bytes.size();
    }
  return std::make_shared<const detail::MappedFile>(parts.front()->path(), std::string_view(out, size), owner,
                                                    /*fresh=*/true);
}

std::shared_ptr<const FileContents> key_contents(const Checkpoint& checkpoint, const FileRecord& first,
                                                 const OpenVerified& open) {
  if (first.part < 0) return open(first);
  std::vector<std::shared_ptr<const FileContents>> parts;
  for (const FileRecord* part : checkpoint.parts_of(first)) parts.push_back(open(*part));
  return assemble_parts(parts, first.key);
}

}  // namespace savepoint::safetensors
