#include "loader.hpp"

#include "hook_call.hpp"
#include "parallel.hpp"
#include "sharded.hpp"

#include <savepoint/detail/meta.hpp>
#include <savepoint/detail/phases.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <functional>
#include <memory>

namespace savepoint::engine {

Apply Loader::prepare(const Checkpoint& listed, Checkpoint* current) const {
  // What is loaded is what meta.json says now, read and checked again (its own XXH3): never
  // the listing's cached copy, which may predate damage done in place (docs/reliability.md).
  const Checkpoint checkpoint = listed.sequence != 0 ? catalog_.current(listed, /*any_root=*/true) : listed;
  if (current != nullptr) *current = checkpoint;
  return prepare_load(world_, checkpoint, DirectorySource(checkpoint), recoverables_, options_);
}

Apply prepare_load(const World& world, const Checkpoint& checkpoint, const LoadSource& source,
                   const std::vector<Recoverable>& recoverables, const CheckpointerOptions& options) {
  const bool end_of_epoch = checkpoint.meta.value("end_of_epoch", true);
  const std::string where = source.describe();
  struct ToLoad {
    const Recoverable* recoverable;
    const FileRecord* record;
    std::shared_ptr<const FileContents> contents;
    bool sharded = false;  // read through a ShardReader at step 3, not verified whole
  };
  std::vector<ToLoad> to_load;
  // 1. Match keys to files.
  for (const auto& r : recoverables) {
    const FileRecord* rec = nullptr;
    const bool sharded = is_sharded(r);
    if (sharded) {
      rec = checkpoint.file(r.key());  // the first of one record per saving rank, any world size
    } else if (r.options().sharing() == Sharing::per_rank) {
      bool skip = false;
      rec = world.per_rank_record(checkpoint, r, &skip);
      if (skip) continue;
    } else {
      rec = checkpoint.file(r.key(), -1);
    }
    if (rec == nullptr) {
      if (options.allow_partial_load()) continue;
      if (r.options().optional()) {
        detail::log(LogLevel::warn, "The {} has no '{}' (optional): leaving it as is", where, r.key());
        continue;
      }
      std::string present;
      for (const auto& f : checkpoint.files) present += (present.empty() ? "" : ", ") + f.key;
      throw MissingKeyError(fmt::format("{} has no file for key '{}' (it holds: {}); "
                                        "mark the key optional or allow partial loads",
                                        where, r.key(), present.empty() ? "nothing" : present),
                            checkpoint.path, r.key());
    }
    if (rec->hook != r.hook_name()) {
      const std::string what = fmt::format(
          "key '{}' of {} was written by hook '{}' but the registered object uses hook '{}'", r.key(), where,
          rec->hook, r.hook_name());
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
    reads.push_back([&item, &source, &checkpoint, fresh] {
      item.contents = verified_key(source, checkpoint, *item.record, fresh);
    });
  }
  run_all(reads, options.io_threads());
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
    // A hook of the user's that reads a file gets one (a bundle writes a private copy).
    if (!item.sharded && !r.builtin() && r.hook_name() != "json" && ctx.contents)
      ctx.file = source.file_for_hook(*item.record, *ctx.contents);
    if (item.sharded) ctx.shards = open_shards(checkpoint, r.key(), world.rank(), source);
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

void Loader::load(const Checkpoint& checkpoint) const {
  Apply apply;
  agree(world_, "load_checkpoint (reading and verifying)", [&] {
    apply = prepare(checkpoint);
    return std::string();
  });
  agree(world_, "load_checkpoint (applying)", [&] {
    apply();
    return std::string();
  });
}

CandidateSource Loader::directory_candidates(std::vector<const Checkpoint*> candidates) const {
  auto next = std::make_shared<std::size_t>(0);  // the first candidate not yet tried (the same on every rank)
  return [this, candidates = std::move(candidates), next](const std::string&) -> std::optional<Candidate> {
    // Rank 0 names the best candidate not yet tried.
    const nlohmann::json choice = nlohmann::json::parse(from_root(world_, "recover (choosing the checkpoint)", [&] {
      if (*next >= candidates.size()) return std::string("null");
      const Checkpoint& c = *candidates[*next];
      return nlohmann::json{{"path", c.path.string()}, {"sequence", c.sequence}, {"index", *next}}.dump();
    }));
    if (choice.is_null()) return std::nullopt;
    *next = choice.at("index").get<std::size_t>() + 1;
    Checkpoint listed;
    listed.path = choice.at("path").get<std::string>();
    listed.sequence = choice.at("sequence").get<std::uint64_t>();
    Candidate out;
    out.name = listed.path.filename().string();
    out.path = listed.path;
    out.prepare = [this, listed](Checkpoint* loaded) {
      // (A sequence of 0 names no particular checkpoint: its files come from the listing.)
      return prepare(listed.sequence != 0 ? listed : catalog_.current(listed, /*any_root=*/true), loaded);
    };
    return out;
  };
}

std::optional<Checkpoint> Loader::recover(const std::vector<CandidateSource>& sources) const {
  std::string failures;  // every rejected candidate, for the final error
  std::size_t tried = 0;
  for (const auto& source : sources) {
    std::string damage;
    while (const auto candidate = source(damage)) {
      ++tried;
      damage.clear();
      // 2. Every rank reads and verifies what it needs, changing nothing; damage anywhere sends
      //    every rank to the next candidate, any other failure is raised on every rank.
      Checkpoint loaded;
      Apply apply;
      const auto outcomes = agree(world_, "recover (reading and verifying)", [&] {
        try {
          apply = candidate->prepare(&loaded);
          return std::string();
        } catch (const Error& e) {
          if (!is_damage(e) || (options_.strict_recovery() && !candidate->another_copy)) throw;
          return std::string(e.what());
        }
      });
      int damaged_rank = -1;
      for (int r = 0; r < static_cast<int>(outcomes.size()) && damaged_rank < 0; ++r)
        if (!outcomes[r].empty()) damaged_rank = r;
      if (damaged_rank >= 0) {
        apply = nullptr;
        const std::string where = world_.size() == 1 ? std::string() : fmt::format(" (rank {})", damaged_rank);
        damage = outcomes[damaged_rank] + where;
        detail::log(LogLevel::warn, "Skipping checkpoint '{}'{}: {}", candidate->path.string(), where,
                    outcomes[damaged_rank]);
        failures += fmt::format("\n  {}{}: {}", candidate->name, where, outcomes[damaged_rank]);
        continue;
      }
      // 3. Every rank applies; a failure there is raised on every rank.
      agree(world_, "recover (applying)", [&] {
        apply();
        return std::string();
      });
      if (world_.size() == 1) detail::log(LogLevel::info, "Loaded checkpoint {}", loaded.path.string());
      else detail::log(LogLevel::info, "Loaded checkpoint {} (rank {} of {})", loaded.path.string(), world_.rank(), world_.size());
      return loaded;
    }
  }
  if (failures.empty()) {
    if (world_.rank() == 0)
      detail::log(LogLevel::info, "Would load a checkpoint here, but none found yet in '{}'", catalog_.root().string());
    return std::nullopt;
  }
  throw CorruptCheckpointError(fmt::format("no checkpoint in '{}' could be restored ({} candidates, all damaged):{}",
                                           catalog_.root().string(), tried, failures),
                               catalog_.root());
}

}  // namespace savepoint::engine
