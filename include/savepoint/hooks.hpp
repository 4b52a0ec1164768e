// savepoint/hooks.hpp — how an object is saved and loaded: the hook table and the ways to extend it.
//
// When you call add_recoverable("name", object), savepoint picks the hooks for the object's
// (static) type T, trying in this order:
//
//   1. hooks passed to add_recoverable itself (per object):
//        ckpt.add_recoverable("duck", duck, save_fn, load_fn);
//   2. an exact entry for T in the hook table — one line, for types you don't own:
//        savepoint::register_hooks<Duck>("my.Duck",
//            [](const Duck& d, const std::filesystem::path& p) { ... },
//            [](Duck& d, const std::filesystem::path& p, bool end_of_epoch) { ... });
//   3. T's own members (SpeechBrain's style):
//        void save(const std::filesystem::path& file) const;
//        void load(const std::filesystem::path& file, bool end_of_epoch);  // or load(file)
//      (optionally `static constexpr const char* savepoint_file_extension = ".json";`)
//   4. free functions found by ADL in T's namespace:
//        void savepoint_save(const T&, const std::filesystem::path&);
//        void savepoint_load(T&, const std::filesystem::path&, bool end_of_epoch);
//   5. the table entry of T's nearest registered base class (inheritance considered, like
//      SpeechBrain's MRO walk). The built-ins live here: torch::nn::Module,
//      torch::optim::Optimizer, torch::optim::LRScheduler, torch::Tensor, torch::Generator...
//   6. JSON: any type nlohmann::json can convert both ways (int, double, std::string,
//      std::vector, your struct with to_json/from_json) is stored as <key>.json.
// If none applies, add_recoverable throws savepoint::UsageError naming the key and type.
// Passing a const object, a raw pointer or a temporary fails to compile.
//
// Hooks write exactly one file, at the path they are given, and must not keep it open.
// Load hooks run after every file of the checkpoint was verified; built-in hooks additionally
// validate everything (names, shapes, dtypes) before any object is modified.
#pragma once

#include <savepoint/errors.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeindex>
#include <utility>
#include <vector>

namespace torch {
namespace detail {
struct ModuleHolderIndicator;  // base of torch::nn::Linear etc.; forward-declared to stay torch-free
}
}  // namespace torch

namespace savepoint {

namespace fs = std::filesystem;

namespace detail {
class MappedFile;
/// A save whose writes are deferred: writers that can (save_tensors, JSON) queue their write
/// here instead of writing, to run on the background thread of an async save or on the
/// write threads of a parallel one.
struct Snapshot {
  std::vector<std::function<void()>> deferred_writes;
  /// Copy tensors into the Checkpointer's reusable host buffers first (async saves, whose
  /// caller goes on training); null when the caller waits for the writes.
  std::shared_ptr<void>* staging = nullptr;
};
}  // namespace detail

/// What a save hook is handed.
struct SaveContext {
  fs::path file;    ///< where to write (does not exist yet)
  std::string key;  ///< the recoverable's name
  /// Set by hooks that wrote through savepoint's own writer, which hashed the bytes while
  /// writing. Otherwise savepoint reads the file back once to checksum and fsync it.
  std::optional<std::pair<std::uint64_t, std::uint64_t>> digest;  // {bytes, xxh3}
  /// Non-null during save_checkpoint_async (and parallel saves). save_tensors() and JSON
  /// hooks then copy the data if needed and defer the write; a hook writing its file directly
  /// just writes it (synchronously).
  detail::Snapshot* snapshot = nullptr;
  bool deferred = false;  ///< the file will be written by a deferred write
};

/// What a load hook is handed. `contents` is the verified file, memory-mapped.
struct LoadContext {
  fs::path file;
  std::string key;
  fs::path checkpoint;
  bool end_of_epoch = true;
  std::shared_ptr<const detail::MappedFile> contents;
  /// The checkpoint's bytes for this key (valid while `contents` lives).
  std::string_view bytes() const;
};

/// Loading runs in two phases so that a failed load leaves every object untouched: `prepare`
/// reads and validates and returns an Apply that only assigns. All prepares run before any apply.
using Apply = std::function<void()>;

/// The hooks of one type, type-erased; `object` points to the registered type.
struct TypeHooks {
  std::string name;                     ///< stable, written to meta.json ("torch.nn.Module")
  std::string extension = ".ckpt";      ///< file suffix, e.g. ".safetensors"
  std::function<void(void* object, SaveContext&)> save;
  std::function<Apply(void* object, const LoadContext&)> prepare_load;
  bool load_last = false;               ///< restored after everything else (RNG state)
};

/// Wraps simple path-based functions into TypeHooks:
///   save(const T&, const fs::path&), load(T&, const fs::path&, bool end_of_epoch).
template <class T, class SaveFn, class LoadFn>
TypeHooks make_hooks(std::string name, SaveFn save, LoadFn load, std::string extension = ".ckpt");

/// The type-indexed registry of hooks. One process-wide table: hook_table().
class HookTable {
 public:
  /// Registers (or replaces) the hooks of T. Objects of T and of classes derived from T use them.
  template <class T>
  void add(TypeHooks hooks);
  /// Finds the hooks for an object of static type T: exact_only = step 2 above, else step 5.
  template <class T>
  std::optional<std::pair<TypeHooks, void*>> find(T* object, bool exact_only) const;
  /// Names of all registered hooks (for diagnostics).
  std::vector<std::string> names() const;

 private:
  struct Entry {
    std::type_index type;
    TypeHooks hooks;
    // Catches a thrown pointer as pointer-to-this-type: the exception machinery performs the
    // derived-to-base conversion, so the table finds bases at run time for any class.
    bool (*catch_as)(const std::function<void()>& thrower, void** out);
    void (*throw_null)();
  };
  std::optional<std::pair<TypeHooks, void*>> find_impl(std::type_index type,
                                                       const std::function<void()>& thrower,
                                                       bool exact_only) const;
  void add_entry(Entry entry);
  mutable std::mutex mutex_;
  std::vector<Entry> entries_;
  friend HookTable& hook_table();
};

/// The process-wide table; built-in hooks are registered on first use.
HookTable& hook_table();

/// One line to teach savepoint a type (and its subclasses):
///   savepoint::register_hooks<Duck>("my.Duck", save_fn, load_fn);
template <class T, class SaveFn, class LoadFn>
void register_hooks(std::string name, SaveFn save, LoadFn load, std::string extension = ".ckpt") {
  hook_table().add<T>(make_hooks<T>(std::move(name), std::move(save), std::move(load),
                                    std::move(extension)));
}

/// Options of one recoverable.
struct RecoverableOptions {
  /// Loading a checkpoint that lacks this key only warns (e.g. a GradScaler added later).
  bool optional = false;
};
inline RecoverableOptions optional_load() { return RecoverableOptions{true}; }

/// A named object with its resolved hooks: what the Checkpointer's registry holds.
class Recoverable {
 public:
  /// Holds `object` by reference (lvalue: it must outlive the Checkpointer's use of it) or,
  /// for std::shared_ptr and module holders (torch::nn::Linear), by shared ownership.
  template <class T>
  Recoverable(std::string key, T&& object, RecoverableOptions options = {});
  /// With per-object hooks: save(T&, path), load(T&, path, end_of_epoch).
  template <class T, class SaveFn, class LoadFn>
  Recoverable(std::string key, T&& object, SaveFn save, LoadFn load, RecoverableOptions options = {});

  const std::string& key() const noexcept { return key_; }
  const std::string& hook_name() const noexcept { return hooks_.name; }
  std::string file_name() const { return key_ + hooks_.extension; }
  const RecoverableOptions& options() const noexcept { return options_; }
  bool load_last() const noexcept { return hooks_.load_last; }

  void save(SaveContext& ctx) const { hooks_.save(object_, ctx); }
  Apply prepare_load(const LoadContext& ctx) const { return hooks_.prepare_load(object_, ctx); }

 private:
  template <class T, class MakeCustom>
  void init(T&& object, MakeCustom make_custom);
  template <class P>
  void bind(P& object, std::shared_ptr<void> owner, std::optional<TypeHooks> custom);

  std::string key_;
  TypeHooks hooks_;
  void* object_ = nullptr;
  std::shared_ptr<void> owner_;  // keeps shared objects alive
  RecoverableOptions options_;
};

// ============================================================================ implementation
namespace detail {

void validate_key(const std::string& key);
[[noreturn]] void throw_no_hook(const std::string& key, const char* type_name);
void write_json_file(SaveContext& ctx, const nlohmann::json& value);
nlohmann::json parse_json_file(const LoadContext& ctx);
[[noreturn]] void throw_json_mismatch(const LoadContext& ctx, const char* what);
std::string demangle(const char* name);

template <class T>
struct is_shared_ptr : std::false_type {};
template <class T>
struct is_shared_ptr<std::shared_ptr<T>> : std::true_type {};

template <class T, class = void>
struct has_member_save : std::false_type {};
template <class T>
struct has_member_save<T, std::void_t<decltype(std::declval<const T&>().save(
                              std::declval<const fs::path&>()))>> : std::true_type {};
template <class T, class = void>
struct has_member_save_nonconst : std::false_type {};
template <class T>
struct has_member_save_nonconst<T, std::void_t<decltype(std::declval<T&>().save(
                                       std::declval<const fs::path&>()))>> : std::true_type {};
template <class T, class = void>
struct has_member_load2 : std::false_type {};
template <class T>
struct has_member_load2<T, std::void_t<decltype(std::declval<T&>().load(
                               std::declval<const fs::path&>(), true))>> : std::true_type {};
template <class T, class = void>
struct has_member_load1 : std::false_type {};
template <class T>
struct has_member_load1<T, std::void_t<decltype(std::declval<T&>().load(
                               std::declval<const fs::path&>()))>> : std::true_type {};
template <class T, class = void>
struct has_extension : std::false_type {};
template <class T>
struct has_extension<T, std::void_t<decltype(T::savepoint_file_extension)>> : std::true_type {};

template <class T, class = void>
struct has_adl_hooks : std::false_type {};
template <class T>
struct has_adl_hooks<
    T, std::void_t<decltype(savepoint_save(std::declval<const T&>(), std::declval<const fs::path&>())),
                   decltype(savepoint_load(std::declval<T&>(), std::declval<const fs::path&>(), true))>>
    : std::true_type {};

template <class T, class = void>
struct is_json_convertible : std::false_type {};
template <class T>
struct is_json_convertible<
    T, std::enable_if_t<std::is_constructible_v<nlohmann::json, const T&> &&
                        !std::is_pointer_v<T>,
                        std::void_t<decltype(std::declval<const nlohmann::json&>().template get<T>())>>>
    : std::true_type {};

// Calls load(obj, path, end_of_epoch) or load(obj, path), whichever the function takes.
template <class T, class LoadFn>
void call_load(LoadFn& load, T& obj, const fs::path& path, bool end_of_epoch) {
  if constexpr (std::is_invocable_v<LoadFn&, T&, const fs::path&, bool>) {
    load(obj, path, end_of_epoch);
  } else {
    static_assert(std::is_invocable_v<LoadFn&, T&, const fs::path&>,
                  "savepoint: a load hook must be callable as load(T&, const std::filesystem::path&, "
                  "bool end_of_epoch) or load(T&, const std::filesystem::path&)");
    load(obj, path);
  }
}

template <class T>
TypeHooks member_hooks() {
  TypeHooks h;
  h.name = demangle(typeid(T).name());
  if constexpr (has_extension<T>::value) h.extension = T::savepoint_file_extension;
  h.save = [](void* obj, SaveContext& ctx) { static_cast<const T*>(obj)->save(ctx.file); };
  h.prepare_load = [](void* obj, const LoadContext& ctx) -> Apply {
    return [obj, file = ctx.file, eoe = ctx.end_of_epoch] {
      if constexpr (has_member_load2<T>::value) static_cast<T*>(obj)->load(file, eoe);
      else static_cast<T*>(obj)->load(file);
    };
  };
  return h;
}

template <class T>
TypeHooks adl_hooks() {
  TypeHooks h;
  h.name = demangle(typeid(T).name());
  h.save = [](void* obj, SaveContext& ctx) { savepoint_save(*static_cast<const T*>(obj), ctx.file); };
  h.prepare_load = [](void* obj, const LoadContext& ctx) -> Apply {
    return [obj, file = ctx.file, eoe = ctx.end_of_epoch] {
      savepoint_load(*static_cast<T*>(obj), file, eoe);
    };
  };
  return h;
}

template <class T>
TypeHooks json_hooks() {
  TypeHooks h;
  h.name = "json";
  h.extension = ".json";
  h.save = [](void* obj, SaveContext& ctx) {
    write_json_file(ctx, nlohmann::json(*static_cast<const T*>(obj)));
  };
  h.prepare_load = [](void* obj, const LoadContext& ctx) -> Apply {
    // Convert during prepare: a value of the wrong shape fails before anything is touched.
    std::shared_ptr<T> value;
    try {
      value = std::make_shared<T>(parse_json_file(ctx).template get<T>());
    } catch (const nlohmann::json::exception& e) {
      throw_json_mismatch(ctx, e.what());
    }
    return [obj, value] { *static_cast<T*>(obj) = std::move(*value); };
  };
  return h;
}

template <class T>
TypeHooks resolve_hooks(T& object, const std::string& key, void*& target) {
  target = static_cast<void*>(std::addressof(object));
  if (auto exact = hook_table().find<T>(std::addressof(object), /*exact_only=*/true)) {
    target = exact->second;
    return std::move(exact->first);
  }
  if constexpr (has_member_save<T>::value || has_member_save_nonconst<T>::value ||
                has_member_load2<T>::value || has_member_load1<T>::value) {
    static_assert(has_member_save<T>::value,
                  "savepoint: T has a load member but no `void save(const std::filesystem::path&) "
                  "const` member; add it (savepoint calls it to write T's file)");
    static_assert(has_member_load2<T>::value || has_member_load1<T>::value,
                  "savepoint: T has a save(path) member but no `void load(const "
                  "std::filesystem::path&, bool end_of_epoch)` member; add it");
    return member_hooks<T>();
  } else if constexpr (has_adl_hooks<T>::value) {
    return adl_hooks<T>();
  } else {
    if (auto base = hook_table().find<T>(std::addressof(object), /*exact_only=*/false)) {
      target = base->second;
      return std::move(base->first);
    }
    if constexpr (is_json_convertible<T>::value) {
      return json_hooks<T>();
    } else {
      throw_no_hook(key, typeid(T).name());
    }
  }
}

}  // namespace detail

template <class T, class SaveFn, class LoadFn>
TypeHooks make_hooks(std::string name, SaveFn save, LoadFn load, std::string extension) {
  static_assert(std::is_invocable_v<SaveFn&, const T&, const fs::path&> ||
                    std::is_invocable_v<SaveFn&, T&, const fs::path&>,
                "savepoint: a save hook must be callable as save(const T&, const std::filesystem::path&)");
  TypeHooks h;
  h.name = std::move(name);
  h.extension = std::move(extension);
  h.save = [save = std::move(save)](void* obj, SaveContext& ctx) mutable {
    save(*static_cast<T*>(obj), ctx.file);
  };
  auto shared_load = std::make_shared<LoadFn>(std::move(load));
  h.prepare_load = [shared_load](void* obj, const LoadContext& ctx) -> Apply {
    return [shared_load, obj, file = ctx.file, eoe = ctx.end_of_epoch] {
      detail::call_load(*shared_load, *static_cast<T*>(obj), file, eoe);
    };
  };
  return h;
}

template <class T>
void HookTable::add(TypeHooks hooks) {
  static_assert(std::is_class_v<T>, "savepoint: hooks are registered for class types");
  Entry entry{std::type_index(typeid(T)), std::move(hooks),
              [](const std::function<void()>& thrower, void** out) -> bool {
                try {
                  thrower();
                } catch (T* p) {
                  *out = static_cast<void*>(p);
                  return true;
                } catch (...) {
                }
                return false;
              },
              [] { throw static_cast<T*>(nullptr); }};
  add_entry(std::move(entry));
}

template <class T>
std::optional<std::pair<TypeHooks, void*>> HookTable::find(T* object, bool exact_only) const {
  if constexpr (std::is_class_v<T> && !std::is_const_v<T>) {
    return find_impl(std::type_index(typeid(T)), [object] { throw object; }, exact_only);
  } else {
    (void)object, (void)exact_only;
    return std::nullopt;
  }
}

template <class P>
void Recoverable::bind(P& object, std::shared_ptr<void> owner, std::optional<TypeHooks> custom) {
  static_assert(!std::is_const_v<P>,
                "savepoint: a recoverable must be mutable, because loading writes into it");
  static_assert(!std::is_pointer_v<P>,
                "savepoint: pass the object itself (held by reference) or a std::shared_ptr, "
                "not a raw pointer");
  detail::validate_key(key_);
  owner_ = std::move(owner);
  if (custom) {
    hooks_ = std::move(*custom);
    object_ = static_cast<void*>(std::addressof(object));
  } else {
    hooks_ = detail::resolve_hooks(object, key_, object_);
  }
}

template <class T, class MakeCustom>
void Recoverable::init(T&& object, MakeCustom make_custom) {
  using U = std::remove_cv_t<std::remove_reference_t<T>>;
  if constexpr (detail::is_shared_ptr<U>::value) {
    if (!object) detail::throw_usage("savepoint: recoverable '" + key_ + "' is a null shared_ptr");
    auto& pointee = *object;
    bind(pointee, std::shared_ptr<void>(object, static_cast<void*>(object.get())),
         make_custom(pointee));
  } else if constexpr (std::is_base_of_v<torch::detail::ModuleHolderIndicator, U>) {
    auto ptr = object.ptr();  // torch::nn::Linear etc.: share the module it holds
    bind(*ptr, std::shared_ptr<void>(ptr, static_cast<void*>(ptr.get())), make_custom(*ptr));
  } else {
    static_assert(std::is_lvalue_reference_v<T>,
                  "savepoint: add_recoverable got a temporary, which would be destroyed right "
                  "away; pass a named object (held by reference) or a std::shared_ptr");
    bind(object, nullptr, make_custom(object));
  }
}

template <class T>
Recoverable::Recoverable(std::string key, T&& object, RecoverableOptions options)
    : key_(std::move(key)), options_(options) {
  init(std::forward<T>(object), [](auto&) { return std::optional<TypeHooks>{}; });
}

template <class T, class SaveFn, class LoadFn>
Recoverable::Recoverable(std::string key, T&& object, SaveFn save, LoadFn load,
                         RecoverableOptions options)
    : key_(std::move(key)), options_(options) {
  init(std::forward<T>(object), [&](auto& pointee) {
    using P = std::remove_reference_t<decltype(pointee)>;
    return std::optional<TypeHooks>(make_hooks<P>("custom", std::move(save), std::move(load)));
  });
}

}  // namespace savepoint
