#include <savepoint/log.hpp>

#include <atomic>
#include <cstdio>
#include <mutex>

namespace savepoint {
namespace {
std::atomic<LogLevel> g_level{LogLevel::warn};
std::mutex g_sink_mutex;
LogSink g_sink;

const char* level_name(LogLevel level) {
  switch (level) {
    case LogLevel::debug: return "debug";
    case LogLevel::info: return "info";
    case LogLevel::warn: return "warning";
    case LogLevel::error: return "error";
    default: return "";
  }
}
}  // namespace

void set_log_sink(LogSink sink) {
  std::lock_guard<std::mutex> lock(g_sink_mutex);
  g_sink = std::move(sink);
}
void set_log_level(LogLevel level) { g_level.store(level); }
LogLevel log_level() noexcept { return g_level.load(std::memory_order_relaxed); }

namespace detail {
void log_message(LogLevel level, std::string_view message) {
  std::lock_guard<std::mutex> lock(g_sink_mutex);
  if (g_sink) {
    g_sink(level, message);
    return;
  }
  std::fprintf(stderr, "[savepoint %s] %.*s\n", level_name(level), static_cast<int>(message.size()),
               message.data());
}
}  // namespace detail
}  // namespace savepoint
