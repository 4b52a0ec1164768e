// Plain tensors, generators and the global RNG state.
#include "torch_support.hpp"

#include <catch2/catch.hpp>

using namespace savepoint;
using test::TempDir;

TEST_CASE("a plain tensor is restored in place, or assigned when undefined", "[tensor]") {
  TempDir dir;
  torch::Tensor t = torch::randn({3, 2});
  const auto original = t.clone();
  Checkpointer ckpt(dir.path(), {{"t", t}});
  const auto saved = ckpt.save_checkpoint();
  CHECK(saved.file("t")->file == "t.safetensors");
  t.zero_();
  ckpt.load_checkpoint(saved);
  CHECK(torch::equal(t, original));

  torch::Tensor empty;
  torch::Tensor wrong = torch::zeros({2, 2});
  Checkpointer a(dir.path(), {{"t", empty}}, CheckpointerOptions().read_only(true));
  a.load_checkpoint(saved);
  CHECK(torch::equal(empty, original));
  Checkpointer b(dir.path(), {{"t", wrong}}, CheckpointerOptions().read_only(true));
  CHECK_THROWS_AS(b.load_checkpoint(saved), MismatchError);
}

TEST_CASE("the default RNG state is saved and restored last", "[rng]") {
  TempDir dir;
  TorchRngState rng;
  torch::Tensor probe = torch::zeros({1});
  Checkpointer ckpt(dir.path());
  ckpt.add_recoverable("rng", rng);  // registered first, restored last
  ckpt.add_recoverable("probe", probe);
  torch::manual_seed(123);
  (void)torch::rand({10});
  ckpt.save_checkpoint();
  const auto expected = torch::rand({5});
  torch::manual_seed(999);
  ckpt.recover_if_possible();
  CHECK(torch::equal(torch::rand({5}), expected));
}

TEST_CASE("a user's torch::Generator is a recoverable", "[rng]") {
  TempDir dir;
  auto gen = at::detail::createCPUGenerator(42);
  Checkpointer ckpt(dir.path(), {{"gen", gen}});
  (void)torch::rand({3}, gen);
  ckpt.save_checkpoint();
  const auto expected = torch::rand({4}, gen);
  ckpt.recover_if_possible();
  CHECK(torch::equal(torch::rand({4}, gen), expected));
}
