// Transfer modes: strict, non-strict, by order, prefix and renames, several sources in one
// call, verification of every source. The guide's "Transfer learning" snippets are here.
#include "torch_support.hpp"

#include <savepoint/pytorch.hpp>
#include <savepoint/transfer.hpp>

#include <torch/torch.h>

#include <sstream>

using namespace savepoint;
using test::TempDir;

namespace {
// A model whose backbone is test::Net and whose head is a Linear: "backbone.fc1.weight", ...
struct Big : torch::nn::Module {
  Big() {
    backbone = register_module("backbone", std::make_shared<test::Net>());
    head = register_module("head", torch::nn::Linear(2, 3));
  }
  std::shared_ptr<test::Net> backbone;
  torch::nn::Linear head{nullptr};
};

std::vector<torch::Tensor> snapshot(torch::nn::Module& m) {
  std::vector<torch::Tensor> out;
  for (const auto& t : m.parameters()) out.push_back(t.detach().clone());
  for (const auto& t : m.buffers()) out.push_back(t.detach().clone());
  return out;
}
bool unchanged(torch::nn::Module& m, const std::vector<torch::Tensor>& before) {
  std::size_t i = 0;
  for (const auto& t : m.parameters())
    if (!torch::equal(t, before.at(i++))) return false;
  for (const auto& t : m.buffers())
    if (!torch::equal(t, before.at(i++))) return false;
  return true;
}
}  // namespace

TEST_CASE("a strict transfer loads every tensor when names and shapes all match", "[transfer]") {
  TempDir dir;
  auto pretrained = std::make_shared<test::Net>();
  Checkpointer ckpt(dir.path(), {{"model", pretrained}});
  const Checkpoint best = ckpt.save_checkpoint();
  auto finetune = std::make_shared<test::Net>();
  const auto report = transfer(*finetune, {best, "model"}, TransferMode::strict);
  CHECK(report.complete());
  CHECK(report.loaded.size() == 9);  // 6 parameters, 3 BatchNorm buffers
  CHECK(test::same_state(*finetune, *pretrained));
  CHECK(report.source.find("key 'model'") != std::string::npos);
}

TEST_CASE("a strict transfer that finds one difference loads nothing and says why", "[transfer]") {
  TempDir dir;
  auto pretrained = std::make_shared<test::Net>(4, 8, 2);
  Checkpointer ckpt(dir.path(), {{"model", pretrained}});
  const Checkpoint best = ckpt.save_checkpoint();
  auto other = std::make_shared<test::Net>(4, 8, 3);  // another head size
  const auto before = snapshot(*other);
  try {
    transfer(*other, {best, "model"}, TransferMode::strict);
    FAIL("a strict transfer with mismatched shapes must throw");
  } catch (const TransferError& e) {
    CHECK(e.report().mismatched == std::vector<std::string>{"fc2.weight", "fc2.bias"});
    CHECK(e.report().why.at("fc2.weight") == "Float [2, 8] in the source, Float [3, 8] in the module");
    CHECK(std::string(e.what()).find("nothing was loaded") != std::string::npos);
    CHECK(e.path() == best.path / best.file("model")->file);
  }
  CHECK(unchanged(*other, before));  // fc1 and bn matched, and were still not loaded
  // Non-strict loads what matches and reports the rest.
  const auto report = transfer(*other, {best, "model"});
  CHECK(report.mismatched.size() == 2);
  CHECK(report.loaded.size() == 7);
  CHECK(torch::equal(other->fc1->weight, pretrained->fc1->weight));
  CHECK_FALSE(unchanged(*other, before));
}

TEST_CASE("a strict transfer refuses names the module does not have", "[transfer]") {
  TempDir dir;
  torch::nn::Linear with_bias(3, 2);
  save_pytorch(dir / "lin.pt", *with_bias);
  torch::nn::Linear without_bias(torch::nn::LinearOptions(3, 2).bias(false));
  const auto before = snapshot(*without_bias);
  CHECK_THROWS_AS(transfer(*without_bias, dir / "lin.pt", TransferMode::strict), TransferError);
  CHECK(unchanged(*without_bias, before));
  const auto report = transfer(*without_bias, dir / "lin.pt");
  CHECK(report.loaded == std::vector<std::string>{"weight"});
  CHECK(report.unexpected == std::vector<std::string>{"bias"});
  CHECK(torch::equal(without_bias->weight, with_bias->weight));
}

TEST_CASE("by order pairs tensors whose names differ, and refuses when shapes disagree", "[transfer]") {
  TempDir dir;
  const auto kernel = torch::randn({2, 3}), offset = torch::randn({2});
  save_pytorch(dir / "renamed.pt", NamedTensors{{"dense.kernel", kernel}, {"dense.offset", offset}});
  torch::nn::Linear lin(3, 2);
  const auto report = transfer(*lin, dir / "renamed.pt", TransferMode::by_order);
  CHECK(report.loaded == std::vector<std::string>{"weight", "bias"});
  CHECK(report.from.at("weight") == "dense.kernel");
  CHECK(torch::equal(lin->weight, kernel));
  CHECK(torch::equal(lin->bias, offset));

  torch::nn::Linear wider(4, 2);
  const auto before = snapshot(*wider);
  try {
    transfer(*wider, dir / "renamed.pt", TransferMode::by_order);
    FAIL("by_order with a shape difference must throw");
  } catch (const TransferError& e) {
    CHECK(e.report().mismatched == std::vector<std::string>{"weight"});
    CHECK(e.report().loaded == std::vector<std::string>{"bias"});  // would have matched; not loaded
  }
  CHECK(unchanged(*wider, before));
  torch::nn::Linear no_bias(torch::nn::LinearOptions(3, 2).bias(false));  // counts differ
  CHECK_THROWS_AS(transfer(*no_bias, dir / "renamed.pt", TransferMode::by_order), TransferError);
}

TEST_CASE("a prefix loads a backbone into a sub-module, renames strip module. and map old names", "[transfer]") {
  TempDir dir;
  auto big = std::make_shared<Big>();
  Checkpointer ckpt(dir / "ckpts", {{"model", big}});
  const Checkpoint saved = ckpt.save_checkpoint();

  // [snippet:transfer-prefix]
  auto backbone = std::make_shared<test::Net>();
  auto report = savepoint::transfer(*backbone, {saved, "model"},
                                    savepoint::TransferOptions().mode(savepoint::TransferMode::strict).prefix("backbone."));
  // report.loaded: the 9 tensors of backbone.*; report.filtered == 2 (head.weight, head.bias)
  // [/snippet:transfer-prefix]
  CHECK(report.complete());
  CHECK(report.loaded.size() == 9);
  CHECK(report.filtered == 2);
  CHECK(report.from.at("fc1.weight") == "backbone.fc1.weight");
  CHECK(test::same_state(*backbone, *big->backbone));

  // DataParallel's "module." prefix, and a layer renamed since ("fc1." was "first.")
  NamedTensors dp;
  for (const auto& item : big->backbone->named_parameters()) {
    std::string name = item.key();
    if (name.rfind("fc1.", 0) == 0) name = "first." + name.substr(4);
    dp.emplace_back("module." + name, item.value());
  }
  for (const auto& item : big->backbone->named_buffers()) dp.emplace_back("module." + item.key(), item.value());
  save_pytorch(dir / "dp.pt", dp);
  auto net = std::make_shared<test::Net>();
  // [snippet:transfer-rename]
  report = savepoint::transfer(*net, dir / "dp.pt",                 // saved from a DataParallel model
                               savepoint::TransferOptions(savepoint::TransferMode::strict)
                                   .rename("module.", "")           // strip DataParallel's prefix
                                   .rename("first.", "fc1."));      // a layer renamed since
  // [/snippet:transfer-rename]
  CHECK(report.complete());
  CHECK(report.from.at("fc1.weight") == "module.first.weight");
  CHECK(test::same_state(*net, *big->backbone));

  // The whole backbone checkpoint into Big's backbone, by a rename that adds the prefix.
  Checkpointer small(dir / "small", {{"net", net}});
  const Checkpoint net_saved = small.save_checkpoint();
  auto big2 = std::make_shared<Big>();
  report = transfer(*big2, {net_saved, "net"}, TransferOptions().rename("", "backbone."));
  CHECK(report.loaded.size() == 9);
  CHECK(report.missing == std::vector<std::string>{"head.weight", "head.bias"});

  // Two source names renamed onto one module name: a usage error.
  CHECK_THROWS_AS(transfer(*net, dir / "dp.pt", TransferOptions().rename("module.", "").rename("first.", "fc2.")),
                  UsageError);
}

TEST_CASE("one call maps a checkpoint key, a safetensors file and a PyTorch file onto three modules", "[transfer]") {
  TempDir dir;
  auto encoder_src = std::make_shared<test::Net>();
  torch::nn::Linear decoder_src(2, 5), lm_src(5, 5);
  Checkpointer ckpt(dir / "ckpts", {{"encoder", encoder_src}});
  const Checkpoint best = ckpt.save_checkpoint();
  save_tensors(dir / "decoder.safetensors", {{"weight", decoder_src->weight}, {"bias", decoder_src->bias}});
  save_pytorch(dir / "lm.pt", *lm_src);

  // [snippet:transfer-pretrainer]
  auto encoder = std::make_shared<test::Net>();
  torch::nn::Linear decoder(2, 5), lm(5, 5);
  std::vector<savepoint::TransferReport> reports = savepoint::transfer({
      {*encoder, {best, "encoder"}, savepoint::TransferMode::strict},  // a checkpoint key
      {*decoder, dir / "decoder.safetensors"},                        // a safetensors file
      {*lm, dir / "lm.pt"},                                           // Python's torch.save
  });
  for (const auto& report : reports) std::cout << report << "\n";
  // [/snippet:transfer-pretrainer]
  REQUIRE(reports.size() == 3);
  for (const auto& r : reports) CHECK(r.complete());
  CHECK(test::same_state(*encoder, *encoder_src));
  CHECK(torch::equal(decoder->weight, decoder_src->weight));
  CHECK(torch::equal(lm->weight, lm_src->weight));

  // A strict step refused: no module of the call changes, not even the ones before it.
  auto encoder2 = std::make_shared<test::Net>();
  torch::nn::Linear small_lm(5, 4);
  const auto before_enc = snapshot(*encoder2), before_lm = snapshot(*small_lm);
  CHECK_THROWS_WITH(transfer({{*encoder2, {best, "encoder"}}, {*small_lm, dir / "lm.pt", TransferMode::strict}}),
                    Catch::Contains("step 2 of 2") && Catch::Contains("lm.pt"));
  CHECK(unchanged(*encoder2, before_enc));
  CHECK(unchanged(*small_lm, before_lm));

  // A damaged source: nothing changes either, and the error names the file.
  std::string bytes = test::read_file(dir / "lm.pt");
  const auto at = bytes.find(std::string(static_cast<const char*>(lm_src->weight.data_ptr()), 16));
  REQUIRE(at != std::string::npos);
  bytes[at] = static_cast<char>(bytes[at] ^ 0x01);  // a bit of tensor data
  test::write_text(dir / "lm.pt", bytes);
  CHECK_THROWS_AS(transfer({{*encoder2, {best, "encoder"}}, {*lm, dir / "lm.pt"}}), CorruptCheckpointError);
  CHECK(unchanged(*encoder2, before_enc));
}

TEST_CASE("a file inside a checkpoint is verified against meta.json, also given by path", "[transfer]") {
  TempDir dir;
  torch::nn::Linear lin(4, 4);
  Checkpointer ckpt(dir.path(), {{"mdl", lin}});
  const Checkpoint saved = ckpt.save_checkpoint();
  torch::nn::Linear target(4, 4);
  CHECK(transfer(*target, saved.paramfiles.at("mdl")).complete());
  test::flip_byte(saved.paramfiles.at("mdl"), -5);  // a byte of tensor data: the header still parses
  torch::nn::Linear fresh(4, 4);
  const auto before = snapshot(*fresh);
  CHECK_THROWS_WITH(transfer(*fresh, saved.paramfiles.at("mdl")),
                    Catch::Contains("checksum") && Catch::Contains("mdl"));
  CHECK_THROWS_AS(transfer(*fresh, {saved, "mdl"}), CorruptCheckpointError);
  CHECK(unchanged(*fresh, before));
  // A file outside any checkpoint has no checksum to check: it loads as it is.
  save_tensors(dir / "loose.safetensors", {{"weight", lin->weight}, {"bias", lin->bias}});
  CHECK(transfer(*fresh, dir / "loose.safetensors").complete());
}

TEST_CASE("a transfer report prints what was loaded, left out and why", "[transfer]") {
  TempDir dir;
  save_pytorch(dir / "w.pt", NamedTensors{{"weight", torch::zeros({2, 3})}, {"extra", torch::zeros({1})}});
  torch::nn::Linear lin(4, 2);
  test::CaptureLog log;
  const auto report = transfer(*lin, dir / "w.pt");
  std::ostringstream os;
  os << report;
  const std::string text = os.str();
  CHECK(text.find("(non-strict): 0 loaded, 1 missing, 1 unexpected, 1 mismatched") != std::string::npos);
  CHECK(text.find("missing    bias") != std::string::npos);
  CHECK(text.find("unexpected extra") != std::string::npos);
  CHECK(text.find("mismatched weight (Float [2, 3] in the source, Float [2, 4] in the module)") != std::string::npos);
  CHECK(log.contains("'extra' has no place in the module"));

  NamedTensors many;
  for (int i = 0; i < 25; ++i) many.emplace_back("t" + std::to_string(i), torch::zeros({1}));
  save_pytorch(dir / "many.pt", many);
  const auto long_text = to_string(transfer(*lin, dir / "many.pt"));
  CHECK(long_text.find("unexpected t19\n  unexpected ... and 5 more") != std::string::npos);
  CHECK(long_text.find("t20") == std::string::npos);
}

TEST_CASE("a checkpoint key that holds no tensors is a usage error, not damage", "[transfer]") {
  TempDir dir;
  savepoint::EpochCounter epochs(3);
  Checkpointer ckpt(dir.path(), {{"epochs", epochs}});
  const Checkpoint saved = ckpt.save_checkpoint();
  torch::nn::Linear lin(1, 1);
  CHECK_THROWS_WITH(transfer(*lin, {saved, "epochs"}),
                    Catch::Contains("key 'epochs'") && Catch::Contains("no tensors"));
  CHECK_THROWS_AS(transfer(*lin, {saved, "epochs"}), UsageError);
  CHECK_THROWS_AS(transfer(*lin, {saved, "nope"}), MissingKeyError);
}

TEST_CASE("the guide's transfer snippet: the nutshell's model into the same model", "[transfer]") {
  TempDir dir;
  torch::nn::Linear model(torch::nn::LinearOptions(1, 1).bias(false));  // examples/nutshell.cpp
  Checkpointer checkpointer(dir.path(), {{"mdl", model}});
  checkpointer.save_checkpoint({{"loss", 1.0}});
  const auto checkpoint_dir = dir.path();
  savepoint::Checkpointer finder(checkpoint_dir, savepoint::CheckpointerOptions().read_only(true));
  auto best = finder.find_checkpoint(savepoint::min_key("loss"));
  torch::nn::Linear finetune(torch::nn::LinearOptions(1, 1).bias(false));
  auto report = savepoint::transfer(*finetune, {*best, "mdl"});
  // report.loaded == {"weight"}; nothing missing or unexpected: the models are the same
  CHECK(report.loaded == std::vector<std::string>{"weight"});
  CHECK(report.complete());
}

TEST_CASE("the guide's PyTorch files snippet", "[transfer][pytorch]") {
  TempDir dir;
  auto net = std::make_shared<test::Net>();
  Checkpointer ckpt(dir / "ckpts", {{"model", net}});
  const auto best = std::make_optional(ckpt.save_checkpoint());
  save_pytorch(dir / "model.pt", *std::make_shared<test::Net>());  // as Python would have
  // [snippet:pytorch-files]
  auto report = savepoint::transfer(*net, dir / "model.pt", savepoint::TransferMode::strict);  // into a module
  auto file = savepoint::load_pytorch(dir / "model.pt");  // or as tensors, in the state_dict's order
  savepoint::save_pytorch(dir / "for_python.pt", *net);   // Python: model.load_state_dict(torch.load(f))
  savepoint::save_pytorch(dir / "best.pt", *best, "model");  // a checkpoint key, verified first
  // [/snippet:pytorch-files]
  CHECK(report.complete());
  CHECK(file.tensors.size() == 9);
  CHECK(file.tensors.front().first == "fc1.weight");
  CHECK(file.tensors.at(4).first == "bn.running_mean");  // Python's order: bn's parameters, then its buffers
  CHECK(load_pytorch(dir / "best.pt").tensors.size() == 9);
}
