#include "incremental.hpp"

#include "../format/parts.hpp"
#include "../format/tensor_writer.hpp"
#include "parallel.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

namespace savepoint::engine {

namespace {
std::optional<PartSignature> signature_of(const Payload& part) {
  PartSignature out;
  for (const auto& t : part.tensor_data()) {
    if (!t.host_bytes || !t.version) return std::nullopt;  // nothing to identify it by: hashed
    out.emplace_back(t.host_bytes, t.version());
  }
  return out;
}

const FileRecord* record_of(const Checkpoint& checkpoint, const std::string& file) {
  for (const auto& f : checkpoint.files)
    if (f.file == file) return &f;
  return nullptr;
}
}  // namespace

PlannedPart IncrementalSaves::decide(std::string file, Payload payload, int part, const Checkpoint* reference,
                                     bool hash) const {
  PlannedPart p{std::move(file), std::move(payload), nullptr, std::nullopt, std::nullopt};
  p.signature = signature_of(p.payload);
  const FileRecord* before = reference ? record_of(*reference, p.file) : nullptr;
  if (before && before->part != part) before = nullptr;
  if (before && known_damaged(reference->path / p.file)) before = nullptr;
  if (before) p.reference_xxh3 = before->xxh3;
  const auto last = last_.find(p.file);
  const bool moved = p.signature && last != last_.end() && last->second.signature != p.signature;
  const bool still_changing = moved && last->second.changed;
  if (before && !still_changing) {
    p.unchanged = before;  // if the hash agrees (below)
    if (hash) confirm(p);
  }
  return p;
}

void IncrementalSaves::confirm(PlannedPart& p) {
  if (!p.unchanged) return;
  const auto digest = safetensors::digest_tensors(p.payload, p.file);
  if (digest.bytes != p.unchanged->bytes || digest.xxh3 != p.unchanged->xxh3) p.unchanged = nullptr;
}

std::vector<PlannedPart> IncrementalSaves::plan(const std::string& file, const Payload& payload,
                                                const Checkpoint* reference, int threads) const {
  std::vector<PlannedPart> out;
  auto parts = safetensors::split_into_parts(payload, part_bytes_);
  for (std::size_t i = 0; i < parts.size(); ++i)
    out.push_back(decide(safetensors::part_file_name(file, i), std::move(parts[i]), static_cast<int>(i), reference,
                         /*hash=*/false));
  // The in-memory hashes run side by side: a key of many parts is hashed at memory speed.
  std::vector<std::function<void()>> hashes;
  for (auto& p : out)
    if (p.unchanged) hashes.push_back([&p] { confirm(p); });
  run_all(hashes, threads);
  return out;
}

PlannedPart IncrementalSaves::plan_whole(const std::string& file, Payload payload, const Checkpoint* reference) const {
  return decide(file, std::move(payload), -1, reference, /*hash=*/true);
}

void IncrementalSaves::committed(std::map<std::string, PartHistory> parts) { last_ = std::move(parts); }

void IncrementalSaves::link_failed(const fs::path& file, const std::string& why) {
  std::call_once(warned_, [&] {
    detail::log(LogLevel::warn,
                "Incremental save: cannot hard-link '{}' ({}); unchanged parts are written (copied) instead",
                file.string(), why);
  });
}

bool IncrementalSaves::known_damaged(const fs::path& file) const {
  std::lock_guard<std::mutex> lock(damaged_mutex_);
  if (damaged_.empty()) return false;
  const auto st = detail::path_status(file);
  return st && damaged_.count(st->inode);
}

void IncrementalSaves::reference_damaged(const fs::path& file, const std::string& why) {
  const auto st = detail::path_status(file);
  std::vector<std::string> holders;  // every checkpoint with this very file (hidden directories are saves in progress)
  const fs::path root = file.parent_path().parent_path();
  try {
    for (const auto& entry : detail::list_directory(root)) {
      if (entry.name.empty() || entry.name[0] == '.' || entry.status.type != detail::FileType::directory) continue;
      const auto held = detail::path_status(root / entry.name / file.filename());
      if (held && st && held->inode == st->inode) holders.push_back(entry.name);
    }
  } catch (const Error&) {  // the warning goes out without the list
  }
  std::sort(holders.begin(), holders.end());
  {
    std::lock_guard<std::mutex> lock(damaged_mutex_);
    if (st) damaged_.insert(st->inode);
  }
  detail::log(LogLevel::warn,
              "Incremental save: '{}' does not match its record, so it is not shared: the part is written from memory "
              "instead ({}). The damaged file is held by {} checkpoint(s): {}",
              file.string(), why, holders.size(), fmt::join(holders, ", "));
}

}  // namespace savepoint::engine
