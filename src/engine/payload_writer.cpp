#include "payload_writer.hpp"

#include "snapshot.hpp"

#include <savepoint/errors.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <set>

namespace savepoint::engine {

using detail::FileDigest;
namespace st = safetensors;

namespace {
PinnedAllocator g_pinned_allocator = nullptr;

std::shared_ptr<void> allocate(std::size_t bytes, bool pinned) {
  if (pinned && g_pinned_allocator)
    if (auto memory = g_pinned_allocator(bytes)) return memory;
  const std::size_t size = std::max<std::size_t>((bytes + 63) / 64 * 64, 64);
  void* memory = std::aligned_alloc(64, size);
  if (!memory) throw std::bad_alloc();
  return std::shared_ptr<void>(memory, std::free);
}
}  // namespace

void set_pinned_allocator(PinnedAllocator allocator) { g_pinned_allocator = allocator; }

std::shared_ptr<void> StagingBuffers::get(const std::string& key, std::size_t index, std::size_t bytes,
                                          bool pinned) {
  auto& buffers = by_key_[key];
  if (buffers.size() <= index) buffers.resize(index + 1);
  Buffer& b = buffers[index];
  if (!b.memory || b.bytes < bytes || b.pinned != pinned) {
    b.memory = nullptr;  // free the old one first
    b.memory = allocate(bytes, pinned);
    b.bytes = bytes;
    b.pinned = pinned;
  }
  return b.memory;
}

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

FileDigest write_tensors(const fs::path& file, const Payload& payload, bool direct_io, BlockDigests* blocks) {
  std::vector<st::TensorSpec> specs;
  std::map<std::string, const TensorData*> by_name;
  for (const auto& t : payload.tensor_data()) {
    if (!by_name.emplace(t.spec.name, &t).second)
      throw UsageError(fmt::format("savepoint: tensor name '{}' given twice (file '{}')", t.spec.name, file.string()));
    specs.push_back(t.spec);
  }
  const std::string header = st::build_header(specs, payload.metadata());
  if (blocks) {
    if (blocks->block_bytes == 0) throw UsageError("savepoint: block checksums need a block size");
    blocks->header_bytes = header.size();
    blocks->header_xxh3 = detail::digest_bytes(header).xxh3;
    blocks->blocks.clear();
  }
  BlockHasher hasher(blocks);
  detail::FileWriter writer(file, direct_io ? detail::WriteMode::direct : detail::WriteMode::buffered);
  writer.write(header);
  std::unique_ptr<char[]> copy;  // one tensor at a time, never the whole payload
  std::size_t copy_size = 0;
  for (const auto& spec : specs) {
    const TensorData& t = *by_name.at(spec.name);
    if (spec.nbytes == 0) continue;
    if (t.host_bytes) {
      writer.write(t.host_bytes, spec.nbytes);
      hasher.update(t.host_bytes, spec.nbytes);
      continue;
    }
    if (copy_size < spec.nbytes) {
      copy.reset();
      copy.reset(new char[spec.nbytes]);
      copy_size = spec.nbytes;
    }
    t.copy_to_host(copy.get());
    writer.write(copy.get(), spec.nbytes);
    hasher.update(copy.get(), spec.nbytes);
  }
  hasher.finish();
  return writer.finish();
}

namespace {
// The payload's tensors copied into staging buffers: the copy no longer depends on the
// caller's tensors. With `overlapped`, tensors with a version counter are copied later, by it.
Payload snapshot(Payload payload, const std::string& key, StagingBuffers& staging, OverlappedSnapshot* overlapped) {
  auto& tensors = payload.tensor_data();
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    TensorData& t = tensors[i];
    if (t.spec.nbytes == 0) continue;
    auto buffer = staging.get(key, i, t.spec.nbytes, t.on_device);
    if (overlapped && t.version) overlapped->defer(key, t, buffer.get());
    else if (t.host_bytes) std::memcpy(buffer.get(), t.host_bytes, t.spec.nbytes);
    else t.copy_to_host(buffer.get());
    t.host_bytes = buffer.get();
    t.copy_to_host = nullptr;
    t.owner = buffer;
    t.version = nullptr;
  }
  return payload;
}
}  // namespace

FileWrite plan_write(const fs::path& file, const std::string& key, const std::string& hook, Payload payload,
                     StagingBuffers* staging, OverlappedSnapshot* overlapped, bool direct_io,
                     std::shared_ptr<BlockDigests> blocks) {
  if (blocks && payload.kind() != Payload::Kind::tensors)
    throw UsageError(fmt::format("savepoint: the save hook of key '{}' ({}) must return tensors", key, hook));
  switch (payload.kind()) {
    case Payload::Kind::file: {
      const auto st = detail::path_status(file);
      if (!st || st->type != detail::FileType::regular) {
        throw UsageError(fmt::format("savepoint: the save hook of key '{}' ({}) did not write its file '{}'",
                                     key, hook, file.filename().string()));
      }
      return [file] { return detail::digest_and_sync_file(file); };
    }
    case Payload::Kind::json: {
      std::string text;
      try {
        text = payload.document().dump(2) + "\n";
      } catch (const nlohmann::json::exception& e) {
        throw UsageError(fmt::format("savepoint: recoverable '{}' cannot be written as JSON: {}", key, e.what()));
      }
      return [file, text = std::move(text)] { return detail::write_file(file, text); };
    }
    case Payload::Kind::tensors: {
      for (const auto& t : payload.tensor_data()) {
        if (!t.host_bytes && !t.copy_to_host && t.spec.nbytes > 0)
          throw UsageError(fmt::format("savepoint: tensor '{}' of key '{}' has neither host bytes nor a copy function",
                                       t.spec.name, key));
      }
      if (staging) payload = snapshot(std::move(payload), key, *staging, overlapped);
      auto shared = std::make_shared<const Payload>(std::move(payload));
      return [file, shared, direct_io, blocks] { return write_tensors(file, *shared, direct_io, blocks.get()); };
    }
  }
  throw UsageError("savepoint: unknown payload kind");
}

}  // namespace savepoint::engine
