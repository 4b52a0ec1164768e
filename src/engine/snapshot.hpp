// engine/snapshot.hpp — an overlapped async snapshot: the tensors of a save copied into the
// staging buffers after save_checkpoint_async returned, while the caller computes the next
// forward and backward (CheckpointerOptions::async_snapshot, docs/guide.md).
//
// Exactness rests on the tensors' version counters (LibTorch bumps one on every in-place
// change, under NoGradGuard too): the versions are recorded at the call, and the snapshot is
// certain once the copy is done and every version is unchanged. That check runs once, on
// whichever thread gets there first:
//   settle()               — the guard (Checkpointer::before_update) on the training thread:
//                            copies what is left itself, waits for copies in progress, checks
//   check_before_commit()  — the background thread, just before the rename, when no guard ran
// A change found either way fails the save (nothing is committed); the error tells the user
// to call before_update() before mutating.
#pragma once

#include <savepoint/payload.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <string>
#include <vector>

namespace savepoint::engine {

class OverlappedSnapshot {
 public:
  /// `checkpoint` names the save in messages.
  explicit OverlappedSnapshot(std::string checkpoint) : checkpoint_(std::move(checkpoint)) {}

  /// Defers the copy of `source` (which has a version function) into `destination`; records
  /// its version now. Before start() only.
  void defer(const std::string& key, const TensorData& source, void* destination);
  std::size_t size() const noexcept { return copies_.size(); }

  /// The background copier: claims and copies until none is left, waits for copies other
  /// threads claimed. A copy's failure is kept for check_before_commit().
  void copy_all();
  /// The guard: copies what nobody has claimed yet on this thread, waits for the rest, then
  /// checks the versions (once). Never throws for a change: the save fails in the background.
  void settle();
  /// On the background thread after copy_all() and the writes: throws the copy failure or the
  /// change the guard found, or checks the versions now if no guard ran.
  void check_before_commit();

 private:
  struct Copy {
    std::string key;
    TensorData source;
    void* destination;
    std::int64_t version;
  };
  void copy_claimed(bool background);  // claims and copies until none is left
  void wait_copied();
  std::string changed() const;  // empty: every version unchanged

  std::string checkpoint_;
  std::vector<Copy> copies_;
  std::atomic<std::size_t> next_{0};
  std::mutex mutex_;
  std::condition_variable copied_cv_;
  std::size_t copied_ = 0;       // finished copies (under mutex_)
  std::exception_ptr copy_error_;
  enum class Check { pending, passed, failed } check_ = Check::pending;
  std::string failure_;
};

}  // namespace savepoint::engine
