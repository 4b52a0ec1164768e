#include "priority.hpp"

#include <savepoint/log.hpp>

#ifdef __linux__
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <cerrno>
#include <cstring>

namespace savepoint::engine {

void set_thread_priority(BackgroundPriority priority) {
  if (priority == BackgroundPriority::normal) return;
#ifdef __linux__
  const auto tid = static_cast<pid_t>(::syscall(SYS_gettid));
  if (priority == BackgroundPriority::idle) {
    sched_param param{};
    param.sched_priority = 0;
    if (::sched_setscheduler(tid, SCHED_IDLE, &param) != 0)
      detail::log(LogLevel::debug, "savepoint: could not make a background thread SCHED_IDLE: {}", std::strerror(errno));
  } else if (::setpriority(PRIO_PROCESS, static_cast<id_t>(tid), 19) != 0) {
    detail::log(LogLevel::debug, "savepoint: could not lower a background thread's CPU priority: {}",
                std::strerror(errno));
  }
#ifdef SYS_ioprio_set
  constexpr int kWhoProcess = 1, kClassIdle = 3, kClassShift = 13;  // linux/ioprio.h
  if (::syscall(SYS_ioprio_set, kWhoProcess, static_cast<int>(tid), kClassIdle << kClassShift) != 0)
    detail::log(LogLevel::debug, "savepoint: could not lower a background thread's I/O priority: {}",
                std::strerror(errno));
#endif
#endif
}

}  // namespace savepoint::engine
