#include <savepoint/detail/io.hpp>
#include <savepoint/epoch_counter.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include <nlohmann/json.hpp>

#include <cmath>

namespace savepoint {

using nlohmann::json;

namespace {
json read_state(const std::filesystem::path& file) {
  const std::string text = detail::read_small_file(file, 1 << 20);
  try {
    json j = json::parse(text);
    if (!j.is_object() || !j.contains("current") || !j["current"].is_number_integer())
      throw json::other_error::create(501, "no integer \"current\"", nullptr);
    return j;
  } catch (const json::exception& e) {
    throw CorruptCheckpointError(
        fmt::format("epoch counter file '{}' is invalid: {}", file.string(), e.what()), file);
  }
}
void write_state(const std::filesystem::path& file, const json& j) {
  detail::write_file(file, j.dump(2) + "\n");
}
// JSON cannot hold inf: store it as a string so the best score survives a resume exactly.
json score_to_json(double v) {
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (std::isnan(v)) return "nan";
  return v;
}
double score_from_json(const json& j) {
  if (j.is_number()) return j.get<double>();
  const auto s = j.get<std::string>();
  if (s == "inf") return INFINITY;
  if (s == "-inf") return -INFINITY;
  return NAN;
}
}  // namespace

EpochCounter::EpochCounter(std::int64_t limit_) : limit(limit_) {}

bool EpochCounter::next() {
  if (current >= limit) return false;
  ++current;
  detail::log(LogLevel::info, "Going into epoch {}", current);
  return true;
}

void EpochCounter::save(const std::filesystem::path& file) const {
  write_state(file, json{{"current", current}});
}

void EpochCounter::load(const std::filesystem::path& file, bool end_of_epoch) {
  const auto saved = read_state(file)["current"].get<std::int64_t>();
  current = end_of_epoch ? saved : saved - 1;  // an intra-epoch checkpoint re-runs its epoch
}

EpochCounterWithStopper::EpochCounterWithStopper(std::int64_t limit_, std::int64_t limit_to_stop_,
                                                 std::int64_t limit_warmup_, Direction direction_,
                                                 double min_delta_)
    : EpochCounter(limit_),
      best_score(direction_ == Direction::min ? INFINITY : -INFINITY),
      limit_to_stop(limit_to_stop_),
      limit_warmup(limit_warmup_),
      direction(direction_),
      min_delta(min_delta_) {
  if (limit_to_stop < 0) detail::throw_usage("EpochCounterWithStopper: limit_to_stop must be >= 0");
  if (limit_warmup < 0) detail::throw_usage("EpochCounterWithStopper: limit_warmup must be >= 0");
  if (!(min_delta >= 0)) detail::throw_usage("EpochCounterWithStopper: min_delta must be >= 0");
}

bool EpochCounterWithStopper::next() {
  if (should_stop) return false;
  return EpochCounter::next();
}

void EpochCounterWithStopper::update_metric(double value) {
  if (current <= limit_warmup) return;
  const double sign = direction == Direction::min ? 1.0 : -1.0;
  // Improvement by more than min_delta relative to the best so far, in either direction
  // (SpeechBrain's (1 - delta) * best is wrong for "max" and for negative scores).
  bool improved = false;
  if (std::isnan(value)) improved = false;
  else if (std::isinf(best_score)) improved = sign * value < sign * best_score;
  else improved = sign * value < sign * best_score - min_delta * std::abs(best_score);
  if (improved) {
    best_epoch = current;
    best_score = value;
  }
  should_stop = (current - best_epoch) >= limit_to_stop;
}

void EpochCounterWithStopper::save(const std::filesystem::path& file) const {
  write_state(file, json{{"current", current},
                         {"best_epoch", best_epoch},
                         {"best_score", score_to_json(best_score)},
                         {"should_stop", should_stop}});
}

void EpochCounterWithStopper::load(const std::filesystem::path& file, bool end_of_epoch) {
  const json j = read_state(file);
  try {
    const auto saved = j.at("current").get<std::int64_t>();
    const auto be = j.at("best_epoch").get<std::int64_t>();
    const double bs = score_from_json(j.at("best_score"));
    const bool stop = j.at("should_stop").get<bool>();
    current = end_of_epoch ? saved : saved - 1;
    best_epoch = be;
    best_score = bs;
    should_stop = end_of_epoch ? stop : false;
  } catch (const json::exception& e) {
    throw CorruptCheckpointError(
        fmt::format("early-stopping state '{}' is invalid: {}", file.string(), e.what()), file);
  }
}

}  // namespace savepoint
