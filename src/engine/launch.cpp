// The launchers' environments (savepoint/launch.hpp): one reader per convention, each checking
// every variable it uses. Pure parsing: nothing here connects to anything.
#include <savepoint/detail/io.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/launch.hpp>

#include "launch.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstdlib>
#include <limits>
#include <string_view>

namespace savepoint {

std::string_view to_string(Launcher launcher) noexcept {
  switch (launcher) {
    case Launcher::none: return "no launcher";
    case Launcher::torchrun: return "torchrun";
    case Launcher::slurm: return "SLURM";
    case Launcher::environment: return "RANK/WORLD_SIZE";
    case Launcher::openmpi: return "OpenMPI";
  }
  return "?";
}

std::string Launch::describe() const {
  std::string line{to_string(launcher)};
  if (!job_id.empty()) line += launcher == Launcher::torchrun ? fmt::format(" run '{}'", job_id) : " job " + job_id;
  if (restart_count > 0 || max_restarts > 0) {
    line += max_restarts >= 0 ? fmt::format(" (restart {} of at most {})", restart_count, max_restarts)
                              : fmt::format(" (restart {})", restart_count);
  }
  line += fmt::format(": rank {} of {}, local rank {} of {}, node {} '{}'", rank, world_size, local_rank,
                      local_world_size, node_rank, node_id);
  if (!master_addr.empty())
    line += fmt::format(", store {}:{}{}", master_addr, master_port, agent_store ? " (the agent's)" : "");
  return line;
}

namespace {

[[noreturn]] void bad(const std::string& launcher, const std::string& name, const std::string& value,
                      const std::string& expected) {
  throw UsageError(fmt::format("savepoint: the {} environment has {}='{}': expected {}", launcher, name, value,
                               expected));
}

class Reader {
 public:
  Reader(const EnvironmentLookup& lookup, std::string launcher) : lookup_(lookup), launcher_(std::move(launcher)) {}

  std::optional<std::string> get(const std::string& name) const { return lookup_(name); }
  bool has(const std::string& name) const { return lookup_(name).has_value(); }

  std::string text(const std::string& name) const {
    auto value = lookup_(name);
    if (!value) missing(name);
    if (value->empty()) bad(launcher_, name, *value, "a value (it is empty)");
    return *value;
  }
  /// An integer in [low, high], required.
  int integer(const std::string& name, long low, long high) const { return parse(name, text(name), low, high); }
  /// The same, or `fallback` when unset.
  int integer_or(const std::string& name, int fallback, long low, long high) const {
    auto value = lookup_(name);
    return value ? parse(name, *value, low, high) : fallback;
  }
  [[noreturn]] void missing(const std::string& name) const {
    throw UsageError(fmt::format("savepoint: the {} environment lacks {} (set by the launcher; is this process "
                                 "started by it?)",
                                 launcher_, name));
  }
  [[noreturn]] void invalid(const std::string& name, const std::string& value, const std::string& expected) const {
    bad(launcher_, name, value, expected);
  }
  const std::string& launcher() const { return launcher_; }

 private:
  int parse(const std::string& name, const std::string& value, long low, long high) const {
    errno = 0;
    char* end = nullptr;
    const long n = value.empty() ? 0 : std::strtol(value.c_str(), &end, 10);
    if (value.empty() || errno != 0 || *end != '\0' || n < low || n > high) {
      invalid(name, value,
              high == std::numeric_limits<int>::max() ? fmt::format("an integer >= {}", low)
                                                      : fmt::format("an integer from {} to {}", low, high));
    }
    return static_cast<int>(n);
  }

  const EnvironmentLookup& lookup_;
  std::string launcher_;
};

constexpr long kMaxInt = std::numeric_limits<int>::max();

void check_rank(const Reader& env, const Launch& launch, const std::string& rank_name, const std::string& local_name) {
  if (launch.rank >= launch.world_size)
    env.invalid(rank_name, std::to_string(launch.rank), fmt::format("a rank below the world size {}", launch.world_size));
  if (launch.local_rank >= launch.local_world_size)
    env.invalid(local_name, std::to_string(launch.local_rank),
                fmt::format("a local rank below the processes on this node ({})", launch.local_world_size));
}

void read_master(const Reader& env, Launch& launch) {
  launch.master_addr = env.text("MASTER_ADDR");
  launch.master_port = env.integer("MASTER_PORT", 1, 65535);
}

Launch from_torchrun(const EnvironmentLookup& lookup) {
  const Reader env(lookup, "torchrun");
  Launch l;
  l.launcher = Launcher::torchrun;
  l.job_id = env.text("TORCHELASTIC_RUN_ID");
  l.world_size = env.integer("WORLD_SIZE", 1, kMaxInt);
  l.rank = env.integer("RANK", 0, kMaxInt);
  l.local_world_size = env.integer("LOCAL_WORLD_SIZE", 1, kMaxInt);
  l.local_rank = env.integer("LOCAL_RANK", 0, kMaxInt);
  l.node_rank = env.integer_or("GROUP_RANK", 0, 0, kMaxInt);
  l.restart_count = env.integer_or("TORCHELASTIC_RESTART_COUNT", 0, 0, kMaxInt);
  l.max_restarts = env.integer_or("TORCHELASTIC_MAX_RESTARTS", -1, 0, kMaxInt);
  read_master(env, l);
  if (auto agent = env.get("TORCHELASTIC_USE_AGENT_STORE")) {
    if (*agent == "True" || *agent == "true" || *agent == "1") l.agent_store = true;
    else if (!(*agent == "False" || *agent == "false" || *agent == "0" || agent->empty()))
      env.invalid("TORCHELASTIC_USE_AGENT_STORE", *agent, "True or False");
  }
  check_rank(env, l, "RANK", "LOCAL_RANK");
  return l;
}

// "a,b,,c" -> a b "" c (an empty item stays, for the callers to refuse).
std::vector<std::string_view> split_commas(std::string_view text) {
  std::vector<std::string_view> items;
  for (std::size_t pos = 0;;) {
    const auto comma = text.find(',', pos);
    items.push_back(text.substr(pos, comma == std::string_view::npos ? std::string_view::npos : comma - pos));
    if (comma == std::string_view::npos) return items;
    pos = comma + 1;
  }
}

// "2(x3),1": per node, the tasks on it; the entry for node `node`.
int tasks_on_node(const Reader& env, const std::string& name, const std::string& list, int node) {
  int seen = 0;
  for (const std::string_view view : split_commas(list)) {
    const std::string item(view);  // sscanf needs the terminating NUL
    int tasks = 0, repeat = 1;
    char tail = 0;
    const int fields = std::sscanf(item.c_str(), "%d(x%d)%c", &tasks, &repeat, &tail);
    const bool plain = item.find('(') == std::string::npos && fields == 1 &&
                       item.find_first_not_of("0123456789") == std::string::npos;
    if (!(plain || (fields == 2 && item.back() == ')')) || tasks < 1 || repeat < 1)
      env.invalid(name, list, "tasks per node as SLURM writes them, e.g. '2(x3),1'");
    if (node < seen + repeat) return tasks;
    seen += repeat;
  }
  env.invalid(name, list, fmt::format("an entry for node {} (SLURM_NODEID)", node));
}

// MASTER_PORT under SLURM when unset: the same for every task and every requeue of a job, and
// spread over job ids so that jobs sharing a node rarely meet (set MASTER_PORT to be sure).
int port_for_job(int job_id) { return 15000 + job_id % 20000; }

Launch from_slurm(const EnvironmentLookup& lookup) {
  const Reader env(lookup, "SLURM");
  Launch l;
  l.launcher = Launcher::slurm;
  l.job_id = env.text("SLURM_JOB_ID");
  l.world_size = env.has("SLURM_NTASKS") ? env.integer("SLURM_NTASKS", 1, kMaxInt) : env.integer("SLURM_NPROCS", 1, kMaxInt);
  l.rank = env.integer("SLURM_PROCID", 0, kMaxInt);
  // The batch script itself has SLURM_PROCID=0 too, but no job step (SLURM_STEP_ID unset; -5,
  // the batch step, from Slurm 25 on): there it is not a rank of N > 1 tasks.
  const auto step = env.get("SLURM_STEP_ID");
  if ((!step || (!step->empty() && step->front() == '-')) && l.world_size > 1)
    throw UsageError(fmt::format("savepoint: this process runs in the batch script of SLURM job {} (SLURM_STEP_ID is {}), "
                                 "not in one of its {} tasks: start the ranks with srun",
                                 l.job_id, step ? "'" + *step + "'" : std::string("unset"), l.world_size));
  l.local_rank = env.integer("SLURM_LOCALID", 0, kMaxInt);
  l.node_rank = env.integer("SLURM_NODEID", 0, kMaxInt);
  const std::string per_node_name = env.has("SLURM_STEP_TASKS_PER_NODE") ? "SLURM_STEP_TASKS_PER_NODE" : "SLURM_TASKS_PER_NODE";
  l.local_world_size = env.has(per_node_name) ? tasks_on_node(env, per_node_name, env.text(per_node_name), l.node_rank)
                                              : l.world_size;
  l.restart_count = env.integer_or("SLURM_RESTART_COUNT", 0, 0, kMaxInt);
  if (env.has("MASTER_ADDR")) {
    l.master_addr = env.text("MASTER_ADDR");
  } else {
    const std::string list_name = env.has("SLURM_STEP_NODELIST") ? "SLURM_STEP_NODELIST" : "SLURM_JOB_NODELIST";
    const std::string list = env.text(list_name);
    try {
      l.master_addr = expand_host_list(list).at(0);
    } catch (const UsageError&) {
      env.invalid(list_name, list, "a SLURM host list, e.g. 'node[01-04,07]'");
    }
  }
  l.master_port = env.has("MASTER_PORT") ? env.integer("MASTER_PORT", 1, 65535)
                                          : port_for_job(env.integer("SLURM_JOB_ID", 0, kMaxInt));
  check_rank(env, l, "SLURM_PROCID", "SLURM_LOCALID");
  return l;
}

Launch from_rank_and_world(const EnvironmentLookup& lookup) {
  const Reader env(lookup, "RANK/WORLD_SIZE");
  Launch l;
  l.launcher = Launcher::environment;
  if (!env.has("WORLD_SIZE")) env.missing("WORLD_SIZE");  // RANK alone
  if (!env.has("RANK")) env.missing("RANK");
  l.world_size = env.integer("WORLD_SIZE", 1, kMaxInt);
  l.rank = env.integer("RANK", 0, kMaxInt);
  l.local_world_size = env.integer_or("LOCAL_WORLD_SIZE", 1, 1, kMaxInt);
  l.local_rank = env.integer_or("LOCAL_RANK", 0, 0, kMaxInt);
  l.node_rank = env.integer_or("GROUP_RANK", env.has("LOCAL_WORLD_SIZE") ? l.rank / l.local_world_size : l.rank, 0, kMaxInt);
  if (l.world_size > 1 || env.has("MASTER_ADDR") || env.has("MASTER_PORT")) read_master(env, l);
  check_rank(env, l, "RANK", "LOCAL_RANK");
  return l;
}

Launch from_openmpi(const EnvironmentLookup& lookup) {
  const Reader env(lookup, "OpenMPI");
  Launch l;
  l.launcher = Launcher::openmpi;
  l.world_size = env.integer("OMPI_COMM_WORLD_SIZE", 1, kMaxInt);
  l.rank = env.integer("OMPI_COMM_WORLD_RANK", 0, kMaxInt);
  l.local_world_size = env.integer_or("OMPI_COMM_WORLD_LOCAL_SIZE", 1, 1, kMaxInt);
  l.local_rank = env.integer_or("OMPI_COMM_WORLD_LOCAL_RANK", 0, 0, kMaxInt);
  l.node_rank = l.rank / l.local_world_size;  // mpirun's default mapping fills nodes in rank order
  l.job_id = env.get("OMPI_MCA_orte_ess_jobid").value_or("");
  if (l.world_size > 1) {
    if (!env.has("MASTER_ADDR") || !env.has("MASTER_PORT"))
      throw UsageError(fmt::format("savepoint: under mpirun, set MASTER_ADDR and MASTER_PORT for the store rank 0 "
                                   "serves (mpirun -x MASTER_ADDR=host -x MASTER_PORT=port); {} is unset",
                                   env.has("MASTER_ADDR") ? "MASTER_PORT" : "MASTER_ADDR"));
    read_master(env, l);
  }
  check_rank(env, l, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK");
  return l;
}

// Appends every expansion of `item` (text with [ranges] groups) to `out`.
void expand_item(std::string_view list, std::string_view item, std::vector<std::string>& out) {
  const auto open = item.find('[');
  if (open == std::string_view::npos) {
    if (item.find(']') != std::string_view::npos || item.empty())
      throw UsageError(fmt::format("savepoint: the host list '{}' is malformed (near '{}')", list, item));
    out.emplace_back(item);
    return;
  }
  const auto close = item.find(']', open);
  if (close == std::string_view::npos)
    throw UsageError(fmt::format("savepoint: the host list '{}' has an unclosed '['", list));
  const std::string_view prefix = item.substr(0, open), ranges = item.substr(open + 1, close - open - 1),
                         rest = item.substr(close + 1);
  std::vector<std::string> heads;
  for (const std::string_view range : split_commas(ranges)) {
    const auto dash = range.find('-');
    const std::string_view first = range.substr(0, dash);
    const std::string_view last = dash == std::string_view::npos ? first : range.substr(dash + 1);
    const auto digits = [](std::string_view s) {
      return !s.empty() && s.size() < 10 && s.find_first_not_of("0123456789") == std::string_view::npos;
    };
    if (!digits(first) || !digits(last))
      throw UsageError(fmt::format("savepoint: the host list '{}' has a bad range '{}'", list, range));
    const unsigned long lo = std::strtoul(std::string(first).c_str(), nullptr, 10);
    const unsigned long hi = std::strtoul(std::string(last).c_str(), nullptr, 10);
    if (hi < lo || hi - lo > 100000)
      throw UsageError(fmt::format("savepoint: the host list '{}' has a bad range '{}'", list, range));
    for (unsigned long n = lo; n <= hi; ++n) heads.push_back(fmt::format("{}{:0{}}", prefix, n, first.size()));
  }
  for (const auto& head : heads) {
    std::vector<std::string> tails;
    if (rest.empty()) tails.emplace_back();
    else expand_item(list, rest, tails);
    for (const auto& tail : tails) out.push_back(head + tail);
  }
}

}  // namespace

std::vector<std::string> expand_host_list(std::string_view list) {
  std::vector<std::string> hosts;
  std::size_t start = 0;
  int depth = 0;
  for (std::size_t i = 0; i <= list.size(); ++i) {
    if (i < list.size() && list[i] == '[') ++depth;
    if (i < list.size() && list[i] == ']') --depth;
    if (i == list.size() || (list[i] == ',' && depth == 0)) {
      expand_item(list, list.substr(start, i - start), hosts);
      start = i + 1;
    }
  }
  return hosts;
}

namespace {
std::string node_id_from(const EnvironmentLookup& lookup, Launcher launcher) {
  if (auto id = lookup("SAVEPOINT_NODE_ID"); id && !id->empty()) return *id;
  if (auto name = lookup("SLURMD_NODENAME"); launcher == Launcher::slurm && name && !name->empty()) return *name;
  return detail::host_name();
}

std::optional<std::string> process_environment(const std::string& name) {
  const char* value = std::getenv(name.c_str());
  return value ? std::optional<std::string>(value) : std::nullopt;
}
}  // namespace

Launch launch_from_environment(const EnvironmentLookup& lookup) {
  Launch launch;
  if (lookup("TORCHELASTIC_RUN_ID")) launch = from_torchrun(lookup);
  else if (lookup("SLURM_PROCID")) launch = from_slurm(lookup);
  else if (lookup("RANK") || lookup("WORLD_SIZE")) launch = from_rank_and_world(lookup);
  else if (lookup("OMPI_COMM_WORLD_RANK") || lookup("OMPI_COMM_WORLD_SIZE")) launch = from_openmpi(lookup);
  launch.node_id = node_id_from(lookup, launch.launcher);
  return launch;
}

Launch launch_from_environment() { return launch_from_environment(process_environment); }

namespace engine {
std::string default_node_id() {
  return node_id_from(process_environment, process_environment("SLURM_PROCID") ? Launcher::slurm : Launcher::none);
}
}  // namespace engine

}  // namespace savepoint
