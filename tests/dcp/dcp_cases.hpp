// tests/dcp/dcp_cases.hpp — what the DCP tests share (test_dcp.cpp, the cross-language tool
// dcp_cpp.cpp): the model Python's tests/dcp/dcp_py.py trains (fc1 Linear(8, 16), fc2
// Linear(16, 4), a buffer `scale`; Adam), its state as a DCP State whole or by rows, and
// bit-for-bit comparison against full tensors.
#pragma once

#include <savepoint/dcp.hpp>
#include <savepoint/format/pytorch.hpp>

#include <torch/torch.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <type_traits>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace dcp_cases {

struct NetImpl : torch::nn::Module {
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::Tensor scale;
  NetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(8, 16));
    fc2 = register_module("fc2", torch::nn::Linear(16, 4));
    scale = register_buffer("scale", torch::ones({4}));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::relu(fc1(x))) * scale; }
};
TORCH_MODULE(Net);

/// An optimizer's state entry of `p` (LibTorch 1.13 keys the map by a pointer string, 2.x by
/// the pointer).
template <class Map>
auto& state_of(Map& states, const torch::Tensor& p) {
  using Key = typename std::decay_t<Map>::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream os;
    os << p.unsafeGetTensorImpl();
    return states[os.str()];
  } else {
    return states[static_cast<Key>(p.unsafeGetTensorImpl())];
  }
}
inline torch::optim::AdamParamState& adam_state(torch::optim::Adam& adam, const torch::Tensor& p) {
  auto& entry = state_of(adam.state(), p);
  if (!entry) throw std::runtime_error("no Adam state for a parameter");
  return static_cast<torch::optim::AdamParamState&>(*entry);
}

inline const std::vector<std::string>& param_names() {
  static const std::vector<std::string> names{"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"};
  return names;
}

/// A trained model and its Adam (2 steps on fixed data), whole: the state every test compares.
struct Trained {
  Net net;
  std::unique_ptr<torch::optim::Adam> adam;
};
inline Trained train(std::uint64_t seed = 0) {
  torch::manual_seed(seed);
  Trained t;
  t.net->scale.fill_(1.5);
  t.adam = std::make_unique<torch::optim::Adam>(t.net->parameters(), torch::optim::AdamOptions(1e-2));
  const auto x = torch::randn({32, 8});
  const auto y = torch::randn({32, 4});
  for (int step = 0; step < 2; ++step) {
    t.adam->zero_grad();
    torch::mse_loss(t.net->forward(x), y).backward();
    t.adam->step();
  }
  return t;
}

/// Every tensor of the trained state under its DCP key, whole (Adam's step as a 0-dim float).
inline std::map<std::string, torch::Tensor> full_state(Trained& t) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : t.net->named_parameters()) out["model." + p.key()] = p.value().detach().clone();
  out["model.scale"] = t.net->scale.clone();
  auto params = t.net->named_parameters();
  for (const auto& name : param_names()) {
    const auto& p = params[name];
    auto& s = adam_state(*t.adam, p);
    out["optim.state." + name + ".exp_avg"] = s.exp_avg().clone();
    out["optim.state." + name + ".exp_avg_sq"] = s.exp_avg_sq().clone();
    out["optim.state." + name + ".step"] = torch::tensor(static_cast<float>(s.step()));
  }
  return out;
}

/// The tensors of a PyTorch file (Python's torch.save of a flat dict), by name.
inline std::map<std::string, torch::Tensor> read_pt(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), {});
  const auto parsed = savepoint::pytorch::parse(bytes, file);
  std::map<std::string, torch::Tensor> out;
  for (const auto& t : parsed.tensors) {
    const auto& storage = parsed.storages.at(t.storage);
    if (t.dtype != savepoint::safetensors::DType::F32) throw std::runtime_error("expected float32: " + t.name);
    auto whole = torch::empty({static_cast<std::int64_t>(storage.numel)}, torch::kFloat32);
    std::memcpy(whole.data_ptr(), storage.bytes.data(), storage.bytes.size());
    out[t.name] = whole.as_strided(t.shape, t.strides, t.storage_offset).clone();
  }
  return out;
}

/// One rank's share of the state: rows [offset, offset + rows) of every parameter (and of its
/// Adam state), the buffer whole. `model` supplies the values to start from (none: zeros).
struct RankState {
  savepoint::ShardedTensors shards;
  std::vector<torch::Tensor> params;
  torch::Tensor scale = torch::zeros({4});
  std::unique_ptr<torch::optim::Adam> adam;
  savepoint::dcp::State state;
  nlohmann::json step;
};

inline std::unique_ptr<RankState> rank_state(int rank, int world, Trained* from) {
  auto r = std::make_unique<RankState>();
  Net shape;  // for the global shapes
  auto named = shape->named_parameters();
  std::map<std::string, torch::Tensor> full;
  if (from) full = full_state(*from);
  for (const auto& name : param_names()) {
    const auto global = named[name].sizes().vec();
    const auto rows = savepoint::even_rows(global[0], rank, world);
    auto local_shape = global;
    local_shape[0] = rows.rows;
    auto local = from ? full["model." + name].narrow(0, rows.offset, rows.rows).clone().requires_grad_(true)
                      : torch::zeros(local_shape).requires_grad_(true);
    r->params.push_back(local);
    r->shards.add(name, local, global[0], rows.offset);
  }
  if (from) r->scale = full["model.scale"].clone();
  r->adam = std::make_unique<torch::optim::Adam>(r->params, torch::optim::AdamOptions(1e-2));
  if (from) {
    for (std::size_t i = 0; i < param_names().size(); ++i) {
      const auto& name = param_names()[i];
      const auto rows = savepoint::even_rows(full["model." + name].size(0), rank, world);
      auto s = std::make_unique<torch::optim::AdamParamState>();
      s->exp_avg(full["optim.state." + name + ".exp_avg"].narrow(0, rows.offset, rows.rows).clone());
      s->exp_avg_sq(full["optim.state." + name + ".exp_avg_sq"].narrow(0, rows.offset, rows.rows).clone());
      s->step(static_cast<std::int64_t>(full["optim.state." + name + ".step"].item<float>()));
      state_of(r->adam->state(), r->params[i]) = std::move(s);
    }
  }
  r->state.sharded("model", r->shards).tensor("model.scale", r->scale).optimizer("optim", *r->adam);
  return r;
}

/// Throws naming the first key whose rows differ from `expected` in any bit; returns how many
/// tensors were compared.
inline int compare_rank(RankState& r, int rank, int world, std::map<std::string, torch::Tensor>& expected) {
  int n = 0;
  const auto same = [&](const std::string& key, const torch::Tensor& got, const torch::Tensor& want) {
    if (got.sizes() != want.sizes() || got.scalar_type() != want.scalar_type() ||
        std::memcmp(got.contiguous().data_ptr(), want.contiguous().data_ptr(), want.nbytes()) != 0)
      throw std::runtime_error(fmt::format("rank {} of {}: '{}' differs from what was saved", rank, world, key));
    ++n;
  };
  for (std::size_t i = 0; i < param_names().size(); ++i) {
    const auto& name = param_names()[i];
    const auto rows = savepoint::even_rows(expected.at("model." + name).size(0), rank, world);
    same("model." + name, r.params[i].detach(), expected.at("model." + name).narrow(0, rows.offset, rows.rows));
    auto& s = adam_state(*r.adam, r.params[i]);
    for (const char* field : {"exp_avg", "exp_avg_sq"}) {
      const auto key = "optim.state." + name + "." + field;
      same(key, std::string(field) == "exp_avg" ? s.exp_avg() : s.exp_avg_sq(),
           expected.at(key).narrow(0, rows.offset, rows.rows));
    }
    same("optim.state." + name + ".step", torch::tensor(static_cast<float>(s.step())),
         expected.at("optim.state." + name + ".step"));
  }
  same("model.scale", r.scale, expected.at("model.scale"));
  return n;
}

}  // namespace dcp_cases
