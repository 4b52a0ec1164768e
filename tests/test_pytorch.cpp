// PyTorch files both ways, checked against the real python3-torch (Debian's /usr/bin/python3):
// Python writes, C++ reads, and the reverse, bit for bit. Where /usr/bin/python3 cannot
// import torch, those tests are skipped (reported as such), never passed.
#include "torch_support.hpp"

#include <savepoint/format/pytorch.hpp>
#include <savepoint/pytorch.hpp>
#include <savepoint/transfer.hpp>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cstdlib>

using namespace savepoint;
using test::TempDir;

namespace {
// Debian's interpreter, never the first python3 on PATH (it may lack torch);
// SAVEPOINT_TEST_PYTHON overrides it (`SAVEPOINT_TEST_PYTHON=/bin/false` checks the skips).
std::string python() {
  const char* env = std::getenv("SAVEPOINT_TEST_PYTHON");
  return env && *env ? env : "/usr/bin/python3";
}

// Every run of Python is bounded (`timeout`, coreutils): a hung interpreter fails the test.
const std::string kPythonLimit = "timeout 300 ";

bool python_imports(const std::string& module) {
  return std::system((kPythonLimit + python() + " -c 'import " + module + "' >/dev/null 2>&1").c_str()) == 0;
}

bool python_has_torch() {
  static const bool ok = python_imports("torch");
  return ok;
}

// Runs `script` with /usr/bin/python3 in `dir`; its output goes into the test's log on failure.
int run_python(const TempDir& dir, const std::string& script) {
  test::write_text(dir / "script.py", script);
  const std::string cmd = "cd '" + dir.path().string() + "' && " + kPythonLimit + python() + " script.py > py.log 2>&1";
  const int rc = std::system(cmd.c_str());
  if (rc != 0) UNSCOPED_INFO("python said:\n" << test::read_file(dir / "py.log"));
  return rc;
}

std::string bytes_of(const torch::Tensor& t) {
  const auto c = t.detach().to(torch::kCPU).contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
}

NamedTensors state_of(const torch::nn::Module& m) {
  NamedTensors out;
  for (const auto& item : m.named_parameters()) out.emplace_back(item.key(), item.value());
  for (const auto& item : m.named_buffers()) out.emplace_back(item.key(), item.value());
  return out;
}

std::map<std::string, torch::Tensor> by_name(const NamedTensors& tensors) {
  return {tensors.begin(), tensors.end()};
}

// Python's half of the checks: writes each tensor's bytes (contiguous), dtype, shape, stride
// and storage offset into a manifest, for the C++ side to compare with.
const char* kPythonDump = R"(
import json, torch
manifest = {}
def dump(tag, sd):
    entries = {}
    for i, (k, t) in enumerate(sd.items()):
        fn = '%s_%d.bin' % (tag, i)
        open(fn, 'wb').write(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        entries[k] = {'file': fn, 'dtype': str(t.dtype), 'shape': list(t.shape), 'stride': list(t.stride()),
                      'offset': t.storage_offset()}
    manifest[tag] = entries
)";

const char* kPythonNet = R"(
class Net(torch.nn.Module):  # test::Net
    def __init__(self, out=2):
        super().__init__()
        self.fc1 = torch.nn.Linear(4, 8)
        self.bn = torch.nn.BatchNorm1d(8)
        self.fc2 = torch.nn.Linear(8, out)
)";

std::string torch_dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return "torch.float32";
    case torch::kFloat16: return "torch.float16";
    case torch::kBFloat16: return "torch.bfloat16";
    case torch::kInt64: return "torch.int64";
    case torch::kFloat64: return "torch.float64";
    case torch::kBool: return "torch.bool";
    default: return c10::toString(t);
  }
}

// Every tensor of the manifest's `tag` is in `tensors` with the same dtype, shape, strides
// (when `strides`) and bytes.
void check_against_manifest(const TempDir& dir, const std::string& tag, const NamedTensors& tensors,
                            bool strides = true) {
  const auto manifest = nlohmann::json::parse(test::read_file(dir / "manifest.json")).at(tag);
  auto m = by_name(tensors);
  CHECK(m.size() == manifest.size());
  for (const auto& [name, e] : manifest.items()) {
    INFO(tag << ": " << name);
    REQUIRE(m.count(name));
    const auto& t = m.at(name);
    CHECK(torch_dtype_name(t.scalar_type()) == e.at("dtype").get<std::string>());
    CHECK(t.sizes().vec() == e.at("shape").get<std::vector<std::int64_t>>());
    if (strides) {
      CHECK(t.strides().vec() == e.at("stride").get<std::vector<std::int64_t>>());
      CHECK(t.storage_offset() == e.at("offset").get<std::int64_t>());
    }
    CHECK(bytes_of(t) == test::read_file(dir / e.at("file").get<std::string>()));
  }
}
}  // namespace

TEST_CASE("Python state_dicts load in C++ bit for bit: OrderedDict, one key, fp16/bf16/int64, views",
          "[pytorch][python]") {
  if (!python_has_torch()) return test::skip(python() + " cannot import torch (apt-get install python3-torch)");
  TempDir dir;
  REQUIRE(run_python(dir, std::string(kPythonDump) + kPythonNet + R"(
import collections
torch.manual_seed(1)
net = Net()
with torch.no_grad():
    net.bn.running_mean.normal_()
    net.bn.running_var.uniform_(0.5, 2)
net.bn.num_batches_tracked.fill_(7)
torch.save(net.state_dict(), 'net.pt')
dump('net', net.state_dict())
base = torch.randn(6, 8)
d = collections.OrderedDict()
d['half'] = torch.randn(3, 5).half()
d['bf16_t'] = torch.randn(4, 3).bfloat16().t()
d['long'] = torch.arange(-5, 7, dtype=torch.int64).reshape(3, 4)
d['slice'] = base[::2, 1:5]
d['row'] = base[1]
d['big'] = torch.tensor([2**40, -2**40, 2**63 - 1], dtype=torch.int64)
torch.save(d, 'dtypes.pt')
dump('dtypes', d)
one = {'only': torch.tensor([1.5, -2.25])}
torch.save(one, 'one.pt')
dump('one', one)
torch.save({'model': net.state_dict(), 'epoch': 3, 'note': 'best'}, 'nested.pt')
json.dump(manifest, open('manifest.json', 'w'))
)") == 0);

  for (const auto mode : {ReadMode::copy, ReadMode::map}) {
    check_against_manifest(dir, "net", load_pytorch(dir / "net.pt", mode).tensors);
    check_against_manifest(dir, "dtypes", load_pytorch(dir / "dtypes.pt", mode).tensors);
    check_against_manifest(dir, "one", load_pytorch(dir / "one.pt", mode).tensors);
  }
  // The file's order is the state_dict's; views of one storage stay views of one storage.
  const auto dtypes = load_pytorch(dir / "dtypes.pt").tensors;
  CHECK(dtypes.at(0).first == "half");
  CHECK(dtypes.at(1).first == "bf16_t");
  CHECK_FALSE(dtypes.at(1).second.is_contiguous());
  const auto m = by_name(dtypes);
  CHECK(m.at("slice").storage().data() == m.at("row").storage().data());

  // Nested dicts are flattened; non-tensor values are skipped and named.
  const auto nested = load_pytorch(dir / "nested.pt");
  CHECK(by_name(nested.tensors).count("model.fc1.weight"));
  CHECK(nested.metadata.at("skipped") == "epoch,note");

  // Into the matching C++ module, through the transfer modes.
  auto net = std::make_shared<test::Net>();
  const auto report = transfer(*net, dir / "net.pt", TransferMode::strict);
  CHECK(report.complete());
  check_against_manifest(dir, "net", state_of(*net), /*strides=*/false);
  auto net2 = std::make_shared<test::Net>();
  CHECK(transfer(*net2, dir / "nested.pt", TransferOptions(TransferMode::strict).prefix("model.")).complete());
  CHECK(test::same_state(*net, *net2));
  auto net3 = std::make_shared<test::Net>();
  CHECK(transfer(*net3, dir / "net.pt", TransferMode::by_order).complete());  // same order as Python's
  CHECK(test::same_state(*net, *net3));
}

TEST_CASE("files saved in C++ load in Python as dicts of tensors, bit for bit, and into nn.Module",
          "[pytorch][python]") {
  if (!python_has_torch()) return test::skip(python() + " cannot import torch (apt-get install python3-torch)");
  TempDir dir;
  torch::manual_seed(3);
  auto net = std::make_shared<test::Net>();
  {
    torch::NoGradGuard no_grad;
    net->bn->running_mean.normal_();
    net->bn->num_batches_tracked.fill_(11);
  }
  save_pytorch(dir / "net.pt", *net);
  const auto base = torch::randn({6, 8});
  const NamedTensors tensors = {
      {"half", torch::randn({3, 5}).to(torch::kFloat16)},
      {"bf16_t", torch::randn({4, 3}).to(torch::kBFloat16).t()},  // non-contiguous
      {"long", torch::arange(-5, 7, torch::kInt64).reshape({3, 4})},
      {"slice", base.slice(0, 0, 6, 2).slice(1, 1, 5)},  // non-contiguous with an offset
      {"big", torch::tensor({std::int64_t{1} << 40, -(std::int64_t{1} << 40), INT64_MAX})},
  };
  save_pytorch(dir / "dtypes.pt", tensors);
  save_pytorch(dir / "one.pt", NamedTensors{{"only", torch::tensor({1.5, -2.25})}});
  Checkpointer ckpt(dir / "ckpts", {{"model", net}});
  save_pytorch(dir / "key.pt", ckpt.save_checkpoint(), "model");  // a checkpoint key, verified

  REQUIRE(run_python(dir, std::string(kPythonDump) + kPythonNet + R"(
for tag in ['net', 'dtypes', 'one', 'key']:
    d = torch.load(tag + '.pt', weights_only=True)  # PyTorch 2.6's default: no pickled code
    assert type(d) is dict, type(d)
    assert all(isinstance(t, torch.Tensor) for t in d.values())
    dump(tag, d)
net = Net()
net.load_state_dict(torch.load('net.pt', weights_only=True), strict=True)
dump('loaded', net.state_dict())
torch.save(net.state_dict(), 'back.pt')
json.dump(manifest, open('manifest.json', 'w'))
)") == 0);

  check_against_manifest(dir, "net", state_of(*net), /*strides=*/false);
  check_against_manifest(dir, "key", state_of(*net), /*strides=*/false);
  check_against_manifest(dir, "loaded", state_of(*net), /*strides=*/false);
  check_against_manifest(dir, "dtypes", tensors, /*strides=*/false);
  check_against_manifest(dir, "one", {{"only", torch::tensor({1.5, -2.25})}});
  // And back: what Python re-saved loads into a fresh module, equal to the first.
  auto back = std::make_shared<test::Net>();
  CHECK(transfer(*back, dir / "back.pt", TransferMode::strict).complete());
  CHECK(test::same_state(*back, *net));
}

// The format promise (docs/format.md): a checkpoint's tensor files are safetensors files that
// the safetensors library itself reads, not only savepoint's readers.
TEST_CASE("safetensors.torch.load_file reads every tensor file of a checkpoint, bit for bit",
          "[pytorch][python][safetensors]") {
  if (!python_imports("safetensors.torch"))
    return test::skip(python() + " cannot import safetensors.torch (Debian 13 on: apt-get install python3-safetensors)");
  TempDir dir;
  torch::manual_seed(5);
  auto net = std::make_shared<test::Net>();
  torch::optim::Adam adam(net->parameters(), 0.01);
  test::train(*net, adam, 3);  // moments and steps in the optimizer's file
  torch::Tensor table = torch::randn({7, 3}).to(torch::kFloat16);
  torch::Tensor mask = torch::rand({5}) > 0.5;
  torch::Tensor ids = torch::arange(-4, 4, torch::kInt64);
  torch::Tensor wide = torch::randn({2, 2}, torch::kFloat64);
  torch::Tensor scalar = torch::tensor(3.25);
  Checkpointer ckpt(dir / "ckpts");
  ckpt.add_recoverable("model", net);
  ckpt.add_recoverable("optimizer", adam);
  ckpt.add_recoverable("table", table);
  ckpt.add_recoverable("mask", mask);
  ckpt.add_recoverable("ids", ids);
  ckpt.add_recoverable("wide", wide);
  ckpt.add_recoverable("scalar", scalar);
  const auto saved = ckpt.save_checkpoint();

  REQUIRE(run_python(dir, std::string(kPythonDump) + "import os\nckpt = " + nlohmann::json(saved.path.string()).dump() + R"(
from safetensors.torch import load_file
names = sorted(n for n in os.listdir(ckpt) if n.endswith('.safetensors'))
for name in names:
    dump(name, load_file(os.path.join(ckpt, name)))
json.dump(manifest, open('manifest.json', 'w'))
)") == 0);

  const auto manifest = nlohmann::json::parse(test::read_file(dir / "manifest.json"));
  int files = 0;
  for (const auto& file : saved.files) {
    if (file.file.size() < 12 || file.file.substr(file.file.size() - 12) != ".safetensors") continue;
    INFO(file.file);
    REQUIRE(manifest.contains(file.file));
    check_against_manifest(dir, file.file, load_tensors(saved, file.key).tensors, /*strides=*/false);
    ++files;
  }
  CHECK(files == 7);
  CHECK(manifest.size() == 7);
  // And against the objects themselves, not only savepoint's reader of the same files.
  check_against_manifest(dir, "model.safetensors", state_of(*net), /*strides=*/false);
  check_against_manifest(dir, "table.safetensors", {{"tensor", table}}, /*strides=*/false);
}

// Incremental checkpoints keep that promise (docs/format.md, "Parts"): every part file, linked
// or written, opens in the safetensors library, and a tensor's segments concatenate to it.
TEST_CASE("safetensors opens every part file of an incremental checkpoint, and the segments concatenate to the tensors",
          "[pytorch][python][safetensors][incremental]") {
  if (!python_imports("safetensors.torch"))
    return test::skip(python() + " cannot import safetensors.torch (Debian 13 on: apt-get install python3-safetensors)");
  TempDir dir;
  torch::manual_seed(6);
  auto net = std::make_shared<test::Net>(64, 512, 8);  // fc1.weight: 128 KiB, in segments of 32 KiB
  Checkpointer ckpt(dir / "ckpts", CheckpointerOptions().incremental(true).part_bytes(32 << 10));
  ckpt.add_recoverable("model", net);
  ckpt.save_checkpoint();
  {
    torch::NoGradGuard no_grad;
    net->fc2->weight.add_(1.0);  // the second checkpoint links the rest
  }
  const auto saved = ckpt.save_checkpoint();

  REQUIRE(run_python(dir, std::string(kPythonDump) + "import os\nckpt = " + nlohmann::json(saved.path.string()).dump() + R"(
from safetensors import safe_open
names = sorted(n for n in os.listdir(ckpt) if n.startswith('model.part'))
assert len(names) > 4, names
pieces = {}
for name in names:
    with safe_open(os.path.join(ckpt, name), framework='pt') as f:
        assert f.metadata()['savepoint.part'] == str(int(name[len('model.part'):-len('.safetensors')])), name
        for k in f.keys():
            pieces.setdefault(k, []).append(f.get_tensor(k))
dump('model', {k: v[0] if len(v) == 1 else torch.cat(v) for k, v in pieces.items()})
json.dump(manifest, open('manifest.json', 'w'))
)") == 0);
  check_against_manifest(dir, "model", state_of(*net), /*strides=*/false);
}

TEST_CASE("PyTorch files that savepoint does not read are refused with the file's name", "[pytorch][python]") {
  if (!python_has_torch()) return test::skip(python() + " cannot import torch (apt-get install python3-torch)");
  TempDir dir;
  REQUIRE(run_python(dir, R"(
import torch
torch.save({'a': torch.ones(2)}, 'legacy.pt', _use_new_zipfile_serialization=False)
torch.save(torch.nn.Linear(2, 2), 'whole.pt')
torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), 'script.pt')
)") == 0);
  CHECK_THROWS_WITH(load_pytorch(dir / "legacy.pt"), Catch::Contains("legacy.pt") && Catch::Contains("legacy format"));
  CHECK_THROWS_AS(load_pytorch(dir / "legacy.pt"), FormatVersionError);
  CHECK_THROWS_WITH(load_pytorch(dir / "whole.pt"),
                    Catch::Contains("whole.pt") && Catch::Contains("torch.nn.modules.linear.Linear"));
  CHECK_THROWS_WITH(load_pytorch(dir / "script.pt"), Catch::Contains("script.pt") && Catch::Contains("TorchScript"));
}

TEST_CASE("a damaged PyTorch file throws CorruptCheckpointError naming it, never crashes", "[pytorch]") {
  TempDir dir;
  save_pytorch(dir / "ok.pt", NamedTensors{{"w", torch::arange(64, torch::kFloat32)}, {"b", torch::ones({3})}});
  const std::string good = test::read_file(dir / "ok.pt");
  CHECK(load_pytorch(dir / "ok.pt").tensors.size() == 2);

  // A bit flipped anywhere: refused naming the file, or (padding, dates, version fields)
  // loaded with every value intact. Never a crash, never a changed value.
  std::size_t refused = 0;
  for (std::size_t at = 0; at < good.size(); ++at) {
    std::string bad = good;
    bad[at] = static_cast<char>(bad[at] ^ 0x10);
    test::write_text(dir / "bad.pt", bad);
    try {
      const auto m = by_name(load_pytorch(dir / "bad.pt").tensors);
      CHECK(m.size() == 2);
      CHECK(torch::equal(m.at("w"), torch::arange(64, torch::kFloat32)));
      CHECK(torch::equal(m.at("b"), torch::ones({3})));
    } catch (const CheckpointError& e) {  // CorruptCheckpointError or FormatVersionError
      CHECK(std::string(e.what()).find("bad.pt") != std::string::npos);
      ++refused;
    }
  }
  CHECK(refused > 0);
  for (std::size_t len : {std::size_t{0}, std::size_t{3}, std::size_t{30}, good.size() / 2, good.size() - 1}) {
    test::write_text(dir / "short.pt", good.substr(0, len));
    CHECK_THROWS_AS(load_pytorch(dir / "short.pt"), CorruptCheckpointError);
  }
  test::write_text(dir / "text.pt", "not a pytorch file at all");
  CHECK_THROWS_WITH(load_pytorch(dir / "text.pt"), Catch::Contains("text.pt") && Catch::Contains("not a zip"));
  CHECK_THROWS_AS(load_pytorch(dir / "missing.pt"), IoError);
  CHECK_THROWS_AS(save_pytorch(dir / "ok.pt", NamedTensors{}), IoError);  // never overwrites
}

TEST_CASE("a flipped bit in a PyTorch file's tensor data is caught by the zip CRC", "[pytorch]") {
  TempDir dir;
  const auto w = torch::arange(256, torch::kFloat32);
  save_pytorch(dir / "w.pt", NamedTensors{{"w", w}});
  std::string bytes = test::read_file(dir / "w.pt");
  const std::string needle(reinterpret_cast<const char*>(w.data_ptr()) + 400, 64);  // elements 100..115
  const auto at = bytes.find(needle);
  REQUIRE(at != std::string::npos);
  bytes[at + 3] = static_cast<char>(bytes[at + 3] ^ 0x01);
  test::write_text(dir / "w.pt", bytes);
  CHECK_THROWS_WITH(load_pytorch(dir / "w.pt"), Catch::Contains("w.pt") && Catch::Contains("CRC-32"));
  torch::nn::Linear lin(16, 16);
  CHECK_THROWS_AS(transfer(*lin, dir / "w.pt"), CorruptCheckpointError);
}

TEST_CASE("a Python state_dict of 70000 tensors (zip64 end records) loads, in order", "[pytorch][python]") {
  if (!python_has_torch()) return test::skip(python() + " cannot import torch (apt-get install python3-torch)");
  TempDir dir;
  REQUIRE(run_python(dir, R"(
import torch
torch.save({'k%d' % i: torch.tensor([float(i)]) for i in range(70000)}, 'many.pt')
d = open('many.pt', 'rb').read()
assert d.rfind(b'PK\x06\x06') > 0, 'no zip64 end record'
)") == 0);
  const auto file = load_pytorch(dir / "many.pt", ReadMode::map);
  REQUIRE(file.tensors.size() == 70000);
  for (std::size_t i : {std::size_t{0}, std::size_t{65535}, std::size_t{65536}, std::size_t{69999}}) {
    CHECK(file.tensors[i].first == "k" + std::to_string(i));
    CHECK(file.tensors[i].second.item<float>() == static_cast<float>(i));
  }
}
