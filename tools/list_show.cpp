// savepoint list / show: what a root holds, and what one checkpoint holds down to each tensor.
#include "cli.hpp"

#include <sys/stat.h>

#include <fmt/format.h>

namespace savepoint::cli {

namespace {

// "ok" when every file is there with its recorded size (a stat, no reading: `verify` reads
// and checks the checksums), else what is wrong with the first bad file.
std::string quick_status(const Checkpoint& c) {
  for (const auto& f : c.files) {
    const auto status = detail::path_status(c.path / f.file);  // also in an object store (a HEAD)
    if (!status) return "MISSING " + f.file;
    if (status->type != detail::FileType::regular) return "NOT A FILE " + f.file;
    if (status->size != f.bytes) return "WRONG SIZE " + f.file;
  }
  return "ok";
}

int list(const fs::path& dir, bool as_json) {
  const auto ckpt = open_root(dir);
  const auto all = ckpt->list_checkpoints();
  const auto unreadable = ckpt->unreadable_checkpoints();
  if (as_json) {
    json out = json::array();
    for (const auto& c : all) {
      out.push_back({{"name", c.name()},
                     {"path", c.path.string()},
                     {"unixtime", c.unixtime()},
                     {"time", local_time(c.unixtime())},
                     {"end_of_epoch", c.end_of_epoch()},
                     {"sequence", c.sequence},
                     {"bytes", total_bytes(c)},
                     {"pinned", c.pinned},
                     {"status", quick_status(c)},
                     {"meta", user_meta(c)}});
    }
    for (const auto& p : unreadable)
      out.push_back({{"name", p.file.parent_path().filename().string()},
                     {"path", p.file.parent_path().string()},
                     {"status", "UNREADABLE"},
                     {"reason", p.reason}});
    print_json(out);
    return kOk;
  }
  std::vector<std::vector<std::string>> rows{{"checkpoint", "time", "end-of-epoch", "seq", "size", "pinned", "status", "meta"}};
  for (const auto& c : all)
    rows.push_back({c.name(), local_time(c.unixtime()), c.end_of_epoch() ? "yes" : "no", std::to_string(c.sequence),
                    human_bytes(total_bytes(c)), c.pinned ? "yes" : "no", quick_status(c), user_meta(c).dump()});
  for (const auto& p : unreadable)
    rows.push_back({p.file.parent_path().filename().string(), "-", "-", "-", "-", "-", "UNREADABLE", p.reason});
  print_table(rows);
  return kOk;
}

json tensors_json(const st::Header& header) {
  json tensors = json::array();
  for (const auto& t : header.tensors)
    tensors.push_back({{"name", t.name}, {"dtype", st::dtype_name(t.dtype)}, {"shape", t.shape}, {"bytes", t.nbytes()}});
  return tensors;
}

int show(const fs::path& where, const std::string& name, bool as_json) {
  if (is_dcp(where, name)) return show_dcp(where, as_json);
  const auto [root, c] = locate(where, name);
  json files = json::array();
  for (const auto& f : c.files) {
    json entry = {{"key", f.key}, {"file", f.file}, {"hook", f.hook}, {"bytes", f.bytes}, {"xxh3", detail::to_hex(f.xxh3)}};
    if (f.part >= 0) entry["part"] = f.part;  // a key split into parts (format 2)
    if (f.rank >= 0) entry["rank"] = f.rank;
    // Names of the file: above 1, an incremental save shares it with other checkpoints.
    struct stat st {};
    if (::lstat((c.path / f.file).c_str(), &st) == 0) entry["links"] = static_cast<std::uint64_t>(st.st_nlink);
    if (ends_with(f.file, ".safetensors")) {
      try {
        const auto header = read_safetensors_header(c.path / f.file);
        entry["tensors"] = tensors_json(header);
        entry["metadata"] = header.metadata;
      } catch (const std::exception& e) {  // CorruptCheckpointError, file-system errors
        entry["unreadable"] = e.what();
      }
    }
    files.push_back(std::move(entry));
  }
  if (as_json) {
    print_json({{"name", c.name()},
                {"path", c.path.string()},
                {"sequence", c.sequence},
                {"unixtime", c.unixtime()},
                {"time", local_time(c.unixtime())},
                {"end_of_epoch", c.end_of_epoch()},
                {"pinned", c.pinned},
                {"meta", user_meta(c)},
                {"files", files}});
    return kOk;
  }
  fmt::print("path          {}\nsequence      {}\ntime          {}\nend-of-epoch  {}\npinned        {}\nmeta          {}\nfiles:\n",
             c.path.string(), c.sequence, local_time(c.unixtime()), c.end_of_epoch() ? "yes" : "no",
             c.pinned ? "yes" : "no", user_meta(c).dump());
  for (const auto& f : files) {
    const std::uint64_t links = f.value("links", std::uint64_t{1});
    fmt::print("  {:<24} {:<28} {:<24} {:>12} bytes  xxh3 {}{}\n", f["key"].get<std::string>(), f["file"].get<std::string>(),
               f["hook"].get<std::string>(), f["bytes"].get<std::uint64_t>(), f["xxh3"].get<std::string>(),
               links > 1 ? fmt::format("  shared by {} checkpoints", links) : std::string());
    if (f.contains("unreadable")) fmt::print("      UNREADABLE tensors: {}\n", f["unreadable"].get<std::string>());
    if (!f.contains("tensors")) continue;
    for (const auto& t : f["tensors"])
      fmt::print("      {:<40} {:<7} {:<16} {:>12} bytes\n", t["name"].get<std::string>(), t["dtype"].get<std::string>(),
                 shape_text(t["shape"].get<std::vector<std::int64_t>>()), t["bytes"].get<std::uint64_t>());
  }
  return kOk;
}

}  // namespace

void add_list_show(CLI::App& app, Runner& run) {
  struct Args {
    std::string dir, name;
    bool json = false;
  };
  auto args = std::make_shared<Args>();

  auto* list_cmd = app.add_subcommand("list", "List the committed checkpoints of DIR, oldest first: name, time, "
                                              "end-of-epoch, sequence, size, pinned, status, user meta");
  list_cmd->add_option("dir", args->dir, "checkpoint root directory")->required();
  list_cmd->add_flag("--json", args->json, "print a JSON array instead of a table");
  list_cmd->callback([args, &run] { run = [args] { return list(args->dir, args->json); }; });

  auto* show_cmd = app.add_subcommand("show", "Show one checkpoint: meta, files, and each tensor's dtype, shape "
                                              "and bytes (from the safetensors headers); or a torch.distributed."
                                              "checkpoint directory's keys, chunks and values");
  show_cmd->add_option("checkpoint", args->dir, "DIR NAME, or the checkpoint's own directory")->required();
  show_cmd->add_option("name", args->name, "checkpoint name in DIR, e.g. CKPT+best");
  show_cmd->add_flag("--json", args->json, "print JSON");
  show_cmd->callback([args, &run] { run = [args] { return show(args->dir, args->name, args->json); }; });
}

}  // namespace savepoint::cli
