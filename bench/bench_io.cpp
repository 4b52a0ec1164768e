// The stall of an overlapped async save, and direct I/O against the page cache (issue 14,
// goals 3 and 4). Every series is measured in alternated rounds in one process; the tables
// print medians and spread ((max - min) / median over the rounds), --csv keeps every round.
//
//   bash scripts/bench.sh io --sizes 256,1024,2048 --rounds 5 [--dir D] [--csv rounds.csv]
//     [--warm-memory-gib G] [--ranks N]
//
// --ranks N (N > 1): the stall and the writes with a process group of N threads as ranks.
//
// Stall: the host copy of the state into warm buffers; save_checkpoint_async with the snapshot
// at the call (AsyncSnapshot::at_call); with AsyncSnapshot::overlapped, the call, then
// before_update() right away (the worst case: nothing copied yet) or after "compute" of twice
// the host copy's time (a busy loop on the training thread, as a forward/backward would be).
// Writes: raw write()+fsync of the same bytes, `dd bs=64M oflag=direct conv=fsync` of them,
// save_checkpoint through the page cache and with direct_io(true). Cold reads (file pages
// dropped first): raw read() of the same bytes, load_tensors(ReadMode::map) and
// load_tensors(ReadMode::direct) of both keys, each verified.
#include <savepoint/savepoint.hpp>
#include <savepoint/tensors.hpp>

#include "../tests/thread_group.hpp"
#include "stats.hpp"
#include "workload.hpp"

#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

using namespace savepoint::bench;

struct Row {
  std::int64_t mib = 0, bytes = 0;
  Samples copy, at_call, overlapped_call, guard_now, guard_after_compute;
  Samples raw_write, dd_direct, buffered_save, direct_save;
  Samples raw_read, map_read, direct_read;
};

void spin_for(double seconds) {  // the training thread busy, like a forward/backward
  const auto t0 = Clock::now();
  volatile double x = 1;
  while (seconds_since(t0) < seconds)
    for (int i = 0; i < 1000; ++i) x = x * 1.0000001 + 1e-9;
}

// Deletions are untimed, but on a file system mounted with `discard` (this VM's ext4) the
// next fsync's journal commit would pay for trimming the deleted blocks: sync(2) first.
void settle_disk() { ::sync(); }

double timed(const std::function<void()>& fn) {
  const auto t0 = Clock::now();
  fn();
  return seconds_since(t0);
}

Row bench_size(std::int64_t mib, const fs::path& root, int rounds, RoundsCsv& csv) {
  const fs::path dir = root / ("size-" + std::to_string(mib));
  fs::remove_all(dir);
  fs::create_directories(dir);
  State s = make_state(mib);
  Row row;
  row.mib = mib;
  row.bytes = s.bytes;
  namespace sp = savepoint;
  auto make = [&](const fs::path& where, sp::CheckpointerOptions options) {
    auto c = std::make_unique<sp::Checkpointer>(where, options);
    c->add_recoverable("model", s.model);
    c->add_recoverable("optimizer", *s.opt);
    return c;
  };
  auto async = make(dir / "async", {});
  auto buffered = make(dir / "buffered", {});
  auto direct = make(dir / "direct", sp::CheckpointerOptions().direct_io(true));
  const fs::path raw = dir / "raw.bin", dd_out = dir / "dd.bin";
  for (int round = 0; round < rounds; ++round) {
    // --- stall
    const double copy = host_copy(s);
    row.copy.add(copy);
    async->options().async_snapshot(sp::AsyncSnapshot::at_call);
    row.at_call.add(timed([&] { async->save_checkpoint_async(); }));
    async->wait();
    async->delete_checkpoints(sp::keep(1));
    async->options().async_snapshot(sp::AsyncSnapshot::overlapped);
    row.overlapped_call.add(timed([&] { async->save_checkpoint_async(); }));
    row.guard_now.add(timed([&] { async->before_update(); }));
    async->wait();
    async->delete_checkpoints(sp::keep(1));
    row.overlapped_call.add(timed([&] { async->save_checkpoint_async(); }));  // two call samples per round
    spin_for(2 * copy);
    row.guard_after_compute.add(timed([&] { async->before_update(); }));
    async->wait();
    async->delete_checkpoints(sp::keep(1));
    settle_disk();
    // --- writes, alternated
    fs::remove(raw);
    settle_disk();
    row.raw_write.add(raw_write(s, raw));
    fs::remove(dd_out);
    settle_disk();
    const std::string dd = "dd if='" + raw.string() + "' of='" + dd_out.string() +
                           "' bs=64M oflag=direct conv=fsync status=none";
    row.dd_direct.add(timed([&] {
      if (std::system(dd.c_str()) != 0) throw std::runtime_error("bench: dd failed: " + dd);
    }));
    fs::remove(dd_out);
    buffered->delete_checkpoints(sp::keep(0));
    direct->delete_checkpoints(sp::keep(0));
    settle_disk();
    sp::Checkpoint b, d;
    auto save_buffered = [&] { row.buffered_save.add(timed([&] { b = buffered->save_checkpoint(); })); };
    auto save_direct = [&] { row.direct_save.add(timed([&] { d = direct->save_checkpoint(); })); };
    if (round % 2) save_direct(), save_buffered();  // neither always second
    else save_buffered(), save_direct();
    // --- cold reads, alternated
    drop_cache(raw);
    row.raw_read.add(raw_read(raw, s.bytes));
    auto read_keys = [&](const sp::Checkpoint& c, sp::ReadMode mode) {
      drop_cache(c.path);
      return timed([&] {
        for (const char* key : {"model", "optimizer"}) (void)sp::load_tensors(c, key, mode);
      });
    };
    row.map_read.add(read_keys(b, sp::ReadMode::map));
    row.direct_read.add(read_keys(d, sp::ReadMode::direct));
  }
  const std::pair<const char*, const Samples*> series[] = {
      {"host_copy_s", &row.copy},
      {"async_at_call_stall_s", &row.at_call},
      {"overlapped_call_s", &row.overlapped_call},
      {"overlapped_guard_now_s", &row.guard_now},
      {"overlapped_guard_after_compute_s", &row.guard_after_compute},
      {"raw_write_fsync_s", &row.raw_write},
      {"dd_oflag_direct_s", &row.dd_direct},
      {"save_buffered_s", &row.buffered_save},
      {"save_direct_s", &row.direct_save},
      {"raw_cold_read_s", &row.raw_read},
      {"load_map_cold_s", &row.map_read},
      {"load_direct_cold_s", &row.direct_read},
  };
  for (const auto& [name, samples] : series) csv.record("io", mib, name, *samples);
  fs::remove_all(dir);
  return row;
}

// The same stall and write series with a process group: `ranks` threads as ranks of an
// in-process group (tests/thread_group.hpp), each with a replica of the state (DDP-style:
// the model written by rank 0, the optimizer by rank 1). A round's figure is its slowest
// rank's, since a job waits for that one.
struct GroupRow {
  std::int64_t mib = 0, bytes = 0;
  Samples copy, at_call, overlapped_call, guard_now, buffered_save, direct_save;
};

GroupRow bench_group(std::int64_t mib, const fs::path& root, int rounds, int ranks) {
  namespace sp = savepoint;
  const fs::path dir = root / ("group-" + std::to_string(mib));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::vector<State> states;
  for (int r = 0; r < ranks; ++r) states.push_back(make_state(mib));
  std::vector<GroupRow> per_rank(ranks);
  test::ThreadWorld world(ranks, std::chrono::minutes(10));
  const auto outcomes = world.run([&](int rank, std::shared_ptr<sp::ProcessGroup> group) {
    State& s = states[rank];
    GroupRow& row = per_rank[rank];
    auto make = [&](const fs::path& where, sp::CheckpointerOptions options) {
      auto c = std::make_unique<sp::Checkpointer>(where, options.process_group(group));
      c->add_recoverable("model", s.model);
      c->add_recoverable("optimizer", *s.opt);
      return c;
    };
    auto async = make(dir / "async", {});
    auto buffered = make(dir / "buffered", {});
    auto direct = make(dir / "direct", sp::CheckpointerOptions().direct_io(true));
    for (int round = 0; round < rounds; ++round) {
      row.copy.add(host_copy(s));
      async->options().async_snapshot(sp::AsyncSnapshot::at_call);
      row.at_call.add(timed([&] { async->save_checkpoint_async(); }));
      async->wait();
      async->delete_checkpoints(sp::keep(1));
      async->options().async_snapshot(sp::AsyncSnapshot::overlapped);
      row.overlapped_call.add(timed([&] { async->save_checkpoint_async(); }));
      row.guard_now.add(timed([&] { async->before_update(); }));
      async->wait();
      async->delete_checkpoints(sp::keep(1));
      buffered->delete_checkpoints(sp::keep(0));
      direct->delete_checkpoints(sp::keep(0));
      if (rank == 0) settle_disk();
      auto save_buffered = [&] { row.buffered_save.add(timed([&] { buffered->save_checkpoint(); })); };
      auto save_direct = [&] { row.direct_save.add(timed([&] { direct->save_checkpoint(); })); };
      if (round % 2) save_direct(), save_buffered();  // neither always second
      else save_buffered(), save_direct();
    }
    return 0;
  });
  for (const auto& o : outcomes)
    if (!o.value) throw std::runtime_error("bench: a rank failed: " + o.message());
  GroupRow out;
  out.mib = mib;
  out.bytes = states[0].bytes;
  Samples GroupRow::*series[] = {&GroupRow::copy, &GroupRow::at_call, &GroupRow::overlapped_call,
                                 &GroupRow::guard_now, &GroupRow::buffered_save, &GroupRow::direct_save};
  for (auto member : series) {
    for (int round = 0; round < rounds; ++round) {
      double slowest = 0;
      for (const auto& row : per_rank) slowest = std::max(slowest, (row.*member).values()[round]);
      (out.*member).add(slowest);
    }
  }
  fs::remove_all(dir);
  return out;
}

std::string ms(const Samples& s) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f (±%.0f%%)", s.median() * 1e3, 50 * s.spread());
  return buf;
}
std::string gbps_cell(std::int64_t bytes, const Samples& s) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f (±%.0f%%)", gbps(bytes, s.median()), 50 * s.spread());
  return buf;
}
// Rates compare inversely to times: a / b of the rates is b / a of the times.
std::string speed_ratio(const Samples& faster_if_smaller, const Samples& baseline) {
  return ratio_cell(baseline, faster_if_smaller);
}

std::vector<std::int64_t> parse_sizes(const std::string& s) {
  std::vector<std::int64_t> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) out.push_back(std::stoll(item));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::int64_t> sizes{256, 1024, 2048};
  int rounds = 5;
  int ranks = 1;
  std::int64_t warm_gib = std::max<std::int64_t>(0, status_kib_meminfo_available() / (1 << 20) - 1);
  fs::path root = fs::temp_directory_path() / "savepoint-bench-io";
  fs::path csv_file;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string arg = argv[i];
    if (arg == "--sizes") sizes = parse_sizes(argv[i + 1]);
    else if (arg == "--rounds") rounds = std::max(1, std::atoi(argv[i + 1]));
    else if (arg == "--dir") root = argv[i + 1];
    else if (arg == "--csv") csv_file = argv[i + 1];
    else if (arg == "--warm-memory-gib") warm_gib = std::atoll(argv[i + 1]);
    else if (arg == "--ranks") ranks = std::max(1, std::atoi(argv[i + 1]));
    else {
      std::cerr << "usage: savepoint_bench_io [--sizes 256,1024,...] [--rounds N] [--dir D] [--csv F] "
                   "[--warm-memory-gib G] [--ranks N]\n";
      return 2;
    }
  }
  at::set_num_threads(1);
  savepoint::set_log_level(savepoint::LogLevel::warn);
  RoundsCsv csv = csv_file.empty() ? RoundsCsv() : RoundsCsv(csv_file);
  warm_memory(warm_gib);
  std::printf("savepoint bench io in %s (LibTorch %s), %d rounds, after touching %lld GiB of memory\n"
              "cells: median over the rounds (± half the spread, (max - min) / median)\n\n",
              root.c_str(), TORCH_VERSION, rounds, static_cast<long long>(warm_gib));
  if (ranks > 1) {
    std::printf("| state per rank | ranks | host copy ms | async stall ms, snapshot at the call | / copy | overlapped "
                "call ms | / copy | before_update right after the call ms | save, page cache GB/s per rank | save, "
                "direct_io GB/s per rank | direct / page cache |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (auto mib : sizes) {
      const GroupRow r = bench_group(mib, root, rounds, ranks);
      // Each rank writes about half the state (model or optimizer): rates over bytes / ranks.
      const std::int64_t share = r.bytes / ranks;
      std::printf("| %5lld MiB | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", static_cast<long long>(r.mib),
                  ranks, ms(r.copy).c_str(), ms(r.at_call).c_str(), ratio_cell(r.at_call, r.copy).c_str(),
                  ms(r.overlapped_call).c_str(), ratio_cell(r.overlapped_call, r.copy).c_str(),
                  ms(r.guard_now).c_str(), gbps_cell(share, r.buffered_save).c_str(),
                  gbps_cell(share, r.direct_save).c_str(), speed_ratio(r.direct_save, r.buffered_save).c_str());
    }
    fs::remove_all(root);
    return 0;
  }
  std::vector<Row> rows;
  for (auto mib : sizes) rows.push_back(bench_size(mib, root, rounds, csv));

  std::printf("| state | host copy ms | async stall ms, snapshot at the call | / copy | overlapped call ms | / copy "
              "| before_update right after the call ms | before_update after compute ms |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (const auto& r : rows) {
    std::printf("| %5lld MiB | %s | %s | %s | %s | %s | %s | %s |\n", static_cast<long long>(r.mib), ms(r.copy).c_str(),
                ms(r.at_call).c_str(), ratio_cell(r.at_call, r.copy).c_str(), ms(r.overlapped_call).c_str(),
                ratio_cell(r.overlapped_call, r.copy).c_str(), ms(r.guard_now).c_str(),
                ms(r.guard_after_compute).c_str());
  }
  std::printf("\n| state | raw write+fsync GB/s | dd oflag=direct GB/s | save, page cache GB/s | save, direct_io GB/s "
              "| direct / page cache | direct / dd | direct / raw |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (const auto& r : rows) {
    std::printf("| %5lld MiB | %s | %s | %s | %s | %s | %s | %s |\n", static_cast<long long>(r.mib),
                gbps_cell(r.bytes, r.raw_write).c_str(), gbps_cell(r.bytes, r.dd_direct).c_str(),
                gbps_cell(r.bytes, r.buffered_save).c_str(), gbps_cell(r.bytes, r.direct_save).c_str(),
                speed_ratio(r.direct_save, r.buffered_save).c_str(), speed_ratio(r.direct_save, r.dd_direct).c_str(),
                speed_ratio(r.direct_save, r.raw_write).c_str());
  }
  std::printf("\n| state | raw cold read GB/s | load_tensors map, cold GB/s | load_tensors direct, cold GB/s "
              "| direct / map | direct / raw |\n");
  std::printf("|---|---|---|---|---|---|\n");
  for (const auto& r : rows) {
    std::printf("| %5lld MiB | %s | %s | %s | %s | %s |\n", static_cast<long long>(r.mib),
                gbps_cell(r.bytes, r.raw_read).c_str(), gbps_cell(r.bytes, r.map_read).c_str(),
                gbps_cell(r.bytes, r.direct_read).c_str(), speed_ratio(r.direct_read, r.map_read).c_str(),
                speed_ratio(r.direct_read, r.raw_read).c_str());
  }
  fs::remove_all(root);
  return 0;
}
