// savepoint/core.hpp — everything of savepoint that does not need LibTorch (the
// savepoint::core library): the Checkpointer and its engine, selection and retention,
// epoch counters, training-loop helpers, the hook table with JSON and member/ADL hooks,
// and the open formats. <savepoint/savepoint.hpp> adds the LibTorch built-ins.
#pragma once

#include <savepoint/average.hpp>
#include <savepoint/bundle.hpp>
#include <savepoint/checkpoint.hpp>
#include <savepoint/checkpointer.hpp>
#include <savepoint/config.hpp>
#include <savepoint/distributed.hpp>
#include <savepoint/distributed_sampler.hpp>
#include <savepoint/epoch_counter.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/hooks.hpp>
#include <savepoint/log.hpp>
#include <savepoint/options.hpp>
#include <savepoint/payload.hpp>
#include <savepoint/retention.hpp>
#include <savepoint/scrub.hpp>
#include <savepoint/selection.hpp>
#include <savepoint/training.hpp>
