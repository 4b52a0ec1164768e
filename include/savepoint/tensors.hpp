// savepoint/tensors.hpp — named tensors to and from safetensors files.
//
// The building block of the built-in hooks, public so that your own hooks can store tensors
// in the same open format. Files open in Python with `safetensors.torch.load_file(path)`.
#pragma once

#include <savepoint/hooks.hpp>

#include <torch/types.h>

#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace savepoint {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

/// Writes `tensors` (any device, strided, contiguous or not) to a new file in the safetensors
/// layout, fsynced. Bytes go from each tensor's storage to the file without an extra copy for
/// contiguous CPU tensors; other tensors are copied one at a time. When `ctx` is given, the
/// digest computed while writing is recorded in it.
void save_tensors(const std::filesystem::path& file, const NamedTensors& tensors,
                  const std::map<std::string, std::string>& metadata = {},
                  SaveContext* ctx = nullptr);

struct TensorFile {
  NamedTensors tensors;  ///< CPU tensors owning their memory, in file order
  std::map<std::string, std::string> metadata;
};
/// Reads and validates a safetensors file (throws CorruptCheckpointError naming the file).
TensorFile load_tensors(const std::filesystem::path& file);

/// torch dtype <-> safetensors dtype name ("F32", ...); throws MismatchError if unsupported.
std::string safetensors_dtype_name(torch::ScalarType type);

}  // namespace savepoint
