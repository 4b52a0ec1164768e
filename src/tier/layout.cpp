#include "layout.hpp"

#include <savepoint/detail/meta.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <set>
#include <tuple>

namespace savepoint::tier {

using nlohmann::json;
using namespace detail;

namespace {
constexpr const char* kOwn = "own";
constexpr const char* kReplicas = "replicas";
constexpr const char* kParity = "parity";
constexpr const char* kComplete = "complete";
constexpr const char* kRecovery = "recovery";
constexpr const char* kRebuilt = "rebuilt";

// The committed <name> directories under each of root/<sub>/rank*/.
std::vector<fs::path> per_rank_dirs(const fs::path& root, const char* sub) {
  std::vector<fs::path> out;
  for (const auto& rank : list_directory(root / sub, "rank")) {
    if (rank.status.type != FileType::directory) continue;
    for (const auto& e : list_directory(root / sub / rank.name, kCheckpointPrefix))
      if (e.status.type == FileType::directory) out.push_back(root / sub / rank.name / e.name);
  }
  return out;
}

// Temporaries of receives or parity computations a crash interrupted.
void remove_temporaries(const fs::path& root, const char* sub) {
  for (const auto& rank : list_directory(root / sub, "rank"))
    for (const auto& e : list_directory(root / sub / rank.name, kTempPrefix)) remove_tree(root / sub / rank.name / e.name);
}
}  // namespace

bool operator<(const Marker& a, const Marker& b) {
  return std::tie(b.unixtime, b.name) < std::tie(a.unixtime, a.name);
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

fs::path Layout::replicas(int sender) const { return root_ / kReplicas / fmt::format("rank{}", sender); }
fs::path Layout::parity(int holder) const { return root_ / kParity / fmt::format("rank{}", holder); }

void Layout::create_and_clean() const {
  for (const char* sub : {kOwn, kReplicas, kParity, kComplete, kRecovery, kRebuilt}) make_directories(root_ / sub);
  remove_temporaries(root_, kReplicas);
  remove_temporaries(root_, kParity);
}

std::vector<Marker> Layout::markers() const {
  std::vector<Marker> out;
  for (const auto& e : list_directory(root_ / kComplete, kCheckpointPrefix)) {
    try {
      const json j = json::parse(read_small_file(root_ / kComplete / e.name, 4096));
      out.push_back({e.name, j.at("unixtime").get<double>()});
    } catch (const std::exception& ex) {
      detail::log(LogLevel::warn, "savepoint: ignoring the unreadable memory-tier marker '{}': {}",
                  (root_ / kComplete / e.name).string(), ex.what());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

void Layout::mark_complete(const Checkpoint& checkpoint) const {
  write_file(root_ / kComplete / checkpoint.name(), dump(json{{"unixtime", checkpoint.unixtime()}}), /*sync=*/false);
}

std::vector<fs::path> Layout::copies() const {
  std::vector<fs::path> out;
  for (const auto& e : list_directory(own(), kCheckpointPrefix))
    if (e.status.type == FileType::directory) out.push_back(own() / e.name);
  for (auto& d : per_rank_dirs(root_, kReplicas)) out.push_back(std::move(d));
  return out;
}

std::vector<fs::path> Layout::parity_shares() const { return per_rank_dirs(root_, kParity); }

void Layout::retain(int keep, bool spares) const {
  const auto complete = markers();
  std::set<std::string> kept;
  for (std::size_t i = 0; i < complete.size() && i < static_cast<std::size_t>(keep); ++i) kept.insert(complete[i].name);
  // Data first, markers last: a marker never names a checkpoint whose data is gone while it stays.
  // What is not kept becomes the spare its directory's next save overwrites in place (its pages
  // stay resident: no fresh page on the save path), or goes when there is one already.
  const std::size_t max_spares = spares ? 1 : 0;
  for (const auto& dir : copies())
    if (!kept.count(dir.filename().string())) recycle_directory(dir, max_spares);
  for (const auto& dir : parity_shares())
    if (!kept.count(dir.filename().string())) recycle_directory(dir, max_spares);
  remove_temporaries(root_, kReplicas);
  remove_temporaries(root_, kParity);
  if (!spares) remove_spares();  // an earlier run's, kept with reuse_files on
  for (const auto& m : complete)
    if (!kept.count(m.name)) remove_file(root_ / kComplete / m.name);
  for (const char* sub : {kRecovery, kRebuilt})
    for (const auto& e : list_directory(root_ / sub)) remove_tree(root_ / sub / e.name);
}

void Layout::remove_spares() const {
  std::vector<fs::path> parents{own()};
  for (const char* sub : {kReplicas, kParity})
    for (const auto& rank : list_directory(root_ / sub, "rank")) parents.push_back(root_ / sub / rank.name);
  for (const auto& parent : parents)
    for (const auto& e : list_directory(parent, kSparePrefix)) remove_tree(parent / e.name);
}

void Layout::check_capacity(const Checkpoint& committed, int keep) const {
  // This node's bytes of one checkpoint: its part and the redundancy it keeps.
  std::uint64_t one = 0;
  std::vector<fs::path> dirs = copies();
  for (auto& d : parity_shares()) dirs.push_back(std::move(d));
  for (const auto& dir : dirs) {
    if (dir.filename() != committed.name()) continue;
    for (const auto& e : list_directory(dir))
      if (e.status.type == FileType::regular) one += e.status.size;
  }
  const std::uint64_t needed = one * static_cast<std::uint64_t>(keep + 1);  // keep, and the next one
  std::uint64_t free = 0;
  try {
    free = available_bytes(root_);
  } catch (const IoError&) {
    return;  // cannot tell: a write reports ENOSPC if it happens
  }
  if (free + one < needed) {
    throw IoError(fmt::format("savepoint: the memory tier in '{}' needs about {:.1f} MiB on this node ({} complete "
                              "checkpoint(s) kept and the next one, {:.1f} MiB each: this node's part and the "
                              "redundancy it keeps), but only {:.1f} MiB are free there: make the file system larger "
                              "(for /dev/shm: mount -o remount,size=...), keep fewer, or use another directory",
                              root_.string(), static_cast<double>(needed) / (1 << 20), keep,
                              static_cast<double>(one) / (1 << 20), static_cast<double>(free + one) / (1 << 20)),
                  root_, ENOSPC);
  }
}

void copy_verified(const fs::path& from, const fs::path& to, const FileRecord& record, bool sync,
                   const ChunkBuffer& buffer) {
  const PositionalReader source = PositionalReader::file(from);
  FileWriter out(to);
  for (std::uint64_t offset = 0; offset < record.bytes; offset += buffer.size()) {
    const std::size_t n = std::min<std::uint64_t>(buffer.size(), record.bytes - offset);
    if (!source.read(offset, n, buffer.data())) break;  // shorter than recorded: the digest says so
    out.write(buffer.data(), n);
  }
  const FileDigest digest = out.finish(sync);
  if (digest.bytes != record.bytes || digest.xxh3 != record.xxh3) {
    throw CorruptCheckpointError(fmt::format("'{}' (key '{}') does not match its record: {} bytes, XXH3 {} "
                                             "(recorded {} bytes, XXH3 {})",
                                             from.string(), record.key, digest.bytes, to_hex(digest.xxh3),
                                             record.bytes, to_hex(record.xxh3)),
                                 from);
  }
}

}  // namespace savepoint::tier
