// savepoint/format/pytorch.hpp — the file of Python's torch.save(state_dict), without torch.
//
// A PyTorch file (torch >= 1.6) is a zip archive of stored (uncompressed) records:
//   <archive>/data.pkl      a pickle of the saved object; each tensor is a call of
//                           torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)
//                           whose storage is a persistent id ('storage', torch.FloatStorage,
//                           '<key>', 'cpu', numel)
//   <archive>/data/<key>    the raw little-endian bytes of storage <key>
//   <archive>/version       "3"; newer writers add <archive>/byteorder ("little")
// The reader understands the subset a state_dict uses: dicts and OrderedDicts (nested ones are
// flattened with '.', as `{"model": model.state_dict()}` becomes "model.fc.weight"), tensors,
// parameters, and plain values (numbers, strings, None, tuples, lists), which are skipped. It
// checks every record it reads against the zip's CRC-32 (LibTorch's reader does not) and every
// tensor against its storage's bounds. A damaged file throws CorruptCheckpointError, a valid
// pickle outside that subset (a whole pickled nn.Module, the pre-1.6 format, compressed
// records) FormatVersionError; both name the file. The writer produces what torch.load
// returns as a dict of tensors and nn.Module.load_state_dict accepts.
#pragma once

#include <savepoint/checkpoint.hpp>
#include <savepoint/format/safetensors.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace savepoint::pytorch {

using safetensors::DType;

/// One storage record of the archive (a flat array of `numel` elements).
struct Storage {
  DType dtype = DType::F32;
  std::uint64_t numel = 0;
  std::string_view bytes;  ///< inside the parsed file's bytes; numel x dtype size long
};

/// One tensor: a strided view of a storage, as Python holds it (views stay views).
struct TensorRecord {
  std::string name;  ///< flattened key, e.g. "fc1.weight"
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> strides;  ///< in elements
  std::int64_t storage_offset = 0;    ///< in elements
  std::string storage;                ///< key into File::storages
};

struct File {
  std::vector<TensorRecord> tensors;       ///< in the pickle's order (a state_dict's order)
  std::map<std::string, Storage> storages;  ///< by key
  std::vector<std::string> skipped;          ///< names of values that are not tensors
};

/// Does `bytes` start like a zip archive (and so possibly a PyTorch file)?
bool looks_like_pytorch(std::string_view bytes) noexcept;

/// Parses and validates the whole file held in `file_bytes` (see the top of this header).
File parse(std::string_view file_bytes, const std::filesystem::path& path_for_errors);

/// A tensor to write: contiguous little-endian bytes of `shape` x `dtype`.
struct TensorBytes {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::string_view bytes;
};

/// Writes `tensors` as a new PyTorch file (a dict of name -> tensor, one storage each),
/// fsynced. Throws UsageError for a dtype PyTorch has no storage for (U16, U32, U64, F8) or
/// a name given twice, IoError if the file exists or the write fails.
void write(const std::filesystem::path& file, const std::vector<TensorBytes>& tensors);

/// Writes the tensors of `key` in a checkpoint (a safetensors file: module, optimizer,
/// tensor keys), verified against meta.json first, as a new PyTorch file. Torch-free, for
/// tools such as the CLI. Throws MissingKeyError, CorruptCheckpointError, IoError.
void export_key(const Checkpoint& checkpoint, const std::string& key, const std::filesystem::path& file);

/// The storage class torch.save names for `dtype` ("FloatStorage"), or nullptr.
const char* storage_class(DType dtype) noexcept;

}  // namespace savepoint::pytorch
