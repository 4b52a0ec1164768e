// savepoint/savepoint.hpp — the one include a training program needs.
//
// Light on purpose: it does not include <torch/torch.h> (your program does). It is
// savepoint/core.hpp plus the LibTorch layer: built-in hooks for torch::nn::Module,
// optimizers, schedulers, tensors, samplers and generators, registered into the hook table
// at start-up (torch_builtins.hpp); see hooks.hpp for extending it. Link savepoint::savepoint.
#pragma once

#include <savepoint/core.hpp>
#include <savepoint/ema.hpp>
#include <savepoint/module_average.hpp>
#include <savepoint/rng.hpp>
#include <savepoint/schedulers.hpp>
#include <savepoint/sharded.hpp>
#include <savepoint/torch_builtins.hpp>
#include <savepoint/transfer.hpp>
