// savepoint export CKPT KEY --to FILE: one key's tensors as a standalone safetensors file
// (for safetensors.torch.load_file, Hugging Face tooling, or the Python reader) or, with
// --format pt, a PyTorch file torch.load reads. The file is verified against its checksum
// first, written to a temporary name, fsynced and renamed.
#include "cli.hpp"

#include <savepoint/detail/meta.hpp>
#include <savepoint/format/pytorch.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in fmt/format.h before fmt 11)
#include <unistd.h>

namespace savepoint::cli {

namespace {

struct Args {
  std::string checkpoint, key, to, format = "safetensors";
  bool force = false;
};

// A file torch.load reads as a dict of tensors (savepoint::pytorch::export_key, torch-free);
// written under a temporary name and renamed, like the safetensors export.
int export_pytorch(const Checkpoint& c, const Args& a) {
  const fs::path to = a.to;
  const fs::path tmp = to.string() + fmt::format(".savepoint-export-{}", ::getpid());
  std::error_code ec;
  Progress progress(fmt::format("exporting {} as a PyTorch file", a.key));
  progress.update("verifying and writing");
  try {
    pytorch::export_key(c, a.key, tmp);
    fs::rename(tmp, to);
  } catch (...) {
    fs::remove(tmp, ec);
    throw;
  }
  progress.clear();
  fmt::print("exported key '{}' of {} to {} ({} bytes, pt)\n", a.key, c.name(), to.string(), fs::file_size(to));
  return kOk;
}

int export_key(const Args& a) {
  if (is_dcp(a.checkpoint, "")) return export_dcp(a.checkpoint, a.key + ".", a.to, a.format, a.force);
  const auto c = locate(a.checkpoint, "").checkpoint;
  const FileRecord* rec = detail::whole_key_record(c, a.key, "export");
  if (!rec) {
    std::vector<std::string> keys;
    for (const auto& f : c.files) keys.push_back(f.key);
    throw Failure(fmt::format("checkpoint '{}' has no key '{}' (keys: {})", c.name(), a.key, fmt::join(keys, ", ")));
  }
  if (!ends_with(rec->file, ".safetensors"))
    throw Failure(fmt::format("key '{}' is stored as '{}' ({}), not as tensors: nothing to export as safetensors",
                              a.key, rec->file, rec->hook));
  const fs::path to = a.to;
  std::error_code ec;
  if (fs::exists(fs::symlink_status(to, ec)) && !a.force)
    throw Failure(fmt::format("'{}' already exists; pass --force to replace it", to.string()));

  if (a.format == "pt") return export_pytorch(c, a);

  Progress progress(fmt::format("exporting {} ({})", a.key, human_bytes(rec->bytes)));
  progress.update("verifying");
  const auto file = read_verified(c, *rec);
  (void)st::parse(file->bytes(), c.path / rec->file);  // a valid file, not only an unchanged one

  const fs::path tmp = to.string() + fmt::format(".savepoint-export-{}", ::getpid());
  try {
    detail::FileWriter out(tmp);
    const std::string_view bytes = file->bytes();
    constexpr std::size_t kChunk = std::size_t{64} << 20;
    for (std::size_t at = 0; at < bytes.size(); at += kChunk) {
      progress.update(fmt::format("writing {} of {}", human_bytes(at), human_bytes(bytes.size())));
      out.write(bytes.substr(at, kChunk));
    }
    out.finish();
    fs::rename(tmp, to);
  } catch (...) {
    fs::remove(tmp, ec);
    throw;
  }
  progress.clear();
  fmt::print("exported key '{}' of {} to {} ({} bytes, safetensors)\n", a.key, c.name(), to.string(), rec->bytes);
  return kOk;
}

}  // namespace

void add_export(CLI::App& app, Runner& run) {
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("export", "Write one key's tensors (e.g. the model) as a standalone file, "
                                           "after checking its checksum");
  cmd->add_option("checkpoint", a->checkpoint, "the checkpoint's directory, e.g. runs/x/CKPT+best")->required();
  cmd->add_option("key", a->key, "the recoverable's key, e.g. model (in a torch.distributed.checkpoint directory: "
                                  "the keys under this name, consolidated)")->required();
  cmd->add_option("--to", a->to, "the file to write")->required();
  cmd->add_option("--format", a->format, "safetensors (default) or pt (a file Python's torch.load reads as a dict of tensors)")
      ->check(CLI::IsMember({"safetensors", "pt"}));
  cmd->add_flag("--force", a->force, "replace FILE if it exists");
  cmd->callback([a, &run] { run = [a] { return export_key(*a); }; });
}

}  // namespace savepoint::cli
