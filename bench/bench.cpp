// savepoint benchmark: prints one table row per state size, plus list/find at many checkpoints.
//
//   bash scripts/bench.sh                       # 64 MiB ... 4 GiB, 5 rounds, 10,000 checkpoints
//   build-bench/bench/savepoint_bench --sizes 64,256 --checkpoints 1000 --dir /mnt/fast/tmp
//
// Everything is measured in the same run on the same directory, so the ratios compare like
// with like: savepoint's sync save vs raw write()+fsync() of the same bytes and vs torch::save
// (+fsync); async save stall vs a plain host copy of the state; load vs a raw cold read
// (page cache dropped for the files with posix_fadvise before each cold read).
#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/detail/phases.hpp>
#include <savepoint/savepoint.hpp>

#include "memory.hpp"
#include "stats.hpp"
#include "workload.hpp"
#include <savepoint/tensors.hpp>

#include <torch/torch.h>

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <chrono>
#include <ctime>
#include <optional>
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

std::string env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}
bool verbose() { return !env_flag("SAVEPOINT_BENCH_VERBOSE").empty(); }

// "1.62 ±4%": GB/s from the median time, and the rounds' spread (half of (max-min)/median).
std::string gbps_cell(std::int64_t bytes, const Samples& seconds) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f ±%.0f%%", gbps(bytes, seconds.median()), 50 * seconds.spread());
  return buf;
}
std::string ms_cell(const Samples& seconds) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f ±%.0f%%", seconds.median() * 1e3, 50 * seconds.spread());
  return buf;
}
// A speed ratio from times: den's time over num's time ("savepoint / raw" = raw_s / savepoint_s).
std::string speed_ratio(const Samples& num_s, const Samples& den_s) { return ratio_cell(den_s, num_s); }

// The phases of one kind of load (detail/phases.hpp), one Samples (seconds) each.
struct PhaseSamples {
  Samples map, fault, read, hash, prepare, apply;
  void add_current() {
    const auto& p = savepoint::detail::load_phases();
    map.add(p.map_ns * 1e-9);
    fault.add(p.fault_ns * 1e-9);
    read.add(p.read_ns * 1e-9);
    hash.add(p.hash_ns * 1e-9);
    prepare.add(p.prepare_ns * 1e-9);
    apply.add(p.apply_ns * 1e-9);
  }
  void record(RoundsCsv& csv, long long mib, const std::string& prefix) const {
    csv.record("savepoint_bench", mib, prefix + ".map_s", map);
    csv.record("savepoint_bench", mib, prefix + ".fault_s", fault);
    csv.record("savepoint_bench", mib, prefix + ".read_s", read);
    csv.record("savepoint_bench", mib, prefix + ".hash_s", hash);
    csv.record("savepoint_bench", mib, prefix + ".prepare_s", prepare);
    csv.record("savepoint_bench", mib, prefix + ".apply_s", apply);
  }
};

std::vector<std::string> g_phase_rows;  // printed after the main table

// Times `fn` (a load), with the phase counters reset first; adds the wall time and the phases.
template <class Fn>
void timed_load(Samples& wall, PhaseSamples* phases, Fn&& fn) {
  savepoint::detail::reset_load_phases();
  const auto t0 = Clock::now();
  fn();
  wall.add(seconds_since(t0));
  if (phases) phases->add_current();
}

void bench_size(std::int64_t mib, const fs::path& root, int async_rounds, int rounds, RoundsCsv& csv) {
  const fs::path dir = root / ("size-" + std::to_string(mib));
  fs::remove_all(dir);
  fs::create_directories(dir);
  State s = make_state(mib);
  const long long m = static_cast<long long>(mib);
  auto rec = [&](const std::string& series, const Samples& v) { csv.record("savepoint_bench", m, series, v); };

  // Writes: `rounds` of each path, alternated, so neither is favoured by the disk's state.
  // Retention (deleting the previous checkpoint) is not part of the timed save.
  Samples raw, sync, tsave, parallel, copy, stall, async_total;
  double sync_peak = 0, async_peak = 0, growth = 0;
  std::optional<savepoint::Checkpoint> latest;
  {
    savepoint::Checkpointer ckpt(dir / "savepoint");
    ckpt.add_recoverable("model", s.model);
    ckpt.add_recoverable("optimizer", *s.opt);
    savepoint::Checkpointer two_threads(dir / "parallel", savepoint::CheckpointerOptions().io_threads(2));
    two_threads.add_recoverable("model", s.model);
    two_threads.add_recoverable("optimizer", *s.opt);
    for (int round = 0; round < rounds; ++round) {
      raw.add(raw_write(s, dir / "raw.bin"));
      const double before = rss_mib();
      reset_peak_rss();
      const auto t0 = Clock::now();
      ckpt.save_checkpoint({{"round", round}});
      sync.add(seconds_since(t0));
      sync_peak = std::max(sync_peak, peak_mib() - before);
      ckpt.delete_checkpoints(savepoint::keep(1));
      tsave.add(torch_save(s, dir / "torch"));
      const auto t1 = Clock::now();
      two_threads.save_checkpoint({{"round", round}});
      parallel.add(seconds_since(t1));
      two_threads.delete_checkpoints(savepoint::keep(0));
      if (verbose())
        std::fprintf(stderr, "%lld MiB round %d: raw write %.1f ms, sync %.1f ms, torch::save %.1f ms, 2 threads %.1f ms\n",
                     m, round, raw.values().back() * 1e3, sync.values().back() * 1e3, tsave.values().back() * 1e3,
                     parallel.values().back() * 1e3);
    }

    // Async: stall of the training thread vs a host copy of the state into warm buffers.
    for (int round = 0; round < rounds; ++round) copy.add(host_copy(s));  // its buffers are freed before the peak is reset
    const double before_async = rss_mib();
    reset_peak_rss();
    for (int round = 0; round < rounds; ++round) {
      const auto t0 = Clock::now();
      ckpt.save_and_keep_only_async({{"async", round}}, savepoint::keep(1));
      stall.add(seconds_since(t0));
      ckpt.wait();
      async_total.add(seconds_since(t0));
    }
    async_peak = peak_mib() - before_async;
    // Reused buffers: RSS after many more async saves does not grow.
    const double rss_after = rss_mib();
    for (int round = 0; round < async_rounds; ++round) ckpt.save_and_keep_only_async({{"more", round}}, savepoint::keep(1));
    ckpt.wait();
    growth = rss_mib() - rss_after;
    latest = ckpt.find_checkpoint();
  }  // the Checkpointers and their async staging buffers go: the loads below get that memory

  // Loads, every one from a cold cache (the files' pages dropped first), `rounds` alternated:
  //  - raw read of the same bytes into a warm buffer (memory in use: load's baseline) and into
  //    fresh memory (start-up's baseline);
  //  - load into the live model and optimizer (state filled in place), with 1 and 2 I/O threads;
  //  - start-up recovery into a new model and an optimizer without state, and torch::load doing
  //    the same job from torch::save's files of the same state, in alternating order;
  //  - the verified, zero-copy mapping of both files (load_tensors with ReadMode::map).
  savepoint::Checkpointer live(dir / "savepoint", savepoint::CheckpointerOptions().read_only(true));
  live.add_recoverable("model", s.model);
  live.add_recoverable("optimizer", *s.opt);
  savepoint::Checkpointer live2(dir / "savepoint", savepoint::CheckpointerOptions().read_only(true).io_threads(2));
  live2.add_recoverable("model", s.model);
  live2.add_recoverable("optimizer", *s.opt);
  std::unique_ptr<char[]> warm(new char[static_cast<std::size_t>(s.bytes)]);
  std::memset(warm.get(), 1, static_cast<std::size_t>(s.bytes));
  Samples raw_warm, raw_fresh, raw_fresh_ahead, load, load2, startup, torch_startup, mapped, fault, hash;
  PhaseSamples load_phases, startup_phases;
  auto savepoint_startup = [&] {
    State fresh = make_state(mib, /*with_moments=*/false);
    savepoint::Checkpointer startup_ckpt(dir / "savepoint", savepoint::CheckpointerOptions().read_only(true));
    startup_ckpt.add_recoverable("model", fresh.model);
    startup_ckpt.add_recoverable("optimizer", *fresh.opt);
    drop_cache(latest->path);
    timed_load(startup, &startup_phases, [&] {
      if (!startup_ckpt.recover_if_possible()) throw std::runtime_error("start-up recovery found nothing");
    });
  };
  auto torch_load_startup = [&] {
    State fresh = make_state(mib, /*with_moments=*/false);
    drop_cache(dir / "torch");
    timed_load(torch_startup, nullptr, [&] {
      torch::load(fresh.model, (dir / "torch" / "model.pt").string());
      torch::load(*fresh.opt, (dir / "torch" / "optimizer.pt").string());
    });
  };
  for (int round = 0; round < rounds; ++round) {
    drop_cache(dir / "raw.bin");
    raw_warm.add(raw_read_into(dir / "raw.bin", warm.get(), s.bytes));
    drop_cache(dir / "raw.bin");
    raw_fresh.add(raw_read_fresh(dir / "raw.bin", s.bytes));
    drop_cache(dir / "raw.bin");
    raw_fresh_ahead.add(raw_read_fresh_prefaulted(dir / "raw.bin", s.bytes));
    drop_cache(latest->path);
    timed_load(load, &load_phases, [&] { live.load_checkpoint(*latest); });
    drop_cache(latest->path);
    timed_load(load2, nullptr, [&] { live2.load_checkpoint(*latest); });
    if (round % 2 == 0) {
      savepoint_startup();
      torch_load_startup();
    } else {
      torch_load_startup();
      savepoint_startup();
    }
    drop_cache(latest->path);
    const auto t2 = Clock::now();
    {
      const auto model_tensors = savepoint::load_tensors(*latest, "model", savepoint::ReadMode::map);
      const auto optimizer_tensors = savepoint::load_tensors(*latest, "optimizer", savepoint::ReadMode::map);
      mapped.add(seconds_since(t2));
    }
    // What the pieces cost by themselves: faulting in fresh memory of the state's size, and
    // XXH3 over the state's bytes in (warm) memory.
    fault.add(fault_fresh(s.bytes));
    const auto t3 = Clock::now();
    (void)savepoint::detail::digest_bytes({warm.get(), static_cast<std::size_t>(s.bytes)});
    hash.add(seconds_since(t3));
    if (verbose())
      std::fprintf(stderr,
                   "%lld MiB round %d: raw read warm %.1f ms, fresh %.1f ms, load %.1f ms, 2 threads %.1f ms, "
                   "start-up %.1f ms, torch::load %.1f ms, mapped %.1f ms\n",
                   m, round, raw_warm.values().back() * 1e3, raw_fresh.values().back() * 1e3,
                   load.values().back() * 1e3, load2.values().back() * 1e3, startup.values().back() * 1e3,
                   torch_startup.values().back() * 1e3, mapped.values().back() * 1e3);
  }

  for (const auto& [name, v] : std::vector<std::pair<std::string, const Samples*>>{
           {"raw_write_s", &raw}, {"sync_save_s", &sync}, {"torch_save_s", &tsave}, {"sync_2_threads_s", &parallel},
           {"host_copy_s", &copy}, {"async_stall_s", &stall}, {"async_total_s", &async_total},
           {"raw_read_warm_s", &raw_warm}, {"raw_read_fresh_s", &raw_fresh},
           {"raw_read_fresh_prefaulted_s", &raw_fresh_ahead}, {"load_s", &load},
           {"load_2_threads_s", &load2}, {"startup_s", &startup}, {"torch_load_startup_s", &torch_startup},
           {"mapped_read_s", &mapped}, {"fault_fresh_s", &fault}, {"hash_s", &hash}})
    rec(name, *v);
  load_phases.record(csv, m, "load");
  startup_phases.record(csv, m, "startup");

  std::printf("| %lld MiB | %s | %s | %s | **%s** | %s | %s | %s | %s | **%s** | %s | %s | %s | %s | **%s** | %s | %s | %s | "
              "**%s** | %s | **%s** | %s | %.0f | %.0f | %+.0f (%d saves) |\n",
              m, gbps_cell(s.bytes, raw).c_str(), gbps_cell(s.bytes, sync).c_str(), gbps_cell(s.bytes, tsave).c_str(),
              speed_ratio(sync, raw).c_str(), speed_ratio(parallel, raw).c_str(), speed_ratio(tsave, raw).c_str(),
              ms_cell(copy).c_str(), ms_cell(stall).c_str(), ratio_cell(stall, copy).c_str(), ms_cell(async_total).c_str(),
              gbps_cell(s.bytes, raw_warm).c_str(), gbps_cell(s.bytes, raw_fresh).c_str(), gbps_cell(s.bytes, load).c_str(),
              speed_ratio(load, raw_warm).c_str(), speed_ratio(load2, raw_warm).c_str(),
              gbps_cell(s.bytes, startup).c_str(), gbps_cell(s.bytes, torch_startup).c_str(),
              speed_ratio(startup, raw_fresh).c_str(), speed_ratio(torch_startup, raw_fresh).c_str(),
              speed_ratio(startup, torch_startup).c_str(), speed_ratio(mapped, raw_warm).c_str(), sync_peak, async_peak,
              growth, async_rounds + rounds);
  std::fflush(stdout);

  auto ms = [](const Samples& v) { return fmt::format("{:.0f}", v.median() * 1e3); };
  struct PhaseRow {
    const char* path;
    const Samples* wall;
    const PhaseSamples* phases;
  };
  for (const PhaseRow& row : {PhaseRow{"load into live state", &load, &load_phases},
                              PhaseRow{"start-up recovery", &startup, &startup_phases}}) {
    const PhaseSamples& p = *row.phases;
    g_phase_rows.push_back(fmt::format("| {} MiB | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2f} | {:.2f} |", m,
                                       row.path, ms(*row.wall), ms(p.map), ms(p.fault), ms(p.read), ms(p.hash),
                                       ms(p.prepare), ms(p.apply), ms(raw_fresh), ms(raw_fresh_ahead), gbps(s.bytes, fault.median()),
                                       gbps(s.bytes, hash.median())));
    std::fprintf(stderr, "phases: %s\n", g_phase_rows.back().c_str());  // at once: a cut-short run keeps them
  }
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
  std::vector<std::int64_t> sizes{64, 256, 1024, 2048, 4096};
  int checkpoints = 10000, async_rounds = 100, rounds = 5;
  // All but 1 GiB of what is available (see warm_memory).
  std::int64_t warm_gib = std::max<std::int64_t>(0, status_kib_meminfo_available() / (1 << 20) - 1);
  fs::path root = fs::temp_directory_path() / "savepoint-bench";
  // Every round of every series, by default next to where the run started.
  fs::path csv_path = fmt::format("savepoint-bench-{:%Y%m%d-%H%M%S}.csv", fmt::gmtime(std::time(nullptr)));
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string arg = argv[i];
    if (arg == "--sizes") sizes = parse_sizes(argv[i + 1]);
    else if (arg == "--checkpoints") checkpoints = std::atoi(argv[i + 1]);
    else if (arg == "--async-rounds") async_rounds = std::atoi(argv[i + 1]);
    else if (arg == "--rounds") rounds = std::max(1, std::atoi(argv[i + 1]));
    else if (arg == "--dir") root = argv[i + 1];
    else if (arg == "--warm-memory-gib") warm_gib = std::atoll(argv[i + 1]);
    else if (arg == "--csv") csv_path = argv[i + 1];
    else {
      std::cerr << "usage: savepoint_bench [--sizes 64,256,...] [--checkpoints N] [--async-rounds N] [--rounds N] [--dir D] "
                   "[--warm-memory-gib G] [--csv FILE]\n";
      return 2;
    }
  }
  at::set_num_threads(1);
  savepoint::set_log_level(savepoint::LogLevel::warn);
  warm_memory(warm_gib);
  RoundsCsv csv(csv_path);
  std::printf("savepoint bench in %s (LibTorch %s), after touching %lld GiB of memory; %d rounds, medians (± half "
              "the spread over rounds); every round in %s\n\n",
              root.c_str(), TORCH_VERSION, static_cast<long long>(warm_gib), rounds, fs::absolute(csv_path).c_str());
  std::printf("| state | raw write+fsync GB/s | savepoint sync GB/s | torch::save GB/s | sync / raw | sync, 2 write threads / raw "
              "| torch::save / raw | host copy ms | async stall ms | stall / copy | async total ms "
              "| raw cold read, warm buffer GB/s | raw cold read, fresh memory GB/s | load GB/s | load / raw warm "
              "| load, 2 io threads / raw warm | start-up GB/s | torch::load start-up GB/s | start-up / raw fresh "
              "| torch::load start-up / raw fresh | start-up / torch::load | mapped read / raw warm "
              "| sync peak extra MiB | async peak extra MiB | RSS growth MiB |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (auto mib : sizes) bench_size(mib, root, mib <= 256 ? async_rounds : 10, rounds, csv);
  std::printf("\nWhere a load's time goes (ms, medians; detail/phases.hpp): map = mmap+MAP_POPULATE of the files, "
              "fault = fresh memory faulted in, read = read() into it, hash = XXH3, prepare/apply = the hooks. "
              "Baselines measured alone: raw cold read into fresh memory (ms), faulting in fresh memory of the "
              "state's size, XXH3 over the state in memory; the raw read into fresh memory with a second "
              "thread faulting it in ahead (what start-up does).\n\n");
  std::printf("| state | path | wall ms | map | fault | read | hash | prepare | apply | raw fresh read ms "
              "| raw fresh read, faulted ahead ms | fault GB/s | hash GB/s |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const auto& row : g_phase_rows) std::printf("%s\n", row.c_str());
  std::fflush(stdout);
  if (checkpoints > 0) {
    std::printf("\n");
    bench_many(checkpoints, root);
  }
  fs::remove_all(root);
  return 0;
}
