// Incremental checkpoints against full ones: bytes written and save time of the same training
// state saved both ways, in alternated rounds of one run, and the disk used by keeping 10
// checkpoints. Bytes are counted through the I/O seam (what reached write(2)).
// The incremental saves include what keeps them safe: every linked file is read and hashed
// before it is shared, and every full_save_every-th save writes every part. The default
// rounds are one such period, so the means are amortised over it; the medians are a typical
// save. The verification alone is measured too: reading and hashing the files the newest
// checkpoint shares, per GiB.
//
//   bash scripts/bench.sh incremental --mib 256 [--rounds 40] [--full-every 40] [--dir D] [--part-mib 4] [--csv F]
//
// Workloads (float32 parameters of one module, saved as key "model"):
//   frozen90  20 layers; the first 18 (90% of the bytes) frozen, the rest changed each step
//   adapter   20 frozen layers, each with a rank-4 adapter (~1% of the bytes) that changes
//   full      20 layers, every parameter changed each step
//   embedding a 64-column table of which 1% of the rows change each step, at random rows
// A "step" changes the trainable tensors in place (add_ under NoGradGuard), as an optimizer
// step does. Full saves: CheckpointerOptions() (one file per key). Incremental saves:
// incremental(true) with the given part size; their first save writes everything and is not
// counted (the rounds start from the second).
#include <savepoint/detail/io.hpp>
#include <savepoint/savepoint.hpp>

#include "stats.hpp"
#include "workload.hpp"

#include <sys/stat.h>
#include <torch/torch.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace {

using namespace savepoint::bench;
namespace sp = savepoint;

std::atomic<std::uint64_t> g_written{0};

struct Workload {
  std::string name;
  std::shared_ptr<torch::nn::Module> module = std::make_shared<torch::nn::Module>();
  std::vector<torch::Tensor> trainable;  // changed by each step
  std::int64_t rows_changed = -1;        // embedding: rows changed per step (random), else whole tensors
  std::uint64_t bytes = 0, trainable_bytes = 0;

  void add(const std::string& name_in, torch::Tensor t, bool train) {
    module->register_parameter(name_in, t, /*requires_grad=*/false);
    bytes += static_cast<std::uint64_t>(t.nbytes());
    if (train) {
      trainable.push_back(t);
      trainable_bytes += static_cast<std::uint64_t>(t.nbytes());
    }
  }
  void step() {
    torch::NoGradGuard no_grad;
    for (auto& t : trainable) {
      if (rows_changed < 0) {
        t.add_(1e-3f);
        continue;
      }
      const auto rows = torch::randint(t.size(0), {rows_changed}, torch::kLong);
      t.index_add_(0, rows, torch::full({rows_changed, t.size(1)}, 1e-3f));
    }
  }
};

Workload make_workload(const std::string& name, std::int64_t mib) {
  Workload w;
  w.name = name;
  torch::manual_seed(1);
  const std::int64_t layers = 20;
  const std::int64_t per_layer = mib * (1 << 20) / 4 / layers;  // floats
  const std::int64_t width = static_cast<std::int64_t>(std::sqrt(static_cast<double>(per_layer)));
  if (name == "embedding") {
    const std::int64_t cols = 64, rows = mib * (1 << 20) / 4 / cols;
    w.add("table", torch::randn({rows, cols}), true);
    w.rows_changed = rows / 100;
    return w;
  }
  for (std::int64_t i = 0; i < layers; ++i) {
    const std::string l = "layer" + std::to_string(i);  // names without dots (register_parameter)
    const bool frozen = name == "adapter" || (name == "frozen90" && i < layers * 9 / 10);
    w.add(l + "_weight", torch::randn({width, width}), !frozen);
    w.add(l + "_bias", torch::randn({width}), !frozen);
    if (name == "adapter") {
      w.add(l + "_adapter_a", torch::randn({4, width}), true);
      w.add(l + "_adapter_b", torch::randn({width, 4}), true);
    }
  }
  return w;
}

// Disk blocks used by every file under `dir`, each inode counted once (what `du` reports).
std::uint64_t disk_used(const fs::path& dir) {
  std::set<std::pair<dev_t, ino_t>> seen;
  std::uint64_t total = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    struct stat st {};
    if (::lstat(e.path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (seen.insert({st.st_dev, st.st_ino}).second) total += static_cast<std::uint64_t>(st.st_blocks) * 512;
  }
  return total;
}

struct Result {
  Samples full_bytes, inc_bytes, full_s, inc_s;
};

// Reads and hashes every file of the newest checkpoint in `dir` that another one shares (what
// an incremental save verifies before linking it); returns {seconds, bytes}.
std::pair<double, double> verification(const fs::path& dir) {
  sp::Checkpointer reader(dir, sp::CheckpointerOptions().read_only(true));
  const auto newest = reader.find_checkpoint();
  if (!newest) return {0, 0};
  double bytes = 0;
  const auto t0 = Clock::now();
  for (const auto& f : newest->files) {
    if (fs::hard_link_count(newest->path / f.file) < 2) continue;
    bytes += static_cast<double>(sp::detail::digest_file(newest->path / f.file).bytes);
  }
  return {seconds_since(t0), bytes};
}

Result run(Workload& w, const fs::path& root, int rounds, std::uint64_t part_bytes, std::uint32_t full_every,
           Samples* verify_s_per_gib) {
  fs::remove_all(root);
  sp::Checkpointer full(root / "full");
  sp::Checkpointer inc(root / "incremental",
                       sp::CheckpointerOptions().incremental(true).part_bytes(part_bytes).full_save_every(full_every));
  full.add_recoverable("model", w.module);
  inc.add_recoverable("model", w.module);
  const auto keep = sp::KeepOptions().num_to_keep(2).verbosity(sp::LogLevel::debug);
  inc.save_and_keep_only({}, keep);  // the first incremental save writes everything
  Result r;
  for (int i = 0; i < rounds; ++i) {
    w.step();
    for (int which = 0; which < 2; ++which) {  // alternate which goes first
      const bool incremental = (which + i) % 2 == 1;
      ::sync();  // untimed: earlier deletions' trims not paid by this save
      g_written = 0;
      const auto t0 = Clock::now();
      (incremental ? inc : full).save_checkpoint({});
      const double s = seconds_since(t0);
      (incremental ? r.inc_s : r.full_s).add(s);
      (incremental ? r.inc_bytes : r.full_bytes).add(static_cast<double>(g_written.load()));
      (incremental ? inc : full).delete_checkpoints(keep);  // untimed retention
      if (incremental && verify_s_per_gib) {
        const auto [s_verify, bytes] = verification(root / "incremental");
        if (bytes > 0) verify_s_per_gib->add(s_verify / bytes * (1 << 30));
      }
    }
  }
  return r;
}

double mean(const Samples& s) {
  double sum = 0;
  for (const double v : s.values()) sum += v;
  return s.size() > 0 ? sum / static_cast<double>(s.size()) : 0;
}

std::string mb(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MB", bytes / 1e6);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  std::int64_t mib = 256;
  int rounds = 40;
  std::uint32_t full_every = 40;  // CheckpointerOptions' default
  double part_mib = 4;
  fs::path dir = fs::temp_directory_path() / "savepoint-bench-incremental";
  fs::path csv_path;
  std::string only;  // one workload, each round printed
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string arg = argv[i];
    if (arg == "--mib") mib = std::atoll(argv[i + 1]);
    else if (arg == "--rounds") rounds = std::max(1, std::atoi(argv[i + 1]));
    else if (arg == "--dir") dir = argv[i + 1];
    else if (arg == "--full-every") full_every = static_cast<std::uint32_t>(std::atoi(argv[i + 1]));
    else if (arg == "--part-mib") part_mib = std::atof(argv[i + 1]);
    else if (arg == "--csv") csv_path = argv[i + 1];
    else if (arg == "--only") only = argv[i + 1];
    else {
      std::fprintf(stderr, "usage: savepoint_bench_incremental [--mib 256] [--rounds 40] [--full-every 40] [--dir D] [--part-mib 4] [--csv F] "
                           "[--only WORKLOAD]\n");
      return 2;
    }
  }
  RoundsCsv csv = csv_path.empty() ? RoundsCsv() : RoundsCsv(csv_path);
  sp::detail::set_io_recorder([](const sp::detail::IoRecord& r) {
    if (r.kind == sp::detail::IoRecord::Kind::append || r.kind == sp::detail::IoRecord::Kind::contents)
      g_written += r.data.size();
  });
  const auto part_bytes = static_cast<std::uint64_t>(part_mib * (1 << 20));
  std::printf("state %lld MiB per workload, %d rounds, parts of %.2f MiB, full_save_every %u, directory %s\n",
              static_cast<long long>(mib), rounds, part_mib, full_every, dir.string().c_str());
  std::printf("medians (spread), then means over the rounds (the full saves amortised):\n");
  std::printf("%-10s %9s %12s %12s %16s %10s %10s %16s %10s | %12s %14s %10s %10s %14s\n", "workload", "changed",
              "full writes", "incr. writes", "bytes full/incr", "full save", "incr. save", "time incr/full",
              "best/best", "mean incr.", "mean full/incr", "mean full", "mean incr.", "mean time i/f");
  for (const std::string name : {"frozen90", "adapter", "full", "embedding"}) {
    if (!only.empty() && name != only) continue;
    Workload w = make_workload(name, mib);
    Samples verify_s_per_gib;
    const Result r = run(w, dir / name, rounds, part_bytes, full_every, name == "frozen90" ? &verify_s_per_gib : nullptr);
    if (!only.empty())
      for (std::size_t i = 0; i < r.full_s.size(); ++i)
        std::printf("  round %zu: full %.0f ms, incremental %.0f ms\n", i, 1e3 * r.full_s.values()[i], 1e3 * r.inc_s.values()[i]);
    csv.record("incremental-" + name, mib, "full_bytes", r.full_bytes);
    csv.record("incremental-" + name, mib, "incremental_bytes", r.inc_bytes);
    csv.record("incremental-" + name, mib, "full_s", r.full_s);
    csv.record("incremental-" + name, mib, "incremental_s", r.inc_s);
    char changed[32];
    if (w.rows_changed >= 0) std::snprintf(changed, sizeof changed, "1%% rows");
    else std::snprintf(changed, sizeof changed, "%.1f%%", 100.0 * static_cast<double>(w.trainable_bytes) / static_cast<double>(w.bytes));
    // Medians, and the fastest round of each (this VM's disk has slow rounds of either kind).
    std::printf("%-10s %9s %12s %12s %16s %8.0f ms %8.0f ms %16s %9.2fx\n", name.c_str(), changed,
                mb(r.full_bytes.median()).c_str(), mb(r.inc_bytes.median()).c_str(),
                ratio_cell(r.full_bytes, r.inc_bytes).c_str(), 1e3 * r.full_s.median(), 1e3 * r.inc_s.median(),
                ratio_cell(r.inc_s, r.full_s).c_str(), r.inc_s.min() / r.full_s.min());
    std::printf("%-10s %9s %12s %12s %16s %10s %10s %16s %10s | %12s %13.2fx %8.0f ms %8.0f ms %13.2fx\n", "", "", "",
                "", "", "", "", "", "", mb(mean(r.inc_bytes)).c_str(), mean(r.full_bytes) / mean(r.inc_bytes),
                1e3 * mean(r.full_s), 1e3 * mean(r.inc_s), mean(r.inc_s) / mean(r.full_s));
    if (verify_s_per_gib.size() > 0)
      std::printf("  verification of the shared files before linking them: %.0f ms per GiB (median of %zu, spread "
                  "%.0f%%)\n",
                  1e3 * verify_s_per_gib.median(), verify_s_per_gib.size(), 100 * verify_s_per_gib.spread());
  }
  // Disk used by keeping 10 checkpoints of the 90%-frozen model, each way.
  if (only.empty()) {
    Workload w = make_workload("frozen90", mib);
    const fs::path root = dir / "keep10";
    fs::remove_all(root);
    sp::Checkpointer full(root / "full");
    sp::Checkpointer inc(root / "incremental",
                         sp::CheckpointerOptions().incremental(true).part_bytes(part_bytes).full_save_every(full_every));
    full.add_recoverable("model", w.module);
    inc.add_recoverable("model", w.module);
    for (int i = 0; i < 10; ++i) {
      w.step();
      full.save_checkpoint({});
      inc.save_checkpoint({});
    }
    const double f = static_cast<double>(disk_used(root / "full")), n = static_cast<double>(disk_used(root / "incremental"));
    std::printf("10 checkpoints of frozen90 on disk: full %s, incremental %s: %.2fx (incremental/full)\n", mb(f).c_str(),
                mb(n).c_str(), n / f);
  }
  sp::detail::set_io_recorder(nullptr);
  fs::remove_all(dir);
  return 0;
}
