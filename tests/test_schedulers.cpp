// LR schedulers: a subclass with state of its own is never saved silently without it;
// ReduceLROnPlateauScheduler (LibTorch 2.x) has a hook.
#include "torch_support.hpp"

#include <savepoint/schedulers.hpp>

#include <torch/version.h>

#include "catch.hpp"

using namespace savepoint;
using test::TempDir;

namespace {
// A user's scheduler with a member the base hook knows nothing of.
struct Plateauish : torch::optim::LRScheduler {
  explicit Plateauish(torch::optim::Optimizer& opt) : LRScheduler(opt) {}
  double best = 1e9;
  std::vector<double> get_lrs() override { return get_current_lrs(); }
};
// The same with its own hooks: saved completely.
struct WithHooks : torch::optim::LRScheduler {
  explicit WithHooks(torch::optim::Optimizer& opt) : LRScheduler(opt) {}
  double best = 1e9;
  std::vector<double> get_lrs() override { return get_current_lrs(); }
  void save(const std::filesystem::path& p) const { test::write_text(p, std::to_string(best)); }
  void load(const std::filesystem::path& p, bool) { best = std::stod(test::read_file(p)); }
};
// A subclass whose whole state is the step count.
struct Halving : torch::optim::LRScheduler {
  explicit Halving(torch::optim::Optimizer& opt) : LRScheduler(opt) {}
  std::vector<double> get_lrs() override {
    auto lrs = get_current_lrs();
    for (auto& lr : lrs) lr *= 0.5;
    return lrs;
  }
};
}  // namespace

TEST_CASE("an LRScheduler subclass with state of its own is refused, not saved without it", "[scheduler]") {
  TempDir dir;
  auto net = std::make_shared<test::Net>();
  torch::optim::SGD opt(net->parameters(), 0.1);
  Plateauish sched(opt);
  Checkpointer ckpt(dir.path(), {{"model", net}, {"sched", sched}});
  CHECK_THROWS_WITH(ckpt.save_checkpoint(), Catch::Contains("Plateauish") && Catch::Contains("step count") &&
                                                Catch::Contains("register_step_count_scheduler"));
  CHECK(ckpt.list_checkpoints().empty());
}

TEST_CASE("an LRScheduler subclass with its own hooks keeps its state", "[scheduler]") {
  TempDir dir;
  auto net = std::make_shared<test::Net>();
  torch::optim::SGD opt(net->parameters(), 0.1);
  WithHooks sched(opt);
  sched.best = 0.125;
  Checkpointer ckpt(dir.path(), {{"sched", sched}});
  ckpt.save_checkpoint();
  WithHooks again(opt);
  Checkpointer loader(dir.path(), {{"sched", again}});
  REQUIRE(loader.recover_if_possible());
  CHECK(again.best == 0.125);
}

TEST_CASE("register_step_count_scheduler declares the step count its whole state", "[scheduler]") {
  TempDir dir;
  auto net = std::make_shared<test::Net>();
  torch::optim::SGD opt(net->parameters(), 0.1);
  register_step_count_scheduler<Halving>();
  Halving sched(opt);
  sched.step();
  sched.step();
  Checkpointer ckpt(dir.path(), {{"opt", opt}, {"sched", sched}});
  const auto saved = ckpt.save_checkpoint();
  CHECK(saved.file("sched")->hook == "torch.optim.LRScheduler");
  CHECK(nlohmann::json::parse(test::read_file(saved.path / "sched.json")) == nlohmann::json{{"step_count", 2}});
  torch::optim::SGD opt2(net->parameters(), 0.1);
  Halving again(opt2);
  Checkpointer loader(dir.path(), {{"opt", opt2}, {"sched", again}});
  REQUIRE(loader.recover_if_possible());
  again.step();
  sched.step();
  CHECK(opt2.param_groups()[0].options().get_lr() == opt.param_groups()[0].options().get_lr());
}

TEST_CASE("ReduceLROnPlateauScheduler resumes its patience and best value (LibTorch 2.x)", "[scheduler]") {
#if TORCH_VERSION_MAJOR >= 2
  TempDir dir;
  auto net = std::make_shared<test::Net>();
  auto run = [&](torch::optim::SGD& opt, torch::optim::ReduceLROnPlateauScheduler& s, std::vector<float> losses) {
    for (float l : losses) s.step(l);
    return opt.param_groups()[0].options().get_lr();
  };
  torch::optim::SGD opt(net->parameters(), 1.0);
  torch::optim::ReduceLROnPlateauScheduler plateau(opt, torch::optim::ReduceLROnPlateauScheduler::min, 0.5, 2);
  run(opt, plateau, {1.0f, 0.9f, 0.95f, 0.97f});  // two bad epochs: one more reduces the lr
  Checkpointer ckpt(dir.path(), {{"opt", opt}, {"plateau", plateau}});
  ckpt.save_checkpoint();
  const double straight = run(opt, plateau, {0.99f, 0.98f});

  torch::optim::SGD opt2(net->parameters(), 1.0);
  torch::optim::ReduceLROnPlateauScheduler plateau2(opt2, torch::optim::ReduceLROnPlateauScheduler::min, 0.5, 2);
  Checkpointer loader(dir.path(), {{"opt", opt2}, {"plateau", plateau2}});
  REQUIRE(loader.recover_if_possible());
  CHECK(run(opt2, plateau2, {0.99f, 0.98f}) == straight);
  CHECK(straight < 1.0);
#else
  test::skip("ReduceLROnPlateauScheduler exists from LibTorch 2.0; this build has " TORCH_VERSION);
#endif
}
