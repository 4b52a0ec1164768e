// The one way tests start and wait for other processes (test_crash, test_resume,
// test_save_load, test_distributed, test_sharded, test_ddp_training).
//
// test::Children is a group of child processes that share one deadline, counted from the
// group's construction. Every wait of the group (for an exit, an output line, a text in the
// output, a report on the report pipe) sleeps in poll() on the children's pipes and on a
// pidfd per child, never in a timed loop; the poll returns when a child writes or ends, or
// at the deadline (without pidfd_open, before Linux 5.3, the end of a child's output pipes
// stands for its exit). Once the deadline passed, every child still running is SIGKILLed and
// reaped, and the test fails with a message naming each of them, what was awaited and every
// child's status and output: no child can outlive its test, nor hang it.
// The destructor SIGKILLs and reaps whatever still runs, so a failed REQUIRE leaves nothing.
//
// A child's stdout and stderr (Command::capture_stderr) go to one pipe that the group drains
// while it waits: output(i) is what child i wrote so far, describe(i) its name, how it ended
// and its output. Commands run through posix_spawn; start_fork runs a function of this
// program in a forked child instead, with a pipe of its own for binary reports
// (read_report). Test-support only: not installed, not part of the library.
#pragma once

#include "catch.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

extern char** environ;

namespace test {

// What a child process runs.
struct Command {
  std::string name;               // names the child in messages ("rank 2 of 'save' (step 1)")
  std::vector<std::string> argv;  // argv[0] is the program's path
  std::vector<std::pair<std::string, std::string>> env = {};  // set in the child's environment
  bool capture_stderr = true;     // false: the child's stderr stays the test's own
  bool stdin_pipe = false;        // true: the test writes the child's stdin (Children::send)
};

// "exited N" or "killed by signal N", from a waitpid status.
inline std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "wait status " + std::to_string(status);
}

class Children {
 public:
  using Clock = std::chrono::steady_clock;

  // Every child of this group must have ended `limit` after this constructor ran.
  explicit Children(std::chrono::seconds limit) : limit_(limit), deadline_(Clock::now() + limit) {}
  ~Children() {
    for (auto& c : children_) {
      if (!c.reaped) {
        ::kill(c.pid, SIGKILL);
        reap_now(c);
      }
      close_fds(c);
    }
  }
  Children(const Children&) = delete;
  Children& operator=(const Children&) = delete;

  // Starts `command` (posix_spawn); returns the child's index in this group.
  std::size_t start(const Command& command) {
    if (command.argv.empty()) FAIL("spawn: " << command.name << " has no command line");
    Child c;
    c.name = command.name.empty() ? command.argv[0] : command.name;
    int out[2] = {-1, -1}, in[2] = {-1, -1};
    if (::pipe2(out, O_CLOEXEC) != 0) FAIL("spawn: pipe2: " << std::strerror(errno));
    // A socket rather than a pipe: send() with MSG_NOSIGNAL to a child that already ended
    // fails with EPIPE instead of raising SIGPIPE in the test.
    if (command.stdin_pipe && ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in) != 0) {
      const int error = errno;
      close_fd(out[0]);
      close_fd(out[1]);
      FAIL("spawn: socketpair: " << std::strerror(error));
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    if (command.capture_stderr) posix_spawn_file_actions_adddup2(&actions, out[1], 2);
    if (command.stdin_pipe) posix_spawn_file_actions_adddup2(&actions, in[0], 0);
    std::vector<std::string> args = command.argv;
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string entry = *e;
      const bool replaced = std::any_of(command.env.begin(), command.env.end(), [&](const auto& kv) {
        return entry.compare(0, kv.first.size() + 1, kv.first + "=") == 0;
      });
      if (!replaced) env.push_back(entry);
    }
    for (const auto& [key, value] : command.env) env.push_back(key + "=" + value);
    std::vector<char*> envp;
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    const int rc = ::posix_spawn(&c.pid, argv[0], &actions, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    ::close(out[1]);
    if (in[0] >= 0) ::close(in[0]);
    if (rc != 0) {
      ::close(out[0]);
      if (in[1] >= 0) ::close(in[1]);
      FAIL("spawn: cannot start " << c.name << " (" << command.argv[0] << "): " << std::strerror(rc));
    }
    c.out_fd = nonblocking(out[0]);
    c.in_fd = in[1];
    c.pidfd = open_pidfd(c.pid);
    children_.push_back(std::move(c));
    return children_.size() - 1;
  }

  // Forks a child that runs body(report_fd) and then exits 0 (126 if body throws); report_fd
  // is the write end of a pipe that read_report reads. The child holds none of the other
  // children's pipes.
  std::size_t start_fork(const std::string& name, const std::function<void(int report_fd)>& body) {
    Child c;
    c.name = name;
    int out[2] = {-1, -1}, report[2] = {-1, -1};
    if (::pipe2(out, O_CLOEXEC) != 0) FAIL("spawn: pipe2: " << std::strerror(errno));
    if (::pipe2(report, O_CLOEXEC) != 0) {
      const int error = errno;
      close_fd(out[0]);
      close_fd(out[1]);
      FAIL("spawn: pipe2: " << std::strerror(error));
    }
    std::cout.flush();  // a child must not inherit (and write out) the parent's buffered output
    std::fflush(nullptr);
    c.pid = ::fork();
    const int fork_error = errno;
    if (c.pid == 0) {
      for (auto& other : children_) close_fds(other);
      ::close(out[0]);
      ::close(report[0]);
      if (::dup2(out[1], 1) < 0 || ::dup2(out[1], 2) < 0) ::_exit(125);
      ::close(out[1]);
      try {
        body(report[1]);
      } catch (...) {
        ::_exit(126);
      }
      ::_exit(0);
    }
    ::close(out[1]);
    ::close(report[1]);
    if (c.pid < 0) {
      ::close(out[0]);
      ::close(report[0]);
      FAIL("spawn: cannot fork " << name << ": " << std::strerror(fork_error));
    }
    c.out_fd = nonblocking(out[0]);
    c.report_fd = nonblocking(report[0]);
    c.pidfd = open_pidfd(c.pid);
    children_.push_back(std::move(c));
    return children_.size() - 1;
  }

  // ------------------------------------------------------------------ waiting (bounded)
  // Waits until child i ended; its waitpid status.
  int wait(std::size_t i) {
    wait_until([&] { return at(i).reaped; }, at(i).name + " to end");
    return at(i).status;
  }
  // Waits until every child ended.
  void wait_all() {
    wait_until([&] { return std::all_of(children_.begin(), children_.end(), [](const Child& c) { return c.reaped; }); },
               "every child to end");
  }
  // Waits until child i's output contains `text`: true; false when the child ended without
  // writing it.
  bool wait_for_output(std::size_t i, const std::string& text) {
    wait_until([&] { return at(i).output.find(text) != std::string::npos || at(i).reaped; },
               "'" + text + "' in the output of " + at(i).name);
    return at(i).output.find(text) != std::string::npos;
  }
  // The next line of child i's output (without its newline); nullopt at the end of its output.
  std::optional<std::string> next_line(std::size_t i) {
    Child& c = at(i);
    wait_until([&] { return c.output.find('\n', c.line_pos) != std::string::npos || c.out_fd < 0; },
               "a line of output from " + c.name);
    const auto end = c.output.find('\n', c.line_pos);
    if (end == std::string::npos && c.line_pos == c.output.size()) return std::nullopt;
    const auto stop = end == std::string::npos ? c.output.size() : end;
    std::string line = c.output.substr(c.line_pos, stop - c.line_pos);
    c.line_pos = end == std::string::npos ? stop : end + 1;
    return line;
  }
  // Reads `size` bytes that child i (a start_fork child) wrote to its report pipe; false when
  // the pipe ended first (the child is gone).
  bool read_report(std::size_t i, void* data, std::size_t size) {
    Child& c = at(i);
    wait_until([&] { return c.reports.size() - c.report_pos >= size || c.report_fd < 0; },
               "a report from " + c.name);
    if (c.reports.size() - c.report_pos < size) return false;
    std::memcpy(data, c.reports.data() + c.report_pos, size);
    c.report_pos += size;
    return true;
  }

  // ------------------------------------------------------------------ acting on children
  // Writes to child i's stdin (Command::stdin_pipe); false when the child no longer reads it.
  bool send(std::size_t i, std::string_view bytes) {
    Child& c = at(i);
    if (c.in_fd < 0) FAIL("spawn: " << c.name << " was started without Command::stdin_pipe");
    while (!bytes.empty()) {
      const ssize_t n = ::send(c.in_fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }
  // Sends `signo` to child i unless it was already reaped.
  void signal(std::size_t i, int signo) {
    if (!at(i).reaped) ::kill(at(i).pid, signo);
  }
  void kill_all() {
    for (std::size_t i = 0; i < children_.size(); ++i) signal(i, SIGKILL);
  }

  // ------------------------------------------------------------------ results
  std::size_t size() const { return children_.size(); }
  const std::string& name(std::size_t i) const { return at(i).name; }
  // What child i wrote so far (all of it once it ended).
  const std::string& output(std::size_t i) const { return at(i).output; }
  bool ended(std::size_t i) const { return at(i).reaped; }
  // Child i's waitpid status (it must have ended).
  int status(std::size_t i) const {
    if (!at(i).reaped) FAIL("spawn: " << at(i).name << " has not ended yet");
    return at(i).status;
  }
  bool exited_ok(std::size_t i) const {
    return at(i).reaped && WIFEXITED(at(i).status) && WEXITSTATUS(at(i).status) == 0;
  }
  // "<name> exited 0:\n<output>"
  std::string describe(std::size_t i) const {
    const Child& c = at(i);
    return c.name + " " + (c.reaped ? describe_status(c.status) : std::string("still running")) + ":\n" + c.output;
  }
  // Every child ended with exit status 0; otherwise the test fails showing each one.
  void require_all_ok() const {
    std::string all;
    bool ok = true;
    for (std::size_t i = 0; i < children_.size(); ++i) {
      all += describe(i) + "\n";
      ok = ok && exited_ok(i);
    }
    INFO(all);
    REQUIRE(ok);
  }

 private:
  struct Child {
    std::string name;
    pid_t pid = -1;
    int pidfd = -1;      // readable once the process ended; -1 without pidfd_open (then: out_fd's end)
    int out_fd = -1;     // stdout (and stderr), -1 at its end
    int report_fd = -1;  // start_fork's report pipe, -1 at its end
    int in_fd = -1;      // stdin (Command::stdin_pipe)
    std::string output, reports;
    std::size_t line_pos = 0, report_pos = 0;
    bool reaped = false;
    int status = 0;
  };

  Child& at(std::size_t i) {
    if (i >= children_.size()) FAIL("spawn: no child " << i << " (" << children_.size() << " started)");
    return children_[i];
  }
  const Child& at(std::size_t i) const {
    if (i >= children_.size()) FAIL("spawn: no child " << i << " (" << children_.size() << " started)");
    return children_[i];
  }

  static int nonblocking(int fd) {
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
  }
  static int open_pidfd(pid_t pid) {
#ifdef SYS_pidfd_open
    const long fd = ::syscall(SYS_pidfd_open, pid, 0);  // close-on-exec
    return fd >= 0 ? static_cast<int>(fd) : -1;
#else
    (void)pid;
    return -1;
#endif
  }
  static void close_fd(int& fd) {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  static void close_fds(Child& c) {
    close_fd(c.pidfd);
    close_fd(c.out_fd);
    close_fd(c.report_fd);
    close_fd(c.in_fd);
  }
  // Appends what `fd` holds now to `into`; closes it at its end.
  static void drain(int& fd, std::string& into) {
    char buf[65536];
    while (fd >= 0) {
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n > 0) {
        into.append(buf, static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      close_fd(fd);  // end of file (or an error: nothing more will come)
    }
  }
  // Reaps a child that ended (or was SIGKILLed), then takes what is left in its pipes.
  static void reap_now(Child& c) {
    int status = 0;
    while (::waitpid(c.pid, &status, 0) < 0 && errno == EINTR) {
    }
    c.status = status;
    c.reaped = true;
    drain(c.out_fd, c.output);
    drain(c.report_fd, c.reports);
    close_fd(c.out_fd);  // a descendant could hold it open: the child's output ends here
    close_fd(c.report_fd);
    close_fd(c.pidfd);
  }

  // Sleeps in poll() until a child writes or ends, at most `timeout`.
  void pump(std::chrono::milliseconds timeout) {
    enum Kind { kPid, kOut, kReport };
    std::vector<pollfd> fds;
    std::vector<std::pair<std::size_t, Kind>> who;
    for (std::size_t i = 0; i < children_.size(); ++i) {
      const Child& c = children_[i];
      if (c.reaped) continue;
      if (c.pidfd >= 0) fds.push_back({c.pidfd, POLLIN, 0}), who.emplace_back(i, kPid);
      if (c.out_fd >= 0) fds.push_back({c.out_fd, POLLIN, 0}), who.emplace_back(i, kOut);
      if (c.report_fd >= 0) fds.push_back({c.report_fd, POLLIN, 0}), who.emplace_back(i, kReport);
    }
    if (!fds.empty()) {
      const auto ms = std::min<std::chrono::milliseconds::rep>(std::max<std::chrono::milliseconds::rep>(timeout.count(), 0), INT_MAX);
      const int ready = ::poll(fds.data(), fds.size(), static_cast<int>(ms));
      if (ready < 0 && errno != EINTR) FAIL("spawn: poll failed: " << std::strerror(errno));
      for (std::size_t k = 0; ready > 0 && k < fds.size(); ++k) {
        if (fds[k].revents == 0) continue;
        Child& c = children_[who[k].first];
        if (c.reaped) continue;
        if (who[k].second == kPid) reap_now(c);
        else if (who[k].second == kOut) drain(c.out_fd, c.output);
        else drain(c.report_fd, c.reports);
      }
    }
    // Without a pidfd (a kernel before 5.3), the end of a child's pipes marks its exit.
    for (auto& c : children_)
      if (!c.reaped && c.pidfd < 0 && c.out_fd < 0 && c.report_fd < 0) reap_now(c);
  }

  template <class Done>
  void wait_until(const Done& done, const std::string& what) {
    while (!done()) {
      const auto left = deadline_ - Clock::now();
      if (left <= Clock::duration::zero()) overrun(what);
      pump(std::chrono::ceil<std::chrono::milliseconds>(left));
    }
  }

  // The deadline passed: SIGKILL and reap every child still running, then fail naming them.
  [[noreturn]] void overrun(const std::string& what) {
    std::string late;
    for (auto& c : children_) {
      if (c.reaped) continue;
      ::kill(c.pid, SIGKILL);
      reap_now(c);
      late += (late.empty() ? "" : ", ") + c.name;
    }
    std::string all;
    for (std::size_t i = 0; i < children_.size(); ++i) all += "\n--- " + describe(i);
    FAIL("spawn: time limit of " << limit_.count() << " s reached while waiting for " << what << ": SIGKILLed "
                                 << (late.empty() ? std::string("no child (none was running)") : late) << all);
    std::abort();  // FAIL throws
  }

  std::chrono::seconds limit_;
  Clock::time_point deadline_;
  std::vector<Child> children_;
};

}  // namespace test
