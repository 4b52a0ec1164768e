#include "sharing.hpp"
#include "retention.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/log.hpp>

#include <fmt/format.h>

#include <algorithm>

namespace savepoint::engine {

namespace fs = std::filesystem;

const std::set<std::uint64_t>& SharingMap::files_of(const Checkpoint& c) {
  const auto found = files_.find(c.path.string());
  if (found != files_.end()) return found->second;
  std::set<std::uint64_t> inodes;
  for (const auto& f : c.files)
    if (const auto st = detail::path_status(c.path / f.file)) inodes.insert(st->inode);
  return files_.emplace(c.path.string(), std::move(inodes)).first->second;
}

bool SharingMap::share_a_file(const Checkpoint& a, const Checkpoint& b) {
  const auto& x = files_of(a);
  const auto& y = files_of(b);
  return std::any_of(x.begin(), x.end(), [&](std::uint64_t inode) { return y.count(inode) != 0; });
}

const Checkpoint* SharingMap::newest_independent(const std::vector<const Checkpoint*>& all, const Checkpoint& of) {
  // Newest first, stopping at the first: without incremental saves that is the second newest,
  // so a directory of many checkpoints costs two stats per file, not all of them.
  std::vector<const Checkpoint*> newest_first = all;
  std::sort(newest_first.begin(), newest_first.end(),
            [](const Checkpoint* a, const Checkpoint* b) { return a->sequence > b->sequence; });
  for (const Checkpoint* c : newest_first)
    if (c->path != of.path && !share_a_file(*c, of)) return c;
  return nullptr;
}

std::uint64_t SharingMap::unshared_bytes(const std::vector<const Checkpoint*>& all, const Checkpoint& of) {
  // Against the checkpoint saved just before it, which the save linked from: a file shared only
  // with an older one is counted too (an overestimate, as a free-space check wants).
  const Checkpoint* before = nullptr;
  for (const Checkpoint* c : all)
    if (c->sequence < of.sequence && (!before || c->sequence > before->sequence)) before = c;
  const std::set<std::uint64_t> none;
  const auto& elsewhere = before ? files_of(*before) : none;
  std::uint64_t bytes = 0;
  for (const auto& f : of.files) {
    const auto st = detail::path_status(of.path / f.file);
    if (!st || !elsewhere.count(st->inode)) bytes += f.bytes;
  }
  return bytes;
}

namespace {
const Checkpoint* newest_of(const std::vector<const Checkpoint*>& all) {
  const Checkpoint* newest = nullptr;
  for (const Checkpoint* c : all)
    if (!newest || c->sequence > newest->sequence) newest = c;
  return newest;
}
}  // namespace

std::vector<Checkpoint> spare_independent(const std::vector<Checkpoint>& all, std::vector<Checkpoint> doomed,
                                          std::string* note) {
  std::set<fs::path> going;
  for (const auto& c : doomed) going.insert(c.path);
  std::vector<const Checkpoint*> everything, survivors;
  for (const auto& c : all) {
    everything.push_back(&c);
    if (!going.count(c.path)) survivors.push_back(&c);
  }
  if (survivors.size() < 2) return doomed;  // the bound holds only where two are kept
  SharingMap sharing;
  const Checkpoint* newest = newest_of(survivors);
  if (sharing.newest_independent(survivors, *newest)) return doomed;
  const Checkpoint* spare = sharing.newest_independent(everything, *newest);
  if (!spare) {
    detail::log(LogLevel::warn,
                "Retention: every checkpoint kept shares a file with '{}' (incremental saves): one damaged file "
                "could destroy all of them; the next save writes every part",
                newest->path.string());
    return doomed;
  }
  if (note)
    *note = fmt::format("also kept {}: it shares no file with {}, so one damaged file cannot destroy every checkpoint "
                        "kept (incremental saves)",
                        spare->name(), newest->name());
  doomed.erase(std::remove_if(doomed.begin(), doomed.end(), [&](const Checkpoint& c) { return c.path == spare->path; }),
               doomed.end());
  return doomed;
}

WriteAll write_all_decision(const std::vector<const Checkpoint*>& all, const Checkpoint& target,
                            const KeepOptions* keep, std::uint32_t every) {
  WriteAll out;
  const Checkpoint* reference = newest_of(all);
  if (!reference) return out;  // nothing to link from: everything is written anyway
  SharingMap sharing;
  // Would retention keep two or more, this save included? Only then is there a bound to keep.
  std::size_t kept = all.size() + 1;
  if (keep) {
    std::vector<Checkpoint> after;
    for (const Checkpoint* c : all) after.push_back(*c);
    after.push_back(target);
    kept = after.size() - detail::deletion_set(after, *keep).size();
  }
  if (every > 0 && kept >= 2) {
    const Checkpoint* independent = sharing.newest_independent(all, *reference);
    if (!independent) {
      out.write_all = true;
      out.why = "no checkpoint shares no file with the newest one yet";
    } else if (reference->sequence - independent->sequence >= every) {
      out.write_all = true;
      out.why = "the newest checkpoint sharing no file with the newest one is " +
                std::to_string(reference->sequence - independent->sequence) + " saves old (full_save_every " +
                std::to_string(every) + ")";
    }
  }
  std::uint64_t bytes = 0;
  for (const auto& f : reference->files) bytes += f.bytes;
  out.estimate = out.write_all ? bytes : sharing.unshared_bytes(all, *reference);
  return out;
}

}  // namespace savepoint::engine
