// The golden checkpoint of format version 1 (tests/golden/v1, written once by
// tests/golden/generate_v1.cpp): this build must still read it, to the same values. If a
// change makes this test fail, the on-disk format changed: bump format_version
// (include/savepoint/config.hpp) and keep a reader for version 1. See tests/golden/README.md.
#include "golden/golden_v1.hpp"
#include "torch_support.hpp"

#include "catch.hpp"

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <cstdint>
#include <cstring>
#include <sstream>

#ifndef SAVEPOINT_GOLDEN_DIR
#error "SAVEPOINT_GOLDEN_DIR must name tests/golden/v1"
#endif

using namespace savepoint;
using nlohmann::json;
using test::TempDir;
namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kKeys{"model",   "tiny",    "adam",   "adamw",     "sgd",
                                     "adagrad", "rmsprop", "lbfgs",  "scheduler", "epochs",
                                     "sampler", "counts",  "rand_next", "rng"};

// A copy of the golden root (tests never write into the source tree).
fs::path copy_golden(const TempDir& dir) {
  const fs::path root = dir / "root";
  fs::copy(SAVEPOINT_GOLDEN_DIR, root, fs::copy_options::recursive);
  return root;
}
fs::path golden_checkpoint(const fs::path& root) { return root / "CKPT+golden"; }

std::string hex16(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}
std::uint64_t xxh3(const std::string& bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

// The safetensors layout read by hand: u64 little-endian N | N bytes of JSON | data.
struct RawTensorFile {
  std::uint64_t header_length = 0;
  json header;
  std::string data;
};
RawTensorFile read_raw(const fs::path& file) {
  const std::string bytes = test::read_file(file);
  REQUIRE(bytes.size() >= 8);
  RawTensorFile out;
  for (int i = 7; i >= 0; --i) out.header_length = (out.header_length << 8) | static_cast<unsigned char>(bytes[i]);
  REQUIRE(8 + out.header_length <= bytes.size());
  out.header = json::parse(bytes.substr(8, out.header_length));
  out.data = bytes.substr(8 + out.header_length);
  return out;
}
template <class T>
std::vector<T> raw_values(const RawTensorFile& f, const std::string& name) {
  const auto& offsets = f.header.at(name).at("data_offsets");
  const auto begin = offsets[0].get<std::size_t>(), end = offsets[1].get<std::size_t>();
  REQUIRE(end <= f.data.size());
  REQUIRE((end - begin) % sizeof(T) == 0);
  std::vector<T> out((end - begin) / sizeof(T));
  std::memcpy(out.data(), f.data.data() + begin, end - begin);  // x86-64 is little-endian, as the file
  return out;
}

// Same per-parameter state (LibTorch's own operator== per state type: every tensor equal,
// bit for bit, and every counter) and the same param-group options.
template <class State, class Options, class Opt>
void check_same_optimizer(const char* name, Opt& loaded, Opt& rerun) {
  INFO("optimizer " << name);
  REQUIRE(loaded.param_groups().size() == 1);
  CHECK(static_cast<const Options&>(loaded.param_groups()[0].options()) ==
        static_cast<const Options&>(rerun.param_groups()[0].options()));
  const auto& pa = loaded.param_groups()[0].params();
  const auto& pb = rerun.param_groups()[0].params();
  REQUIRE(pa.size() == pb.size());
  CHECK(loaded.state().size() == rerun.state().size());
  CHECK(!rerun.state().empty());
  for (std::size_t i = 0; i < pa.size(); ++i) {
    INFO("parameter " << i);
    const auto ka = test::state_key(loaded.state(), pa[i]);
    const auto kb = test::state_key(rerun.state(), pb[i]);
    REQUIRE(loaded.state().count(ka) == rerun.state().count(kb));
    if (!rerun.state().count(kb)) continue;
    CHECK(static_cast<const State&>(*loaded.state().at(ka)) == static_cast<const State&>(*rerun.state().at(kb)));
  }
}

void check_same_parameters(torch::nn::Module& a, torch::nn::Module& b) {
  auto pb = b.named_parameters();
  REQUIRE(a.named_parameters().size() == pb.size());
  for (const auto& item : a.named_parameters()) {
    INFO(item.key());
    CHECK(torch::equal(item.value(), pb[item.key()]));
  }
}

void check_all_optimizers(golden_v1::Optimizers& loaded, golden_v1::Optimizers& rerun) {
  using namespace torch::optim;
  check_same_optimizer<AdamParamState, AdamOptions>("adam", loaded.adam, rerun.adam);
  check_same_optimizer<AdamWParamState, AdamWOptions>("adamw", loaded.adamw, rerun.adamw);
  check_same_optimizer<SGDParamState, SGDOptions>("sgd", loaded.sgd, rerun.sgd);
  check_same_optimizer<AdagradParamState, AdagradOptions>("adagrad", loaded.adagrad, rerun.adagrad);
  check_same_optimizer<RMSpropParamState, RMSpropOptions>("rmsprop", loaded.rmsprop, rerun.rmsprop);
  check_same_optimizer<LBFGSParamState, LBFGSOptions>("lbfgs", loaded.lbfgs, rerun.lbfgs);
}

double lr(torch::optim::Optimizer& opt) { return opt.param_groups()[0].options().get_lr(); }

}  // namespace

TEST_CASE("golden v1: the checkpoint written by format version 1 loads to its known state", "[golden]") {
  TempDir dir;
  const fs::path root = copy_golden(dir);
  Checkpointer ckpt(root, CheckpointerOptions().read_only(true));

  // ---- the checkpoint as listed
  const auto found = ckpt.find_checkpoint();
  REQUIRE(found);
  CHECK(found->name() == "CKPT+golden");
  CHECK(found->pinned);
  CHECK(found->sequence == 1);
  CHECK(found->end_of_epoch());
  CHECK(found->meta.at("loss") == 0.25);
  CHECK(found->meta.at("epoch") == 3);
  CHECK(found->unixtime() > 1.7e9);
  std::vector<std::string> keys;
  for (const auto& f : found->files) keys.push_back(f.key);
  CHECK(keys == kKeys);
  CHECK(ckpt.verify(*found).empty());
  CHECK(ckpt.unreadable_checkpoints().empty());

  // ---- fresh objects, in states unlike the saved ones
  torch::manual_seed(77);
  auto model = std::make_shared<golden_v1::Net>();  // random init, BN stats 0 / 1 / 0
  auto tiny = std::make_shared<golden_v1::Tiny>();
  {
    torch::NoGradGuard no_grad;
    for (auto& p : tiny->parameters()) p.fill_(9);
  }
  golden_v1::Optimizers opt(*tiny, /*golden=*/false);
  auto epochs = golden_v1::make_epochs();
  torch::data::samplers::RandomSampler sampler(golden_v1::kSamplerSize);  // another order
  std::map<std::string, int> counts;
  torch::Tensor rand_next;  // undefined: the load assigns it
  TorchRngState rng;
  rng.include_cuda = false;

  golden_v1::register_keys(ckpt, model, tiny, opt, epochs, sampler, counts, rand_next, rng);
  ckpt.load_checkpoint(*found);

  // ---- RNG first, before anything else draws: continues where the generator saved it
  const auto drawn = torch::rand({golden_v1::kRngRecorded});
  REQUIRE(rand_next.defined());
  CHECK(rand_next.sizes().vec() == std::vector<std::int64_t>{golden_v1::kRngRecorded});
  CHECK(torch::equal(drawn, rand_next));
  torch::manual_seed(golden_v1::kRngSeed);  // and that is the seeded sequence, advanced by 3
  (void)torch::rand({golden_v1::kRngDrawnBeforeSave});
  CHECK(torch::equal(torch::rand({golden_v1::kRngRecorded}), rand_next));

  // ---- module: parameters by formula, BatchNorm stats after 3 passes (all exact dyadics).
  // Pass k feeds (arange(6).reshape(2, 3) - 2) * (k + 1); with momentum 1/2 from (0, 1):
  // running_mean = (-3, -11/64, 85/32, 351/64), running_var = (3647/16, 3677/256, 3653/64, 91157/256)
  // (unbiased batch variance; computed with exact fractions by hand, not by LibTorch).
  CHECK(torch::equal(model->fc->weight, torch::tensor({{-1.25f, -1.0f, -0.75f},
                                                       {-0.5f, -0.25f, 0.0f},
                                                       {0.25f, 0.5f, 0.75f},
                                                       {1.0f, 1.25f, 1.5f}})));
  CHECK(torch::equal(model->fc->bias, torch::tensor({-1.0f, -0.5f, 0.0f, 0.5f})));
  CHECK(torch::equal(model->bn->weight, torch::tensor({1.0f, 1.125f, 1.25f, 1.375f})));
  CHECK(torch::equal(model->bn->bias, torch::tensor({0.0f, -0.125f, -0.25f, -0.375f})));
  CHECK(torch::equal(model->bn->running_mean, torch::tensor({-3.0f, -0.171875f, 2.65625f, 5.484375f})));
  CHECK(torch::equal(model->bn->running_var, torch::tensor({227.9375f, 14.36328125f, 57.078125f, 356.08203125f})));
  CHECK(model->bn->num_batches_tracked.item<std::int64_t>() == golden_v1::kBnPasses);
  CHECK(model->bn->num_batches_tracked.scalar_type() == torch::kLong);

  // ---- optimizers: the same state as re-running the generator's steps here, bit for bit
  CHECK(lr(opt.adam) == 0.01);
  CHECK(lr(opt.adamw) == 0.02);
  CHECK(lr(opt.sgd) == 0.05);  // 0.1 halved once by StepLR(2, 0.5) after 3 steps
  CHECK(lr(opt.adagrad) == 0.05);
  CHECK(lr(opt.rmsprop) == 0.01);
  CHECK(lr(opt.lbfgs) == 0.5);
  auto tiny_rerun = std::make_shared<golden_v1::Tiny>();
  golden_v1::Optimizers rerun(*tiny_rerun, /*golden=*/true);
  golden_v1::train(*tiny_rerun, rerun, golden_v1::kTrainSteps, golden_v1::kTrainSeed);
  check_same_parameters(*tiny, *tiny_rerun);
  check_all_optimizers(opt, rerun);

  // ...and resuming is exact: one more step (scheduler included) on both.
  golden_v1::train(*tiny, opt, 1, golden_v1::kTrainSeed + 1);
  golden_v1::train(*tiny_rerun, rerun, 1, golden_v1::kTrainSeed + 1);
  check_same_parameters(*tiny, *tiny_rerun);
  check_all_optimizers(opt, rerun);

  // ---- scheduler: step_count 3 was restored (4th step keeps the lr, the 5th halves it)
  CHECK(lr(opt.sgd) == 0.05);
  opt.scheduler.step();
  CHECK(lr(opt.sgd) == 0.025);

  // ---- early stopping: epoch 4, best epoch 2 (0.5), stopped
  CHECK(epochs.current == 4);
  CHECK(epochs.best_epoch == 2);
  CHECK(epochs.best_score == 0.5);
  CHECK(epochs.should_stop);
  CHECK(epochs.limit == 10);
  CHECK_FALSE(epochs.next());

  // ---- sampler: at index 8 of the generator's permutation
  CHECK(sampler.index() == golden_v1::kSamplerTaken);
  golden_v1::seed_sampler();
  torch::data::samplers::RandomSampler expected(golden_v1::kSamplerSize);
  golden_v1::advance_sampler(expected);
  const auto rest = expected.next(golden_v1::kSamplerSize - golden_v1::kSamplerTaken);
  REQUIRE(rest);
  CHECK(*sampler.next(golden_v1::kSamplerSize - golden_v1::kSamplerTaken) == *rest);
  CHECK_FALSE(sampler.next(1));

  // ---- JSON value
  CHECK(counts == std::map<std::string, int>{{"cats", 3}, {"dogs", 5}, {"eels", -7}});
}

TEST_CASE("golden v1: the bytes on disk are those docs/format.md describes", "[golden][format]") {
  TempDir dir;
  const fs::path ckpt_dir = golden_checkpoint(copy_golden(dir));

  // Directory: meta.json, PINNED and one file per key, nothing else.
  std::vector<std::string> expected_entries{"PINNED", "meta.json"};
  const std::map<std::string, std::string> ext{{"scheduler", ".json"}, {"epochs", ".json"}, {"counts", ".json"}};
  for (const auto& k : kKeys) expected_entries.push_back(k + (ext.count(k) ? ext.at(k) : ".safetensors"));
  std::sort(expected_entries.begin(), expected_entries.end());
  CHECK(test::entries(ckpt_dir) == expected_entries);

  // meta.json: format, version, checksum over the compact sorted dump, file records.
  json meta = json::parse(test::read_file(ckpt_dir / "meta.json"));
  CHECK(meta.at("format") == "savepoint");
  CHECK(meta.at("format_version") == 1);
  CHECK(meta.at("savepoint_version").is_string());
  CHECK(meta.at("sequence") == 1);
  CHECK(meta.at("end_of_epoch") == true);
  CHECK(meta.at("unixtime").is_number_float());
  CHECK(meta.at("meta") == json{{"loss", 0.25}, {"epoch", 3}});
  const std::string checksum = meta.at("checksum");
  meta.erase("checksum");
  CHECK(checksum == hex16(xxh3(meta.dump())));
  const std::vector<std::string> hooks{
      "torch.nn.Module",         "torch.nn.Module",         "torch.optim.Optimizer",   "torch.optim.Optimizer",
      "torch.optim.Optimizer",   "torch.optim.Optimizer",   "torch.optim.Optimizer",   "torch.optim.Optimizer",
      "torch.optim.LRScheduler", "savepoint::EpochCounterWithStopper", "torch.data.Sampler", "json",
      "torch.Tensor",            "savepoint.TorchRngState"};
  const auto& files = meta.at("files");
  REQUIRE(files.size() == kKeys.size());
  for (std::size_t i = 0; i < kKeys.size(); ++i) {
    const auto& rec = files[i];
    INFO(rec.dump());
    CHECK(rec.at("key") == kKeys[i]);
    CHECK(rec.at("hook") == hooks[i]);
    const std::string bytes = test::read_file(ckpt_dir / rec.at("file").get<std::string>());
    CHECK(rec.at("bytes") == bytes.size());
    CHECK(rec.at("xxh3") == hex16(xxh3(bytes)));
  }

  // Every tensor file: the safetensors layout.
  for (const auto& k : kKeys) {
    if (ext.count(k)) continue;
    INFO(k);
    const auto f = read_raw(ckpt_dir / (k + ".safetensors"));
    CHECK((8 + f.header_length) % 8 == 0);
    std::size_t end = 0;
    for (auto it = f.header.begin(); it != f.header.end(); ++it) {
      if (it.key() == "__metadata__") continue;
      end = std::max(end, it.value().at("data_offsets")[1].get<std::size_t>());
    }
    CHECK(end == f.data.size());  // no trailing bytes
    // Each tensor file names the hook that wrote it, as meta.json does.
    CHECK(f.header.at("__metadata__").at("savepoint.hook") ==
          hooks[static_cast<std::size_t>(std::find(kKeys.begin(), kKeys.end(), k) - kKeys.begin())]);
  }

  // The module: metadata {"format": "pt"}, I64 first (descending dtype size), values by formula.
  const auto model = read_raw(ckpt_dir / "model.safetensors");
  CHECK(model.header.at("__metadata__") == json{{"format", "pt"}, {"savepoint.hook", "torch.nn.Module"}});
  CHECK(model.header.at("fc.weight") == json{{"dtype", "F32"}, {"shape", {4, 3}}, {"data_offsets", model.header["fc.weight"]["data_offsets"]}});
  CHECK(model.header.at("bn.num_batches_tracked").at("dtype") == "I64");
  CHECK(model.header.at("bn.num_batches_tracked").at("shape") == json::array());
  CHECK(model.header.at("bn.num_batches_tracked").at("data_offsets") == json{0, 8});
  CHECK(raw_values<std::int64_t>(model, "bn.num_batches_tracked") == std::vector<std::int64_t>{3});
  CHECK(raw_values<float>(model, "fc.weight") ==
        std::vector<float>{-1.25f, -1.0f, -0.75f, -0.5f, -0.25f, 0.0f, 0.25f, 0.5f, 0.75f, 1.0f, 1.25f, 1.5f});
  CHECK(raw_values<float>(model, "bn.bias") == std::vector<float>{0.0f, -0.125f, -0.25f, -0.375f});
  CHECK(model.header.size() == 8);  // 7 tensors + __metadata__

  // An optimizer: tensors state.<i>.<field>, options and counters in metadata "savepoint".
  const auto adam = read_raw(ckpt_dir / "adam.safetensors");
  const auto doc = json::parse(adam.header.at("__metadata__").at("savepoint").get<std::string>());
  CHECK(doc.at("optimizer") == "Adam");
  CHECK(doc.at("param_groups").size() == 1);
  CHECK(doc.at("param_groups")[0].at("num_params") == 2);
  CHECK(doc.at("param_groups")[0].at("options").at("lr") == 0.01);
  CHECK(doc.at("param_groups")[0].at("options").at("betas") == json{0.8, 0.95});
  CHECK(doc.at("param_groups")[0].at("options").at("amsgrad") == true);
  CHECK(doc.at("state").at("0").at("type") == "Adam");
  CHECK(doc.at("state").at("1").at("fields").at("step") == golden_v1::kTrainSteps);
  for (const char* t : {"state.0.exp_avg", "state.0.exp_avg_sq", "state.0.max_exp_avg_sq", "state.1.exp_avg"})
    CHECK(adam.header.contains(t));
  CHECK(adam.header.at("state.0.exp_avg").at("shape") == json{2, 1});
  for (const auto& [name, opt] : std::map<std::string, std::string>{{"adamw", "AdamW"}, {"sgd", "SGD"},
                                                                    {"adagrad", "Adagrad"}, {"rmsprop", "RMSprop"},
                                                                    {"lbfgs", "LBFGS"}}) {
    const auto f = read_raw(ckpt_dir / (name + ".safetensors"));
    CHECK(json::parse(f.header.at("__metadata__").at("savepoint").get<std::string>()).at("optimizer") == opt);
  }
  const auto sgd_doc = json::parse(read_raw(ckpt_dir / "sgd.safetensors").header.at("__metadata__").at("savepoint").get<std::string>());
  CHECK(sgd_doc.at("param_groups")[0].at("options").at("lr") == 0.05);

  // Small JSON files.
  CHECK(json::parse(test::read_file(ckpt_dir / "scheduler.json")) == json{{"step_count", 3}});
  CHECK(json::parse(test::read_file(ckpt_dir / "epochs.json")) ==
        json{{"current", 4}, {"best_epoch", 2}, {"best_score", 0.5}, {"should_stop", true}});
  CHECK(json::parse(test::read_file(ckpt_dir / "counts.json")) == json{{"cats", 3}, {"dogs", 5}, {"eels", -7}});

  // Plain tensor, RNG, sampler.
  const auto tensor = read_raw(ckpt_dir / "rand_next.safetensors");
  CHECK(tensor.header.at("tensor").at("dtype") == "F32");
  CHECK(tensor.header.at("tensor").at("shape") == json{4});
  const auto rng = read_raw(ckpt_dir / "rng.safetensors");
  CHECK(rng.header.at("cpu").at("dtype") == "U8");
  CHECK(rng.header.size() == 2);  // cpu and __metadata__: no cuda.<i>
  const auto sampler = read_raw(ckpt_dir / "sampler.safetensors");
  CHECK(sampler.header.at("torch_archive").at("dtype") == "U8");
  CHECK(sampler.header.at("__metadata__").at("sampler_type").get<std::string>().find("RandomSampler") != std::string::npos);
  const auto archive = raw_values<std::uint8_t>(sampler, "torch_archive");
  REQUIRE(archive.size() > 4);
  CHECK(std::string(archive.begin(), archive.begin() + 2) == "PK");  // a zip archive
}

TEST_CASE("golden v1: a flipped byte in a copy is detected", "[golden]") {
  TempDir dir;
  const fs::path root = copy_golden(dir);
  const fs::path model_file = golden_checkpoint(root) / "model.safetensors";
  test::flip_byte(model_file, -5);  // inside fc.bias / bn data

  Checkpointer ckpt(root, CheckpointerOptions().read_only(true));
  const auto found = ckpt.find_checkpoint();
  REQUIRE(found);
  torch::manual_seed(5);
  auto model = std::make_shared<golden_v1::Net>();
  const auto before = model->fc->weight.clone();
  ckpt.add_recoverable("model", model);
  CHECK_THROWS_AS(ckpt.load_checkpoint(*found), CorruptCheckpointError);
  CHECK(torch::equal(model->fc->weight, before));  // untouched
  const auto problems = ckpt.verify(*found);
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].key == "model");
  CHECK_THROWS_AS(ckpt.recover_if_possible(), CorruptCheckpointError);  // the only candidate is damaged

  // A damaged meta.json: the directory is no checkpoint any more.
  TempDir dir2;
  const fs::path root2 = copy_golden(dir2);
  test::flip_byte(golden_checkpoint(root2) / "meta.json", 20);
  Checkpointer ckpt2(root2, CheckpointerOptions().read_only(true));
  CHECK_FALSE(ckpt2.find_checkpoint());
  CHECK(ckpt2.unreadable_checkpoints().size() == 1);
}
