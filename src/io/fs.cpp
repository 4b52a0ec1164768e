// The I/O layer: syscalls with errno -> IoError, the fault-injection seam, XXH3 hashing.
#include <savepoint/detail/io.hpp>
#include <savepoint/detail/object_store.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include "direct.hpp"

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <fcntl.h>
#include <stdio.h>
#include <dirent.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <new>
#include <cstring>
#include <system_error>

namespace savepoint::detail {
namespace {

// Every call on an `s3://` path goes to the object store (detail/object_store.hpp).
bool in_store(const fs::path& path) noexcept { return is_object_store_path(path); }

[[noreturn]] void no_such_call(const char* what, const fs::path& path) {
  throw_usage(fmt::format("savepoint: cannot {} '{}': an object store has no such operation (a bug: the engine asks "
                          "for an object store's own way)",
                          what, path.string()));
}

FaultHook& fault_hook() {
  static FaultHook hook;
  return hook;
}

[[noreturn]] void throw_errno(const char* what, const fs::path& path) {
  const int err = errno;
  throw_io(fmt::format("{} failed for '{}': {}", what, path.string(), std::strerror(err)), path,
           err);
}

}  // namespace

Fault fault_for(IoOp op, const fs::path& path) {
  const auto& hook = fault_hook();
  return hook ? hook(op, path) : Fault{};
}

// Runs the fault hook; an injected error behaves exactly like the syscall failing.
void check_fault(IoOp op, const fs::path& path) {
  const Fault fault = fault_for(op, path);
  if (fault.error != 0) {
    errno = fault.error;
    throw_io(fmt::format("{} failed for '{}': {} (injected)", io_op_name(op), path.string(),
                         std::strerror(fault.error)),
             path, fault.error);
  }
}

namespace {
constexpr std::size_t kBufferSize = std::size_t{1} << 20;  // small writes are coalesced to 1 MiB
constexpr std::size_t kMaxChunk = std::size_t{1} << 30;    // Linux caps one write at ~2 GiB

}  // namespace

const char* io_op_name(IoOp op) noexcept {
  switch (op) {
    case IoOp::open: return "open";
    case IoOp::write: return "write";
    case IoOp::fsync: return "fsync";
    case IoOp::close: return "close";
    case IoOp::mkdir: return "mkdir";
    case IoOp::rename: return "rename";
    case IoOp::remove: return "remove";
    case IoOp::statfs: return "statfs";
    case IoOp::read: return "read";
    case IoOp::stat: return "stat";
    case IoOp::list: return "list";
  }
  return "io";
}

void set_fault_hook(FaultHook hook) { fault_hook() = std::move(hook); }

// ---------------------------------------------------------------- recorder and breaks
bool g_io_recording = false;
namespace {
IoRecorder& io_recorder() {
  static IoRecorder recorder;
  return recorder;
}
}  // namespace
void set_io_recorder(IoRecorder recorder) {
  io_recorder() = std::move(recorder);
  g_io_recording = static_cast<bool>(io_recorder());
}
void record_io(const IoRecord& record) {
  if (g_io_recording) io_recorder()(record);
}
ProtocolBreaks& protocol_breaks() noexcept {
  static ProtocolBreaks breaks;
  return breaks;
}

std::string to_hex(std::uint64_t value) { return fmt::format("{:016x}", value); }

bool parse_hex(std::string_view text, std::uint64_t& value) {
  if (text.size() != 16) return false;
  std::uint64_t v = 0;
  for (char c : text) {
    v <<= 4;
    if (c >= '0' && c <= '9') v |= static_cast<std::uint64_t>(c - '0');
    else if (c >= 'a' && c <= 'f') v |= static_cast<std::uint64_t>(c - 'a' + 10);
    else return false;
  }
  value = v;
  return true;
}

// ---------------------------------------------------------------- Hasher
Hasher::Hasher() : state_(XXH3_createState()) {
  if (state_ == nullptr) throw std::bad_alloc();
  XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_));
}
Hasher::~Hasher() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }
void Hasher::update(const void* data, std::size_t size) {
  XXH3_64bits_update(static_cast<XXH3_state_t*>(state_), data, size);
}
std::uint64_t Hasher::digest() const {
  return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state_));
}

FileDigest digest_bytes(std::string_view bytes) {
  return {bytes.size(), XXH3_64bits(bytes.data(), bytes.size())};
}

// ---------------------------------------------------------------- FileWriter
// WriteMode::reuse: moves `path`'s namesake out of the recycle bin and opens it for writing
// from its start; -1 when the bin has none (or the file has other links: removed, so that a
// new file is created and the other names keep their bytes).
int FileWriter::open_recycled(const fs::path& path) {
  const fs::path recycled = path.parent_path() / kRecycleBin / path.filename();
  if (!path_status(recycled)) return -1;
  rename_no_replace(recycled, path);
  const int fd = ::open(path.c_str(), O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) throw_errno("open", path);
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1) {
    ::close(fd);
    remove_file(path);
    return -1;
  }
  return fd;
}

void FileWriter::cut_to_size() {
  check_fault(IoOp::write, path_);
  if (::ftruncate(fd_, static_cast<off_t>(position_)) != 0) throw_errno("ftruncate", path_);
  if (io_recording()) record_io({IoRecord::Kind::truncate, path_, nullptr, {}, position_});
}

FileWriter::FileWriter(fs::path path, WriteMode mode) : path_(std::move(path)) {
  check_fault(IoOp::open, path_);
  if (in_store(path_)) {
    upload_ = std::make_unique<object_io::Upload>(path_);
    return;
  }
  if (mode == WriteMode::reuse) {
    fd_ = open_recycled(path_);
    reused_ = fd_ >= 0;
    if (reused_) return;
  }
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) throw_errno("open", path_);
  if (io_recording()) record_io({IoRecord::Kind::create, path_});
  if (mode == WriteMode::direct) direct_ = make_direct_writer(fd_, path_);
}

FileWriter::~FileWriter() {
  upload_.reset();  // an unfinished upload is aborted
  direct_.reset();  // joins its writes before the descriptor goes
  if (fd_ >= 0) ::close(fd_);
}

void FileWriter::write_all(const char* data, std::size_t size) {
  while (size > 0) {
    std::size_t chunk = size < kMaxChunk ? size : kMaxChunk;
    const Fault fault = fault_for(IoOp::write, path_);
    if (fault.error != 0) {
      throw_io(fmt::format("write failed for '{}': {} (injected)", path_.string(),
                           std::strerror(fault.error)),
               path_, fault.error);
    }
    if (fault.max_bytes < chunk) chunk = fault.max_bytes;
    const ssize_t n = ::write(fd_, data, chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("write", path_);
    }
    if (n == 0) {  // a zero-byte write for a non-empty request means no space to grow
      throw_io(fmt::format("write failed for '{}': no progress (disk full?)", path_.string()),
               path_, ENOSPC);
    }
    if (io_recording()) {
      record_io({reused_ ? IoRecord::Kind::overwrite : IoRecord::Kind::append, path_, nullptr,
                 {data, static_cast<std::size_t>(n)}, position_});
    }
    position_ += static_cast<std::uint64_t>(n);
    data += n;
    size -= static_cast<std::size_t>(n);
  }
}

void FileWriter::flush_buffer() {
  if (buffered_ == 0) return;
  write_all(buffer_.get(), buffered_);
  buffered_ = 0;
}

void FileWriter::write(const void* data, std::size_t size) {
  if (upload_) {
    check_fault(IoOp::write, path_);
    hasher_.update(data, size);
    bytes_ += size;
    return upload_->write(data, size);
  }
  if (fd_ < 0) throw_usage(fmt::format("write to finished file '{}'", path_.string()));
  if (direct_) return direct_write(*direct_, data, size);
  hasher_.update(data, size);
  bytes_ += size;
  const char* bytes = static_cast<const char*>(data);
  if (size >= kBufferSize) {  // large tensors go straight from their storage to the kernel
    flush_buffer();
    write_all(bytes, size);
    return;
  }
  if (!buffer_) buffer_.reset(new char[kBufferSize]);
  if (buffered_ + size > kBufferSize) flush_buffer();
  std::memcpy(buffer_.get() + buffered_, bytes, size);
  buffered_ += size;
}

FileDigest FileWriter::finish(bool sync) {
  if (upload_) {  // durable once the server answered: nothing to sync
    if (upload_->finish() != bytes_) throw_usage(fmt::format("upload of '{}' lost bytes", path_.string()));
    upload_.reset();
    return {bytes_, hasher_.digest()};
  }
  flush_buffer();
  FileDigest digest;
  if (direct_) {
    // The hasher saw nothing: the direct writer hashed the staged bytes it wrote.
    digest = direct_finish(*direct_);  // every block written, the size exact
    bytes_ = digest.bytes;
    direct_.reset();
  } else {
    digest = {bytes_, hasher_.digest()};
  }
  if (reused_) cut_to_size();
  if (sync) {
    check_fault(IoOp::fsync, path_);
    if (::fsync(fd_) != 0) throw_errno("fsync", path_);
    if (io_recording()) record_io({IoRecord::Kind::fsync, path_});
  } else {
    // Start the writeback now, so that a later fsync finds the data on its way (and the
    // blocks allocated): fsyncs of many such files then share one journal commit. A file
    // system without it (EINVAL, ENOSYS) still works: the fsync writes everything.
    (void)::sync_file_range(fd_, 0, 0, SYNC_FILE_RANGE_WRITE);
  }
  check_fault(IoOp::close, path_);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) throw_errno("close", path_);
  return digest;
}

FileDigest FileWriter::finish_deferred() { return finish(/*sync=*/false); }  // starts the writeback

void sync_file(const fs::path& path) {
  check_fault(IoOp::fsync, path);
  if (in_store(path)) return;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_errno("open", path);
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    errno = err;
    throw_errno("fsync", path);
  }
  ::close(fd);
  if (io_recording()) record_io({IoRecord::Kind::fsync, path});
}

// ---------------------------------------------------------------- MappedFile
ChunkBuffer::ChunkBuffer(std::size_t size) : size_(size) {
  // 2 MiB aligned, so that the kernel can back it with huge pages.
  constexpr std::size_t kHuge = std::size_t{2} << 20;
  mapped_ = size + kHuge;
  mapping_ = ::mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapping_ == MAP_FAILED) {
    mapping_ = nullptr;
    throw std::bad_alloc();
  }
  const auto at = reinterpret_cast<std::uintptr_t>(mapping_);
  data_ = reinterpret_cast<char*>((at + kHuge - 1) / kHuge * kHuge);
  (void)::madvise(data_, size_, MADV_HUGEPAGE);  // a hint: 4 KiB pages where THP is off
}

ChunkBuffer::~ChunkBuffer() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapped_);
}

MappedFile::MappedFile(const fs::path& path, Mapping mapping) : path_(path) {
  check_fault(IoOp::read, path_);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_errno("open", path);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw_errno("stat", path);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw_corrupt(fmt::format("'{}' is not a regular file", path.string()), path);
  }
  size_ = static_cast<std::size_t>(st.st_size);
  if (size_ > 0) {
    // read_all uses MAP_POPULATE: the whole file is read now, with large readahead, instead of
    // one page fault at a time while it is hashed (2x faster from a cold cache in bench/).
    // read() into a buffer and chunked MADV_WILLNEED/POPULATE_READ were no faster in trials.
    data_ = ::mmap(nullptr, size_, PROT_READ, mapping.read_all ? MAP_PRIVATE | MAP_POPULATE : MAP_PRIVATE, fd, 0);
    if (data_ == MAP_FAILED) {
      data_ = nullptr;
      ::close(fd);
      throw_errno("mmap", path);
    }
    copy_on_write_ = mapping.copy_on_write;
    if (mapping.read_all) ::madvise(data_, size_, MADV_SEQUENTIAL);
    // Write permission only after populating: MAP_POPULATE on a writable private mapping
    // would copy every page up front. Private mappings may be written with a read-only fd.
    if (mapping.copy_on_write && ::mprotect(data_, size_, PROT_READ | PROT_WRITE) != 0) {
      const int err = errno;
      ::munmap(data_, size_);
      data_ = nullptr;
      ::close(fd);
      errno = err;
      throw_errno("mprotect", path);
    }
  }
  ::close(fd);
}

MappedFile::MappedFile(fs::path name, std::string_view bytes, std::shared_ptr<const void> owner, bool fresh)
    : path_(std::move(name)),
      data_(const_cast<char*>(bytes.data())),  // written only when fresh (memory of its own)
      size_(bytes.size()),
      borrowed_(true),
      fresh_(fresh),
      owner_(std::move(owner)) {}

MappedFile::~MappedFile() {
  if (data_ != nullptr && !borrowed_) ::munmap(data_, size_);
}

void MappedFile::release_pages(std::size_t begin, std::size_t end) const noexcept {
  if (data_ == nullptr || borrowed_ || copy_on_write_ || end <= begin) return;
  static const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const std::size_t first = begin / page * page;
  const std::size_t last = std::min((end + page - 1) / page * page, (size_ + page - 1) / page * page);
  if (last > first) (void)::madvise(static_cast<char*>(data_) + first, last - first, MADV_DONTNEED);  // a hint
}

// ---------------------------------------------------------------- whole files
namespace {
// Owns a file descriptor opened for reading; closes it on every path out.
class ReadFd {
 public:
  explicit ReadFd(const fs::path& path) : path_(path), fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    if (fd_ < 0) throw_errno("open", path_);
  }
  ~ReadFd() { ::close(fd_); }
  ReadFd(const ReadFd&) = delete;
  ReadFd& operator=(const ReadFd&) = delete;
  // Calls on_chunk(data, size) for each chunk until end of file.
  template <class OnChunk>
  void read_all(OnChunk on_chunk) {
    std::unique_ptr<char[]> buf(new char[kBufferSize]);
    for (;;) {
      const ssize_t n = ::read(fd_, buf.get(), kBufferSize);
      if (n < 0) {
        if (errno == EINTR) continue;
        throw_errno("read", path_);
      }
      if (n == 0) return;
      on_chunk(buf.get(), static_cast<std::size_t>(n));
    }
  }
  int get() const noexcept { return fd_; }

 private:
  fs::path path_;
  int fd_;
};
}  // namespace

FileDigest digest_file(const fs::path& path) {
  check_fault(IoOp::read, path);
  if (in_store(path)) return object_io::read_fresh(path).digest;
  ReadFd fd(path);
  Hasher hasher;
  std::uint64_t total = 0;
  fd.read_all([&](const char* data, std::size_t n) {
    hasher.update(data, n);
    total += n;
  });
  return {total, hasher.digest()};
}

FileDigest digest_and_sync_file(const fs::path& path) {
  if (in_store(path)) return object_io::read_fresh(path).digest;
  ReadFd fd(path);
  Hasher hasher;
  std::uint64_t total = 0;
  std::string recorded;  // the file as the hook wrote it, for the recorder only
  fd.read_all([&](const char* data, std::size_t n) {
    hasher.update(data, n);
    total += n;
    if (io_recording()) recorded.append(data, n);
  });
  if (io_recording()) record_io({IoRecord::Kind::contents, path, nullptr, recorded});
  check_fault(IoOp::fsync, path);
  if (::fsync(fd.get()) != 0) throw_errno("fsync", path);
  if (io_recording()) record_io({IoRecord::Kind::fsync, path});
  return {total, hasher.digest()};
}

std::string read_small_file(const fs::path& path, std::size_t max_bytes) {
  check_fault(IoOp::read, path);
  if (in_store(path)) return object_io::read_small(path, max_bytes);
  ReadFd fd(path);
  std::string out;
  fd.read_all([&](const char* data, std::size_t n) {
    out.append(data, n);
    if (out.size() > max_bytes) {
      throw_corrupt(fmt::format("'{}' is larger than the {} byte limit", path.string(), max_bytes), path);
    }
  });
  return out;
}

FileDigest write_file(const fs::path& path, std::string_view bytes, bool sync) {
  FileWriter writer(path);
  writer.write(bytes);
  return writer.finish(sync);
}

// ---------------------------------------------------------------- directories
void make_directory(const fs::path& path) {
  check_fault(IoOp::mkdir, path);
  if (in_store(path)) return;  // object stores have no directories: a prefix exists with its objects
  if (::mkdir(path.c_str(), 0755) != 0) throw_errno("mkdir", path);
  if (io_recording()) record_io({IoRecord::Kind::mkdir, path});
}

void make_directories(const fs::path& path) {
  check_fault(IoOp::mkdir, path);
  if (in_store(path)) return;
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec) {
    throw_io(fmt::format("cannot create directory '{}': {}", path.string(), ec.message()), path,
             ec.value());
  }
}

namespace {
FileStatus status_of(const struct stat& st) {
  FileStatus out;
  out.type = S_ISREG(st.st_mode)   ? FileType::regular
             : S_ISDIR(st.st_mode) ? FileType::directory
             : S_ISLNK(st.st_mode) ? FileType::symlink
                                   : FileType::other;
  out.size = static_cast<std::uint64_t>(st.st_size);
  out.inode = static_cast<std::uint64_t>(st.st_ino);
  out.device = static_cast<std::uint64_t>(st.st_dev);
  out.mtime_ns = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
  out.ctime_ns = static_cast<std::int64_t>(st.st_ctim.tv_sec) * 1'000'000'000 + st.st_ctim.tv_nsec;
  return out;
}
}  // namespace

std::optional<FileStatus> path_status(const fs::path& path) {
  check_fault(IoOp::stat, path);
  if (in_store(path)) return object_io::status(path);
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return std::nullopt;
    throw_errno("stat", path);
  }
  return status_of(st);
}

std::optional<std::uint64_t> hard_link_count(const fs::path& path) noexcept {
  try {
    if (fault_for(IoOp::stat, path).error != 0 || in_store(path)) return std::nullopt;
  } catch (...) {  // a fault hook that throws: not known
    return std::nullopt;
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return std::nullopt;
  return static_cast<std::uint64_t>(st.st_nlink);
}

std::vector<DirectoryEntry> list_directory(const fs::path& path, std::string_view prefix) {
  check_fault(IoOp::list, path);
  if (in_store(path)) return object_io::list(path, prefix);
  std::vector<DirectoryEntry> out;
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(path.c_str()), ::closedir);
  if (!dir) {
    if (errno == ENOENT) return out;
    throw_errno("list directory", path);
  }
  for (;;) {
    errno = 0;
    const dirent* entry = ::readdir(dir.get());
    if (entry == nullptr) {
      if (errno != 0) throw_errno("read directory", path);
      break;
    }
    const std::string_view name = entry->d_name;
    if (name == "." || name == ".." || name.substr(0, prefix.size()) != prefix) continue;
    check_fault(IoOp::stat, path / entry->d_name);
    struct stat st {};
    if (::fstatat(::dirfd(dir.get()), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) continue;  // removed since readdir saw it
      throw_errno("stat", path / entry->d_name);
    }
    out.push_back({std::string(name), status_of(st)});
  }
  return out;
}

void remove_file(const fs::path& path) {
  check_fault(IoOp::remove, path);
  if (in_store(path)) return object_io::remove(path);
  if (::unlink(path.c_str()) != 0) throw_errno("remove", path);
  if (io_recording()) record_io({IoRecord::Kind::unlink, path});
}

bool hard_link(const fs::path& from, const fs::path& to) {
  check_fault(IoOp::open, to);
  if (in_store(to) || in_store(from)) {
    if (!in_store(to) || !in_store(from)) return false;
    copy_object(from, to);  // a copy of its own on the server: no bytes through this process
    return true;
  }
  if (::link(from.c_str(), to.c_str()) == 0) {
    if (io_recording()) record_io({IoRecord::Kind::hard_link, to, &from});
    return true;
  }
  if (errno == EXDEV || errno == EPERM || errno == EMLINK || errno == ENOTSUP || errno == EOPNOTSUPP) return false;
  throw_errno("link", to);
}

void fsync_directory(const fs::path& path) {
  check_fault(IoOp::fsync, path);
  if (in_store(path)) return;
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw_errno("open directory", path);
  if (::fsync(fd) != 0 && errno != EINVAL) {  // EINVAL: the file system cannot sync directories
    const int err = errno;
    ::close(fd);
    errno = err;
    throw_errno("fsync directory", path);
  }
  ::close(fd);
  if (io_recording()) record_io({IoRecord::Kind::fsync, path});
}

namespace {
#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif
int renameat2_raw(const fs::path& from, const fs::path& to, unsigned flags) {
#ifdef SYS_renameat2
  return static_cast<int>(
      ::syscall(SYS_renameat2, AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), flags));
#else
  (void)from, (void)to, (void)flags;
  errno = ENOSYS;
  return -1;
#endif
}
}  // namespace

void rename_no_replace(const fs::path& from, const fs::path& to) {
  check_fault(IoOp::rename, to);
  if (in_store(to) || in_store(from)) no_such_call("rename", to);
  if (renameat2_raw(from, to, RENAME_NOREPLACE) == 0) {
    if (io_recording()) record_io({IoRecord::Kind::rename, from, &to});
    return;
  }
  if (errno != ENOSYS && errno != EINVAL) throw_errno("rename", to);
  // Fallback for file systems without renameat2: check, then rename. For directories this is
  // still safe, because rename(2) refuses to replace a non-empty directory.
  struct stat st {};
  if (::lstat(to.c_str(), &st) == 0) {
    errno = EEXIST;
    throw_errno("rename", to);
  }
  if (::rename(from.c_str(), to.c_str()) != 0) throw_errno("rename", to);
  if (io_recording()) record_io({IoRecord::Kind::rename, from, &to});
}

void write_new_file(const fs::path& output, const std::function<void(FileWriter&)>& fill) {
  if (in_store(output)) {  // a completed upload appears whole; an unfinished one is aborted
    if (path_status(output)) throw_io(fmt::format("'{}' exists already", output.string()), output, EEXIST);
    FileWriter writer(output);
    fill(writer);
    writer.finish();
    return;
  }
  fs::path temporary = output;
  temporary += ".savepoint-tmp-" + std::to_string(::getpid());
  if (path_status(temporary)) remove_file(temporary);  // left by a crash of a process with this pid
  try {
    FileWriter writer(temporary);
    fill(writer);
    writer.finish();
    rename_no_replace(temporary, output);
  } catch (...) {
    std::error_code ignored;
    fs::remove(temporary, ignored);
    throw;
  }
  const auto parent = output.parent_path();
  fsync_directory(parent.empty() ? fs::path(".") : parent);
}

bool rename_exchange(const fs::path& a, const fs::path& b) {
  check_fault(IoOp::rename, b);
  if (in_store(a) || in_store(b)) return false;
  if (renameat2_raw(a, b, RENAME_EXCHANGE) == 0) {
    if (io_recording()) record_io({IoRecord::Kind::exchange, a, &b});
    return true;
  }
  if (errno == ENOSYS || errno == EINVAL) return false;
  throw_errno("rename (exchange)", b);
}

void remove_tree(const fs::path& path) {
  check_fault(IoOp::remove, path);
  if (in_store(path)) return object_io::remove_tree(path);
  if (io_recording()) record_io({IoRecord::Kind::remove_tree, path});
  std::error_code ec;
  fs::remove_all(path, ec);
  if (ec) {
    throw_io(fmt::format("remove failed for '{}': {}", path.string(), ec.message()), path,
             ec.value());
  }
}

std::uint64_t available_bytes(const fs::path& path) {
  if (const Fault fault = fault_for(IoOp::statfs, path); fault.error != 0) {
    errno = fault.error;
    throw_errno("statvfs (injected)", path);
  } else if (fault.max_bytes != SIZE_MAX) {
    return fault.max_bytes;
  }
  if (in_store(path)) return UINT64_MAX;  // an object store has no free-space figure
  struct statvfs st {};
  if (::statvfs(path.c_str(), &st) != 0) throw_errno("statvfs", path);
  return static_cast<std::uint64_t>(st.f_bavail) * static_cast<std::uint64_t>(st.f_frsize);
}

std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0) return "unknown-host";
  return name;
}

}  // namespace savepoint::detail
