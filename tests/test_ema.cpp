// ModuleEMA: the update rule, exact resume, and evaluation with the EMA weights.
#include "torch_support.hpp"

#include <savepoint/ema.hpp>

#include "catch.hpp"

#include <cmath>

using namespace savepoint;
using test::Net;
using test::TempDir;

namespace {
// One training step then one EMA update, deterministic per step number.
void step(Net& net, torch::optim::Adam& opt, ModuleEMA& ema, int i) {
  torch::manual_seed(100 + i);
  net.train();
  auto x = torch::randn({16, 4});
  auto y = torch::randn({16, 2});
  opt.zero_grad();
  torch::mse_loss(net.forward(x), y).backward();
  opt.step();
  ema.update(net);
}

bool same(const NamedTensors& a, const NamedTensors& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i].first != b[i].first || !torch::equal(a[i].second, b[i].second)) return false;
  return true;
}
}  // namespace

TEST_CASE("ModuleEMA follows ema = d*ema + (1-d)*model with SuperGradients' warm-up", "[ema]") {
  torch::manual_seed(0);
  Net net;
  const auto start = net.fc1->weight.clone();
  ModuleEMA ema(net, EMAOptions().decay(0.9).warmup(4));
  CHECK(ema.decay_at(1) == Approx(0.9 * (1 - std::exp(-0.25))));
  CHECK(ModuleEMA(net, EMAOptions().decay(0.5)).decay_at(1) == 0.5);
  torch::NoGradGuard no_grad;
  net.fc1->weight.add_(1.0);
  ema.update(net);
  const double d = ema.decay_at(1);
  const auto expected = start * d + (start + 1.0) * (1.0 - d);
  CHECK(torch::allclose(ema.state()[0].second, expected, 0, 1e-6));
  CHECK(ema.updates() == 1);
  // num_batches_tracked (an integer buffer) is copied, not averaged.
  net.bn->num_batches_tracked.fill_(5);
  ema.update(net);
  for (const auto& [name, t] : ema.state())
    if (name == "bn.num_batches_tracked") CHECK(t.item<std::int64_t>() == 5);
  CHECK_THROWS_AS(ModuleEMA(net, EMAOptions().decay(1.5)), UsageError);
  Net other(4, 9, 2);
  CHECK_THROWS_AS(ema.update(other), MismatchError);
}

TEST_CASE("a run resumed from a checkpoint ends with the same model and EMA, bit for bit", "[ema][resume]") {
  TempDir dir;
  const EMAOptions options = EMAOptions().decay(0.99).warmup(3);
  // Uninterrupted: 8 steps.
  torch::manual_seed(1);
  Net straight;
  torch::optim::Adam straight_opt(straight.parameters(), 0.01);
  ModuleEMA straight_ema(straight, options);
  for (int i = 0; i < 8; ++i) step(straight, straight_opt, straight_ema, i);

  // Interrupted after 5 steps; a new process resumes.
  {
    torch::manual_seed(1);
    auto net = std::make_shared<Net>();
    torch::optim::Adam opt(net->parameters(), 0.01);
    ModuleEMA ema(*net, options);
    Checkpointer ckpt(dir.path(), {{"model", net}, {"optimizer", opt}, {"ema", ema}});
    for (int i = 0; i < 5; ++i) step(*net, opt, ema, i);
    const auto saved = ckpt.save_checkpoint({{"step", 5}});
    CHECK(saved.file("ema")->hook == "savepoint.ModuleEMA");
  }
  torch::manual_seed(999);  // a different initialization: everything must come from the checkpoint
  auto net = std::make_shared<Net>();
  torch::optim::Adam opt(net->parameters(), 0.01);
  ModuleEMA ema(*net, options);
  Checkpointer ckpt(dir.path(), {{"model", net}, {"optimizer", opt}, {"ema", ema}});
  REQUIRE(ckpt.recover_if_possible());
  CHECK(ema.updates() == 5);
  for (int i = 5; i < 8; ++i) step(*net, opt, ema, i);
  CHECK(test::same_state(straight, *net));
  CHECK(same(straight_ema.state(), ema.state()));
  CHECK(ema.updates() == straight_ema.updates());
}

TEST_CASE("load_for_evaluation prefers the EMA weights and falls back to the model's", "[ema]") {
  TempDir dir;
  torch::manual_seed(2);
  auto net = std::make_shared<Net>();
  torch::optim::Adam opt(net->parameters(), 0.01);
  ModuleEMA ema(*net, EMAOptions().decay(0.5));
  for (int i = 0; i < 3; ++i) step(*net, opt, ema, i);
  Checkpointer with_ema(dir.path() / "a", {{"model", net}, {"ema", ema}});
  const auto a = with_ema.save_checkpoint();
  Checkpointer without(dir.path() / "b", {{"model", net}});
  const auto b = without.save_checkpoint();

  Net eval;
  CHECK(load_for_evaluation(eval, a) == "ema");
  Net expected;
  ema.copy_to(expected);
  CHECK(test::same_state(eval, expected));
  CHECK_FALSE(test::same_state(eval, *net));
  CHECK(load_for_evaluation(eval, b) == "model");
  CHECK(test::same_state(eval, *net));
  // The EMA file is a plain module file too.
  Net via_tensors;
  CHECK(load_tensors(a, "ema").tensors.size() == load_tensors(a, "model").tensors.size());
}
