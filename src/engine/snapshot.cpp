#include "snapshot.hpp"

#include <savepoint/detail/snapshot.hpp>
#include <savepoint/errors.hpp>

#include <fmt/format.h>

#include <cstring>

namespace savepoint {
namespace detail {
namespace {
SnapshotCopyHook& copy_hook() {
  static SnapshotCopyHook hook;
  return hook;
}
}  // namespace
void set_snapshot_copy_hook(SnapshotCopyHook hook) { copy_hook() = std::move(hook); }
}  // namespace detail

namespace engine {

void OverlappedSnapshot::defer(const std::string& key, const TensorData& source, void* destination) {
  copies_.push_back({key, source, destination, source.version()});
}

void OverlappedSnapshot::copy_claimed(bool background) {
  const std::size_t n = copies_.size();
  while (next_.load() < n) {
    if (background && detail::copy_hook()) detail::copy_hook()(next_.load());
    const std::size_t i = next_++;
    if (i >= n) break;
    const Copy& c = copies_[i];
    std::exception_ptr error;
    try {
      if (c.source.host_bytes) std::memcpy(c.destination, c.source.host_bytes, c.source.spec.nbytes);
      else c.source.copy_to_host(c.destination);
    } catch (...) {
      error = std::current_exception();
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (error && !copy_error_) copy_error_ = error;
    if (++copied_ == n) copied_cv_.notify_all();
  }
}

void OverlappedSnapshot::wait_copied() {
  std::unique_lock<std::mutex> lock(mutex_);
  copied_cv_.wait(lock, [&] { return copied_ == copies_.size(); });
}

void OverlappedSnapshot::copy_all() {
  copy_claimed(/*background=*/true);
  wait_copied();
  std::lock_guard<std::mutex> lock(mutex_);
  if (copy_error_) std::rethrow_exception(copy_error_);
}

std::string OverlappedSnapshot::changed() const {
  for (const Copy& c : copies_) {
    const std::int64_t now = c.source.version();
    if (now != c.version) {
      return fmt::format("savepoint: the overlapped snapshot of checkpoint '{}' saw tensor '{}' of key '{}' change "
                         "in place (version {} -> {}) before its copy was certain to be complete; nothing was "
                         "committed. Call Checkpointer::before_update() after save_checkpoint_async and before "
                         "the optimizer step or any other in-place change to saved tensors",
                         checkpoint_, c.source.spec.name, c.key, c.version, now);
    }
  }
  return {};
}

void OverlappedSnapshot::settle() {
  copy_claimed(/*background=*/false);
  wait_copied();
  std::lock_guard<std::mutex> lock(mutex_);
  if (check_ != Check::pending) return;
  failure_ = changed();
  check_ = failure_.empty() ? Check::passed : Check::failed;
}

void OverlappedSnapshot::check_before_commit() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (copy_error_) std::rethrow_exception(copy_error_);
  if (check_ == Check::pending) {
    failure_ = changed();
    check_ = failure_.empty() ? Check::passed : Check::failed;
  }
  if (check_ == Check::failed) throw UsageError(failure_);
}

}  // namespace engine
}  // namespace savepoint
