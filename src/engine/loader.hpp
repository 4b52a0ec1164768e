// engine/loader.hpp — verified, all-or-nothing loading, and recovery that falls back past
// damaged checkpoints.
//   1. every registered key is matched to its file (missing, optional, hook-name checks)
//   2. every file is read and verified against meta.json (size, XXH3), io_threads at a time
//   3. every hook's prepare_load runs (reads and validates; changes nothing)
//   4. every Apply runs, in registration order, "load last" hooks (RNG) at the end
// Only verification failures (CorruptCheckpointError) and read errors (IoError) make
// recovery try the next checkpoint; a hook's failure (HookError), a mismatch between
// checkpoint and objects, or running out of memory is raised as it is.
#pragma once

#include "catalog.hpp"

#include <savepoint/checkpoint.hpp>
#include <savepoint/hooks.hpp>
#include <savepoint/options.hpp>

#include <optional>
#include <vector>

namespace savepoint::engine {

class Loader {
 public:
  Loader(const Catalog& catalog, const std::vector<Recoverable>& recoverables, const CheckpointerOptions& options)
      : catalog_(catalog), recoverables_(recoverables), options_(options) {}

  /// Loads `checkpoint` into the registered objects; throws StaleCheckpointError when its
  /// directory now holds another checkpoint.
  void load(const Checkpoint& checkpoint) const { prepare(checkpoint)(); }
  /// Steps 1-3 only: reads, verifies and prepares everything, changing nothing; the returned
  /// Apply runs step 4 (a collective load applies only once every rank prepared).
  Apply prepare(const Checkpoint& checkpoint) const;
  /// Loads the first of `candidates` (best first) that loads; nullopt when there is none.
  std::optional<Checkpoint> recover(const std::vector<const Checkpoint*>& candidates) const;

 private:
  const Catalog& catalog_;
  const std::vector<Recoverable>& recoverables_;
  const CheckpointerOptions& options_;
};

}  // namespace savepoint::engine
