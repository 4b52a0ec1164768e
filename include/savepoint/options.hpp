// savepoint/options.hpp — the options of a Checkpointer and of one save, and what verify reports.
#pragma once

#include <savepoint/detail/arg.hpp>
#include <savepoint/log.hpp>
#include <savepoint/object_store.hpp>
#include <savepoint/retention.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

namespace savepoint {

class ProcessGroup;  // savepoint/distributed.hpp

/// When an async save copies the tensors it saves (CheckpointerOptions::async_snapshot).
enum class AsyncSnapshot {
  /// Before save_checkpoint_async returns: the call stalls for a host copy of the state.
  at_call,
  /// After it returns, on the background thread, while the caller computes the next forward
  /// and backward: the call does O(number of tensors) work. Call Checkpointer::before_update()
  /// before the optimizer step (the first change to saved tensors); it waits only for what is
  /// not copied yet. A change made before it fails the save instead of tearing it
  /// (docs/guide.md, "Overlapped snapshots").
  overlapped,
};

/// How the memory tier survives a lost node (MemoryTierOptions::redundancy).
enum class Redundancy {
  /// Each node's part is copied whole to the next node: 2x the state per node; a node is
  /// lost without loss unless its buddy (the next node) is lost too.
  partner,
  /// XOR parity over sets of MemoryTierOptions::parity_set_size nodes (as LLNL's SCR): each
  /// node keeps its part and 1/(n-1) of its set's parity, 1 + 1/(n-1) times the state per
  /// node (1.33x at n = 4). Any one lost node per set is rebuilt from the others' parts and
  /// the parity; two lost in one set fall back to the disk tier (with a warning).
  parity,
};

/// The CPU priority of a thread that works in the background while training runs.
enum class BackgroundPriority {
  normal,  ///< as the training thread
  low,     ///< nice 19, idle I/O class: it yields to any normal thread
  idle,    ///< SCHED_IDLE (Linux), idle I/O class: it runs only on a core nothing else wants
};

/// The memory tier (CheckpointerOptions::memory_tier; docs/distributed.md, "The memory tier"):
/// Checkpointer::save_to_memory keeps the newest checkpoints in node-local memory, copies each
/// node's part to the next node (its buddy), and persists the newest complete one to the
/// Checkpointer's directory now and then; recover_if_possible loads from memory when it can.
/// Changed through Checkpointer::options() between saves, keep, persist_every, persist_keep,
/// skip_while_busy, background_priority and reuse_files take effect at the next save; the
/// directory, node, groups and redundancy are read once, when the Checkpointer is made.
class MemoryTierOptions {
  /// A node-local directory on a tmpfs, e.g. /dev/shm/<job>: what is in it survives the crash of
  /// a process, not of its node. The ranks of a node share it (created if missing).
  SAVEPOINT_ARG(std::filesystem::path, directory);
  /// This process's node; empty (the default): SAVEPOINT_NODE_ID if set, else SLURMD_NODENAME
  /// in a SLURM task, else the host name (savepoint/launch.hpp). Ranks with the same id share
  /// `directory`; each node's parts are copied to the next node's ranks.
  SAVEPOINT_ARG(std::string, node_id);
  /// Complete memory checkpoints each node keeps (the newest ones).
  SAVEPOINT_ARG(int, keep) = 1;
  /// Every this many complete memory checkpoints, the newest is persisted to the
  /// Checkpointer's directory by the background thread. 0: only persist_memory_checkpoint().
  SAVEPOINT_ARG(int, persist_every) = 0;
  /// Retention applied to the Checkpointer's directory after each persist (unset: none).
  SAVEPOINT_ARG(std::optional<KeepOptions>, persist_keep);
  /// The buddy copies and the persists travel on this process group: the same ranks as
  /// CheckpointerOptions::process_group, but a group of its own (the background thread uses
  /// it while the training thread uses the other). Required with a process group.
  SAVEPOINT_ARG(std::shared_ptr<ProcessGroup>, replication_group);
  /// For a save_to_memory() call every step: a call that comes while the previous memory save
  /// is foreseen to be still in progress returns false at once instead of waiting for it, so
  /// memory checkpoints are taken as often as they complete. Every rank skips the same calls
  /// (rank 0 foresees from how long saves take and how often calls come; the schedule travels
  /// with each save). A save that takes longer than foreseen is still waited for.
  SAVEPOINT_ARG(bool, skip_while_busy) = false;
  /// Buddy copies of whole parts (the default) or XOR parity sets (see Redundancy).
  SAVEPOINT_ARG(Redundancy, redundancy) = Redundancy::partner;
  /// Nodes per parity set (Redundancy::parity), at least 2: nodes are grouped in order, and a
  /// last group of one joins the set before it. Every node needs the same number of ranks.
  SAVEPOINT_ARG(int, parity_set_size) = 4;
  /// The priority of the tier's background work (the snapshot's copies, hashing, buddy
  /// copies or parity, persists), so that it takes no core training needs: with
  /// skip_while_busy, saves then come less often instead of slowing the steps.
  SAVEPOINT_ARG(BackgroundPriority, background_priority) = BackgroundPriority::low;
  /// A ring of slots: the checkpoint that retention lets go (its part, buddy copy or parity
  /// share) stays as a spare that the next save overwrites in place, so saves after the second
  /// allocate no fresh pages. The tier then holds, between saves too, what it held at the peak
  /// of a save: keep + 1 checkpoints' worth. false: each save writes new files and retention
  /// frees the old ones (keep checkpoints' worth between saves, fresh pages at every save).
  SAVEPOINT_ARG(bool, reuse_files) = true;

 public:
  MemoryTierOptions() = default;
  explicit MemoryTierOptions(std::filesystem::path directory) : directory_(std::move(directory)) {}
};

class CheckpointerOptions {
  /// A registered key without a file in the checkpoint is skipped instead of raising.
  SAVEPOINT_ARG(bool, allow_partial_load) = false;
  /// Never write: no lock, no directory creation; save/delete raise UsageError.
  SAVEPOINT_ARG(bool, read_only) = false;
  /// recover_if_possible raises on a corrupt checkpoint instead of falling back to the next.
  SAVEPOINT_ARG(bool, strict_recovery) = false;
  /// Remove temporary directories left by crashed saves when the directory is first written.
  SAVEPOINT_ARG(bool, clean_stale_temporaries) = true;
  /// Threads writing (and, on load, reading and verifying) the per-key files of one
  /// checkpoint side by side; 1: one after another. Helps when one thread cannot keep the
  /// disk busy (fast NVMe, several large keys). Hooks still run in registration order on the
  /// calling thread; only the tensor and JSON writes of savepoint's own hooks are spread.
  SAVEPOINT_ARG(int, io_threads) = 1;
  /// The ranks of a multi-process job (savepoint/distributed.hpp, savepoint/c10d.hpp): saves,
  /// recovery and deletions become collective and commit once for all ranks. Null (the
  /// default): a single process, a world of one (its checkpoints record no ranks). Set
  /// before construction.
  SAVEPOINT_ARG(std::shared_ptr<ProcessGroup>, process_group);
  /// With a process group: replicated key i is written by rank i % world_size (true) or
  /// every replicated key by rank 0 (false; for comparison, docs/distributed.md).
  SAVEPOINT_ARG(bool, spread_replicated_writes) = true;
  /// When async saves copy their tensors; see AsyncSnapshot. With a process group, every rank
  /// calls before_update() for its own tensors.
  SAVEPOINT_ARG(AsyncSnapshot, async_snapshot) = AsyncSnapshot::at_call;
  /// Write tensor files with O_DIRECT through aligned buffers, two writes in flight, the same
  /// bytes (docs/performance.md says when it is faster). Where the file system refuses
  /// O_DIRECT, files are written through the page cache and a line is logged. With a process
  /// group, every rank writes its own files this way.
  SAVEPOINT_ARG(bool, direct_io) = false;
  /// Checkpoints in node-local memory as well (see MemoryTierOptions). Set before construction
  /// (some of its options may change later: see MemoryTierOptions).
  SAVEPOINT_ARG(std::optional<MemoryTierOptions>, memory_tier);
  /// Incremental saves (docs/guide.md, "Incremental checkpoints"): every tensor key is stored
  /// in parts of about part_bytes (format 2), and a part whose bytes the newest committed
  /// checkpoint already holds is hard-linked from it, not written. A sharded key's file (one
  /// per rank) is not split: it is linked whole when unchanged.
  SAVEPOINT_ARG(bool, incremental) = false;
  /// Incremental saves: tensors are grouped into parts of at most this many bytes; a larger
  /// tensor is split into segments of whole rows of about this size. Smaller parts share more
  /// when few rows change (an embedding table), larger ones mean fewer files.
  SAVEPOINT_ARG(std::uint64_t, part_bytes) = std::uint64_t{4} << 20;
  /// Incremental saves: bounds what one damaged shared file can destroy. A save writes every
  /// part (links nothing) when no committed checkpoint shares no file with the newest one, or
  /// when the newest one that shares none is this many saves older; retention keeps that one.
  /// So whenever two or more checkpoints are kept, one damaged file leaves an intact one, at
  /// most this many saves old (docs/reliability.md). Costs about 1/N of a full save per save.
  /// 0: no bound (every kept checkpoint may share a file).
  SAVEPOINT_ARG(std::uint32_t, full_save_every) = 40;
  /// How to reach an `s3://bucket/prefix` directory (endpoint, credentials, parts, retries,
  /// the commit's probe); unset: from the environment, as the AWS tools take it
  /// (docs/object-storage.md). Set before construction.
  SAVEPOINT_ARG(std::optional<ObjectStoreOptions>, object_store);

 public:
  CheckpointerOptions() = default;
};

class SaveOptions {
  /// false marks an intra-epoch checkpoint (EpochCounter re-runs that epoch on recovery).
  SAVEPOINT_ARG(bool, end_of_epoch) = true;
  /// Directory becomes CKPT+<name> instead of CKPT+<timestamp>+NN.
  SAVEPOINT_ARG(std::string, name);
  /// Allow replacing an existing checkpoint of the same name (atomically).
  SAVEPOINT_ARG(bool, overwrite) = false;
  /// Log level of the "Saved checkpoint" message.
  SAVEPOINT_ARG(LogLevel, verbosity) = LogLevel::info;
  /// Pin the new checkpoint: retention never deletes it (see Checkpointer::pin).
  SAVEPOINT_ARG(bool, pinned) = false;

 public:
  SaveOptions() = default;
};

/// Shorthands: savepoint::named("best"), savepoint::intra_epoch().
inline SaveOptions named(std::string name) { return SaveOptions().name(std::move(name)); }
inline SaveOptions intra_epoch() { return SaveOptions().end_of_epoch(false); }

/// What transfer/verify found wrong with one file of a checkpoint.
struct Problem {
  std::string key;  ///< empty for checkpoint-level problems (meta.json)
  std::filesystem::path file;
  std::string reason;
};

}  // namespace savepoint
