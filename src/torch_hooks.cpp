// Built-in hooks for LibTorch types. The only translation unit of the library that includes
// <torch/torch.h>; LibTorch 1.13 / 2.x differences are guarded here and nowhere else.
#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/format/safetensors.hpp>
#include <savepoint/hooks.hpp>
#include <savepoint/log.hpp>
#include <savepoint/rng.hpp>
#include <savepoint/tensors.hpp>
#include <savepoint/transfer.hpp>

#include <torch/torch.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <set>
#include <sstream>

namespace savepoint {

namespace st = safetensors;
using nlohmann::json;
using torch::Tensor;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "savepoint writes tensors little-endian as safetensors requires; big-endian hosts "
              "are not supported yet");

// ============================================================================ dtypes
namespace {

std::optional<st::DType> to_st(torch::ScalarType t) {
  switch (t) {
    case torch::kBool: return st::DType::BOOL;
    case torch::kUInt8: return st::DType::U8;
    case torch::kInt8: return st::DType::I8;
    case torch::kInt16: return st::DType::I16;
    case torch::kFloat16: return st::DType::F16;
    case torch::kBFloat16: return st::DType::BF16;
    case torch::kInt32: return st::DType::I32;
    case torch::kFloat32: return st::DType::F32;
    case torch::kInt64: return st::DType::I64;
    case torch::kFloat64: return st::DType::F64;
    case torch::kComplexFloat: return st::DType::C64;
    default: return std::nullopt;
  }
}

std::optional<torch::ScalarType> to_torch(st::DType t) {
  switch (t) {
    case st::DType::BOOL: return torch::kBool;
    case st::DType::U8: return torch::kUInt8;
    case st::DType::I8: return torch::kInt8;
    case st::DType::I16: return torch::kInt16;
    case st::DType::F16: return torch::kFloat16;
    case st::DType::BF16: return torch::kBFloat16;
    case st::DType::I32: return torch::kInt32;
    case st::DType::F32: return torch::kFloat32;
    case st::DType::I64: return torch::kInt64;
    case st::DType::F64: return torch::kFloat64;
    case st::DType::C64: return torch::kComplexFloat;
    default: return std::nullopt;  // U16/U32/U64/F8: not in every LibTorch we support
  }
}

std::string shape_str(c10::IntArrayRef shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

// A view of one tensor's bytes inside a mapped file; copies when misaligned for its dtype.
Tensor tensor_view(std::string_view file_bytes, std::uint64_t data_start, const st::TensorInfo& info,
                   torch::ScalarType type) {
  const char* ptr = file_bytes.data() + data_start + info.begin;
  const auto options = torch::TensorOptions().dtype(type);
  const auto elem = st::dtype_size(info.dtype);
  if (info.nbytes() == 0) return torch::empty(info.shape, options);
  if (reinterpret_cast<std::uintptr_t>(ptr) % elem != 0) {
    Tensor t = torch::empty(info.shape, options);
    std::memcpy(t.data_ptr(), ptr, info.nbytes());
    return t;
  }
  return torch::from_blob(const_cast<char*>(ptr), info.shape, options);
}

// A parsed, verified safetensors file kept mapped while its views are in use.
struct TensorSource {
  std::shared_ptr<const detail::MappedFile> contents;
  st::Header header;
  std::filesystem::path file;
  std::string key;

  TensorSource(const LoadContext& ctx)
      : contents(ctx.contents), header(st::parse(ctx.bytes(), ctx.file)), file(ctx.file), key(ctx.key) {}

  const st::TensorInfo* find(const std::string& name) const { return header.find(name); }
  Tensor view(const st::TensorInfo& info) const {
    const auto type = to_torch(info.dtype);
    if (!type) {
      throw MismatchError(fmt::format("tensor '{}' in '{}' (key '{}') has dtype {}, which this "
                                      "LibTorch cannot represent",
                                      info.name, file.string(), key, st::dtype_name(info.dtype)),
                          file, key);
    }
    return tensor_view(contents->bytes(), header.data_start, info, *type);
  }
  Tensor view(const std::string& name) const {
    const auto* info = find(name);
    if (!info) {
      throw MismatchError(fmt::format("'{}' (key '{}') has no tensor '{}'", file.string(), key, name),
                          file, key);
    }
    return view(*info);
  }
  json savepoint_meta() const {
    const auto it = header.metadata.find("savepoint");
    if (it == header.metadata.end()) return json::object();
    try {
      return json::parse(it->second);
    } catch (const json::exception& e) {
      throw CorruptCheckpointError(fmt::format("'{}' (key '{}') has unreadable savepoint metadata: {}",
                                               file.string(), key, e.what()),
                                   file, key);
    }
  }
};

[[noreturn]] void mismatch(const LoadContext& ctx, const std::string& what) {
  throw MismatchError(fmt::format("cannot load key '{}' from '{}': {}", ctx.key, ctx.file.string(), what),
                      ctx.file, ctx.key);
}

}  // namespace

std::string safetensors_dtype_name(torch::ScalarType type) {
  const auto d = to_st(type);
  if (!d) {
    throw UsageError(fmt::format("savepoint: tensors of dtype {} cannot be stored in the "
                                 "safetensors layout",
                                 c10::toString(type)));
  }
  return st::dtype_name(*d);
}

// ============================================================================ tensor files
namespace {
// Host copies of an async save's tensors, reused from save to save (one save is in flight
// at a time, so the previous write is done before the next snapshot overwrites them).
struct StagingBuffers {
  std::map<std::string, std::vector<Tensor>> by_key;
};

// Copies `tensors` into the key's staging buffers: pinned host memory for CUDA tensors (so
// the device->host copy runs at full speed), plain host memory otherwise.
NamedTensors stage(const NamedTensors& tensors, SaveContext& ctx) {
  auto& slot = *ctx.snapshot->staging;
  if (!slot) slot = std::make_shared<StagingBuffers>();
  auto& buffers = static_cast<StagingBuffers*>(slot.get())->by_key[ctx.key];
  buffers.resize(tensors.size());
  NamedTensors staged;
  staged.reserve(tensors.size());
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i].second;
    Tensor& buffer = buffers[i];
    if (!t.defined()) {
      staged.emplace_back(tensors[i].first, t);
      continue;
    }
    const bool pinned = t.is_cuda();
    if (!buffer.defined() || buffer.scalar_type() != t.scalar_type() || buffer.sizes() != t.sizes() ||
        buffer.is_pinned() != pinned) {
      buffer = torch::empty(t.sizes(), torch::TensorOptions().dtype(t.scalar_type()).pinned_memory(pinned));
    }
    buffer.copy_(t.detach());
    staged.emplace_back(tensors[i].first, buffer);
  }
  return staged;
}
}  // namespace

void save_tensors(const std::filesystem::path& file, const NamedTensors& tensors,
                  const std::map<std::string, std::string>& metadata, SaveContext* ctx) {
  if (ctx && ctx->snapshot) {
    bool strided = true;
    for (const auto& nt : tensors) strided = strided && (!nt.second.defined() || nt.second.layout() == torch::kStrided);
    if (strided) {  // else: written now, and the error (if any) raised now
      SaveContext* target = ctx;
      target->deferred = true;
      NamedTensors to_write = ctx->snapshot->staging ? stage(tensors, *ctx) : tensors;
      target->snapshot->deferred_writes.push_back([file, to_write = std::move(to_write), metadata, target] {
        SaveContext direct{target->file, target->key, std::nullopt, nullptr, false};
        save_tensors(file, to_write, metadata, &direct);
        target->digest = direct.digest;
      });
      return;
    }
  }
  std::vector<st::TensorSpec> specs;
  std::map<std::string, const Tensor*> by_name;
  specs.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) continue;
    if (t.layout() != torch::kStrided) {
      throw UsageError(fmt::format("savepoint: tensor '{}' is not strided (sparse/quantized "
                                   "tensors are not supported)",
                                   name));
    }
    const auto dtype = to_st(t.scalar_type());
    if (!dtype) {
      throw UsageError(fmt::format("savepoint: tensor '{}' has dtype {}, which the safetensors "
                                   "layout cannot store",
                                   name, c10::toString(t.scalar_type())));
    }
    if (!by_name.emplace(name, &t).second)
      throw UsageError(fmt::format("savepoint: tensor name '{}' given twice", name));
    specs.push_back({name, *dtype, t.sizes().vec(), static_cast<std::uint64_t>(t.numel()) * t.element_size()});
  }
  const std::string header = st::build_header(specs, metadata);
  detail::FileWriter writer(file);
  writer.write(header);
  for (const auto& spec : specs) {
    // Contiguous CPU tensors are written straight from their storage; others are copied one
    // tensor at a time (never the whole model at once).
    Tensor t = by_name.at(spec.name)->detach();
    if (!t.device().is_cpu()) t = t.to(torch::kCPU);
    if (!t.is_contiguous()) t = t.contiguous();
    writer.write(t.data_ptr(), spec.nbytes);
  }
  const auto digest = writer.finish();
  if (ctx) ctx->digest = std::make_pair(digest.bytes, digest.xxh3);
}

namespace {
TensorFile tensors_of(const std::shared_ptr<const detail::MappedFile>& contents, const std::filesystem::path& file,
                      ReadMode mode) {
  const auto header = st::parse(contents->bytes(), file);
  TensorFile out;
  out.metadata = header.metadata;
  for (const auto& info : header.tensors) {
    const auto type = to_torch(info.dtype);
    if (!type) {
      throw MismatchError(fmt::format("tensor '{}' in '{}' has dtype {}, which this LibTorch "
                                      "cannot represent",
                                      info.name, file.string(), st::dtype_name(info.dtype)),
                          file);
    }
    Tensor t = tensor_view(contents->bytes(), header.data_start, info, *type);
    // tensor_view copies misaligned and empty tensors; the rest view the mapping.
    if (t.nbytes() > 0 && t.data_ptr() == contents->data() + header.data_start + info.begin) {
      if (mode == ReadMode::copy) t = t.clone();
      else  // the same bytes, holding the mapping for as long as the tensor lives
        t = torch::from_blob(t.data_ptr(), info.shape, [contents](void*) {}, torch::TensorOptions().dtype(*type));
    }
    out.tensors.emplace_back(info.name, std::move(t));
  }
  return out;
}
}  // namespace

TensorFile load_tensors(const std::filesystem::path& file, ReadMode mode) {
  const detail::Mapping mapping{/*read_all=*/mode == ReadMode::copy, /*copy_on_write=*/mode == ReadMode::map};
  return tensors_of(std::make_shared<const detail::MappedFile>(file, mapping), file, mode);
}

namespace {
// The file of `key` in a checkpoint, verified like a load (MissingKeyError if it has none).
LoadContext open_key(const Checkpoint& checkpoint, const std::string& key, bool copy_on_write = false) {
  const FileRecord* rec = checkpoint.file(key);
  if (!rec) {
    throw MissingKeyError(fmt::format("checkpoint '{}' has no key '{}'", checkpoint.path.string(), key),
                          checkpoint.path, key);
  }
  LoadContext ctx;
  ctx.file = checkpoint.path / rec->file;
  ctx.key = key;
  ctx.contents = detail::open_verified(checkpoint, *rec, copy_on_write);
  return ctx;
}
}  // namespace

TensorFile load_tensors(const Checkpoint& checkpoint, const std::string& key, ReadMode mode) {
  const LoadContext ctx = open_key(checkpoint, key, /*copy_on_write=*/mode == ReadMode::map);
  return tensors_of(ctx.contents, ctx.file, mode);
}

// ============================================================================ nn::Module
namespace {

NamedTensors module_state(const torch::nn::Module& module) {
  NamedTensors out;
  for (const auto& item : module.named_parameters(/*recurse=*/true))
    if (item.value().defined()) out.emplace_back(item.key(), item.value());
  for (const auto& item : module.named_buffers(/*recurse=*/true))
    if (item.value().defined()) out.emplace_back(item.key(), item.value());
  return out;
}

void save_module(void* object, SaveContext& ctx) {
  const auto& module = *static_cast<torch::nn::Module*>(object);
  save_tensors(ctx.file, module_state(module),
               {{"format", "pt"}, {"savepoint.hook", "torch.nn.Module"}}, &ctx);
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

// ============================================================================ optimizers
// Per-parameter state is keyed by the parameter's position (group by group), never by its
// address; LibTorch 1.13 keys its state map by a pointer string, 2.x by the pointer itself.
template <class Map>
auto state_key(const Map&, const Tensor& param) {
  using Key = typename Map::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream os;  // what c10::guts::to_string(TensorImpl*) produces in 1.13
    os << param.unsafeGetTensorImpl();
    return os.str();
  } else {
    return static_cast<Key>(param.unsafeGetTensorImpl());
  }
}

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
    t = view.to(device, /*non_blocking=*/false, /*copy=*/true);
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

void save_optimizer(void* object, SaveContext& ctx) {
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
  save_tensors(ctx.file, tensors,
               {{"savepoint", doc.dump()}, {"savepoint.hook", "torch.optim.Optimizer"}}, &ctx);
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

// ============================================================================ LR schedulers
// LRScheduler keeps its only state, step_count_, protected; a derived class may name it.
struct SchedulerAccess : torch::optim::LRScheduler {
  static unsigned& step_count(torch::optim::LRScheduler& s) {
    return s.*(&SchedulerAccess::step_count_);
  }
};

void save_scheduler(void* object, SaveContext& ctx) {
  auto& s = *static_cast<torch::optim::LRScheduler*>(object);
  detail::write_json_file(ctx, json{{"step_count", SchedulerAccess::step_count(s)}});
}

Apply prepare_scheduler(void* object, const LoadContext& ctx) {
  auto* s = static_cast<torch::optim::LRScheduler*>(object);
  const json j = detail::parse_json_file(ctx);
  if (!j.is_object() || !j.contains("step_count") || !j["step_count"].is_number_unsigned())
    mismatch(ctx, "no non-negative \"step_count\"");
  const auto count = j["step_count"].get<unsigned>();
  return [s, count] { SchedulerAccess::step_count(*s) = count; };
}

// ============================================================================ plain tensors
void save_tensor(void* object, SaveContext& ctx) {
  const auto& t = *static_cast<Tensor*>(object);
  if (!t.defined()) throw UsageError(fmt::format("savepoint: tensor '{}' is undefined", ctx.key));
  save_tensors(ctx.file, {{"tensor", t}}, {{"savepoint.hook", "torch.Tensor"}}, &ctx);
}

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
  Tensor owned = view.clone();
  return [target, owned] { *target = owned; };
}

// ============================================================================ data samplers
// LibTorch's samplers (RandomSampler, SequentialSampler, DistributedRandomSampler, ...) carry
// their own save/load through a torch archive. Those bytes are stored as one U8 tensor of a
// safetensors file, with the sampler's dynamic type, so a RandomSampler's position cannot be
// applied to a different sampler.
using AnySampler = torch::data::samplers::Sampler<>;

std::string sampler_type(const AnySampler& sampler) { return detail::demangle(typeid(sampler).name()); }

void save_sampler(void* object, SaveContext& ctx) {
  const auto& sampler = *static_cast<AnySampler*>(object);
  torch::serialize::OutputArchive archive;
  sampler.save(archive);
  std::ostringstream bytes;
  archive.save_to(bytes);
  const std::string data = bytes.str();
  Tensor blob = torch::empty({static_cast<int64_t>(data.size())}, torch::kUInt8);
  std::memcpy(blob.data_ptr(), data.data(), data.size());
  save_tensors(ctx.file, {{"torch_archive", blob}},
               {{"savepoint.hook", "torch.data.Sampler"}, {"sampler_type", sampler_type(sampler)}}, &ctx);
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

// ============================================================================ generators
Tensor generator_state(const at::Generator& gen) { return const_cast<at::Generator&>(gen).get_state(); }

void set_generator_state(at::Generator& gen, const Tensor& state) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

void save_generator(void* object, SaveContext& ctx) {
  save_tensors(ctx.file, {{"state", generator_state(*static_cast<at::Generator*>(object))}},
               {{"savepoint.hook", "torch.Generator"}}, &ctx);
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

void save_rng(void* object, SaveContext& ctx) {
  const auto& rng = *static_cast<TorchRngState*>(object);
  NamedTensors states;
  states.emplace_back("cpu", generator_state(at::detail::getDefaultCPUGenerator()));
  const std::size_t n = rng.include_cuda ? cuda_device_count() : 0;
  for (std::size_t i = 0; i < n; ++i) {
    const auto& gen = at::globalContext().defaultGenerator(torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(i)));
    states.emplace_back(fmt::format("cuda.{}", i), generator_state(gen));
  }
  save_tensors(ctx.file, states, {{"savepoint.hook", "savepoint.TorchRngState"}}, &ctx);
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

template <class T>
void add_builtin(HookTable& table, const char* name, const char* extension,
                 void (*save)(void*, SaveContext&), Apply (*prepare)(void*, const LoadContext&),
                 bool load_last = false) {
  TypeHooks h;
  h.name = name;
  h.extension = extension;
  h.save = save;
  h.prepare_load = prepare;
  h.load_last = load_last;
  table.add<T>(std::move(h));
}

}  // namespace

namespace detail {
void register_torch_hooks(HookTable& table) {
  add_builtin<torch::nn::Module>(table, "torch.nn.Module", ".safetensors", save_module, prepare_module);
  add_builtin<torch::optim::Optimizer>(table, "torch.optim.Optimizer", ".safetensors", save_optimizer,
                                       prepare_optimizer);
  add_builtin<torch::optim::LRScheduler>(table, "torch.optim.LRScheduler", ".json", save_scheduler,
                                         prepare_scheduler);
  add_builtin<Tensor>(table, "torch.Tensor", ".safetensors", save_tensor, prepare_tensor);
  add_builtin<AnySampler>(table, "torch.data.Sampler", ".safetensors", save_sampler, prepare_sampler);
  add_builtin<at::Generator>(table, "torch.Generator", ".safetensors", save_generator, prepare_generator,
                             /*load_last=*/true);
  add_builtin<TorchRngState>(table, "savepoint.TorchRngState", ".safetensors", save_rng, prepare_rng,
                             /*load_last=*/true);
}
}  // namespace detail

// ============================================================================ transfer
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
