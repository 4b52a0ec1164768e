// bench_dcp — the C++ side of bench/bench-dcp.sh: one rank of a job loading a PyTorch DCP
// checkpoint (torch.distributed.checkpoint) with savepoint::dcp::load, at any world size.
//
//   bench_dcp load DIR RANK WORLD
//
// For every tensor key of DIR's .metadata (dcp::Reader: keys, dtypes, global shapes) this rank
// allocates its rows (savepoint::even_rows over dim 0; a 0-dim tensor, or one of a single row,
// whole on every rank) and registers them, in a ShardedTensors (State::tensor for 0-dim); all
// of it before the clock starts. Timed: savepoint::dcp::load(DIR, state) only (steady_clock).
// Prints one line of JSON:
//   {"loader":"cpp","rank":R,"world":W,"seconds":S,"bytes":B,"shard_mib":M,
//    "base_rss_mib":..,"peak_rss_mib":..,"checksum":"<uint64>","tensors":N}
// peak_rss_mib is getrusage's ru_maxrss taken right after the load (before the checksum pass);
// base_rss_mib the same before the shard is allocated (the process with LibTorch loaded).
// checksum: over the tensor keys in .metadata order (sorted), index t, and each of this rank's
// rows (global row index g; a 0-dim tensor is one row, g = 0): the sum of the row's bytes as
// unsigned integers, times (g + 1 + t * 1000003), summed modulo 2^64 — position-sensitive, and
// bench/dcp_bench.py computes the same for Python's dcp.load of the same rows.
#include <savepoint/dcp.hpp>
#include <savepoint/format/dcp.hpp>
#include <savepoint/sharded.hpp>

#include <torch/torch.h>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

namespace {

double max_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

torch::ScalarType scalar_type(savepoint::dcp::DType dtype) {
  using savepoint::dcp::DType;
  switch (dtype) {
    case DType::BOOL: return torch::kBool;
    case DType::U8: return torch::kUInt8;
    case DType::I8: return torch::kInt8;
    case DType::I16: return torch::kInt16;
    case DType::F16: return torch::kFloat16;
    case DType::BF16: return torch::kBFloat16;
    case DType::I32: return torch::kInt32;
    case DType::F32: return torch::kFloat32;
    case DType::I64: return torch::kInt64;
    case DType::F64: return torch::kFloat64;
    case DType::C64: return torch::kComplexFloat;
    default: break;
  }
  throw std::runtime_error(std::string("bench_dcp: no LibTorch dtype for ") + savepoint::safetensors::dtype_name(dtype));
}

struct Local {
  std::string key;
  torch::Tensor tensor;          // this rank's rows (or the whole 0-dim / 1-row tensor)
  std::int64_t global_rows = 0;  // 0 for a 0-dim tensor
  std::int64_t offset = 0;
};

int load(const std::string& dir, int rank, int world) {
  const double base_rss = max_rss_mib();
  std::vector<Local> locals;
  {
    const savepoint::dcp::Reader reader(dir);
    for (const auto& item : reader.metadata().items) {
      if (!item.tensor) continue;
      Local l;
      l.key = item.key;
      const auto options = torch::TensorOptions().dtype(scalar_type(item.dtype));
      auto shape = item.size;
      if (!shape.empty()) {
        l.global_rows = shape[0];
        if (shape[0] > 1) {  // a 0-dim tensor or a single row: whole on every rank
          const auto rows = savepoint::even_rows(shape[0], rank, world);
          shape[0] = rows.rows;
          l.offset = rows.offset;
        }
      }
      l.tensor = torch::empty(shape, options);
      locals.push_back(std::move(l));
    }
  }
  // The checksum numbers the tensors in key order (byte-wise, as Python's sorted()).
  std::sort(locals.begin(), locals.end(), [](const Local& a, const Local& b) { return a.key < b.key; });
  // Registered before the clock starts: rows in a ShardedTensors (the empty prefix keeps the DCP
  // key as the name), 0-dim tensors whole. Every page is touched here (zero_), so neither
  // loader pays the first-touch page faults of its destination inside the timed region
  // (bench/dcp_bench.py does the same).
  savepoint::ShardedTensors shards;
  savepoint::dcp::State state;
  std::uint64_t bytes = 0;
  for (auto& l : locals) {
    l.tensor.zero_();
    bytes += l.tensor.nbytes();
    if (l.tensor.dim() == 0)
      state.tensor(l.key, l.tensor);
    else
      shards.add(l.key, l.tensor, l.global_rows, l.offset);
  }
  state.sharded("", shards);

  const auto start = std::chrono::steady_clock::now();
  const auto report = savepoint::dcp::load(dir, state);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double peak_rss = max_rss_mib();

  std::uint64_t checksum = 0;
  for (std::size_t t = 0; t < locals.size(); ++t) {
    const auto& x = locals[t].tensor;
    const auto* p = static_cast<const std::uint8_t*>(x.data_ptr());
    const std::int64_t rows = x.dim() == 0 ? 1 : x.size(0);
    const std::uint64_t row_bytes = rows ? x.nbytes() / static_cast<std::uint64_t>(rows) : 0;
    for (std::int64_t r = 0; r < rows; ++r) {
      std::uint64_t sum = 0;
      for (std::uint64_t b = 0; b < row_bytes; ++b) sum += p[static_cast<std::uint64_t>(r) * row_bytes + b];
      const std::uint64_t g = static_cast<std::uint64_t>(locals[t].offset + r);
      checksum += sum * (g + 1 + static_cast<std::uint64_t>(t) * 1000003ULL);
    }
  }
  std::printf(
      "{\"loader\":\"cpp\",\"rank\":%d,\"world\":%d,\"seconds\":%.6f,\"bytes\":%llu,\"shard_mib\":%.1f,"
      "\"base_rss_mib\":%.1f,\"peak_rss_mib\":%.1f,\"checksum\":\"%llu\",\"tensors\":%zu,\"loaded_keys\":%zu}\n",
      rank, world, seconds, static_cast<unsigned long long>(bytes), static_cast<double>(bytes) / (1024.0 * 1024.0),
      base_rss, peak_rss, static_cast<unsigned long long>(checksum), locals.size(), report.loaded.size());
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5 || std::string(argv[1]) != "load") {
    std::fprintf(stderr, "usage: %s load DIR RANK WORLD\n", argv[0]);
    return 2;
  }
  try {
    const int rank = std::atoi(argv[3]);
    const int world = std::atoi(argv[4]);
    if (world < 1 || rank < 0 || rank >= world) {
      std::fprintf(stderr, "bench_dcp: RANK must be in [0, WORLD)\n");
      return 2;
    }
    return load(argv[2], rank, world);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_dcp: %s\n", e.what());
    return 1;
  }
}
