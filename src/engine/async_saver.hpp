// engine/async_saver.hpp — the background half of async saves: one job in flight, its
// result or failure handed to the next caller.
#pragma once

#include <savepoint/checkpoint.hpp>

#include <exception>
#include <functional>
#include <optional>
#include <string>
#include <thread>

namespace savepoint::engine {

class AsyncSaver {
 public:
  /// `what` names the directory in the message about a failure nobody observed.
  explicit AsyncSaver(std::string what) : what_(std::move(what)) {}
  /// Waits for the job in flight; logs its failure if nobody called wait().
  ~AsyncSaver();
  AsyncSaver(const AsyncSaver&) = delete;
  AsyncSaver& operator=(const AsyncSaver&) = delete;

  /// Waits for the job in flight (if any) and rethrows its failure.
  void wait_idle();
  /// Runs `job` on a new background thread; the caller has called wait_idle() first.
  void launch(std::function<Checkpoint()> job);
  /// What the last job committed since the previous take (after wait_idle()).
  std::optional<Checkpoint> take_result();

 private:
  std::string what_;
  std::thread worker_;
  std::exception_ptr error_;          // written by the worker, read after join()
  std::optional<Checkpoint> result_;  // likewise
};

}  // namespace savepoint::engine
