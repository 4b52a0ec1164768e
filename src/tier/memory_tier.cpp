#include "memory_tier.hpp"

#include "persistence.hpp"

#include "../engine/launch.hpp"
#include "../engine/priority.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/object_store.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include <fmt/format.h>

#include <chrono>
#include <exception>

namespace savepoint::tier {

using nlohmann::json;

namespace {
double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

const MemoryTierOptions& checked(const MemoryTierOptions& options, const engine::World& world) {
  if (options.directory().empty()) {
    throw UsageError("savepoint: MemoryTierOptions::directory is required (a node-local tmpfs directory such as "
                     "/dev/shm/<job>)");
  }
  if (is_object_store_path(options.directory())) {
    throw UsageError(fmt::format("savepoint: MemoryTierOptions::directory '{}' is an object store: the memory tier needs "
                                 "a node-local directory (a tmpfs such as /dev/shm/<job>); its persists may go to an "
                                 "s3:// Checkpointer directory",
                                 options.directory().string()));
  }
  if (options.keep() < 1)
    throw UsageError(fmt::format("savepoint: MemoryTierOptions::keep must be >= 1 (got {})", options.keep()));
  if (world.size() > 1 && !options.replication_group()) {
    throw UsageError("savepoint: a memory tier with a process group needs MemoryTierOptions::replication_group: a "
                     "process group of its own for the buddy copies and the disk persists");
  }
  return options;
}
}  // namespace

MemoryTier::MemoryTier(const engine::World& world, const MemoryTierOptions& options)
    : world_(world),
      options_(checked(options, world)),
      runtime_(options_),
      replication_(options.replication_group()),
      nodes_(engine::NodeMap::gather(world, options.node_id().empty() ? engine::default_node_id() : options.node_id())),
      layout_(options.directory()),
      buddies_(layout_, nodes_, replication_),
      buffer_(kChunk),
      recovery_(layout_, nodes_, world_, buffer_) {
  if (world.size() > 1 && (replication_.size() != world.size() || replication_.rank() != world.rank())) {
    throw UsageError(fmt::format("savepoint: the replication group must have the same ranks as the process group "
                                 "(this process is rank {} of {} there, rank {} of {} in the process group)",
                                 replication_.rank(), replication_.size(), world.rank(), world.size()));
  }
  if (options.redundancy() == Redundancy::parity && nodes_.nodes() > 1)
    parity_ = std::make_unique<ParitySets>(layout_, nodes_, replication_, options.parity_set_size());
  else if (options.redundancy() == Redundancy::parity && options.parity_set_size() < 2)
    throw UsageError(fmt::format("savepoint: MemoryTierOptions::parity_set_size must be >= 2 (got {})",
                                 options.parity_set_size()));
  std::shared_ptr<detail::DirectoryLock> lock;
  engine::agree(world, "memory tier (opening the node's directory)", [&] {
    if (!nodes_.is_leader(world.rank())) return std::string();
    layout_.create_and_clean();
    lock = detail::DirectoryLock::acquire(layout_.own());
    engine::Catalog(layout_.own(), lock).clean_stale();
    return std::string();
  });
  catalog_ = std::make_unique<engine::Catalog>(layout_.own(), std::move(lock));
}

// ------------------------------------------------------------------ saving
std::shared_ptr<engine::PreparedSave> MemoryTier::prepare_save(const MemoryTierOptions& now,
                                                               const std::vector<Recoverable>& recoverables,
                                                               const json& meta, const SaveOptions& options,
                                                               const std::function<engine::SavePlan()>& make_plan) {
  const bool cadenced = now.skip_while_busy();
  if (cadenced && !cadence_.call(steady_seconds())) {
    cadence_.returned(steady_seconds());
    return nullptr;
  }
  engine::SavePlan plan = make_plan();
  runtime_ = now;  // no save is in flight now: the background thread reads it for this one
  plan.nodes = &nodes_;
  if (runtime_.reuse_files()) plan.write_mode = detail::WriteMode::reuse;  // over a spare's files
  if (cadenced) plan.decide_on_root = [this] { return json(cadence_.plan_next(steady_seconds())); };
  const SaveOptions quiet = SaveOptions().end_of_epoch(options.end_of_epoch()).verbosity(LogLevel::debug);
  std::shared_ptr<engine::PreparedSave> save = engine::prepare_save(world_, *catalog_, recoverables, meta, quiet, plan);
  if (cadenced != save->root_decision.is_number_unsigned()) {  // rank 0 plans for every rank, or for none
    throw UsageError(fmt::format("savepoint: MemoryTierOptions::skip_while_busy differs between ranks: {} on rank "
                                 "{}, {} on rank 0; set it the same on every rank (they would skip different saves)",
                                 cadenced ? "true" : "false", world_.rank(), cadenced ? "false" : "true"));
  }
  if (cadenced) cadence_.set_next(save->root_decision.get<std::uint64_t>());
  return save;
}

void MemoryTier::returned() {
  if (runtime_.skip_while_busy()) cadence_.returned(steady_seconds());
}

Checkpoint MemoryTier::finish_save(engine::PreparedSave& save, engine::Catalog& disk) {
  engine::set_thread_priority(runtime_.background_priority());  // the saver's thread is this save's own
  const Checkpoint committed = engine::finish_save(world_, save, nullptr);
  std::vector<std::string> written;
  for (const auto& f : save.files) written.push_back(f.record.file);
  const long complete_count = complete(committed, written);
  const int every = runtime_.persist_every();
  if (every > 0 && complete_count % every == 0) persist_newest(disk);
  // The first save also sets the tier up (the capacity check, the first messages on the
  // replication group, the staging buffers' first pages): its duration is not a save's, and
  // would space every later save far apart. The cadence learns from the saves after it.
  if (runtime_.skip_while_busy() && complete_count > 1) cadence_.completed(steady_seconds());  // rank 0 reads it
  return committed;
}

long MemoryTier::complete(const Checkpoint& committed, const std::vector<std::string>& my_files) {
  const auto add_redundancy = [&] {
    if (parity_) {
      parity_->encode(committed, my_files);
      detail::log(LogLevel::debug, "savepoint: memory tier: {}: parity share of rank {} computed, {} bytes sent",
                  committed.name(), world_.rank(), parity_->bytes_sent());
    } else if (nodes_.nodes() > 1) buddies_.exchange(committed, my_files);
  };
  if (completed_ == 0) {
    // Set-up, once the sizes are known: every rank hears if a node's memory cannot hold the tier.
    engine::agree(replication_, "memory tier (checking the node's memory)", [&] {
      add_redundancy();
      if (nodes_.is_leader(world_.rank())) layout_.check_capacity(committed, runtime_.keep());
      return std::string();
    });
  } else if (nodes_.nodes() > 1) {
    std::exception_ptr failure;
    try {
      add_redundancy();
    } catch (...) {
      failure = std::current_exception();
    }
    // One all-gather: every rank's part and redundancy are in place, or every rank hears who failed.
    engine::agree(replication_, parity_ ? "memory tier (parity)" : "memory tier (buddy copies)", [&] {
      if (failure) std::rethrow_exception(failure);
      return std::string();
    });
  }
  // Every rank agreed (with one node, finish_save's commit on every node said it): complete.
  if (nodes_.is_leader(world_.rank())) {
    layout_.mark_complete(committed);
    layout_.retain(runtime_.keep(), runtime_.reuse_files());
  }
  return ++completed_;
}

std::optional<Checkpoint> MemoryTier::persist(engine::Catalog& disk, const MemoryTierOptions& now) {
  runtime_ = now;  // the caller waited for the save in flight
  return persist_newest(disk);
}

std::optional<Checkpoint> MemoryTier::persist_newest(engine::Catalog& disk) {
  return tier::persist(layout_, nodes_, replication_, disk, runtime_.persist_keep(), buffer_);
}

// ------------------------------------------------------------------ recovery
engine::CandidateSource MemoryTier::candidates(const std::vector<Recoverable>& recoverables,
                                               const CheckpointerOptions& options, const engine::Catalog& disk) {
  return recovery_.candidates(recoverables, options, disk);
}

}  // namespace savepoint::tier
