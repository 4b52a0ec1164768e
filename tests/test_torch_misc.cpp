// Plain tensors, generators, the global RNG state, and async snapshots of tensors.
#include "torch_support.hpp"

#include <savepoint/detail/io.hpp>

#include "catch.hpp"

#include <chrono>
#include <mutex>
#include <set>
#include <thread>

using namespace savepoint;
using test::TempDir;
namespace fs = std::filesystem;

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

TEST_CASE("async: tensors are snapshotted at the call, later optimizer steps do not leak in", "[torch][async]") {
  TempDir dir;
  auto net = std::make_shared<test::Net>();
  torch::optim::Adam opt(net->parameters(), 0.1);
  test::train(*net, opt, 3);
  test::Net before;
  {
    torch::NoGradGuard no_grad;
    for (auto& p : before.named_parameters()) p.value().copy_(net->named_parameters()[p.key()]);
    for (auto& b : before.named_buffers()) b.value().copy_(net->named_buffers()[b.key()]);
  }
  Checkpointer ckpt(dir.path(), {{"model", net}, {"optimizer", opt}});
  {
    test::FaultGuard slow_opens([](savepoint::detail::IoOp op, const fs::path&) {
      if (op == savepoint::detail::IoOp::open) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      return savepoint::detail::Fault{};
    });
    ckpt.save_checkpoint_async({{"step", 3}});
    test::train(*net, opt, 2, /*seed=*/7);  // updates the weights in place while the save is written
    REQUIRE(ckpt.wait());
  }
  REQUIRE_FALSE(test::same_state(*net, before));

  auto fresh = std::make_shared<test::Net>();
  torch::optim::Adam fresh_opt(fresh->parameters(), 0.1);
  Checkpointer reader(dir.path(), {{"model", fresh}, {"optimizer", fresh_opt}},
                      CheckpointerOptions().read_only(true));
  REQUIRE(reader.recover_if_possible());
  CHECK(test::same_state(*fresh, before));

  // Staging buffers are reused: a second async save of the same state works the same way.
  ckpt.save_and_keep_only_async({{"step", 5}}, keep(1));
  const auto second = ckpt.wait();
  REQUIRE(second);
  CHECK(ckpt.list_checkpoints().size() == 1);
  reader.load_checkpoint(*second);
  CHECK(test::same_state(*fresh, *net));
}

TEST_CASE("parallel writes: the same bytes as one thread, and failures leave nothing behind", "[torch][parallel]") {
  TempDir dir;
  auto net = std::make_shared<test::Net>();
  torch::optim::Adam adam(net->parameters(), 0.1);
  test::train(*net, adam, 2);
  torch::Tensor table = torch::randn({64, 32});
  EpochCounter epochs(10);
  epochs.next();
  // A user hook that reuses its buffer right after handing it over: with parallel writes its
  // file must still hold what it was given (user hooks write at once, never deferred).
  torch::Tensor buffer = torch::full({4}, 1.0);
  auto save_reused = [](torch::Tensor& b, const fs::path& file) {
    save_tensors(file, {{"b", b}});
    b.fill_(2.0);
  };
  auto load_reused = [](torch::Tensor& b, const fs::path& file, bool) { b.copy_(load_tensors(file).tensors.at(0).second); };

  auto checkpointer = [&](const fs::path& where, int threads) {
    Checkpointer c(where, CheckpointerOptions().io_threads(threads));
    c.add_recoverable("model", net);
    c.add_recoverable("optimizer", adam);
    c.add_recoverable("table", table);
    c.add_recoverable("epochs", epochs);
    c.add_recoverable("reused", buffer, save_reused, load_reused);
    return c;
  };
  auto serial = checkpointer(dir / "serial", 1);
  auto parallel = checkpointer(dir / "parallel", 4);
  buffer.fill_(1.0);
  const auto one = serial.save_checkpoint({{"n", 1}});
  buffer.fill_(1.0);
  std::mutex m;
  std::set<std::thread::id> writers;  // threads that opened a tensor file
  const auto many = [&] {
    test::FaultGuard record_writers([&](savepoint::detail::IoOp op, const fs::path& p) {
      if (op == savepoint::detail::IoOp::open && p.extension() == ".safetensors") {
        std::this_thread::sleep_for(std::chrono::milliseconds(30));  // the others pick up the rest
        std::lock_guard<std::mutex> lock(m);
        writers.insert(std::this_thread::get_id());
      }
      return savepoint::detail::Fault{};
    });
    return parallel.save_checkpoint({{"n", 1}});
  }();
  CHECK(writers.size() >= 2);
  REQUIRE(one.files.size() == 5);
  for (const auto& rec : one.files) {
    INFO(rec.key);
    CHECK(test::read_file(many.path / rec.file) == test::read_file(one.path / rec.file));
    CHECK(*many.file(rec.key) == rec);  // same size and checksum recorded
  }
  CHECK(torch::equal(load_tensors(many, "reused").tensors.at(0).second, torch::full({4}, 1.0)));
  REQUIRE(parallel.verify(many).empty());

  // One failing write among several running at once: the save raises, nothing is committed.
  {
    test::FaultGuard failing_write([&](savepoint::detail::IoOp op, const fs::path& p) {
      if (op == savepoint::detail::IoOp::write && p.filename() == "optimizer.safetensors") return savepoint::detail::Fault{EIO};
      return savepoint::detail::Fault{};
    });
    CHECK_THROWS_WITH(parallel.save_checkpoint({{"n", 2}}), Catch::Contains("optimizer.safetensors"));
  }
  const auto left = parallel.list_checkpoints();
  REQUIRE(left.size() == 1);
  CHECK(left[0].path == many.path);
  CHECK(test::leftovers(dir / "parallel").empty());

  CHECK_THROWS_AS(Checkpointer(dir / "zero", CheckpointerOptions().io_threads(0)).save_checkpoint(), UsageError);
}
