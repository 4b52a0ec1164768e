// The memory tier (issue 23): 2 processes as 2 nodes (one rank each, Gloo on loopback), each
// with its own memory directory; every series in alternated rounds, medians and spread.
//
//   bash scripts/bench.sh tier --sizes 256,1024 --rounds 3 [--dir D] [--shm /dev/shm/x] [--step-ms 100]
//
// For a state of S MiB per node (model + Adam, registered per rank, so each node's part is S):
//   recovery: recover_if_possible from the memory tier (both nodes' copies intact) against the
//     same recovery from the disk tier with the files' pages dropped (cold), into live state;
//   stall: save_to_memory (overlapped snapshot) plus before_update after "compute" of twice the
//     host copy's time (a sleep: the accelerator computing, the host CPU free), against a host
//     copy of the state; after a first save (its stall printed on its own: it faults the
//     staging buffers in);
//   step overhead at K = 1: a training step (the same sleep, then an in-place update of every
//     tensor) with a memory save every step, against the same step without; and with
//     skip_while_busy (a save_to_memory call every step, saves started as they complete), with
//     the share of steps whose call started a save;
//   replication: S bytes sent to the other rank in the tier's chunks through the c10d adapter
//     (while it sends its own), against a raw loopback TCP exchange of the same bytes;
//   memory: bytes in the node's memory directory (its part and the buddy copy) and the growth
//     of the process's resident memory over its first memory saves (the staging buffers).
// Then what one pass over S MiB in the tier's directory costs, each way the tier could take
// (what limits recovery from memory on a given machine): read() into a reused buffer, hashed
// chunk by chunk (the baseline); the file mapped and populated, then hashed once and again
// through the same mapping; read() into fresh anonymous memory.
#include <savepoint/c10d.hpp>
#include <savepoint/savepoint.hpp>

#include "memory.hpp"
#include "stats.hpp"
#include "workload.hpp"

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/torch.h>

#include <savepoint/detail/io.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace savepoint::bench;
namespace sp = savepoint;

constexpr int kWorld = 2;
constexpr std::size_t kChunk = std::size_t{32} << 20;  // as the tier sends

double timed(const std::function<void()>& fn) {
  const auto t0 = Clock::now();
  fn();
  return seconds_since(t0);
}

std::int64_t directory_bytes(const fs::path& dir) {
  std::int64_t n = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) n += static_cast<std::int64_t>(e.file_size());
  return n;
}

c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo(const c10::intrusive_ptr<c10d::Store>& store, int rank) {
  auto options = c10d::ProcessGroupGloo::Options::create(std::chrono::minutes(5));
  options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface("lo"));
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, kWorld, options);
}

// Both ranks send `bytes` to each other over a fresh loopback TCP connection (the port goes
// through the store): the raw baseline of the replication.
double raw_tcp_exchange(c10d::Store& store, int rank, const std::vector<char>& out, std::vector<char>& in,
                        const std::string& round) {
  const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listener, 1) != 0 ||
      ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    throw std::runtime_error("bench: listen failed");
  const std::string port = std::to_string(ntohs(addr.sin_port));
  store.set("port" + std::to_string(rank) + round, std::vector<std::uint8_t>(port.begin(), port.end()));
  const auto peer_port = store.get("port" + std::to_string(1 - rank) + round);
  sockaddr_in peer{};
  peer.sin_family = AF_INET;
  peer.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  peer.sin_port = htons(static_cast<std::uint16_t>(std::stoi(std::string(peer_port.begin(), peer_port.end()))));
  const int outgoing = ::socket(AF_INET, SOCK_STREAM, 0);
  if (::connect(outgoing, reinterpret_cast<sockaddr*>(&peer), sizeof peer) != 0)
    throw std::runtime_error("bench: connect failed");
  const int incoming = ::accept(listener, nullptr, nullptr);
  store.set("ready" + std::to_string(rank) + round, {1});
  store.wait({"ready" + std::to_string(1 - rank) + round});
  const double took = timed([&] {
    std::thread sender([&] {
      for (std::size_t at = 0; at < out.size();) {
        const auto n = ::send(outgoing, out.data() + at, out.size() - at, 0);
        if (n <= 0) throw std::runtime_error("bench: send failed");
        at += static_cast<std::size_t>(n);
      }
    });
    for (std::size_t at = 0; at < in.size();) {
      const auto n = ::recv(incoming, in.data() + at, in.size() - at, 0);
      if (n <= 0) throw std::runtime_error("bench: recv failed");
      at += static_cast<std::size_t>(n);
    }
    sender.join();
  });
  ::close(outgoing);
  ::close(incoming);
  ::close(listener);
  return took;
}

struct Row {
  Samples copy, memory_recovery, disk_recovery, call, guard, stall, step_plain, step_tier, step_skip, p2p, tcp;
  double first_stall = 0;  // the first memory save's: its staging buffers are faulted in
  long skip_calls = 0, skip_started = 0;
  std::int64_t bytes = 0, tier_bytes = 0;
  double rss_growth_mib = 0;
};

// One rank's run for a state of `mib` per node; rank 0's rows are printed.
Row run_rank(int rank, std::int64_t mib, const fs::path& dir, const fs::path& shm, int rounds, double step_s) {
  auto store = c10::make_intrusive<c10d::FileStore>((dir / "store").string(), kWorld);
  auto group = sp::c10d_process_group(gloo(c10::make_intrusive<c10d::PrefixStore>("ckpt", store), rank),
                                      std::chrono::minutes(5));
  auto replication = sp::c10d_process_group(gloo(c10::make_intrusive<c10d::PrefixStore>("repl", store), rank),
                                            std::chrono::minutes(5));
  const fs::path disk = dir / "disk", memory = shm / ("node" + std::to_string(rank));
  auto options = [&](bool tier) {
    sp::CheckpointerOptions o;
    o.process_group(group).async_snapshot(sp::AsyncSnapshot::overlapped);
    if (tier)
      o.memory_tier(sp::MemoryTierOptions(memory).node_id("node" + std::to_string(rank)).replication_group(replication));
    return o;
  };
  State s = make_state(mib);
  Row row;
  row.bytes = s.bytes;
  auto attach = [&](sp::Checkpointer& c, State& st) {
    c.add_recoverable("model", st.model, sp::per_rank());
    c.add_recoverable("optimizer", *st.opt, sp::per_rank());
  };
  const double rss0 = rss_mib();
  {
    sp::Checkpointer ckpt(disk, options(true));
    attach(ckpt, s);
    auto update = [&] {
      torch::NoGradGuard no_grad;
      for (auto& t : s.tensors()) t.add_(1e-6);
    };
    // The first save faults its staging buffers in (a one-time cost, printed on its own); the
    // rounds measure the saves after it.
    group->barrier();
    row.first_stall = timed([&] {
      ckpt.save_to_memory();
      ckpt.before_update();
    });
    ckpt.wait();
    for (int round = 0; round < rounds; ++round) {
      const double copy = host_copy(s);
      row.copy.add(copy);
      // Stall of one memory save: the call, "compute", the guard. The ranks start together
      // (else the call's first collective would count how late the other rank is).
      group->barrier();
      const double call = timed([&] { ckpt.save_to_memory(); });
      std::this_thread::sleep_for(std::chrono::duration<double>(2 * copy));
      const double guard = timed([&] { ckpt.before_update(); });
      ckpt.wait();
      row.call.add(call);
      row.guard.add(guard);
      row.stall.add(call + guard);
      // Steps at K = 1 against steps without checkpoints, alternated (5 steps each), and
      // 15 steps with skip_while_busy (its schedule needs a few saves to settle).
      auto steps = [&](bool save, int n, long* started = nullptr) {
        return timed([&] {
                 for (int i = 0; i < n; ++i) {
                   std::this_thread::sleep_for(std::chrono::duration<double>(step_s));
                   if (save) ckpt.before_update();
                   update();
                   if (save && ckpt.save_to_memory() && started) ++*started;
                 }
                 if (save) ckpt.wait();
               }) / n;
      };
      auto skipping = [&](bool on) {
        sp::MemoryTierOptions tier = *ckpt.options().memory_tier();
        ckpt.options().memory_tier(tier.skip_while_busy(on));
      };
      if (round % 2) row.step_tier.add(steps(true, 5)), row.step_plain.add(steps(false, 5));
      else row.step_plain.add(steps(false, 5)), row.step_tier.add(steps(true, 5));
      skipping(true);
      row.step_skip.add(steps(true, 15, &row.skip_started));
      row.skip_calls += 15;
      skipping(false);
    }
    row.tier_bytes = directory_bytes(memory);
    row.rss_growth_mib = rss_mib() - rss0;
    ckpt.persist_memory_checkpoint();
  }
  // Replication: the tier's chunks through the adapter, against raw TCP.
  {
    std::vector<char> out(static_cast<std::size_t>(s.bytes), static_cast<char>(rank)), in(out.size());
    for (int round = 0; round < rounds; ++round) {
      auto p2p = [&] {
        row.p2p.add(timed([&] {
          for (std::size_t at = 0; at < out.size(); at += kChunk) {
            const std::size_t n = std::min(kChunk, out.size() - at);
            replication->send_and_receive({{1 - rank, out.data() + at, n}}, {{1 - rank, in.data() + at, n}});
          }
        }));
      };
      auto tcp = [&] { row.tcp.add(raw_tcp_exchange(*store, rank, out, in, std::to_string(round))); };
      if (round % 2) tcp(), p2p();
      else p2p(), tcp();
      group->barrier();
    }
  }
  // Recovery into live state: memory tier, against the disk tier with a cold cache.
  for (int round = 0; round < rounds; ++round) {
    auto from_memory = [&] {
      sp::Checkpointer ckpt(disk, options(true));
      attach(ckpt, s);
      group->barrier();
      row.memory_recovery.add(timed([&] { ckpt.recover_if_possible(); }));
    };
    auto from_disk = [&] {
      sp::Checkpointer ckpt(disk, options(false));
      attach(ckpt, s);
      drop_cache(disk);
      group->barrier();
      row.disk_recovery.add(timed([&] { ckpt.recover_if_possible(); }));
    };
    if (round % 2) from_disk(), from_memory();
    else from_memory(), from_disk();
  }
  return row;
}

// One pass over `file` each way, `rounds` times alternated; the ratios are against the first.
void print_page_costs(const fs::path& dir, std::int64_t mib, int rounds) {
  namespace detail = savepoint::detail;
  fs::create_directories(dir);
  const fs::path file = dir / "pages";
  const std::size_t bytes = static_cast<std::size_t>(mib) << 20;
  {  // written as the tier writes: kChunk at a time (a tmpfs with huge=within_size then uses huge pages)
    std::vector<char> fill(kChunk);
    for (std::size_t i = 0; i < fill.size(); ++i) fill[i] = static_cast<char>(i * 131 + 7);
    std::FILE* f = std::fopen(file.c_str(), "wb");
    if (f == nullptr) throw std::runtime_error("bench: cannot write " + file.string());
    for (std::size_t at = 0; at < bytes; at += fill.size()) std::fwrite(fill.data(), 1, fill.size(), f);
    std::fclose(f);
  }
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  constexpr std::size_t kPiece = std::size_t{2} << 20;
  std::vector<char> reused(kPiece, 1);
  auto read_into = [&](char* to, bool advance) {
    detail::Hasher hasher;
    for (std::size_t at = 0; at < bytes; at += kPiece) {
      char* piece = advance ? to + at : to;
      if (::pread(fd, piece, kPiece, static_cast<off_t>(at)) != static_cast<ssize_t>(kPiece))
        throw std::runtime_error("bench: short read");
      hasher.update(piece, kPiece);
    }
    return hasher.digest();
  };
  Samples reused_read, map_first, map_again, fresh_read;
  std::uint64_t sink = 0;
  for (int round = 0; round < rounds; ++round) {
    reused_read.add(timed([&] { sink ^= read_into(reused.data(), false); }));
    void* map = nullptr;
    map_first.add(timed([&] {
      map = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
      if (map == MAP_FAILED) throw std::runtime_error("bench: mmap failed");
      sink ^= detail::digest_bytes({static_cast<const char*>(map), bytes}).xxh3;
    }));
    map_again.add(timed([&] { sink ^= detail::digest_bytes({static_cast<const char*>(map), bytes}).xxh3; }));
    ::munmap(map, bytes);
    fresh_read.add(timed([&] {
      void* fresh = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (fresh == MAP_FAILED) throw std::runtime_error("bench: mmap failed");
      sink ^= read_into(static_cast<char*>(fresh), true);
      ::munmap(fresh, bytes);
    }));
  }
  ::close(fd);
  fs::remove_all(dir);
  auto cell = [&](const Samples& s) {
    std::printf(" %.1f ms (%.0f%%), %.2fx |", s.median() * 1e3, s.spread() * 100, s.median() / reused_read.median());
  };
  std::printf("| %lld MiB in %s |", static_cast<long long>(mib), dir.parent_path().string().c_str());
  for (const Samples* s : {&reused_read, &map_first, &map_again, &fresh_read}) cell(*s);
  std::printf("\n");
  if (sink == 42) std::printf(" \n");  // keeps the hashes
}

void print(std::int64_t mib, const Row& r, double step_s) {
  const double mb = static_cast<double>(r.bytes) / 1e6;
  std::printf("| %lld MiB | %.0f ms (%.0f%%) | %.0f ms (%.0f%%) | %.1fx | %.1f ms | %.3fx | %.0f ms | %.1f ms | %.1f ms | %+.1f%% | "
              "%.1f ms | %+.1f%% | %.2f | %.0f MB/s | %.0f MB/s | %.2fx | %.2fx | %.2fx |\n",
              static_cast<long long>(mib), r.memory_recovery.median() * 1e3, r.memory_recovery.spread() * 100,
              r.disk_recovery.median() * 1e3, r.disk_recovery.spread() * 100,
              r.disk_recovery.median() / r.memory_recovery.median(), r.copy.median() * 1e3,
              r.stall.median() / r.copy.median(), r.first_stall * 1e3, r.step_plain.median() * 1e3, r.step_tier.median() * 1e3,
              (r.step_tier.median() / r.step_plain.median() - 1) * 100, r.step_skip.median() * 1e3,
              (r.step_skip.median() / r.step_plain.median() - 1) * 100,
              static_cast<double>(r.skip_started) / static_cast<double>(r.skip_calls), mb / r.p2p.median(), mb / r.tcp.median(),
              r.tcp.median() / r.p2p.median(), static_cast<double>(r.tier_bytes) / static_cast<double>(r.bytes),
              r.rss_growth_mib * (1 << 20) / static_cast<double>(r.bytes));
  (void)step_s;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::int64_t> sizes{256, 1024};
  int rounds = 3;
  fs::path dir = fs::temp_directory_path() / "savepoint-bench-tier";
  fs::path shm = "/dev/shm/savepoint-bench-tier";
  double step_ms = 100;
  bool pages_only = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string arg = argv[i];
    if (arg == "--sizes") {
      sizes.clear();
      std::string list = argv[i + 1];
      for (std::size_t at = 0; at < list.size();) {
        const auto comma = list.find(',', at);
        sizes.push_back(std::stoll(list.substr(at, comma - at)));
        at = comma == std::string::npos ? list.size() : comma + 1;
      }
    } else if (arg == "--rounds") rounds = std::max(1, std::atoi(argv[i + 1]));
    else if (arg == "--dir") dir = argv[i + 1];
    else if (arg == "--shm") shm = argv[i + 1];
    else if (arg == "--step-ms") step_ms = std::atof(argv[i + 1]);
    else if (arg == "--pages-only") pages_only = std::string(argv[i + 1]) == "1";
    else {
      std::fprintf(stderr, "usage: savepoint_bench_tier [--sizes 256,1024] [--rounds 3] [--dir D] [--shm S] "
                           "[--step-ms 100] [--pages-only 1]\n");
      return 2;
    }
  }
  if (!pages_only) {
    std::printf("2 processes as 2 nodes (Gloo on loopback), state per node = model + Adam registered per rank; "
                "%d rounds, median (spread); step = %.0f ms sleep + an in-place update of every tensor\n\n",
                rounds, step_ms);
    std::printf("| state per node | recovery, memory tier | recovery, disk (cold) | disk / memory | host copy | "
                "stall / copy | first save's stall | step | step, K = 1 | overhead | step, skip while busy | overhead | saves per step | "
                "replication | raw TCP | replication / TCP | tier files / state | staging RSS / state |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    std::fflush(stdout);
    for (const auto mib : sizes) {
      const fs::path d = dir / ("size-" + std::to_string(mib)), m = shm / ("size-" + std::to_string(mib));
      fs::remove_all(d);
      fs::remove_all(m);
      fs::create_directories(d);
      std::vector<pid_t> children;
      for (int rank = 0; rank < kWorld; ++rank) {
        const pid_t pid = ::fork();
        if (pid == 0) {
          try {
            const Row row = run_rank(rank, mib, d, m, rounds, step_ms / 1e3);
            if (rank == 0) print(mib, row, step_ms / 1e3);
            std::fflush(stdout);
            std::_Exit(0);
          } catch (const std::exception& e) {
            std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
            std::_Exit(1);
          }
        }
        children.push_back(pid);
      }
      int failed = 0;
      for (const pid_t pid : children) {
        int status = 0;
        ::waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failed;
      }
      fs::remove_all(d);
      fs::remove_all(m);
      if (failed) return 1;
    }
  }
  std::printf("\nOne pass over the bytes in the memory directory (median (spread), then ÷ the first column)\n\n"
              "| file | read() into a reused buffer, hashed | mapped and populated, hashed | the same mapping, "
              "hashed again | read() into fresh memory, hashed |\n|---|---|---|---|---|\n");
  for (const auto mib : sizes) print_page_costs(shm / "pages", mib, rounds);
  return 0;
}
