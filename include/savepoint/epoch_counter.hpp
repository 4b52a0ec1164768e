// savepoint/epoch_counter.hpp — epoch loops that survive restarts (SpeechBrain's EpochCounter).
//
//   savepoint::EpochCounter epochs(10);
//   ckpt.add_recoverable("epochs", epochs);
//   ckpt.recover_if_possible();
//   for (int epoch : epochs) { ... ckpt.save_and_keep_only(...); }
//
// Iterating yields current+1 .. limit and advances `current` as each epoch starts, so an
// end-of-epoch checkpoint records the finished epoch and recovery continues with the next.
// Recovering an intra-epoch checkpoint (end_of_epoch = false) re-runs that epoch.
// The limit is not restored from the checkpoint: raise it in code to train longer.
#pragma once

#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>

namespace savepoint {

class EpochCounter {
 public:
  static constexpr const char* savepoint_file_extension = ".json";

  explicit EpochCounter(std::int64_t limit);
  virtual ~EpochCounter() = default;

  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = std::int64_t;
    using difference_type = std::ptrdiff_t;
    using pointer = const std::int64_t*;
    using reference = std::int64_t;
    iterator() = default;
    explicit iterator(EpochCounter* counter) : counter_(counter) { advance(); }
    std::int64_t operator*() const { return counter_->current; }
    iterator& operator++() {
      advance();
      return *this;
    }
    bool operator==(const iterator& other) const { return counter_ == other.counter_; }
    bool operator!=(const iterator& other) const { return counter_ != other.counter_; }

   private:
    void advance() {
      if (counter_ && !counter_->next()) counter_ = nullptr;
    }
    EpochCounter* counter_ = nullptr;
  };
  iterator begin() { return iterator(this); }
  iterator end() { return iterator(); }

  /// Starts the next epoch if the limit allows: increments `current`, returns false at the end.
  virtual bool next();

  std::int64_t current = 0;  ///< the epoch in progress (0 before the first)
  std::int64_t limit;

  // Checkpoint hooks (found by savepoint as members): a small JSON file.
  virtual void save(const std::filesystem::path& file) const;
  virtual void load(const std::filesystem::path& file, bool end_of_epoch);
};

/// EpochCounter with early stopping: stops when the metric has not improved for
/// `limit_to_stop` epochs after `limit_warmup` epochs. Its whole state (best epoch, best
/// score, stop flag) is checkpointed.
class EpochCounterWithStopper : public EpochCounter {
 public:
  enum class Direction { min, max };

  EpochCounterWithStopper(std::int64_t limit, std::int64_t limit_to_stop,
                          std::int64_t limit_warmup = 0, Direction direction = Direction::min,
                          double min_delta = 1e-6);

  bool next() override;
  /// Reports the epoch's metric; NaN never counts as an improvement.
  void update_metric(double value);

  bool should_stop = false;
  std::int64_t best_epoch = 0;
  double best_score;
  std::int64_t limit_to_stop;
  std::int64_t limit_warmup;
  Direction direction;
  double min_delta;

  void save(const std::filesystem::path& file) const override;
  void load(const std::filesystem::path& file, bool end_of_epoch) override;
};

}  // namespace savepoint
