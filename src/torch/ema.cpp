// ModuleEMA: the moving average, its built-in hook, and loading for evaluation.
#include "builtins.hpp"

#include <savepoint/ema.hpp>

#include <cmath>
#include <set>

namespace savepoint {

namespace {
[[noreturn]] void ema_mismatch(const std::string& what) { throw MismatchError("savepoint: ModuleEMA: " + what, {}); }

// The pairs (ema tensor, model tensor), checked by name, dtype and shape.
std::vector<std::pair<torch::Tensor, torch::Tensor>> pair_up(const NamedTensors& ema, const torch::nn::Module& model) {
  const NamedTensors current = builtin::module_state(model);
  if (current.size() != ema.size())
    ema_mismatch(fmt::format("the model has {} tensors but the EMA was made from one with {}", current.size(), ema.size()));
  std::vector<std::pair<torch::Tensor, torch::Tensor>> out;
  for (std::size_t i = 0; i < ema.size(); ++i) {
    const auto& [name, e] = ema[i];
    const auto& [model_name, m] = current[i];
    if (name != model_name || e.scalar_type() != m.scalar_type() || e.sizes() != m.sizes())
      ema_mismatch(fmt::format("tensor {} is '{}' {} {} in the EMA but '{}' {} {} in the model", i, name,
                               c10::toString(e.scalar_type()), builtin::shape_str(e.sizes()), model_name,
                               c10::toString(m.scalar_type()), builtin::shape_str(m.sizes())));
    out.emplace_back(e, m);
  }
  return out;
}
}  // namespace

ModuleEMA::ModuleEMA(const torch::nn::Module& model, EMAOptions options) : options_(std::move(options)) {
  if (!(options_.decay() >= 0 && options_.decay() <= 1) || !(options_.warmup() >= 0) || !std::isfinite(options_.warmup()))
    throw UsageError(fmt::format("savepoint: EMAOptions needs 0 <= decay <= 1 and warmup >= 0 (got {} and {})",
                                 options_.decay(), options_.warmup()));
  torch::NoGradGuard no_grad;
  for (const auto& [name, t] : builtin::module_state(model)) state_.emplace_back(name, t.detach().clone());
}

double ModuleEMA::decay_at(std::int64_t n) const {
  if (options_.warmup() <= 0) return options_.decay();
  return options_.decay() * (1.0 - std::exp(-static_cast<double>(n) / options_.warmup()));
}

void ModuleEMA::update(const torch::nn::Module& model) {
  const auto pairs = pair_up(state_, model);
  const double d = decay_at(updates_ + 1);
  torch::NoGradGuard no_grad;
  for (auto [e, m] : pairs) {
    if (e.is_floating_point()) {
      e.mul_(d).add_(m.detach(), 1.0 - d);
    } else {
      e.copy_(m);
    }
  }
  ++updates_;
}

void ModuleEMA::copy_to(torch::nn::Module& model) const {
  const auto pairs = pair_up(state_, model);
  torch::NoGradGuard no_grad;
  for (auto [e, m] : pairs) m.copy_(e);
}

// The built-in hook (registered by register.cpp as "savepoint.ModuleEMA").
struct EMAHooks {
  static Payload save(void* object, const SaveContext&) {
    const auto& ema = *static_cast<ModuleEMA*>(object);
    const nlohmann::json info{{"decay", ema.options_.decay()}, {"warmup", ema.options_.warmup()}, {"updates", ema.updates_}};
    return tensor_payload(ema.state_, {{"format", "pt"}, {"savepoint.hook", "savepoint.ModuleEMA"}, {"savepoint.ema", info.dump()}});
  }
  static Apply prepare(void* object, const LoadContext& ctx) {
    auto* ema = static_cast<ModuleEMA*>(object);
    auto source = std::make_shared<builtin::TensorSource>(ctx);
    std::int64_t updates = 0;
    try {
      const auto it = source->header.metadata.find("savepoint.ema");
      if (it == source->header.metadata.end()) builtin::mismatch(ctx, "no \"savepoint.ema\" metadata (not an EMA file)");
      updates = nlohmann::json::parse(it->second).at("updates").get<std::int64_t>();
    } catch (const nlohmann::json::exception& e) {
      builtin::mismatch(ctx, fmt::format("its \"savepoint.ema\" metadata is invalid: {}", e.what()));
    }
    if (updates < 0) builtin::mismatch(ctx, "a negative update count");
    std::vector<std::pair<torch::Tensor, torch::Tensor>> copies;
    std::set<std::string> names;
    for (const auto& [name, dst] : ema->state_) {
      names.insert(name);
      const auto* info = source->find(name);
      if (!info) builtin::mismatch(ctx, fmt::format("tensor '{}' of the EMA is missing from the file", name));
      torch::Tensor src = source->view(*info);
      if (src.scalar_type() != dst.scalar_type() || src.sizes() != dst.sizes())
        builtin::mismatch(ctx, fmt::format("tensor '{}' is {} {} in the file but {} {} in the EMA", name,
                                           c10::toString(src.scalar_type()), builtin::shape_str(src.sizes()),
                                           c10::toString(dst.scalar_type()), builtin::shape_str(dst.sizes())));
      copies.emplace_back(dst, src);
    }
    for (const auto& info : source->header.tensors)
      if (!names.count(info.name)) builtin::mismatch(ctx, fmt::format("tensor '{}' in the file is not in the EMA", info.name));
    return [ema, source, copies = std::move(copies), updates] {
      torch::NoGradGuard no_grad;
      for (const auto& [dst, src] : copies) const_cast<torch::Tensor&>(dst).copy_(src);
      ema->updates_ = updates;
    };
  }
};

namespace builtin {
Payload save_ema(void* object, const SaveContext& ctx) { return EMAHooks::save(object, ctx); }
Apply prepare_ema(void* object, const LoadContext& ctx) { return EMAHooks::prepare(object, ctx); }
}  // namespace builtin

std::string load_for_evaluation(torch::nn::Module& model, const Checkpoint& checkpoint, const std::string& ema_key,
                                const std::string& model_key) {
  const std::string key = checkpoint.file(ema_key) ? ema_key : model_key;
  const LoadContext ctx = builtin::open_key(checkpoint, key);
  builtin::prepare_module(&model, ctx)();
  return key;
}

}  // namespace savepoint
