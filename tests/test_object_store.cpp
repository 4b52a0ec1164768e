// Checkpoints in an S3-compatible object store, against a real server on loopback that
// scripts/with-s3-server.sh starts (tests/object_store.cmake): moto ("[s3]", "[s3-crash]",
// "[s3-faults]" behind the fault proxy) and s3rver ("[s3rver]", which ignores conditional
// writes). Without a server (AWS_ENDPOINT_URL, SAVEPOINT_TEST_S3_BUCKET unset) each case is
// skipped. Every case works under a prefix of its own and removes it.
#include "support.hpp"
#include "sharded_rows.hpp"
#include "tensor_blob.hpp"
#include "thread_group.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/detail/object_store.hpp>

#include "catch.hpp"

#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <random>
#include <set>

using namespace savepoint;
namespace fs = std::filesystem;

namespace s3test {

// A JSON-stored value (a counter, the epoch, ...).
struct Note {
  double value = 0;
};
void register_note() {
  static const bool once = [] {
    TypeHooks h;
    h.name = "test.S3Note";
    h.extension = ".json";
    h.save = [](void* object, const SaveContext&) { return Payload::json({{"value", static_cast<Note*>(object)->value}}); };
    h.prepare_load = [](void* object, const LoadContext& ctx) -> Apply {
      const auto bytes = ctx.bytes();
      const double v = nlohmann::json::parse(bytes.begin(), bytes.end()).at("value").get<double>();
      return [object, v] { static_cast<Note*>(object)->value = v; };
    };
    hook_table().add<Note>(h);
    return true;
  }();
  (void)once;
}

// A value whose hook writes its own file by path (as user hooks may).
struct Diary {
  std::string text;
};
void register_diary() {
  static const bool once = [] {
    TypeHooks h;
    h.name = "test.S3Diary";
    h.extension = ".txt";
    h.save = [](void* object, const SaveContext& ctx) {
      std::ofstream(ctx.file) << static_cast<Diary*>(object)->text;
      return Payload::file();
    };
    h.prepare_load = [](void* object, const LoadContext& ctx) -> Apply {
      std::string got = test::read_file(ctx.file);  // the path a hook is given
      return [object, got] { static_cast<Diary*>(object)->text = got; };
    };
    hook_table().add<Diary>(h);
    return true;
  }();
  (void)once;
}

std::optional<std::string> bucket() {
  const char* endpoint = std::getenv("AWS_ENDPOINT_URL");
  const char* b = std::getenv("SAVEPOINT_TEST_S3_BUCKET");
  if (!endpoint || !*endpoint || !b || !*b) return std::nullopt;
  return std::string(b);
}

std::string server() {
  const char* s = std::getenv("SAVEPOINT_TEST_S3_SERVER");
  return s ? s : "";
}

// A fresh prefix s3://bucket/<unique>, emptied at the end of the case.
class Prefix {
 public:
  Prefix() {
    static std::atomic<int> counter{0};
    std::random_device rd;
    path_ = fmt::format("s3://{}/t{}-{}-{:06x}", *bucket(), ::getpid(), counter++, rd() & 0xffffff);
  }
  ~Prefix() {
    if (std::getenv("SAVEPOINT_TEST_S3_KEEP")) return;  // for a look after a failure
    try {
      for (const auto& e : detail::list_directory(path_)) {
        if (e.status.type == detail::FileType::directory) detail::remove_tree(path_ / e.name);
        else detail::remove_file(path_ / e.name);
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "could not empty %s: %s\n", path_.c_str(), e.what());
    }
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

#define S3_REQUIRE_SERVER()                                                                  \
  if (!s3test::bucket())                                                                   \
    return test::skip("no S3 server (AWS_ENDPOINT_URL, SAVEPOINT_TEST_S3_BUCKET): run under " \
                      "scripts/with-s3-server.sh")

// Every object name under a prefix, recursively.
std::set<std::string> objects_under(const fs::path& dir, const std::string& rel = "") {
  std::set<std::string> out;
  for (const auto& e : detail::list_directory(dir)) {
    if (e.status.type == detail::FileType::directory) {
      for (auto& o : objects_under(dir / e.name, rel + e.name + "/")) out.insert(o);
    } else {
      out.insert(rel + e.name);
    }
  }
  return out;
}

struct State {
  Note epoch;
  test::TensorBlob weights;
  void attach(Checkpointer& c) {
    c.add_recoverable("epoch", epoch);
    c.add_recoverable("weights", weights);
  }
};

std::vector<std::int64_t> pattern(std::size_t n, std::int64_t seed) {
  std::vector<std::int64_t> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = seed * 1000003 + static_cast<std::int64_t>(i) * 7919;
  return v;
}

// Records every request the client makes (method and key), in order.
struct RequestLog {
  std::mutex mutex;
  std::vector<std::string> lines;
  RequestLog() {
    detail::s3_set_request_observer([this](const char* method, const std::string&, const std::string& key, int status) {
      std::lock_guard<std::mutex> guard(mutex);
      lines.push_back(fmt::format("{} {} {}", method, key, status));
    });
  }
  ~RequestLog() { detail::s3_set_request_observer(nullptr); }
  std::size_t count(const std::string& needle) {
    std::lock_guard<std::mutex> guard(mutex);
    std::size_t n = 0;
    for (const auto& l : lines) n += l.find(needle) != std::string::npos;
    return n;
  }
};

}  // namespace s3test

using s3test::Prefix;

TEST_CASE("s3: save, list, load and retention through the Checkpointer, the objects as on disk", "[.s3]") {
  S3_REQUIRE_SERVER();
  test::register_tensor_blob();
  s3test::register_note();
  Prefix root;
  s3test::State s;
  Checkpointer ckpt(root.path());
  s.attach(ckpt);
  for (int epoch = 1; epoch <= 4; ++epoch) {
    s.epoch.value = epoch;
    s.weights.values = s3test::pattern(1000, epoch);
    ckpt.save_and_keep_only({{"loss", 1.0 / epoch}}, savepoint::keep(2));
  }
  const auto listed = ckpt.list_checkpoints();
  REQUIRE(listed.size() == 2);
  CHECK(listed.back().meta.at("loss") == 0.25);
  // The checkpoint is the directory's layout: meta.json, one object per key, the claim.
  const auto objects = s3test::objects_under(listed.back().path);
  CHECK(objects == std::set<std::string>{"meta.json", "epoch.json", "weights.safetensors", ".savepoint-claim"});
  for (const auto& f : listed.back().files) {
    const auto st = detail::path_status(listed.back().path / f.file);
    REQUIRE(st);
    CHECK(st->size == f.bytes);
    CHECK(detail::digest_file(listed.back().path / f.file).xxh3 == f.xxh3);
  }
  // Deleted ones left nothing behind.
  std::size_t names = 0;
  for (const auto& e : detail::list_directory(root.path(), detail::kCheckpointPrefix)) names += e.status.type == detail::FileType::directory;
  CHECK(names == 2);

  s3test::State fresh;
  Checkpointer again(root.path());
  fresh.attach(again);
  const auto recovered = again.recover_if_possible();
  REQUIRE(recovered);
  CHECK(fresh.epoch.value == 4);
  CHECK(fresh.weights.values == s3test::pattern(1000, 4));
  s3test::State best;
  Checkpointer reader(root.path(), CheckpointerOptions().read_only(true));
  best.attach(reader);
  REQUIRE(reader.recover_if_possible(max_key("loss")));
  CHECK(best.epoch.value == 3);
}

TEST_CASE("s3: a large key goes up in parts and comes back bit-identical", "[.s3]") {
  S3_REQUIRE_SERVER();
  test::register_tensor_blob();
  Prefix root;
  const auto options = [] {
    return CheckpointerOptions().object_store(ObjectStoreOptions()
                                                  .endpoint(std::getenv("AWS_ENDPOINT_URL"))
                                                  .part_bytes(5 << 20)
                                                  .parallel_requests(3));
  };
  test::TensorBlob big;
  big.values = s3test::pattern((13 << 20) / 8, 9);  // 13 MiB: three parts
  {
    s3test::RequestLog log;
    Checkpointer ckpt(root.path(), options());
    ckpt.add_recoverable("big", big);
    ckpt.save_checkpoint();
    std::size_t part_puts = 0;
    for (const auto& l : log.lines) part_puts += l.rfind("PUT ", 0) == 0 && l.find("big.safetensors") != std::string::npos;
    CHECK(part_puts >= 3);  // in parts: a multipart upload
  }
  test::TensorBlob back;
  Checkpointer ckpt(root.path(), options());
  ckpt.add_recoverable("big", back);
  REQUIRE(ckpt.recover_if_possible());
  CHECK(back.values == big.values);
}

TEST_CASE("s3: nothing is listed before meta.json; orphans are removed once older than the grace", "[.s3]") {
  S3_REQUIRE_SERVER();
  test::register_tensor_blob();
  s3test::register_note();
  Prefix root;
  const fs::path orphan = root.path() / "CKPT+2026-01-01+00-00-00+00";
  detail::write_file(orphan / "weights.safetensors", "half an upload");
  detail::write_file(orphan / ".savepoint-claim", "claimed by a process that died");
  s3test::State s;
  {
    Checkpointer ckpt(root.path(), CheckpointerOptions().object_store(ObjectStoreOptions().orphan_grace(std::chrono::hours(1))));
    s.attach(ckpt);
    CHECK(ckpt.list_checkpoints().empty());  // not a checkpoint, and not "unreadable" either
    CHECK(ckpt.unreadable_checkpoints().empty());
    ckpt.save_checkpoint();
    CHECK(detail::path_status(orphan / "weights.safetensors"));  // younger than the grace: kept
  }
  Checkpointer ckpt(root.path(), CheckpointerOptions().object_store(ObjectStoreOptions().orphan_grace(std::chrono::seconds(0))));
  s.attach(ckpt);
  ckpt.save_checkpoint();  // its clean-up removes the orphan
  CHECK_FALSE(detail::path_status(orphan / "weights.safetensors"));
  CHECK_FALSE(detail::path_status(orphan));
  CHECK(ckpt.list_checkpoints().size() == 2);
}

TEST_CASE("s3: deleting a checkpoint removes its meta.json before any other object", "[.s3]") {
  S3_REQUIRE_SERVER();
  test::register_tensor_blob();
  s3test::register_note();
  Prefix root;
  s3test::State s;
  Checkpointer ckpt(root.path());
  s.attach(ckpt);
  const Checkpoint first = ckpt.save_checkpoint();
  ckpt.save_checkpoint();
  s3test::RequestLog log;
  ckpt.delete_checkpoint(first);
  std::vector<std::string> deletes;
  for (const auto& l : log.lines)
    if (l.rfind("DELETE ", 0) == 0) deletes.push_back(l);
  REQUIRE(!deletes.empty());
  CHECK_THAT(deletes.front(), Catch::Contains(first.name() + "/meta.json"));
  CHECK(s3test::objects_under(first.path).empty());
  CHECK(ckpt.list_checkpoints().size() == 1);
}

TEST_CASE("s3: incremental saves copy unchanged parts on the server; each checkpoint stands alone", "[.s3]") {
  S3_REQUIRE_SERVER();
  test::register_tensor_blob();
  Prefix root;
  test::TensorBlob frozen, trained;
  frozen.values = s3test::pattern((9 << 20) / 8, 1);
  trained.values = s3test::pattern((1 << 20) / 8, 2);
  const auto options = CheckpointerOptions().incremental(true).part_bytes(1 << 20);
  Checkpointer ckpt(root.path(), options);
  ckpt.add_recoverable("frozen", frozen);
  ckpt.add_recoverable("trained", trained);
  const auto before_first = detail::object_store_traffic();
  const Checkpoint first = ckpt.save_checkpoint();
  const auto after_first = detail::object_store_traffic();
  trained.values = s3test::pattern((1 << 20) / 8, 3);
  s3test::RequestLog log;
  const Checkpoint second = ckpt.save_checkpoint();
  const auto after_second = detail::object_store_traffic();
  const auto full = after_first.bytes_sent - before_first.bytes_sent;
  const auto incremental = after_second.bytes_sent - after_first.bytes_sent;
  INFO("full save sent " << full << " bytes, the incremental one " << incremental);
  CHECK(incremental * 5 < full);  // 1 of 10 MiB changed
  CHECK(log.count("PUT ") > 0);
  // The copies are objects of their own: the first checkpoint deleted, the second loads.
  ckpt.delete_checkpoint(first);
  test::TensorBlob f2, t2;
  Checkpointer reader(root.path(), CheckpointerOptions().read_only(true));
  reader.add_recoverable("frozen", f2);
  reader.add_recoverable("trained", t2);
  REQUIRE(reader.recover_if_possible());
  CHECK(f2.values == frozen.values);
  CHECK(t2.values == trained.values);
  for (const auto& f : second.files) CHECK(detail::digest_file(second.path / f.file).xxh3 == f.xxh3);
}

TEST_CASE("s3: a hook that writes its own file, async saves, and a damaged object falls back", "[.s3]") {
  S3_REQUIRE_SERVER();
  s3test::register_note();
  s3test::register_diary();
  Prefix root;
  s3test::Note n;
  s3test::Diary d;
  {
    Checkpointer ckpt(root.path());
    ckpt.add_recoverable("note", n);
    ckpt.add_recoverable("diary", d);
    n.value = 1;
    d.text = "first entry";
    ckpt.save_checkpoint_async();
    ckpt.wait();
    n.value = 2;
    d.text = "second entry";
    ckpt.save_checkpoint();
  }
  const auto listed = Checkpointer(root.path(), CheckpointerOptions().read_only(true)).list_checkpoints();
  REQUIRE(listed.size() == 2);
  // One flipped byte in the newest checkpoint's note: recovery falls back to the first.
  const fs::path note = listed.back().path / "note.json";
  std::string bytes = detail::read_small_file(note, 1 << 20);
  bytes[bytes.size() / 2] ^= 1;
  detail::write_file(note, bytes);
  s3test::Note n2;
  s3test::Diary d2;
  Checkpointer ckpt(root.path());
  ckpt.add_recoverable("note", n2);
  ckpt.add_recoverable("diary", d2);
  const auto recovered = ckpt.recover_if_possible();
  REQUIRE(recovered);
  CHECK(recovered->name() == listed.front().name());
  CHECK(n2.value == 1);
  CHECK(d2.text == "first entry");
}

TEST_CASE("s3: a meta.json naming an object outside its checkpoint is refused", "[.s3]") {
  S3_REQUIRE_SERVER();
  s3test::register_note();
  Prefix root;
  s3test::Note n;
  Checkpoint saved;
  {
    Checkpointer ckpt(root.path());
    ckpt.add_recoverable("note", n);
    saved = ckpt.save_checkpoint();
  }
  const fs::path meta = saved.path / detail::kMetaFileName;
  auto doc = nlohmann::json::parse(detail::read_small_file(meta, 1 << 20));
  doc.erase("checksum");
  doc["files"][0]["file"] = "../x.json";
  doc["checksum"] = detail::to_hex(detail::digest_bytes(doc.dump()).xxh3);  // a "valid" forgery
  detail::write_file(meta, doc.dump());
  Checkpointer ckpt(root.path(), CheckpointerOptions().read_only(true));
  ckpt.add_recoverable("note", n);
  CHECK(ckpt.list_checkpoints().empty());
  REQUIRE(ckpt.unreadable_checkpoints().size() == 1);
  CHECK_THAT(ckpt.unreadable_checkpoints().front().reason, Catch::Contains("plain file name"));
}

TEST_CASE("s3: ranks as threads each upload their own objects; rank 0 commits; another world size loads",
          "[.s3]") {
  S3_REQUIRE_SERVER();
  s3test::register_note();
  Prefix root;
  {
    test::ThreadWorld world(3);
    const auto saved = world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
      s3test::Note shared{7}, own{100.0 + rank};
      Checkpointer ckpt(root.path(), CheckpointerOptions().process_group(std::move(group)));
      ckpt.add_recoverable("shared", shared);
      ckpt.add_recoverable("own", own, per_rank());
      return ckpt.save_checkpoint().name();
    });
    for (const auto& s : saved) REQUIRE(s.value.has_value());
  }
  const auto listed = Checkpointer(root.path(), CheckpointerOptions().read_only(true)).list_checkpoints();
  REQUIRE(listed.size() == 1);
  CHECK(listed[0].world_size == 3);
  CHECK(s3test::objects_under(listed[0].path).size() == 1 + 1 + 3 + 1);  // meta, shared, own x3, claim
  test::ThreadWorld world(3);
  const auto loaded = world.run([&](int, std::shared_ptr<ProcessGroup> group) {
    s3test::Note shared, own;
    Checkpointer ckpt(root.path(), CheckpointerOptions().process_group(std::move(group)));
    ckpt.add_recoverable("shared", shared);
    ckpt.add_recoverable("own", own, per_rank());
    (void)ckpt.recover_if_possible();
    return std::make_pair(shared.value, own.value);
  });
  for (int r = 0; r < 3; ++r) {
    REQUIRE(loaded[r].value.has_value());
    CHECK(loaded[r].value->first == 7);
    CHECK(loaded[r].value->second == 100 + r);
  }
}

TEST_CASE("s3: wrong credentials and a missing bucket are errors of their own, without the secret", "[.s3]") {
  S3_REQUIRE_SERVER();
  Prefix root;
  // The wrong key pair below can only fail against a server that checks signatures: moto's
  // default mode and s3rver do not (then a warning says it was not checked).
  const std::string secret = "not-the-secret-0123456789";
  const auto missing = fmt::format("s3://savepoint-no-such-bucket-{}/x", ::getpid());
  try {
    Checkpointer ckpt(missing);
    FAIL("no error for a missing bucket");
  } catch (const ObjectStoreError& e) {
    CHECK(e.kind() == ObjectStoreError::Kind::no_bucket);
    CHECK(e.http_status() == 404);
    CHECK_THAT(e.what(), Catch::Contains("savepoint-no-such-bucket"));
  }
  configure_object_store(root.path(), ObjectStoreOptions().access_key_id("AKIAWRONG").secret_access_key(secret));
  try {
    Checkpointer ckpt(root.path());
    if (s3test::server() == "moto") WARN("moto accepted a wrong key pair (it does not check credentials)");
  } catch (const ObjectStoreError& e) {
    CHECK(e.kind() == ObjectStoreError::Kind::credentials);
    CHECK(std::string(e.what()).find(secret) == std::string::npos);
  }
  configure_object_store(root.path(), ObjectStoreOptions());
}

TEST_CASE("s3rver: a server that ignores If-None-Match is refused at the probe, unless accepted", "[.s3rver]") {
  S3_REQUIRE_SERVER();
  s3test::register_note();
  Prefix root;
  try {
    Checkpointer ckpt(root.path());
    FAIL("a server that ignores conditional writes was accepted");
  } catch (const UsageError& e) {
    CHECK_THAT(e.what(), Catch::Contains(std::getenv("AWS_ENDPOINT_URL")));
    CHECK_THAT(e.what(), Catch::Contains("If-None-Match"));
  }
  s3test::Note n{5};
  Checkpointer ckpt(root.path(), CheckpointerOptions().object_store(ObjectStoreOptions().accept_unconditional_commit(true)));
  ckpt.add_recoverable("note", n);
  ckpt.save_checkpoint();
  s3test::Note back;
  Checkpointer reader(root.path(), CheckpointerOptions().read_only(true).object_store(ObjectStoreOptions().accept_unconditional_commit(true)));
  reader.add_recoverable("note", back);
  REQUIRE(reader.recover_if_possible());
  CHECK(back.value == 5);
}

TEST_CASE("s3: a save SIGKILLed after each of its requests never leaves a partial checkpoint", "[.s3-crash]") {
  S3_REQUIRE_SERVER();
  test::register_tensor_blob();
  s3test::register_note();
  Prefix root;
  const auto options = [] {
    return CheckpointerOptions().object_store(
        ObjectStoreOptions().orphan_grace(std::chrono::seconds(0)).part_bytes(5 << 20).parallel_requests(2));
  };
  const auto state_for = [](int step) {
    s3test::State s;
    s.epoch.value = step;
    s.weights.values = s3test::pattern((11 << 20) / 8, step);  // three parts: a multipart upload
    return s;
  };
  {
    s3test::State s = state_for(1);
    Checkpointer ckpt(root.path(), options());
    s.attach(ckpt);
    ckpt.save_checkpoint({{"step", 1}});
  }
  // In a child: one save, killed right after its n-th request got its answer (0: never).
  // Returns the number of requests the save made.
  const auto save_in_child = [&](int kill_after) {
    int pipe_fds[2];
    REQUIRE(::pipe(pipe_fds) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::close(pipe_fds[0]);
      configure_object_store(root.path(), options().object_store().value());  // connections of its own
      s3test::State s = state_for(2);
      Checkpointer ckpt(root.path(), options());
      s.attach(ckpt);
      std::atomic<int> seen{0};
      detail::s3_set_request_observer([&](const char*, const std::string&, const std::string&, int) {
        if (++seen == kill_after) ::raise(SIGKILL);
      });
      ckpt.save_checkpoint({{"step", 2}});
      const int n = seen.load();
      (void)!::write(pipe_fds[1], &n, sizeof n);
      std::_Exit(0);
    }
    ::close(pipe_fds[1]);
    int n = -1;
    (void)!::read(pipe_fds[0], &n, sizeof n);
    ::close(pipe_fds[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (kill_after == 0) REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    else {
      const bool killed_or_done = (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) || (WIFEXITED(status) && n < kill_after);
      CHECK(killed_or_done);
    }
    return n;
  };
  const int requests = save_in_child(0);
  INFO("an uninterrupted save made " << requests << " requests");
  REQUIRE(requests > 5);
  int new_ones = 0, old_ones = 0;
  for (int n = 1; n <= requests; ++n) {
    INFO("killed after request " << n);
    save_in_child(n);
    s3test::State back;
    Checkpointer ckpt(root.path(), options());  // opening cleans up (grace 0)
    back.attach(ckpt);
    const auto recovered = ckpt.recover_if_possible();
    REQUIRE(recovered);
    // Whole and verified: the old state or the new one, never a mix.
    const int step = static_cast<int>(back.epoch.value);
    REQUIRE((step == 1 || step == 2));
    CHECK(back.weights.values == state_for(step).weights.values);
    (step == 2 ? new_ones : old_ones)++;
    // Back to one committed checkpoint (step 1) and no orphan, for the next round.
    for (const auto& c : ckpt.list_checkpoints())
      if (c.meta.value("step", 0) == 2) ckpt.delete_checkpoint(c);
    if (ckpt.list_checkpoints().empty()) {
      s3test::State s = state_for(1);
      s.attach(ckpt);
      ckpt.save_checkpoint({{"step", 1}});
    }
    for (const auto& e : detail::list_directory(root.path(), detail::kCheckpointPrefix))
      CHECK(detail::path_status(root.path() / e.name / detail::kMetaFileName));  // no orphan left
  }
  INFO("recovered the old checkpoint " << old_ones << " times, the new one " << new_ones << " times");
  CHECK(old_ones > 0);
  CHECK(new_ones > 0);
  std::printf("crash boundaries: %d requests per save, each killed once: %d recovered the previous checkpoint, %d "
              "the new one, none partial\n",
              requests, old_ones, new_ones);
}

TEST_CASE("s3: 503s, cut connections and delays are retried; a save that fails for good leaves the others",
          "[.s3-faults]") {
  S3_REQUIRE_SERVER();
  const char* plan_file = std::getenv("SAVEPOINT_TEST_FAULT_PLAN");
  if (!plan_file) return test::skip("no fault proxy (run under with-s3-server.sh --faults)");
  test::register_tensor_blob();
  s3test::register_note();
  Prefix root;
  const auto write_plan = [&](const std::string& json) { std::ofstream(plan_file, std::ios::trunc) << json; };
  const auto options = CheckpointerOptions().object_store(ObjectStoreOptions()
                                                              .max_attempts(6)
                                                              .request_timeout(std::chrono::milliseconds(3000))
                                                              .deadline(std::chrono::milliseconds(60000)));
  s3test::State s;
  s.epoch.value = 1;
  s.weights.values = s3test::pattern(100000, 1);
  Checkpointer ckpt(root.path(), options);
  s.attach(ckpt);
  const auto before = detail::object_store_traffic();
  write_plan(R"([{"method": "PUT", "action": "503", "times": 2},
                 {"method": "PUT", "action": "slowdown", "times": 1},
                 {"method": "PUT", "action": "reset", "times": 1},
                 {"method": "GET", "key_contains": "meta.json", "action": "cut_body", "times": 1},
                 {"method": "GET", "key_contains": "meta.json", "action": "reset", "times": 1},
                 {"method": "*", "action": "delay", "delay_ms": 200, "times": 3}])");
  const Checkpoint first = ckpt.save_checkpoint();
  s3test::State back;
  {
    Checkpointer reader(root.path(), options);
    back.attach(reader);
    REQUIRE(reader.recover_if_possible());
  }
  CHECK(back.weights.values == s.weights.values);
  // Every fault fired (the proxy's log), and each hit a request that succeeded once retried
  // (the GET faults hit meta.json, whose answer has a body: a cut 404 would be an answer).
  // The 503s, the SlowDown and the cut body are retried by savepoint; a reset connection that
  // curl had reused, curl itself may retry on a new one, so resets are not counted.
  std::size_t fired = 0;
  {
    std::ifstream log(std::getenv("SAVEPOINT_TEST_FAULT_LOG"));
    for (std::string line; std::getline(log, line);)
      fired += line.find("fault=") != std::string::npos && line.find("fault=delay") == std::string::npos;
  }
  CHECK(fired == 6);
  const auto after = detail::object_store_traffic();
  CHECK(after.retries - before.retries >= 4);
  // Every attempt at committing fails: the save fails, naming the object and the status, and
  // the first checkpoint is still there, listed and whole.
  write_plan(R"([{"method": "PUT", "key_contains": "meta.json", "action": "503", "times": 1000}])");
  s.epoch.value = 2;
  try {
    ckpt.save_checkpoint();
    FAIL("the save succeeded although every commit attempt got a 503");
  } catch (const ObjectStoreError& e) {
    CHECK(e.http_status() == 503);
    CHECK_THAT(e.what(), Catch::Contains("meta.json"));
  }
  write_plan("[]");
  const auto listed = ckpt.list_checkpoints();
  REQUIRE(listed.size() == 1);
  CHECK(listed[0].name() == first.name());
  s3test::State again;
  Checkpointer reader(root.path(), options);
  again.attach(reader);
  REQUIRE(reader.recover_if_possible());
  CHECK(again.epoch.value == 1);
}


namespace s3test {
struct Range {
  std::int64_t offset, rows;
};
Range rows_of(std::int64_t total, int rank, int world) {  // the first total % world ranks get one more
  const std::int64_t base = total / world, extra = total % world;
  return {rank * base + std::min<std::int64_t>(rank, extra), base + (rank < extra ? 1 : 0)};
}
}  // namespace s3test

TEST_CASE("s3: sharded rows saved by 2 ranks load at 3 ranks, each reading only its ranges", "[.s3]") {
  S3_REQUIRE_SERVER();
  test::register_rows();
  Prefix root;
  const std::int64_t total = 12;
  const auto value = [](std::int64_t row) { return 0.5f * static_cast<float>(row) + 1.0f; };
  {
    test::ThreadWorld world(2);
    const auto saved = world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
      const auto range = s3test::rows_of(total, rank, 2);
      test::Rows rows{range.offset, total, {}};
      for (std::int64_t i = 0; i < range.rows; ++i) rows.values.push_back(value(range.offset + i));
      Checkpointer ckpt(root.path(), CheckpointerOptions().process_group(std::move(group)));
      ckpt.add_recoverable("rows", rows, sharded());
      return ckpt.save_checkpoint().name();
    });
    for (const auto& s : saved) REQUIRE(s.value.has_value());
  }
  test::ThreadWorld world(3);
  const auto loaded = world.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
    const auto range = s3test::rows_of(total, rank, 3);
    test::Rows rows{range.offset, total, std::vector<float>(static_cast<std::size_t>(range.rows), -1.0f)};
    Checkpointer ckpt(root.path(), CheckpointerOptions().process_group(std::move(group)));
    ckpt.add_recoverable("rows", rows, sharded());
    if (!ckpt.recover_if_possible()) throw std::runtime_error("nothing recovered");
    return rows.values;
  });
  for (int r = 0; r < 3; ++r) {
    INFO("rank " << r << ": " << loaded[r].message());
    REQUIRE(loaded[r].value.has_value());
    const auto range = s3test::rows_of(total, r, 3);
    std::vector<float> expected;
    for (std::int64_t i = 0; i < range.rows; ++i) expected.push_back(value(range.offset + i));
    CHECK(*loaded[r].value == expected);
  }
}

TEST_CASE("s3: the memory tier persists to the object store in the background; recovery reads it back",
          "[.s3]") {
  S3_REQUIRE_SERVER();
  s3test::register_note();
  Prefix root;
  test::TempDir shm;
  s3test::Note n;
  {
    Checkpointer ckpt(root.path(), CheckpointerOptions().memory_tier(MemoryTierOptions(shm.path()).persist_every(2)));
    ckpt.add_recoverable("note", n);
    for (int step = 1; step <= 4; ++step) {
      n.value = step;
      ckpt.save_to_memory({{"step", step}});
    }
    ckpt.wait();
  }
  const auto listed = Checkpointer(root.path(), CheckpointerOptions().read_only(true)).list_checkpoints();
  REQUIRE(listed.size() == 2);  // steps 2 and 4, persisted by the background thread
  CHECK(listed.back().meta.at("step") == 4);
  s3test::Note back;
  Checkpointer reader(root.path(), CheckpointerOptions().read_only(true));
  reader.add_recoverable("note", back);
  REQUIRE(reader.recover_if_possible());
  CHECK(back.value == 4);
}
