// savepoint/average.hpp — checkpoint averaging, without LibTorch (the CLI's `average` uses it).
//
// The mean of one key's tensors over several checkpoints (SpeechBrain's average_checkpoints,
// GoMLX's TakeMean, SuperGradients' average_best_models):
//   auto last5 = ckpt.find_checkpoints(savepoint::most_recent(), 5);                 // last N
//   auto best5 = ckpt.find_checkpoints(savepoint::min_key("val_loss").where(p), 5);  // best N
//   savepoint::write_average(best5, "model", "model-avg.safetensors");              // a file
//   savepoint::load_average(model, best5, "model");          // into a module (torch_average.hpp)
//
// What is averaged: floating tensors (F16, BF16, F32, F64, and C64 as pairs of floats) are
// summed in a float64 accumulator, oldest checkpoint first, divided by N and rounded to the
// tensor's own dtype with round-to-nearest-even (F16/BF16 through float32, as LibTorch's
// .to() does). Every other tensor (integers, BOOL: step counters, index buffers) is taken
// from the newest checkpoint. F8 tensors are refused. Every checkpoint must hold the same
// tensor names with the same dtypes and shapes (MismatchError naming the checkpoint and
// tensor otherwise).
//
// Memory: every file is verified (size and XXH3 against meta.json) and its header checked
// before the first tensor is produced, then tensors are streamed one at a time: the extra
// memory is one tensor's float64 accumulator plus its result, never N models (the files are
// read through memory maps whose pages are released as soon as they are consumed).
// Thread safety: none needed; the checkpoints are only read.
#pragma once

#include <savepoint/checkpoint.hpp>
#include <savepoint/format/safetensors.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace savepoint {

/// One tensor of the average, as it is produced (valid only during the callback).
struct AveragedTensor {
  const std::string& name;
  safetensors::DType dtype;
  const std::vector<std::int64_t>& shape;
  std::string_view bytes;  ///< little-endian, dtype-sized elements, row-major
  bool averaged;           ///< false: copied from the newest checkpoint (not floating)
};

/// What an average was computed from.
struct AverageReport {
  std::vector<Checkpoint> checkpoints;      ///< newest first
  std::vector<std::string> averaged;        ///< floating tensors, averaged
  std::vector<std::string> from_newest;     ///< other tensors, copied from the newest
};

/// Averages `key` over `checkpoints` (at least one; each one's directory must still hold
/// it). Construction verifies every file and checks that the checkpoints agree, reading no
/// tensor data beyond that; run() then streams the result. Errors: MissingKeyError (a
/// checkpoint lacks the key), CorruptCheckpointError (a file fails verification),
/// StaleCheckpointError, MismatchError (names, dtypes or shapes disagree), UsageError (no
/// checkpoint, the same one twice, F8 tensors).
class Averager {
 public:
  Averager(std::vector<Checkpoint> checkpoints, std::string key);
  ~Averager();
  Averager(const Averager&) = delete;
  Averager& operator=(const Averager&) = delete;

  /// The tensors run() produces, in that order (safetensors writing order), with dtype
  /// and shape (offsets are those of the newest checkpoint's file).
  const std::vector<safetensors::TensorInfo>& tensors() const noexcept;
  /// The checkpoints, newest first, as read from their directories.
  const std::vector<Checkpoint>& checkpoints() const noexcept;
  /// The newest checkpoint's file metadata (its "__metadata__").
  const std::map<std::string, std::string>& metadata() const noexcept;
  /// Calls `sink` once per tensor, in tensors() order. Can be called again.
  AverageReport run(const std::function<void(const AveragedTensor&)>& sink);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Averager(checkpoints, key).run(sink).
AverageReport average_checkpoints(std::vector<Checkpoint> checkpoints, const std::string& key,
                                  const std::function<void(const AveragedTensor&)>& sink);

/// The average as a standalone safetensors file at `output` (written to a temporary file,
/// fsynced, then renamed into place; an existing `output` is a UsageError). The metadata
/// keeps the newest file's entries and adds "savepoint.average" (JSON: key and the
/// checkpoint names). Extra memory: one tensor. What the CLI's `savepoint average` calls.
AverageReport write_average(std::vector<Checkpoint> checkpoints, const std::string& key,
                            const std::filesystem::path& output);

}  // namespace savepoint
