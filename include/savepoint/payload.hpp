// savepoint/payload.hpp — what a save hook hands back: the data, not the file.
//
// A save hook returns a Payload and the engine stores it: it alone decides whether the
// bytes are written now, on several threads, or copied into reusable buffers and written in
// the background (async saves), and it records their checksum while writing.
//
//   return savepoint::Payload::json(value);                  // stored as <key>.json
//   return savepoint::tensor_payload(tensors, metadata);     // (tensors.hpp) <key>.safetensors
//   write(ctx.file); return savepoint::Payload::file();      // the hook wrote the file itself
//
// Torch-free: a tensor is described by its safetensors dtype, shape and two ways to reach
// its bytes, which the LibTorch layer (tensors.hpp) fills in.
#pragma once

#include <savepoint/format/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace savepoint {

/// One tensor of a payload.
struct TensorData {
  safetensors::TensorSpec spec;  ///< name, dtype, shape, byte count
  /// The bytes, readable in place (a contiguous host tensor); null when they must be copied.
  const void* host_bytes = nullptr;
  /// Copies the spec.nbytes bytes, contiguous, into host memory at `dst` (any device or
  /// layout). Used when host_bytes is null, and for async snapshots.
  std::function<void(void* dst)> copy_to_host;
  /// The bytes live in device memory: async snapshots stage them in pinned host memory.
  bool on_device = false;
  /// Keeps the storage alive while the engine holds the payload.
  std::shared_ptr<const void> owner;
  /// The tensor's in-place version counter (LibTorch's `_version()`), if it has one and the
  /// bytes may be copied after the hook returned: an overlapped async snapshot copies them in
  /// the background and fails the save if the version changed before the copy was certain to
  /// be complete. Null: an async snapshot copies the bytes before save_checkpoint_async returns.
  std::function<std::int64_t()> version;
};

class Payload {
 public:
  enum class Kind { file, json, tensors };

  /// The hook wrote SaveContext::file itself (the engine reads it back to checksum it).
  static Payload file() { return Payload(Kind::file); }
  /// A JSON document, stored as indented text.
  static Payload json(nlohmann::json document) {
    Payload p(Kind::json);
    p.document_ = std::move(document);
    return p;
  }
  /// Named tensors in the safetensors layout, with string metadata.
  static Payload tensors(std::vector<TensorData> tensors,
                         std::map<std::string, std::string> metadata = {}) {
    Payload p(Kind::tensors);
    p.tensors_ = std::move(tensors);
    p.metadata_ = std::move(metadata);
    return p;
  }

  Kind kind() const noexcept { return kind_; }
  const nlohmann::json& document() const noexcept { return document_; }
  const std::vector<TensorData>& tensor_data() const noexcept { return tensors_; }
  std::vector<TensorData>& tensor_data() noexcept { return tensors_; }
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }

 private:
  explicit Payload(Kind kind) : kind_(kind) {}
  Kind kind_;
  nlohmann::json document_;
  std::vector<TensorData> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace savepoint
