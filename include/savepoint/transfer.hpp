// savepoint/transfer.hpp — parameter transfer (SpeechBrain's torch_parameter_transfer).
//
// Loads the tensors whose names and shapes match into a module and reports the rest, for
// fine-tuning from a pretrained checkpoint whose architecture differs a little:
//   auto report = savepoint::transfer_parameters(*finetune_net, best->paramfiles.at("model"));
#pragma once

#include <savepoint/checkpoint.hpp>
#include <savepoint/torch_builtins.hpp>

#include <filesystem>
#include <string>
#include <vector>

namespace torch::nn {
class Module;
}

namespace savepoint {

struct TransferReport {
  std::vector<std::string> loaded;      ///< copied into the module
  std::vector<std::string> missing;     ///< in the module, not in the file
  std::vector<std::string> unexpected;  ///< in the file, not in the module
  std::vector<std::string> mismatched;  ///< in both, with another shape or dtype (not loaded)
};

/// From a safetensors file. Missing/unexpected/mismatched names are logged as warnings.
TransferReport transfer_parameters(torch::nn::Module& module, const std::filesystem::path& file);
/// From the file of `key` in a checkpoint, verified against its checksum first.
TransferReport transfer_parameters(torch::nn::Module& module, const Checkpoint& checkpoint,
                                   const std::string& key);

}  // namespace savepoint
