#include "recovery.hpp"

#include "transport.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <memory>

namespace savepoint::tier {

using nlohmann::json;
using namespace detail;

bool Recovery::assemble(const Checkpoint& records, const std::string& meta, const Holders& holders) {
  const int me = world_.rank();
  const fs::path dir = layout_.recovery(records.name());
  // Every leader links what its node holds; what it lacks comes from the lowest rank holding
  // it, one file after another in the same order on every rank (no two ranks wait on each other).
  std::string damaged;  // a fetched file that does not match its record (the stream stays in step)
  const auto outcomes = engine::agree(world_, "memory tier recovery (assembling)", [&] {
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
            copy_verified(local->second / rec.file, dir / rec.file, rec, /*sync=*/false, buffer_);
          continue;
        }
        const auto& [sender, copy] = copies.front();
        if (me != sender && me != leader) continue;
        std::optional<PositionalReader> source;
        std::unique_ptr<FileWriter> out;
        if (me == sender) source = PositionalReader::file(copy / rec.file);
        else out = std::make_unique<FileWriter>(dir / rec.file);
        char* chunk = buffer_.data();
        for (std::uint64_t offset = 0; offset < rec.bytes; offset += buffer_.size()) {
          const std::size_t n = std::min<std::uint64_t>(buffer_.size(), rec.bytes - offset);
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

std::optional<Checkpoint> Recovery::prepare(bool verify_copies) {
  const bool leader = nodes_.is_leader(world_.rank());
  // 1. What each node holds: its complete markers and, per checkpoint, its copies' files.
  const auto inventories = engine::agree(world_, "memory tier recovery (listing the copies)", [&] {
    if (!leader) return std::string();
    json out{{"complete", json::array()}, {"copies", json::object()}};
    for (const auto& m : layout_.markers()) out["complete"].push_back({{"name", m.name}, {"unixtime", m.unixtime}});
    for (const auto& copy : layout_.copies()) {
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
    const auto verified = engine::agree(world_, "memory tier recovery (verifying the copies)", [&] {
      if (!leader) return std::string();
      json out{{"meta", nullptr}, {"files", json::object()}};  // file -> [dir] of intact copies
      for (const auto& copy : layout_.copies()) {
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
      out["parity"] = json::array();  // this node's parity shares of the candidate, intact ones
      for (const auto& share : layout_.parity_shares()) {
        if (share.filename() != candidate.name) continue;
        try {
          const ParityManifest manifest = read_manifest(share);
          check_parity_share(share, manifest, verify_copies);
          out["parity"].push_back({{"holder", std::stoi(share.parent_path().filename().string().substr(4))},
                                   {"dir", share.string()},
                                   {"manifest", read_small_file(share / kManifestFile, kMaxMetaBytes)}});
        } catch (const Error& e) {
          detail::log(LogLevel::warn, "savepoint: memory tier: a damaged parity share, not used: {}", e.what());
        }
      }
      return dump(out);
    });
    std::string meta;
    Holders holders;
    std::vector<Share> shares;
    for (int r = 0; r < static_cast<int>(verified.size()); ++r) {
      if (verified[r].empty()) continue;
      const json v = json::parse(verified[r]);
      if (meta.empty() && v.at("meta").is_string()) meta = v.at("meta").get<std::string>();
      for (const auto& [file, dirs] : v.at("files").items())
        for (const auto& d : dirs) holders[file].emplace_back(r, fs::path(d.get<std::string>()));
      for (const auto& p : v.at("parity")) {
        const fs::path dir = p.at("dir").get<std::string>();
        const std::string text = p.at("manifest").get<std::string>();
        shares.push_back({p.at("holder").get<int>(), {r, dir}, parse_manifest(dir, text)});
      }
    }
    if (meta.empty()) continue;
    const fs::path assembled = layout_.recovery(candidate.name);
    const Checkpoint records = parse_meta(assembled, meta);
    std::string missing;
    for (const auto& rec : records.files)
      if (!holders.count(rec.file)) missing += (missing.empty() ? "" : ", ") + rec.file;
    if (!missing.empty() && !shares.empty()) {
      const std::string why = rebuild_missing(records, holders, shares);
      if (!why.empty()) {
        detail::log(LogLevel::warn, "savepoint: memory tier: checkpoint {} lacks an intact copy of {} on the "
                    "surviving nodes and cannot rebuild it: {}; trying an older one", candidate.name, missing, why);
        continue;
      }
      missing.clear();
    }
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
                layout_.root().string());
  }
  return std::nullopt;
}

std::string Recovery::rebuild_missing(const Checkpoint& records, Holders& holders, const std::vector<Share>& shares) {
  // Each missing file belongs to one member of one parity group: at most one lost member per group.
  struct Lost {
    const ParityManifest* manifest;
    int member;
  };
  std::map<std::vector<int>, Lost> lost;  // by the group's ranks
  for (const auto& rec : records.files) {
    if (holders.count(rec.file)) continue;
    const Share* owner = nullptr;
    int member = -1;
    for (const auto& share : shares) {
      for (std::size_t j = 0; j < share.manifest.files.size() && member < 0; ++j)
        for (const auto& f : share.manifest.files[j])
          if (f.first == rec.file) member = static_cast<int>(j);
      if (member >= 0) {
        owner = &share;
        break;
      }
    }
    if (!owner) return fmt::format("no parity set covers '{}'", rec.file);
    auto [it, fresh] = lost.emplace(owner->manifest.ranks, Lost{&owner->manifest, member});
    if (!fresh && it->second.member != member) {
      return fmt::format("ranks {} and {} of one parity set (ranks {}) are both lost: a set rebuilds one",
                         owner->manifest.ranks[it->second.member], owner->manifest.ranks[member],
                         fmt::join(owner->manifest.ranks, ", "));
    }
  }
  for (const auto& group : lost) {
    const std::vector<int>& ranks = group.first;  // (a name, not a binding: lambdas below use it)
    const Lost& what = group.second;
    const ParityManifest& manifest = *what.manifest;
    const int m = static_cast<int>(ranks.size());
    std::vector<Holding> data(m), parity(m);
    for (int j = 0; j < m; ++j) {
      if (j == what.member) continue;
      // Member j's data: every one of its files in one intact directory.
      const auto& files = manifest.files[j];
      if (!files.empty()) {
        const auto first = holders.find(files.front().first);
        if (first == holders.end()) return fmt::format("rank {}'s part is incomplete too", ranks[j]);
        for (const auto& [rank, dir] : first->second) {
          const bool all = std::all_of(files.begin(), files.end(), [&, r = rank, d = dir](const auto& f) {
            const auto h = holders.find(f.first);
            return h != holders.end() && std::find(h->second.begin(), h->second.end(), std::make_pair(r, d)) != h->second.end();
          });
          if (all) {
            data[j] = {rank, dir};
            break;
          }
        }
        if (data[j].rank < 0) return fmt::format("rank {}'s part is incomplete too", ranks[j]);
      }
      const auto share = std::find_if(shares.begin(), shares.end(), [&](const Share& s) {
        return s.holder == ranks[j] && s.manifest.ranks == ranks;
      });
      if (share == shares.end()) return fmt::format("rank {}'s parity share is lost or damaged", ranks[j]);
      parity[j] = share->holding;
    }
    const int at = parity[(what.member + 1) % m].rank;
    for (int j = 0; j < m; ++j)
      if (data[j].rank < 0) data[j] = {at, fs::path()};  // a member without files reads as zeros
    const fs::path into = layout_.rebuilt(records.name()) / fmt::format("rank{}", ranks[what.member]);
    if (!rebuild(world_, manifest, what.member, data, parity, at, into, records, buffer_))
      return fmt::format("rank {}'s files rebuilt from the parity set do not match their records", ranks[what.member]);
    if (world_.rank() == 0) {
      detail::log(LogLevel::warn, "savepoint: memory tier: checkpoint {}: rebuilt rank {}'s part from its parity set "
                  "(ranks {})", records.name(), ranks[what.member], fmt::join(ranks, ", "));
    }
    for (const auto& f : manifest.files[what.member]) holders[f.first].emplace_back(at, into);
  }
  return std::string();
}

bool Recovery::disk_is_newer(const engine::Catalog& disk, const Checkpoint& memory) const {
  return !engine::from_root(world_, "recover (the memory tier or the disk)", [&] {
            for (const auto& c : disk.list())
              if (c->unixtime() > memory.unixtime()) return std::string("1");
            return std::string();
          }).empty();
}

engine::CandidateSource Recovery::candidates(const std::vector<Recoverable>& recoverables,
                                             const CheckpointerOptions& options, const engine::Catalog& disk) {
  // First with the copies only checked for size: the load verifies every byte it reads, so
  // each byte is read once. Damage found there costs a second pass with every copy verified
  // first (a damaged copy is left out, its other copy used), then the disk.
  struct State {
    int pass = 0;
    std::string first;  // the first candidate's name
    Checkpoint memory;  // the candidate being loaded (its records outlive the load's source)
  };
  auto state = std::make_shared<State>();
  return [this, state, &recoverables, &options, &disk](const std::string& damage) -> std::optional<engine::Candidate> {
    const int pass = state->pass++;
    if (pass >= 2) {
      detail::log(LogLevel::warn, "The memory tier's {} could not be loaded ({}): recovering from '{}'",
                  state->memory.name(), damage, disk.root().string());
      return std::nullopt;
    }
    if (pass == 1) {
      detail::log(LogLevel::warn, "The memory tier's {} could not be loaded ({}): verifying every copy",
                  state->memory.name(), damage);
    }
    auto memory = prepare(/*verify_copies=*/pass == 1);
    if (pass == 1 && options.strict_recovery() && (!memory || memory->name() != state->first)) {
      // Another copy of the same checkpoint is a repair; anything else is a fallback.
      throw CorruptCheckpointError(fmt::format("the memory tier's {} is damaged ({}) and strict_recovery is set: "
                                               "not falling back to {}",
                                               state->first, damage,
                                               memory ? "its older " + memory->name() : "the disk"),
                                   layout_.recovery(state->first));
    }
    if (!memory) return std::nullopt;
    if (pass == 0) {
      if (disk_is_newer(disk, *memory)) {
        detail::log(LogLevel::info, "'{}' has a checkpoint newer than the memory tier's {}: loading from there",
                    disk.root().string(), memory->name());
        return std::nullopt;
      }
      state->first = memory->name();
    }
    state->memory = std::move(*memory);
    engine::Candidate out;
    out.name = state->memory.name();
    out.path = state->memory.path;
    out.another_copy = pass == 0;
    out.prepare = [this, state, &recoverables, &options](Checkpoint* loaded) {
      *loaded = state->memory;
      const engine::DirectorySource source(state->memory);
      return engine::prepare_load(world_, state->memory, source, recoverables, options);
    };
    return out;
  };
}

}  // namespace savepoint::tier
