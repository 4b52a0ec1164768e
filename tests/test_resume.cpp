// Exact resume: a training run killed at random steps (SIGKILL, or SIGTERM preemption) and
// resumed each time ends bit-identical to a run that was never interrupted. The trainer is
// examples/train_resume (MLP, Adam, StepLR, dropout, RandomSampler, RNG state), run as a
// separate process; this test drives it and compares the final checkpoints tensor by tensor.
//
// SAVEPOINT_RESUME_SEED=<n> replays a failing pattern of kills.
#include "torch_support.hpp"

#include "catch.hpp"
#include "spawn.hpp"

#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <random>
#include <thread>
#include <regex>

using namespace savepoint;
using test::TempDir;
namespace fs = std::filesystem;

// ------------------------------------------------------------------ sampler hooks
TEST_CASE("a RandomSampler resumes at the same position with the same order", "[torch][sampler]") {
  TempDir dir;
  torch::manual_seed(3);
  torch::data::samplers::RandomSampler sampler(100);
  sampler.reset();
  (void)sampler.next(30);
  Checkpointer ckpt(dir.path(), {{"sampler", sampler}});
  const auto saved = ckpt.save_checkpoint();
  CHECK(saved.file("sampler")->hook == "torch.data.Sampler");
  const auto rest = *sampler.next(70);

  torch::manual_seed(99);
  torch::data::samplers::RandomSampler restored(100);
  restored.reset();  // a different order
  Checkpointer ckpt2(dir.path(), {{"sampler", restored}});
  ckpt2.load_checkpoint(saved);
  CHECK(restored.index() == 30);
  CHECK(*restored.next(70) == rest);
  CHECK_FALSE(restored.next(1));
}

TEST_CASE("Sequential and distributed samplers resume too, a different sampler type is refused", "[torch][sampler]") {
  TempDir dir;
  torch::data::samplers::SequentialSampler seq(10);
  (void)seq.next(4);
  torch::data::samplers::DistributedRandomSampler dist(40, /*num_replicas=*/2, /*rank=*/1);
  dist.set_epoch(3);
  dist.reset();
  (void)dist.next(5);
  Checkpointer ckpt(dir.path(), {{"seq", seq}, {"dist", dist}});
  const auto saved = ckpt.save_checkpoint();
  const auto dist_rest = *dist.next(15);

  torch::data::samplers::SequentialSampler seq2(10);
  torch::data::samplers::DistributedRandomSampler dist2(40, 2, 1);
  Checkpointer ckpt2(dir.path(), {{"seq", seq2}, {"dist", dist2}});
  ckpt2.load_checkpoint(saved);
  CHECK(seq2.index() == 4);
  CHECK(*seq2.next(6) == std::vector<size_t>{4, 5, 6, 7, 8, 9});
  CHECK(*dist2.next(15) == dist_rest);

  torch::data::samplers::RandomSampler wrong(10);
  Checkpointer ckpt3(dir.path(), {{"seq", wrong}});
  ckpt3.options().allow_partial_load(true);
  CHECK_THROWS_AS(ckpt3.load_checkpoint(saved), MismatchError);
  CHECK_THROWS_WITH(ckpt3.load_checkpoint(saved), Catch::Contains("SequentialSampler") &&
                                                      Catch::Contains("RandomSampler"));
}

#ifdef SAVEPOINT_TRAIN_RESUME
namespace {
constexpr int kEpochs = 6, kBatches = 8;  // train_resume's defaults: 512 samples, batches of 64

// A trainer's run is bounded (tests/spawn.hpp): still running after this, it is SIGKILLed
// and the test fails naming it. A whole run takes seconds.
constexpr auto kTrainerLimit = std::chrono::seconds(300);

// The trainer as a child process whose stdout we read line by line (tests/spawn.hpp; its
// stderr stays the test's). It waits for go() after each step it reports, so it can never
// run past the step at which the test means to stop it however slowly this process reads (a
// loaded CI machine).
class Trainer {
 public:
  Trainer(const fs::path& dir, std::vector<std::string> extra) : children_(kTrainerLimit) {
    std::vector<std::string> args{SAVEPOINT_TRAIN_RESUME, dir.string(), "--epochs",
                                  std::to_string(kEpochs), "--trace", "--pace"};
    args.insert(args.end(), extra.begin(), extra.end());
    test::Command command{"train_resume on " + dir.filename().string(), args};
    command.capture_stderr = false;
    command.stdin_pipe = true;
    children_.start(command);
  }
  // Lets the trainer go on after the step it just reported.
  void go() { (void)children_.send(0, "\n"); }
  // The next line of output, or nullopt at end of output.
  std::optional<std::string> line() {
    auto s = children_.next_line(0);
    if (s) log += *s + "\n";
    return s;
  }
  void signal(int signo) { children_.signal(0, signo); }
  int wait() { return children_.wait(0); }
  std::string log;

 private:
  test::Children children_;  // SIGKILLs and reaps the trainer on destruction if it still runs
};

// "step epoch E batch B" -> global step, counting from 1.
std::optional<int> step_of(const std::string& line) {
  static const std::regex re("^step epoch (\\d+) batch (\\d+)$");
  std::smatch m;
  if (!std::regex_match(line, m, re)) return std::nullopt;
  return (std::stoi(m[1]) - 1) * kBatches + std::stoi(m[2]);
}

// "resumed from CKPT+... at epoch E batch B" -> global steps already done.
std::optional<int> resumed_at(const std::string& log) {
  static const std::regex re("resumed from \\S+ at epoch (\\d+) batch (\\d+)");
  std::smatch m;
  if (!std::regex_search(log, m, re)) return std::nullopt;
  return (std::stoi(m[1]) - 1) * kBatches + std::stoi(m[2]);
}

// Runs to completion; returns the output.
std::string run_to_end(const fs::path& dir, std::vector<std::string> extra = {}) {
  Trainer t(dir, std::move(extra));
  while (auto line = t.line())
    if (step_of(*line)) t.go();
  const int status = t.wait();
  INFO(t.log);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  REQUIRE(t.log.find("training done") != std::string::npos);
  return t.log;
}

// The newest end-of-epoch checkpoint: the state after the last epoch.
Checkpoint final_checkpoint(const fs::path& dir) {
  Checkpointer reader(dir, CheckpointerOptions().read_only(true));
  auto last = reader.find_checkpoint(where([](const Checkpoint& c) { return c.end_of_epoch(); }));
  REQUIRE(last);
  REQUIRE(last->meta["epoch"] == kEpochs);
  return *last;
}

// Empty when every tensor of every safetensors file is equal (torch::equal) and the JSON
// files are equal; otherwise the first difference.
std::string final_state_difference(const fs::path& a_dir, const fs::path& b_dir) {
  const auto a = final_checkpoint(a_dir), b = final_checkpoint(b_dir);
  for (const auto& rec : a.files) {
    const auto* other = b.file(rec.key);
    if (!other) {
      return "no key " + rec.key;
    }
    if (rec.file.size() > 12 && rec.file.substr(rec.file.size() - 12) == ".safetensors") {
      const auto ta = load_tensors(a.path / rec.file), tb = load_tensors(b.path / other->file);
      if (ta.tensors.size() != tb.tensors.size() || ta.metadata != tb.metadata) {
        return rec.key + ": different tensors or metadata";
      }
      for (std::size_t i = 0; i < ta.tensors.size(); ++i) {
        if (ta.tensors[i].first != tb.tensors[i].first || !torch::equal(ta.tensors[i].second, tb.tensors[i].second)) {
          return rec.key + ": tensor " + ta.tensors[i].first + " differs";
        }
      }
    } else if (test::read_file(a.path / rec.file) != test::read_file(b.path / other->file)) {
      return rec.key + ": " + rec.file + " differs";
    }
  }
  return "";
}

std::vector<int> random_targets(std::mt19937& gen, int count) {
  // Distinct steps, ascending, one of them exactly at an epoch's last batch.
  std::uniform_int_distribution<int> any(2, kEpochs * kBatches - 2);
  std::set<int> steps{kBatches * std::uniform_int_distribution<int>(1, kEpochs - 1)(gen)};
  while (static_cast<int>(steps.size()) < count) steps.insert(any(gen));
  return {steps.begin(), steps.end()};
}

unsigned seed_for_run() {
  if (const char* s = std::getenv("SAVEPOINT_RESUME_SEED")) return static_cast<unsigned>(std::stoul(s));
  return std::random_device{}();
}
}  // namespace

TEST_CASE("killed with SIGKILL at random steps, the resumed run is bit-identical to an uninterrupted one", "[torch][resume]") {
  TempDir dir;
  const unsigned seed = seed_for_run();
  INFO("SAVEPOINT_RESUME_SEED=" << seed);
  std::mt19937 gen(seed);
  run_to_end(dir / "reference");

  const auto targets = random_targets(gen, 6);
  int mid_epoch_resumes = 0, kills = 0;
  for (int target : targets) {
    Trainer t(dir / "killed", {});
    bool reached = false;
    std::uniform_int_distribution<int> delay_us(0, 3000);
    while (auto line = t.line()) {
      const auto step = step_of(*line);
      if (!step) continue;
      t.go();
      if (*step >= target) {
        // A moment later, wherever it is then: saving, mid-step, at the epoch boundary (it
        // cannot get further than reporting the next step).
        std::this_thread::sleep_for(std::chrono::microseconds(delay_us(gen)));
        t.signal(SIGKILL);
        reached = true;
        break;
      }
    }
    const int status = t.wait();
    INFO(t.log);
    REQUIRE(reached);
    REQUIRE(WIFSIGNALED(status));
    ++kills;
    if (auto at = resumed_at(t.log); at && *at % kBatches != 0) ++mid_epoch_resumes;
  }
  const std::string last = run_to_end(dir / "killed");
  if (auto at = resumed_at(last); at && *at % kBatches != 0) ++mid_epoch_resumes;
  CHECK(kills >= 5);
  CHECK(mid_epoch_resumes >= 1);  // some resumes continued mid-epoch, not from an epoch start

  CHECK(final_state_difference(dir / "reference", dir / "killed") == "");
}

TEST_CASE("preempted with SIGTERM at random steps, each resume continues exactly where it saved", "[torch][resume]") {
  TempDir dir;
  const unsigned seed = seed_for_run();
  INFO("SAVEPOINT_RESUME_SEED=" << seed);
  std::mt19937 gen(seed + 1);
  run_to_end(dir / "reference", {"--save-every-steps", "1000"});  // only preemption saves

  std::optional<int> preempted_at;
  for (int target : random_targets(gen, 3)) {
    Trainer t(dir / "preempted", {"--save-every-steps", "1000"});
    bool signalled = false;
    std::string preempted_line;
    while (auto line = t.line()) {
      if (auto step = step_of(*line)) {
        if (*step >= target && !signalled) {
          t.signal(SIGTERM);  // before it goes on: the next step boundary must save
          signalled = true;
        }
        t.go();
      }
      if (line->rfind("preempted at", 0) == 0) preempted_line = *line;
    }
    const int status = t.wait();
    INFO(t.log);
    REQUIRE(signalled);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);  // a clean exit, not a kill
    REQUIRE_FALSE(preempted_line.empty());
    // The resume starts exactly at the preemption checkpoint, not at an epoch boundary.
    if (preempted_at) CHECK(resumed_at(t.log) == preempted_at);
    std::smatch m;
    REQUIRE(std::regex_search(preempted_line, m, std::regex("epoch (\\d+) batch (\\d+)")));
    preempted_at = (std::stoi(m[1]) - 1) * kBatches + std::stoi(m[2]);
    CHECK(*preempted_at >= target);
  }
  const std::string last = run_to_end(dir / "preempted", {"--save-every-steps", "1000"});
  CHECK(resumed_at(last) == preempted_at);

  CHECK(final_state_difference(dir / "reference", dir / "preempted") == "");
}

TEST_CASE("control: without the data position a mid-epoch resume diverges (the check can fail)", "[torch][resume]") {
  TempDir dir;
  run_to_end(dir / "reference");
  {
    Trainer t(dir / "forgetful", {"--no-data-position", "--save-every-steps", "1"});
    while (auto line = t.line()) {
      if (step_of(*line) == 2 * kBatches + 4) break;  // mid-epoch 3, before its save
      if (step_of(*line)) t.go();
    }
    t.signal(SIGKILL);
    t.wait();
  }
  run_to_end(dir / "forgetful", {"--no-data-position", "--save-every-steps", "1"});
  CHECK_THAT(final_state_difference(dir / "reference", dir / "forgetful"),
             Catch::Contains("model") || Catch::Contains("optimizer"));
}
#endif
