// savepoint/c10d.hpp — a savepoint::ProcessGroup over a LibTorch c10d process group (Gloo on
// CPU; NCCL is untested). The only file that knows c10d's classes. It takes what each LibTorch
// gives a user: a c10d::ProcessGroup (1.13's groups, and 2.x's wrapper), a c10d::Backend
// (2.x's ProcessGroupGloo, ProcessGroupNCCL, ProcessGroupMPI), or a pointer to a class derived
// from either, without a cast. This compiles on 1.13 and 2.x alike:
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
//
// SIGPIPE: a socket write to a peer that died raises SIGPIPE, whose default action ends the
// process. Python ignores it at start-up; a C++ program does not. So that a peer's death
// raises DistributedError on the survivors, as it does under Python, c10d_process_group sets
// SIGPIPE to "ignore" when it finds the default action there (and rank 0 logs that once
// at info level). A handler the program installed itself is left alone.
#pragma once

#include <savepoint/distributed.hpp>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <memory>
#include <type_traits>
#include <utility>

namespace savepoint {

/// `timeout` bounds every collective savepoint runs (a dead or stuck rank makes the others
/// raise DistributedError after at most about this long).
std::shared_ptr<ProcessGroup> c10d_process_group(c10::intrusive_ptr<::c10d::ProcessGroup> group,
                                                 std::chrono::milliseconds timeout);
std::shared_ptr<ProcessGroup> c10d_process_group(c10::intrusive_ptr<::c10d::Backend> group,
                                                 std::chrono::milliseconds timeout);

/// The same with the job's store (the one the process group rendezvoused on, or any store
/// every rank reaches): IntervalSaver then agrees on preemption and time-based saves through
/// it, with no collective on the steps that do not save. savepoint's keys start with
/// "savepoint/".
std::shared_ptr<ProcessGroup> c10d_process_group(c10::intrusive_ptr<::c10d::ProcessGroup> group,
                                                 std::chrono::milliseconds timeout,
                                                 c10::intrusive_ptr<::c10d::Store> store);
std::shared_ptr<ProcessGroup> c10d_process_group(c10::intrusive_ptr<::c10d::Backend> group,
                                                 std::chrono::milliseconds timeout,
                                                 c10::intrusive_ptr<::c10d::Store> store);

/// A pointer to a derived group (`intrusive_ptr<c10d::ProcessGroupGloo>`, say) converts to
/// either base implicitly, so the overloads above would be ambiguous for it: this picks the
/// base it derives from (ProcessGroup in 1.13, Backend in 2.x).
template <class Group, class... Store,
          std::enable_if_t<(std::is_base_of_v<::c10d::ProcessGroup, Group> ||
                            std::is_base_of_v<::c10d::Backend, Group>) &&
                               !std::is_same_v<Group, ::c10d::ProcessGroup> && !std::is_same_v<Group, ::c10d::Backend>,
                           int> = 0>
std::shared_ptr<ProcessGroup> c10d_process_group(c10::intrusive_ptr<Group> group, std::chrono::milliseconds timeout,
                                                 Store&&... store) {
  using Base = std::conditional_t<std::is_base_of_v<::c10d::Backend, Group>, ::c10d::Backend, ::c10d::ProcessGroup>;
  return c10d_process_group(c10::intrusive_ptr<Base>(std::move(group)), timeout, std::forward<Store>(store)...);
}

}  // namespace savepoint
