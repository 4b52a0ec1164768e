// savepoint/launch.hpp — who started this process: its rank, world size, node and restart
// count as the launcher set them in the environment (docs/distributed.md, "Launching").
//
// Read in this order; the first convention present decides, and a partial or malformed one is
// an error naming the variable, what it held and what was expected (never a silent world of 1):
//   1. torchrun / torch elastic   TORCHELASTIC_RUN_ID, RANK, WORLD_SIZE, LOCAL_RANK,
//                                 LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT,
//                                 TORCHELASTIC_RESTART_COUNT, TORCHELASTIC_USE_AGENT_STORE
//   2. SLURM, a task of srun      SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NODEID,
//                                 SLURM_STEP_TASKS_PER_NODE, SLURM_JOB_ID, SLURM_RESTART_COUNT;
//                                 MASTER_ADDR, else the first host of SLURM_STEP_NODELIST /
//                                 SLURM_JOB_NODELIST; MASTER_PORT, else one derived from the job id
//   3. RANK and WORLD_SIZE        Kubeflow's PyTorchJob, or set by hand: MASTER_ADDR, MASTER_PORT,
//                                 LOCAL_RANK and LOCAL_WORLD_SIZE if set
//   4. OpenMPI's mpirun           OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE;
//                                 MASTER_ADDR and MASTER_PORT from the environment
//   none of them                  a world of one (the program was started by hand)
// The node id (the memory tier's default, MemoryTierOptions::node_id) is SAVEPOINT_NODE_ID if
// set, else SLURMD_NODENAME under SLURM, else the host name: a node's memory directory belongs
// to the machine, and the host name stays when torchrun renumbers nodes (GROUP_RANK) after one
// is lost.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace savepoint {

enum class Launcher {
  none,         // no launcher's variables: a world of one
  torchrun,     // torch.distributed.run / torch elastic
  slurm,        // a task started by srun
  environment,  // RANK and WORLD_SIZE (Kubeflow's PyTorchJob, or by hand)
  openmpi,      // mpirun (OMPI_COMM_WORLD_*)
};
std::string_view to_string(Launcher launcher) noexcept;

/// What the launcher says about this process.
struct Launch {
  Launcher launcher = Launcher::none;
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;        // among the processes of this node
  int local_world_size = 1;  // processes on this node
  int node_rank = 0;         // the node's index in this run (GROUP_RANK, SLURM_NODEID); may change on restart
  std::string node_id;       // the memory tier's default node id (see above)
  /// Where rank 0's (or torchrun's agent's) TCP store listens; empty only in a world of one.
  std::string master_addr;
  int master_port = 0;
  /// torchrun: the agent serves the store (TORCHELASTIC_USE_AGENT_STORE=True, PyTorch >= 2.4)
  /// and keeps it across restarts; every rank is a client and keys live under /worker/attempt_N.
  bool agent_store = false;
  int restart_count = 0;  // TORCHELASTIC_RESTART_COUNT, SLURM_RESTART_COUNT; 0 otherwise
  int max_restarts = -1;  // TORCHELASTIC_MAX_RESTARTS; -1: unknown
  std::string job_id;     // TORCHELASTIC_RUN_ID, SLURM_JOB_ID; empty otherwise

  /// One line for a log: "torchrun run 'x' (restart 1 of 2): rank 3 of 4, local 1 of 2, node 1 'host'".
  std::string describe() const;
};

/// Reads the process environment (see the order above). Throws UsageError on a partial or
/// malformed convention.
Launch launch_from_environment();

/// The same over any variable source (tests, or a launcher's variables kept elsewhere):
/// `lookup(name)` returns the value, or nullopt when unset.
using EnvironmentLookup = std::function<std::optional<std::string>(const std::string& name)>;
Launch launch_from_environment(const EnvironmentLookup& lookup);

/// SLURM's compressed host list, expanded in order: "node[01-03,07],gpu5" gives node01 node02
/// node03 node07 gpu5 (zero padding kept). Throws UsageError naming the list when malformed.
std::vector<std::string> expand_host_list(std::string_view list);

}  // namespace savepoint
