// The crash-state explorer's machinery: the recording of a save's file-system operations and
// the crash states of the two persistence models (see crash_explorer.hpp).
#include "crash_explorer.hpp"

#include "support.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace crash_states {

// ------------------------------------------------------------------ the recorded operations
Recording::Recording(fs::path root) : root_(std::move(root)) {
  live_.emplace_back();
  live_[0].dir = true;
  snapshot(root_, 0);
  initial_ = live_;
}

void Recording::on(const dio::IoRecord& r) {
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
    case K::overwrite:
    case K::truncate: {  // a reused file (WriteMode::reuse): bytes replaced in place, or the file cut
      const int ino = lookup(r.path);
      if (ino < 0) break;
      std::string contents = live_[ino].data;
      const std::size_t at = static_cast<std::size_t>(r.offset);
      if (r.kind == K::truncate) {
        contents.resize(at, '\0');
      } else {
        if (contents.size() < at + r.data.size()) contents.resize(at + r.data.size(), '\0');
        contents.replace(at, r.data.size(), r.data.data(), r.data.size());
      }
      Op op{Op::data, -1, -1, ino, -1, "", "", std::move(contents), false,
            fmt::format("{} {} ({} bytes at {})", r.kind == K::truncate ? "truncate" : "overwrite", rel,
                        r.data.size(), r.offset)};
      op.in_place = true;
      push(std::move(op));
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
    case K::hard_link: {  // a second name of an existing file (an incremental save's shared part)
      const auto [d, n] = parent_of(r.path);
      const int ino = lookup(*r.target);
      const std::string from = fs::path(*r.target).lexically_relative(root_).string();
      push({Op::link, d, -1, ino, -1, n, "", "", false, "link " + from + " " + rel});
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

void Recording::apply(Tree& t, const Op& op) {
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

void Recording::snapshot(const fs::path& dir, int node) {
  for (const auto& e : fs::directory_iterator(dir)) {
    const int ino = new_node(e.is_directory());
    live_[node].entries[e.path().filename().string()] = ino;
    if (e.is_directory()) snapshot(e.path(), ino);
    else live_[ino].data = test::read_file(e.path());
  }
}

int Recording::new_node(bool dir) {
  live_.emplace_back();
  live_.back().dir = dir;
  return static_cast<int>(live_.size() - 1);
}

int Recording::entry(int dir, const std::string& name) const {
  if (dir < 0) return -1;
  const auto it = live_[dir].entries.find(name);
  return it == live_[dir].entries.end() ? -1 : it->second;
}

std::pair<int, std::string> Recording::parent_of(const fs::path& p) const {
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

int Recording::lookup(const fs::path& p) const {
  if (p.lexically_relative(root_) == ".") return 0;
  const auto [d, n] = parent_of(p);
  return entry(d, n);
}

void Recording::push(Op op) {
  apply(live_, op);
  ops_.push_back(std::move(op));
}

void Recording::remove_tree(int dir, const std::string& name, const std::string& rel) {
  const int ino = entry(dir, name);
  if (live_[ino].dir) {
    std::vector<std::string> children;
    for (const auto& [child, _] : live_[ino].entries) children.push_back(child);
    for (const auto& child : children) remove_tree(ino, child, rel + "/" + child);
  }
  push({Op::unlink, dir, -1, ino, -1, name, "", "", false, "unlink " + rel});
}

// ------------------------------------------------------------------ crash states
std::uint64_t fingerprint(const Tree& t, int node) {
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

// weak: the durable part, plus any subset of the rest within the model's rules (see
// crash_explorer.hpp). Returns false when it sampled (more states than `cap`), true when it
// emitted all of them.
bool weak_states(const Recording& rec, std::size_t k, std::size_t cap, std::mt19937_64& rng, const Emit& emit) {
  const auto& ops = rec.ops();
  std::vector<std::size_t> pending;  // entry operations not made durable by a directory fsync
  std::map<int, std::string> durable_data;
  std::map<int, std::string> current_data;
  std::map<int, bool> replaced;
  std::map<int, bool> in_place;
  for (std::size_t i = 0; i < k; ++i) {
    const Op& op = ops[i];
    if (op.kind == Op::sync) continue;
    if (op.kind == Op::data) {
      current_data[op.ino] = op.contents;
      replaced[op.ino] = replaced[op.ino] || op.replace;
      in_place[op.ino] = in_place[op.ino] || op.in_place;
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
    if (in_place[ino]) {
      // Sector by sector, old or new (at the new size; a byte past the old end is new or zero).
      const std::string& fresh = now;  // a lambda may not capture a structured binding (C++17)
      const std::size_t sectors = (fresh.size() + 511) / 512;
      auto mix = [&](const std::function<bool(std::size_t)>& is_new) {
        std::string out(fresh.size(), '\0');
        for (std::size_t i = 0; i < out.size(); ++i) out[i] = is_new(i / 512) ? fresh[i] : i < base.size() ? base[i] : '\0';
        return out;
      };
      const std::size_t step = std::max<std::size_t>(1, sectors / 8);
      for (std::size_t b = step; b < sectors; b += step) {
        c.variants.push_back(mix([b](std::size_t s) { return s < b; }));
        c.names.push_back(fmt::format("new<{}", b * 512));
        c.variants.push_back(mix([b](std::size_t s) { return s >= b; }));
        c.names.push_back(fmt::format("new>={}", b * 512));
      }
      if (sectors > 1) {
        c.variants.push_back(mix([](std::size_t s) { return s % 2 == 0; }));
        c.names.push_back("torn");
      }
    } else if (!replaced[ino] && now.size() > base.size() && now.compare(0, base.size(), base) == 0) {
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

}  // namespace crash_states
