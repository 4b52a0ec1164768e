// Checkpoint bundles: one file, loadable from disk or memory, refused when damaged.
#include "support.hpp"
#include "thread_group.hpp"

#include <savepoint/bundle.hpp>
#include <savepoint/detail/meta.hpp>

#include "catch.hpp"

#include <fstream>

#include <unistd.h>

using namespace savepoint;
using test::TempDir;

namespace {
struct Notes {  // a path-based hook of the user's own: it reads a real file
  std::string text;
  void save(const fs::path& p) const { test::write_text(p, text); }
  void load(const fs::path& p, bool) { text = test::read_file(p); }
};

struct Saved {
  TempDir dir;
  std::vector<double> weights{0.5, -1.25, 3.0};
  int step = 41;
  Notes notes{"hello bundle"};
  Checkpoint checkpoint;
  std::string bundle_bytes;
  Saved() {
    Checkpointer ckpt(dir.path() / "run", {{"weights", weights}, {"step", step}, {"notes", notes}});
    checkpoint = ckpt.save_checkpoint({{"loss", 0.25}});
    write_bundle(checkpoint, dir / "model.spb");
    bundle_bytes = test::read_file(dir / "model.spb");
  }
};
}  // namespace

TEST_CASE("a bundle from a file and from memory loads like its checkpoint directory", "[bundle]") {
  Saved s;
  std::vector<double> weights;
  int step = 0;
  Notes notes;
  SECTION("from the file") {
    const Bundle bundle = Bundle::open(s.dir / "model.spb");
    CHECK(bundle.checkpoint().meta == s.checkpoint.meta);
    CHECK(bundle.checkpoint().files == s.checkpoint.files);
    bundle.load({{"weights", weights}, {"step", step}, {"notes", notes}});
  }
  SECTION("from bytes in memory (no file involved)") {
    const std::string bytes = s.bundle_bytes;  // stands for an xxd -i array
    std::filesystem::remove(s.dir / "model.spb");
    std::filesystem::remove_all(s.dir / "run");
    const Bundle bundle = Bundle::view(bytes, "embedded model");
    CHECK(bundle.checkpoint().metric("loss") == 0.25);
    CHECK(nlohmann::json::parse(bundle.file_bytes("step")) == 41);
    bundle.load({{"weights", weights}, {"step", step}, {"notes", notes}});
  }
  CHECK(weights == s.weights);
  CHECK(step == 41);
  CHECK(notes.text == "hello bundle");
  // The path-based hook's scratch file is gone.
  const std::string scratch = "savepoint-bundle-" + std::to_string(::getpid()) + "-";
  for (const auto& e : test::entries(std::filesystem::temp_directory_path())) CHECK(e.rfind(scratch, 0) != 0);
}

TEST_CASE("a damaged bundle is refused before anything is loaded", "[bundle]") {
  Saved s;
  const std::string good = s.bundle_bytes;
  auto refused = [](const std::string& bytes) {
    std::vector<double> weights{9.0};
    int step = 7;
    try {
      Bundle::view(bytes, "damaged").load({{"weights", weights}, {"step", step}});
    } catch (const CorruptCheckpointError& e) {
      CHECK(std::string(e.what()).find("bundle 'damaged'") != std::string::npos);
      return weights == std::vector<double>{9.0} && step == 7;  // untouched
    }
    return false;  // loaded: not refused
  };
  // Every single byte flipped, one at a time.
  for (std::size_t i = 0; i < good.size(); ++i) {
    std::string bad = good;
    bad[i] = static_cast<char>(bad[i] ^ 0x01);
    INFO("byte " << i << " of " << good.size());
    REQUIRE(refused(bad));
  }
  // Truncated anywhere, extended, empty.
  for (std::size_t n : {std::size_t{0}, std::size_t{7}, std::size_t{31}, good.size() / 2, good.size() - 1}) {
    INFO("truncated to " << n);
    REQUIRE(refused(good.substr(0, n)));
  }
  REQUIRE(refused(good + std::string(64, '\0')));
  // And from a path: the message names the file.
  std::ofstream(s.dir / "cut.spb", std::ios::binary) << good.substr(0, good.size() - 3);
  CHECK_THROWS_WITH(Bundle::open(s.dir / "cut.spb"), Catch::Contains("cut.spb") && Catch::Contains("damaged"));
  CHECK_THROWS_AS(Bundle::open(s.dir / "absent.spb"), CorruptCheckpointError);
}

TEST_CASE("write_bundle refuses a damaged checkpoint and an existing output", "[bundle]") {
  Saved s;
  CHECK_THROWS_AS(write_bundle(s.checkpoint, s.dir / "model.spb"), UsageError);
  test::flip_byte(s.checkpoint.path / "weights.json", 1);
  CHECK_THROWS_AS(write_bundle(s.checkpoint, s.dir / "other.spb"), CorruptCheckpointError);
  CHECK_FALSE(std::filesystem::exists(s.dir / "other.spb"));
}

TEST_CASE("a bundle missing a registered key says which", "[bundle]") {
  Saved s;
  const Bundle bundle = Bundle::view(s.bundle_bytes);
  int other = 0;
  std::vector<double> weights;
  CHECK_THROWS_AS(bundle.load({{"weights", weights}, {"other", other}}), MissingKeyError);
  CHECK(weights.empty());
  bundle.load({{"weights", weights}, {"other", other}}, /*partial=*/true);
  CHECK(weights == s.weights);
}

TEST_CASE("a bundle's paramfiles are its checkpoint's, inside the bundle: a per-rank key names rank 0's file",
          "[bundle][paramfiles]") {
  TempDir dir;
  test::ThreadWorld world(2);
  const auto saved = world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
    int shared = 7;
    int own = 100 + rank;
    Checkpointer ckpt(dir.path() / "run", CheckpointerOptions().process_group(std::move(group)));
    ckpt.add_recoverable("shared", shared);
    ckpt.add_recoverable("own", own, per_rank());
    return ckpt.save_checkpoint();
  });
  for (int r = 0; r < 2; ++r) {
    INFO("rank " << r << ": " << saved[r].message());
    REQUIRE(saved[r].value.has_value());
  }
  const Checkpoint& c = *saved[0].value;
  write_bundle(c, dir / "job.spb");
  const std::string bytes = test::read_file(dir / "job.spb");
  const std::string file_name = (dir / "job.spb").string();
  const std::string memory_name = "job in memory";
  for (const auto& [bundle, name] : {std::make_pair(Bundle::open(dir / "job.spb"), file_name),
                                     std::make_pair(Bundle::view(bytes, memory_name), memory_name)}) {
    INFO("bundle '" << name << "'");
    const Checkpoint& inside = bundle.checkpoint();
    // What the reader reports: the directory's files, under the bundle's name.
    const std::map<std::string, fs::path> expected{{"own", fs::path(name) / "own.rank0.json"},
                                                   {"shared", fs::path(name) / "shared.json"}};
    CHECK(inside.paramfiles == expected);
    // ... which is the rule (detail::paramfiles_of) and the saved checkpoint's choice of files.
    CHECK(inside.paramfiles == savepoint::detail::paramfiles_of(inside.files, name));
    REQUIRE(inside.paramfiles.size() == c.paramfiles.size());
    for (const auto& entry : c.paramfiles) {
      INFO("key '" << entry.first << "'");
      REQUIRE(inside.paramfiles.count(entry.first) == 1);
      CHECK(inside.paramfiles.at(entry.first) == fs::path(name) / entry.second.filename());
    }
  }
}
