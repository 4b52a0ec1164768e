// savepoint/c10d.hpp — a savepoint::ProcessGroup over a LibTorch c10d process group (Gloo on
// CPU; NCCL is untested). The only file that knows c10d's classes, which changed between
// LibTorch 1.13 and 2.x (src/torch/c10d.cpp guards the differences).
//
//   auto store = c10::make_intrusive<c10d::FileStore>(path, world);
//   auto options = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(10));
//   options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface("lo"));
//   auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
//   savepoint::CheckpointerOptions opts;
//   opts.process_group(savepoint::c10d_process_group(pg, std::chrono::seconds(10), store));
//
// Give savepoint its own process group (not the one the gradients are reduced on): its
// collectives then never interleave with the training's, and its timeout is its own.
// Messages travel as uint8 CPU tensors (a length, then the bytes): a Gloo group works as is.
#pragma once

#include <savepoint/distributed.hpp>

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <memory>

namespace savepoint {

/// `timeout` bounds every collective savepoint runs (a dead or stuck rank makes the others
/// raise DistributedError after at most about this long).
std::shared_ptr<ProcessGroup> c10d_process_group(c10::intrusive_ptr<::c10d::ProcessGroup> group,
                                                 std::chrono::milliseconds timeout);

/// The same with the job's store (the one the process group rendezvoused on, or any store
/// every rank reaches): IntervalSaver then agrees on preemption and time-based saves through
/// it, with no collective on the steps that do not save. savepoint's keys start with
/// "savepoint/".
std::shared_ptr<ProcessGroup> c10d_process_group(c10::intrusive_ptr<::c10d::ProcessGroup> group,
                                                 std::chrono::milliseconds timeout,
                                                 c10::intrusive_ptr<::c10d::Store> store);

}  // namespace savepoint
