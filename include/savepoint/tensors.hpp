// savepoint/tensors.hpp — named tensors to and from safetensors files.
//
// The building block of the built-in hooks, public so that your own hooks can store tensors
// in the same open format. Files open in Python with `safetensors.torch.load_file(path)`.
#pragma once

#include <savepoint/checkpoint.hpp>
#include <savepoint/hooks.hpp>
#include <savepoint/payload.hpp>
#include <savepoint/torch_builtins.hpp>

#include <torch/types.h>

#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace savepoint {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

/// What a save hook returns to store `tensors` (any device, strided, contiguous or not) as
/// its key's safetensors file: the engine writes them straight from their storage when they
/// are contiguous on the CPU, copies the others one at a time, and snapshots them all into
/// reusable host buffers for async saves. Throws UsageError for an undefined-layout or
/// unsupported dtype, or a name given twice.
///   [](void* obj, const savepoint::SaveContext&) { return savepoint::tensor_payload({{"w", w}}); }
Payload tensor_payload(const NamedTensors& tensors, std::map<std::string, std::string> metadata = {});

/// Writes `tensors` to a new file in the safetensors layout, fsynced (for files of your own;
/// a hook returns tensor_payload instead).
void save_tensors(const std::filesystem::path& file, const NamedTensors& tensors,
                  const std::map<std::string, std::string>& metadata = {});

/// How load_tensors hands over the bytes.
enum class ReadMode {
  /// Each tensor owns its memory: the file may change or go away afterwards.
  copy,
  /// No copy: tensors view a private memory map of the file, which stays mapped while any of
  /// them lives. Pages are read when first touched (a checkpoint key is read whole, to verify
  /// it); writing to a tensor copies that page privately and never changes the file. A tensor
  /// whose bytes are misaligned for its dtype is copied. For inference or evaluation on
  /// large models; replacing the file while mapped is safe (checkpoints are never rewritten
  /// in place), truncating it is not.
  map,
  /// Read with O_DIRECT (two reads in flight, the checksum computed as the chunks arrive) into
  /// fresh memory the tensors share: no page cache, no copy. Where the file system refuses
  /// O_DIRECT, read(2) with a log line. For large files read once (docs/performance.md).
  direct,
};

struct TensorFile {
  NamedTensors tensors;  ///< CPU tensors in file order
  std::map<std::string, std::string> metadata;
};
/// Reads and validates a safetensors file (throws CorruptCheckpointError naming the file).
TensorFile load_tensors(const std::filesystem::path& file, ReadMode mode = ReadMode::copy);
/// The tensors of `key` in a checkpoint written by a tensor hook (model, optimizer, tensor),
/// checked against meta.json's size and checksum first (throws MissingKeyError for a key the
/// checkpoint lacks, CorruptCheckpointError naming the file and key for a damaged one).
TensorFile load_tensors(const Checkpoint& checkpoint, const std::string& key, ReadMode mode = ReadMode::copy);

/// torch dtype <-> safetensors dtype name ("F32", ...); throws MismatchError if unsupported.
std::string safetensors_dtype_name(torch::ScalarType type);

}  // namespace savepoint
