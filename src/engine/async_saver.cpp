#include "async_saver.hpp"

#include <savepoint/log.hpp>

namespace savepoint::engine {

AsyncSaver::~AsyncSaver() {
  if (worker_.joinable()) worker_.join();
  if (!error_) return;
  try {
    std::rethrow_exception(error_);
  } catch (const std::exception& e) {
    detail::log(LogLevel::error, "An asynchronous save into '{}' failed and nobody called wait(): {}", what_,
                e.what());
  } catch (...) {
  }
}

void AsyncSaver::wait_idle() {
  if (worker_.joinable()) worker_.join();
  if (error_) {
    auto error = error_;
    error_ = nullptr;
    std::rethrow_exception(error);
  }
}

void AsyncSaver::launch(std::function<Checkpoint()> job) {
  wait_idle();
  result_.reset();
  worker_ = std::thread([this, job = std::move(job)] {
    try {
      result_ = job();
    } catch (...) {
      error_ = std::current_exception();
    }
  });
}

std::optional<Checkpoint> AsyncSaver::take_result() {
  auto out = std::move(result_);
  result_.reset();
  return out;
}

}  // namespace savepoint::engine
