// Retention: SpeechBrain's keep rules plus named policies; pinned checkpoints are never deleted.
#include <savepoint/errors.hpp>
#include <savepoint/retention.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in fmt/format.h before fmt 11)

#include <algorithm>
#include <cmath>

namespace savepoint {

namespace fs = std::filesystem;
using Paths = std::set<fs::path>;

KeepPolicy::KeepPolicy(std::string description, Fn fn) : description_(std::move(description)) {
  parts_.push_back(std::move(fn));
}

Paths KeepPolicy::kept(const std::vector<Checkpoint>& oldest_first) const {
  Paths out;
  for (const auto& part : parts_) {
    auto some = part(oldest_first);
    out.insert(some.begin(), some.end());
  }
  return out;
}

KeepPolicy operator|(KeepPolicy a, KeepPolicy b) {
  a.description_ += " | " + b.description_;
  a.releases_newest_ = a.releases_newest_ && b.releases_newest_;
  for (auto& p : b.parts_) a.parts_.push_back(std::move(p));
  return a;
}

namespace {
void require_non_negative(long long n, const char* policy) {
  if (n < 0) detail::throw_usage(fmt::format("savepoint: {}({}) needs a count >= 0", policy, n));
}
std::optional<std::int64_t> integer_meta(const Checkpoint& c, const std::string& key) {
  const auto it = c.meta.find(key);
  if (it == c.meta.end() || !it->is_number_integer()) return std::nullopt;
  return it->get<std::int64_t>();
}
// Only what ranks as a finite metric counts as "best" (NaN, inf, missing never do).
bool rankable(const Checkpoint& c, const Selector& s) {
  if (s.min_key) return detail::finite_metric(c, *s.min_key).has_value();
  if (s.max_key) return detail::finite_metric(c, *s.max_key).has_value();
  if (s.importance_key) return !std::isnan(s.importance_key(c));
  return true;
}
// Ranking over pointers: retention runs at every save, over every checkpoint, and must not
// copy them once per rule.
std::vector<const Checkpoint*> ranked(const std::vector<Checkpoint>& all, const Selector& selector) {
  std::vector<const Checkpoint*> pointers;
  pointers.reserve(all.size());
  for (const auto& c : all) pointers.push_back(&c);
  return detail::rank_pointers(pointers, selector);
}
}  // namespace

KeepPolicy keep_latest(int n) {
  require_non_negative(n, "keep_latest");
  KeepPolicy policy(fmt::format("latest {}", n), [n](const std::vector<Checkpoint>& all) {
    Paths out;
    const auto newest = ranked(all, most_recent());
    for (std::size_t i = 0; i < newest.size() && i < static_cast<std::size_t>(n); ++i)
      out.insert(newest[i]->path);
    return out;
  });
  policy.releases_newest(n == 0);  // "keep the 0 newest" says it explicitly
  return policy;
}

KeepPolicy keep_best(int n, Selector selector) {
  require_non_negative(n, "keep_best");
  selector.validate();
  const std::string what = selector.min_key   ? "lowest " + *selector.min_key
                           : selector.max_key ? "highest " + *selector.max_key
                                              : std::string("most important");
  return KeepPolicy(fmt::format("best {} by {}", n, what),
                    [n, selector](const std::vector<Checkpoint>& all) {
                      Paths out;
                      std::size_t taken = 0;
                      for (const Checkpoint* c : ranked(all, selector)) {
                        if (taken == static_cast<std::size_t>(n)) break;
                        if (!rankable(*c, selector)) continue;
                        out.insert(c->path);
                        ++taken;
                      }
                      return out;
                    });
}

KeepPolicy keep_every_nth_epoch(std::int64_t n, std::string key) {
  if (n <= 0) detail::throw_usage(fmt::format("savepoint: keep_every_nth_epoch({}) needs n >= 1", n));
  return KeepPolicy(fmt::format("every {}th {}", n, key), [n, key](const std::vector<Checkpoint>& all) {
    Paths out;
    for (const auto& c : all) {
      const auto v = integer_meta(c, key);
      if (v && *v % n == 0) out.insert(c.path);
    }
    return out;
  });
}

KeepPolicy keep_epochs(std::vector<std::int64_t> values, std::string key) {
  std::sort(values.begin(), values.end());
  return KeepPolicy(fmt::format("{} in [{}]", key, fmt::join(values, ", ")),
                    [values, key](const std::vector<Checkpoint>& all) {
                      Paths out;
                      for (const auto& c : all) {
                        const auto v = integer_meta(c, key);
                        if (v && std::binary_search(values.begin(), values.end(), *v)) out.insert(c.path);
                      }
                      return out;
                    });
}

KeepPolicy keep_every_hours(double hours) {
  if (!(hours > 0) || !std::isfinite(hours))
    detail::throw_usage(fmt::format("savepoint: keep_every_hours({}) needs a positive number", hours));
  // Decisions depend only on checkpoints this policy keeps, so they never change as newer
  // checkpoints arrive or others are deleted.
  return KeepPolicy(fmt::format("one every {} hours", hours), [hours](const std::vector<Checkpoint>& all) {
    Paths out;
    double next = -INFINITY;
    for (const Checkpoint& c : all) {  // oldest first, as every policy is given them
      const auto t = c.meta.find("unixtime");
      if (t == c.meta.end() || !t->is_number()) continue;
      if (t->get<double>() >= next) {
        out.insert(c.path);
        next = t->get<double>() + hours * 3600.0;
      }
    }
    return out;
  });
}

KeepPolicy keep_if(Predicate keep) {
  if (!keep) detail::throw_usage("savepoint: keep_if needs a predicate");
  return KeepPolicy("custom rule", [keep](const std::vector<Checkpoint>& all) {
    Paths out;
    for (const auto& c : all)
      if (keep(c)) out.insert(c.path);
    return out;
  });
}

KeepOptions::KeepOptions(KeepPolicy policy) : num_to_keep_(0) { policies_.push_back(std::move(policy)); }

namespace detail {

std::vector<Checkpoint> deletion_set(const std::vector<Checkpoint>& all, const KeepOptions& keep) {
  if (keep.num_to_keep() < 0) {
    throw_usage("savepoint: the number of checkpoints to keep must be >= 0 (got " +
                std::to_string(keep.num_to_keep()) + ")");
  }
  std::vector<Selector> keys;
  for (const auto& k : keep.min_keys()) keys.push_back(min_key(k));
  for (const auto& k : keep.max_keys()) keys.push_back(max_key(k));
  for (const auto& f : keep.importance_keys()) keys.push_back(importance_key(f));
  if (keep.keep_recent()) keys.push_back(most_recent());
  std::set<std::filesystem::path> candidates, protected_;  // by path: unique even across copied runs
  const auto n = static_cast<std::size_t>(keep.num_to_keep());
  for (auto& key : keys) {
    if (keep.predicate()) key.where(keep.predicate());
    const auto order = ranked(all, key);
    for (std::size_t i = 0; i < order.size(); ++i) {
      candidates.insert(order[i]->path);
      // A checkpoint whose metric is not a finite number is never protected as "best"
      // (importance keys rank NaN last but, as in SpeechBrain, may still protect it).
      const bool protectable = key.importance_key || rankable(*order[i], key);
      if (i < n && protectable) protected_.insert(order[i]->path);
    }
  }
  if (!keep.policies().empty()) {
    std::vector<Checkpoint> oldest_first = all;
    std::sort(oldest_first.begin(), oldest_first.end(), [](const Checkpoint& a, const Checkpoint& b) {
      return a.sequence != b.sequence ? a.sequence < b.sequence : a.path < b.path;
    });
    for (const auto& policy : keep.policies()) {
      auto kept = policy.kept(oldest_first);
      protected_.insert(kept.begin(), kept.end());
    }
  }
  // The newest checkpoint is what the next recovery resumes from: deleting it (say, because
  // keep_best ranks its loss third) silently throws training progress away. Only an explicit
  // "keep nothing recent" gives it up.
  bool release_newest = keep.keep_recent() && keep.num_to_keep() == 0;
  for (const auto& policy : keep.policies()) release_newest = release_newest && policy.releases_newest();
  if (keep.keep_newest()) release_newest = !*keep.keep_newest();
  if (!release_newest) {
    const Checkpoint* newest = nullptr;
    for (const auto& c : all)
      if (!newest || c.sequence > newest->sequence) newest = &c;
    if (newest) protected_.insert(newest->path);
  }
  std::vector<Checkpoint> out;
  for (const auto& c : all)
    if (candidates.count(c.path) && !protected_.count(c.path) && !c.pinned) out.push_back(c);
  return out;
}

}  // namespace detail
}  // namespace savepoint
