// savepoint/training.hpp — what a training loop needs to resume at any step.
//
//   savepoint::DataPosition position;                       // how far into the epoch
//   savepoint::IntervalSaver saver(ckpt, savepoint::IntervalOptions().every_steps(500));
//   ckpt.add_recoverable("sampler", sampler);               // torch RandomSampler etc.
//   ckpt.add_recoverable("position", position);
//   ckpt.recover_if_possible();
//   for (auto epoch : epochs) {
//     if (position.begin_epoch(epoch)) sampler.reset();     // false: resuming mid-epoch
//     while (auto indices = sampler.next(batch_size)) {
//       train_step(dataset.get_batch(*indices));
//       position.advance();
//       saver.after_step({{"step", step}});                 // every 500 steps, or on SIGTERM
//       if (saver.preempted()) return 0;                    // saved; exit before the kill
//     }
//     saver.save_end_of_epoch({{"epoch", epoch}, {"val_loss", v}}, savepoint::keep_latest(2));
//   }
//
// The SIGTERM/SIGUSR1 handler only sets a flag; the save happens at the next after_step, on
// the training thread, where the state is consistent.
#pragma once

#include <savepoint/checkpointer.hpp>
#include <savepoint/detail/arg.hpp>
#include <savepoint/distributed.hpp>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <optional>
#include <vector>

namespace savepoint {

/// Where the data loop stands: the epoch it belongs to and how many batches of it were
/// consumed. Register it as a recoverable. For a loader without its own state (your own
/// iterator), shuffle each epoch with epoch_seed() and skip batches_done() batches.
class DataPosition {
 public:
  static constexpr const char* savepoint_file_extension = ".json";

  explicit DataPosition(std::uint64_t base_seed = 0) : base_seed_(base_seed) {}

  /// Call at the start of each epoch. Returns true for a fresh epoch (reshuffle, start at
  /// batch 0) and false when a recovered intra-epoch checkpoint left this epoch half done
  /// (keep the restored loader state, or skip batches_done() batches).
  bool begin_epoch(std::int64_t epoch);
  /// Counts consumed batches; call once per batch, before the step's checkpoint.
  void advance(std::uint64_t batches = 1) noexcept { batches_done_ += batches; }

  std::int64_t epoch() const noexcept { return epoch_; }
  std::uint64_t batches_done() const noexcept { return batches_done_; }
  /// A seed for this epoch's shuffle that depends only on base_seed and the epoch.
  std::uint64_t epoch_seed() const noexcept;

  void save(const std::filesystem::path& file) const;
  void load(const std::filesystem::path& file, bool end_of_epoch);

 private:
  std::uint64_t base_seed_;
  std::int64_t epoch_ = 0;
  std::uint64_t batches_done_ = 0;
};

class IntervalOptions {
 public:
  /// What every_minutes measures time with.
  using Clock = std::function<std::chrono::steady_clock::time_point()>;

  /// Save after this many steps since the last save (0: never by steps).
  SAVEPOINT_ARG(std::uint64_t, every_steps) = 0;
  /// Save when this many minutes passed since the last save (0: never by time).
  SAVEPOINT_ARG(double, every_minutes) = 0;
  /// The time source of every_minutes; std::chrono::steady_clock::now by default. Tests (or
  /// a loop that counts simulated time) inject their own.
  SAVEPOINT_ARG(Clock, clock) = &std::chrono::steady_clock::now;
  /// Signals that request a save at the next step and a clean exit. Empty: none handled.
  SAVEPOINT_ARG(std::vector<int>, preemption_signals);
  /// How many intra-epoch checkpoints to keep (newest first). Only the saver's own are
  /// counted and deleted (meta "saved_by" is "interval" or "preemption"): end-of-epoch
  /// checkpoints and intra-epoch ones the program saved itself are never touched.
  SAVEPOINT_ARG(int, intra_epoch_to_keep) = 1;
  /// With a process group: a time-based or preemption save decided at step S (rank 0's
  /// clock, or a signal on any rank) happens on every rank at step S + agreement_margin.
  /// 2 is enough when every step runs a collective (the gradient allreduce), which keeps the
  /// ranks within one step of each other (docs/distributed.md gives the argument).
  SAVEPOINT_ARG(std::uint64_t, agreement_margin) = 2;

 public:
  /// Defaults: no interval, SIGTERM and SIGUSR1 trigger a preemption save.
  IntervalOptions();
};

/// Decides at each step whether to write an intra-epoch checkpoint: every N steps, every M
/// minutes, or when a preemption signal arrived. While it lives, it owns the handlers of its
/// preemption signals (the previous handlers are restored on destruction). One per process
/// should handle signals.
///
/// With a process group (docs/distributed.md) every rank constructs it (collectively: one
/// broadcast when time or signals are used) and calls after_step once per step. every_steps
/// is counted by each rank; every_minutes is rank 0's clock; a signal on any rank is a
/// request. Rank 0 names a target step agreement_margin steps ahead in the job's store and
/// every rank saves at that step (and with a signal, stops): one store read per rank and
/// step, no collective unless it saves. Time and signals need a group with a store.
class IntervalSaver {
 public:
  IntervalSaver(Checkpointer& checkpointer, IntervalOptions options = {});
  ~IntervalSaver();
  IntervalSaver(const IntervalSaver&) = delete;
  IntervalSaver& operator=(const IntervalSaver&) = delete;

  /// Call after every optimizer step. Saves an intra-epoch checkpoint (with `meta`) when due
  /// and removes older intra-epoch ones; returns whether it saved.
  bool after_step(const nlohmann::json& meta = nlohmann::json::object());
  /// True once a preemption signal was handled by after_step: a checkpoint was just saved
  /// and the loop should exit now.
  bool preempted() const noexcept { return preempted_; }
  /// The signal number that requested preemption (0 if none yet). Set by the handler.
  static int pending_signal() noexcept;

  /// The end-of-epoch save: ckpt.save_and_keep_only(meta, keep), then every intra-epoch
  /// checkpoint older than it is deleted (it is redundant now) and the interval restarts.
  Checkpoint save_end_of_epoch(const nlohmann::json& meta, const KeepOptions& keep = {},
                               SaveOptions options = {});

  std::uint64_t steps_since_save() const noexcept { return steps_since_save_; }
  const std::optional<Checkpoint>& last_saved() const noexcept { return last_saved_; }

 private:
  void restart_interval();
  void delete_intra_epoch(std::uint64_t older_than_sequence, int keep_newest);
  bool agreed_save_due(int signo);  // with a process group: polls or writes the store

  // With a process group and time or signals: the agreement through the store.
  std::shared_ptr<ProcessGroup> group_;  // null: every decision is local
  std::string store_prefix_;             // "savepoint/interval/<nonce>/", the same on every rank
  std::uint64_t step_ = 0;               // after_step calls so far
  std::uint64_t round_ = 0;              // agreed saves so far (the store key's number)
  std::uint64_t requested_round_ = ~std::uint64_t{0};  // the round this rank asked to preempt in
  bool has_target_ = false;              // the current round's target is known
  std::uint64_t target_step_ = 0;
  int target_signal_ = 0;                // 0: a time-based save; else the preemption's signal
  int target_rank_ = -1;                 // the rank the signal arrived on

  Checkpointer* checkpointer_;
  IntervalOptions options_;
  std::uint64_t steps_since_save_ = 0;
  std::chrono::steady_clock::time_point last_save_time_;
  bool preempted_ = false;
  std::optional<Checkpoint> last_saved_;
  std::vector<std::pair<int, void*>> previous_handlers_;  // (signal, struct sigaction*)
};

}  // namespace savepoint
