// Reads at offsets (pread) for partial, block-verified loads: the only place besides fs.cpp
// that opens a file for reading by descriptor.
#include <savepoint/detail/io.hpp>
#include <savepoint/detail/object_store.hpp>
#include <savepoint/errors.hpp>

#include <fmt/format.h>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

namespace savepoint::detail {

struct PositionalReader::State {
  fs::path path;
  std::string_view bytes;  // memory: the bytes; file: unused
  std::shared_ptr<const void> owner;
  bool in_memory = false;
  std::once_flag opened;
  int fd = -1;
  int open_errno = 0;
  ~State() {
    if (fd >= 0) ::close(fd);
  }
};

PositionalReader PositionalReader::file(fs::path path) {
  auto state = std::make_shared<State>();
  state->path = std::move(path);
  return PositionalReader(std::move(state));
}

PositionalReader PositionalReader::memory(fs::path name, std::string_view bytes, std::shared_ptr<const void> owner) {
  auto state = std::make_shared<State>();
  state->path = std::move(name);
  state->bytes = bytes;
  state->owner = std::move(owner);
  state->in_memory = true;
  return PositionalReader(std::move(state));
}

const fs::path& PositionalReader::path() const noexcept { return state_->path; }

bool PositionalReader::read(std::uint64_t offset, std::uint64_t size, char* out) const {
  State& s = *state_;
  check_fault(IoOp::read, s.path);  // the test seam sees every block read
  if (!s.in_memory && is_object_store_path(s.path)) return object_io::read_at(s.path, offset, size, out);
  if (s.in_memory) {
    if (offset > s.bytes.size() || size > s.bytes.size() - offset) return false;
    std::memcpy(out, s.bytes.data() + offset, size);
    return true;
  }
  std::call_once(s.opened, [&s] {
    s.fd = ::open(s.path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (s.fd < 0) s.open_errno = errno;
  });
  if (s.fd < 0) {
    throw_io(fmt::format("cannot open '{}': {}", s.path.string(), std::strerror(s.open_errno)), s.path, s.open_errno);
  }
  while (size > 0) {
    const ssize_t n = ::pread(s.fd, out, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      throw_io(fmt::format("cannot read '{}': {}", s.path.string(), std::strerror(err)), s.path, err);
    }
    if (n == 0) return false;
    out += n;
    offset += static_cast<std::uint64_t>(n);
    size -= static_cast<std::uint64_t>(n);
  }
  return true;
}

}  // namespace savepoint::detail
