// Direct I/O (CheckpointerOptions::direct_io, ReadMode::direct): the same bytes as the page
// cache path, verified reads, and the fallback where a file system refuses O_DIRECT.
#include "torch_support.hpp"

#include "thread_group.hpp"

#include "catch.hpp"

#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <mutex>

using namespace savepoint;

using test::TempDir;
namespace fs = std::filesystem;

namespace {
// Whether the file system holding `dir` accepts O_DIRECT (as the writer asks for it).
bool accepts_o_direct(const fs::path& dir) {
  const fs::path probe = dir / ".o_direct_probe";
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return false;
  const int flags = ::fcntl(fd, F_GETFL);
  const bool ok = ::fcntl(fd, F_SETFL, flags | O_DIRECT) == 0;
  ::close(fd);
  fs::remove(probe);
  return ok;
}

// Tensors of awkward sizes: empty, tiny, not a multiple of 4096 bytes, across the writer's
// 8 MiB chunks, and many small ones.
struct Awkward : torch::nn::Module {
  Awkward() {
    torch::manual_seed(3);
    register_buffer("empty", torch::empty({0, 5}));
    register_buffer("one", torch::tensor({42}, torch::kInt64));
    register_buffer("odd", torch::randn({1023}));
    register_buffer("bytes", torch::randint(0, 255, {3 * 4096 + 5}, torch::kUInt8));
    register_buffer("large", torch::randn({(9 << 20) / 4 + 17}));
    for (int i = 0; i < 150; ++i) register_buffer("many_" + std::to_string(i), torch::randn({i + 1}));
  }
};
std::shared_ptr<Awkward> awkward_tensors() { return std::make_shared<Awkward>(); }

void check_same(const TensorFile& a, const TensorFile& b) {
  REQUIRE(a.tensors.size() == b.tensors.size());
  for (std::size_t i = 0; i < a.tensors.size(); ++i) {
    CHECK(a.tensors[i].first == b.tensors[i].first);
    CHECK(torch::equal(a.tensors[i].second, b.tensors[i].second));
  }
}
}  // namespace

TEST_CASE("direct I/O: tensor files are byte-identical to buffered ones", "[direct_io]") {
  const int threads = GENERATE(1, 2);
  const bool async = GENERATE(false, true);
  CAPTURE(threads, async);
  TempDir dir;
  if (!accepts_o_direct(dir.path())) return test::skip("the test directory's file system refuses O_DIRECT");
  auto net = std::make_shared<test::Net>();
  torch::optim::Adam opt(net->parameters(), 1e-2);
  test::train(*net, opt, 1);
  auto tensors = awkward_tensors();
  torch::Tensor tiny = torch::ones({3});
  auto save = [&](const fs::path& root, bool direct) {
    Checkpointer ckpt(root, {{"model", net}, {"opt", opt}}, CheckpointerOptions().io_threads(threads).direct_io(direct));
    ckpt.add_recoverable("awkward", tensors);
    ckpt.add_recoverable("tiny", tiny);
    if (!async) return ckpt.save_checkpoint();
    ckpt.save_checkpoint_async();
    return *ckpt.wait();
  };
  test::CaptureLog log;
  const auto buffered = save(dir / "buffered", false);
  const auto direct = save(dir / "direct", true);
  CHECK_FALSE(log.contains("O_DIRECT"));  // it did write with O_DIRECT
  for (const auto& rec : buffered.files) {
    CAPTURE(rec.key);
    const auto* other = direct.file(rec.key);
    REQUIRE(other);
    CHECK(other->bytes == rec.bytes);
    CHECK(other->xxh3 == rec.xxh3);
    CHECK(test::read_file(direct.paramfiles.at(rec.key)) == test::read_file(buffered.paramfiles.at(rec.key)));
  }
  Checkpointer reader(dir / "direct", CheckpointerOptions().read_only(true));
  CHECK(reader.verify(direct).empty());
}

TEST_CASE("direct I/O: reading gives the same tensors and still catches a damaged byte", "[direct_io]") {
  TempDir dir;
  if (!accepts_o_direct(dir.path())) return test::skip("the test directory's file system refuses O_DIRECT");
  auto tensors = awkward_tensors();
  Checkpointer ckpt(dir.path(), CheckpointerOptions().direct_io(true));
  ckpt.add_recoverable("awkward", tensors);
  const auto saved = ckpt.save_checkpoint();
  const auto copied = load_tensors(saved, "awkward", ReadMode::copy);
  const auto direct = load_tensors(saved, "awkward", ReadMode::direct);
  check_same(direct, copied);
  check_same(load_tensors(saved.paramfiles.at("awkward"), ReadMode::direct), copied);
  test::flip_byte(saved.paramfiles.at("awkward"), -100);  // inside the large tensor's data
  CHECK_THROWS_AS(load_tensors(saved, "awkward", ReadMode::direct), CorruptCheckpointError);
}

TEST_CASE("direct I/O: a failed direct write leaves earlier checkpoints intact and nothing behind", "[direct_io][io]") {
  TempDir dir;
  if (!accepts_o_direct(dir.path())) return test::skip("the test directory's file system refuses O_DIRECT");
  auto tensors = awkward_tensors();
  Checkpointer ckpt(dir.path(), CheckpointerOptions().direct_io(true).io_threads(2));
  ckpt.add_recoverable("awkward", tensors);
  const auto good = ckpt.save_checkpoint();
  int writes = 0;
  {
    test::FaultGuard eio([&](savepoint::detail::IoOp op, const fs::path& p) {
      const bool second = op == savepoint::detail::IoOp::write && p.filename() == "awkward.safetensors" && ++writes == 2;
      return second ? savepoint::detail::Fault{EIO} : savepoint::detail::Fault{};
    });
    CHECK_THROWS_AS(ckpt.save_checkpoint(), IoError);
  }
  CHECK(test::sequences(ckpt.list_checkpoints()) == std::vector<std::uint64_t>{good.sequence});
  CHECK(test::leftovers(dir.path()).empty());
}

TEST_CASE("direct I/O: where the file system refuses O_DIRECT, files go through the page cache with a log line",
          "[direct_io]") {
  // ramfs has no O_DIRECT (tmpfs has had it since Linux 6.6): mounted when running as root;
  // otherwise a mounted file system here that refuses it, if any.
  TempDir dir;
  const fs::path ramfs = dir / "ramfs";
  fs::create_directories(ramfs);
  struct Mount {
    fs::path at;
    bool mounted;
    ~Mount() {
      if (mounted) ::umount2(at.c_str(), MNT_DETACH);
    }
  } mount{ramfs, ::mount("ramfs", ramfs.c_str(), "ramfs", 0, nullptr) == 0};
  fs::path base = mount.mounted && !accepts_o_direct(ramfs) ? ramfs : fs::path();
  for (const char* candidate : {"/dev/shm", "/run/user", "/run"}) {
    std::error_code ec;
    if (base.empty() && fs::is_directory(candidate, ec) && ::access(candidate, W_OK) == 0 &&
        !accepts_o_direct(candidate))
      base = candidate;
  }
  if (base.empty()) return test::skip("no file system here refuses O_DIRECT (ramfs needs root to mount; tmpfs accepts it since Linux 6.6)");
  const fs::path root = base / ("savepoint-direct-fallback-" + std::to_string(::getpid()));
  fs::remove_all(root);
  auto tensors = awkward_tensors();
  test::CaptureLog log;
  Checkpoint saved;
  {
    Checkpointer ckpt(root, CheckpointerOptions().direct_io(true));
    ckpt.add_recoverable("awkward", tensors);
    saved = ckpt.save_checkpoint();
    CHECK(ckpt.verify(saved).empty());
    check_same(load_tensors(saved, "awkward", ReadMode::direct), load_tensors(saved, "awkward", ReadMode::copy));
  }
  CHECK(log.contains("refuses O_DIRECT"));
  fs::remove_all(root);
}

TEST_CASE("direct I/O: with a process group every rank writes its files directly, the same bytes as buffered",
          "[direct_io][world]") {
  TempDir dir;
  if (!accepts_o_direct(dir.path())) return test::skip("the test directory's file system refuses O_DIRECT");
  // Made here, once: the same bytes in both saves (the ranks only read them).
  const auto shared = awkward_tensors();
  const std::vector<std::shared_ptr<Awkward>> owns{awkward_tensors(), awkward_tensors()};
  auto save = [&](const fs::path& root, bool direct) {
    test::ThreadWorld world(2);
    auto outcomes = world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
      auto own = owns[rank];
      Checkpointer ckpt(root, CheckpointerOptions().direct_io(direct).io_threads(2).process_group(group));
      ckpt.add_recoverable("shared", shared);
      ckpt.add_recoverable("own", own, per_rank());
      return ckpt.save_checkpoint();
    });
    for (const auto& o : outcomes) {
      INFO(o.message());
      REQUIRE(o.value);
    }
    return *outcomes[0].value;
  };
  const auto buffered = save(dir / "buffered", false);
  const auto direct = save(dir / "direct", true);
  REQUIRE(direct.files.size() == 3);
  for (const auto& rec : direct.files) {
    CAPTURE(rec.file);
    const auto* other = buffered.file(rec.key, rec.rank);
    REQUIRE(other != nullptr);
    CHECK(rec.xxh3 == other->xxh3);
    CHECK(test::read_file(direct.path / rec.file) == test::read_file(buffered.path / other->file));
  }
  Checkpointer reader(dir / "direct", CheckpointerOptions().read_only(true));
  CHECK(reader.verify(direct).empty());
}

TEST_CASE("direct I/O: with a process group, where the file system refuses O_DIRECT, each rank falls back with a log "
          "line", "[direct_io][world]") {
  // A ramfs of its own (the line is logged once per file system and process): root only.
  TempDir dir;
  const fs::path root = dir / "ramfs";
  fs::create_directories(root);
  if (::mount("ramfs", root.c_str(), "ramfs", 0, nullptr) != 0)
    return test::skip("mounting a ramfs needs root");
  struct Unmount {
    fs::path at;
    ~Unmount() { ::umount2(at.c_str(), MNT_DETACH); }
  } unmount{root};
  if (accepts_o_direct(root)) return test::skip("this kernel's ramfs accepts O_DIRECT");
  std::mutex lines_mutex;
  int fallbacks = 0;
  savepoint::set_log_sink([&](LogLevel, std::string_view m) {
    std::lock_guard<std::mutex> lock(lines_mutex);
    if (m.find("refuses O_DIRECT") != std::string_view::npos) ++fallbacks;
  });
  test::ThreadWorld world(2);
  const std::vector<std::shared_ptr<Awkward>> owns{awkward_tensors(), awkward_tensors()};
  const auto outcomes = world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
    auto own = owns[rank];
    Checkpointer ckpt(root / "run", CheckpointerOptions().direct_io(true).process_group(group));
    ckpt.add_recoverable("awkward", own, per_rank());
    return ckpt.verify(ckpt.save_checkpoint()).size();
  });
  savepoint::set_log_sink(nullptr);
  for (const auto& o : outcomes) {
    INFO(o.message());
    CHECK(o.value == std::optional<std::size_t>(0));
  }
  CHECK(fallbacks >= 1);  // whichever rank opened a file first
}
