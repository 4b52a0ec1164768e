#include "save_pipeline.hpp"
#include "sharded.hpp"

#include "hook_call.hpp"
#include "parallel.hpp"

#include <savepoint/detail/meta.hpp>
#include <savepoint/errors.hpp>

#include <fmt/format.h>

namespace savepoint::engine {

using nlohmann::json;

// `{}` at a call site is a JSON null: "no meta". Returns exactly what a reader will see
// (a NaN becomes null), with the reserved keys added.
json checked_meta(const json& meta_in, double unixtime, bool end_of_epoch) {
  const json meta = meta_in.is_null() ? json::object() : meta_in;
  if (!meta.is_object()) {
    throw UsageError(fmt::format("savepoint: checkpoint meta must be a JSON object such as "
                                 "{{{{\"loss\", 0.5}}}}, got {}",
                                 meta.type_name()));
  }
  for (const char* reserved : {"unixtime", "end_of_epoch"}) {
    if (meta.contains(reserved))
      throw UsageError(fmt::format("savepoint: meta key '{}' is reserved (savepoint records it)", reserved));
  }
  json out;
  try {
    out = json::parse(meta.dump());
  } catch (const json::exception& e) {
    throw UsageError(fmt::format("savepoint: checkpoint meta cannot be stored: {}", e.what()));
  }
  out["unixtime"] = unixtime;
  out["end_of_epoch"] = end_of_epoch;
  return out;
}

Checkpoint allocate_target(const Catalog& catalog, const json& meta, const SaveOptions& options, int io_threads) {
  if (!catalog.writable()) {
    throw UsageError(fmt::format("savepoint: cannot save a checkpoint in '{}': the Checkpointer is read-only",
                                 catalog.root().string()));
  }
  if (io_threads < 1)
    throw UsageError(fmt::format("savepoint: CheckpointerOptions::io_threads must be >= 1 (got {})", io_threads));
  const double unixtime = detail::now_unixtime();
  Checkpoint target;
  target.meta = checked_meta(meta, unixtime, options.end_of_epoch());

  const auto existing = catalog.list(nullptr, /*strict=*/true);
  const auto slot = catalog.allocate(options, existing, unixtime);
  catalog.check_free_space(existing);
  target.path = slot.path;
  target.sequence = slot.sequence;
  return target;
}

std::unique_ptr<PreparedSave> prepare_save(const Catalog& catalog, const std::vector<Recoverable>& recoverables,
                                           const json& meta, const SaveOptions& options, const SavePlan& plan) {
  Checkpoint target = allocate_target(catalog, meta, options, plan.io_threads);
  const fs::path checkpoint_path = target.path;  // for hook errors: the name it will have
  auto save = std::make_unique<PreparedSave>();
  save->io_threads = plan.io_threads;
  if (plan.staging && plan.overlapped) save->snapshot = std::make_shared<OverlappedSnapshot>(checkpoint_path.string());
  save->lock = catalog.lock();
  save->transaction = std::make_unique<SaveTransaction>(catalog.root(), std::move(target), options);
  const fs::path& dir = save->transaction->directory();
  for (const auto& r : recoverables) {
    const SaveContext ctx{dir / r.file_name(), r.key()};
    Payload payload = call_hook(r, "save", checkpoint_path, [&] { return r.save(ctx); });
    std::shared_ptr<json> shard;  // a sharded key in one process: one file, all rows
    FileWrite write = is_sharded(r) ? plan_sharded_write(ctx.file, r, std::move(payload), plan.staging, shard,
                                                         save->snapshot.get(), plan.direct_io)
                                    : plan_write(ctx.file, r.key(), r.hook_name(), std::move(payload), plan.staging,
                                                 save->snapshot.get(), plan.direct_io);
    save->files.push_back({FileRecord{r.key(), r.file_name(), r.hook_name(), 0, 0}, std::move(write), shard});
  }
  return save;
}

Checkpoint finish_save(PreparedSave& save) {
  if (save.snapshot) save.snapshot->copy_all();
  std::vector<std::function<void()>> writes;
  writes.reserve(save.files.size());
  for (auto& f : save.files) {
    writes.push_back([&f] {
      const auto digest = f.write();
      f.record.bytes = digest.bytes;
      f.record.xxh3 = digest.xxh3;
    });
  }
  run_all(writes, save.io_threads);
  for (auto& f : save.files) {
    f.write = nullptr;  // releases the references to tensors and staging buffers
    if (f.shard) f.record.shard = std::move(*f.shard);
    save.transaction->record(f.record);
  }
  // Durable before the rename: a later save never reuses this sequence number, even when its
  // listing misses this checkpoint (a meta.json it could not read).
  if (save.lock) save.lock->raise_allocated(save.transaction->target().sequence);
  if (!save.snapshot) return save.transaction->commit();
  // No guard ran, or it found a change: the versions decide, as late as possible.
  return save.transaction->commit([&] { save.snapshot->check_before_commit(); });
}

}  // namespace savepoint::engine
