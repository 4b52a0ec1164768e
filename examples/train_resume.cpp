// A realistic training loop that survives anything: an MLP on synthetic data with Adam,
// StepLR, dropout, a shuffling RandomSampler and the RNG state. It saves
//   - an intra-epoch checkpoint every K steps (and when SIGTERM/SIGUSR1 arrives: preemption),
//   - an end-of-epoch checkpoint, keeping the 2 latest and the 2 best by validation loss,
//     plus every 5th epoch forever,
// and at the end evaluates with the best checkpoint. Kill it at any step (kill -9 included)
// and start it again: it continues with the next batch and ends with a bit-identical state
// (its last line, "final state xxh3 <hash>", hashes every byte of it).
//
//   train_resume <checkpoint-dir> [--epochs N] [--save-every-steps K] [--trace] [--pace]
//                [--step-ms MS] [--stop-after-epoch E] [--no-data-position] [--incremental BYTES]
// --trace prints one line per step; --pace (for tests that kill it) then waits for a line on
// stdin before going on; --step-ms makes each step take at least MS milliseconds, like real
// training; --no-data-position forgets where the epoch was (to show what goes wrong without
// it); --stop-after-epoch E exits with status 3 after epoch E; --incremental BYTES saves
// incrementally, in parts of at most BYTES (docs/guide.md, "Incremental checkpoints").
#include <savepoint/savepoint.hpp>

#include <torch/torch.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>

#include "state_hash.hpp"

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
    std::cerr << "usage: train_resume <checkpoint-dir> [--epochs N] [--save-every-steps K] "
                 "[--trace] [--pace] [--step-ms MS] [--stop-after-epoch E] [--no-data-position] "
                 "[--incremental BYTES]\n";
    return 2;
  }
  const std::string dir = argv[1];
  int epochs_total = 6, stop_after = -1, every_steps = 3, step_ms = 0;
  long long part_bytes = 0;  // 0: full saves
  bool trace = false, pace = false, data_position = true;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--epochs" && has_value) epochs_total = std::atoi(argv[++i]);
    else if (arg == "--save-every-steps" && has_value) every_steps = std::atoi(argv[++i]);
    else if (arg == "--stop-after-epoch" && has_value) stop_after = std::atoi(argv[++i]);
    else if (arg == "--step-ms" && has_value) step_ms = std::atoi(argv[++i]);
    else if (arg == "--incremental" && has_value) part_bytes = std::atoll(argv[++i]);
    else if (arg == "--trace") trace = true;
    else if (arg == "--pace") pace = true;
    else if (arg == "--no-data-position") data_position = false;
    else {
      std::cerr << "train_resume: unknown argument '" << arg << "'\n";
      return 2;
    }
  }

  // Synthetic regression data, the same in every run.
  torch::manual_seed(0);
  const auto x = torch::randn({512, 8});
  const auto y = x.matmul(torch::linspace(-1, 1, 8).unsqueeze(1)) + 0.1 * torch::randn({512, 1});
  const auto val_x = torch::randn({128, 8});
  const auto val_y = val_x.matmul(torch::linspace(-1, 1, 8).unsqueeze(1));
  torch::manual_seed(1);
  const int64_t batch_size = 64;

  auto net = std::make_shared<Mlp>();
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(0.01));
  torch::optim::StepLR sched(opt, /*step_size=*/2, /*gamma=*/0.5);
  torch::data::samplers::RandomSampler sampler(x.size(0));
  savepoint::EpochCounter epochs(epochs_total);
  savepoint::DataPosition position;
  savepoint::TorchRngState rng;  // dropout masks and shuffles

  savepoint::Checkpointer ckpt(dir);
  if (part_bytes > 0) ckpt.options().incremental(true).part_bytes(static_cast<std::uint64_t>(part_bytes));
  ckpt.add_recoverable("model", net);
  ckpt.add_recoverable("optimizer", opt);
  ckpt.add_recoverable("scheduler", sched);
  ckpt.add_recoverable("epochs", epochs);
  if (data_position) {
    ckpt.add_recoverable("sampler", sampler);
    ckpt.add_recoverable("position", position);
  }
  ckpt.add_recoverable("rng", rng);
  savepoint::IntervalSaver saver(ckpt, savepoint::IntervalOptions().every_steps(every_steps));

  if (auto c = ckpt.recover_if_possible()) {
    // The next epoch to run, and how many of its batches are already done.
    std::cout << "resumed from " << c->name() << " at epoch " << epochs.current + 1 << " batch "
              << (c->end_of_epoch() ? 0 : position.batches_done()) << std::endl;
  } else {
    std::cout << "starting a new run" << std::endl;
  }
  const auto retention = savepoint::keep_latest(2) |
                         savepoint::keep_best(2, savepoint::min_key("val_loss")) |
                         savepoint::keep_every_nth_epoch(5);

  for (auto epoch : epochs) {
    if (position.begin_epoch(epoch)) sampler.reset();  // fresh epoch: reshuffle
    net->train();
    while (auto indices = sampler.next(batch_size)) {
      const auto idx = torch::tensor(std::vector<int64_t>(indices->begin(), indices->end()));
      opt.zero_grad();
      auto loss = torch::mse_loss(net->forward(x.index_select(0, idx)), y.index_select(0, idx));
      loss.backward();
      opt.step();
      position.advance();
      if (step_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(step_ms));
      if (trace) {
        std::cout << "step epoch " << epoch << " batch " << position.batches_done() << std::endl;
        std::string go;
        if (pace && !std::getline(std::cin, go)) return 4;  // the driver went away
      }
      saver.after_step({{"epoch", epoch}, {"batch", position.batches_done()}});
      if (saver.preempted()) {
        std::cout << "preempted at epoch " << epoch << " batch " << position.batches_done()
                  << "; checkpoint saved, exiting" << std::endl;
        return 0;
      }
    }
    sched.step();
    net->eval();
    torch::NoGradGuard no_grad;
    const double val = torch::mse_loss(net->forward(val_x), val_y).item<double>();
    std::cout << "epoch " << epoch << " val_loss " << val << std::endl;
    saver.save_end_of_epoch({{"epoch", epoch}, {"val_loss", val}}, retention);
    if (epoch == stop_after) {
      std::cout << "interrupted after epoch " << epoch << std::endl;
      return 3;
    }
  }

  // The state training ended with, before the best checkpoint replaces it below.
  const auto final_state = state_hash(*net, opt);

  // Evaluate with the best checkpoint (SpeechBrain's on_evaluate_start); nothing is deleted.
  const auto best = ckpt.load_best(savepoint::min_key("val_loss"));
  net->eval();
  torch::NoGradGuard no_grad;
  std::cout << "training done; best val_loss " << best.meta["val_loss"] << " from epoch "
            << best.meta["epoch"] << ", evaluated: "
            << torch::mse_loss(net->forward(val_x), val_y).item<double>() << "\n";
  std::cout << "final state xxh3 " << final_state.hex << " (every byte of " << final_state.tensors
            << " tensors: parameters, buffers, optimizer moments; and the optimizer's steps and learning rate)\n";
  return 0;
}
