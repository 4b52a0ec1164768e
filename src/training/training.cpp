// Training-loop helpers: the data position, interval and preemption saves.
#include <savepoint/detail/io.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>
#include <savepoint/training.hpp>

#include <fmt/format.h>

#include <csignal>
#include <cstring>
#include <random>

namespace savepoint {

using nlohmann::json;

// ------------------------------------------------------------------ DataPosition
bool DataPosition::begin_epoch(std::int64_t epoch) {
  if (epoch == epoch_) {
    detail::log(LogLevel::info, "Resuming epoch {} after batch {}", epoch, batches_done_);
    return false;
  }
  epoch_ = epoch;
  batches_done_ = 0;
  return true;
}

std::uint64_t DataPosition::epoch_seed() const noexcept {
  // splitmix64 of (base seed, epoch): well mixed, and the same on every machine.
  std::uint64_t z = base_seed_ + 0x9E3779B97F4A7C15ULL * static_cast<std::uint64_t>(epoch_ + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

void DataPosition::save(const std::filesystem::path& file) const {
  detail::write_file(file, json{{"epoch", epoch_}, {"batches_done", batches_done_},
                                {"base_seed", base_seed_}}.dump(2) + "\n");
}

void DataPosition::load(const std::filesystem::path& file, bool /*end_of_epoch*/) {
  // An end-of-epoch checkpoint holds the finished epoch with every batch done, so the next
  // begin_epoch starts fresh; an intra-epoch one resumes its epoch.
  const std::string text = detail::read_small_file(file, 1 << 20);
  try {
    const json j = json::parse(text);
    const auto epoch = j.at("epoch").get<std::int64_t>();
    const auto done = j.at("batches_done").get<std::uint64_t>();
    const auto seed = j.at("base_seed").get<std::uint64_t>();
    epoch_ = epoch;
    batches_done_ = done;
    base_seed_ = seed;
  } catch (const json::exception& e) {
    throw CorruptCheckpointError(
        fmt::format("data position file '{}' is invalid: {}", file.string(), e.what()), file);
  }
}

// ------------------------------------------------------------------ signals
namespace {
volatile std::sig_atomic_t g_pending_signal = 0;

extern "C" void on_preemption_signal(int signo) { g_pending_signal = signo; }  // a flag, nothing else
}  // namespace

int IntervalSaver::pending_signal() noexcept { return g_pending_signal; }

IntervalOptions::IntervalOptions() : preemption_signals_{SIGTERM, SIGUSR1} {}

// ------------------------------------------------------------------ IntervalSaver
IntervalSaver::IntervalSaver(Checkpointer& checkpointer, IntervalOptions options)
    : checkpointer_(&checkpointer), options_(std::move(options)) {
  if (options_.every_minutes() < 0 || options_.intra_epoch_to_keep() < 1) {
    throw UsageError(fmt::format("savepoint: IntervalOptions needs every_minutes >= 0 and "
                                 "intra_epoch_to_keep >= 1 (got {} and {})",
                                 options_.every_minutes(), options_.intra_epoch_to_keep()));
  }
  if (!options_.clock()) throw UsageError("savepoint: IntervalOptions::clock must not be empty");
  // With a process group, time and signals are agreed through the store: a collective
  // constructor (rank 0 names this saver's keys), then no collective until a save.
  const auto& group = checkpointer.options().process_group();
  if (group && (options_.every_minutes() > 0 || !options_.preemption_signals().empty())) {
    if (!group->has_store()) {
      throw UsageError(
          "savepoint: with a process group, IntervalSaver agrees on time-based and preemption saves through the "
          "job's store, and this process group has none: pass the c10d store to savepoint::c10d_process_group(pg, "
          "timeout, store), or use IntervalOptions().every_minutes(0).preemption_signals({}) (every_steps needs no "
          "store)");
    }
    if (options_.agreement_margin() < 1) throw UsageError("savepoint: IntervalOptions::agreement_margin must be >= 1");
    group_ = group;
    // A fresh namespace per saver: keys of an earlier saver (or job) on the same store are
    // never mistaken for this one's.
    std::string nonce;
    if (group_->rank() == 0) {
      std::random_device random;
      nonce = fmt::format("{:08x}{:08x}-{}", random(), random(),
                          std::chrono::system_clock::now().time_since_epoch().count());
    }
    try {
      nonce = group_->broadcast(nonce);
    } catch (const std::exception& e) {
      throw DistributedError(fmt::format("savepoint: IntervalSaver: the broadcast of its store keys failed on rank "
                                         "{} of {}: {}",
                                         group_->rank(), group_->world_size(), e.what()),
                             -1);
    }
    store_prefix_ = "savepoint/interval/" + nonce + "/";
  }
  for (int signo : options_.preemption_signals()) {
    struct sigaction action {};
    action.sa_handler = on_preemption_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;  // let the interrupted write/read continue
    auto* previous = new struct sigaction();
    if (::sigaction(signo, &action, previous) != 0) {
      const int err = errno;
      delete previous;
      throw UsageError(fmt::format("savepoint: cannot handle signal {}: {}", signo, std::strerror(err)));
    }
    previous_handlers_.emplace_back(signo, previous);
  }
  restart_interval();
}

IntervalSaver::~IntervalSaver() {
  for (auto it = previous_handlers_.rbegin(); it != previous_handlers_.rend(); ++it) {
    auto* previous = static_cast<struct sigaction*>(it->second);
    ::sigaction(it->first, previous, nullptr);
    delete previous;
  }
}

void IntervalSaver::restart_interval() {
  steps_since_save_ = 0;
  last_save_time_ = options_.clock()();
}

namespace {
bool written_by_interval_saver(const Checkpoint& c) {
  const auto by = c.meta_value<std::string>("saved_by");
  return by && (*by == "interval" || *by == "preemption");
}
}  // namespace

void IntervalSaver::delete_intra_epoch(std::uint64_t up_to_sequence, int keep_newest) {
  checkpointer_->delete_checkpoints(
      KeepOptions()
          .num_to_keep(keep_newest)
          .predicate([up_to_sequence](const Checkpoint& c) {
            // Only intra-epoch checkpoints this saver wrote: one the program saved itself
            // (save_checkpoint(meta, intra_epoch())) is not ours to delete.
            return !c.end_of_epoch() && c.sequence <= up_to_sequence && written_by_interval_saver(c);
          })
          .verbosity(LogLevel::debug));
}

// The agreement (docs/distributed.md): rank 0 alone decides, from its clock, its own signal
// or a request another rank left in the store, and writes the round's target step,
// agreement_margin steps ahead; every other rank reads the target key once per step. A
// per-step collective keeps the ranks within one step of each other, so every rank reads the
// key before reaching the target (margin 2: rank 0 writes at step s, every other rank has
// read it by its step s + 1).
bool IntervalSaver::agreed_save_due(int signo) {
  const int rank = group_->rank();
  const std::string round = std::to_string(round_);
  try {
    if (!has_target_ && rank == 0) {
      int signal = signo, from = signo != 0 ? 0 : -1;
      if (signal == 0 && !options_.preemption_signals().empty()) {
        if (const auto request = group_->store_get(store_prefix_ + "request/" + round)) {
          const json r = json::parse(*request);
          signal = r.at("signal").get<int>();
          from = r.at("rank").get<int>();
        }
      }
      bool time_due = false;
      if (signal == 0 && options_.every_minutes() > 0) {
        const std::chrono::duration<double, std::ratio<60>> elapsed = options_.clock()() - last_save_time_;
        time_due = elapsed.count() >= options_.every_minutes();
      }
      if (signal != 0 || time_due) {
        has_target_ = true;
        target_step_ = step_ + options_.agreement_margin();
        target_signal_ = signal;
        target_rank_ = from;
        group_->store_set(store_prefix_ + "target/" + round,
                          json{{"step", target_step_}, {"signal", signal}, {"rank", from}}.dump());
        detail::log(LogLevel::info, "Rank 0 at step {}: every rank saves at step {} ({})", step_, target_step_,
                    signal != 0 ? fmt::format("signal {} on rank {}", signal, from) : std::string("time"));
      }
    } else if (!has_target_) {
      if (signo != 0 && requested_round_ != round_) {
        group_->store_set(store_prefix_ + "request/" + round, json{{"signal", signo}, {"rank", rank}}.dump());
        requested_round_ = round_;
      }
      if (const auto target = group_->store_get(store_prefix_ + "target/" + round)) {
        const json t = json::parse(*target);
        has_target_ = true;
        target_step_ = t.at("step").get<std::uint64_t>();
        target_signal_ = t.at("signal").get<int>();
        target_rank_ = t.at("rank").get<int>();
      }
    }
  } catch (const json::exception& e) {
    throw DistributedError(fmt::format("savepoint: IntervalSaver on rank {}: a malformed value in the store: {}",
                                       rank, e.what()),
                           -1);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw DistributedError(fmt::format("savepoint: IntervalSaver on rank {} could not reach the store: {}", rank,
                                       e.what()),
                           -1);
  }
  if (has_target_ && step_ > target_step_) {
    // The others are saving at the target without this rank: they raise at their timeout.
    throw DistributedError(
        fmt::format("savepoint: rank {} learnt of the save agreed for step {} only at step {}: the ranks drifted "
                    "more than {} step(s) apart (does every step run a collective, such as the gradient allreduce? "
                    "otherwise raise IntervalOptions::agreement_margin)",
                    rank, target_step_, step_, options_.agreement_margin() - 1),
        rank);
  }
  return has_target_ && step_ == target_step_;
}

bool IntervalSaver::after_step(const json& meta) {
  ++steps_since_save_;
  ++step_;
  int signo = g_pending_signal;
  bool due = false;
  if (group_) {
    // Signals and time go through the store; every_steps stays local (every rank counts the same).
    due = agreed_save_due(signo);
    signo = due ? target_signal_ : 0;
  } else {
    due = signo != 0;
  }
  if (!due && options_.every_steps() > 0) due = steps_since_save_ >= options_.every_steps();
  if (!due && !group_ && options_.every_minutes() > 0) {
    const std::chrono::duration<double, std::ratio<60>> elapsed =
        options_.clock()() - last_save_time_;
    due = elapsed.count() >= options_.every_minutes();
  }
  if (!due) return false;

  json m = meta.is_null() ? json::object() : meta;
  // Set, not emplaced: "saved_by" is how this saver recognizes its own checkpoints later.
  if (m.is_object()) m["saved_by"] = signo != 0 ? "preemption" : "interval";
  last_saved_ = checkpointer_->save_checkpoint(
      m, intra_epoch().verbosity(LogLevel::info));
  delete_intra_epoch(last_saved_->sequence, options_.intra_epoch_to_keep());
  restart_interval();
  if (group_ && has_target_ && step_ == target_step_) {
    has_target_ = false;
    ++round_;
  }
  if (signo != 0) {
    g_pending_signal = 0;  // on every rank: the job stops, whoever got the signal
    preempted_ = true;
    if (group_) {
      detail::log(LogLevel::warn, "Signal {} ({}) on rank {}: every rank saved {} for preemption at step {}; the "
                  "loop should exit now", signo, strsignal(signo), target_rank_, last_saved_->path.string(), step_);
    } else {
      detail::log(LogLevel::warn, "Signal {} ({}): saved {} for preemption; the loop should exit now",
                  signo, strsignal(signo), last_saved_->path.string());
    }
  }
  return true;
}

Checkpoint IntervalSaver::save_end_of_epoch(const json& meta, const KeepOptions& keep,
                                            SaveOptions options) {
  Checkpoint saved = checkpointer_->save_and_keep_only(meta, keep, options.end_of_epoch(true));
  delete_intra_epoch(saved.sequence, 0);
  restart_interval();
  last_saved_ = saved;
  return saved;
}

}  // namespace savepoint
