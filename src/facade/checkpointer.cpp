// The Checkpointer: a registry of recoverables in front of the engine (src/engine/). Each
// method says which part does the work; see docs/architecture.md for the whole path.
#include <savepoint/checkpointer.hpp>

#include "../engine/async_saver.hpp"
#include "../engine/catalog.hpp"
#include "../engine/loader.hpp"
#include "../engine/save_pipeline.hpp"
#include "../engine/priority.hpp"
#include "../engine/scrub.hpp"
#include "../engine/world.hpp"
#include "../tier/memory_tier.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/detail/object_store.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>

namespace savepoint {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {
void check_keep(const KeepOptions& keep) {
  if (keep.num_to_keep() < 0) {
    throw UsageError(fmt::format("savepoint: the number of checkpoints to keep must be >= 0 (got {})",
                                 keep.num_to_keep()));
  }
}

// An s3:// root without a trailing '/', reached as its options say (every rank uploads).
fs::path object_store_root(fs::path root, const CheckpointerOptions& options) {
  if (!is_object_store_path(root)) return root;
  std::string text = root.native();
  while (text.size() > 5 && text.back() == '/') text.pop_back();
  root = text;
  (void)detail::split_object_path(root);  // UsageError for a malformed one
  if (options.object_store()) configure_object_store(root, *options.object_store());
  return root;
}

// Rank 0 takes the lock (the job is one writer); collective.
std::shared_ptr<detail::DirectoryLock> open_lock(const engine::World& world, const fs::path& root,
                                                 const CheckpointerOptions& options) {
  if (options.read_only()) return nullptr;
  return engine::open_collectively(world, root, options.clean_stale_temporaries());
}
// Best first by `selector`, as pointers into `all` (nothing copied).
std::vector<const Checkpoint*> ranked(const std::vector<engine::Catalog::Shared>& all, const Selector& selector) {
  std::vector<const Checkpoint*> pointers;
  pointers.reserve(all.size());
  for (const auto& c : all) pointers.push_back(c.get());
  return detail::rank_pointers(pointers, selector);
}
}  // namespace

struct Checkpointer::Impl {
  Impl(fs::path root_in, CheckpointerOptions options_in)
      : root(object_store_root(std::move(root_in), options_in)),
        options(std::move(options_in)),
        world(options.process_group()),
        catalog(root, open_lock(world, root, options)),
        tier(options.memory_tier() ? std::make_unique<tier::MemoryTier>(world, *options.memory_tier()) : nullptr),
        saver(root.string()) {}

  fs::path root;
  CheckpointerOptions options;
  engine::World world;  // fixed at construction: the job's group, or a world of one
  std::vector<Recoverable> recoverables;
  engine::Catalog catalog;
  engine::StagingBuffers staging;  // reused by every async save
  std::shared_ptr<engine::OverlappedSnapshot> pending;  // an overlapped save's copies, until guarded
  std::unique_ptr<tier::MemoryTier> tier;          // CheckpointerOptions::memory_tier, else null
  // CheckpointerOptions::incremental (options() may turn it on or change the part size later)
  mutable std::unique_ptr<engine::IncrementalSaves> incremental;
  engine::AsyncSaver saver;        // declared last: destroyed (joined) first

  // Checkpointer::before_update(): the overlapped snapshot's copies finished and checked.
  void settle_snapshot() {
    if (!pending) return;
    pending->settle();
    pending.reset();
  }
  void wait_idle() {
    pending.reset();  // joining the job finishes the copy and checks it before the commit
    saver.wait_idle();
  }
  // Before collectives on the caller's thread: a group's are used by one thread at a time,
  // so an async save's must be over.
  void take_collectives() {
    if (!world.collectives_from_any_thread()) wait_idle();
  }
  engine::SavePlan plan(engine::StagingBuffers* staging_in) const {
    engine::SavePlan out;
    out.io_threads = options.io_threads();
    out.staging = staging_in;
    out.overlapped = staging_in && options.async_snapshot() == AsyncSnapshot::overlapped;
    out.write_mode = options.direct_io() ? detail::WriteMode::direct : detail::WriteMode::buffered;
    out.spread_replicated_writes = options.spread_replicated_writes();
    if (!options.incremental()) return out;
    if (options.part_bytes() == 0)
      throw UsageError("savepoint: CheckpointerOptions::part_bytes must be at least 1 for incremental saves");
    if (!incremental || incremental->part_bytes() != options.part_bytes())
      incremental = std::make_unique<engine::IncrementalSaves>(options.part_bytes());
    out.incremental = incremental.get();
    out.full_save_every = options.full_save_every();
    return out;
  }

  engine::Loader loader() const { return engine::Loader(world, catalog, recoverables, options); }
  void require_writable(const char* operation) const {
    if (options.read_only()) {
      throw UsageError(fmt::format("savepoint: cannot {} in '{}': the Checkpointer is read-only", operation,
                                   root.string()));
    }
  }
  Checkpoint set_pinned(const Checkpoint& checkpoint, bool pinned) {
    wait_idle();
    return engine::checkpoints_from_root(world, pinned ? "pin" : "unpin", [&] {
      return std::vector<Checkpoint>{catalog.set_pinned(checkpoint, pinned)};
    }).at(0);
  }
  // The caller waits: sync saves copy nothing. Retention runs on rank 0 after the commit,
  // before the collective that ends the save: no rank returns (and goes on to load or list)
  // while rank 0 is still deleting.
  Checkpoint save(const json& meta, const SaveOptions& options_in, const std::optional<KeepOptions>& keep) {
    wait_idle();
    engine::SavePlan sync = plan(/*staging=*/nullptr);
    sync.keep = keep ? &*keep : nullptr;
    auto save = engine::prepare_save(world, catalog, recoverables, meta, options_in, sync);
    return engine::finish_save(world, *save, retention(keep));
  }
  // The hooks and the snapshot (or its deferral) on this thread; the writes and the commit's
  // collectives on the background thread (on every rank, so a group is used by one thread).
  void launch(const json& meta, const SaveOptions& options_in, std::optional<KeepOptions> keep) {
    wait_idle();  // one save in flight; an earlier background failure is raised here
    engine::SavePlan async = plan(&staging);
    async.keep = keep ? &*keep : nullptr;
    std::shared_ptr<engine::PreparedSave> save =
        engine::prepare_save(world, catalog, recoverables, meta, options_in, async);
    pending = save->snapshot;
    saver.launch([this, save, keep = std::move(keep)] { return engine::finish_save(world, *save, retention(keep)); });
  }
  // A memory-tier save: as launch, into this node's memory root (tier/memory_tier.hpp).
  bool launch_to_memory(const json& meta, const SaveOptions& options_in) {
    require_tier("save_to_memory");
    const auto make_plan = [this] {
      wait_idle();
      return plan(&staging);
    };
    std::shared_ptr<engine::PreparedSave> save =
        tier->prepare_save(tier_options(), recoverables, meta, options_in, make_plan);
    if (!save) return false;
    pending = save->snapshot;
    saver.launch([this, save] { return tier->finish_save(*save, catalog); });
    tier->returned();
    return true;
  }
  std::optional<Checkpoint> persist_memory() {
    require_tier("persist_memory_checkpoint");
    wait_idle();
    return tier->persist(catalog, tier_options());
  }
  // The tier's options as they are now (the user may change them between saves).
  const MemoryTierOptions& tier_options() const {
    return options.memory_tier() ? *options.memory_tier() : tier->options();
  }
  void require_tier(const char* operation) const {
    if (!tier) {
      throw UsageError(fmt::format("savepoint: {} needs a memory tier (CheckpointerOptions::memory_tier) on the "
                                   "Checkpointer of '{}'",
                                   operation, root.string()));
    }
  }
  // The one recovery loop (engine/loader.hpp): the memory tier's candidates first when the
  // newest is asked for, then the directory's.
  std::optional<Checkpoint> recover(const Selector& selector) {
    settle_snapshot();  // a load changes saved tensors
    take_collectives();
    std::vector<engine::CandidateSource> sources;
    const bool newest = !selector.min_key && !selector.max_key && !selector.importance_key && !selector.predicate;
    if (tier && newest) {
      wait_idle();  // the memory save in flight completes (its retention touches the tier) first
      sources.push_back(tier->candidates(recoverables, options, catalog));
    }
    const auto listed = catalog.list();
    const engine::Loader load = loader();
    sources.push_back(load.directory_candidates(ranked(listed, selector)));
    return load.recover(sources);
  }
  std::function<void()> retention(const std::optional<KeepOptions>& keep) {
    if (!keep) return nullptr;
    return [this, keep] { catalog.retain(*keep); };
  }
};

Checkpointer::Checkpointer(fs::path directory, CheckpointerOptions options)
    : impl_(std::make_unique<Impl>(std::move(directory), std::move(options))) {}

Checkpointer::Checkpointer(fs::path directory, std::initializer_list<Recoverable> recoverables,
                           CheckpointerOptions options)
    : Checkpointer(std::move(directory), std::move(options)) {
  add_recoverables(recoverables);
}

Checkpointer::~Checkpointer() = default;
Checkpointer::Checkpointer(Checkpointer&&) noexcept = default;
Checkpointer& Checkpointer::operator=(Checkpointer&&) noexcept = default;

const fs::path& Checkpointer::directory() const noexcept { return impl_->root; }
CheckpointerOptions& Checkpointer::options() noexcept { return impl_->options; }
const CheckpointerOptions& Checkpointer::options() const noexcept { return impl_->options; }

// ------------------------------------------------------------------ registry
void Checkpointer::add_recoverables(std::initializer_list<Recoverable> recoverables) {
  for (const auto& r : recoverables) add_recoverable(r);
}

void Checkpointer::add_recoverable(Recoverable recoverable) {
  const std::string file = recoverable.file_name();
  if (file == detail::kMetaFileName || file == detail::kPinFileName) {
    throw UsageError(fmt::format("savepoint: key '{}' would be stored as '{}', a file name "
                                 "savepoint itself uses; choose another key",
                                 recoverable.key(), file));
  }
  for (auto& r : impl_->recoverables) {
    if (r.key() == recoverable.key()) {
      r = std::move(recoverable);  // re-adding a key replaces it, keeping its position
      return;
    }
    if (r.file_name() == file) {
      throw UsageError(fmt::format("savepoint: keys '{}' and '{}' would both be stored as '{}'", r.key(),
                                   recoverable.key(), file));
    }
  }
  impl_->recoverables.push_back(std::move(recoverable));
}

bool Checkpointer::remove_recoverable(const std::string& key) {
  auto& rs = impl_->recoverables;
  const auto it = std::find_if(rs.begin(), rs.end(), [&](const Recoverable& r) { return r.key() == key; });
  if (it == rs.end()) return false;
  rs.erase(it);
  return true;
}

std::vector<std::string> Checkpointer::keys() const {
  std::vector<std::string> out;
  for (const auto& r : impl_->recoverables) out.push_back(r.key());
  return out;
}

// ------------------------------------------------------------------ saving (engine/save_pipeline)
Checkpoint Checkpointer::save_checkpoint(const json& meta, const SaveOptions& options) {
  return impl_->save(meta, options, std::nullopt);
}

Checkpoint Checkpointer::save_and_keep_only(const json& meta, const KeepOptions& keep, const SaveOptions& options) {
  check_keep(keep);  // before saving: a bad argument must not half-run
  return impl_->save(meta, options, keep);
}

void Checkpointer::save_checkpoint_async(const json& meta, const SaveOptions& options) {
  impl_->launch(meta, options, std::nullopt);
}

void Checkpointer::save_and_keep_only_async(const json& meta, const KeepOptions& keep, const SaveOptions& options) {
  check_keep(keep);
  impl_->launch(meta, options, keep);
}

std::optional<Checkpoint> Checkpointer::wait() {
  impl_->wait_idle();
  return impl_->saver.take_result();
}

void Checkpointer::before_update() { impl_->settle_snapshot(); }

// ------------------------------------------------------------------ the memory tier (tier/memory_tier)
bool Checkpointer::save_to_memory(const json& meta, const SaveOptions& options) {
  return impl_->launch_to_memory(meta, options);
}

std::optional<Checkpoint> Checkpointer::persist_memory_checkpoint() { return impl_->persist_memory(); }

// ------------------------------------------------------------------ finding (engine/catalog)
std::vector<Checkpoint> Checkpointer::list_checkpoints() const {
  std::vector<Checkpoint> out;
  for (const auto& c : impl_->catalog.list()) out.push_back(*c);
  return out;
}


std::vector<Checkpoint> Checkpointer::find_checkpoints(const Selector& selector,
                                                       std::optional<std::size_t> max_num) const {
  const auto all = impl_->catalog.list();
  const auto best = ranked(all, selector);
  const std::size_t n = max_num ? std::min(*max_num, best.size()) : best.size();
  std::vector<Checkpoint> out;
  out.reserve(n);
  for (std::size_t i = 0; i < n; ++i) out.push_back(*best[i]);  // only what is returned is copied
  return out;
}

std::optional<Checkpoint> Checkpointer::find_checkpoint(const Selector& selector) const {
  auto best = find_checkpoints(selector, 1);
  if (best.empty()) return std::nullopt;
  return std::move(best.front());
}

// ------------------------------------------------------------------ loading (engine/loader)
std::optional<Checkpoint> Checkpointer::recover_if_possible(const Selector& selector) {
  return impl_->recover(selector);
}

Checkpoint Checkpointer::load_best(const Selector& selector) {
  if (auto loaded = recover_if_possible(selector)) return std::move(*loaded);
  const std::string what = selector.min_key   ? "with meta key '" + *selector.min_key + "'"
                           : selector.max_key ? "with meta key '" + *selector.max_key + "'"
                                              : std::string("matching the selector");
  throw CheckpointError(fmt::format("no checkpoint {} in '{}' to load", what, impl_->root.string()), impl_->root);
}

void Checkpointer::load_checkpoint(const Checkpoint& checkpoint) {
  impl_->settle_snapshot();  // a load changes saved tensors
  impl_->take_collectives();
  impl_->loader().load(checkpoint);
}

// ------------------------------------------------------------------ deleting and pinning (engine/catalog)
std::vector<Checkpoint> Checkpointer::plan_deletions(const KeepOptions& keep) const {
  check_keep(keep);
  return impl_->catalog.plan_deletions(keep);
}

std::vector<Checkpoint> Checkpointer::delete_checkpoints(const KeepOptions& keep) {
  check_keep(keep);
  impl_->wait_idle();
  impl_->require_writable("delete checkpoints");
  // Between collectives: no rank is still reading a checkpoint rank 0 deletes, and none lists
  // the directory before rank 0 is done.
  engine::agree(impl_->world, "delete_checkpoints (waiting for every rank)", [] { return std::string(); });
  return engine::checkpoints_from_root(impl_->world, "delete_checkpoints",
                                       [&] { return impl_->catalog.retain(keep); });
}

void Checkpointer::delete_checkpoint(const Checkpoint& checkpoint) {
  impl_->wait_idle();
  // Rank 0 deletes; every rank returns once it is gone (or raises its error).
  engine::from_root(impl_->world, "delete_checkpoint", [&] {
    impl_->catalog.remove(checkpoint);
    return std::string();
  });
}

Checkpoint Checkpointer::pin(const Checkpoint& checkpoint) { return impl_->set_pinned(checkpoint, true); }

Checkpoint Checkpointer::unpin(const Checkpoint& checkpoint) { return impl_->set_pinned(checkpoint, false); }

// ------------------------------------------------------------------ integrity
std::vector<Problem> Checkpointer::verify(const Checkpoint& checkpoint) const {
  std::vector<Problem> problems;
  Checkpoint on_disk;
  try {
    on_disk = detail::read_checkpoint(checkpoint.path);
  } catch (const Error& e) {
    problems.push_back({"", checkpoint.path / detail::kMetaFileName, e.what()});
    return problems;
  }
  if (checkpoint.sequence != 0 && on_disk.sequence != checkpoint.sequence) {
    throw StaleCheckpointError(fmt::format("'{}' now holds another checkpoint (sequence {}, this Checkpoint value "
                                           "is sequence {}): it was deleted or replaced; list the checkpoints again",
                                           checkpoint.path.string(), on_disk.sequence, checkpoint.sequence),
                               checkpoint.path);
  }
  for (const auto& rec : on_disk.files) {
    try {
      (void)detail::open_verified(on_disk, rec);
    } catch (const Error& e) {
      // A file an incremental save shared is one inode under several checkpoints' names.
      const fs::path file = on_disk.path / rec.file;
      std::string reason = e.what();
      if (const auto links = detail::hard_link_count(file); links && *links > 1)
        reason += fmt::format(" (the file is shared with {} other checkpoint(s) by incremental saves: each of them "
                              "has this damage)",
                              *links - 1);
      problems.push_back({rec.key, file, std::move(reason)});
    }
  }
  return problems;
}

std::vector<Problem> Checkpointer::unreadable_checkpoints() const {
  std::vector<Problem> problems;
  (void)impl_->catalog.list(&problems);
  return problems;
}

// ------------------------------------------------------------------ scrubbing (engine/scrub)
ScrubReport Checkpointer::scrub(const ScrubOptions& options) const { return engine::scrub(impl_->root, options); }

std::future<ScrubReport> Checkpointer::scrub_in_background(ScrubOptions options) const {
  engine::check_scrub_options(options);  // bad options fail the call, not the future
  // Values only, never `this`: the future outlives the Checkpointer if need be. std::async's
  // thread is new, so lowering its priority lowers nobody else's.
  return std::async(std::launch::async, [root = impl_->root, options = std::move(options)] {
    engine::set_thread_priority(BackgroundPriority::low);
    return engine::scrub(root, options);
  });
}

}  // namespace savepoint
