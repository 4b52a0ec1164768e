#include "sharded.hpp"


#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in fmt/format.h before fmt 11)

#include <algorithm>
#include <cstring>
#include <map>

namespace savepoint::engine {

using nlohmann::json;
namespace st = safetensors;

bool is_sharded(const Recoverable& r) {
  const bool hook = r.hook_name() == kShardedTensorsHook;
  const Sharing sharing = r.options().sharing();
  if (sharing == Sharing::sharded && !hook) {
    throw UsageError(fmt::format("savepoint: key '{}' is registered as sharded, but only a savepoint::ShardedTensors "
                                 "can be (its hook is '{}')",
                                 r.key(), r.hook_name()));
  }
  if (sharing == Sharing::per_rank && hook) {
    throw UsageError(fmt::format("savepoint: key '{}' is a savepoint::ShardedTensors registered per-rank; register "
                                 "it with savepoint::sharded() (or no sharing option)",
                                 r.key()));
  }
  return hook;
}

bool has_sharded(const std::vector<Recoverable>& recoverables) {
  for (const auto& r : recoverables)
    if (is_sharded(r)) return true;
  return false;
}

// ---------------------------------------------------------------- saving
namespace {
// The "tensors" object of the record: per tensor its dtype, global shape, offset and rows,
// from the specs and the hook's "savepoint.shards" metadata.
json tensor_layout(const Payload& payload, const std::string& key) {
  const auto it = payload.metadata().find("savepoint.shards");
  if (it == payload.metadata().end())
    throw UsageError(fmt::format("savepoint: sharded key '{}': the payload has no \"savepoint.shards\" metadata", key));
  const json given = json::parse(it->second);
  json out = json::object();
  for (const auto& t : payload.tensor_data()) {
    const auto& spec = t.spec;
    if (!given.contains(spec.name) || spec.shape.empty())
      throw UsageError(fmt::format("savepoint: sharded key '{}': tensor '{}' has no global shape or no dim 0", key,
                                   spec.name));
    const json& g = given.at(spec.name);
    const auto global = g.at("global_shape").get<std::vector<std::int64_t>>();
    const auto offset = g.at("offset").get<std::int64_t>();
    if (global.size() != spec.shape.size() || offset < 0 || offset + spec.shape[0] > global[0] ||
        !std::equal(global.begin() + 1, global.end(), spec.shape.begin() + 1)) {
      throw UsageError(fmt::format("savepoint: sharded key '{}': tensor '{}' of shape [{}] cannot be rows [{}, {}) of "
                                   "a tensor of shape [{}]",
                                   key, spec.name, fmt::join(spec.shape, ", "), offset, offset + spec.shape[0],
                                   fmt::join(global, ", ")));
    }
    out[spec.name] = {{"dtype", st::dtype_name(spec.dtype)},
                      {"global_shape", global},
                      {"offset", offset},
                      {"rows", spec.shape[0]}};
  }
  return out;
}
}  // namespace

FileWrite plan_sharded_write(const fs::path& file, const Recoverable& r, Payload payload, StagingBuffers* staging,
                             std::shared_ptr<json>& shard, OverlappedSnapshot* overlapped, detail::WriteMode mode,
                             bool* needs_sync) {
  if (payload.kind() != Payload::Kind::tensors)
    throw UsageError(fmt::format("savepoint: the save hook of sharded key '{}' must return tensors", r.key()));
  json layout = tensor_layout(payload, r.key());
  auto blocks = std::make_shared<safetensors::BlockDigests>();
  blocks->block_bytes = kShardBlockBytes;
  FileWrite write =
      plan_write(file, r.key(), r.hook_name(), std::move(payload), staging, overlapped, mode, blocks, needs_sync);
  shard = std::make_shared<json>();
  return [write = std::move(write), blocks, layout = std::move(layout), out = shard] {
    const auto digest = write();
    json hashes = json::array();
    for (const auto h : blocks->blocks) hashes.push_back(detail::to_hex(h));
    *out = {{"header_bytes", blocks->header_bytes},
            {"header_xxh3", detail::to_hex(blocks->header_xxh3)},
            {"block_bytes", blocks->block_bytes},
            {"block_xxh3", std::move(hashes)},
            {"tensors", layout}};
    return digest;
  };
}

// ---------------------------------------------------------------- loading
namespace {
class FileShardReader : public ShardReader {
 public:
  FileShardReader(const Checkpoint& checkpoint, const std::string& key, int rank, const LoadSource& source);
  const std::vector<ShardedTensorInfo>& tensors() const override { return tensors_; }
  int rank() const override { return rank_; }
  void read_rows(const std::string& tensor, std::int64_t row_begin, std::int64_t row_end, void* dst) const override;

 private:
  struct File {
    FileRecord record;
    fs::path path;
    std::optional<detail::PositionalReader> reader;  // opened once the layout checks out
    std::uint64_t header_bytes = 0, header_xxh3 = 0, block_bytes = 0;
    std::vector<std::uint64_t> blocks;
    mutable std::optional<st::Header> header;  // read and verified on first use
  };
  struct Piece {  // rows [offset, offset + rows) of a tensor, in one file
    std::size_t file;
    std::int64_t offset, rows;
  };
  [[noreturn]] void corrupt(const File& f, const std::string& why) const {
    throw CorruptCheckpointError(fmt::format("sharded key '{}': '{}' {}", key_, f.path.string(), why), f.path, key_);
  }
  void pread_all(const File& f, std::uint64_t offset, std::uint64_t size, char* out) const;
  const st::Header& header(const File& f) const;
  void read_verified(const File& f, std::uint64_t begin, std::uint64_t end, char* out) const;

  std::string key_;
  int rank_;
  std::vector<File> files_;
  std::vector<ShardedTensorInfo> tensors_;
  std::map<std::string, std::vector<Piece>> pieces_;
  // The last block verified, so that two tensors sharing a block read it once.
  mutable std::size_t cached_file_ = SIZE_MAX;
  mutable std::uint64_t cached_block_ = 0;
  mutable std::vector<char> cache_;
};

FileShardReader::FileShardReader(const Checkpoint& checkpoint, const std::string& key, int rank,
                                 const LoadSource& source)
    : key_(key), rank_(rank) {
  for (const auto& rec : checkpoint.files) {
    if (rec.key != key) continue;
    File f;
    f.record = rec;
    f.path = checkpoint.path / rec.file;
    files_.push_back(std::move(f));
  }
  std::sort(files_.begin(), files_.end(), [](const File& a, const File& b) { return a.record.rank < b.record.rank; });
  std::map<std::string, std::size_t> index;  // tensor name -> tensors_
  for (std::size_t i = 0; i < files_.size(); ++i) {
    File& f = files_[i];
    const json& s = f.record.shard;
    try {
      if (!s.is_object()) corrupt(f, "has no \"shard\" record in meta.json (it was not saved as a sharded key)");
      f.header_bytes = s.at("header_bytes").get<std::uint64_t>();
      f.block_bytes = s.at("block_bytes").get<std::uint64_t>();
      if (!detail::parse_hex(s.at("header_xxh3").get<std::string>(), f.header_xxh3)) corrupt(f, "malformed header_xxh3");
      for (const auto& h : s.at("block_xxh3")) {
        std::uint64_t v = 0;
        if (!detail::parse_hex(h.get<std::string>(), v)) corrupt(f, "malformed block_xxh3");
        f.blocks.push_back(v);
      }
      if (f.block_bytes == 0 || f.header_bytes < 8 || f.header_bytes > f.record.bytes ||
          f.blocks.size() != (f.record.bytes - f.header_bytes + f.block_bytes - 1) / f.block_bytes)
        corrupt(f, "has a shard record whose sizes do not add up");
      for (const auto& [name, t] : s.at("tensors").items()) {
        const auto dtype = st::parse_dtype(t.at("dtype").get<std::string>());
        auto global = t.at("global_shape").get<std::vector<std::int64_t>>();
        const auto offset = t.at("offset").get<std::int64_t>();
        const auto rows = t.at("rows").get<std::int64_t>();
        if (!dtype || global.empty() || offset < 0 || rows < 0 || offset + rows > global[0])
          corrupt(f, fmt::format("records an impossible layout for tensor '{}'", name));
        const auto [it, added] = index.emplace(name, tensors_.size());
        if (added) tensors_.push_back({name, *dtype, global});
        const ShardedTensorInfo& info = tensors_[it->second];
        if (info.dtype != *dtype || info.global_shape != global)
          corrupt(f, fmt::format("records tensor '{}' with another dtype or global shape than rank 0's file", name));
        pieces_[name].push_back({i, offset, rows});
      }
    } catch (const json::exception& e) {
      corrupt(f, fmt::format("has a malformed shard record in meta.json ({})", e.what()));
    }
    f.reader = source.positional(f.record);
  }
  // Every tensor's pieces tile its dim 0 exactly: every row saved once.
  for (auto& [name, pieces] : pieces_) {
    std::sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) { return a.offset < b.offset; });
    std::int64_t next = 0;
    for (const auto& p : pieces) {
      if (p.offset != next) corrupt(files_[p.file], fmt::format("leaves a gap or overlap at row {} of tensor '{}'", next, name));
      next += p.rows;
    }
    if (next != tensors_[index.at(name)].global_shape[0] || pieces.size() != files_.size())
      corrupt(files_.front(), fmt::format("and the other files of the key do not cover tensor '{}' exactly once", name));
  }
}

void FileShardReader::pread_all(const File& f, std::uint64_t offset, std::uint64_t size, char* out) const {
  if (!f.reader->read(offset, size, out)) corrupt(f, "ends before its recorded size (truncated)");
}

const st::Header& FileShardReader::header(const File& f) const {
  if (f.header) return *f.header;
  std::string bytes(f.header_bytes, '\0');
  pread_all(f, 0, f.header_bytes, bytes.data());
  if (detail::digest_bytes(bytes).xxh3 != f.header_xxh3)
    corrupt(f, "fails the checksum of its header (damaged after it was written)");
  st::Header h = st::parse_header(bytes, f.record.bytes, f.path);
  if (h.data_start != f.header_bytes) corrupt(f, "has a header of another length than meta.json records");
  for (const auto& [name, t] : f.record.shard.at("tensors").items()) {
    const st::TensorInfo* info = h.find(name);
    std::vector<std::int64_t> shape = t.at("global_shape").get<std::vector<std::int64_t>>();
    shape[0] = t.at("rows").get<std::int64_t>();
    if (info == nullptr || st::dtype_name(info->dtype) != t.at("dtype").get<std::string>() || info->shape != shape)
      corrupt(f, fmt::format("holds tensor '{}' otherwise than meta.json records", name));
  }
  f.header = std::move(h);
  return *f.header;
}

void FileShardReader::read_verified(const File& f, std::uint64_t begin, std::uint64_t end, char* out) const {
  const std::size_t file_index = static_cast<std::size_t>(&f - files_.data());
  const std::uint64_t data = f.header_bytes, B = f.block_bytes;
  for (std::uint64_t block = (begin - data) / B; begin < end; ++block) {
    const std::uint64_t block_begin = data + block * B;
    const std::uint64_t block_end = std::min(block_begin + B, f.record.bytes);
    if (cached_file_ != file_index || cached_block_ != block) {
      cached_file_ = SIZE_MAX;
      cache_.resize(block_end - block_begin);
      pread_all(f, block_begin, cache_.size(), cache_.data());
      const auto digest = detail::digest_bytes({cache_.data(), cache_.size()}).xxh3;
      if (digest != f.blocks.at(block)) {
        corrupt(f, fmt::format("fails the checksum of block {} (bytes {}..{}): xxh3 {} but meta.json recorded {} "
                               "(damaged after it was written)",
                               block, block_begin, block_end, detail::to_hex(digest), detail::to_hex(f.blocks[block])));
      }
      cached_file_ = file_index;
      cached_block_ = block;
    }
    const std::uint64_t n = std::min(end, block_end) - begin;
    std::memcpy(out, cache_.data() + (begin - block_begin), n);
    out += n;
    begin += n;
  }
}

void FileShardReader::read_rows(const std::string& tensor, std::int64_t row_begin, std::int64_t row_end,
                                void* dst) const {
  const auto pieces = pieces_.find(tensor);
  if (pieces == pieces_.end())
    throw UsageError(fmt::format("savepoint: sharded key '{}' has no tensor '{}'", key_, tensor));
  const auto info = std::find_if(tensors_.begin(), tensors_.end(), [&](const auto& t) { return t.name == tensor; });
  if (row_begin < 0 || row_begin > row_end || row_end > info->global_shape[0]) {
    throw UsageError(fmt::format("savepoint: rows [{}, {}) of tensor '{}' (key '{}') are outside its {} rows",
                                 row_begin, row_end, tensor, key_, info->global_shape[0]));
  }
  std::uint64_t row_bytes = st::dtype_size(info->dtype);
  for (std::size_t d = 1; d < info->global_shape.size(); ++d) row_bytes *= static_cast<std::uint64_t>(info->global_shape[d]);
  char* out = static_cast<char*>(dst);
  for (const Piece& p : pieces->second) {
    const std::int64_t lo = std::max(row_begin, p.offset), hi = std::min(row_end, p.offset + p.rows);
    if (lo >= hi || row_bytes == 0) continue;
    const File& f = files_[p.file];
    const st::TensorInfo* t = header(f).find(tensor);
    const std::uint64_t start = f.header_bytes + t->begin + static_cast<std::uint64_t>(lo - p.offset) * row_bytes;
    read_verified(f, start, start + static_cast<std::uint64_t>(hi - lo) * row_bytes,
                  out + static_cast<std::uint64_t>(lo - row_begin) * row_bytes);
  }
}
}  // namespace

std::shared_ptr<const ShardReader> open_shards(const Checkpoint& checkpoint, const std::string& key, int rank,
                                               const LoadSource& source) {
  return std::make_shared<const FileShardReader>(checkpoint, key, rank, source);
}

}  // namespace savepoint::engine
