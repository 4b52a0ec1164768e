// process_group_from_environment (savepoint/c10d.hpp): the launcher's environment, read by
// launch_from_environment, turned into a store and c10d groups, the way torch.distributed's
// env:// rendezvous does it, so that a C++ job meets the same conventions as a Python one.
//
// The store: rank 0 serves a TCPStore at MASTER_ADDR:MASTER_PORT, the others connect. Under
// torchrun's agent store (TORCHELASTIC_USE_AGENT_STORE=True) the agent serves it and keeps it
// across restarts, so every rank is a client and this attempt's keys live under
// /worker/attempt_<TORCHELASTIC_RESTART_COUNT> (as 1.13's Python does; later releases leave the
// prefix out, and a restarted rank could then read a key of the attempt before).
#include <savepoint/c10d.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef SAVEPOINT_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in fmt/format.h before fmt 11)

#include <cstdlib>

namespace savepoint {

namespace {

std::vector<std::string> gloo_interfaces(const EnvironmentGroupOptions& options) {
  std::string list = options.interface();
  if (list.empty()) {
    const char* env = std::getenv("GLOO_SOCKET_IFNAME");
    if (env != nullptr) list = env;
  }
  std::vector<std::string> names;
  std::size_t pos = 0;
  while (pos < list.size()) {
    const auto comma = list.find(',', pos);
    const auto name = list.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    if (!name.empty()) names.push_back(name);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return names;
}

c10::intrusive_ptr<C10dGroup> gloo_group(const c10::intrusive_ptr<::c10d::Store>& store, int rank, int world,
                                         const EnvironmentGroupOptions& options) {
#ifdef SAVEPOINT_HAVE_GLOO
  auto gloo = ::c10d::ProcessGroupGloo::Options::create(options.timeout());
  const auto interfaces = gloo_interfaces(options);
  try {
    if (interfaces.empty()) gloo->devices.push_back(::c10d::ProcessGroupGloo::createDefaultDevice());
    for (const auto& name : interfaces)
      gloo->devices.push_back(::c10d::ProcessGroupGloo::createDeviceForInterface(name));
  } catch (const std::exception& e) {
    throw UsageError(fmt::format("savepoint: Gloo cannot use the network interface(s) '{}' (from {}): {}",
                                 fmt::join(interfaces, ","),
                                 options.interface().empty() ? "GLOO_SOCKET_IFNAME" : "EnvironmentGroupOptions::interface",
                                 e.what()));
  }
  return c10::make_intrusive<::c10d::ProcessGroupGloo>(store, rank, world, gloo);
#else
  (void)store, (void)rank, (void)world, (void)options;
  throw UsageError("savepoint: this build of savepoint has no Gloo (it was built without the Gloo headers, Debian's "
                   "libgloo-dev): give process_group_from_environment a backend (EnvironmentGroupOptions::backend)");
#endif
}

// TCPStore's libuv server (TCPStoreOptions::useLibUV, PyTorch 2.3 on, on by default from 2.4)
// is missing from builds without libuv, Debian's among them ("use_libuv was requested but
// PyTorch was build without libuv support"): the classic server unless USE_LIBUV=1, which is
// also the variable that makes torchrun's own stores work there (USE_LIBUV=0). Detected by the
// member, not by a version number.
template <class Options>
auto choose_store_server(Options& options, int) -> decltype(options.useLibUV = true, void()) {
  const char* env = std::getenv("USE_LIBUV");
  options.useLibUV = env != nullptr && std::string(env) == "1";
}
template <class Options>
void choose_store_server(Options&, long) {}  // 1.13: one server

c10::intrusive_ptr<::c10d::Store> join_store(const Launch& launch, const EnvironmentGroupOptions& options) {
  if (launch.world_size == 1) return c10::make_intrusive<::c10d::HashStore>();  // nobody to meet
  ::c10d::TCPStoreOptions tcp;
  tcp.port = static_cast<std::uint16_t>(launch.master_port);
  tcp.isServer = !launch.agent_store && launch.rank == 0;
  tcp.numWorkers = static_cast<std::size_t>(launch.world_size);
  tcp.timeout = options.store_timeout();
  tcp.multiTenant = true;  // as torch.distributed: another library of the process may serve the same address
  choose_store_server(tcp, 0);
  c10::intrusive_ptr<::c10d::Store> store;
  try {
    store = c10::make_intrusive<::c10d::TCPStore>(launch.master_addr, tcp);
  } catch (const std::exception& e) {
    throw DistributedError(
        fmt::format("savepoint: rank {} of {} could not {} the job's store at {}:{} ({}; {}) within {} s: {}", launch.rank,
                    launch.world_size, tcp.isServer ? "serve" : "reach", launch.master_addr, launch.master_port,
                    to_string(launch.launcher), launch.agent_store ? "served by torchrun's agent" : "served by rank 0",
                    std::chrono::duration_cast<std::chrono::seconds>(options.store_timeout()).count(), e.what()),
        launch.rank);
  }
  if (launch.agent_store)
    store = c10::make_intrusive<::c10d::PrefixStore>(fmt::format("/worker/attempt_{}", launch.restart_count), store);
  return store;
}

c10::intrusive_ptr<C10dGroup> make_group(const EnvironmentGroup& job, const std::string& prefix) {
  auto store = c10::make_intrusive<::c10d::PrefixStore>(prefix, job.store);
  const auto& launch = job.launch;
  try {
    auto group = job.options.backend()
                     ? job.options.backend()(store, launch.rank, launch.world_size, job.options.timeout())
                     : gloo_group(store, launch.rank, launch.world_size, job.options);
    if (!group) throw UsageError("savepoint: EnvironmentGroupOptions::backend returned a null group");
    return group;
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw DistributedError(fmt::format("savepoint: rank {} of {} could not join the group '{}': {}", launch.rank,
                                       launch.world_size, prefix, e.what()),
                           launch.rank);
  }
}

}  // namespace

c10::intrusive_ptr<C10dGroup> EnvironmentGroup::c10d_group(const std::string& name) const {
  if (name.empty()) throw UsageError("savepoint: EnvironmentGroup::c10d_group needs a name (the same on every rank)");
  return make_group(*this, "group:" + name);
}

std::shared_ptr<ProcessGroup> EnvironmentGroup::savepoint_group(const std::string& name) const {
  if (name.empty()) throw UsageError("savepoint: EnvironmentGroup::savepoint_group needs a name (the same on every rank)");
  return c10d_process_group(make_group(*this, "savepoint:" + name), options.timeout());
}

EnvironmentGroup process_group_from_environment(const EnvironmentGroupOptions& options) {
  if (options.timeout().count() <= 0 || options.store_timeout().count() <= 0)
    throw UsageError("savepoint: EnvironmentGroupOptions' timeouts must be positive");
  EnvironmentGroup job;
  job.launch = launch_from_environment();
  job.options = options;
  if (job.launch.rank == 0) detail::log(LogLevel::info, "savepoint: launched by {}", job.launch.describe());
  job.store = join_store(job.launch, options);
  job.group = c10d_process_group(make_group(job, "savepoint.group"), options.timeout(), job.store);
  return job;
}

}  // namespace savepoint
