// savepoint — inspect, verify and prune checkpoint directories from the shell.
//
//   savepoint list   <dir>                      committed checkpoints, oldest first
//   savepoint show   <dir> <checkpoint-name>    meta and files of one checkpoint
//   savepoint verify <dir>                      checksums of every file; exit 1 if anything is damaged
//   savepoint prune  <dir> --keep N [--min-key K]... [--max-key K]... [--no-recent] [--dry-run]
//   savepoint pin    <dir> <checkpoint-name>    retention never deletes it (unpin: undo)
#include <savepoint/core.hpp>

#include <fmt/format.h>

#include <cstring>
#include <ctime>
#include <iostream>
#include <string>
#include <vector>

namespace {

int usage() {
  std::cerr << "usage:\n"
               "  savepoint list   <dir>\n"
               "  savepoint show   <dir> <checkpoint-name>\n"
               "  savepoint verify <dir>\n"
               "  savepoint prune  <dir> --keep N [--min-key K]... [--max-key K]... [--no-recent] [--dry-run]\n"
               "  savepoint pin    <dir> <checkpoint-name>\n"
               "  savepoint unpin  <dir> <checkpoint-name>\n";
  return 2;
}

std::uint64_t total_bytes(const savepoint::Checkpoint& c) {
  std::uint64_t n = 0;
  for (const auto& f : c.files) n += f.bytes;
  return n;
}

std::string user_meta(const savepoint::Checkpoint& c) {
  nlohmann::json m = c.meta;
  m.erase("unixtime");
  m.erase("end_of_epoch");
  return m.dump();
}

int list(const std::string& dir) {
  savepoint::Checkpointer ckpt(dir, savepoint::CheckpointerOptions().read_only(true));
  fmt::print("{:<36} {:>5} {:>6} {:>12} {:>6}  {}\n", "checkpoint", "seq", "epoch", "bytes", "pinned", "meta");
  for (const auto& c : ckpt.list_checkpoints())
    fmt::print("{:<36} {:>5} {:>6} {:>12} {:>6}  {}\n", c.name(), c.sequence, c.end_of_epoch() ? "end" : "intra",
               total_bytes(c), c.pinned ? "yes" : "", user_meta(c));
  for (const auto& p : ckpt.unreadable_checkpoints()) fmt::print("UNREADABLE {}: {}\n", p.file.string(), p.reason);
  return 0;
}

int show(const std::string& dir, const std::string& name) {
  savepoint::Checkpointer ckpt(dir, savepoint::CheckpointerOptions().read_only(true));
  for (const auto& c : ckpt.list_checkpoints()) {
    if (c.name() != name) continue;
    fmt::print("path      {}\nsequence  {}\nmeta      {}\nfiles:\n", c.path.string(), c.sequence, c.meta.dump());
    for (const auto& f : c.files)
      fmt::print("  {:<24} {:<28} {:<24} {:>12} bytes  xxh3 {:016x}\n", f.key, f.file, f.hook, f.bytes, f.xxh3);
    return 0;
  }
  std::cerr << "savepoint: no committed checkpoint named '" << name << "' in " << dir << "\n";
  return 1;
}

int verify(const std::string& dir) {
  savepoint::Checkpointer ckpt(dir, savepoint::CheckpointerOptions().read_only(true));
  int bad = 0;
  for (const auto& c : ckpt.list_checkpoints()) {
    const auto problems = ckpt.verify(c);
    fmt::print("{:<36} {}\n", c.name(), problems.empty() ? "ok" : "DAMAGED");
    for (const auto& p : problems) fmt::print("    {}\n", p.reason);
    bad += !problems.empty();
  }
  for (const auto& p : ckpt.unreadable_checkpoints()) {
    fmt::print("{:<36} UNREADABLE\n    {}\n", p.file.parent_path().filename().string(), p.reason);
    ++bad;
  }
  return bad ? 1 : 0;
}

int prune(const std::string& dir, int argc, char** argv) {
  savepoint::KeepOptions keep;
  bool dry_run = false, have_keep = false;
  for (int i = 0; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--keep" && has_value) {
      keep.num_to_keep(std::stoi(argv[++i]));
      have_keep = true;
    } else if (arg == "--min-key" && has_value) {
      keep.min_key(argv[++i]);
    } else if (arg == "--max-key" && has_value) {
      keep.max_key(argv[++i]);
    } else if (arg == "--no-recent") {
      keep.keep_recent(false);
    } else if (arg == "--dry-run") {
      dry_run = true;
    } else {
      std::cerr << "savepoint prune: unknown argument '" << arg << "'\n";
      return usage();
    }
  }
  if (!have_keep) {
    std::cerr << "savepoint prune: --keep N is required\n";
    return 2;
  }
  savepoint::Checkpointer ckpt(dir, savepoint::CheckpointerOptions().read_only(dry_run));
  const auto doomed = dry_run ? ckpt.plan_deletions(keep)
                              : ckpt.delete_checkpoints(keep);
  for (const auto& c : doomed) fmt::print("{} {}\n", dry_run ? "would delete" : "deleted", c.name());
  fmt::print("{} checkpoint(s) {}\n", doomed.size(), dry_run ? "would be deleted" : "deleted");
  return 0;
}

// Pins or unpins through a writing Checkpointer: takes the directory's lock, so it cannot
// race a training run's retention (which holds the lock while it runs).
int set_pinned(const std::string& dir, const std::string& name, bool pinned) {
  savepoint::Checkpointer ckpt(dir);
  for (const auto& c : ckpt.list_checkpoints()) {
    if (c.name() != name) continue;
    const auto updated = pinned ? ckpt.pin(c) : ckpt.unpin(c);
    fmt::print("{} {}\n", updated.name(), updated.pinned ? "pinned" : "unpinned");
    return 0;
  }
  std::cerr << "savepoint: no committed checkpoint named '" << name << "' in " << dir << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return usage();
  const std::string command = argv[1], dir = argv[2];
  try {
    if (command == "list") return list(dir);
    if (command == "show" && argc == 4) return show(dir, argv[3]);
    if (command == "verify") return verify(dir);
    if (command == "prune") return prune(dir, argc - 3, argv + 3);
    if ((command == "pin" || command == "unpin") && argc == 4) return set_pinned(dir, argv[3], command == "pin");
    return usage();
  } catch (const savepoint::Error& e) {
    std::cerr << "savepoint: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "savepoint: " << e.what() << "\n";
    return 1;
  }
}
