// Incremental checkpoints (CheckpointerOptions::incremental): what did not change is a hard
// link to the previous checkpoint's file, counted through the I/O seam; every checkpoint still
// loads bit-exactly on its own, survives the deletion of the one it shares with, and reports
// damage to a shared file.
#include <savepoint/bundle.hpp>
#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/format/pytorch.hpp>
#include <savepoint/savepoint.hpp>

#include "support.hpp"
#include "thread_group.hpp"
#include "torch_support.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <set>

#include "catch.hpp"

namespace fs = std::filesystem;

namespace incremental_test {

using savepoint::Checkpoint;
using savepoint::Checkpointer;
using savepoint::CheckpointerOptions;

// A frozen backbone (most of the bytes) and a trained head.
struct Model : torch::nn::Module {
  Model() {
    backbone1 = register_module("backbone1", torch::nn::Linear(256, 256));
    backbone2 = register_module("backbone2", torch::nn::Linear(256, 256));
    head = register_module("head", torch::nn::Linear(256, 4));
  }
  torch::Tensor forward(const torch::Tensor& x) { return head(torch::relu(backbone2(torch::relu(backbone1(x))))); }
  torch::nn::Linear backbone1{nullptr}, backbone2{nullptr}, head{nullptr};
};

// Bytes the seam saw appended to tensor files, and the hard links it made.
struct WriteCounter {
  std::mutex mutex;
  std::uint64_t tensor_bytes = 0;
  int links = 0;
  WriteCounter() {
    savepoint::detail::set_io_recorder([this](const savepoint::detail::IoRecord& r) {
      std::lock_guard<std::mutex> lock(mutex);
      using K = savepoint::detail::IoRecord::Kind;
      if (r.kind == K::append && r.path.extension() == ".safetensors") tensor_bytes += r.data.size();
      if (r.kind == K::hard_link) ++links;
    });
  }
  ~WriteCounter() { savepoint::detail::set_io_recorder(nullptr); }
  void reset() {
    std::lock_guard<std::mutex> lock(mutex);
    tensor_bytes = 0;
    links = 0;
  }
};

std::uint64_t link_count(const fs::path& file) {
  struct stat st {};
  REQUIRE(::stat(file.c_str(), &st) == 0);
  return static_cast<std::uint64_t>(st.st_nlink);
}

std::map<std::string, torch::Tensor> state_of(torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : m.named_parameters()) out[p.key()] = p.value().detach().clone();
  return out;
}

bool equals(torch::nn::Module& m, const std::map<std::string, torch::Tensor>& state) {
  for (const auto& p : m.named_parameters())
    if (!torch::equal(p.value(), state.at(p.key()))) return false;
  return true;
}

void train_head(Model& model, torch::optim::SGD& opt, int seed) {
  torch::manual_seed(seed);
  opt.zero_grad();
  torch::mse_loss(model.forward(torch::randn({8, 256})), torch::randn({8, 4})).backward();
  opt.step();
}

std::uint64_t bytes_of(torch::nn::Module& m) {
  std::uint64_t n = 0;
  for (const auto& p : m.parameters()) n += static_cast<std::uint64_t>(p.nbytes());
  return n;
}

TEST_CASE("incremental: with a frozen backbone the second checkpoint writes only the head's bytes, both load "
          "bit-exactly and the second survives deleting the first",
          "[incremental]") {
  test::TempDir tmp;
  torch::manual_seed(1);
  auto model = std::make_shared<Model>();
  for (auto& p : model->backbone1->parameters()) p.set_requires_grad(false);
  for (auto& p : model->backbone2->parameters()) p.set_requires_grad(false);
  torch::optim::SGD opt(model->head->parameters(), 0.1);
  Checkpointer ckpt(tmp.path(), CheckpointerOptions().incremental(true).full_save_every(0).part_bytes(64 << 10));
  ckpt.add_recoverable("model", model);

  WriteCounter counter;
  train_head(*model, opt, 1);
  const auto first_state = state_of(*model);
  const Checkpoint first = ckpt.save_checkpoint({{"step", 1}});
  const std::uint64_t first_bytes = counter.tensor_bytes;
  CHECK(counter.links == 0);
  CHECK(first_bytes >= bytes_of(*model));

  counter.reset();
  train_head(*model, opt, 2);
  const auto second_state = state_of(*model);
  REQUIRE_FALSE(equals(*model, first_state));
  const Checkpoint second = ckpt.save_checkpoint({{"step", 2}});
  const std::uint64_t head_bytes = bytes_of(*model->head);
  INFO("second save wrote " << counter.tensor_bytes << " bytes of tensor files; the head holds " << head_bytes);
  CHECK(counter.links > 0);
  CHECK(counter.tensor_bytes >= head_bytes);
  CHECK(counter.tensor_bytes < head_bytes + 4096);  // the head's part and its header, nothing of the backbone
  CHECK(first_bytes > 40 * counter.tensor_bytes);

  // The on-disk layout: parts, format 2, the backbone's parts shared (two names each).
  const Checkpoint on_disk = savepoint::detail::read_checkpoint(second.path);
  int shared = 0;
  for (const auto& f : on_disk.files) {
    CHECK(f.key == "model");
    CHECK(f.part >= 0);
    if (link_count(second.path / f.file) == 2) ++shared;
  }
  CHECK(shared >= 4);
  CHECK(nlohmann::json::parse(test::read_file(second.path / "meta.json")).at("format_version") == 2);

  // Each loads its own save's values.
  auto fresh = std::make_shared<Model>();
  Checkpointer reader(tmp.path(), CheckpointerOptions().read_only(true));
  reader.add_recoverable("model", fresh);
  reader.load_checkpoint(first);
  CHECK(equals(*fresh, first_state));
  reader.load_checkpoint(second);
  CHECK(equals(*fresh, second_state));

  // Deleting the first leaves the second whole: verified, loaded.
  ckpt.delete_checkpoint(first);
  REQUIRE_FALSE(fs::exists(first.path));
  CHECK(ckpt.verify(second).empty());
  auto again = std::make_shared<Model>();
  Checkpointer after(tmp.path(), CheckpointerOptions().read_only(true));
  after.add_recoverable("model", again);
  REQUIRE(after.recover_if_possible());
  CHECK(equals(*again, second_state));
  for (const auto& f : on_disk.files) CHECK(link_count(second.path / f.file) == 1);
}

TEST_CASE("incremental: an embedding table with 1% of its rows changed writes about the segments of those rows",
          "[incremental]") {
  test::TempDir tmp;
  torch::manual_seed(3);
  auto table = torch::randn({20000, 64});  // 5 MB: 79 segments of 256 rows at 64 KiB
  Checkpointer ckpt(tmp.path(), CheckpointerOptions().incremental(true).full_save_every(0).part_bytes(64 << 10));
  ckpt.add_recoverable("embedding", table);
  WriteCounter counter;
  ckpt.save_checkpoint({});
  const std::uint64_t full = counter.tensor_bytes;
  CHECK(full >= 20000u * 64 * 4);

  counter.reset();
  {
    torch::NoGradGuard no_grad;
    table.narrow(0, 5000, 200).add_(1.0f);  // 1% of the rows, as a step's updates would (one region)
  }
  const Checkpoint second = ckpt.save_checkpoint({});
  INFO("full " << full << " bytes, incremental " << counter.tensor_bytes);
  CHECK(counter.tensor_bytes <= 2 * (64u << 10) + 4096);  // the segments rows 5000..5199 fall in
  CHECK(counter.links >= 77);

  torch::Tensor loaded = torch::zeros({20000, 64});
  Checkpointer reader(tmp.path(), CheckpointerOptions().read_only(true));
  reader.add_recoverable("embedding", loaded);
  reader.load_checkpoint(second);
  CHECK(torch::equal(loaded, table));
}

TEST_CASE("incremental: a change through data_ptr that bumps no version counter is still written",
          "[incremental]") {
  test::TempDir tmp;
  torch::manual_seed(4);
  auto weights = torch::randn({4096, 16});
  Checkpointer ckpt(tmp.path(), CheckpointerOptions().incremental(true).full_save_every(0).part_bytes(16 << 10));
  ckpt.add_recoverable("w", weights);
  ckpt.save_checkpoint({});
  const auto version = weights._version();
  weights.data_ptr<float>()[100 * 16] += 1.0f;  // behind LibTorch's back
  REQUIRE(weights._version() == version);
  WriteCounter counter;
  const Checkpoint second = ckpt.save_checkpoint({});
  CHECK(counter.tensor_bytes > 0);                 // the segment holding row 100, found by its checksum
  CHECK(counter.tensor_bytes <= (16u << 10) + 4096);  // and only it
  torch::Tensor loaded = torch::zeros({4096, 16});
  Checkpointer reader(tmp.path(), CheckpointerOptions().read_only(true));
  reader.add_recoverable("w", loaded);
  reader.load_checkpoint(second);
  CHECK(torch::equal(loaded, weights));
}

TEST_CASE("incremental: a damaged shared part is reported by every checkpoint that holds it, and recovery falls "
          "back to one that is intact",
          "[incremental]") {
  test::TempDir tmp;
  auto w = torch::arange(0, 64 * 1024, torch::kFloat).reshape({1024, 64});
  Checkpointer ckpt(tmp.path(), CheckpointerOptions().incremental(true).full_save_every(0).part_bytes(16 << 10));
  ckpt.add_recoverable("w", w);
  const Checkpoint oldest = ckpt.save_checkpoint({{"n", 1}});
  {
    torch::NoGradGuard no_grad;
    w.add_(1.0f);  // every part changes: the next two share nothing with the oldest
  }
  const Checkpoint middle = ckpt.save_checkpoint({{"n", 2}});
  const Checkpoint newest = ckpt.save_checkpoint({{"n", 3}});
  const auto part = savepoint::detail::read_checkpoint(newest.path).files.at(2).file;
  REQUIRE(link_count(newest.path / part) == 2);
  test::flip_byte(newest.path / part, -10);  // in place: both names see it

  for (const auto* c : {&middle, &newest}) {
    const auto problems = ckpt.verify(*c);
    REQUIRE(problems.size() == 1);
    CHECK(problems[0].file.filename() == part);
    CHECK(problems[0].reason.find("shared with 1 other checkpoint") != std::string::npos);
  }
  CHECK(ckpt.verify(oldest).empty());

  auto loaded = torch::zeros({1024, 64});
  Checkpointer reader(tmp.path(), CheckpointerOptions().read_only(true));
  reader.add_recoverable("w", loaded);
  test::CaptureLog log;
  const auto recovered = reader.recover_if_possible();
  REQUIRE(recovered);
  CHECK(recovered->sequence == oldest.sequence);
  CHECK(torch::equal(loaded, torch::arange(0, 64 * 1024, torch::kFloat).reshape({1024, 64})));
  CHECK(log.contains(newest.name()));
  CHECK(log.contains(middle.name()));
}

TEST_CASE("incremental: where a hard link fails the part is written instead, and that is said once",
          "[incremental]") {
  test::TempDir tmp;
  auto w = torch::randn({2048, 16});
  Checkpointer ckpt(tmp.path(), CheckpointerOptions().incremental(true).full_save_every(0).part_bytes(16 << 10));
  ckpt.add_recoverable("w", w);
  ckpt.save_checkpoint({});
  std::map<std::string, int> opens;
  std::mutex m;
  test::CaptureLog log;
  WriteCounter counter;
  Checkpoint second;
  {
    test::FaultGuard faults([&](savepoint::detail::IoOp op, const fs::path& p) {
      std::lock_guard<std::mutex> lock(m);
      // The link's check of the new name comes first: it fails; the write that follows opens.
      if (op == savepoint::detail::IoOp::open && p.extension() == ".safetensors" && opens[p.string()]++ == 0)
        return savepoint::detail::Fault{EXDEV};
      return savepoint::detail::Fault{};
    });
    second = ckpt.save_checkpoint({});
  }
  CHECK(counter.links == 0);
  CHECK(counter.tensor_bytes >= 2048u * 16 * 4);
  int said = 0;
  for (const auto& line : log.lines) said += line.find("cannot hard-link") != std::string::npos;
  CHECK(said == 1);
  for (const auto& f : savepoint::detail::read_checkpoint(second.path).files) CHECK(link_count(second.path / f.file) == 1);
  torch::Tensor loaded = torch::zeros({2048, 16});
  Checkpointer reader(tmp.path(), CheckpointerOptions().read_only(true));
  reader.add_recoverable("w", loaded);
  reader.load_checkpoint(second);
  CHECK(torch::equal(loaded, w));
}

TEST_CASE("incremental: checkpoints without parts stay format 1, and the tools read a key split into parts whole",
          "[incremental]") {
  test::TempDir tmp;
  auto w = torch::randn({300, 10});
  {
    Checkpointer plain(tmp.path() / "plain");
    plain.add_recoverable("w", w);
    const auto c = plain.save_checkpoint({});
    CHECK(nlohmann::json::parse(test::read_file(c.path / "meta.json")).at("format_version") == 1);
  }
  Checkpointer ckpt(tmp.path() / "inc", CheckpointerOptions().incremental(true).full_save_every(0).part_bytes(1000));
  ckpt.add_recoverable("w", w);
  const Checkpoint c = ckpt.save_checkpoint({});
  CHECK(c.files.size() == 12);  // 25 rows (1000 bytes) per segment
  // load_tensors, the PyTorch export and the transfer read the whole key.
  const auto file = savepoint::load_tensors(c, "w");
  REQUIRE(file.tensors.size() == 1);
  CHECK(torch::equal(file.tensors[0].second, w));
  savepoint::pytorch::export_key(c, "w", tmp.path() / "w.pt");
  CHECK(fs::file_size(tmp.path() / "w.pt") > 300u * 10 * 4);
  // The bytes a load hook sees are exactly those of the unsplit file.
  Checkpointer plain(tmp.path() / "plain");
  const auto plain_bytes = test::read_file(plain.list_checkpoints().at(0).path / "w.safetensors");
  const auto assembled = savepoint::detail::open_key_verified(c, *c.file("w"));
  CHECK(std::string(assembled->bytes()) == plain_bytes);
}

TEST_CASE("incremental: ranks of a group each link their own unchanged parts (replicated and per-rank keys)",
          "[incremental]") {
  test::TempDir tmp;
  test::ThreadWorld world(2);
  const auto out = world.run([&](int rank, std::shared_ptr<savepoint::ProcessGroup> group) -> std::string {
    auto shared = torch::arange(0, 8192, torch::kFloat).reshape({512, 16});  // replicated, never changes
    auto own = torch::full({512, 16}, static_cast<float>(rank));            // per rank; rank 0 changes it
    Checkpointer ckpt(tmp.path(), CheckpointerOptions().process_group(group).incremental(true).full_save_every(0).part_bytes(8 << 10));
    ckpt.add_recoverable("shared", shared);
    ckpt.add_recoverable("own", own, savepoint::per_rank());
    ckpt.save_checkpoint({});
    if (rank == 0) own.add_(1.0f);
    const Checkpoint second = ckpt.save_checkpoint({});
    // Report the link counts of this rank's own parts, and the replicated key's.
    std::string report;
    for (const auto& f : savepoint::detail::read_checkpoint(second.path).files) {
      if (f.rank >= 0 && f.rank != rank) continue;
      struct stat st {};
      if (::stat((second.path / f.file).c_str(), &st) != 0) return "missing " + f.file;
      report += f.key + ":" + std::to_string(st.st_nlink) + " ";
    }
    auto loaded_shared = torch::zeros({512, 16});
    auto loaded_own = torch::zeros({512, 16});
    Checkpointer reader(tmp.path(), CheckpointerOptions().process_group(group).read_only(true));
    reader.add_recoverable("shared", loaded_shared);
    reader.add_recoverable("own", loaded_own, savepoint::per_rank());
    reader.load_checkpoint(second);
    if (!torch::equal(loaded_shared, shared) || !torch::equal(loaded_own, own)) return "loaded other values";
    return report;
  });
  for (int r = 0; r < 2; ++r) INFO("rank " << r << ": " << out[r].message());
  REQUIRE(out[0].value);
  REQUIRE(out[1].value);
  // 4 parts per key at 8 KiB: the replicated key's parts all shared; rank 0's own parts
  // written again, rank 1's shared.
  CHECK(*out[0].value == "shared:2 shared:2 shared:2 shared:2 own:1 own:1 own:1 own:1 ");
  CHECK(*out[1].value == "shared:2 shared:2 shared:2 shared:2 own:2 own:2 own:2 own:2 ");
}

}  // namespace incremental_test

namespace incremental_test {

// The async tests' checkpoint, loaded by a fresh reader: the frozen and trained keys' values.
void check_loads(const fs::path& root, const Checkpoint& c, const torch::Tensor& frozen, const torch::Tensor& trained) {
  auto f = torch::zeros_like(frozen), t = torch::zeros_like(trained);
  Checkpointer reader(root, CheckpointerOptions().read_only(true));
  reader.add_recoverable("frozen", f);
  reader.add_recoverable("trained", t);
  reader.load_checkpoint(c);
  CHECK(torch::equal(f, frozen));
  CHECK(torch::equal(t, trained));
}

TEST_CASE("incremental: async saves (snapshot at the call and overlapped) link what did not change",
          "[incremental]") {
  for (const auto snapshot : {savepoint::AsyncSnapshot::at_call, savepoint::AsyncSnapshot::overlapped}) {
    test::TempDir tmp;
    torch::manual_seed(5);
    auto frozen = torch::randn({1024, 32});
    auto trained = torch::randn({64, 32});
    Checkpointer ckpt(tmp.path(),
                      CheckpointerOptions().incremental(true).full_save_every(0).part_bytes(16 << 10).async_snapshot(snapshot));
    ckpt.add_recoverable("frozen", frozen);
    ckpt.add_recoverable("trained", trained);
    ckpt.save_checkpoint_async({});
    REQUIRE(ckpt.wait());
    WriteCounter counter;
    {
      torch::NoGradGuard no_grad;
      trained.add_(1.0f);
    }
    const auto expected = trained.clone();
    ckpt.save_checkpoint_async({});
    ckpt.before_update();
    {
      torch::NoGradGuard no_grad;
      trained.add_(1.0f);  // after the guard: not in the checkpoint
    }
    const auto second = ckpt.wait();
    REQUIRE(second);
    CHECK(counter.links == 8);  // the frozen key's 8 segments
    CHECK(counter.tensor_bytes < 64u * 32 * 4 + 4096);
    check_loads(tmp.path(), *second, frozen, expected);
  }
}

TEST_CASE("incremental: a sharded key's file of each rank is linked whole when unchanged and still reshards",
          "[incremental]") {
  test::TempDir tmp;
  {
    test::ThreadWorld world(2);
    const auto out = world.run([&](int rank, std::shared_ptr<savepoint::ProcessGroup> group) -> std::string {
      const auto rows = savepoint::even_rows(40, rank, 2);
      auto local = torch::arange(rows.offset * 8, (rows.offset + rows.rows) * 8, torch::kFloat).reshape({rows.rows, 8});
      savepoint::ShardedTensors shards;
      shards.add("table", local, 40, rows.offset);
      Checkpointer ckpt(tmp.path(), CheckpointerOptions().process_group(group).incremental(true).full_save_every(0));
      ckpt.add_recoverable("table", shards, savepoint::sharded());
      ckpt.save_checkpoint({});
      if (rank == 1) local.add_(1000.0f);  // rank 1's rows change, rank 0's do not
      const Checkpoint second = ckpt.save_checkpoint({});
      struct stat st {};
      const std::string own = "table.rank" + std::to_string(rank) + ".safetensors";
      if (::stat((second.path / own).c_str(), &st) != 0) return "missing " + own;
      return std::to_string(st.st_nlink);
    });
    REQUIRE(out[0].value);
    REQUIRE(out[1].value);
    CHECK(*out[0].value == "2");
    CHECK(*out[1].value == "1");
  }
  // One process reads every row back.
  auto whole = torch::zeros({40, 8});
  savepoint::ShardedTensors shards;
  shards.add("table", whole, 40, 0);
  Checkpointer reader(tmp.path(), CheckpointerOptions().read_only(true));
  reader.add_recoverable("table", shards, savepoint::sharded());
  REQUIRE(reader.recover_if_possible());
  auto expected = torch::arange(0, 320, torch::kFloat).reshape({40, 8});
  expected.narrow(0, 20, 20).add_(1000.0f);
  CHECK(torch::equal(whole, expected));
}

}  // namespace incremental_test

namespace incremental_test {

// A checkpoint directory whose key "w" is the given part files (written with save_tensors),
// meta.json made for them: what a damaged or hand-made format 2 checkpoint looks like.
static Checkpoint hand_made_parts(const fs::path& dir,
                                  const std::vector<std::pair<savepoint::NamedTensors, std::map<std::string, std::string>>>& parts) {
  fs::create_directories(dir);
  Checkpoint c;
  c.path = dir;
  c.sequence = 1;
  c.meta = {{"unixtime", 1.0}, {"end_of_epoch", true}};
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const std::string file = "w.part0000" + std::to_string(i) + ".safetensors";
    savepoint::save_tensors(dir / file, parts[i].first, parts[i].second);
    const auto digest = savepoint::detail::digest_bytes(test::read_file(dir / file));
    savepoint::FileRecord rec{"w", file, "torch.Tensor", digest.bytes, digest.xxh3, -1};
    rec.part = static_cast<int>(i);
    c.files.push_back(rec);
  }
  test::write_text(dir / "meta.json", savepoint::detail::serialize_meta(c));
  return savepoint::detail::read_checkpoint(dir);
}

TEST_CASE("incremental: parts that do not fit together are a damaged checkpoint naming the part file, never a crash",
          "[incremental]") {
  test::TempDir tmp;
  const auto rows = torch::arange(0, 40 * 3, torch::kFloat).reshape({40, 3});
  using Meta = std::map<std::string, std::string>;
  // Whole: three segments, then a tensor of its own.
  const auto whole = hand_made_parts(tmp.path() / "ok", {
      {{{"t", rows.narrow(0, 0, 16)}}, Meta{{"savepoint.part", "0"}, {"savepoint.segment", "0/40"}, {"k", "v"}}},
      {{{"t", rows.narrow(0, 16, 24)}}, Meta{{"savepoint.part", "1"}, {"savepoint.segment", "16/40"}}},
      {{{"b", torch::ones({2})}}, Meta{{"savepoint.part", "2"}}}});
  const auto file = savepoint::load_tensors(whole, "w");
  REQUIRE(file.tensors.size() == 2);
  CHECK(file.metadata == Meta{{"k", "v"}});
  for (const auto& [name, t] : file.tensors) CHECK(torch::equal(t, name == "t" ? rows : torch::ones({2})));

  const auto refused = [&](const std::string& name, const std::vector<std::pair<savepoint::NamedTensors, Meta>>& parts,
                           const std::string& part_file) {
    const auto c = hand_made_parts(tmp.path() / name, parts);
    INFO(name);
    CHECK_THROWS_AS(savepoint::load_tensors(c, "w"), savepoint::CorruptCheckpointError);
    CHECK_THROWS_WITH(savepoint::load_tensors(c, "w"), Catch::Contains(part_file) && Catch::Contains("'w'"));
  };
  // The first part continues a tensor nobody started (rows 8 onwards).
  refused("starts-late", {{{{"t", rows.narrow(0, 8, 32)}}, Meta{{"savepoint.part", "0"}, {"savepoint.segment", "8/40"}}}},
          "w.part00000.safetensors");
  // A gap of rows between two segments.
  refused("gap", {{{{"t", rows.narrow(0, 0, 16)}}, Meta{{"savepoint.part", "0"}, {"savepoint.segment", "0/40"}}},
                  {{{"t", rows.narrow(0, 24, 16)}}, Meta{{"savepoint.part", "1"}, {"savepoint.segment", "24/40"}}}},
          "w.part00001.safetensors");
  // The last segment lost: the tensor ends early.
  refused("short", {{{{"t", rows.narrow(0, 0, 16)}}, Meta{{"savepoint.part", "0"}, {"savepoint.segment", "0/40"}}}},
          "w.part00000.safetensors");
  // A part that says it is another part.
  refused("misnumbered", {{{{"b", torch::ones({2})}}, Meta{{"savepoint.part", "1"}}}}, "w.part00000.safetensors");
}

}  // namespace incremental_test

// ---------------------------------------------------------------- nothing damaged is shared
namespace incremental_test {

std::uint64_t inode_of(const fs::path& file) {
  struct stat st {};
  REQUIRE(::stat(file.c_str(), &st) == 0);
  return static_cast<std::uint64_t>(st.st_ino);
}

// A frozen-backbone model, its head trained between saves.
struct FrozenRun {
  std::shared_ptr<Model> model = std::make_shared<Model>();
  torch::optim::SGD opt;
  FrozenRun() : opt(model->head->parameters(), 0.1) {
    for (auto& p : model->backbone1->parameters()) p.set_requires_grad(false);
    for (auto& p : model->backbone2->parameters()) p.set_requires_grad(false);
  }
};

TEST_CASE("incremental: a byte flipped in a shared part is never linked again: the next save writes it from "
          "memory, names the file and every checkpoint holding it, and a fresh recovery is bit-exact",
          "[incremental]") {
  test::TempDir tmp;
  FrozenRun run;
  Checkpointer ckpt(tmp.path(), CheckpointerOptions().incremental(true).part_bytes(64 << 10));
  ckpt.add_recoverable("model", run.model);
  std::vector<Checkpoint> saved;
  for (int step = 1; step <= 6; ++step) {
    train_head(*run.model, run.opt, step);
    saved.push_back(ckpt.save_checkpoint({{"step", step}}));
  }
  const Checkpoint newest = saved.back();
  std::string part;  // a backbone part of the newest, shared with earlier checkpoints
  for (const auto& f : savepoint::detail::read_checkpoint(newest.path).files)
    if (part.empty() && link_count(newest.path / f.file) >= 3) part = f.file;
  REQUIRE_FALSE(part.empty());
  const std::uint64_t damaged = inode_of(newest.path / part);
  std::vector<std::string> holders;
  for (const auto& c : saved)
    if (fs::exists(c.path / part) && inode_of(c.path / part) == damaged) holders.push_back(c.name());
  REQUIRE(holders.size() >= 3);
  test::flip_byte(newest.path / part, -10);  // in place: a disk error or a stray write
  REQUIRE(ckpt.verify(newest).size() == 1);  // found by verify first: the next save still rewrites it

  train_head(*run.model, run.opt, 7);
  const auto state = state_of(*run.model);
  test::CaptureLog log;
  WriteCounter counter;
  const Checkpoint repaired = ckpt.save_checkpoint({{"step", 7}});
  CHECK(counter.links > 0);  // the intact parts are still shared
  CHECK(inode_of(repaired.path / part) != damaged);
  CHECK(link_count(repaired.path / part) == 1);
  CHECK(ckpt.verify(repaired).empty());
  for (const auto& c : saved)  // the damaged file is where it was: nothing shared is changed
    if (std::find(holders.begin(), holders.end(), c.name()) != holders.end()) CHECK(ckpt.verify(c).size() == 1);
  std::string warning;
  for (const auto& line : log.lines)
    if (line.find("does not match its record") != std::string::npos) warning = line;
  INFO(warning);
  CHECK(warning.find(part) != std::string::npos);
  CHECK(warning.find("held by " + std::to_string(holders.size()) + " checkpoint(s)") != std::string::npos);
  for (const auto& name : holders) CHECK(warning.find(name) != std::string::npos);

  // A fresh Checkpointer (a restarted job) recovers the new checkpoint, bit-exactly.
  auto fresh = std::make_shared<Model>();
  Checkpointer reader(tmp.path(), CheckpointerOptions().read_only(true));
  reader.add_recoverable("model", fresh);
  const auto recovered = reader.recover_if_possible();
  REQUIRE(recovered);
  CHECK(recovered->sequence == repaired.sequence);
  CHECK(equals(*fresh, state));

  // The next save shares the rewritten file, not the damaged one.
  train_head(*run.model, run.opt, 8);
  const Checkpoint next = ckpt.save_checkpoint({{"step", 8}});
  CHECK(inode_of(next.path / part) == inode_of(repaired.path / part));
}

TEST_CASE("incremental: an async save whose reference part is damaged writes it from memory (snapshot at the call "
          "and overlapped)",
          "[incremental]") {
  for (const auto snapshot : {savepoint::AsyncSnapshot::at_call, savepoint::AsyncSnapshot::overlapped}) {
    test::TempDir tmp;
    torch::manual_seed(6);
    auto frozen = torch::randn({1024, 32});
    auto trained = torch::randn({64, 32});
    Checkpointer ckpt(tmp.path(), CheckpointerOptions().incremental(true).full_save_every(0).part_bytes(16 << 10)
                                      .async_snapshot(snapshot));
    ckpt.add_recoverable("frozen", frozen);
    ckpt.add_recoverable("trained", trained);
    ckpt.save_checkpoint_async({});
    const auto first = ckpt.wait();
    REQUIRE(first);
    test::flip_byte(first->path / "frozen.part00003.safetensors", -5);
    {
      torch::NoGradGuard no_grad;
      trained.add_(1.0f);
    }
    const auto expected = trained.clone();
    test::CaptureLog log;
    ckpt.save_checkpoint_async({});
    ckpt.before_update();
    {
      torch::NoGradGuard no_grad;
      trained.add_(1.0f);
    }
    const auto second = ckpt.wait();
    REQUIRE(second);
    CHECK(log.contains("frozen.part00003.safetensors' does not match its record"));
    CHECK(link_count(second->path / "frozen.part00003.safetensors") == 1);
    CHECK(link_count(second->path / "frozen.part00002.safetensors") == 2);
    CHECK(ckpt.verify(*second).empty());
    check_loads(tmp.path(), *second, frozen, expected);
  }
}

// ---------------------------------------------------------------- what one damaged file can destroy
TEST_CASE("incremental: with keep_latest(2) and full_save_every(3), whichever file is damaged an intact kept "
          "checkpoint recovers exactly and retention keeps the one the bound relies on",
          "[incremental]") {
  test::TempDir tmp;
  FrozenRun run;
  Checkpointer ckpt(tmp.path(), CheckpointerOptions().incremental(true).part_bytes(64 << 10).full_save_every(3));
  ckpt.add_recoverable("model", run.model);
  std::map<std::uint64_t, std::map<std::string, torch::Tensor>> states;
  std::vector<int> full;
  WriteCounter counter;
  test::CaptureLog log;
  savepoint::set_log_level(savepoint::LogLevel::info);
  struct Restore {
    ~Restore() { savepoint::set_log_level(savepoint::LogLevel::warn); }
  } restore;
  for (int step = 1; step <= 10; ++step) {
    train_head(*run.model, run.opt, step);
    counter.reset();
    const Checkpoint c = ckpt.save_and_keep_only({{"step", step}}, savepoint::keep_latest(2));
    states[c.sequence] = state_of(*run.model);
    if (counter.links == 0) full.push_back(step);
    // The bound: one kept checkpoint shares no file with the newest one kept.
    const auto kept = ckpt.list_checkpoints();
    CHECK(kept.size() <= 3);
    if (kept.size() < 2) continue;
    const Checkpoint* newest = &kept[0];
    for (const auto& k : kept)
      if (k.sequence > newest->sequence) newest = &k;
    std::set<std::uint64_t> newest_files;
    for (const auto& f : newest->files) newest_files.insert(inode_of(newest->path / f.file));
    bool independent = false;
    for (const auto& k : kept) {
      bool shares = false;
      for (const auto& f : k.files) shares = shares || newest_files.count(inode_of(k.path / f.file));
      independent = independent || (k.path != newest->path && !shares);
    }
    INFO("after save " << step);
    CHECK(independent);
  }
  // The first save has nothing to link, the second none that shares no file with it; then
  // every third save (counted from the one that shares no file with the newest).
  CHECK(full == std::vector<int>{1, 2, 5, 8});
  CHECK(log.contains("also kept"));
  CHECK(log.contains("every part written, none linked (no checkpoint shares no file with the newest one yet)"));
  CHECK(log.contains("(full_save_every 3)"));

  // Damage each kept file in turn (each inode once): a fresh recovery loads a checkpoint that is
  // intact, with exactly its save's values.
  const auto kept = ckpt.list_checkpoints();
  REQUIRE(kept.size() == 3);
  std::map<std::uint64_t, fs::path> files;
  for (const auto& k : kept)
    for (const auto& f : k.files) files.emplace(inode_of(k.path / f.file), k.path / f.file);
  for (const auto& [inode, path] : files) {
    (void)inode;
    test::flip_byte(path, -3);
    auto fresh = std::make_shared<Model>();
    Checkpointer reader(tmp.path(), CheckpointerOptions().read_only(true));
    reader.add_recoverable("model", fresh);
    std::optional<Checkpoint> recovered;
    {
      test::CaptureLog quiet;
      recovered = reader.recover_if_possible();
    }
    INFO("damaged " << path);
    REQUIRE(recovered);
    CHECK(reader.verify(*recovered).empty());
    CHECK(equals(*fresh, states.at(recovered->sequence)));
    test::flip_byte(path, -3);  // undone
  }
}

TEST_CASE("incremental: where retention keeps one checkpoint there is no bound to keep: the second save links",
          "[incremental]") {
  test::TempDir tmp;
  FrozenRun run;
  Checkpointer ckpt(tmp.path(), CheckpointerOptions().incremental(true).part_bytes(64 << 10));
  ckpt.add_recoverable("model", run.model);
  WriteCounter counter;
  for (int step = 1; step <= 3; ++step) {
    train_head(*run.model, run.opt, step);
    counter.reset();
    ckpt.save_and_keep_only({{"step", step}}, savepoint::keep_latest(1));
    CHECK((counter.links > 0) == (step > 1));
  }
  CHECK(ckpt.list_checkpoints().size() == 1);
}

TEST_CASE("incremental: the free-space check counts the bytes the save will write, not the whole checkpoint",
          "[incremental][full-disk]") {
  test::TempDir tmp;
  FrozenRun run;
  Checkpointer ckpt(tmp.path(), CheckpointerOptions().incremental(true).part_bytes(64 << 10).full_save_every(0));
  ckpt.add_recoverable("model", run.model);
  for (int step = 1; step <= 2; ++step) {
    train_head(*run.model, run.opt, step);
    ckpt.save_checkpoint({{"step", step}});
  }
  // ~0.5 MB of state, of which the newest checkpoint wrote only the head's part: 1.3 MiB "free"
  // is enough for a save that links the rest, not for one that writes everything.
  test::FaultGuard little_space([](savepoint::detail::IoOp op, const fs::path&) {
    savepoint::detail::Fault fault;
    if (op == savepoint::detail::IoOp::statfs) fault.max_bytes = 1300 * 1024;
    return fault;
  });
  train_head(*run.model, run.opt, 3);
  CHECK_NOTHROW(ckpt.save_checkpoint({{"step", 3}}));
  ckpt.options().full_save_every(1);  // no checkpoint shares no file with the newest: this one writes every part
  train_head(*run.model, run.opt, 4);
  CHECK_THROWS_WITH(ckpt.save_checkpoint({{"step", 4}}), Catch::Contains("not enough free space"));
  CHECK(ckpt.list_checkpoints().size() == 3);
}

}  // namespace incremental_test

namespace incremental_test {

// The record of `key` with this rank and part in `c`, or nullptr.
const savepoint::FileRecord* record_of(const Checkpoint& c, const std::string& key, int rank, int part) {
  for (const auto& f : c.files)
    if (f.key == key && f.rank == rank && f.part == part) return &f;
  return nullptr;
}

// What save returned against the same checkpoint listed back, paramfiles key by key.
void check_same_as_listed(const Checkpoint& saved, const Checkpoint& listed) {
  CHECK(saved == listed);
  CHECK((saved.files == listed.files));  // (a bool: Catch cannot print FileRecords)
  REQUIRE(saved.paramfiles.size() == listed.paramfiles.size());
  for (const auto& entry : listed.paramfiles) {
    INFO("key '" << entry.first << "'");
    REQUIRE(saved.paramfiles.count(entry.first) == 1);
    CHECK(saved.paramfiles.at(entry.first) == entry.second);
  }
}

TEST_CASE("incremental: a key split into parts names its part 0 in paramfiles, saved, listed back and bundled",
          "[incremental][paramfiles]") {
  test::TempDir tmp;
  auto w = torch::randn({300, 10});
  auto b = torch::randn({10});
  Checkpointer ckpt(tmp.path() / "inc", CheckpointerOptions().incremental(true).full_save_every(0).part_bytes(1000));
  ckpt.add_recoverable("w", w);
  ckpt.add_recoverable("b", b);
  std::vector<Checkpoint> saved{ckpt.save_checkpoint({})};
  w.narrow(0, 290, 10).add_(1.0f);  // the second save writes the last part and links the others
  saved.push_back(ckpt.save_checkpoint({}));
  const auto listed = ckpt.list_checkpoints();
  REQUIRE(listed.size() == 2);
  for (std::size_t i = 0; i < 2; ++i) {
    INFO("save " << i);
    const Checkpoint& c = listed[i];
    REQUIRE(std::count_if(c.files.begin(), c.files.end(), [](const auto& f) { return f.key == "w"; }) == 12);
    const auto* w0 = record_of(c, "w", -1, 0);
    const auto* b0 = record_of(c, "b", -1, 0);  // a key of one part is part 0 of 1
    REQUIRE(w0 != nullptr);
    REQUIRE(b0 != nullptr);
    CHECK(c.paramfiles == std::map<std::string, fs::path>{{"b", c.path / b0->file}, {"w", c.path / w0->file}});
    check_same_as_listed(saved[i], c);
  }
  // Its bundle: the same part 0, inside the bundle.
  const fs::path file = tmp.path() / "inc.spb";
  savepoint::write_bundle(saved[1], file);
  const auto bundle = savepoint::Bundle::open(file);
  CHECK(bundle.checkpoint().paramfiles ==
        std::map<std::string, fs::path>{{"b", file / record_of(saved[1], "b", -1, 0)->file},
                                        {"w", file / record_of(saved[1], "w", -1, 0)->file}});
}

TEST_CASE("incremental: per-rank and replicated keys split into parts by 2 ranks: paramfiles name rank 0's part 0 on "
          "every rank, as listed back and bundled",
          "[incremental][paramfiles]") {
  test::TempDir tmp;
  test::ThreadWorld world(2);
  const auto out = world.run([&](int rank, std::shared_ptr<savepoint::ProcessGroup> group) {
    auto shared = torch::arange(0, 8192, torch::kFloat).reshape({512, 16});
    auto own = torch::full({512, 16}, static_cast<float>(rank));
    Checkpointer ckpt(tmp.path(), CheckpointerOptions().process_group(group).incremental(true).full_save_every(0).part_bytes(8 << 10));
    ckpt.add_recoverable("shared", shared);
    ckpt.add_recoverable("own", own, savepoint::per_rank());
    return ckpt.save_checkpoint({});
  });
  for (int r = 0; r < 2; ++r) {
    INFO("rank " << r << ": " << out[r].message());
    REQUIRE(out[r].value.has_value());
  }
  Checkpointer reader(tmp.path(), CheckpointerOptions().read_only(true));
  const auto listed = reader.list_checkpoints();
  REQUIRE(listed.size() == 1);
  const Checkpoint& c = listed[0];
  REQUIRE(c.files.size() == 12);  // 4 parts of the replicated key, 4 of each rank's own
  const auto* shared0 = record_of(c, "shared", -1, 0);
  const auto* own0 = record_of(c, "own", 0, 0);
  REQUIRE(shared0 != nullptr);
  REQUIRE(own0 != nullptr);
  CHECK(c.paramfiles ==
        std::map<std::string, fs::path>{{"own", c.path / own0->file}, {"shared", c.path / shared0->file}});
  for (int r = 0; r < 2; ++r) {
    INFO("the checkpoint rank " << r << "'s save returned");
    check_same_as_listed(*out[r].value, c);
  }
  const fs::path file = tmp.path() / "job.spb";
  savepoint::write_bundle(c, file);
  CHECK(savepoint::Bundle::open(file).checkpoint().paramfiles ==
        std::map<std::string, fs::path>{{"own", file / own0->file}, {"shared", file / shared0->file}});
}

}  // namespace incremental_test
