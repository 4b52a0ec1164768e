// One rank of the training-loop tests and of the distributed benchmark (tests/test_ddp_training.cpp,
// scripts/bench-dist.sh start N of them):
//   dist_worker <scenario> <rank> <world> <store file> <checkpoint dir> <arg>
// Part of tests/dist_worker.cpp's translation unit (it includes this file): dist_worker hands
// these scenarios (is_training_scenario) to run_training_worker.
// Real Gloo over loopback, a c10d::FileStore (the rendezvous and savepoint's flags), a 5 s
// collective timeout. Prints "rank R: ..." lines; exits 0 when the scenario's expectations
// held, 1 when not; alarm() bounds it. The command line, the Gloo set-up and the counting
// group are tests/worker_support.hpp.
//
// Scenarios:
//   time N          N steps, each with an allreduce (as a gradient's) and a random pause per
//                   rank; IntervalSaver every_minutes(3) on a clock that advances 1 minute per
//                   step on rank 0 (the other ranks' clocks say "long overdue" and must be
//                   ignored). Prints the steps it saved at; checks that no step without a save
//                   ran a savepoint collective and that each step read the store at most once.
//   drift 0         no per-step collective: rank 1 learns a target it already passed and
//                   must raise DistributedError (drifted); rank 0 raises at its save's timeout
//   rng_save S      saves a per-rank RNG state (TorchRngState, per_rank) at step S
//   rng_load S      loads it (another world size): must raise naming the key and both sizes
//   rng_optional S  the same key registered optional: loads, leaves this rank's RNG as it was
//   save_bench MB   prints: save time of 4 replicated keys of MB MiB each written by rank 0
//                   alone vs spread over the ranks (best of 5), collectives per save, and the
//                   cost of a step's agreement check (a store read; after_step of a step that
//                   does not save) over 2000 steps
#include "worker_support.hpp"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <random>
#include <string>
#include <thread>

namespace {
using worker::expect;
using worker::fail;
using worker::g_rank;
using worker::out;

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// The scenarios dist_worker hands to run_training_worker (save_bench: scripts/bench-dist.sh).
bool is_training_scenario(const std::string& scenario) {
  return scenario == "time" || scenario == "drift" || scenario == "rng_save" || scenario == "rng_load" ||
         scenario == "rng_optional" || scenario == "save_bench";
}

// The training scenarios' main.
int run_training_worker(int argc, char** argv) {
  const auto args = worker::parse_args(
      argc, argv, "dist_worker <scenario> <rank> <world> <store file> <checkpoint dir> <arg>");
  const std::string& scenario = args.scenario;
  const int world = args.world;
  const std::filesystem::path& dir = args.dir;
  const int arg = args.arg;
  const auto timeout = worker::kTimeout;

  auto store = worker::file_store(args);
  auto ckpt_store = c10::make_intrusive<c10d::PrefixStore>("ckpt", store);
  auto ckpt_pg = worker::gloo_group(ckpt_store, g_rank, world, timeout);
  auto train_pg = worker::gloo_group(c10::make_intrusive<c10d::PrefixStore>("train", store), g_rank, world, timeout);
  const auto group =
      std::make_shared<worker::CountingGroup>(savepoint::c10d_process_group(ckpt_pg, timeout, ckpt_store));
  auto allreduce = [&] {
    std::vector<at::Tensor> t{torch::ones({4})};
    train_pg->allreduce(t)->wait();
  };

  try {
    savepoint::Checkpointer ckpt(dir, savepoint::CheckpointerOptions().process_group(group));
    if (scenario == "time") {
      int value = 0;
      ckpt.add_recoverable("value", value);
      int step = 0;
      const auto t0 = std::chrono::steady_clock::now();
      savepoint::IntervalOptions::Clock clock;
      if (g_rank == 0) clock = [&] { return t0 + std::chrono::minutes(step); };
      else clock = [&] { return t0 + std::chrono::hours(1000); };  // overdue: must not be used
      savepoint::IntervalSaver saver(
          ckpt, savepoint::IntervalOptions().every_minutes(3).clock(clock).preemption_signals({}));
      std::mt19937 rng(static_cast<unsigned>(g_rank) * 7919u + 1u);
      std::string saved_at;
      for (step = 1; step <= arg; ++step) {
        allreduce();  // the gradient allreduce: keeps the ranks within one step
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
        value = step;
        const int calls = group->calls, reads = group->reads;
        const bool saved = saver.after_step({{"step", step}});
        if (saved) saved_at += " " + std::to_string(step);
        else expect(group->calls == calls, "a step without a save ran a collective (step " + std::to_string(step) + ")");
        expect(group->reads - reads <= 1, "more than one store read in a step");
      }
      out("saved at steps:" + saved_at);
      out("store reads " + std::to_string(group->reads) + ", writes " + std::to_string(group->writes));
    } else if (scenario == "drift") {
      // No per-step collective: rank 1 runs 5 steps before rank 0 decides (its clock is due
      // at its step 1, target 3), then learns the target at its step 6 and must raise instead
      // of saving another step; rank 0 raises at its save's timeout.
      int value = 0;
      ckpt.add_recoverable("value", value);
      const auto t0 = std::chrono::steady_clock::now();
      int ticks = 0;  // the constructor reads the clock once; then an hour has passed
      savepoint::IntervalSaver saver(ckpt, savepoint::IntervalOptions().every_minutes(1).preemption_signals({}).clock(
                                               [t0, &ticks] { return t0 + std::chrono::hours(ticks++ > 0 ? 1 : 0); }));
      auto marker = [&](const std::string& key) { store->set("test/" + key, std::vector<std::uint8_t>{1}); };
      auto await = [&](const std::string& key) { store->wait({"test/" + key}, std::chrono::seconds(30)); };
      try {
        if (g_rank == 1) {
          for (int i = 0; i < 5; ++i) expect(!saver.after_step(), "rank 1 saved on its own");
          marker("ran5");
          await("decided");
          (void)saver.after_step();
          fail("rank 1 saved at step 6 a save agreed for step 3");
        } else {
          await("ran5");
          expect(!saver.after_step(), "rank 0 saved at step 1");
          marker("decided");
          expect(!saver.after_step(), "rank 0 saved at step 2");
          (void)saver.after_step();  // step 3: the save, without rank 1
          fail("rank 0's save without rank 1 did not raise");
        }
      } catch (const savepoint::DistributedError& e) {
        out(std::string("raised: ") + e.what());
        if (g_rank == 1) expect(std::string(e.what()).find("drifted") != std::string::npos, "says the ranks drifted");
      }
      // Rank 1 stays until rank 0 raised at its timeout (a peer that exits early may make
      // Gloo abort the survivor, docs/distributed.md).
      if (g_rank == 0) marker("done");
      else await("done");
    } else if (scenario == "rng_save" || scenario == "rng_load" || scenario == "rng_optional") {
      savepoint::TorchRngState rng;
      ckpt.add_recoverable("rng", rng, savepoint::per_rank(/*optional=*/scenario == "rng_optional"));
      if (scenario == "rng_save") {
        torch::manual_seed(static_cast<std::uint64_t>(1000 + g_rank));
        ckpt.save_checkpoint({{"step", arg}});
        out("saved");
      } else {
        torch::manual_seed(7);
        const auto expected = torch::rand({3});
        torch::manual_seed(7);
        try {
          ckpt.recover_if_possible();
          expect(scenario == "rng_optional", "loading a per-rank RNG at another world size did not raise");
          expect(torch::equal(torch::rand({3}), expected), "the optional RNG was left as it was");
          out("optional per-rank RNG left as is");
        } catch (const savepoint::DistributedError& e) {
          out(std::string("raised: ") + e.what());
          expect(scenario == "rng_load", "an optional per-rank key raised");
          const std::string what = e.what();
          expect(what.find("per-rank key 'rng'") != std::string::npos, "names the key");
          expect(what.find("saved by " + std::to_string(arg) + " rank(s), but this job has " + std::to_string(world)) !=
                     std::string::npos,
                 "names both world sizes");
        }
      }
    } else if (scenario == "save_bench") {
      std::vector<torch::Tensor> big;
      for (int k = 0; k < 4; ++k) big.push_back(torch::full({arg * 262144}, static_cast<float>(k)));
      for (bool spread : {false, true}) {
        savepoint::Checkpointer b(dir.string() + (spread ? "-spread" : "-rank0"),
                                  savepoint::CheckpointerOptions().process_group(group).spread_replicated_writes(spread));
        for (int k = 0; k < 4; ++k) b.add_recoverable("t" + std::to_string(k), big[k]);
        b.save_and_keep_only({}, savepoint::keep(1));  // warm-up
        double best = 1e300;
        int calls = 0;
        for (int rep = 0; rep < 5; ++rep) {
          const int before = group->calls;
          const auto t0 = std::chrono::steady_clock::now();
          b.save_and_keep_only({}, savepoint::keep(1));
          best = std::min(best, ms_since(t0));
          calls = group->calls - before;
        }
        if (g_rank == 0) {
          std::printf("world %d, 4 replicated keys x %d MiB, %-22s best of 5 saves %7.1f ms, %d savepoint collectives "
                      "per save\n",
                      world, arg, spread ? "spread over the ranks:" : "rank 0 writes all:", best, calls);
        }
      }
      // The agreement check of a step that does not save: one store read (a missing key).
      const int n = 2000;
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < n; ++i) (void)group->store_get("savepoint/bench/absent");
      const double read_us = ms_since(t0) * 1000 / n;
      int value = 0;
      ckpt.add_recoverable("value", value);
      savepoint::IntervalSaver saver(ckpt, savepoint::IntervalOptions().every_minutes(1e9));  // never due
      const int calls = group->calls, reads = group->reads;
      t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < n; ++i) expect(!saver.after_step(), "saved");
      const double step_us = ms_since(t0) * 1000 / n;
      std::printf("world %d, rank %d: store read (FileStore, key absent) %.1f us; after_step without a save %.1f us "
                  "(%d steps: %d collectives, %d store reads)\n",
                  world, g_rank, read_us, step_us, n, group->calls - calls, group->reads - reads);
      std::fflush(stdout);
    } else {
      fail("unknown scenario " + scenario);
    }
  } catch (const std::exception& e) {
    fail(std::string("unexpected exception: ") + e.what());
  }
  out("ok");
  return 0;
}
}  // namespace
