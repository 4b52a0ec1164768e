// Scrub: every distinct file of a root checked once, each damage named with every checkpoint
// that holds the file (incremental saves hard-link unchanged parts).
#include "tensor_blob.hpp"
#include "support.hpp"

#include <savepoint/detail/io.hpp>

#include "catch.hpp"

#include <fmt/format.h>
#include <sys/stat.h>
#ifdef __linux__
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <atomic>
#include <cmath>
#include <map>
#include <mutex>
#include <utility>

using namespace savepoint;
using test::TempDir;
namespace fs = std::filesystem;

namespace scrub_test {

// A root of incremental checkpoints: "frozen" never changes (its parts are linked from save to
// save), "trained" changes at every save. Parts of about 4 KiB.
struct Root {
  TempDir dir;
  test::TensorBlob frozen, trained;
  std::unique_ptr<Checkpointer> ckpt;
  explicit Root(int saves = 5, std::size_t frozen_parts = 4, std::size_t trained_parts = 2) {
    test::register_tensor_blob();
    ckpt = std::make_unique<Checkpointer>(dir.path());
    ckpt->add_recoverable("frozen", frozen);
    ckpt->add_recoverable("trained", trained);
    ckpt->options().incremental(true).part_bytes(4096).full_save_every(0);
    frozen.values.resize(frozen_parts * 512);
    for (std::size_t i = 0; i < frozen.values.size(); ++i) frozen.values[i] = static_cast<std::int64_t>(i * i);
    for (int s = 0; s < saves; ++s) {
      trained.values.assign(trained_parts * 512, s);
      ckpt->save_checkpoint({{"save", s}});
    }
  }
};

// What lstat says: each distinct file (device, inode) with the checkpoints holding it, oldest first.
struct Inodes {
  struct File {
    std::vector<std::string> checkpoints;
    std::vector<fs::path> paths;
    std::uint64_t bytes = 0;
  };
  std::map<std::pair<std::uint64_t, std::uint64_t>, File> files;
  explicit Inodes(const Checkpointer& ckpt) {
    for (const auto& c : ckpt.list_checkpoints())
      for (const auto& rec : c.files) {
        struct stat st {};
        REQUIRE(::lstat((c.path / rec.file).c_str(), &st) == 0);
        auto& f = files[{static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino)}];
        f.checkpoints.push_back(c.name());
        f.paths.push_back(c.path / rec.file);
        f.bytes = static_cast<std::uint64_t>(st.st_size);
      }
  }
  // The file held by the most checkpoints (a frozen part).
  const File& most_shared() const {
    const File* best = &files.begin()->second;
    for (const auto& f : files)
      if (f.second.checkpoints.size() > best->checkpoints.size()) best = &f.second;
    return *best;
  }
  std::uint64_t bytes() const {
    std::uint64_t n = 0;
    for (const auto& f : files) n += f.second.bytes;
    return n;
  }
};

bool contains(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

void require_same(const ScrubReport& a, const ScrubReport& b) {
  CHECK(a.checkpoints == b.checkpoints);
  CHECK(a.files == b.files);
  CHECK(a.files_read == b.files_read);
  CHECK(a.bytes == b.bytes);
  CHECK(a.bytes_read == b.bytes_read);
  REQUIRE(a.damaged.size() == b.damaged.size());
  for (std::size_t i = 0; i < a.damaged.size(); ++i) {
    CHECK(a.damaged[i].key == b.damaged[i].key);
    CHECK(a.damaged[i].file == b.damaged[i].file);
    CHECK(a.damaged[i].path == b.damaged[i].path);
    CHECK(a.damaged[i].reason == b.damaged[i].reason);
    CHECK(a.damaged[i].checkpoints == b.damaged[i].checkpoints);
  }
  CHECK(a.unreadable.size() == b.unreadable.size());
}

}  // namespace scrub_test

TEST_CASE("scrub names every checkpoint sharing a part with a flipped byte in one entry", "[scrub]") {
  scrub_test::Root r;
  const scrub_test::Inodes inodes(*r.ckpt);
  const auto& shared = inodes.most_shared();
  REQUIRE(shared.checkpoints.size() >= 3);  // linked from save to save
  test::flip_byte(shared.paths.back(), -3);  // in place: every checkpoint holding the inode sees it

  const ScrubReport report = r.ckpt->scrub();
  CHECK_FALSE(report.clean());
  REQUIRE(report.damaged.size() == 1);
  const auto& d = report.damaged.front();
  CHECK(d.checkpoints == shared.checkpoints);
  CHECK(d.file == shared.paths.back().filename().string());
  CHECK(d.path == shared.paths.back());  // the newest checkpoint's name of it
  CHECK(d.key == "frozen");
  CHECK(scrub_test::contains(d.reason, "fails its checksum"));
  // verify(), checkpoint by checkpoint, agrees on who is damaged.
  std::vector<std::string> damaged_by_verify;
  for (const auto& c : r.ckpt->list_checkpoints())
    if (!r.ckpt->verify(c).empty()) damaged_by_verify.push_back(c.name());
  CHECK(damaged_by_verify == shared.checkpoints);
}

TEST_CASE("scrub reports a truncated shared part with all its dependents even when it reads a subset", "[scrub]") {
  scrub_test::Root r;
  const scrub_test::Inodes inodes(*r.ckpt);
  const auto& shared = inodes.most_shared();
  fs::resize_file(shared.paths.front(), shared.bytes - 10);  // same inode

  for (const double percent : {100.0, 1.0}) {
    const ScrubReport report = r.ckpt->scrub(ScrubOptions().subset(percent).with_seed(7));
    REQUIRE(report.damaged.size() == 1);
    CHECK(report.damaged[0].checkpoints == shared.checkpoints);
    CHECK(scrub_test::contains(report.damaged[0].reason,
                               fmt::format("has {} bytes, meta.json recorded {}", shared.bytes - 10, shared.bytes)));
  }
}

TEST_CASE("scrub reports a part missing from one checkpoint with that checkpoint only", "[scrub]") {
  scrub_test::Root r;
  const scrub_test::Inodes inodes(*r.ckpt);
  const auto& shared = inodes.most_shared();
  const std::size_t middle = shared.checkpoints.size() / 2;
  fs::remove(shared.paths[middle]);  // the others still hold the inode, intact

  const ScrubReport report = r.ckpt->scrub();
  REQUIRE(report.damaged.size() == 1);
  CHECK(report.damaged[0].checkpoints == std::vector<std::string>{shared.checkpoints[middle]});
  CHECK(report.damaged[0].path == shared.paths[middle]);
  CHECK(scrub_test::contains(report.damaged[0].reason, "is missing file"));
  CHECK(report.files == inodes.files.size() + 1);  // the missing one counts as a file of its own
  CHECK(report.files_read == inodes.files.size());
}

TEST_CASE("scrub of an intact root reads each distinct file once", "[scrub]") {
  scrub_test::Root r;
  const scrub_test::Inodes inodes(*r.ckpt);
  std::size_t records = 0;
  for (const auto& c : r.ckpt->list_checkpoints()) records += c.files.size();
  REQUIRE(inodes.files.size() < records);  // some files are shared, or this test proves nothing

  std::mutex mutex;
  std::map<fs::path, int> reads;  // part files read, by path
  ScrubReport report;
  {
    test::FaultGuard count([&](detail::IoOp op, const fs::path& p) {
      if (op == detail::IoOp::read && p.extension() == ".safetensors") {
        std::lock_guard<std::mutex> lock(mutex);
        ++reads[p];
      }
      return detail::Fault{};
    });
    report = r.ckpt->scrub();
  }
  CHECK(report.clean());
  CHECK(report.checkpoints == 5);
  CHECK(report.files == inodes.files.size());
  CHECK(report.files_read == report.files);
  CHECK(report.bytes == inodes.bytes());
  CHECK(report.bytes_read == report.bytes);
  for (const auto& f : inodes.files) {
    int n = 0;
    for (const auto& p : f.second.paths) n += reads.count(p) ? reads[p] : 0;
    CHECK(n == 1);
  }
  // Read-only works too, and sees the same.
  Checkpointer reader(r.dir.path(), CheckpointerOptions().read_only(true));
  scrub_test::require_same(reader.scrub(), report);
}

TEST_CASE("a subset scrub reads about that share of the bytes and never names fewer dependents", "[scrub]") {
  scrub_test::Root r(/*saves=*/5, /*frozen_parts=*/32, /*trained_parts=*/8);  // many parts of about 4 KiB
  const scrub_test::Inodes inodes(*r.ckpt);
  const auto& shared = inodes.most_shared();
  test::flip_byte(shared.paths.front(), -3);
  const auto full = r.ckpt->scrub();
  REQUIRE(full.damaged.size() == 1);

  const auto part = r.ckpt->scrub(ScrubOptions().subset(30).with_seed(42));
  const double share = static_cast<double>(part.bytes_read) / static_cast<double>(part.bytes);
  CHECK(share >= 0.2);
  CHECK(share <= 0.5);
  CHECK(part.files_read < part.files);
  CHECK(part.files == full.files);
  CHECK(part.bytes == full.bytes);
  const auto again = r.ckpt->scrub(ScrubOptions().subset(30).with_seed(42));
  scrub_test::require_same(again, part);  // a seed repeats its choice

  int found = 0;
  for (std::uint64_t seed = 1; seed <= 20; ++seed) {
    const auto report = r.ckpt->scrub(ScrubOptions().subset(30).with_seed(seed));
    CHECK(report.damaged.size() <= 1);
    for (const auto& d : report.damaged) {
      ++found;
      CHECK(d.checkpoints == full.damaged[0].checkpoints);
    }
  }
  CHECK(found > 0);
  CHECK(found < 20);
}

TEST_CASE("scrub refuses a subset of 0 percent or less or over 100 percent", "[scrub]") {
  scrub_test::Root r(/*saves=*/1);
  for (const double bad : {0.0, -5.0, 100.5, std::nan("")}) {
    CHECK_THROWS_AS(r.ckpt->scrub(ScrubOptions().subset(bad)), UsageError);
    CHECK_THROWS_AS(r.ckpt->scrub_in_background(ScrubOptions().subset(bad)), UsageError);
  }
}

TEST_CASE("scrub reports a checkpoint whose meta.json is damaged as unreadable", "[scrub]") {
  scrub_test::Root r(/*saves=*/3);
  const auto listed = r.ckpt->list_checkpoints();
  test::write_text(listed[1].path / "meta.json", "{ not json");
  test::CaptureLog quiet;
  const auto report = r.ckpt->scrub();
  CHECK_FALSE(report.clean());
  CHECK(report.damaged.empty());
  CHECK(report.checkpoints == 2);
  REQUIRE(report.unreadable.size() == 1);
  CHECK(report.unreadable[0].file.parent_path().filename() == listed[1].name());
}

TEST_CASE("scrub_in_background gives scrub's report at low priority and outlives its Checkpointer", "[scrub]") {
  scrub_test::Root r;
  const scrub_test::Inodes inodes(*r.ckpt);
  const auto& shared = inodes.most_shared();
  test::flip_byte(shared.paths.front(), -3);
  const ScrubReport now = r.ckpt->scrub();

#ifdef __linux__
  const int own_nice = ::getpriority(PRIO_PROCESS, 0);
  std::atomic<int> scrub_nice{-100};
  auto options = ScrubOptions().on_progress([&](std::uint64_t, std::uint64_t) {
    scrub_nice = ::getpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)));
  });
#else
  ScrubOptions options;
#endif
  auto later = r.ckpt->scrub_in_background(options);
  r.ckpt.reset();  // the future holds no reference to it
  const ScrubReport report = later.get();
  scrub_test::require_same(report, now);
#ifdef __linux__
  CHECK(scrub_nice == 19);
  CHECK(::getpriority(PRIO_PROCESS, 0) == own_nice);  // only the scrub's thread was lowered
#endif
}
