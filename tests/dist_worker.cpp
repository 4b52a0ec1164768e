// One rank of a multi-process test (tests/test_distributed.cpp starts N of them):
//   dist_worker <scenario> <rank> <world> <store file> <checkpoint dir> <step>
// One program and one translation unit for every multi-process test: this file includes
// dist_worker_sharded.cpp (the sharded_* scenarios, tests/test_sharded.cpp) and
// dist_worker_training.cpp (the training-loop scenarios time, drift, rng_*, of
// tests/test_ddp_training.cpp, and save_bench of scripts/bench-dist.sh).
// Real Gloo over loopback, a c10d::FileStore for the rendezvous, a 5 s collective timeout.
// Prints "rank R: ..." lines; exits 0 when the scenario's expectations held, 1 when not.
// alarm() bounds it even if the parent dies (the parent kills leftovers itself too). The
// command line, the Gloo set-up and the counting group are tests/worker_support.hpp.
//
// Scenarios:
//   save S               saves the state of step S (save_and_keep_only keep(3))
//   recover S            recovers and expects the state of step S
//   hook_throws S        saves step S while rank 1's "flaky" hook throws: every rank must
//                        raise DistributedError naming rank 1
//   kill S               saves step S while the last rank SIGKILLs itself in its hook: the
//                        others must raise DistributedError within the timeout
//   recover_mismatch S   recovers a checkpoint saved at another world size: must raise
//                        DistributedError about per-rank key 'rank_state'
//   hang S               saves step S while the last rank's hook sleeps 12 s: the others must
//                        raise DistributedError after the 5 s timeout, well before 12 s
//   bench MB             saves 4 replicated tensor keys of MB MiB each, written by rank 0
//                        alone and spread over the ranks; prints the best of 3 saves each
//   async S              save_and_keep_only_async of step S, the state changed right after
//                        the call (the snapshot must hold step S), then wait()
//   async_hook_throws S  the same while rank 1's hook throws: the call returns on every
//                        rank, wait() raises DistributedError naming rank 1 on every rank
//   pin_delete S         with 3 checkpoints listed: pin the newest, delete the oldest, unpin,
//                        delete_checkpoints(keep 1); every rank sees every result
//   interval S           IntervalSaver with the default options must raise UsageError (time
//                        and signals are per rank); every_steps(2) saves at steps S+1, S+3
//   kill_random S        saves steps S, S+1, ... (keep 3) until a save raises; with
//                        SAVEPOINT_TEST_KILL="<rank>:<ms>" that rank SIGKILLs itself <ms>
//                        after its first save, wherever it is; the others must raise
//                        DistributedError within the timeout
//   locked S             another process holds the directory's lock: constructing the
//                        Checkpointer must raise DistributedError carrying the LockError
//   sigpipe S            SIGPIPE at its default action, as a C++ program starts: after
//                        c10d_process_group, a write to a connection no one reads (what Gloo
//                        does when a peer died) must fail with EPIPE, not end the process
//   sigpipe_handler S    the program installed a SIGPIPE handler: the adapter keeps it
//   adapters S           c10d_process_group on every form a LibTorch hands out: the derived
//                        ProcessGroupGloo pointer, its base (c10d::ProcessGroup in 1.13,
//                        c10d::Backend in 2.x) with the store, and in 2.x the c10d::ProcessGroup
//                        wrapper holding that backend; each one's collectives and store work
//   incremental S        an incremental save of step S (part_bytes 4 KiB): a frozen per-rank
//                        tensor (4 parts each) and a replicated one changed each step; with
//                        S >= 100 every rank also recovers it and checks its values, and rank 1
//                        expects the warning that its damaged reference part was not linked
#include "worker_support.hpp"

#include <torch/version.h>

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <thread>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <type_traits>

// The "sharded_*" scenarios (tests/test_sharded.cpp): run_sharded_scenario.
#include "dist_worker_sharded.cpp"
// The training-loop scenarios (tests/test_ddp_training.cpp) and their bench: run_training_worker.
#include "dist_worker_training.cpp"

namespace {
using worker::expect;
using worker::fail;
using worker::g_rank;
using worker::g_world;
using worker::out;
volatile std::sig_atomic_t g_sigpipes = 0;
void on_sigpipe(int) { g_sigpipes = g_sigpipes + 1; }

struct Flaky {
  int value = 0;
  int fail_rank = -1;  // this rank's save hook throws
  int kill_rank = -1;  // this rank SIGKILLs itself in its save hook
  int hang_rank = -1;  // this rank's save hook sleeps 12 s (past the 5 s timeout)
};

void save_flaky(const Flaky& f, const std::filesystem::path& file) {
  if (f.kill_rank == g_rank) std::raise(SIGKILL);
  if (f.hang_rank == g_rank) std::this_thread::sleep_for(std::chrono::seconds(12));
  if (f.fail_rank == g_rank) throw std::runtime_error("injected failure of the flaky hook");
  std::ofstream(file) << f.value;
}

void load_flaky(Flaky& f, const std::filesystem::path& file, bool /*end_of_epoch*/) { std::ifstream(file) >> f.value; }

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && is_training_scenario(argv[1])) return run_training_worker(argc, argv);
  const auto args =
      worker::parse_args(argc, argv, "dist_worker <scenario> <rank> <world> <store file> <checkpoint dir> <step>");
  const std::string& scenario = args.scenario;
  const std::filesystem::path& dir = args.dir;
  const int step = args.arg;
  const auto timeout = worker::kTimeout;
  if (scenario == "sigpipe") std::signal(SIGPIPE, SIG_DFL);  // the parent may have ignored it
  if (scenario == "sigpipe_handler") std::signal(SIGPIPE, on_sigpipe);

  auto store = worker::file_store(args);
  auto pg = worker::gloo_group(store, g_rank, g_world, timeout);
  const auto group = std::make_shared<worker::CountingGroup>(savepoint::c10d_process_group(pg, timeout));

  if (scenario.rfind("sharded_", 0) == 0) return run_sharded_scenario(scenario, group, g_rank, g_world, dir, step);
  if (scenario == "sigpipe" || scenario == "sigpipe_handler") {
    int fds[2];
    expect(::pipe(fds) == 0, "pipe()");
    ::close(fds[0]);
    const ssize_t written = ::write(fds[1], "x", 1);  // SIGPIPE here, if not ignored or handled
    const int error = errno;
    ::close(fds[1]);
    expect(written == -1 && error == EPIPE, "the write to a closed connection fails with EPIPE");
    struct sigaction now {};
    ::sigaction(SIGPIPE, nullptr, &now);
    if (scenario == "sigpipe") {
      expect(now.sa_handler == SIG_IGN, "SIGPIPE is ignored after c10d_process_group");
    } else {
      expect(now.sa_handler == on_sigpipe, "the program's SIGPIPE handler is kept");
      expect(g_sigpipes == 1, "the program's SIGPIPE handler ran once");
    }
    out("ok");
    return 0;
  }
  if (scenario == "adapters") {
    auto exercise = [&](const std::string& form, const std::shared_ptr<savepoint::ProcessGroup>& adapter) {
      expect(adapter->rank() == g_rank && adapter->world_size() == g_world, form + ": rank and world size");
      const auto all = adapter->all_gather("rank" + std::to_string(g_rank));
      for (int r = 0; r < g_world; ++r) expect(all.at(r) == "rank" + std::to_string(r), form + ": all_gather");
      expect(adapter->broadcast(g_rank == 0 ? form : std::string()) == form, form + ": broadcast");
      adapter->barrier();
      out(form + ": ok");
    };
    exercise("derived ProcessGroupGloo", savepoint::c10d_process_group(pg, timeout));
    using Base = std::conditional_t<std::is_base_of_v<c10d::Backend, c10d::ProcessGroupGloo>, c10d::Backend,
                                    c10d::ProcessGroup>;
    const auto with_store = savepoint::c10d_process_group(c10::intrusive_ptr<Base>(pg), timeout, store);
    exercise(std::is_same_v<Base, c10d::Backend> ? "c10d::Backend" : "c10d::ProcessGroup", with_store);
    if (g_rank == 0) with_store->store_set("savepoint/test/adapters", "set by rank 0");
    with_store->barrier();
    expect(with_store->store_get("savepoint/test/adapters") == std::optional<std::string>("set by rank 0"),
           "store_get sees rank 0's store_set");
#if TORCH_VERSION_MAJOR >= 2
    // 2.x's wrapper: what torch.distributed hands a Python user, here built by hand.
    auto wrapper = c10::make_intrusive<c10d::ProcessGroup>(store, g_rank, g_world);
    wrapper->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, pg);
    wrapper->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
    exercise("c10d::ProcessGroup wrapper", savepoint::c10d_process_group(wrapper, timeout, store));
#endif
    out("ok");
    return 0;
  }
  if (scenario == "incremental") {
    savepoint::Checkpointer ckpt(dir, savepoint::CheckpointerOptions().process_group(group).incremental(true)
                                          .part_bytes(4096));
    torch::Tensor frozen = torch::arange(4096, torch::kFloat32) + 10000 * g_rank;  // 16 KiB: 4 parts
    torch::Tensor head = torch::full({16}, static_cast<float>(step));
    ckpt.add_recoverable("frozen", frozen, savepoint::per_rank());
    ckpt.add_recoverable("head", head);
    std::vector<std::string> warnings;
    savepoint::set_log_sink([&](savepoint::LogLevel level, std::string_view m) {
      if (level == savepoint::LogLevel::warn) warnings.emplace_back(m);
    });
    const auto saved = ckpt.save_checkpoint({{"step", step}});
    bool said = false;
    for (const auto& w : warnings) said = said || w.find("does not match its record") != std::string::npos;
    if (step >= 100) expect(said == (g_rank == 1), "the damaged reference part was reported by rank 1 alone");
    expect(ckpt.verify(saved).empty(), "the new checkpoint verifies");
    frozen.zero_();
    head.zero_();
    const auto loaded = ckpt.recover_if_possible();
    expect(loaded && loaded->sequence == saved.sequence, "the new checkpoint is recovered");
    expect(torch::equal(frozen, torch::arange(4096, torch::kFloat32) + 10000 * g_rank), "frozen values");
    expect(torch::equal(head, torch::full({16}, static_cast<float>(step))), "head values");
    out("ok " + saved.name());
    return 0;
  }
  if (scenario == "locked") {
    try {
      savepoint::Checkpointer ckpt(dir, savepoint::CheckpointerOptions().process_group(group));
      fail("opening a locked directory did not raise");
    } catch (const savepoint::DistributedError& e) {
      out(std::string("raised: ") + e.what());
      expect(e.failing_rank() == 0, "failing_rank() == 0");
      expect(std::string(e.what()).find("is in use by") != std::string::npos, "carries the LockError");
    }
    out("ok");
    return 0;
  }

  savepoint::Checkpointer ckpt(dir, savepoint::CheckpointerOptions().process_group(group));
  // Replicated keys (spread over the ranks: key i written by rank i % world) and one per-rank key.
  torch::Tensor weights = torch::zeros({4, 3});
  int counter = 0;
  std::vector<int> extra1, extra2;
  int rank_state = 0;
  Flaky flaky;
  ckpt.add_recoverable("weights", weights);
  ckpt.add_recoverable("counter", counter);
  ckpt.add_recoverable("extra1", extra1);
  ckpt.add_recoverable("extra2", extra2);
  ckpt.add_recoverable("rank_state", rank_state, savepoint::per_rank());
  // Per-rank so that every rank runs its hook (the failure injection point of each rank).
  ckpt.add_recoverable("flaky", flaky, save_flaky, load_flaky, savepoint::per_rank());

  auto set_state = [&](int s) {
    weights.copy_(torch::arange(12, torch::kFloat32).reshape({4, 3}) * s);
    counter = s;
    extra1 = {s, s + 1};
    extra2 = {s * 10};
    rank_state = 1000 * g_rank + s;
    flaky.value = s * 7;
  };
  auto check_state = [&](int s) {
    expect(torch::equal(weights, torch::arange(12, torch::kFloat32).reshape({4, 3}) * s), "weights of step " + std::to_string(s));
    expect(counter == s, "counter " + std::to_string(counter) + " != " + std::to_string(s));
    expect(extra1 == std::vector<int>{s, s + 1} && extra2 == std::vector<int>{s * 10}, "extra keys");
    expect(rank_state == 1000 * g_rank + s, "rank_state " + std::to_string(rank_state));
    expect(flaky.value == s * 7, "flaky");
  };
  try {
    if (scenario == "save") {
      set_state(step);
      const int before = group->calls;
      const auto saved = ckpt.save_and_keep_only({{"step", step}}, savepoint::keep(3));
      expect(group->calls - before == 3, "a save is 3 collectives, got " + std::to_string(group->calls - before));
      expect(saved.world_size == g_world, "world_size in the returned checkpoint");
      // Every replicated key once, the per-rank keys once per rank.
      expect(saved.files.size() == 4 + 2 * static_cast<std::size_t>(g_world), "number of file records");
      for (int r = 0; r < g_world; ++r) expect(saved.file("rank_state", r) != nullptr, "rank_state of each rank");
      out("saved " + saved.name());
    } else if (scenario == "recover") {
      const int before = group->calls;
      const auto loaded = ckpt.recover_if_possible();
      expect(loaded.has_value(), "a checkpoint to recover");
      // Choose, verify everywhere, apply; and a choice and a verification per newer (damaged) one.
      int rejected = 0;
      for (const auto& c : ckpt.list_checkpoints()) rejected += c.sequence > loaded->sequence;
      expect(group->calls - before == 3 + 2 * rejected,
             "a recovery is 3 collectives + 2 per rejected candidate, got " + std::to_string(group->calls - before));
      check_state(step);
      out("recovered " + loaded->name() + " step " + std::to_string(loaded->meta.at("step").get<int>()));
    } else if (scenario == "hook_throws" || scenario == "kill" || scenario == "hang") {
      set_state(step);
      if (scenario == "hook_throws") flaky.fail_rank = 1;
      else if (scenario == "kill") flaky.kill_rank = g_world - 1;
      else flaky.hang_rank = g_world - 1;
      const auto start = std::chrono::steady_clock::now();
      try {
        ckpt.save_checkpoint({{"step", step}});
        fail("the save did not raise");
      } catch (const savepoint::DistributedError& e) {
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
        out(std::string("raised after ") + std::to_string(ms.count()) + " ms: " + e.what());
        if (scenario == "hook_throws") {
          expect(e.failing_rank() == 1, "failing_rank() == 1");
          expect(std::string(e.what()).find("failed on rank 1: ") != std::string::npos, "message names rank 1");
          expect(std::string(e.what()).find("injected failure") != std::string::npos, "message carries the cause");
          // Nothing committed: the next recovery loads the earlier checkpoint.
          const auto loaded = ckpt.recover_if_possible();
          expect(loaded && loaded->meta.at("step").get<int>() == step - 1, "recovered the earlier checkpoint");
          check_state(step - 1);
          out("recovered step " + std::to_string(step - 1) + " after the failed save");
        } else if (scenario == "hang" && g_rank != g_world - 1) {
          expect(ms >= std::chrono::milliseconds(4500) && ms < std::chrono::seconds(11), "raised at the timeout");
        } else {
          expect(ms < std::chrono::seconds(15), "raised within the timeout");
        }
      }
    } else if (scenario == "kill_random") {
      int kill_rank = -1, kill_ms = 0;
      if (const char* spec = std::getenv("SAVEPOINT_TEST_KILL")) std::sscanf(spec, "%d:%d", &kill_rank, &kill_ms);
      std::chrono::steady_clock::time_point start;
      for (int s = step; s < step + 200; ++s) {
        set_state(s);
        start = std::chrono::steady_clock::now();
        try {
          ckpt.save_and_keep_only({{"step", s}}, savepoint::keep(3));
        } catch (const savepoint::DistributedError& e) {
          const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
          out("save of step " + std::to_string(s) + " raised after " + std::to_string(ms.count()) + " ms: " + e.what());
          expect(ms < std::chrono::seconds(15), "raised within the timeout");
          break;
        }
        if (s == step && kill_rank == g_rank) {
          std::thread([kill_ms] {
            std::this_thread::sleep_for(std::chrono::milliseconds(kill_ms));
            std::raise(SIGKILL);
          }).detach();
        }
        expect(s < step + 199, "a save raised once the rank was killed");
      }
    } else if (scenario == "async" || scenario == "async_hook_throws") {
      set_state(step);
      if (scenario == "async_hook_throws") flaky.fail_rank = 1;
      ckpt.save_and_keep_only_async({{"step", step}}, savepoint::keep(3));
      set_state(step + 100);  // after the snapshot: must not reach the checkpoint
      if (scenario == "async") {
        const auto saved = ckpt.wait();
        expect(saved && saved->meta.at("step").get<int>() == step, "wait() returns the committed checkpoint");
        expect(saved->files.size() == 4 + 2 * static_cast<std::size_t>(g_world), "number of file records");
        out("async saved " + saved->name());
      } else {
        try {
          ckpt.wait();
          fail("wait() did not raise");
        } catch (const savepoint::DistributedError& e) {
          out(std::string("wait() raised: ") + e.what());
          expect(e.failing_rank() == 1, "failing_rank() == 1");
        }
      }
    } else if (scenario == "pin_delete") {
      auto all = ckpt.list_checkpoints();
      expect(all.size() == 3, "3 checkpoints to start with");
      const auto pinned = ckpt.pin(all.back());
      expect(pinned.pinned, "pin returns the pinned checkpoint on every rank");
      ckpt.delete_checkpoint(all.front());
      all = ckpt.list_checkpoints();  // rank 0 deleted before the collective ended
      // Only rank 0's listing is checked for the PINNED mark: rank 0 may already have run
      // the next call's step (the unpin below) when another rank lists (docs/distributed.md).
      expect(all.size() == 2 && (g_rank != 0 || all.back().pinned),
             "after delete_checkpoint: 2 left (" + std::to_string(all.size()) + "), the newest pinned (" +
                 std::to_string(!all.empty() && all.back().pinned) + ")");
      expect(!ckpt.unpin(all.back()).pinned, "unpin");
      const auto deleted = ckpt.delete_checkpoints(savepoint::keep(1));
      expect(deleted.size() == 1, "delete_checkpoints returns what rank 0 deleted on every rank");
      expect(ckpt.list_checkpoints().size() == 1, "1 left");
      out("pin, delete, unpin, delete_checkpoints done");
    } else if (scenario == "interval") {
      try {
        savepoint::IntervalSaver refused(ckpt);  // SIGTERM/SIGUSR1 handling by default
        fail("IntervalSaver with preemption signals was accepted with a process group");
      } catch (const savepoint::UsageError& e) {
        out(std::string("refused: ") + e.what());
      }
      savepoint::IntervalSaver saver(ckpt, savepoint::IntervalOptions().every_steps(2).preemption_signals({}));
      int saves = 0;
      for (int i = 0; i < 5; ++i) {
        set_state(step + i);
        if (saver.after_step({{"step", step + i}})) ++saves;
      }
      expect(saves == 2, "2 interval saves in 5 steps");
      const auto all = ckpt.list_checkpoints();
      expect(all.size() == 1 && all.back().meta.at("step").get<int>() == step + 3, "the newest intra-epoch one kept");
      out("interval saves done");
    } else if (scenario == "bench") {
      std::vector<torch::Tensor> big;
      for (int k = 0; k < 4; ++k) big.push_back(torch::full({step * 262144}, static_cast<float>(k)));
      for (bool spread : {false, true}) {
        savepoint::Checkpointer b(dir.string() + (spread ? "-spread" : "-rank0"),
                                  savepoint::CheckpointerOptions().process_group(group).spread_replicated_writes(spread));
        for (int k = 0; k < 4; ++k) b.add_recoverable("t" + std::to_string(k), big[k]);
        b.save_and_keep_only({}, savepoint::keep(1));  // warm-up
        long best = -1;
        for (int rep = 0; rep < 3; ++rep) {
          const auto t0 = std::chrono::steady_clock::now();
          b.save_and_keep_only({}, savepoint::keep(1));
          const long ms = static_cast<long>(
              std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count());
          best = best < 0 ? ms : std::min(best, ms);
        }
        out("bench world " + std::to_string(g_world) + ", 4 keys x " + std::to_string(step) + " MiB, " +
            (spread ? "spread over the ranks" : "rank 0 writes all   ") + ": best of 3 saves " + std::to_string(best) +
            " ms");
      }
    } else if (scenario == "recover_mismatch") {
      try {
        ckpt.recover_if_possible();
        fail("recovering at another world size did not raise");
      } catch (const savepoint::DistributedError& e) {
        out(std::string("raised: ") + e.what());
        expect(std::string(e.what()).find("per-rank key 'rank_state'") != std::string::npos, "names the key");
      }
    } else {
      fail("unknown scenario " + scenario);
    }
  } catch (const std::exception& e) {
    fail(std::string("unexpected exception: ") + e.what());
  }
  out("ok");
  return 0;
}
