// A scrub: every record of every committed checkpoint stat'ed and grouped by file identity
// (device, inode), then each distinct file checked once against its newest checkpoint's record.
#include "scrub.hpp"
#include "catalog.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include <fmt/format.h>

#ifdef __linux__
#endif

#include <cerrno>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace savepoint::engine {

namespace {

using detail::FileStatus;
using detail::FileType;

// One checkpoint's record of a file.
struct Holder {
  std::size_t checkpoint;  // index into the listing, oldest first
  const FileRecord* record;
};
// One distinct file: an inode, or a missing file (by name and what meta.json records of it).
struct DistinctFile {
  std::optional<FileStatus> status;  // nullopt: missing, or its stat failed (`error`)
  std::string error;
  std::uint64_t bytes = 0;          // on disk; a missing file's: as recorded
  std::vector<std::size_t> checks;  // its Check indices
};
// One file as a group of records expects it (size, XXH3): normally one per file; records
// that disagree on the same inode are checked apart, so each names only its own checkpoints.
struct Check {
  std::size_t file;
  std::vector<Holder> holders;  // oldest first
};

class Scrub {
 public:
  Scrub(const Catalog& catalog, const ScrubOptions& options) : catalog_(catalog), options_(options) {}

  ScrubReport run() {
    listed_ = catalog_.list(&report_.unreadable);
    report_.checkpoints = listed_.size();
    index();
    const auto chosen = choose();
    for (std::size_t f = 0; f < files_.size(); ++f) {
      report_.bytes += files_[f].bytes;
      if (chosen[f]) to_read_ += files_[f].bytes;
    }
    report_.files = files_.size();
    for (std::size_t f = 0; f < files_.size(); ++f)
      for (const std::size_t c : files_[f].checks) examine(checks_[c], chosen[f]);
    return std::move(report_);
  }

 private:
  void index() {
    std::map<std::string, std::size_t> file_ids, check_ids;
    for (std::size_t c = 0; c < listed_.size(); ++c) {
      for (const auto& rec : listed_[c]->files) {
        const fs::path path = listed_[c]->path / rec.file;
        DistinctFile seen;
        try {
          seen.status = detail::path_status(path);
        } catch (const Error& e) {
          seen.error = e.what();
        }
        std::string id = seen.status          ? fmt::format("i{}:{}", seen.status->device, seen.status->inode)
                         : seen.error.empty() ? fmt::format("m{}:{}:{}", rec.bytes, rec.xxh3, rec.file)
                                              : "e" + path.string();
        seen.bytes = seen.status ? seen.status->size : rec.bytes;
        const auto file = file_ids.emplace(std::move(id), files_.size());
        if (file.second) files_.push_back(std::move(seen));
        const std::size_t f = file.first->second;
        const auto group = check_ids.emplace(fmt::format("{}:{}:{}", f, rec.bytes, rec.xxh3), checks_.size());
        if (group.second) {
          checks_.push_back({f, {}});
          files_[f].checks.push_back(group.first->second);
        }
        checks_[group.first->second].holders.push_back({c, &rec});
      }
    }
  }

  // Which files to read: all, or a random share of the readable ones by bytes.
  std::vector<bool> choose() const {
    std::vector<bool> chosen(files_.size(), false);
    std::vector<std::size_t> readable;
    std::uint64_t total = 0;
    for (std::size_t f = 0; f < files_.size(); ++f) {
      const auto& st = files_[f].status;
      if (!st || st->type != FileType::regular) continue;
      readable.push_back(f);
      total += files_[f].bytes;
    }
    if (options_.subset_percent >= 100) {
      for (const std::size_t f : readable) chosen[f] = true;
      return chosen;
    }
    // Fisher-Yates on mt19937_64 (whose output the standard fixes): the same seed chooses the
    // same files with any standard library, which std::shuffle does not promise.
    std::mt19937_64 rng(options_.seed != 0 ? options_.seed : std::random_device{}());
    for (std::size_t i = readable.size(); i > 1; --i) std::swap(readable[i - 1], readable[rng() % i]);
    const double target = static_cast<double>(total) * options_.subset_percent / 100.0;
    std::uint64_t taken = 0;
    for (const std::size_t f : readable) {
      if (static_cast<double>(taken) >= target) break;
      chosen[f] = true;
      taken += files_[f].bytes;
    }
    return chosen;
  }

  void examine(const Check& check, bool read) {
    const DistinctFile& file = files_[check.file];
    if (!file.error.empty()) {
      damage(check, check.holders.back(), file.error);
      return;
    }
    const std::uint64_t recorded = check.holders.back().record->bytes;
    const bool stat_ok = file.status && file.status->type == FileType::regular && file.status->size == recorded;
    if (!stat_ok) {  // missing, not a regular file, or of the wrong size: the check's own words
      first_failure(check, [](const Checkpoint& c, const FileRecord& r) { detail::check_file_size(c, r); });
      return;
    }
    if (!read) return;
    first_failure(check, [](const Checkpoint& c, const FileRecord& r) { detail::verify_file(c, r); });
    if (counted_.insert(check.file).second) {
      ++report_.files_read;
      report_.bytes_read += file.bytes;
      if (options_.progress) options_.progress(report_.bytes_read, to_read_);
    }
  }

  // Runs `test` on the newest holder; a holder deleted meanwhile hands over to the next one.
  void first_failure(const Check& check, const std::function<void(const Checkpoint&, const FileRecord&)>& test) {
    for (auto h = check.holders.rbegin(); h != check.holders.rend(); ++h) {
      try {
        test(*listed_[h->checkpoint], *h->record);
        return;
      } catch (const Error& e) {
        if (!still_listed(h->checkpoint)) continue;
        damage(check, *h, e.what());
        return;
      }
    }
  }

  void damage(const Check& check, const Holder& from, std::string reason) {
    ScrubDamage out;
    out.key = from.record->key;
    out.file = from.record->file;
    out.path = listed_[from.checkpoint]->path / from.record->file;
    out.reason = std::move(reason);
    for (const auto& h : check.holders) {
      const std::string name = listed_[h.checkpoint]->name();
      if (still_listed(h.checkpoint) && (out.checkpoints.empty() || out.checkpoints.back() != name))
        out.checkpoints.push_back(name);
    }
    if (!out.checkpoints.empty()) report_.damaged.push_back(std::move(out));
  }

  // False once the checkpoint was deleted or replaced (retention running beside the scrub).
  bool still_listed(std::size_t c) {
    const auto known = listed_now_.find(c);
    if (known != listed_now_.end()) return known->second;
    bool listed = true;
    try {
      (void)catalog_.current(*listed_[c]);
    } catch (const StaleCheckpointError&) {
      listed = false;
    } catch (const Error&) {  // its meta.json went bad: still there, and damaged
    }
    return listed_now_[c] = listed;
  }

  const Catalog& catalog_;
  const ScrubOptions& options_;
  ScrubReport report_;
  std::vector<Catalog::Shared> listed_;
  std::vector<DistinctFile> files_;
  std::vector<Check> checks_;
  std::set<std::size_t> counted_;  // files read
  std::map<std::size_t, bool> listed_now_;
  std::uint64_t to_read_ = 0;
};

}  // namespace

void check_scrub_options(const ScrubOptions& options) {
  const double p = options.subset_percent;
  if (!(p > 0 && p <= 100)) {
    throw UsageError(fmt::format("savepoint: ScrubOptions::subset must be a percentage in (0, 100], got {}", p));
  }
}

ScrubReport scrub(const fs::path& root, const ScrubOptions& options) {
  check_scrub_options(options);
  const Catalog catalog(root, nullptr);  // read-only, and a cache of its own
  return Scrub(catalog, options).run();
}

}  // namespace savepoint::engine
