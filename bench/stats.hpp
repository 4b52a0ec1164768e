// Rounds of one measurement: the benchmarks report the median and the spread over rounds, and
// keep every round in a CSV so a reader can see the noise (this VM's numbers move a lot).
#pragma once

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace savepoint::bench {

// The values of one series (seconds, GB/s, ...) over the rounds of one run.
class Samples {
 public:
  void add(double value) { values_.push_back(value); }
  bool empty() const { return values_.empty(); }
  std::size_t size() const { return values_.size(); }
  const std::vector<double>& values() const { return values_; }

  double median() const {
    auto v = sorted();
    const std::size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  }
  double min() const { return sorted().front(); }
  double max() const { return sorted().back(); }
  // (max - min) / median: 0.10 means the rounds spread over 10% of the median.
  double spread() const { return median() > 0 ? (max() - min()) / median() : 0; }

 private:
  std::vector<double> sorted() const {
    if (values_.empty()) throw std::logic_error("bench: a series without rounds");
    auto v = values_;
    std::sort(v.begin(), v.end());
    return v;
  }
  std::vector<double> values_;
};

// Appends one line per round: bench,state_mib,series,round,value. The header is written when
// the file is new, so several programs (or runs) can share one file.
class RoundsCsv {
 public:
  RoundsCsv() = default;  // disabled: record() does nothing
  explicit RoundsCsv(const std::filesystem::path& file) {
    const bool fresh = !std::filesystem::exists(file) || std::filesystem::file_size(file) == 0;
    out_.open(file, std::ios::app);
    if (!out_) throw std::runtime_error("bench: cannot open " + file.string());
    if (fresh) out_ << "bench,state_mib,series,round,value\n";
  }
  void record(const std::string& bench, long long state_mib, const std::string& series, const Samples& s) {
    if (!out_.is_open()) return;
    for (std::size_t i = 0; i < s.size(); ++i)
      out_ << bench << ',' << state_mib << ',' << series << ',' << i << ',' << s.values()[i] << '\n';
    out_.flush();
  }

 private:
  std::ofstream out_;
};

// "1.23x (±4%)": a ratio of medians and the larger spread of its two series.
inline std::string ratio_cell(const Samples& num, const Samples& den) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2fx (±%.0f%%)", num.median() / den.median(),
                50 * std::max(num.spread(), den.spread()));
  return buf;
}

}  // namespace savepoint::bench
