// format/pickle.hpp — Python's pickle, read into a tree of values without running anything, and
// written for the few shapes savepoint emits (private to src/format).
//
// The machine knows the ~40 opcodes protocols 2-5 use for data; what a global, a call
// (REDUCE), an object construction (NEWOBJ) or a persistent id means is the caller's: a
// Policy. Nothing is ever imported or executed, so an unknown class is data to refuse, never
// code (the restricted unpickling both PyTorch files and DCP's .metadata are read with).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace savepoint::pickle {

namespace fs = std::filesystem;

struct Value;
using ValuePtr = std::shared_ptr<Value>;
struct Value {
  enum class Kind { none, boolean, integer, real, string, bytes, tuple, list, dict, global, object, opaque };
  Kind kind = Kind::none;
  std::int64_t integer = 0;     // boolean, integer
  double real = 0;              // real
  std::string text;             // string, bytes; global/object: "module.name"
  std::vector<ValuePtr> items;  // tuple, list; dict: key, value, key, value...; object: its args
  ValuePtr state;               // object: what BUILD gave it (a dict, a tuple...), or null
  std::shared_ptr<void> payload;  // a policy's own value (a tensor, a storage), kind opaque

  /// The dict entry of string `key`, or null (dict only).
  ValuePtr get(std::string_view key) const;
};
const char* kind_name(Value::Kind kind);

/// What the globals and calls of a pickle mean. The defaults keep them as data: a global is
/// a Kind::global "module.name", NEWOBJ and REDUCE make a Kind::object of that class with its
/// arguments, BUILD stores the state in the object. Throw to refuse.
class Policy {
 public:
  virtual ~Policy() = default;
  virtual ValuePtr global(class Machine& m, const std::string& module, const std::string& name);
  virtual ValuePtr reduce(class Machine& m, const ValuePtr& callable, const ValuePtr& args);
  virtual ValuePtr newobj(class Machine& m, const ValuePtr& cls, const ValuePtr& args);
  virtual void build(class Machine& m, const ValuePtr& object, const ValuePtr& state);
  /// BINPERSID: refused unless overridden.
  virtual ValuePtr persistent(class Machine& m, const ValuePtr& pid);
};

/// Runs one pickle. Errors read "<what> '<path>' is damaged: ..." (`path` must outlive the
/// machine; `what` names the kind of file: "PyTorch file"): a malformed pickle throws
/// CorruptCheckpointError, a valid one outside the subset FormatVersionError.
class Machine {
 public:
  Machine(std::string_view pickle, Policy& policy, const fs::path& path, std::string what);
  // A pickle can make a list or dict contain itself (through the memo): shared pointers would
  // then keep each other alive. Clearing every value's items at the end breaks such circles.
  ~Machine();
  Machine(const Machine&) = delete;
  Machine& operator=(const Machine&) = delete;

  /// The value STOP returns.
  ValuePtr run();

  ValuePtr make(Value::Kind kind);
  [[noreturn]] void damaged(const std::string& why) const;
  [[noreturn]] void unsupported(const std::string& why) const;
  const fs::path& path() const noexcept { return path_; }

 private:
  std::string_view take(std::uint64_t n);
  std::string line();
  void push(ValuePtr v);
  ValuePtr pop(const char* op);
  const ValuePtr& top(const char* op);
  std::vector<ValuePtr> pop_mark();
  const ValuePtr& expect(const ValuePtr& v, Value::Kind kind, const char* op);
  void memo(std::uint64_t index);
  ValuePtr recall(std::uint64_t index);

  std::string_view p_;
  std::size_t pos_ = 0;
  Policy& policy_;
  const fs::path& path_;
  std::string what_;
  std::vector<ValuePtr> stack_;
  std::vector<std::size_t> marks_;
  std::vector<ValuePtr> memo_;
  std::vector<ValuePtr> values_;  // every value made, for the destructor
};

/// The integers of a tuple or list of integers, or false.
bool ints_of(const ValuePtr& v, std::vector<std::int64_t>& out);

/// A pickle being written (protocol 2 opcodes, no memo: what savepoint writes holds no shared
/// objects). Call the pieces in pickle's postfix order, then stop().
class Writer {
 public:
  Writer();  ///< PROTO 2
  void none();
  void boolean(bool v);
  void integer(std::int64_t v);
  void real(double v);
  void string(std::string_view s);
  void global(std::string_view module, std::string_view name);
  void ints(const std::vector<std::int64_t>& v);  ///< a tuple of integers
  void mark() { op('('); }
  void tuple() { op('t'); }  ///< the items since the mark
  void empty_tuple() { op(')'); }
  void empty_dict() { op('}'); }
  void empty_list() { op(']'); }
  void set_items() { op('u'); }  ///< key, value pairs since the mark into the dict below it
  void appends() { op('e'); }    ///< items since the mark onto the list below it
  void reduce() { op('R'); }     ///< callable, args tuple -> call
  void newobj() { op('\x81'); }  ///< cls, args tuple -> cls.__new__(cls, *args)
  void build() { op('b'); }      ///< object, state -> object with state
  void persistent_id() { op('Q'); }
  const std::string& stop();  ///< STOP; the finished bytes

 private:
  void op(char c) { bytes_.push_back(c); }
  void u32(std::uint64_t v);
  std::string bytes_;
};

}  // namespace savepoint::pickle
