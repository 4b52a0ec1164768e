// savepoint/rng.hpp — random number generator state as a recoverable.
//
//   savepoint::TorchRngState rng;          // torch's default CPU generator + every CUDA device's
//   ckpt.add_recoverable("rng", rng);      // restored last, after anything that re-seeds
//
// A torch::Generator of your own can be added directly: ckpt.add_recoverable("gen", gen).
#pragma once

#include <savepoint/torch_builtins.hpp>  // its hooks are LibTorch built-ins

namespace savepoint {

/// Stands for torch's global default generators; holds no state of its own.
struct TorchRngState {
  /// Also save/restore the default generator of every visible CUDA device (when present).
  bool include_cuda = true;
};

}  // namespace savepoint
