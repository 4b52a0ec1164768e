// Registers the LibTorch built-ins into the core's hook table (called once, at start-up, by
// savepoint/torch_builtins.hpp), and pinned host memory for async snapshots of CUDA tensors.
#include "builtins.hpp"

#include "../engine/payload_writer.hpp"

#include <savepoint/ema.hpp>
#include <savepoint/rng.hpp>
#include <savepoint/schedulers.hpp>
#include <savepoint/sharded.hpp>
#include <savepoint/torch_builtins.hpp>

namespace savepoint {

namespace {
template <class T>
void add_builtin(HookTable& table, const char* name, const char* extension,
                 Payload (*save)(void*, const SaveContext&), Apply (*prepare)(void*, const LoadContext&),
                 bool load_last = false, bool (*fresh_state)(const void*) = nullptr) {
  TypeHooks h;
  h.name = name;
  h.extension = extension;
  h.save = save;
  h.prepare_load = prepare;
  h.load_last = load_last;
  h.builtin = true;
  if (fresh_state) h.fresh_state = fresh_state;
  table.add<T>(std::move(h));
}

std::shared_ptr<void> pinned_host_memory(std::size_t bytes) {
  if (!torch::cuda::is_available()) return nullptr;  // the engine falls back to plain memory
  auto buffer = std::make_shared<torch::Tensor>(
      torch::empty({static_cast<std::int64_t>(bytes)}, torch::TensorOptions().dtype(torch::kUInt8).pinned_memory(true)));
  return std::shared_ptr<void>(buffer, buffer->data_ptr());
}
}  // namespace

namespace builtin {
Payload step_count_payload(void* object, const SaveContext& ctx);  // state_hooks.cpp
Payload save_sharded(void* object, const SaveContext& ctx);          // sharded.cpp
Apply prepare_sharded(void* object, const LoadContext& ctx);
}  // namespace builtin

namespace detail {
TypeHooks step_count_scheduler_hooks() {
  TypeHooks h;
  h.name = "torch.optim.LRScheduler";
  h.extension = ".json";
  h.save = builtin::step_count_payload;
  h.prepare_load = builtin::prepare_scheduler;
  h.builtin = true;
  return h;
}

bool register_torch_builtins() {
  using namespace builtin;
  static const bool done = [] {
    HookTable& table = hook_table();
    add_builtin<torch::nn::Module>(table, "torch.nn.Module", ".safetensors", save_module, prepare_module);
    add_builtin<torch::optim::Optimizer>(table, "torch.optim.Optimizer", ".safetensors", save_optimizer,
                                         prepare_optimizer, false, optimizer_without_state);
    add_builtin<torch::optim::LRScheduler>(table, "torch.optim.LRScheduler", ".json", save_scheduler,
                                           prepare_scheduler);
    add_builtin<torch::Tensor>(table, "torch.Tensor", ".safetensors", save_tensor, prepare_tensor, false,
                                undefined_tensor);
    add_builtin<torch::data::samplers::Sampler<>>(table, "torch.data.Sampler", ".safetensors", save_sampler,
                                                  prepare_sampler);
    add_builtin<at::Generator>(table, "torch.Generator", ".safetensors", save_generator, prepare_generator,
                               /*load_last=*/true);
    add_builtin<TorchRngState>(table, "savepoint.TorchRngState", ".safetensors", save_rng, prepare_rng,
                               /*load_last=*/true);
    add_builtin<ModuleEMA>(table, "savepoint.ModuleEMA", ".safetensors", save_ema, prepare_ema);
    add_builtin<ShardedTensors>(table, kShardedTensorsHook, ".safetensors", save_sharded, prepare_sharded);
#if SAVEPOINT_TORCH_2
    add_builtin<torch::optim::ReduceLROnPlateauScheduler>(table, "torch.optim.ReduceLROnPlateauScheduler", ".json",
                                                          save_plateau, prepare_plateau);
#endif
    engine::set_pinned_allocator(pinned_host_memory);
    return true;
  }();
  return done;
}
}  // namespace detail

}  // namespace savepoint
