// DCP directories: the reader (chunks checked against their tensors and files at open, regions
// read from the overlapping chunks only) and the writer (one file per rank, .metadata last).
#include "pickle.hpp"
#include "pytorch_internal.hpp"
#include "zip.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/format/dcp.hpp>
#include <savepoint/format/pytorch.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

namespace savepoint::dcp {

namespace fs = std::filesystem;
namespace st = safetensors;

namespace {

constexpr std::uint64_t kMaxMetadataBytes = 1ull << 31;

[[noreturn]] void corrupt(const fs::path& path, const std::string& key, const std::string& why) {
  detail::throw_corrupt(fmt::format("DCP checkpoint: '{}', key '{}': {}", path.string(), key, why), path, key);
}

std::uint64_t volume(const std::vector<std::int64_t>& sizes) {
  std::uint64_t n = 1;
  for (const auto s : sizes) n *= static_cast<std::uint64_t>(s);
  return n;
}

bool overlaps(const Chunk& a, const Chunk& b) {
  for (std::size_t d = 0; d < a.offsets.size(); ++d)
    if (a.offsets[d] + a.sizes[d] <= b.offsets[d] || b.offsets[d] + b.sizes[d] <= a.offsets[d]) return false;
  return true;
}

// Copies the box `count` (per dim) from a strided source to a strided destination (strides in
// elements), innermost runs by memcpy where both are contiguous there.
void copy_box(const char* src, const std::vector<std::int64_t>& src_strides, char* dst,
              const std::vector<std::int64_t>& dst_strides, const std::vector<std::int64_t>& count, std::size_t elem) {
  const std::size_t dims = count.size();
  if (dims == 0) {
    std::memcpy(dst, src, elem);
    return;
  }
  for (const auto c : count)
    if (c == 0) return;
  const bool run = src_strides[dims - 1] == 1 && dst_strides[dims - 1] == 1;
  const std::size_t outer_dims = run ? dims - 1 : dims;
  std::vector<std::int64_t> index(outer_dims, 0);
  while (true) {
    std::int64_t s = 0, t = 0;
    for (std::size_t d = 0; d < outer_dims; ++d) {
      s += index[d] * src_strides[d];
      t += index[d] * dst_strides[d];
    }
    if (run) std::memcpy(dst + t * static_cast<std::int64_t>(elem), src + s * static_cast<std::int64_t>(elem),
                         static_cast<std::size_t>(count[dims - 1]) * elem);
    else std::memcpy(dst + t * static_cast<std::int64_t>(elem), src + s * static_cast<std::int64_t>(elem), elem);
    std::size_t d = outer_dims;
    while (d > 0) {
      --d;
      if (++index[d] < count[d]) break;
      index[d] = 0;
      if (d == 0) return;
    }
    if (outer_dims == 0) return;
  }
}

std::vector<std::int64_t> contiguous_strides(const std::vector<std::int64_t>& sizes) {
  std::vector<std::int64_t> strides(sizes.size());
  std::int64_t n = 1;
  for (std::size_t d = sizes.size(); d-- > 0;) {
    strides[d] = n;
    n *= sizes[d];
  }
  return strides;
}

// ---------------------------------------------------------------- values (BYTE_IO)
// A value's pickle as plain data: no class is admitted but the containers' own.
class ValuePolicy final : public pickle::Policy {
 public:
  explicit ValuePolicy(std::string key) : key_(std::move(key)) {}
  pickle::ValuePtr global(pickle::Machine& m, const std::string& module, const std::string& name) override {
    if (module == "collections" && name == "OrderedDict") return Policy::global(m, module, name);
    if (module == "builtins" && (name == "set" || name == "frozenset")) return Policy::global(m, module, name);
    throw FormatVersionError(fmt::format("DCP checkpoint: '{}', key '{}': the value is an object of class '{}.{}', "
                                         "which savepoint reads only as plain data (numbers, strings, lists, dicts); "
                                         "it was not loaded (nothing is run)",
                                         m.path().string(), key_, module, name),
                             m.path(), key_);
  }
  pickle::ValuePtr reduce(pickle::Machine& m, const pickle::ValuePtr& callable, const pickle::ValuePtr& args) override {
    if (callable->text == "collections.OrderedDict") return m.make(pickle::Value::Kind::dict);
    auto v = m.make(pickle::Value::Kind::list);  // set(list): a list
    if (!args->items.empty()) v->items = args->items[0]->items;
    return v;
  }
  void build(pickle::Machine&, const pickle::ValuePtr&, const pickle::ValuePtr&) override {}

 private:
  std::string key_;
};

std::string hex(std::string_view bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (const unsigned char c : bytes) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

nlohmann::json to_json_value(const pickle::ValuePtr& v, const fs::path& path, const std::string& key, int depth) {
  using K = pickle::Value::Kind;
  if (depth > 100) corrupt(path, key, "a value nested more than 100 deep (or inside itself)");
  switch (v->kind) {
    case K::none: return nullptr;
    case K::boolean: return v->integer != 0;
    case K::integer: return v->integer;
    case K::real: return v->real;
    case K::string: return v->text;
    case K::bytes: return nlohmann::json{{"bytes", hex(v->text)}};
    case K::tuple:
    case K::list: {
      auto out = nlohmann::json::array();
      for (const auto& i : v->items) out.push_back(to_json_value(i, path, key, depth + 1));
      return out;
    }
    case K::dict: {
      auto out = nlohmann::json::object();
      for (std::size_t i = 0; i + 1 < v->items.size(); i += 2) {
        const auto& k = v->items[i];
        std::string name;
        if (k->kind == K::string) name = k->text;
        else if (k->kind == K::integer) name = std::to_string(k->integer);
        else
          throw FormatVersionError(fmt::format("DCP checkpoint: '{}', key '{}': a dict key of type {} is not plain data",
                                               path.string(), key, pickle::kind_name(k->kind)),
                                   path, key);
        out[name] = to_json_value(v->items[i + 1], path, key, depth + 1);
      }
      return out;
    }
    default:
      throw FormatVersionError(fmt::format("DCP checkpoint: '{}', key '{}': the value holds a {} '{}', not plain data",
                                           path.string(), key, pickle::kind_name(v->kind), v->text),
                               path, key);
  }
}

// The data.pkl of a torch.save stream held in `bytes`.
std::string_view data_pkl(pytorch::internal::ZipReader& zip, const fs::path& path, const std::string& key) {
  for (const auto& [name, rec] : zip.records()) {
    const auto slash = name.find('/');
    if (slash != std::string::npos && name.compare(slash, std::string::npos, "/data.pkl") == 0) {
      const auto* checked = zip.find(name);
      return checked->data;
    }
  }
  corrupt(path, key, "the stream has no data.pkl");
}


// ---------------------------------------------------------------- safetensors chunks (2.14)
constexpr const char* kHuggingFaceIndex = "model.safetensors.index.json";
constexpr const char* kShardingInfo = "DCP_SHARDING_INFO";

// The header of the safetensors blob at `offset` of `file` (2.14's safetensors chunk format
// appends one to each rank's file; the HuggingFace layout's files are one each).
st::Header blob_header(const fs::path& file, std::uint64_t offset, const std::string& key) {
  const auto status = detail::path_status(file);
  if (!status) corrupt(file, key, "the file is missing");
  const auto reader = detail::PositionalReader::file(file);
  char prefix[8];
  if (status->size < offset + 8 || !reader.read(offset, 8, prefix))
    corrupt(file, key, "the file ends before its safetensors header");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(prefix[i]);
  if (n > st::kMaxHeaderBytes || n > status->size - offset - 8) corrupt(file, key, "its safetensors header is cut");
  std::string bytes(8 + n, '\0');
  if (!reader.read(offset, bytes.size(), bytes.data())) corrupt(file, key, "its safetensors header is cut");
  auto header = st::parse_header(bytes, status->size - offset, file);
  header.data_start += offset;
  return header;
}

// Where each tensor chunk of a file whose bytes are not torch.save streams really lies: its
// _StorageInfo points at the blob's start; the blob's header names the tensor by key, its
// DCP_SHARDING_INFO its offsets.
void locate_safetensors_chunks(const fs::path& dir, Metadata& m) {
  std::map<std::pair<std::string, std::uint64_t>, st::Header> blobs;
  for (auto& item : m.items) {
    if (!item.tensor) continue;
    for (auto& c : item.chunks) {
      // A torch.save stream is always longer than the tensor's bytes (its zip headers): a chunk
      // exactly that long is 2.14's raw format, and only those cost a read (of their blob's
      // header, once per blob).
      if (!c.transforms.empty() || c.length != volume(c.sizes) * st::dtype_size(item.dtype)) continue;
      auto found = blobs.find({c.file, c.offset});
      if (found == blobs.end()) found = blobs.emplace(std::make_pair(c.file, c.offset), blob_header(dir / c.file, c.offset, item.key)).first;
      const st::Header& h = found->second;
      const st::TensorInfo* t = h.find(item.key);
      if (!t) corrupt(dir / c.file, item.key, "neither a torch.save stream nor a tensor of the safetensors blob there");
      if (t->dtype != item.dtype || t->shape != c.sizes)
        corrupt(dir / c.file, item.key, "its safetensors tensor differs from the metadata's chunk");
      c.offset = h.data_start + t->begin;
      c.length = t->nbytes();
      c.raw = true;
    }
  }
}

bool has_safetensors_files(const fs::path& dir) {
  for (const auto& entry : detail::list_directory(dir))
    if (entry.name.size() > 12 && entry.name.compare(entry.name.size() - 12, 12, ".safetensors") == 0) return true;
  return false;
}

// The HuggingFace layout: every top-level *.safetensors file's tensors, each a chunk at the
// offsets DCP_SHARDING_INFO gives (zeros without it), the global size the chunks' extent.
Metadata huggingface_metadata(const fs::path& dir) {
  Metadata m;
  m.layout = "huggingface";
  std::map<std::string, Item> items;
  for (const auto& entry : detail::list_directory(dir)) {
    if (entry.status.type != detail::FileType::regular || entry.name.size() < 12 ||
        entry.name.compare(entry.name.size() - 12, 12, ".safetensors") != 0)
      continue;
    const auto h = blob_header(dir / entry.name, 0, "");
    nlohmann::json sharding = nlohmann::json::object();
    if (const auto it = h.metadata.find(kShardingInfo); it != h.metadata.end()) {
      sharding = nlohmann::json::parse(it->second, nullptr, false);
      if (sharding.is_discarded() || !sharding.is_object())
        corrupt(dir / entry.name, "", "its DCP_SHARDING_INFO is not a JSON object");
    }
    for (const auto& t : h.tensors) {
      Chunk c;
      c.file = entry.name;
      c.offset = h.data_start + t.begin;
      c.length = t.nbytes();
      c.raw = true;
      c.sizes = t.shape;
      c.offsets.assign(t.shape.size(), 0);
      if (sharding.contains(t.name)) {
        const auto& saved = sharding[t.name];
        if (!saved.is_object() || !saved.contains("saved_offsets") || !saved["saved_offsets"].is_array() ||
            saved["saved_offsets"].size() != t.shape.size())
          corrupt(dir / entry.name, t.name, "its DCP_SHARDING_INFO entry has no saved_offsets of its rank");
        for (std::size_t d = 0; d < t.shape.size(); ++d) {
          if (!saved["saved_offsets"][d].is_number_unsigned())
            corrupt(dir / entry.name, t.name, "its saved_offsets are not sizes");
          c.offsets[d] = saved["saved_offsets"][d].get<std::int64_t>();
        }
      }
      auto [it, fresh] = items.try_emplace(t.name);
      Item& item = it->second;
      if (fresh) {
        item.key = t.name;
        item.dtype = t.dtype;
        item.size.assign(t.shape.size(), 0);
        item.path = nlohmann::json::array({t.name});
      } else if (item.dtype != t.dtype || item.size.size() != t.shape.size()) {
        corrupt(dir / entry.name, t.name, "its dtype or rank differs between files");
      }
      for (std::size_t d = 0; d < t.shape.size(); ++d) item.size[d] = std::max(item.size[d], c.offsets[d] + c.sizes[d]);
      item.chunks.push_back(std::move(c));
    }
  }
  if (items.empty()) corrupt(dir, "", "the HuggingFace layout holds no *.safetensors file at its top level");
  for (auto& [key, item] : items) m.items.push_back(std::move(item));
  return m;
}

}  // namespace

// ---------------------------------------------------------------- reader
bool is_dcp_directory(const fs::path& dir) {
  for (const char* marker : {kMetadataFile, kHuggingFaceIndex}) {
    const auto status = detail::path_status(dir / marker);
    if (status && status->type == detail::FileType::regular) return true;
  }
  return false;
}

Reader::Reader(fs::path dir) : dir_(std::move(dir)) {
  const fs::path meta_path = dir_ / kMetadataFile;
  if (detail::path_status(meta_path)) {
    metadata_ = parse_metadata(detail::read_small_file(meta_path, kMaxMetadataBytes), meta_path);
    locate_safetensors_chunks(dir_, metadata_);
  } else if (detail::path_status(dir_ / kHuggingFaceIndex) || has_safetensors_files(dir_)) {
    metadata_ = huggingface_metadata(dir_);
  } else {
    throw MissingKeyError(fmt::format("'{}' is no DCP checkpoint: it has no {} file (nor {})", dir_.string(),
                                      kMetadataFile, kHuggingFaceIndex),
                          dir_);
  }
  std::map<std::string, std::uint64_t> file_sizes;
  for (const auto& item : metadata_.items) {
    for (const auto& c : item.chunks) {
      auto found = file_sizes.find(c.file);
      if (found == file_sizes.end()) {
        const auto status = detail::path_status(dir_ / c.file);
        if (!status || status->type != detail::FileType::regular) corrupt(dir_ / c.file, item.key, "the file is missing");
        found = file_sizes.emplace(c.file, status->size).first;
      }
      if (c.offset > found->second || c.length > found->second - c.offset)
        corrupt(dir_ / c.file, item.key,
                fmt::format("its chunk at bytes [{}, {}) lies past the file's end ({} bytes): truncated?", c.offset,
                            c.offset + c.length, found->second));
      if (!item.tensor) continue;
      if (c.offsets.size() != item.size.size() || c.sizes.size() != item.size.size())
        corrupt(meta_path, item.key, "a chunk's rank differs from the tensor's");
      for (std::size_t d = 0; d < item.size.size(); ++d)
        if (c.offsets[d] + c.sizes[d] > item.size[d])
          corrupt(meta_path, item.key,
                  fmt::format("the chunk at [{}] of sizes [{}] reaches past the tensor's size [{}]",
                              fmt::join(c.offsets, ", "), fmt::join(c.sizes, ", "), fmt::join(item.size, ", ")));
    }
    if (!item.tensor) continue;
    std::uint64_t covered = 0;
    for (std::size_t i = 0; i < item.chunks.size(); ++i) {
      covered += volume(item.chunks[i].sizes);
      for (std::size_t j = 0; j < i; ++j)
        if (volume(item.chunks[i].sizes) && volume(item.chunks[j].sizes) && overlaps(item.chunks[i], item.chunks[j]))
          corrupt(meta_path, item.key,
                  fmt::format("the chunks at [{}] and [{}] overlap", fmt::join(item.chunks[j].offsets, ", "),
                              fmt::join(item.chunks[i].offsets, ", ")));
    }
    if (covered != item.numel())
      corrupt(meta_path, item.key,
              fmt::format("its chunks cover {} of its {} elements: a chunk is missing", covered, item.numel()));
  }
}

const Item& Reader::item(std::string_view key) const {
  if (const Item* i = metadata_.find(key)) return *i;
  throw MissingKeyError(fmt::format("DCP checkpoint '{}' has no key '{}'", dir_.string(), key), dir_, std::string(key));
}

std::string Reader::read_chunk(const Item& item, const Chunk& chunk) const {
  if (!chunk.transforms.empty())
    throw FormatVersionError(fmt::format("DCP checkpoint: '{}', key '{}': its chunk passes through the stream "
                                         "transform(s) {} (a StorageWriter extension), which savepoint does not read; "
                                         "save without _extensions",
                                         (dir_ / chunk.file).string(), item.key, fmt::join(chunk.transforms, ", ")),
                             dir_ / chunk.file, item.key);
  std::string bytes(chunk.length, '\0');
  const auto reader = detail::PositionalReader::file(dir_ / chunk.file);
  if (!reader.read(chunk.offset, chunk.length, bytes.data()))
    corrupt(dir_ / chunk.file, item.key, "the file ends inside the chunk (truncated)");
  return bytes;
}

void Reader::read(const Item& item, const std::vector<std::int64_t>& offsets, const std::vector<std::int64_t>& sizes,
                  void* dst) const {
  if (!item.tensor) detail::throw_usage(fmt::format("savepoint: DCP key '{}' is a value, not a tensor", item.key));
  if (offsets.size() != item.size.size() || sizes.size() != item.size.size())
    detail::throw_usage(fmt::format("savepoint: DCP key '{}' has {} dims; a region of {} was asked for", item.key,
                                    item.size.size(), sizes.size()));
  for (std::size_t d = 0; d < sizes.size(); ++d)
    if (offsets[d] < 0 || sizes[d] < 0 || offsets[d] + sizes[d] > item.size[d])
      detail::throw_usage(fmt::format("savepoint: the region [{}] + [{}] lies outside DCP key '{}' of size [{}]",
                                      fmt::join(offsets, ", "), fmt::join(sizes, ", "), item.key,
                                      fmt::join(item.size, ", ")));
  const auto elem = st::dtype_size(item.dtype);
  const auto dst_strides = contiguous_strides(sizes);
  for (const auto& c : item.chunks) {
    std::vector<std::int64_t> lo(sizes.size()), count(sizes.size());
    bool empty = false;
    for (std::size_t d = 0; d < sizes.size(); ++d) {
      lo[d] = std::max(offsets[d], c.offsets[d]);
      const auto hi = std::min(offsets[d] + sizes[d], c.offsets[d] + c.sizes[d]);
      count[d] = hi - lo[d];
      empty = empty || count[d] <= 0;
    }
    if (empty && !sizes.empty()) continue;
    const auto bytes = read_chunk(item, c);
    const fs::path file = dir_ / c.file;
    const auto elem_count = volume(c.sizes);
    if (c.raw) {  // contiguous bytes of the chunk
      if (bytes.size() != elem_count * elem) corrupt(file, item.key, "its chunk's byte count differs from its shape");
      const auto strides = contiguous_strides(c.sizes);
      std::int64_t src_at = 0, dst_at = 0;
      for (std::size_t d = 0; d < sizes.size(); ++d) {
        src_at += (lo[d] - c.offsets[d]) * strides[d];
        dst_at += (lo[d] - offsets[d]) * dst_strides[d];
      }
      copy_box(bytes.data() + src_at * static_cast<std::int64_t>(elem), strides,
               static_cast<char*>(dst) + dst_at * static_cast<std::int64_t>(elem), dst_strides, count, elem);
      continue;
    }
    pytorch::File parsed;
    try {
      parsed = pytorch::parse(bytes, file);
    } catch (const CheckpointError& e) {
      corrupt(file, item.key, fmt::format("its chunk at bytes [{}, {}) is no readable torch.save stream: {}", c.offset,
                                          c.offset + c.length, e.what()));
    }
    if (parsed.tensors.size() != 1) corrupt(file, item.key, "its chunk holds no single tensor");
    const auto& t = parsed.tensors[0];
    if (t.dtype != item.dtype || t.shape != c.sizes)
      corrupt(file, item.key,
              fmt::format("its chunk holds a {} tensor of shape [{}]; the metadata says {} [{}]", st::dtype_name(t.dtype),
                          fmt::join(t.shape, ", "), st::dtype_name(item.dtype), fmt::join(c.sizes, ", ")));
    const auto& storage = parsed.storages.at(t.storage);
    std::int64_t src_at = t.storage_offset, dst_at = 0;
    for (std::size_t d = 0; d < sizes.size(); ++d) {
      src_at += (lo[d] - c.offsets[d]) * t.strides[d];
      dst_at += (lo[d] - offsets[d]) * dst_strides[d];
    }
    copy_box(storage.bytes.data() + src_at * static_cast<std::int64_t>(elem), t.strides,
             static_cast<char*>(dst) + dst_at * static_cast<std::int64_t>(elem), dst_strides, count, elem);
  }
}

nlohmann::json Reader::value(const Item& item) const {
  if (item.tensor) detail::throw_usage(fmt::format("savepoint: DCP key '{}' is a tensor, not a value", item.key));
  const auto& chunk = item.chunks.front();
  const auto bytes = read_chunk(item, chunk);
  const fs::path file = dir_ / chunk.file;
  std::string_view pickled;
  std::unique_ptr<pytorch::internal::ZipReader> zip;
  if (pytorch::looks_like_pytorch(bytes)) {  // torch.save(value): a zip with data.pkl
    zip = std::make_unique<pytorch::internal::ZipReader>(bytes, file);
    pickled = data_pkl(*zip, file, item.key);
  } else {
    pickled = bytes;  // a bare pickle
  }
  ValuePolicy policy(item.key);
  pickle::Machine machine(pickled, policy, file, fmt::format("DCP value '{}' in", item.key));
  return to_json_value(machine.run(), file, item.key, 0);
}

void Reader::verify() const {
  for (const auto& item : metadata_.items) {
    if (!item.tensor) {
      value(item);
      continue;
    }
    if (item.numel() == 0) continue;
    std::vector<char> scratch;
    for (const auto& c : item.chunks) {  // chunks do not overlap: this region reads `c` alone
      scratch.resize(static_cast<std::size_t>(volume(c.sizes) * st::dtype_size(item.dtype)));
      read(item, c.offsets, c.sizes, scratch.data());
    }
  }
}

// ---------------------------------------------------------------- writer
namespace {
std::string pickle_value(const nlohmann::json& v, const std::string& key) {
  pickle::Writer w;
  std::function<void(const nlohmann::json&)> put = [&](const nlohmann::json& j) {
    if (j.is_null()) w.none();
    else if (j.is_boolean()) w.boolean(j.get<bool>());
    else if (j.is_number_integer()) w.integer(j.get<std::int64_t>());
    else if (j.is_number()) w.real(j.get<double>());
    else if (j.is_string()) w.string(j.get<std::string>());
    else if (j.is_array()) {
      w.empty_list();
      if (j.empty()) return;
      w.mark();
      for (const auto& i : j) put(i);
      w.appends();
    } else if (j.is_object()) {
      w.empty_dict();
      if (j.empty()) return;
      w.mark();
      for (const auto& [k, i] : j.items()) {
        w.string(k);
        put(i);
      }
      w.set_items();
    } else {
      detail::throw_usage(fmt::format("savepoint: DCP value '{}' holds JSON that pickle cannot hold", key));
    }
  };
  put(v);
  return w.stop();
}

// torch.save(tensor) of contiguous bytes: the zip stream _rebuild_tensor_v2 reads. Returns
// its length.
std::uint64_t write_tensor_stream(detail::FileWriter& out, const ChunkData& c) {
  const char* cls = pytorch::storage_class(c.dtype);
  if (!cls)
    detail::throw_usage(fmt::format("savepoint: DCP key '{}' has dtype {}, which torch.save cannot store", c.key,
                                    st::dtype_name(c.dtype)));
  pickle::Writer w;
  pytorch::internal::pickle_tensor(w, cls, "0", c.sizes);
  pytorch::internal::ZipWriter zip(out);
  zip.add("archive/data.pkl", w.stop());
  zip.add("archive/byteorder", "little");
  zip.add("archive/data/0", c.bytes);
  zip.add("archive/version", "3\n");
  zip.finish();
  return zip.offset;
}

// torch.save(value): what DCP's default planner writes for a non-tensor. Returns its length.
std::uint64_t write_value_stream(detail::FileWriter& out, const ChunkData& c) {
  pytorch::internal::ZipWriter zip(out);
  zip.add("archive/data.pkl", pickle_value(c.value, c.key));
  zip.add("archive/byteorder", "little");
  zip.add("archive/version", "3\n");
  zip.finish();
  return zip.offset;
}
}  // namespace

std::vector<Item> write_rank_file(const fs::path& dir, int rank, const std::vector<ChunkData>& chunks) {
  const std::string name = fmt::format("__{}_0.distcp", rank);
  detail::FileWriter out(dir / name);
  std::uint64_t at = 0;
  std::vector<Item> items;
  for (const auto& c : chunks) {
    Item item;
    item.key = c.key;
    item.tensor = c.tensor;
    item.path = c.path;
    Chunk chunk;
    chunk.file = name;
    chunk.offset = at;
    if (c.tensor) {
      item.dtype = c.dtype;
      item.size = c.size;
      chunk.offsets = c.offsets;
      chunk.sizes = c.sizes;
      if (volume(c.sizes) * st::dtype_size(c.dtype) != c.bytes.size())
        detail::throw_usage(fmt::format("savepoint: DCP key '{}': {} bytes for a chunk of [{}] {}", c.key,
                                        c.bytes.size(), fmt::join(c.sizes, ", "), st::dtype_name(c.dtype)));
      if (c.bytes.size() >= 0xFFFF0000u)
        detail::throw_usage(fmt::format("savepoint: DCP key '{}': a chunk of 4 GiB or more needs zip64, which the DCP "
                                        "writer does not write yet; shard it over more ranks",
                                        c.key));
      chunk.length = write_tensor_stream(out, c);
    } else {
      chunk.length = write_value_stream(out, c);
    }
    at += chunk.length;
    item.chunks.push_back(std::move(chunk));
    items.push_back(std::move(item));
  }
  out.finish();
  return items;
}

Metadata merge_items(const std::vector<std::vector<Item>>& per_rank) {
  std::map<std::string, Item> merged;
  std::map<std::string, int> first_rank;
  for (std::size_t r = 0; r < per_rank.size(); ++r)
    for (const auto& item : per_rank[r]) {
      auto [it, fresh] = merged.emplace(item.key, item);
      if (fresh) {
        first_rank[item.key] = static_cast<int>(r);
        continue;
      }
      Item& m = it->second;
      if (m.tensor != item.tensor || m.dtype != item.dtype || m.size != item.size)
        detail::throw_usage(fmt::format("savepoint: DCP key '{}' differs between rank {} and rank {} (kind, dtype or "
                                        "global size)",
                                        item.key, first_rank[item.key], r));
      if (!m.tensor) continue;  // a value is written once (rank 0's is kept)
      for (const auto& c : item.chunks) m.chunks.push_back(c);
    }
  Metadata out;
  out.version = "1.0.0";
  for (auto& [key, item] : merged) {
    if (item.tensor) {
      std::uint64_t covered = 0;
      for (std::size_t i = 0; i < item.chunks.size(); ++i) {
        covered += volume(item.chunks[i].sizes);
        for (std::size_t j = 0; j < i; ++j)
          if (volume(item.chunks[i].sizes) && overlaps(item.chunks[i], item.chunks[j]))
            detail::throw_usage(fmt::format("savepoint: DCP key '{}': two ranks save overlapping pieces (at [{}] and "
                                            "[{}])",
                                            key, fmt::join(item.chunks[j].offsets, ", "),
                                            fmt::join(item.chunks[i].offsets, ", ")));
      }
      if (covered != item.numel())
        detail::throw_usage(fmt::format("savepoint: DCP key '{}': the ranks save {} of its {} elements", key, covered,
                                        item.numel()));
    }
    out.items.push_back(std::move(item));
  }
  return out;
}

void commit(const fs::path& dir, const Metadata& metadata) {
  const fs::path tmp = dir / (std::string(kMetadataFile) + ".tmp");
  if (detail::path_status(tmp)) detail::remove_file(tmp);
  detail::write_file(tmp, write_metadata(metadata));
  detail::rename_no_replace(tmp, dir / kMetadataFile);
  detail::fsync_directory(dir);
}

nlohmann::json to_json(const std::vector<Item>& items) {
  auto out = nlohmann::json::array();
  for (const auto& i : items) {
    auto chunks = nlohmann::json::array();
    for (const auto& c : i.chunks)
      chunks.push_back({{"offsets", c.offsets}, {"sizes", c.sizes}, {"file", c.file}, {"offset", c.offset},
                        {"length", c.length}});
    out.push_back({{"key", i.key}, {"tensor", i.tensor}, {"dtype", st::dtype_name(i.dtype)}, {"size", i.size},
                   {"chunks", chunks}, {"path", i.path}});
  }
  return out;
}

std::vector<Item> items_from_json(const nlohmann::json& j) {
  std::vector<Item> out;
  for (const auto& i : j) {
    Item item;
    item.key = i.at("key").get<std::string>();
    item.tensor = i.at("tensor").get<bool>();
    item.dtype = *st::parse_dtype(i.at("dtype").get<std::string>());
    item.size = i.at("size").get<std::vector<std::int64_t>>();
    item.path = i.at("path");
    for (const auto& c : i.at("chunks")) {
      Chunk chunk;
      chunk.offsets = c.at("offsets").get<std::vector<std::int64_t>>();
      chunk.sizes = c.at("sizes").get<std::vector<std::int64_t>>();
      chunk.file = c.at("file").get<std::string>();
      chunk.offset = c.at("offset").get<std::uint64_t>();
      chunk.length = c.at("length").get<std::uint64_t>();
      item.chunks.push_back(std::move(chunk));
    }
    out.push_back(std::move(item));
  }
  return out;
}

}  // namespace savepoint::dcp
