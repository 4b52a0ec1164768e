// The built-in hooks of torch::optim::Optimizer: every optimizer's options and per-parameter
// state, learning rate included, loaded in place into existing state where it fits.
#include "builtins.hpp"

#include <cmath>
#include <deque>
#include <map>
#include <sstream>

namespace savepoint::builtin {

namespace {
// Visits every field of an optimizer's options / param state with `v(name, field&)`.
template <class V>
std::string visit_options(torch::optim::OptimizerOptions& o, V&& v) {
  using namespace torch::optim;
  if (auto* p = dynamic_cast<AdamOptions*>(&o)) {
    v("lr", p->lr()); v("betas", p->betas()); v("eps", p->eps());
    v("weight_decay", p->weight_decay()); v("amsgrad", p->amsgrad());
    return "Adam";
  }
  if (auto* p = dynamic_cast<AdamWOptions*>(&o)) {
    v("lr", p->lr()); v("betas", p->betas()); v("eps", p->eps());
    v("weight_decay", p->weight_decay()); v("amsgrad", p->amsgrad());
    return "AdamW";
  }
  if (auto* p = dynamic_cast<SGDOptions*>(&o)) {
    v("lr", p->lr()); v("momentum", p->momentum()); v("dampening", p->dampening());
    v("weight_decay", p->weight_decay()); v("nesterov", p->nesterov());
    return "SGD";
  }
  if (auto* p = dynamic_cast<AdagradOptions*>(&o)) {
    v("lr", p->lr()); v("lr_decay", p->lr_decay()); v("weight_decay", p->weight_decay());
    v("initial_accumulator_value", p->initial_accumulator_value()); v("eps", p->eps());
    return "Adagrad";
  }
  if (auto* p = dynamic_cast<RMSpropOptions*>(&o)) {
    v("lr", p->lr()); v("alpha", p->alpha()); v("eps", p->eps());
    v("weight_decay", p->weight_decay()); v("momentum", p->momentum()); v("centered", p->centered());
    return "RMSprop";
  }
  if (auto* p = dynamic_cast<LBFGSOptions*>(&o)) {
    v("lr", p->lr()); v("max_iter", p->max_iter()); v("max_eval", p->max_eval());
    v("tolerance_grad", p->tolerance_grad()); v("tolerance_change", p->tolerance_change());
    v("history_size", p->history_size()); v("line_search_fn", p->line_search_fn());
    return "LBFGS";
  }
  return {};
}

template <class V>
std::string visit_state(torch::optim::OptimizerParamState& s, V&& v) {
  using namespace torch::optim;
  if (auto* p = dynamic_cast<AdamParamState*>(&s)) {
    v("step", p->step()); v("exp_avg", p->exp_avg()); v("exp_avg_sq", p->exp_avg_sq());
    v("max_exp_avg_sq", p->max_exp_avg_sq());
    return "Adam";
  }
  if (auto* p = dynamic_cast<AdamWParamState*>(&s)) {
    v("step", p->step()); v("exp_avg", p->exp_avg()); v("exp_avg_sq", p->exp_avg_sq());
    v("max_exp_avg_sq", p->max_exp_avg_sq());
    return "AdamW";
  }
  if (auto* p = dynamic_cast<SGDParamState*>(&s)) {
    v("momentum_buffer", p->momentum_buffer());
    return "SGD";
  }
  if (auto* p = dynamic_cast<AdagradParamState*>(&s)) {
    v("sum", p->sum()); v("step", p->step());
    return "Adagrad";
  }
  if (auto* p = dynamic_cast<RMSpropParamState*>(&s)) {
    v("step", p->step()); v("square_avg", p->square_avg()); v("momentum_buffer", p->momentum_buffer());
    v("grad_avg", p->grad_avg());
    return "RMSprop";
  }
  if (auto* p = dynamic_cast<LBFGSParamState*>(&s)) {
    v("func_evals", p->func_evals()); v("n_iter", p->n_iter()); v("t", p->t());
    v("prev_loss", p->prev_loss()); v("d", p->d()); v("H_diag", p->H_diag());
    v("prev_flat_grad", p->prev_flat_grad()); v("old_dirs", p->old_dirs());
    v("old_stps", p->old_stps()); v("ro", p->ro()); v("al", p->al());
    return "LBFGS";
  }
  return {};
}

std::map<std::string, Tensor> tensor_fields(torch::optim::OptimizerParamState* state) {
  std::map<std::string, Tensor> out;
  if (state == nullptr) return out;
  visit_state(*state, [&out](const char* name, auto& field) {
    if constexpr (std::is_same_v<std::decay_t<decltype(field)>, Tensor>) out.emplace(name, field);
  });
  return out;
}

std::unique_ptr<torch::optim::OptimizerParamState> make_state(const std::string& type) {
  using namespace torch::optim;
  if (type == "Adam") return std::make_unique<AdamParamState>();
  if (type == "AdamW") return std::make_unique<AdamWParamState>();
  if (type == "SGD") return std::make_unique<SGDParamState>();
  if (type == "Adagrad") return std::make_unique<AdagradParamState>();
  if (type == "RMSprop") return std::make_unique<RMSpropParamState>();
  if (type == "LBFGS") return std::make_unique<LBFGSParamState>();
  return nullptr;
}

// Writes fields: scalars into `fields` JSON, tensors into `tensors` as <prefix>.<name>[.<i>].
struct FieldWriter {
  json& fields;
  NamedTensors& tensors;
  std::string prefix;
  void operator()(const char* name, const Tensor& t) {
    if (t.defined()) tensors.emplace_back(prefix + name, t);
  }
  template <class Seq>
  void tensor_list(const char* name, const Seq& seq) {
    fields[name] = seq.size();
    std::size_t i = 0;
    for (const auto& t : seq) tensors.emplace_back(fmt::format("{}{}.{}", prefix, name, i++), t);
  }
  void operator()(const char* name, const std::deque<Tensor>& seq) { tensor_list(name, seq); }
  void operator()(const char* name, const c10::optional<std::vector<Tensor>>& seq) {
    if (seq.has_value()) tensor_list(name, *seq);
  }
  void operator()(const char* name, const std::tuple<double, double>& v) {
    fields[name] = {std::get<0>(v), std::get<1>(v)};
  }
  template <class T>
  void operator()(const char* name, const c10::optional<T>& v) {
    if (v.has_value()) fields[name] = *v;
    else fields[name] = nullptr;
  }
  void operator()(const char* name, const double& v) {
    // JSON has no inf/NaN (LBFGS leaves some doubles unset): store those as strings.
    if (std::isfinite(v)) fields[name] = v;
    else fields[name] = std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf";
  }
  template <class T>
  void operator()(const char* name, const T& v) {
    fields[name] = v;
  }
};

// Copies from a checkpoint's mapped bytes into live tensors, done when a load is applied.
using InPlaceCopies = std::vector<std::pair<Tensor, Tensor>>;  // destination, source view

// The tensor fields of a live optimizer state, by field name.
std::map<std::string, Tensor> tensor_fields(torch::optim::OptimizerParamState* state);

// Reads fields back; `device` is where tensors should land. Validates everything. A tensor
// field whose live counterpart (`live`) has the same dtype, shape and device is reused and
// filled in place when the load is applied: no second copy of the optimizer state in memory,
// and no fresh pages to fault in.
struct FieldReader {
  const json& fields;
  const TensorSource& source;
  std::string prefix;
  torch::Device device;
  const LoadContext& ctx;
  std::map<std::string, Tensor> live = {};
  InPlaceCopies* in_place = nullptr;
  Tensor load(const std::string& name) const {
    return source.view(name).to(device, /*non_blocking=*/false, /*copy=*/true);
  }
  void operator()(const char* name, Tensor& t) {
    const auto* info = source.find(prefix + name);
    if (!info) {
      t = Tensor();
      return;
    }
    Tensor view = source.view(*info);
    const auto it = live.find(name);
    if (in_place && it != live.end() && it->second.defined()) {
      const Tensor& dst = it->second;
      if (dst.scalar_type() == view.scalar_type() && dst.sizes() == view.sizes() && dst.device() == device) {
        in_place->emplace_back(dst, view);
        t = dst;
        return;
      }
    }
    t = source.adopt(*info, device);  // fresh memory read for this load, or a copy
  }
  template <class Seq>
  void tensor_list(const char* name, Seq& seq) {
    seq.clear();
    const auto n = fields.value(name, std::size_t{0});
    for (std::size_t i = 0; i < n; ++i) seq.push_back(load(fmt::format("{}{}.{}", prefix, name, i)));
  }
  void operator()(const char* name, std::deque<Tensor>& seq) { tensor_list(name, seq); }
  void operator()(const char* name, c10::optional<std::vector<Tensor>>& seq) {
    if (!fields.contains(name)) {
      seq = c10::optional<std::vector<Tensor>>();
      return;
    }
    std::vector<Tensor> v;
    tensor_list(name, v);
    seq = std::move(v);
  }
  void operator()(const char* name, std::tuple<double, double>& v) {
    const auto& a = at(name);
    if (!a.is_array() || a.size() != 2) mismatch(ctx, fmt::format("field '{}' is not a pair", name));
    v = std::make_tuple(a[0].get<double>(), a[1].get<double>());
  }
  template <class T>
  void operator()(const char* name, c10::optional<T>& v) {
    const auto& j = at(name);
    if (j.is_null()) v = c10::optional<T>();
    else v = j.get<T>();
  }
  void operator()(const char* name, double& v) {
    const auto& j = at(name);
    if (j.is_string()) {
      const auto text = j.get<std::string>();
      v = text == "inf" ? INFINITY : text == "-inf" ? -INFINITY : NAN;
    } else {
      v = j.get<double>();
    }
  }
  template <class T>
  void operator()(const char* name, T& v) {
    v = at(name).get<T>();
  }
  const json& at(const char* name) const {
    const auto it = fields.find(name);
    if (it == fields.end()) mismatch(ctx, fmt::format("optimizer field '{}' is missing", name));
    return *it;
  }
};

std::vector<Tensor> flat_params(const torch::optim::Optimizer& opt) {
  std::vector<Tensor> out;
  for (const auto& g : opt.param_groups())
    for (const auto& p : g.params()) out.push_back(p);
  return out;
}

}  // namespace

Payload save_optimizer(void* object, const SaveContext& ctx) {
  auto& opt = *static_cast<torch::optim::Optimizer*>(object);
  json doc = json::object();
  NamedTensors tensors;
  std::string type;
  json groups = json::array();
  for (auto& g : opt.param_groups()) {
    json options = json::object();
    std::string t = visit_options(g.options(), FieldWriter{options, tensors, ""});
    if (t.empty()) {  // an optimizer savepoint does not know: keep at least its learning rate
      options["lr"] = g.options().get_lr();
      t = "unknown";
    }
    type = t;
    groups.push_back({{"num_params", g.params().size()}, {"options", options}});
  }
  json states = json::object();
  const auto params = flat_params(opt);
  for (std::size_t i = 0; i < params.size(); ++i) {
    const auto it = opt.state().find(state_key(opt.state(), params[i]));
    if (it == opt.state().end() || !it->second) continue;
    json fields = json::object();
    const std::string t = visit_state(*it->second, FieldWriter{fields, tensors, fmt::format("state.{}.", i)});
    if (t.empty()) {
      throw UsageError(fmt::format("savepoint: key '{}': the optimizer keeps a per-parameter "
                                   "state type savepoint does not know ({}); register hooks for "
                                   "your optimizer with savepoint::register_hooks",
                                   ctx.key, detail::demangle(typeid(*it->second).name())));
    }
    states[std::to_string(i)] = {{"type", t}, {"fields", fields}};
  }
  doc["optimizer"] = type.empty() ? "unknown" : type;
  doc["param_groups"] = groups;
  doc["state"] = states;
  return tensor_payload(tensors,
               {{"savepoint", doc.dump()}, {"savepoint.hook", "torch.optim.Optimizer"}});
}

bool optimizer_without_state(const void* object) {
  return static_cast<const torch::optim::Optimizer*>(object)->state().empty();
}

Apply prepare_optimizer(void* object, const LoadContext& ctx) {
  auto& opt = *static_cast<torch::optim::Optimizer*>(object);
  auto source = std::make_shared<TensorSource>(ctx);
  const json doc = source->savepoint_meta();
  if (!doc.contains("param_groups") || !doc.contains("state"))
    throw CorruptCheckpointError(fmt::format("'{}' (key '{}') holds no optimizer state", ctx.file.string(), ctx.key),
                                 ctx.file, ctx.key);
  try {
    const auto& groups = doc.at("param_groups");
    auto& live_groups = opt.param_groups();
    if (groups.size() != live_groups.size())
      mismatch(ctx, fmt::format("the checkpoint has {} parameter groups, the optimizer {}",
                                groups.size(), live_groups.size()));
    std::vector<std::unique_ptr<torch::optim::OptimizerOptions>> new_options;
    for (std::size_t g = 0; g < groups.size(); ++g) {
      const auto n = groups[g].at("num_params").get<std::size_t>();
      if (n != live_groups[g].params().size())
        mismatch(ctx, fmt::format("parameter group {} has {} parameters in the checkpoint, {} "
                                  "in the optimizer",
                                  g, n, live_groups[g].params().size()));
      auto options = live_groups[g].options().clone();
      const json& fields = groups[g].at("options");
      const std::string live_type = visit_options(*options, [](const char*, auto&) {});
      const std::string saved_type = doc.value("optimizer", std::string("unknown"));
      if (live_type.empty()) {
        options->set_lr(fields.at("lr").get<double>());
      } else if (live_type != saved_type) {
        mismatch(ctx, fmt::format("the checkpoint holds {} state but the optimizer is {}", saved_type, live_type));
      } else {
        visit_options(*options, FieldReader{fields, *source, "", torch::kCPU, ctx});
      }
      new_options.push_back(std::move(options));
    }
    const auto params = flat_params(opt);
    auto in_place = std::make_shared<InPlaceCopies>();
    std::vector<std::pair<std::size_t, std::unique_ptr<torch::optim::OptimizerParamState>>> new_state;
    for (auto it = doc.at("state").begin(); it != doc.at("state").end(); ++it) {
      const std::size_t i = std::stoul(it.key());
      if (i >= params.size())
        mismatch(ctx, fmt::format("state for parameter {} but the optimizer has {}", i, params.size()));
      auto state = make_state(it.value().at("type").get<std::string>());
      if (!state) mismatch(ctx, fmt::format("unknown optimizer state type for parameter {}", i));
      const auto live = opt.state().find(state_key(opt.state(), params[i]));
      FieldReader reader{it.value().at("fields"), *source, fmt::format("state.{}.", i), params[i].device(), ctx,
                         tensor_fields(live == opt.state().end() ? nullptr : live->second.get()), in_place.get()};
      visit_state(*state, reader);
      // Per-parameter moment tensors must match their parameter's shape.
      const std::string type = it.value().at("type").get<std::string>();
      if (type != "LBFGS") {
        for (const auto& info : source->header.tensors) {
          if (info.name.rfind(reader.prefix, 0) == 0 && c10::IntArrayRef(info.shape) != params[i].sizes())
            mismatch(ctx, fmt::format("optimizer tensor '{}' has shape {} but parameter {} has shape {}",
                                      info.name, shape_str(info.shape), i, shape_str(params[i].sizes())));
        }
      }
      new_state.emplace_back(i, std::move(state));
    }
    auto shared_options = std::make_shared<decltype(new_options)>(std::move(new_options));
    auto shared_state = std::make_shared<decltype(new_state)>(std::move(new_state));
    return [&opt, source, shared_options, shared_state, params, in_place] {
      {
        torch::NoGradGuard no_grad;
        for (const auto& [dst, src] : *in_place) const_cast<Tensor&>(dst).copy_(src);
      }
      auto& groups_ = opt.param_groups();
      for (std::size_t g = 0; g < groups_.size(); ++g) groups_[g].set_options(std::move((*shared_options)[g]));
      for (const auto& p : params) opt.state().erase(state_key(opt.state(), p));
      for (auto& [i, state] : *shared_state) opt.state()[state_key(opt.state(), params[i])] = std::move(state);
    };
  } catch (const json::exception& e) {
    throw CorruptCheckpointError(fmt::format("'{}' (key '{}') has malformed optimizer state: {}",
                                             ctx.file.string(), ctx.key, e.what()),
                                 ctx.file, ctx.key);
  }
}

}  // namespace savepoint::builtin
