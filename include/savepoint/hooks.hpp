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
// Path-based hooks write exactly one file, at the path they are given, and must not keep it
// open. Type-erased hooks (TypeHooks) return a Payload instead and the engine writes it.
// Load hooks run after every file of the checkpoint was verified; built-in hooks additionally
// validate everything (names, shapes, dtypes) before any object is modified. An exception
// from a hook reaches the caller as savepoint::HookError with the original nested (a
// savepoint::Error or std::bad_alloc passes through as it is).
#pragma once

#include <savepoint/detail/arg.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/file_contents.hpp>
#include <savepoint/payload.hpp>

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

class ShardReader;  // savepoint/shard_reader.hpp


/// What a save hook is handed.
struct SaveContext {
  fs::path file;    ///< where a hook that writes its own file writes it (does not exist yet)
  std::string key;  ///< the recoverable's name
};

/// What a load hook is handed. `contents` is the verified file.
struct LoadContext {
  fs::path file;  ///< a path-based hook reads this file (for a bundle: a private copy)
  std::string key;
  fs::path checkpoint;
  bool end_of_epoch = true;
  std::shared_ptr<const FileContents> contents;
  /// A sharded key only (contents is then null): reads the rows this rank needs from every
  /// rank's saved file, verified block by block (savepoint/shard_reader.hpp).
  std::shared_ptr<const ShardReader> shards = nullptr;
  /// The checkpoint's bytes for this key (valid while `contents` lives).
  std::string_view bytes() const;
};

/// Loading runs in two phases so that a failed load leaves every object untouched: `prepare`
/// reads and validates and returns an Apply that only assigns. All prepares run before any apply.
using Apply = std::function<void()>;

/// The hooks of one type, type-erased; `object` points to the registered type.
/// `save` returns what to store (payload.hpp); the engine writes it.
struct TypeHooks {
  std::string name;                     ///< stable, written to meta.json ("torch.nn.Module")
  std::string extension = ".ckpt";      ///< file suffix, e.g. ".safetensors"
  std::function<Payload(void* object, const SaveContext&)> save;
  std::function<Apply(void* object, const LoadContext&)> prepare_load;
  bool load_last = false;               ///< restored after everything else (RNG state)
  /// Shipped with savepoint: a file written by another built-in hook is refused with
  /// MismatchError (a module file never loads into an optimizer); otherwise it only warns.
  bool builtin = false;
  /// Optional: true when a load would give `object` all-new tensors (an optimizer without
  /// state): the engine then reads the file into fresh memory that those tensors keep
  /// (LoadContext::contents->fresh()), instead of mapping it for a copy.
  std::function<bool(const void* object)> fresh_state;
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
  /// Is `name` the name of a registered built-in hook (TypeHooks::builtin)?
  bool is_builtin(const std::string& name) const;

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

/// The process-wide table. savepoint's LibTorch layer registers its built-ins into it when a
/// program includes <savepoint/savepoint.hpp> (see savepoint/torch_builtins.hpp).
HookTable& hook_table();

/// One line to teach savepoint a type (and its subclasses):
///   savepoint::register_hooks<Duck>("my.Duck", save_fn, load_fn);
template <class T, class SaveFn, class LoadFn>
void register_hooks(std::string name, SaveFn save, LoadFn load, std::string extension = ".ckpt") {
  hook_table().add<T>(make_hooks<T>(std::move(name), std::move(save), std::move(load),
                                    std::move(extension)));
}

/// How a key is shared by the ranks of a process group (CheckpointerOptions::process_group);
/// ignored by a Checkpointer without one.
enum class Sharing {
  replicated,  ///< identical on every rank (a DDP model, its optimizer): written once
  per_rank,    ///< differs by rank (RNG, a rank's sampler): one file per rank, loaded by the
               ///< same rank at the same world size only
  sharded,     ///< dim-0 shards of larger tensors (savepoint::ShardedTensors): one file per
               ///< rank; loaded at any world size, each rank reading only the rows it holds
};

/// Options of one recoverable, an Options builder like every other:
///   ckpt.add_recoverable("scaler", scaler, savepoint::RecoverableOptions().optional(true));
/// or the shorthands below: optional_load(), per_rank(), sharded().
class RecoverableOptions {
  /// Loading a checkpoint that lacks this key only warns (e.g. a GradScaler added later).
  /// A per-rank key that is optional is also skipped (with a warning) when the checkpoint was
  /// written at another world size.
  SAVEPOINT_ARG(bool, optional) = false;
  /// How the ranks of a process group share it (ignored without a group).
  SAVEPOINT_ARG(Sharing, sharing) = Sharing::replicated;
};
inline RecoverableOptions optional_load() { return RecoverableOptions().optional(true); }
/// ckpt.add_recoverable("rng", gen, savepoint::per_rank());
inline RecoverableOptions per_rank(bool optional = false) {
  return RecoverableOptions().optional(optional).sharing(Sharing::per_rank);
}
/// ckpt.add_recoverable("zero", shards, savepoint::sharded());  (savepoint/sharded.hpp)
inline RecoverableOptions sharded(bool optional = false) {
  return RecoverableOptions().optional(optional).sharing(Sharing::sharded);
}

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
  bool builtin() const noexcept { return hooks_.builtin; }
  bool fresh_state() const { return hooks_.fresh_state && hooks_.fresh_state(object_); }

  Payload save(const SaveContext& ctx) const { return hooks_.save(object_, ctx); }
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

}  // namespace savepoint

#include <savepoint/detail/resolve.hpp>
