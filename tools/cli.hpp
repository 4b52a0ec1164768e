// tools/cli.hpp — what the savepoint CLI's subcommands share: exit codes, opening a root or
// one checkpoint, safetensors headers and tensor values without LibTorch, output helpers.
// Each subcommand group lives in its own file (list_show.cpp, verify.cpp, manage.cpp,
// diff.cpp, export.cpp, average.cpp, scrub.cpp) and registers itself on the CLI11 app through one add_* function.
#pragma once

#include <savepoint/core.hpp>
#include <savepoint/detail/io.hpp>
#include <savepoint/format/safetensors.hpp>

#include <CLI/CLI.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace savepoint::cli {

namespace fs = std::filesystem;
namespace st = savepoint::safetensors;
using nlohmann::json;

/// Exit codes, the same for every subcommand.
inline constexpr int kOk = 0;       ///< done, nothing wrong found
inline constexpr int kProblem = 1;  ///< a damaged checkpoint, a missing directory, a failed operation
inline constexpr int kUsage = 2;    ///< bad arguments (unknown flag, missing value, ...)

/// A subcommand's work, run after the whole command line parsed.
using Runner = std::function<int()>;

/// Each add_* registers its subcommands on `app`; when one is chosen, its callback stores the
/// work to do in `run` (so that parsing errors and run-time errors stay apart).
void add_list_show(CLI::App& app, Runner& run);
void add_verify(CLI::App& app, Runner& run);
void add_manage(CLI::App& app, Runner& run);  // prune, pin, unpin
void add_diff(CLI::App& app, Runner& run);
void add_export(CLI::App& app, Runner& run);
void add_average(CLI::App& app, Runner& run);
void add_scrub(CLI::App& app, Runner& run);
void add_convert(CLI::App& app, Runner& run);  // dcp.cpp

/// torch.distributed.checkpoint directories (dcp.cpp): `dir` with no checkpoint name and a
/// .metadata file is one.
bool is_dcp(const fs::path& dir, const std::string& name);
int show_dcp(const fs::path& dir, bool as_json);
int verify_dcp(const fs::path& dir, bool as_json);
/// The tensors whose keys start with `prefix` (removed from their names), whole, into one
/// safetensors (`format` "safetensors") or PyTorch ("pt") file.
int export_dcp(const fs::path& dir, const std::string& prefix, const fs::path& to, const std::string& format, bool force);

/// An error to report as "savepoint: <message>" with exit code 1 (or `code`).
struct Failure : std::runtime_error {
  explicit Failure(const std::string& what, int code = kProblem) : std::runtime_error(what), exit_code(code) {}
  int exit_code;
};

/// Throws Failure unless `dir` is an existing directory: a typo must not read as "no
/// checkpoints", and nothing creates it.
void require_directory(const fs::path& dir);

/// A read-only Checkpointer on a root (the directory must exist).
std::unique_ptr<Checkpointer> open_root(const fs::path& dir);

/// One committed checkpoint, named either as `<dir> <name>` or as the path of its directory
/// (`runs/x/CKPT+best`, then `name` is empty). Throws Failure when there is none by that name
/// (naming the reason when its meta.json is damaged).
struct Located {
  fs::path root;
  Checkpoint checkpoint;
};
Located locate(const fs::path& dir_or_checkpoint, const std::string& name);
/// Is `path` a checkpoint directory itself (name CKPT+..., holds meta.json)?
bool looks_like_checkpoint(const fs::path& path);

std::uint64_t total_bytes(const Checkpoint& c);
/// The user's meta, without the reserved unixtime and end_of_epoch.
json user_meta(const Checkpoint& c);
/// "2026-11-23 18:56:00" in local time.
std::string local_time(double unixtime);
/// "5.2 KiB", "1.0 GiB", "312 B".
std::string human_bytes(std::uint64_t n);
std::string shape_text(const std::vector<std::int64_t>& shape);
bool ends_with(const std::string& s, const std::string& suffix);

/// The header of a safetensors file, read without its tensor bytes (throws a savepoint::Error
/// or std::exception naming the file when it is damaged).
st::Header read_safetensors_header(const fs::path& file);

/// A key's file, read whole and checked against its meta.json record (size, XXH3); throws
/// CorruptCheckpointError naming file and key.
std::shared_ptr<const FileContents> read_verified(const Checkpoint& c, const FileRecord& rec);

/// Element `i` of a tensor's bytes as a double (F32, F64, F16, BF16, integers, BOOL); false
/// for dtypes without one real value per element (C64, F8).
bool decodable(st::DType dtype);
double element(st::DType dtype, const char* data, std::size_t i);

/// A progress line on stderr, drawn only when stderr is a terminal (never in logs or pipes).
class Progress {
 public:
  explicit Progress(std::string what);
  ~Progress() { clear(); }
  void update(const std::string& detail);
  /// Erases the line (before printing results on the same terminal).
  void clear();
  bool active() const noexcept { return active_; }

 private:
  std::string what_;
  bool active_;
  bool drawn_ = false;
};

/// Prints a table: the columns padded to their widest cell, the last one left as it is.
void print_table(const std::vector<std::vector<std::string>>& rows);
/// Pretty-printed JSON on stdout.
void print_json(const json& doc);

}  // namespace savepoint::cli
