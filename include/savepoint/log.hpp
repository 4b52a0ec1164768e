// savepoint/log.hpp — where savepoint's messages go.
//
// Quiet by default: only warnings and errors reach the sink (stderr). Raise the level to see
// info ("Saved checkpoint ...") and debug messages, or replace the sink to route them into
// your own logger. The sink may be called from the background save thread.
#pragma once

#include <fmt/format.h>

#include <functional>
#include <string_view>

namespace savepoint {

enum class LogLevel { debug = 0, info = 1, warn = 2, error = 3, off = 4 };

using LogSink = std::function<void(LogLevel, std::string_view message)>;

/// Replace the sink (nullptr restores the default stderr sink). Thread-safe.
void set_log_sink(LogSink sink);
/// Messages below `level` are dropped before formatting. Default: LogLevel::warn.
void set_log_level(LogLevel level);
LogLevel log_level() noexcept;

namespace detail {
void log_message(LogLevel level, std::string_view message);
template <class... Args>
void log(LogLevel level, fmt::format_string<Args...> format, Args&&... args) {
  if (level < log_level()) return;
  log_message(level, fmt::format(format, std::forward<Args>(args)...));
}
}  // namespace detail

}  // namespace savepoint
