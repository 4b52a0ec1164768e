// savepoint — inspect, verify and prune checkpoint directories from the shell.
//
//   savepoint list   <dir>                      committed checkpoints, oldest first
//   savepoint show   <dir> <checkpoint-name>    meta and files of one checkpoint, with the
//                                               tensors (name, dtype, shape, bytes) of each
//                                               .safetensors file, read from its header only
//   savepoint verify <dir>                      checksums of every file; exit 1 if anything is damaged
//   savepoint prune  <dir> --keep N [--min-key K]... [--max-key K]... [--no-recent] [--dry-run]
//   savepoint pin    <dir> <checkpoint-name>    retention never deletes it (unpin: undo)
//   savepoint --help                            this list (exit 0); bad usage exits 2
// A <dir> that does not exist is an error (exit 1), never an empty listing.
#include <savepoint/core.hpp>
#include <savepoint/format/safetensors.hpp>

#include <fmt/format.h>

#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <system_error>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace st = savepoint::safetensors;

void print_usage(std::ostream& out) {
  out << "usage:\n"
         "  savepoint list   <dir>\n"
         "  savepoint show   <dir> <checkpoint-name>\n"
         "  savepoint verify <dir>\n"
         "  savepoint prune  <dir> --keep N [--min-key K]... [--max-key K]... [--no-recent] [--dry-run]\n"
         "  savepoint pin    <dir> <checkpoint-name>\n"
         "  savepoint unpin  <dir> <checkpoint-name>\n"
         "  savepoint --help\n";
}

int usage() {
  print_usage(std::cerr);
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

// The header of a safetensors file, read without its tensor bytes: the 8-byte length prefix,
// then (if the length is plausible) that many header bytes. Whatever is wrong with the file,
// parse_header says so by throwing.
st::Header read_safetensors_header(const fs::path& file) {
  const std::uint64_t file_size = fs::file_size(file);
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + file.string());
  std::string bytes(8, '\0');
  in.read(bytes.data(), 8);
  bytes.resize(static_cast<std::size_t>(in.gcount()));
  if (bytes.size() == 8) {
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
    if (file_size >= 8 && n <= st::kMaxHeaderBytes && n <= file_size - 8) {  // else parse_header names the problem
      bytes.resize(8 + static_cast<std::size_t>(n));
      in.read(bytes.data() + 8, static_cast<std::streamsize>(n));
      bytes.resize(8 + static_cast<std::size_t>(in.gcount()));
    }
  }
  return st::parse_header(bytes, file_size, file);
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// One line per tensor, in file order; a header that cannot be read gives one line saying why.
void show_tensors(const fs::path& file) {
  try {
    const auto header = read_safetensors_header(file);
    for (const auto& t : header.tensors)
      fmt::print("      {:<40} {:<7} {:<16} {:>12} bytes\n", t.name, st::dtype_name(t.dtype), shape_text(t.shape),
                 t.nbytes());
  } catch (const std::exception& e) {  // savepoint::CorruptCheckpointError, file-system errors
    fmt::print("      UNREADABLE tensors: {}\n", e.what());
  }
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

int show(const std::string& dir, const std::string& name) {
  savepoint::Checkpointer ckpt(dir, savepoint::CheckpointerOptions().read_only(true));
  for (const auto& c : ckpt.list_checkpoints()) {
    if (c.name() != name) continue;
    fmt::print("path      {}\nsequence  {}\nmeta      {}\nfiles:\n", c.path.string(), c.sequence, c.meta.dump());
    for (const auto& f : c.files) {
      fmt::print("  {:<24} {:<28} {:<24} {:>12} bytes  xxh3 {:016x}\n", f.key, f.file, f.hook, f.bytes, f.xxh3);
      if (ends_with(f.file, ".safetensors")) show_tensors(c.path / f.file);
    }
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

// A mistyped directory must not look like an empty one ("no checkpoints"), nor be created by
// pin/unpin.
bool check_directory(const std::string& dir) {
  std::error_code ec;
  const auto status = fs::status(dir, ec);
  if (!fs::exists(status)) {
    std::cerr << "savepoint: no such directory: " << dir << "\n";
    return false;
  }
  if (!fs::is_directory(status)) {
    std::cerr << "savepoint: not a directory: " << dir << "\n";
    return false;
  }
  return true;
}

bool known_command(const std::string& command, int argc) {
  if (command == "list" || command == "verify" || command == "prune") return true;
  return (command == "show" || command == "pin" || command == "unpin") && argc == 4;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    print_usage(std::cout);
    return 0;
  }
  if (argc < 3) return usage();
  const std::string command = argv[1], dir = argv[2];
  if (!known_command(command, argc)) return usage();
  if (!check_directory(dir)) return 1;
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
