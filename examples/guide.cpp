// The code of docs/guide.md. Every ```cpp block of the guide is one region of this file,
// between "// [snippet:NAME]" and "// [/snippet:NAME]" (scripts/check-snippets.py checks that
// the texts are the same), and ctest runs this program, so the guide's code compiles and runs.
//   guide <work-dir>
#include <savepoint/savepoint.hpp>

#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <iostream>
#include <map>
#include <stdexcept>
#include <vector>

namespace fs = std::filesystem;

namespace {

double train_one_epoch(torch::nn::Linear& model, torch::optim::Optimizer& optimizer) {
  auto loss = (model(torch::ones({1})) - torch::ones({1})).pow(2).sum();
  optimizer.zero_grad();
  loss.backward();
  optimizer.step();
  return loss.item<double>();
}

void nutshell(const fs::path& dir) {
  fs::current_path(dir);
  // [snippet:nutshell]
  torch::nn::Linear model(torch::nn::LinearOptions(1, 1).bias(false));
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1.0));
  savepoint::EpochCounter epoch_counter(10);
  savepoint::Checkpointer checkpointer("nutshell_checkpoints",
                                       {{"mdl", model}, {"opt", optimizer}, {"epochs", epoch_counter}});
  checkpointer.recover_if_possible();
  for (auto epoch : epoch_counter) {
    double loss = train_one_epoch(model, optimizer);
    checkpointer.save_and_keep_only({{"epoch", epoch}, {"loss", loss}}, savepoint::keep(1).min_key("loss"));
  }
  checkpointer.recover_if_possible(savepoint::min_key("loss"));
  // [/snippet:nutshell]
}

void checkpoint_contents(const fs::path& dir) {
  fs::current_path(dir);
  torch::nn::Linear model(2, 2);
  torch::optim::SGD optimizer(model->parameters(), 0.1);
  savepoint::EpochCounter epoch_counter(5);
  // [snippet:checkpoint-contents]
  savepoint::Checkpointer checkpointer("full_example_checkpoints");
  checkpointer.add_recoverable("mdl", model);
  checkpointer.add_recoverables({{"opt", optimizer}, {"epoch", epoch_counter}});
  savepoint::Checkpoint ckpt = checkpointer.save_checkpoint();
  std::cout << ckpt.path << "\n";                            // .../CKPT+2026-11-23+18-56-00+00
  for (auto& [key, file] : ckpt.paramfiles) std::cout << key << " -> " << file << "\n";
  // [/snippet:checkpoint-contents]
}

void runtime_registry(const fs::path& dir) {
  // [snippet:registry-map]
  std::map<std::string, torch::nn::Linear> heads;  // decided at run time
  for (const std::string task : {"speaker", "language", "emotion"}) heads.emplace(task, torch::nn::Linear(16, 4));
  savepoint::Checkpointer checkpointer(dir / "multi_head");
  checkpointer.add_recoverables(heads);  // any range of (key, object) pairs
  // [/snippet:registry-map]
  checkpointer.save_checkpoint();
}

// [snippet:duck-members]
struct Duck {
  int quacks = 0;
  void save(const std::filesystem::path& p) const { std::ofstream(p) << quacks; }
  void load(const std::filesystem::path& p, bool /*end_of_epoch*/) { std::ifstream(p) >> quacks; }
};
// [/snippet:duck-members]

struct Goose {
  int honks = 0;
};

void hooks(const fs::path& dir) {
  // [snippet:duck-register]
  savepoint::register_hooks<Goose>("zoo.Goose",
      [](const Goose& g, const std::filesystem::path& p) { std::ofstream(p) << g.honks; },
      [](Goose& g, const std::filesystem::path& p, bool /*end_of_epoch*/) { std::ifstream(p) >> g.honks; });
  // [/snippet:duck-register]
  Duck duck{3};
  Goose goose{4};
  savepoint::Checkpointer checkpointer(dir / "zoo", {{"duck", duck}, {"goose", goose}});
  checkpointer.save_checkpoint();
}

struct Herd {
  torch::Tensor positions = torch::zeros({3, 2});
  int count = 3;
};

void payload_hooks() {
  // [snippet:payload-hooks]
  savepoint::TypeHooks h;
  h.name = "zoo.Herd";
  h.extension = ".safetensors";
  h.save = [](void* obj, const savepoint::SaveContext&) {
    const auto& herd = *static_cast<Herd*>(obj);
    return savepoint::tensor_payload({{"positions", herd.positions}}, {{"count", std::to_string(herd.count)}});
  };
  h.prepare_load = [](void* obj, const savepoint::LoadContext& ctx) -> savepoint::Apply {
    auto file = savepoint::load_tensors(ctx.file);          // already verified against meta.json
    return [obj, file] { /* assign only: nothing may fail here */ };
  };
  savepoint::hook_table().add<Herd>(std::move(h));
  // [/snippet:payload-hooks]
}

void meta_and_selectors(const fs::path& dir) {
  int state = 0;
  savepoint::Checkpointer checkpointer(dir / "meta", {{"state", state}});
  // [snippet:meta]
  checkpointer.save_checkpoint({{"loss", 15.5}, {"validation-type", "fast"}, {"num-examples", 3}});
  checkpointer.save_checkpoint({{"loss", 14.4}, {"validation-type", "full"}});
  auto ckpt = checkpointer.recover_if_possible(savepoint::min_key("loss"));
  double lowest = ckpt->metric("loss").value();  // 14.4
  // [/snippet:meta]
  std::cout << "lowest loss " << lowest << "\n";
  // [snippet:selectors]
  auto fast = [](const savepoint::Checkpoint& c) { return c.meta_value<std::string>("validation-type") == "fast"; };
  checkpointer.recover_if_possible(
      savepoint::importance_key([](const savepoint::Checkpoint& c) {
        auto loss = c.metric("loss"), examples = c.metric("num-examples");  // nullopt when absent
        return loss && examples ? -*loss / *examples : NAN;                 // NaN ranks last
      }).where(fast));
  // [/snippet:selectors]

  // [snippet:keep-predicate]
  auto full = [](const savepoint::Checkpoint& c) { return c.meta_value<std::string>("validation-type") == "full"; };
  checkpointer.delete_checkpoints(savepoint::keep(1).predicate(
      [](const savepoint::Checkpoint& c) { return !c.meta.contains("validation-type"); }));
  checkpointer.save_and_keep_only({{"loss", 13.1}, {"validation-type", "full"}},
                                  savepoint::keep(2).predicate(full));
  // [/snippet:keep-predicate]
}

void keep_policies(savepoint::Checkpointer& ckpt) {
  const nlohmann::json meta = {{"epoch", 10}};
  // [snippet:keep-policies]
  ckpt.save_and_keep_only(meta, savepoint::keep_latest(3) | savepoint::keep_every_nth_epoch(10));
  // combined with SpeechBrain's rules:
  ckpt.save_and_keep_only(meta, savepoint::keep(2).min_key("loss") | savepoint::keep_epochs({5}));
  // [/snippet:keep-policies]
}

std::vector<double> losses_on_disk(const savepoint::Checkpointer& ckpt) {
  std::vector<double> out;
  for (const auto& c : ckpt.list_checkpoints()) out.push_back(c.metric("loss").value());
  return out;  // oldest first
}

// Which checkpoints keep(2).min_key("loss") leaves after three saves, and how to keep exactly
// the 2 best: the guide states the survivors, and this throws if they are other ones.
void keep_three_saves(const fs::path& dir) {
  int state = 0;
  savepoint::Checkpointer ckpt(dir / "keep-2-min-loss", {{"state", state}});
  savepoint::Checkpointer best(dir / "keep-2-best", {{"state", state}});
  // [snippet:keep-three-saves]
  for (double loss : {0.3, 0.4, 0.5}) {  // each save worse than the one before
    ckpt.save_and_keep_only({{"loss", loss}}, savepoint::keep(2).min_key("loss"));
    best.save_and_keep_only({{"loss", loss}}, savepoint::keep_best(2, savepoint::min_key("loss")).keep_newest(false));
  }
  // ckpt keeps 0.3, 0.4, 0.5: the 2 lowest losses (0.3, 0.4) and the 2 newest (0.4, 0.5)
  // best keeps 0.3, 0.4:      exactly the 2 best; 0.5 is deleted by the call that saved it
  // [/snippet:keep-three-saves]
  savepoint::Checkpointer other(dir / "keep-2-min-loss-other-order", {{"state", state}});
  for (double loss : {0.5, 0.3, 0.4}) other.save_and_keep_only({{"loss", loss}}, savepoint::keep(2).min_key("loss"));
  if (losses_on_disk(ckpt) != std::vector<double>{0.3, 0.4, 0.5} || losses_on_disk(best) != std::vector<double>{0.3, 0.4} ||
      losses_on_disk(other) != std::vector<double>{0.3, 0.4}) {
    throw std::runtime_error("guide: the three saves left other checkpoints than docs/guide.md says");
  }
}

void read_without_copy(const fs::path& dir) {
  auto net = torch::nn::Linear(4, 2);
  savepoint::Checkpointer writer(dir / "mapped", {{"model", net}});
  writer.save_checkpoint({{"loss", 0.5}});
  savepoint::Checkpointer finder(dir / "mapped", savepoint::CheckpointerOptions().read_only(true));
  // [snippet:map-mode]
  auto best = finder.find_checkpoint(savepoint::min_key("loss"));
  auto weights = savepoint::load_tensors(*best, "model", savepoint::ReadMode::map);  // verified first
  for (auto& [name, tensor] : weights.tensors) std::cout << name << " " << tensor.sizes() << "\n";  // views of the file
  // [/snippet:map-mode]
}

void transfer(const fs::path& dir) {
  torch::nn::Linear pretrained(torch::nn::LinearOptions(1, 1).bias(true));
  savepoint::Checkpointer(dir / "pretrained", {{"mdl", pretrained}}).save_checkpoint({{"loss", 0.1}});
  const fs::path checkpoint_dir = dir / "pretrained";
  // [snippet:transfer]
  savepoint::Checkpointer finder(checkpoint_dir, savepoint::CheckpointerOptions().read_only(true));
  auto best = finder.find_checkpoint(savepoint::min_key("loss"));  // holds "weight" and "bias"
  torch::nn::Linear finetune(torch::nn::LinearOptions(1, 1).bias(false));
  auto report = savepoint::transfer(*finetune, {*best, "mdl"});
  // report.loaded == {"weight"}, report.unexpected == {"bias"}
  // [/snippet:transfer]
  if (report.loaded != std::vector<std::string>{"weight"} || report.unexpected != std::vector<std::string>{"bias"})
    throw std::runtime_error("the guide's transfer report is wrong");
}

struct Mlp : torch::nn::Module {
  Mlp() : fc(register_module("fc", torch::nn::Linear(8, 1))) {}
  torch::Tensor forward(torch::Tensor x) { return fc(x); }
  torch::nn::Linear fc;
};

int training_loop(const fs::path& dir) {
  fs::current_path(dir);
  const int64_t dataset_size = 64, batch_size = 16;
  const auto x = torch::randn({dataset_size, 8}), y = torch::randn({dataset_size, 1});
  auto net = std::make_shared<Mlp>();
  torch::optim::Adam opt(net->parameters(), 0.01);
  torch::optim::StepLR sched(opt, 2, 0.5);
  int64_t global_step = 0;
  auto train_step = [&](const std::vector<size_t>& indices) {
    const auto idx = torch::tensor(std::vector<int64_t>(indices.begin(), indices.end()));
    opt.zero_grad();
    torch::mse_loss(net->forward(x.index_select(0, idx)), y.index_select(0, idx)).backward();
    opt.step();
    ++global_step;
  };
  auto validate = [&] { return torch::mse_loss(net->forward(x), y).item<double>(); };
  // [snippet:training-loop]
  torch::data::samplers::RandomSampler sampler(dataset_size);
  savepoint::EpochCounter epochs(30);
  savepoint::DataPosition position;
  savepoint::TorchRngState rng;
  savepoint::Checkpointer ckpt("runs/exp1/save");
  ckpt.add_recoverables({{"model", net}, {"optimizer", opt}, {"scheduler", sched}, {"epochs", epochs},
                         {"sampler", sampler}, {"position", position}, {"rng", rng}});
  savepoint::IntervalSaver saver(ckpt, savepoint::IntervalOptions().every_steps(500).every_minutes(30));
  ckpt.recover_if_possible();

  for (auto epoch : epochs) {
    if (position.begin_epoch(epoch)) sampler.reset();  // false: resuming this epoch mid-way
    while (auto indices = sampler.next(batch_size)) {
      train_step(*indices);
      position.advance();
      saver.after_step({{"step", global_step}});       // saves when due
      if (saver.preempted()) return 0;                 // SIGTERM/SIGUSR1: saved, exit cleanly
    }
    sched.step();
    saver.save_end_of_epoch({{"epoch", epoch}, {"val_loss", validate()}},
                            savepoint::keep_latest(2) | savepoint::keep_best(2, savepoint::min_key("val_loss")));
  }
  ckpt.load_best(savepoint::min_key("val_loss"));      // evaluate with the best model
  // [/snippet:training-loop]
  return 0;
}

void background(const fs::path& dir) {
  int state = 1;
  savepoint::Checkpointer ckpt(dir / "async", {{"state", state}});
  const int epoch = 1;
  const double loss = 0.5;
  // [snippet:async]
  ckpt.save_and_keep_only_async({{"epoch", epoch}, {"loss", loss}}, savepoint::keep_latest(2));
  // ... training continues at once ...
  ckpt.wait();   // optional: the next save waits anyway; rethrows a background failure
  // [/snippet:async]
}

void overlapped(const fs::path& dir) {
  torch::nn::Linear model(4, 2);
  torch::optim::Adam opt(model->parameters(), 1e-3);
  auto batch = [] { return torch::randn({8, 4}); };
  // [snippet:overlapped]
  savepoint::Checkpointer ckpt(dir / "overlapped", {{"model", model}, {"opt", opt}},
      savepoint::CheckpointerOptions().async_snapshot(savepoint::AsyncSnapshot::overlapped));
  for (int step = 1; step <= 3; ++step) {
    if (step % 2 == 0) ckpt.save_checkpoint_async({{"step", step}});  // returns after the hooks
    opt.zero_grad();
    model->forward(batch()).pow(2).mean().backward();  // the copy runs meanwhile
    ckpt.before_update();  // waits only for what is not copied yet
    opt.step();            // the saved tensors may change now
  }
  ckpt.wait();
  // [/snippet:overlapped]
}

void incremental(const fs::path& dir) {
  torch::nn::Sequential model(torch::nn::Linear(64, 64), torch::nn::ReLU(), torch::nn::Linear(64, 4));
  for (auto& p : model[0]->parameters()) p.set_requires_grad(false);  // a frozen backbone
  torch::optim::SGD opt(model[2]->parameters(), 0.1);
  // [snippet:incremental]
  savepoint::Checkpointer ckpt(dir / "finetune", {{"model", model}, {"opt", opt}},
      savepoint::CheckpointerOptions().incremental(true));
  for (int epoch = 1; epoch <= 3; ++epoch) {
    opt.zero_grad();
    model->forward(torch::randn({8, 64})).pow(2).mean().backward();
    opt.step();
    ckpt.save_and_keep_only({{"epoch", epoch}}, savepoint::keep_latest(2));  // from the 3rd: the head only
  }
  // [/snippet:incremental]
  const auto newest = ckpt.find_checkpoint();
  if (!newest || newest->files.size() < 2) throw std::runtime_error("guide: no incremental checkpoint");
  // [snippet:scrub]
  auto report = ckpt.scrub_in_background();           // std::future<savepoint::ScrubReport>
  // ... train ...
  for (const auto& d : report.get().damaged) std::cerr << d.file << ": " << d.reason << "\n";
  // [/snippet:scrub]
  if (!ckpt.scrub().clean()) throw std::runtime_error("guide: scrub found damage in a fresh run");
}

void averaging(const fs::path& dir) {
  torch::nn::Linear model(4, 2);
  savepoint::Checkpointer ckpt(dir / "avg", {{"model", model}});
  for (int epoch = 1; epoch <= 6; ++epoch) {
    torch::NoGradGuard no_grad;
    model->weight.add_(0.1);
    ckpt.save_checkpoint({{"epoch", epoch}, {"val_loss", 1.0 / epoch}});
  }
  // [snippet:average]
  // The last 5 checkpoints, or the 5 best by any selector (with a predicate):
  auto last5 = ckpt.find_checkpoints(savepoint::most_recent(), 5);
  auto best5 = ckpt.find_checkpoints(
      savepoint::min_key("val_loss").where([](const savepoint::Checkpoint& c) { return c.end_of_epoch(); }), 5);
  // Into the module (verified, all or nothing), as a checkpoint of its own, or as one file:
  savepoint::AverageReport report = savepoint::load_average(*model, best5, "model");
  ckpt.save_checkpoint({{"averaged_over", report.checkpoints.size()}}, savepoint::named("average"));
  savepoint::write_average(last5, "model", "model-last5.safetensors");
  // [/snippet:average]
}

void ema(const fs::path& dir) {
  auto model = std::make_shared<Mlp>();
  torch::optim::Adam optimizer(model->parameters(), 0.01);
  const auto x = torch::randn({32, 8}), y = torch::randn({32, 1});
  // [snippet:ema]
  savepoint::ModuleEMA ema(*model, savepoint::EMAOptions().decay(0.999).warmup(2000));
  savepoint::Checkpointer ckpt(dir / "ema", {{"model", model}, {"optimizer", optimizer}, {"ema", ema}});
  ckpt.recover_if_possible();  // the model, the optimizer and the EMA with its update count
  for (int step = 0; step < 100; ++step) {
    optimizer.zero_grad();
    torch::mse_loss(model->forward(x), y).backward();
    optimizer.step();
    ema.update(*model);  // after every optimizer step
  }
  ckpt.save_checkpoint({{"loss", torch::mse_loss(model->forward(x), y).item<double>()}});

  Mlp evaluation;  // the EMA weights when the checkpoint has them, else the model's
  std::string used = savepoint::load_for_evaluation(evaluation, *ckpt.find_checkpoint(savepoint::min_key("loss")));
  // [/snippet:ema]
  if (used != "ema") throw std::runtime_error("load_for_evaluation did not prefer the EMA");
}

void bundles(const fs::path& dir) {
  auto model = std::make_shared<Mlp>();
  savepoint::Checkpointer ckpt(dir / "bundle", {{"model", model}});
  ckpt.save_checkpoint({{"loss", 0.25}});
  // [snippet:bundle-write]
  savepoint::write_bundle(*ckpt.find_checkpoint(savepoint::min_key("loss")), "model.spb");
  // [/snippet:bundle-write]
  std::ifstream in("model.spb", std::ios::binary);
  const std::string file_bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto* model_spb = reinterpret_cast<const unsigned char*>(file_bytes.data());
  const auto model_spb_len = static_cast<unsigned int>(file_bytes.size());
  auto net = std::make_shared<Mlp>();
  // [snippet:bundle-load]
  // From a file:
  savepoint::Bundle::open("model.spb").load({{"model", net}});
  // From memory: `xxd -i model.spb > model_spb.h` defines model_spb and model_spb_len.
  auto bundle = savepoint::Bundle::view({reinterpret_cast<const char*>(model_spb), model_spb_len});
  bundle.load({{"model", net}});  // verified first: a damaged bundle loads nothing
  // [/snippet:bundle-load]
}

// [snippet:scheduler-subclass]
struct WarmupThenConstant : torch::optim::LRScheduler {  // its whole state is the step count
  WarmupThenConstant(torch::optim::Optimizer& opt, unsigned warmup) : LRScheduler(opt), warmup_(warmup) {}
  std::vector<double> get_lrs() override { return get_current_lrs(); }
  unsigned warmup_;  // a constructor argument, not state
};
// [/snippet:scheduler-subclass]

void schedulers(const fs::path& dir) {
  torch::nn::Linear model(2, 2);
  torch::optim::SGD optimizer(model->parameters(), 0.1);
  WarmupThenConstant sched(optimizer, 10);
  // [snippet:scheduler-register]
  savepoint::register_step_count_scheduler<WarmupThenConstant>();  // once, before saving
  savepoint::Checkpointer ckpt(dir / "sched", {{"optimizer", optimizer}, {"scheduler", sched}});
  // [/snippet:scheduler-register]
  ckpt.save_checkpoint();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: guide <empty work directory>\n";
    return 2;
  }
  const fs::path dir = fs::absolute(argv[1]);
  fs::create_directories(dir);
  torch::manual_seed(0);
  nutshell(dir);
  checkpoint_contents(dir);
  runtime_registry(dir);
  hooks(dir);
  payload_hooks();
  meta_and_selectors(dir);
  {
    int state = 0;
    savepoint::Checkpointer ckpt(dir / "policies", {{"state", state}});
    keep_policies(ckpt);
  }
  keep_three_saves(dir);
  read_without_copy(dir);
  transfer(dir);
  if (training_loop(dir) != 0) return 1;
  background(dir);
  overlapped(dir);
  incremental(dir);
  fs::current_path(dir);
  averaging(dir);
  ema(dir);
  bundles(dir);
  schedulers(dir);
  std::cout << "guide: every snippet ran\n";
  return 0;
}
