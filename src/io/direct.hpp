// io/direct.hpp — O_DIRECT writes behind FileWriter (WriteMode::direct), internal to src/io.
#pragma once

#include <savepoint/detail/io.hpp>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace savepoint::detail {

/// Stages a file's bytes in aligned chunks, hashes them there (the bytes written, once) and
/// hands each full chunk to two writer threads (pwrite at its offset): two writes in flight
/// while the next chunk fills.
class DirectWriter {
 public:
  DirectWriter(int fd, fs::path path);
  ~DirectWriter();  // waits for the writes in flight (their errors dropped: the save is failing)
  DirectWriter(const DirectWriter&) = delete;
  DirectWriter& operator=(const DirectWriter&) = delete;

  void write(const void* data, std::size_t size);
  /// Writes what is staged (the last block padded with zeros), waits for every write, cuts the
  /// file to its exact size; returns the digest of the bytes written. No fsync.
  FileDigest finish();

 private:
  struct Slot {
    char* data = nullptr;
    std::size_t used = 0;       // file bytes in it
    std::uint64_t offset = 0;   // where they go
    bool in_flight = false;     // queued or being written
    bool unrecorded = false;    // written, not yet reported to the crash-state recorder
  };
  void submit(Slot& slot);    // queue a full slot for the writers
  void reclaim(Slot& slot);   // wait for its write, report it, raise a writer's error
  void writer_loop();
  void write_block(const char* data, std::size_t size, std::uint64_t offset);
  void stop_writers() noexcept;

  int fd_;
  fs::path path_;
  Hasher hasher_;
  std::uint64_t bytes_ = 0;
  std::vector<Slot> slots_;
  std::size_t current_ = 0;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Slot*> queue_;
  std::vector<std::thread> writers_;
  bool stopping_ = false;
  std::exception_ptr error_;
};

/// Switches `fd` to O_DIRECT and returns its writer; null (and a log line, once per file
/// system) where the file system refuses O_DIRECT: the caller writes buffered.
std::unique_ptr<DirectWriter> make_direct_writer(int fd, const fs::path& path);
inline void direct_write(DirectWriter& writer, const void* data, std::size_t size) { writer.write(data, size); }
inline FileDigest direct_finish(DirectWriter& writer) { return writer.finish(); }

}  // namespace savepoint::detail
