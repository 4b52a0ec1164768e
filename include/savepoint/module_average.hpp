// savepoint/module_average.hpp — checkpoint averaging into LibTorch modules.
//
//   auto best = ckpt.find_checkpoints(savepoint::min_key("val_loss"), 5);
//   savepoint::load_average(*model, best, "model");   // the mean of the 5 best, in the model
// The arithmetic is savepoint/average.hpp's (float64 accumulator, integers from the newest).
// To keep the average as a checkpoint of its own, save it after loading it:
//   ckpt.save_checkpoint({{"averaged", 5}}, savepoint::named("average"));
// or as a standalone file without a module: savepoint::write_average(best, "model", path).
#pragma once

#include <savepoint/average.hpp>
#include <savepoint/tensors.hpp>

#include <torch/nn/module.h>

#include <string>
#include <vector>

namespace savepoint {

/// The average of `key` over `checkpoints` as CPU tensors (each owning its memory), in the
/// order of average.hpp's Averager::tensors(). Extra memory: the result plus one tensor.
TensorFile average_tensors(const std::vector<Checkpoint>& checkpoints, const std::string& key);

/// Loads the average of `key` over `checkpoints` into `module` (parameters and buffers, by
/// name, onto their devices). Every file is verified and the names, dtypes and shapes are
/// checked against the module before anything changes (MismatchError listing the problems);
/// the average is computed into new tensors and copied in only once complete, so a failure
/// leaves the module as it was. Extra memory: one model plus one tensor.
AverageReport load_average(torch::nn::Module& module, const std::vector<Checkpoint>& checkpoints,
                           const std::string& key);

}  // namespace savepoint
