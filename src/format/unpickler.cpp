// The state_dict unpickler: a pickle machine for the subset of pickle torch.save emits for a
// state_dict, and the flattening of its dicts into named tensors.
#include "unpickler.hpp"

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

// ---------------------------------------------------------------- the pickle machine
struct Value;
using ValuePtr = std::shared_ptr<Value>;
struct Value {
  enum class Kind { none, boolean, integer, real, string, tuple, list, dict, global, object, tensor, storage };
  Kind kind = Kind::none;
  std::int64_t integer = 0;
  std::string text;                 // string; global/object: "module.name"; storage: key
  std::vector<ValuePtr> items;      // tuple, list; dict: key, value, key, value...
  TensorRecord tensor;              // tensor (name empty)
};

const char* kind_name(Value::Kind k) {
  switch (k) {
    case Value::Kind::none: return "None";
    case Value::Kind::boolean: return "bool";
    case Value::Kind::integer: return "int";
    case Value::Kind::real: return "float";
    case Value::Kind::string: return "str";
    case Value::Kind::tuple: return "tuple";
    case Value::Kind::list: return "list";
    case Value::Kind::dict: return "dict";
    case Value::Kind::global: return "global";
    case Value::Kind::object: return "object";
    case Value::Kind::tensor: return "tensor";
    case Value::Kind::storage: return "storage";
  }
  return "?";
}

class Unpickler {
 public:
  Unpickler(std::string_view pickle, ZipReader& zip, std::string prefix, File& out, const fs::path& path)
      : p_(pickle), zip_(zip), prefix_(std::move(prefix)), out_(out), path_(path) {}
  // A pickle can make a list or dict contain itself (through the memo): shared pointers would
  // then keep each other alive. Every value is the machine's; clearing their items at the end
  // breaks any such circle.
  ~Unpickler() {
    for (const auto& v : values_) v->items.clear();
  }
  Unpickler(const Unpickler&) = delete;
  Unpickler& operator=(const Unpickler&) = delete;

  ValuePtr run() {
    while (true) {
      const auto op = static_cast<unsigned char>(take(1)[0]);
      switch (op) {
        case 0x80: take(1); break;                      // PROTO
        case 0x95: take(8); break;                      // FRAME (we hold the whole pickle)
        case '.': return pop("STOP");                   // STOP
        case '(': marks_.push_back(stack_.size()); break;  // MARK
        case 'N': push(make(Value::Kind::none)); break;
        case 0x88: case 0x89: {                         // NEWTRUE, NEWFALSE
          auto v = make(Value::Kind::boolean);
          v->integer = op == 0x88;
          push(v);
          break;
        }
        case 'J': push_int(static_cast<std::int32_t>(le(take(4).data(), 4))); break;  // BININT
        case 'K': push_int(static_cast<std::int64_t>(le(take(1).data(), 1))); break;  // BININT1
        case 'M': push_int(static_cast<std::int64_t>(le(take(2).data(), 2))); break;  // BININT2
        case 0x8a: {                                    // LONG1
          const auto n = static_cast<std::size_t>(le(take(1).data(), 1));
          if (n > 8) unsupported(path_, "an integer wider than 64 bits");
          const auto b = take(n);
          std::uint64_t v = n ? le(b.data(), static_cast<int>(n)) : 0;
          if (n > 0 && n < 8 && (static_cast<unsigned char>(b[n - 1]) & 0x80)) v |= ~std::uint64_t{0} << (8 * n);
          push_int(static_cast<std::int64_t>(v));
          break;
        }
        case 'G': {                                     // BINFLOAT (big-endian double, kept as bits)
          take(8);
          push(make(Value::Kind::real));
          break;
        }
        case 'X': push_string(take(le(take(4).data(), 4))); break;           // BINUNICODE
        case 0x8c: push_string(take(le(take(1).data(), 1))); break;          // SHORT_BINUNICODE
        case 0x8d: push_string(take(le(take(8).data(), 8))); break;          // BINUNICODE8
        case 'C': push_string(take(le(take(1).data(), 1))); break;           // SHORT_BINBYTES
        case 'B': push_string(take(le(take(4).data(), 4))); break;           // BINBYTES
        case ')': push(make(Value::Kind::tuple)); break;                     // EMPTY_TUPLE
        case ']': push(make(Value::Kind::list)); break;                      // EMPTY_LIST
        case '}': push(make(Value::Kind::dict)); break;                      // EMPTY_DICT
        case 't': {                                     // TUPLE
          auto v = make(Value::Kind::tuple);
          v->items = pop_mark();
          push(v);
          break;
        }
        case 0x85: case 0x86: case 0x87: {              // TUPLE1..3
          auto v = make(Value::Kind::tuple);
          const std::size_t n = op - 0x84u;
          if (stack_.size() < n) damaged(path_, "pickle stack underflow (TUPLEn)");
          v->items.assign(stack_.end() - static_cast<std::ptrdiff_t>(n), stack_.end());
          stack_.resize(stack_.size() - n);
          push(v);
          break;
        }
        case 'a': {                                     // APPEND
          auto item = pop("APPEND");
          expect(top("APPEND"), Value::Kind::list, "APPEND")->items.push_back(item);
          break;
        }
        case 'e': {                                     // APPENDS
          auto items = pop_mark();
          auto& list = expect(top("APPENDS"), Value::Kind::list, "APPENDS")->items;
          list.insert(list.end(), items.begin(), items.end());
          break;
        }
        case 's': {                                     // SETITEM
          auto value = pop("SETITEM");
          auto key = pop("SETITEM");
          auto& d = expect(top("SETITEM"), Value::Kind::dict, "SETITEM")->items;
          d.push_back(key);
          d.push_back(value);
          break;
        }
        case 'u': {                                     // SETITEMS
          auto items = pop_mark();
          if (items.size() % 2) damaged(path_, "SETITEMS with an odd number of items");
          auto& d = expect(top("SETITEMS"), Value::Kind::dict, "SETITEMS")->items;
          d.insert(d.end(), items.begin(), items.end());
          break;
        }
        case 'q': memo(le(take(1).data(), 1)); break;  // BINPUT
        case 'r': memo(le(take(4).data(), 4)); break;  // LONG_BINPUT
        case 0x94: memo(memo_.size()); break;          // MEMOIZE
        case 'h': push(recall(le(take(1).data(), 1))); break;  // BINGET
        case 'j': push(recall(le(take(4).data(), 4))); break;  // LONG_BINGET
        case 'c': {                                     // GLOBAL "module\nname\n"
          const auto module = line();
          const auto name = line();
          push_global(module, name);
          break;
        }
        case 0x93: {                                    // STACK_GLOBAL
          auto name = expect(pop("STACK_GLOBAL"), Value::Kind::string, "STACK_GLOBAL");
          auto module = expect(pop("STACK_GLOBAL"), Value::Kind::string, "STACK_GLOBAL");
          push_global(module->text, name->text);
          break;
        }
        case 'Q': push(persistent(pop("BINPERSID"))); break;  // BINPERSID
        case 'R': {                                     // REDUCE
          auto args = expect(pop("REDUCE"), Value::Kind::tuple, "REDUCE");
          auto callable = pop("REDUCE");
          push(reduce(callable, args->items));
          break;
        }
        case 0x81: {                                    // NEWOBJ: cls.__new__(cls, *args)
          pop("NEWOBJ");
          auto cls = pop("NEWOBJ");
          push(opaque(cls));
          break;
        }
        case 'b': {                                     // BUILD: state applied to the object
          pop("BUILD");
          const auto kind = top("BUILD")->kind;
          // OrderedDict's state is state_dict._metadata; an object's and a parameter's state
          // is of no use for the tensors.
          if (kind != Value::Kind::dict && kind != Value::Kind::object && kind != Value::Kind::tensor)
            damaged(path_, fmt::format("BUILD on a {}", kind_name(kind)));
          break;
        }
        case '0': pop("POP"); break;                    // POP
        default:
          unsupported(path_, fmt::format("pickle opcode 0x{:02x} at byte {} of data.pkl is outside what "
                                         "a state_dict uses",
                                         op, pos_ - 1));
      }
    }
  }

 private:
  ValuePtr make(Value::Kind kind) {
    auto v = std::make_shared<Value>();
    v->kind = kind;
    values_.push_back(v);
    return v;
  }
  std::string_view take(std::uint64_t n) {
    if (n > p_.size() - pos_) damaged(path_, "data.pkl ends in the middle of an instruction");
    const auto s = p_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  std::string line() {
    const auto end = p_.find('\n', pos_);
    if (end == std::string_view::npos) damaged(path_, "data.pkl ends in the middle of a GLOBAL");
    std::string s(p_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return s;
  }
  void push(ValuePtr v) {
    if (stack_.size() > 10'000'000) damaged(path_, "pickle stack too deep");
    stack_.push_back(std::move(v));
  }
  void push_int(std::int64_t i) {
    auto v = make(Value::Kind::integer);
    v->integer = i;
    push(v);
  }
  void push_string(std::string_view s) {
    auto v = make(Value::Kind::string);
    v->text = std::string(s);
    push(v);
  }
  ValuePtr pop(const char* op) {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back()))
      damaged(path_, fmt::format("pickle stack underflow ({})", op));
    auto v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  const ValuePtr& top(const char* op) {
    if (stack_.empty()) damaged(path_, fmt::format("pickle stack underflow ({})", op));
    return stack_.back();
  }
  std::vector<ValuePtr> pop_mark() {
    if (marks_.empty()) damaged(path_, "pickle MARK missing");
    const auto mark = marks_.back();
    marks_.pop_back();
    if (mark > stack_.size()) damaged(path_, "pickle MARK past the stack");
    std::vector<ValuePtr> items(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
    stack_.resize(mark);
    return items;
  }
  const ValuePtr& expect(const ValuePtr& v, Value::Kind kind, const char* op) {
    if (v->kind != kind)
      damaged(path_, fmt::format("{} expects a {}, found a {}", op, kind_name(kind), kind_name(v->kind)));
    return v;
  }
  void memo(std::uint64_t index) {
    if (index > p_.size()) damaged(path_, "pickle memo index out of range");
    if (memo_.size() <= index) memo_.resize(index + 1);
    memo_[index] = top("PUT");
  }
  ValuePtr recall(std::uint64_t index) {
    if (index >= memo_.size() || !memo_[index])
      damaged(path_, fmt::format("pickle memo {} read before written", index));
    return memo_[index];
  }
  void push_global(const std::string& module, const std::string& name) {
    auto v = make(Value::Kind::global);
    v->text = module + "." + name;
    push(v);
  }
  ValuePtr opaque(const ValuePtr& cls) {
    auto v = make(Value::Kind::object);
    v->text = cls->kind == Value::Kind::global ? cls->text : "?";
    return v;
  }

  static std::optional<std::vector<std::int64_t>> ints(const ValuePtr& v) {
    if (v->kind != Value::Kind::tuple && v->kind != Value::Kind::list) return std::nullopt;
    std::vector<std::int64_t> out;
    for (const auto& i : v->items) {
      if (i->kind != Value::Kind::integer) return std::nullopt;
      out.push_back(i->integer);
    }
    return out;
  }

  ValuePtr reduce(const ValuePtr& callable, const std::vector<ValuePtr>& args) {
    const std::string fn = callable->kind == Value::Kind::global ? callable->text : "";
    if (fn == "collections.OrderedDict") {
      if (!args.empty()) unsupported(path_, "an OrderedDict built from arguments");
      return make(Value::Kind::dict);
    }
    if (fn == "torch._utils._rebuild_tensor_v2" || fn == "torch._utils._rebuild_tensor")
      return rebuild_tensor(args);
    if (fn == "torch._utils._rebuild_parameter" || fn == "torch._utils._rebuild_parameter_with_state") {
      if (args.empty() || args[0]->kind != Value::Kind::tensor) damaged(path_, fmt::format("{} without a tensor", fn));
      return args[0];
    }
    // Anything else (an optimizer's hyper-parameter object, a numpy scalar, a whole module)
    // becomes an opaque value: skipped in a dict, refused at the top.
    return opaque(callable);
  }

  ValuePtr rebuild_tensor(const std::vector<ValuePtr>& args) {
    if (args.size() < 4 || args[0]->kind != Value::Kind::storage || args[1]->kind != Value::Kind::integer)
      damaged(path_, "_rebuild_tensor_v2 with unexpected arguments");
    const auto shape = ints(args[2]);
    const auto strides = ints(args[3]);
    if (!shape || !strides || shape->size() != strides->size())
      damaged(path_, "_rebuild_tensor_v2 with a bad size or stride");
    const Storage& storage = out_.storages.at(args[0]->text);
    std::int64_t last = args[1]->integer;  // the highest element index the view touches
    bool empty = false;
    for (std::size_t d = 0; d < shape->size(); ++d) {
      const auto n = (*shape)[d], s = (*strides)[d];
      if (n < 0 || s < 0) damaged(path_, "a tensor with a negative size or stride");
      if (n == 0) empty = true;
      else if (n > 1 && s > 0) {
        if ((n - 1) > (std::numeric_limits<std::int64_t>::max() - last) / s)
          damaged(path_, "a tensor whose extent overflows");
        last += (n - 1) * s;
      }
    }
    if (args[1]->integer < 0 || (!empty && static_cast<std::uint64_t>(last) >= storage.numel))
      damaged(path_, fmt::format("a tensor reaches past the end of storage '{}' ({} elements)", args[0]->text,
                                 storage.numel));
    auto v = make(Value::Kind::tensor);
    v->tensor.dtype = storage.dtype;
    v->tensor.shape = *shape;
    v->tensor.strides = *strides;
    v->tensor.storage_offset = args[1]->integer;
    v->tensor.storage = args[0]->text;
    return v;
  }

  ValuePtr persistent(const ValuePtr& pid) {
    const auto& a = pid->items;
    if (pid->kind != Value::Kind::tuple || a.size() < 5 || a[0]->kind != Value::Kind::string ||
        a[0]->text != "storage" || a[1]->kind != Value::Kind::global || a[2]->kind != Value::Kind::string ||
        a[4]->kind != Value::Kind::integer || a[4]->integer < 0)
      unsupported(path_, "a persistent id other than a tensor storage");
    const auto& cls = a[1]->text;
    const StorageRow* row = nullptr;
    for (const auto& r : kStorages)
      if (cls == std::string("torch.") + r.name) row = &r;
    if (!row) unsupported(path_, fmt::format("storage type '{}'", cls));
    const auto& key = a[2]->text;
    const auto numel = static_cast<std::uint64_t>(a[4]->integer);
    const auto found = out_.storages.find(key);
    if (found != out_.storages.end()) {
      if (found->second.dtype != row->dtype) damaged(path_, fmt::format("storage '{}' has two dtypes", key));
    } else {
      const ZipRecord* rec = zip_.find(prefix_ + "data/" + key);
      if (!rec) damaged(path_, fmt::format("storage record 'data/{}' is missing", key));
      const auto elem = st::dtype_size(row->dtype);
      if (numel > std::numeric_limits<std::uint64_t>::max() / elem || rec->data.size() != numel * elem)
        damaged(path_, fmt::format("storage 'data/{}' holds {} bytes, {} x {} expected", key, rec->data.size(),
                                   numel, elem));
      out_.storages.emplace(key, Storage{row->dtype, numel, rec->data});
    }
    auto v = make(Value::Kind::storage);
    v->text = key;
    return v;
  }

  std::string_view p_;
  std::size_t pos_ = 0;
  ZipReader& zip_;
  std::string prefix_;
  File& out_;
  const fs::path& path_;
  std::vector<ValuePtr> stack_;
  std::vector<std::size_t> marks_;
  std::vector<ValuePtr> memo_;
  std::vector<ValuePtr> values_;  // every value made, for the destructor
};

std::string key_text(const ValuePtr& k) {
  if (k->kind == Value::Kind::string) return k->text;
  if (k->kind == Value::Kind::integer) return std::to_string(k->integer);  // optimizer state
  return fmt::format("<{}>", kind_name(k->kind));
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
    } else if (v->kind == Value::Kind::tensor) {
      if (!seen.insert(name).second) unsupported(path, fmt::format("the name '{}' appears twice", name));
      out.tensors.push_back(v->tensor);
      out.tensors.back().name = name;
    } else {
      out.skipped.push_back(name);
    }
  }
}

}  // namespace

File read_state_dict(std::string_view pickle, ZipReader& zip, const std::string& prefix, const fs::path& path) {
  File out;
  Unpickler unpickler(pickle, zip, prefix, out, path);
  const ValuePtr top = unpickler.run();
  if (top->kind == Value::Kind::tensor) {  // torch.save(tensor): one unnamed tensor
    out.tensors.push_back(top->tensor);
  } else if (top->kind == Value::Kind::dict) {
    std::set<std::string> seen;
    std::size_t budget = 0;
    flatten(top, "", out, seen, 0, budget, path);
  } else {
    const std::string what = top->kind == Value::Kind::object ? fmt::format("an object '{}'", top->text)
                                                              : fmt::format("a {}", kind_name(top->kind));
    unsupported(path, fmt::format("it holds {}, not a dict of tensors (save model.state_dict())", what));
  }
  return out;
}

}  // namespace savepoint::pytorch::internal
