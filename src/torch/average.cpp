// Checkpoint averaging into modules: the core's streaming Averager, collected into tensors.
#include "builtins.hpp"

#include <savepoint/module_average.hpp>

#include <set>

namespace savepoint {

namespace {
TensorFile collect(Averager& averager, AverageReport* report = nullptr) {
  TensorFile out;
  out.metadata = averager.metadata();
  auto done = averager.run([&](const AveragedTensor& t) {
    const auto type = builtin::to_torch(t.dtype);
    if (!type) {
      throw MismatchError(fmt::format("averaged tensor '{}' has dtype {}, which this LibTorch cannot represent", t.name,
                                      safetensors::dtype_name(t.dtype)),
                          {});
    }
    auto tensor = torch::empty(t.shape, torch::TensorOptions().dtype(*type));
    std::memcpy(tensor.data_ptr(), t.bytes.data(), t.bytes.size());
    out.tensors.emplace_back(t.name, std::move(tensor));
  });
  if (report) *report = std::move(done);
  return out;
}
}  // namespace

TensorFile average_tensors(const std::vector<Checkpoint>& checkpoints, const std::string& key) {
  Averager averager(checkpoints, key);
  return collect(averager);
}

AverageReport load_average(torch::nn::Module& module, const std::vector<Checkpoint>& checkpoints,
                           const std::string& key) {
  Averager averager(checkpoints, key);
  // The module is checked against the newest file's header before any tensor is averaged.
  std::vector<std::string> problems;
  std::set<std::string> wanted;
  const auto state = builtin::module_state(module);
  for (const auto& [name, dst] : state) {
    wanted.insert(name);
    const safetensors::TensorInfo* info = nullptr;
    for (const auto& t : averager.tensors())
      if (t.name == name) info = &t;
    if (!info) {
      problems.push_back(fmt::format("tensor '{}' is missing from the checkpoints", name));
      continue;
    }
    const auto type = builtin::to_torch(info->dtype);
    if (!type || *type != dst.scalar_type()) {
      problems.push_back(fmt::format("tensor '{}' has dtype {} in the checkpoints but {} in the model", name,
                                     safetensors::dtype_name(info->dtype), c10::toString(dst.scalar_type())));
    } else if (c10::IntArrayRef(info->shape) != dst.sizes()) {
      problems.push_back(fmt::format("tensor '{}' has shape {} in the checkpoints but {} in the model", name,
                                     builtin::shape_str(info->shape), builtin::shape_str(dst.sizes())));
    }
  }
  for (const auto& t : averager.tensors())
    if (!wanted.count(t.name)) problems.push_back(fmt::format("tensor '{}' in the checkpoints is not in the model", t.name));
  if (!problems.empty()) {
    std::string list;
    for (std::size_t i = 0; i < problems.size() && i < 12; ++i) list += "\n  " + problems[i];
    if (problems.size() > 12) list += fmt::format("\n  ... and {} more", problems.size() - 12);
    const auto& newest = averager.checkpoints().front();
    throw MismatchError(fmt::format("cannot load the average of key '{}' (newest: '{}') into the module ({} problems):{}",
                                    key, newest.path.string(), problems.size(), list),
                        newest.path, key);
  }
  AverageReport report;
  TensorFile averaged = collect(averager, &report);
  std::map<std::string, torch::Tensor> by_name(averaged.tensors.begin(), averaged.tensors.end());
  torch::NoGradGuard no_grad;
  for (const auto& [name, dst] : state) const_cast<torch::Tensor&>(dst).copy_(by_name.at(name));
  return report;
}

}  // namespace savepoint
