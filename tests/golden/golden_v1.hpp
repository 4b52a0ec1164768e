// The recipe of the golden checkpoint tests/golden/v1: the objects it holds and the
// deterministic steps that put them in their saved state. Shared by the generator
// (generate_v1.cpp, run once) and the test (test_golden.cpp, which re-runs the same steps and
// compares). Changing anything here invalidates tests/golden/v1: never edit it; a new golden
// checkpoint gets a new recipe (golden_v2.hpp).
//
// The numbers are chosen so that LibTorch computes them the same way on any x86-64 machine:
// module weights and inputs are small dyadic rationals (every product and sum is exact, so
// BLAS kernels and reduction orders cannot change a bit), the optimizers' model multiplies by
// powers of two only, batches have two rows, and random data comes from torch::rand /
// torch::randint (exact functions of the generator's bits; torch::randn is not used).
#pragma once

#include <savepoint/savepoint.hpp>

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>

namespace golden_v1 {

inline constexpr const char* kName = "golden";  // the checkpoint directory is CKPT+golden
inline constexpr std::uint64_t kTrainSeed = 1001;
inline constexpr int kTrainSteps = 3;
inline constexpr std::uint64_t kSamplerSeed = 2002;
inline constexpr std::size_t kSamplerSize = 20, kSamplerTaken = 8;
inline constexpr std::uint64_t kRngSeed = 3003;
inline constexpr int kRngDrawnBeforeSave = 3, kRngRecorded = 4;
inline constexpr int kBnPasses = 3;

// ---- "model": Linear(3, 4) + BatchNorm1d(4), parameters by formula, BN stats from 3 passes.
struct Net : torch::nn::Module {
  Net() {
    fc = register_module("fc", torch::nn::Linear(3, 4));
    bn = register_module("bn", torch::nn::BatchNorm1d(torch::nn::BatchNorm1dOptions(4).momentum(0.5)));
  }
  torch::Tensor forward(torch::Tensor x) { return bn(fc(x)); }
  torch::nn::Linear fc{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
};

// The parameter formulas (the test states them again, independently).
inline torch::Tensor fc_weight() { return (torch::arange(12, torch::kFloat).reshape({4, 3}) - 5) / 4; }
inline torch::Tensor fc_bias() { return torch::arange(4, torch::kFloat) / 2 - 1; }
inline torch::Tensor bn_weight() { return 1 + torch::arange(4, torch::kFloat) / 8; }
inline torch::Tensor bn_bias() { return -torch::arange(4, torch::kFloat) / 8; }

// Input of forward pass k: two rows of small integers.
inline torch::Tensor bn_input(int k) {
  return (torch::arange(6, torch::kFloat).reshape({2, 3}) - 2) * (k + 1);
}

inline void prepare_model(Net& net) {
  torch::NoGradGuard no_grad;
  net.fc->weight.copy_(fc_weight());
  net.fc->bias.copy_(fc_bias());
  net.bn->weight.copy_(bn_weight());
  net.bn->bias.copy_(bn_bias());
  net.train();
  for (int k = 0; k < kBnPasses; ++k) (void)net.forward(bn_input(k));
}

// ---- "tiny": one Linear(1, 2) per optimizer, each trained by its own optimizer.
struct Tiny : torch::nn::Module {
  Tiny() {
    for (const char* name : {"adam", "adamw", "sgd", "adagrad", "rmsprop", "lbfgs"}) {
      auto lin = register_module(name, torch::nn::Linear(1, 2));
      torch::NoGradGuard no_grad;
      lin->weight.copy_(torch::tensor({{0.5f}, {-0.25f}}));
      lin->bias.copy_(torch::tensor({0.125f, -0.5f}));
      layers.emplace(name, lin);
    }
  }
  torch::nn::Linear& at(const std::string& name) { return layers.at(name); }
  std::map<std::string, torch::nn::Linear> layers;
};

// The optimizers under test, with the options the golden checkpoint was written with, or
// (golden = false) other ones, as a program that is about to resume would build them.
struct Optimizers {
  Optimizers(Tiny& t, bool golden)
      : adam(t.at("adam")->parameters(),
             golden ? torch::optim::AdamOptions(0.01).betas({0.8, 0.95}).weight_decay(1e-3).amsgrad(true)
                    : torch::optim::AdamOptions(0.5)),
        adamw(t.at("adamw")->parameters(),
              golden ? torch::optim::AdamWOptions(0.02).weight_decay(0.05) : torch::optim::AdamWOptions(0.5)),
        sgd(t.at("sgd")->parameters(),
            golden ? torch::optim::SGDOptions(0.1).momentum(0.9).dampening(0.125)
                   : torch::optim::SGDOptions(0.5)),
        adagrad(t.at("adagrad")->parameters(),
                golden ? torch::optim::AdagradOptions(0.05).lr_decay(0.01).initial_accumulator_value(0.25)
                       : torch::optim::AdagradOptions(0.5)),
        rmsprop(t.at("rmsprop")->parameters(),
                golden ? torch::optim::RMSpropOptions(0.01).momentum(0.5).centered(true).alpha(0.9)
                       : torch::optim::RMSpropOptions(0.5)),
        lbfgs(t.at("lbfgs")->parameters(),
              golden ? torch::optim::LBFGSOptions(0.5).history_size(3).max_iter(3)
                     : torch::optim::LBFGSOptions(1.0).history_size(3).max_iter(3)),
        scheduler(sgd, /*step_size=*/2, /*gamma=*/0.5) {}
  torch::optim::Adam adam;
  torch::optim::AdamW adamw;
  torch::optim::SGD sgd;
  torch::optim::Adagrad adagrad;
  torch::optim::RMSprop rmsprop;
  torch::optim::LBFGS lbfgs;
  torch::optim::StepLR scheduler;  // on sgd
};

namespace detail {
template <class Opt>
void one_step(torch::nn::Linear& lin, Opt& opt, const torch::Tensor& x, const torch::Tensor& y) {
  auto closure = [&] {
    opt.zero_grad();
    auto loss = torch::mse_loss(lin->forward(x), y);
    loss.backward();
    return loss;
  };
  if constexpr (std::is_same_v<Opt, torch::optim::LBFGS>) {
    opt.step(closure);
  } else {
    closure();
    opt.step();
  }
}
}  // namespace detail

// `steps` steps of every optimizer on the same fixed data (seeded); the scheduler steps after
// each SGD step. Inputs are ±2^k, targets multiples of 2^-24 in [0, 1).
inline void train(Tiny& t, Optimizers& o, int steps, std::uint64_t seed) {
  torch::manual_seed(seed);
  const auto powers = torch::tensor({0.5f, 1.0f, 2.0f, -1.0f, -0.5f, -2.0f});
  for (int i = 0; i < steps; ++i) {
    const auto x = powers.index({torch::randint(0, 6, {2})}).reshape({2, 1});
    const auto y = torch::rand({2, 2});
    detail::one_step(t.at("adam"), o.adam, x, y);
    detail::one_step(t.at("adamw"), o.adamw, x, y);
    detail::one_step(t.at("sgd"), o.sgd, x, y);
    o.scheduler.step();
    detail::one_step(t.at("adagrad"), o.adagrad, x, y);
    detail::one_step(t.at("rmsprop"), o.rmsprop, x, y);
    detail::one_step(t.at("lbfgs"), o.lbfgs, x, y);
  }
}

// ---- "epochs": early stopping that has triggered (epoch 4, best epoch 2, score 0.5).
inline savepoint::EpochCounterWithStopper make_epochs() {
  return savepoint::EpochCounterWithStopper(/*limit=*/10, /*limit_to_stop=*/2, /*limit_warmup=*/1);
}
inline void run_epochs(savepoint::EpochCounterWithStopper& epochs) {
  for (double metric : {0.875, 0.5, 0.625, 0.75}) {
    if (!epochs.next()) break;
    epochs.update_metric(metric);
  }
}

// ---- "sampler": RandomSampler(20) with 8 indices taken.
inline void advance_sampler(torch::data::samplers::RandomSampler& sampler) {
  (void)sampler.next(kSamplerTaken);
}
inline void seed_sampler() { torch::manual_seed(kSamplerSeed); }

// ---- "rng": the default CPU generator, seeded then advanced.
inline void advance_rng() {
  torch::manual_seed(kRngSeed);
  (void)torch::rand({kRngDrawnBeforeSave});
}

// ---- "counts" (JSON) and the user meta.
inline std::map<std::string, int> counts() { return {{"cats", 3}, {"dogs", 5}, {"eels", -7}}; }
inline nlohmann::json user_meta() { return {{"loss", 0.25}, {"epoch", 3}}; }

// The keys, in the order the generator registered them (the test registers the same).
template <class Model, class Tiny_, class Epochs, class Sampler, class Counts, class Rng>
void register_keys(savepoint::Checkpointer& ckpt, Model& model, Tiny_& tiny, Optimizers& opt, Epochs& epochs,
                   Sampler& sampler, Counts& counts, torch::Tensor& rand_next, Rng& rng) {
  ckpt.add_recoverable("model", model);
  ckpt.add_recoverable("tiny", tiny);
  ckpt.add_recoverable("adam", opt.adam);
  ckpt.add_recoverable("adamw", opt.adamw);
  ckpt.add_recoverable("sgd", opt.sgd);
  ckpt.add_recoverable("adagrad", opt.adagrad);
  ckpt.add_recoverable("rmsprop", opt.rmsprop);
  ckpt.add_recoverable("lbfgs", opt.lbfgs);
  ckpt.add_recoverable("scheduler", opt.scheduler);
  ckpt.add_recoverable("epochs", epochs);
  ckpt.add_recoverable("sampler", sampler);
  ckpt.add_recoverable("counts", counts);
  ckpt.add_recoverable("rand_next", rand_next);
  ckpt.add_recoverable("rng", rng);
}

}  // namespace golden_v1
