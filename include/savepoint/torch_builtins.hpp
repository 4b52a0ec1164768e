// savepoint/torch_builtins.hpp — puts the LibTorch built-in hooks (torch::nn::Module,
// optimizers, schedulers, tensors, samplers, generators, TorchRngState) into the hook table.
//
// Included by savepoint.hpp, tensors.hpp and transfer.hpp: a program that includes any of
// them and links savepoint::savepoint has the built-ins registered before main() runs. The
// core (savepoint::core, savepoint/core.hpp) never calls into LibTorch; this is the one place
// where the LibTorch layer plugs into it. Torch-free itself.
#pragma once

namespace savepoint::detail {
/// Registers the built-ins once; returns true. Defined in the savepoint::savepoint library.
bool register_torch_builtins();
inline const bool torch_builtins_registered = register_torch_builtins();
}  // namespace savepoint::detail
