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
//
// The floor (what the bytes allow on this machine; measured by the same processes in the same
// run, both ranks at once after a barrier, as the tier's series are, medians and spread over the
// same alternated rounds), a second table "floor", for S MiB per node:
//   memcpy: the state's tensors memcpy'd into one reused buffer of S bytes, faulted in before
//     the first round (the snapshot's copy at its floor); measured in the save rounds, before
//     the tier's series in even rounds and after them in odd ones;
//   XXH3: one XXH3-64 pass (the library's detail::digest_bytes) over that buffer;
//   TCP: the raw loopback TCP exchange above (S bytes each way, both ranks sending at once, as
//     the tier's buddy exchange does);
//   read+copy: the recovery floor, one read() pass over a tmpfs file of S bytes (in the --shm
//     directory, written 32 MiB at a time as the tier writes) into a reused 32 MiB buffer plus
//     one memcpy from it into the live tensors (no hash); measured in the recovery rounds,
//     first in even rounds and last in odd ones;
//   floor of one save: memcpy + XXH3 + TCP of the same round, added (nothing overlapped: a
//     memory save's copy, hash and send at the floor, the tmpfs writes left out), median (spread).
// And a third table "against the floor" (the goals in brackets):
//   recovery from memory ÷ read+copy (<= 1.3x; ratio of medians, ± half the larger spread);
//   first save's stall ÷ a later save's (the stall column's median; <= 1.5x);
//   the step overhead with skip_while_busy (the main table's; <= 3%), with the save interval it
//     achieved (steps per started save × the step's median with skip_while_busy) next to the
//     floor's interval (the floor of one save: a save every that often is what the bytes
//     allow) and their ratio;
//   memory per node over the state: tier files + staging RSS (the main table's last two
//     columns, added; the floor is 2.00x, the node's part and the buddy copy).
// These 2-node series run with MemoryTierOptions::background_priority at its default (what
// users get; `low`, nice 19, since it became the default): the header line names it.
//
// Then "parity vs partner", measured in the same run for each size: 4 processes as 4 nodes
// (one rank each, node0..node3, each its own memory directory under the --shm directory, Gloo
// on loopback with a store file of its own), the same per-rank state of S MiB, saved to memory
// 3 times (an in-place update of every tensor between saves; each save timed from
// save_to_memory to the end of wait()), once with Redundancy::partner and once with
// Redundancy::parity (one set of n = 4), the two alternated from round to round (each
// redundancy in fresh processes and directories). These processes set background_priority to
// `normal`: this machine is shared with other work, and a nice-19 background thread there
// measures the neighbours, not the tier. Per redundancy:
//   memory per node / state: the bytes of the files node 0 keeps of the newest complete
//     checkpoint (own/<name> plus replicas/rank*/<name>, or plus parity/rank*/<name>) over S
//     (goal for parity at n = 4: <= 1.4x; partner is 2.00x);
//   bytes sent per save per rank: counted, not derived: the replication group is wrapped in a
//     savepoint::ProcessGroup that adds up the sizes of the messages rank 0 sends through
//     send_and_receive during each save (the buddy copy, or the parity ring's (n-1) segments);
//     for parity the cell also gives (n-1) x the size of rank 0's parity.bin, as read from disk;
//   save to completion: saves 2 and 3 of each round (the first faults the staging buffers in),
//     median (spread);
//   recovery, intact: recover_if_possible from the memory tier by the same 4 ranks on their
//     intact nodes, into live state (fresh Checkpointers);
//   recovery, one node lost: node 1's directory removed, then the same on nodes 0, 2, 3 plus
//     rank 1 on an empty node1 (a spare node). Not 3 processes on nodes 0, 2, 3: the state is
//     registered per rank, which loads only at the world size it was saved at (a world of 3
//     raises MismatchError), and a smaller world would load less, so the ratio would not
//     compare like with like. Partner: node 1's part comes from its buddy copy on node 2;
//     parity: it is rebuilt from the set (the tier's "rebuilt rank 1's part from its parity
//     set" warning is checked, and every recovery must have loaded from the memory tier).
// Every process is bounded by the groups' 5-minute timeouts, and the parent kills (by pid) a
// child still running after 20 minutes; the directories are removed after each run.
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

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
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

c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                int world = kWorld) {
  auto options = c10d::ProcessGroupGloo::Options::create(std::chrono::minutes(5));
  options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface("lo"));
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
}

const char* priority_name(sp::BackgroundPriority p) {
  switch (p) {
    case sp::BackgroundPriority::normal: return "normal";
    case sp::BackgroundPriority::low: return "low (nice 19)";
    case sp::BackgroundPriority::idle: return "idle (SCHED_IDLE)";
  }
  return "?";
}

// Waits for every child; a child still running after `limit` is killed (by its pid). Returns
// how many did not exit with 0.
int wait_children(const std::vector<pid_t>& children, std::chrono::seconds limit) {
  const auto deadline = Clock::now() + limit;
  std::vector<pid_t> left = children;
  int failed = 0;
  while (!left.empty()) {
    for (auto it = left.begin(); it != left.end();) {
      int status = 0;
      const pid_t got = ::waitpid(*it, &status, WNOHANG);
      if (got == 0) {
        ++it;
        continue;
      }
      if (got < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failed;
      it = left.erase(it);
    }
    if (left.empty()) break;
    if (Clock::now() > deadline) {
      for (const pid_t pid : left) {
        std::fprintf(stderr, "bench: child %d still running after %llds: killed\n", static_cast<int>(pid),
                     static_cast<long long>(limit.count()));
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        ++failed;
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return failed;
}

// The replication group, counted: forwards every call and adds up the bytes this rank sends
// through send_and_receive (the buddy copies, the parity ring), from any thread.
class CountingGroup : public sp::ProcessGroup {
 public:
  explicit CountingGroup(std::shared_ptr<sp::ProcessGroup> inner) : inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int world_size() const override { return inner_->world_size(); }
  std::string broadcast(const std::string& bytes) override { return inner_->broadcast(bytes); }
  std::vector<std::string> all_gather(const std::string& bytes) override { return inner_->all_gather(bytes); }
  void barrier() override { inner_->barrier(); }
  void send_and_receive(const std::vector<Outgoing>& sends, const std::vector<Incoming>& receives) override {
    for (const auto& s : sends) sent_ += s.size;
    inner_->send_and_receive(sends, receives);
  }
  std::chrono::milliseconds timeout() const override { return inner_->timeout(); }
  bool has_store() const override { return inner_->has_store(); }
  void store_set(const std::string& key, const std::string& value) override { inner_->store_set(key, value); }
  std::optional<std::string> store_get(const std::string& key) override { return inner_->store_get(key); }
  /// The bytes sent since the last call.
  std::uint64_t take() { return sent_.exchange(0); }

 private:
  std::shared_ptr<sp::ProcessGroup> inner_;
  std::atomic<std::uint64_t> sent_{0};
};

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
  Samples memcpy_floor, hash_floor, read_copy_floor;  // the floor (tcp is the floor's send)
  double first_stall = 0;  // the first memory save's: its staging buffers are faulted in
  double first_call = 0, first_guard = 0;  // its two parts
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
  // The floor's memcpy destination: S bytes, faulted in here (before rss0, so the staging RSS
  // column does not count it), reused by every round.
  const auto bytes = static_cast<std::size_t>(s.bytes);
  std::unique_ptr<char[]> floor_buffer(new char[bytes]);
  std::memset(floor_buffer.get(), 1, bytes);
  std::uint64_t sink = 0;
  auto save_floor = [&] {
    const auto tensors = s.tensors();
    group->barrier();
    row.memcpy_floor.add(timed([&] {
      std::size_t at = 0;
      for (const auto& t : tensors) {
        std::memcpy(floor_buffer.get() + at, t.data_ptr(), t.nbytes());
        at += t.nbytes();
      }
    }));
    group->barrier();
    row.hash_floor.add(timed([&] { sink ^= sp::detail::digest_bytes({floor_buffer.get(), bytes}).xxh3; }));
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
    // rounds measure the saves after it. Its stall is measured as theirs is: the call, the same
    // "compute" (twice a host copy's time, not counted), the guard.
    const double first_copy = host_copy(s);
    group->barrier();
    row.first_call = timed([&] { ckpt.save_to_memory(); });
    std::this_thread::sleep_for(std::chrono::duration<double>(2 * first_copy));
    row.first_guard = timed([&] { ckpt.before_update(); });
    row.first_stall = row.first_call + row.first_guard;
    ckpt.wait();
    for (int round = 0; round < rounds; ++round) {
      if (round % 2 == 0) save_floor();
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
      if (round % 2) save_floor();
    }
    row.tier_bytes = directory_bytes(memory);
    row.rss_growth_mib = rss_mib() - rss0;
    ckpt.persist_memory_checkpoint();
  }
  floor_buffer.reset();
  // Replication: the tier's chunks through the adapter, against raw TCP (the floor's send).
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
  // The recovery floor's file: the state's bytes in a tmpfs file, written kChunk at a time.
  const fs::path floor_file = shm / ("floor-rank" + std::to_string(rank));
  {
    const int fd = ::open(floor_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw std::runtime_error("bench: cannot write " + floor_file.string());
    for (const auto& t : s.tensors()) {
      const char* p = static_cast<const char*>(t.data_ptr());
      for (std::size_t at = 0, n = t.nbytes(); at < n;) {
        const auto w = ::write(fd, p + at, std::min(kChunk, n - at));
        if (w <= 0) throw std::runtime_error("bench: write failed");
        at += static_cast<std::size_t>(w);
      }
    }
    ::close(fd);
  }
  std::vector<char> chunk(kChunk, 1);  // reused (and faulted in) by every round
  // One read() pass into the reused buffer plus one memcpy from it into the live tensors.
  auto read_copy = [&] {
    const auto tensors = s.tensors();  // the live tensors as recovery left them
    for (const auto& t : tensors)
      if (!t.is_contiguous()) throw std::runtime_error("bench: a tensor that is not contiguous");
    group->barrier();
    row.read_copy_floor.add(timed([&] {
      const int fd = ::open(floor_file.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) throw std::runtime_error("bench: cannot read " + floor_file.string());
      std::size_t tensor = 0, in_tensor = 0, total = 0;
      for (;;) {
        std::size_t got = 0;
        for (ssize_t n; got < chunk.size() && (n = ::read(fd, chunk.data() + got, chunk.size() - got)) > 0;)
          got += static_cast<std::size_t>(n);
        if (got == 0) break;
        total += got;
        for (std::size_t at = 0; at < got;) {  // scatter into the tensors, in the order written
          if (tensor == tensors.size()) throw std::runtime_error("bench: the floor file is too long");
          const std::size_t n = std::min(got - at, tensors[tensor].nbytes() - in_tensor);
          std::memcpy(static_cast<char*>(tensors[tensor].data_ptr()) + in_tensor, chunk.data() + at, n);
          at += n;
          in_tensor += n;
          if (in_tensor == tensors[tensor].nbytes()) ++tensor, in_tensor = 0;
        }
      }
      ::close(fd);
      if (total != bytes) throw std::runtime_error("bench: short read of the floor file");
    }));
  };
  // Recovery into live state: memory tier, against the disk tier with a cold cache, and the floor.
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
    if (round % 2) from_disk(), from_memory(), read_copy();
    else read_copy(), from_memory(), from_disk();
  }
  fs::remove(floor_file);
  if (sink == 42) std::printf(" \n");  // keeps the hashes
  return row;
}

// "Parity vs partner": 4 processes as 4 nodes.
constexpr int kParityWorld = 4;
constexpr int kParitySaves = 3;

const char* redundancy_name(sp::Redundancy r) { return r == sp::Redundancy::parity ? "parity" : "partner"; }

// One rank's run of one redundancy; rank 0 writes what it measured to `result` (one number a
// line: state bytes, own, redundancy and parity.bin bytes, then per save its time and bytes
// sent, then the intact and the lost recovery's time, then 1 if the rebuild was logged).
void run_parity_rank(int rank, std::int64_t mib, sp::Redundancy redundancy, const fs::path& dir, const fs::path& shm,
                     const fs::path& result) {
  std::atomic<bool> rebuilt{false};
  sp::set_log_sink([&rebuilt](sp::LogLevel level, std::string_view message) {
    if (message.find("part from its parity set") != std::string_view::npos) rebuilt = true;  // expected: not printed
    else if (level >= sp::LogLevel::warn)
      std::fprintf(stderr, "%.*s\n", static_cast<int>(message.size()), message.data());
  });
  auto store = c10::make_intrusive<c10d::FileStore>((dir / "store-4").string(), kParityWorld);
  auto group = sp::c10d_process_group(gloo(c10::make_intrusive<c10d::PrefixStore>("ckpt", store), rank, kParityWorld),
                                      std::chrono::minutes(5));
  auto counting = std::make_shared<CountingGroup>(sp::c10d_process_group(
      gloo(c10::make_intrusive<c10d::PrefixStore>("repl", store), rank, kParityWorld), std::chrono::minutes(5)));
  const fs::path disk = dir / "disk", memory = shm / ("node" + std::to_string(rank));
  auto options = [&] {
    sp::CheckpointerOptions o;
    o.process_group(group).async_snapshot(sp::AsyncSnapshot::overlapped);
    o.memory_tier(sp::MemoryTierOptions(memory)
                      .node_id("node" + std::to_string(rank))
                      .replication_group(counting)
                      .redundancy(redundancy)
                      .parity_set_size(kParityWorld)
                      .background_priority(sp::BackgroundPriority::normal));
    return o;
  };
  State s = make_state(mib);
  auto attach = [&](sp::Checkpointer& c) {
    c.add_recoverable("model", s.model, sp::per_rank());
    c.add_recoverable("optimizer", *s.opt, sp::per_rank());
  };
  std::vector<double> save_s;
  std::vector<std::uint64_t> sent;
  std::string name;
  {
    sp::Checkpointer ckpt(disk, options());
    attach(ckpt);
    for (int i = 0; i < kParitySaves; ++i) {
      if (i > 0) {
        torch::NoGradGuard no_grad;
        for (auto& t : s.tensors()) t.add_(1e-6);
      }
      group->barrier();
      (void)counting->take();
      std::optional<sp::Checkpoint> done;
      save_s.push_back(timed([&] {
        if (!ckpt.save_to_memory()) throw std::runtime_error("bench: save_to_memory started no save");
        done = ckpt.wait();
      }));
      sent.push_back(counting->take());
      if (!done) throw std::runtime_error("bench: a memory save completed nothing");
      name = done->name();
    }
  }
  group->barrier();
  // What node 0 keeps of the newest complete checkpoint.
  std::int64_t own = 0, kept = 0, parity_bin = 0, resident = 0;
  if (rank == 0) {
    resident = directory_bytes(memory);  // with what the ring of slots keeps for the next save
    own = directory_bytes(memory / "own" / name);
    for (const char* sub : {"replicas", "parity"}) {
      if (!fs::exists(memory / sub)) continue;
      for (const auto& holder : fs::directory_iterator(memory / sub)) {
        const fs::path copy = holder.path() / name;
        if (!fs::is_directory(copy)) continue;
        kept += directory_bytes(copy);
        if (fs::exists(copy / "parity.bin")) parity_bin = static_cast<std::int64_t>(fs::file_size(copy / "parity.bin"));
      }
    }
  }
  auto recover = [&] {
    sp::Checkpointer ckpt(disk, options());
    attach(ckpt);
    group->barrier();
    std::optional<sp::Checkpoint> loaded;
    const double took = timed([&] { loaded = ckpt.recover_if_possible(); });
    if (!loaded || loaded->name() != name || loaded->path.string().rfind(shm.string(), 0) != 0)
      throw std::runtime_error("bench: the recovery did not load " + name + " from the memory tier");
    return took;
  };
  const double intact = recover();
  group->barrier();
  if (rank == 1) fs::remove_all(memory);  // node 1 is lost with its memory; a spare takes its place
  group->barrier();
  rebuilt = false;
  const double lost = recover();
  if (rank == 0) {
    std::ofstream out(result);
    out.precision(9);
    out << s.bytes << '\n' << own << '\n' << kept << '\n' << parity_bin << '\n' << resident << '\n';
    for (int i = 0; i < kParitySaves; ++i) out << save_s[i] << '\n' << sent[i] << '\n';
    out << intact << '\n' << lost << '\n' << (rebuilt ? 1 : 0) << '\n';
  }
  group->barrier();
  sp::set_log_sink(nullptr);
}

struct ParityRow {
  Samples save, sent, intact, lost;
  std::int64_t bytes = 0, own = 0, kept = 0, parity_bin = 0, resident = 0;
  bool rebuilt_every_time = true;
};

// Runs one redundancy in 4 fresh processes; false when a process failed.
bool run_parity(std::int64_t mib, sp::Redundancy redundancy, int round, const fs::path& dir, const fs::path& shm,
                ParityRow& row) {
  const std::string tag = "parity-" + std::to_string(mib) + "-" + redundancy_name(redundancy) + "-" + std::to_string(round);
  const fs::path d = dir / tag, m = shm / tag, result = d / "result";
  fs::remove_all(d);
  fs::remove_all(m);
  fs::create_directories(d);
  std::fflush(stdout);
  std::fflush(stderr);
  std::vector<pid_t> children;
  for (int rank = 0; rank < kParityWorld; ++rank) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      try {
        run_parity_rank(rank, mib, redundancy, d, m, result);
        std::fflush(stdout);
        std::_Exit(0);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "%s rank %d: %s\n", tag.c_str(), rank, e.what());
        std::_Exit(1);
      }
    }
    if (pid < 0) break;
    children.push_back(pid);
  }
  int failed = wait_children(children, std::chrono::minutes(20));
  if (children.size() != kParityWorld) ++failed;
  std::ifstream in(result);
  double v[5 + 2 * kParitySaves + 3];
  for (double& x : v)
    if (!(in >> x)) ++failed, x = 0;
  fs::remove_all(d);
  fs::remove_all(m);
  if (failed) return false;
  row.bytes = static_cast<std::int64_t>(v[0]);
  row.own = static_cast<std::int64_t>(v[1]);
  row.kept = static_cast<std::int64_t>(v[2]);
  row.parity_bin = static_cast<std::int64_t>(v[3]);
  row.resident = static_cast<std::int64_t>(v[4]);
  for (int i = 0; i < kParitySaves; ++i) {
    if (i > 0) row.save.add(v[5 + 2 * i]);  // the first save faults the staging buffers in
    row.sent.add(v[6 + 2 * i]);
  }
  row.intact.add(v[5 + 2 * kParitySaves]);
  row.lost.add(v[6 + 2 * kParitySaves]);
  if (redundancy == sp::Redundancy::parity && v[7 + 2 * kParitySaves] != 1) row.rebuilt_every_time = false;
  return true;
}

std::string parity_row(std::int64_t mib, sp::Redundancy redundancy, const ParityRow& r) {
  const double state = static_cast<double>(r.bytes);
  char sent[160];
  std::snprintf(sent, sizeof sent, "%.1f MB = %.2fx state", r.sent.median() / 1e6, r.sent.median() / state);
  std::string sent_cell = sent;
  if (redundancy == sp::Redundancy::parity) {
    std::snprintf(sent, sizeof sent, " ((n-1) × parity.bin = %d × %.1f MB = %.1f MB)", kParityWorld - 1,
                  static_cast<double>(r.parity_bin) / 1e6, (kParityWorld - 1) * static_cast<double>(r.parity_bin) / 1e6);
    sent_cell += sent;
  }
  auto ms = [](const Samples& s) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.0f ms (%.0f%%)", s.median() * 1e3, s.spread() * 100);
    return std::string(buf);
  };
  char memory[160];
  std::snprintf(memory, sizeof memory, "%.2fx (own %.2fx + %s %.2fx); directory %.2fx with the spare slots",
                static_cast<double>(r.own + r.kept) / state, static_cast<double>(r.own) / state,
                redundancy == sp::Redundancy::parity ? "parity" : "replicas", static_cast<double>(r.kept) / state,
                static_cast<double>(r.resident) / state);
  std::string lost = ms(r.lost);
  if (redundancy == sp::Redundancy::parity) lost += r.rebuilt_every_time ? ", rebuilt" : ", NOT rebuilt";
  return "| " + std::to_string(mib) + " MiB | " +
         (redundancy == sp::Redundancy::parity ? std::string("parity (n = 4)") : std::string("partner")) + " | " + memory +
         " | " + sent_cell + " | " + ms(r.save) + " | " + ms(r.intact) + " | " + lost + " | " +
         ratio_cell(r.lost, r.intact) + " |";
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

// "12.3 ms (5%), 21.8 GB/s": a series' median, spread, and `bytes` over the median.
std::string floor_cell(const Samples& s, std::int64_t bytes) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "%.1f ms (%.0f%%), %.1f GB/s", s.median() * 1e3, s.spread() * 100,
                static_cast<double>(bytes) / s.median() / 1e9);
  return buf;
}

// The floor of one memory save, round by round: memcpy + XXH3 + TCP.
Samples save_floor_samples(const Row& r) {
  Samples out;
  for (std::size_t i = 0; i < r.memcpy_floor.size(); ++i)
    out.add(r.memcpy_floor.values()[i] + r.hash_floor.values()[i] + r.tcp.values()[i]);
  return out;
}

// The row of the "floor" table.
std::string floor_row(std::int64_t mib, const Row& r) {
  const Samples save = save_floor_samples(r);
  char buf[128];
  std::snprintf(buf, sizeof buf, " %.1f ms (%.0f%%) |", save.median() * 1e3, save.spread() * 100);
  return "| " + std::to_string(mib) + " MiB | " + floor_cell(r.memcpy_floor, r.bytes) + " | " +
         floor_cell(r.hash_floor, r.bytes) + " | " + floor_cell(r.tcp, r.bytes) + " each way | " +
         floor_cell(r.read_copy_floor, r.bytes) + " |" + buf;
}

// The row of the "against the floor" table.
std::string against_row(std::int64_t mib, const Row& r) {
  const Samples save = save_floor_samples(r);
  const double later = r.stall.median();
  const double overhead = (r.step_skip.median() / r.step_plain.median() - 1) * 100;
  const double tier = static_cast<double>(r.tier_bytes) / static_cast<double>(r.bytes);
  const double staging = r.rss_growth_mib * (1 << 20) / static_cast<double>(r.bytes);
  char interval[160];
  if (r.skip_started > 0) {
    const double steps = static_cast<double>(r.skip_calls) / static_cast<double>(r.skip_started);
    const double achieved = steps * r.step_skip.median();
    std::snprintf(interval, sizeof interval, "%.1f steps × %.1f ms = %.0f ms | %.1f ms | %.1fx", steps,
                  r.step_skip.median() * 1e3, achieved * 1e3, save.median() * 1e3, achieved / save.median());
  } else {
    std::snprintf(interval, sizeof interval, "no save started | %.1f ms | - ", save.median() * 1e3);
  }
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "| %lld MiB | %.0f ms ÷ %.1f ms = %s | %.0f ms (call %.0f + guard %.0f) ÷ %.1f ms = %.0fx | %+.1f%% | %s | "
                "%.2fx (%.2fx files + %.2fx staging) |",
                static_cast<long long>(mib), r.memory_recovery.median() * 1e3, r.read_copy_floor.median() * 1e3,
                ratio_cell(r.memory_recovery, r.read_copy_floor).c_str(), r.first_stall * 1e3, r.first_call * 1e3,
                r.first_guard * 1e3, later * 1e3, r.first_stall / later, overhead, interval, tier + staging, tier,
                staging);
  return buf;
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
  std::vector<std::string> floor_rows, against_rows;
  if (!pages_only) {
    std::printf("2 processes as 2 nodes (Gloo on loopback), state per node = model + Adam registered per rank; "
                "%d rounds, median (spread); step = %.0f ms sleep + an in-place update of every tensor; "
                "background priority: %s, the default\n\n",
                rounds, step_ms, priority_name(sp::MemoryTierOptions().background_priority()));
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
            if (rank == 0) {
              print(mib, row, step_ms / 1e3);
              std::ofstream(d / "floor-rows.md") << floor_row(mib, row) << '\n' << against_row(mib, row) << '\n';
            }
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
      if (!failed) {  // rank 0 wrote its floor rows; printed as tables after the sizes
        std::ifstream in(d / "floor-rows.md");
        std::string line;
        if (std::getline(in, line)) floor_rows.push_back(line);
        if (std::getline(in, line)) against_rows.push_back(line);
      }
      fs::remove_all(d);
      fs::remove_all(m);
      if (failed) return 1;
    }
    std::printf("\nThe floor: what the bytes allow here, measured in the same processes and rounds (median (spread), "
                "S bytes over the median); floor of one save = memcpy + XXH3 + TCP of each round\n\n"
                "| state per node | memcpy into a reused buffer | XXH3 | TCP | read() + copy into live tensors | "
                "floor of one save |\n|---|---|---|---|---|---|\n");
    for (const auto& line : floor_rows) std::printf("%s\n", line.c_str());
    std::printf("\nAgainst the floor (goals in brackets)\n\n"
                "| state per node | recovery, memory tier ÷ read() + copy (≤ 1.3x) | first save's stall ÷ a later "
                "save's (≤ 1.5x) | overhead, skip while busy (≤ 3%%) | save interval, skip while busy | save interval, "
                "floor | achieved / floor | tier files + staging RSS / state (floor 2.00x) |\n"
                "|---|---|---|---|---|---|---|---|\n");
    for (const auto& line : against_rows) std::printf("%s\n", line.c_str());
    std::printf("\nParity vs partner: 4 processes as 4 nodes (one rank each, Gloo on loopback), the same state per "
                "node; %d saves to memory per round (the first left out of the save's median), %d rounds alternated, "
                "median (spread); background priority: normal (a shared machine); one node lost = node 1's "
                "directory removed, rank 1 on an empty spare node1 (per-rank state loads only at world 4)\n\n"
                "| state per node | redundancy | memory per node / state | bytes sent per save per rank | save to "
                "completion | recovery, intact | recovery, one node lost (rebuild) | lost / intact |\n"
                "|---|---|---|---|---|---|---|---|\n",
                kParitySaves, rounds);
    std::fflush(stdout);
    for (const auto mib : sizes) {
      ParityRow partner, parity;
      for (int round = 0; round < rounds; ++round) {
        const bool parity_first = round % 2 == 1;
        for (int k = 0; k < 2; ++k) {
          const bool is_parity = (k == 0) == parity_first;
          const auto r = is_parity ? sp::Redundancy::parity : sp::Redundancy::partner;
          if (!run_parity(mib, r, round, dir, shm, is_parity ? parity : partner)) {
            std::fprintf(stderr, "bench: parity vs partner (%s, %lld MiB) failed\n", redundancy_name(r),
                         static_cast<long long>(mib));
            return 1;
          }
        }
      }
      std::printf("%s\n%s\n", parity_row(mib, sp::Redundancy::partner, partner).c_str(),
                  parity_row(mib, sp::Redundancy::parity, parity).c_str());
      std::fflush(stdout);
    }
  }
  std::printf("\nOne pass over the bytes in the memory directory (median (spread), then ÷ the first column)\n\n"
              "| file | read() into a reused buffer, hashed | mapped and populated, hashed | the same mapping, "
              "hashed again | read() into fresh memory, hashed |\n|---|---|---|---|---|\n");
  for (const auto mib : sizes) print_page_costs(shm / "pages", mib, rounds);
  std::error_code ignored;  // the top directories, when the runs left them empty
  fs::remove(dir, ignored);
  fs::remove(shm, ignored);
  return 0;
}
