// Training loops over real processes and real Gloo: agreed preemption and time-based saves,
// exact resume at the same world size, exactly-once resume at another one, per-rank RNG at
// another world size. Drives examples/train_ddp (the training) and tests/dist_worker_training
// (the agreement's counts, the RNG); every run is bounded (tests/spawn.hpp: leftovers
// SIGKILLed, a failure).
#include "spawn.hpp"
#include "support.hpp"

#include <savepoint/core.hpp>
#include <savepoint/detail/meta.hpp>

#include <fmt/format.h>

#include <signal.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <tuple>
#include <random>
#include <sstream>
#include <thread>

#ifndef SAVEPOINT_DIST_TRAIN_WORKER
#error "SAVEPOINT_DIST_TRAIN_WORKER (the path of tests/dist_worker, which runs the training scenarios) must be defined"
#endif

namespace {
namespace fs = std::filesystem;
constexpr auto kRunTimeout = std::chrono::seconds(60);

// `world` processes started together (tests/spawn.hpp), one per rank; bounded by kRunTimeout
// (leftovers SIGKILLed, a failure naming them). argv(rank) gives each rank's command line
// (argv[0] first).
std::unique_ptr<test::Children> start_job(int world, const std::function<std::vector<std::string>(int)>& argv) {
  auto job = std::make_unique<test::Children>(kRunTimeout);
  for (int r = 0; r < world; ++r) job->start({fmt::format("rank {}", r), argv(r)});
  return job;
}

int g_store = 0;
std::string fresh_store(const fs::path& root) { return (root / fmt::format("store-{}", g_store++)).string(); }

std::vector<savepoint::Checkpoint> listed(const fs::path& dir) {
  savepoint::Checkpointer reader(dir, savepoint::CheckpointerOptions().read_only(true));
  return reader.list_checkpoints();
}

std::vector<std::string> lines_with(const std::string& text, const std::string& prefix) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(prefix, 0) == 0) out.push_back(line);
  return out;
}

#ifdef SAVEPOINT_TRAIN_DDP
// A train_ddp job of `world` ranks on `dir`; extra arguments for every rank.
std::unique_ptr<test::Children> train(const fs::path& root, const fs::path& dir, int world, const std::vector<std::string>& extra) {
  const std::string store = fresh_store(root);
  return start_job(world, [&](int r) {
    std::vector<std::string> a{SAVEPOINT_TRAIN_DDP, dir.string(), "--rank", std::to_string(r), "--world",
                               std::to_string(world), "--store", store, "--trace"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  });
}

// A train_ddp job with the memory tier: `world` ranks, `per_node` to a node; node n's memory
// directory is <shm>/node<n> (rank r on node first_node + r / per_node).
std::unique_ptr<test::Children> train_tier(const fs::path& root, const fs::path& dir, const fs::path& shm, int world,
                                           int per_node, int first_node, const std::vector<std::string>& extra) {
  const std::string store = fresh_store(root);
  return start_job(world, [&](int r) {
    const std::string node = std::to_string(first_node + r / per_node);
    std::vector<std::string> a{SAVEPOINT_TRAIN_DDP, dir.string(), "--rank", std::to_string(r), "--world",
                               std::to_string(world), "--store", store, "--trace", "--memory",
                               (shm / ("node" + node)).string(), "--node", "n" + node};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  });
}

// Waits (bounded) until node `node`'s memory tier under `shm` marks complete a checkpoint of
// epoch `epoch` at position `position` or later (meta "epoch", "position" as train_ddp saves).
bool wait_for_complete(const fs::path& shm, int node, int epoch, int position) {
  const fs::path root = shm / ("node" + std::to_string(node));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    std::error_code ec;
    for (const auto& marker : fs::directory_iterator(root / "complete", ec)) {
      try {
        const auto c = savepoint::detail::read_checkpoint(root / "own" / marker.path().filename());
        if (std::make_pair(c.meta.at("epoch").get<int>(), c.meta.at("position").get<int>()) >=
            std::make_pair(epoch, position))
          return true;
      } catch (const std::exception&) {  // dropped by retention meanwhile
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return false;
}

// Resumed from memory, or from the disk because it held the newer checkpoint: a kill can land
// after an epoch's disk checkpoint and before the next memory one is complete (the rule is
// "the newest complete source", and the log says which one it took).
static bool resumed_from_newest_tier(const std::string& output) {
  return output.find(" in memory (saved by 4 ranks)") != std::string::npos ||
         output.find("has a checkpoint newer than the memory tier's") != std::string::npos;
}

// The job's consumption: (epoch, position, rank) -> the rank's slice of that global batch.
// A step logged twice (replayed after a SIGKILL) must consume the same samples.
using Consumed = std::map<std::tuple<int, int, int>, std::vector<int>>;
void add_consumption(Consumed& all, const test::Children& job, bool allow_replay) {
  for (int r = 0; r < static_cast<int>(job.size()); ++r) {
    for (const auto& line : lines_with(job.output(r), "consumed epoch ")) {
      int epoch = 0, position = 0;
      REQUIRE(std::sscanf(line.c_str(), "consumed epoch %d position %d:", &epoch, &position) == 2);
      std::istringstream rest(line.substr(line.find(':') + 1));
      std::vector<int> indices;
      for (int i; rest >> i;) indices.push_back(i);
      const auto [it, fresh] = all.emplace(std::make_tuple(epoch, position, r), indices);
      if (!fresh) {
        INFO(line);
        REQUIRE(allow_replay);  // consumed twice: only a SIGKILLed run replays its unsaved steps
        REQUIRE(it->second == indices);
      }
    }
  }
}
// The global order per epoch: batches by position, slices by rank.
std::map<int, std::vector<int>> global_order(const Consumed& all) {
  std::map<int, std::vector<int>> out;
  for (const auto& [key, slice] : all) {
    auto& epoch = out[std::get<0>(key)];
    epoch.insert(epoch.end(), slice.begin(), slice.end());
  }
  return out;
}
// The global order per epoch of a killed run (`got`) and the run that resumed it at another
// world size (`resumed`), which consumed again, on other ranks, what `got` consumed after its
// last checkpoint: merged by global batch, the resumed run's batch replacing a replayed one.
std::map<int, std::vector<int>> merged_global_order(const Consumed& got, const Consumed& resumed) {
  std::map<std::pair<int, int>, std::vector<int>> batches;  // (epoch, position) -> global batch, by rank order
  for (const Consumed* part : std::initializer_list<const Consumed*>{&got, &resumed}) {
    std::map<std::pair<int, int>, std::vector<int>> these;
    for (const auto& [key, slice] : *part) {
      auto& b = these[{std::get<0>(key), std::get<1>(key)}];
      b.insert(b.end(), slice.begin(), slice.end());
    }
    for (auto& [k, b] : these) batches[k] = b;  // the resumed run's batch replaces a replayed one
  }
  std::map<int, std::vector<int>> order;
  for (const auto& [k, b] : batches) order[k.first].insert(order[k.first].end(), b.begin(), b.end());
  return order;
}
std::vector<double> final_weights(const test::Children& job) {
  const auto lines = lines_with(job.output(0), "rank 0: weights ");
  REQUIRE(lines.size() == 1);
  std::istringstream in(lines[0].substr(std::string("rank 0: weights ").size()));
  std::vector<double> w;
  for (double v; in >> v;) w.push_back(v);
  return w;
}
std::string final_hash(const test::Children& job) {
  std::string hash;
  for (int r = 0; r < static_cast<int>(job.size()); ++r) {
    const auto lines = lines_with(job.output(r), fmt::format("rank {}: final weights ", r));
    REQUIRE(lines.size() == 1);
    const std::string h = lines[0].substr(lines[0].rfind(' ') + 1);
    if (r == 0) hash = h;
    CHECK(h == hash);  // every rank holds the same weights
  }
  return hash;
}
#endif
}  // namespace

TEST_CASE("rank 0's clock decides a time-based save: every rank saves the same steps and no other step runs a collective",
          "[distributed][ddp]") {
  test::TempDir tmp;
  const int world = 3;
  const std::string store = fresh_store(tmp.path());
  const auto job = start_job(world, [&](int r) {
    return std::vector<std::string>{SAVEPOINT_DIST_TRAIN_WORKER, "time", std::to_string(r), std::to_string(world),
                                    store, (tmp.path() / "ckpt").string(), "12"};
  });
  job->wait_all();
  job->require_all_ok();
  // Due at steps 3 and 8 on rank 0's clock (every 3 minutes, 1 minute a step), saved 2 steps later.
  for (int r = 0; r < world; ++r) CHECK(job->output(r).find("saved at steps: 5 10\n") != std::string::npos);
  const auto saved = listed(tmp.path() / "ckpt");
  REQUIRE(!saved.empty());
  CHECK(saved.back().meta.at("step").get<int>() == 10);
  CHECK(saved.back().meta.at("saved_by").get<std::string>() == "interval");
}

TEST_CASE("a rank that learns an agreed save after its step raises instead of saving another step",
          "[distributed][ddp]") {
  test::TempDir tmp;
  const std::string store = fresh_store(tmp.path());
  const auto job = start_job(2, [&](int r) {
    return std::vector<std::string>{SAVEPOINT_DIST_TRAIN_WORKER, "drift", std::to_string(r), "2", store,
                                    (tmp.path() / "ckpt").string(), "0"};
  });
  job->wait_all();
  job->require_all_ok();  // rank 1 raised "drifted", rank 0 raised at its save's timeout
  CHECK(listed(tmp.path() / "ckpt").empty());
}

TEST_CASE("a per-rank RNG does not load at another world size unless optional", "[distributed][ddp]") {
  test::TempDir tmp;
  auto run = [&](const std::string& scenario, int world) {
    const std::string store = fresh_store(tmp.path());
    const auto job = start_job(world, [&](int r) {
      return std::vector<std::string>{SAVEPOINT_DIST_TRAIN_WORKER, scenario, std::to_string(r), std::to_string(world),
                                      store, (tmp.path() / "ckpt").string(), "3"};
    });
    job->wait_all();
    job->require_all_ok();
  };
  run("rng_save", 3);
  run("rng_load", 2);      // raises on every rank, naming 'rng', 3 and 2
  run("rng_optional", 2);  // loads, this rank's RNG left as it was
}

#ifdef SAVEPOINT_TRAIN_DDP
TEST_CASE("train_ddp: SIGTERM to one rank saves every rank at the same step and a resume at another world size "
          "consumes each sample once in the same order",
          "[distributed][ddp]") {
  test::TempDir tmp;
  const std::vector<std::string> args{"--epochs", "3", "--samples", "60", "--global-batch", "12"};
  // The uninterrupted reference at 2 ranks.
  auto reference = train(tmp.path(), tmp.path() / "reference", 2, args);
  reference->wait_all();
  reference->require_all_ok();
  Consumed expected;
  add_consumption(expected, *reference, false);
  const auto order = global_order(expected);
  REQUIRE(order.size() == 3);
  for (const auto& [epoch, samples] : order) {
    CHECK(samples.size() == 60);  // each sample once per epoch
    CHECK(std::set<int>(samples.begin(), samples.end()).size() == 60);
  }
  const std::string reference_hash = final_hash(*reference);

  for (const auto& [n, m] : std::vector<std::pair<int, int>>{{2, 3}, {4, 2}}) {
    INFO(n << " ranks, then " << m);
    const fs::path dir = tmp.path() / fmt::format("run{}to{}", n, m);
    auto extra = args;
    extra.insert(extra.end(), {"--step-ms", "20", "--every-steps", "0"});
    auto first = train(tmp.path(), dir, n, extra);
    REQUIRE(first->wait_for_output(n - 1, "consumed epoch 2 position 12:"));  // mid-epoch 2, on the last rank
    first->signal(n - 1, SIGTERM);
    first->wait_all();
    first->require_all_ok();
    std::string stop;
    for (int r = 0; r < n; ++r) {
      const auto lines = lines_with(first->output(r), fmt::format("rank {}: preempted at ", r));
      REQUIRE(lines.size() == 1);
      const std::string where = lines[0].substr(lines[0].find("preempted at "));
      if (r == 0) stop = where;
      CHECK(where == stop);  // the same step on every rank
    }
    const auto saved = listed(dir);
    REQUIRE(!saved.empty());
    CHECK(saved.back().meta.at("saved_by").get<std::string>() == "preemption");
    CHECK(saved.back().world_size == n);
    CHECK(stop.find(fmt::format("position {};", saved.back().meta.at("position").get<int>())) != std::string::npos);

    auto second = train(tmp.path(), dir, m, args);
    second->wait_all();
    second->require_all_ok();
    CHECK(second->output(0).find(fmt::format("(saved by {} ranks)", n)) != std::string::npos);
    Consumed got;
    add_consumption(got, *first, false);
    add_consumption(got, *second, false);  // no sample consumed twice
    CHECK(global_order(got) == order);      // every sample once, the reference's order
    // Another split of each global batch reduces in another order: equal within float tolerance.
    const auto w = final_weights(*second), w_ref = final_weights(*reference);
    REQUIRE(w.size() == w_ref.size());
    double worst = 0;
    for (std::size_t i = 0; i < w.size(); ++i) worst = std::max(worst, std::abs(w[i] - w_ref[i]));
    INFO("largest weight difference " << worst);
    CHECK(worst < 1e-4);
    (void)reference_hash;
  }
}

TEST_CASE("train_ddp: killed (SIGKILL) at random steps and resumed at the same world size it ends bit-identical",
          "[distributed][ddp]") {
  test::TempDir tmp;
  const std::vector<std::string> args{"--epochs", "3", "--samples", "60", "--global-batch", "12", "--every-steps", "2"};
  auto reference = train(tmp.path(), tmp.path() / "reference", 2, args);
  reference->wait_all();
  reference->require_all_ok();
  const std::string expected = final_hash(*reference);
  Consumed ref_consumed;
  add_consumption(ref_consumed, *reference, false);

  const fs::path dir = tmp.path() / "killed";
  std::mt19937 rng(20261125);
  Consumed got;
  for (int round = 0; round < 3; ++round) {
    auto extra = args;
    extra.insert(extra.end(), {"--step-ms", "15"});
    auto job = train(tmp.path(), dir, 2, extra);
    const int epoch = 1 + static_cast<int>(rng() % 3), position = 12 * static_cast<int>(rng() % 5);
    INFO("round " << round << ": killed after epoch " << epoch << " position " << position);
    if (job->wait_for_output(0, fmt::format("consumed epoch {} position {}:", epoch, position))) job->kill_all();
    job->wait_all();
    add_consumption(got, *job, /*allow_replay=*/true);  // steps after the last checkpoint run again
  }
  auto last = train(tmp.path(), dir, 2, args);
  last->wait_all();
  last->require_all_ok();
  add_consumption(got, *last, true);
  CHECK(global_order(got) == global_order(ref_consumed));
  CHECK(final_hash(*last) == expected);  // bitwise equal to the uninterrupted run
}

// The memory-tier runs: 3 epochs of 4 steps, no disk saves but the epochs' ends.
const std::vector<std::string> kTierArgs{"--epochs", "3", "--samples", "48", "--global-batch", "12", "--every-steps", "0"};

// An uninterrupted 4-rank, 2-node run.
static std::unique_ptr<test::Children> tier_reference(const fs::path& root) {
  auto reference = train_tier(root, root / "reference", root / "shm-reference", 4, 2, 0, kTierArgs);
  reference->wait_all();
  reference->require_all_ok();
  return reference;
}

// A 4-rank, 2-node run on `dir`/`shm`, SIGKILLed in `victims` once rank `watch` consumed
// (epoch, position) and its node holds a complete memory checkpoint of that epoch (the copies
// run a step or so behind; a step of this epoch is then newer than the epoch's start on disk).
// Returns what it consumed. `lost_node`: that node's memory directory is deleted too.
// `per_node` 1 with `more` = {"--parity", "4"}: 4 nodes in one parity set.
static Consumed run_until_killed(const fs::path& root, const fs::path& dir, const fs::path& shm, int watch, int epoch,
                          int position, const std::vector<int>& victims, int lost_node = -1, int per_node = 2,
                          const std::vector<std::string>& more = {}) {
  auto extra = kTierArgs;
  extra.insert(extra.end(), {"--step-ms", "40"});  // at least 2 steps ahead of the epoch's end on disk
  extra.insert(extra.end(), more.begin(), more.end());
  auto job = train_tier(root, dir, shm, 4, per_node, 0, extra);
  REQUIRE(job->wait_for_output(watch, fmt::format("consumed epoch {} position {}:", epoch, position)));
  REQUIRE(wait_for_complete(shm, watch / per_node, epoch, position));
  for (int v : victims) job->signal(v, SIGKILL);
  if (lost_node >= 0) fs::remove_all(shm / ("node" + std::to_string(lost_node)));
  job->wait_all();  // the others fail at their next collective
  Consumed got;
  add_consumption(got, *job, /*allow_replay=*/true);
  return got;
}

TEST_CASE("train_ddp with the memory tier: 4 ranks on 2 nodes, one rank SIGKILLed at a random step, all restarted: "
          "they resume from memory and end bit-identical",
          "[distributed][ddp][memory_tier]") {
  test::TempDir tmp;
  const auto reference = tier_reference(tmp.path());
  Consumed ref_consumed;
  add_consumption(ref_consumed, *reference, false);

  std::mt19937 rng(std::random_device{}());
  const int victim = static_cast<int>(rng() % 4);
  const int epoch = 2 + static_cast<int>(rng() % 2), position = 12 * (1 + static_cast<int>(rng() % 2));
  INFO("rank " << victim << " killed after epoch " << epoch << " position " << position);
  const fs::path dir = tmp.path() / "ckpt", shm = tmp.path() / "shm";
  Consumed got = run_until_killed(tmp.path(), dir, shm, victim, epoch, position, {victim});

  auto last = train_tier(tmp.path(), dir, shm, 4, 2, 0, kTierArgs);
  last->wait_all();
  last->require_all_ok();
  for (int r = 0; r < 4; ++r) {
    INFO(last->output(r));
    CHECK(last->output(r).find(fmt::format("rank {}: resumed from CKPT+", r)) != std::string::npos);
    CHECK(resumed_from_newest_tier(last->output(r)));
  }
  add_consumption(got, *last, true);
  CHECK(global_order(got) == global_order(ref_consumed));
  CHECK(final_hash(*last) == final_hash(*reference));  // bitwise equal to the uninterrupted run
}

TEST_CASE("train_ddp with the memory tier: a lost node's ranks, the survivors restart as a world of 2 and resume "
          "from the buddy copies, each sample once in the same order",
          "[distributed][ddp][memory_tier]") {
  test::TempDir tmp;
  const auto reference = tier_reference(tmp.path());
  Consumed ref_consumed;
  add_consumption(ref_consumed, *reference, false);

  std::mt19937 rng(std::random_device{}());
  const int epoch = 2 + static_cast<int>(rng() % 2), position = 12 * (1 + static_cast<int>(rng() % 2));
  INFO("node 0 lost after epoch " << epoch << " position " << position);
  const fs::path dir = tmp.path() / "ckpt", shm = tmp.path() / "shm";
  const Consumed got = run_until_killed(tmp.path(), dir, shm, 0, epoch, position, {0, 1}, /*lost_node=*/0);

  // Node 1's two ranks as a world of 2.
  auto last = train_tier(tmp.path(), dir, shm, 2, 2, /*first_node=*/1, kTierArgs);
  last->wait_all();
  last->require_all_ok();
  INFO(last->output(0));
  CHECK(resumed_from_newest_tier(last->output(0)));
  // What the lost job consumed after its last complete memory checkpoint is consumed again,
  // by other ranks: keep the resumed run's slices, compared by global batch.
  Consumed resumed;
  add_consumption(resumed, *last, false);
  CHECK(merged_global_order(got, resumed) == global_order(ref_consumed));  // every sample once, the reference's order
  const auto w = final_weights(*last), w_ref = final_weights(*reference);
  REQUIRE(w.size() == w_ref.size());
  double worst = 0;
  for (std::size_t i = 0; i < w.size(); ++i) worst = std::max(worst, std::abs(w[i] - w_ref[i]));
  INFO("largest weight difference " << worst);
  CHECK(worst < 1e-4);
}

TEST_CASE("train_ddp with parity sets: 4 ranks on 4 nodes, one rank SIGKILLed at a random step (its parity share in "
          "flight or not), all restarted: they resume from memory and end bit-identical",
          "[distributed][ddp][memory_tier][parity]") {
  test::TempDir tmp;
  const std::vector<std::string> parity{"--parity", "4"};
  auto tier_args = kTierArgs;
  tier_args.insert(tier_args.end(), parity.begin(), parity.end());
  auto reference = train_tier(tmp.path(), tmp.path() / "reference", tmp.path() / "shm-reference", 4, 1, 0, tier_args);
  reference->wait_all();
  reference->require_all_ok();
  Consumed ref_consumed;
  add_consumption(ref_consumed, *reference, false);

  std::mt19937 rng(std::random_device{}());
  const int victim = static_cast<int>(rng() % 4);
  const int epoch = 2 + static_cast<int>(rng() % 2), position = 12 * (1 + static_cast<int>(rng() % 2));
  INFO("rank " << victim << " killed after epoch " << epoch << " position " << position);
  const fs::path dir = tmp.path() / "ckpt", shm = tmp.path() / "shm";
  Consumed got = run_until_killed(tmp.path(), dir, shm, victim, epoch, position, {victim}, -1, 1, parity);

  auto last = train_tier(tmp.path(), dir, shm, 4, 1, 0, tier_args);
  last->wait_all();
  last->require_all_ok();
  for (int r = 0; r < 4; ++r) {
    INFO(last->output(r));
    CHECK(last->output(r).find(fmt::format("rank {}: resumed from CKPT+", r)) != std::string::npos);
    CHECK(resumed_from_newest_tier(last->output(r)));
  }
  add_consumption(got, *last, true);
  CHECK(global_order(got) == global_order(ref_consumed));
  CHECK(final_hash(*last) == final_hash(*reference));  // bitwise equal to the uninterrupted run
}

TEST_CASE("train_ddp with parity sets: a lost node of 4, the survivors restart as a world of 3 from its part rebuilt "
          "from the parity, each sample once in the same order",
          "[distributed][ddp][memory_tier][parity]") {
  test::TempDir tmp;
  const std::vector<std::string> parity{"--parity", "4"};
  auto tier_args = kTierArgs;
  tier_args.insert(tier_args.end(), parity.begin(), parity.end());
  auto reference = train_tier(tmp.path(), tmp.path() / "reference", tmp.path() / "shm-reference", 4, 1, 0, tier_args);
  reference->wait_all();
  reference->require_all_ok();
  Consumed ref_consumed;
  add_consumption(ref_consumed, *reference, false);

  std::mt19937 rng(std::random_device{}());
  const int epoch = 2 + static_cast<int>(rng() % 2), position = 12 * (1 + static_cast<int>(rng() % 2));
  INFO("node 3 lost after epoch " << epoch << " position " << position);
  const fs::path dir = tmp.path() / "ckpt", shm = tmp.path() / "shm";
  const Consumed got = run_until_killed(tmp.path(), dir, shm, 0, epoch, position, {0, 1, 2, 3}, /*lost_node=*/3, 1, parity);

  // Nodes 0, 1 and 2 as a world of 3: node 3's part (the files rank 3 wrote) is rebuilt.
  auto last = train_tier(tmp.path(), dir, shm, 3, 1, 0, tier_args);
  last->wait_all();
  last->require_all_ok();
  INFO(last->output(0));
  CHECK(resumed_from_newest_tier(last->output(0)));
  if (last->output(0).find(" in memory (saved by 4 ranks)") != std::string::npos)  // not the disk's newer one
    CHECK(last->output(0).find("from its parity set") != std::string::npos);
  Consumed resumed;
  add_consumption(resumed, *last, false);
  CHECK(merged_global_order(got, resumed) == global_order(ref_consumed));  // every sample once, the reference's order
  const auto w = final_weights(*last), w_ref = final_weights(*reference);
  REQUIRE(w.size() == w_ref.size());
  double worst = 0;
  for (std::size_t i = 0; i < w.size(); ++i) worst = std::max(worst, std::abs(w[i] - w_ref[i]));
  INFO("largest weight difference " << worst);
  CHECK(worst < 1e-4);
}
#endif
