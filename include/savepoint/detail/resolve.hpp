// savepoint/detail/resolve.hpp — how hooks.hpp picks an object's hooks at compile time and
// run time (implementation; read hooks.hpp for the rules). Included at the end of hooks.hpp.
#pragma once

#include <savepoint/hooks.hpp>

namespace savepoint {

namespace detail {

void validate_key(const std::string& key);
[[noreturn]] void throw_no_hook(const std::string& key, const char* type_name);
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
  h.save = [](void* obj, const SaveContext& ctx) {
    static_cast<const T*>(obj)->save(ctx.file);
    return Payload::file();
  };
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
  h.save = [](void* obj, const SaveContext& ctx) {
    savepoint_save(*static_cast<const T*>(obj), ctx.file);
    return Payload::file();
  };
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
  h.save = [](void* obj, const SaveContext&) {
    return Payload::json(nlohmann::json(*static_cast<const T*>(obj)));
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
  h.save = [save = std::move(save)](void* obj, const SaveContext& ctx) mutable {
    save(*static_cast<T*>(obj), ctx.file);
    return Payload::file();
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
