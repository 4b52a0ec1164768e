// io/s3_client.hpp — S3's REST API over libcurl (SigV4 by CURLOPT_AWS_SIGV4), the requests the
// object store needs and nothing else. Every request is retried on 500/503/SlowDown and on
// dropped connections, with bounded exponential backoff and full jitter, under a request
// timeout and a total deadline; a failure for good is ObjectStoreError naming s3://bucket/key,
// the HTTP status and S3's code, never a credential. Connections are reused (a pool of curl
// handles, one in use per thread at a time). Internal to src/io.
#pragma once

#include <savepoint/errors.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace savepoint::detail::s3 {

/// Where and as whom requests go. config_from_environment() fills it as the AWS tools do.
struct Config {
  std::string endpoint;  ///< "http://127.0.0.1:9000"; empty: https://s3.<region>.amazonaws.com
  std::string region = "us-east-1";
  std::string access_key, secret_key, session_token;  ///< empty access_key: unsigned requests
  bool path_style = true;  ///< http://host/bucket/key (non-AWS servers); false: bucket.host
  std::chrono::milliseconds connect_timeout{10000};
  std::chrono::milliseconds request_timeout{120000};  ///< one attempt, body included
  std::chrono::milliseconds deadline{600000};  ///< one request, every retry included
  int max_attempts = 8;
  std::chrono::milliseconds backoff_base{100}, backoff_max{5000};
};

/// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, else the profile
/// (`profile`, else AWS_PROFILE, else "default") of AWS_SHARED_CREDENTIALS_FILE or
/// ~/.aws/credentials; AWS_REGION, AWS_DEFAULT_REGION, else the profile's region in
/// AWS_CONFIG_FILE or ~/.aws/config; AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else the
/// profile's endpoint_url. Path-style unless the endpoint is AWS's own. UsageError for a
/// named profile that does not exist (naming the files read, never a secret).
Config config_from_environment(const std::string& profile = {});

struct ObjectInfo {
  std::string key;
  std::uint64_t size = 0;
  std::string etag;
  std::int64_t last_modified_unix = 0;  ///< seconds, from the server (LastModified / Last-Modified)
};

struct Listing {
  std::vector<ObjectInfo> objects;      ///< keys under the prefix (not under a common prefix)
  std::vector<std::string> prefixes;    ///< with a delimiter: the "directories", ending in it
};

/// One completed part of a multipart upload.
struct Part {
  int number = 0;
  std::string etag;
};

class Client {
 public:
  explicit Client(Config config);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  const Config& config() const noexcept { return config_; }

  /// PUT. With `if_none_match`: `If-None-Match: *`; returns false when the object exists
  /// (412 PreconditionFailed, or 409 ConditionalRequestConflict), true when created.
  bool put(const std::string& bucket, const std::string& key, std::string_view body, bool if_none_match = false);
  /// GET of the whole object; nullopt when there is none (404 NoSuchKey).
  std::optional<std::string> get(const std::string& bucket, const std::string& key);
  /// Ranged GET of [offset, offset + size) streamed to `sink` as it arrives (sink gets
  /// consecutive pieces; on a retry, the same offsets again: it must accept a restart, told by
  /// `restart` being called first). Returns the bytes delivered; fewer than `size` when the
  /// object is shorter. not_found ObjectStoreError when there is no object.
  std::uint64_t get_range(const std::string& bucket, const std::string& key, std::uint64_t offset,
                          std::uint64_t size, const std::function<void(const char*, std::size_t)>& sink,
                          const std::function<void()>& restart = nullptr);
  /// HEAD; nullopt when there is none.
  std::optional<ObjectInfo> head(const std::string& bucket, const std::string& key);
  /// ListObjectsV2, every page. With a delimiter ("/"), keys below one are folded into prefixes.
  Listing list(const std::string& bucket, const std::string& prefix, const std::string& delimiter = {});
  /// DELETE (absent objects are not an error, as in S3).
  void remove(const std::string& bucket, const std::string& key);
  /// Server-side copy of a whole object (CopyObject; objects over 5 GiB by UploadPartCopy).
  /// `size`: the source's size when the caller knows it (else a HEAD asks).
  void copy(const std::string& bucket, const std::string& from_key, const std::string& to_key,
            std::optional<std::uint64_t> size = std::nullopt);

  std::string create_multipart(const std::string& bucket, const std::string& key);
  std::string upload_part(const std::string& bucket, const std::string& key, const std::string& upload_id,
                          int number, std::string_view body);  ///< returns the ETag
  std::string upload_part_copy(const std::string& bucket, const std::string& key, const std::string& upload_id,
                               int number, const std::string& from_key, std::uint64_t first,
                               std::uint64_t last);  ///< inclusive byte range; returns the ETag
  void complete_multipart(const std::string& bucket, const std::string& key, const std::string& upload_id,
                          const std::vector<Part>& parts);
  void abort_multipart(const std::string& bucket, const std::string& key, const std::string& upload_id) noexcept;

  /// The server's clock (the Date header of a cheap request), seconds since the epoch.
  std::int64_t server_time(const std::string& bucket);

  /// Requests sent (retries included) and bytes sent/received in bodies, since construction.
  struct Counters {
    std::uint64_t requests = 0, retries = 0, bytes_sent = 0, bytes_received = 0;
  };
  Counters counters() const;

 private:
  struct Impl;
  Config config_;
  std::unique_ptr<Impl> impl_;
};

/// Test seam (the crash-boundary test): called after every request that got a response, with
/// its method ("PUT", "GET", ...), bucket, key and HTTP status, from the thread that sent it.
/// nullptr removes it. Install before requests run.
using RequestObserver = std::function<void(const char* method, const std::string& bucket, const std::string& key,
                                           int status)>;
void set_request_observer(RequestObserver observer);

/// A new object written as a stream: bytes are buffered up to `part_size`; the first full part
/// starts a multipart upload, and up to `parallel` parts upload at once (memory: at most
/// (parallel + 1) x part_size, never the whole object). finish() completes it (a small object
/// is one PUT); destroying an unfinished writer aborts the upload.
class ObjectWriter {
 public:
  ObjectWriter(Client& client, std::string bucket, std::string key, std::size_t part_size = 16 << 20,
               int parallel = 4);
  ~ObjectWriter();
  ObjectWriter(const ObjectWriter&) = delete;
  ObjectWriter& operator=(const ObjectWriter&) = delete;
  void write(const void* data, std::size_t size);
  /// Completes the upload; returns the total size. Throws the first part's error.
  std::uint64_t finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace savepoint::detail::s3
