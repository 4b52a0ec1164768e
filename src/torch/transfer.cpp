// Parameter transfer (SpeechBrain's torch_parameter_transfer): what matches by name, shape
// and dtype is copied; the rest is reported.
#include "builtins.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/log.hpp>
#include <savepoint/transfer.hpp>

#include <set>

namespace savepoint {

using namespace builtin;

namespace {
TransferReport transfer_from(torch::nn::Module& module, const TensorSource& source) {
  TransferReport report;
  std::set<std::string> wanted;
  torch::NoGradGuard no_grad;
  for (auto& [name, dst] : module_state(module)) {
    wanted.insert(name);
    const auto* info = source.find(name);
    if (!info) {
      report.missing.push_back(name);
      continue;
    }
    const auto type = to_torch(info->dtype);
    if (!type || *type != dst.scalar_type() || c10::IntArrayRef(info->shape) != dst.sizes()) {
      report.mismatched.push_back(name);
      continue;
    }
    dst.copy_(source.view(*info));
    report.loaded.push_back(name);
  }
  for (const auto& info : source.header.tensors)
    if (!wanted.count(info.name)) report.unexpected.push_back(info.name);
  for (const auto& n : report.missing)
    detail::log(LogLevel::warn, "transfer from '{}': '{}' is not in the file; left as is", source.file.string(), n);
  for (const auto& n : report.unexpected)
    detail::log(LogLevel::warn, "transfer from '{}': '{}' has no place in the module; ignored", source.file.string(), n);
  for (const auto& n : report.mismatched)
    detail::log(LogLevel::warn, "transfer from '{}': '{}' differs in shape or dtype; left as is", source.file.string(), n);
  return report;
}
}  // namespace

TransferReport transfer_parameters(torch::nn::Module& module, const std::filesystem::path& file) {
  LoadContext ctx;
  ctx.file = file;
  ctx.key = file.stem().string();
  ctx.contents = std::make_shared<const detail::MappedFile>(file);
  return transfer_from(module, TensorSource(ctx));
}

TransferReport transfer_parameters(torch::nn::Module& module, const Checkpoint& checkpoint,
                                   const std::string& key) {
  return transfer_from(module, TensorSource(open_key(checkpoint, key)));
}


}  // namespace savepoint
