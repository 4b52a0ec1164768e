// Resident memory of this process, for the benchmarks' memory columns (Linux /proc).
#pragma once

#include <cstring>
#include <fstream>
#include <string>

namespace savepoint::bench {

// A "VmRSS:"-style field of /proc/self/status, in KiB (-1 if absent).
inline long status_kib(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(field, 0) == 0) return std::stol(line.substr(std::strlen(field)));
  return -1;
}
inline double rss_mib() { return status_kib("VmRSS:") / 1024.0; }
inline double peak_mib() { return status_kib("VmHWM:") / 1024.0; }
// Resets the peak (VmHWM) to the current RSS.
inline void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }

}  // namespace savepoint::bench
