// Retention: SpeechBrain's keep rules plus named policies; pinned checkpoints are never deleted.
#include "retention.hpp"

#include <savepoint/errors.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in fmt/format.h before fmt 11)

#include <algorithm>
#include <cmath>

namespace savepoint {

namespace fs = std::filesystem;
using Paths = std::set<fs::path>;

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

KeepOptions keep_latest(int n) {
  require_non_negative(n, "keep_latest");
  KeepOptions policy(fmt::format("latest {}", n), [n](const std::vector<Checkpoint>& all) {
    Paths out;
    const auto newest = ranked(all, most_recent());
    for (std::size_t i = 0; i < newest.size() && i < static_cast<std::size_t>(n); ++i)
      out.insert(newest[i]->path);
    return out;
  });
  policy.releases_newest(n == 0);  // "keep the 0 newest" says it explicitly
  return policy;
}

KeepOptions keep_best(int n, Selector selector) {
  require_non_negative(n, "keep_best");
  selector.validate();
  const std::string what = selector.min_key   ? "lowest " + *selector.min_key
                           : selector.max_key ? "highest " + *selector.max_key
                                              : std::string("most important");
  return KeepOptions(fmt::format("best {} by {}", n, what),
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

KeepOptions keep_every_nth_epoch(std::int64_t n, std::string key) {
  if (n <= 0) detail::throw_usage(fmt::format("savepoint: keep_every_nth_epoch({}) needs n >= 1", n));
  return KeepOptions(fmt::format("every {}th {}", n, key), [n, key](const std::vector<Checkpoint>& all) {
    Paths out;
    for (const auto& c : all) {
      const auto v = integer_meta(c, key);
      if (v && *v % n == 0) out.insert(c.path);
    }
    return out;
  });
}

KeepOptions keep_epochs(std::vector<std::int64_t> values, std::string key) {
  std::sort(values.begin(), values.end());
  return KeepOptions(fmt::format("{} in [{}]", key, fmt::join(values, ", ")),
                    [values, key](const std::vector<Checkpoint>& all) {
                      Paths out;
                      for (const auto& c : all) {
                        const auto v = integer_meta(c, key);
                        if (v && std::binary_search(values.begin(), values.end(), *v)) out.insert(c.path);
                      }
                      return out;
                    });
}

KeepOptions keep_every_hours(double hours) {
  if (!(hours > 0) || !std::isfinite(hours))
    detail::throw_usage(fmt::format("savepoint: keep_every_hours({}) needs a positive number", hours));
  // Decisions depend only on checkpoints this policy keeps, so they never change as newer
  // checkpoints arrive or others are deleted.
  return KeepOptions(fmt::format("one every {} hours", hours), [hours](const std::vector<Checkpoint>& all) {
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

KeepOptions keep_if(Predicate keep) {
  if (!keep) detail::throw_usage("savepoint: keep_if needs a predicate");
  return KeepOptions("custom rule", [keep](const std::vector<Checkpoint>& all) {
    Paths out;
    for (const auto& c : all)
      if (keep(c)) out.insert(c.path);
    return out;
  });
}

namespace {
// SpeechBrain's keys: every checkpoint some key ranks is a candidate for deletion; the best
// num_to_keep of each key are protected.
struct KeyVerdict {
  Paths candidates, protected_;
};
KeyVerdict judge_by_keys(const std::vector<Checkpoint>& all, const KeepOptions& keep) {
  if (keep.num_to_keep() < 0) {
    detail::throw_usage("savepoint: the number of checkpoints to keep must be >= 0 (got " +
                        std::to_string(keep.num_to_keep()) + ")");
  }
  std::vector<Selector> keys;
  for (const auto& k : keep.min_keys()) keys.push_back(min_key(k));
  for (const auto& k : keep.max_keys()) keys.push_back(max_key(k));
  for (const auto& f : keep.importance_keys()) keys.push_back(importance_key(f));
  if (keep.keep_recent()) keys.push_back(most_recent());
  KeyVerdict out;  // by path: unique even across copied runs
  const auto n = static_cast<std::size_t>(keep.num_to_keep());
  for (auto& key : keys) {
    if (keep.predicate()) key.where(keep.predicate());
    const auto order = ranked(all, key);
    for (std::size_t i = 0; i < order.size(); ++i) {
      out.candidates.insert(order[i]->path);
      // A checkpoint whose metric is not a finite number is never protected as "best"
      // (importance keys rank NaN last but, as in SpeechBrain, may still protect it).
      const bool protectable = key.importance_key || rankable(*order[i], key);
      if (i < n && protectable) out.protected_.insert(order[i]->path);
    }
  }
  return out;
}

bool has_keys(const KeepOptions& k) {
  return k.num_to_keep() > 0 && (k.keep_recent() || !k.min_keys().empty() || !k.max_keys().empty() ||
                                 !k.importance_keys().empty());
}

// "2 lowest loss, 2 newest"
std::string describe_keys(const KeepOptions& k) {
  std::vector<std::string> parts;
  const int n = k.num_to_keep();
  for (const auto& key : k.min_keys()) parts.push_back(fmt::format("{} lowest {}", n, key));
  for (const auto& key : k.max_keys()) parts.push_back(fmt::format("{} highest {}", n, key));
  for (std::size_t i = 0; i < k.importance_keys().size(); ++i) parts.push_back(fmt::format("{} most important", n));
  if (k.keep_recent()) parts.push_back(fmt::format("{} newest", n));
  return parts.empty() ? std::string("nothing") : fmt::format("{}", fmt::join(parts, ", "));
}
}  // namespace

KeepOptions::KeepOptions(std::string description, Fn rule) : num_to_keep_(0), rule_only_(true) {
  rules_.push_back({std::move(description), std::move(rule), false});
}

KeepOptions& KeepOptions::also(const KeepOptions& other) {
  if (!other.rule_only_ && has_keys(other)) {
    // The other's keys become one rule: what they protect on their own.
    KeepOptions keys = other;
    keys.rules_.clear();
    rules_.push_back({describe_keys(keys),
                      [keys](const std::vector<Checkpoint>& all) { return judge_by_keys(all, keys).protected_; },
                      false});
  }
  for (const auto& rule : other.rules_) rules_.push_back(rule);
  return *this;
}

std::string KeepOptions::description() const {
  std::vector<std::string> parts;
  if (!rule_only_) parts.push_back(describe_keys(*this));
  for (const auto& rule : rules_) parts.push_back(rule.description);
  return fmt::format("{}", fmt::join(parts, " | "));
}

Paths KeepOptions::kept(const std::vector<Checkpoint>& oldest_first) const {
  Paths out;
  for (const auto& rule : rules_) {
    auto some = rule.keep(oldest_first);
    out.insert(some.begin(), some.end());
  }
  return out;
}

bool KeepOptions::releases_newest() const {
  if (keep_newest_) return !*keep_newest_;
  bool release = keep_recent_ && num_to_keep_ == 0;
  for (const auto& rule : rules_) release = release && rule.releases_newest;
  return release;
}

KeepOptions& KeepOptions::releases_newest(bool value) & {
  for (auto& rule : rules_) rule.releases_newest = value;
  return *this;
}

namespace detail {

std::vector<Checkpoint> deletion_set(const std::vector<Checkpoint>& all, const KeepOptions& keep) {
  auto [candidates, protected_] = judge_by_keys(all, keep);
  if (keep.has_rules()) {
    std::vector<Checkpoint> oldest_first = all;
    std::sort(oldest_first.begin(), oldest_first.end(), [](const Checkpoint& a, const Checkpoint& b) {
      return a.sequence != b.sequence ? a.sequence < b.sequence : a.path < b.path;
    });
    const auto kept = keep.kept(oldest_first);
    protected_.insert(kept.begin(), kept.end());
  }
  // The newest checkpoint is what the next recovery resumes from: deleting it (say, because
  // keep_best ranks its loss third) silently throws training progress away. Only an explicit
  // "keep nothing recent" gives it up.
  if (!keep.releases_newest()) {
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
