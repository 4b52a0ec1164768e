// Test helpers: temporary directories, small file manipulations, fault injection and skips.
#pragma once

#include <savepoint/core.hpp>
#include <savepoint/detail/io.hpp>

#include "catch.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace test {
namespace fs = std::filesystem;

// The TempDirs alive in this process, so that skip() can remove them before it exits.
struct LiveTempDirs {
  std::mutex mutex;
  std::set<fs::path> paths;
};
inline LiveTempDirs& live_temp_dirs() {
  static LiveTempDirs live;
  return live;
}

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    const char* base = std::getenv("TMPDIR");
    path_ = fs::path(base ? base : "/tmp") /
            ("savepoint-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
    std::lock_guard<std::mutex> lock(live_temp_dirs().mutex);
    live_temp_dirs().paths.insert(path_);
  }
  ~TempDir() {
    {
      std::lock_guard<std::mutex> lock(live_temp_dirs().mutex);
      live_temp_dirs().paths.erase(path_);
    }
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& s) const { return path_ / s; }

 private:
  fs::path path_;
};

inline std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
inline void write_text(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << s;
}
// Flips one bit of the byte at `offset` (negative: from the end).
// The sequence numbers of a listing, in its order (what a test compares after a failed save).
inline std::vector<std::uint64_t> sequences(const std::vector<savepoint::Checkpoint>& all) {
  std::vector<std::uint64_t> out;
  for (const auto& c : all) out.push_back(c.sequence);
  return out;
}
inline void flip_byte(const fs::path& p, long offset) {
  std::string bytes = read_file(p);
  const auto at = offset >= 0 ? static_cast<std::size_t>(offset)
                              : bytes.size() - static_cast<std::size_t>(-offset);
  bytes.at(at) = static_cast<char>(bytes.at(at) ^ 0x01);
  write_text(p, bytes);
}
inline std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}
// What is in a checkpoint root besides the lock file and committed checkpoints: anything
// here after a save (failed or not) is a leftover.
inline std::vector<std::string> leftovers(const fs::path& root) {
  std::vector<std::string> out;
  for (const auto& e : entries(root))
    if (e != ".savepoint.lock" && e.rfind("CKPT+", 0) != 0) out.push_back(e);
  return out;
}
// Catches warnings for assertions; restores the default sink on destruction.
struct CaptureLog {
  std::vector<std::string> lines;
  CaptureLog() {
    savepoint::set_log_sink([this](savepoint::LogLevel, std::string_view m) { lines.emplace_back(m); });
  }
  ~CaptureLog() { savepoint::set_log_sink(nullptr); }
  bool contains(const std::string& needle) const {
    for (const auto& l : lines)
      if (l.find(needle) != std::string::npos) return true;
    return false;
  }
};

// Installs a fault hook (savepoint::detail::set_fault_hook) for its lifetime and removes it
// on destruction, also when an assertion throws. set_fault_hook is not thread-safe against
// running saves: create the guard before an async save starts and let it end only after the
// save finished (wait(), the next save, or the Checkpointer's destruction).
class FaultGuard {
 public:
  explicit FaultGuard(savepoint::detail::FaultHook hook) {
    savepoint::detail::set_fault_hook(std::move(hook));
  }
  ~FaultGuard() { savepoint::detail::set_fault_hook(nullptr); }
  FaultGuard(const FaultGuard&) = delete;
  FaultGuard& operator=(const FaultGuard&) = delete;
};

// ------------------------------------------------------------------ skipping
// ctest runs every test case in its own process (catch_discover_tests) with SAVEPOINT_CTEST=1
// and SKIP_RETURN_CODE 77 (tests/CMakeLists.txt), so a test that cannot run here exits with
// 77 and ctest reports it as skipped instead of passed.
constexpr int kSkipReturnCode = 77;

inline bool under_ctest() {
  const char* env = std::getenv("SAVEPOINT_CTEST");
  return env != nullptr && std::string(env) == "1";
}

#ifdef CATCH_CONFIG_EXTERNAL_INTERFACES
// Counts failed assertions of the running test case, so that skip() never turns a test case
// that already failed into a "skipped" one; and keeps a run whose failure count happens to be
// 77 (Catch's exit code is the number of failed assertions) from reading as a skip.
struct FailureWatch : Catch::TestEventListenerBase {
  using Base = Catch::TestEventListenerBase;  // v3: an alias (tests/catch.hpp)
  using Base::Base;
  static int& failures_in_test_case() {
    static int failures = 0;
    return failures;
  }
  void testCaseStarting(const Catch::TestCaseInfo& info) override {
    failures_in_test_case() = 0;
    Base::testCaseStarting(info);
  }
  SAVEPOINT_LISTENER_ASSERTION_RESULT assertionEnded(const Catch::AssertionStats& stats) override {
    if (!stats.assertionResult.isOk()) ++failures_in_test_case();
    SAVEPOINT_LISTENER_RETURN_FROM_ASSERTION;
  }
  void testRunEnded(const Catch::TestRunStats& stats) override {
    Base::testRunEnded(stats);
    const auto failed = std::min<std::uint64_t>(255, stats.totals.assertions.failed);
    if (under_ctest() && failed == static_cast<std::uint64_t>(kSkipReturnCode)) {
      std::cout << "savepoint tests: " << failed << " assertions failed (exit code 1, not the skip code)"
                << std::endl;
      std::_Exit(1);
    }
  }
};
SAVEPOINT_REGISTER_LISTENER(FailureWatch, failure_watch_registrar)
inline bool test_case_failed_so_far() { return FailureWatch::failures_in_test_case() > 0; }
#else
inline bool test_case_failed_so_far() { return false; }
#endif

// Ends the current test case as skipped: `if (!available) return test::skip("why");`
// Under ctest (SAVEPOINT_CTEST=1) it prints the reason, removes the live TempDirs and exits
// the process with code 77, unless an assertion of this test case already failed (then the
// failure is reported as usual). Run by hand, it only WARNs and the caller returns.
inline void skip(const std::string& reason) {
  if (under_ctest() && !test_case_failed_so_far()) {
    std::cout << "SKIPPED: " << reason << std::endl;
    std::lock_guard<std::mutex> lock(live_temp_dirs().mutex);
    for (const auto& p : live_temp_dirs().paths) {
      std::error_code ec;
      fs::remove_all(p, ec);
    }
    std::fflush(nullptr);
    std::_Exit(kSkipReturnCode);
  }
  WARN("skipped: " << reason);
}

}  // namespace test
