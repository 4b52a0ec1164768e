// PyTorch files (Python's torch.save of a state_dict), read and written without LibTorch.
//
// Why our own code rather than LibTorch's: torch::jit::Unpickler (behind torch::pickle_load
// and readArchiveAndTensors) turns collections.OrderedDict — the type of every state_dict —
// into None and, on 1.13, has no SETITEM opcode, which Python emits for a dict of one key;
// and caffe2's PyTorchStreamReader does not check the zip's CRC-32. The subset a state_dict
// needs is small: stored zip records, ~35 pickle opcodes, three torch globals.
//
// The zip archive is read and written in zip.cpp, data.pkl read in unpickler.cpp; this file
// holds the entry points of format/pytorch.hpp and the writer's pickle.
#include "pickle.hpp"
#include "pytorch_internal.hpp"
#include "unpickler.hpp"
#include "zip.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/format/pytorch.hpp>

#include <fmt/format.h>

#include <cstdint>
#include <limits>
#include <set>

namespace savepoint::pytorch {

namespace fs = std::filesystem;
namespace st = safetensors;

using internal::damaged;
using internal::kStorages;
using internal::unsupported;
using internal::ZipReader;
using internal::ZipRecord;
using internal::ZipWriter;

const char* storage_class(DType dtype) noexcept {
  for (const auto& r : kStorages)
    if (r.dtype == dtype) return r.name;
  return nullptr;
}

bool looks_like_pytorch(std::string_view bytes) noexcept {
  return bytes.size() >= 4 && bytes.substr(0, 4) == std::string_view("PK\x03\x04", 4);
}

File parse(std::string_view file_bytes, const fs::path& path) {
  if (!looks_like_pytorch(file_bytes)) {
    if (file_bytes.size() >= 2 && static_cast<unsigned char>(file_bytes[0]) == 0x80)
      unsupported(path, "it is in the legacy format (torch.save before 1.6, or "
                        "_use_new_zipfile_serialization=False); save it again with a current torch");
    damaged(path, "not a zip archive");
  }
  ZipReader zip(file_bytes, path);
  std::string prefix;
  int pickles = 0;
  for (const auto& [name, rec] : zip.records()) {
    const auto slash = name.find('/');
    if (slash != std::string::npos && name.compare(slash, std::string::npos, "/data.pkl") == 0) {
      prefix = name.substr(0, slash + 1);
      ++pickles;
    }
  }
  if (pickles != 1) {
    unsupported(path, pickles ? "several data.pkl records"
                              : "no data.pkl record (a TorchScript archive? open it with torch::jit::load)");
  }
  if (zip.records().count(prefix + "constants.pkl"))
    unsupported(path, "it is a TorchScript archive (torch.jit.save / torch::save(module)); open it with "
                      "torch::jit::load, or save model.state_dict() from Python");
  if (const ZipRecord* order = zip.find(prefix + "byteorder"); order && order->data != "little")
    unsupported(path, fmt::format("byte order '{}' (only little-endian is supported)", std::string(order->data)));
  return internal::read_state_dict(zip.find(prefix + "data.pkl")->data, zip, prefix, path);
}

// ---------------------------------------------------------------- writer
namespace internal {
void pickle_tensor(pickle::Writer& w, const char* storage_class, const std::string& storage_key,
                   const std::vector<std::int64_t>& shape) {
  std::uint64_t numel = 1;
  std::vector<std::int64_t> strides(shape.size());
  for (std::size_t d = shape.size(); d-- > 0;) {
    strides[d] = static_cast<std::int64_t>(numel);
    numel *= static_cast<std::uint64_t>(shape[d]);
  }
  w.global("torch._utils", "_rebuild_tensor_v2");
  w.mark();
  w.mark();
  w.string("storage");
  w.global("torch", storage_class);
  w.string(storage_key);
  w.string("cpu");
  w.integer(static_cast<std::int64_t>(numel));
  w.tuple();
  w.persistent_id();
  w.integer(0);
  w.ints(shape);
  w.ints(strides);
  w.boolean(false);
  w.global("collections", "OrderedDict");
  w.empty_tuple();
  w.reduce();
  w.tuple();
  w.reduce();
}
}  // namespace internal


void write(const fs::path& file, const std::vector<TensorBytes>& tensors) {
  std::set<std::string> names;
  std::uint64_t total = 0;
  pickle::Writer p;
  p.empty_dict();
  p.mark();
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    const char* cls = storage_class(t.dtype);
    if (!cls)
      detail::throw_usage(fmt::format("savepoint: tensor '{}' has dtype {}, which PyTorch files cannot store", t.name,
                                      st::dtype_name(t.dtype)));
    if (!names.insert(t.name).second)
      detail::throw_usage(fmt::format("savepoint: tensor name '{}' given twice", t.name));
    std::uint64_t numel = 1;
    for (const auto n : t.shape) numel *= static_cast<std::uint64_t>(n);
    if (numel * st::dtype_size(t.dtype) != t.bytes.size())
      detail::throw_usage(fmt::format("savepoint: tensor '{}' has {} bytes for {} elements of {}", t.name,
                                      t.bytes.size(), numel, st::dtype_name(t.dtype)));
    total += t.bytes.size() + 256;
    // name: _rebuild_tensor_v2(pid, offset, size, stride, requires_grad, OrderedDict())
    p.string(t.name);
    internal::pickle_tensor(p, cls, std::to_string(i), t.shape);
  }
  p.set_items();
  const std::string& pickled = p.stop();
  if (total + pickled.size() >= 0xFFFFFFFFu)
    detail::throw_usage(fmt::format("savepoint: '{}' would exceed 4 GiB, which needs zip64 (not written yet); "
                                    "export the model in parts",
                                    file.string()));
  ZipWriter zip(file);
  zip.add("archive/data.pkl", pickled);
  zip.add("archive/byteorder", "little");
  for (std::size_t i = 0; i < tensors.size(); ++i) zip.add("archive/data/" + std::to_string(i), tensors[i].bytes);
  zip.add("archive/version", "3\n");
  zip.finish();
}

void export_key(const Checkpoint& checkpoint, const std::string& key, const fs::path& file) {
  const FileRecord* rec = detail::whole_key_record(checkpoint, key, "export");
  if (!rec) {
    throw MissingKeyError(fmt::format("checkpoint '{}' has no key '{}'", checkpoint.path.string(), key),
                          checkpoint.path, key);
  }
  const auto contents = detail::open_key_verified(checkpoint, *rec);
  const auto header = st::parse(contents->bytes(), checkpoint.path / rec->file);
  std::vector<TensorBytes> tensors;
  for (const auto& info : header.tensors)
    tensors.push_back({info.name, info.dtype, info.shape,
                       contents->bytes().substr(header.data_start + info.begin, info.nbytes())});
  write(file, tensors);
}

}  // namespace savepoint::pytorch
