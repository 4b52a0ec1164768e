// savepoint/detail/io.hpp — the I/O layer under every save and load (internal).
//
// Every file-system call of savepoint goes through these helpers (listing, stat, mkdir,
// open, write, fsync, rename, remove, statfs), for three reasons: errors become
// savepoint::IoError naming the file; tests can inject failures (ENOSPC, EIO, short writes)
// at any step through set_fault_hook(); and `s3://` paths go to the object store
// (detail/object_store.hpp), so the engine has one code path. Not part of the stable API.
#pragma once

#include <savepoint/file_contents.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace savepoint::detail {

namespace fs = std::filesystem;

/// The I/O steps a fault can be injected into.
enum class IoOp { open, write, fsync, close, mkdir, rename, remove, read, statfs, stat, list };
const char* io_op_name(IoOp op) noexcept;

/// What an injected fault does: fail with `error` (an errno value), or, with error == 0,
/// for writes: write at most `max_bytes` bytes (a short write); for statfs: report
/// `max_bytes` bytes free (a nearly full disk).
struct Fault {
  int error = 0;
  std::size_t max_bytes = SIZE_MAX;
};
/// Test seam: called before each I/O step; returning a Fault with error != 0 (or a short
/// max_bytes) makes that step misbehave. nullptr removes the hook. Not thread-safe to change
/// while saves run (install it before, remove it after wait()).
using FaultHook = std::function<Fault(IoOp, const fs::path&)>;
void set_fault_hook(FaultHook hook);
/// What the fault hook says about one step (no hook: no fault), for callers that handle
/// short writes themselves.
Fault fault_for(IoOp op, const fs::path& path);
/// Runs the fault hook for one step: throws the IoError the injected fault stands for.
void check_fault(IoOp op, const fs::path& path);

/// Test seam for the crash-state explorer (tests/test_crash_states.cpp): each change the
/// library makes to the file system, reported after it succeeded, in order. `data` is valid
/// only during the call. Reported: mkdir, create (O_EXCL), append (FileWriter's writes),
/// contents (a file written by a user hook, as read back before its fsync), replace (the
/// lock file rewritten in place), fsync (of a file or a directory, by path), rename
/// (no-replace), exchange (RENAME_EXCHANGE), unlink, remove_tree (before it runs), overwrite
/// (a reused file's bytes at `offset` replaced in place) and truncate (a reused file cut to
/// `offset` bytes).
struct IoRecord {
  enum class Kind {
    mkdir, create, append, contents, replace, fsync, rename, exchange, unlink, remove_tree, hard_link,
    overwrite, truncate
  };
  Kind kind;
  const fs::path& path;
  const fs::path* target = nullptr;  ///< rename, exchange: the second path; hard_link: the existing file
  std::string_view data = {};        ///< append, contents, replace, overwrite
  std::uint64_t offset = 0;          ///< overwrite: where `data` goes; truncate: the new size
};
using IoRecorder = std::function<void(const IoRecord&)>;
/// Installs (nullptr: removes) the recorder. Like set_fault_hook: not while saves run. The
/// recorder is called from io_threads concurrently: it must lock.
void set_io_recorder(IoRecorder recorder);
/// Reports one record when a recorder is installed (one predictable branch otherwise).
void record_io(const IoRecord& record);
extern bool g_io_recording;
inline bool io_recording() noexcept { return g_io_recording; }

/// Test seam: deliberately broken protocols, so that a test can prove the crash-state explorer
/// catches a missing fsync, and the in-process group tests a broken agreement. All false
/// outside those tests.
struct ProtocolBreaks {
  bool skip_directory_fsync_before_rename = false;  ///< commit renames without fsyncing the new directory
  bool skip_gathering_records = false;  ///< rank 0 commits without the other ranks' file records
  bool skip_recycle_fsyncs = false;  ///< a spare's renames are not made durable before it is overwritten
};
ProtocolBreaks& protocol_breaks() noexcept;

/// Byte count and XXH3-64 of a file's contents.
struct FileDigest {
  std::uint64_t bytes = 0;
  std::uint64_t xxh3 = 0;
};
std::string to_hex(std::uint64_t value);
bool parse_hex(std::string_view text, std::uint64_t& value);

/// Streaming XXH3-64 (wraps libxxhash's state so headers need not include xxhash.h).
class Hasher {
 public:
  Hasher();
  ~Hasher();
  Hasher(const Hasher&) = delete;
  Hasher& operator=(const Hasher&) = delete;
  void update(const void* data, std::size_t size);
  std::uint64_t digest() const;

 private:
  void* state_;
};

class DirectWriter;  // direct.cpp
namespace object_io {
class Upload;  // object_store.cpp
}

/// How a FileWriter reaches the disk.
enum class WriteMode {
  buffered,  ///< write(2) through the page cache
  /// O_DIRECT: the bytes are staged in aligned buffers, two writes in flight, the last block
  /// padded and the file cut back to its size. The same bytes on disk. Where the file system
  /// refuses O_DIRECT (EINVAL), buffered, with a log line once per file system.
  direct,
  /// Buffered, into the file of the same name that the directory's recycle bin holds, if any
  /// (recycle_directory): its bytes are overwritten in place and the file cut to size at the
  /// end, so its pages (tmpfs) are reused, not allocated. A file with other links is never
  /// overwritten (a new one is created). Without one in the bin: a new file, as `buffered`.
  reuse,
};

/// Writes a new file (O_EXCL): large writes go straight to the kernel, small ones are buffered;
/// the checksum is computed on the fly; finish() fsyncs and closes. Destroying an unfinished
/// writer closes the file without syncing (the caller removes the whole temporary directory).
class FileWriter {
 public:
  explicit FileWriter(fs::path path, WriteMode mode = WriteMode::buffered);
  ~FileWriter();
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;

  void write(const void* data, std::size_t size);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  /// fsync (unless !sync) + close; returns the digest of everything written.
  FileDigest finish(bool sync = true);
  /// Starts the writeback of the file (sync_file_range) and closes it, without waiting: the
  /// caller fsyncs it with sync_file() before relying on it. Files written this way and synced
  /// together cost one journal commit, not one each (docs/performance.md, "Incremental").
  FileDigest finish_deferred();
  const fs::path& path() const noexcept { return path_; }

 private:
  void flush_buffer();
  void write_all(const char* data, std::size_t size);
  static int open_recycled(const fs::path& path);
  void cut_to_size();

  fs::path path_;
  int fd_ = -1;
  bool reused_ = false;  // WriteMode::reuse found a file: overwrite records, cut at the end
  std::uint64_t position_ = 0;  // bytes written to fd_ so far
  Hasher hasher_;
  std::uint64_t bytes_ = 0;
  std::unique_ptr<char[]> buffer_;
  std::size_t buffered_ = 0;
  std::unique_ptr<DirectWriter> direct_;  // WriteMode::direct where the file system allows it
  std::unique_ptr<object_io::Upload> upload_;  // an s3:// path: a streamed (multipart) upload
};


/// Anonymous memory reused for chunks of files (the memory tier's copies and fetches):
/// faulted in once, on huge pages where the kernel allows (MADV_HUGEPAGE). Streaming a file
/// through a mapping of its own 4 KiB pages (tmpfs) costs a fault or TLB miss per page;
/// read() and write() into one reused buffer cost neither (docs/performance.md).
class ChunkBuffer {
 public:
  explicit ChunkBuffer(std::size_t size);
  ~ChunkBuffer();
  ChunkBuffer(const ChunkBuffer&) = delete;
  ChunkBuffer& operator=(const ChunkBuffer&) = delete;
  char* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }

 private:
  void* mapping_ = nullptr;
  std::size_t mapped_ = 0;
  char* data_ = nullptr;
  std::size_t size_ = 0;
};

/// How a MappedFile maps its file.
struct Mapping {
  bool read_all = true;        ///< read the whole file in now (to verify it); else page by page on first touch
  bool copy_on_write = false;  ///< writable and private: writes copy the page and never reach the file
};

/// A memory map of a whole file (empty files map to an empty view): what a load hook gets as
/// LoadContext::contents.
class MappedFile final : public FileContents {
 public:
  explicit MappedFile(const fs::path& path, Mapping mapping = {});
  /// Not a mapping: a view of bytes that live elsewhere (a checkpoint bundle in memory),
  /// kept alive by `owner` (may be null for static data). `name` is for messages. `fresh`:
  /// the bytes are private memory of this object's own (read_into_fresh_memory), writable,
  /// which tensors may keep instead of copying.
  MappedFile(fs::path name, std::string_view bytes, std::shared_ptr<const void> owner, bool fresh = false);
  ~MappedFile() override;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  std::string_view bytes() const noexcept override { return {static_cast<const char*>(data_), size_}; }
  /// Writable only with Mapping::copy_on_write, or when fresh().
  char* data() const noexcept { return static_cast<char*>(data_); }
  const fs::path& path() const noexcept override { return path_; }
  bool fresh() const noexcept override { return fresh_; }
  /// Gives the pages of bytes [begin, end) (widened to whole pages) of a read-only mapping back
  /// to the kernel (MADV_DONTNEED): they stay in the page cache but leave this process's RSS,
  /// and are read from the file again if touched. Does nothing on a view (bytes that live
  /// elsewhere, fresh memory) or a copy-on-write mapping, whose pages may hold bytes of their own.
  void release_pages(std::size_t begin, std::size_t end) const noexcept;

 private:
  fs::path path_;
  void* data_ = nullptr;
  std::size_t size_ = 0;
  bool borrowed_ = false;
  bool copy_on_write_ = false;
  bool fresh_ = false;
  std::shared_ptr<const void> owner_;
};

/// Bytes read at given offsets, for partial reads that verify block by block (sharded keys):
/// a file (pread, opened on first use, every read through the fault seam) or bytes already
/// in memory (a bundle's member). Copies share the open file.
class PositionalReader {
 public:
  static PositionalReader file(fs::path path);
  static PositionalReader memory(fs::path name, std::string_view bytes, std::shared_ptr<const void> owner);
  /// Copies `size` bytes at `offset` into `out`; false when the source ends first (truncated).
  /// IoError naming the file when a read fails.
  bool read(std::uint64_t offset, std::uint64_t size, char* out) const;
  const fs::path& path() const noexcept;

 private:
  struct State;
  explicit PositionalReader(std::shared_ptr<State> state) : state_(std::move(state)) {}
  std::shared_ptr<State> state_;
};

/// A whole file read into fresh private memory (faulted in first, then read() in chunks,
/// each hashed while still in the CPU cache): for bytes that become new tensors, which
/// then keep this memory instead of copying it. The digest covers every byte read.
struct FreshRead {
  std::shared_ptr<const MappedFile> contents;
  FileDigest digest;
};
FreshRead read_into_fresh_memory(const fs::path& path);

FileDigest digest_bytes(std::string_view bytes);
/// Reads the file in chunks and hashes it: a check that keeps none of its bytes.
FileDigest digest_file(const fs::path& path);
/// Reads the file once (for files written by user hooks) and fsyncs it.
FileDigest digest_and_sync_file(const fs::path& path);
/// A whole file read with O_DIRECT into fresh aligned memory (two reads in flight), its XXH3
/// computed as the chunks arrive (into `digest`). Where the file system refuses O_DIRECT, read
/// with read(2) and a line logged. The returned bytes are writable (data()).
std::shared_ptr<const MappedFile> read_file_direct(const fs::path& path, FileDigest& digest);
std::string read_small_file(const fs::path& path, std::size_t max_bytes);
/// Writes a whole small file durably (O_EXCL + fsync, unless !sync); returns its digest.
FileDigest write_file(const fs::path& path, std::string_view bytes, bool sync = true);

enum class FileType { regular, directory, symlink, other };
/// What lstat(2) says about a path: its type, size and identity (a replaced file or
/// directory gets a new inode; PINNED changes a directory's mtime).
struct FileStatus {
  FileType type = FileType::other;
  std::uint64_t size = 0;
  std::uint64_t inode = 0;
  std::uint64_t device = 0;  ///< with inode, a file's identity across its hard links
  std::int64_t mtime_ns = 0, ctime_ns = 0;
  bool same_identity(const FileStatus& o) const noexcept {
    return inode == o.inode && mtime_ns == o.mtime_ns && ctime_ns == o.ctime_ns;
  }
};
/// lstat (never follows a symlink); nullopt if the path does not exist.
std::optional<FileStatus> path_status(const fs::path& path);
/// How many names (hard links) the file at `path` has (lstat's st_nlink): above 1 for a file an
/// incremental save shared between checkpoints. nullopt, never an exception, where that is not
/// known: the path is missing, its stat fails (an injected fault included) or it is in an
/// object store (no hard links there: a shared object is a copy). For messages about damage.
std::optional<std::uint64_t> hard_link_count(const fs::path& path) noexcept;
struct DirectoryEntry {
  std::string name;
  FileStatus status;
};
/// The entries of `path` whose names start with `prefix`, each lstat'ed; empty if `path`
/// does not exist. A read or stat error throws (a listing never silently misses an entry).
std::vector<DirectoryEntry> list_directory(const fs::path& path, std::string_view prefix = {});

void make_directory(const fs::path& path);
/// mkdir -p.
void make_directories(const fs::path& path);
/// unlink(2) of one file.
void remove_file(const fs::path& path);
void fsync_directory(const fs::path& path);
/// rename(2) that never replaces an existing target (renameat2 RENAME_NOREPLACE when the
/// kernel has it); throws IoError with EEXIST if the target exists.
void rename_no_replace(const fs::path& from, const fs::path& to);
/// Writes a new standalone file (an average, a bundle) so that `output` appears whole or not
/// at all: `fill` writes a temporary file beside it, which is fsynced, renamed into place
/// without replacing anything (IoError EEXIST), and its directory fsynced. On any exception
/// the temporary file is removed and the exception passes on.
void write_new_file(const fs::path& output, const std::function<void(FileWriter&)>& fill);
/// fsync(2) of a file a FileWriter finished with finish_deferred() (opened read-only).
void sync_file(const fs::path& path);
/// link(2): `to` becomes a second name of the file `from`; false (nothing done) where the
/// file system or the pair of directories cannot (EXDEV, EPERM, EMLINK, ENOTSUP), IoError on
/// any other failure (EEXIST included).
bool hard_link(const fs::path& from, const fs::path& to);
/// Atomically swaps two existing directories (RENAME_EXCHANGE); returns false if unsupported.
bool rename_exchange(const fs::path& a, const fs::path& b);
void remove_tree(const fs::path& path);
/// Reused directories (the memory tier's ring of slots): a directory that retention would remove
/// is kept as a spare instead, its files in its recycle bin, and the next save claims it as its
/// temporary directory and overwrites those files in place (WriteMode::reuse). A spare or a
/// recycle bin is never a checkpoint: its name is hidden, and every claim renames the spare
/// away before any byte in it is overwritten.
inline constexpr const char* kSparePrefix = ".savepoint-spare-";
inline constexpr const char* kRecycleBin = ".savepoint-recycle";
/// Moves the regular files of `dir` into its recycle bin and renames it to a spare beside it
/// (both renames made durable before it returns); when its parent holds `max_spares` spares
/// already, removes it instead.
void recycle_directory(const fs::path& dir, std::size_t max_spares = 1);
/// Renames a spare beside `to` to `to` (which must not exist yet): true if one was claimed.
/// False, and nothing changed, when there is no spare or `to` exists already.
bool claim_spare_directory(const fs::path& to);
/// Removes the recycle bin of `dir` (the files a save did not reuse), if it has one.
void empty_recycle_bin(const fs::path& dir);

/// Bytes available to an unprivileged writer on the file system holding `path`.
std::uint64_t available_bytes(const fs::path& path);

/// The newest checkpoint ever deleted from a root: its sequence number and directory name
/// are never handed out again (a stale Checkpoint value must not designate a new checkpoint).
struct HighWater {
  std::uint64_t sequence = 0;
  std::string name;
};

/// Exclusive advisory lock on `<root>/.savepoint.lock`, shared by all Checkpointers of this
/// process on the same directory. The file's first line records the owner's pid and host for
/// the error message another process gets; then the HighWater mark and the largest allocated
/// sequence, which only the lock's holder writes (docs/format.md).
class DirectoryLock {
 public:
  static std::shared_ptr<DirectoryLock> acquire(const fs::path& root);
  ~DirectoryLock();
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

  HighWater high_water() const;
  /// Records `mark` durably (fsync) if it is higher than the current one.
  void raise_high_water(const HighWater& mark);
  /// The largest sequence number ever allocated to a save in this root (0 if none recorded).
  std::uint64_t allocated() const noexcept { return allocated_; }
  /// Records durably (fsync) that `sequence` was allocated, if it is higher than allocated():
  /// a later save never takes it again, even when a listing misses that checkpoint.
  void raise_allocated(std::uint64_t sequence);

 private:
  DirectoryLock(fs::path key, fs::path file, int fd) : key_(std::move(key)), file_(std::move(file)), fd_(fd) {}
  void read_marks(const std::string& text);
  std::string contents() const;
  void write_contents();
  void sync_contents();  // write_contents, then fdatasync (an object store's root: one PUT)
  fs::path key_;
  fs::path file_;
  int fd_;
  int pid_ = 0;
  std::string owner_;
  HighWater high_water_;
  std::uint64_t allocated_ = 0;
};

std::string host_name();

}  // namespace savepoint::detail
