#include "payload_writer.hpp"

#include "snapshot.hpp"

#include <savepoint/errors.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <set>

namespace savepoint::engine {

namespace {
PinnedAllocator g_pinned_allocator = nullptr;

std::shared_ptr<void> allocate(std::size_t bytes, bool pinned) {
  if (pinned && g_pinned_allocator)
    if (auto memory = g_pinned_allocator(bytes)) return memory;
  // Large buffers on huge pages where the kernel allows (transparent huge pages on madvise):
  // the first save faults them in 2 MiB at a time instead of 4 KiB.
  constexpr std::size_t kLarge = std::size_t{2} << 20;
  if (bytes >= kLarge) {
    auto buffer = std::make_shared<detail::ChunkBuffer>(bytes);
    char* data = buffer->data();
    return std::shared_ptr<void>(std::move(buffer), data);
  }
  const std::size_t size = std::max<std::size_t>((bytes + 63) / 64 * 64, 64);
  void* memory = std::aligned_alloc(64, size);
  if (!memory) throw std::bad_alloc();
  return std::shared_ptr<void>(memory, std::free);
}
}  // namespace

void set_pinned_allocator(PinnedAllocator allocator) { g_pinned_allocator = allocator; }

std::shared_ptr<void> StagingBuffers::get(const std::string& file, std::size_t index, std::size_t bytes,
                                          bool pinned) {
  auto& buffers = by_file_[file];
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
// The payload's tensors copied into staging buffers: the copy no longer depends on the
// caller's tensors. With `overlapped`, tensors with a version counter are copied later, by it.
// The buffers are the file's (a key split into parts has one set per part).
Payload snapshot(Payload payload, const std::string& key, const std::string& file, StagingBuffers& staging,
                 OverlappedSnapshot* overlapped) {
  auto& tensors = payload.tensor_data();
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    TensorData& t = tensors[i];
    if (t.spec.nbytes == 0) continue;
    auto buffer = staging.get(file, i, t.spec.nbytes, t.on_device);
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
                     StagingBuffers* staging, OverlappedSnapshot* overlapped, detail::WriteMode mode,
                     std::shared_ptr<safetensors::BlockDigests> blocks, bool* needs_sync) {
  if (needs_sync) *needs_sync = false;
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
      if (staging) payload = snapshot(std::move(payload), key, file.filename().string(), *staging, overlapped);
      auto shared = std::make_shared<const Payload>(std::move(payload));
      const bool defer = needs_sync != nullptr;
      if (needs_sync) *needs_sync = true;
      return [file, shared, mode, blocks, defer] {
        return safetensors::write_tensors(file, *shared, mode, blocks.get(), defer);
      };
    }
  }
  throw UsageError("savepoint: unknown payload kind");
}

}  // namespace savepoint::engine
