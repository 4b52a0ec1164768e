#include "save_pipeline.hpp"
#include "sharded.hpp"

#include "hook_call.hpp"
#include "parallel.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/detail/object_store.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <set>
#include <tuple>

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

Checkpoint allocate_target(const Catalog& catalog, const json& meta, const SaveOptions& options, int io_threads,
                           std::string* newest, const SavePlan* incremental, WriteAll* write_all) {
  if (!catalog.writable()) {
    throw UsageError(fmt::format("savepoint: cannot save a checkpoint in '{}': the Checkpointer is read-only",
                                 catalog.root().string()));
  }
  if (io_threads < 1)
    throw UsageError(fmt::format("savepoint: CheckpointerOptions::io_threads must be >= 1 (got {})", io_threads));
  const double unixtime = detail::now_unixtime();
  Checkpoint target;
  target.meta = checked_meta(meta, unixtime, options.end_of_epoch());

  if (catalog.in_store()) catalog.clean_orphans();  // before the listing the name comes from
  const auto existing = catalog.list(nullptr, /*strict=*/true);
  if (newest) {
    const Checkpoint* best = nullptr;
    for (const auto& c : existing)
      if (!best || c->sequence > best->sequence) best = &*c;
    *newest = best ? best->name() : std::string();
  }
  const auto slot = catalog.allocate(options, existing, unixtime);
  target.path = slot.path;
  target.sequence = slot.sequence;
  std::optional<std::uint64_t> bytes;
  // In an object store every checkpoint holds objects of its own (server-side copies): one
  // damaged object never reaches two checkpoints, so no save needs to write every part.
  if (incremental && write_all && !catalog.in_store()) {
    std::vector<const Checkpoint*> committed;
    for (const auto& c : existing) committed.push_back(c.get());
    *write_all = write_all_decision(committed, target, incremental->keep, incremental->full_save_every);
    bytes = write_all->estimate;
  }
  catalog.check_free_space(existing, bytes);
  return target;
}

namespace {
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// A record as a rank sends it to rank 0: meta.json's own entry, plus the registration index.
json share_record(const FileRecord& record, std::size_t index) {
  json out = detail::file_record_json(record);
  out["index"] = index;
  return out;
}

// An incremental save's file whose bytes the reference holds: linked from it. False when the
// link cannot be made (said once): the caller writes the file.
bool link_unchanged(PreparedSave& save, FileRecord& record, const PlannedPart& part, const Checkpoint& reference,
                    const fs::path& directory) {
  const fs::path from = reference.path / part.file;
  if (is_object_store_path(from)) {  // one CopyObject of the recorded size, no HEAD first
    try {
      detail::copy_object(from, directory / part.file, part.unchanged->bytes);
    } catch (const ObjectStoreError& e) {
      if (e.kind() != ObjectStoreError::Kind::not_found) throw;
      save.incremental->reference_damaged(from, "missing");
      return false;
    }
    record.bytes = part.unchanged->bytes;
    record.xxh3 = part.unchanged->xxh3;
    return true;
  }
  try {
    const auto st = detail::path_status(from);
    if (!st || st->type != detail::FileType::regular || st->size != part.unchanged->bytes) {
      save.incremental->reference_damaged(from, !st ? "missing" : "not a regular file of the recorded size");
      return false;
    }
    if (!detail::hard_link(from, directory / part.file)) {
      save.incremental->link_failed(from, "the file system refuses a hard link here");
      return false;
    }
  } catch (const IoError& e) {
    save.incremental->link_failed(from, e.what());
    return false;
  }
  record.bytes = part.unchanged->bytes;
  record.xxh3 = part.unchanged->xxh3;
  return true;
}

// A linked file is read and hashed against its record in the write phase (io_threads at a
// time; an async save's background thread), so a damaged reference is never shared: the link
// is replaced by the part written from memory (`rewrite`), whose bytes must be the recorded
// ones. An async save's tensors may have changed since its call: then this save fails, and
// the next one, which knows the file is damaged, writes the part from its snapshot.
// In an object store the link is a copy made by the server (CopyObject): its bytes never pass
// through this process, so it is not read back; each checkpoint holds objects of its own, and
// verify/scrub check them (docs/object-storage.md, "Incremental saves").
FileWrite verified_link(IncrementalSaves& incremental, const FileRecord& record, const fs::path& from,
                        const fs::path& to, FileWrite rewrite) {
  const detail::FileDigest expected{record.bytes, record.xxh3};
  if (is_object_store_path(to)) return [expected] { return expected; };
  return [&incremental, expected, key = record.key, from, to, rewrite = std::move(rewrite)]() {
    std::string damage;
    try {
      const auto found = detail::digest_file(to);  // the link: the reference's inode
      if (found.bytes != expected.bytes)
        damage = fmt::format("{} bytes, its record says {}", found.bytes, expected.bytes);
      else if (found.xxh3 != expected.xxh3)
        damage = fmt::format("xxh3 {}, its record says {}", detail::to_hex(found.xxh3), detail::to_hex(expected.xxh3));
    } catch (const Error& e) {
      damage = e.what();
    }
    if (damage.empty()) return expected;
    incremental.reference_damaged(from, damage);
    detail::remove_file(to);
    const auto written = rewrite();
    detail::sync_file(to);
    if (written.bytes != expected.bytes || written.xxh3 != expected.xxh3) {
      throw CheckpointError(fmt::format("savepoint: save: '{}' (key '{}') is damaged, and the tensors to write it "
                                        "again from changed after the save began (an async save); this save fails, "
                                        "the next one writes the part from its snapshot",
                                        from.string(), key),
                            from, key);
    }
    return written;
  };
}

// An incremental save's key: each part linked from the reference when its bytes are there,
// written otherwise (and when the link fails).
void add_parts(PreparedSave& save, const FileRecord& key_record, std::size_t index, const Payload& payload,
               const Checkpoint* reference, const fs::path& directory, const SavePlan& plan) {
  auto parts = save.incremental->plan(key_record.file, payload, reference, plan.io_threads + 1);
  for (std::size_t p = 0; p < parts.size(); ++p) {
    PlannedPart& part = parts[p];
    FileRecord record = key_record;
    record.file = part.file;
    record.part = static_cast<int>(p);
    save.parts_seen[part.file] = {PartHistory{part.signature, false}, part.reference_xxh3};
    if (part.unchanged && link_unchanged(save, record, part, *reference, directory)) {
      FileWrite rewrite = plan_write(directory / part.file, record.key, record.hook, std::move(part.payload), nullptr,
                                     nullptr, plan.write_mode);
      save.files.push_back({record, index,
                            verified_link(*save.incremental, record, reference->path / part.file, directory / part.file,
                                          std::move(rewrite)),
                            nullptr});
      ++save.verified_links;
      continue;
    }
    bool needs_sync = false;
    FileWrite write = plan_write(directory / part.file, record.key, record.hook, std::move(part.payload), plan.staging,
                                 save.snapshot.get(), plan.write_mode, nullptr, &needs_sync);
    save.files.push_back({record, index, std::move(write), nullptr, needs_sync});
  }
}

// One line per save, at SaveOptions::verbosity (memory-tier saves, every few steps, at debug).
void log_saved(const Checkpoint& saved, const PreparedSave& save, const World& world) {
  const LogLevel level = save.node_local ? LogLevel::debug : save.verbosity;
  if (log_level() > level) return;
  std::uint64_t bytes = 0;
  for (const auto& f : saved.files) bytes += f.bytes;
  const std::string shared = save.verified_links > 0 && world.size() == 1
                                 ? fmt::format(", {} shared with the previous checkpoint", save.verified_links)
                                 : std::string();
  detail::log(level, "Saved an {} checkpoint in {} ({} files{}, {:.1f} MiB)",
              saved.end_of_epoch() ? "end-of-epoch" : "intra-epoch", saved.path.string(), saved.files.size(), shared,
              static_cast<double>(bytes) / (1 << 20));
}

FileRecord received_record(const json& j, int from) {
  FileRecord f;
  f.key = j.at("key").get<std::string>();
  f.file = j.at("file").get<std::string>();
  f.hook = j.at("hook").get<std::string>();
  f.bytes = j.at("bytes").get<std::uint64_t>();
  if (!detail::parse_hex(j.at("xxh3").get<std::string>(), f.xxh3))
    throw DistributedError(fmt::format("savepoint: save: rank {} sent a malformed checksum for key '{}'", from, f.key),
                           from);
  f.rank = j.value("rank", -1);
  f.shard = j.value("shard", json());
  f.part = j.value("part", -1);
  return f;
}
}  // namespace

std::unique_ptr<PreparedSave> prepare_save(const World& world, const Catalog& catalog,
                                           const std::vector<Recoverable>& recoverables, const json& meta,
                                           const SaveOptions& options, const SavePlan& plan) {
  auto save = std::make_unique<PreparedSave>();
  save->io_threads = plan.io_threads;
  save->verbosity = options.verbosity();
  // 1. Rank 0 allocates the name and sequence and opens the temporary directory.
  const json target = json::parse(from_root(world, "save (allocating the checkpoint)", [&] {
    std::string newest;
    WriteAll write_all;
    const bool linking = plan.incremental && !plan.nodes;
    Checkpoint allocated = allocate_target(catalog, meta, options, plan.io_threads, &newest,
                                           linking ? &plan : nullptr, &write_all);
    allocated.world_size = world.recorded_size();
    const std::string name = allocated.path.filename().string();
    json out{{"path", name}, {"sequence", allocated.sequence}, {"meta", allocated.meta}, {"newest", newest}};
    save->transaction = std::make_unique<SaveTransaction>(catalog.root(), std::move(allocated), options, std::string(),
                                                          plan.write_mode == detail::WriteMode::reuse);
    out["temp"] = save->transaction->directory().filename().string();
    if (plan.decide_on_root) out["decision"] = plan.decide_on_root();
    if (write_all.write_all) {
      out["write_all"] = true;
      detail::log(LogLevel::info, "Incremental save: every part written, none linked ({})", write_all.why);
    }
    return dump(out);
  }));
  save->root_decision = target.value("decision", json());
  save->lock = catalog.lock();
  const fs::path directory = catalog.root() / target.at("temp").get<std::string>();
  if (plan.nodes) {
    // Every node has its own root: its leader opens the same checkpoint there, and its other
    // ranks make sure the directory exists before their hooks write into it.
    save->node_local = true;
    if (!save->transaction && plan.nodes->is_leader(world.rank())) {
      Checkpoint same;
      same.path = catalog.root() / target.at("path").get<std::string>();
      same.sequence = target.at("sequence").get<std::uint64_t>();
      same.meta = target.at("meta");
      same.world_size = world.recorded_size();
      save->transaction = std::make_unique<SaveTransaction>(catalog.root(), std::move(same), options,
                                                            target.at("temp").get<std::string>(),
                                                            plan.write_mode == detail::WriteMode::reuse);
    } else if (!save->transaction) {
      detail::make_directories(directory);
    }
  }
  const fs::path checkpoint_path = catalog.root() / target.at("path").get<std::string>();  // for messages
  save->directory = directory;
  if (plan.staging && plan.overlapped) save->snapshot = std::make_shared<OverlappedSnapshot>(checkpoint_path.string());
  // An incremental save links what the newest committed checkpoint already holds (not on
  // node-local roots: the memory tier writes in memory and copies whole files to the buddy).
  std::optional<Checkpoint> reference;
  if (plan.incremental && !plan.nodes) {
    save->incremental = plan.incremental;
    const std::string newest = target.at("newest").get<std::string>();
    if (!newest.empty() && !target.value("write_all", false)) {
      try {
        reference = detail::read_checkpoint(catalog.root() / newest);
      } catch (const Error& e) {  // damaged or just deleted: everything is written
        detail::log(LogLevel::warn, "Incremental save: not referencing '{}': {}", newest, e.what());
      }
    }
  }

  // 2. This rank's share: every per-rank and sharded key, and the replicated keys it writes.
  try {
    std::size_t replicated = 0;
    for (std::size_t i = 0; i < recoverables.size(); ++i) {
      const Recoverable& r = recoverables[i];
      const bool sharded = is_sharded(r);  // like per-rank files, with block checksums
      const bool per_rank = r.options().sharing() == Sharing::per_rank || sharded;
      save->keys.push_back({r.key(), sharded ? "sharded" : per_rank ? "per_rank" : "replicated"});
      if (!per_rank) {
        const int writer = plan.spread_replicated_writes ? static_cast<int>(replicated++ % world.size()) : 0;
        if (writer != world.rank()) continue;
      }
      const std::string file = world.file_name(r, per_rank);
      // A hook that writes its own file writes it locally when the checkpoint goes to an
      // object store: it is uploaded with the others.
      const bool in_store = is_object_store_path(directory);
      const fs::path destination = directory / file;
      const SaveContext ctx{in_store ? detail::scratch_file_for(destination) : destination, r.key()};
      Payload payload = call_hook(r, "save", checkpoint_path, [&] { return r.save(ctx); });
      if (in_store && payload.kind() == Payload::Kind::file) {
        FileWrite local = plan_write(ctx.file, r.key(), r.hook_name(), std::move(payload), nullptr);  // the local file
        save->files.push_back({FileRecord{r.key(), file, r.hook_name(), 0, 0, world.record_rank(per_rank)}, i,
                               [local = std::move(local), scratch = ctx.file, object = destination] {
                                 const auto digest = local();
                                 detail::upload_scratch_file(scratch, object);
                                 return digest;
                               },
                               nullptr});
        continue;
      }
      const FileRecord record{r.key(), file, r.hook_name(), 0, 0, world.record_rank(per_rank)};
      if (save->incremental && !sharded && payload.kind() == Payload::Kind::tensors) {
        add_parts(*save, record, i, payload, reference ? &*reference : nullptr, directory, plan);
        continue;
      }
      std::shared_ptr<json> shard;
      if (save->incremental && sharded) {  // a sharded key: this rank's file, whole, linked when unchanged
        PlannedPart whole = save->incremental->plan_whole(file, std::move(payload), reference ? &*reference : nullptr);
        save->parts_seen[file] = {PartHistory{whole.signature, false}, whole.reference_xxh3};
        FileRecord linked = record;
        if (whole.unchanged && link_unchanged(*save, linked, whole, *reference, directory)) {
          linked.shard = whole.unchanged->shard;  // the same bytes: the same block checksums
          std::shared_ptr<json> unused;
          FileWrite rewrite = plan_sharded_write(destination, r, std::move(whole.payload), nullptr, unused, nullptr,
                                                 plan.write_mode, nullptr);
          save->files.push_back({linked, i,
                                 verified_link(*save->incremental, linked, reference->path / file, destination,
                                               std::move(rewrite)),
                                 nullptr});
          ++save->verified_links;
          continue;
        }
        payload = std::move(whole.payload);
      }
      bool needs_sync = false;
      FileWrite write = sharded ? plan_sharded_write(destination, r, std::move(payload), plan.staging, shard,
                                                     save->snapshot.get(), plan.write_mode, &needs_sync)
                                : plan_write(destination, r.key(), r.hook_name(), std::move(payload), plan.staging,
                                             save->snapshot.get(), plan.write_mode, nullptr, &needs_sync);
      save->files.push_back({record, i, std::move(write), shard, needs_sync});
    }
  } catch (...) {
    if (world.size() == 1) throw;  // nobody waits for this rank: raised at the call, as it is
    save->error = std::current_exception();
    save->files.clear();
    save->snapshot.reset();
  }
  return save;
}

Checkpoint commit_and_retain(SaveTransaction& transaction, detail::DirectoryLock* lock,
                             const std::function<void(const Checkpoint&)>& committed,
                             const std::function<void()>& retention) {
  // Durable before the rename: a later save never reuses this sequence number, even when its
  // listing misses this checkpoint (a meta.json it could not read).
  if (lock) lock->raise_allocated(transaction.target().sequence);
  Checkpoint saved = transaction.commit();
  if (committed) committed(saved);
  if (retention) retention();
  return saved;
}

Checkpoint finish_save(const World& world, PreparedSave& save, const std::function<void()>& retention) {
  // 3. Every rank writes its files; their records reach rank 0.
  const auto shares = agree(world, "save (writing the files)", [&] {
    if (save.error) std::rethrow_exception(save.error);
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
    // Linked files are read (verified) while others are written: one more thread for them.
    run_all(writes, save.io_threads + (save.verified_links > 0 ? 1 : 0));
    std::vector<std::function<void()>> syncs;
    for (const auto& f : save.files)
      if (f.needs_sync) syncs.push_back([path = save.directory / f.record.file] { detail::sync_file(path); });
    run_all(syncs, save.io_threads);
    // No guard ran, or it found a change: the versions decide, after the last write.
    if (save.snapshot) save.snapshot->check_before_commit();
    json records = json::array();
    for (auto& f : save.files) {
      f.write = nullptr;  // releases the references to tensors and staging buffers
      if (f.shard) f.record.shard = std::move(*f.shard);
      records.push_back(share_record(f.record, f.index));
    }
    if (detail::protocol_breaks().skip_gathering_records && world.rank() != 0) records = json::array();
    return dump(json{{"keys", save.keys}, {"records", records}});
  });

  // 4. Rank 0 writes meta.json listing every rank's files and renames; then retention.
  //    Node-local roots: every node's leader does so in its root (retention is the tier's).
  const auto commit = [&] {
    std::vector<std::tuple<std::size_t, int, int, FileRecord>> records;
    const json keys0 = json::parse(shares[0]).at("keys");
    for (int r = 0; r < static_cast<int>(shares.size()); ++r) {
      const json share = json::parse(shares[r]);
      if (share.at("keys") != keys0) {
        throw UsageError(fmt::format("savepoint: rank {} registered other keys than rank 0 ({} vs {}): every rank "
                                     "must add the same recoverables in the same order, with the same sharing",
                                     r, dump(share.at("keys")), dump(keys0)));
      }
      for (const auto& j : share.at("records")) {
        FileRecord f = received_record(j, r);
        const int part = f.part;
        records.emplace_back(j.at("index").get<std::size_t>(), f.rank, part, std::move(f));
      }
    }
    std::sort(records.begin(), records.end(), [](const auto& a, const auto& b) {
      return std::tie(std::get<0>(a), std::get<1>(a), std::get<2>(a)) < std::tie(std::get<0>(b), std::get<1>(b), std::get<2>(b));
    });
    std::set<std::string> names;
    for (const auto& rec : records) {
      const FileRecord& f = std::get<3>(rec);
      if (!names.insert(f.file).second) {
        throw UsageError(fmt::format("savepoint: two keys would both be stored as '{}' (a per-rank key's "
                                     "'<key>.rank<R>' name taken by another key); rename one",
                                     f.file));
      }
      save.transaction->record(f);
    }
    std::vector<Checkpoint> saved{commit_and_retain(*save.transaction, save.lock.get(), [&](const Checkpoint& c) {
      save.transaction.reset();
      log_saved(c, save, world);
    }, retention)};
    return saved;
  };
  if (save.node_local) {
    const auto parts = agree(world, "save (committing on every node)", [&] {
      return save.transaction ? encode_checkpoints(commit()) : std::string();
    });
    save.transaction.reset();
    return decode_checkpoints(parts.at(0)).at(0);
  }
  const auto committed = checkpoints_from_root(world, "save (committing)", commit);
  save.transaction.reset();

  if (save.incremental) {
    std::map<std::string, PartHistory> seen;
    for (const auto& f : save.files) {
      const auto it = save.parts_seen.find(f.record.file);
      if (it == save.parts_seen.end()) continue;
      PartHistory h = it->second.first;
      h.changed = it->second.second && *it->second.second != f.record.xxh3;
      seen[f.record.file] = std::move(h);
    }
    save.incremental->committed(std::move(seen));
  }
  return committed.at(0);
}

}  // namespace savepoint::engine
