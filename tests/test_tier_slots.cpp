// The memory tier's ring of slots: a memory save overwrites, in place, the files of the
// checkpoint retention let go (their pages stay resident), and a crash at any point of such
// an overwrite never leaves a slot that loads as a checkpoint it is not (crash states, as in
// test_crash_states.cpp, recorded in the tier's directory).
#include "crash_explorer.hpp"
#include "support.hpp"
#include "tensor_blob.hpp"
#include "thread_group.hpp"

#include <savepoint/core.hpp>

#include "catch.hpp"
#include <fmt/format.h>

#include <sys/stat.h>

#include <cstdint>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using namespace savepoint;
using test::TensorBlob;

// Two tensor files whose every value derives from the step (several 512-byte sectors each).
struct SlotState {
  TensorBlob a, b;
  void set(std::int64_t step) {
    a.values.resize(3000);
    b.values.resize(700);
    for (std::size_t i = 0; i < a.values.size(); ++i) a.values[i] = step * 1000003 + static_cast<std::int64_t>(i);
    for (std::size_t i = 0; i < b.values.size(); ++i) b.values[i] = step * 7 - static_cast<std::int64_t>(i);
  }
  bool is(std::int64_t step) const {
    SlotState want;
    want.set(step);
    return a.values == want.a.values && b.values == want.b.values;
  }
};

// One process, one node: the tier in `root`/shm, the disk tier in `root`/disk.
std::unique_ptr<Checkpointer> open_tier(const fs::path& root, SlotState& s, bool reuse = true) {
  test::register_tensor_blob();
  auto ckpt = std::make_unique<Checkpointer>(
      root / "disk", CheckpointerOptions().memory_tier(MemoryTierOptions()
                                                           .directory(root / "shm")
                                                           .keep(1)
                                                           .background_priority(BackgroundPriority::normal)
                                                           .reuse_files(reuse)));
  ckpt->add_recoverable("a", s.a);
  ckpt->add_recoverable("b", s.b);
  return ckpt;
}

// One memory save of step `step`, waited for.
void save_step(Checkpointer& ckpt, SlotState& s, std::int64_t step) {
  s.set(step);
  REQUIRE(ckpt.save_to_memory({{"step", step}}));
  ckpt.wait();
}

std::uint64_t inode_of(const fs::path& p) {
  struct stat st {};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return static_cast<std::uint64_t>(st.st_ino);
}

// own/'s committed checkpoint (keep 1: the only one).
fs::path only_checkpoint(const fs::path& own) {
  std::vector<fs::path> found;
  for (const auto& e : fs::directory_iterator(own))
    if (e.path().filename().string().rfind("CKPT+", 0) == 0) found.push_back(e.path());
  REQUIRE(found.size() == 1);
  return found.front();
}

std::vector<std::string> hidden_entries(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind(".savepoint-", 0) == 0) out.push_back(e.path().filename().string());
  return out;
}

}  // namespace

TEST_CASE("memory tier slots: a save overwrites the files of the checkpoint retention let go, in place",
          "[memory_tier][slots]") {
  test::TempDir tmp;
  SlotState s;
  auto ckpt = open_tier(tmp.path(), s);
  const fs::path own = tmp.path() / "shm" / "own";
  std::vector<std::map<std::string, std::uint64_t>> inodes;  // per save: file -> inode
  for (std::int64_t step = 1; step <= 5; ++step) {
    save_step(*ckpt, s, step);
    const fs::path newest = only_checkpoint(own);
    std::map<std::string, std::uint64_t> files;
    for (const auto& e : fs::directory_iterator(newest))
      if (e.path().extension() == ".safetensors") files[e.path().filename().string()] = inode_of(e.path());
    REQUIRE(files.size() == 2);
    CHECK_FALSE(fs::exists(newest / detail::kRecycleBin));  // nothing of an earlier save in a committed one
    inodes.push_back(files);
    // keep 1 plus one spare (the checkpoint before, its files in its recycle bin), no temporary
    std::size_t spares = 0;
    for (const auto& name : hidden_entries(own)) {
      INFO(name);
      CHECK(name.rfind(".savepoint-tmp-", 0) != 0);
      spares += name.rfind(detail::kSparePrefix, 0) == 0;
    }
    CHECK(spares == (step == 1 ? 0u : 1u));
  }
  // From the third save on, each save's files are the files of the save two before (the slot
  // the retention after the save before let go): the same inodes, new bytes.
  for (std::size_t i = 2; i < inodes.size(); ++i) {
    INFO("save " << i + 1);
    CHECK(inodes[i] == inodes[i - 2]);
    CHECK(inodes[i] != inodes[i - 1]);
  }
  ckpt.reset();
  SlotState loaded;
  auto again = open_tier(tmp.path(), loaded);
  const auto got = again->recover_if_possible();
  REQUIRE(got);
  CHECK(got->meta.at("step") == 5);
  CHECK(loaded.is(5));
  CHECK(again->verify(*got).empty());
}

// The inodes of the regular files under each `sub`/rank*/<checkpoint>/ of a node, by
// "rank*/file" (the checkpoint's name left out: each save has its own).
std::map<std::string, std::uint64_t> copy_inodes(const fs::path& node, const char* sub) {
  std::map<std::string, std::uint64_t> out;
  if (!fs::exists(node / sub)) return out;
  for (const auto& rank : fs::directory_iterator(node / sub))
    for (const auto& ckpt : fs::directory_iterator(rank.path()))
      if (ckpt.path().filename().string().rfind("CKPT+", 0) == 0)
        for (const auto& f : fs::directory_iterator(ckpt.path()))
          if (f.is_regular_file() && f.path().filename() != "meta.json" && f.path().filename() != "manifest.json")
            out[rank.path().filename().string() + "/" + f.path().filename().string()] = inode_of(f.path());
  return out;
}

TEST_CASE("memory tier slots: buddy copies and parity shares are overwritten in place too", "[memory_tier][slots]") {
  test::register_tensor_blob();
  for (const Redundancy redundancy : {Redundancy::partner, Redundancy::parity}) {
    const int ranks = redundancy == Redundancy::parity ? 4 : 2;  // one rank per node
    const char* sub = redundancy == Redundancy::parity ? "parity" : "replicas";
    INFO(sub);
    test::TempDir tmp;
    const auto node_dir = [&](int node) { return tmp.path() / "shm" / ("node" + std::to_string(node)); };
    std::vector<std::map<std::string, std::uint64_t>> inodes;  // node 0's, per save
    std::mutex m;
    test::ThreadWorld world(ranks), replication(ranks);
    const auto out = world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
      TensorBlob state;
      MemoryTierOptions tier(node_dir(rank));
      tier.node_id("node" + std::to_string(rank)).keep(1).redundancy(redundancy).replication_group(replication.group(rank));
      Checkpointer ckpt(tmp.path() / "disk", CheckpointerOptions().process_group(group).memory_tier(tier));
      ckpt.add_recoverable("state", state, per_rank());
      for (std::int64_t step = 1; step <= 4; ++step) {
        state.values.assign(5000, step * 100 + rank);
        ckpt.save_to_memory({{"step", step}});
        ckpt.wait();
        group->barrier();
        if (rank == 0) {
          std::lock_guard<std::mutex> lock(m);
          inodes.push_back(copy_inodes(node_dir(0), sub));
        }
        group->barrier();
      }
      return 0;
    });
    for (int r = 0; r < ranks; ++r) {
      INFO("rank " << r << ": " << out[r].message());
      REQUIRE(out[r].value.has_value());
    }
    REQUIRE(inodes.size() == 4);
    CHECK_FALSE(inodes[0].empty());
    for (std::size_t i = 2; i < inodes.size(); ++i) {
      INFO("save " << i + 1);
      CHECK(inodes[i] == inodes[i - 2]);  // the files of the slot retention let go after save i - 1
      CHECK(inodes[i] != inodes[i - 1]);
    }
  }
}

TEST_CASE("memory tier slots: with reuse_files(false) no spare is kept and every save writes new files",
          "[memory_tier][slots]") {
  test::TempDir tmp;
  SlotState s;
  const fs::path own = tmp.path() / "shm" / "own";
  {
    auto ckpt = open_tier(tmp.path(), s);  // a run with the ring leaves a spare
    for (std::int64_t step = 1; step <= 2; ++step) {
      save_step(*ckpt, s, step);
    }
    CHECK(hidden_entries(own).size() == 1);
  }
  auto ckpt = open_tier(tmp.path(), s, /*reuse=*/false);
  // Each save's tensor files, kept alive by a second name (a file system may hand a deleted
  // file's inode number to a new file): every save's inodes are new, and no kept file changes.
  const fs::path keep = tmp.path() / "keep";
  fs::create_directories(keep);
  std::set<std::uint64_t> seen;
  std::map<fs::path, std::string> kept;  // second name -> its bytes when linked
  for (std::int64_t step = 3; step <= 5; ++step) {
    save_step(*ckpt, s, step);
    CHECK(hidden_entries(own).empty());  // the earlier run's spare removed, none kept
    for (const auto& e : fs::directory_iterator(only_checkpoint(own))) {
      if (e.path().extension() != ".safetensors") continue;
      CHECK(seen.insert(inode_of(e.path())).second);
      const fs::path link = keep / (std::to_string(step) + "-" + e.path().filename().string());
      fs::create_hard_link(e.path(), link);
      kept[link] = test::read_file(link);
    }
  }
  CHECK(seen.size() == 6);
  for (const auto& [link, bytes] : kept) CHECK(test::read_file(link) == bytes);
}

TEST_CASE("memory tier slots: a reused file with another name (a hard link) is never overwritten",
          "[memory_tier][slots]") {
  test::TempDir tmp;
  SlotState s;
  auto ckpt = open_tier(tmp.path(), s);
  const fs::path own = tmp.path() / "shm" / "own";
  save_step(*ckpt, s, 1);
  // Someone keeps a second name of save 1's file "a" (as a recovery's assembled links do).
  fs::path a1;
  for (const auto& e : fs::directory_iterator(only_checkpoint(own)))
    if (e.path().filename().string().rfind("a", 0) == 0) a1 = e.path();
  REQUIRE(!a1.empty());
  const fs::path kept = tmp.path() / "kept-a";
  fs::create_hard_link(a1, kept);
  const std::string before = test::read_file(kept);
  for (std::int64_t step = 2; step <= 3; ++step) {
    save_step(*ckpt, s, step);
  }
  CHECK(test::read_file(kept) == before);  // save 3 took a new file instead of this one
  SlotState loaded;
  ckpt.reset();
  auto again = open_tier(tmp.path(), loaded);
  REQUIRE(again->recover_if_possible());
  CHECK(loaded.is(3));
}

namespace {

// Records saves 3 and 4 of a tier (keep 1: each overwrites the slot of the save two before),
// then checks every crash state: a fresh Checkpointer recovers without an exception, loads only
// a checkpoint whose every byte is that step's, at least the newest step whose save returned
// when the whole prefix persisted (a process crash), and saves again.
struct SlotFigures {
  std::size_t ops = 0, overwrites = 0, states = 0, violations = 0;
  std::vector<std::string> reports;
};

SlotFigures explore_slots(const fs::path& work) {
  using namespace crash_states;
  const fs::path root = work / "recorded";
  fs::create_directories(root);
  SlotState s;
  auto ckpt = open_tier(root, s);
  save_step(*ckpt, s, 1);  // two saves before the recording: the slot of the first is the third's spare
  save_step(*ckpt, s, 2);
  Recording rec(root);
  std::map<std::int64_t, std::size_t> returned_at;  // step -> operations recorded when its save returned
  {
    RecorderGuard guard(rec);
    for (std::int64_t step = 3; step <= 4; ++step) {
      save_step(*ckpt, s, step);
      returned_at[step] = rec.size();
    }
  }
  ckpt.reset();
  SlotFigures f;
  f.ops = rec.ops().size();
  for (const auto& op : rec.ops()) f.overwrites += op.in_place;

  std::set<std::uint64_t> seen;
  std::size_t n = 0;
  for (std::size_t k = 0; k <= rec.ops().size(); ++k) {
    std::int64_t must_have = 2;  // the newest save returned by then
    for (const auto& [step, at] : returned_at)
      if (k >= at) must_have = step;
    std::mt19937_64 rng(1000003 + k);
    auto check = [&](const CrashState& st, bool whole_prefix) {
      if (!seen.insert(fingerprint(st.tree) * 2 + whole_prefix).second) return;
      ++f.states;
      const fs::path dir = work / fmt::format("state-{}", n++);
      fs::create_directories(dir);
      materialize(st.tree, 0, dir);
      std::string bad;
      try {
        SlotState loaded;
        auto fresh = open_tier(dir, loaded);
        const auto got = fresh->recover_if_possible();
        if (got) {
          const std::int64_t step = got->meta.at("step").get<std::int64_t>();
          if (!loaded.is(step)) bad += fmt::format("loaded step {} with other bytes; ", step);
          if (whole_prefix && step < must_have) bad += fmt::format("loaded step {}, not {}; ", step, must_have);
        } else if (whole_prefix) {
          bad += fmt::format("nothing recovered, step {} was complete; ", must_have);
        }
        loaded.set(9);  // and the next save succeeds over whatever the crash left
        if (!fresh->save_to_memory({{"step", 9}})) bad += "the next save was skipped; ";
        fresh->wait();
      } catch (const std::exception& e) {
        bad += std::string("exception: ") + e.what();
      }
      fs::remove_all(dir);
      if (bad.empty()) return;
      ++f.violations;
      if (f.reports.size() < 3) f.reports.push_back(fmt::format("crash after {} operations ({}): {}", k, st.how, bad));
    };
    const auto ordered = ordered_states(rec, k);
    for (std::size_t i = 0; i < ordered.size(); ++i) check(ordered[i], i + 1 == ordered.size());
    weak_states(rec, k, /*cap=*/4, rng, [&](const CrashState& st) { check(st, false); });
  }
  return f;
}

}  // namespace

TEST_CASE("memory tier slots: a crash at any point of a save that overwrites a slot never loads a checkpoint it "
          "is not",
          "[memory_tier][slots][crash-states]") {
  set_log_sink([](LogLevel, std::string_view) {});  // recovery warnings are expected
  test::TempDir tmp;
  const SlotFigures f = explore_slots(tmp.path());
  set_log_sink(nullptr);
  std::cout << fmt::format("crash-states: tier slots {:>3} operations ({} overwrites)  {:>5} states  {} violations",
                           f.ops, f.overwrites, f.states, f.violations)
            << std::endl;
  CHECK(f.overwrites >= 4);  // both saves overwrote both files of a spare
  for (const auto& r : f.reports) UNSCOPED_INFO(r);
  CHECK(f.violations == 0);
}

TEST_CASE("memory tier slots: the explorer catches a spare overwritten before its renames are durable",
          "[memory_tier][slots][crash-states]") {
  set_log_sink([](LogLevel, std::string_view) {});
  test::TempDir tmp;
  detail::protocol_breaks().skip_recycle_fsyncs = true;
  SlotFigures f;
  try {
    f = explore_slots(tmp.path());
  } catch (...) {
    detail::protocol_breaks().skip_recycle_fsyncs = false;
    throw;
  }
  detail::protocol_breaks().skip_recycle_fsyncs = false;
  set_log_sink(nullptr);
  std::cout << fmt::format("crash-states: tier slots, broken protocol: {} states, {} violations", f.states,
                           f.violations)
            << std::endl;
  REQUIRE(f.violations > 0);
  for (const auto& r : f.reports) CHECK(r.find("(weak: ") != std::string::npos);  // the ordered model cannot see it
}
