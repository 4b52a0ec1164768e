// savepoint/transfer.hpp — transfer learning: pretrained weights into a module that differs.
//
// SuperGradients' StrictLoad ON / OFF / NO_KEY_MATCHING and load_backbone, SpeechBrain's
// torch_parameter_transfer and Pretrainer (several files onto several modules, renamed
// layers), in one function:
//   auto report = savepoint::transfer(*finetune, {*best, "model"});           // non-strict
//   savepoint::transfer(*net->backbone, "resnet.pt",
//                       savepoint::TransferOptions().prefix("backbone.").rename("module.", ""));
//   std::cout << report;                                                      // what happened
// Sources are safetensors files, PyTorch files (Python's torch.save(state_dict), told apart by
// their first bytes) and checkpoint keys. Every source is verified first where it carries a
// checksum: a checkpoint key, and a file inside a checkpoint directory (its meta.json lists
// it); a PyTorch file's zip CRC-32s are always checked. A damaged source throws
// CorruptCheckpointError before any module changes. Tensors are copied, never cast: a
// tensor of another dtype or shape is "mismatched". Not thread-safe against training the
// same modules.
#pragma once

#include <savepoint/checkpoint.hpp>
#include <savepoint/detail/arg.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/torch_builtins.hpp>

#include <filesystem>
#include <iosfwd>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace torch::nn {
class Module;
}

namespace savepoint {

enum class TransferMode {
  /// Load what matches by name, shape and dtype; report the rest (StrictLoad.OFF).
  non_strict,
  /// Every module tensor must be in the source with its shape and dtype, and every source
  /// tensor must have a place in the module; else TransferError and NOTHING is loaded
  /// (StrictLoad.ON, nn.Module.load_state_dict(strict=True)).
  strict,
  /// Names are ignored: the n-th tensor of the module (parameters, then buffers, in
  /// registration order) takes the n-th tensor of the source (after the prefix filter).
  /// Counts, shapes and dtypes must all agree, else TransferError and nothing is loaded
  /// (NO_KEY_MATCHING). A PyTorch file keeps its state_dict's order; a safetensors file has
  /// none of its own (by dtype, then name): use by_order with PyTorch files.
  by_order,
};
const char* to_string(TransferMode mode) noexcept;

class TransferOptions {
  SAVEPOINT_ARG(TransferMode, mode) = TransferMode::non_strict;
  /// Only source tensors whose names start with `prefix` take part, with the prefix removed
  /// (load_backbone: prefix("backbone.") into the backbone sub-module). The others are
  /// counted in TransferReport::filtered, never "unexpected".
  SAVEPOINT_ARG(std::string, prefix);

 public:
  /// Renaming rule, applied after the prefix filter, in the order added, each to the name
  /// the previous rules left: a name starting with `from` gets `to` instead of that part.
  /// rename("module.", "") strips DataParallel's prefix; rename("old.", "new.") maps a
  /// renamed layer; rename("", "encoder.") puts everything under a sub-module's name.
  TransferOptions& rename(std::string from, std::string to) {
    renames_.emplace_back(std::move(from), std::move(to));
    return *this;
  }
  const std::vector<std::pair<std::string, std::string>>& renames() const noexcept { return renames_; }

  TransferOptions() = default;
  TransferOptions(TransferMode m) { mode_ = m; }  // NOLINT: savepoint::transfer(m, src, TransferMode::strict)

 private:
  std::vector<std::pair<std::string, std::string>> renames_;
};

/// What a transfer did, name by name. Print it with `<<` or to_string.
struct TransferReport {
  std::string source;  ///< the file, and the checkpoint key when it came from one
  TransferMode mode = TransferMode::non_strict;
  std::vector<std::string> loaded;      ///< module names copied (in the module's order)
  std::vector<std::string> missing;     ///< module names the source has nothing for
  std::vector<std::string> unexpected;  ///< source names (as in the source) with no place in the module
  std::vector<std::string> mismatched;  ///< module names whose source tensor differs in shape or dtype
  std::map<std::string, std::string> why;   ///< for each mismatched name (and by_order refusal): what differs
  std::map<std::string, std::string> from;  ///< module name -> source name, where they differ
  std::size_t filtered = 0;                 ///< source tensors outside the prefix, left alone
  /// Nothing missing, unexpected or mismatched.
  bool complete() const noexcept { return missing.empty() && unexpected.empty() && mismatched.empty(); }
};
std::string to_string(const TransferReport& report);
std::ostream& operator<<(std::ostream& os, const TransferReport& report);

/// A strict or by_order transfer refused: nothing was loaded (into any module of the call).
class TransferError : public MismatchError {
 public:
  TransferError(const std::string& what, std::filesystem::path path, TransferReport report)
      : MismatchError(what, std::move(path)), report_(std::move(report)) {}
  const TransferReport& report() const noexcept { return report_; }

 private:
  TransferReport report_;
};

/// Where a transfer reads its tensors.
class TransferSource {
 public:
  /// A safetensors or PyTorch file (told apart by their first bytes); verified against its
  /// meta.json record when it lies in a checkpoint directory.
  TransferSource(std::filesystem::path file) : file_(std::move(file)) {}  // NOLINT: implicit by design
  TransferSource(const char* file) : file_(file) {}                      // NOLINT
  TransferSource(const std::string& file) : file_(file) {}               // NOLINT
  /// The file of `key` in a checkpoint, verified against its checksum.
  TransferSource(Checkpoint checkpoint, std::string key)
      : checkpoint_(std::move(checkpoint)), key_(std::move(key)) {}

  const std::filesystem::path& file() const noexcept { return file_; }
  const std::optional<Checkpoint>& checkpoint() const noexcept { return checkpoint_; }
  const std::string& key() const noexcept { return key_; }

 private:
  std::filesystem::path file_;
  std::optional<Checkpoint> checkpoint_;
  std::string key_;
};

/// One source onto one module, for the call that maps several (SpeechBrain's Pretrainer).
struct TransferStep {
  torch::nn::Module& module;
  TransferSource source;
  TransferOptions options = {};
};

/// Copies `source` into `module` as `options` say. Non-strict transfers log a warning per
/// name left out. Throws TransferError (strict or by_order refused; nothing loaded),
/// CorruptCheckpointError / MissingKeyError / FormatVersionError (the source; nothing
/// loaded), UsageError (two source tensors renamed onto one module name).
TransferReport transfer(torch::nn::Module& module, const TransferSource& source,
                        const TransferOptions& options = {});

/// Several sources onto several modules in one call: every source is opened and verified,
/// and every step planned, before any module changes; if one step is refused or one source
/// is damaged, no module of the call changes. Reports in the order of `steps`.
///   auto reports = savepoint::transfer({{*encoder, {*best, "model"}, TransferOptions().prefix("encoder.")},
///                                       {*lm, "lm.pt"}});
std::vector<TransferReport> transfer(const std::vector<TransferStep>& steps);

/// Deprecated spellings of 0.1: transfer(module, file) and transfer(module, {checkpoint, key}).
[[deprecated("use savepoint::transfer(module, file)")]]
TransferReport transfer_parameters(torch::nn::Module& module, const std::filesystem::path& file);
[[deprecated("use savepoint::transfer(module, {checkpoint, key})")]]
TransferReport transfer_parameters(torch::nn::Module& module, const Checkpoint& checkpoint,
                                   const std::string& key);

}  // namespace savepoint
