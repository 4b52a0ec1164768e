// savepoint/savepoint.hpp — the one include a training program needs.
//
// Light on purpose: it does not include <torch/torch.h> (your program does). Built-in hooks
// for torch::nn::Module, optimizers, schedulers, tensors and generators live in the compiled
// library and are found through the hook table; see hooks.hpp for extending it.
#pragma once

#include <savepoint/checkpoint.hpp>
#include <savepoint/checkpointer.hpp>
#include <savepoint/config.hpp>
#include <savepoint/epoch_counter.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/hooks.hpp>
#include <savepoint/log.hpp>
#include <savepoint/retention.hpp>
#include <savepoint/rng.hpp>
#include <savepoint/selection.hpp>
#include <savepoint/training.hpp>
#include <savepoint/transfer.hpp>
