// Start-up recovery's fast path: an optimizer without state gets its tensors from a file read
// into fresh memory (no mapping, no second copy), verified before anything changes, and a
// damaged file found on that path leaves every object as it was / falls back as before.
#include "torch_support.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/phases.hpp>

#include "catch.hpp"

#include <cstring>

using namespace savepoint;
using test::Net;
using test::TempDir;

namespace {

// Every per-parameter tensor of an Adam, in parameter order, and its step count.
std::vector<torch::Tensor> adam_moments(Net& net, torch::optim::Adam& adam, bool with_step = true) {
  std::vector<torch::Tensor> out;
  for (const auto& p : net.parameters()) {
    const auto it = adam.state().find(test::state_key(adam.state(), p));
    if (it == adam.state().end()) continue;
    const auto& s = static_cast<const torch::optim::AdamParamState&>(*it->second);
    out.push_back(s.exp_avg());
    out.push_back(s.exp_avg_sq());
    if (s.max_exp_avg_sq().defined()) out.push_back(s.max_exp_avg_sq());
    if (with_step) out.push_back(torch::tensor(static_cast<std::int64_t>(s.step())));
  }
  return out;
}

bool same_bytes(const torch::Tensor& a, const torch::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() && a.is_contiguous() && b.is_contiguous() &&
         std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0;
}

std::vector<torch::Tensor> clones(const std::vector<torch::Tensor>& ts) {
  std::vector<torch::Tensor> out;
  for (const auto& t : ts) out.push_back(t.clone());
  return out;
}

std::vector<torch::Tensor> params_of(Net& net) { return clones(net.parameters()); }

bool all_same_bytes(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!same_bytes(a[i], b[i])) return false;
  return true;
}

}  // namespace

TEST_CASE("start-up recovery reads a fresh optimizer's state into memory its tensors keep, bitwise equal",
          "[optimizer][recover]") {
  TempDir dir;
  torch::manual_seed(3);
  auto net = std::make_shared<Net>();
  torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(0.01).amsgrad(true));
  test::train(*net, adam, 3);
  Checkpointer ckpt(dir.path(), {{"model", net}, {"optimizer", adam}});
  const auto saved = ckpt.save_checkpoint();

  torch::manual_seed(4);
  auto net2 = std::make_shared<Net>();
  torch::optim::Adam adam2(net2->parameters(), torch::optim::AdamOptions(0.5));
  REQUIRE(adam2.state().empty());
  Checkpointer ckpt2(dir.path(), {{"model", net2}, {"optimizer", adam2}}, CheckpointerOptions().read_only(true));
  savepoint::detail::reset_load_phases();
  REQUIRE(ckpt2.recover_if_possible() == saved);
  // The optimizer's file was read into fresh memory, the model's mapped (copied into its
  // existing parameters).
  const auto& phases = savepoint::detail::load_phases();
  CHECK(phases.bytes_read == saved.file("optimizer")->bytes);
  CHECK(phases.bytes_mapped == saved.file("model")->bytes);
  CHECK(all_same_bytes(adam_moments(*net2, adam2), adam_moments(*net, adam)));
  CHECK(all_same_bytes(params_of(*net2), params_of(*net)));
  // The kept memory is the tensors' own: training goes on bit-identically, and a second load
  // (now into live state) fills the same tensors in place.
  test::train(*net, adam, 2, 9);
  test::train(*net2, adam2, 2, 9);
  CHECK(test::same_state(*net, *net2));
  CHECK(all_same_bytes(adam_moments(*net2, adam2), adam_moments(*net, adam)));
  const auto live = adam_moments(*net2, adam2, /*with_step=*/false);
  savepoint::detail::reset_load_phases();
  ckpt2.load_checkpoint(saved);
  CHECK(phases.bytes_read == 0);
  const auto reloaded = adam_moments(*net2, adam2, /*with_step=*/false);
  REQUIRE(reloaded.size() == live.size());
  for (std::size_t i = 0; i < live.size(); ++i) CHECK(reloaded[i].data_ptr() == live[i].data_ptr());
}

TEST_CASE("start-up recovery: a damaged optimizer file on the fast path changes nothing and recovery falls back",
          "[optimizer][recover][integrity]") {
  TempDir dir;
  torch::manual_seed(5);
  auto net = std::make_shared<Net>();
  torch::optim::Adam adam(net->parameters(), 0.01);
  Checkpointer ckpt(dir.path(), {{"model", net}, {"optimizer", adam}});
  test::train(*net, adam, 2);
  const auto older = ckpt.save_checkpoint();
  const auto older_params = params_of(*net);
  const auto older_moments = clones(adam_moments(*net, adam));
  test::train(*net, adam, 2, 1);
  const auto newest = ckpt.save_checkpoint();
  const auto optimizer_file = newest.path / newest.file("optimizer")->file;
  test::flip_byte(optimizer_file, -5);  // in the last tensor's bytes

  torch::manual_seed(6);
  auto net2 = std::make_shared<Net>();
  torch::optim::Adam adam2(net2->parameters(), 0.01);
  const auto init = params_of(*net2);

  SECTION("strict: the error names file and key, and nothing changed") {
    Checkpointer strict(dir.path(), {{"model", net2}, {"optimizer", adam2}},
                        CheckpointerOptions().read_only(true).strict_recovery(true));
    try {
      strict.recover_if_possible();
      FAIL("a damaged checkpoint was loaded");
    } catch (const CorruptCheckpointError& e) {
      CHECK_THAT(e.what(), Catch::Contains(optimizer_file.string()) && Catch::Contains("key 'optimizer'") &&
                               Catch::Contains("checksum"));
    }
    CHECK(adam2.state().empty());
    CHECK(all_same_bytes(params_of(*net2), init));
  }
  SECTION("falls back to the previous checkpoint, exactly") {
    Checkpointer fallback(dir.path(), {{"model", net2}, {"optimizer", adam2}}, CheckpointerOptions().read_only(true));
    test::CaptureLog log;
    REQUIRE(fallback.recover_if_possible() == older);
    CHECK(log.contains("Skipping checkpoint"));
    CHECK(log.contains(optimizer_file.string()));
    CHECK(all_same_bytes(params_of(*net2), older_params));
    CHECK(all_same_bytes(adam_moments(*net2, adam2), older_moments));
  }
}

TEST_CASE("start-up recovery: a damaged model file leaves the fresh optimizer without state", "[optimizer][recover]") {
  TempDir dir;
  auto net = std::make_shared<Net>();
  torch::optim::Adam adam(net->parameters(), 0.01);
  test::train(*net, adam, 2);
  Checkpointer ckpt(dir.path(), {{"model", net}, {"optimizer", adam}});
  const auto only = ckpt.save_checkpoint();
  test::flip_byte(only.path / only.file("model")->file, -3);
  auto net2 = std::make_shared<Net>();
  torch::optim::Adam adam2(net2->parameters(), 0.01);
  const auto init = params_of(*net2);
  Checkpointer ckpt2(dir.path(), {{"model", net2}, {"optimizer", adam2}}, CheckpointerOptions().read_only(true));
  CHECK_THROWS_WITH(ckpt2.recover_if_possible(), Catch::Contains("could be restored") && Catch::Contains("key 'model'"));
  CHECK(adam2.state().empty());
  CHECK(all_same_bytes(params_of(*net2), init));
}

TEST_CASE("start-up recovery: a read error on the fast path falls back to the previous checkpoint",
          "[optimizer][recover][integrity]") {
  TempDir dir;
  auto net = std::make_shared<Net>();
  torch::optim::Adam adam(net->parameters(), 0.01);
  Checkpointer ckpt(dir.path(), {{"model", net}, {"optimizer", adam}});
  test::train(*net, adam, 2);
  const auto older = ckpt.save_checkpoint();
  const auto older_moments = clones(adam_moments(*net, adam));
  test::train(*net, adam, 1, 2);
  const auto newest = ckpt.save_checkpoint();
  const auto failing = newest.path / newest.file("optimizer")->file;
  savepoint::detail::set_fault_hook([failing](savepoint::detail::IoOp op, const fs::path& path) {
    savepoint::detail::Fault f;
    if (op == savepoint::detail::IoOp::read && path == failing) f.error = EIO;
    return f;
  });
  auto net2 = std::make_shared<Net>();
  torch::optim::Adam adam2(net2->parameters(), 0.01);
  Checkpointer ckpt2(dir.path(), {{"model", net2}, {"optimizer", adam2}}, CheckpointerOptions().read_only(true));
  std::optional<Checkpoint> loaded;
  try {
    loaded = ckpt2.recover_if_possible();
  } catch (...) {
    savepoint::detail::set_fault_hook(nullptr);
    throw;
  }
  savepoint::detail::set_fault_hook(nullptr);
  REQUIRE(loaded == older);
  CHECK(all_same_bytes(adam_moments(*net2, adam2), older_moments));
}

TEST_CASE("an undefined tensor is loaded into memory it keeps, equal to the saved one", "[torch][recover]") {
  TempDir dir;
  // 24 MiB: large enough for the helper thread that faults the memory in ahead of the reads.
  torch::Tensor t = torch::arange(0, 3 << 20, torch::kFloat64).reshape({3, 1 << 20});
  Checkpointer ckpt(dir.path(), {{"t", t}});
  ckpt.save_checkpoint();
  torch::Tensor fresh;
  Checkpointer ckpt2(dir.path(), {{"t", fresh}}, CheckpointerOptions().read_only(true));
  savepoint::detail::reset_load_phases();
  REQUIRE(ckpt2.recover_if_possible());
  CHECK(savepoint::detail::load_phases().bytes_read > 0);
  REQUIRE(fresh.defined());
  CHECK(same_bytes(fresh, t));
  fresh.add_(1);  // its own, writable memory
  CHECK(fresh[0][0].item<double>() == 1.0);
  CHECK(t[0][0].item<double>() == 0.0);
}
