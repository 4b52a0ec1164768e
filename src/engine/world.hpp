// engine/world.hpp — the ranks an operation runs on, and how they agree. Every save, load and
// deletion runs on a World: a job's process group, or for a single process a world of one
// whose collectives return their input at no cost. There is one engine, not two.
//
// Two agreement primitives carry every decision:
//   from_root: rank 0 runs a step and broadcasts its result or its error (1 broadcast)
//   agree:     every rank runs a step; one all-gather of results or errors
// In a group, a step's failure on some rank (or the collective's: a rank died, the timeout)
// raises DistributedError with the same message on every rank. In a world of one a step's
// exception propagates as it is: nobody else needs to hear of it.
// Torch-free: they talk to savepoint::ProcessGroup only.
#pragma once

#include "catalog.hpp"

#include <savepoint/checkpoint.hpp>
#include <savepoint/distributed.hpp>
#include <savepoint/hooks.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace savepoint::engine {

class World {
 public:
  /// `group` null: a single process, a world of one.
  explicit World(std::shared_ptr<ProcessGroup> group);

  ProcessGroup& group() const noexcept { return *group_; }
  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }

  // What a checkpoint records of the ranks (docs/format.md). A process without a group writes
  // the single-process layout: no world size, no ranks, per-rank keys under the key's own
  // name; and loads a per-rank key from rank 0's file of a checkpoint of any world size.
  /// meta.json's "world_size" for a checkpoint this world writes (0: none recorded).
  int recorded_size() const noexcept { return standalone_ ? 0 : size_; }
  /// The rank recorded for a file this rank writes, per rank or not (-1: shared by all ranks).
  int record_rank(bool per_rank) const noexcept;
  /// The file name of `r` this rank writes.
  std::string file_name(const Recoverable& r, bool per_rank) const;
  /// The record of a per-rank key this rank loads from `checkpoint`, or nullptr if it has
  /// none. MismatchError when the checkpoint was written by another number of ranks (unless
  /// the key is optional: logged, nullptr, and `*skip` set).
  const FileRecord* per_rank_record(const Checkpoint& checkpoint, const Recoverable& r, bool* skip) const;

  /// A world of one may run collectives from any thread; a group's are used by one thread at a
  /// time, so an operation waits for an async save's collectives first.
  bool collectives_from_any_thread() const noexcept { return size_ == 1; }

 private:
  std::shared_ptr<ProcessGroup> group_;  // never null
  bool standalone_;                      // no group was given
  int rank_;
  int size_;
};

/// Rank 0 runs `step`; its string result (or error) reaches every rank.
std::string from_root(const World& world, const char* what, const std::function<std::string()>& step);
/// Every rank runs `step`; returns every rank's result, indexed by rank.
std::vector<std::string> agree(const World& world, const char* what, const std::function<std::string()>& step);

/// Damage: a checkpoint that recovery skips for the next one (a checksum or size that does not
/// match, a file that cannot be read, a checkpoint deleted or replaced since it was listed).
/// Anything else (a mismatch with the registered objects, a hook's failure) is the program's.
bool is_damage(const std::exception& e);

/// The directory lock on rank 0 (stale temporaries cleaned there), null on the other ranks;
/// rank 0's failure (LockError...) is raised on every rank.
std::shared_ptr<detail::DirectoryLock> open_collectively(const World& world, const fs::path& root, bool clean_stale);

/// from_root for a step that returns checkpoints: rank 0 returns its own values, the other
/// ranks decode them from meta.json's text.
std::vector<Checkpoint> checkpoints_from_root(const World& world, const char* what,
                                              const std::function<std::vector<Checkpoint>()>& step);
/// Checkpoint values through a string (meta.json's own text), so rank 0 can hand them over.
std::string encode_checkpoints(const std::vector<Checkpoint>& checkpoints);
std::vector<Checkpoint> decode_checkpoints(const std::string& text);

}  // namespace savepoint::engine
