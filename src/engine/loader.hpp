// engine/loader.hpp — the one load, on any World (a process group, or a single process as a
// world of one): verified, all or nothing over the keys and over the ranks.
//
// Loading a checkpoint:
//   1. prepare, on every rank (agree): every registered key is matched to its file (missing,
//      optional, hook-name and per-rank world-size checks); every file this rank reads is
//      read and verified against meta.json (size, XXH3), io_threads at a time, a sharded key
//      only in the blocks of this rank's rows; every hook's prepare_load runs. Nothing is
//      changed yet.
//   2. apply, on every rank (agree): every Apply runs, in registration order, "load last"
//      hooks (RNG) at the end.
// Recovery (candidates best first, as rank 0 lists them):
//   1. choose: rank 0 names the best candidate not yet rejected (from_root)
//   2. prepare everywhere, as above. Damage (is_damage) on any rank rejects the candidate on
//      every rank, and recovery goes back to 1; any other failure is raised
//   3. apply everywhere
// A world of one runs exactly these steps with free collectives; in a group this costs 3
// collectives when the first choice loads, and 2 more per candidate some rank found damaged.
#pragma once

#include "catalog.hpp"
#include "load_source.hpp"
#include "world.hpp"

#include <savepoint/checkpoint.hpp>
#include <savepoint/hooks.hpp>
#include <savepoint/options.hpp>

#include <optional>
#include <vector>

namespace savepoint::engine {

/// Step 1 on this rank only, from any source (a directory, a bundle): matches `recoverables`
/// to `checkpoint`'s records, reads and verifies every file this rank needs (io_threads at a
/// time) and runs every prepare_load; nothing is changed. The returned Apply runs step 2.
Apply prepare_load(const World& world, const Checkpoint& checkpoint, const LoadSource& source,
                   const std::vector<Recoverable>& recoverables, const CheckpointerOptions& options);

class Loader {
 public:
  Loader(const World& world, const Catalog& catalog, const std::vector<Recoverable>& recoverables,
         const CheckpointerOptions& options)
      : world_(world), catalog_(catalog), recoverables_(recoverables), options_(options) {}

  /// Loads `checkpoint` into the registered objects of every rank (collective); throws
  /// StaleCheckpointError when its directory now holds another checkpoint.
  void load(const Checkpoint& checkpoint) const;
  /// Loads the first of `candidates` (best first) that loads; nullopt when there is none
  /// (collective; rank 0's candidates count).
  std::optional<Checkpoint> recover(const std::vector<const Checkpoint*>& candidates) const;

  /// Step 1 on this rank only: reads, verifies and prepares everything, changing nothing; the
  /// returned Apply runs step 2. `current`: the checkpoint as meta.json says now.
  Apply prepare(const Checkpoint& checkpoint, Checkpoint* current = nullptr) const;

 private:
  const World& world_;
  const Catalog& catalog_;
  const std::vector<Recoverable>& recoverables_;
  const CheckpointerOptions& options_;
};

}  // namespace savepoint::engine
