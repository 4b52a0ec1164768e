// savepoint/object_store.hpp — checkpoints in an S3-compatible object store
// (docs/object-storage.md). A Checkpointer, the CLI and the Python reader take
// `s3://bucket/prefix` wherever they take a directory. Endpoint and credentials come from the
// environment as the AWS tools take them; ObjectStoreOptions overrides them in code.
#pragma once

#include <savepoint/detail/arg.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace savepoint {

/// How savepoint reaches an object store (CheckpointerOptions::object_store). Every field left
/// at its default is taken from the environment: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL,
/// AWS_REGION / AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
/// AWS_SESSION_TOKEN, else the profile AWS_PROFILE (or "default") in ~/.aws/credentials and
/// ~/.aws/config.
class ObjectStoreOptions {
  /// "http://127.0.0.1:9000"; empty: from the environment, else AWS itself.
  SAVEPOINT_ARG(std::string, endpoint);
  SAVEPOINT_ARG(std::string, region);
  /// A profile of ~/.aws/credentials (empty: AWS_PROFILE, else "default").
  SAVEPOINT_ARG(std::string, profile);
  SAVEPOINT_ARG(std::string, access_key_id);
  SAVEPOINT_ARG(std::string, secret_access_key);
  SAVEPOINT_ARG(std::string, session_token);
  /// Path-style URLs (http://host/bucket/key), which non-AWS servers need; unset: path-style
  /// for any endpoint but AWS's own.
  SAVEPOINT_ARG(std::optional<bool>, path_style);
  /// Files larger than this are uploaded in parts of this size (at least 5 MiB), and read in
  /// ranges of this size, `parallel_requests` at a time.
  SAVEPOINT_ARG(std::uint64_t, part_bytes) = std::uint64_t{16} << 20;
  SAVEPOINT_ARG(int, parallel_requests) = 4;
  /// One attempt of one request, its body included.
  SAVEPOINT_ARG(std::chrono::milliseconds, request_timeout) = std::chrono::milliseconds(120000);
  /// One request, every retry included. 500, 503, SlowDown and dropped connections are
  /// retried with exponential backoff and jitter until this or max_attempts runs out.
  SAVEPOINT_ARG(std::chrono::milliseconds, deadline) = std::chrono::milliseconds(600000);
  SAVEPOINT_ARG(int, max_attempts) = 8;
  /// A save commits by creating its meta.json with `If-None-Match: *`, and savepoint first
  /// checks that the server honours that condition (a second conditional create of a probe
  /// object must fail). A server that ignores it is refused, unless this is true: then a
  /// commit is a plain PUT, and two writers of one name (two jobs on one prefix) can no longer
  /// be told apart: the last meta.json wins (docs/object-storage.md, "The probe").
  SAVEPOINT_ARG(bool, accept_unconditional_commit) = false;
  /// Objects of a save that never committed (no meta.json) are removed by a later save's
  /// clean-up once the newest of them is this old by the server's clock (docs/object-storage.md,
  /// "Clean-up").
  SAVEPOINT_ARG(std::chrono::seconds, orphan_grace) = std::chrono::seconds(3600);

 public:
  ObjectStoreOptions() = default;
};

/// True for "s3://..." (what a Checkpointer, the CLI and the loaders treat as an object store).
bool is_object_store_path(const std::filesystem::path& path) noexcept;

/// Makes `options` the way to reach the objects under `prefix` ("s3://bucket" or
/// "s3://bucket/some/prefix"; the longest configured prefix of a path wins). A Checkpointer
/// does this for its own root when CheckpointerOptions::object_store is set; tools that read
/// checkpoints elsewhere (transfer, bundles) call it themselves, or rely on the environment.
void configure_object_store(const std::filesystem::path& prefix, const ObjectStoreOptions& options);

}  // namespace savepoint
