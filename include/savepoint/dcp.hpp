// savepoint/dcp.hpp — torch.distributed.checkpoint (DCP) both ways: a C++ job loads what
// Python's dcp.save wrote, at any world size, and saves what Python's dcp.load reads.
//
//   savepoint::dcp::State state;                     // what maps to which DCP keys
//   state.module("model", *net)                      // model.fc1.weight, ... (whole tensors)
//        .sharded("model", shards)                   // or rows of them (FSDP-style)
//        .optimizer("optim", adam)                   // optim.state.<fqn>.exp_avg, optim.param_groups
//        .value("step", step);                       // a plain value (JSON)
//   savepoint::dcp::load("ckpt/dcp-step-1000", state);        // every rank, any world size
//   savepoint::dcp::save("ckpt/out", state, savepoint::dcp::SaveOptions().process_group(group));
//
// Keys are those of Python's `dcp.save({"model": get_model_state_dict(m), "optim":
// get_optimizer_state_dict(m, o)})` (torch.distributed.checkpoint.state_dict): a module's
// tensors under "<prefix>.<parameter name>", an optimizer's state under
// "<prefix>.state.<parameter name>.<field>" (Adam's step a 0-dim float tensor, as Python's)
// and its groups as the value "<prefix>.param_groups". A parameter's name is the one it has
// in a module or sharded set of the same State.
//
// Loading reads each tensor's region, whole or the rows a sharded registration holds, from the
// chunks that overlap it only, straight into the registered tensor; every chunk is checked
// before anything changes (CorruptCheckpointError naming file and key). Values are read by
// restricted unpickling: plain data only, never run. Saving writes one file per rank
// (__<rank>_0.distcp: whole tensors and values from rank 0, rows from each rank that holds
// them), then rank 0 writes .metadata last and atomically: until then the directory is no
// DCP checkpoint. docs/dcp.md says which DCP versions and options are read.
#pragma once

#include <savepoint/distributed.hpp>
#include <savepoint/detail/arg.hpp>
#include <savepoint/format/dcp.hpp>
#include <savepoint/sharded.hpp>
#include <savepoint/transfer.hpp>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace torch::nn {
class Module;
}
namespace torch::optim {
class Optimizer;
}

namespace savepoint::dcp {

/// What a load fills and a save writes, by DCP key. Holds references: the objects must outlive
/// the calls that use it.
class State {
 public:
  /// Every parameter and buffer of `module` as "<prefix>.<name>" (whole tensors).
  State& module(const std::string& prefix, torch::nn::Module& module);
  /// The same, with transfer()'s rules (savepoint/transfer.hpp) between DCP keys and the
  /// module's names: only keys starting with options.prefix() (e.g. "model."), removed, then
  /// the renames; a module name the rules cannot reach from any key is a UsageError.
  ///   state.module(*net, TransferOptions().prefix("model.").rename("", "backbone."));
  State& module(torch::nn::Module& module, const TransferOptions& options);
  /// The rows each shard of `shards` holds, as "<prefix>.<name>" (a tensor of global_rows rows).
  State& sharded(const std::string& prefix, ShardedTensors& shards);
  /// `optimizer`'s per-parameter state and groups in the form get_optimizer_state_dict
  /// produces. Adam, AdamW and SGD; each parameter must be one of a module or sharded set
  /// added to this State (UsageError naming the group and position otherwise).
  State& optimizer(const std::string& prefix, torch::optim::Optimizer& optimizer);
  /// One tensor under `key` (whole).
  State& tensor(const std::string& key, torch::Tensor tensor);
  /// One plain value (numbers, strings, lists, dicts) under `key`.
  State& value(const std::string& key, nlohmann::json& value);

  struct Entry;  // (src/torch/dcp.cpp)
  const std::vector<std::shared_ptr<Entry>>& entries() const noexcept { return entries_; }

 private:
  std::vector<std::shared_ptr<Entry>> entries_;
};

class LoadOptions {
  /// Every key of the State must be in the checkpoint (MissingKeyError naming it, nothing
  /// loaded). Off: missing keys are left as they are and reported.
  SAVEPOINT_ARG(bool, strict) = true;
};

/// What a load did.
struct LoadReport {
  std::vector<std::string> loaded;      ///< DCP keys read into the State
  std::vector<std::string> missing;     ///< State keys the checkpoint lacks (strict: none)
  std::vector<std::string> unexpected;  ///< checkpoint keys the State has no place for
};

/// Loads the DCP checkpoint in `dir` into `state`. Not collective: each process reads what its
/// registrations hold. Checks first (every key present unless !strict, dtypes and shapes
/// equal: MismatchError naming the key), then reads. Throws CorruptCheckpointError,
/// FormatVersionError, MissingKeyError, MismatchError, UsageError.
LoadReport load(const std::filesystem::path& dir, const State& state, const LoadOptions& options = {});

class SaveOptions {
  /// The job's ranks: collective, each rank writes its file, rank 0 the .metadata. None: one
  /// process writes everything.
  SAVEPOINT_ARG(std::shared_ptr<ProcessGroup>, process_group);
};

/// Saves `state` as a DCP checkpoint into `dir` (created; it must not hold a .metadata
/// already: UsageError). Collective when a process group is given.
void save(const std::filesystem::path& dir, const State& state, const SaveOptions& options = {});

}  // namespace savepoint::dcp
