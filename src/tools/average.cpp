// Checkpoint averaging over safetensors bytes: verify every file, check they agree, then
// stream one tensor at a time through a float64 accumulator. No LibTorch: the CLI uses it.
#include <savepoint/average.hpp>
#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/errors.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in fmt/format.h before fmt 11)
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

namespace savepoint {

namespace fs = std::filesystem;
using safetensors::DType;
using safetensors::TensorInfo;

namespace {

// ---- float16 / bfloat16 by hand (LibTorch's conversions: IEEE, round to nearest even)
double half_to_double(std::uint16_t h) {
  const int sign = (h >> 15) & 1;
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  double v;
  if (exponent == 0) {
    v = std::ldexp(static_cast<double>(mantissa), -24);  // zero or subnormal
  } else if (exponent == 31) {
    v = mantissa == 0 ? INFINITY : NAN;
  } else {
    v = std::ldexp(static_cast<double>(1024 + mantissa), exponent - 25);
  }
  return sign ? -v : v;
}

std::uint16_t float_to_half(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // 65520 and up round to inf
  if (abs < 0x38800000u) {  // below 2^-14: a half subnormal (or zero), in units of 2^-24
    float a;
    std::memcpy(&a, &abs, 4);
    const auto m = static_cast<std::uint32_t>(std::nearbyint(a * 16777216.0f));  // exact scaling, RNE
    return static_cast<std::uint16_t>(sign | m);
  }
  const std::uint32_t mantissa = abs & 0x7fffffu;
  std::uint32_t h = (((abs >> 23) - 127 + 15) << 10) | (mantissa >> 13);
  const std::uint32_t rest = mantissa & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
  return static_cast<std::uint16_t>(sign | h);
}

double bf16_to_double(std::uint16_t b) {
  const std::uint32_t x = static_cast<std::uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

std::uint16_t float_to_bf16(float f) {
  if (std::isnan(f)) return 0x7fc0;
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  return static_cast<std::uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);  // c10::BFloat16's RNE
}

bool is_floating(DType d) {
  return d == DType::F16 || d == DType::BF16 || d == DType::F32 || d == DType::F64 || d == DType::C64;
}

// Adds the elements of `bytes` (dtype `d`) into `acc`.
void accumulate(DType d, const char* bytes, std::vector<double>& acc) {
  const std::size_t n = acc.size();
  switch (d) {
    case DType::F64:
      for (std::size_t i = 0; i < n; ++i) {
        double v;
        std::memcpy(&v, bytes + 8 * i, 8);
        acc[i] += v;
      }
      break;
    case DType::F32:
    case DType::C64:  // (re, im) pairs of float32: acc holds 2 values per element
      for (std::size_t i = 0; i < n; ++i) {
        float v;
        std::memcpy(&v, bytes + 4 * i, 4);
        acc[i] += v;
      }
      break;
    case DType::F16:
    case DType::BF16:
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t v;
        std::memcpy(&v, bytes + 2 * i, 2);
        acc[i] += d == DType::F16 ? half_to_double(v) : bf16_to_double(v);
      }
      break;
    default:
      break;
  }
}

// Divides by `count` and writes the mean in dtype `d` into `out`.
void finish_mean(DType d, std::vector<double>& acc, double count, std::string& out) {
  const std::size_t n = acc.size();
  for (auto& v : acc) v /= count;
  switch (d) {
    case DType::F64:
      out.resize(8 * n);
      std::memcpy(out.data(), acc.data(), 8 * n);
      break;
    case DType::F32:
    case DType::C64:
      out.resize(4 * n);
      for (std::size_t i = 0; i < n; ++i) {
        const auto f = static_cast<float>(acc[i]);
        std::memcpy(out.data() + 4 * i, &f, 4);
      }
      break;
    case DType::F16:
    case DType::BF16:
      out.resize(2 * n);
      for (std::size_t i = 0; i < n; ++i) {
        const auto f = static_cast<float>(acc[i]);
        const std::uint16_t h = d == DType::F16 ? float_to_half(f) : float_to_bf16(f);
        std::memcpy(out.data() + 2 * i, &h, 2);
      }
      break;
    default:
      break;
  }
}

// One checkpoint's file of the key: verified, mapped lazily, header parsed.
struct Source {
  Checkpoint checkpoint;
  fs::path file;
  std::shared_ptr<const detail::MappedFile> map;
  safetensors::Header header;
};

Source open_source(const Checkpoint& given, const std::string& key) {
  Source s;
  // The directory must still hold this checkpoint (a named one may have been replaced).
  s.checkpoint = detail::read_checkpoint(given.path);
  if (s.checkpoint.sequence != given.sequence) {
    throw StaleCheckpointError(fmt::format("checkpoint '{}' now holds another checkpoint (sequence {}, not {})",
                                           given.path.string(), s.checkpoint.sequence, given.sequence),
                               given.path);
  }
  const FileRecord* rec = detail::whole_key_record(s.checkpoint, key, "averaging");
  if (rec == nullptr) {
    throw MissingKeyError(fmt::format("checkpoint '{}' has no key '{}' to average", given.path.string(), key),
                          given.path, key);
  }
  s.file = s.checkpoint.path / rec->file;
  if (rec->part >= 0) {  // a key split into parts: verified and assembled in memory
    s.map = std::dynamic_pointer_cast<const detail::MappedFile>(detail::open_key_verified(s.checkpoint, *rec));
    s.header = safetensors::parse(s.map->bytes(), s.file);
    return s;
  }
  const auto st = detail::path_status(s.file);
  if (!st || st->type != detail::FileType::regular || st->size != rec->bytes) {
    throw CorruptCheckpointError(
        fmt::format("'{}' (key '{}') is missing, not a regular file, or not the {} bytes meta.json recorded",
                    s.file.string(), key, rec->bytes),
        s.file, key);
  }
  s.map = std::make_shared<const detail::MappedFile>(s.file, detail::Mapping{/*read_all=*/false, false});
  // Hash in chunks, releasing each one: verifying N files never holds more than a chunk.
  const std::string_view all = s.map->bytes();
  detail::Hasher hasher;
  constexpr std::size_t kChunk = std::size_t{8} << 20;
  for (std::size_t at = 0; at < all.size(); at += kChunk) {
    const std::size_t len = std::min(kChunk, all.size() - at);
    hasher.update(all.data() + at, len);
    s.map->release_pages(at, at + len);
  }
  if (all.size() != rec->bytes || hasher.digest() != rec->xxh3) {
    throw CorruptCheckpointError(fmt::format("'{}' (key '{}') fails its checksum: xxh3 {} but meta.json recorded {}",
                                             s.file.string(), key, detail::to_hex(hasher.digest()),
                                             detail::to_hex(rec->xxh3)),
                                 s.file, key);
  }
  s.header = safetensors::parse_header(all, all.size(), s.file);
  s.map->release_pages(0, static_cast<std::size_t>(s.header.data_start));
  return s;
}

std::string shape_text(const std::vector<std::int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

}  // namespace

struct Averager::Impl {
  std::string key;
  std::vector<Checkpoint> checkpoints;  // newest first
  std::vector<Source> sources;  // newest first
  std::vector<TensorInfo> order;
};

Averager::Averager(std::vector<Checkpoint> checkpoints, std::string key) : impl_(std::make_unique<Impl>()) {
  impl_->key = std::move(key);
  if (checkpoints.empty()) detail::throw_usage(fmt::format("savepoint: averaging '{}' needs at least one checkpoint", impl_->key));
  std::sort(checkpoints.begin(), checkpoints.end(),
            [](const Checkpoint& a, const Checkpoint& b) { return a.sequence > b.sequence; });
  std::set<fs::path> seen;
  for (const auto& c : checkpoints) {
    if (!seen.insert(c.path).second)
      detail::throw_usage(fmt::format("savepoint: checkpoint '{}' is given twice to average", c.path.string()));
  }
  for (const auto& c : checkpoints) {
    impl_->sources.push_back(open_source(c, impl_->key));
    impl_->checkpoints.push_back(impl_->sources.back().checkpoint);
  }

  const Source& newest = impl_->sources.front();
  for (const auto& t : newest.header.tensors) {
    if (t.dtype == DType::F8_E5M2 || t.dtype == DType::F8_E4M3) {
      detail::throw_usage(fmt::format("savepoint: cannot average tensor '{}' of '{}': {} tensors are not supported",
                                      t.name, newest.file.string(), safetensors::dtype_name(t.dtype)));
    }
  }
  for (std::size_t i = 1; i < impl_->sources.size(); ++i) {
    const Source& other = impl_->sources[i];
    for (const auto& t : newest.header.tensors) {
      const TensorInfo* o = other.header.find(t.name);
      if (o == nullptr) {
        throw MismatchError(fmt::format("cannot average key '{}': checkpoint '{}' has no tensor '{}' (the newest, "
                                        "'{}', has it)",
                                        impl_->key, other.checkpoint.path.string(), t.name, newest.checkpoint.name()),
                            other.file, impl_->key);
      }
      if (o->dtype != t.dtype || o->shape != t.shape) {
        throw MismatchError(fmt::format("cannot average key '{}': tensor '{}' is {} {} in checkpoint '{}' but {} {} "
                                        "in the newest, '{}'",
                                        impl_->key, t.name, safetensors::dtype_name(o->dtype), shape_text(o->shape),
                                        other.checkpoint.path.string(), safetensors::dtype_name(t.dtype),
                                        shape_text(t.shape), newest.checkpoint.name()),
                            other.file, impl_->key);
      }
    }
    for (const auto& o : other.header.tensors) {
      if (newest.header.find(o.name) == nullptr) {
        throw MismatchError(fmt::format("cannot average key '{}': checkpoint '{}' has a tensor '{}' that the newest, "
                                        "'{}', does not have",
                                        impl_->key, other.checkpoint.path.string(), o.name, newest.checkpoint.name()),
                            other.file, impl_->key);
      }
    }
  }
  // The order a safetensors writer stores them in, so write_average can stream the result.
  impl_->order = newest.header.tensors;
  std::stable_sort(impl_->order.begin(), impl_->order.end(), [](const TensorInfo& a, const TensorInfo& b) {
    const auto sa = safetensors::dtype_size(a.dtype), sb = safetensors::dtype_size(b.dtype);
    return sa != sb ? sa > sb : a.name < b.name;
  });
}

Averager::~Averager() = default;

const std::vector<TensorInfo>& Averager::tensors() const noexcept { return impl_->order; }
const std::vector<Checkpoint>& Averager::checkpoints() const noexcept { return impl_->checkpoints; }
const std::map<std::string, std::string>& Averager::metadata() const noexcept {
  return impl_->sources.front().header.metadata;
}

AverageReport Averager::run(const std::function<void(const AveragedTensor&)>& sink) {
  AverageReport report;
  report.checkpoints = impl_->checkpoints;
  std::vector<double> acc;
  std::string out;
  const double count = static_cast<double>(impl_->sources.size());
  for (const TensorInfo& t : impl_->order) {
    const Source& newest = impl_->sources.front();
    if (!is_floating(t.dtype)) {
      const TensorInfo* info = newest.header.find(t.name);
      const auto begin = static_cast<std::size_t>(newest.header.data_start + info->begin);
      out.assign(newest.map->bytes().substr(begin, static_cast<std::size_t>(info->nbytes())));
      newest.map->release_pages(begin, begin + out.size());
      sink(AveragedTensor{t.name, t.dtype, t.shape, out, false});
      report.from_newest.push_back(t.name);
      continue;
    }
    const std::size_t values = static_cast<std::size_t>(t.nbytes() / (t.dtype == DType::C64 ? 4 : safetensors::dtype_size(t.dtype)));
    acc.assign(values, 0.0);
    // Oldest first: the order a reader summing by hand would use.
    for (auto it = impl_->sources.rbegin(); it != impl_->sources.rend(); ++it) {
      const TensorInfo* info = it->header.find(t.name);
      const auto begin = static_cast<std::size_t>(it->header.data_start + info->begin);
      accumulate(t.dtype, it->map->bytes().data() + begin, acc);
      it->map->release_pages(begin, begin + static_cast<std::size_t>(info->nbytes()));
    }
    finish_mean(t.dtype, acc, count, out);
    sink(AveragedTensor{t.name, t.dtype, t.shape, out, true});
    report.averaged.push_back(t.name);
  }
  // Give the buffers back: a long-lived Averager should not keep the largest tensor's memory.
  std::vector<double>().swap(acc);
  std::string().swap(out);
  return report;
}

AverageReport average_checkpoints(std::vector<Checkpoint> checkpoints, const std::string& key,
                                  const std::function<void(const AveragedTensor&)>& sink) {
  return Averager(std::move(checkpoints), key).run(sink);
}

AverageReport write_average(std::vector<Checkpoint> checkpoints, const std::string& key, const fs::path& output) {
  if (detail::path_status(output)) {
    detail::throw_usage(fmt::format("savepoint: '{}' already exists; the average is not written over it", output.string()));
  }
  Averager averager(std::move(checkpoints), key);
  std::vector<safetensors::TensorSpec> specs;
  for (const auto& t : averager.tensors()) specs.push_back({t.name, t.dtype, t.shape, t.nbytes()});
  std::map<std::string, std::string> metadata = averager.metadata();
  nlohmann::json names = nlohmann::json::array();
  for (const auto& c : averager.checkpoints()) names.push_back(c.name());
  metadata["savepoint.average"] = nlohmann::json{{"key", key}, {"checkpoints", names}}.dump();
  const std::string header = safetensors::build_header(specs, metadata);  // same order as tensors()

  AverageReport report;
  detail::write_new_file(output, [&](detail::FileWriter& writer) {
    writer.write(header);
    report = averager.run([&](const AveragedTensor& t) { writer.write(t.bytes); });
  });
  return report;
}

}  // namespace savepoint
