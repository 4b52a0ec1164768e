// Checkpoint averaging: equal to a mean computed here by hand, streamed, refused on mismatch.
#include "torch_support.hpp"

#include <savepoint/average.hpp>
#include <savepoint/bundle.hpp>
#include <savepoint/module_average.hpp>

#include "catch.hpp"

using namespace savepoint;
using test::TempDir;

namespace {
// A module with every dtype averaging cares about.
struct Mixed : torch::nn::Module {
  Mixed() {
    w32 = register_parameter("w32", torch::randn({5, 3}));
    w64 = register_parameter("w64", torch::randn({4}, torch::kFloat64));
    h16 = register_buffer("h16", torch::randn({6}).to(torch::kHalf));
    b16 = register_buffer("b16", torch::randn({6}).to(torch::kBFloat16));
    steps = register_buffer("steps", torch::randint(0, 1000, {2}, torch::kInt64));
    mask = register_buffer("mask", torch::randn({3}) > 0);
  }
  void randomize() {
    torch::NoGradGuard no_grad;
    for (auto& p : parameters()) p.copy_(torch::randn(p.sizes(), p.options()));
    h16.copy_(torch::randn({6}) * 100);
    b16.copy_(torch::randn({6}) * 0.01);
    steps.copy_(torch::randint(0, 1000, {2}, torch::kInt64));
    mask.copy_(torch::randn({3}) > 0);
  }
  torch::Tensor w32, w64, h16, b16, steps, mask;
};

// The mean of `name` over checkpoints, computed independently: LibTorch reads each file,
// sums in float64 (oldest first), divides, converts back with .to().
torch::Tensor expected_mean(const std::vector<Checkpoint>& oldest_first, const std::string& name) {
  torch::Tensor sum;
  torch::ScalarType type{};
  for (const auto& c : oldest_first) {
    for (auto& [n, t] : load_tensors(c, "model").tensors) {
      if (n != name) continue;
      type = t.scalar_type();
      sum = sum.defined() ? sum + t.to(torch::kFloat64) : t.to(torch::kFloat64);
    }
  }
  return (sum / static_cast<double>(oldest_first.size())).to(type);
}

struct Run {
  TempDir dir;
  std::shared_ptr<Mixed> model = std::make_shared<Mixed>();
  Checkpointer ckpt{dir.path() / "run"};
  std::vector<Checkpoint> saved;  // oldest first
  std::vector<torch::Tensor> steps_seen;
  explicit Run(int n) {
    torch::manual_seed(3);
    ckpt.add_recoverable("model", model);
    for (int i = 0; i < n; ++i) {
      model->randomize();
      steps_seen.push_back(model->steps.clone());
      saved.push_back(ckpt.save_checkpoint({{"epoch", i + 1}, {"loss", (i * 7 % 5) + 0.5}}));
    }
  }
};
}  // namespace

TEST_CASE("load_average of the last N equals the mean computed independently, integers come from the newest",
          "[average]") {
  Run run(5);
  const auto last3 = run.ckpt.find_checkpoints(most_recent(), 3);  // newest first
  REQUIRE(last3.size() == 3);
  auto target = std::make_shared<Mixed>();
  const AverageReport report = load_average(*target, last3, "model");
  CHECK(report.checkpoints.front() == run.saved[4]);
  CHECK(report.averaged.size() == 4);
  CHECK(report.from_newest == std::vector<std::string>{"steps", "mask"});
  const std::vector<Checkpoint> oldest_first{run.saved[2], run.saved[3], run.saved[4]};
  for (const char* name : {"w32", "w64", "h16", "b16"}) {
    INFO(name);
    const auto expected = expected_mean(oldest_first, name);
    const auto got = target->named_parameters().contains(name) ? target->named_parameters()[name]
                                                               : target->named_buffers()[name];
    CHECK(got.scalar_type() == expected.scalar_type());
    CHECK(torch::equal(got, expected));  // bit for bit
  }
  CHECK(torch::equal(target->steps, run.steps_seen[4]));
  CHECK(torch::equal(target->mask, run.model->mask));
}

TEST_CASE("the best N by a selector with a predicate, written as a standalone file and as a checkpoint",
          "[average]") {
  Run run(6);
  // losses by epoch: 0.5 2.5 4.5 1.5 3.5 0.5 -> best 3 among epochs >= 2: 6, 4, 2
  const auto best = run.ckpt.find_checkpoints(
      min_key("loss").where([](const Checkpoint& c) { return c.meta_value<int>("epoch").value_or(0) >= 2; }), 3);
  REQUIRE(best.size() == 3);
  const auto file = run.dir / "average.safetensors";
  const AverageReport report = write_average(best, "model", file);
  CHECK(report.checkpoints.size() == 3);
  const TensorFile written = load_tensors(file);
  CHECK(written.metadata.at("format") == "pt");
  CHECK(written.metadata.at("savepoint.average").find(run.saved[5].name()) != std::string::npos);
  const std::vector<Checkpoint> oldest_first{run.saved[1], run.saved[3], run.saved[5]};
  const TensorFile newest = load_tensors(run.saved[5], "model");
  for (const auto& [name, t] : written.tensors) {
    INFO(name);
    if (name == "steps" || name == "mask") {
      for (const auto& [n, v] : newest.tensors)
        if (n == name) CHECK(torch::equal(t, v));
      continue;
    }
    CHECK(torch::equal(t, expected_mean(oldest_first, name)));
  }
  CHECK_THROWS_AS(write_average(best, "model", file), UsageError);  // never over an existing file

  // As a checkpoint of its own: load, then save under a name.
  auto averaged = std::make_shared<Mixed>();
  load_average(*averaged, best, "model");
  Checkpointer out(run.dir / "run");
  out.add_recoverable("model", averaged);
  const auto named_average = out.save_checkpoint({{"averaged", 3}}, named("average"));
  auto reread = std::make_shared<Mixed>();
  Checkpointer reader(run.dir / "run", CheckpointerOptions().read_only(true));
  reader.add_recoverable("model", reread);
  reader.load_checkpoint(named_average);
  CHECK(test::same_state(*averaged, *reread));
  for (auto& [name, t] : written.tensors) {
    INFO(name);
    const auto mine = averaged->named_parameters().contains(name) ? averaged->named_parameters()[name]
                                                                  : averaged->named_buffers()[name];
    CHECK(torch::equal(mine, t));
  }
}

TEST_CASE("averaging refuses disagreeing checkpoints, naming the checkpoint and the tensor", "[average]") {
  TempDir dir;
  Checkpointer ckpt(dir.path());
  auto small = std::make_shared<test::Net>(4, 8, 2);
  ckpt.add_recoverable("model", small);
  const auto a = ckpt.save_checkpoint();
  auto wide = std::make_shared<test::Net>(4, 9, 2);
  ckpt.add_recoverable("model", wide);
  const auto b = ckpt.save_checkpoint();
  try {
    write_average({a, b}, "model", dir / "x.safetensors");
    FAIL("no error");
  } catch (const MismatchError& e) {
    // The first disagreeing tensor in the newest file's order, e.g. "tensor 'bn.bias' is F32 [8]
    // in checkpoint '<a>' but F32 [9] in the newest".
    const std::string what = e.what();
    INFO(what);
    CHECK(what.find(a.path.string()) != std::string::npos);
    CHECK(what.find("tensor 'bn.") != std::string::npos);
    CHECK(what.find("[8]") != std::string::npos);
    CHECK(what.find("[9]") != std::string::npos);
  }
  CHECK_FALSE(std::filesystem::exists(dir / "x.safetensors"));
  // A module that does not match: nothing changes.
  auto target = std::make_shared<test::Net>(4, 8, 2);
  const auto before = target->fc1->weight.clone();
  CHECK_THROWS_AS(load_average(*target, {b}, "model"), MismatchError);
  CHECK(torch::equal(before, target->fc1->weight));
  // A damaged file is found before anything is produced.
  const auto c = ckpt.save_checkpoint();
  test::flip_byte(c.path / "model.safetensors", 200);
  int produced = 0;
  CHECK_THROWS_AS(average_checkpoints({b, c}, "model", [&](const AveragedTensor&) { ++produced; }),
                  CorruptCheckpointError);
  CHECK(produced == 0);
  CHECK_THROWS_AS(average_checkpoints({b}, "optimizer", [](const AveragedTensor&) {}), MissingKeyError);
  CHECK_THROWS_AS(average_checkpoints({}, "model", [](const AveragedTensor&) {}), UsageError);
  CHECK_THROWS_AS(average_checkpoints({b, b}, "model", [](const AveragedTensor&) {}), UsageError);
}

TEST_CASE("a model bundle embedded in memory loads into a module", "[bundle]") {
  TempDir dir;
  auto net = std::make_shared<test::Net>();
  auto opt = torch::optim::SGD(net->parameters(), 0.1);
  test::train(*net, opt, 3);
  Checkpointer ckpt(dir.path(), {{"model", net}, {"optimizer", opt}});
  write_bundle(ckpt.save_checkpoint(), dir / "net.spb");
  const std::string embedded = test::read_file(dir / "net.spb");  // what xxd -i would compile in
  std::filesystem::remove_all(dir.path());
  auto fresh = std::make_shared<test::Net>();
  Bundle::view(embedded).load({{"model", fresh}}, /*partial=*/true);
  CHECK(test::same_state(*net, *fresh));
  // A misaligned copy of the bytes (as a char array may be) loads the same.
  const std::string shifted = " " + embedded;
  auto again = std::make_shared<test::Net>();
  Bundle::view(std::string_view(shifted).substr(1)).load({{"model", again}}, true);
  CHECK(test::same_state(*net, *again));
}
