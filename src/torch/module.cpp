// The built-in hooks of torch::nn::Module: parameters and buffers by name.
#include "builtins.hpp"

#include <set>

namespace savepoint::builtin {

NamedTensors module_state(const torch::nn::Module& module) {
  NamedTensors out;
  for (const auto& item : module.named_parameters(/*recurse=*/true))
    if (item.value().defined()) out.emplace_back(item.key(), item.value());
  for (const auto& item : module.named_buffers(/*recurse=*/true))
    if (item.value().defined()) out.emplace_back(item.key(), item.value());
  return out;
}

Payload save_module(void* object, const SaveContext&) {
  const auto& module = *static_cast<torch::nn::Module*>(object);
  Payload payload = tensor_payload(module_state(module), {{"format", "pt"}, {"savepoint.hook", "torch.nn.Module"}});
  // Buffers (BatchNorm's running statistics) change in the forward pass, before the guard of
  // an overlapped async save: they are copied at the call (they are small), the parameters
  // later.
  std::set<std::string> buffers;
  for (const auto& item : module.named_buffers(/*recurse=*/true)) buffers.insert(item.key());
  for (auto& t : payload.tensor_data())
    if (buffers.count(t.spec.name)) t.version = nullptr;
  return payload;
}

Apply prepare_module(void* object, const LoadContext& ctx) {
  auto& module = *static_cast<torch::nn::Module*>(object);
  auto source = std::make_shared<TensorSource>(ctx);
  std::vector<std::pair<Tensor, Tensor>> copies;  // destination, source view
  std::vector<std::string> problems;
  std::set<std::string> wanted;
  for (const auto& [name, dst] : module_state(module)) {
    wanted.insert(name);
    const auto* info = source->find(name);
    if (!info) {
      problems.push_back(fmt::format("tensor '{}' is missing from the checkpoint", name));
      continue;
    }
    const auto type = to_torch(info->dtype);
    if (!type || *type != dst.scalar_type()) {
      problems.push_back(fmt::format("tensor '{}' has dtype {} in the checkpoint but {} in the model",
                                     name, st::dtype_name(info->dtype), c10::toString(dst.scalar_type())));
      continue;
    }
    if (c10::IntArrayRef(info->shape) != dst.sizes()) {
      problems.push_back(fmt::format("tensor '{}' has shape {} in the checkpoint but {} in the model",
                                     name, shape_str(info->shape), shape_str(dst.sizes())));
      continue;
    }
    copies.emplace_back(dst, source->view(*info));
  }
  for (const auto& info : source->header.tensors)
    if (!wanted.count(info.name))
      problems.push_back(fmt::format("tensor '{}' in the checkpoint is not in the model", info.name));
  if (!problems.empty()) {
    std::string list;
    for (std::size_t i = 0; i < problems.size() && i < 12; ++i) list += "\n  " + problems[i];
    if (problems.size() > 12) list += fmt::format("\n  ... and {} more", problems.size() - 12);
    mismatch(ctx, fmt::format("the module does not match the checkpoint ({} problems):{}",
                              problems.size(), list));
  }
  return [source, copies = std::move(copies)] {
    torch::NoGradGuard no_grad;
    for (const auto& [dst, src] : copies) const_cast<Tensor&>(dst).copy_(src);  // lands on dst's device
  };
}

}  // namespace savepoint::builtin
