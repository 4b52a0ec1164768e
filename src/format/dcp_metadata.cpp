// DCP's .metadata: the pickle of torch.distributed.checkpoint's Metadata, read by a policy that
// admits DCP's own classes, torch.Size and the dtypes (nothing else: an unexpected class is
// damage, never code), and written with the same classes for Python's pickle.load.
#include "pickle.hpp"

#include <savepoint/errors.hpp>
#include <savepoint/format/dcp.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <map>
#include <set>

namespace savepoint::dcp {

namespace fs = std::filesystem;
using pickle::Machine;
using pickle::Value;
using pickle::ValuePtr;

namespace {

constexpr const char* kMetadataModule = "torch.distributed.checkpoint.metadata";
constexpr const char* kFilesystemModule = "torch.distributed.checkpoint.filesystem";

struct DTypeName {
  DType dtype;
  const char* name;
};
constexpr DTypeName kDTypes[] = {
    {DType::F32, "float32"},   {DType::F64, "float64"},     {DType::F16, "float16"},   {DType::BF16, "bfloat16"},
    {DType::I64, "int64"},     {DType::I32, "int32"},       {DType::I16, "int16"},     {DType::I8, "int8"},
    {DType::U8, "uint8"},      {DType::BOOL, "bool"},       {DType::C64, "complex64"}, {DType::U16, "uint16"},
    {DType::U32, "uint32"},    {DType::U64, "uint64"},      {DType::F8_E5M2, "float8_e5m2"},
    {DType::F8_E4M3, "float8_e4m3fn"},
};

class MetadataPolicy final : public pickle::Policy {
 public:
  ValuePtr global(Machine& m, const std::string& module, const std::string& name) override {
    const bool ours = (module == kMetadataModule &&
                       (name == "Metadata" || name == "TensorStorageMetadata" || name == "BytesStorageMetadata" ||
                        name == "ChunkStorageMetadata" || name == "TensorProperties" || name == "MetadataIndex" ||
                        name == "StorageMeta" || name == "_MEM_FORMAT_ENCODING")) ||
                      (module == kFilesystemModule && name == "_StorageInfo");
    bool torch_global = module == "torch" && (name == "Size" || name == "strided" || name == "sparse_coo" ||
                                              name == "contiguous_format" || name == "channels_last" ||
                                              name == "preserve_format");
    for (const auto& d : kDTypes) torch_global = torch_global || (module == "torch" && name == d.name);
    // StorageMeta.checkpoint_id is the path dcp.save was given: a str or a pathlib path.
    const bool helper = (module == "torch.serialization" && name == "_get_layout") ||
                        (module == "collections" && name == "OrderedDict") ||
                        ((module == "pathlib" || module == "pathlib._local") &&
                         (name == "PosixPath" || name == "PurePosixPath" || name == "WindowsPath" ||
                          name == "PureWindowsPath"));
    if (!ours && !torch_global && !helper)
      m.damaged(fmt::format("it names the class '{}.{}', which DCP's metadata does not hold", module, name));
    return Policy::global(m, module, name);
  }
  ValuePtr reduce(Machine& m, const ValuePtr& callable, const ValuePtr& args) override {
    const std::string fn = callable->kind == Value::Kind::global ? callable->text : "";
    if (fn == "torch.Size") {  // torch.Size((10, 3)): the tuple itself
      if (args->items.size() != 1) m.damaged("torch.Size with unexpected arguments");
      return args->items[0];
    }
    if (fn == "collections.OrderedDict") return m.make(Value::Kind::dict);
    if (fn == "torch.serialization._get_layout") return args->items.empty() ? m.make(Value::Kind::none) : args->items[0];
    if (fn.empty()) m.damaged("a call of something that is not a class");
    return Policy::reduce(m, callable, args);
  }
  void build(Machine& m, const ValuePtr& object, const ValuePtr& state) override {
    if (object->kind == Value::Kind::dict) return;  // OrderedDict's state
    Policy::build(m, object, state);
  }
};

[[noreturn]] void bad(const fs::path& path, const std::string& why) {
  detail::throw_corrupt(fmt::format("DCP metadata '{}' is damaged: {}", path.string(), why), path);
}

bool is_object(const ValuePtr& v, const char* module, const char* name) {
  return v && v->kind == Value::Kind::object && v->text == fmt::format("{}.{}", module, name);
}

// A dataclass's field: from its BUILD state (a dict, or (None, slots dict) for slotted ones).
ValuePtr field(const ValuePtr& object, const char* name) {
  if (!object->state) return nullptr;
  if (object->state->kind == Value::Kind::dict) return object->state->get(name);
  if (object->state->kind == Value::Kind::tuple && object->state->items.size() == 2) {
    for (const auto& part : object->state->items)
      if (part->kind == Value::Kind::dict)
        if (auto v = part->get(name)) return v;
  }
  return nullptr;
}

std::vector<std::int64_t> ints(const ValuePtr& v, const fs::path& path, const std::string& what) {
  std::vector<std::int64_t> out;
  if (!pickle::ints_of(v, out)) bad(path, fmt::format("{} is not a tuple of integers", what));
  for (const auto i : out)
    if (i < 0 || i > (std::int64_t{1} << 48)) bad(path, fmt::format("{} has an entry out of range ({})", what, i));
  return out;
}

std::int64_t integer(const ValuePtr& v, const fs::path& path, const std::string& what) {
  if (!v || v->kind != Value::Kind::integer || v->integer < 0 || v->integer > (std::int64_t{1} << 56))
    bad(path, fmt::format("{} is not a size", what));
  return v->integer;
}

std::string text(const ValuePtr& v, const fs::path& path, const std::string& what) {
  if (!v || v->kind != Value::Kind::string) bad(path, fmt::format("{} is not a string", what));
  return v->text;
}

DType dtype_of(const ValuePtr& properties, const fs::path& path, const std::string& key) {
  if (!is_object(properties, kMetadataModule, "TensorProperties"))
    bad(path, fmt::format("key '{}' has no TensorProperties", key));
  ValuePtr d;
  if (properties->state && properties->state->kind == Value::Kind::tuple && !properties->state->items.empty())
    d = properties->state->items[0];  // __getstate__'s tuple (dtype, layout, ...)
  else
    d = field(properties, "dtype");
  if (!d && properties->items.size() >= 1) d = properties->items[0];
  if (d && d->kind == Value::Kind::global)
    for (const auto& row : kDTypes)
      if (d->text == std::string("torch.") + row.name) return row.dtype;
  throw FormatVersionError(fmt::format("DCP checkpoint '{}': key '{}' has dtype '{}', which savepoint does not read",
                                       path.string(), key, d && d->kind == Value::Kind::global ? d->text : "?"),
                           path);
}

nlohmann::json path_json(const ValuePtr& v) {
  auto out = nlohmann::json::array();
  if (!v || (v->kind != Value::Kind::tuple && v->kind != Value::Kind::list)) return out;
  for (const auto& p : v->items) {
    if (p->kind == Value::Kind::string) out.push_back(p->text);
    else if (p->kind == Value::Kind::integer) out.push_back(p->integer);
    else return nlohmann::json::array();
  }
  return out;
}

}  // namespace

std::uint64_t Item::numel() const noexcept {
  std::uint64_t n = 1;
  for (const auto s : size) n *= static_cast<std::uint64_t>(s);
  return n;
}

const Item* Metadata::find(std::string_view key) const {
  const auto it = std::lower_bound(items.begin(), items.end(), key,
                                   [](const Item& i, std::string_view k) { return i.key < k; });
  return it != items.end() && it->key == key ? &*it : nullptr;
}

Metadata parse_metadata(std::string_view bytes, const fs::path& path) {
  MetadataPolicy policy;
  Machine machine(bytes, policy, path, "DCP metadata");
  const ValuePtr top = machine.run();
  if (!is_object(top, kMetadataModule, "Metadata"))
    bad(path, fmt::format("it holds a {} '{}', not DCP's Metadata", pickle::kind_name(top->kind), top->text));
  Metadata out;
  if (const auto v = field(top, "version"); v && v->kind == Value::Kind::string) out.version = v->text;
  const ValuePtr sd = field(top, "state_dict_metadata");
  if (!sd || sd->kind != Value::Kind::dict) bad(path, "state_dict_metadata is not a dict");
  std::map<std::string, Item> items;
  for (std::size_t i = 0; i + 1 < sd->items.size(); i += 2) {
    Item item;
    item.key = text(sd->items[i], path, "a state_dict_metadata key");
    const auto& md = sd->items[i + 1];
    if (is_object(md, kMetadataModule, "BytesStorageMetadata")) {
      item.tensor = false;
    } else if (is_object(md, kMetadataModule, "TensorStorageMetadata")) {
      item.dtype = dtype_of(field(md, "properties"), path, item.key);
      item.size = ints(field(md, "size"), path, fmt::format("the size of key '{}'", item.key));
      const auto chunks = field(md, "chunks");
      if (!chunks || chunks->kind != Value::Kind::list) bad(path, fmt::format("key '{}' has no chunk list", item.key));
      for (const auto& c : chunks->items) {
        if (!is_object(c, kMetadataModule, "ChunkStorageMetadata"))
          bad(path, fmt::format("a chunk of key '{}' is not a ChunkStorageMetadata", item.key));
        Chunk chunk;
        chunk.offsets = ints(field(c, "offsets"), path, fmt::format("a chunk offset of key '{}'", item.key));
        chunk.sizes = ints(field(c, "sizes"), path, fmt::format("a chunk size of key '{}'", item.key));
        item.chunks.push_back(std::move(chunk));
      }
    } else {
      bad(path, fmt::format("key '{}' is described by a {} '{}'", item.key, pickle::kind_name(md->kind), md->text));
    }
    const auto key = item.key;
    if (!items.emplace(key, std::move(item)).second) bad(path, fmt::format("key '{}' appears twice", key));
  }
  // storage_data: MetadataIndex(fqn, offset) -> _StorageInfo(relative_path, offset, length)
  const ValuePtr storage = field(top, "storage_data");
  if (!storage || storage->kind != Value::Kind::dict) bad(path, "storage_data is not a dict (not FileSystemWriter's?)");
  for (std::size_t i = 0; i + 1 < storage->items.size(); i += 2) {
    const auto& index = storage->items[i];
    const auto& info = storage->items[i + 1];
    if (!is_object(index, kMetadataModule, "MetadataIndex")) bad(path, "a storage_data key is not a MetadataIndex");
    const auto fqn = text(field(index, "fqn"), path, "a MetadataIndex's fqn");
    const auto found = items.find(fqn);
    if (found == items.end()) bad(path, fmt::format("storage_data names key '{}', which state_dict_metadata lacks", fqn));
    Item& item = found->second;
    if (!is_object(info, kFilesystemModule, "_StorageInfo"))
      bad(path, fmt::format("the storage of key '{}' is a {} '{}', not FileSystemWriter's _StorageInfo", fqn,
                            pickle::kind_name(info->kind), info->text));
    Chunk place;
    place.file = text(field(info, "relative_path"), path, fmt::format("the file of key '{}'", fqn));
    place.offset = static_cast<std::uint64_t>(integer(field(info, "offset"), path, fmt::format("the offset of key '{}'", fqn)));
    place.length = static_cast<std::uint64_t>(integer(field(info, "length"), path, fmt::format("the length of key '{}'", fqn)));
    if (const auto t = field(info, "transform_descriptors"); t && t->kind != Value::Kind::none) {
      if (t->kind != Value::Kind::list && t->kind != Value::Kind::tuple) bad(path, fmt::format("key '{}' has bad transforms", fqn));
      for (const auto& d : t->items) place.transforms.push_back(text(d, path, "a transform descriptor"));
    }
    if (place.file.empty() || place.file.find('/') != std::string::npos || place.file == "." || place.file == "..")
      bad(path, fmt::format("key '{}' names the file '{}', outside the directory", fqn, place.file));
    Chunk* chunk = nullptr;
    if (!item.tensor) {
      if (item.chunks.empty()) item.chunks.emplace_back();
      chunk = &item.chunks.front();
    } else {
      const auto off = field(index, "offset");
      std::vector<std::int64_t> offsets;
      if (!off || off->kind == Value::Kind::none) offsets.assign(item.size.size(), 0);
      else offsets = ints(off, path, fmt::format("the storage offset of key '{}'", fqn));
      for (auto& c : item.chunks)
        if (c.offsets == offsets && c.file.empty()) chunk = &c;
      if (!chunk)
        bad(path, fmt::format("storage_data places a chunk of key '{}' at offsets [{}] that it does not have, or twice",
                              fqn, fmt::join(offsets, ", ")));
    }
    if (!chunk->file.empty()) bad(path, fmt::format("key '{}' is stored twice", fqn));
    chunk->file = std::move(place.file);
    chunk->offset = place.offset;
    chunk->length = place.length;
    chunk->transforms = std::move(place.transforms);
  }
  // planner_data: key -> the path of the key in the nested state dict (the default planner's)
  if (const auto planner = field(top, "planner_data"); planner && planner->kind == Value::Kind::dict) {
    for (std::size_t i = 0; i + 1 < planner->items.size(); i += 2) {
      if (planner->items[i]->kind != Value::Kind::string) continue;
      const auto found = items.find(planner->items[i]->text);
      if (found != items.end()) found->second.path = path_json(planner->items[i + 1]);
    }
  }
  for (auto& [key, item] : items) {
    if (item.chunks.empty() && !(item.tensor && item.numel() == 0) && item.tensor)
      bad(path, fmt::format("key '{}' has no chunks", key));
    if (!item.tensor && item.chunks.empty()) bad(path, fmt::format("value '{}' has no storage", key));
    for (const auto& c : item.chunks)
      if (c.file.empty()) bad(path, fmt::format("a chunk of key '{}' has no storage in storage_data", key));
    out.items.push_back(std::move(item));
  }
  return out;
}

// ---------------------------------------------------------------- writing
namespace {
void size_of(pickle::Writer& w, const std::vector<std::int64_t>& v) {
  w.global("torch", "Size");
  w.mark();
  w.ints(v);
  w.tuple();
  w.reduce();
}
// A dataclass instance: cls.__new__(cls), then BUILD with its fields (`fill` writes the
// key/value pairs).
template <class Fill>
void dataclass(pickle::Writer& w, const char* module, const char* name, Fill fill) {
  w.global(module, name);
  w.empty_tuple();
  w.newobj();
  w.empty_dict();
  w.mark();
  fill();
  w.set_items();
  w.build();
}
const char* dtype_global(DType dtype) {
  for (const auto& d : kDTypes)
    if (d.dtype == dtype) return d.name;
  return nullptr;
}
void path_of(pickle::Writer& w, const nlohmann::json& path) {
  w.mark();
  for (const auto& p : path) {
    if (p.is_string()) w.string(p.get<std::string>());
    else w.integer(p.get<std::int64_t>());
  }
  w.tuple();
}
}  // namespace

std::string write_metadata(const Metadata& metadata) {
  pickle::Writer w;
  dataclass(w, kMetadataModule, "Metadata", [&] {
    w.string("state_dict_metadata");
    w.empty_dict();
    w.mark();
    for (const auto& item : metadata.items) {
      w.string(item.key);
      if (!item.tensor) {
        w.global(kMetadataModule, "BytesStorageMetadata");
        w.empty_tuple();
        w.newobj();
        continue;
      }
      dataclass(w, kMetadataModule, "TensorStorageMetadata", [&] {
        w.string("properties");
        // TensorProperties' __setstate__ takes (dtype, layout, requires_grad, memory format, pin_memory).
        w.global(kMetadataModule, "TensorProperties");
        w.empty_tuple();
        w.newobj();
        w.mark();
        w.global("torch", dtype_global(item.dtype));
        w.global("torch", "strided");
        w.boolean(false);
        w.global(kMetadataModule, "_MEM_FORMAT_ENCODING");
        w.mark();
        w.integer(0);  // TORCH_CONTIGUOUS_FORMAT
        w.tuple();
        w.reduce();
        w.boolean(false);
        w.tuple();
        w.build();
        w.string("size");
        size_of(w, item.size);
        w.string("chunks");
        w.empty_list();
        w.mark();
        for (const auto& c : item.chunks)
          dataclass(w, kMetadataModule, "ChunkStorageMetadata", [&] {
            w.string("offsets");
            size_of(w, c.offsets);
            w.string("sizes");
            size_of(w, c.sizes);
          });
        w.appends();
      });
    }
    w.set_items();
    w.string("planner_data");
    w.empty_dict();
    w.mark();
    for (const auto& item : metadata.items) {
      if (item.path.empty()) continue;
      w.string(item.key);
      path_of(w, item.path);
    }
    w.set_items();
    w.string("storage_data");
    w.empty_dict();
    w.mark();
    for (const auto& item : metadata.items)
      for (const auto& c : item.chunks) {
        dataclass(w, kMetadataModule, "MetadataIndex", [&] {
          w.string("fqn");
          w.string(item.key);
          w.string("offset");
          if (item.tensor) size_of(w, c.offsets);
          else w.none();
          w.string("index");
          w.none();
        });
        dataclass(w, kFilesystemModule, "_StorageInfo", [&] {
          w.string("relative_path");
          w.string(c.file);
          w.string("offset");
          w.integer(static_cast<std::int64_t>(c.offset));
          w.string("length");
          w.integer(static_cast<std::int64_t>(c.length));
          if (!c.transforms.empty()) {  // 2.14 writes the field only when there are some
            w.string("transform_descriptors");
            w.empty_list();
            w.mark();
            for (const auto& t : c.transforms) w.string(t);
            w.appends();
          }
        });
      }
    w.set_items();
    w.string("storage_meta");
    w.none();
  });
  return w.stop();
}

}  // namespace savepoint::dcp
