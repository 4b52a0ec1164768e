// The distributed sampler: a portable per-epoch order and a job-wide position.
#include <savepoint/detail/io.hpp>
#include <savepoint/distributed_sampler.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <numeric>

namespace savepoint {

using nlohmann::json;

namespace {
// splitmix64 (Steele, Lea, Flood 2014): its raw output is defined bit for bit, unlike
// std::shuffle and std::uniform_int_distribution, whose results differ between standard
// libraries. scripts/sampler_order.py computes the same order in Python.
struct SplitMix64 {
  std::uint64_t state;
  std::uint64_t operator()() {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
};
}  // namespace

DistributedSampler::DistributedSampler(std::uint64_t size, std::uint64_t seed, bool shuffle)
    : size_(size), seed_(seed), shuffle_(shuffle) {}

std::vector<std::uint64_t> DistributedSampler::permutation(std::uint64_t size, std::uint64_t seed,
                                                           std::int64_t epoch, bool shuffle) {
  std::vector<std::uint64_t> order(size);
  std::iota(order.begin(), order.end(), std::uint64_t{0});
  if (!shuffle || size < 2) return order;
  // One stream per (seed, epoch); the epoch's odd multiplier keeps neighbouring epochs apart.
  SplitMix64 rng{seed ^ (static_cast<std::uint64_t>(epoch) * 0xD1B54A32D192ED03ULL)};
  for (std::uint64_t i = size - 1; i > 0; --i) {
    // Modulo: a bias below size / 2^64, and trivial to reproduce anywhere.
    const std::uint64_t j = rng() % (i + 1);
    std::swap(order[i], order[j]);
  }
  return order;
}

std::pair<std::uint64_t, std::uint64_t> DistributedSampler::slice(std::uint64_t size, std::uint64_t position,
                                                                  int rank, int world,
                                                                  std::uint64_t per_rank_batch) {
  const auto w = static_cast<std::uint64_t>(world), r = static_cast<std::uint64_t>(rank);
  const std::uint64_t left = position < size ? size - position : 0;
  if (left >= w * per_rank_batch) return {position + r * per_rank_batch, position + (r + 1) * per_rank_batch};
  // The tail: the R samples left split as evenly as possible, in rank order.
  return {position + r * left / w, position + (r + 1) * left / w};
}

bool DistributedSampler::begin_epoch(std::int64_t epoch) {
  if (epoch == epoch_) {
    detail::log(LogLevel::info, "Resuming epoch {} after {} of {} samples", epoch, position_, size_);
    return false;
  }
  epoch_ = epoch;
  position_ = 0;
  return true;
}

const std::vector<std::uint64_t>& DistributedSampler::order() {
  if (order_epoch_ != epoch_) {
    order_ = permutation(size_, seed_, epoch_, shuffle_);
    order_epoch_ = epoch_;
  }
  return order_;
}

std::optional<DistributedSampler::Batch> DistributedSampler::next(int rank, int world,
                                                                  std::uint64_t per_rank_batch) {
  if (world < 1 || rank < 0 || rank >= world || per_rank_batch == 0) {
    throw UsageError(fmt::format("savepoint: DistributedSampler::next needs 0 <= rank < world and a per-rank "
                                 "batch > 0 (got rank {}, world {}, batch {})",
                                 rank, world, per_rank_batch));
  }
  if (position_ >= size_) return std::nullopt;
  const auto& all = order();
  const auto [begin, end] = slice(size_, position_, rank, world, per_rank_batch);
  Batch batch;
  batch.position = position_;
  batch.global_size = std::min(size_ - position_, static_cast<std::uint64_t>(world) * per_rank_batch);
  batch.indices.assign(all.begin() + static_cast<std::ptrdiff_t>(begin), all.begin() + static_cast<std::ptrdiff_t>(end));
  position_ += batch.global_size;
  return batch;
}

void DistributedSampler::save(const std::filesystem::path& file) const {
  detail::write_file(file, json{{"size", size_}, {"seed", seed_}, {"shuffle", shuffle_}, {"epoch", epoch_},
                                {"position", position_}}.dump(2) + "\n");
}

void DistributedSampler::load(const std::filesystem::path& file, bool /*end_of_epoch*/) {
  // An end-of-epoch checkpoint holds its epoch at position == size: the next begin_epoch
  // starts the next epoch afresh. An intra-epoch one resumes at its position.
  const std::string text = detail::read_small_file(file, 1 << 20);
  std::uint64_t size = 0, seed = 0, position = 0;
  std::int64_t epoch = 0;
  bool shuffle = true;
  try {
    const json j = json::parse(text);
    size = j.at("size").get<std::uint64_t>();
    seed = j.at("seed").get<std::uint64_t>();
    shuffle = j.at("shuffle").get<bool>();
    epoch = j.at("epoch").get<std::int64_t>();
    position = j.at("position").get<std::uint64_t>();
  } catch (const json::exception& e) {
    throw CorruptCheckpointError(fmt::format("sampler file '{}' is invalid: {}", file.string(), e.what()), file);
  }
  if (size != size_) {
    throw MismatchError(fmt::format("savepoint: the sampler in '{}' was saved for a dataset of {} samples, this "
                                    "one has {}: its position would name other samples",
                                    file.string(), size, size_),
                        file);
  }
  seed_ = seed;
  shuffle_ = shuffle;
  epoch_ = epoch;
  position_ = std::min(position, size_);
}

}  // namespace savepoint
