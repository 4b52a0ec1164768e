// The safetensors writer: a tensor payload to a file, streamed tensor by tensor.
#include "tensor_writer.hpp"

#include <savepoint/errors.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <memory>

namespace savepoint::safetensors {

namespace {
// Hashes the tensor bytes in fixed blocks as they are written (BlockDigests).
class BlockHasher {
 public:
  explicit BlockHasher(BlockDigests* out) : out_(out) {}
  void update(const void* data, std::size_t size) {
    if (!out_) return;
    const char* p = static_cast<const char*>(data);
    while (size > 0) {
      if (!current_) current_ = std::make_unique<detail::Hasher>();
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(size, out_->block_bytes - filled_));
      current_->update(p, n);
      p += n;
      size -= n;
      if ((filled_ += n) == out_->block_bytes) finish_block();
    }
  }
  void finish() {
    if (out_ && current_) finish_block();
  }

 private:
  void finish_block() {
    out_->blocks.push_back(current_->digest());
    current_.reset();
    filled_ = 0;
  }
  BlockDigests* out_;
  std::unique_ptr<detail::Hasher> current_;
  std::uint64_t filled_ = 0;
};
}  // namespace

namespace {
// The header and then every tensor's bytes, in file order, handed to `sink(data, size)`:
// straight from host bytes where it can, one tensor-sized copy at a time where it cannot.
template <class Sink>
std::string stream_tensors(const std::filesystem::path& file, const Payload& payload, Sink&& sink,
                           BlockDigests* blocks = nullptr) {
  std::vector<TensorSpec> specs;
  std::map<std::string, const TensorData*> by_name;
  for (const auto& t : payload.tensor_data()) {
    if (!by_name.emplace(t.spec.name, &t).second)
      throw UsageError(fmt::format("savepoint: tensor name '{}' given twice (file '{}')", t.spec.name, file.string()));
    specs.push_back(t.spec);
  }
  const std::string header = build_header(specs, payload.metadata());
  if (blocks) {
    if (blocks->block_bytes == 0) throw UsageError("savepoint: block checksums need a block size");
    blocks->header_bytes = header.size();
    blocks->header_xxh3 = detail::digest_bytes(header).xxh3;
    blocks->blocks.clear();
  }
  BlockHasher hasher(blocks);
  sink(header.data(), header.size());
  std::unique_ptr<char[]> copy;  // one tensor at a time, never the whole payload
  std::size_t copy_size = 0;
  for (const auto& spec : specs) {
    const TensorData& t = *by_name.at(spec.name);
    if (spec.nbytes == 0) continue;
    const void* bytes = t.host_bytes;
    if (!bytes) {
      if (copy_size < spec.nbytes) {
        copy.reset();
        copy.reset(new char[spec.nbytes]);
        copy_size = spec.nbytes;
      }
      t.copy_to_host(copy.get());
      bytes = copy.get();
    }
    sink(bytes, spec.nbytes);
    hasher.update(bytes, spec.nbytes);
  }
  hasher.finish();
  return header;
}
}  // namespace

detail::FileDigest write_tensors(const std::filesystem::path& file, const Payload& payload, detail::WriteMode mode,
                                 BlockDigests* blocks, bool defer_sync) {
  detail::FileWriter writer(file, mode);
  stream_tensors(file, payload, [&](const void* data, std::size_t size) { writer.write(data, size); }, blocks);
  return defer_sync ? writer.finish_deferred() : writer.finish();
}

detail::FileDigest digest_tensors(const Payload& payload, const std::filesystem::path& file_for_errors) {
  detail::Hasher hasher;
  std::uint64_t bytes = 0;
  stream_tensors(file_for_errors, payload, [&](const void* data, std::size_t size) {
    hasher.update(data, size);
    bytes += size;
  });
  return {bytes, hasher.digest()};
}

}  // namespace savepoint::safetensors
