// PyTorch files as tensors: the records of savepoint/format/pytorch.hpp (torch-free) become
// strided views of their storages, and tensors become records.
#include "builtins.hpp"

#include <savepoint/format/pytorch.hpp>
#include <savepoint/pytorch.hpp>

#include <cstring>

namespace savepoint {
namespace builtin {

namespace {
void collect_state_dict(const torch::nn::Module& module, const std::string& prefix, NamedTensors& out) {
  for (const auto& item : module.named_parameters(/*recurse=*/false))
    if (item.value().defined()) out.emplace_back(prefix + item.key(), item.value());
  for (const auto& item : module.named_buffers(/*recurse=*/false))
    if (item.value().defined()) out.emplace_back(prefix + item.key(), item.value());
  for (const auto& child : module.named_children()) collect_state_dict(*child.value(), prefix + child.key() + ".", out);
}
}  // namespace

NamedTensors state_dict_order(const torch::nn::Module& module) {
  NamedTensors out;
  collect_state_dict(module, "", out);
  return out;
}

NamedTensors pytorch_tensors(const std::shared_ptr<const FileContents>& contents, const pytorch::File& file,
                             ReadMode mode) {
  std::map<std::string, Tensor> storages;  // one tensor per storage, so views stay views
  for (const auto& [key, s] : file.storages) {
    const auto type = to_torch(s.dtype);
    if (!type) {
      throw MismatchError(fmt::format("storage '{}' in '{}' has dtype {}, which this LibTorch cannot represent",
                                      key, contents->path().string(), st::dtype_name(s.dtype)),
                          contents->path());
    }
    const auto options = torch::TensorOptions().dtype(*type);
    const auto numel = static_cast<std::int64_t>(s.numel);
    const auto elem = st::dtype_size(s.dtype);
    Tensor t;
    if (mode == ReadMode::map && reinterpret_cast<std::uintptr_t>(s.bytes.data()) % elem == 0) {
      t = torch::from_blob(const_cast<char*>(s.bytes.data()), {numel}, [contents](void*) {}, options);
    } else {
      t = torch::empty({numel}, options);
      if (!s.bytes.empty()) std::memcpy(t.data_ptr(), s.bytes.data(), s.bytes.size());
    }
    storages.emplace(key, std::move(t));
  }
  NamedTensors out;
  out.reserve(file.tensors.size());
  for (const auto& r : file.tensors)
    out.emplace_back(r.name, storages.at(r.storage).as_strided(r.shape, r.strides, r.storage_offset));
  return out;
}

}  // namespace builtin

using namespace builtin;

TensorFile load_pytorch(const std::filesystem::path& file, ReadMode mode) {
  const detail::Mapping mapping{/*read_all=*/true, /*copy_on_write=*/mode == ReadMode::map};
  const auto contents = std::make_shared<const detail::MappedFile>(file, mapping);
  const auto parsed = pytorch::parse(contents->bytes(), file);
  TensorFile out;
  out.tensors = pytorch_tensors(contents, parsed, mode);
  if (!parsed.skipped.empty()) out.metadata["skipped"] = fmt::format("{}", fmt::join(parsed.skipped, ","));
  return out;
}

void save_pytorch(const std::filesystem::path& file, const NamedTensors& tensors) {
  // One contiguous CPU copy at a time would need them all alive until the write: the writer
  // takes every tensor's bytes at once. Contiguous CPU tensors are not copied.
  std::vector<Tensor> hold;
  std::vector<pytorch::TensorBytes> records;
  hold.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    if (!tensor.defined()) continue;
    if (tensor.layout() != torch::kStrided)
      throw UsageError(fmt::format("savepoint: tensor '{}' is not strided (sparse/quantized tensors are not supported)",
                                  name));
    const auto dtype = to_st(tensor.scalar_type());
    if (!dtype)
      throw UsageError(fmt::format("savepoint: tensor '{}' has dtype {}, which PyTorch files from savepoint cannot "
                                   "store",
                                   name, c10::toString(tensor.scalar_type())));
    hold.push_back(tensor.detach().to(torch::kCPU).contiguous());
    const Tensor& t = hold.back();
    records.push_back({name, *dtype, t.sizes().vec(),
                       std::string_view(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size())});
  }
  pytorch::write(file, records);
}

void save_pytorch(const std::filesystem::path& file, const torch::nn::Module& module) {
  save_pytorch(file, state_dict_order(module));
}

void save_pytorch(const std::filesystem::path& file, const Checkpoint& checkpoint, const std::string& key) {
  pytorch::export_key(checkpoint, key, file);
}

}  // namespace savepoint
