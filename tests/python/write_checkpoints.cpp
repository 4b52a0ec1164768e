// Writes the checkpoints the Python reader's tests read (python/tests/), with what C++ computed
// from them, so Python can be checked against C++ in the same test run:
//
//   savepoint_python_fixtures <out>
//     <out>/<optimizer>/CKPT+before   model + optimizer (two param groups, non-default options)
//                                      after 3 steps, and "grads": the gradient of step 4
//     <out>/<optimizer>/CKPT+after    model + optimizer after C++ took step 4 with those grads
//     <out>/<optimizer>/expected.json every value of CKPT+before as C++ holds it
//     <out>/selection/                checkpoints with metrics (ties, NaN, strings, missing keys,
//                                      intra-epoch, named, pinned) and expected.json: the order
//                                      of C++'s selectors and of its retention plans
//     <out>/incremental/              two incremental saves (format 2): a model of a frozen
//                                      "backbone" (segments of 40 rows) and a trained "head",
//                                      CKPT+first and CKPT+second sharing the backbone's parts;
//                                      expected.json: every value of each, as C++ holds it
// for Adam, AdamW, SGD, Adagrad and RMSprop.
#include <savepoint/savepoint.hpp>

#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct Net : torch::nn::Module {
  Net() {
    fc1 = register_module("fc1", torch::nn::Linear(4, 8));
    bn = register_module("bn", torch::nn::BatchNorm1d(8));
    fc2 = register_module("fc2", torch::nn::Linear(8, 2));
  }
  torch::Tensor forward(torch::Tensor x) { return fc2(torch::relu(bn(fc1(x)))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
};

json values(const torch::Tensor& t) {
  const auto flat = t.detach().to(torch::kDouble).contiguous().view(-1);
  return std::vector<double>(flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel());
}

// The parameters of group 0 (fc1, bn) and group 1 (fc2), in the order Python builds them.
std::vector<torch::Tensor> group_params(Net& net, int group) {
  std::vector<torch::Tensor> out;
  for (const auto& p : net.named_parameters())
    if ((p.key().rfind("fc2.", 0) == 0) == (group == 1)) out.push_back(p.value());
  return out;
}

template <class Optimizer, class Options>
void write_optimizer_case(const fs::path& root, const std::string& kind, Options defaults, Options group1) {
  torch::manual_seed(0);
  auto net = std::make_shared<Net>();
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(group_params(*net, 0));
  groups.emplace_back(group_params(*net, 1), std::make_unique<Options>(group1));
  Optimizer opt(groups, defaults);
  const auto x = torch::randn({16, 4}), y = torch::randn({16, 2});
  net->train();
  auto gradient = [&] {
    opt.zero_grad();
    torch::mse_loss(net->forward(x), y).backward();
  };
  for (int step = 0; step < 3; ++step) {
    gradient();
    opt.step();
  }
  gradient();  // step 4's gradient, saved for Python to take the same step
  auto grads = std::make_shared<Net>();
  {
    torch::NoGradGuard no_grad;
    for (auto& p : grads->named_parameters()) p.value().copy_(net->named_parameters()[p.key()].grad());
  }
  json expected = {{"optimizer", kind}, {"model", json::object()}, {"grads", json::object()}};
  for (const auto& p : net->named_parameters()) expected["model"][p.key()] = values(p.value());
  for (const auto& b : net->named_buffers()) expected["model"][b.key()] = values(b.value());
  for (const auto& p : grads->named_parameters()) expected["grads"][p.key()] = values(p.value());

  savepoint::Checkpointer ckpt(root);
  ckpt.add_recoverable("model", net);
  ckpt.add_recoverable("optimizer", opt);
  ckpt.add_recoverable("grads", grads);
  ckpt.save_checkpoint({{"optimizer", kind}, {"step", 3}}, savepoint::named("before"));
  opt.step();
  ckpt.remove_recoverable("grads");
  ckpt.save_checkpoint({{"optimizer", kind}, {"step", 4}}, savepoint::named("after"));
  std::ofstream(root / "expected.json") << expected.dump(1) << "\n";
}

// Checkpoints with metrics chosen to exercise every rule of selection and retention.
void write_selection_case(const fs::path& root) {
  savepoint::Checkpointer ckpt(root);
  auto save = [&](json meta, savepoint::SaveOptions options = {}) { ckpt.save_checkpoint(meta, options); };
  save({{"epoch", 1}, {"loss", 0.5}, {"acc", 0.1}});
  save({{"epoch", 2}, {"loss", 0.25}, {"acc", 0.3}});
  save({{"epoch", 3}, {"loss", 0.25}, {"acc", 0.3}});              // ties epoch 2: newer wins
  save({{"epoch", 4}, {"loss", NAN}, {"acc", 0.9}});               // NaN: stored as null, never best
  save({{"epoch", 5}, {"loss", "n/a"}, {"acc", 0.2}});             // a string: never best
  save({{"epoch", 6}, {"acc", 0.2}});                              // no loss at all
  save({{"epoch", 7}, {"loss", 0.1}, {"acc", 0.05}}, savepoint::SaveOptions().end_of_epoch(false));
  save({{"loss", 0.3}, {"acc", true}}, savepoint::named("best"));  // no epoch; a bool is no number
  save({{"epoch", 9}, {"loss", 2}, {"acc", 1}}, savepoint::SaveOptions().pinned(true));  // integers
  save({{"epoch", 10}, {"loss", 0.75}, {"acc", 0.5}});
  // meta.json's checksum covers nlohmann's dump: Python must reproduce it for every kind of
  // string and number (escapes, UTF-8, exponents, -0.0, 1/3, the largest unsigned integer).
  save({{"note", "h\u00e9llo \"q\" \\ \x01\t \U0001F600 /"}, {"tiny", 1e-7}, {"big", 1e17}, {"fifteen", 1e15},
        {"neg_zero", -0.0}, {"third", 1.0 / 3}, {"int", -5}, {"u64", std::uint64_t{18446744073709551615ULL}},
        {"nested", {{"b", {1, 2.5, nullptr, false}}, {"a", json::object()}}}});

  auto epoch_or_nan = [](const savepoint::Checkpoint& c) {
    const auto it = c.meta.find("epoch");
    return it == c.meta.end() ? NAN : -it->get<double>();
  };
  auto even = [](const savepoint::Checkpoint& c) { return c.meta.value("epoch", 1) % 2 == 0; };
  auto names = [](const std::vector<savepoint::Checkpoint>& cs) {
    json out = json::array();
    for (const auto& c : cs) out.push_back(c.name());
    return out;
  };
  json expected;
  expected["list"] = names(ckpt.list_checkpoints());
  expected["rank"]["most_recent"] = names(ckpt.find_checkpoints());
  expected["rank"]["min_loss"] = names(ckpt.find_checkpoints(savepoint::min_key("loss")));
  expected["rank"]["max_acc"] = names(ckpt.find_checkpoints(savepoint::max_key("acc")));
  expected["rank"]["min_loss_end_of_epoch"] = names(ckpt.find_checkpoints(
      savepoint::min_key("loss").where([](const savepoint::Checkpoint& c) { return c.end_of_epoch(); })));
  expected["rank"]["importance_minus_epoch"] = names(ckpt.find_checkpoints(savepoint::importance_key(epoch_or_nan)));
  expected["rank"]["where_even_epoch"] = names(ckpt.find_checkpoints(savepoint::where(even)));
  expected["delete"]["keep1_min_loss"] = names(ckpt.plan_deletions(savepoint::keep(1).min_key("loss")));
  expected["delete"]["keep2_max_acc_no_recent"] =
      names(ckpt.plan_deletions(savepoint::keep(2).max_key("acc").keep_recent(false)));
  expected["delete"]["keep0"] = names(ckpt.plan_deletions(savepoint::keep(0)));
  expected["delete"]["keep1_even_may_go"] = names(ckpt.plan_deletions(savepoint::keep(1).predicate(even)));
  expected["delete"]["keep1_importance"] =
      names(ckpt.plan_deletions(savepoint::keep(1).importance_key(epoch_or_nan).keep_recent(false)));
  expected["delete"]["keep1_importance_release_newest"] = names(
      ckpt.plan_deletions(savepoint::keep(1).importance_key(epoch_or_nan).keep_recent(false).keep_newest(false)));
  expected["delete"]["keep2_min_loss_max_acc"] =
      names(ckpt.plan_deletions(savepoint::keep(2).min_key("loss").max_key("acc")));
  std::ofstream(root / "expected.json") << expected.dump(1) << "\n";
}

// A frozen backbone split into segments and a head that changes between the two saves.
void write_incremental_case(const fs::path& root) {
  torch::manual_seed(7);
  auto model = std::make_shared<torch::nn::Module>();
  auto backbone = model->register_parameter("backbone", torch::randn({100, 25}), false);
  auto head = model->register_parameter("head", torch::randn({3, 5}), false);
  auto steps = model->register_buffer("steps", torch::zeros({1}, torch::kInt64));
  // full_save_every(0): the second save shares the backbone's parts with the first (no bound to keep).
  savepoint::Checkpointer ckpt(root, savepoint::CheckpointerOptions().incremental(true).full_save_every(0).part_bytes(4000));
  ckpt.add_recoverable("model", model);
  json expected;
  for (const char* name : {"first", "second"}) {
    ckpt.save_checkpoint({{"which", name}}, savepoint::named(name));
    expected[name] = {{"backbone", values(backbone)}, {"head", values(head)}, {"steps", values(steps)}};
    torch::NoGradGuard no_grad;
    head.add_(1.0);
    steps.add_(1);
  }
  std::ofstream(root / "expected.json") << expected.dump(1) << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: savepoint_python_fixtures <out-dir>\n";
    return 2;
  }
  const fs::path out = argv[1];
  fs::remove_all(out);
  fs::create_directories(out);
  torch::set_num_threads(1);
  using namespace torch::optim;
  write_optimizer_case<Adam>(out / "Adam", "Adam", AdamOptions(0.01).betas({0.8, 0.95}).weight_decay(1e-3),
                             AdamOptions(0.05).amsgrad(true).eps(1e-6));
  write_optimizer_case<AdamW>(out / "AdamW", "AdamW", AdamWOptions(0.01).weight_decay(0.05),
                              AdamWOptions(0.02).amsgrad(true));
  write_optimizer_case<SGD>(out / "SGD", "SGD", SGDOptions(0.05).momentum(0.9).nesterov(true),
                            SGDOptions(0.1).momentum(0.5).dampening(0.1).weight_decay(1e-3));
  write_optimizer_case<Adagrad>(out / "Adagrad", "Adagrad",
                                AdagradOptions(0.05).lr_decay(0.01).initial_accumulator_value(0.1),
                                AdagradOptions(0.1).weight_decay(1e-3));
  write_optimizer_case<RMSprop>(out / "RMSprop", "RMSprop", RMSpropOptions(0.01).momentum(0.5).centered(true),
                                RMSpropOptions(0.02).alpha(0.9).weight_decay(1e-3));
  write_selection_case(out / "selection");
  write_incremental_case(out / "incremental");
  std::cout << "wrote fixtures to " << out.string() << "\n";
  return 0;
}
