// savepoint/pytorch.hpp — weights to and from Python's torch.save files.
//
// Import: a file written by `torch.save(model.state_dict(), "model.pt")` in Python loads
// with load_pytorch (a dict of tensors, nested dicts flattened with '.'), or straight into a
// module through the transfer functions (transfer.hpp), which accept such files as sources.
// Export: save_pytorch writes a file that Python's `torch.load` returns as a dict of tensors
// and `nn.Module.load_state_dict` accepts. Values are equal bit for bit both ways.
//
// Neither direction uses LibTorch's pickler: torch::pickle_load turns a state_dict's
// OrderedDict into None and cannot read a one-key dict on 1.13. The format code is
// savepoint/format/pytorch.hpp (torch-free, in savepoint::core); this header turns its
// records into tensors. Damaged files throw CorruptCheckpointError, valid files outside the
// state_dict subset FormatVersionError; both name the file. Thread-safe: no shared state.
#pragma once

#include <savepoint/checkpoint.hpp>
#include <savepoint/tensors.hpp>

#include <filesystem>
#include <string>

namespace torch::nn {
class Module;
}

namespace savepoint {

/// The tensors of a PyTorch file, in the file's order (a state_dict's registration order),
/// with the strides Python saved (a non-contiguous tensor stays non-contiguous; tensors that
/// shared a storage in Python share one here). ReadMode::map views the mapped file without
/// a copy. TensorFile::metadata holds "skipped": the names of non-tensor values, comma-separated.
TensorFile load_pytorch(const std::filesystem::path& file, ReadMode mode = ReadMode::copy);

/// Writes `tensors` (any device, contiguous or not) as a new PyTorch file, fsynced; throws
/// IoError if it exists, UsageError for a dtype PyTorch files cannot hold.
void save_pytorch(const std::filesystem::path& file, const NamedTensors& tensors);
/// A module's parameters and buffers, named as in its state_dict.
void save_pytorch(const std::filesystem::path& file, const torch::nn::Module& module);
/// The tensors of `key` in a checkpoint, verified against meta.json first (the
/// torch-free equivalent for tools is savepoint::pytorch::export_key in format/pytorch.hpp).
void save_pytorch(const std::filesystem::path& file, const Checkpoint& checkpoint, const std::string& key);

}  // namespace savepoint
