// Transfer learning: sources (safetensors files, PyTorch files, checkpoint keys) opened and
// verified, names filtered and renamed, matched by name or by order, planned for every step
// of a call before any module changes, then copied.
#include "builtins.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/log.hpp>
#include <savepoint/transfer.hpp>

#include <ostream>
#include <set>

namespace savepoint {

using namespace builtin;

namespace {

/// A source's tensors in its own order, viewing its (verified) bytes.
struct OpenedSource {
  std::string label;  // for reports and messages
  std::filesystem::path file;
  std::shared_ptr<const FileContents> contents;
  NamedTensors tensors;
};

std::shared_ptr<const detail::MappedFile> open_transfer_file(const std::filesystem::path& file) {
  // A file inside a checkpoint directory has a digest in the meta.json beside it: use it.
  const auto dir = file.parent_path().empty() ? std::filesystem::path(".") : file.parent_path();
  const auto meta = detail::path_status(dir / detail::kMetaFileName);
  if (meta && meta->type == detail::FileType::regular) {
    const Checkpoint ckpt = detail::read_checkpoint(dir);
    for (const auto& rec : ckpt.files)
      if (rec.file == file.filename().string()) return detail::open_verified(ckpt, rec);
  }
  return std::make_shared<const detail::MappedFile>(file);
}

OpenedSource open_transfer_source(const TransferSource& source) {
  OpenedSource out;
  if (source.checkpoint()) {
    const LoadContext ctx = open_key(*source.checkpoint(), source.key());
    out.file = ctx.file;
    out.contents = ctx.contents;
    out.label = fmt::format("'{}' (key '{}')", ctx.file.string(), source.key());
    if (ctx.file.extension() != ".safetensors" && !pytorch::looks_like_pytorch(ctx.bytes())) {
      detail::throw_usage(fmt::format("savepoint: cannot transfer from key '{}' of '{}': its file '{}' holds no "
                                      "tensors",
                                      source.key(), source.checkpoint()->path.string(), ctx.file.filename().string()));
    }
  } else {
    out.file = source.file();
    out.contents = open_transfer_file(source.file());
    out.label = fmt::format("'{}'", source.file().string());
  }
  const auto bytes = out.contents->bytes();
  if (pytorch::looks_like_pytorch(bytes)) {
    out.tensors = pytorch_tensors(out.contents, pytorch::parse(bytes, out.file), ReadMode::map);
  } else {
    const auto header = st::parse(bytes, out.file);
    for (const auto& info : header.tensors) {
      const auto type = to_torch(info.dtype);
      if (!type) {
        throw MismatchError(fmt::format("tensor '{}' in {} has dtype {}, which this LibTorch cannot represent",
                                        info.name, out.label, st::dtype_name(info.dtype)),
                            out.file);
      }
      out.tensors.emplace_back(info.name, tensor_view(bytes, header.data_start, info, *type));
    }
  }
  return out;
}

std::string describe_tensor(const Tensor& t) {
  return fmt::format("{} {}", c10::toString(t.scalar_type()), shape_str(t.sizes()));
}

struct TransferPlan {
  TransferReport report;
  std::vector<std::pair<Tensor, Tensor>> copies;  // destination, source view
  bool refused = false;
};

TransferPlan plan_transfer(torch::nn::Module& module, const OpenedSource& source, const TransferOptions& options) {
  TransferPlan p;
  auto& r = p.report;
  r.source = source.label;
  r.mode = options.mode();
  const auto& prefix = options.prefix();

  // The source's tensors that take part, under the names they get in the module.
  struct Candidate {
    std::string source_name;
    std::string name;
    const Tensor* tensor;
  };
  std::vector<Candidate> candidates;
  for (const auto& [name, tensor] : source.tensors) {
    if (name.compare(0, prefix.size(), prefix) != 0) {
      ++r.filtered;
      continue;
    }
    std::string renamed = name.substr(prefix.size());
    for (const auto& [from, to] : options.renames())
      if (renamed.compare(0, from.size(), from) == 0) renamed = to + renamed.substr(from.size());
    candidates.push_back({name, std::move(renamed), &tensor});
  }
  const NamedTensors targets = state_dict_order(module);  // Python's order, for by_order

  auto check = [&](const std::string& name, const Tensor& dst, const Tensor& src) {
    if (dst.scalar_type() == src.scalar_type() && dst.sizes() == src.sizes()) return true;
    r.mismatched.push_back(name);
    r.why[name] = fmt::format("{} in the source, {} in the module", describe_tensor(src), describe_tensor(dst));
    return false;
  };

  if (options.mode() == TransferMode::by_order) {
    const auto n = std::min(candidates.size(), targets.size());
    for (std::size_t i = 0; i < n; ++i) {
      const auto& [name, dst] = targets[i];
      if (candidates[i].source_name != name) r.from[name] = candidates[i].source_name;
      if (check(name, dst, *candidates[i].tensor)) {
        r.loaded.push_back(name);
        p.copies.emplace_back(dst, *candidates[i].tensor);
      }
    }
    for (std::size_t i = n; i < targets.size(); ++i) r.missing.push_back(targets[i].first);
    for (std::size_t i = n; i < candidates.size(); ++i) r.unexpected.push_back(candidates[i].source_name);
  } else {
    std::map<std::string, const Candidate*> by_name;
    for (const auto& c : candidates) {
      const auto [it, fresh] = by_name.emplace(c.name, &c);
      if (!fresh) {
        detail::throw_usage(fmt::format("savepoint: transfer from {}: '{}' and '{}' both become '{}' after the "
                                        "prefix and renames",
                                        source.label, it->second->source_name, c.source_name, c.name));
      }
    }
    std::set<std::string> used;
    for (const auto& [name, dst] : targets) {
      const auto it = by_name.find(name);
      if (it == by_name.end()) {
        r.missing.push_back(name);
        continue;
      }
      used.insert(name);
      if (it->second->source_name != name) r.from[name] = it->second->source_name;
      if (check(name, dst, *it->second->tensor)) {
        r.loaded.push_back(name);
        p.copies.emplace_back(dst, *it->second->tensor);
      }
    }
    for (const auto& c : candidates)
      if (!used.count(c.name)) r.unexpected.push_back(c.source_name);
  }
  p.refused = options.mode() != TransferMode::non_strict && !r.complete();
  return p;
}

void warn_about_transfer(const TransferReport& r) {
  for (const auto& n : r.missing)
    detail::log(LogLevel::warn, "transfer from {}: '{}' is not in the source; left as is", r.source, n);
  for (const auto& n : r.unexpected)
    detail::log(LogLevel::warn, "transfer from {}: '{}' has no place in the module; ignored", r.source, n);
  for (const auto& n : r.mismatched)
    detail::log(LogLevel::warn, "transfer from {}: '{}' differs ({}); left as is", r.source, n, r.why.at(n));
}

}  // namespace

const char* to_string(TransferMode mode) noexcept {
  switch (mode) {
    case TransferMode::non_strict: return "non-strict";
    case TransferMode::strict: return "strict";
    case TransferMode::by_order: return "by order";
  }
  return "?";
}

std::string to_string(const TransferReport& r) {
  std::string s = fmt::format("transfer from {} ({}): {} loaded, {} missing, {} unexpected, {} mismatched", r.source,
                              to_string(r.mode), r.loaded.size(), r.missing.size(), r.unexpected.size(),
                              r.mismatched.size());
  if (r.filtered) s += fmt::format(", {} outside the prefix", r.filtered);
  constexpr std::size_t kMaxLines = 20;  // per list: a large model's report stays readable
  auto list = [&](const char* title, const std::vector<std::string>& names, bool with_why) {
    for (std::size_t i = 0; i < names.size(); ++i) {
      const auto& n = names[i];
      if (i == kMaxLines) {
        s += fmt::format("\n  {:<11}... and {} more", title, names.size() - kMaxLines);
        break;
      }
      s += fmt::format("\n  {:<11}{}", title, n);
      if (const auto f = r.from.find(n); f != r.from.end()) s += fmt::format(" <- {}", f->second);
      if (const auto w = r.why.find(n); with_why && w != r.why.end()) s += fmt::format(" ({})", w->second);
    }
  };
  list("loaded", r.loaded, false);
  list("missing", r.missing, false);
  list("unexpected", r.unexpected, false);
  list("mismatched", r.mismatched, true);
  return s;
}

std::ostream& operator<<(std::ostream& os, const TransferReport& report) { return os << to_string(report); }

std::vector<TransferReport> transfer(const std::vector<TransferStep>& steps) {
  // Every source opened and verified, every step planned, before anything is copied.
  std::vector<OpenedSource> sources;
  sources.reserve(steps.size());
  for (const auto& step : steps) sources.push_back(open_transfer_source(step.source));
  std::vector<TransferPlan> plans;
  plans.reserve(steps.size());
  for (std::size_t i = 0; i < steps.size(); ++i)
    plans.push_back(plan_transfer(steps[i].module, sources[i], steps[i].options));
  for (std::size_t i = 0; i < plans.size(); ++i) {
    if (!plans[i].refused) continue;
    const auto& r = plans[i].report;
    throw TransferError(fmt::format("{} transfer refused{}; nothing was loaded:\n{}", to_string(r.mode),
                                    steps.size() > 1 ? fmt::format(" (step {} of {})", i + 1, steps.size()) : "",
                                    to_string(r)),
                        sources[i].file, r);
  }
  torch::NoGradGuard no_grad;
  std::vector<TransferReport> reports;
  for (auto& p : plans) {
    for (auto& [dst, src] : p.copies) dst.copy_(src);  // lands on dst's device
    warn_about_transfer(p.report);
    reports.push_back(std::move(p.report));
  }
  return reports;
}

TransferReport transfer(torch::nn::Module& module, const TransferSource& source, const TransferOptions& options) {
  return std::move(transfer({TransferStep{module, source, options}}).front());
}

TransferReport transfer_parameters(torch::nn::Module& module, const std::filesystem::path& file) {
  return transfer(module, TransferSource(file));
}

TransferReport transfer_parameters(torch::nn::Module& module, const Checkpoint& checkpoint, const std::string& key) {
  return transfer(module, TransferSource(checkpoint, key));
}

}  // namespace savepoint
