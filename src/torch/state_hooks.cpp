// The built-in hooks of the smaller pieces of training state: LR schedulers, plain tensors,
// data samplers, generators and the global RNG state.
#include "builtins.hpp"

#include <savepoint/log.hpp>
#include <savepoint/rng.hpp>

#include <cstring>
#include <sstream>

namespace savepoint::builtin {

// ---- LR schedulers
// LRScheduler keeps its only state, step_count_, protected; a derived class may name it.
struct SchedulerAccess : torch::optim::LRScheduler {
  static unsigned& step_count(torch::optim::LRScheduler& s) {
    return s.*(&SchedulerAccess::step_count_);
  }
};

// The base class's only state is the step count: enough for LibTorch's own schedulers, whose
// other members are constructor arguments, but not for a subclass with members of its own
// (a best loss, a warm-up phase), which this hook would silently drop. So the hook saves
// LibTorch's schedulers, and a subclass only once its author said the step count is all its
// state (register_step_count_scheduler<T>(), which registers step_count_payload directly).
Payload step_count_payload(void* object, const SaveContext&) {
  auto& s = *static_cast<torch::optim::LRScheduler*>(object);
  return Payload::json(json{{"step_count", SchedulerAccess::step_count(s)}});
}

Payload save_scheduler(void* object, const SaveContext& ctx) {
  auto& s = *static_cast<torch::optim::LRScheduler*>(object);
  if (typeid(s) != typeid(torch::optim::StepLR)) {
    const std::string type = detail::demangle(typeid(s).name());
    throw UsageError(fmt::format(
        "savepoint: key '{}' is a {}, a subclass of torch::optim::LRScheduler; the built-in scheduler hook saves only "
        "the step count and would silently lose any state of {}'s own. Give it save(path) and load(path, "
        "end_of_epoch) members (or register_hooks<{}>), or, if the step count is its whole state, declare it once: "
        "savepoint::register_step_count_scheduler<{}>()",
        ctx.key, type, type, type, type));
  }
  return step_count_payload(object, ctx);
}

Apply prepare_scheduler(void* object, const LoadContext& ctx) {
  auto* s = static_cast<torch::optim::LRScheduler*>(object);
  const json j = detail::parse_json_file(ctx);
  if (!j.is_object() || !j.contains("step_count") || !j["step_count"].is_number_unsigned())
    mismatch(ctx, "no non-negative \"step_count\"");
  const auto count = j["step_count"].get<unsigned>();
  return [s, count] { SchedulerAccess::step_count(*s) = count; };
}

#if SAVEPOINT_TORCH_2
// ---- ReduceLROnPlateauScheduler (LibTorch 2.x; not an LRScheduler). Its state is private and
// has no accessors: read through pointers to members named by explicit instantiation, which
// the language exempts from access checks. Saved: best, num_bad_epochs, cooldown_counter,
// last_epoch (the learning rates themselves are the optimizer's, saved with it); the other
// members are constructor arguments. Only compiled, and testable, against LibTorch 2.x.
template <class Tag, typename Tag::type Member>
struct PlateauAccess {
  friend typename Tag::type member(Tag) { return Member; }
};
#define SAVEPOINT_PLATEAU_MEMBER(T, name)                                         \
  struct Plateau_##name {                                                         \
    using type = T torch::optim::ReduceLROnPlateauScheduler::*;                  \
    friend type member(Plateau_##name);                                           \
  };                                                                              \
  template struct PlateauAccess<Plateau_##name, &torch::optim::ReduceLROnPlateauScheduler::name>;
SAVEPOINT_PLATEAU_MEMBER(float, best)
SAVEPOINT_PLATEAU_MEMBER(int, num_bad_epochs)
SAVEPOINT_PLATEAU_MEMBER(int, cooldown_counter)
SAVEPOINT_PLATEAU_MEMBER(int, last_epoch)
#undef SAVEPOINT_PLATEAU_MEMBER

namespace {
json finite_or_text(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return v;
}
double from_finite_or_text(const json& j) {
  if (j.is_number()) return j.get<double>();
  const auto s = j.get<std::string>();
  if (s == "inf") return INFINITY;
  if (s == "-inf") return -INFINITY;
  if (s == "nan") return NAN;
  throw std::invalid_argument("not a number: " + s);
}
}  // namespace

Payload save_plateau(void* object, const SaveContext&) {
  auto& s = *static_cast<torch::optim::ReduceLROnPlateauScheduler*>(object);
  return Payload::json(json{{"best", finite_or_text(s.*member(Plateau_best{}))},
                            {"num_bad_epochs", s.*member(Plateau_num_bad_epochs{})},
                            {"cooldown_counter", s.*member(Plateau_cooldown_counter{})},
                            {"last_epoch", s.*member(Plateau_last_epoch{})}});
}

Apply prepare_plateau(void* object, const LoadContext& ctx) {
  auto* s = static_cast<torch::optim::ReduceLROnPlateauScheduler*>(object);
  const json j = detail::parse_json_file(ctx);
  float best = 0;
  int bad = 0, cooldown = 0, last = 0;
  try {
    best = static_cast<float>(from_finite_or_text(j.at("best")));
    bad = j.at("num_bad_epochs").get<int>();
    cooldown = j.at("cooldown_counter").get<int>();
    last = j.at("last_epoch").get<int>();
  } catch (const std::exception& e) {
    mismatch(ctx, fmt::format("not a ReduceLROnPlateauScheduler state: {}", e.what()));
  }
  return [s, best, bad, cooldown, last] {
    s->*member(Plateau_best{}) = best;
    s->*member(Plateau_num_bad_epochs{}) = bad;
    s->*member(Plateau_cooldown_counter{}) = cooldown;
    s->*member(Plateau_last_epoch{}) = last;
  };
}
#endif

// ---- plain tensors
Payload save_tensor(void* object, const SaveContext& ctx) {
  const auto& t = *static_cast<Tensor*>(object);
  if (!t.defined()) throw UsageError(fmt::format("savepoint: tensor '{}' is undefined", ctx.key));
  return tensor_payload({{"tensor", t}}, {{"savepoint.hook", "torch.Tensor"}});
}

bool undefined_tensor(const void* object) { return !static_cast<const Tensor*>(object)->defined(); }

Apply prepare_tensor(void* object, const LoadContext& ctx) {
  auto* target = static_cast<Tensor*>(object);
  auto source = std::make_shared<TensorSource>(ctx);
  Tensor view = source->view("tensor");
  if (target->defined()) {
    if (target->scalar_type() != view.scalar_type() || target->sizes() != view.sizes())
      mismatch(ctx, fmt::format("tensor has {} {} in the checkpoint but {} {} in memory",
                                c10::toString(view.scalar_type()), shape_str(view.sizes()),
                                c10::toString(target->scalar_type()), shape_str(target->sizes())));
    return [source, target, view] {
      torch::NoGradGuard no_grad;
      target->copy_(view);
    };
  }
  Tensor owned = source->adopt(*source->find("tensor"));
  return [target, owned] { *target = owned; };
}

// ---- data samplers
// LibTorch's samplers (RandomSampler, SequentialSampler, DistributedRandomSampler, ...) carry
// their own save/load through a torch archive. Those bytes are stored as one U8 tensor of a
// safetensors file, with the sampler's dynamic type, so a RandomSampler's position cannot be
// applied to a different sampler.
using AnySampler = torch::data::samplers::Sampler<>;

std::string sampler_type(const AnySampler& sampler) { return detail::demangle(typeid(sampler).name()); }

Payload save_sampler(void* object, const SaveContext&) {
  const auto& sampler = *static_cast<AnySampler*>(object);
  torch::serialize::OutputArchive archive;
  sampler.save(archive);
  std::ostringstream bytes;
  archive.save_to(bytes);
  const std::string data = bytes.str();
  Tensor blob = torch::empty({static_cast<int64_t>(data.size())}, torch::kUInt8);
  std::memcpy(blob.data_ptr(), data.data(), data.size());
  return tensor_payload({{"torch_archive", blob}},
               {{"savepoint.hook", "torch.data.Sampler"}, {"sampler_type", sampler_type(sampler)}});
}

Apply prepare_sampler(void* object, const LoadContext& ctx) {
  auto* sampler = static_cast<AnySampler*>(object);
  auto source = std::make_shared<TensorSource>(ctx);
  const auto type = source->header.metadata.find("sampler_type");
  if (type == source->header.metadata.end()) mismatch(ctx, "no sampler_type in the file's metadata");
  if (type->second != sampler_type(*sampler))
    mismatch(ctx, fmt::format("the checkpoint holds the state of a {}, the registered sampler is a {}",
                              type->second, sampler_type(*sampler)));
  Tensor blob = source->view("torch_archive").contiguous();
  if (blob.scalar_type() != torch::kUInt8) mismatch(ctx, "sampler state is not a byte tensor");
  auto archive = std::make_shared<torch::serialize::InputArchive>();
  try {
    archive->load_from(static_cast<const char*>(blob.data_ptr()), static_cast<size_t>(blob.numel()));
  } catch (const c10::Error& e) {
    throw CorruptCheckpointError(fmt::format("sampler state in '{}' (key '{}') is unreadable: {}",
                                             ctx.file.string(), ctx.key, e.what_without_backtrace()),
                                 ctx.file, ctx.key);
  }
  return [sampler, archive] { sampler->load(*archive); };
}

// ---- generators
Tensor generator_state(const at::Generator& gen) { return const_cast<at::Generator&>(gen).get_state(); }

void set_generator_state(at::Generator& gen, const Tensor& state) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

Payload save_generator(void* object, const SaveContext&) {
  return tensor_payload({{"state", generator_state(*static_cast<at::Generator*>(object))}},
               {{"savepoint.hook", "torch.Generator"}});
}

Apply prepare_generator(void* object, const LoadContext& ctx) {
  auto* gen = static_cast<at::Generator*>(object);
  auto source = std::make_shared<TensorSource>(ctx);
  Tensor state = source->view("state").clone();
  if (state.scalar_type() != torch::kUInt8) mismatch(ctx, "generator state is not a byte tensor");
  if (state.numel() != generator_state(*gen).numel())
    mismatch(ctx, fmt::format("generator state has {} bytes, this generator uses {}", state.numel(),
                              generator_state(*gen).numel()));
  return [gen, state] { set_generator_state(*gen, state); };
}

std::size_t cuda_device_count() { return torch::cuda::is_available() ? torch::cuda::device_count() : 0; }

Payload save_rng(void* object, const SaveContext&) {
  const auto& rng = *static_cast<TorchRngState*>(object);
  NamedTensors states;
  states.emplace_back("cpu", generator_state(at::detail::getDefaultCPUGenerator()));
  const std::size_t n = rng.include_cuda ? cuda_device_count() : 0;
  for (std::size_t i = 0; i < n; ++i) {
    const auto& gen = at::globalContext().defaultGenerator(torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(i)));
    states.emplace_back(fmt::format("cuda.{}", i), generator_state(gen));
  }
  return tensor_payload(states, {{"savepoint.hook", "savepoint.TorchRngState"}});
}

Apply prepare_rng(void* object, const LoadContext& ctx) {
  const auto& rng = *static_cast<TorchRngState*>(object);
  auto source = std::make_shared<TensorSource>(ctx);
  std::vector<std::pair<int, Tensor>> states;  // -1 = CPU
  states.emplace_back(-1, source->view("cpu").clone());
  const std::size_t n = rng.include_cuda ? cuda_device_count() : 0;
  std::size_t saved_cuda = 0;
  for (const auto& info : source->header.tensors) saved_cuda += info.name.rfind("cuda.", 0) == 0;
  if (saved_cuda != n && rng.include_cuda) {
    detail::log(LogLevel::warn, "'{}' holds the RNG state of {} CUDA devices, this process has {}: "
                "restoring those present in both", ctx.file.string(), saved_cuda, n);
  }
  for (std::size_t i = 0; i < n && i < saved_cuda; ++i)
    states.emplace_back(static_cast<int>(i), source->view(fmt::format("cuda.{}", i)).clone());
  return [states] {
    for (const auto& [device, state] : states) {
      if (device < 0) {
        auto gen = at::detail::getDefaultCPUGenerator();
        set_generator_state(gen, state);
      } else {
        auto gen = at::globalContext().defaultGenerator(torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(device)));
        set_generator_state(gen, state);
      }
    }
  };
}

}  // namespace savepoint::builtin
