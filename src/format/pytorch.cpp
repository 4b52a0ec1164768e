// PyTorch files (Python's torch.save of a state_dict), read and written without LibTorch.
//
// Why our own code rather than LibTorch's: torch::jit::Unpickler (behind torch::pickle_load
// and readArchiveAndTensors) turns collections.OrderedDict — the type of every state_dict —
// into None and, on 1.13, has no SETITEM opcode, which Python emits for a dict of one key;
// and caffe2's PyTorchStreamReader does not check the zip's CRC-32. The subset a state_dict
// needs is small: stored zip records, ~35 pickle opcodes, three torch globals.
#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/format/pytorch.hpp>

#include <fmt/format.h>

#include <array>
#include <optional>
#include <cstring>
#include <limits>
#include <memory>
#include <set>
#include <unordered_map>

namespace savepoint::pytorch {

namespace fs = std::filesystem;
namespace st = safetensors;

namespace {

[[noreturn]] void damaged(const fs::path& path, const std::string& why) {
  detail::throw_corrupt(fmt::format("PyTorch file '{}' is damaged: {}", path.string(), why), path);
}
[[noreturn]] void unsupported(const fs::path& path, const std::string& why) {
  throw FormatVersionError(fmt::format("PyTorch file '{}' is not supported: {}", path.string(), why), path);
}

// ---------------------------------------------------------------- CRC-32 (zip's polynomial)
// Slicing-by-8: eight bytes per step (about 4x the byte-wise loop), so that checking a
// large file costs a fraction of reading it.
using CrcTables = std::array<std::array<std::uint32_t, 256>, 8>;
const CrcTables& crc_tables() {
  static const CrcTables tables = [] {
    CrcTables t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (std::size_t k = 1; k < 8; ++k)
      for (std::size_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFFu];
    return t;
  }();
  return tables;
}
std::uint32_t crc32(std::string_view bytes) {
  const auto& t = crc_tables();
  std::uint32_t c = 0xFFFFFFFFu;
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  std::size_t n = bytes.size();
  auto word = [](const unsigned char* q) {
    return std::uint32_t{q[0]} | std::uint32_t{q[1]} << 8 | std::uint32_t{q[2]} << 16 | std::uint32_t{q[3]} << 24;
  };
  for (; n >= 8; n -= 8, p += 8) {
    const std::uint32_t one = word(p) ^ c, two = word(p + 4);
    c = t[7][one & 0xFFu] ^ t[6][(one >> 8) & 0xFFu] ^ t[5][(one >> 16) & 0xFFu] ^ t[4][one >> 24] ^
        t[3][two & 0xFFu] ^ t[2][(two >> 8) & 0xFFu] ^ t[1][(two >> 16) & 0xFFu] ^ t[0][two >> 24];
  }
  for (; n > 0; --n, ++p) c = t[0][(c ^ *p) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

std::uint64_t le(const char* p, int n) {
  std::uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

// ---------------------------------------------------------------- zip (stored records)
struct Record {
  std::string_view data;
  std::uint32_t crc = 0;
  bool compressed = false;  // refused when read (a TorchScript archive compresses its code)
  bool checked = false;
};

class Zip {
 public:
  Zip(std::string_view bytes, const fs::path& path) : bytes_(bytes), path_(path) { read_directory(); }

  /// The record `name`, CRC-checked, or nullptr.
  const Record* find(const std::string& name) {
    const auto it = records_.find(name);
    if (it == records_.end()) return nullptr;
    Record& r = it->second;
    if (r.compressed)
      unsupported(path_, fmt::format("record '{}' is compressed (torch.save stores records uncompressed)", name));
    if (!r.checked) {
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION  // the fuzzer's mutations must reach the unpickler
      if (crc32(r.data) != r.crc) damaged(path_, fmt::format("record '{}' fails its CRC-32 check", name));
#endif
      r.checked = true;
    }
    return &r;
  }
  const std::unordered_map<std::string, Record>& records() const { return records_; }

 private:
  std::string_view at(std::uint64_t offset, std::uint64_t size, const char* what) const {
    if (offset > bytes_.size() || size > bytes_.size() - offset)
      damaged(path_, fmt::format("the {} lies outside the file (truncated?)", what));
    return bytes_.substr(offset, size);
  }

  void read_directory() {
    constexpr std::size_t kEocd = 22;
    if (bytes_.size() < kEocd) damaged(path_, "too short for a zip archive");
    std::size_t eocd = std::string_view::npos;
    const std::size_t lowest = bytes_.size() > kEocd + 0xFFFF ? bytes_.size() - kEocd - 0xFFFF : 0;
    for (std::size_t i = bytes_.size() - kEocd + 1; i-- > lowest;)
      if (le(bytes_.data() + i, 4) == 0x06054b50) {
        eocd = i;
        break;
      }
    if (eocd == std::string_view::npos) damaged(path_, "no zip end-of-directory record (truncated?)");
    const char* e = bytes_.data() + eocd;
    std::uint64_t entries = le(e + 10, 2), dir_size = le(e + 12, 4), dir_offset = le(e + 16, 4);
    if (entries == 0xFFFF || dir_size == 0xFFFFFFFF || dir_offset == 0xFFFFFFFF) {  // zip64
      if (eocd < 20 || le(e - 20, 4) != 0x07064b50) damaged(path_, "zip64 locator missing");
      const auto z = at(le(e - 20 + 8, 8), 56, "zip64 end-of-directory record");
      if (le(z.data(), 4) != 0x06064b50) damaged(path_, "bad zip64 end-of-directory record");
      entries = le(z.data() + 32, 8);
      dir_size = le(z.data() + 40, 8);
      dir_offset = le(z.data() + 48, 8);
    }
    const auto dir = at(dir_offset, dir_size, "zip central directory");
    std::size_t pos = 0;
    for (std::uint64_t n = 0; n < entries; ++n) {
      if (dir.size() - pos < 46 || le(dir.data() + pos, 4) != 0x02014b50)
        damaged(path_, "bad zip central directory entry");
      const char* c = dir.data() + pos;
      const auto method = le(c + 10, 2);
      const auto crc = static_cast<std::uint32_t>(le(c + 16, 4));
      std::uint64_t comp = le(c + 20, 4), size = le(c + 24, 4), local = le(c + 42, 4);
      const auto name_len = le(c + 28, 2), extra_len = le(c + 30, 2), comment_len = le(c + 32, 2);
      if (dir.size() - pos - 46 < name_len + extra_len + comment_len) damaged(path_, "bad zip central directory entry");
      std::string name(c + 46, name_len);
      // zip64: the fields set to 0xFFFFFFFF follow in the extra field 0x0001, in this order
      for (std::size_t x = 0; x + 4 <= extra_len;) {
        const char* f = c + 46 + name_len + x;
        const auto id = le(f, 2), len = le(f + 2, 2);
        if (x + 4 + len > extra_len) damaged(path_, "bad zip extra field");
        if (id == 0x0001) {
          std::size_t k = 4;
          auto next = [&](std::uint64_t& v) {
            if (v != 0xFFFFFFFF) return;
            if (k + 8 > 4 + len) damaged(path_, "bad zip64 extra field");
            v = le(f + k, 8);
            k += 8;
          };
          next(size);
          next(comp);
          next(local);
        }
        x += 4 + len;
      }
      if (method == 0 && comp != size) damaged(path_, fmt::format("record '{}' has inconsistent sizes", name));
      const auto header = at(local, 30, "zip local header");
      if (le(header.data(), 4) != 0x04034b50) damaged(path_, fmt::format("record '{}' has a bad local header", name));
      const auto data_start = local + 30 + le(header.data() + 26, 2) + le(header.data() + 28, 2);
      const auto data = at(data_start, comp, ("record '" + name + "'").c_str());
      if (!records_.emplace(name, Record{data, crc, method != 0}).second)
        damaged(path_, fmt::format("record '{}' appears twice", name));
      pos += 46 + name_len + extra_len + comment_len;
    }
  }

  std::string_view bytes_;
  const fs::path& path_;
  std::unordered_map<std::string, Record> records_;
};

// ---------------------------------------------------------------- the storage classes
struct StorageRow {
  DType dtype;
  const char* name;
};
constexpr StorageRow kStorages[] = {
    {DType::F32, "FloatStorage"},   {DType::F64, "DoubleStorage"},  {DType::F16, "HalfStorage"},
    {DType::BF16, "BFloat16Storage"}, {DType::I64, "LongStorage"},  {DType::I32, "IntStorage"},
    {DType::I16, "ShortStorage"},   {DType::I8, "CharStorage"},     {DType::U8, "ByteStorage"},
    {DType::BOOL, "BoolStorage"},   {DType::C64, "ComplexFloatStorage"},
};

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
ValuePtr make(Value::Kind kind) {
  auto v = std::make_shared<Value>();
  v->kind = kind;
  return v;
}

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
  Unpickler(std::string_view pickle, Zip& zip, std::string prefix, File& out, const fs::path& path)
      : p_(pickle), zip_(zip), prefix_(std::move(prefix)), out_(out), path_(path) {}

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
      const Record* rec = zip_.find(prefix_ + "data/" + key);
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
  Zip& zip_;
  std::string prefix_;
  File& out_;
  const fs::path& path_;
  std::vector<ValuePtr> stack_;
  std::vector<std::size_t> marks_;
  std::vector<ValuePtr> memo_;
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

const char* storage_class(DType dtype) noexcept {
  for (const auto& r : kStorages)
    if (r.dtype == dtype) return r.name;
  return nullptr;
}

bool looks_like_pytorch(std::string_view bytes) noexcept {
  return bytes.size() >= 4 && bytes.substr(0, 4) == std::string_view("PK\x03\x04", 4);
}

File parse(std::string_view file_bytes, const fs::path& path) {
  if (!looks_like_pytorch(file_bytes)) {
    if (file_bytes.size() >= 2 && static_cast<unsigned char>(file_bytes[0]) == 0x80)
      unsupported(path, "it is in the legacy format (torch.save before 1.6, or "
                        "_use_new_zipfile_serialization=False); save it again with a current torch");
    damaged(path, "not a zip archive");
  }
  Zip zip(file_bytes, path);
  std::string prefix;
  int pickles = 0;
  for (const auto& [name, rec] : zip.records()) {
    const auto slash = name.find('/');
    if (slash != std::string::npos && name.compare(slash, std::string::npos, "/data.pkl") == 0) {
      prefix = name.substr(0, slash + 1);
      ++pickles;
    }
  }
  if (pickles != 1) {
    unsupported(path, pickles ? "several data.pkl records"
                              : "no data.pkl record (a TorchScript archive? open it with torch::jit::load)");
  }
  if (zip.records().count(prefix + "constants.pkl"))
    unsupported(path, "it is a TorchScript archive (torch.jit.save / torch::save(module)); open it with "
                      "torch::jit::load, or save model.state_dict() from Python");
  if (const Record* order = zip.find(prefix + "byteorder"); order && order->data != "little")
    unsupported(path, fmt::format("byte order '{}' (only little-endian is supported)", std::string(order->data)));
  File out;
  Unpickler unpickler(zip.find(prefix + "data.pkl")->data, zip, prefix, out, path);
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

// ---------------------------------------------------------------- writer

namespace {
class Pickler {
 public:
  std::string bytes;
  void op(char c) { bytes.push_back(c); }
  void u32(std::uint64_t v) {
    for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  }
  void integer(std::int64_t v) {
    if (v >= std::numeric_limits<std::int32_t>::min() && v <= std::numeric_limits<std::int32_t>::max()) {
      op('J');
      u32(static_cast<std::uint32_t>(static_cast<std::int32_t>(v)));
    } else {
      op('\x8a');
      op('\x08');
      for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((static_cast<std::uint64_t>(v) >> (8 * i)) & 0xFF));
    }
  }
  void string(std::string_view s) {
    op('X');
    u32(s.size());
    bytes.append(s);
  }
  void global(const char* module, const char* name) { bytes += fmt::format("c{}\n{}\n", module, name); }
  void ints(const std::vector<std::int64_t>& v) {
    op('(');
    for (const auto i : v) integer(i);
    op('t');
  }
};

struct ZipWriter {
  detail::FileWriter out;
  std::uint64_t offset = 0;
  struct Entry {
    std::string name;
    std::uint32_t crc;
    std::uint64_t size;
    std::uint64_t offset;
  };
  std::vector<Entry> entries;

  explicit ZipWriter(const fs::path& path) : out(path) {}

  void put(std::string_view s) {
    out.write(s);
    offset += s.size();
  }
  static std::string le_bytes(std::uint64_t v, int n) {
    std::string s;
    for (int i = 0; i < n; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
    return s;
  }
  // A stored record whose data starts at a multiple of 64 bytes, as LibTorch writes them
  // (the padding is an extra field 'FB', like PyTorchStreamWriter's).
  void add(const std::string& name, std::string_view data) {
    Entry e{name, crc32(data), data.size(), offset};
    std::uint64_t pad = (64 - (offset + 30 + name.size()) % 64) % 64;
    if (pad != 0 && pad < 4) pad += 64;
    std::string h = le_bytes(0x04034b50, 4) + le_bytes(20, 2) + le_bytes(0, 2) + le_bytes(0, 2) + le_bytes(0, 2) +
                    le_bytes(0x21, 2) /*date 1980-01-01*/ + le_bytes(e.crc, 4) + le_bytes(e.size, 4) +
                    le_bytes(e.size, 4) + le_bytes(name.size(), 2) + le_bytes(pad, 2) + name;
    if (pad) h += le_bytes(0x4246, 2) + le_bytes(pad - 4, 2) + std::string(pad - 4, 'Z');
    put(h);
    put(data);
    entries.push_back(std::move(e));
  }
  void finish() {
    const std::uint64_t dir_offset = offset;
    for (const auto& e : entries) {
      put(le_bytes(0x02014b50, 4) + le_bytes(20, 2) + le_bytes(20, 2) + le_bytes(0, 2) + le_bytes(0, 2) +
          le_bytes(0, 2) + le_bytes(0x21, 2) + le_bytes(e.crc, 4) + le_bytes(e.size, 4) + le_bytes(e.size, 4) +
          le_bytes(e.name.size(), 2) + le_bytes(0, 2) + le_bytes(0, 2) + le_bytes(0, 2) + le_bytes(0, 2) +
          le_bytes(0, 4) + le_bytes(e.offset, 4) + e.name);
    }
    const std::uint64_t dir_size = offset - dir_offset;
    put(le_bytes(0x06054b50, 4) + le_bytes(0, 2) + le_bytes(0, 2) + le_bytes(entries.size(), 2) +
        le_bytes(entries.size(), 2) + le_bytes(dir_size, 4) + le_bytes(dir_offset, 4) + le_bytes(0, 2));
    out.finish();
  }
};
}  // namespace

void write(const fs::path& file, const std::vector<TensorBytes>& tensors) {
  std::set<std::string> names;
  std::uint64_t total = 0;
  Pickler p;
  p.op('\x80');
  p.op('\x02');
  p.op('}');
  p.op('(');
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    const char* cls = storage_class(t.dtype);
    if (!cls)
      detail::throw_usage(fmt::format("savepoint: tensor '{}' has dtype {}, which PyTorch files cannot store", t.name,
                                      st::dtype_name(t.dtype)));
    if (!names.insert(t.name).second)
      detail::throw_usage(fmt::format("savepoint: tensor name '{}' given twice", t.name));
    std::uint64_t numel = 1;
    std::vector<std::int64_t> strides(t.shape.size());
    for (std::size_t d = t.shape.size(); d-- > 0;) {
      strides[d] = static_cast<std::int64_t>(numel);
      numel *= static_cast<std::uint64_t>(t.shape[d]);
    }
    if (numel * st::dtype_size(t.dtype) != t.bytes.size())
      detail::throw_usage(fmt::format("savepoint: tensor '{}' has {} bytes for {} elements of {}", t.name,
                                      t.bytes.size(), numel, st::dtype_name(t.dtype)));
    total += t.bytes.size() + 256;
    // name: _rebuild_tensor_v2(pid, offset, size, stride, requires_grad, OrderedDict())
    p.string(t.name);
    p.global("torch._utils", "_rebuild_tensor_v2");
    p.op('(');
    p.op('(');
    p.string("storage");
    p.global("torch", cls);
    p.string(std::to_string(i));
    p.string("cpu");
    p.integer(static_cast<std::int64_t>(numel));
    p.op('t');
    p.op('Q');
    p.integer(0);
    p.ints(t.shape);
    p.ints(strides);
    p.op('\x89');
    p.global("collections", "OrderedDict");
    p.op(')');
    p.op('R');
    p.op('t');
    p.op('R');
  }
  p.op('u');
  p.op('.');
  if (total + p.bytes.size() >= 0xFFFFFFFFu)
    detail::throw_usage(fmt::format("savepoint: '{}' would exceed 4 GiB, which needs zip64 (not written yet); "
                                    "export the model in parts",
                                    file.string()));
  ZipWriter zip(file);
  zip.add("archive/data.pkl", p.bytes);
  zip.add("archive/byteorder", "little");
  for (std::size_t i = 0; i < tensors.size(); ++i) zip.add("archive/data/" + std::to_string(i), tensors[i].bytes);
  zip.add("archive/version", "3\n");
  zip.finish();
}

void export_key(const Checkpoint& checkpoint, const std::string& key, const fs::path& file) {
  const FileRecord* rec = checkpoint.file(key);
  if (!rec) {
    throw MissingKeyError(fmt::format("checkpoint '{}' has no key '{}'", checkpoint.path.string(), key),
                          checkpoint.path, key);
  }
  const auto contents = detail::open_verified(checkpoint, *rec);
  const auto header = st::parse(contents->bytes(), checkpoint.path / rec->file);
  std::vector<TensorBytes> tensors;
  for (const auto& info : header.tensors)
    tensors.push_back({info.name, info.dtype, info.shape,
                       contents->bytes().substr(header.data_start + info.begin, info.nbytes())});
  write(file, tensors);
}

}  // namespace savepoint::pytorch
