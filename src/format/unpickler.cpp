// The state_dict unpickler: a pickle machine for the subset of pickle torch.save emits for a
// state_dict, and the flattening of its dicts into named tensors.
#include "unpickler.hpp"

#include "pickle.hpp"
#include "pytorch_internal.hpp"

#include <fmt/format.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <set>
#include <vector>

namespace savepoint::pytorch::internal {

namespace st = safetensors;

namespace {

using pickle::Machine;
using pickle::Value;
using pickle::ValuePtr;

// A tensor or a storage: the policy's own values (Kind::opaque), told apart by `tensor`.
struct TorchValue {
  bool tensor = false;
  TensorRecord record;  // tensor
  std::string key;      // storage
};
const TorchValue* torch_value(const ValuePtr& v) {
  return v->kind == Value::Kind::opaque ? static_cast<const TorchValue*>(v->payload.get()) : nullptr;
}
bool is_tensor(const ValuePtr& v) {
  const auto* t = torch_value(v);
  return t && t->tensor;
}

// What torch.save's globals mean: storages (persistent ids), _rebuild_tensor_v2, parameters,
// OrderedDict; any other call or class is an opaque object, skipped in a dict.
class TorchPolicy final : public pickle::Policy {
 public:
  TorchPolicy(ZipReader& zip, std::string prefix, File& out) : zip_(zip), prefix_(std::move(prefix)), out_(out) {}

  ValuePtr reduce(Machine& m, const ValuePtr& callable, const ValuePtr& args) override {
    const std::string fn = callable->kind == Value::Kind::global ? callable->text : "";
    const auto& a = args->items;
    if (fn == "collections.OrderedDict") {
      if (!a.empty()) m.unsupported("an OrderedDict built from arguments");
      return m.make(Value::Kind::dict);
    }
    if (fn == "torch._utils._rebuild_tensor_v2" || fn == "torch._utils._rebuild_tensor") return rebuild_tensor(m, a);
    if (fn == "torch._utils._rebuild_parameter" || fn == "torch._utils._rebuild_parameter_with_state") {
      if (a.empty() || !is_tensor(a[0])) m.damaged(fmt::format("{} without a tensor", fn));
      return a[0];
    }
    // Anything else (an optimizer's hyper-parameter object, a numpy scalar, a whole module)
    // becomes an opaque value: skipped in a dict, refused at the top.
    return opaque(m, callable);
  }
  ValuePtr newobj(Machine& m, const ValuePtr& cls, const ValuePtr&) override { return opaque(m, cls); }
  void build(Machine& m, const ValuePtr& object, const ValuePtr&) override {
    // OrderedDict's state is state_dict._metadata; an object's and a parameter's state is of no
    // use for the tensors.
    if (object->kind != Value::Kind::dict && object->kind != Value::Kind::object && !is_tensor(object))
      m.damaged(fmt::format("BUILD on a {}", pickle::kind_name(object->kind)));
  }

  ValuePtr persistent(Machine& m, const ValuePtr& pid) override {
    const auto& a = pid->items;
    if (pid->kind != Value::Kind::tuple || a.size() < 5 || a[0]->kind != Value::Kind::string ||
        a[0]->text != "storage" || a[1]->kind != Value::Kind::global || a[2]->kind != Value::Kind::string ||
        a[4]->kind != Value::Kind::integer || a[4]->integer < 0)
      m.unsupported("a persistent id other than a tensor storage");
    const auto& cls = a[1]->text;
    const StorageRow* row = nullptr;
    for (const auto& r : kStorages)
      if (cls == std::string("torch.") + r.name) row = &r;
    if (!row) m.unsupported(fmt::format("storage type '{}'", cls));
    const auto& key = a[2]->text;
    const auto numel = static_cast<std::uint64_t>(a[4]->integer);
    const auto found = out_.storages.find(key);
    if (found != out_.storages.end()) {
      if (found->second.dtype != row->dtype) m.damaged(fmt::format("storage '{}' has two dtypes", key));
    } else {
      const ZipRecord* rec = zip_.find(prefix_ + "data/" + key);
      if (!rec) m.damaged(fmt::format("storage record 'data/{}' is missing", key));
      const auto elem = st::dtype_size(row->dtype);
      if (numel > std::numeric_limits<std::uint64_t>::max() / elem || rec->data.size() != numel * elem)
        m.damaged(fmt::format("storage 'data/{}' holds {} bytes, {} x {} expected", key, rec->data.size(), numel,
                              elem));
      out_.storages.emplace(key, Storage{row->dtype, numel, rec->data});
    }
    auto v = m.make(Value::Kind::opaque);
    auto t = std::make_shared<TorchValue>();
    t->key = key;
    v->text = "storage";
    v->payload = t;
    return v;
  }

 private:
  static ValuePtr opaque(Machine& m, const ValuePtr& cls) {
    auto v = m.make(Value::Kind::object);
    v->text = cls->kind == Value::Kind::global ? cls->text : "?";
    return v;
  }

  ValuePtr rebuild_tensor(Machine& m, const std::vector<ValuePtr>& args) {
    const TorchValue* storage_value = args.empty() ? nullptr : torch_value(args[0]);
    if (args.size() < 4 || !storage_value || storage_value->tensor || args[1]->kind != Value::Kind::integer)
      m.damaged("_rebuild_tensor_v2 with unexpected arguments");
    std::vector<std::int64_t> shape, strides;
    if (!pickle::ints_of(args[2], shape) || !pickle::ints_of(args[3], strides) || shape.size() != strides.size())
      m.damaged("_rebuild_tensor_v2 with a bad size or stride");
    const Storage& storage = out_.storages.at(storage_value->key);
    std::int64_t last = args[1]->integer;  // the highest element index the view touches
    bool empty = false;
    for (std::size_t d = 0; d < shape.size(); ++d) {
      const auto n = shape[d], s = strides[d];
      if (n < 0 || s < 0) m.damaged("a tensor with a negative size or stride");
      if (n == 0) empty = true;
      else if (n > 1 && s > 0) {
        if ((n - 1) > (std::numeric_limits<std::int64_t>::max() - last) / s) m.damaged("a tensor whose extent overflows");
        last += (n - 1) * s;
      }
    }
    if (args[1]->integer < 0 || (!empty && static_cast<std::uint64_t>(last) >= storage.numel))
      m.damaged(fmt::format("a tensor reaches past the end of storage '{}' ({} elements)", storage_value->key,
                            storage.numel));
    auto v = m.make(Value::Kind::opaque);
    auto t = std::make_shared<TorchValue>();
    t->tensor = true;
    t->record.dtype = storage.dtype;
    t->record.shape = std::move(shape);
    t->record.strides = std::move(strides);
    t->record.storage_offset = args[1]->integer;
    t->record.storage = storage_value->key;
    v->text = "tensor";
    v->payload = t;
    return v;
  }

  ZipReader& zip_;
  std::string prefix_;
  File& out_;
};

std::string key_text(const ValuePtr& k) {
  if (k->kind == Value::Kind::string) return k->text;
  if (k->kind == Value::Kind::integer) return std::to_string(k->integer);  // optimizer state
  return fmt::format("<{}>", pickle::kind_name(k->kind));
}

void flatten(const ValuePtr& dict, const std::string& prefix, File& out, std::set<std::string>& seen, int depth,
             std::size_t& budget, const fs::path& path) {
  if (depth > 64) unsupported(path, "dicts nested more than 64 deep (or a dict inside itself)");
  for (std::size_t i = 0; i + 1 < dict->items.size(); i += 2) {
    // A pickle can hold one dict many times over (memo references): bound the walk.
    if (++budget > 50'000'000) unsupported(path, "more than 50 million dict entries (a dict repeated inside itself?)");
    const std::string name = prefix.empty() ? key_text(dict->items[i]) : prefix + "." + key_text(dict->items[i]);
    const auto& v = dict->items[i + 1];
    if (v->kind == Value::Kind::dict) {
      flatten(v, name, out, seen, depth + 1, budget, path);
    } else if (is_tensor(v)) {
      if (!seen.insert(name).second) unsupported(path, fmt::format("the name '{}' appears twice", name));
      out.tensors.push_back(torch_value(v)->record);
      out.tensors.back().name = name;
    } else {
      out.skipped.push_back(name);
    }
  }
}

}  // namespace

File read_state_dict(std::string_view pickle, ZipReader& zip, const std::string& prefix, const fs::path& path) {
  File out;
  TorchPolicy policy(zip, prefix, out);
  Machine machine(pickle, policy, path, "PyTorch file");
  const ValuePtr top = machine.run();
  if (is_tensor(top)) {  // torch.save(tensor): one unnamed tensor
    out.tensors.push_back(torch_value(top)->record);
  } else if (top->kind == Value::Kind::dict) {
    std::set<std::string> seen;
    std::size_t budget = 0;
    flatten(top, "", out, seen, 0, budget, path);
  } else {
    const std::string what = top->kind == Value::Kind::object ? fmt::format("an object '{}'", top->text)
                                                              : fmt::format("a {}", pickle::kind_name(top->kind));
    unsupported(path, fmt::format("it holds {}, not a dict of tensors (save model.state_dict())", what));
  }
  return out;
}

}  // namespace savepoint::pytorch::internal
