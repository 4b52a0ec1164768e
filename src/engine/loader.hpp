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
// Recovery: one loop over candidates, best first, from one or more sources (the memory
// tier's, then the directory's; each source collective, its candidates the same on every rank):
//   1. the source names its next candidate (the directory's: rank 0 chooses, from_root)
//   2. prepare everywhere, as above. Damage (is_damage) on any rank rejects the candidate on
//      every rank and recovery goes back to 1; any other failure is raised. With
//      strict_recovery, damage is raised too, unless the source holds another copy of the
//      same checkpoint (the memory tier's buddy copies): a repair, never an older state
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

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace savepoint::engine {

/// Step 1 on this rank only, from any source (a directory, a bundle): matches `recoverables`
/// to `checkpoint`'s records, reads and verifies every file this rank needs (io_threads at a
/// time) and runs every prepare_load; nothing is changed. The returned Apply runs step 2.
Apply prepare_load(const World& world, const Checkpoint& checkpoint, const LoadSource& source,
                   const std::vector<Recoverable>& recoverables, const CheckpointerOptions& options);

/// A checkpoint recovery may load.
struct Candidate {
  std::string name;  // the checkpoint's name (another copy of the same checkpoint: the same name)
  fs::path path;     // for messages
  /// Step 1 on this rank; `loaded` (not null) gets the checkpoint as it is loaded.
  std::function<Apply(Checkpoint* loaded)> prepare;
  /// The source holds another copy of this checkpoint to try if this one is damaged (then
  /// strict_recovery does not raise yet: the copy is the same state).
  bool another_copy = false;
};
/// Collective: the source's next candidate, best first, the same on every rank; nullopt when
/// it has no more. `damage`: why the previous candidate did not load ("" for the first call).
using CandidateSource = std::function<std::optional<Candidate>(const std::string& damage)>;

class Loader {
 public:
  Loader(const World& world, const Catalog& catalog, const std::vector<Recoverable>& recoverables,
         const CheckpointerOptions& options)
      : world_(world), catalog_(catalog), recoverables_(recoverables), options_(options) {}

  /// Loads `checkpoint` into the registered objects of every rank (collective); throws
  /// StaleCheckpointError when its directory now holds another checkpoint.
  void load(const Checkpoint& checkpoint) const;
  /// Loads the first candidate of `sources` (in order, each best first) that loads; nullopt
  /// when no source has one. CorruptCheckpointError listing each when candidates existed but
  /// every one was damaged (collective).
  std::optional<Checkpoint> recover(const std::vector<CandidateSource>& sources) const;
  /// The directory's checkpoints as a source: `candidates` best first (rank 0's count).
  CandidateSource directory_candidates(std::vector<const Checkpoint*> candidates) const;

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
