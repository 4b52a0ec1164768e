// savepoint/ema.hpp — an exponential moving average of a module's weights (SuperGradients'
// ModelEMA, timm's ModelEma), saved as a key of its own and resumed exactly.
//
//   savepoint::ModuleEMA ema(*model, savepoint::EMAOptions().decay(0.999).warmup(2000));
//   ckpt.add_recoverables({{"model", model}, {"optimizer", opt}, {"ema", ema}});
//   ckpt.recover_if_possible();                 // restores the model, the EMA and its count
//   for (...) { optimizer.step(); ema.update(*model); }
//   // evaluation: the EMA weights when the checkpoint has them, else the model's
//   savepoint::load_for_evaluation(*eval_model, *ckpt.find_checkpoint(savepoint::min_key("loss")));
//
// After update number n (counted from 1, and saved), every floating parameter and floating
// buffer becomes   ema = d * ema + (1 - d) * model   (in the tensor's own dtype, in place),
// with d = decay, or with warm-up (SuperGradients' "exp" decay):
//   d = decay * (1 - exp(-n / warmup))
// so early updates follow the model closely. Non-floating buffers (BatchNorm's
// num_batches_tracked) are copied. The EMA lives on the model's devices.
// File: <key>.safetensors with the module's own tensor names (it loads into the module like a
// "model" key), and metadata "savepoint.ema" = {"decay", "warmup", "updates"}; hook
// "savepoint.ModuleEMA". Not thread-safe: update it from the training thread.
#pragma once

#include <savepoint/checkpoint.hpp>
#include <savepoint/detail/arg.hpp>
#include <savepoint/tensors.hpp>

#include <torch/nn/module.h>

#include <cstdint>
#include <string>

namespace savepoint {

class EMAOptions {
  /// The decay factor (0 <= decay <= 1); 0.9999 as timm and SuperGradients default to.
  SAVEPOINT_ARG(double, decay) = 0.9999;
  /// Warm-up length in updates: d = decay * (1 - exp(-updates / warmup)); 0 disables it.
  SAVEPOINT_ARG(double, warmup) = 0;

 public:
  EMAOptions() = default;
};

class ModuleEMA {
 public:
  /// Starts as a copy of `model`'s parameters and buffers (UsageError for bad options).
  explicit ModuleEMA(const torch::nn::Module& model, EMAOptions options = {});

  /// One step: folds the model's current weights into the average (names, dtypes and shapes
  /// must match the model the EMA was made from: MismatchError otherwise).
  void update(const torch::nn::Module& model);
  /// The decay used by update number `n` (1-based).
  double decay_at(std::int64_t n) const;
  std::int64_t updates() const noexcept { return updates_; }
  const EMAOptions& options() const noexcept { return options_; }
  /// The averaged parameters and buffers, by the module's names.
  const NamedTensors& state() const noexcept { return state_; }
  /// Copies the averaged weights into `model` (for evaluation; MismatchError if it differs).
  void copy_to(torch::nn::Module& model) const;

 private:
  friend struct EMAHooks;
  EMAOptions options_;
  std::int64_t updates_ = 0;
  NamedTensors state_;
};

/// Loads `checkpoint`'s EMA weights (key `ema_key`) into `model` when it has them, else its
/// plain weights (key `model_key`); verified and all-or-nothing like a load. Returns the key
/// it used.
std::string load_for_evaluation(torch::nn::Module& model, const Checkpoint& checkpoint,
                                const std::string& ema_key = "ema", const std::string& model_key = "model");

}  // namespace savepoint
