// torch/builtins.hpp — what the LibTorch built-in hooks share (private to the library).
// The only headers besides src/torch/*.cpp that see <torch/torch.h>; LibTorch 1.13 / 2.x
// differences are guarded in this folder and nowhere else.
#pragma once

#include <savepoint/checkpoint.hpp>
#include <savepoint/detail/io.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/format/pytorch.hpp>
#include <savepoint/format/safetensors.hpp>
#include <savepoint/hooks.hpp>
#include <savepoint/tensors.hpp>

#include <torch/torch.h>
#include <torch/version.h>

// The one switch for what only LibTorch 2.x has (ReduceLROnPlateauScheduler): 1.13 builds
// without it, and nothing else in savepoint tests the LibTorch version.
#if TORCH_VERSION_MAJOR >= 2
#define SAVEPOINT_TORCH_2 1
#else
#define SAVEPOINT_TORCH_2 0
#endif

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in fmt/format.h before fmt 11)
#include <nlohmann/json.hpp>

#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>

namespace savepoint::builtin {

namespace st = safetensors;
using nlohmann::json;
using torch::Tensor;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "savepoint writes tensors little-endian as safetensors requires; big-endian hosts "
              "are not supported yet");

// ---- dtypes and tensor files (tensor_files.cpp)
std::optional<st::DType> to_st(torch::ScalarType t);
std::optional<torch::ScalarType> to_torch(st::DType t);
std::string shape_str(c10::IntArrayRef shape);
/// A view of one tensor's bytes inside a mapped file; copies when misaligned for its dtype.
Tensor tensor_view(std::string_view file_bytes, std::uint64_t data_start, const st::TensorInfo& info,
                   torch::ScalarType type);

/// A parsed, verified safetensors file kept mapped while its views are in use.
struct TensorSource {
  std::shared_ptr<const FileContents> contents;
  st::Header header;
  std::filesystem::path file;
  std::string key;

  explicit TensorSource(const LoadContext& ctx);
  const st::TensorInfo* find(const std::string& name) const { return header.find(name); }
  Tensor view(const st::TensorInfo& info) const;
  Tensor view(const std::string& name) const;
  /// A tensor that owns its bytes, on `device`: when the file was read into fresh memory
  /// (contents->fresh()) and the tensor is aligned and wanted on the CPU, the tensor keeps that
  /// memory (no copy; the memory lives while any such tensor does); otherwise a copy.
  Tensor adopt(const st::TensorInfo& info, torch::Device device = torch::kCPU) const;
  /// The "savepoint" metadata entry parsed as JSON (an empty object when absent).
  json savepoint_meta() const;
};

// ---- PyTorch files (pytorch_file.cpp)
/// Parameters and buffers in the order of Python's state_dict: each module's own parameters,
/// then its own buffers, then its children, depth first (module_state lists every parameter
/// before any buffer). Transfers by order and exports use it.
NamedTensors state_dict_order(const torch::nn::Module& module);
/// The tensors of a parsed PyTorch file as strided views of one tensor per storage; `mode`
/// map views `contents` (kept alive by the tensors), copy owns the bytes.
NamedTensors pytorch_tensors(const std::shared_ptr<const FileContents>& contents,
                             const pytorch::File& file, ReadMode mode);

[[noreturn]] void mismatch(const LoadContext& ctx, const std::string& what);

// ---- optimizers
/// The key of `param`'s entry in an optimizer's state map. Per-parameter state is keyed by the
/// parameter's position (group by group) in checkpoints, never by its address; LibTorch 1.13
/// keys its state map by a pointer string, 2.x by the pointer itself.
template <class Map>
auto state_key(const Map&, const Tensor& param) {
  using Key = typename Map::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream os;  // what c10::guts::to_string(TensorImpl*) produces in 1.13
    os << param.unsafeGetTensorImpl();
    return os.str();
  } else {
    return static_cast<Key>(param.unsafeGetTensorImpl());
  }
}
/// The file of `key` in a checkpoint, verified like a load (MissingKeyError if it has none).
LoadContext open_key(const Checkpoint& checkpoint, const std::string& key, bool copy_on_write = false,
                     bool direct = false);

// ---- the hooks, one pair per type (registered by register.cpp)
NamedTensors module_state(const torch::nn::Module& module);  // parameters, then buffers
Payload save_module(void* object, const SaveContext& ctx);
Apply prepare_module(void* object, const LoadContext& ctx);
Payload save_optimizer(void* object, const SaveContext& ctx);
Apply prepare_optimizer(void* object, const LoadContext& ctx);
bool optimizer_without_state(const void* object);  // TypeHooks::fresh_state
Payload save_scheduler(void* object, const SaveContext& ctx);
Apply prepare_scheduler(void* object, const LoadContext& ctx);
Payload save_tensor(void* object, const SaveContext& ctx);
Apply prepare_tensor(void* object, const LoadContext& ctx);
bool undefined_tensor(const void* object);  // TypeHooks::fresh_state
Payload save_sampler(void* object, const SaveContext& ctx);
Apply prepare_sampler(void* object, const LoadContext& ctx);
Payload save_generator(void* object, const SaveContext& ctx);
Apply prepare_generator(void* object, const LoadContext& ctx);
Payload save_rng(void* object, const SaveContext& ctx);
Apply prepare_rng(void* object, const LoadContext& ctx);
Payload save_ema(void* object, const SaveContext& ctx);  // ema.cpp
Apply prepare_ema(void* object, const LoadContext& ctx);
#if SAVEPOINT_TORCH_2
Payload save_plateau(void* object, const SaveContext& ctx);
Apply prepare_plateau(void* object, const LoadContext& ctx);
#endif

}  // namespace savepoint::builtin
