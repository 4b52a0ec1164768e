#include "world.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/detail/object_store.hpp>
#include <savepoint/log.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in fmt/format.h before fmt 11)

#include <nlohmann/json.hpp>

#include <algorithm>

namespace savepoint::engine {

using nlohmann::json;

namespace {
// A single process: rank 0 of 1. Collectives return their input; nothing waits.
class WorldOfOne final : public ProcessGroup {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  std::string broadcast(const std::string& bytes) override { return bytes; }
  std::vector<std::string> all_gather(const std::string& bytes) override { return {bytes}; }
  void barrier() override {}
  std::chrono::milliseconds timeout() const override { return std::chrono::milliseconds::max(); }
};

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

[[noreturn]] void collective_failed(const World& world, const char* what, const std::exception& e) {
  // c10d's errors carry a long C++ backtrace after the first line: keep the first line.
  std::string cause = e.what();
  cause = cause.substr(0, std::min(cause.find('\n'), std::size_t{400}));
  throw DistributedError(
      fmt::format("savepoint: {}: a collective failed on rank {} of {} (another rank died, failed outside "
                  "savepoint, or did not arrive within the timeout of {} ms): {}",
                  what, world.rank(), world.size(), world.group().timeout().count(), cause),
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

World::World(std::shared_ptr<ProcessGroup> group) : standalone_(group == nullptr) {
  group_ = standalone_ ? std::make_shared<WorldOfOne>() : std::move(group);
  rank_ = group_->rank();
  size_ = group_->world_size();
  if (size_ < 1 || rank_ < 0 || rank_ >= size_)
    throw UsageError(fmt::format("savepoint: the process group says rank {} of {}: not a rank of the group", rank_, size_));
}

int World::record_rank(bool per_rank) const noexcept {
  return per_rank && !standalone_ ? rank_ : -1;
}

std::string World::file_name(const Recoverable& r, bool per_rank) const {
  std::string file = r.file_name();
  if (!per_rank || standalone_) return file;
  return fmt::format("{}.rank{}{}", r.key(), rank_, file.substr(r.key().size()));
}

const FileRecord* World::per_rank_record(const Checkpoint& checkpoint, const Recoverable& r, bool* skip) const {
  *skip = false;
  if (standalone_) return checkpoint.file(r.key());  // rank 0's file, whoever wrote it
  // A rank's own file, and only at the world size that wrote it: there is no way to map
  // per-rank state (an RNG, a rank's sampler) to another number of ranks.
  if (checkpoint.world_size != size_ && checkpoint.file(r.key()) != nullptr) {
    const std::string what = fmt::format(
        "per-rank key '{}' of checkpoint '{}' was saved by {} rank(s), but this job has {}: per-rank state "
        "cannot be mapped to another world size (mark the key optional to start it afresh)",
        r.key(), checkpoint.path.string(), checkpoint.world_size == 0 ? 1 : checkpoint.world_size, size_);
    if (!r.options().optional()) throw MismatchError(what, checkpoint.path, r.key());
    detail::log(LogLevel::warn, "{}: leaving it as is (optional)", what);
    *skip = true;
    return nullptr;
  }
  return checkpoint.file(r.key(), rank_);
}

std::string from_root(const World& world, const char* what, const std::function<std::string()>& step) {
  if (world.size() == 1) return step();
  const std::string mine = world.rank() == 0 ? run_step(step) : std::string();
  std::string received;
  try {
    received = world.group().broadcast(mine);
  } catch (const std::exception& e) {
    collective_failed(world, what, e);
  }
  const json message = parse_message(received, what, 0);
  if (!message.at("ok").get<bool>()) {
    throw DistributedError(
        fmt::format("savepoint: {} failed on rank 0: {}", what, message.at("error").get<std::string>()), 0);
  }
  return message.at("data").get<std::string>();
}

std::vector<std::string> agree(const World& world, const char* what, const std::function<std::string()>& step) {
  if (world.size() == 1) return {step()};
  const std::string mine = run_step(step);
  std::vector<std::string> all;
  try {
    all = world.group().all_gather(mine);
  } catch (const std::exception& e) {
    collective_failed(world, what, e);
  }
  if (static_cast<int>(all.size()) != world.size()) {
    throw DistributedError(fmt::format("savepoint: {}: the all-gather returned {} message(s) for {} ranks", what,
                                       all.size(), world.size()),
                           -1);
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

bool is_damage(const std::exception& e) {
  return dynamic_cast<const CorruptCheckpointError*>(&e) != nullptr ||
         dynamic_cast<const StaleCheckpointError*>(&e) != nullptr || dynamic_cast<const IoError*>(&e) != nullptr;
}

std::shared_ptr<detail::DirectoryLock> open_collectively(const World& world, const fs::path& root, bool clean_stale) {
  std::shared_ptr<detail::DirectoryLock> lock;
  from_root(world, "opening the checkpoint directory", [&] {
    detail::make_directories(root);
    if (is_object_store_path(root)) detail::probe_conditional_create(root);  // the commit relies on it
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

std::vector<Checkpoint> checkpoints_from_root(const World& world, const char* what,
                                              const std::function<std::vector<Checkpoint>()>& step) {
  std::vector<Checkpoint> mine;
  const std::string text = from_root(world, what, [&] {
    mine = step();
    return world.size() == 1 ? std::string() : encode_checkpoints(mine);
  });
  return world.rank() == 0 ? mine : decode_checkpoints(text);
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

void ProcessGroup::send_and_receive(const std::vector<Outgoing>& /*sends*/, const std::vector<Incoming>& /*receives*/) {
  throw UsageError("savepoint: this process group cannot send point to point (the memory tier's buddy copies need "
                   "it; savepoint::c10d_process_group can)");
}

}  // namespace savepoint
