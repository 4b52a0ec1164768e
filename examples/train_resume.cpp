// A small realistic training program: an MLP on synthetic data with Adam, StepLR, dropout,
// a shuffling sampler and RNG state, checkpointed every epoch. Kill it at any moment
// (kill -9 included) and start it again: it resumes from the last committed checkpoint.
//
//   train_resume <checkpoint-dir> [--epochs N] [--stop-after-epoch K]
#include <savepoint/savepoint.hpp>

#include <torch/torch.h>

#include <cstring>
#include <iostream>

struct Mlp : torch::nn::Module {
  Mlp() {
    fc1 = register_module("fc1", torch::nn::Linear(8, 32));
    drop = register_module("drop", torch::nn::Dropout(0.2));
    fc2 = register_module("fc2", torch::nn::Linear(32, 1));
  }
  torch::Tensor forward(torch::Tensor x) { return fc2(drop(torch::relu(fc1(x)))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::Dropout drop{nullptr};
};

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: train_resume <checkpoint-dir> [--epochs N] [--stop-after-epoch K]\n";
    return 2;
  }
  const std::string dir = argv[1];
  int epochs_total = 6, stop_after = -1;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--epochs")) epochs_total = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--stop-after-epoch")) stop_after = std::atoi(argv[i + 1]);
  }

  // Synthetic regression data, the same in every run.
  torch::manual_seed(0);
  const auto x = torch::randn({512, 8});
  const auto y = x.matmul(torch::linspace(-1, 1, 8).unsqueeze(1)) + 0.1 * torch::randn({512, 1});
  torch::manual_seed(1);

  auto net = std::make_shared<Mlp>();
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(0.01));
  torch::optim::StepLR sched(opt, /*step_size=*/2, /*gamma=*/0.5);
  savepoint::EpochCounter epochs(epochs_total);
  savepoint::TorchRngState rng;

  savepoint::Checkpointer ckpt(dir);
  ckpt.add_recoverable("model", net);
  ckpt.add_recoverable("optimizer", opt);
  ckpt.add_recoverable("scheduler", sched);
  ckpt.add_recoverable("epochs", epochs);
  ckpt.add_recoverable("rng", rng);
  if (auto c = ckpt.recover_if_possible())
    std::cout << "resumed from " << c->name() << " after epoch " << epochs.current << "\n";
  else
    std::cout << "starting a new run\n";

  for (auto epoch : epochs) {
    net->train();
    const auto order = torch::randperm(x.size(0));  // shuffled by the checkpointed RNG
    double total = 0;
    for (int64_t b = 0; b < x.size(0); b += 64) {
      const auto idx = order.slice(0, b, b + 64);
      opt.zero_grad();
      auto loss = torch::mse_loss(net->forward(x.index_select(0, idx)), y.index_select(0, idx));
      loss.backward();
      opt.step();
      total += loss.item<double>();
    }
    sched.step();
    net->eval();
    const double val = torch::mse_loss(net->forward(x), y).item<double>();
    std::cout << "epoch " << epoch << " train_loss " << total / 8 << " val_loss " << val << "\n";
    ckpt.save_and_keep_only({{"val_loss", val}, {"epoch", epoch}}, savepoint::keep(2).min_key("val_loss"));
    if (epoch == stop_after) {
      std::cout << "interrupted after epoch " << epoch << "\n";
      return 3;
    }
  }
  const auto best = ckpt.recover_if_possible(savepoint::min_key("val_loss"));
  std::cout << "training done; best val_loss " << best->meta["val_loss"] << " from epoch " << best->meta["epoch"] << "\n";
  net->eval();
  std::cout << "final weight checksum " << net->fc2->weight.sum().item<double>() << "\n";
  return 0;
}
