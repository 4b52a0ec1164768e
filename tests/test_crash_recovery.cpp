// Crash states checked one by one, beside the explorer (test_crash_states.cpp): a temporary
// directory whose marker a crash lost, a listing that misses the newest checkpoint (the lock
// file's allocated mark), a meta.json damaged after it was listed (the meta.json cache's
// guarantee).
#include "support.hpp"

#include "catch.hpp"

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

TEST_CASE("power loss: a temporary directory that lost its marker is still cleaned, an unrelated one kept",
          "[crash-states]") {
  test::TempDir dir;
  { savepoint::Checkpointer ckpt(dir.path()); }
  std::filesystem::create_directories(dir / ".savepoint-tmp-123-4-0badcafe");  // kept the mkdir, lost the marker
  test::write_text(dir / ".savepoint-tmp-123-4-0badcafe" / "model.safetensors", "half");
  std::filesystem::create_directories(dir / ".savepoint-tmp-123-4-0badcafe-mine");  // not a name a save gives
  { savepoint::Checkpointer ckpt(dir.path()); }
  CHECK(test::leftovers(dir.path()) == std::vector<std::string>{".savepoint-tmp-123-4-0badcafe-mine"});
}

TEST_CASE("a checkpoint the listing misses does not give its sequence number away", "[crash-states][engine]") {
  test::TempDir dir;
  std::int64_t x = 0;
  savepoint::Checkpoint newest;
  {
    savepoint::Checkpointer ckpt(dir.path(), {{"x", x}});
    ckpt.save_checkpoint();
    newest = ckpt.save_checkpoint();
  }
  // A read of its meta.json that goes wrong (here: a flipped byte, put back afterwards).
  const std::string meta = test::read_file(newest.path / "meta.json");
  test::flip_byte(newest.path / "meta.json", 20);
  savepoint::Checkpoint next;
  {
    test::CaptureLog log;
    savepoint::Checkpointer ckpt(dir.path(), {{"x", x}});
    CHECK(ckpt.list_checkpoints().size() == 1);
    next = ckpt.save_checkpoint();
  }
  CHECK(next.sequence > newest.sequence);  // the lock file's allocated mark
  test::write_text(newest.path / "meta.json", meta);
  savepoint::Checkpointer ckpt(dir.path(), {{"x", x}});
  const auto all = ckpt.list_checkpoints();
  REQUIRE(all.size() == 3);
  CHECK(all[1].sequence == newest.sequence);
  CHECK(all[2].sequence == next.sequence);
  CHECK(test::read_file(dir / ".savepoint.lock").find("\nallocated " + std::to_string(next.sequence) + "\n") !=
        std::string::npos);
}

TEST_CASE("a meta.json damaged in place after a listing is caught by verify and recovery, not trusted from the cache",
          "[crash-states][engine]") {
  test::TempDir dir;
  std::int64_t x = 1;
  savepoint::Checkpointer ckpt(dir.path(), {{"x", x}});
  ckpt.save_checkpoint();
  x = 2;
  const auto second = ckpt.save_checkpoint();
  REQUIRE(ckpt.list_checkpoints().size() == 2);  // both parsed and cached
  test::flip_byte(second.path / "meta.json", 20);  // the directory itself does not change
  // The cache's guarantee: the listing shows what was valid when the directory last changed...
  CHECK(ckpt.list_checkpoints().size() == 2);
  // ...but nothing acts on a cached meta.json: verify and loads read it again.
  CHECK(!ckpt.verify(second).empty());
  test::CaptureLog log;
  x = 0;
  const auto recovered = ckpt.recover_if_possible();
  REQUIRE(recovered);
  CHECK(recovered->sequence < second.sequence);
  CHECK(x == 1);
  CHECK(log.contains("Skipping checkpoint"));
}
