#include "memory_tier.hpp"

#include "launch.hpp"
#include "parallel.hpp"
#include "save_pipeline.hpp"
#include "save_transaction.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <tuple>

namespace savepoint::engine {

using nlohmann::json;
using namespace detail;

namespace {
// Buddy copies travel in pieces of this size: what one receive buffer holds per sender.
constexpr std::size_t kChunk = std::size_t{32} << 20;
constexpr const char* kOwn = "own";
constexpr const char* kReplicas = "replicas";
constexpr const char* kComplete = "complete";
constexpr const char* kRecovery = "recovery";

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

fs::path replica_root(const fs::path& root, int sender) { return root / kReplicas / fmt::format("rank{}", sender); }

// A complete checkpoint as its marker names it; newest first by (unixtime, name).
struct Marker {
  std::string name;
  double unixtime = 0;
  friend bool operator<(const Marker& a, const Marker& b) {
    return std::tie(b.unixtime, b.name) < std::tie(a.unixtime, a.name);  // newest first
  }
};

std::vector<Marker> read_markers(const fs::path& root) {
  std::vector<Marker> out;
  for (const auto& e : list_directory(root / kComplete, kCheckpointPrefix)) {
    try {
      const json j = json::parse(read_small_file(root / kComplete / e.name, 4096));
      out.push_back({e.name, j.at("unixtime").get<double>()});
    } catch (const std::exception& ex) {
      detail::log(LogLevel::warn, "savepoint: ignoring the unreadable memory-tier marker '{}': {}",
                  (root / kComplete / e.name).string(), ex.what());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Every committed copy of checkpoints on this node: own/<name> and replicas/rank*/<name>.
std::vector<fs::path> copies_on_node(const fs::path& root) {
  std::vector<fs::path> out;
  for (const auto& e : list_directory(root / kOwn, kCheckpointPrefix))
    if (e.status.type == FileType::directory) out.push_back(root / kOwn / e.name);
  for (const auto& sender : list_directory(root / kReplicas, "rank")) {
    if (sender.status.type != FileType::directory) continue;
    for (const auto& e : list_directory(root / kReplicas / sender.name, kCheckpointPrefix))
      if (e.status.type == FileType::directory) out.push_back(root / kReplicas / sender.name / e.name);
  }
  return out;
}

// Copies `from` into the new file `to` through `buffer`, checking it against `record` as it goes.
void copy_verified(const fs::path& from, const fs::path& to, const FileRecord& record, bool sync,
                   const ChunkBuffer& buffer) {
  const PositionalReader source = PositionalReader::file(from);
  FileWriter out(to);
  for (std::uint64_t offset = 0; offset < record.bytes; offset += buffer.size()) {
    const std::size_t n = std::min<std::uint64_t>(buffer.size(), record.bytes - offset);
    if (!source.read(offset, n, buffer.data())) break;  // shorter than recorded: the digest says so
    out.write(buffer.data(), n);
  }
  const FileDigest digest = out.finish(sync);
  if (digest.bytes != record.bytes || digest.xxh3 != record.xxh3) {
    throw CorruptCheckpointError(fmt::format("'{}' (key '{}') does not match its record: {} bytes, XXH3 {} "
                                             "(recorded {} bytes, XXH3 {})",
                                             from.string(), record.key, digest.bytes, to_hex(digest.xxh3),
                                             record.bytes, to_hex(record.xxh3)),
                                 from);
  }
}
}  // namespace

MemoryTier::MemoryTier(const World& world, const MemoryTierOptions& options)
    : world_(world),
      replication_(options.replication_group()),
      root_(options.directory()),
      keep_(options.keep()),
      nodes_(NodeMap::gather(world, options.node_id().empty() ? default_node_id() : options.node_id())) {
  if (root_.empty()) throw UsageError("savepoint: MemoryTierOptions::directory is required (a node-local tmpfs "
                                      "directory such as /dev/shm/<job>)");
  if (is_object_store_path(root_)) {
    throw UsageError(fmt::format("savepoint: MemoryTierOptions::directory '{}' is an object store: the memory tier needs "
                                 "a node-local directory (a tmpfs such as /dev/shm/<job>); its persists may go to an "
                                 "s3:// Checkpointer directory",
                                 root_.string()));
  }
  if (keep_ < 1) throw UsageError(fmt::format("savepoint: MemoryTierOptions::keep must be >= 1 (got {})", keep_));
  if (world.size() > 1) {
    if (!options.replication_group()) {
      throw UsageError("savepoint: a memory tier with a process group needs MemoryTierOptions::replication_group: a "
                       "process group of its own for the buddy copies and the disk persists");
    }
    if (replication_.size() != world.size() || replication_.rank() != world.rank()) {
      throw UsageError(fmt::format("savepoint: the replication group must have the same ranks as the process group "
                                   "(this process is rank {} of {} there, rank {} of {} in the process group)",
                                   replication_.rank(), replication_.size(), world.rank(), world.size()));
    }
  }
  std::shared_ptr<DirectoryLock> lock;
  agree(world, "memory tier (opening the node's directory)", [&] {
    if (!nodes_.is_leader(world.rank())) return std::string();
    for (const char* sub : {kOwn, kReplicas, kComplete, kRecovery}) make_directories(root_ / sub);
    lock = DirectoryLock::acquire(root_ / kOwn);
    Catalog(root_ / kOwn, lock).clean_stale();
    for (const auto& sender : list_directory(root_ / kReplicas, "rank"))
      for (const auto& e : list_directory(root_ / kReplicas / sender.name, kTempPrefix))
        remove_tree(root_ / kReplicas / sender.name / e.name);
    return std::string();
  });
  catalog_ = std::make_unique<Catalog>(root_ / kOwn, std::move(lock));
}

// ------------------------------------------------------------------ buddy copies
void MemoryTier::replicate(const Checkpoint& committed, const std::vector<std::string>& my_files) {
  const int me = world_.rank();
  const int buddy = nodes_.buddy_of(me);
  const std::vector<int> senders = nodes_.kept_for(me);
  const fs::path part = catalog_->root() / committed.name();
  ProcessGroup& group = replication_.group();

  // What this rank sends: its files, and its node's meta.json (the whole checkpoint's records).
  struct Outbound {
    PositionalReader reader;
    std::uint64_t bytes;
  };
  std::vector<Outbound> sources;
  json header{{"name", committed.name()}, {"meta", read_small_file(part / kMetaFileName, kMaxMetaBytes)}};
  header["files"] = json::array();
  for (const auto& file : my_files) {
    const auto st = path_status(part / file);
    if (!st) throw IoError(fmt::format("savepoint: '{}' vanished before its buddy copy", (part / file).string()), part / file, ENOENT);
    sources.push_back({PositionalReader::file(part / file), st->size});
    header["files"].push_back({{"file", file}, {"bytes", st->size}});
  }
  const std::string mine = dump(header);

  // 1. Header sizes, then headers.
  std::uint64_t my_size = mine.size();
  std::vector<std::uint64_t> sizes(senders.size());
  std::vector<ProcessGroup::Outgoing> sends;
  std::vector<ProcessGroup::Incoming> receives;
  if (buddy >= 0) sends.push_back({buddy, reinterpret_cast<const char*>(&my_size), sizeof my_size});
  for (std::size_t i = 0; i < senders.size(); ++i)
    receives.push_back({senders[i], reinterpret_cast<char*>(&sizes[i]), sizeof sizes[i]});
  group.send_and_receive(sends, receives);
  std::vector<std::string> texts(senders.size());
  sends.clear();
  receives.clear();
  if (buddy >= 0) sends.push_back({buddy, mine.data(), mine.size()});
  for (std::size_t i = 0; i < senders.size(); ++i) {
    texts[i].resize(sizes[i]);
    receives.push_back({senders[i], texts[i].data(), texts[i].size()});
  }
  group.send_and_receive(sends, receives);

  // 2. Every sender's part lands in a temporary directory beside its committed copies.
  struct Inbound {
    int sender;
    json header;
    Checkpoint checkpoint;  // parsed from the sender's meta.json
    fs::path temp, final_path;
    std::vector<const FileRecord*> files;
    std::unique_ptr<FileWriter> writer;  // files[file], while it is being received
    std::size_t file = 0;
    std::uint64_t offset = 0;
  };
  std::vector<Inbound> inbound(senders.size());
  struct TempGuard {  // removes the temporary directories of an incomplete receive
    std::vector<Inbound>& in;
    ~TempGuard() {
      for (auto& i : in) {
        i.writer.reset();
        if (i.temp.empty()) continue;
        try {
          remove_tree(i.temp);
        } catch (const Error&) {
        }
      }
    }
  } guard{inbound};
  for (std::size_t i = 0; i < senders.size(); ++i) {
    Inbound& in = inbound[i];
    in.sender = senders[i];
    in.header = json::parse(texts[i]);
    const fs::path dir = replica_root(root_, in.sender);
    make_directories(dir);
    in.final_path = dir / in.header.at("name").get<std::string>();
    in.temp = dir / (std::string(kTempPrefix) + unique_suffix());
    make_directory(in.temp);
    in.checkpoint = parse_meta(in.final_path, in.header.at("meta").get<std::string>());
    for (const auto& f : in.header.at("files")) {
      const std::string name = f.at("file").get<std::string>();
      const auto rec = std::find_if(in.checkpoint.files.begin(), in.checkpoint.files.end(),
                                    [&](const FileRecord& r) { return r.file == name; });
      if (!is_plain_file_name(name) || rec == in.checkpoint.files.end() ||
          rec->bytes != f.at("bytes").get<std::uint64_t>()) {
        throw CorruptCheckpointError(fmt::format("savepoint: rank {} sent '{}', which its checkpoint {} does not "
                                                 "list with that size",
                                                 in.sender, name, in.final_path.string()),
                                     in.final_path);
      }
      in.files.push_back(&*rec);
    }
  }
  // A received file is complete: its digest checked against the sender's record.
  const auto finish_file = [](Inbound& in) {
    const FileRecord& rec = *in.files[in.file];
    const FileDigest digest = in.writer->finish(/*sync=*/false);  // a tmpfs: nothing to sync
    in.writer.reset();
    if (digest.bytes != rec.bytes || digest.xxh3 != rec.xxh3) {
      throw CorruptCheckpointError(fmt::format("savepoint: the buddy copy of '{}' (key '{}') from rank {} does "
                                               "not match its record ({} bytes, XXH3 {}; recorded {}, {})",
                                               rec.file, rec.key, in.sender, digest.bytes, to_hex(digest.xxh3),
                                               rec.bytes, to_hex(rec.xxh3)),
                                   in.final_path);
    }
    ++in.file;
    in.offset = 0;
  };

  // 3. Chunks: this rank's files out to the buddy while the kept parts come in. Both sides
  //    walk the files in order, one buffer at a time: read() into a reused buffer, sent;
  //    received into a reused buffer, written and hashed while it is in the cache.
  while (receive_buffers_.size() < inbound.size()) receive_buffers_.push_back(std::make_unique<ChunkBuffer>(kChunk));
  std::size_t out_file = 0;
  std::uint64_t out_offset = 0;
  for (;;) {
    sends.clear();
    receives.clear();
    while (out_file < sources.size() && out_offset == sources[out_file].bytes) ++out_file, out_offset = 0;
    std::size_t out_size = 0;
    if (buddy >= 0 && out_file < sources.size()) {
      const Outbound& source = sources[out_file];
      out_size = std::min<std::uint64_t>(kChunk, source.bytes - out_offset);
      if (!source.reader.read(out_offset, out_size, buffer().data())) {
        throw IoError(fmt::format("savepoint: '{}' is shorter than when its buddy copy began",
                                  source.reader.path().string()),
                      source.reader.path(), EIO);
      }
      sends.push_back({buddy, buffer().data(), out_size});
    }
    std::vector<std::size_t> in_sizes(inbound.size(), 0);
    for (std::size_t i = 0; i < inbound.size(); ++i) {
      Inbound& in = inbound[i];
      for (;;) {  // the next file with bytes to come (empty files are created and finished here)
        if (in.file == in.files.size()) break;
        if (!in.writer) in.writer = std::make_unique<FileWriter>(in.temp / in.files[in.file]->file);
        if (in.offset < in.files[in.file]->bytes) break;
        finish_file(in);
      }
      if (in.file == in.files.size()) continue;
      in_sizes[i] = std::min<std::uint64_t>(kChunk, in.files[in.file]->bytes - in.offset);
      receives.push_back({in.sender, receive_buffers_[i]->data(), in_sizes[i]});
    }
    if (sends.empty() && receives.empty()) break;
    group.send_and_receive(sends, receives);
    out_offset += out_size;
    for (std::size_t i = 0; i < inbound.size(); ++i) {
      if (in_sizes[i] == 0) continue;
      inbound[i].writer->write(receive_buffers_[i]->data(), in_sizes[i]);
      inbound[i].offset += in_sizes[i];
    }
  }

  // 4. Each kept part is committed: meta.json, then the rename.
  for (auto& in : inbound) {
    write_file(in.temp / kMetaFileName, in.header.at("meta").get<std::string>(), /*sync=*/false);
    if (path_status(in.final_path)) remove_tree(in.final_path);  // a copy of an earlier run's
    rename_no_replace(in.temp, in.final_path);
    in.temp.clear();
  }
}

ChunkBuffer& MemoryTier::buffer() {
  if (!send_buffer_) send_buffer_ = std::make_unique<ChunkBuffer>(kChunk);
  return *send_buffer_;
}

void MemoryTier::check_capacity(const Checkpoint& committed) const {
  // This node's bytes of one checkpoint: its part and the buddy copies it keeps.
  std::uint64_t one = 0;
  for (const auto& copy : copies_on_node(root_)) {
    if (copy.filename() != committed.name()) continue;
    for (const auto& e : list_directory(copy))
      if (e.status.type == FileType::regular) one += e.status.size;
  }
  const std::uint64_t needed = one * static_cast<std::uint64_t>(keep_ + 1);  // keep, and the next one
  std::uint64_t free = 0;
  try {
    free = available_bytes(root_);
  } catch (const IoError&) {
    return;  // cannot tell: a write reports ENOSPC if it happens
  }
  if (free + one < needed) {
    throw IoError(fmt::format("savepoint: the memory tier in '{}' needs about {:.1f} MiB on this node ({} complete "
                              "checkpoint(s) kept and the next one, {:.1f} MiB each: this node's part and the buddy "
                              "copies it keeps), but only {:.1f} MiB are free there: make the file system larger "
                              "(for /dev/shm: mount -o remount,size=...), keep fewer, or use another directory",
                              root_.string(), static_cast<double>(needed) / (1 << 20), keep_,
                              static_cast<double>(one) / (1 << 20), static_cast<double>(free + one) / (1 << 20)),
                  root_, ENOSPC);
  }
}

long MemoryTier::complete(const Checkpoint& committed, const std::vector<std::string>& my_files) {
  if (completed_ == 0) {
    // Set-up, once the sizes are known: every rank hears if a node's memory cannot hold the tier.
    agree(replication_, "memory tier (checking the node's memory)", [&] {
      if (nodes_.nodes() > 1) replicate(committed, my_files);
      if (nodes_.is_leader(world_.rank())) check_capacity(committed);
      return std::string();
    });
  } else if (nodes_.nodes() > 1) {
    std::exception_ptr failure;
    try {
      replicate(committed, my_files);
    } catch (...) {
      failure = std::current_exception();
    }
    // One all-gather: every rank's part and copy are in place, or every rank hears who failed.
    agree(replication_, "memory tier (buddy copies)", [&] {
      if (failure) std::rethrow_exception(failure);
      return std::string();
    });
  }
  // Every rank agreed (with one node, finish_save's commit on every node said it): complete.
  if (nodes_.is_leader(world_.rank())) {
    write_file(root_ / kComplete / committed.name(), dump(json{{"unixtime", committed.unixtime()}}),
               /*sync=*/false);
    apply_retention();
  }
  return ++completed_;
}

void MemoryTier::apply_retention() {
  const auto markers = read_markers(root_);
  std::set<std::string> kept;
  for (std::size_t i = 0; i < markers.size() && i < static_cast<std::size_t>(keep_); ++i) kept.insert(markers[i].name);
  // Data first, markers last: a marker never outlives... nothing it names is needed by a kept one.
  for (const auto& copy : copies_on_node(root_)) {
    if (kept.count(copy.filename().string())) continue;
    remove_tree(copy);
  }
  for (const auto& sender : list_directory(root_ / kReplicas, "rank"))
    for (const auto& e : list_directory(root_ / kReplicas / sender.name, kTempPrefix))
      remove_tree(root_ / kReplicas / sender.name / e.name);
  for (const auto& m : markers)
    if (!kept.count(m.name)) remove_file(root_ / kComplete / m.name);
  for (const auto& e : list_directory(root_ / kRecovery)) remove_tree(root_ / kRecovery / e.name);
}

// ------------------------------------------------------------------ the disk tier
std::optional<Checkpoint> MemoryTier::persist(Catalog& disk, const std::optional<KeepOptions>& keep) {
  std::unique_ptr<SaveTransaction> transaction;
  Checkpoint source;  // the memory checkpoint, on every node's leader
  const json target = json::parse(from_root(replication_, "persisting the memory tier (allocating)", [&] {
    const auto markers = read_markers(root_);
    if (markers.empty()) return std::string("null");
    source = read_checkpoint(catalog_->root() / markers.front().name);
    json user = source.meta;
    user.erase("unixtime");
    user.erase("end_of_epoch");
    Checkpoint allocated = allocate_target(disk, user, SaveOptions().end_of_epoch(source.end_of_epoch()), 1);
    allocated.meta["unixtime"] = source.unixtime();  // the state's time, not the copy's
    allocated.world_size = source.world_size;
    transaction = std::make_unique<SaveTransaction>(disk.root(), std::move(allocated), SaveOptions());
    return dump(json{{"name", markers.front().name}, {"temp", transaction->directory().filename().string()}});
  }));
  if (target.is_null()) return std::nullopt;
  const std::string name = target.at("name").get<std::string>();
  // Each node's leader copies the files of its node's part (disjoint across nodes).
  agree(replication_, "persisting the memory tier (copying)", [&] {
    if (!nodes_.is_leader(world_.rank())) return std::string();
    const fs::path part = catalog_->root() / name;
    const Checkpoint here = read_checkpoint(part);
    const fs::path temp = disk.root() / target.at("temp").get<std::string>();
    for (const auto& rec : here.files)
      if (path_status(part / rec.file)) copy_verified(part / rec.file, temp / rec.file, rec, /*sync=*/true, buffer());
    return std::string();
  });
  const auto persisted = checkpoints_from_root(replication_, "persisting the memory tier (committing)", [&] {
    for (const auto& rec : source.files) transaction->record(rec);
    if (disk.lock()) disk.lock()->raise_allocated(transaction->target().sequence);
    std::vector<Checkpoint> out{transaction->commit()};
    transaction.reset();
    if (keep) {
      for (const auto& c : disk.plan_deletions(*keep)) disk.remove(c);
    }
    return out;
  });
  return persisted.at(0);
}

// ------------------------------------------------------------------ recovery
bool MemoryTier::assemble(const Checkpoint& records, const std::string& meta,
                          const std::map<std::string, std::vector<std::pair<int, fs::path>>>& holders) {
  const int me = world_.rank();
  const fs::path dir = root_ / kRecovery / records.name();
  // Every leader links what its node holds; what it lacks comes from the lowest rank holding
  // it, one file after another in the same order on every rank (no two ranks wait on each other).
  std::string damaged;  // a fetched file that does not match its record (the stream stays in step)
  const auto outcomes = agree(world_, "memory tier recovery (assembling)", [&] {
    if (nodes_.is_leader(me)) {
      if (path_status(dir)) remove_tree(dir);
      make_directories(dir);
      write_file(dir / kMetaFileName, meta, /*sync=*/false);
    }
    for (int node = 0; node < nodes_.nodes(); ++node) {
      const int leader = nodes_.members(node).front();
      for (const auto& rec : records.files) {
        const auto& copies = holders.at(rec.file);
        const auto local = std::find_if(copies.begin(), copies.end(), [&](const auto& c) { return c.first == leader; });
        if (local != copies.end()) {
          if (me == leader && !hard_link(local->second / rec.file, dir / rec.file))
            copy_verified(local->second / rec.file, dir / rec.file, rec, /*sync=*/false, buffer());
          continue;
        }
        const auto& [sender, copy] = copies.front();
        if (me != sender && me != leader) continue;
        std::optional<PositionalReader> source;
        std::unique_ptr<FileWriter> out;
        if (me == sender) source = PositionalReader::file(copy / rec.file);
        else out = std::make_unique<FileWriter>(dir / rec.file);
        char* chunk = buffer().data();
        for (std::uint64_t offset = 0; offset < rec.bytes; offset += kChunk) {
          const std::size_t n = std::min<std::uint64_t>(kChunk, rec.bytes - offset);
          if (source) {
            // A copy that changed since it was verified is sent as it reads: the receiver's
            // digest finds it, and the stream stays in step.
            (void)source->read(offset, n, chunk);
            world_.group().send_and_receive({{leader, chunk, n}}, {});
          } else {
            world_.group().send_and_receive({}, {{sender, chunk, n}});
            out->write(chunk, n);
          }
        }
        if (out) {
          const FileDigest digest = out->finish(/*sync=*/false);
          if (digest.bytes != rec.bytes || digest.xxh3 != rec.xxh3) {
            damaged = fmt::format("'{}' (key '{}') as fetched from rank {} does not match its record", rec.file,
                                  rec.key, sender);
          }
        }
      }
    }
    return damaged;
  });
  for (const auto& d : outcomes) {
    if (d.empty()) continue;
    detail::log(LogLevel::warn, "savepoint: memory tier: checkpoint {}: {}; trying an older one", records.name(), d);
    return false;
  }
  return true;
}

std::optional<Checkpoint> MemoryTier::prepare_recovery(bool verify_copies) {
  const bool leader = nodes_.is_leader(world_.rank());
  // 1. What each node holds: its complete markers and, per checkpoint, its copies' files.
  const auto inventories = agree(world_, "memory tier recovery (listing the copies)", [&] {
    if (!leader) return std::string();
    json out{{"complete", json::array()}, {"copies", json::object()}};
    for (const auto& m : read_markers(root_)) out["complete"].push_back({{"name", m.name}, {"unixtime", m.unixtime}});
    for (const auto& copy : copies_on_node(root_)) {
      json files = json::array();
      for (const auto& e : list_directory(copy))
        if (e.status.type == FileType::regular) files.push_back(e.name);
      out["copies"][copy.filename().string()].push_back({{"dir", copy.string()}, {"files", files}});
    }
    return dump(out);
  });
  std::vector<Marker> candidates;
  bool any_copy = false;
  for (const auto& text : inventories) {
    if (text.empty()) continue;
    const json inv = json::parse(text);
    any_copy = any_copy || !inv.at("copies").empty();
    for (const auto& m : inv.at("complete")) {
      Marker marker{m.at("name").get<std::string>(), m.at("unixtime").get<double>()};
      if (std::none_of(candidates.begin(), candidates.end(), [&](const Marker& c) { return c.name == marker.name; }))
        candidates.push_back(marker);
    }
  }
  std::sort(candidates.begin(), candidates.end());

  // 2. Newest first: every node's leader checks its copies of the candidate (size; with
  //    verify_copies XXH3 too); the candidate is chosen when every file has an intact copy on
  //    some surviving node.
  for (const auto& candidate : candidates) {
    const auto verified = agree(world_, "memory tier recovery (verifying the copies)", [&] {
      if (!leader) return std::string();
      json out{{"meta", nullptr}, {"files", json::object()}};  // file -> [dir] of intact copies
      for (const auto& copy : copies_on_node(root_)) {
        if (copy.filename() != candidate.name) continue;
        Checkpoint ckpt;
        try {
          ckpt = read_checkpoint(copy);
          out["meta"] = read_small_file(copy / kMetaFileName, kMaxMetaBytes);
        } catch (const Error& e) {
          detail::log(LogLevel::warn, "savepoint: memory tier: skipping '{}': {}", copy.string(), e.what());
          continue;
        }
        for (const auto& rec : ckpt.files) {
          if (!path_status(copy / rec.file)) continue;
          try {
            if (verify_copies) verify_file(ckpt, rec);
            else check_file_size(ckpt, rec);
            out["files"][rec.file].push_back(copy.string());
          } catch (const Error& e) {
            detail::log(LogLevel::warn, "savepoint: memory tier: a damaged copy, not used: {}", e.what());
          }
        }
      }
      return dump(out);
    });
    std::string meta;
    std::map<std::string, std::vector<std::pair<int, fs::path>>> holders;  // file -> (rank, copy)
    for (int r = 0; r < static_cast<int>(verified.size()); ++r) {
      if (verified[r].empty()) continue;
      const json v = json::parse(verified[r]);
      if (meta.empty() && v.at("meta").is_string()) meta = v.at("meta").get<std::string>();
      for (const auto& [file, dirs] : v.at("files").items())
        for (const auto& d : dirs) holders[file].emplace_back(r, fs::path(d.get<std::string>()));
    }
    if (meta.empty()) continue;
    const fs::path assembled = root_ / kRecovery / candidate.name;
    const Checkpoint records = parse_meta(assembled, meta);
    std::string missing;
    for (const auto& rec : records.files)
      if (!holders.count(rec.file)) missing += (missing.empty() ? "" : ", ") + rec.file;
    if (!missing.empty()) {
      detail::log(LogLevel::warn, "savepoint: memory tier: checkpoint {} lacks an intact copy of {} on the "
                  "surviving nodes; trying an older one", candidate.name, missing);
      continue;
    }
    if (!assemble(records, meta, holders)) continue;
    if (world_.rank() == 0) {
      detail::log(LogLevel::info, "savepoint: recovering {} from the memory tier ({} node(s))", candidate.name,
                  nodes_.nodes());
    }
    return read_checkpoint(assembled);
  }
  if (any_copy || !candidates.empty()) {
    detail::log(LogLevel::warn, "savepoint: the memory tier in '{}' holds no complete checkpoint that the surviving "
                                "nodes have every part of (a node and its buddy both lost?): recovering from disk",
                root_.string());
  }
  return std::nullopt;
}

}  // namespace savepoint::engine
