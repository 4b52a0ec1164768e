// torch.distributed.checkpoint both ways (savepoint/dcp.hpp): the State's registrations as DCP
// keys, loaded region by region from a dcp::Reader, saved as one file per rank and a .metadata.
#include "builtins.hpp"

#include <savepoint/dcp.hpp>

#include <savepoint/log.hpp>

#include <map>
#include <set>
#include <unordered_map>

namespace savepoint::dcp {

namespace {
using builtin::Tensor;
}  // namespace

struct State::Entry {
  enum class Kind { tensor, value, optimizer };
  Kind kind = Kind::tensor;
  std::string key;                 // the DCP key; an optimizer's: its prefix
  Tensor local;                    // the live tensor (whole, or its rows)
  std::int64_t global_rows = -1;   // rows of the global tensor; -1: `local` is whole
  std::int64_t row_offset = 0;
  std::string fqn;                 // the name an optimizer's state is keyed by
  nlohmann::json path = nlohmann::json::array();
  nlohmann::json* value = nullptr;
  torch::optim::Optimizer* optimizer = nullptr;
};

State& State::module(const std::string& prefix, torch::nn::Module& module) {
  const auto add = [&](const std::string& name, const Tensor& t) {
    auto e = std::make_shared<Entry>();
    e->key = prefix.empty() ? name : prefix + "." + name;
    e->local = t;
    e->fqn = name;
    e->path = prefix.empty() ? nlohmann::json::array({name}) : nlohmann::json::array({prefix, name});
    entries_.push_back(std::move(e));
  };
  for (const auto& p : module.named_parameters(true)) add(p.key(), p.value());
  for (const auto& b : module.named_buffers(true))
    if (b.value().defined()) add(b.key(), b.value());
  return *this;
}

State& State::module(torch::nn::Module& module, const TransferOptions& options) {
  // The renames run from DCP names to module names; a module name goes back through them in
  // reverse order (a name starting with `to` had started with `from`).
  const auto key_of = [&](std::string name) {
    const auto& renames = options.renames();
    for (auto it = renames.rbegin(); it != renames.rend(); ++it) {
      if (name.compare(0, it->second.size(), it->second) != 0)
        throw UsageError(fmt::format("savepoint: DCP: module name '{}' is not what the rename '{}' -> '{}' gives", name,
                                     it->first, it->second));
      name = it->first + name.substr(it->second.size());
    }
    return options.prefix() + name;
  };
  const auto add = [&](const std::string& name, const Tensor& t) {
    auto e = std::make_shared<Entry>();
    e->key = key_of(name);
    e->local = t;
    e->fqn = name;
    e->path = nlohmann::json::array({e->key});
    entries_.push_back(std::move(e));
  };
  for (const auto& p : module.named_parameters(true)) add(p.key(), p.value());
  for (const auto& b : module.named_buffers(true))
    if (b.value().defined()) add(b.key(), b.value());
  return *this;
}

State& State::sharded(const std::string& prefix, ShardedTensors& shards) {
  for (const auto& s : shards.shards()) {
    auto e = std::make_shared<Entry>();
    e->key = prefix.empty() ? s.name : prefix + "." + s.name;
    e->local = s.local;
    e->global_rows = s.global_rows;
    e->row_offset = s.offset;
    e->fqn = s.name;
    e->path = prefix.empty() ? nlohmann::json::array({s.name}) : nlohmann::json::array({prefix, s.name});
    entries_.push_back(std::move(e));
  }
  return *this;
}

State& State::optimizer(const std::string& prefix, torch::optim::Optimizer& optimizer) {
  auto e = std::make_shared<Entry>();
  e->kind = Entry::Kind::optimizer;
  e->key = prefix;
  e->optimizer = &optimizer;
  entries_.push_back(std::move(e));
  return *this;
}

State& State::tensor(const std::string& key, torch::Tensor tensor) {
  auto e = std::make_shared<Entry>();
  e->key = key;
  e->local = std::move(tensor);
  e->path = nlohmann::json::array({key});
  entries_.push_back(std::move(e));
  return *this;
}

State& State::value(const std::string& key, nlohmann::json& value) {
  auto e = std::make_shared<Entry>();
  e->kind = Entry::Kind::value;
  e->key = key;
  e->value = &value;
  e->path = nlohmann::json::array({key});
  entries_.push_back(std::move(e));
  return *this;
}

namespace {

using Entry = State::Entry;

// One tensor to load or save: a region of a DCP key.
struct Region {
  std::string key;
  Tensor local;
  std::vector<std::int64_t> global;   // the whole tensor's shape
  std::vector<std::int64_t> offsets;  // where `local` lies in it
  nlohmann::json path;
  std::function<void(const Tensor&)> after_load;  // Adam's step: a float tensor into an integer
};

std::vector<std::int64_t> sizes_of(const Tensor& t) { return t.sizes().vec(); }

Region region_of(const Entry& e, const std::string& key, const Tensor& local, nlohmann::json path) {
  Region r{key, local, sizes_of(local), std::vector<std::int64_t>(static_cast<std::size_t>(local.dim()), 0),
           std::move(path), {}};
  if (e.global_rows >= 0) {
    if (local.dim() == 0) detail::throw_usage(fmt::format("savepoint: DCP key '{}' is sharded by rows but has no dims", key));
    r.global[0] = e.global_rows;
    r.offsets[0] = e.row_offset;
  }
  return r;
}

// What an optimizer's per-parameter state holds, as Python names it, created zeroed where the
// optimizer has taken no step yet (so a load has somewhere to go).
struct OptimizerFields {
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::int64_t* step = nullptr;
};

template <class S>
void adam_fields(S& s, const Tensor& p, bool amsgrad, OptimizerFields& out) {
  if (!s.exp_avg().defined()) s.exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
  if (!s.exp_avg_sq().defined()) s.exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
  out.tensors.emplace_back("exp_avg", s.exp_avg());
  out.tensors.emplace_back("exp_avg_sq", s.exp_avg_sq());
  if (amsgrad) {
    if (!s.max_exp_avg_sq().defined()) s.max_exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
    out.tensors.emplace_back("max_exp_avg_sq", s.max_exp_avg_sq());
  }
}

OptimizerFields fields_of(torch::optim::Optimizer& opt, torch::optim::OptimizerParamGroup& group, const Tensor& p,
                          bool create) {
  using namespace torch::optim;
  OptimizerFields out;
  auto& states = opt.state();
  const auto key = builtin::state_key(states, p);
  auto it = states.find(key);
  // Adam and AdamW keep the same fields in states of two types.
  const auto adam_like = [&](auto* state_type, bool amsgrad) {
    using S = std::remove_pointer_t<decltype(state_type)>;
    if (it == states.end()) {
      if (!create) return;
      it = states.emplace(key, std::make_unique<S>()).first;
    }
    auto& s = static_cast<S&>(*it->second);
    adam_fields(s, p, amsgrad, out);
    out.step = &s.step();
  };
  if (auto* o = dynamic_cast<AdamOptions*>(&group.options())) {
    adam_like(static_cast<AdamParamState*>(nullptr), o->amsgrad());
  } else if (auto* w = dynamic_cast<AdamWOptions*>(&group.options())) {
    adam_like(static_cast<AdamWParamState*>(nullptr), w->amsgrad());
  } else if (auto* g = dynamic_cast<SGDOptions*>(&group.options())) {
    if (g->momentum() == 0) return out;  // plain SGD keeps no state (Python: momentum_buffer None)
    if (it == states.end()) {
      if (!create) return out;
      auto s = std::make_unique<SGDParamState>();
      s->momentum_buffer(torch::zeros_like(p, torch::MemoryFormat::Preserve));
      it = states.emplace(key, std::move(s)).first;
    }
    out.tensors.emplace_back("momentum_buffer", static_cast<SGDParamState&>(*it->second).momentum_buffer());
  } else {
    detail::throw_usage("savepoint: DCP maps the state of Adam, AdamW and SGD only; this optimizer is none of them");
  }
  return out;
}

// A group's options as Python's param_groups entry (without "params").
nlohmann::json group_options(torch::optim::OptimizerParamGroup& group) {
  using namespace torch::optim;
  nlohmann::json j;
  const auto adam_like = [&](auto& o) {
    j = {{"lr", o.lr()},
         {"betas", {std::get<0>(o.betas()), std::get<1>(o.betas())}},
         {"eps", o.eps()},
         {"weight_decay", o.weight_decay()},
         {"amsgrad", o.amsgrad()},
         {"maximize", false},
         {"foreach", nullptr},
         {"capturable", false},
         {"differentiable", false},
         {"fused", nullptr}};
  };
  if (auto* o = dynamic_cast<AdamOptions*>(&group.options())) {
    adam_like(*o);
    j["decoupled_weight_decay"] = false;
  } else if (auto* w = dynamic_cast<AdamWOptions*>(&group.options())) {
    adam_like(*w);
  } else if (auto* s = dynamic_cast<SGDOptions*>(&group.options())) {
    j = {{"lr", s->lr()},         {"momentum", s->momentum()}, {"dampening", s->dampening()},
         {"weight_decay", s->weight_decay()}, {"nesterov", s->nesterov()}, {"maximize", false},
         {"foreach", nullptr},    {"differentiable", false},  {"fused", nullptr}};
  } else {
    j = {{"lr", group.options().get_lr()}};
  }
  return j;
}

void apply_group_options(torch::optim::OptimizerParamGroup& group, const nlohmann::json& j, const std::string& key) {
  using namespace torch::optim;
  try {
    const auto adam_like = [&](auto& o) {
      if (j.contains("lr")) o.lr(j.at("lr").get<double>());
      if (j.contains("betas")) o.betas({j.at("betas").at(0).get<double>(), j.at("betas").at(1).get<double>()});
      if (j.contains("eps")) o.eps(j.at("eps").get<double>());
      if (j.contains("weight_decay")) o.weight_decay(j.at("weight_decay").get<double>());
      if (j.contains("amsgrad")) o.amsgrad(j.at("amsgrad").get<bool>());
    };
    if (auto* o = dynamic_cast<AdamOptions*>(&group.options())) adam_like(*o);
    else if (auto* w = dynamic_cast<AdamWOptions*>(&group.options())) adam_like(*w);
    else if (auto* s = dynamic_cast<SGDOptions*>(&group.options())) {
      if (j.contains("lr")) s->lr(j.at("lr").get<double>());
      if (j.contains("momentum")) s->momentum(j.at("momentum").get<double>());
      if (j.contains("dampening")) s->dampening(j.at("dampening").get<double>());
      if (j.contains("weight_decay")) s->weight_decay(j.at("weight_decay").get<double>());
      if (j.contains("nesterov")) s->nesterov(j.at("nesterov").get<bool>());
    } else if (j.contains("lr")) {
      group.options().set_lr(j.at("lr").get<double>());
    }
  } catch (const nlohmann::json::exception& e) {
    throw MismatchError(fmt::format("savepoint: DCP value '{}': a param group's options are not what the optimizer "
                                    "takes: {}",
                                    key, e.what()),
                        {}, key);
  }
}

// Every parameter the State knows, by its tensor: the entry that holds it.
std::unordered_map<const void*, const Entry*> parameters_of(const State& state) {
  std::unordered_map<const void*, const Entry*> out;
  for (const auto& e : state.entries())
    if (e->kind == Entry::Kind::tensor && !e->fqn.empty()) out.emplace(e->local.unsafeGetTensorImpl(), e.get());
  return out;
}

const Entry& owner_of(const std::unordered_map<const void*, const Entry*>& params, const Tensor& p,
                      const std::string& prefix, std::size_t group, std::size_t index) {
  const auto it = params.find(p.unsafeGetTensorImpl());
  if (it == params.end())
    detail::throw_usage(fmt::format("savepoint: DCP optimizer '{}': parameter {} of group {} belongs to no module or "
                                    "sharded set of the State, so it has no name to key its state by",
                                    prefix, index, group));
  return *it->second;
}

// The regions and values of a State, optimizers expanded. `create`: make missing optimizer
// state (a load); otherwise only what exists is saved.
struct Expanded {
  std::vector<Region> regions;
  std::vector<std::pair<const Entry*, nlohmann::json>> values;  // save: the value to write
  struct Groups {
    std::string key;
    torch::optim::Optimizer* optimizer;
    std::vector<std::vector<std::string>> fqns;  // per group
  };
  std::vector<Groups> groups;
  std::vector<std::shared_ptr<Entry>> owned;  // optimizer fields' entries
};

Expanded expand(const State& state, bool create) {
  Expanded out;
  const auto params = parameters_of(state);
  for (const auto& e : state.entries()) {
    if (e->kind == Entry::Kind::tensor) {
      out.regions.push_back(region_of(*e, e->key, e->local, e->path));
    } else if (e->kind == Entry::Kind::value) {
      out.values.emplace_back(e.get(), *e->value);
    } else {
      auto& opt = *e->optimizer;
      Expanded::Groups groups{e->key + ".param_groups", &opt, {}};
      for (std::size_t g = 0; g < opt.param_groups().size(); ++g) {
        auto& group = opt.param_groups()[g];
        groups.fqns.emplace_back();
        for (std::size_t i = 0; i < group.params().size(); ++i) {
          const Tensor& p = group.params()[i];
          const Entry& owner = owner_of(params, p, e->key, g, i);
          groups.fqns.back().push_back(owner.fqn);
          auto fields = fields_of(opt, group, p, create);
          const std::string base = e->key + ".state." + owner.fqn + ".";
          for (const auto& [name, t] : fields.tensors)
            out.regions.push_back(region_of(owner, base + name, t, {e->key, "state", owner.fqn, name}));
          if (fields.step) {
            std::int64_t* step = fields.step;
            // Python keeps Adam's step as a 0-dim float32 tensor, replicated.
            Region r{base + "step", torch::tensor(static_cast<float>(*step)), {}, {}, {e->key, "state", owner.fqn, "step"}, {}};
            r.after_load = [step](const Tensor& t) { *step = static_cast<std::int64_t>(t.item<double>()); };
            out.regions.push_back(std::move(r));
          }
        }
      }
      out.groups.push_back(std::move(groups));
    }
  }
  return out;
}

Tensor cpu_contiguous(const Tensor& t) { return t.detach().to(torch::kCPU).contiguous(); }

}  // namespace

LoadReport load(const fs::path& dir, const State& state, const LoadOptions& options) {
  const Reader reader(dir);
  auto plan = expand(state, true);
  LoadReport report;
  std::set<std::string> wanted;
  // Check everything first: nothing changes unless every key is there and fits.
  for (const auto& r : plan.regions) {
    wanted.insert(r.key);
    const Item* item = reader.metadata().find(r.key);
    if (!item) {
      report.missing.push_back(r.key);
      continue;
    }
    const auto dtype = builtin::to_st(r.local.scalar_type());
    if (!item->tensor || !dtype || *dtype != item->dtype || item->size != r.global)
      throw MismatchError(fmt::format("DCP checkpoint '{}': key '{}' is {} [{}]; the State holds {} [{}]", dir.string(),
                                      r.key, item->tensor ? st::dtype_name(item->dtype) : "a value",
                                      fmt::join(item->size, ", "), c10::toString(r.local.scalar_type()),
                                      fmt::join(r.global, ", ")),
                          dir, r.key);
  }
  // Groups: Python flattens param_groups into one value per field ("optim.param_groups.0.lr").
  const auto group_values = [&](const Expanded::Groups& g) {
    std::vector<nlohmann::json> out(g.optimizer->param_groups().size());
    if (const Item* whole = reader.metadata().find(g.key)) {  // one value holding the list
      const auto list = reader.value(*whole);
      for (std::size_t i = 0; i < out.size() && list.is_array() && i < list.size(); ++i) out[i] = list[i];
      return out;
    }
    for (std::size_t i = 0; i < out.size(); ++i) {
      const std::string prefix = fmt::format("{}.{}.", g.key, i);
      for (const auto& item : reader.metadata().items)
        if (!item.tensor && item.key.compare(0, prefix.size(), prefix) == 0)
          out[i][item.key.substr(prefix.size())] = reader.value(item);
    }
    return out;
  };
  const auto is_group_key = [&](const std::string& key) {
    for (const auto& g : plan.groups)
      if (key == g.key || key.compare(0, g.key.size() + 1, g.key + ".") == 0) return true;
    return false;
  };
  std::vector<std::vector<nlohmann::json>> groups;
  for (const auto& g : plan.groups) {
    groups.push_back(group_values(g));
    for (const auto& one : groups.back())
      if (one.is_null()) {
        report.missing.push_back(g.key);
        break;
      }
  }
  for (const auto& [e, v] : plan.values) {
    wanted.insert(e->key);
    if (!reader.metadata().find(e->key)) report.missing.push_back(e->key);
  }
  for (const auto& item : reader.metadata().items)
    if (!wanted.count(item.key) && !is_group_key(item.key)) report.unexpected.push_back(item.key);
  if (options.strict() && !report.missing.empty())
    throw MissingKeyError(fmt::format("DCP checkpoint '{}' lacks {} key(s) of the State: {}", dir.string(),
                                      report.missing.size(), fmt::join(report.missing, ", ")),
                          dir, report.missing.front());
  // Values and groups before tensors: they are small and may be refused (not plain data).
  std::vector<std::pair<nlohmann::json*, nlohmann::json>> values;
  for (const auto& [e, v] : plan.values)
    if (const Item* item = reader.metadata().find(e->key)) values.emplace_back(e->value, reader.value(*item));
  torch::NoGradGuard no_grad;
  for (auto& r : plan.regions) {
    const Item* item = reader.metadata().find(r.key);
    if (!item) continue;
    const bool direct = r.local.device().is_cpu() && r.local.is_contiguous();
    Tensor into = direct ? r.local : torch::empty(r.local.sizes(), r.local.options().device(torch::kCPU));
    reader.read(*item, r.offsets, sizes_of(r.local), into.data_ptr());
    if (!direct) r.local.copy_(into);
    if (r.after_load) r.after_load(r.local);
    report.loaded.push_back(r.key);
  }
  for (auto& [to, v] : values) *to = std::move(v);
  for (std::size_t i = 0; i < plan.groups.size(); ++i) {
    auto& opt = *plan.groups[i].optimizer;
    bool any = false;
    for (std::size_t g = 0; g < opt.param_groups().size(); ++g) {
      if (groups[i][g].is_null()) continue;
      any = true;
      apply_group_options(opt.param_groups()[g], groups[i][g], plan.groups[i].key);
      // The saved group's "params" are the FQNs Python's optimizer held: they must be ours.
      if (groups[i][g].contains("params") && groups[i][g]["params"].is_array()) {
        std::vector<std::string> saved;
        for (const auto& p : groups[i][g]["params"])
          if (p.is_string()) saved.push_back(p.get<std::string>());
        if (!saved.empty() && saved != plan.groups[i].fqns[g])
          detail::log(LogLevel::warn,
                      "savepoint: DCP '{}': group {} of '{}' holds the parameters [{}]; the optimizer's are [{}] "
                      "(state was mapped by name)",
                      dir.string(), g, plan.groups[i].key, fmt::join(saved, ", "),
                      fmt::join(plan.groups[i].fqns[g], ", "));
      }
    }
    if (any) report.loaded.push_back(plan.groups[i].key);
  }
  for (const auto& [e, v] : plan.values)
    if (reader.metadata().find(e->key)) report.loaded.push_back(e->key);
  return report;
}

void save(const fs::path& dir, const State& state, const SaveOptions& options) {
  const auto& group = options.process_group();
  const int rank = group ? group->rank() : 0;
  const int world = group ? group->world_size() : 1;
  // Each rank's step, then every rank hears of any rank's failure.
  const auto together = [&](const char* what, const std::function<std::string()>& step) {
    std::string mine, error;
    try {
      mine = step();
    } catch (const std::exception& e) {
      error = e.what();
    }
    auto all = group->all_gather(nlohmann::json{{"ok", error.empty()}, {"v", error.empty() ? mine : error}}.dump());
    std::vector<std::string> out;
    for (int r = 0; r < world; ++r) {
      const auto j = nlohmann::json::parse(all[static_cast<std::size_t>(r)]);
      if (!j.at("ok").get<bool>())
        throw DistributedError(fmt::format("savepoint: DCP save to '{}' failed on rank {} ({}): {}", dir.string(), r,
                                           what, j.at("v").get<std::string>()),
                               r);
      out.push_back(j.at("v").get<std::string>());
    }
    return out;
  };
  if (!group) {  // one process: plain exceptions
    if (detail::path_status(dir / kMetadataFile))
      detail::throw_usage(fmt::format("savepoint: '{}' already holds a DCP checkpoint (.metadata); save elsewhere",
                                      dir.string()));
    detail::make_directories(dir);
  } else {
    together("preparing the directory", [&] {
      if (rank == 0) {
        if (detail::path_status(dir / kMetadataFile))
          detail::throw_usage(fmt::format("savepoint: '{}' already holds a DCP checkpoint (.metadata); save elsewhere",
                                          dir.string()));
        detail::make_directories(dir);
      }
      return std::string();
    });
  }
  const auto write_mine = [&] {
    auto plan = expand(state, false);
    std::vector<Tensor> keep;  // the bytes ChunkData points into
    std::vector<ChunkData> chunks;
    for (const auto& r : plan.regions) {
      const bool whole = r.global == sizes_of(r.local);
      if (whole && rank != 0) continue;  // replicated: rank 0 writes it
      if (!r.local.numel() && !whole) continue;
      const auto dtype = builtin::to_st(r.local.scalar_type());
      if (!dtype)
        detail::throw_usage(fmt::format("savepoint: DCP key '{}' has dtype {}, which savepoint cannot write", r.key,
                                        c10::toString(r.local.scalar_type())));
      keep.push_back(cpu_contiguous(r.local));
      ChunkData c;
      c.key = r.key;
      c.dtype = *dtype;
      c.size = r.global;
      c.offsets = r.offsets;
      c.sizes = sizes_of(r.local);
      c.bytes = std::string_view(static_cast<const char*>(keep.back().data_ptr()), keep.back().nbytes());
      c.path = r.path;
      chunks.push_back(std::move(c));
    }
    if (rank == 0) {
      for (const auto& [e, v] : plan.values) {
        ChunkData c;
        c.key = e->key;
        c.tensor = false;
        c.value = v;
        c.path = e->path;
        chunks.push_back(std::move(c));
      }
      for (const auto& g : plan.groups) {
        // One value per field, as Python's flattening writes them ("optim.param_groups.0.lr").
        const std::string prefix = g.key.substr(0, g.key.size() - std::string(".param_groups").size());
        auto& groups = g.optimizer->param_groups();
        for (std::size_t i = 0; i < groups.size(); ++i) {
          auto fields = group_options(groups[i]);
          fields["params"] = g.fqns[i];
          for (auto& [name, v] : fields.items()) {
            ChunkData c;
            c.key = fmt::format("{}.{}.{}", g.key, i, name);
            c.tensor = false;
            c.value = v;
            c.path = nlohmann::json::array({prefix, "param_groups", i, name});
            chunks.push_back(std::move(c));
          }
        }
      }
    }
    return to_json(write_rank_file(dir, rank, chunks)).dump();
  };
  if (!group) {
    commit(dir, merge_items({items_from_json(nlohmann::json::parse(write_mine()))}));
    return;
  }
  const auto all = together("writing its file", write_mine);
  together("committing", [&] {
    if (rank == 0) {
      std::vector<std::vector<Item>> per_rank;
      for (const auto& a : all) per_rank.push_back(items_from_json(nlohmann::json::parse(a)));
      commit(dir, merge_items(per_rank));
    }
    return std::string();
  });
}

}  // namespace savepoint::dcp
