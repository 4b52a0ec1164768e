#include "distributed.hpp"

#include "hook_call.hpp"
#include "loader.hpp"
#include "parallel.hpp"
#include "payload_writer.hpp"
#include "save_pipeline.hpp"
#include "save_transaction.hpp"
#include "sharded.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/log.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in fmt/format.h before fmt 11)

#include <algorithm>
#include <set>
#include <tuple>

namespace savepoint::engine {

using nlohmann::json;

namespace {
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// What a rank sends after running a step: its result or its error.
std::string run_step(const std::function<std::string()>& step) {
  try {
    return dump(json{{"ok", true}, {"data", step()}});
  } catch (const std::exception& e) {
    return dump(json{{"ok", false}, {"error", e.what()}});
  } catch (...) {
    return dump(json{{"ok", false}, {"error", "a non-standard exception"}});
  }
}

[[noreturn]] void collective_failed(const ProcessGroup& group, const char* what, const std::exception& e) {
  // c10d's errors carry a long C++ backtrace after the first line: keep the first line.
  std::string cause = e.what();
  cause = cause.substr(0, std::min(cause.find('\n'), std::size_t{400}));
  throw DistributedError(
      fmt::format("savepoint: {}: a collective failed on rank {} of {} (another rank died, failed outside "
                  "savepoint, or did not arrive within the timeout of {} ms): {}",
                  what, group.rank(), group.world_size(), group.timeout().count(), cause),
      -1);
}

json parse_message(const std::string& text, const char* what, int from) {
  try {
    json j = json::parse(text);
    if (j.is_object() && j.contains("ok")) return j;
  } catch (const json::exception&) {
  }
  throw DistributedError(fmt::format("savepoint: {}: rank {} sent a malformed message ({} bytes)", what, from,
                                     text.size()),
                         from);
}
}  // namespace

std::string from_root(ProcessGroup& group, const char* what, const std::function<std::string()>& step) {
  const std::string mine = group.rank() == 0 ? run_step(step) : std::string();
  std::string received;
  try {
    received = group.broadcast(mine);
  } catch (const std::exception& e) {
    collective_failed(group, what, e);
  }
  const json message = parse_message(received, what, 0);
  if (!message.at("ok").get<bool>()) {
    throw DistributedError(
        fmt::format("savepoint: {} failed on rank 0: {}", what, message.at("error").get<std::string>()), 0);
  }
  return message.at("data").get<std::string>();
}

std::vector<std::string> agree(ProcessGroup& group, const char* what, const std::function<std::string()>& step) {
  const std::string mine = run_step(step);
  std::vector<std::string> all;
  try {
    all = group.all_gather(mine);
  } catch (const std::exception& e) {
    collective_failed(group, what, e);
  }
  std::vector<std::string> out;
  int first_failed = -1;
  std::string error;
  std::vector<int> others;
  for (int r = 0; r < static_cast<int>(all.size()); ++r) {
    const json message = parse_message(all[r], what, r);
    if (message.at("ok").get<bool>()) {
      out.push_back(message.at("data").get<std::string>());
    } else if (first_failed < 0) {
      first_failed = r;
      error = message.at("error").get<std::string>();
    } else {
      others.push_back(r);
    }
  }
  if (first_failed >= 0) {
    throw DistributedError(fmt::format("savepoint: {} failed on rank {}: {}{}", what, first_failed, error,
                                       others.empty() ? std::string()
                                                      : fmt::format(" (and on rank(s) {})", fmt::join(others, ", "))),
                           first_failed);
  }
  return out;
}

std::shared_ptr<detail::DirectoryLock> open_collectively(ProcessGroup& group, const fs::path& root,
                                                         bool clean_stale) {
  std::shared_ptr<detail::DirectoryLock> lock;
  from_root(group, "opening the checkpoint directory", [&] {
    detail::make_directories(root);
    lock = detail::DirectoryLock::acquire(root);
    if (clean_stale) Catalog(root, lock).clean_stale();
    return std::string();
  });
  return lock;
}

std::string encode_checkpoints(const std::vector<Checkpoint>& checkpoints) {
  json out = json::array();
  for (const auto& c : checkpoints)
    out.push_back({{"path", c.path.string()}, {"meta", detail::serialize_meta(c)}, {"pinned", c.pinned}});
  return dump(out);
}

std::vector<Checkpoint> decode_checkpoints(const std::string& text) {
  std::vector<Checkpoint> out;
  for (const auto& c : json::parse(text)) {
    Checkpoint ckpt = detail::parse_meta(c.at("path").get<std::string>(), c.at("meta").get<std::string>());
    ckpt.pinned = c.at("pinned").get<bool>();
    out.push_back(std::move(ckpt));
  }
  return out;
}

namespace {
json record_to_json(const FileRecord& f, std::size_t index) {
  return {{"key", f.key}, {"file", f.file}, {"hook", f.hook}, {"bytes", f.bytes},
          {"xxh3", f.xxh3}, {"rank", f.rank}, {"index", index}, {"shard", f.shard}};
}
}  // namespace

std::unique_ptr<CollectiveSave> prepare_collective_save(ProcessGroup& group, const Catalog& catalog,
                                                        const std::vector<Recoverable>& recoverables, const json& meta,
                                                        const SaveOptions& options, int io_threads, bool spread,
                                                        StagingBuffers* staging) {
  auto save = std::make_unique<CollectiveSave>();
  save->io_threads = std::max(io_threads, 1);
  // 1. Rank 0 allocates the name and sequence and opens the temporary directory.
  const json plan = json::parse(from_root(group, "save (allocating the checkpoint)", [&] {
    Checkpoint target = allocate_target(catalog, meta, options, io_threads);
    target.world_size = group.world_size();
    const std::string name = target.path.filename().string();
    save->transaction = std::make_unique<SaveTransaction>(catalog.root(), std::move(target), options);
    return dump(json{{"temp", save->transaction->directory().filename().string()}, {"path", name}});
  }));
  save->lock = catalog.lock();
  const fs::path directory = catalog.root() / plan.at("temp").get<std::string>();
  const fs::path final_path = catalog.root() / plan.at("path").get<std::string>();

  // 2a. This rank's share: every per-rank key, and the replicated keys it writes (key i by
  //     rank i % world). Hooks run now (the caller's thread); a failure is kept and reported
  //     in the next collective, so that no rank leaves the others waiting.
  try {
    std::size_t replicated = 0;
    for (std::size_t i = 0; i < recoverables.size(); ++i) {
      const Recoverable& r = recoverables[i];
      const bool sharded = is_sharded(r);  // like per-rank files, with block checksums
      const bool per_rank = r.options().sharing == Sharing::per_rank || sharded;
      save->keys.push_back({r.key(), sharded ? "sharded" : per_rank ? "per_rank" : "replicated"});
      if (!per_rank) {
        const int writer = spread ? static_cast<int>(replicated++ % group.world_size()) : 0;
        if (writer != group.rank()) continue;
      }
      std::string file = r.file_name();
      if (per_rank) file = fmt::format("{}.rank{}{}", r.key(), group.rank(), file.substr(r.key().size()));
      const SaveContext ctx{directory / file, r.key()};
      Payload payload = call_hook(r, "save", final_path, [&] { return r.save(ctx); });
      std::shared_ptr<json> shard;
      FileWrite write = sharded ? plan_sharded_write(ctx.file, r, std::move(payload), staging, shard)
                                : plan_write(ctx.file, r.key(), r.hook_name(), std::move(payload), staging);
      save->files.push_back({FileRecord{r.key(), file, r.hook_name(), 0, 0, per_rank ? group.rank() : -1}, i,
                             std::move(write), shard});
    }
  } catch (const std::exception& e) {
    save->error = e.what();
    save->files.clear();
  }
  return save;
}

Checkpoint finish_collective_save(ProcessGroup& group, CollectiveSave& save, const std::function<void()>& retention) {
  // 2b. Every rank writes its files into the same temporary directory; records reach rank 0.
  const auto shares = agree(group, "save (writing the files)", [&] {
    if (!save.error.empty()) throw std::runtime_error(save.error);
    std::vector<std::function<void()>> writes;
    for (auto& f : save.files) {
      writes.push_back([&f] {
        const auto digest = f.write();
        f.record.bytes = digest.bytes;
        f.record.xxh3 = digest.xxh3;
      });
    }
    run_all(writes, save.io_threads);
    json records = json::array();
    for (auto& f : save.files) {
      f.write = nullptr;  // releases tensors and staging buffers
      if (f.shard) f.record.shard = std::move(*f.shard);
      records.push_back(record_to_json(f.record, f.index));
    }
    return dump(json{{"keys", save.keys}, {"records", records}});
  });

  // 3. Rank 0 writes meta.json listing every rank's files and renames; then retention.
  const std::string committed = from_root(group, "save (committing)", [&] {
    std::vector<std::tuple<std::size_t, int, FileRecord>> records;
    const json keys0 = json::parse(shares[0]).at("keys");
    for (int r = 0; r < static_cast<int>(shares.size()); ++r) {
      const json share = json::parse(shares[r]);
      if (share.at("keys") != keys0) {
        throw UsageError(fmt::format("savepoint: rank {} registered other keys than rank 0 ({} vs {}): every rank "
                                     "must add the same recoverables in the same order, with the same sharing",
                                     r, dump(share.at("keys")), dump(keys0)));
      }
      for (const auto& j : share.at("records")) {
        FileRecord f{j.at("key").get<std::string>(), j.at("file").get<std::string>(), j.at("hook").get<std::string>(),
                     j.at("bytes").get<std::uint64_t>(), j.at("xxh3").get<std::uint64_t>(), j.at("rank").get<int>(),
                     j.value("shard", json())};
        records.emplace_back(j.at("index").get<std::size_t>(), f.rank, std::move(f));
      }
    }
    std::sort(records.begin(), records.end(), [](const auto& a, const auto& b) {
      return std::tie(std::get<0>(a), std::get<1>(a)) < std::tie(std::get<0>(b), std::get<1>(b));
    });
    std::set<std::string> names;
    for (const auto& rec : records) {
      const FileRecord& f = std::get<2>(rec);
      if (!names.insert(f.file).second) {
        throw UsageError(fmt::format("savepoint: two keys would both be stored as '{}' (a per-rank key's "
                                     "'<key>.rank<R>' name taken by another key); rename one",
                                     f.file));
      }
      save.transaction->record(f);
    }
    if (save.lock) save.lock->raise_allocated(save.transaction->target().sequence);
    Checkpoint saved = save.transaction->commit();
    save.transaction.reset();
    if (retention) retention();
    return encode_checkpoints({saved});
  });
  save.transaction.reset();
  return decode_checkpoints(committed).at(0);
}

std::optional<Checkpoint> recover_collectively(ProcessGroup& group, const Catalog& catalog,
                                               const std::vector<Recoverable>& recoverables,
                                               const CheckpointerOptions& options,
                                               const std::vector<const Checkpoint*>& candidates) {
  // Sharded keys: nobody reads a whole shard, and nobody applies before all ranks verified.
  if (has_sharded(recoverables)) return recover_sharded(group, catalog, recoverables, options, candidates);
  // 1. Rank 0 verifies every file of the best candidate (every rank's), falling back past
  //    damaged ones, and names the one all ranks load.
  const json choice = json::parse(from_root(group, "recover (choosing the checkpoint)", [&] {
    if (candidates.empty()) {
      detail::log(LogLevel::info, "Would load a checkpoint here, but none found yet in '{}'", catalog.root().string());
      return std::string("null");
    }
    std::string failures;
    for (const Checkpoint* candidate : candidates) {
      try {
        const Checkpoint current = catalog.current(*candidate, /*any_root=*/true);
        for (const auto& rec : current.files) (void)detail::open_verified(current, rec);
        return dump(json{{"path", current.path.string()}, {"sequence", current.sequence}});
      } catch (const Error& e) {
        const bool damaged = dynamic_cast<const CorruptCheckpointError*>(&e) != nullptr ||
                             dynamic_cast<const StaleCheckpointError*>(&e) != nullptr ||
                             dynamic_cast<const IoError*>(&e) != nullptr;
        if (!damaged || options.strict_recovery()) throw;
        detail::log(LogLevel::warn, "Skipping checkpoint '{}': {}", candidate->path.string(), e.what());
        failures += fmt::format("\n  {}: {}", candidate->name(), e.what());
      }
    }
    throw CorruptCheckpointError(fmt::format("no checkpoint in '{}' could be restored ({} candidates, all damaged):{}",
                                             catalog.root().string(), candidates.size(), failures),
                                 catalog.root());
  }));
  if (choice.is_null()) return std::nullopt;

  // 2. Every rank loads that one (its own files of per-rank keys); any failure on all ranks.
  Checkpoint loaded;
  agree(group, "recover (loading)", [&] {
    Checkpoint listed;
    listed.path = choice.at("path").get<std::string>();
    listed.sequence = choice.at("sequence").get<std::uint64_t>();
    loaded = catalog.current(listed, /*any_root=*/true);
    Loader(catalog, recoverables, options).load(loaded);
    return std::string();
  });
  detail::log(LogLevel::info, "Loaded checkpoint {} (rank {} of {})", loaded.path.string(), group.rank(),
              group.world_size());
  return loaded;
}

}  // namespace savepoint::engine

namespace savepoint {

void ProcessGroup::store_set(const std::string& key, const std::string& /*value*/) {
  throw UsageError(fmt::format("savepoint: cannot set '{}': this process group has no store (with c10d, pass the "
                               "job's c10d::Store to savepoint::c10d_process_group)",
                               key));
}

std::optional<std::string> ProcessGroup::store_get(const std::string& key) {
  throw UsageError(fmt::format("savepoint: cannot read '{}': this process group has no store (with c10d, pass the "
                               "job's c10d::Store to savepoint::c10d_process_group)",
                               key));
}

}  // namespace savepoint
