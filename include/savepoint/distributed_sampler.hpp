// savepoint/distributed_sampler.hpp — a data-parallel sampler that resumes exactly, at any
// world size.
//
//   savepoint::DistributedSampler sampler(dataset_size, /*seed=*/42);
//   ckpt.add_recoverable("sampler", sampler);              // replicated: the same on every rank
//   ckpt.recover_if_possible();
//   for (auto epoch : epochs) {
//     sampler.begin_epoch(epoch);                          // false: resuming mid-epoch
//     while (auto batch = sampler.next(rank, world, per_rank_batch)) {
//       train_step(dataset.get(batch->indices), batch->global_size);
//       saver.after_step();
//     }
//   }
//
// The epoch's order depends only on (seed, epoch): a Fisher–Yates shuffle driven by
// splitmix64, the same with every compiler and standard library. The state is the number of
// samples the job as a whole consumed in the epoch (`position`), so a job killed with N ranks
// resumes with M ranks at the same place of the same order and consumes every sample of the
// epoch exactly once. Each step consumes one global batch of world * per_rank_batch samples
// starting at `position`; rank r takes the r-th contiguous slice of it. The epoch's tail
// (fewer samples left than a global batch) is one last, smaller global batch split as evenly
// as possible: rank r takes [floor(r*R/W), floor((r+1)*R/W)) of the R samples left, so some
// ranks may get none (they must still join the step's collectives). Weight each rank's loss
// by its share of `global_size` to keep the mean gradient exact (docs/distributed.md).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <vector>

namespace savepoint {

class DistributedSampler {
 public:
  static constexpr const char* savepoint_file_extension = ".json";

  /// One step's share of this rank.
  struct Batch {
    std::vector<std::uint64_t> indices;  ///< this rank's samples, in the epoch's order
    std::uint64_t global_size = 0;       ///< samples the whole job consumes this step
    std::uint64_t position = 0;          ///< where the global batch starts in the epoch
  };

  /// `shuffle` false: the order is 0, 1, ..., size-1 in every epoch.
  explicit DistributedSampler(std::uint64_t size, std::uint64_t seed = 0, bool shuffle = true);

  /// Call at the start of each epoch. Returns true for a fresh epoch (position 0) and false
  /// when a recovered checkpoint of this very epoch left it part-way (or at its end).
  bool begin_epoch(std::int64_t epoch);
  /// The next step's slice of `rank` of `world` ranks, each taking `per_rank_batch` samples
  /// of a full global batch; advances the position by the whole global batch. Every rank
  /// calls it once per step with the same world and per_rank_batch. nullopt at the epoch's end.
  std::optional<Batch> next(int rank, int world, std::uint64_t per_rank_batch);

  std::uint64_t size() const noexcept { return size_; }
  std::uint64_t seed() const noexcept { return seed_; }
  std::int64_t epoch() const noexcept { return epoch_; }
  /// Samples of this epoch the job as a whole consumed.
  std::uint64_t position() const noexcept { return position_; }
  /// This epoch's order (computed once per epoch).
  const std::vector<std::uint64_t>& order();

  /// The order of `epoch`: identity, or a Fisher–Yates shuffle over splitmix64 seeded by
  /// (seed, epoch) (the definition is in src/core/distributed_sampler.cpp; the tests pin it).
  static std::vector<std::uint64_t> permutation(std::uint64_t size, std::uint64_t seed, std::int64_t epoch,
                                                bool shuffle = true);
  /// The slice [begin, end) of the global batch at `position` that `rank` takes.
  static std::pair<std::uint64_t, std::uint64_t> slice(std::uint64_t size, std::uint64_t position, int rank,
                                                        int world, std::uint64_t per_rank_batch);

  void save(const std::filesystem::path& file) const;
  /// Refuses a file saved for another dataset size (MismatchError): the position would mean
  /// other samples.
  void load(const std::filesystem::path& file, bool end_of_epoch);

 private:
  std::uint64_t size_;
  std::uint64_t seed_;
  bool shuffle_;
  std::int64_t epoch_ = 0;
  std::uint64_t position_ = 0;
  std::int64_t order_epoch_ = -1;  // the epoch order_ holds, -1: none
  std::vector<std::uint64_t> order_;
};

}  // namespace savepoint
