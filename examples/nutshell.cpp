// The SpeechBrain tutorial's "checkpointer in a nutshell", in C++.
//
// Run it repeatedly: each run trains one epoch and exits, as if the job were killed. Once the
// epoch counter is exhausted, a run loads the best model instead.
#include <savepoint/savepoint.hpp>

#include <torch/torch.h>

#include <iostream>

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : "nutshell_checkpoints";

  // You have a model, an optimizer and an epoch counter:
  torch::nn::Linear model(torch::nn::LinearOptions(1, 1).bias(false));
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1.0));
  savepoint::EpochCounter epoch_counter(10);

  // Create a checkpointer and register what must survive a restart:
  savepoint::Checkpointer checkpointer(dir, {{"mdl", model}, {"opt", optimizer}, {"epochs", epoch_counter}});

  // Before training, recover if possible (the most recent checkpoint by default).
  if (auto ckpt = checkpointer.recover_if_possible()) std::cout << "Resumed from " << ckpt->name() << "\n";

  for (auto epoch : epoch_counter) {
    std::cout << "Starting epoch " << epoch << ".\n";
    auto prediction = model(torch::ones({1}));
    auto loss = (prediction - torch::ones({1})).pow(2).sum();
    std::cout << "Model prediction=" << prediction.item<double>() << ", loss=" << loss.item<double>() << "\n";
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    // Save an end-of-epoch checkpoint, keeping the best by loss and the newest:
    checkpointer.save_and_keep_only({{"loss", loss.item<double>()}}, savepoint::keep(1).min_key("loss"));
    std::cout << "Crashing after epoch " << epoch << " (run me again to continue).\n";
    return 0;  // "crash": the next run resumes from the checkpoint
  }

  std::cout << "Epoch loop has finished.\n";
  const auto best = checkpointer.recover_if_possible(savepoint::min_key("loss"));
  std::cout << "Best model parameter: " << model->weight.item<double>() << "\n";
  std::cout << "Achieved on epoch " << epoch_counter.current << " with loss " << best->meta["loss"] << ".\n";
  return 0;
}
