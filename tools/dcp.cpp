// savepoint show / verify / export on a torch.distributed.checkpoint (DCP) directory: what its
// .metadata says, every chunk read and checked, and a prefix of its keys consolidated into one
// safetensors or PyTorch file (what Python's dcp_to_torch_save does, without Python).
#include "cli.hpp"

#include <savepoint/format/dcp.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/format/pytorch.hpp>

#include <algorithm>
#include <mutex>

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
  // Every exported tensor whole in memory (the writers take them all at once), read once.
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

// ---------------------------------------------------------------- convert
namespace {

// A group of DCP tensors (one prefix) as a savepoint key: its save hook reads each tensor whole
// from the DCP chunks when the engine writes it (never all of them in memory at once).
struct DcpGroup {
  const dcp::Reader* reader = nullptr;
  std::vector<const dcp::Item*> items;
  std::size_t prefix = 0;  // characters of "<prefix>." to drop from each key
};
constexpr const char* kDcpValues = "dcp_values";
constexpr const char* kDcpOptimizerHook = "savepoint.dcp.OptimizerState";
struct DcpModuleGroup : DcpGroup {};     // parameters and buffers: loads into a torch::nn::Module
struct DcpOptimizerGroup : DcpGroup {};  // optimizer state in get_state_dict's FQN form

Payload group_payload(void* object, const std::string& hook) {
  const auto& g = *static_cast<const DcpGroup*>(object);
  std::vector<TensorData> tensors;
  for (const dcp::Item* item : g.items) {
    TensorData t;
    t.spec = {item->key.substr(g.prefix), item->dtype, item->size, item->nbytes()};
    const dcp::Reader* reader = g.reader;
    t.copy_to_host = [reader, item](void* dst) {
      reader->read(*item, std::vector<std::int64_t>(item->size.size(), 0), item->size, dst);
    };
    tensors.push_back(std::move(t));
  }
  return Payload::tensors(std::move(tensors), {{"format", "pt"}, {"savepoint.hook", hook}, {"converted_from", "dcp"}});
}

void register_group_hooks() {
  static std::once_flag once;
  std::call_once(once, [] {
    const auto refuse = [](void*, const LoadContext& ctx) -> Apply {
      throw UsageError(fmt::format("savepoint convert: key '{}' is loaded by a program, not by the CLI", ctx.key));
    };
    // The module hook's name: a C++ program's add_recoverable("model", net) loads the key.
    TypeHooks module;
    module.name = "torch.nn.Module";
    module.extension = ".safetensors";
    module.save = [](void* o, const SaveContext&) { return group_payload(o, "torch.nn.Module"); };
    module.prepare_load = refuse;
    hook_table().add<DcpModuleGroup>(module);
    TypeHooks optimizer = module;
    optimizer.name = kDcpOptimizerHook;
    optimizer.save = [](void* o, const SaveContext&) { return group_payload(o, kDcpOptimizerHook); };
    hook_table().add<DcpOptimizerGroup>(optimizer);
  });
}

// DCP -> a new savepoint checkpoint in root `to`: a key per first component of the tensor
// keys ("model.fc1.weight" -> key "model", tensor "fc1.weight"), the values as the JSON key
// "dcp_values".
int dcp_to_savepoint(const fs::path& from, const fs::path& to) {
  const dcp::Reader reader(from);
  reader.verify();
  register_group_hooks();
  std::map<std::string, std::vector<const dcp::Item*>> groups;
  json values = json::object();
  for (const auto& item : reader.metadata().items) {
    if (!item.tensor) {
      values[item.key] = reader.value(item);
      continue;
    }
    const auto dot = item.key.find('.');
    if (dot == std::string::npos || dot == 0)
      throw Failure(fmt::format("DCP key '{}' has no prefix to name a savepoint key by ('model.' ...)", item.key));
    groups[item.key.substr(0, dot)].push_back(&item);
  }
  std::vector<std::unique_ptr<DcpGroup>> owned;
  Checkpointer ckpt(to);
  for (const auto& [prefix, items] : groups) {
    const bool optimizer = std::any_of(items.begin(), items.end(), [&](const dcp::Item* i) {
      return i->key.compare(prefix.size(), 7, ".state.") == 0;
    });
    const auto add = [&](auto group) {  // the group's type picks its hook
      group->reader = &reader;
      group->items = items;
      group->prefix = prefix.size() + 1;
      ckpt.add_recoverable(prefix, *group);
      owned.push_back(std::move(group));
    };
    if (optimizer) add(std::make_unique<DcpOptimizerGroup>());
    else add(std::make_unique<DcpModuleGroup>());
  }
  if (!values.empty()) ckpt.add_recoverable(kDcpValues, values);
  const auto c = ckpt.save_checkpoint({{"converted_from", from.string()}});
  fmt::print("converted DCP checkpoint {} ({} keys) into {}: keys {}\n", from.string(), reader.metadata().items.size(),
             c.path.string(), fmt::join(ckpt.keys(), ", "));
  return kOk;
}

// A value under `key`; its place in the nested state dict from the key's dotted parts
// ("optim.param_groups.0.lr" -> ("optim", "param_groups", 0, "lr")).
dcp::ChunkData value_chunk(const std::string& key, const json& value) {
  dcp::ChunkData v;
  v.key = key;
  v.tensor = false;
  v.value = value;
  std::size_t at = 0;
  while (at <= key.size()) {
    const auto dot = std::min(key.find('.', at), key.size());
    const auto part = key.substr(at, dot - at);
    if (!part.empty() && part.find_first_not_of("0123456789") == std::string::npos && part.size() < 10)
      v.path.push_back(std::stoll(part));
    else
      v.path.push_back(part);
    at = dot + 1;
  }
  return v;
}

// A savepoint checkpoint -> a new DCP directory: a tensor key's tensors as "<key>.<name>", a
// JSON key as the value "<key>". Sharded and per-rank keys are refused by name (their rows or
// ranks have no place in a one-process conversion yet).
int savepoint_to_dcp(const Checkpoint& c, const fs::path& to) {
  if (dcp::is_dcp_directory(to)) throw Failure(fmt::format("'{}' already holds a DCP checkpoint", to.string()));
  std::vector<std::shared_ptr<const FileContents>> keep;
  std::vector<dcp::ChunkData> chunks;
  for (const auto& rec : c.files) {
    if (rec.part > 0) continue;  // the key's other parts come with part 0
    if (rec.rank >= 0)
      throw Failure(fmt::format("key '{}' is per-rank or sharded ({}): convert it from a program with "
                                "savepoint::dcp::save",
                                rec.key, rec.hook));
    const auto contents = rec.part == 0 ? detail::open_key_verified(c, rec) : read_verified(c, rec);
    keep.push_back(contents);
    if (ends_with(rec.file, ".json")) {
      const json doc = json::parse(contents->bytes());
      // The values a DCP conversion gathered go back under their own keys.
      if (rec.key == kDcpValues && doc.is_object()) {
        for (const auto& [k, v] : doc.items()) chunks.push_back(value_chunk(k, v));
      } else {
        chunks.push_back(value_chunk(rec.key, doc));
      }
      continue;
    }
    const auto header = st::parse(contents->bytes(), c.path / rec.file);
    for (const auto& t : header.tensors) {
      dcp::ChunkData d;
      d.key = rec.key + "." + t.name;
      d.dtype = t.dtype;
      d.size = t.shape;
      d.offsets.assign(t.shape.size(), 0);
      d.sizes = t.shape;
      d.bytes = contents->bytes().substr(header.data_start + t.begin, t.nbytes());
      d.path = json::array({rec.key, t.name});
      // get_state_dict's optimizer form: ("optim", "state", "<parameter name>", "<field>").
      const auto last = t.name.rfind('.');
      if (rec.hook == kDcpOptimizerHook && t.name.rfind("state.", 0) == 0 && last > 6)
        d.path = json::array({rec.key, "state", t.name.substr(6, last - 6), t.name.substr(last + 1)});
      chunks.push_back(std::move(d));
    }
  }
  detail::make_directories(to);
  dcp::commit(to, dcp::merge_items({dcp::write_rank_file(to, 0, chunks)}));
  fmt::print("converted {} into DCP checkpoint {} ({} keys)\n", c.path.string(), to.string(), chunks.size());
  return kOk;
}

}  // namespace

int convert(const fs::path& from, const std::string& name, const fs::path& to) {
  if (is_dcp(from, name)) return dcp_to_savepoint(from, to);
  return savepoint_to_dcp(locate(from, name).checkpoint, to);
}

void add_convert(CLI::App& app, Runner& run) {
  struct Args {
    std::string from, name, to;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "convert", "Convert between a torch.distributed.checkpoint directory and a savepoint checkpoint: a DCP "
                 "directory becomes a new checkpoint in the root TO (a key per prefix: model, optim, ...); a "
                 "checkpoint becomes a new DCP directory TO");
  cmd->add_option("from", a->from, "a DCP directory, or a checkpoint (DIR NAME, or its directory)")->required();
  cmd->add_option("name", a->name, "the checkpoint's name in DIR");
  cmd->add_option("--to", a->to, "the savepoint root, or the new DCP directory")->required();
  cmd->callback([a, &run] { run = [a] { return convert(a->from, a->name, a->to); }; });
}

}  // namespace savepoint::cli
