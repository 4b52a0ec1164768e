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
// Started by a launcher (torchrun, srun, Kubeflow, mpirun), one call builds all of it from the
// environment (savepoint/launch.hpp; docs/distributed.md, "Launching"):
//
//   auto job = savepoint::process_group_from_environment();   // the store, and Gloo groups on it
//   auto train_pg = job.c10d_group("train");                    // the gradients' own group
//   savepoint::CheckpointerOptions opts;
//   opts.process_group(job.group);                              // savepoint's, with the store
//
// SIGPIPE: a socket write to a peer that died raises SIGPIPE, whose default action ends the
// process. Python ignores it at start-up; a C++ program does not. So that a peer's death
// raises DistributedError on the survivors, as it does under Python, c10d_process_group sets
// SIGPIPE to "ignore" when it finds the default action there (and rank 0 logs that once
// at info level). A handler the program installed itself is left alone.
#pragma once

#include <savepoint/detail/arg.hpp>
#include <savepoint/distributed.hpp>
#include <savepoint/launch.hpp>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/version.h>

#include <chrono>
#include <functional>
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

/// The class LibTorch's Gloo, NCCL and MPI groups derive from: c10d::Backend from 2.0 on,
/// c10d::ProcessGroup in 1.13 (the one place savepoint's API tells the two apart).
#if TORCH_VERSION_MAJOR >= 2
using C10dGroup = ::c10d::Backend;
#else
using C10dGroup = ::c10d::ProcessGroup;
#endif

class EnvironmentGroupOptions {
 public:
  /// Builds one group on a store (a prefix of the job's store), e.g. ProcessGroupNCCL.
  using Backend = std::function<c10::intrusive_ptr<C10dGroup>(const c10::intrusive_ptr<::c10d::Store>& store, int rank,
                                                              int world_size, std::chrono::milliseconds timeout)>;
  /// Bounds every collective savepoint runs on its group, and every group's operations.
  SAVEPOINT_ARG(std::chrono::milliseconds, timeout) = std::chrono::minutes(2);
  /// How long the ranks wait for each other at the store and at each group's rendezvous.
  SAVEPOINT_ARG(std::chrono::milliseconds, store_timeout) = std::chrono::minutes(5);
  /// Gloo's network interfaces, comma-separated (e.g. "eth0"); empty: GLOO_SOCKET_IFNAME if set,
  /// else the address the host name resolves to (as torch.distributed does).
  SAVEPOINT_ARG(std::string, interface);
  /// Builds the groups instead of Gloo (null: Gloo).
  SAVEPOINT_ARG(Backend, backend);
};

/// A job's processes joined from the launcher's environment.
struct EnvironmentGroup {
  Launch launch;                          // rank, world size, node, restart count, as the launcher said
  c10::intrusive_ptr<::c10d::Store> store;  // the job's store (for this attempt, under torchrun's agent)
  std::shared_ptr<ProcessGroup> group;    // savepoint's own group with the store: CheckpointerOptions::process_group
  EnvironmentGroupOptions options;

  /// A further c10d group on its own prefix of the store: the training's collectives. Every rank
  /// asks for the same names in the same order.
  c10::intrusive_ptr<C10dGroup> c10d_group(const std::string& name) const;
  /// The same, for savepoint (MemoryTierOptions::replication_group).
  std::shared_ptr<ProcessGroup> savepoint_group(const std::string& name) const;
};

/// Reads the launcher's environment (launch_from_environment) and joins the job: a TCPStore at
/// MASTER_ADDR:MASTER_PORT (served by rank 0, or by torchrun's agent where it says so; an
/// in-memory store in a world of one), and savepoint's group on it (Gloo unless
/// options.backend). Throws UsageError naming the variable for a bad environment, and
/// DistributedError when the ranks cannot meet within store_timeout.
EnvironmentGroup process_group_from_environment(const EnvironmentGroupOptions& options = {});

}  // namespace savepoint
