// The crash-state explorer's scenarios, the check of one crash state, the exploration of a
// recorded scenario (see crash_scenarios.hpp).
#include "crash_scenarios.hpp"

#include <fmt/format.h>

#include <sstream>
#include <utility>

namespace crash_states {

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
  if (s.incremental) {  // 12000 bytes per key: three parts each
    register_tensor_blob();
    ck->add_recoverable("tensors", v.tensors);
    ck->add_recoverable("frozen", v.frozen);
    ck->options().incremental(true).part_bytes(4096);
  }
  return ck;
}

Scenario record_scenario(const std::string& name, const fs::path& dir) {
  Scenario s;
  s.name = name;
  if (name == "io_threads" || name == "async_retention") {
    s.io_threads = 4;
    s.extra_key = true;
  }
  s.direct_io = name == "direct_io";
  s.incremental = name == "incremental" || name == "incremental_retention" || name == "incremental_damaged";
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
  } else if (name == "incremental_damaged") {
    // The first two saves write everything (the second: nothing shares no file with the first
    // yet); the third links the frozen key's parts from the second. One of them is damaged in
    // place: the recorded save must write it again, never link it.
    for (int i = 0; i < 3; ++i) before.push_back(save());
    const fs::path part = before[2].path / "frozen.part00001.safetensors";
    test::flip_byte(part, -4);
    s.expect.damaged = {before[1].sequence, before[2].sequence};
  } else {
    for (int i = 0; i < (name == "retention" || name == "delete_newest" ? 3 : 2); ++i) before.push_back(save());
  }
  s.recording = std::make_unique<Recording>(dir);
  Recording& rec = *s.recording;
  for (const auto& c : before) s.expect.always.insert(c.sequence);
  {
    RecorderGuard guard(rec);
    if (name == "sync" || name == "io_threads" || name == "direct_io" || name == "incremental" ||
        name == "incremental_damaged") {
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
    } else if (name == "incremental_retention") {  // deletes both earlier ones, whose frozen parts it shares
      v.set(++counter);
      const auto c = ck->save_and_keep_only({{"counter", counter}}, KeepOptions().num_to_keep(1));
      s.expect.counter_of[c.sequence] = counter;
      s.expect.always.clear();
      s.expect.listed_from[c.sequence] = rec.size();
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
      if (ex.damaged.count(c.sequence)) continue;
      for (const auto& p : ck->verify(c)) bad << "verify " << c.name() << ": " << p.reason << "; ";
      try {
        ck->load_checkpoint(c);
        if (!v.is(it->second, s.extra_key, s.direct_io || s.incremental, s.incremental)) bad << c.name() << " loads values that are not its save's; ";
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
    const Checkpoint* newest_intact = nullptr;
    for (const auto& c : listed)
      if (!ex.damaged.count(c.sequence)) newest_intact = &c;
    if (recovered) {
      if (!newest_intact || recovered->sequence != newest_intact->sequence)
        bad << "recovered " << recovered->name() << ", not the newest intact one; ";
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
      if (!ex.damaged.count(c.sequence) && !ck->verify(c).empty())
        bad << "after the next save, " << c.name() << " does not verify; ";
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

}  // namespace crash_states
