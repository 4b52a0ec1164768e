// The README's quick start, as a complete program. The region between the markers is the
// README's ```cpp block, character for character (ctest checks it: scripts/check-quickstart.sh);
// above it are the two things the README leaves to you: a model and one epoch of training.
// Edit both together.
#include <savepoint/savepoint.hpp>

#include <torch/torch.h>

// A tiny regression model, trained on 64 fixed samples: the whole program runs in a second.
struct Net : torch::nn::Module {
  Net() : fc(register_module("fc", torch::nn::Linear(4, 1))) {}
  torch::Tensor forward(const torch::Tensor& x) { return fc(x); }
  torch::nn::Linear fc;
};

double train_one_epoch(Net& net, torch::optim::Optimizer& opt) {
  const auto x = torch::linspace(-1, 1, 64 * 4).reshape({64, 4});
  const auto y = x.sum(1, /*keepdim=*/true);
  opt.zero_grad();
  auto loss = torch::mse_loss(net.forward(x), y);
  loss.backward();
  opt.step();
  return loss.item<double>();
}

// [quickstart]
#include <savepoint/savepoint.hpp>
#include <torch/torch.h>

int main() {
  auto net = std::make_shared<Net>();                        // any torch::nn::Module
  torch::optim::Adam opt(net->parameters(), 1e-3);
  torch::optim::StepLR sched(opt, 10, 0.5);
  savepoint::EpochCounter epochs(30);

  savepoint::Checkpointer ckpt("runs/exp1/save");
  ckpt.add_recoverable("model", net);
  ckpt.add_recoverable("optimizer", opt);
  ckpt.add_recoverable("scheduler", sched);
  ckpt.add_recoverable("epochs", epochs);
  ckpt.recover_if_possible();                                // newest valid checkpoint, if any

  for (auto epoch : epochs) {
    double loss = train_one_epoch(*net, opt);
    sched.step();
    ckpt.save_and_keep_only({{"epoch", epoch}, {"loss", loss}}, savepoint::keep(2).min_key("loss"));
  }
  ckpt.recover_if_possible(savepoint::min_key("loss"));      // the best model
}
// [/quickstart]
