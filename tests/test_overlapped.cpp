// Overlapped async snapshots (AsyncSnapshot::overlapped): the copy runs after the call; the
// guard before_update() makes it exact; a change before it fails the save, never tears it.
// The background copier is paused at a chosen tensor by savepoint::detail::set_snapshot_copy_hook, so
// every interleaving below is ordered by events, not by timing.
#include "torch_support.hpp"

#include <savepoint/detail/snapshot.hpp>

#include "thread_group.hpp"

#include "catch.hpp"

#include <atomic>
#include <condition_variable>
#include <mutex>

using namespace savepoint;

using test::TempDir;
namespace fs = std::filesystem;

namespace {
class Event {
 public:
  void set() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      set_ = true;
    }
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return set_; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool set_ = false;
};

// Pauses the background copier once, before it claims copy `at`, until resume() (or the end
// of the scope). The hook stays installed as a no-op once fired: removing it could race with
// a copier still running; the next PauseCopier replaces it while no save is in flight.
class PauseCopier {
 public:
  explicit PauseCopier(std::size_t at) : state_(std::make_shared<State>()) {
    savepoint::detail::set_snapshot_copy_hook([state = state_, at](std::size_t index) {
      if (index != at || state->fired.exchange(true)) return;
      state->paused.set();
      state->resume.wait();
    });
  }
  ~PauseCopier() { resume(); }
  void wait_paused() { state_->paused.wait(); }
  void resume() { state_->resume.set(); }

 private:
  struct State {
    std::atomic<bool> fired{false};
    Event paused, resume;
  };
  std::shared_ptr<State> state_;
};

CheckpointerOptions overlapped() { return CheckpointerOptions().async_snapshot(AsyncSnapshot::overlapped); }

// One training step: forward, backward, the optimizer step (which changes every parameter
// and both of Adam's moments in place).
void train_step(test::Net& net, torch::optim::Adam& opt, int seed) {
  torch::manual_seed(seed);
  opt.zero_grad();
  torch::mse_loss(net.forward(torch::randn({16, 4})), torch::randn({16, 2})).backward();
  opt.step();
}

std::string file_of(const Checkpoint& c, const std::string& key) { return test::read_file(c.paramfiles.at(key)); }
}  // namespace

TEST_CASE("overlapped async: in-place changes bump the version of parameters and Adam's moments, also under "
          "NoGradGuard",
          "[async][overlapped]") {
  auto net = std::make_shared<test::Net>();
  torch::optim::Adam opt(net->parameters(), 1e-2);
  train_step(*net, opt, 1);  // creates the moments
  std::vector<torch::Tensor> tensors;
  for (const auto& p : net->parameters()) {
    tensors.push_back(p);
    auto& s = static_cast<torch::optim::AdamParamState&>(*opt.state().at(test::state_key(opt.state(), p)));
    tensors.push_back(s.exp_avg());
    tensors.push_back(s.exp_avg_sq());
  }
  std::vector<std::int64_t> before;
  for (const auto& t : tensors) before.push_back(t._version());
  train_step(*net, opt, 2);  // Adam's step runs under NoGradGuard
  for (std::size_t i = 0; i < tensors.size(); ++i) CHECK(tensors[i]._version() > before[i]);
  // A detached alias (what a tensor payload holds) shares the counter.
  const auto alias = tensors[0].detach();
  const auto v = alias._version();
  {
    torch::NoGradGuard no_grad;
    tensors[0].add_(1);
  }
  CHECK(alias._version() == v + 1);
}

TEST_CASE("overlapped async: parameters and optimizer state changed right after before_update are saved as they "
          "were at the call, bit for bit",
          "[async][overlapped]") {
  const int threads = GENERATE(1, 2);
  const bool pause = GENERATE(true, false);
  CAPTURE(threads, pause);
  TempDir dir;
  auto net = std::make_shared<test::Net>();
  torch::optim::Adam opt(net->parameters(), 1e-2);
  train_step(*net, opt, 0);
  Checkpointer reference(dir / "reference", {{"model", net}, {"opt", opt}});
  Checkpointer ckpt(dir / "run", {{"model", net}, {"opt", opt}}, overlapped().io_threads(threads));
  std::vector<Checkpoint> expected;
  for (int i = 1; i <= 4; ++i) {  // several saves in a row: the staging buffers are reused
    expected.push_back(reference.save_checkpoint({{"i", i}}));
    {
      PauseCopier paused(pause ? 2 : SIZE_MAX);
      ckpt.save_checkpoint_async({{"i", i}});
      if (pause) paused.wait_paused();  // two tensors copied; the guard copies the rest here
      ckpt.before_update();
      train_step(*net, opt, i);  // the optimizer step, right after the guard
      {
        torch::NoGradGuard no_grad;
        for (auto& p : net->parameters()) p.mul_(-1);
      }
    }
  }
  const auto last = ckpt.wait();
  REQUIRE(last);
  const auto saved = ckpt.list_checkpoints();
  REQUIRE(saved.size() == expected.size());
  for (std::size_t i = 0; i < saved.size(); ++i) {
    CHECK(saved[i].meta["i"] == i + 1);
    CHECK(ckpt.verify(saved[i]).empty());
    CHECK(file_of(saved[i], "model") == file_of(expected[i], "model"));
    CHECK(file_of(saved[i], "opt") == file_of(expected[i], "opt"));
  }
}

TEST_CASE("overlapped async: a change before before_update fails the save, says so, and the previous checkpoint "
          "stays the latest",
          "[async][overlapped]") {
  TempDir dir;
  auto net = std::make_shared<test::Net>();
  torch::optim::Adam opt(net->parameters(), 1e-2);
  train_step(*net, opt, 0);
  Checkpointer ckpt(dir.path(), {{"model", net}, {"opt", opt}}, overlapped());
  const auto good = ckpt.save_checkpoint({{"i", 0}});
  {
    PauseCopier paused(1);
    ckpt.save_checkpoint_async({{"i", 1}});
    paused.wait_paused();
    train_step(*net, opt, 1);  // too early: the snapshot may hold a mix of old and new values
    ckpt.before_update();  // copies the rest, finds the change; the save fails in the background
    paused.resume();
    try {
      ckpt.wait();
      FAIL("a change before the guard must fail the save");
    } catch (const UsageError& e) {
      CHECK_THAT(e.what(), Catch::Contains("before_update()") && Catch::Contains("nothing was committed"));
    }
  }
  CHECK(test::sequences(ckpt.list_checkpoints()) == std::vector<std::uint64_t>{good.sequence});
  CHECK(ckpt.find_checkpoint()->sequence == good.sequence);
  CHECK(test::leftovers(dir.path()).empty());
  // And the next save, guarded, works.
  ckpt.save_checkpoint_async({{"i", 2}});
  ckpt.before_update();
  train_step(*net, opt, 2);
  REQUIRE(ckpt.wait());
  CHECK(ckpt.list_checkpoints().size() == 2);
}

TEST_CASE("overlapped async: forgetting before_update is caught before the commit, at wait() or the next save",
          "[async][overlapped]") {
  TempDir dir;
  auto net = std::make_shared<test::Net>();
  torch::optim::Adam opt(net->parameters(), 1e-2);
  train_step(*net, opt, 0);
  Checkpointer ckpt(dir.path(), {{"model", net}, {"opt", opt}}, overlapped());
  const auto good = ckpt.save_checkpoint({{"i", 0}});
  {
    PauseCopier paused(0);  // nothing copied yet
    ckpt.save_checkpoint_async({{"i", 1}});
    paused.wait_paused();
    train_step(*net, opt, 1);  // no guard
    paused.resume();
    CHECK_THROWS_WITH(ckpt.wait(), Catch::Contains("before_update()"));
  }
  {
    PauseCopier paused(3);  // some copied, the rest after the change
    ckpt.save_checkpoint_async({{"i", 2}});
    paused.wait_paused();
    train_step(*net, opt, 2);
    paused.resume();
    CHECK_THROWS_AS(ckpt.save_checkpoint_async({{"i", 3}}), UsageError);  // raised by the next call
  }
  CHECK(test::sequences(ckpt.list_checkpoints()) == std::vector<std::uint64_t>{good.sequence});
  CHECK(test::leftovers(dir.path()).empty());
}

TEST_CASE("overlapped async: module buffers changed by the forward pass before the guard are saved as at the call",
          "[async][overlapped]") {
  TempDir dir;
  auto net = std::make_shared<test::Net>();  // BatchNorm: running statistics change in forward()
  torch::optim::Adam opt(net->parameters(), 1e-2);
  train_step(*net, opt, 0);
  Checkpointer reference(dir / "reference", {{"model", net}, {"opt", opt}});
  Checkpointer ckpt(dir / "run", {{"model", net}, {"opt", opt}}, overlapped());
  const auto expected = reference.save_checkpoint();
  PauseCopier paused(0);
  ckpt.save_checkpoint_async();
  paused.wait_paused();
  torch::manual_seed(5);
  auto loss = torch::mse_loss(net->forward(torch::randn({16, 4})), torch::randn({16, 2}));  // before the guard
  loss.backward();
  paused.resume();
  ckpt.before_update();
  opt.step();
  const auto saved = ckpt.wait();
  REQUIRE(saved);
  CHECK(file_of(*saved, "model") == file_of(expected, "model"));
  CHECK(file_of(*saved, "opt") == file_of(expected, "opt"));
}

TEST_CASE("overlapped async: hook errors are raised at the call, and loads act as the guard", "[async][overlapped]") {
  TempDir dir;
  auto net = std::make_shared<test::Net>();
  torch::optim::Adam opt(net->parameters(), 1e-2);
  train_step(*net, opt, 0);
  Checkpointer ckpt(dir.path(), {{"model", net}, {"opt", opt}}, overlapped());
  ckpt.add_recoverable(
      "broken", opt, [](const torch::optim::Adam&, const fs::path&) { throw std::runtime_error("disk quota"); },
      [](torch::optim::Adam&, const fs::path&, bool) {});
  CHECK_THROWS_AS(ckpt.save_checkpoint_async(), HookError);
  CHECK_FALSE(ckpt.wait());
  ckpt.remove_recoverable("broken");
  const auto first = ckpt.save_checkpoint();
  train_step(*net, opt, 1);
  {
    PauseCopier paused(1);
    ckpt.save_checkpoint_async();
    paused.wait_paused();
    ckpt.load_checkpoint(first);  // a load changes saved tensors: it copies the rest first
    paused.resume();
    REQUIRE(ckpt.wait());
  }
  CHECK(ckpt.list_checkpoints().size() == 2);
}

TEST_CASE("overlapped async with a process group: each rank's copies run after the call, before_update makes them "
          "exact, bit for bit",
          "[async][overlapped][world]") {
  // Two ranks as threads, identical replicas (the same seed); the model written by rank 0,
  // the optimizer by rank 1 (spread writes), each compared with a plain save of its own
  // replica made just before its async save.
  TempDir dir;
  constexpr int ranks = 2;
  std::vector<std::shared_ptr<test::Net>> nets;
  std::vector<std::unique_ptr<torch::optim::Adam>> opts;
  for (int r = 0; r < ranks; ++r) {
    torch::manual_seed(0);
    nets.push_back(std::make_shared<test::Net>());
    opts.push_back(std::make_unique<torch::optim::Adam>(nets.back()->parameters(), 1e-2));
  }
  // The training step without the global generator (threads share it).
  auto step = [](test::Net& net, torch::optim::Adam& opt, int i) {
    opt.zero_grad();
    const auto x = torch::linspace(-1, 1, 64).reshape({16, 4}) * (i + 1);
    torch::mse_loss(net.forward(x), torch::cos(x.narrow(1, 0, 2))).backward();
    opt.step();
  };
  std::atomic<int> deferred_copies{0};
  savepoint::detail::set_snapshot_copy_hook([&](std::size_t) { ++deferred_copies; });
  test::ThreadWorld world(ranks);
  const auto outcomes = world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
    test::Net& net = *nets[rank];
    torch::optim::Adam& opt = *opts[rank];
    step(net, opt, 0);
    Checkpointer reference(dir / ("reference" + std::to_string(rank)), {{"model", nets[rank]}, {"opt", opt}});
    Checkpointer ckpt(dir / "run", {{"model", nets[rank]}, {"opt", opt}}, overlapped().process_group(group));
    std::vector<Checkpoint> expected;
    for (int i = 1; i <= 3; ++i) {
      expected.push_back(reference.save_checkpoint({{"i", i}}));
      ckpt.save_checkpoint_async({{"i", i}});
      ckpt.before_update();
      step(net, opt, i);  // the optimizer step, right after the guard
    }
    ckpt.wait();  // a failure ends this rank with it
    // Without a guard nothing is copied on this thread: the background copier does it all.
    ckpt.save_checkpoint_async({{"i", 4}});
    ckpt.wait();
    return expected;
  });
  savepoint::detail::set_snapshot_copy_hook(nullptr);
  for (const auto& o : outcomes) {
    INFO(o.message());
    REQUIRE(o.value);
  }
  CHECK(deferred_copies > 0);  // the copies ran on the background threads, after the calls
  Checkpointer reader(dir / "run", CheckpointerOptions().read_only(true));
  const auto saved = reader.list_checkpoints();
  REQUIRE(saved.size() == 4);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(saved[i].meta["i"] == i + 1);
    CHECK(saved[i].world_size == ranks);
    CHECK(reader.verify(saved[i]).empty());
    CHECK(file_of(saved[i], "model") == file_of((*outcomes[0].value)[i], "model"));
    CHECK(file_of(saved[i], "opt") == file_of((*outcomes[1].value)[i], "opt"));
  }
}
