// Integrity: damaged checkpoints are detected, skipped with a warning, and reported.
#include "support.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>

#include "catch.hpp"

#include <cerrno>

using namespace savepoint;
using test::TempDir;
namespace fs = std::filesystem;

namespace {
struct Fixture {
  TempDir dir;
  std::vector<double> weights{1, 2, 3};
  Checkpointer ckpt{dir.path(), {{"weights", weights}}};
  Checkpoint save(double base) {
    weights = {base, base + 1, base + 2};
    return ckpt.save_checkpoint({{"base", base}});
  }
};
}  // namespace

TEST_CASE("a flipped byte is caught by the checksum and recovery falls back", "[integrity]") {
  Fixture f;
  const auto old = f.save(10);
  const auto newest = f.save(20);
  test::flip_byte(newest.path / "weights.json", 5);
  test::CaptureLog log;
  const auto loaded = f.ckpt.recover_if_possible();
  REQUIRE(loaded);
  CHECK(*loaded == old);
  CHECK(f.weights == std::vector<double>{10, 11, 12});
  CHECK(log.contains("Skipping checkpoint"));
  CHECK(log.contains("weights.json"));
  CHECK(log.contains("checksum"));

  const auto problems = f.ckpt.verify(newest);
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].key == "weights");
  CHECK(f.ckpt.verify(old).empty());

  f.ckpt.options().strict_recovery(true);
  CHECK_THROWS_AS(f.ckpt.recover_if_possible(), CorruptCheckpointError);
}

TEST_CASE("truncated and missing files are detected", "[integrity]") {
  Fixture f;
  const auto a = f.save(1);
  const auto b = f.save(2);
  fs::resize_file(b.path / "weights.json", 3);
  CHECK_THROWS_WITH(f.ckpt.load_checkpoint(b), Catch::Contains("bytes") && Catch::Contains("truncated"));
  fs::remove(b.path / "weights.json");
  CHECK_THROWS_WITH(f.ckpt.load_checkpoint(b), Catch::Contains("missing file"));
  REQUIRE(f.ckpt.recover_if_possible());
  CHECK(f.weights.front() == 1);
  (void)a;
}

TEST_CASE("when every candidate is damaged recovery says why instead of starting over", "[integrity]") {
  Fixture f;
  const auto only = f.save(1);
  test::flip_byte(only.path / "weights.json", 1);
  CHECK_THROWS_WITH(f.ckpt.recover_if_possible(), Catch::Contains("could be restored") && Catch::Contains(only.name()));
}

TEST_CASE("a damaged meta.json hides the checkpoint and is reported", "[integrity]") {
  Fixture f;
  const auto good = f.save(1);
  const auto bad = f.save(2);
  SECTION("bit flip in a value") {
    std::string text = test::read_file(bad.path / "meta.json");
    const auto at = text.find("\"base\": 2");
    REQUIRE(at != std::string::npos);
    text[at + 8] = '3';
    test::write_text(bad.path / "meta.json", text);
  }
  SECTION("truncated") { fs::resize_file(bad.path / "meta.json", 20); }
  SECTION("not JSON") { test::write_text(bad.path / "meta.json", "\x01\x02garbage"); }
  SECTION("empty") { test::write_text(bad.path / "meta.json", ""); }
  test::CaptureLog log;
  CHECK(f.ckpt.list_checkpoints() == std::vector<Checkpoint>{good});
  const auto unreadable = f.ckpt.unreadable_checkpoints();
  REQUIRE(unreadable.size() == 1);
  CHECK(unreadable[0].file == bad.path / "meta.json");
  REQUIRE(f.ckpt.recover_if_possible());
  CHECK(f.weights.front() == 1);
}

TEST_CASE("a newer format version is refused with a clear error", "[integrity]") {
  Fixture f;
  const auto c = f.save(1);
  auto doc = nlohmann::json::parse(test::read_file(c.path / "meta.json"));
  doc["format_version"] = 99;
  test::write_text(c.path / "meta.json", doc.dump());
  CHECK_THROWS_AS(detail::read_checkpoint(c.path), FormatVersionError);
  CHECK_THROWS_WITH(detail::read_checkpoint(c.path), Catch::Contains("format version 99"));
}

TEST_CASE("hostile meta.json entries are rejected", "[integrity]") {
  Fixture f;
  const auto c = f.save(1);
  const auto tamper = [&](const std::function<void(nlohmann::json&)>& edit) {
    auto doc = nlohmann::json::parse(test::read_file(c.path / "meta.json"));
    doc.erase("checksum");
    edit(doc);
    doc["checksum"] = detail::to_hex(detail::digest_bytes(doc.dump()).xxh3);  // a "valid" forgery
    return detail::parse_meta(c.path, doc.dump());
  };
  CHECK_THROWS_WITH(tamper([](auto& d) { d["files"][0]["file"] = "../../etc/passwd"; }), Catch::Contains("plain file name"));
  CHECK_THROWS_WITH(tamper([](auto& d) { d["files"][0]["file"] = "meta.json"; }), Catch::Contains("plain file name"));
  CHECK_THROWS_WITH(tamper([](auto& d) { d["files"][0]["key"] = "a/b"; }), Catch::Contains("invalid key"));
  CHECK_THROWS_AS(tamper([](auto& d) { d["files"].push_back(d["files"][0]); }), CorruptCheckpointError);
  CHECK_THROWS_AS(tamper([](auto& d) { d["sequence"] = -1; }), CorruptCheckpointError);
  CHECK_THROWS_AS(tamper([](auto& d) { d["files"][0]["xxh3"] = "zz"; }), CorruptCheckpointError);
  CHECK_THROWS_AS(tamper([](auto& d) { d["meta"] = 5; }), CorruptCheckpointError);
  CHECK_THROWS_WITH(tamper([](auto& d) { d["files"][0]["file"] = "PINNED"; }), Catch::Contains("plain file name"));
  // Wrong types anywhere are a damaged file, never a json::type_error escaping.
  CHECK_THROWS_AS(tamper([](auto& d) { d["format"] = 1; }), CorruptCheckpointError);
  CHECK_THROWS_AS(tamper([](auto& d) { d["files"][0]["key"] = 7; }), CorruptCheckpointError);
  CHECK_THROWS_AS(tamper([](auto& d) { d["unixtime"] = "noon"; }), CorruptCheckpointError);
  CHECK_THROWS_AS(detail::parse_meta(c.path, R"({"format": 1})"), CorruptCheckpointError);  // found by fuzz_meta
  CHECK_THROWS_AS(detail::parse_meta(c.path, R"({"format": "savepoint", "format_version": "1"})"), CorruptCheckpointError);
  CHECK_NOTHROW(tamper([](auto&) {}));
}

TEST_CASE("a key file replaced by a symlink is refused", "[integrity]") {
  Fixture f;
  const auto c = f.save(1);
  const auto outside = f.dir / "outside.json";
  fs::copy_file(c.path / "weights.json", outside);
  fs::remove(c.path / "weights.json");
  fs::create_symlink(outside, c.path / "weights.json");
  CHECK_THROWS_WITH(f.ckpt.load_checkpoint(c), Catch::Contains("symlink"));
}

TEST_CASE("injected I/O errors at every step of a save leave earlier checkpoints intact", "[integrity][io]") {
  Fixture f;
  const auto good = f.save(1);
  // Count the I/O steps of one save, then fail each of them in turn.
  int steps = 0;
  {
    test::FaultGuard count_steps([&](detail::IoOp op, const fs::path&) {
      if (op != detail::IoOp::statfs) ++steps;  // the free-space query is not a write step
      return detail::Fault{};
    });
    f.save(2);
  }
  f.ckpt.delete_checkpoints(keep(1).keep_recent(false).min_key("base").keep_newest(false));  // back to only `good`
  REQUIRE(f.ckpt.list_checkpoints() == std::vector<Checkpoint>{good});
  REQUIRE(steps > 8);
  for (int errnum : {ENOSPC, EIO}) {
    for (int fail_at = 1; fail_at <= steps; ++fail_at) {
      INFO("errno " << errnum << " at step " << fail_at << " of " << steps);
      int step = 0;
      bool threw = false;
      {
        test::FaultGuard fail_one_step([&](detail::IoOp op, const fs::path&) {
          if (op == detail::IoOp::statfs) return detail::Fault{};
          return ++step == fail_at ? detail::Fault{errnum} : detail::Fault{};
        });
        try {
          f.save(3);
        } catch (const IoError& e) {
          threw = true;
          CHECK(e.error_code() == errnum);
        }
      }
      const auto listed = f.ckpt.list_checkpoints();
      if (threw) {
        CHECK(listed == std::vector<Checkpoint>{good});
      } else {
        // The failure hit after the commit point (the final fsync of the root): the new
        // checkpoint is complete and loadable.
        CHECK(listed.size() == 2);
        f.ckpt.delete_checkpoint(listed.back());
      }
      // Nothing but the lock file and committed checkpoints is left behind.
      CHECK(test::leftovers(f.dir.path()).empty());
    }
  }
  f.weights.clear();
  REQUIRE(f.ckpt.recover_if_possible());
  CHECK(f.weights.front() == 1);
}

TEST_CASE("short writes are completed, not mistaken for success or failure", "[integrity][io]") {
  Fixture f;
  const auto c = [&] {
    test::FaultGuard short_writes([](detail::IoOp op, const fs::path&) {
      detail::Fault fault;
      if (op == detail::IoOp::write) fault.max_bytes = 3;
      return fault;
    });
    return f.save(5);
  }();
  CHECK(f.ckpt.verify(c).empty());
  f.weights.clear();
  f.ckpt.load_checkpoint(c);
  CHECK(f.weights == std::vector<double>{5, 6, 7});
}

TEST_CASE("retention never counts a damaged checkpoint as kept, so the good one survives", "[integrity][retention]") {
  Fixture f;
  const auto good = f.save(1);
  const auto damaged = f.save(2);
  fs::resize_file(damaged.path / "weights.json", 2);
  test::CaptureLog log;
  f.ckpt.delete_checkpoints(keep(1));
  const auto left = f.ckpt.list_checkpoints();
  CHECK(left == std::vector<Checkpoint>{good, damaged});  // damaged left for inspection
  CHECK(log.contains("not counting damaged"));
  f.weights.clear();
  REQUIRE(f.ckpt.recover_if_possible());
  CHECK(f.weights.front() == 1);
}
