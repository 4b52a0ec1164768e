// Optimizer hooks: per-parameter state by position and param-group options (which
// LibTorch's own Optimizer::load drops), for every LibTorch optimizer; LR schedulers.
#include "torch_support.hpp"

#include "catch.hpp"

#include <sstream>

using namespace savepoint;
using test::Net;
using test::TempDir;

namespace {

template <class Opt>
void step(Net& net, Opt& opt, int steps, int seed) {
  torch::manual_seed(seed);
  for (int i = 0; i < steps; ++i) {
    auto x = torch::randn({16, 4});
    auto y = torch::randn({16, 2});
    auto closure = [&] {
      opt.zero_grad();
      auto loss = torch::mse_loss(net.forward(x), y);
      loss.backward();
      return loss;
    };
    if constexpr (std::is_same_v<Opt, torch::optim::LBFGS>) opt.step(closure);
    else {
      closure();
      opt.step();
    }
  }
}

template <class Opt, class Options>
void check_resume_once(Options trained_options, Options fresh_options, double changed_lr, bool stepped_before_load) {
  TempDir dir;
  torch::manual_seed(1);
  auto net = std::make_shared<Net>();
  Opt opt(net->parameters(), trained_options);
  step(*net, opt, 3, 10);
  opt.param_groups()[0].options().set_lr(changed_lr);  // as a scheduler would
  Checkpointer ckpt(dir.path(), {{"model", net}, {"optimizer", opt}});
  const auto saved = ckpt.save_checkpoint();
  CHECK(saved.file("optimizer")->hook == "torch.optim.Optimizer");

  torch::manual_seed(2);
  auto net2 = std::make_shared<Net>();
  Opt opt2(net2->parameters(), fresh_options);
  if (stepped_before_load) step(*net2, opt2, 2, 30);
  Checkpointer ckpt2(dir.path(), {{"model", net2}, {"optimizer", opt2}}, CheckpointerOptions().read_only(true));
  REQUIRE(ckpt2.recover_if_possible());
  CHECK(opt2.param_groups()[0].options().get_lr() == changed_lr);
  CHECK(static_cast<const Options&>(opt2.param_groups()[0].options()) ==
        static_cast<const Options&>(opt.param_groups()[0].options()));
  CHECK(opt2.state().size() == opt.state().size());

  step(*net, opt, 2, 20);
  step(*net2, opt2, 2, 20);
  CHECK(test::same_state(*net, *net2));
}

// Trains, saves, loads into a fresh model + optimizer built with *other* options, and checks
// that both continue bit-identically. Run twice: into an optimizer without state (start-up)
// and into one that has stepped already (its state tensors are filled in place).
template <class Opt, class Options>
void check_resume(Options trained_options, Options fresh_options, double changed_lr) {
  for (const bool stepped_before_load : {false, true}) {
    INFO("optimizer stepped before the load: " << stepped_before_load);
    check_resume_once<Opt>(trained_options, fresh_options, changed_lr, stepped_before_load);
  }
}

}  // namespace

TEST_CASE("Adam: state, lr, betas, eps, weight decay and amsgrad are restored", "[optimizer]") {
  using O = torch::optim::AdamOptions;
  check_resume<torch::optim::Adam>(O(0.01).betas({0.8, 0.95}).weight_decay(1e-3).amsgrad(true), O(0.5), 0.003);
}
TEST_CASE("AdamW is restored", "[optimizer]") {
  using O = torch::optim::AdamWOptions;
  check_resume<torch::optim::AdamW>(O(0.01).weight_decay(0.05), O(0.1), 0.002);
}
TEST_CASE("SGD with momentum and nesterov is restored", "[optimizer]") {
  using O = torch::optim::SGDOptions;
  check_resume<torch::optim::SGD>(O(0.05).momentum(0.9).nesterov(true), O(0.5), 0.01);
}
TEST_CASE("Adagrad is restored", "[optimizer]") {
  using O = torch::optim::AdagradOptions;
  check_resume<torch::optim::Adagrad>(O(0.05).lr_decay(0.01), O(1.0), 0.02);
}
TEST_CASE("RMSprop centered with momentum is restored", "[optimizer]") {
  using O = torch::optim::RMSpropOptions;
  check_resume<torch::optim::RMSprop>(O(0.01).momentum(0.5).centered(true), O(0.1), 0.005);
}
TEST_CASE("LBFGS with its history is restored", "[optimizer]") {
  using O = torch::optim::LBFGSOptions;
  check_resume<torch::optim::LBFGS>(O(0.5).history_size(5).max_iter(4), O(1.0).history_size(5).max_iter(4), 0.4);
}

TEST_CASE("several param groups keep their own options", "[optimizer]") {
  TempDir dir;
  torch::nn::Linear a(2, 2), b(2, 2);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(a->parameters(), std::make_unique<torch::optim::SGDOptions>(0.1));
  groups.emplace_back(b->parameters(), std::make_unique<torch::optim::SGDOptions>(0.2));
  torch::optim::SGD opt(groups, torch::optim::SGDOptions(0.3));
  Checkpointer ckpt(dir.path(), {{"opt", opt}});
  ckpt.save_checkpoint();
  for (auto& g : opt.param_groups()) g.options().set_lr(9);
  ckpt.recover_if_possible();
  CHECK(opt.param_groups()[0].options().get_lr() == 0.1);
  CHECK(opt.param_groups()[1].options().get_lr() == 0.2);
}

TEST_CASE("a load fills an optimizer's existing state tensors in place, and only once all keys verify",
          "[optimizer]") {
  TempDir dir;
  auto net = std::make_shared<Net>();
  torch::optim::Adam adam(net->parameters(), 0.1);
  test::train(*net, adam, 2);
  Checkpointer ckpt(dir.path(), {{"model", net}, {"optimizer", adam}});
  const auto saved = ckpt.save_checkpoint();
  auto moments = [&] {
    std::vector<torch::Tensor> out;
    for (const auto& p : net->parameters()) {
      auto& s = static_cast<torch::optim::AdamParamState&>(*adam.state().at(test::state_key(adam.state(), p)));
      out.push_back(s.exp_avg());
    }
    return out;
  };
  std::vector<torch::Tensor> saved_values;
  for (const auto& m : moments()) saved_values.push_back(m.clone());
  test::train(*net, adam, 2, 7);  // moves the moments on
  const auto before = moments();
  std::vector<torch::Tensor> trained_values;
  for (const auto& m : before) trained_values.push_back(m.clone());

  // The model file is damaged: nothing may change, the optimizer state included.
  const auto model_file = saved.path / saved.file("model")->file;
  const std::string intact = test::read_file(model_file);
  test::flip_byte(model_file, -3);
  CHECK_THROWS_AS(ckpt.load_checkpoint(saved), CorruptCheckpointError);
  for (std::size_t i = 0; i < before.size(); ++i) CHECK(torch::equal(moments()[i], trained_values[i]));

  test::write_text(model_file, intact);
  ckpt.load_checkpoint(saved);
  const auto after = moments();
  for (std::size_t i = 0; i < after.size(); ++i) {
    CHECK(after[i].data_ptr() == before[i].data_ptr());  // the same memory, filled in place
    CHECK(torch::equal(after[i], saved_values[i]));
  }
}

TEST_CASE("an optimizer of another kind or shape is refused", "[optimizer]") {
  TempDir dir;
  auto net = std::make_shared<Net>();
  torch::optim::Adam adam(net->parameters(), 0.1);
  test::train(*net, adam, 1);
  Checkpointer ckpt(dir.path(), {{"optimizer", adam}});
  const auto saved = ckpt.save_checkpoint();
  torch::optim::SGD sgd(net->parameters(), 0.1);
  Checkpointer wrong(dir.path(), {{"optimizer", sgd}}, CheckpointerOptions().read_only(true));
  CHECK_THROWS_WITH(wrong.load_checkpoint(saved), Catch::Contains("Adam") && Catch::Contains("SGD"));
  torch::nn::Linear small(4, 8);
  torch::optim::Adam fewer(small->parameters(), 0.1);
  Checkpointer shape(dir.path(), {{"optimizer", fewer}}, CheckpointerOptions().read_only(true));
  CHECK_THROWS_AS(shape.load_checkpoint(saved), MismatchError);
}

TEST_CASE("the optimizer file opens as plain safetensors with JSON metadata", "[optimizer][format]") {
  TempDir dir;
  auto net = std::make_shared<Net>();
  torch::optim::Adam adam(net->parameters(), 0.1);
  test::train(*net, adam, 2);
  Checkpointer ckpt(dir.path(), {{"optimizer", adam}});
  const auto saved = ckpt.save_checkpoint();
  const auto file = load_tensors(saved.path / "optimizer.safetensors");
  const auto doc = nlohmann::json::parse(file.metadata.at("savepoint"));
  CHECK(doc["optimizer"] == "Adam");
  CHECK(doc["param_groups"][0]["options"]["lr"] == 0.1);
  CHECK(doc["state"]["0"]["fields"]["step"] == 2);
  std::set<std::string> names;
  for (const auto& [name, t] : file.tensors) names.insert(name);
  CHECK(names.count("state.0.exp_avg"));
  CHECK(names.count("state.5.exp_avg_sq"));
}

TEST_CASE("StepLR continues its schedule after a resume", "[scheduler]") {
  TempDir dir;
  torch::nn::Linear lin(2, 2);
  torch::optim::SGD opt(lin->parameters(), 1.0);
  torch::optim::StepLR sched(opt, /*step_size=*/2, /*gamma=*/0.5);
  Checkpointer ckpt(dir.path(), {{"optimizer", opt}, {"scheduler", sched}});
  for (int i = 0; i < 3; ++i) sched.step();
  ckpt.save_checkpoint();
  CHECK(opt.param_groups()[0].options().get_lr() == 0.5);
  std::vector<double> expected;
  for (int i = 0; i < 4; ++i) {
    sched.step();
    expected.push_back(opt.param_groups()[0].options().get_lr());
  }

  torch::nn::Linear lin2(2, 2);
  torch::optim::SGD opt2(lin2->parameters(), 1.0);
  torch::optim::StepLR sched2(opt2, 2, 0.5);
  Checkpointer ckpt2(dir.path(), {{"optimizer", opt2}, {"scheduler", sched2}}, CheckpointerOptions().read_only(true));
  ckpt2.recover_if_possible();
  CHECK(opt2.param_groups()[0].options().get_lr() == 0.5);
  std::vector<double> resumed;
  for (int i = 0; i < 4; ++i) {
    sched2.step();
    resumed.push_back(opt2.param_groups()[0].options().get_lr());
  }
  CHECK(resumed == expected);
  CHECK(nlohmann::json::parse(test::read_file(dir.path() / ckpt2.find_checkpoint()->name() / "scheduler.json"))["step_count"] == 3);
}
