// Memory of checkpoint averaging: peak extra resident memory of averaging N checkpoints of a
// model of M MiB, against the model's size, for savepoint's streaming average (to a file,
// and into a module) and for the obvious way (load every checkpoint, then average).
//
//   bash scripts/bench.sh average [--mib 256] [--checkpoints 5] [--tensors 16] [--dir D]
#include <savepoint/module_average.hpp>
#include <savepoint/savepoint.hpp>

#include "memory.hpp"

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {
using savepoint::bench::peak_mib;
using savepoint::bench::reset_peak_rss;
using savepoint::bench::rss_mib;

struct Wide : torch::nn::Module {
  Wide(std::int64_t tensors, std::int64_t floats_each) {
    for (std::int64_t i = 0; i < tensors; ++i)
      register_parameter("w" + std::to_string(i), torch::randn({floats_each}));
    register_buffer("steps", torch::zeros({1}, torch::kInt64));
  }
};

// Runs `fn`, returns (peak extra MiB over the RSS before, seconds).
template <class Fn>
std::pair<double, double> measure(Fn&& fn) {
  const double before = rss_mib();
  reset_peak_rss();
  const auto t0 = Clock::now();
  fn();
  const double took = std::chrono::duration<double>(Clock::now() - t0).count();
  return {peak_mib() - before, took};
}
}  // namespace

int main(int argc, char** argv) {
  std::int64_t mib = 256, n = 5, tensors = 16;
  fs::path root = fs::temp_directory_path() / "savepoint-bench-average";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string arg = argv[i];
    if (arg == "--mib") mib = std::atoll(argv[i + 1]);
    else if (arg == "--checkpoints") n = std::atoll(argv[i + 1]);
    else if (arg == "--tensors") tensors = std::atoll(argv[i + 1]);
    else if (arg == "--dir") root = argv[i + 1];
    else {
      std::cerr << "usage: savepoint_bench_average [--mib M] [--checkpoints N] [--tensors T] [--dir D]\n";
      return 2;
    }
  }
  at::set_num_threads(1);
  fs::remove_all(root);
  const std::int64_t floats_each = mib * (1 << 20) / 4 / tensors;
  auto model = std::make_shared<Wide>(tensors, floats_each);
  savepoint::Checkpointer ckpt(root / "run", {{"model", model}});
  for (std::int64_t i = 0; i < n; ++i) {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.add_(1.0f);
    ckpt.save_checkpoint({{"epoch", i}});
  }
  const auto checkpoints = ckpt.find_checkpoints(savepoint::most_recent(), static_cast<std::size_t>(n));
  const double model_mib = static_cast<double>(tensors * floats_each * 4) / (1 << 20);
  const double tensor_mib = model_mib / static_cast<double>(tensors);

  const auto to_file = measure([&] { savepoint::write_average(checkpoints, "model", root / "average.safetensors"); });
  auto target = std::make_shared<Wide>(tensors, floats_each);
  const auto to_module = measure([&] { savepoint::load_average(*target, checkpoints, "model"); });
  // The obvious way: every checkpoint loaded, then averaged.
  const auto naive = measure([&] {
    std::vector<savepoint::TensorFile> all;
    for (const auto& c : checkpoints) all.push_back(savepoint::load_tensors(c, "model"));
    for (std::size_t t = 0; t < all.front().tensors.size(); ++t) {
      auto sum = all.front().tensors[t].second.to(torch::kFloat64);
      for (std::size_t c = 1; c < all.size(); ++c) sum += all[c].tensors[t].second.to(torch::kFloat64);
    }
  });
  std::printf("averaging %lld checkpoints of a %.0f MiB model (%lld float32 tensors of %.1f MiB each), LibTorch %s\n\n",
              static_cast<long long>(n), model_mib, static_cast<long long>(tensors), tensor_mib, TORCH_VERSION);
  std::printf("| method | peak extra RSS MiB | / model size | / one tensor | seconds |\n|---|---|---|---|---|\n");
  auto row = [&](const char* name, std::pair<double, double> r) {
    std::printf("| %s | %.1f | %.2f | %.2f | %.2f |\n", name, r.first, r.first / model_mib, r.first / tensor_mib, r.second);
  };
  row("write_average (to a file)", to_file);
  row("load_average (into a module)", to_module);
  row("load every checkpoint, then average", naive);
  fs::remove_all(root);
  return 0;
}
