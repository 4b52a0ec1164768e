// The pickle machine and writer of format/pickle.hpp: data opcodes only, globals and calls
// left to a Policy, nothing imported or run.
#include "pickle.hpp"

#include <savepoint/errors.hpp>

#include <fmt/format.h>

#include <cstring>
#include <limits>

namespace savepoint::pickle {

namespace {
std::uint64_t le(const char* p, int n) {
  std::uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
}  // namespace

ValuePtr Value::get(std::string_view key) const {
  for (std::size_t i = 0; i + 1 < items.size(); i += 2)
    if (items[i]->kind == Kind::string && items[i]->text == key) return items[i + 1];
  return nullptr;
}

const char* kind_name(Value::Kind k) {
  switch (k) {
    case Value::Kind::none: return "None";
    case Value::Kind::boolean: return "bool";
    case Value::Kind::integer: return "int";
    case Value::Kind::real: return "float";
    case Value::Kind::string: return "str";
    case Value::Kind::bytes: return "bytes";
    case Value::Kind::tuple: return "tuple";
    case Value::Kind::list: return "list";
    case Value::Kind::dict: return "dict";
    case Value::Kind::global: return "global";
    case Value::Kind::object: return "object";
    case Value::Kind::opaque: return "object";
  }
  return "?";
}

bool ints_of(const ValuePtr& v, std::vector<std::int64_t>& out) {
  out.clear();
  if (!v || (v->kind != Value::Kind::tuple && v->kind != Value::Kind::list)) return false;
  for (const auto& i : v->items) {
    if (i->kind != Value::Kind::integer) return false;
    out.push_back(i->integer);
  }
  return true;
}

// ---------------------------------------------------------------- the default policy
ValuePtr Policy::global(Machine& m, const std::string& module, const std::string& name) {
  auto v = m.make(Value::Kind::global);
  v->text = module + "." + name;
  return v;
}
ValuePtr Policy::reduce(Machine& m, const ValuePtr& callable, const ValuePtr& args) {
  auto v = m.make(Value::Kind::object);
  v->text = callable->kind == Value::Kind::global ? callable->text : "?";
  v->items = args->items;
  return v;
}
ValuePtr Policy::newobj(Machine& m, const ValuePtr& cls, const ValuePtr& args) { return reduce(m, cls, args); }
void Policy::build(Machine& m, const ValuePtr& object, const ValuePtr& state) {
  if (object->kind != Value::Kind::object) m.damaged(fmt::format("BUILD on a {}", kind_name(object->kind)));
  object->state = state;
}
ValuePtr Policy::persistent(Machine& m, const ValuePtr&) { m.unsupported("a persistent id"); }

// ---------------------------------------------------------------- the machine
Machine::Machine(std::string_view pickle, Policy& policy, const fs::path& path, std::string what)
    : p_(pickle), policy_(policy), path_(path), what_(std::move(what)) {}

Machine::~Machine() {
  for (const auto& v : values_) {
    v->items.clear();
    v->state.reset();
  }
}

void Machine::damaged(const std::string& why) const {
  detail::throw_corrupt(fmt::format("{} '{}' is damaged: {}", what_, path_.string(), why), path_);
}
void Machine::unsupported(const std::string& why) const {
  throw FormatVersionError(fmt::format("{} '{}' is not supported: {}", what_, path_.string(), why), path_);
}

ValuePtr Machine::make(Value::Kind kind) {
  if (values_.size() > 50'000'000) damaged("more than 50 million values");
  auto v = std::make_shared<Value>();
  v->kind = kind;
  values_.push_back(v);
  return v;
}

ValuePtr Machine::run() {
  const auto push_int = [this](std::int64_t i) {
    auto v = make(Value::Kind::integer);
    v->integer = i;
    push(v);
  };
  const auto push_text = [this](Value::Kind kind, std::string_view s) {
    auto v = make(kind);
    v->text = std::string(s);
    push(v);
  };
  const auto container = [this](Value::Kind kind, std::vector<ValuePtr> items) {
    auto v = make(kind);
    v->items = std::move(items);
    push(v);
  };
  while (true) {
    const auto at = pos_;
    const auto op = static_cast<unsigned char>(take(1)[0]);
    switch (op) {
      case 0x80: take(1); break;                         // PROTO
      case 0x95: take(8); break;                         // FRAME (we hold the whole pickle)
      case '.': {                                        // STOP
        auto v = pop("STOP");
        return v;
      }
      case '(': marks_.push_back(stack_.size()); break;  // MARK
      case 'N': push(make(Value::Kind::none)); break;
      case 0x88: case 0x89: {                            // NEWTRUE, NEWFALSE
        auto v = make(Value::Kind::boolean);
        v->integer = op == 0x88;
        push(v);
        break;
      }
      case 'J': push_int(static_cast<std::int32_t>(le(take(4).data(), 4))); break;  // BININT
      case 'K': push_int(static_cast<std::int64_t>(le(take(1).data(), 1))); break;  // BININT1
      case 'M': push_int(static_cast<std::int64_t>(le(take(2).data(), 2))); break;  // BININT2
      case 0x8a: {                                       // LONG1
        const auto n = static_cast<std::size_t>(le(take(1).data(), 1));
        if (n > 8) unsupported("an integer wider than 64 bits");
        const auto b = take(n);
        std::uint64_t v = n ? le(b.data(), static_cast<int>(n)) : 0;
        if (n > 0 && n < 8 && (static_cast<unsigned char>(b[n - 1]) & 0x80)) v |= ~std::uint64_t{0} << (8 * n);
        push_int(static_cast<std::int64_t>(v));
        break;
      }
      case 'G': {                                        // BINFLOAT: a big-endian double
        const auto b = take(8);
        std::uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | static_cast<unsigned char>(b[i]);
        auto v = make(Value::Kind::real);
        std::memcpy(&v->real, &bits, sizeof bits);
        push(v);
        break;
      }
      case 'X': push_text(Value::Kind::string, take(le(take(4).data(), 4))); break;   // BINUNICODE
      case 0x8c: push_text(Value::Kind::string, take(le(take(1).data(), 1))); break;  // SHORT_BINUNICODE
      case 0x8d: push_text(Value::Kind::string, take(le(take(8).data(), 8))); break;  // BINUNICODE8
      case 'C': push_text(Value::Kind::bytes, take(le(take(1).data(), 1))); break;    // SHORT_BINBYTES
      case 'B': push_text(Value::Kind::bytes, take(le(take(4).data(), 4))); break;    // BINBYTES
      case 0x8e: push_text(Value::Kind::bytes, take(le(take(8).data(), 8))); break;   // BINBYTES8
      case ')': push(make(Value::Kind::tuple)); break;   // EMPTY_TUPLE
      case ']': push(make(Value::Kind::list)); break;    // EMPTY_LIST
      case '}': push(make(Value::Kind::dict)); break;    // EMPTY_DICT
      case 't': container(Value::Kind::tuple, pop_mark()); break;  // TUPLE
      case 'l': container(Value::Kind::list, pop_mark()); break;   // LIST
      case 'd': {                                                  // DICT
        auto items = pop_mark();
        if (items.size() % 2) damaged("DICT with an odd number of items");
        container(Value::Kind::dict, std::move(items));
        break;
      }
      case 0x85: case 0x86: case 0x87: {                 // TUPLE1..3
        const std::size_t n = op - 0x84u;
        std::vector<ValuePtr> items(n);
        for (std::size_t i = n; i-- > 0;) items[i] = pop("TUPLEn");
        container(Value::Kind::tuple, std::move(items));
        break;
      }
      case 'a': {                                        // APPEND
        auto item = pop("APPEND");
        expect(top("APPEND"), Value::Kind::list, "APPEND")->items.push_back(item);
        break;
      }
      case 'e': {                                        // APPENDS
        auto items = pop_mark();
        auto& list = expect(top("APPENDS"), Value::Kind::list, "APPENDS")->items;
        list.insert(list.end(), items.begin(), items.end());
        break;
      }
      case 's': {                                        // SETITEM
        auto value = pop("SETITEM");
        auto key = pop("SETITEM");
        auto& d = expect(top("SETITEM"), Value::Kind::dict, "SETITEM")->items;
        d.push_back(key);
        d.push_back(value);
        break;
      }
      case 'u': {                                        // SETITEMS
        auto items = pop_mark();
        if (items.size() % 2) damaged("SETITEMS with an odd number of items");
        auto& d = expect(top("SETITEMS"), Value::Kind::dict, "SETITEMS")->items;
        d.insert(d.end(), items.begin(), items.end());
        break;
      }
      case 'q': memo(le(take(1).data(), 1)); break;     // BINPUT
      case 'r': memo(le(take(4).data(), 4)); break;     // LONG_BINPUT
      case 0x94: memo(memo_.size()); break;             // MEMOIZE
      case 'h': push(recall(le(take(1).data(), 1))); break;  // BINGET
      case 'j': push(recall(le(take(4).data(), 4))); break;  // LONG_BINGET
      case 'c': {                                        // GLOBAL "module\nname\n"
        const auto module = line();
        const auto name = line();
        push(policy_.global(*this, module, name));
        break;
      }
      case 0x93: {                                       // STACK_GLOBAL
        auto name = expect(pop("STACK_GLOBAL"), Value::Kind::string, "STACK_GLOBAL");
        auto module = expect(pop("STACK_GLOBAL"), Value::Kind::string, "STACK_GLOBAL");
        push(policy_.global(*this, module->text, name->text));
        break;
      }
      case 'Q': push(policy_.persistent(*this, pop("BINPERSID"))); break;  // BINPERSID
      case 'R': {                                        // REDUCE
        auto args = expect(pop("REDUCE"), Value::Kind::tuple, "REDUCE");
        auto callable = pop("REDUCE");
        push(policy_.reduce(*this, callable, args));
        break;
      }
      case 0x81: {                                       // NEWOBJ: cls.__new__(cls, *args)
        auto args = expect(pop("NEWOBJ"), Value::Kind::tuple, "NEWOBJ");
        auto cls = pop("NEWOBJ");
        push(policy_.newobj(*this, cls, args));
        break;
      }
      case 'b': {                                        // BUILD: state applied to the object
        auto state = pop("BUILD");
        policy_.build(*this, top("BUILD"), state);
        break;
      }
      case '0': pop("POP"); break;                       // POP
      default:
        unsupported(fmt::format("pickle opcode 0x{:02x} at byte {}", op, at));
    }
  }
}

std::string_view Machine::take(std::uint64_t n) {
  if (n > p_.size() - pos_) damaged("the pickle ends in the middle of an instruction");
  const auto s = p_.substr(pos_, n);
  pos_ += n;
  return s;
}
std::string Machine::line() {
  const auto end = p_.find('\n', pos_);
  if (end == std::string_view::npos) damaged("the pickle ends in the middle of a GLOBAL");
  std::string s(p_.substr(pos_, end - pos_));
  pos_ = end + 1;
  return s;
}
void Machine::push(ValuePtr v) {
  if (stack_.size() > 10'000'000) damaged("pickle stack too deep");
  stack_.push_back(std::move(v));
}
ValuePtr Machine::pop(const char* op) {
  if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back()))
    damaged(fmt::format("pickle stack underflow ({})", op));
  auto v = std::move(stack_.back());
  stack_.pop_back();
  return v;
}
const ValuePtr& Machine::top(const char* op) {
  if (stack_.empty()) damaged(fmt::format("pickle stack underflow ({})", op));
  return stack_.back();
}
std::vector<ValuePtr> Machine::pop_mark() {
  if (marks_.empty()) damaged("pickle MARK missing");
  const auto mark = marks_.back();
  marks_.pop_back();
  if (mark > stack_.size()) damaged("pickle MARK past the stack");
  std::vector<ValuePtr> items(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
  stack_.resize(mark);
  return items;
}
const ValuePtr& Machine::expect(const ValuePtr& v, Value::Kind kind, const char* op) {
  if (v->kind != kind) damaged(fmt::format("{} expects a {}, found a {}", op, kind_name(kind), kind_name(v->kind)));
  return v;
}
void Machine::memo(std::uint64_t index) {
  if (index > p_.size()) damaged("pickle memo index out of range");
  if (memo_.size() <= index) memo_.resize(index + 1);
  memo_[index] = top("PUT");
}
ValuePtr Machine::recall(std::uint64_t index) {
  if (index >= memo_.size() || !memo_[index]) damaged(fmt::format("pickle memo {} read before written", index));
  return memo_[index];
}

// ---------------------------------------------------------------- the writer
Writer::Writer() {
  op('\x80');
  op('\x02');
}
void Writer::u32(std::uint64_t v) {
  for (int i = 0; i < 4; ++i) bytes_.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void Writer::none() { op('N'); }
void Writer::boolean(bool v) { op(v ? '\x88' : '\x89'); }
void Writer::integer(std::int64_t v) {
  if (v >= std::numeric_limits<std::int32_t>::min() && v <= std::numeric_limits<std::int32_t>::max()) {
    op('J');
    u32(static_cast<std::uint32_t>(static_cast<std::int32_t>(v)));
  } else {
    op('\x8a');
    op('\x08');
    for (int i = 0; i < 8; ++i) bytes_.push_back(static_cast<char>((static_cast<std::uint64_t>(v) >> (8 * i)) & 0xFF));
  }
}
void Writer::real(double v) {
  std::uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof bits);
  op('G');
  for (int i = 7; i >= 0; --i) bytes_.push_back(static_cast<char>((bits >> (8 * i)) & 0xFF));
}
void Writer::string(std::string_view s) {
  op('X');
  u32(s.size());
  bytes_.append(s);
}
void Writer::global(std::string_view module, std::string_view name) {
  bytes_ += fmt::format("c{}\n{}\n", module, name);
}
void Writer::ints(const std::vector<std::int64_t>& v) {
  op('(');
  for (const auto i : v) integer(i);
  op('t');
}
const std::string& Writer::stop() {
  op('.');
  return bytes_;
}

}  // namespace savepoint::pickle
