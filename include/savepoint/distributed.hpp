// savepoint/distributed.hpp — what a Checkpointer needs from a multi-process job: the one
// small interface between savepoint's engine and a process group (c10d or anything else).
//
//   auto group = savepoint::c10d_process_group(pg, std::chrono::seconds(30));  // <savepoint/c10d.hpp>
//   savepoint::Checkpointer ckpt(dir, savepoint::CheckpointerOptions().process_group(group));
//   ckpt.add_recoverable("model", net);                               // replicated (default)
//   ckpt.add_recoverable("rng", rng, savepoint::per_rank());          // one file per rank
//
// Every rank constructs the Checkpointer and calls save/recover/delete together (they are
// collective). Rank 0 holds the directory lock; the other ranks of the job do not take it.
// All ranks must see the same directory (a shared file system): they write into the same
// temporary checkpoint and rank 0 commits it. See docs/distributed.md.
//
// Every operation raises DistributedError (with the same message on every rank) when a rank
// failed, and when a rank died or hung it raises within the group's timeout.
#pragma once

#include <savepoint/errors.hpp>

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace savepoint {

/// The collectives savepoint uses. Every call is collective: all ranks call it, in the same
/// order. Implementations raise (any std::exception) when a peer fails or the timeout
/// passes; they are used from one thread at a time.
class ProcessGroup {
 public:
  /// One message of a point-to-point exchange (send_and_receive).
  struct Outgoing {
    int to;
    const char* data;
    std::size_t size;
  };
  struct Incoming {
    int from;
    char* data;
    std::size_t size;  ///< exactly what the sender sends
  };

  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  /// Rank 0's `bytes` on every rank (the argument of the other ranks is ignored).
  virtual std::string broadcast(const std::string& bytes) = 0;
  /// Every rank's `bytes`, indexed by rank.
  virtual std::vector<std::string> all_gather(const std::string& bytes) = 0;
  virtual void barrier() = 0;
  /// Point to point (the memory tier's buddy copies, docs/distributed.md): posts every send
  /// and receive, then waits for all of them (so two ranks may exchange without deadlock).
  /// Not collective: only the ranks named take part. Messages between two ranks arrive in
  /// the order they were sent. A group without point-to-point raises UsageError.
  virtual void send_and_receive(const std::vector<Outgoing>& sends, const std::vector<Incoming>& receives);
  /// How long one collective may wait for the slowest rank.
  virtual std::chrono::milliseconds timeout() const = 0;

  // The job's key-value store (c10d's Store): flags that must cost no collective on the steps
  // where nothing happens (preemption and time-based saves, docs/distributed.md). Not
  // collective: any rank, any time, from the thread that uses the group. A group without a
  // store keeps these defaults (has_store() false, the others raise UsageError).
  virtual bool has_store() const { return false; }
  /// Sets `key` to `value` for every rank to see.
  virtual void store_set(const std::string& key, const std::string& value);
  /// The value of `key` if some rank set it, without waiting; nullopt otherwise.
  virtual std::optional<std::string> store_get(const std::string& key);
};

/// A collective checkpoint operation failed on some rank, or a collective itself failed (a
/// rank died, the timeout passed): raised on every rank. `failing_rank` is -1 when the
/// collective failed and nobody could tell which rank was at fault.
class DistributedError : public Error {
 public:
  DistributedError(const std::string& what, int failing_rank) : Error(what), failing_rank_(failing_rank) {}
  int failing_rank() const noexcept { return failing_rank_; }

 private:
  int failing_rank_;
};

}  // namespace savepoint
