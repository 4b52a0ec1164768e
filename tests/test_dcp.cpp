// torch.distributed.checkpoint both ways, without Python: checkpoints Python's dcp.save wrote
// (PyTorch 2.6 and 2.14, FSDP2 rows over 4 ranks, Adam; tests/dcp/fixtures) load bit for bit at
// 1, 2 and 3 ranks; C++ saves round-trip; damaged directories raise errors naming file and key.
// The live cross-language runs are tests/dcp/cross.sh.
#include "dcp/dcp_cases.hpp"
#include "support.hpp"
#include "thread_group.hpp"

#include <savepoint/dcp.hpp>
#include <savepoint/format/dcp.hpp>

using namespace savepoint;
using test::TempDir;

namespace {

const fs::path kFixtures = fs::path(SAVEPOINT_TESTS_DIR) / "dcp" / "fixtures";

void copy_tree(const fs::path& from, const fs::path& to) {
  fs::create_directories(to);
  fs::copy(from, to, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
}

// A C++ checkpoint of the trained state, saved by `world` thread-ranks.
void save_from(int world, const fs::path& dir, dcp_cases::Trained& trained) {
  test::ThreadWorld threads(world, std::chrono::milliseconds(20000));
  const auto outcomes = threads.run([&](int rank, std::shared_ptr<ProcessGroup> group) {
    auto r = dcp_cases::rank_state(rank, world, &trained);
    r->step = 5;
    r->state.value("step", r->step);
    dcp::save(dir, r->state, dcp::SaveOptions().process_group(group));
    return 0;
  });
  for (const auto& o : outcomes) {
    INFO(o.message());
    REQUIRE(o.value);
  }
}

template <class E>
std::string raised(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const E& e) {
    return e.what();
  }
  FAIL("no exception of the expected type");
  return {};
}

}  // namespace

TEST_CASE("dcp: what Python's dcp.save wrote (2.6 and 2.14, FSDP2 rows over 4 ranks, Adam) loads bit for bit at "
          "1, 2 and 3 ranks", "[dcp]") {
  for (const char* version : {"torch26", "torch214"}) {
    CAPTURE(version);
    const auto dir = kFixtures / version / "dcp";
    auto expected = dcp_cases::read_pt((kFixtures / version / "expected.pt").string());
    REQUIRE(expected.size() == 17);
    for (int world : {1, 2, 3}) {
      for (int rank = 0; rank < world; ++rank) {
        auto r = dcp_cases::rank_state(rank, world, nullptr);
        nlohmann::json step, names;
        r->state.value("step", step).value("extra.names", names);
        const auto report = dcp::load(dir, r->state);
        CHECK(dcp_cases::compare_rank(*r, rank, world, expected) == 17);
        CHECK(step == 2);
        CHECK(names == nlohmann::json::array({"a", "b"}));
        CHECK(r->adam->param_groups()[0].options().get_lr() == 1e-2);
        CHECK(report.missing.empty());
        CHECK(report.unexpected == std::vector<std::string>{"extra.lr", "extra.nested.k"});
      }
    }
    // A whole module takes the rows of every rank.
    dcp_cases::Net net;
    torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(0.5));
    dcp::State state;
    state.module("model", *net).optimizer("optim", adam);
    dcp::load(dir, state);
    for (const auto& p : net->named_parameters()) {
      CAPTURE(p.key());
      CHECK(torch::equal(p.value(), expected.at("model." + p.key())));
      CHECK(torch::equal(dcp_cases::adam_state(adam, p.value()).exp_avg_sq(),
                         expected.at("optim.state." + p.key() + ".exp_avg_sq")));
      CHECK(dcp_cases::adam_state(adam, p.value()).step() == 2);
    }
    CHECK(torch::equal(net->scale, expected.at("model.scale")));
    CHECK(adam.param_groups()[0].options().get_lr() == 1e-2);
  }
}

TEST_CASE("dcp: 2.14's safetensors chunk format and its HuggingFace layout load bit for bit", "[dcp]") {
  {
    const auto dir = kFixtures / "torch214-safetensors" / "dcp";
    auto expected = dcp_cases::read_pt((kFixtures / "torch214-safetensors" / "expected.pt").string());
    for (int world : {1, 3})
      for (int rank = 0; rank < world; ++rank) {
        auto r = dcp_cases::rank_state(rank, world, nullptr);
        dcp::load(dir, r->state);
        CHECK(dcp_cases::compare_rank(*r, rank, world, expected) == 17);
      }
    const dcp::Reader reader(dir);
    CHECK(reader.metadata().find("model.fc1.weight")->chunks[0].raw);
  }
  for (const char* where : {"dcp", "dcp/sharded"}) {  // consolidated files, and the ranks' shards
    CAPTURE(where);
    const auto dir = kFixtures / "torch214-hf" / where;
    auto expected = dcp_cases::read_pt((kFixtures / "torch214-hf" / "expected.pt").string());
    dcp_cases::Net net;
    dcp::State state;
    state.module("", *net);
    const auto report = dcp::load(dir, state);
    CHECK(report.loaded.size() == 5);
    CHECK(dcp::Reader(dir).metadata().layout == "huggingface");
    for (const auto& [name, t] : expected) {
      CAPTURE(name);
      const auto key = name.rfind("model.", 0) == 0 ? name.substr(6) : name;
      const auto got = key == "scale" ? net->scale : net->named_parameters()[key];
      CHECK(torch::equal(got, t));
    }
  }
}

TEST_CASE("dcp: a C++ save from 4 ranks loads back bit for bit at 1, 2, 3 and 4 ranks, optimizer and values included",
          "[dcp]") {
  TempDir tmp;
  auto trained = dcp_cases::train(3);
  save_from(4, tmp / "ckpt", trained);
  auto expected = dcp_cases::full_state(trained);
  for (int world : {1, 2, 3, 4})
    for (int rank = 0; rank < world; ++rank) {
      auto r = dcp_cases::rank_state(rank, world, nullptr);
      nlohmann::json step;
      r->state.value("step", step);
      const auto report = dcp::load(tmp / "ckpt", r->state);
      CHECK(dcp_cases::compare_rank(*r, rank, world, expected) == 17);
      CHECK(step == 5);
      CHECK(report.unexpected.empty());
    }
  // The files: one per rank, the metadata last; and the layout Python expects.
  const dcp::Reader reader(tmp / "ckpt");
  CHECK(reader.metadata().find("model.fc1.weight")->chunks.size() == 4);
  CHECK(reader.metadata().find("model.scale")->chunks.size() == 1);
  CHECK(reader.metadata().find("optim.param_groups.0.params") != nullptr);
  CHECK(reader.value(*reader.metadata().find("optim.param_groups.0.params")) ==
        nlohmann::json::array({"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}));
  CHECK(reader.metadata().find("optim.state.fc2.bias.step")->size.empty());
  for (int r = 0; r < 4; ++r) CHECK(fs::exists(tmp / "ckpt" / ("__" + std::to_string(r) + "_0.distcp")));
  reader.verify();
  // A second save into the same directory is refused, the first left as it was.
  CHECK_THROWS_AS(
      [&] {
        auto r = dcp_cases::rank_state(0, 1, &trained);
        dcp::save(tmp / "ckpt", r->state);
      }(),
      UsageError);
  dcp::Reader again(tmp / "ckpt");
}

TEST_CASE("dcp: a one-process save of a module, an optimizer and values round-trips bit for bit", "[dcp]") {
  TempDir tmp;
  auto trained = dcp_cases::train(11);
  nlohmann::json meta = {{"epoch", 3}, {"name", "run"}, {"scores", {1.5, 2.5}}};
  dcp::State state;
  state.module("model", *trained.net).optimizer("optim", *trained.adam).value("meta", meta);
  dcp::save(tmp / "one", state);

  dcp_cases::Net net;
  torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(0.5).betas({0.5, 0.5}));
  nlohmann::json back;
  dcp::State into;
  into.module("model", *net).optimizer("optim", adam).value("meta", back);
  const auto report = dcp::load(tmp / "one", into);
  CHECK(back == meta);
  CHECK(report.unexpected.empty());
  auto expected = dcp_cases::full_state(trained);
  for (const auto& p : net->named_parameters()) {
    CAPTURE(p.key());
    CHECK(torch::equal(p.value(), expected.at("model." + p.key())));
    const auto& s = dcp_cases::adam_state(adam, p.value());
    CHECK(torch::equal(s.exp_avg(), expected.at("optim.state." + p.key() + ".exp_avg")));
    CHECK(torch::equal(s.exp_avg_sq(), expected.at("optim.state." + p.key() + ".exp_avg_sq")));
    CHECK(s.step() == 2);
  }
  const auto& options = static_cast<torch::optim::AdamOptions&>(adam.param_groups()[0].options());
  CHECK(options.lr() == 1e-2);
  CHECK(std::get<0>(options.betas()) == 0.9);
}

TEST_CASE("dcp: a module takes keys under another name with transfer's prefix and renames", "[dcp]") {
  TempDir tmp;
  auto trained = dcp_cases::train(5);
  dcp::State saved;
  saved.module("model", *trained.net);
  dcp::save(tmp / "ckpt", saved);
  struct OuterImpl : torch::nn::Module {
    dcp_cases::Net backbone;
    OuterImpl() { register_module("backbone", backbone); }
  };
  auto outer = std::make_shared<OuterImpl>();
  dcp::State state;
  state.module(*outer, TransferOptions().prefix("model.").rename("", "backbone."));
  const auto report = dcp::load(tmp / "ckpt", state);
  CHECK(report.loaded.size() == 5);
  for (const auto& p : trained.net->named_parameters()) {
    CAPTURE(p.key());
    CHECK(torch::equal(outer->named_parameters()["backbone." + p.key()], p.value()));
  }
  CHECK(torch::equal(outer->backbone->scale, trained.net->scale));
  // A name the renames cannot produce is refused, naming it.
  dcp::State wrong;
  CHECK_THROWS_AS(wrong.module(*outer, TransferOptions().prefix("model.").rename("", "head.")), UsageError);
}

TEST_CASE("dcp: damaged or unexpected input raises errors naming the file and key", "[dcp]") {
  TempDir tmp;
  const auto fresh = [&](const std::string& name) {
    copy_tree(kFixtures / "torch26" / "dcp", tmp / name);
    return tmp / name;
  };
  const auto load_into_zeros = [](const fs::path& dir) {
    auto r = dcp_cases::rank_state(0, 1, nullptr);
    dcp::load(dir, r->state);
  };
  SECTION("a truncated .distcp file") {
    const auto dir = fresh("truncated");
    fs::resize_file(dir / "__3_0.distcp", fs::file_size(dir / "__3_0.distcp") / 2);
    const auto what = raised<CorruptCheckpointError>([&] { load_into_zeros(dir); });
    CHECK_THAT(what, Catch::Contains("__3_0.distcp"));
    CHECK_THAT(what, Catch::Contains("past the file's end"));
  }
  SECTION("a flipped bit inside a chunk's tensor bytes") {
    const auto dir = fresh("flipped");
    const dcp::Reader reader(dir);
    const auto& chunk = reader.metadata().find("model.fc1.weight")->chunks[2];
    // Rows 8..11 of the weight, as the chunk stores them: find them in the file, flip one bit.
    const auto rows = dcp_cases::read_pt((kFixtures / "torch26" / "expected.pt").string())
                          .at("model.fc1.weight").narrow(0, 8, 4).contiguous();
    std::string bytes = test::read_file(dir / chunk.file);
    const auto at = bytes.find(std::string(static_cast<const char*>(rows.data_ptr()), rows.nbytes()));
    REQUIRE(at != std::string::npos);
    REQUIRE(at > chunk.offset);
    REQUIRE(at < chunk.offset + chunk.length);
    bytes[at + 100] = static_cast<char>(bytes[at + 100] ^ 0x10);
    fs::remove(dir / chunk.file);
    test::write_text(dir / chunk.file, bytes);
    CHECK_THROWS_AS(reader.verify(), CorruptCheckpointError);
  }
  const auto rewrite = [&](const fs::path& dir, const std::function<void(dcp::Metadata&)>& change) {
    auto m = dcp::parse_metadata(test::read_file(dir / ".metadata"), dir / ".metadata");
    change(m);
    fs::remove(dir / ".metadata");
    test::write_text(dir / ".metadata", dcp::write_metadata(m));
  };
  const auto item = [](dcp::Metadata& m, const std::string& key) -> dcp::Item& {
    for (auto& i : m.items)
      if (i.key == key) return i;
    throw std::runtime_error("no key " + key);
  };
  SECTION("overlapping chunks") {
    const auto dir = fresh("overlap");
    rewrite(dir, [&](dcp::Metadata& m) { item(m, "model.fc1.weight").chunks[1].offsets[0] = 2; });
    const auto what = raised<CorruptCheckpointError>([&] { dcp::Reader r(dir); });
    CHECK_THAT(what, Catch::Contains("model.fc1.weight"));
    CHECK_THAT(what, Catch::Contains("overlap"));
  }
  SECTION("a missing chunk") {
    const auto dir = fresh("missing");
    rewrite(dir, [&](dcp::Metadata& m) { item(m, "optim.state.fc2.weight.exp_avg").chunks.pop_back(); });
    const auto what = raised<CorruptCheckpointError>([&] { dcp::Reader r(dir); });
    CHECK_THAT(what, Catch::Contains("optim.state.fc2.weight.exp_avg"));
    CHECK_THAT(what, Catch::Contains("a chunk is missing"));
  }
  SECTION("a chunk past the file's end") {
    const auto dir = fresh("past");
    rewrite(dir, [&](dcp::Metadata& m) { item(m, "model.fc2.bias").chunks[0].offset += 1000000; });
    const auto what = raised<CorruptCheckpointError>([&] { dcp::Reader r(dir); });
    CHECK_THAT(what, Catch::Contains("model.fc2.bias"));
    CHECK_THAT(what, Catch::Contains("__0_0.distcp"));
  }
  SECTION("a .metadata naming a class DCP does not write: refused, never run") {
    const auto dir = fresh("evil");
    fs::remove(dir / ".metadata");
    static const char evil[] = "\x80\x02" "cos\nsystem\n(X\x05\x00\x00\x00" "touchtR.";
    test::write_text(dir / ".metadata", std::string(evil, sizeof evil - 1));
    const auto what = raised<CorruptCheckpointError>([&] { dcp::Reader r(dir); });
    CHECK_THAT(what, Catch::Contains(".metadata"));
    CHECK_THAT(what, Catch::Contains("os.system"));
  }
  SECTION("a value that is an object, and a stream transform: refused naming the key") {
    const auto dir = fresh("object");
    rewrite(dir, [&](dcp::Metadata& m) {
      item(m, "model.fc2.bias").chunks[0].transforms = {"zstd"};
      // "step" now points at a tensor chunk: a pickle of a torch class, not plain data.
      item(m, "step").chunks[0] = item(m, "model.fc1.weight").chunks[0];
      item(m, "step").chunks[0].offsets.clear();
      item(m, "step").chunks[0].sizes.clear();
    });
    const dcp::Reader reader(dir);
    auto what = raised<FormatVersionError>([&] { reader.value(reader.item("step")); });
    CHECK_THAT(what, Catch::Contains("'step'"));
    std::vector<float> out(1);
    what = raised<FormatVersionError>([&] { reader.read(reader.item("model.fc2.bias"), {0}, {1}, out.data()); });
    CHECK_THAT(what, Catch::Contains("model.fc2.bias"));
    CHECK_THAT(what, Catch::Contains("zstd"));
  }
  SECTION("a State key the checkpoint lacks, and a shape that differs") {
    const auto dir = fresh("mismatch");
    torch::Tensor extra = torch::zeros({3});
    dcp::State state;
    state.tensor("model.not_there", extra);
    CHECK_THROWS_AS(dcp::load(dir, state), MissingKeyError);
    CHECK(dcp::load(dir, state, dcp::LoadOptions().strict(false)).missing == std::vector<std::string>{"model.not_there"});
    torch::Tensor wrong = torch::zeros({5});
    dcp::State bad;
    bad.tensor("model.fc2.bias", wrong);
    const auto what = raised<MismatchError>([&] { dcp::load(dir, bad); });
    CHECK_THAT(what, Catch::Contains("model.fc2.bias"));
  }
}
