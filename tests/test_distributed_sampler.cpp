// DistributedSampler: a portable order, slices per rank, exact resume at another world size.
#include "support.hpp"

#include <savepoint/distributed_sampler.hpp>

#include "catch.hpp"

#include <algorithm>
#include <random>

using savepoint::DistributedSampler;

namespace {
// The global order a job consumes from `position` to the epoch's end at `world` ranks of
// `per_rank` samples: every rank's slice of every step, concatenated in rank order.
std::vector<std::uint64_t> consume(DistributedSampler& sampler, int world, std::uint64_t per_rank,
                                   std::uint64_t steps = ~std::uint64_t{0}) {
  std::vector<std::uint64_t> out;
  std::vector<DistributedSampler> ranks(static_cast<std::size_t>(world), sampler);  // one replica per rank
  for (std::uint64_t s = 0; s < steps; ++s) {
    bool any = false;
    for (int r = 0; r < world; ++r) {
      auto batch = ranks[static_cast<std::size_t>(r)].next(r, world, per_rank);
      if (!batch) continue;
      any = true;
      out.insert(out.end(), batch->indices.begin(), batch->indices.end());
    }
    if (!any) break;
    // Replicated: every rank's copy is at the same position after the step.
    for (int r = 1; r < world; ++r) REQUIRE(ranks[static_cast<std::size_t>(r)].position() == ranks[0].position());
  }
  sampler = ranks[0];
  return out;
}
}  // namespace

TEST_CASE("the sampler's order is portable: pinned by an independent Python implementation", "[sampler]") {
  // scripts/sampler_order.py 20 42 1 / 1000 7 3 12 / 10 0 0 / 100000 18446744073709551615 -1 8
  CHECK(DistributedSampler::permutation(20, 42, 1) ==
        std::vector<std::uint64_t>{8, 5, 1, 6, 13, 11, 7, 14, 9, 4, 16, 10, 12, 15, 17, 18, 2, 19, 0, 3});
  const auto big = DistributedSampler::permutation(1000, 7, 3);
  CHECK(std::vector<std::uint64_t>(big.begin(), big.begin() + 12) ==
        std::vector<std::uint64_t>{141, 207, 949, 994, 878, 619, 208, 240, 973, 2, 631, 864});
  CHECK(DistributedSampler::permutation(10, 0, 0) == std::vector<std::uint64_t>{6, 3, 2, 9, 8, 1, 4, 7, 0, 5});
  const auto huge = DistributedSampler::permutation(100000, ~std::uint64_t{0}, -1);
  CHECK(std::vector<std::uint64_t>(huge.begin(), huge.begin() + 8) ==
        std::vector<std::uint64_t>{55239, 40621, 46354, 66661, 11843, 84215, 29271, 72981});
  // A permutation; other epochs and seeds give other orders; no shuffle is the identity.
  auto sorted = big;
  std::sort(sorted.begin(), sorted.end());
  for (std::uint64_t i = 0; i < sorted.size(); ++i) REQUIRE(sorted[i] == i);
  CHECK(DistributedSampler::permutation(1000, 7, 4) != big);
  CHECK(DistributedSampler::permutation(1000, 8, 3) != big);
  CHECK(DistributedSampler::permutation(5, 7, 3, /*shuffle=*/false) == std::vector<std::uint64_t>{0, 1, 2, 3, 4});
  CHECK(DistributedSampler::permutation(0, 1, 1).empty());
  CHECK(DistributedSampler::permutation(1, 1, 1) == std::vector<std::uint64_t>{0});
}

TEST_CASE("each rank takes its slice of the global batch and the tail is split evenly", "[sampler]") {
  // 10 samples, 3 ranks of 2: steps at positions 0 (6 samples) and 6 (the tail: 4 left).
  DistributedSampler s(10, 1, /*shuffle=*/false);
  s.begin_epoch(1);
  DistributedSampler r1 = s, r2 = s;
  auto b0 = s.next(0, 3, 2), b1 = r1.next(1, 3, 2), b2 = r2.next(2, 3, 2);
  CHECK(b0->indices == std::vector<std::uint64_t>{0, 1});
  CHECK(b1->indices == std::vector<std::uint64_t>{2, 3});
  CHECK(b2->indices == std::vector<std::uint64_t>{4, 5});
  CHECK((b0->global_size == 6 && b0->position == 0 && s.position() == 6));
  // The tail of 4 over 3 ranks: [0,1) [1,2) [2,4) of what is left.
  b0 = s.next(0, 3, 2), b1 = r1.next(1, 3, 2), b2 = r2.next(2, 3, 2);
  CHECK(b0->indices == std::vector<std::uint64_t>{6});
  CHECK(b1->indices == std::vector<std::uint64_t>{7});
  CHECK(b2->indices == std::vector<std::uint64_t>{8, 9});
  CHECK((b0->global_size == 4 && b0->position == 6 && s.position() == 10));
  CHECK(!s.next(0, 3, 2));
  // A tail smaller than the world: some ranks get nothing but still take part in the step.
  DistributedSampler t(5, 1, false);
  t.begin_epoch(1);
  (void)t.next(0, 4, 1);
  const auto last = DistributedSampler::slice(5, 4, 0, 4, 1);
  CHECK(last.first == last.second);  // rank 0 of 4 gets none of the 1 sample left
  CHECK(DistributedSampler::slice(5, 4, 3, 4, 1) == std::make_pair(std::uint64_t{4}, std::uint64_t{5}));
  CHECK_THROWS_AS(t.next(4, 4, 1), savepoint::UsageError);
  CHECK_THROWS_AS(t.next(0, 4, 0), savepoint::UsageError);
}

TEST_CASE("killed at N ranks and resumed at M ranks every sample is consumed once in the same global order",
          "[sampler]") {
  struct Case {
    std::uint64_t size;
    int n;
    std::uint64_t per_rank_n;
    std::uint64_t steps_before;  // steps at N ranks before the kill
    int m;
    std::uint64_t per_rank_m;
  };
  // Same global batch (the weights then match too), other global batches, a kill in the
  // tail, a kill before the first step, 1 rank, more ranks than samples left.
  const std::vector<Case> cases{{100, 2, 6, 5, 3, 4},  {100, 4, 3, 3, 2, 6}, {100, 3, 5, 2, 2, 7},
                                {97, 2, 8, 6, 3, 5},   {100, 1, 10, 0, 4, 2}, {50, 4, 4, 3, 1, 16},
                                {23, 3, 2, 3, 7, 3},   {1000, 3, 7, 40, 5, 11}};
  for (const auto& c : cases) {
    INFO("size " << c.size << ": " << c.n << " ranks x " << c.per_rank_n << " for " << c.steps_before
                 << " steps, then " << c.m << " x " << c.per_rank_m);
    test::TempDir dir;
    const std::int64_t epoch = 3;
    DistributedSampler job(c.size, 99);
    job.begin_epoch(epoch);
    auto seen = consume(job, c.n, c.per_rank_n, c.steps_before);
    // The replicated state goes through a checkpoint file, into a new job's sampler.
    job.save(dir.path() / "sampler.json");
    DistributedSampler resumed(c.size, 0);  // the seed comes from the file
    resumed.load(dir.path() / "sampler.json", /*end_of_epoch=*/false);
    CHECK(!resumed.begin_epoch(epoch));
    CHECK(resumed.position() == std::min<std::uint64_t>(c.size, c.steps_before * c.n * c.per_rank_n));
    const auto rest = consume(resumed, c.m, c.per_rank_m);
    seen.insert(seen.end(), rest.begin(), rest.end());
    CHECK(seen == DistributedSampler::permutation(c.size, 99, epoch));  // each once, the same order
    CHECK(resumed.position() == c.size);
    CHECK(resumed.begin_epoch(epoch + 1));  // the next epoch starts afresh
    CHECK(resumed.position() == 0);
  }
}

TEST_CASE("a sampler state of another dataset size is refused", "[sampler]") {
  test::TempDir dir;
  DistributedSampler a(100, 1);
  a.begin_epoch(1);
  (void)a.next(0, 1, 10);
  a.save(dir.path() / "s.json");
  DistributedSampler b(99, 1);
  CHECK_THROWS_AS(b.load(dir.path() / "s.json", false), savepoint::MismatchError);
  DistributedSampler c(100, 5);
  c.load(dir.path() / "s.json", false);
  CHECK((c.seed() == 1 && c.position() == 10 && c.epoch() == 1));
}
