#include "loader.hpp"

#include "hook_call.hpp"
#include "parallel.hpp"
#include "sharded.hpp"

#include <savepoint/detail/meta.hpp>
#include <savepoint/detail/phases.hpp>
#include <savepoint/distributed.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <memory>

namespace savepoint::engine {

Apply Loader::prepare(const Checkpoint& listed) const {
  // What is loaded is what meta.json says now, read and checked again (its own XXH3): never
  // the listing's cached copy, which may predate damage done in place (docs/reliability.md).
  const Checkpoint checkpoint = listed.sequence != 0 ? catalog_.current(listed, /*any_root=*/true) : listed;
  const bool end_of_epoch = checkpoint.meta.value("end_of_epoch", true);
  struct ToLoad {
    const Recoverable* recoverable;
    const FileRecord* record;
    std::shared_ptr<const detail::MappedFile> contents;
    bool sharded = false;  // read through a ShardReader at step 3, not verified whole
  };
  std::vector<ToLoad> to_load;
  // 1. Match keys to files.
  const ProcessGroup* group = options_.process_group().get();
  for (const auto& r : recoverables_) {
    const FileRecord* rec = nullptr;
    const bool sharded = is_sharded(r);
    if (sharded) {
      rec = checkpoint.file(r.key());  // the first of one record per saving rank, any world size
    } else if (group == nullptr) {
      rec = checkpoint.file(r.key());  // exactly as without process groups
    } else if (r.options().sharing == Sharing::per_rank) {
      // A rank's own file, and only at the world size that wrote it: there is no way to map
      // per-rank state (an RNG, a rank's sampler) to another number of ranks.
      if (checkpoint.world_size != group->world_size() && checkpoint.file(r.key()) != nullptr) {
        const std::string what = fmt::format(
            "per-rank key '{}' of checkpoint '{}' was saved by {} rank(s), but this job has {}: per-rank state "
            "cannot be mapped to another world size (mark the key optional to start it afresh)",
            r.key(), checkpoint.path.string(), checkpoint.world_size == 0 ? 1 : checkpoint.world_size,
            group->world_size());
        if (!r.options().optional) throw MismatchError(what, checkpoint.path, r.key());
        detail::log(LogLevel::warn, "{}: leaving it as is (optional)", what);
        continue;
      }
      rec = checkpoint.file(r.key(), group->rank());
    } else {
      rec = checkpoint.file(r.key(), -1);
    }
    if (rec == nullptr) {
      if (options_.allow_partial_load()) continue;
      if (r.options().optional) {
        detail::log(LogLevel::warn, "Checkpoint '{}' has no '{}' (optional): leaving it as is",
                    checkpoint.path.string(), r.key());
        continue;
      }
      std::string present;
      for (const auto& f : checkpoint.files) present += (present.empty() ? "" : ", ") + f.key;
      throw MissingKeyError(fmt::format("checkpoint '{}' has no file for key '{}' (it holds: {}); "
                                        "mark the key optional or allow partial loads",
                                        checkpoint.path.string(), r.key(), present.empty() ? "nothing" : present),
                            checkpoint.path, r.key());
    }
    if (rec->hook != r.hook_name()) {
      const std::string what = fmt::format(
          "key '{}' of checkpoint '{}' was written by hook '{}' but the registered object uses hook '{}'", r.key(),
          checkpoint.path.string(), rec->hook, r.hook_name());
      // A file of one built-in hook never loads into another built-in's object; any other
      // difference only warns (a user may have renamed a hook).
      if (r.builtin() && hook_table().is_builtin(rec->hook)) throw MismatchError(what, checkpoint.path / rec->file, r.key());
      detail::log(LogLevel::warn, "{}", what);
    }
    to_load.push_back({&r, rec, nullptr, sharded});
  }
  // 2. Verify: every byte is read; with io_threads > 1 the files are read side by side. A key
  // whose object gets all-new tensors (an optimizer without state, at start-up) is read into
  // fresh memory that the new tensors keep; the others are mapped, for copies into live state.
  std::vector<std::function<void()>> reads;
  for (auto& item : to_load) {
    if (item.sharded) continue;  // each rank reads the blocks it needs, in the hook (ShardReader)
    const bool fresh = item.recoverable->fresh_state();
    reads.push_back([&item, &checkpoint, fresh] {
      item.contents = fresh ? detail::read_verified(checkpoint, *item.record)
                            : detail::open_verified(checkpoint, *item.record);
    });
  }
  run_all(reads, options_.io_threads());
  auto& phases = detail::load_phases();
  // 3. Prepare: nothing is modified yet.
  struct Prepared {
    const Recoverable* recoverable;
    Apply apply;
  };
  std::vector<Prepared> prepared;
  for (auto& item : to_load) {
    const Recoverable& r = *item.recoverable;
    LoadContext ctx{checkpoint.path / item.record->file, r.key(), checkpoint.path, end_of_epoch,
                    std::move(item.contents)};
    if (item.sharded) ctx.shards = open_shards(checkpoint, r.key(), group ? group->rank() : 0);
    detail::PhaseTimer timer(phases.prepare_ns);
    prepared.push_back({&r, call_hook(r, "load", checkpoint.path, [&] { return r.prepare_load(ctx); })});
  }
  // 4. Apply, in registration order, with "load last" hooks (RNG state) at the end.
  std::stable_partition(prepared.begin(), prepared.end(),
                        [](const Prepared& p) { return !p.recoverable->load_last(); });
  return [prepared = std::move(prepared), path = checkpoint.path] {
    detail::PhaseTimer timer(detail::load_phases().apply_ns);
    for (auto& p : prepared) call_hook(*p.recoverable, "load", path, [&] { p.apply(); });
  };
}

std::optional<Checkpoint> Loader::recover(const std::vector<const Checkpoint*>& candidates) const {
  if (candidates.empty()) {
    detail::log(LogLevel::info, "Would load a checkpoint here, but none found yet in '{}'",
                catalog_.root().string());
    return std::nullopt;
  }
  std::string failures;
  for (const Checkpoint* candidate : candidates) {
    const Checkpoint& c = *candidate;
    try {
      load(c);
      detail::log(LogLevel::info, "Loaded checkpoint {}", c.path.string());
      return c;
    } catch (const CheckpointError& e) {
      // Damage (and a checkpoint deleted since the listing) is skipped; a checkpoint that
      // does not fit the registered objects is the program's problem: raised as it is.
      const bool damaged = dynamic_cast<const CorruptCheckpointError*>(&e) != nullptr ||
                           dynamic_cast<const StaleCheckpointError*>(&e) != nullptr;
      if (!damaged || options_.strict_recovery()) throw;
      detail::log(LogLevel::warn, "Skipping checkpoint '{}': {}", c.path.string(), e.what());
      failures += fmt::format("\n  {}: {}", c.name(), e.what());
    } catch (const IoError& e) {
      if (options_.strict_recovery()) throw;
      detail::log(LogLevel::warn, "Skipping checkpoint '{}': {}", c.path.string(), e.what());
      failures += fmt::format("\n  {}: {}", c.name(), e.what());
    }
  }
  throw CorruptCheckpointError(fmt::format("no checkpoint in '{}' could be restored ({} candidates, all damaged):{}",
                                           catalog_.root().string(), candidates.size(), failures),
                               catalog_.root());
}

}  // namespace savepoint::engine
