// The hook table and the non-template parts of hook resolution.
#include <savepoint/detail/io.hpp>
#include <savepoint/hooks.hpp>

#include <cxxabi.h>
#include <fmt/format.h>

#include <cstdlib>

namespace savepoint {

std::string_view LoadContext::bytes() const {
  return contents ? contents->bytes() : std::string_view();
}

void HookTable::add_entry(Entry entry) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& e : entries_) {
    if (e.type == entry.type) {
      e = std::move(entry);
      return;
    }
  }
  entries_.push_back(std::move(entry));
}

std::optional<std::pair<TypeHooks, void*>> HookTable::find_impl(
    std::type_index type, const std::function<void()>& thrower, bool exact_only) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (exact_only) {
    for (const auto& e : entries_) {
      if (e.type != type) continue;
      void* out = nullptr;
      if (e.catch_as(thrower, &out)) return std::make_pair(e.hooks, out);
    }
    return std::nullopt;
  }
  // All registered bases of the object's type; then keep the most derived one.
  std::vector<std::pair<const Entry*, void*>> matches;
  for (const auto& e : entries_) {
    void* out = nullptr;
    if (e.catch_as(thrower, &out)) matches.emplace_back(&e, out);
  }
  if (matches.empty()) return std::nullopt;
  const auto derives_from = [](const Entry* derived, const Entry* base) {
    void* ignored = nullptr;
    return base->catch_as(derived->throw_null, &ignored);
  };
  const std::pair<const Entry*, void*>* best = &matches.front();
  for (const auto& m : matches)
    if (m.first != best->first && derives_from(m.first, best->first)) best = &m;
  for (const auto& m : matches) {
    if (m.first != best->first && !derives_from(best->first, m.first)) {
      throw UsageError(fmt::format(
          "savepoint: type {} inherits from two registered types ({} and {}) and it is "
          "ambiguous which hooks apply; register hooks for {} itself",
          detail::demangle(type.name()), best->first->hooks.name, m.first->hooks.name,
          detail::demangle(type.name())));
    }
  }
  return std::make_pair(best->first->hooks, best->second);
}

std::vector<std::string> HookTable::names() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::string> out;
  for (const auto& e : entries_) out.push_back(e.hooks.name);
  return out;
}

bool HookTable::is_builtin(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& e : entries_)
    if (e.hooks.name == name) return e.hooks.builtin;
  return false;
}

HookTable& hook_table() {
  static HookTable* table = new HookTable();  // leaked on purpose: usable from static destructors
  return *table;
}

namespace detail {

void validate_key(const std::string& key) {
  if (key.empty()) throw_usage("savepoint: a recoverable key must not be empty");
  if (key.find('\0') != std::string::npos)
    throw_usage("savepoint: recoverable key contains a NUL character");
  if (key.find('/') != std::string::npos || key.find('\\') != std::string::npos)
    throw_usage(fmt::format("savepoint: recoverable key '{}' must not contain a path separator",
                            key));
  if (key == "." || key == ".." || key.find("..") != std::string::npos)
    throw_usage(fmt::format("savepoint: recoverable key '{}' must not contain '..'", key));
  if (key.front() == '.')
    throw_usage(fmt::format("savepoint: recoverable key '{}' must not start with '.'", key));
  if (key.size() > 200)
    throw_usage(fmt::format("savepoint: recoverable key '{}...' is longer than 200 characters",
                            key.substr(0, 40)));
}

std::string demangle(const char* name) {
  int status = 0;
  char* out = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  if (status != 0 || out == nullptr) return name;
  std::string result(out);
  std::free(out);
  return result;
}

void throw_no_hook(const std::string& key, const char* type_name) {
  throw UsageError(fmt::format(
      "savepoint: don't know how to save recoverable '{}' of type {}. Give it hooks in one of "
      "these ways: members `void save(const std::filesystem::path&) const` and `void "
      "load(const std::filesystem::path&, bool end_of_epoch)`; "
      "savepoint::register_hooks<T>(name, save, load); free functions savepoint_save / "
      "savepoint_load next to the type; to_json/from_json for nlohmann::json; or pass save and "
      "load functions to add_recoverable",
      key, demangle(type_name)));
}

nlohmann::json parse_json_file(const LoadContext& ctx) {
  const auto bytes = ctx.bytes();
  try {
    return nlohmann::json::parse(bytes.begin(), bytes.end());
  } catch (const nlohmann::json::exception& e) {
    throw CorruptCheckpointError(
        fmt::format("'{}' (key '{}') is not valid JSON: {}", ctx.file.string(), ctx.key, e.what()),
        ctx.file, ctx.key);
  }
}

void throw_json_mismatch(const LoadContext& ctx, const char* what) {
  throw MismatchError(fmt::format("'{}' (key '{}') does not fit the registered object: {}",
                                  ctx.file.string(), ctx.key, what),
                      ctx.file, ctx.key);
}

}  // namespace detail
}  // namespace savepoint
