// Test helpers: temporary directories, small file manipulations and fault injection.
#pragma once

#include <savepoint/detail/io.hpp>
#include <savepoint/savepoint.hpp>

#include <unistd.h>

#include <atomic>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace test {
namespace fs = std::filesystem;

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
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
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

}  // namespace test
