// savepoint benchmark: prints one table row per state size, plus list/find at many checkpoints.
//
//   bash scripts/bench.sh                       # 64 MiB ... 2 GiB, 10,000 checkpoints
//   build-bench/bench/savepoint_bench --sizes 64,256 --checkpoints 1000 --dir /mnt/fast/tmp
//
// Everything is measured in the same run on the same directory, so the ratios compare like
// with like: savepoint's sync save vs raw write()+fsync() of the same bytes and vs torch::save
// (+fsync); async save stall vs a plain host copy of the state; load vs a raw cold read
// (page cache dropped for the files with posix_fadvise before each cold read).
#include <savepoint/detail/meta.hpp>
#include <savepoint/savepoint.hpp>

#include "memory.hpp"
#include "stats.hpp"
#include "workload.hpp"
#include <savepoint/tensors.hpp>

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

using namespace savepoint::bench;

double torch_save(const State& s, const fs::path& dir) {
  fs::create_directories(dir);
  const auto t0 = Clock::now();
  torch::save(s.model, (dir / "model.pt").string());
  torch::save(*s.opt, (dir / "optimizer.pt").string());
  fsync_path(dir / "model.pt");
  fsync_path(dir / "optimizer.pt");
  return seconds_since(t0);
}

void bench_size(std::int64_t mib, const fs::path& root, int async_rounds, int rounds) {
  const fs::path dir = root / ("size-" + std::to_string(mib));
  fs::remove_all(dir);
  fs::create_directories(dir);
  State s = make_state(mib);

  // Best of `rounds` (3) for each write path, alternating, so neither is favoured by the disk's state.
  // Retention (deleting the previous checkpoint) is not part of the timed save.
  double raw = 1e9, sync = 1e9, tsave = 1e9, parallel = 1e9;
  double sync_peak = 0;
  savepoint::Checkpointer ckpt(dir / "savepoint");
  ckpt.add_recoverable("model", s.model);
  ckpt.add_recoverable("optimizer", *s.opt);
  savepoint::Checkpointer two_threads(dir / "parallel", savepoint::CheckpointerOptions().io_threads(2));
  two_threads.add_recoverable("model", s.model);
  two_threads.add_recoverable("optimizer", *s.opt);
  for (int round = 0; round < rounds; ++round) {
    const double took_raw = raw_write(s, dir / "raw.bin");
    if (std::getenv("SAVEPOINT_BENCH_VERBOSE")) std::fprintf(stderr, "raw write %d: %.1f ms\n", round, took_raw * 1e3);
    raw = std::min(raw, took_raw);
    const double before = rss_mib();
    reset_peak_rss();
    const auto t0 = Clock::now();
    ckpt.save_checkpoint({{"round", round}});
    const double took = seconds_since(t0);
    if (std::getenv("SAVEPOINT_BENCH_VERBOSE")) std::fprintf(stderr, "sync save %d: %.1f ms\n", round, took * 1e3);
    sync = std::min(sync, took);
    sync_peak = std::max(sync_peak, peak_mib() - before);
    ckpt.delete_checkpoints(savepoint::keep(1));
    tsave = std::min(tsave, torch_save(s, dir / "torch"));
    const auto t1 = Clock::now();
    two_threads.save_checkpoint({{"round", round}});
    const double took_parallel = seconds_since(t1);
    if (std::getenv("SAVEPOINT_BENCH_VERBOSE"))
      std::fprintf(stderr, "parallel save %d: %.1f ms\n", round, took_parallel * 1e3);
    parallel = std::min(parallel, took_parallel);
    two_threads.delete_checkpoints(savepoint::keep(0));
  }

  // Async: stall of the training thread vs a host copy of the state.
  const double copy = host_copy(s);
  double stall = 1e9, async_total = 1e9;
  const double before_async = rss_mib();
  reset_peak_rss();
  for (int round = 0; round < rounds; ++round) {
    const auto t0 = Clock::now();
    ckpt.save_and_keep_only_async({{"async", round}}, savepoint::keep(1));
    stall = std::min(stall, seconds_since(t0));
    ckpt.wait();
    async_total = std::min(async_total, seconds_since(t0));
  }
  const double async_peak = peak_mib() - before_async;
  // Reused buffers: RSS after many more async saves does not grow.
  const double rss_after_3 = rss_mib();
  for (int round = 0; round < async_rounds; ++round) {
    ckpt.save_and_keep_only_async({{"more", round}}, savepoint::keep(1));
  }
  ckpt.wait();
  const double growth = rss_mib() - rss_after_3;

  // Loads, cold, best of `rounds` alternated: a raw read of the same bytes; a load into the live
  // model and optimizer (state filled in place); the same load with two I/O threads; a
  // start-up recovery into a new model and optimizer without state (which must allocate its
  // moments), and torch::load doing the same from torch::save's files; the verified,
  // zero-copy mapping of both files (load_tensors with ReadMode::map).
  const auto latest = *ckpt.find_checkpoint();
  double raw_read_s = 1e9, load_s = 1e9, parallel_load_s = 1e9, startup_s = 1e9, torch_startup_s = 1e9;
  double mapped_s = 1e9;
  for (int round = 0; round < rounds; ++round) {
    drop_cache(dir / "raw.bin");
    raw_read_s = std::min(raw_read_s, raw_read(dir / "raw.bin", s.bytes));
    drop_cache(latest.path);
    const auto t0 = Clock::now();
    ckpt.load_checkpoint(latest);
    load_s = std::min(load_s, seconds_since(t0));
    drop_cache(latest.path);
    const auto t3 = Clock::now();
    two_threads.load_checkpoint(latest);
    parallel_load_s = std::min(parallel_load_s, seconds_since(t3));
    {
      State fresh = make_state(mib, /*with_moments=*/false);
      savepoint::Checkpointer startup(dir / "savepoint", savepoint::CheckpointerOptions().read_only(true));
      startup.add_recoverable("model", fresh.model);
      startup.add_recoverable("optimizer", *fresh.opt);
      drop_cache(latest.path);
      const auto t1 = Clock::now();
      if (!startup.recover_if_possible()) throw std::runtime_error("start-up recovery found nothing");
      startup_s = std::min(startup_s, seconds_since(t1));
    }
    {
      State fresh = make_state(mib, /*with_moments=*/false);
      drop_cache(dir / "torch");
      const auto t1 = Clock::now();
      torch::load(fresh.model, (dir / "torch" / "model.pt").string());
      torch::load(*fresh.opt, (dir / "torch" / "optimizer.pt").string());
      torch_startup_s = std::min(torch_startup_s, seconds_since(t1));
    }
    drop_cache(latest.path);
    const auto t2 = Clock::now();
    const auto model_tensors = savepoint::load_tensors(latest, "model", savepoint::ReadMode::map);
    const auto optimizer_tensors = savepoint::load_tensors(latest, "optimizer", savepoint::ReadMode::map);
    mapped_s = std::min(mapped_s, seconds_since(t2));
  }

  std::printf("| %6lld MiB | %5.2f | %5.2f | %5.2f | **%.2fx** | %.2fx | %.2fx | %6.1f | %6.1f | **%.2fx** | %6.1f | %5.2f | %5.2f | **%.2fx** | %.2fx | %.2fx | %.2fx | %.2fx | %6.0f | %6.0f | %+5.0f (%d saves) |\n",
              static_cast<long long>(mib), gbps(s.bytes, raw), gbps(s.bytes, sync), gbps(s.bytes, tsave),
              raw / sync, raw / parallel, raw / tsave, copy * 1e3, stall * 1e3, stall / copy, async_total * 1e3,
              gbps(s.bytes, raw_read_s), gbps(s.bytes, load_s), raw_read_s / load_s, raw_read_s / parallel_load_s, raw_read_s / startup_s,
              raw_read_s / torch_startup_s,
              raw_read_s / mapped_s,
              sync_peak, async_peak, growth, async_rounds + 3);
  std::fflush(stdout);
  fs::remove_all(dir);
}

// list / find / recover among `count` checkpoints (small ones: what is measured is the scan).
void bench_many(int count, const fs::path& root) {
  const fs::path dir = root / "many";
  fs::remove_all(dir);
  int step = 0;
  {
    savepoint::Checkpointer ckpt(dir, {{"step", step}});
    const auto first = ckpt.save_checkpoint({{"loss", 1.0}, {"epoch", 0}});
    // Clone it: same files, a new directory name, sequence and meta (checksums stay valid).
    for (int i = 1; i < count; ++i) {
      savepoint::Checkpoint c = first;
      c.path = dir / ("CKPT+bench+" + std::to_string(100000 + i));
      c.sequence = static_cast<std::uint64_t>(i + 1);
      c.meta["loss"] = 1.0 + (i * 7919 % count) / static_cast<double>(count);
      c.meta["epoch"] = i;
      fs::create_directory(c.path);
      fs::copy_file(first.path / "step.json", c.path / "step.json");
      std::ofstream(c.path / "meta.json") << savepoint::detail::serialize_meta(c);
    }
  }
  // The first scan of a process parses every meta.json (a fresh Checkpointer; files in the
  // page cache); later scans re-read only directories that changed.
  double first_ms = 0;
  {
    savepoint::Checkpointer fresh(dir, {{"step", step}}, savepoint::CheckpointerOptions().read_only(true));
    const auto t0 = Clock::now();
    (void)fresh.find_checkpoint(savepoint::min_key("loss"));
    first_ms = seconds_since(t0) * 1e3;
  }
  savepoint::Checkpointer ckpt(dir, {{"step", step}}, savepoint::CheckpointerOptions().read_only(true));
  auto time_ms = [](auto&& fn) {
    double best = 1e9;
    for (int i = 0; i < 3; ++i) {
      const auto t0 = Clock::now();
      fn();
      best = std::min(best, seconds_since(t0));
    }
    return best * 1e3;
  };
  if (const char* loops = std::getenv("SAVEPOINT_BENCH_LIST_LOOPS"))  // for profiling the scan
    for (int i = 0; i < std::atoi(loops); ++i) (void)ckpt.list_checkpoints();
  std::size_t listed = 0;
  const double list_ms = time_ms([&] { listed = ckpt.list_checkpoints().size(); });
  const double find_ms = time_ms([&] { (void)ckpt.find_checkpoint(savepoint::min_key("loss")); });
  const double recover_ms = time_ms([&] { (void)ckpt.recover_if_possible(); });
  std::printf("| checkpoints | first find in a process | list_checkpoints | find_checkpoint(min_key) | recover_if_possible |\n");
  std::printf("|---|---|---|---|---|\n");
  std::printf("| %d (%zu listed) | %.1f ms | %.1f ms | %.1f ms | %.1f ms |\n", count, listed, first_ms, list_ms,
              find_ms, recover_ms);
  fs::remove_all(dir);
}

std::vector<std::int64_t> parse_sizes(const std::string& s) {
  std::vector<std::int64_t> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) out.push_back(std::stoll(item));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::int64_t> sizes{64, 256, 1024, 2048};
  int checkpoints = 10000, async_rounds = 100, rounds = 3;
  // All but 1 GiB of what is available (see warm_memory).
  std::int64_t warm_gib = std::max<std::int64_t>(0, status_kib_meminfo_available() / (1 << 20) - 1);
  fs::path root = fs::temp_directory_path() / "savepoint-bench";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string arg = argv[i];
    if (arg == "--sizes") sizes = parse_sizes(argv[i + 1]);
    else if (arg == "--checkpoints") checkpoints = std::atoi(argv[i + 1]);
    else if (arg == "--async-rounds") async_rounds = std::atoi(argv[i + 1]);
    else if (arg == "--rounds") rounds = std::max(1, std::atoi(argv[i + 1]));
    else if (arg == "--dir") root = argv[i + 1];
    else if (arg == "--warm-memory-gib") warm_gib = std::atoll(argv[i + 1]);
    else {
      std::cerr << "usage: savepoint_bench [--sizes 64,256,...] [--checkpoints N] [--async-rounds N] [--rounds N] [--dir D] "
                   "[--warm-memory-gib G]\n";
      return 2;
    }
  }
  at::set_num_threads(1);
  savepoint::set_log_level(savepoint::LogLevel::warn);
  warm_memory(warm_gib);
  std::printf("savepoint bench in %s (LibTorch %s), after touching %lld GiB of memory\n\n", root.c_str(),
              TORCH_VERSION, static_cast<long long>(warm_gib));
  std::printf("| state | raw write+fsync GB/s | savepoint sync GB/s | torch::save GB/s | sync / raw | sync, 2 write threads / raw | torch::save / raw "
              "| host copy ms | async stall ms | stall / copy | async total ms | raw cold read GB/s | load GB/s "
              "| load / raw | load, 2 io threads / raw | start-up recover / raw | torch::load start-up / raw | mapped read / raw | sync peak extra MiB | async peak extra MiB | RSS growth MiB |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (auto mib : sizes) bench_size(mib, root, mib <= 256 ? async_rounds : 10, rounds);
  if (checkpoints > 0) {
    std::printf("\n");
    bench_many(checkpoints, root);
  }
  fs::remove_all(root);
  return 0;
}
