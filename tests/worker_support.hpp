// The skeleton every multi-process test worker shares (tests/dist_worker.cpp with
// dist_worker_sharded.cpp, tests/dist_worker_training.cpp): the command line
//   <program> <scenario> <rank> <world> <store file> <checkpoint dir> <int argument>
// with an alarm() that bounds the process even if the test that started it dies, Gloo over
// loopback on a c10d::FileStore rendezvous with a 5 s collective timeout, a ProcessGroup
// wrapper counting savepoint's collectives and store accesses, and the "rank R: ..." lines a
// worker prints (exit 0: the scenario's expectations held; fail(): exit 1). Test-support only.
#pragma once

#include <torch/torch.h>

#include <savepoint/c10d.hpp>
#include <savepoint/savepoint.hpp>

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace worker {

// This process's rank and world size (set by parse_args).
inline int g_rank = 0;
inline int g_world = 1;

constexpr auto kTimeout = std::chrono::seconds(5);  // of every collective
constexpr unsigned kAlarmSeconds = 120;              // a hard bound whatever happens

struct Args {
  std::string scenario;
  int rank = 0;
  int world = 1;
  std::string store_path;      // the FileStore's file: a fresh one per run
  std::filesystem::path dir;   // the checkpoint directory
  int arg = 0;                 // the scenario's number (a step, MiB, ...)
};

// Parses the command line (exits 2 with `usage` when it has not 6 arguments), arms the alarm
// and sets g_rank and g_world.
inline Args parse_args(int argc, char** argv, const char* usage) {
  if (argc != 7) {
    std::cerr << "usage: " << usage << "\n";
    std::exit(2);
  }
  alarm(kAlarmSeconds);
  Args a;
  a.scenario = argv[1];
  a.rank = g_rank = std::stoi(argv[2]);
  a.world = g_world = std::stoi(argv[3]);
  a.store_path = argv[4];
  a.dir = argv[5];
  a.arg = std::stoi(argv[6]);
  return a;
}

// Prints "rank R: <line>".
inline void out(const std::string& line) { std::cout << "rank " << g_rank << ": " << line << std::endl; }

// Prints "rank R: FAILED: <why>" and exits 1.
[[noreturn]] inline void fail(const std::string& why) {
  std::cout << "rank " << g_rank << ": FAILED: " << why << std::endl;
  std::exit(1);
}

inline void expect(bool condition, const std::string& what) {
  if (!condition) fail(what);
}

// The rendezvous of the run's `world` processes.
inline c10::intrusive_ptr<c10d::FileStore> file_store(const Args& args) {
  return c10::make_intrusive<c10d::FileStore>(args.store_path, args.world);
}

// A Gloo group over loopback on `store`.
inline c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo_group(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                             int world, std::chrono::milliseconds timeout = kTimeout) {
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface("lo"));
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
}

// Counts the collectives savepoint runs (docs/distributed.md states how many a save needs)
// and its store accesses; forwards everything to the wrapped group.
class CountingGroup final : public savepoint::ProcessGroup {
 public:
  explicit CountingGroup(std::shared_ptr<savepoint::ProcessGroup> inner) : inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int world_size() const override { return inner_->world_size(); }
  std::chrono::milliseconds timeout() const override { return inner_->timeout(); }
  std::string broadcast(const std::string& bytes) override {
    ++calls;
    return inner_->broadcast(bytes);
  }
  std::vector<std::string> all_gather(const std::string& bytes) override {
    ++calls;
    return inner_->all_gather(bytes);
  }
  void barrier() override {
    ++calls;
    inner_->barrier();
  }
  bool has_store() const override { return inner_->has_store(); }
  void store_set(const std::string& key, const std::string& value) override {
    ++writes;
    inner_->store_set(key, value);
  }
  std::optional<std::string> store_get(const std::string& key) override {
    ++reads;
    return inner_->store_get(key);
  }
  // Atomic: an async save runs its collectives on another thread.
  std::atomic<int> calls{0}, reads{0}, writes{0};

 private:
  std::shared_ptr<savepoint::ProcessGroup> inner_;
};

}  // namespace worker
