// What the subcommands share (see cli.hpp).
#include "cli.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in fmt/format.h before fmt 11)
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>

namespace savepoint::cli {

// "s3://b/p/" -> "s3://b/p"; a local path as given.
fs::path without_trailing_slash(const fs::path& path) {
  if (!is_object_store_path(path)) return path;
  std::string text = path.native();
  while (text.size() > 5 && text.back() == '/') text.pop_back();
  return text;
}

void require_directory(const fs::path& dir) {
  if (is_object_store_path(dir)) {  // a prefix "exists" while objects are under it
    const auto st = detail::path_status(without_trailing_slash(dir));
    if (!st) throw Failure("no checkpoints (no objects) under " + dir.string());
    if (st->type != detail::FileType::directory) throw Failure("an object, not a prefix: " + dir.string());
    return;
  }
  std::error_code ec;
  const auto status = fs::status(dir, ec);
  if (!fs::exists(status)) throw Failure("no such directory: " + dir.string());
  if (!fs::is_directory(status)) throw Failure("not a directory: " + dir.string());
}

std::unique_ptr<Checkpointer> open_root(const fs::path& dir) {
  require_directory(dir);
  return std::make_unique<Checkpointer>(without_trailing_slash(dir), CheckpointerOptions().read_only(true));
}

bool looks_like_checkpoint(const fs::path& path) {
  if (is_object_store_path(path)) {
    const fs::path p = without_trailing_slash(path);
    return p.filename().string().rfind(detail::kCheckpointPrefix, 0) == 0 &&
           detail::path_status(p / detail::kMetaFileName).has_value();
  }
  fs::path normal = path.lexically_normal();  // "CKPT+x/" names CKPT+x
  if (!normal.has_filename()) normal = normal.parent_path();
  const std::string name = normal.filename().string();
  std::error_code ec;
  return name.rfind(detail::kCheckpointPrefix, 0) == 0 && fs::exists(path / detail::kMetaFileName, ec);
}

Located locate(const fs::path& dir_or_checkpoint, const std::string& name) {
  fs::path root = dir_or_checkpoint, wanted = name;
  if (name.empty()) {
    // The path of a checkpoint directory: its root is the parent.
    const fs::path normal = is_object_store_path(dir_or_checkpoint) ? without_trailing_slash(dir_or_checkpoint)
                                                                     : dir_or_checkpoint.lexically_normal();
    const fs::path path = normal.has_filename() ? normal : normal.parent_path();
    require_directory(path);
    root = path.has_parent_path() ? path.parent_path() : fs::path(".");
    wanted = path.filename();
  }
  const auto ckpt = open_root(root);
  for (auto& c : ckpt->list_checkpoints())
    if (c.name() == wanted.string()) return {root, std::move(c)};
  for (const auto& p : ckpt->unreadable_checkpoints())
    if (p.file.parent_path().filename() == wanted) throw Failure(fmt::format("checkpoint '{}' is unreadable: {}", wanted.string(), p.reason));
  throw Failure(fmt::format("no committed checkpoint named '{}' in {}", wanted.string(), root.string()));
}

std::uint64_t total_bytes(const Checkpoint& c) {
  std::uint64_t n = 0;
  for (const auto& f : c.files) n += f.bytes;
  return n;
}

json user_meta(const Checkpoint& c) {
  json m = c.meta;
  m.erase("unixtime");
  m.erase("end_of_epoch");
  return m;
}

std::string local_time(double unixtime) {
  const std::time_t t = static_cast<std::time_t>(std::floor(unixtime));
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

std::string human_bytes(std::uint64_t n) {
  if (n < 1024) return fmt::format("{} B", n);
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = -1;
  while (v >= 1024 && u < 3) {
    v /= 1024;
    ++u;
  }
  return fmt::format("{:.1f} {}", v, units[u]);
}

std::string shape_text(const std::vector<std::int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The 8-byte length prefix, then (if the length is plausible) that many header bytes;
// parse_header names whatever is wrong.
st::Header read_safetensors_header(const fs::path& file) {
  const std::uint64_t file_size = fs::file_size(file);
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + file.string());
  std::string bytes(8, '\0');
  in.read(bytes.data(), 8);
  bytes.resize(static_cast<std::size_t>(in.gcount()));
  if (bytes.size() == 8) {
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
    if (file_size >= 8 && n <= st::kMaxHeaderBytes && n <= file_size - 8) {
      bytes.resize(8 + static_cast<std::size_t>(n));
      in.read(bytes.data() + 8, static_cast<std::streamsize>(n));
      bytes.resize(8 + static_cast<std::size_t>(in.gcount()));
    }
  }
  return st::parse_header(bytes, file_size, file);
}

std::shared_ptr<const FileContents> read_verified(const Checkpoint& c, const FileRecord& rec) {
  return detail::open_key_verified(c, rec);  // a key split into parts: assembled
}

bool decodable(st::DType dtype) {
  using D = st::DType;
  return dtype != D::C64 && dtype != D::F8_E4M3 && dtype != D::F8_E5M2;
}

namespace {
template <class T>
T load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);  // safetensors is little-endian, like every machine LibTorch runs on
  return v;
}
double half_to_double(std::uint16_t h) {
  const int sign = h >> 15, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  double v;
  if (exponent == 0) v = std::ldexp(mantissa, -24);  // subnormal
  else if (exponent == 31) v = mantissa ? NAN : INFINITY;
  else v = std::ldexp(mantissa + 1024, exponent - 25);
  return sign ? -v : v;
}
double bf16_to_double(std::uint16_t b) {
  const std::uint32_t bits = std::uint32_t{b} << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
}  // namespace

double element(st::DType dtype, const char* data, std::size_t i) {
  using D = st::DType;
  switch (dtype) {
    case D::BOOL: return data[i] != 0;
    case D::U8: return load<std::uint8_t>(data + i);
    case D::I8: return load<std::int8_t>(data + i);
    case D::I16: return load<std::int16_t>(data + 2 * i);
    case D::U16: return load<std::uint16_t>(data + 2 * i);
    case D::F16: return half_to_double(load<std::uint16_t>(data + 2 * i));
    case D::BF16: return bf16_to_double(load<std::uint16_t>(data + 2 * i));
    case D::I32: return load<std::int32_t>(data + 4 * i);
    case D::U32: return load<std::uint32_t>(data + 4 * i);
    case D::F32: return load<float>(data + 4 * i);
    case D::I64: return static_cast<double>(load<std::int64_t>(data + 8 * i));
    case D::U64: return static_cast<double>(load<std::uint64_t>(data + 8 * i));
    case D::F64: return load<double>(data + 8 * i);
    default: return NAN;
  }
}

Progress::Progress(std::string what) : what_(std::move(what)), active_(::isatty(STDERR_FILENO) == 1) {}

void Progress::clear() {
  if (drawn_) std::cerr << "\r\033[K" << std::flush;
  drawn_ = false;
}

void Progress::update(const std::string& detail) {
  if (!active_) return;
  std::cerr << "\r\033[K" << what_ << " " << detail << std::flush;
  drawn_ = true;
}

void print_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> width;
  for (const auto& row : rows)
    for (std::size_t i = 0; i + 1 < row.size(); ++i) {
      if (width.size() <= i) width.resize(i + 1, 0);
      width[i] = std::max(width[i], row[i].size());
    }
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      if (i + 1 < row.size()) line += fmt::format("{:<{}}  ", row[i], width[i]);
      else line += row[i];
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    fmt::print("{}\n", line);
  }
}

void print_json(const json& doc) { fmt::print("{}\n", doc.dump(2)); }

}  // namespace savepoint::cli
