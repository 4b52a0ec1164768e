// Writes the golden checkpoint of format version 1 (see README.md in this directory):
//
//   savepoint_golden_generator <root>      # writes <root>/CKPT+golden, then removes the lock
//
// Run once; its output is committed as tests/golden/v1. Never rerun it to "fix" the test.
#include "golden_v1.hpp"

#include <savepoint/savepoint.hpp>

#include <torch/torch.h>

#include <filesystem>
#include <iostream>

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " <root directory>\n";
    return 2;
  }
  const fs::path root = argv[1];
  if (fs::exists(root / (std::string("CKPT+") + golden_v1::kName))) {
    std::cerr << "refusing to overwrite " << (root / (std::string("CKPT+") + golden_v1::kName)) << "\n";
    return 1;
  }
  torch::set_num_threads(1);

  auto model = std::make_shared<golden_v1::Net>();
  golden_v1::prepare_model(*model);

  auto tiny = std::make_shared<golden_v1::Tiny>();
  golden_v1::Optimizers opt(*tiny, /*golden=*/true);
  golden_v1::train(*tiny, opt, golden_v1::kTrainSteps, golden_v1::kTrainSeed);

  auto epochs = golden_v1::make_epochs();
  golden_v1::run_epochs(epochs);

  golden_v1::seed_sampler();
  torch::data::samplers::RandomSampler sampler(golden_v1::kSamplerSize);
  golden_v1::advance_sampler(sampler);

  auto counts = golden_v1::counts();

  // The RNG last: seed, advance, and record the values that come next (then rewind).
  savepoint::TorchRngState rng;
  rng.include_cuda = false;
  golden_v1::advance_rng();
  auto generator = at::detail::getDefaultCPUGenerator();
  const auto state = generator.get_state();
  torch::Tensor rand_next = torch::rand({golden_v1::kRngRecorded});
  generator.set_state(state);

  {
    savepoint::Checkpointer ckpt(root);
    golden_v1::register_keys(ckpt, model, tiny, opt, epochs, sampler, counts, rand_next, rng);
    const auto saved = ckpt.save_checkpoint(golden_v1::user_meta(),
                                            savepoint::named(golden_v1::kName).pinned(true));
    std::cout << "wrote " << saved.path.string() << " (sequence " << saved.sequence << ")\n";
    for (const auto& f : saved.files) std::cout << "  " << f.file << " " << f.bytes << " bytes, hook " << f.hook << "\n";
  }
  std::error_code ec;
  fs::remove(root / ".savepoint.lock", ec);  // not part of the golden checkpoint

  // For the record (the test states these values).
  std::cout << "bn.running_mean " << model->bn->running_mean << "\nbn.running_var " << model->bn->running_var
            << "\nbn.num_batches_tracked " << model->bn->num_batches_tracked << "\nrand_next " << rand_next << "\n";
  return 0;
}
