// The launchers' environments (savepoint/launch.hpp): each convention as its launcher sets it
// (variables copied from real runs of torchrun 1.13 and 2.6 and Slurm 22.05), SLURM's host
// lists, and an error naming the variable for each missing or malformed one.
#include <savepoint/errors.hpp>
#include <savepoint/launch.hpp>

#include "catch.hpp"

#include <map>

using namespace savepoint;

namespace {
using Env = std::map<std::string, std::string>;

Launch read(const Env& env) {
  return launch_from_environment([&env](const std::string& name) -> std::optional<std::string> {
    auto it = env.find(name);
    return it == env.end() ? std::nullopt : std::optional<std::string>(it->second);
  });
}

// The message of the UsageError reading `env` throws (fails the test when none is thrown).
std::string error_of(const Env& env) {
  try {
    read(env);
  } catch (const UsageError& e) {
    return e.what();
  }
  FAIL("no UsageError for a bad environment");
  return {};
}

Env without(Env env, const std::string& name) {
  env.erase(name);
  return env;
}
Env with(Env env, const std::string& name, const std::string& value) {
  env[name] = value;
  return env;
}

// torchrun --nnodes=1:2 --nproc_per_node=2, the second node's second worker after one restart.
const Env torchrun{{"TORCHELASTIC_RUN_ID", "job7"},  {"RANK", "3"},
                   {"WORLD_SIZE", "4"},              {"LOCAL_RANK", "1"},
                   {"LOCAL_WORLD_SIZE", "2"},        {"GROUP_RANK", "1"},
                   {"MASTER_ADDR", "10.0.0.1"},      {"MASTER_PORT", "29512"},
                   {"TORCHELASTIC_RESTART_COUNT", "1"}, {"TORCHELASTIC_MAX_RESTARTS", "2"},
                   {"TORCHELASTIC_USE_AGENT_STORE", "True"}, {"SLURM_PROCID", "0"}};  // torchrun inside a SLURM job

// srun -N2 --ntasks=4 in a requeued job: the third task (second node, first local).
const Env slurm{{"SLURM_PROCID", "2"},       {"SLURM_STEP_ID", "0"},       {"SLURM_NTASKS", "4"},          {"SLURM_LOCALID", "0"},
                {"SLURM_NODEID", "1"},       {"SLURM_JOB_ID", "4242"},       {"SLURM_RESTART_COUNT", "1"},
                {"SLURM_STEP_NODELIST", "gpu[07-08]"}, {"SLURM_JOB_NODELIST", "gpu[07-08]"},
                {"SLURM_STEP_TASKS_PER_NODE", "2(x2)"}, {"SLURMD_NODENAME", "gpu08"}};
}  // namespace

TEST_CASE("launch: torchrun's variables give rank, world, node, store and restart", "[launch]") {
  const auto l = read(torchrun);
  CHECK(l.launcher == Launcher::torchrun);
  CHECK(l.rank == 3);
  CHECK(l.world_size == 4);
  CHECK(l.local_rank == 1);
  CHECK(l.local_world_size == 2);
  CHECK(l.node_rank == 1);
  CHECK(l.master_addr == "10.0.0.1");
  CHECK(l.master_port == 29512);
  CHECK(l.restart_count == 1);
  CHECK(l.max_restarts == 2);
  CHECK(l.agent_store);
  CHECK(l.job_id == "job7");
  CHECK(l.describe() == "torchrun run 'job7' (restart 1 of at most 2): rank 3 of 4, local rank 1 of 2, node 1 '" +
                            l.node_id + "', store 10.0.0.1:29512 (the agent's)");
  // 1.13's torchrun sets no TORCHELASTIC_USE_AGENT_STORE: rank 0 serves the store.
  CHECK_FALSE(read(without(torchrun, "TORCHELASTIC_USE_AGENT_STORE")).agent_store);
  CHECK_FALSE(read(with(torchrun, "TORCHELASTIC_USE_AGENT_STORE", "False")).agent_store);
  // The node id is the host's (GROUP_RANK changes when torchrun renumbers nodes), or SAVEPOINT_NODE_ID.
  CHECK_FALSE(l.node_id.empty());
  CHECK(read(with(torchrun, "SAVEPOINT_NODE_ID", "rack2-n5")).node_id == "rack2-n5");
}

TEST_CASE("launch: an srun task's variables, the master from the host list", "[launch]") {
  const auto l = read(slurm);
  CHECK(l.launcher == Launcher::slurm);
  CHECK(l.rank == 2);
  CHECK(l.world_size == 4);
  CHECK(l.local_rank == 0);
  CHECK(l.local_world_size == 2);
  CHECK(l.node_rank == 1);
  CHECK(l.node_id == "gpu08");
  CHECK(l.master_addr == "gpu07");
  CHECK(l.master_port == 15000 + 4242);  // the same for every task and every requeue of the job
  CHECK(l.restart_count == 1);
  CHECK(l.job_id == "4242");
  CHECK(read(with(slurm, "MASTER_ADDR", "10.1.1.1")).master_addr == "10.1.1.1");
  CHECK(read(with(slurm, "MASTER_PORT", "23456")).master_port == 23456);
  CHECK(read(without(slurm, "SLURM_RESTART_COUNT")).restart_count == 0);
  CHECK(read(without(slurm, "SLURM_STEP_NODELIST")).master_addr == "gpu07");  // the job's list
  // Uneven nodes: 3 tasks on node 0, 1 on node 1.
  CHECK(read(with(slurm, "SLURM_STEP_TASKS_PER_NODE", "3,1")).local_world_size == 1);
  CHECK(read(with(with(slurm, "SLURM_STEP_TASKS_PER_NODE", "3,1"), "SLURM_NODEID", "0")).local_world_size == 3);
  // Outside SLURM, SLURMD_NODENAME is not the node id.
  CHECK(read(with(Env{{"RANK", "0"}, {"WORLD_SIZE", "1"}}, "SLURMD_NODENAME", "gpu08")).node_id != "gpu08");
}

TEST_CASE("launch: RANK/WORLD_SIZE (Kubeflow), OpenMPI, and no launcher", "[launch]") {
  const Env kubeflow{{"RANK", "1"}, {"WORLD_SIZE", "3"}, {"MASTER_ADDR", "job-master-0"}, {"MASTER_PORT", "23456"}};
  const auto k = read(kubeflow);
  CHECK(k.launcher == Launcher::environment);
  CHECK(k.rank == 1);
  CHECK(k.world_size == 3);
  CHECK(k.local_rank == 0);
  CHECK(k.local_world_size == 1);
  CHECK(k.node_rank == 1);
  CHECK(k.master_addr == "job-master-0");
  CHECK(k.master_port == 23456);
  // A world of one needs no store address.
  CHECK(read(Env{{"RANK", "0"}, {"WORLD_SIZE", "1"}}).master_addr.empty());

  const Env mpi{{"OMPI_COMM_WORLD_RANK", "5"},       {"OMPI_COMM_WORLD_SIZE", "8"},
                {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"},
                {"MASTER_ADDR", "head"},             {"MASTER_PORT", "29500"}};
  const auto m = read(mpi);
  CHECK(m.launcher == Launcher::openmpi);
  CHECK(m.rank == 5);
  CHECK(m.world_size == 8);
  CHECK(m.local_rank == 1);
  CHECK(m.local_world_size == 4);
  CHECK(m.node_rank == 1);
  CHECK(m.master_addr == "head");

  const auto none = read(Env{{"SAVEPOINT_NODE_ID", "here"}});
  CHECK(none.launcher == Launcher::none);
  CHECK(none.rank == 0);
  CHECK(none.world_size == 1);
  CHECK(none.master_addr.empty());
  CHECK(none.node_id == "here");
}

TEST_CASE("launch: a missing or malformed variable is named with its value and what was expected", "[launch]") {
  using Catch::Contains;
  CHECK_THAT(error_of(without(torchrun, "MASTER_PORT")), Contains("torchrun environment lacks MASTER_PORT"));
  CHECK_THAT(error_of(without(torchrun, "LOCAL_RANK")), Contains("lacks LOCAL_RANK"));
  CHECK_THAT(error_of(with(torchrun, "RANK", "x3")), Contains("RANK='x3': expected an integer >= 0"));
  CHECK_THAT(error_of(with(torchrun, "RANK", "4")), Contains("RANK='4': expected a rank below the world size 4"));
  CHECK_THAT(error_of(with(torchrun, "WORLD_SIZE", "0")), Contains("WORLD_SIZE='0': expected an integer >= 1"));
  CHECK_THAT(error_of(with(torchrun, "MASTER_PORT", "70000")),
             Contains("MASTER_PORT='70000': expected an integer from 1 to 65535"));
  CHECK_THAT(error_of(with(torchrun, "MASTER_ADDR", "")), Contains("MASTER_ADDR='': expected a value (it is empty)"));
  CHECK_THAT(error_of(with(torchrun, "LOCAL_RANK", "2")),
             Contains("LOCAL_RANK='2': expected a local rank below the processes on this node (2)"));
  CHECK_THAT(error_of(with(torchrun, "TORCHELASTIC_USE_AGENT_STORE", "maybe")),
             Contains("TORCHELASTIC_USE_AGENT_STORE='maybe': expected True or False"));
  CHECK_THAT(error_of(with(torchrun, "TORCHELASTIC_RESTART_COUNT", "-1")),
             Contains("TORCHELASTIC_RESTART_COUNT='-1'"));

  CHECK_THAT(error_of(without(slurm, "SLURM_NTASKS")), Contains("SLURM environment lacks SLURM_NPROCS"));
  CHECK_THAT(error_of(without(slurm, "SLURM_JOB_ID")), Contains("lacks SLURM_JOB_ID"));
  // The batch script (no job step; Slurm 25 on: the batch step -5) is not a rank.
  for (const auto& batch : {without(slurm, "SLURM_STEP_ID"), with(slurm, "SLURM_STEP_ID", "-5")})
    CHECK_THAT(error_of(with(batch, "SLURM_PROCID", "0")),
               Contains("runs in the batch script of SLURM job 4242") && Contains("not in one of its 4 tasks: start the ranks with srun"));
  CHECK(read(Env{{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}, {"SLURM_LOCALID", "0"}, {"SLURM_NODEID", "0"},
                 {"SLURM_JOB_ID", "7"}, {"SLURM_JOB_NODELIST", "n1"}}).world_size == 1);  // a batch script of one task
  CHECK_THAT(error_of(with(slurm, "SLURM_PROCID", "4")), Contains("SLURM_PROCID='4': expected a rank below the world size 4"));
  CHECK_THAT(error_of(with(slurm, "SLURM_STEP_TASKS_PER_NODE", "2(x1)")),
             Contains("SLURM_STEP_TASKS_PER_NODE='2(x1)': expected an entry for node 1"));
  CHECK_THAT(error_of(with(slurm, "SLURM_STEP_TASKS_PER_NODE", "2(3)")),
             Contains("SLURM_STEP_TASKS_PER_NODE='2(3)': expected tasks per node as SLURM writes them"));
  CHECK_THAT(error_of(with(slurm, "SLURM_STEP_NODELIST", "gpu[07-")),
             Contains("SLURM_STEP_NODELIST='gpu[07-': expected a SLURM host list"));

  CHECK_THAT(error_of(Env{{"RANK", "0"}}), Contains("RANK/WORLD_SIZE environment lacks WORLD_SIZE"));
  CHECK_THAT(error_of(Env{{"WORLD_SIZE", "2"}}), Contains("lacks RANK"));
  CHECK_THAT(error_of(Env{{"RANK", "0"}, {"WORLD_SIZE", "2"}}), Contains("lacks MASTER_ADDR"));
  CHECK_THAT(error_of(Env{{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}}), Contains("lacks MASTER_PORT"));
  CHECK_THAT(error_of(Env{{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"}}),
             Contains("under mpirun, set MASTER_ADDR and MASTER_PORT"));
}

TEST_CASE("launch: SLURM host lists expand as scontrol show hostnames does", "[launch]") {
  using V = std::vector<std::string>;
  CHECK(expand_host_list("node01") == V{"node01"});
  CHECK(expand_host_list("node[01-04,07]") == V{"node01", "node02", "node03", "node04", "node07"});
  CHECK(expand_host_list("a[8-10],b5") == V{"a8", "a9", "a10", "b5"});
  CHECK(expand_host_list("n[098-101]") == V{"n098", "n099", "n100", "n101"});
  CHECK(expand_host_list("r[1-2]-n[1-2]") == V{"r1-n1", "r1-n2", "r2-n1", "r2-n2"});
  CHECK(expand_host_list("x,y[3],z") == V{"x", "y3", "z"});
  for (const char* bad : {"", "a[", "a[1-", "a]", "a[2-1]", "a[x]", "a,,b", "a[1-2"})
    CHECK_THROWS_AS(expand_host_list(bad), UsageError);
}
