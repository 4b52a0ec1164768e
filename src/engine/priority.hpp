// engine/priority.hpp — background threads that take only what training leaves: the memory
// tier's saves (MemoryTierOptions::background_priority) and scrubs beside training.
#pragma once

#include <savepoint/options.hpp>

namespace savepoint::engine {

/// Sets the calling thread's CPU priority (low: nice 19; idle: SCHED_IDLE) and, unless
/// normal, its I/O priority (the idle class). The thread only: on Linux both calls take a
/// thread id. Threads it starts inherit it. A thread cannot raise its priority back without
/// privileges, so call it on a thread of the background work's own. Best effort: a failure is
/// logged at debug level; elsewhere than Linux nothing happens.
void set_thread_priority(BackgroundPriority priority);

}  // namespace savepoint::engine
