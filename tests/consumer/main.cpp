// A user's program: saves a real module and a counter, then loads them into fresh objects.
// Prints the C++ standard it was compiled as (run.sh checks it against what it asked for).
#include <savepoint/savepoint.hpp>

#include <torch/torch.h>

#include <cstdio>

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  int step = 7;
  auto saved = torch::nn::Linear(3, 2);
  {
    savepoint::Checkpointer ckpt(argv[1], {{"step", step}, {"model", saved}});
    ckpt.save_checkpoint({{"loss", 0.5}});
  }
  step = 0;
  auto loaded = torch::nn::Linear(3, 2);  // other random weights
  savepoint::Checkpointer ckpt(argv[1], {{"step", step}, {"model", loaded}});
  const auto found = ckpt.recover_if_possible(savepoint::min_key("loss"));
  const bool same = torch::equal(loaded->weight, saved->weight) && torch::equal(loaded->bias, saved->bias);
  std::printf("consumer (C++ %ld) recovered step=%d, module %s\n", static_cast<long>(__cplusplus), step,
              same ? "restored" : "NOT restored");
  return found && step == 7 && same ? 0 : 1;
}
