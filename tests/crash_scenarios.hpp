// The crash-state explorer's scenarios (tests/test_crash_states.cpp): saves, deletions and
// pins whose file-system operations crash_explorer.hpp records, what each must guarantee, and
// the check of one crash state against it.
//
// Each state is checked: the fresh Checkpointer opens; every listed checkpoint is one that a
// save wrote (by sequence number) and verifies byte for byte and loads its save's values; no
// checkpoint is reported unreadable; an earlier checkpoint the operation does not delete is
// never lost; a checkpoint whose save returned before the crash is listed; recovery loads the
// newest listed one, without an exception; the next save (with retention) succeeds with a
// sequence number above every listed one, keeps pinned checkpoints, and leaves nothing else
// in the root.
#pragma once

#include "crash_explorer.hpp"
#include "support.hpp"
#include "tensor_blob.hpp"

#include <array>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace crash_states {

using namespace savepoint;

// ------------------------------------------------------------------ what a save writes
// Every value derives from one counter: a loaded checkpoint is checked against its save.
struct OwnFileBlob {  // written by a member hook (the seam records it as read back)
  std::int64_t counter = 0;
  std::string bytes;
  static std::string pattern(std::int64_t c) {
    std::string s(4000, '\0');  // several 512-byte sectors: a power cut may keep some of them
    std::mt19937_64 gen(static_cast<std::uint64_t>(c));
    for (auto& ch : s) ch = static_cast<char>(gen());
    return s;
  }
  void save(const fs::path& p) const {
    std::ofstream out(p, std::ios::binary);
    out.write(reinterpret_cast<const char*>(&counter), sizeof counter);
    out << bytes;
  }
  void load(const fs::path& p, bool) {
    const std::string all = test::read_file(p);
    if (all.size() < sizeof counter) throw std::runtime_error("blob too short");
    std::memcpy(&counter, all.data(), sizeof counter);
    bytes = all.substr(sizeof counter);
  }
};

// A tensor payload (safetensors, tests/tensor_blob.hpp), so the direct_io scenario goes through
// the O_DIRECT writer: 1500 int64 values, a file that is not a whole number of 4096-byte blocks.
using test::TensorBlob;
using test::register_tensor_blob;

struct Values {
  std::int64_t counter = 0;
  TensorBlob tensors;  // the direct_io and incremental scenarios' key
  TensorBlob frozen;   // the incremental scenarios': never changes, so its parts are linked
  std::vector<std::int64_t> history;
  OwnFileBlob blob;
  std::array<std::vector<std::int64_t>, 6> extra;  // six more keys for the io_threads scenarios
  void set(std::int64_t c) {
    counter = c;
    history = {c * 10 + 1, c * 10 + 2, c * 10 + 3};
    blob.counter = c;
    blob.bytes = OwnFileBlob::pattern(c);
    for (std::size_t i = 0; i < extra.size(); ++i)
      extra[i] = std::vector<std::int64_t>(64, c * 100 + static_cast<std::int64_t>(i));
    tensors.values.assign(1500, c * 1000 + 7);
    frozen.values.resize(1500);
    for (std::size_t i = 0; i < frozen.values.size(); ++i) frozen.values[i] = static_cast<std::int64_t>(i * i);
  }
  bool is(std::int64_t c, bool with_extra, bool with_tensors = false, bool with_frozen = false) const {
    Values want;
    want.set(c);
    return counter == c && history == want.history && blob.counter == c && blob.bytes == want.blob.bytes &&
           (!with_extra || extra == want.extra) && (!with_tensors || tensors.values == want.tensors.values) &&
           (!with_frozen || frozen.values == want.frozen.values);
  }
};

// ------------------------------------------------------------------ scenarios
struct Expect {
  std::map<std::uint64_t, std::int64_t> counter_of;  // every checkpoint ever written: sequence -> counter
  std::set<std::uint64_t> always;                     // never lost, at any crash point
  std::map<std::uint64_t, std::size_t> listed_from;   // listed once this many operations ran (its save returned)
  std::map<std::uint64_t, std::size_t> pinned_from;   // pinned (and never deleted) once this many ran
  std::set<std::string> names_always;                 // a checkpoint of this name always exists (overwrite)
  std::map<std::uint64_t, std::size_t> gone_from;     // no longer listed once this many ran (deleted)
  std::set<std::uint64_t> damaged;                    // damaged by the scenario itself: neither verified nor recovered
};

struct Scenario {
  std::string name;
  int io_threads = 1;
  bool extra_key = false;
  bool direct_io = false;  // a tensor key written with O_DIRECT
  bool incremental = false;  // incremental saves: two tensor keys in parts, one of them never changing
  std::unique_ptr<Recording> recording;
  Expect expect;
};

// A Checkpointer on `dir` with the scenario's keys (registered to `v`) and options.
std::unique_ptr<Checkpointer> open_checkpointer(const fs::path& dir, Values& v, const Scenario& s);

// Runs one scenario in `dir` and records it. `counter` numbers the saves.
Scenario record_scenario(const std::string& name, const fs::path& dir);

// One crash state, materialized in `dir`: "" if every check holds, else what failed.
std::string check_state(const Scenario& s, std::size_t k, const fs::path& dir);

struct Figures {
  std::size_t ops = 0, weak = 0, ordered = 0, violations = 0, sampled_points = 0;
  std::vector<std::string> reports;
};

// Explores every crash point of a recorded scenario under both models; each distinct state
// (by its tree, and by which saves had returned) is checked once.
Figures explore(const Scenario& s, const fs::path& work, std::size_t cap, std::uint64_t seed);

// Every scenario record_scenario knows, in the order the explorer runs them.
inline const std::vector<std::string> kScenarios = {"sync",      "async", "io_threads",   "overwrite",
                                                    "retention", "pin",   "pinned_save", "delete_newest", "async_retention",
                                                    "direct_io", "incremental", "incremental_retention",
                                                    "incremental_damaged"};

}  // namespace crash_states
