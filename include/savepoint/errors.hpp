// savepoint/errors.hpp — one exception hierarchy, rooted at savepoint::Error.
//
// Two families, so callers can tell "my code is wrong" from "the disk/checkpoint is bad":
//   UsageError        the program set savepoint up wrong (bad key, no hook, conflicting selectors)
//   CheckpointError   a checkpoint on disk is unusable; carries the path (and key, when known)
//     CorruptCheckpointError  checksum/size mismatch, damaged meta.json or tensor file
//     FormatVersionError      written by a newer/unknown format version
//     MismatchError           checkpoint and object disagree (shape, dtype, missing tensor)
//     MissingKeyError         a registered key has no file in the checkpoint
//     StaleCheckpointError    a Checkpoint value whose directory was deleted or replaced
//   HookError         a save or load hook failed; the original exception is nested in it
//   IoError           a system call failed (ENOSPC, EIO, ...); carries path and errno
//     ObjectStoreError  an object store refused a request (wrong credentials, no bucket,
//                       denied, retries spent); carries the s3:// path and HTTP status
//   LockError         another process owns the checkpoint directory
// Every message names the file and, where there is one, the key.
#pragma once

#include <exception>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace savepoint {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

class UsageError : public Error {
 public:
  using Error::Error;
};

class CheckpointError : public Error {
 public:
  CheckpointError(const std::string& what, std::filesystem::path path, std::string key = {})
      : Error(what), path_(std::move(path)), key_(std::move(key)) {}
  /// The file or checkpoint directory that is at fault.
  const std::filesystem::path& path() const noexcept { return path_; }
  /// The recoverable key involved, or empty.
  const std::string& key() const noexcept { return key_; }

 private:
  std::filesystem::path path_;
  std::string key_;
};

class CorruptCheckpointError : public CheckpointError {
 public:
  using CheckpointError::CheckpointError;
};

class FormatVersionError : public CheckpointError {
 public:
  using CheckpointError::CheckpointError;
};

class MismatchError : public CheckpointError {
 public:
  using CheckpointError::CheckpointError;
};

class MissingKeyError : public CheckpointError {
 public:
  using CheckpointError::CheckpointError;
};

class StaleCheckpointError : public CheckpointError {
 public:
  using CheckpointError::CheckpointError;
};

/// A hook threw. Carries the key, the hook's name and the checkpoint directory; the
/// original exception is nested (std::rethrow_if_nested(e) gets it back).
class HookError : public Error, public std::nested_exception {
 public:
  HookError(const std::string& what, std::string key, std::string hook, std::filesystem::path checkpoint)
      : Error(what), key_(std::move(key)), hook_(std::move(hook)), checkpoint_(std::move(checkpoint)) {}
  const std::string& key() const noexcept { return key_; }
  const std::string& hook() const noexcept { return hook_; }
  /// The checkpoint being saved or loaded (for a save: its final directory).
  const std::filesystem::path& checkpoint() const noexcept { return checkpoint_; }

 private:
  std::string key_;
  std::string hook_;
  std::filesystem::path checkpoint_;
};

class IoError : public Error {
 public:
  IoError(const std::string& what, std::filesystem::path path, int error_code)
      : Error(what), path_(std::move(path)), errno_(error_code) {}
  const std::filesystem::path& path() const noexcept { return path_; }
  /// The errno value of the failed call (0 when not from a system call).
  int error_code() const noexcept { return errno_; }

 private:
  std::filesystem::path path_;
  int errno_;
};

/// A request to an object store failed for good: the path is `s3://bucket/key`, with the HTTP
/// status (0 when no response came: connection refused, timeout) and S3's error code
/// ("AccessDenied", "NoSuchBucket", "SignatureDoesNotMatch", ...; empty when none). Messages
/// never hold credentials.
class ObjectStoreError : public IoError {
 public:
  enum class Kind { credentials, no_bucket, denied, not_found, precondition, server, network, other };
  ObjectStoreError(const std::string& what, std::filesystem::path path, Kind kind, int http_status,
                   std::string code)
      : IoError(what, std::move(path), 0), kind_(kind), status_(http_status), code_(std::move(code)) {}
  Kind kind() const noexcept { return kind_; }
  int http_status() const noexcept { return status_; }
  const std::string& code() const noexcept { return code_; }

 private:
  Kind kind_;
  int status_;
  std::string code_;
};

class LockError : public Error {
 public:
  using Error::Error;
};

namespace detail {
// Out-of-line throw helpers keep call sites short and the exception code cold.
[[noreturn]] void throw_io(const std::string& what, const std::filesystem::path& path, int err);
[[noreturn]] void throw_usage(const std::string& what);
[[noreturn]] void throw_corrupt(const std::string& what, const std::filesystem::path& path,
                                const std::string& key = {});
}  // namespace detail

}  // namespace savepoint
