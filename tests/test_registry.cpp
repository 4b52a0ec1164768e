// The registry and hook resolution: every documented way to give a type hooks, in order.
#include "support.hpp"

#include "catch.hpp"

using namespace savepoint;
using test::TempDir;

namespace {
// SpeechBrain's Duck: members save(path) / load(path, end_of_epoch).
struct Duck {
  int quacks = 0;
  void save(const std::filesystem::path& p) const { test::write_text(p, std::to_string(quacks)); }
  void load(const std::filesystem::path& p, bool /*end_of_epoch*/) { quacks = std::stoi(test::read_file(p)); }
};

// A load(path) member without end_of_epoch is accepted too.
struct Goose {
  int honks = 0;
  void save(const std::filesystem::path& p) const { test::write_text(p, std::to_string(honks)); }
  void load(const std::filesystem::path& p) { honks = std::stoi(test::read_file(p)); }
};

// A type the user does not own: registered in one line.
struct Foreign {
  std::string text;
};

// Free functions found by ADL.
namespace zoo {
struct Swan {
  double wingspan = 0;
};
void savepoint_save(const Swan& s, const std::filesystem::path& p) { test::write_text(p, std::to_string(s.wingspan)); }
void savepoint_load(Swan& s, const std::filesystem::path& p, bool) { s.wingspan = std::stod(test::read_file(p)); }
}  // namespace zoo

// Inheritance: hooks registered for a base serve derived classes.
struct Animal {
  virtual ~Animal() = default;
  int legs = 0;
};
struct Dog : Animal {
  int tricks = 0;
};
struct Puppy : Dog {};
struct Pet {
  virtual ~Pet() = default;
};
struct Cat : Animal, Pet {};

// Plain JSON: to_json / from_json next to the type.
struct Config {
  std::string name;
  int layers = 0;
};
void to_json(nlohmann::json& j, const Config& c) { j = {{"name", c.name}, {"layers", c.layers}}; }
void from_json(const nlohmann::json& j, Config& c) {
  c.name = j.at("name").get<std::string>();
  c.layers = j.at("layers").get<int>();
}

struct Opaque {
  int x = 0;
};
}  // namespace

TEST_CASE("member save/load hooks are found without registration", "[registry]") {
  TempDir dir;
  Duck duck;
  duck.quacks = 3;
  Goose goose;
  goose.honks = 7;
  Checkpointer ckpt(dir.path());
  ckpt.add_recoverable("duck", duck);
  ckpt.add_recoverable("goose", goose);
  const auto saved = ckpt.save_checkpoint();
  CHECK(test::read_file(saved.path / "duck.ckpt") == "3");
  duck.quacks = 0;
  goose.honks = 0;
  REQUIRE(ckpt.recover_if_possible());
  CHECK(duck.quacks == 3);
  CHECK(goose.honks == 7);
}

TEST_CASE("register_hooks teaches a foreign type in one line", "[registry]") {
  register_hooks<Foreign>(
      "test.Foreign", [](const Foreign& f, const std::filesystem::path& p) { test::write_text(p, f.text); },
      [](Foreign& f, const std::filesystem::path& p, bool) { f.text = test::read_file(p); }, ".txt");
  TempDir dir;
  Foreign f{"hello"};
  Checkpointer ckpt(dir.path());
  ckpt.add_recoverable("foreign", f);
  const auto saved = ckpt.save_checkpoint();
  CHECK(saved.files.at(0).hook == "test.Foreign");
  CHECK(test::read_file(saved.path / "foreign.txt") == "hello");
  f.text.clear();
  ckpt.load_checkpoint(saved);
  CHECK(f.text == "hello");
}

TEST_CASE("ADL free functions savepoint_save/savepoint_load are found", "[registry]") {
  TempDir dir;
  zoo::Swan swan{2.5};
  Checkpointer ckpt(dir.path());
  ckpt.add_recoverable("swan", swan);
  ckpt.save_checkpoint();
  swan.wingspan = 0;
  ckpt.recover_if_possible();
  CHECK(swan.wingspan == 2.5);
}

TEST_CASE("hooks of a registered base class serve derived classes, the nearest base wins", "[registry]") {
  register_hooks<Animal>(
      "test.Animal", [](const Animal& a, const std::filesystem::path& p) { test::write_text(p, std::to_string(a.legs)); },
      [](Animal& a, const std::filesystem::path& p, bool) { a.legs = std::stoi(test::read_file(p)); });
  register_hooks<Dog>(
      "test.Dog",
      [](const Dog& d, const std::filesystem::path& p) { test::write_text(p, std::to_string(d.legs * 100 + d.tricks)); },
      [](Dog& d, const std::filesystem::path& p, bool) {
        const int v = std::stoi(test::read_file(p));
        d.legs = v / 100;
        d.tricks = v % 100;
      });
  TempDir dir;
  Puppy puppy;  // registered: Animal and Dog; Dog is nearer
  puppy.legs = 4;
  puppy.tricks = 2;
  Cat cat;  // Animal via the first base of a multiple-inheritance class
  cat.legs = 3;
  Checkpointer ckpt(dir.path());
  ckpt.add_recoverable("puppy", puppy);
  ckpt.add_recoverable("cat", cat);
  const auto saved = ckpt.save_checkpoint();
  CHECK(saved.file("puppy")->hook == "test.Dog");
  CHECK(saved.file("cat")->hook == "test.Animal");
  CHECK(test::read_file(saved.path / "puppy.ckpt") == "402");
  puppy = Puppy();
  cat.legs = 0;
  ckpt.load_checkpoint(saved);
  CHECK(puppy.legs == 4);
  CHECK(puppy.tricks == 2);
  CHECK(cat.legs == 3);
}

TEST_CASE("a class deriving from two unrelated registered types is ambiguous", "[registry]") {
  register_hooks<Animal>("test.Animal", [](const Animal&, const std::filesystem::path& p) { test::write_text(p, ""); },
                         [](Animal&, const std::filesystem::path&, bool) {});
  register_hooks<Pet>("test.Pet", [](const Pet&, const std::filesystem::path& p) { test::write_text(p, ""); },
                      [](Pet&, const std::filesystem::path&, bool) {});
  TempDir dir;
  Cat cat;
  Checkpointer ckpt(dir.path());
  CHECK_THROWS_WITH(ckpt.add_recoverable("cat", cat), Catch::Contains("ambiguous") && Catch::Contains("Cat"));
}

TEST_CASE("JSON-convertible values are stored as <key>.json", "[registry]") {
  TempDir dir;
  int step = 41;
  std::vector<double> history{1.5, 2.5};
  Config config{"mlp", 3};
  Checkpointer ckpt(dir.path(), {{"step", step}, {"history", history}, {"config", config}});
  const auto saved = ckpt.save_checkpoint();
  CHECK(nlohmann::json::parse(test::read_file(saved.path / "step.json")) == 41);
  CHECK(nlohmann::json::parse(test::read_file(saved.path / "config.json"))["name"] == "mlp");
  step = 0;
  history.clear();
  config = {};
  ckpt.recover_if_possible();
  CHECK(step == 41);
  CHECK(history == std::vector<double>{1.5, 2.5});
  CHECK(config.layers == 3);
}

TEST_CASE("a JSON value of the wrong shape fails before anything is loaded", "[registry]") {
  TempDir dir;
  int a = 1;
  std::string b = "text";
  {
    Checkpointer writer(dir.path(), {{"a", a}, {"b", b}});
    writer.save_checkpoint();
  }
  int a2 = 0;
  int b_as_int = 5;  // the file holds a string
  Checkpointer reader(dir.path(), {{"a", a2}, {"b", b_as_int}});
  CHECK_THROWS_AS(reader.recover_if_possible(), MismatchError);
  CHECK(a2 == 0);  // not half-loaded
  CHECK(b_as_int == 5);
}

TEST_CASE("per-object hooks override everything else", "[registry]") {
  TempDir dir;
  Duck duck;
  duck.quacks = 5;
  int calls = 0;
  Checkpointer ckpt(dir.path());
  ckpt.add_recoverable(
      "duck", duck, [&](Duck& d, const std::filesystem::path& p) { ++calls; test::write_text(p, "custom " + std::to_string(d.quacks)); },
      [&](Duck& d, const std::filesystem::path& p, bool) { ++calls; d.quacks = std::stoi(test::read_file(p).substr(7)); });
  const auto saved = ckpt.save_checkpoint();
  CHECK(test::read_file(saved.path / "duck.ckpt") == "custom 5");
  duck.quacks = 0;
  ckpt.load_checkpoint(saved);
  CHECK(duck.quacks == 5);
  CHECK(calls == 2);
}

TEST_CASE("an object without hooks is rejected when added, naming key and type", "[registry]") {
  TempDir dir;
  Opaque o;
  Checkpointer ckpt(dir.path());
  CHECK_THROWS_AS(ckpt.add_recoverable("opaque", o), UsageError);
  CHECK_THROWS_WITH(ckpt.add_recoverable("opaque", o), Catch::Contains("'opaque'") && Catch::Contains("Opaque"));
  CHECK(ckpt.keys().empty());
}

TEST_CASE("keys keep insertion order and re-adding a key replaces it in place", "[registry]") {
  TempDir dir;
  int a = 1, b = 2, c = 3, b2 = 20;
  Checkpointer ckpt(dir.path());
  ckpt.add_recoverable("a", a);
  ckpt.add_recoverable("b", b);
  ckpt.add_recoverable("c", c);
  ckpt.add_recoverable("b", b2);
  CHECK(ckpt.keys() == std::vector<std::string>{"a", "b", "c"});
  const auto saved = ckpt.save_checkpoint();
  CHECK(saved.files.at(1).key == "b");
  CHECK(test::read_file(saved.path / "b.json") == "20\n");
  CHECK(ckpt.remove_recoverable("b"));
  CHECK_FALSE(ckpt.remove_recoverable("b"));
  CHECK(ckpt.keys() == std::vector<std::string>{"a", "c"});
}

TEST_CASE("shared_ptr recoverables are kept alive by the checkpointer", "[registry]") {
  TempDir dir;
  Checkpointer ckpt(dir.path());
  std::weak_ptr<int> weak;
  {
    auto value = std::make_shared<int>(9);
    weak = value;
    ckpt.add_recoverable("value", value);
  }
  REQUIRE_FALSE(weak.expired());
  const auto saved = ckpt.save_checkpoint();
  *weak.lock() = 0;
  ckpt.load_checkpoint(saved);
  CHECK(*weak.lock() == 9);
  std::shared_ptr<int> null;
  CHECK_THROWS_AS(ckpt.add_recoverable("null", null), UsageError);
}

TEST_CASE("key names are validated", "[registry]") {
  TempDir dir;
  int v = 0;
  Checkpointer ckpt(dir.path());
  for (const std::string& bad : std::vector<std::string>{"", "a/b", "..", "../x", "a\\b", ".hidden", std::string("a\0b", 3)}) {
    INFO("key: " << bad);
    CHECK_THROWS_AS(ckpt.add_recoverable(bad, v), UsageError);
  }
  CHECK_THROWS_WITH(ckpt.add_recoverable("meta", v), Catch::Contains("meta.json"));
  CHECK_NOTHROW(ckpt.add_recoverable("dataloader-TRAIN", v));
  CHECK_NOTHROW(ckpt.add_recoverable("model.v2", v));
}
