// Selection: SpeechBrain's semantics, with deterministic ties and NaN-safe ranks.
#include <savepoint/errors.hpp>
#include <savepoint/selection.hpp>

#include <algorithm>
#include <cmath>

namespace savepoint {

Selector& Selector::where(Predicate p) & {
  if (!predicate) {
    predicate = std::move(p);
  } else {
    predicate = [a = std::move(predicate), b = std::move(p)](const Checkpoint& c) {
      return a(c) && b(c);
    };
  }
  return *this;
}
Selector&& Selector::where(Predicate p) && { return std::move(where(std::move(p))); }

void Selector::validate() const {
  const int given = (min_key ? 1 : 0) + (max_key ? 1 : 0) + (importance_key ? 1 : 0);
  if (given > 1) {
    detail::throw_usage(
        "savepoint: a selector takes only one of importance_key, max_key and min_key");
  }
  if ((min_key && min_key->empty()) || (max_key && max_key->empty())) {
    detail::throw_usage("savepoint: min_key/max_key must name a meta key (got an empty string)");
  }
}

Selector most_recent() { return Selector{}; }
Selector min_key(std::string key) {
  Selector s;
  s.min_key = std::move(key);
  return s;
}
Selector max_key(std::string key) {
  Selector s;
  s.max_key = std::move(key);
  return s;
}
Selector importance_key(ImportanceFn fn) {
  Selector s;
  s.importance_key = std::move(fn);
  return s;
}
Selector where(Predicate predicate) {
  Selector s;
  s.predicate = std::move(predicate);
  return s;
}

namespace detail {

std::optional<double> finite_metric(const Checkpoint& c, const std::string& key) {
  const auto it = c.meta.find(key);
  if (it == c.meta.end() || !it->is_number()) return std::nullopt;
  const double v = it->get<double>();
  if (!std::isfinite(v)) return std::nullopt;
  return v;
}

std::vector<const Checkpoint*> rank_pointers(const std::vector<const Checkpoint*>& candidates,
                                            const Selector& selector) {
  selector.validate();
  // Filter: the predicate, and for min/max keys "has the key".
  const std::string* metric = selector.min_key ? &*selector.min_key
                              : selector.max_key ? &*selector.max_key
                                                 : nullptr;
  std::vector<std::pair<double, const Checkpoint*>> scored;
  scored.reserve(candidates.size());
  for (const Checkpoint* c : candidates) {
    if (selector.predicate && !selector.predicate(*c)) continue;
    if (metric && !c->meta.contains(*metric)) continue;
    double score;
    if (metric) {
      // Values that are not finite numbers rank below every real value, so never win "best".
      const auto v = finite_metric(*c, *metric);
      score = !v ? std::nan("") : selector.min_key ? -*v : *v;
    } else if (selector.importance_key) {
      score = selector.importance_key(*c);
    } else {
      score = static_cast<double>(c->sequence);  // recency
    }
    scored.emplace_back(score, c);
  }
  // Best first: larger score; NaN last; ties by recency (larger sequence first).
  std::sort(scored.begin(), scored.end(), [](const auto& a, const auto& b) {
    const bool an = std::isnan(a.first), bn = std::isnan(b.first);
    if (an != bn) return bn;  // the non-NaN one first
    if (!an && a.first != b.first) return a.first > b.first;
    if (a.second->sequence != b.second->sequence) return a.second->sequence > b.second->sequence;
    return a.second->path > b.second->path;  // only for copied-in checkpoints sharing a sequence
  });
  std::vector<const Checkpoint*> out;
  out.reserve(scored.size());
  for (const auto& s : scored) out.push_back(s.second);
  return out;
}

std::vector<Checkpoint> rank(std::vector<Checkpoint> candidates, const Selector& selector) {
  std::vector<const Checkpoint*> pointers;
  pointers.reserve(candidates.size());
  for (const auto& c : candidates) pointers.push_back(&c);
  std::vector<Checkpoint> out;
  // The pointers point into our own by-value copy, each once: moving from them is safe.
  for (const Checkpoint* c : rank_pointers(pointers, selector)) out.push_back(std::move(*const_cast<Checkpoint*>(c)));
  return out;
}

}  // namespace detail
}  // namespace savepoint
