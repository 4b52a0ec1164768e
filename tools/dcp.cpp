// savepoint show / verify / export on a torch.distributed.checkpoint (DCP) directory: what its
// .metadata says, every chunk read and checked, and a prefix of its keys consolidated into one
// safetensors or PyTorch file (what Python's dcp_to_torch_save does, without Python).
#include "cli.hpp"

#include <savepoint/format/dcp.hpp>
#include <savepoint/format/pytorch.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <unistd.h>

namespace savepoint::cli {

namespace {
std::string chunk_text(const dcp::Chunk& c) {
  return fmt::format("[{}] +[{}] in {} at {} ({} bytes)", fmt::join(c.offsets, ","), fmt::join(c.sizes, ","), c.file,
                     c.offset, c.length);
}
}  // namespace

bool is_dcp(const fs::path& dir, const std::string& name) { return name.empty() && dcp::is_dcp_directory(dir); }

int show_dcp(const fs::path& dir, bool as_json) {
  const dcp::Reader reader(dir);
  const auto& m = reader.metadata();
  json items = json::array();
  for (const auto& item : m.items) {
    json entry = {{"key", item.key}, {"kind", item.tensor ? "tensor" : "value"}};
    if (item.tensor) {
      entry["dtype"] = st::dtype_name(item.dtype);
      entry["shape"] = item.size;
      entry["bytes"] = item.nbytes();
    }
    json chunks = json::array();
    for (const auto& c : item.chunks)
      chunks.push_back({{"offsets", c.offsets}, {"sizes", c.sizes}, {"file", c.file}, {"offset", c.offset},
                        {"length", c.length}});
    entry["chunks"] = chunks;
    if (!item.tensor) {
      try {
        entry["value"] = reader.value(item);
      } catch (const std::exception& e) {
        entry["unreadable"] = e.what();
      }
    }
    items.push_back(std::move(entry));
  }
  if (as_json) {
    print_json({{"path", dir.string()}, {"format", "torch.distributed.checkpoint"}, {"version", m.version}, {"layout", m.layout}, {"keys", items}});
    return kOk;
  }
  fmt::print("path          {}\nformat        torch.distributed.checkpoint{}{}\nkeys:\n", dir.string(),
             m.version.empty() ? "" : " " + m.version, m.layout == "dcp" ? "" : " (" + m.layout + " layout)");
  for (std::size_t i = 0; i < m.items.size(); ++i) {
    const auto& item = m.items[i];
    if (item.tensor)
      fmt::print("  {:<44} {:<7} {:<16} {:>12} bytes  {} chunk(s)\n", item.key, st::dtype_name(item.dtype),
                 shape_text(item.size), item.nbytes(), item.chunks.size());
    else
      fmt::print("  {:<44} value   {}\n", item.key,
                 items[i].contains("value") ? items[i]["value"].dump() : "UNREADABLE: " + items[i]["unreadable"].get<std::string>());
    if (item.tensor && item.chunks.size() > 1)
      for (const auto& c : item.chunks) fmt::print("      {}\n", chunk_text(c));
  }
  return kOk;
}

int verify_dcp(const fs::path& dir, bool as_json) {
  std::string problem;
  std::size_t keys = 0;
  try {
    const dcp::Reader reader(dir);
    keys = reader.metadata().items.size();
    reader.verify();
  } catch (const CheckpointError& e) {
    problem = e.what();
  }
  if (as_json) {
    json problems = json::array();
    if (!problem.empty()) problems.push_back({{"reason", problem}});
    print_json({{"ok", problem.empty()}, {"checkpoints", json::array({{{"name", dir.filename().string()},
                                                                       {"status", problem.empty() ? "ok" : "DAMAGED"},
                                                                       {"problems", problems}}})}});
  } else {
    fmt::print("{} {}\n", dir.string(), problem.empty() ? "ok" : "DAMAGED");
    if (!problem.empty()) fmt::print("  problem: {}\n", problem);
    else fmt::print("DCP checkpoint: {} key(s), every chunk read and checked\n", keys);
  }
  return problem.empty() ? kOk : kProblem;
}

int export_dcp(const fs::path& dir, const std::string& prefix, const fs::path& to, const std::string& format, bool force) {
  std::error_code ec;
  if (fs::exists(fs::symlink_status(to, ec)) && !force)
    throw Failure(fmt::format("'{}' already exists; pass --force to replace it", to.string()));
  const dcp::Reader reader(dir);
  // Whole tensors, one at a time: the export holds the output, never the checkpoint twice.
  std::vector<std::string> storage;
  std::vector<pytorch::TensorBytes> tensors;
  std::vector<st::TensorSpec> specs;
  for (const auto& item : reader.metadata().items) {
    if (!item.tensor || item.key.compare(0, prefix.size(), prefix) != 0) continue;
    std::string bytes(item.nbytes(), '\0');
    reader.read(item, std::vector<std::int64_t>(item.size.size(), 0), item.size, bytes.data());
    storage.push_back(std::move(bytes));
    tensors.push_back({item.key.substr(prefix.size()), item.dtype, item.size, {}});
  }
  if (tensors.empty()) throw Failure(fmt::format("DCP checkpoint '{}' has no tensor key starting with '{}'", dir.string(), prefix));
  for (std::size_t i = 0; i < tensors.size(); ++i) tensors[i].bytes = storage[i];
  const fs::path tmp = to.string() + fmt::format(".savepoint-export-{}", ::getpid());
  try {
    if (format == "pt") {
      pytorch::write(tmp, tensors);
    } else {
      for (const auto& t : tensors) specs.push_back({t.name, t.dtype, t.shape, t.bytes.size()});
      const auto header = st::build_header(specs, {{"format", "pt"}});
      detail::FileWriter out(tmp);
      out.write(header);
      for (const auto& spec : specs)  // build_header sorted them into the order of their bytes
        for (const auto& t : tensors)
          if (t.name == spec.name) out.write(t.bytes);
      out.finish();
    }
    fs::rename(tmp, to);
  } catch (...) {
    fs::remove(tmp, ec);
    throw;
  }
  fmt::print("exported {} tensor(s) of DCP checkpoint {} to {} ({} bytes, {})\n", tensors.size(), dir.string(),
             to.string(), fs::file_size(to), format);
  return kOk;
}

}  // namespace savepoint::cli
