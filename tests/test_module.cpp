// torch::nn::Module hooks: parameters and buffers by name, in the safetensors layout.
#include "torch_support.hpp"

#include <savepoint/format/safetensors.hpp>

#include "catch.hpp"

#include <fstream>

using namespace savepoint;
using test::Net;
using test::TempDir;

TEST_CASE("a module round-trips parameters and buffers exactly", "[module]") {
  TempDir dir;
  auto net = std::make_shared<Net>();
  auto opt = torch::optim::SGD(net->parameters(), 0.1);
  test::train(*net, opt, 3);  // moves BatchNorm's running stats too
  Checkpointer ckpt(dir.path());
  ckpt.add_recoverable("model", net);
  const auto saved = ckpt.save_checkpoint();
  CHECK(saved.file("model")->hook == "torch.nn.Module");
  CHECK(saved.file("model")->file == "model.safetensors");

  auto fresh = std::make_shared<Net>();
  REQUIRE_FALSE(test::same_state(*net, *fresh));
  Checkpointer loader(dir.path(), CheckpointerOptions().read_only(true));
  loader.add_recoverable("model", fresh);
  loader.recover_if_possible();
  CHECK(test::same_state(*net, *fresh));
  CHECK(fresh->bn->num_batches_tracked.item<int64_t>() == 3);
}

TEST_CASE("module holders, shared_ptrs and references are all accepted", "[module]") {
  TempDir dir;
  torch::nn::Linear holder(3, 2);
  auto shared = std::make_shared<Net>();
  Net by_ref;
  Checkpointer ckpt(dir.path());
  ckpt.add_recoverable("holder", holder);
  ckpt.add_recoverable("shared", shared);
  ckpt.add_recoverable("ref", by_ref);
  ckpt.add_recoverable("seq", torch::nn::Sequential(torch::nn::Linear(2, 2)));  // holder temporaries are shared
  const auto saved = ckpt.save_checkpoint();
  const auto w = holder->weight.clone();
  {
    torch::NoGradGuard g;
    holder->weight.zero_();
  }
  ckpt.load_checkpoint(saved);
  CHECK(torch::equal(holder->weight, w));
}

TEST_CASE("the file is byte-for-byte the safetensors layout", "[module][format]") {
  TempDir dir;
  torch::nn::Linear lin(3, 2);
  {
    torch::NoGradGuard g;
    lin->weight.copy_(torch::arange(6, torch::kFloat32).reshape({2, 3}));
    lin->bias.copy_(torch::tensor({7.f, 8.f}));
  }
  Checkpointer ckpt(dir.path(), {{"lin", lin}});
  const auto saved = ckpt.save_checkpoint();
  const std::string bytes = test::read_file(saved.path / "lin.safetensors");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
  CHECK((8 + n) % 8 == 0);  // data starts 8-aligned
  const auto header = nlohmann::json::parse(bytes.substr(8, n));
  CHECK(header["__metadata__"]["format"] == "pt");
  CHECK(header["weight"]["dtype"] == "F32");
  CHECK(header["weight"]["shape"] == nlohmann::json({2, 3}));
  // Same dtype: ordered by name, so bias (8 bytes) comes first, then weight (24 bytes).
  CHECK(header["bias"]["data_offsets"] == nlohmann::json({0, 8}));
  CHECK(header["weight"]["data_offsets"] == nlohmann::json({8, 32}));
  REQUIRE(bytes.size() == 8 + n + 32);
  const float* data = reinterpret_cast<const float*>(bytes.data() + 8 + n);
  CHECK(data[0] == 7.f);
  CHECK(data[1] == 8.f);
  for (int i = 0; i < 6; ++i) CHECK(data[2 + i] == static_cast<float>(i));
  // And our own reader of the public format agrees.
  const auto file = load_tensors(saved.path / "lin.safetensors");
  CHECK(file.tensors.size() == 2);
}

TEST_CASE("shape and dtype mismatches raise, naming checkpoint, key and tensor, and load nothing", "[module]") {
  TempDir dir;
  auto net = std::make_shared<Net>(4, 8, 2);
  Checkpointer ckpt(dir.path(), {{"model", net}});
  const auto saved = ckpt.save_checkpoint();

  auto wider = std::make_shared<Net>(4, 16, 2);
  const auto before = wider->fc2->bias.clone();
  Checkpointer other(dir.path(), {{"model", wider}}, CheckpointerOptions().read_only(true));
  try {
    other.load_checkpoint(saved);
    FAIL("expected MismatchError");
  } catch (const MismatchError& e) {
    const std::string what = e.what();
    CHECK(what.find("'model'") != std::string::npos);
    CHECK(what.find(saved.path.string()) != std::string::npos);
    CHECK(what.find("fc1.weight") != std::string::npos);
    CHECK(what.find("[8, 4]") != std::string::npos);
    CHECK(e.key() == "model");
  }
  CHECK(torch::equal(wider->fc2->bias, before));  // fc2.bias matched, but nothing was loaded

  auto doubled = std::make_shared<Net>();
  doubled->to(torch::kFloat64);
  Checkpointer d(dir.path(), {{"model", doubled}}, CheckpointerOptions().read_only(true));
  CHECK_THROWS_WITH(d.load_checkpoint(saved), Catch::Contains("dtype F32") && Catch::Contains("Double"));

  auto smaller = std::make_shared<torch::nn::LinearImpl>(4, 8);
  Checkpointer s(dir.path(), {{"model", smaller}}, CheckpointerOptions().read_only(true));
  CHECK_THROWS_WITH(s.load_checkpoint(saved), Catch::Contains("not in the model"));
}

TEST_CASE("tensors land on the device of the object they load into", "[module][device]") {
  TempDir dir;
  torch::nn::Linear lin(3, 2);
  Checkpointer ckpt(dir.path(), {{"lin", lin}});
  const auto saved = ckpt.save_checkpoint();
  torch::nn::Linear target(3, 2);
  target->to(torch::kFloat32);
  Checkpointer loader(dir.path(), {{"lin", target}}, CheckpointerOptions().read_only(true));
  loader.load_checkpoint(saved);
  CHECK(target->weight.device().is_cpu());
  CHECK(torch::equal(target->weight, lin->weight));
  if (!torch::cuda::is_available())
    return test::skip("CUDA not available: CPU->CUDA and CUDA->CPU loads are tested on the GPU machine");
  torch::nn::Linear gpu(3, 2);
  gpu->to(torch::kCUDA);
  Checkpointer g(dir.path(), {{"lin", gpu}}, CheckpointerOptions().read_only(true));
  g.load_checkpoint(saved);
  CHECK(gpu->weight.device().is_cuda());
  CHECK(torch::equal(gpu->weight.cpu(), lin->weight));
  // and a CUDA-saved checkpoint loads into a CPU model
  Checkpointer gs(dir / "from-gpu", {{"lin", gpu}});
  const auto from_gpu = gs.save_checkpoint();
  torch::nn::Linear cpu(3, 2);
  Checkpointer c(dir / "from-gpu", {{"lin", cpu}}, CheckpointerOptions().read_only(true));
  c.load_checkpoint(from_gpu);
  CHECK(torch::equal(cpu->weight, lin->weight));
}

TEST_CASE("non-contiguous and half-precision tensors are stored correctly", "[module][format]") {
  TempDir dir;
  auto t = torch::arange(12, torch::kFloat32).reshape({3, 4}).t();  // non-contiguous view
  REQUIRE_FALSE(t.is_contiguous());
  auto h = torch::randn({5}).to(torch::kBFloat16);
  save_tensors(dir / "x.safetensors", {{"t", t}, {"h", h}, {"i", torch::tensor({1, 2}, torch::kInt64)}});
  const auto back = load_tensors(dir / "x.safetensors");
  std::map<std::string, torch::Tensor> m(back.tensors.begin(), back.tensors.end());
  CHECK(torch::equal(m.at("t"), t));
  CHECK(torch::equal(m.at("h"), h));
  CHECK(m.at("i").scalar_type() == torch::kInt64);
}

namespace {
// Does this process map `file` right now? (/proc/self/maps lists mapped files by path.)
bool is_mapped(const fs::path& file) {
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);)
    if (line.find(file.string()) != std::string::npos) return true;
  return false;
}
}  // namespace

TEST_CASE("ReadMode::map gives tensors that view the file without copying, privately", "[module][mmap]") {
  TempDir dir;
  const auto file = dir / "big.safetensors";
  const auto w = torch::randn({256, 512});
  save_tensors(file, {{"w", w}, {"i", torch::arange(5, torch::kInt64)}});
  const std::string bytes_before = test::read_file(file);

  torch::Tensor mapped;
  {
    const auto back = load_tensors(file, ReadMode::map);
    std::map<std::string, torch::Tensor> m(back.tensors.begin(), back.tensors.end());
    REQUIRE(m.size() == 2);
    mapped = m.at("w");
    CHECK(torch::equal(mapped, w));
    CHECK(torch::equal(m.at("i"), torch::arange(5, torch::kInt64)));
  }
  CHECK(is_mapped(file));  // the tensor holds the mapping, not a copy
  mapped.mul_(2);          // writable, but private: the file keeps its bytes
  CHECK(torch::equal(mapped, w * 2));
  CHECK(test::read_file(file) == bytes_before);
  auto named = [](const TensorFile& f, const std::string& name) {
    for (const auto& [n, t] : f.tensors)
      if (n == name) return t;
    return torch::Tensor();
  };
  CHECK(torch::equal(named(load_tensors(file), "w"), w));
  mapped = torch::Tensor();
  CHECK_FALSE(is_mapped(file));  // released with the last tensor

  const auto copied = load_tensors(file, ReadMode::copy);
  CHECK_FALSE(is_mapped(file));
  CHECK(torch::equal(named(copied, "w"), w));
}

TEST_CASE("load_tensors of a checkpoint key verifies it first, in both read modes", "[module][mmap]") {
  TempDir dir;
  torch::nn::Linear lin(64, 32);
  Checkpointer ckpt(dir.path(), {{"lin", lin}});
  const auto saved = ckpt.save_checkpoint();
  for (const auto mode : {ReadMode::copy, ReadMode::map}) {
    const auto back = load_tensors(saved, "lin", mode);
    std::map<std::string, torch::Tensor> m(back.tensors.begin(), back.tensors.end());
    CHECK(torch::equal(m.at("weight"), lin->weight));
    CHECK(torch::equal(m.at("bias"), lin->bias));
  }
  CHECK_THROWS_AS(load_tensors(saved, "nope"), MissingKeyError);
  test::flip_byte(saved.path / saved.file("lin")->file, -5);
  for (const auto mode : {ReadMode::copy, ReadMode::map})
    CHECK_THROWS_WITH(load_tensors(saved, "lin", mode), Catch::Contains("checksum") && Catch::Contains("'lin'"));
}

// transfer_parameters is the deprecated 0.1 spelling of transfer: it must keep working.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
TEST_CASE("transfer_parameters (deprecated) loads what matches and reports the rest", "[module][transfer]") {
  TempDir dir;
  torch::nn::Linear with_bias(1, 1);
  Checkpointer ckpt(dir.path(), {{"mdl", with_bias}});
  const auto saved = ckpt.save_checkpoint({{"loss", 1.0}});
  torch::nn::Linear without_bias(torch::nn::LinearOptions(1, 1).bias(false));
  test::CaptureLog log;
  const auto report = transfer_parameters(*without_bias, saved.paramfiles.at("mdl"));
  CHECK(report.loaded == std::vector<std::string>{"weight"});
  CHECK(report.unexpected == std::vector<std::string>{"bias"});
  CHECK(torch::equal(without_bias->weight, with_bias->weight));
  CHECK(log.contains("bias"));

  torch::nn::Linear bigger(2, 1);
  const auto r2 = transfer_parameters(*bigger, saved, "mdl");  // verified against the checksum
  CHECK(r2.mismatched == std::vector<std::string>{"weight"});
  CHECK(r2.loaded == std::vector<std::string>{"bias"});
  CHECK_THROWS_AS(transfer_parameters(*bigger, saved, "nope"), MissingKeyError);
}
#pragma GCC diagnostic pop
