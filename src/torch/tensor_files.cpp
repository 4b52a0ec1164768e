// Tensors to and from the safetensors layout: dtypes, payloads for the engine, readers.
#include "builtins.hpp"

#include "../format/tensor_writer.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>

#include <cstring>
#include <set>

namespace savepoint {
namespace builtin {

std::optional<st::DType> to_st(torch::ScalarType t) {
  switch (t) {
    case torch::kBool: return st::DType::BOOL;
    case torch::kUInt8: return st::DType::U8;
    case torch::kInt8: return st::DType::I8;
    case torch::kInt16: return st::DType::I16;
    case torch::kFloat16: return st::DType::F16;
    case torch::kBFloat16: return st::DType::BF16;
    case torch::kInt32: return st::DType::I32;
    case torch::kFloat32: return st::DType::F32;
    case torch::kInt64: return st::DType::I64;
    case torch::kFloat64: return st::DType::F64;
    case torch::kComplexFloat: return st::DType::C64;
    default: return std::nullopt;
  }
}

std::optional<torch::ScalarType> to_torch(st::DType t) {
  switch (t) {
    case st::DType::BOOL: return torch::kBool;
    case st::DType::U8: return torch::kUInt8;
    case st::DType::I8: return torch::kInt8;
    case st::DType::I16: return torch::kInt16;
    case st::DType::F16: return torch::kFloat16;
    case st::DType::BF16: return torch::kBFloat16;
    case st::DType::I32: return torch::kInt32;
    case st::DType::F32: return torch::kFloat32;
    case st::DType::I64: return torch::kInt64;
    case st::DType::F64: return torch::kFloat64;
    case st::DType::C64: return torch::kComplexFloat;
    default: return std::nullopt;  // U16/U32/U64/F8: not in every LibTorch we support
  }
}

std::string shape_str(c10::IntArrayRef shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

Tensor tensor_view(std::string_view file_bytes, std::uint64_t data_start, const st::TensorInfo& info,
                   torch::ScalarType type) {
  const char* ptr = file_bytes.data() + data_start + info.begin;
  const auto options = torch::TensorOptions().dtype(type);
  const auto elem = st::dtype_size(info.dtype);
  if (info.nbytes() == 0) return torch::empty(info.shape, options);
  if (reinterpret_cast<std::uintptr_t>(ptr) % elem != 0) {
    Tensor t = torch::empty(info.shape, options);
    std::memcpy(t.data_ptr(), ptr, info.nbytes());
    return t;
  }
  return torch::from_blob(const_cast<char*>(ptr), info.shape, options);
}

TensorSource::TensorSource(const LoadContext& ctx)
    : contents(ctx.contents), header(st::parse(ctx.bytes(), ctx.file)), file(ctx.file), key(ctx.key) {}

Tensor TensorSource::view(const st::TensorInfo& info) const {
  const auto type = to_torch(info.dtype);
  if (!type) {
    throw MismatchError(fmt::format("tensor '{}' in '{}' (key '{}') has dtype {}, which this "
                                    "LibTorch cannot represent",
                                    info.name, file.string(), key, st::dtype_name(info.dtype)),
                        file, key);
  }
  return tensor_view(contents->bytes(), header.data_start, info, *type);
}

Tensor TensorSource::view(const std::string& name) const {
  const auto* info = find(name);
  if (!info) {
    throw MismatchError(fmt::format("'{}' (key '{}') has no tensor '{}'", file.string(), key, name), file, key);
  }
  return view(*info);
}

Tensor TensorSource::adopt(const st::TensorInfo& info, torch::Device device) const {
  Tensor v = view(info);
  const char* at = contents->bytes().data() + header.data_start + info.begin;
  if (contents->fresh() && device.is_cpu() && v.nbytes() > 0 && v.data_ptr() == at) {
    auto keep = contents;
    return torch::from_blob(const_cast<char*>(at), info.shape, [keep](void*) {},
                            torch::TensorOptions().dtype(v.scalar_type()));
  }
  return v.to(device, /*non_blocking=*/false, /*copy=*/true);
}

json TensorSource::savepoint_meta() const {
  const auto it = header.metadata.find("savepoint");
  if (it == header.metadata.end()) return json::object();
  try {
    return json::parse(it->second);
  } catch (const json::exception& e) {
    throw CorruptCheckpointError(fmt::format("'{}' (key '{}') has unreadable savepoint metadata: {}",
                                             file.string(), key, e.what()),
                                 file, key);
  }
}

[[noreturn]] void mismatch(const LoadContext& ctx, const std::string& what) {
  throw MismatchError(fmt::format("cannot load key '{}' from '{}': {}", ctx.key, ctx.file.string(), what),
                      ctx.file, ctx.key);
}

LoadContext open_key(const Checkpoint& checkpoint, const std::string& key, bool copy_on_write, bool direct) {
  const FileRecord* rec = detail::whole_key_record(checkpoint, key, "reading a key's tensors outside a load");
  if (!rec) {
    throw MissingKeyError(fmt::format("checkpoint '{}' has no key '{}'", checkpoint.path.string(), key),
                          checkpoint.path, key);
  }
  LoadContext ctx;
  ctx.file = checkpoint.path / rec->file;
  ctx.key = key;
  ctx.contents = detail::open_key_verified(checkpoint, *rec, copy_on_write, direct);
  return ctx;
}

namespace {
TensorFile tensors_of(const std::shared_ptr<const FileContents>& contents, const std::filesystem::path& file,
                      ReadMode mode) {
  const auto header = st::parse(contents->bytes(), file);
  TensorFile out;
  out.metadata = header.metadata;
  for (const auto& info : header.tensors) {
    const auto type = to_torch(info.dtype);
    if (!type) {
      throw MismatchError(fmt::format("tensor '{}' in '{}' has dtype {}, which this LibTorch "
                                      "cannot represent",
                                      info.name, file.string(), st::dtype_name(info.dtype)),
                          file);
    }
    Tensor t = tensor_view(contents->bytes(), header.data_start, info, *type);
    // tensor_view copies misaligned and empty tensors; the rest view the mapping.
    if (t.nbytes() > 0 && t.data_ptr() == contents->bytes().data() + header.data_start + info.begin) {
      if (mode == ReadMode::copy) t = t.clone();  // ReadMode::direct: its own buffer, viewed
      else  // the same bytes, holding the mapping for as long as the tensor lives
        t = torch::from_blob(t.data_ptr(), info.shape, [contents](void*) {}, torch::TensorOptions().dtype(*type));
    }
    out.tensors.emplace_back(info.name, std::move(t));
  }
  return out;
}
}  // namespace

}  // namespace builtin

using namespace builtin;

std::string safetensors_dtype_name(torch::ScalarType type) {
  const auto d = to_st(type);
  if (!d) {
    throw UsageError(fmt::format("savepoint: tensors of dtype {} cannot be stored in the "
                                 "safetensors layout",
                                 c10::toString(type)));
  }
  return st::dtype_name(*d);
}

Payload tensor_payload(const NamedTensors& tensors, std::map<std::string, std::string> metadata) {
  std::vector<TensorData> out;
  out.reserve(tensors.size());
  std::set<std::string> names;
  for (const auto& [name, tensor] : tensors) {
    if (!tensor.defined()) continue;
    if (tensor.layout() != torch::kStrided) {
      throw UsageError(fmt::format("savepoint: tensor '{}' is not strided (sparse/quantized "
                                   "tensors are not supported)",
                                   name));
    }
    const auto dtype = to_st(tensor.scalar_type());
    if (!dtype) {
      throw UsageError(fmt::format("savepoint: tensor '{}' has dtype {}, which the safetensors "
                                   "layout cannot store",
                                   name, c10::toString(tensor.scalar_type())));
    }
    if (!names.insert(name).second) throw UsageError(fmt::format("savepoint: tensor name '{}' given twice", name));
    auto t = std::make_shared<const Tensor>(tensor.detach());
    TensorData d;
    d.spec = {name, *dtype, t->sizes().vec(), static_cast<std::uint64_t>(t->numel()) * t->element_size()};
    // Contiguous CPU tensors are written straight from their storage; the others are copied
    // one tensor at a time, when written (or snapshotted).
    if (t->device().is_cpu() && t->is_contiguous()) d.host_bytes = t->data_ptr();
    d.copy_to_host = [t](void* dst) {
      torch::NoGradGuard no_grad;
      torch::from_blob(dst, t->sizes(), torch::TensorOptions().dtype(t->scalar_type())).copy_(*t);
    };
    d.on_device = !t->device().is_cpu();
    // Shared with the caller's tensor (detach() keeps the counter): an overlapped async
    // snapshot copies later and checks it. Inference tensors have none: copied at the call.
    if (!t->is_inference()) d.version = [t] { return static_cast<std::int64_t>(t->_version()); };
    d.owner = t;
    out.push_back(std::move(d));
  }
  return Payload::tensors(std::move(out), std::move(metadata));
}

void save_tensors(const std::filesystem::path& file, const NamedTensors& tensors,
                  const std::map<std::string, std::string>& metadata) {
  (void)safetensors::write_tensors(file, tensor_payload(tensors, metadata));
}

TensorFile load_tensors(const std::filesystem::path& file, ReadMode mode) {
  if (mode == ReadMode::direct) {
    detail::FileDigest ignored;
    return tensors_of(detail::read_file_direct(file, ignored), file, mode);
  }
  const detail::Mapping mapping{/*read_all=*/mode == ReadMode::copy, /*copy_on_write=*/mode == ReadMode::map};
  return tensors_of(std::make_shared<const detail::MappedFile>(file, mapping), file, mode);
}

TensorFile load_tensors(const Checkpoint& checkpoint, const std::string& key, ReadMode mode) {
  const LoadContext ctx =
      open_key(checkpoint, key, /*copy_on_write=*/mode == ReadMode::map, /*direct=*/mode == ReadMode::direct);
  return tensors_of(ctx.contents, ctx.file, mode);
}

}  // namespace savepoint
