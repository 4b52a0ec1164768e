// Checkpoints in an S3-compatible object store (docs/object-storage.md), against baselines
// measured in the same run against the same server: whatever AWS_ENDPOINT_URL points at, the
// bucket from SAVEPOINT_TEST_S3_BUCKET or --bucket. Torch-free (savepoint::core): the state is
// raw bytes in a few large U8 tensors.
//
//   bash scripts/with-s3-server.sh moto --timeout 1500 --
//     build-bench/bench/savepoint_bench_object_store [--sizes 256,1024] [--ranks 1,4] [--repeats 3]
//     [--bucket B] [--sections 1234] [--quick] [--user-hook]
//
// --quick: 64 MiB everywhere, 1 and 2 ranks, 1 repeat (a smoke run). Medians over the repeats.
// The big keys' hooks count as built-in (as LibTorch's are); --user-hook registers them as a
// user's hooks instead (see g_blob_builtin). SAVEPOINT_BENCH_TRACE=1 prints every request.
//   1. save and load of S MiB (one key of S MiB and a small JSON key; with R ranks, a per-rank
//      key of S/R MiB on each rank, every rank uploading its own object; ranks are threads with
//      an in-process group, tests/thread_group.hpp), with parallel parts (part_bytes 16 MiB,
//      parallel_requests 4) and with one stream per object (parallel_requests 1, part_bytes
//      above the file's size: a single PUT and a single GET), ÷ one `curl` PUT / GET of S MiB
//      from/to /dev/shm (the whole command timed; the same server, path-style URL, SigV4).
//      Goals (issue): ≥ 1.5x with parallel parts, ≥ 0.9x on one stream.
//   2. incremental saves (incremental(true).part_bytes(4 MiB)) of a 256 MiB model, 90% frozen
//      (the last 2 of 20 tensors change between saves), ÷ full saves of the same model: bytes
//      sent (object_store_traffic) and time. Goal: ≥ 8x fewer bytes.
//   3. recovery of 256 MiB from the memory tier (/dev/shm) ÷ recovery from the object store, one
//      process (one node): save_to_memory, persist_memory_checkpoint, then recover_if_possible on
//      a new Checkpointer with the memory tier, and on one without (default ObjectStoreOptions,
//      then one GET per object).
//   4. requests (object_store_traffic().requests) per operation for 1, 4, 16 small JSON keys and
//      1, 2, 4 ranks: opening the root for writing, the first save in a fresh prefix, a later
//      save (no retention), a later save_and_keep_only(keep(1)) (retention deleting the two
//      older ones), and a recovery; by method (HEAD, GET, LIST, PUT, POST, DELETE) as well.
// Everything lives under s3://bucket/savepoint-bench-<pid>-<random>/, removed at the end.
// On moto a ranged GET costs about what a GET of the whole object costs (measured with curl:
// 1 MiB of a 256 MiB object took 1.2-1.4 s, the whole 1.5-1.6 s), so the loads in parallel
// ranges are slow there for the server's sake; compare the one-stream rows.
#include <savepoint/core.hpp>
#include <savepoint/format/safetensors.hpp>
#include <savepoint/object_store.hpp>

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/object_store.hpp>

#include "stats.hpp"
#include "thread_group.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace sp = savepoint;
namespace fs = std::filesystem;
using savepoint::bench::Samples;
using Clock = std::chrono::steady_clock;

constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;
constexpr std::int64_t kRowBytes = 4096;               // the blob's tensors are {rows, 4096} U8
constexpr std::uint64_t kTensorBytes = 64 * kMiB;      // a big key: tensors of at most this
const sp::SaveOptions kQuietSave = sp::SaveOptions().verbosity(sp::LogLevel::debug);

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
double timed(const std::function<void()>& fn) {
  const auto t0 = Clock::now();
  fn();
  return seconds_since(t0);
}

// ------------------------------------------------------------------ the state: raw bytes

// A key of raw bytes in a few {rows, 4096} U8 tensors. Saved from `tensors`; a load keeps the
// file's fresh memory (as LibTorch's hooks do for new tensors) and checks it against `tensors`
// at a few places (the engine has checked every byte's XXH3 already).
struct Blob {
  std::vector<std::vector<std::uint8_t>> tensors;
  std::shared_ptr<const sp::FileContents> loaded;
  std::uint64_t loaded_bytes = 0;

  std::uint64_t bytes() const {
    std::uint64_t n = 0;
    for (const auto& t : tensors) n += t.size();
    return n;
  }
};

void fill(std::vector<std::uint8_t>& t, std::uint64_t seed) {
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (std::size_t at = 0; at + 8 <= t.size(); at += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(t.data() + at, &x, 8);
  }
}

// `bytes` (a multiple of 4096) in `count` tensors of whole rows (the last takes the rest).
Blob make_blob(std::uint64_t bytes, std::size_t count, std::uint64_t seed) {
  Blob b;
  const std::uint64_t rows = bytes / kRowBytes;
  count = std::max<std::size_t>(1, std::min<std::uint64_t>(count, rows));
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint64_t r = i + 1 < count ? rows / count : rows - (rows / count) * (count - 1);
    b.tensors.emplace_back(r * kRowBytes);
    fill(b.tensors.back(), seed * 1000 + i);
  }
  return b;
}
Blob big_blob(std::uint64_t bytes, std::uint64_t seed) {
  return make_blob(bytes, static_cast<std::size_t>((bytes + kTensorBytes - 1) / kTensorBytes), seed);
}

// A changed tensor: every word flipped (as an optimizer step changes every parameter).
void change(std::vector<std::uint8_t>& t, std::uint64_t step) {
  const std::uint64_t mask = 0x0101010101010101ull * ((step & 0x7f) + 1);
  for (std::size_t at = 0; at + 8 <= t.size(); at += 8) {
    std::uint64_t w;
    std::memcpy(&w, t.data() + at, 8);
    w ^= mask;
    std::memcpy(t.data() + at, &w, 8);
  }
}

std::string tensor_name(std::size_t i) {
  char name[32];
  std::snprintf(name, sizeof name, "t%04zu", i);
  return name;
}

// The Blob's hooks count as built-in ones (TypeHooks::builtin), as LibTorch's module and
// optimizer hooks are: the engine then hands prepare_load the verified bytes only. A user's
// hook (builtin false, --user-hook) also gets ctx.file, which for an object in a store is a
// local scratch copy: the object is downloaded a second time and written to $TMPDIR.
bool g_blob_builtin = true;

void register_hooks() {
  static const bool once = [] {
    sp::TypeHooks blob;
    blob.name = "bench.Blob";
    blob.extension = ".safetensors";
    blob.save = [](void* object, const sp::SaveContext&) {
      auto& b = *static_cast<Blob*>(object);
      std::vector<sp::TensorData> out;
      for (std::size_t i = 0; i < b.tensors.size(); ++i) {
        sp::TensorData d;
        const auto& t = b.tensors[i];
        d.spec = {tensor_name(i), sp::safetensors::DType::U8,
                  {static_cast<std::int64_t>(t.size()) / kRowBytes, kRowBytes}, t.size()};
        d.host_bytes = t.data();
        out.push_back(std::move(d));
      }
      return sp::Payload::tensors(std::move(out));
    };
    blob.prepare_load = [](void* object, const sp::LoadContext& ctx) -> sp::Apply {
      auto& b = *static_cast<Blob*>(object);
      const auto bytes = ctx.bytes();
      const auto header = sp::safetensors::parse(bytes, ctx.file);
      std::uint64_t total = 0;
      for (std::size_t i = 0; i < b.tensors.size(); ++i) {
        const auto* info = header.find(tensor_name(i));
        const auto& t = b.tensors[i];
        if (!info || info->nbytes() != t.size())
          throw std::runtime_error("bench: " + ctx.file.string() + " lacks " + tensor_name(i) + " or its size differs");
        const char* data = bytes.data() + header.data_start + info->begin;
        for (const std::size_t at : {std::size_t{0}, t.size() / 2, t.size() - 8})
          if (std::memcmp(data + at, t.data() + at, 8) != 0)
            throw std::runtime_error("bench: " + ctx.file.string() + ": " + tensor_name(i) + " came back different");
        total += info->nbytes();
      }
      return [&b, contents = ctx.contents, total] {
        b.loaded = contents;
        b.loaded_bytes = total;
      };
    };
    blob.fresh_state = [](const void*) { return true; };
    blob.builtin = g_blob_builtin;
    sp::hook_table().add<Blob>(std::move(blob));

    return true;
  }();
  (void)once;
}

// ------------------------------------------------------------------ the server and curl

struct Server {
  std::string endpoint, region, key_id, secret, bucket, name;
  fs::path run_root;  // s3://bucket/savepoint-bench-<pid>-<random>
};

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// The requests of one operation, by method (the request observer; LIST is a GET of the bucket
// with list-type=2, a multipart upload's parts are PUTs, its start and end POSTs).
class MethodCounts {
 public:
  void add(const char* method, const std::string& key) {
    std::string m = method;
    if (m == "GET" && (key.empty() || key.find("list-type") != std::string::npos || key.front() == '?')) m = "LIST";
    std::lock_guard<std::mutex> lock(mutex_);
    ++counts_[m];
  }
  std::map<std::string, std::uint64_t> take() {
    std::lock_guard<std::mutex> lock(mutex_);
    auto out = std::move(counts_);
    counts_.clear();
    return out;
  }

 private:
  std::mutex mutex_;
  std::map<std::string, std::uint64_t> counts_;
};
MethodCounts g_methods;
bool g_trace = false;  // SAVEPOINT_BENCH_TRACE=1: every request on stderr, with the operations

void trace(const char* what, const fs::path& where) {
  if (g_trace) std::fprintf(stderr, "--- %s %s\n", what, where.string().c_str());
}

std::string breakdown(const std::map<std::string, std::uint64_t>& counts) {
  std::string out;
  for (const char* m : {"HEAD", "GET", "LIST", "PUT", "POST", "DELETE"}) {
    const auto it = counts.find(m);
    if (it == counts.end() || it->second == 0) continue;
    if (!out.empty()) out += " ";
    out += std::string(m) + " " + std::to_string(it->second);
  }
  for (const auto& [m, n] : counts)
    if (m != "HEAD" && m != "GET" && m != "LIST" && m != "PUT" && m != "POST" && m != "DELETE")
      out += " " + m + " " + std::to_string(n);
  return out.empty() ? "-" : out;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (const char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// One plain curl command against the server (path-style URL, SigV4 by curl), timed whole.
// x-amz-content-sha256: UNSIGNED-PAYLOAD as savepoint sends it: S3 requires the header, and
// curl 7.88 would not add it (moto does not check).
double curl(const Server& s, const std::string& args, const std::string& key) {
  std::string endpoint = s.endpoint;
  while (!endpoint.empty() && endpoint.back() == '/') endpoint.pop_back();
  const std::string command = "curl -sS --fail --aws-sigv4 " + shell_quote("aws:amz:" + s.region + ":s3") + " --user " +
                              shell_quote(s.key_id + ":" + s.secret) +
                              " -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' " + args + " " +
                              shell_quote(endpoint + "/" + s.bucket + "/" + key);
  const auto t0 = Clock::now();
  const int rc = std::system(command.c_str());
  const double took = seconds_since(t0);
  if (rc != 0) throw std::runtime_error("bench: curl " + args + " " + key + " failed (status " + std::to_string(rc) + ")");
  return took;
}

// The run's key prefix inside the bucket ("savepoint-bench-..."), for curl's objects.
std::string run_key(const Server& s, const std::string& rest) {
  return s.run_root.lexically_relative("s3://" + s.bucket).generic_string() + "/" + rest;
}

struct CurlRates {
  Samples put, get;  // seconds
};

// `repeats` PUTs and GETs of one object of `mib` MiB from /dev/shm.
CurlRates curl_baseline(const Server& s, std::uint64_t mib, int repeats) {
  const fs::path file = "/dev/shm/savepoint-bench-object-store-" + std::to_string(::getpid()) + ".bin";
  {
    std::vector<std::uint8_t> chunk(64 * kMiB);
    std::FILE* f = std::fopen(file.c_str(), "wb");
    if (!f) throw std::runtime_error("bench: cannot write " + file.string());
    for (std::uint64_t done = 0, i = 0; done < mib * kMiB; done += chunk.size(), ++i) {
      fill(chunk, 77 + i);
      std::fwrite(chunk.data(), 1, std::min<std::uint64_t>(chunk.size(), mib * kMiB - done), f);
    }
    std::fclose(f);
  }
  CurlRates r;
  try {
    for (int i = 0; i < repeats; ++i) {
      const std::string key = run_key(s, "curl/" + std::to_string(mib) + "-" + std::to_string(i));
      r.put.add(curl(s, "-T " + shell_quote(file.string()), key));
      r.get.add(curl(s, "-o /dev/null", key));
      sp::detail::remove_file(s.run_root / "curl" / (std::to_string(mib) + "-" + std::to_string(i)));
    }
  } catch (...) {
    fs::remove(file);
    throw;
  }
  fs::remove(file);
  return r;
}

// ------------------------------------------------------------------ ranks

// fn(rank, group) on `ranks` threads with an in-process group, or on this thread with none
// (a single process, as a one-rank job runs). Rethrows the first rank's failure.
template <class T>
std::vector<T> on_ranks(int ranks, const std::function<T(int, std::shared_ptr<sp::ProcessGroup>)>& fn) {
  if (ranks == 1) return {fn(0, nullptr)};
  test::ThreadWorld world(ranks, std::chrono::minutes(20));
  auto outcomes = world.run([&](int rank, std::shared_ptr<sp::ProcessGroup> g) { return fn(rank, std::move(g)); });
  std::vector<T> out;
  for (auto& o : outcomes) {
    if (o.error) std::rethrow_exception(o.error);
    out.push_back(std::move(*o.value));
  }
  return out;
}

void barrier(const std::shared_ptr<sp::ProcessGroup>& g) {
  if (g) g->barrier();
}

// An operation's seconds on rank 0, every rank starting together and the clock stopping when
// the last one is done.
double timed_on_ranks(const std::shared_ptr<sp::ProcessGroup>& g, const std::function<void()>& fn) {
  barrier(g);
  const auto t0 = Clock::now();
  fn();
  barrier(g);
  return seconds_since(t0);
}

// ------------------------------------------------------------------ 1. save and load vs curl

struct Throughput {
  Samples save, load;  // seconds
  std::uint64_t save_requests = 0, load_requests = 0;  // of the last repeat
  std::string save_methods, load_methods;
};

Throughput save_and_load(const Server& s, std::uint64_t mib, int ranks, bool parallel, int repeats) {
  const fs::path root = s.run_root / ("rw-" + std::to_string(mib) + "-r" + std::to_string(ranks) +
                                      (parallel ? "-parallel" : "-single"));
  const std::uint64_t file_bytes = mib * kMiB / static_cast<std::uint64_t>(ranks);
  sp::ObjectStoreOptions store;
  if (parallel) store.part_bytes(16 * kMiB).parallel_requests(4);
  else store.part_bytes(file_bytes + kMiB).parallel_requests(1);  // above the file with its header: one PUT
  // Configured once for the root, before the ranks open it: a Checkpointer given
  // CheckpointerOptions::object_store configures its root again, and with ranks as threads of
  // one process each rank would replace the store the others use (whose requests then drop
  // out of object_store_traffic()).
  sp::configure_object_store(root, store);
  using Rounds = std::vector<std::pair<double, double>>;
  Throughput t;
  const auto per_rank = on_ranks<Rounds>(ranks, [&](int rank, std::shared_ptr<sp::ProcessGroup> g) {
    Blob blob = big_blob(file_bytes, 10 * static_cast<std::uint64_t>(rank) + 1);
    nlohmann::json note{{"value", 42}};  // a small JSON key (savepoint's "json" hook)
    sp::CheckpointerOptions options;
    if (g) options.process_group(g);
    sp::Checkpointer ckpt(root, options);
    if (ranks == 1) ckpt.add_recoverable("state", blob);
    else ckpt.add_recoverable("state", blob, sp::per_rank());
    ckpt.add_recoverable("note", note);
    Rounds rounds;
    for (int i = 0; i < repeats; ++i) {
      barrier(g);
      const auto before = sp::detail::object_store_traffic();
      if (rank == 0) g_methods.take();
      if (rank == 0) trace("save", root);
      const double save = timed_on_ranks(g, [&] { ckpt.save_checkpoint({}, kQuietSave); });
      const auto saved = sp::detail::object_store_traffic();
      const auto save_methods = rank == 0 ? g_methods.take() : std::map<std::string, std::uint64_t>{};
      blob.loaded.reset();
      barrier(g);
      if (rank == 0) trace("load", root);
      const double load = timed_on_ranks(g, [&] {
        if (!ckpt.recover_if_possible()) throw std::runtime_error("bench: nothing to recover in " + root.string());
      });
      const auto loaded = sp::detail::object_store_traffic();
      barrier(g);  // read before any rank goes on to the deletion
      if (blob.loaded_bytes != blob.bytes()) throw std::runtime_error("bench: the load brought too few bytes");
      blob.loaded.reset();
      if (rank == 0) {
        t.save_requests = saved.requests - before.requests;
        t.load_requests = loaded.requests - saved.requests;
        t.save_methods = breakdown(save_methods);
        t.load_methods = breakdown(g_methods.take());
      }
      // Untimed: the checkpoint is deleted (the server keeps one at a time).
      if (rank == 0) trace("delete", root);
      ckpt.delete_checkpoints(sp::keep(0).keep_newest(false).verbosity(sp::LogLevel::debug));
      rounds.emplace_back(save, load);
    }
    return rounds;
  });
  for (const auto& [save, load] : per_rank.at(0)) {
    t.save.add(save);
    t.load.add(load);
  }
  return t;
}

void section_save_load(const Server& s, const std::vector<std::uint64_t>& sizes, const std::vector<int>& ranks,
                       int repeats) {
  std::printf("\n## 1. Save and load of S MiB ÷ one curl PUT / GET of S MiB (same server, same run)\n\n"
              "One key of S MiB (%llu MiB tensors of U8) + a small JSON key; R ranks: a per-rank key of S/R MiB "
              "on each rank (threads), each uploading its own object. parallel = part_bytes 16 MiB, "
              "parallel_requests 4; one stream = parallel_requests 1, part_bytes above the file (one PUT, one GET "
              "per object). Seconds of the whole save_checkpoint / recover_if_possible; curl: the whole command, "
              "the file in /dev/shm. Median of %d. Goals (issue): ≥ 1.5x with parallel parts, ≥ 0.9x on one "
              "stream.\n\n",
              static_cast<unsigned long long>(kTensorBytes / kMiB), repeats);
  std::printf("| S | ranks | mode | save MiB/s | curl PUT MiB/s | save ÷ curl | load MiB/s | curl GET MiB/s | "
              "load ÷ curl | goal | requests per save | requests per load |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::fflush(stdout);
  for (const auto mib : sizes) {
    const CurlRates c = curl_baseline(s, mib, repeats);
    const double put = static_cast<double>(mib) / c.put.median(), get = static_cast<double>(mib) / c.get.median();
    for (const int r : ranks) {
      for (const bool parallel : {true, false}) {
        const Throughput t = save_and_load(s, mib, r, parallel, repeats);
        const double save = static_cast<double>(mib) / t.save.median(), load = static_cast<double>(mib) / t.load.median();
        std::printf("| %llu MiB | %d | %s | %.0f (±%.0f%%) | %.0f (±%.0f%%) | **%.2fx** | %.0f (±%.0f%%) | %.0f (±%.0f%%) | "
                    "**%.2fx** | %s | %llu (%s) | %llu (%s) |\n",
                    static_cast<unsigned long long>(mib), r, parallel ? "parallel" : "one stream", save,
                    50 * t.save.spread(), put, 50 * c.put.spread(), save / put, load, 50 * t.load.spread(), get,
                    50 * c.get.spread(), load / get, parallel ? "≥ 1.5x" : "≥ 0.9x",
                    static_cast<unsigned long long>(t.save_requests), t.save_methods.c_str(),
                    static_cast<unsigned long long>(t.load_requests), t.load_methods.c_str());
        std::fflush(stdout);
      }
    }
  }
}

// ------------------------------------------------------------------ 2. incremental vs full

void section_incremental(const Server& s, std::uint64_t mib, int repeats) {
  std::printf("\n## 2. Incremental save ÷ full save, %llu MiB model, 90%% frozen\n\n"
              "20 tensors; the last 2 (10%% of the bytes) change before each pair of saves. Full: a plain "
              "Checkpointer; incremental: incremental(true).part_bytes(4 MiB) (unchanged parts copied on the "
              "server). Both with the default ObjectStoreOptions (16 MiB parts, 4 requests in parallel). The first "
              "save of each is not counted; then %d rounds, the two alternated, each followed by untimed "
              "retention keeping 1. Bytes sent: object_store_traffic().bytes_sent. Goal (issue): ≥ 8x fewer "
              "bytes.\n\n",
              static_cast<unsigned long long>(mib), repeats);
  std::fflush(stdout);
  Blob model = make_blob(mib * kMiB, 20, 5);
  std::uint64_t trainable = 0;
  for (std::size_t i = 18; i < model.tensors.size(); ++i) trainable += model.tensors[i].size();
  sp::Checkpointer full(s.run_root / "incremental-full");
  sp::Checkpointer inc(s.run_root / "incremental-incr", sp::CheckpointerOptions().incremental(true).part_bytes(4 * kMiB));
  full.add_recoverable("model", model);
  inc.add_recoverable("model", model);
  full.save_checkpoint({}, kQuietSave);
  inc.save_checkpoint({}, kQuietSave);
  Samples full_bytes, inc_bytes, full_s, inc_s, full_req, inc_req;
  std::string full_methods, inc_methods;
  const auto keep1 = sp::keep(1).verbosity(sp::LogLevel::debug);
  for (int i = 0; i < repeats; ++i) {
    for (std::size_t t = 18; t < model.tensors.size(); ++t) change(model.tensors[t], static_cast<std::uint64_t>(i));
    for (int which = 0; which < 2; ++which) {
      const bool incremental = (which + i) % 2 == 1;
      auto& ckpt = incremental ? inc : full;
      g_methods.take();
      const auto before = sp::detail::object_store_traffic();
      const double took = timed([&] { ckpt.save_checkpoint({}, kQuietSave); });
      const auto after = sp::detail::object_store_traffic();
      (incremental ? inc_s : full_s).add(took);
      (incremental ? inc_bytes : full_bytes).add(static_cast<double>(after.bytes_sent - before.bytes_sent));
      (incremental ? inc_req : full_req).add(static_cast<double>(after.requests - before.requests));
      (incremental ? inc_methods : full_methods) = breakdown(g_methods.take());
      ckpt.delete_checkpoints(keep1);
    }
  }
  std::printf("changed between saves: %.1f MB of %.1f MB (%.1f%%)\n\n", static_cast<double>(trainable) / 1e6,
              static_cast<double>(model.bytes()) / 1e6, 100.0 * static_cast<double>(trainable) / static_cast<double>(model.bytes()));
  std::printf("| save | bytes sent | time | MiB/s of the model | requests |\n|---|---|---|---|---|\n");
  std::printf("| full | %.1f MB | %.0f ms (±%.0f%%) | %.0f | %.0f (%s) |\n", full_bytes.median() / 1e6, full_s.median() * 1e3,
              50 * full_s.spread(), static_cast<double>(mib) / full_s.median(), full_req.median(), full_methods.c_str());
  std::printf("| incremental | %.1f MB | %.0f ms (±%.0f%%) | %.0f | %.0f (%s) |\n", inc_bytes.median() / 1e6,
              inc_s.median() * 1e3, 50 * inc_s.spread(), static_cast<double>(mib) / inc_s.median(), inc_req.median(),
              inc_methods.c_str());
  std::printf("| **full ÷ incremental** | **%.2fx** fewer bytes (goal ≥ 8x) | **%.2fx** faster | | |\n",
              full_bytes.median() / inc_bytes.median(), full_s.median() / inc_s.median());
  std::fflush(stdout);
}

// ------------------------------------------------------------------ 3. memory tier vs store

void section_memory_tier(const Server& s, std::uint64_t mib, int repeats, const fs::path& shm) {
  std::printf("\n## 3. Recovery from the memory tier ÷ recovery from the object store, %llu MiB, one process\n\n"
              "MemoryTierOptions(%s) with the s3:// root: save_to_memory, then persist_memory_checkpoint (the "
              "store holds the same checkpoint). Then recover_if_possible on a new Checkpointer with the same "
              "options (from memory) and on one without the memory tier (from the store, default ObjectStoreOptions), "
              "alternated, %d rounds; then from the store with one GET per object. Each timed from "
              "recover_if_possible's call to its return; the last column: the time ÷ the memory tier's.\n\n",
              static_cast<unsigned long long>(mib), shm.string().c_str(), repeats);
  std::fflush(stdout);
  const fs::path root = s.run_root / "tier";
  const auto tier = sp::CheckpointerOptions().memory_tier(sp::MemoryTierOptions(shm));
  Blob state = big_blob(mib * kMiB, 9);
  nlohmann::json note{{"value", 3}};
  double persist_s = 0;
  {
    sp::Checkpointer ckpt(root, tier);
    ckpt.add_recoverable("state", state);
    ckpt.add_recoverable("note", note);
    ckpt.save_to_memory();
    ckpt.wait();
    persist_s = timed([&] {
      if (!ckpt.persist_memory_checkpoint()) throw std::runtime_error("bench: nothing persisted");
    });
  }
  // Three series: the memory tier, the store with the default ObjectStoreOptions (16 MiB
  // ranges, 4 at a time), the store with one GET per object (parallel_requests 1, ranges above
  // the object's size): a server whose ranged GET costs what the whole object costs (moto) is
  // seen by the difference. The first two alternate; the third comes last (configuring the
  // root's store changes it for every later Checkpointer on it).
  struct Series {
    const char* name;
    Samples s, requests;
    std::string from, methods;
  };
  Series memory{"memory tier", {}, {}, {}, {}}, store{"object store (16 MiB ranges, 4 at a time)", {}, {}, {}, {}},
      single{"object store (one GET per object)", {}, {}, {}, {}};
  auto recover = [&](Series& series, const sp::CheckpointerOptions& options) {
    sp::Checkpointer ckpt(root, options);
    ckpt.add_recoverable("state", state);
    ckpt.add_recoverable("note", note);
    state.loaded.reset();
    g_methods.take();
    const auto before = sp::detail::object_store_traffic();
    std::optional<sp::Checkpoint> got;
    const double took = timed([&] { got = ckpt.recover_if_possible(); });
    const auto after = sp::detail::object_store_traffic();
    if (!got || state.loaded_bytes != state.bytes()) throw std::runtime_error("bench: the recovery brought nothing");
    series.s.add(took);
    series.requests.add(static_cast<double>(after.requests - before.requests));
    series.from = got->path.parent_path().string();
    series.methods = breakdown(g_methods.take());
    state.loaded.reset();
  };
  for (int i = 0; i < repeats; ++i) {
    if (i % 2) recover(store, {}), recover(memory, tier);
    else recover(memory, tier), recover(store, {});
  }
  sp::configure_object_store(root, sp::ObjectStoreOptions().parallel_requests(1).part_bytes(mib * kMiB + kMiB));
  for (int i = 0; i < repeats; ++i) recover(single, {});
  std::printf("persist_memory_checkpoint of it: %.0f ms (%.0f MiB/s)\n\n", persist_s * 1e3,
              static_cast<double>(mib) / persist_s);
  std::printf("| recovery | loaded from | time | MiB/s | requests | ÷ memory tier |\n|---|---|---|---|---|---|\n");
  for (const Series* x : {&memory, &store, &single})
    std::printf("| %s | %s | %.0f ms (±%.0f%%) | %.0f | %.0f (%s) | **%.2fx** |\n", x->name, x->from.c_str(),
                x->s.median() * 1e3, 50 * x->s.spread(), static_cast<double>(mib) / x->s.median(), x->requests.median(),
                x->methods.c_str(), x->s.median() / memory.s.median());
  std::fflush(stdout);
}

// ------------------------------------------------------------------ 4. requests per operation

struct Requests {
  std::uint64_t open = 0, first = 0, later = 0, keep = 0, recover = 0;
  std::string open_m, first_m, later_m, keep_m, recover_m;
};

Requests count_requests(const Server& s, int keys, int ranks) {
  const fs::path root = s.run_root / ("requests-k" + std::to_string(keys) + "-r" + std::to_string(ranks));
  // A store of its own for the root (configured once, see save_and_load): probed when opened,
  // as in a fresh process (the probe is made once per store and process).
  sp::configure_object_store(root, sp::ObjectStoreOptions());
  return on_ranks<Requests>(ranks, [&](int rank, std::shared_ptr<sp::ProcessGroup> g) {
    std::vector<nlohmann::json> notes(static_cast<std::size_t>(keys));  // savepoint's "json" hook
    Requests r;
    // rank 0 reads the process-wide counters with every rank idle (barriers around each step).
    auto step = [&](std::uint64_t& count, std::string& methods, const std::function<void()>& fn) {
      barrier(g);
      const auto before = sp::detail::object_store_traffic();
      if (rank == 0) g_methods.take();
      barrier(g);
      fn();
      barrier(g);
      if (rank == 0) {
        count = sp::detail::object_store_traffic().requests - before.requests;
        methods = breakdown(g_methods.take());
      }
    };
    std::unique_ptr<sp::Checkpointer> ckpt;
    step(r.open, r.open_m, [&] {
      sp::CheckpointerOptions options;
      if (g) options.process_group(g);
      ckpt = std::make_unique<sp::Checkpointer>(root, options);
    });
    for (int k = 0; k < keys; ++k) {
      notes[static_cast<std::size_t>(k)] = {{"value", k}};
      ckpt->add_recoverable("k" + std::to_string(k), notes[static_cast<std::size_t>(k)]);
    }
    step(r.first, r.first_m, [&] { ckpt->save_checkpoint({}, kQuietSave); });
    step(r.later, r.later_m, [&] { ckpt->save_checkpoint({}, kQuietSave); });
    step(r.keep, r.keep_m, [&] { ckpt->save_and_keep_only({}, sp::keep(1).verbosity(sp::LogLevel::debug), kQuietSave); });
    step(r.recover, r.recover_m, [&] {
      if (!ckpt->recover_if_possible()) throw std::runtime_error("bench: nothing to recover");
    });
    return r;
  }).at(0);
}

void section_requests(const Server& s, const std::vector<int>& ranks) {
  std::printf("\n## 4. Requests per operation (object_store_traffic().requests, every rank's together)\n\n"
              "Small JSON keys (replicated, spread over the ranks). open = constructing the Checkpointer on a "
              "fresh prefix (for writing); first save = the first in the prefix; later save = the second, "
              "without retention; + keep(1) = the third, save_and_keep_only(keep(1)) deleting the two older; "
              "recovery = recover_if_possible of the newest. By method in brackets.\n\n");
  std::printf("| keys | ranks | open | first save | later save | later save + keep(1) | recovery |\n"
              "|---|---|---|---|---|---|---|\n");
  std::fflush(stdout);
  for (const int keys : {1, 4, 16}) {
    for (const int r : ranks) {
      const Requests q = count_requests(s, keys, r);
      auto cell = [](std::uint64_t n, const std::string& m) {
        return std::to_string(n) + " (" + m + ")";
      };
      std::printf("| %d | %d | %s | %s | %s | %s | %s |\n", keys, r, cell(q.open, q.open_m).c_str(),
                  cell(q.first, q.first_m).c_str(), cell(q.later, q.later_m).c_str(), cell(q.keep, q.keep_m).c_str(),
                  cell(q.recover, q.recover_m).c_str());
      std::fflush(stdout);
    }
  }
}

// ------------------------------------------------------------------ main

std::vector<std::uint64_t> parse_list(const std::string& list) {
  std::vector<std::uint64_t> out;
  for (std::size_t at = 0; at < list.size();) {
    const auto comma = list.find(',', at);
    out.push_back(std::stoull(list.substr(at, comma - at)));
    at = comma == std::string::npos ? list.size() : comma + 1;
  }
  return out;
}

// Every object under the run's prefix.
std::size_t count_objects(const fs::path& dir) {
  std::size_t n = 0;
  for (const auto& e : sp::detail::list_directory(dir))
    n += e.status.type == sp::detail::FileType::directory ? count_objects(dir / e.name) : 1;
  return n;
}

void remove_run(const Server& s) {
  try {
    const std::size_t before = count_objects(s.run_root);
    sp::detail::remove_tree(s.run_root);
    const std::size_t left = count_objects(s.run_root);
    std::printf("\n%s: %zu objects removed, %zu left\n", s.run_root.string().c_str(), before - left, left);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench: could not empty %s: %s\n", s.run_root.string().c_str(), e.what());
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::uint64_t> sizes{256, 1024};
  std::vector<int> ranks{1, 4};
  std::vector<int> request_ranks{1, 2, 4};
  int repeats = 3;
  std::uint64_t model_mib = 256;
  std::string sections = "1234";
  Server s;
  s.bucket = env("SAVEPOINT_TEST_S3_BUCKET");
  auto usage = [] {
    std::fprintf(stderr, "usage: savepoint_bench_object_store [--sizes 256,1024] [--ranks 1,4] [--repeats 3] "
                         "[--bucket B] [--sections 1234] [--quick] [--user-hook]\n");
    return 2;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--user-hook") {
      g_blob_builtin = false;
      continue;
    }
    if (arg == "--quick") {
      sizes = {64};
      ranks = {1, 2};
      request_ranks = {1, 2};
      repeats = 1;
      model_mib = 64;
      continue;
    }
    if (i + 1 >= argc) return usage();
    const std::string value = argv[++i];
    if (arg == "--sizes") sizes = parse_list(value);
    else if (arg == "--ranks") {
      ranks.clear();
      for (const auto r : parse_list(value)) ranks.push_back(static_cast<int>(r));
    } else if (arg == "--repeats") repeats = std::max(1, std::atoi(value.c_str()));
    else if (arg == "--bucket") s.bucket = value;
    else if (arg == "--sections") sections = value;
    else return usage();
  }
  s.endpoint = env("AWS_ENDPOINT_URL_S3");
  if (s.endpoint.empty()) s.endpoint = env("AWS_ENDPOINT_URL");
  s.region = env("AWS_REGION");
  if (s.region.empty()) s.region = env("AWS_DEFAULT_REGION");
  if (s.region.empty()) s.region = "us-east-1";
  s.key_id = env("AWS_ACCESS_KEY_ID");
  s.secret = env("AWS_SECRET_ACCESS_KEY");
  s.name = env("SAVEPOINT_TEST_S3_SERVER");
  if (s.endpoint.empty() || s.bucket.empty() || s.key_id.empty() || s.secret.empty()) {
    std::fprintf(stderr, "savepoint_bench_object_store: needs AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
                         "AWS_SECRET_ACCESS_KEY and a bucket (SAVEPOINT_TEST_S3_BUCKET or --bucket); e.g. under "
                         "scripts/with-s3-server.sh moto\n");
    return 2;
  }
  std::random_device rd;
  char run[64];
  std::snprintf(run, sizeof run, "savepoint-bench-%d-%06x", static_cast<int>(::getpid()), rd() & 0xffffff);
  s.run_root = fs::path("s3://" + s.bucket) / run;
  const fs::path shm = fs::path("/dev/shm") / (std::string(run) + "-tier");
  sp::set_log_level(sp::LogLevel::warn);
  register_hooks();
  // SAVEPOINT_BENCH_TRACE=1: every request on stderr (method, status, key).
  g_trace = !env("SAVEPOINT_BENCH_TRACE").empty();
  sp::detail::s3_set_request_observer([trace = g_trace](const char* method, const std::string&, const std::string& key, int status) {
    g_methods.add(method, key);
    static const auto start = Clock::now();
    if (trace) std::fprintf(stderr, "request: %8.1f ms %s %d %s\n", seconds_since(start) * 1e3, method, status, key.c_str());
  });

  std::printf("# savepoint object store benchmark\n\nserver: %s at %s, bucket %s, region %s; prefix %s\n"
              "machine: %u cores; curl: %s\n",
              s.name.empty() ? "(SAVEPOINT_TEST_S3_SERVER unset)" : s.name.c_str(), s.endpoint.c_str(), s.bucket.c_str(),
              s.region.c_str(), s.run_root.string().c_str(), std::thread::hardware_concurrency(), [] {
                static char version[128] = "?";
                if (std::FILE* p = ::popen("curl --version 2>/dev/null | head -n 1 | cut -d' ' -f1-2", "r")) {
                  if (std::fgets(version, sizeof version, p)) version[std::strcspn(version, "\n")] = 0;
                  ::pclose(p);
                }
                return version;
              }());
  std::printf("big keys: U8 tensors through %s hooks; small keys: nlohmann::json values (savepoint's \"json\" hook)\n",
              g_blob_builtin ? "built-in-like (TypeHooks::builtin)" : "user (--user-hook)");
  std::printf("sizes %s MiB, ranks %s, %d repeats (median, ± half the spread)\n", [&] {
    static std::string out;
    for (const auto v : sizes) out += (out.empty() ? "" : ",") + std::to_string(v);
    return out.c_str();
  }(), [&] {
    static std::string out;
    for (const auto v : ranks) out += (out.empty() ? "" : ",") + std::to_string(v);
    return out.c_str();
  }(), repeats);
  std::fflush(stdout);
  int status = 0;
  try {
    // The server warmed up (its first requests are slower): one small curl PUT and GET.
    (void)curl_baseline(s, 1, 1);
    if (sections.find('1') != std::string::npos) section_save_load(s, sizes, ranks, repeats);
    if (sections.find('2') != std::string::npos) section_incremental(s, model_mib, repeats);
    if (sections.find('3') != std::string::npos) section_memory_tier(s, model_mib, repeats, shm);
    if (sections.find('4') != std::string::npos) section_requests(s, request_ranks);
    const auto t = sp::detail::object_store_traffic();
    std::printf("\nthe whole run: %llu requests, %llu retries, %.1f MB sent, %.1f MB received\n",
                static_cast<unsigned long long>(t.requests), static_cast<unsigned long long>(t.retries),
                static_cast<double>(t.bytes_sent) / 1e6, static_cast<double>(t.bytes_received) / 1e6);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "savepoint_bench_object_store: %s\n", e.what());
    status = 1;
  }
  sp::detail::s3_set_request_observer(nullptr);
  remove_run(s);
  std::error_code ec;
  fs::remove_all(shm, ec);
  return status;
}
