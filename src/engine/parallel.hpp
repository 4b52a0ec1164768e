// engine/parallel.hpp — runs independent I/O tasks side by side (io_threads).
#pragma once

#include <functional>
#include <vector>

namespace savepoint::engine {

/// Runs `tasks` on up to `threads` threads (this one included). After a failure no new task
/// starts; the first exception is rethrown once every started task has finished.
void run_all(const std::vector<std::function<void()>>& tasks, int threads);

}  // namespace savepoint::engine
