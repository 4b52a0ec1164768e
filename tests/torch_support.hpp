// Helpers for the LibTorch tests.
#pragma once

#include "support.hpp"

#include <savepoint/savepoint.hpp>
#include <savepoint/tensors.hpp>

#include <torch/torch.h>

#include <sstream>
#include <string>
#include <type_traits>

namespace test {

struct Net : torch::nn::Module {
  Net(int in = 4, int hidden = 8, int out = 2) {
    fc1 = register_module("fc1", torch::nn::Linear(in, hidden));
    bn = register_module("bn", torch::nn::BatchNorm1d(hidden));
    fc2 = register_module("fc2", torch::nn::Linear(hidden, out));
  }
  torch::Tensor forward(torch::Tensor x) { return fc2(torch::relu(bn(fc1(x)))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
};

inline bool same_state(torch::nn::Module& a, torch::nn::Module& b) {
  auto pa = a.named_parameters(), pb = b.named_parameters();
  for (const auto& item : pa)
    if (!torch::equal(item.value(), pb[item.key()])) return false;
  auto ba = a.named_buffers(), bb = b.named_buffers();
  for (const auto& item : ba)
    if (!torch::equal(item.value(), bb[item.key()])) return false;
  return true;
}

// The optimizer's state-map key of a parameter: a pointer string in LibTorch 1.13, the
// pointer itself in 2.x.
template <class Map>
typename Map::key_type state_key(const Map&, const torch::Tensor& param) {
  using Key = typename Map::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream os;
    os << param.unsafeGetTensorImpl();
    return os.str();
  } else {
    return static_cast<Key>(param.unsafeGetTensorImpl());
  }
}

// A few deterministic training steps.
template <class Opt>
void train(Net& net, Opt& opt, int steps, int seed = 0) {
  torch::manual_seed(seed);
  for (int i = 0; i < steps; ++i) {
    auto x = torch::randn({16, 4});
    auto y = torch::randn({16, 2});
    opt.zero_grad();
    auto loss = torch::mse_loss(net.forward(x), y);
    loss.backward();
    opt.step();
  }
}

}  // namespace test
