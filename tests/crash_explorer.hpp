// The crash-state explorer's machinery (tests/test_crash_states.cpp): the file-system
// operations of a save, recorded through the I/O seam (detail::set_io_recorder), and every
// state a file system may persist when the power goes after any one of them, rebuilt as a
// tree that can be materialized in a fresh directory. Knows nothing of checkpoints: the
// scenarios and the checks of each state are in crash_scenarios.hpp. ALICE ("All File
// Systems Are Not Created Equal", OSDI'14) did this for SQLite, LevelDB and Git.
//
// Two persistence models (docs/reliability.md, "Power loss: the crash-state explorer"):
//  - ordered (ext4 data=ordered-like): the operations persist in order; a crash keeps a prefix
//    of them, at least up to the last fsync (a journal commit flushes everything before it);
//    a file's data is what it held at that point (data before metadata: no garbage).
//  - weak (POSIX): what an fsync made durable stays (a file's data by the fsync of that file;
//    a directory's entries -- create, mkdir, rename, unlink -- by the fsync of that directory);
//    any other operation may be lost, independently of the others, except that the operations
//    on one directory entry persist in order (rename is atomic). The data a file was given
//    since its last fsync may be missing, cut at a 512-byte sector boundary (half-way in a
//    one-sector file), all there, or zeros in its place.
//    The lock file's in-place rewrite (a few bytes in one sector) is old or new. A reused file
//    overwritten in place (the memory tier's slots) may keep any mix of old and new sectors:
//    new up to each sector boundary and old after, old up to it and new after, and every
//    other sector new (the rest old), besides all old and all new.
#pragma once

#include <savepoint/detail/io.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace crash_states {

namespace fs = std::filesystem;
namespace dio = savepoint::detail;

// ------------------------------------------------------------------ the recorded operations
struct Node {
  bool dir = false;
  std::string data;
  std::map<std::string, int> entries;
};
using Tree = std::vector<Node>;  // node 0 is the root

struct Op {
  enum Kind { link, unlink, rename, exchange, data, sync } kind = sync;
  int dir = -1, dir2 = -1, ino = -1, ino2 = -1;
  std::string name, name2;
  std::string contents;  // data: the file's whole contents after this operation
  bool replace = false;  // data: an in-place rewrite (the lock file): old or new
  std::string what;      // for reports
  bool in_place = false;  // data: a reused file overwritten in place: each sector old or new
};

// The live tree follows the recorded operations; `initial` is the root before them.
class Recording {
 public:
  explicit Recording(fs::path root);

  void on(const dio::IoRecord& r);

  const std::vector<Op>& ops() const { return ops_; }
  const Tree& initial() const { return initial_; }
  const Tree& live() const { return live_; }
  std::size_t size() const {
    std::lock_guard<std::mutex> guard(mutex_);
    return ops_.size();
  }

  // Applies one operation's change of directory entries (or data) to a tree.
  static void apply(Tree& t, const Op& op);

 private:
  void snapshot(const fs::path& dir, int node);
  int new_node(bool dir);
  int entry(int dir, const std::string& name) const;
  std::pair<int, std::string> parent_of(const fs::path& p) const;
  int lookup(const fs::path& p) const;
  void push(Op op);
  void remove_tree(int dir, const std::string& name, const std::string& rel);

  fs::path root_;
  Tree live_, initial_;
  std::vector<Op> ops_;
  mutable std::mutex mutex_;
};

// Installs the recorder for its lifetime.
struct RecorderGuard {
  explicit RecorderGuard(Recording& r) {
    dio::set_io_recorder([&r](const dio::IoRecord& record) { r.on(record); });
  }
  ~RecorderGuard() { dio::set_io_recorder(nullptr); }
  RecorderGuard(const RecorderGuard&) = delete;
  RecorderGuard& operator=(const RecorderGuard&) = delete;
};

// ------------------------------------------------------------------ crash states
struct CrashState {
  Tree tree;
  std::string how;  // which operations were dropped, which data cut: for the report
};

// Names and contents of everything below `node`: equal trees, equal fingerprints.
std::uint64_t fingerprint(const Tree& t, int node = 0);

// Creates the tree below `node` in the existing directory `dir`.
void materialize(const Tree& t, int node, const fs::path& dir);

// The tree the operations [0, k) leave in full.
Tree replay(const Recording& rec, std::size_t k);

// ordered: every prefix [0, p) with p from just after the last fsync before k up to k.
std::vector<CrashState> ordered_states(const Recording& rec, std::size_t k);

// weak: the durable part, plus any subset of the rest within the model's rules (see the top).
using Emit = std::function<void(const CrashState&)>;
// Returns false when it sampled (more states than `cap`), true when it emitted all of them.
bool weak_states(const Recording& rec, std::size_t k, std::size_t cap, std::mt19937_64& rng, const Emit& emit);

}  // namespace crash_states
