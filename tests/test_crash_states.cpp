// Power loss, not just kill -9 (issue 15): the file-system operations of a save are recorded
// through the I/O seam (detail::set_io_recorder), and every state a file system may persist
// when the power goes after any one of them is rebuilt in a fresh directory and checked with
// a fresh Checkpointer. ALICE ("All File Systems Are Not Created Equal", OSDI'14) did this
// for SQLite, LevelDB and Git.
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
//    The lock file's in-place rewrite (a few bytes in one sector) is old or new.
//
// Each state is checked: the fresh Checkpointer opens; every listed checkpoint is one that a
// save wrote (by sequence number) and verifies byte for byte and loads its save's values; no
// checkpoint is reported unreadable; an earlier checkpoint the operation does not delete is
// never lost; a checkpoint whose save returned before the crash is listed; recovery loads the
// newest listed one, without an exception; the next save (with retention) succeeds with a
// sequence number above every listed one, keeps pinned checkpoints, and leaves nothing else
// in the root.
//
// CI checks at most SAVEPOINT_CRASH_STATES_PER_POINT (4 by default) states per crash point
// and model; scripts/crash-explore.sh raises it to 1000 (all states at most crash points)
// and prints the figures. The sample is deterministic: SAVEPOINT_CRASH_SEED (1 by default).
#include "support.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>

#include "catch.hpp"
#include <fmt/format.h>

#include <array>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace crash_states {

using namespace savepoint;
namespace fs = std::filesystem;
namespace dio = savepoint::detail;

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

// A tensor payload (safetensors), so the direct_io scenario goes through the O_DIRECT writer:
// 1500 int64 values, a file that is not a whole number of 4096-byte blocks.
struct TensorBlob {
  std::vector<std::int64_t> values;
};
void register_tensor_blob() {
  static const bool registered = [] {
    savepoint::TypeHooks h;
    h.name = "test.TensorBlob";
    h.extension = ".safetensors";
    h.save = [](void* obj, const savepoint::SaveContext&) {
      const auto& b = *static_cast<TensorBlob*>(obj);
      savepoint::TensorData d;
      d.spec = {"values", savepoint::safetensors::DType::I64, {static_cast<std::int64_t>(b.values.size())},
                b.values.size() * sizeof(std::int64_t)};
      d.host_bytes = b.values.data();
      return savepoint::Payload::tensors({d});
    };
    h.prepare_load = [](void* obj, const savepoint::LoadContext& ctx) -> savepoint::Apply {
      const auto header = savepoint::safetensors::parse(ctx.bytes(), ctx.file);
      const auto* info = header.find("values");
      if (!info) throw std::runtime_error("no values");
      std::vector<std::int64_t> values(info->nbytes() / sizeof(std::int64_t));
      std::memcpy(values.data(), ctx.bytes().data() + header.data_start + info->begin, info->nbytes());
      return [obj, values] { static_cast<TensorBlob*>(obj)->values = values; };
    };
    savepoint::hook_table().add<TensorBlob>(std::move(h));
    return true;
  }();
  (void)registered;
}

struct Values {
  std::int64_t counter = 0;
  TensorBlob tensors;  // the direct_io scenario's key
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
  }
  bool is(std::int64_t c, bool with_extra, bool with_tensors = false) const {
    Values want;
    want.set(c);
    return counter == c && history == want.history && blob.counter == c && blob.bytes == want.blob.bytes &&
           (!with_extra || extra == want.extra) && (!with_tensors || tensors.values == want.tensors.values);
  }
};

struct Scenario;
std::unique_ptr<Checkpointer> open_checkpointer(const fs::path& dir, Values& v, const Scenario& s);

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
};

// The live tree follows the recorded operations; `initial` is the root before them.
class Recording {
 public:
  explicit Recording(fs::path root) : root_(std::move(root)) {
    live_.emplace_back();
    live_[0].dir = true;
    snapshot(root_, 0);
    initial_ = live_;
  }

  void on(const dio::IoRecord& r) {
    std::lock_guard<std::mutex> guard(mutex_);
    using K = dio::IoRecord::Kind;
    const std::string rel = fs::path(r.path).lexically_relative(root_).string();
    switch (r.kind) {
      case K::mkdir:
      case K::create: {
        const auto [d, n] = parent_of(r.path);
        const int ino = new_node(r.kind == K::mkdir);
        push({Op::link, d, -1, ino, -1, n, "", "", false, (r.kind == K::mkdir ? "mkdir " : "create ") + rel});
        break;
      }
      case K::append:
      case K::contents:
      case K::replace: {
        int ino = lookup(r.path);
        if (ino < 0) {  // a hook's own file: created outside the seam
          const auto [d, n] = parent_of(r.path);
          ino = new_node(false);
          push({Op::link, d, -1, ino, -1, n, "", "", false, "create (by a hook) " + rel});
        }
        std::string contents = r.kind == K::append ? live_[ino].data + std::string(r.data) : std::string(r.data);
        push({Op::data, -1, -1, ino, -1, "", "", std::move(contents), r.kind == K::replace,
              fmt::format("{} {} ({} bytes)",
                          r.kind == K::append ? "append" : r.kind == K::replace ? "rewrite" : "write (by a hook)", rel,
                          r.data.size())});
        break;
      }
      case K::fsync: {
        const int ino = lookup(r.path);
        if (ino >= 0) push({Op::sync, -1, -1, ino, -1, "", "", "", false, "fsync " + (rel == "." ? "<root>" : rel)});
        break;
      }
      case K::rename:
      case K::exchange: {
        const auto [d, n] = parent_of(r.path);
        const auto [d2, n2] = parent_of(*r.target);
        const int ino = entry(d, n), ino2 = r.kind == K::exchange ? entry(d2, n2) : -1;
        const std::string rel2 = fs::path(*r.target).lexically_relative(root_).string();
        push({r.kind == K::rename ? Op::rename : Op::exchange, d, d2, ino, ino2, n, n2, "", false,
              (r.kind == K::rename ? "rename " : "exchange ") + rel + " " + rel2});
        break;
      }
      case K::unlink: {
        const auto [d, n] = parent_of(r.path);
        push({Op::unlink, d, -1, entry(d, n), -1, n, "", "", false, "unlink " + rel});
        break;
      }
      case K::remove_tree: {
        const auto [d, n] = parent_of(r.path);
        if (entry(d, n) >= 0) remove_tree(d, n, rel);
        break;
      }
    }
  }

  const std::vector<Op>& ops() const { return ops_; }
  const Tree& initial() const { return initial_; }
  const Tree& live() const { return live_; }
  std::size_t size() const {
    std::lock_guard<std::mutex> guard(mutex_);
    return ops_.size();
  }

  // Applies one operation's change of directory entries (or data) to a tree.
  static void apply(Tree& t, const Op& op) {
    switch (op.kind) {
      case Op::link: t[op.dir].entries[op.name] = op.ino; break;
      case Op::unlink: t[op.dir].entries.erase(op.name); break;
      case Op::rename:
        t[op.dir].entries.erase(op.name);
        t[op.dir2].entries[op.name2] = op.ino;
        break;
      case Op::exchange:
        t[op.dir].entries[op.name] = op.ino2;
        t[op.dir2].entries[op.name2] = op.ino;
        break;
      case Op::data: t[op.ino].data = op.contents; break;
      case Op::sync: break;
    }
  }

 private:
  void snapshot(const fs::path& dir, int node) {
    for (const auto& e : fs::directory_iterator(dir)) {
      const int ino = new_node(e.is_directory());
      live_[node].entries[e.path().filename().string()] = ino;
      if (e.is_directory()) snapshot(e.path(), ino);
      else live_[ino].data = test::read_file(e.path());
    }
  }
  int new_node(bool dir) {
    live_.emplace_back();
    live_.back().dir = dir;
    return static_cast<int>(live_.size() - 1);
  }
  int entry(int dir, const std::string& name) const {
    if (dir < 0) return -1;
    const auto it = live_[dir].entries.find(name);
    return it == live_[dir].entries.end() ? -1 : it->second;
  }
  std::pair<int, std::string> parent_of(const fs::path& p) const {
    int node = 0;
    const fs::path rel = p.lexically_relative(root_);
    std::vector<std::string> parts;
    for (const auto& part : rel) parts.push_back(part.string());
    if (parts.empty() || rel.empty() || parts[0] == "..") throw std::logic_error("outside the root: " + p.string());
    for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
      node = entry(node, parts[i]);
      if (node < 0) throw std::logic_error("no such directory: " + p.string());
    }
    return {node, parts.back()};
  }
  int lookup(const fs::path& p) const {
    if (p.lexically_relative(root_) == ".") return 0;
    const auto [d, n] = parent_of(p);
    return entry(d, n);
  }
  void push(Op op) {
    apply(live_, op);
    ops_.push_back(std::move(op));
  }
  void remove_tree(int dir, const std::string& name, const std::string& rel) {
    const int ino = entry(dir, name);
    if (live_[ino].dir) {
      std::vector<std::string> children;
      for (const auto& [child, _] : live_[ino].entries) children.push_back(child);
      for (const auto& child : children) remove_tree(ino, child, rel + "/" + child);
    }
    push({Op::unlink, dir, -1, ino, -1, name, "", "", false, "unlink " + rel});
  }

  fs::path root_;
  Tree live_, initial_;
  std::vector<Op> ops_;
  mutable std::mutex mutex_;
};

// ------------------------------------------------------------------ crash states
struct CrashState {
  Tree tree;
  std::string how;  // which operations were dropped, which data cut: for the report
};

std::uint64_t fingerprint(const Tree& t, int node = 0) {
  std::string key;
  std::function<void(int, const std::string&)> walk = [&](int n, const std::string& prefix) {
    for (const auto& [name, ino] : t[n].entries) {
      key += prefix + name;
      key += t[ino].dir ? "/\n" : fmt::format(":{}:{:x}\n", t[ino].data.size(), std::hash<std::string>{}(t[ino].data));
      if (t[ino].dir) walk(ino, prefix + name + "/");
    }
  };
  walk(node, "");
  return std::hash<std::string>{}(key);
}

void materialize(const Tree& t, int node, const fs::path& dir) {
  for (const auto& [name, ino] : t[node].entries) {
    if (t[ino].dir) {
      fs::create_directory(dir / name);
      materialize(t, ino, dir / name);
    } else {
      test::write_text(dir / name, t[ino].data);
    }
  }
}

// The tree the operations [0, k) leave in full.
Tree replay(const Recording& rec, std::size_t k) {
  Tree t = rec.initial();
  t.resize(rec.live().size());
  for (std::size_t i = 0; i < rec.live().size(); ++i)
    if (i >= rec.initial().size()) t[i].dir = rec.live()[i].dir;
  for (std::size_t i = 0; i < k; ++i) Recording::apply(t, rec.ops()[i]);
  return t;
}

// ordered: every prefix [0, p) with p from just after the last fsync before k up to k.
std::vector<CrashState> ordered_states(const Recording& rec, std::size_t k) {
  std::size_t from = 0;
  for (std::size_t i = 0; i < k; ++i)
    if (rec.ops()[i].kind == Op::sync) from = i + 1;
  std::vector<CrashState> out;
  for (std::size_t p = from; p <= k; ++p)
    out.push_back({replay(rec, p), fmt::format("ordered: the first {} of {} operations persisted", p, k)});
  return out;
}

// weak: the durable part, plus any subset of the rest within the model's rules (see the top).
using Emit = std::function<void(const CrashState&)>;
// Returns false when it sampled (more states than `cap`), true when it emitted all of them.
bool weak_states(const Recording& rec, std::size_t k, std::size_t cap, std::mt19937_64& rng, const Emit& emit) {
  const auto& ops = rec.ops();
  std::vector<std::size_t> pending;  // entry operations not made durable by a directory fsync
  std::map<int, std::string> durable_data;
  std::map<int, std::string> current_data;
  std::map<int, bool> replaced;
  for (std::size_t i = 0; i < k; ++i) {
    const Op& op = ops[i];
    if (op.kind == Op::sync) continue;
    if (op.kind == Op::data) {
      current_data[op.ino] = op.contents;
      replaced[op.ino] = replaced[op.ino] || op.replace;
      bool synced = false;
      for (std::size_t j = i + 1; j < k && !synced; ++j) synced = ops[j].kind == Op::sync && ops[j].ino == op.ino;
      if (synced) durable_data[op.ino] = op.contents;
      continue;
    }
    bool synced = false;
    for (std::size_t j = i + 1; j < k && !synced; ++j)
      synced = ops[j].kind == Op::sync && (ops[j].ino == op.dir || ops[j].ino == op.dir2);
    if (!synced) pending.push_back(i);
  }
  // Each file with unsynced data: the variants of its contents.
  struct DataChoice {
    int ino;
    std::vector<std::string> variants;
    std::vector<std::string> names;
  };
  std::vector<DataChoice> data;
  for (const auto& [ino, now] : current_data) {
    const auto d = durable_data.find(ino);
    std::string base = d != durable_data.end() ? d->second
                       : ino < static_cast<int>(rec.initial().size()) ? rec.initial()[ino].data
                                                                       : std::string();
    if (base == now) continue;
    DataChoice c{ino, {base, now}, {"old", "new"}};
    if (!replaced[ino] && now.size() > base.size() && now.compare(0, base.size(), base) == 0) {
      // Cut at each sector boundary in between (or half-way in a file of one sector).
      std::vector<std::size_t> cuts;
      for (std::size_t at = (base.size() / 512 + 1) * 512; at < now.size(); at += 512) cuts.push_back(at);
      if (cuts.empty() && now.size() - base.size() > 1) cuts.push_back(base.size() + (now.size() - base.size()) / 2);
      for (const std::size_t at : cuts) {
        c.variants.push_back(now.substr(0, at));
        c.names.push_back(fmt::format("cut@{}", at));
      }
      c.variants.push_back(base + std::string(now.size() - base.size(), '\0'));
      c.names.push_back("zeros");
    }
    data.push_back(std::move(c));
  }
  // The operations on one directory entry persist in order.
  auto keys = [&](const Op& op) {
    std::vector<std::pair<int, std::string>> out{{op.dir, op.name}};
    if (op.dir2 >= 0) out.emplace_back(op.dir2, op.name2);
    return out;
  };
  auto valid = [&](const std::vector<bool>& keep) {
    for (std::size_t a = 0; a < pending.size(); ++a) {
      if (!keep[a]) continue;
      for (std::size_t b = 0; b < a; ++b) {
        if (keep[b]) continue;
        for (const auto& ka : keys(ops[pending[a]]))
          for (const auto& kb : keys(ops[pending[b]]))
            if (ka == kb) return false;
      }
    }
    return true;
  };
  auto build = [&](const std::vector<bool>& keep, const std::vector<std::size_t>& variant) {
    CrashState s;
    s.tree = rec.initial();
    s.tree.resize(rec.live().size());
    for (std::size_t i = rec.initial().size(); i < rec.live().size(); ++i) s.tree[i].dir = rec.live()[i].dir;
    std::size_t next = 0;
    std::string dropped;
    for (std::size_t i = 0; i < k; ++i) {
      const Op& op = ops[i];
      if (op.kind == Op::sync || op.kind == Op::data) continue;
      if (next < pending.size() && pending[next] == i) {
        const bool kept = keep[next++];
        if (!kept) {
          dropped += fmt::format(" [{}] {};", i, op.what);
          continue;
        }
      }
      Recording::apply(s.tree, op);
    }
    for (const auto& [ino, contents] : durable_data) s.tree[ino].data = contents;
    std::string cut;
    for (std::size_t c = 0; c < data.size(); ++c) {
      s.tree[data[c].ino].data = data[c].variants[variant[c]];
      cut += fmt::format(" #{}={};", data[c].ino, data[c].names[variant[c]]);
    }
    s.how = fmt::format("weak: after {} operations; lost:{} data:{}", k, dropped.empty() ? " none;" : dropped,
                        cut.empty() ? " all durable" : cut);
    return s;
  };

  double total = 1;
  for (std::size_t i = 0; i < pending.size(); ++i) total *= 2;
  for (const auto& c : data) total *= static_cast<double>(c.variants.size());
  std::size_t emitted = 0;
  std::vector<bool> keep(pending.size());
  std::vector<std::size_t> variant(data.size());
  if (total <= static_cast<double>(cap)) {  // all of them
    for (std::uint64_t mask = 0; mask < (std::uint64_t{1} << pending.size()); ++mask) {
      for (std::size_t i = 0; i < pending.size(); ++i) keep[i] = (mask >> i) & 1;
      if (!valid(keep)) continue;
      std::fill(variant.begin(), variant.end(), 0);
      for (;;) {
        emit(build(keep, variant));
        std::size_t c = 0;
        while (c < data.size() && ++variant[c] == data[c].variants.size()) variant[c++] = 0;
        if (c == data.size()) break;
      }
    }
    return true;
  }
  // A sample: the four corners (nothing / everything lost, old / new data), then random ones.
  for (int corner = 0; corner < 4 && emitted < cap; ++corner, ++emitted) {
    std::fill(keep.begin(), keep.end(), corner & 1);
    for (std::size_t c = 0; c < data.size(); ++c) variant[c] = (corner & 2) ? 1 : 0;
    emit(build(keep, variant));
  }
  for (; emitted < cap; ++emitted) {
    for (std::size_t i = 0; i < pending.size(); ++i) keep[i] = rng() & 1;
    // Repair: an operation whose earlier operation on the same entry was lost is lost too.
    for (std::size_t a = 0; a < pending.size(); ++a)
      for (std::size_t b = 0; b < a && keep[a]; ++b)
        if (!keep[b])
          for (const auto& ka : keys(ops[pending[a]]))
            for (const auto& kb : keys(ops[pending[b]]))
              if (ka == kb) keep[a] = false;
    for (std::size_t c = 0; c < data.size(); ++c) variant[c] = rng() % data[c].variants.size();
    emit(build(keep, variant));
  }
  return false;
}

// ------------------------------------------------------------------ scenarios
struct Expect {
  std::map<std::uint64_t, std::int64_t> counter_of;  // every checkpoint ever written: sequence -> counter
  std::set<std::uint64_t> always;                     // never lost, at any crash point
  std::map<std::uint64_t, std::size_t> listed_from;   // listed once this many operations ran (its save returned)
  std::map<std::uint64_t, std::size_t> pinned_from;   // pinned (and never deleted) once this many ran
  std::set<std::string> names_always;                 // a checkpoint of this name always exists (overwrite)
  std::map<std::uint64_t, std::size_t> gone_from;     // no longer listed once this many ran (deleted)
};

struct Scenario {
  std::string name;
  int io_threads = 1;
  bool extra_key = false;
  bool direct_io = false;  // a tensor key written with O_DIRECT
  std::unique_ptr<Recording> recording;
  Expect expect;
};

std::unique_ptr<Checkpointer> open_checkpointer(const fs::path& dir, Values& v, const Scenario& s) {
  auto ck = std::make_unique<Checkpointer>(dir, std::initializer_list<Recoverable>{
                                                    {"counter", v.counter}, {"history", v.history}, {"blob", v.blob}});
  if (s.extra_key)
    for (std::size_t i = 0; i < v.extra.size(); ++i) ck->add_recoverable("extra" + std::to_string(i), v.extra[i]);
  ck->options().io_threads(s.io_threads);
  if (s.direct_io) {
    register_tensor_blob();
    ck->add_recoverable("tensors", v.tensors);
    ck->options().direct_io(true);
  }
  return ck;
}

// Installs the recorder for its lifetime.
struct RecorderGuard {
  explicit RecorderGuard(Recording& r) {
    dio::set_io_recorder([&r](const dio::IoRecord& record) { r.on(record); });
  }
  ~RecorderGuard() { dio::set_io_recorder(nullptr); }
  RecorderGuard(const RecorderGuard&) = delete;
  RecorderGuard& operator=(const RecorderGuard&) = delete;
};

// Runs one scenario in `dir` and records it. `counter` numbers the saves.
Scenario record_scenario(const std::string& name, const fs::path& dir) {
  Scenario s;
  s.name = name;
  if (name == "io_threads" || name == "async_retention") {
    s.io_threads = 4;
    s.extra_key = true;
  }
  s.direct_io = name == "direct_io";
  Values v;
  auto ck = open_checkpointer(dir, v, s);
  std::int64_t counter = 0;
  auto save = [&](SaveOptions options = {}) {
    v.set(++counter);
    const Checkpoint c = ck->save_checkpoint({{"counter", counter}}, options);
    s.expect.counter_of[c.sequence] = counter;
    return c;
  };
  // The checkpoints before the recorded operation.
  std::vector<Checkpoint> before;
  if (name == "overwrite") {
    before.push_back(save());
    before.push_back(save(named("best")));
  } else {
    for (int i = 0; i < (name == "retention" || name == "delete_newest" ? 3 : 2); ++i) before.push_back(save());
  }
  s.recording = std::make_unique<Recording>(dir);
  Recording& rec = *s.recording;
  for (const auto& c : before) s.expect.always.insert(c.sequence);
  {
    RecorderGuard guard(rec);
    if (name == "sync" || name == "io_threads" || name == "direct_io") {
      const auto c = save();
      s.expect.listed_from[c.sequence] = rec.size();
    } else if (name == "async") {
      v.set(++counter);
      ck->save_checkpoint_async({{"counter", counter}});
      const auto c = ck->wait();
      s.expect.counter_of[c->sequence] = counter;
      s.expect.listed_from[c->sequence] = rec.size();
    } else if (name == "overwrite") {
      const auto c = save(named("best").overwrite(true));
      s.expect.always.erase(before[1].sequence);  // replaced: old or new, never neither
      s.expect.names_always.insert(c.name());
      s.expect.listed_from[c.sequence] = rec.size();
    } else if (name == "retention") {
      v.set(++counter);
      const auto c = ck->save_and_keep_only({{"counter", counter}}, KeepOptions().num_to_keep(2));
      s.expect.counter_of[c.sequence] = counter;
      s.expect.always = {before[2].sequence};  // the two oldest may go
      s.expect.listed_from[c.sequence] = rec.size();
    } else if (name == "pin") {
      ck->pin(before[0]);
      s.expect.pinned_from[before[0].sequence] = rec.size();
      v.set(++counter);
      const auto c = ck->save_and_keep_only({{"counter", counter}}, KeepOptions().num_to_keep(1));
      s.expect.counter_of[c.sequence] = counter;
      s.expect.always = {before[0].sequence};  // pinned before the deletion may start
      s.expect.listed_from[c.sequence] = rec.size();
    } else if (name == "async_retention") {
      v.set(++counter);
      ck->save_and_keep_only_async({{"counter", counter}}, KeepOptions().num_to_keep(1));
      const auto c = ck->wait();
      s.expect.counter_of[c->sequence] = counter;
      s.expect.always.clear();  // both earlier ones may go
      s.expect.listed_from[c->sequence] = rec.size();
    } else if (name == "pinned_save") {
      const auto c = save(SaveOptions().pinned(true));
      s.expect.listed_from[c.sequence] = rec.size();
      s.expect.pinned_from[c.sequence] = rec.size();
    } else if (name == "delete_newest") {
      ck->delete_checkpoint(before[2]);  // leaves its sequence number in the high-water mark
      s.expect.always.erase(before[2].sequence);
      s.expect.gone_from[before[2].sequence] = rec.size();
    } else {
      throw std::logic_error("unknown scenario " + name);
    }
  }
  return s;
}

// One crash state, materialized in `dir`: "" if every check holds, else what failed.
std::string check_state(const Scenario& s, std::size_t k, const fs::path& dir) {
  const Expect& ex = s.expect;
  std::ostringstream bad;
  try {
    Values v;
    auto ck = open_checkpointer(dir, v, s);
    const auto listed = ck->list_checkpoints();
    for (const auto& p : ck->unreadable_checkpoints()) bad << "unreadable: " << p.reason << "; ";
    std::map<std::uint64_t, Checkpoint> by_seq;
    std::set<std::string> names;
    for (const auto& c : listed) {
      by_seq[c.sequence] = c;
      names.insert(c.name());
      const auto it = ex.counter_of.find(c.sequence);
      if (it == ex.counter_of.end()) {
        bad << "listed an unknown checkpoint " << c.name() << " (sequence " << c.sequence << "); ";
        continue;
      }
      for (const auto& p : ck->verify(c)) bad << "verify " << c.name() << ": " << p.reason << "; ";
      try {
        ck->load_checkpoint(c);
        if (!v.is(it->second, s.extra_key, s.direct_io)) bad << c.name() << " loads values that are not its save's; ";
      } catch (const std::exception& e) {
        bad << "loading " << c.name() << ": " << e.what() << "; ";
      }
    }
    for (auto seq : ex.always)
      if (!by_seq.count(seq)) bad << "lost earlier checkpoint " << seq << "; ";
    for (const auto& [seq, from] : ex.listed_from)
      if (k >= from && !by_seq.count(seq)) bad << "checkpoint " << seq << " missing though its save returned; ";
    for (const auto& [seq, from] : ex.pinned_from)
      if (k >= from && (!by_seq.count(seq) || !by_seq[seq].pinned))
        bad << "checkpoint " << seq << " not pinned though pin() returned; ";
    for (const auto& [seq, from] : ex.gone_from)
      if (k >= from && by_seq.count(seq)) bad << "checkpoint " << seq << " still listed though its deletion returned; ";
    for (const auto& n : ex.names_always)
      if (!names.count(n)) bad << "no checkpoint named " << n << "; ";
    // Recovery: the newest listed one, no exception.
    const auto recovered = ck->recover_if_possible();
    if (listed.empty() != !recovered.has_value()) bad << "recovery disagrees with the listing; ";
    if (recovered) {
      if (recovered->sequence != listed.back().sequence)
        bad << "recovered " << recovered->name() << ", not the newest; ";
      const auto it = ex.counter_of.find(recovered->sequence);
      if (it == ex.counter_of.end() || !v.is(it->second, s.extra_key, s.direct_io)) bad << "recovered values are not its save's; ";
    }
    // The next save, with retention (the newest two and pinned ones stay).
    std::set<std::uint64_t> pinned;
    for (const auto& c : listed)
      if (c.pinned) pinned.insert(c.sequence);
    v.set(1000);
    const Checkpoint next = ck->save_and_keep_only({{"counter", 1000}}, KeepOptions().num_to_keep(2));
    if (!listed.empty() && next.sequence <= listed.back().sequence)
      bad << "the next save reused sequence " << next.sequence << "; ";
    for (const auto& [seq, from] : ex.gone_from)
      if (k >= from && next.sequence <= seq) bad << "the next save reused the deleted sequence " << seq << "; ";
    const auto after = ck->list_checkpoints();
    std::set<std::uint64_t> after_seq;
    for (const auto& c : after) {
      after_seq.insert(c.sequence);
      if (!ck->verify(c).empty()) bad << "after the next save, " << c.name() << " does not verify; ";
    }
    if (!after_seq.count(next.sequence)) bad << "the next save is not listed; ";
    if (!listed.empty() && !after_seq.count(listed.back().sequence))
      bad << "retention deleted the newest earlier checkpoint; ";
    for (auto seq : pinned)
      if (!after_seq.count(seq)) bad << "retention deleted pinned checkpoint " << seq << "; ";
    const auto left = test::leftovers(dir);
    if (!left.empty()) bad << "left in the root after the next save: " << left.front() << "; ";
  } catch (const std::exception& e) {
    bad << "exception: " << e.what() << "; ";
  }
  return bad.str();
}

struct Figures {
  std::size_t ops = 0, weak = 0, ordered = 0, violations = 0, sampled_points = 0;
  std::vector<std::string> reports;
};

std::size_t env_number(const char* name, std::size_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? static_cast<std::size_t>(std::strtoull(v, nullptr, 10)) : fallback;
}

// Explores every crash point of a recorded scenario under both models; each distinct state
// (by its tree, and by which saves had returned) is checked once.
Figures explore(const Scenario& s, const fs::path& work, std::size_t cap, std::uint64_t seed) {
  Figures f;
  const Recording& rec = *s.recording;
  f.ops = rec.ops().size();
  std::set<std::pair<std::uint64_t, std::size_t>> seen;
  std::size_t n = 0;
  for (std::size_t k = 0; k <= rec.ops().size(); ++k) {
    std::size_t phase = 0;  // which expectations apply at this crash point
    for (const auto& [seq, from] : s.expect.listed_from) phase += k >= from;
    for (const auto& [seq, from] : s.expect.pinned_from) phase += 2 * (k >= from);
    for (const auto& [seq, from] : s.expect.gone_from) phase += 4 * (k >= from);
    std::mt19937_64 rng(seed * 1000003 + k);
    for (int model = 0; model < 2; ++model) {
      auto check = [&](const CrashState& st) {
        if (!seen.insert({fingerprint(st.tree), phase}).second) return;
        ++(model == 0 ? f.ordered : f.weak);
        const fs::path dir = work / fmt::format("state-{}", n++);
        fs::create_directories(dir);
        materialize(st.tree, 0, dir);
        const std::string bad = check_state(s, k, dir);
        fs::remove_all(dir);
        if (bad.empty()) return;
        ++f.violations;
        if (f.reports.size() < 5) {
          std::string ops;
          for (std::size_t i = 0; i < k; ++i) ops += fmt::format("\n    [{}] {}", i, rec.ops()[i].what);
          f.reports.push_back(fmt::format("scenario {}, crash after {} operations ({}):\n  {}\n  operations:{}",
                                          s.name, k, st.how, bad, ops));
        }
      };
      if (model == 0)
        for (const auto& st : ordered_states(rec, k)) check(st);
      else
        f.sampled_points += !weak_states(rec, k, cap, rng, check);
    }
  }
  return f;
}

const std::vector<std::string> kScenarios = {"sync",      "async", "io_threads",   "overwrite",
                                             "retention", "pin",   "pinned_save", "delete_newest", "async_retention",
                                             "direct_io"};

}  // namespace crash_states

TEST_CASE("power loss: every crash state of a save recovers the previous or the new checkpoint",
          "[crash-states]") {
  using namespace crash_states;
  const std::size_t cap = env_number("SAVEPOINT_CRASH_STATES_PER_POINT", 4);
  const std::uint64_t seed = env_number("SAVEPOINT_CRASH_SEED", 1);
  savepoint::set_log_sink([](savepoint::LogLevel, std::string_view) {});  // recovery warnings are expected
  std::size_t total = 0, violations = 0;
  for (const auto& name : kScenarios) {
    test::TempDir dir;
    const Scenario s = record_scenario(name, dir / "recorded");
    const Figures f = explore(s, dir / "states", cap, seed);
    std::cout << fmt::format("crash-states: {:<15} {:>3} operations  {:>6} states ({} weak, {} ordered)  {} violations"
                             "  (weak model sampled at {} of {} crash points)",
                             name, f.ops, f.weak + f.ordered, f.weak, f.ordered, f.violations, f.sampled_points,
                             f.ops + 1)
              << std::endl;
    for (const auto& r : f.reports) UNSCOPED_INFO(r);
    CHECK(f.violations == 0);
    total += f.weak + f.ordered;
    violations += f.violations;
  }
  savepoint::set_log_sink(nullptr);
  std::cout << fmt::format("crash-states: total {} states, {} violations (seed {}, {} states per crash point and "
                           "model at most)",
                           total, violations, seed, cap)
            << std::endl;
}

TEST_CASE("power loss: the explorer catches a commit that skips the directory fsync before the rename",
          "[crash-states]") {
  using namespace crash_states;
  savepoint::set_log_sink([](savepoint::LogLevel, std::string_view) {});
  test::TempDir dir;
  dio::protocol_breaks().skip_directory_fsync_before_rename = true;
  Scenario s;
  try {
    s = record_scenario("sync", dir / "recorded");
  } catch (...) {
    dio::protocol_breaks().skip_directory_fsync_before_rename = false;
    throw;
  }
  dio::protocol_breaks().skip_directory_fsync_before_rename = false;
  const Figures f = explore(s, dir / "states", 4, 1);
  savepoint::set_log_sink(nullptr);
  std::cout << fmt::format("crash-states: broken protocol: {} states, {} violations", f.weak + f.ordered, f.violations)
            << std::endl;
  REQUIRE(f.violations > 0);
  INFO(f.reports.front());
  // What it finds: the rename persisted, the new directory's entries did not.
  CHECK(f.reports.front().find("missing though its save returned") != std::string::npos);
  // Only the weak model finds it: in order, the root's fsync would have persisted them too.
  for (const auto& r : f.reports) CHECK(r.find("(weak: ") != std::string::npos);
}

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
