// Must compile: the correct forms of everything the compile-fail tests get wrong, built the
// same way, so that a broken mechanism (include path, flags) cannot make them pass.
#include <savepoint/checkpointer.hpp>
#include <savepoint/hooks.hpp>

#include <memory>
#include <vector>

struct Both {
  void save(const std::filesystem::path&) const {}
  void load(const std::filesystem::path&, bool) {}
};
struct LoadWithoutEpoch {
  void save(const std::filesystem::path&) const {}
  void load(const std::filesystem::path&) {}
};
struct Duck {
  int quacks = 0;
};

void f() {
  int step = 0;
  savepoint::Recoverable mutable_lvalue("step", step);
  savepoint::Recoverable shared("history", std::make_shared<std::vector<int>>());
  Both both;
  savepoint::Recoverable members("both", both);
  LoadWithoutEpoch one;
  savepoint::Recoverable members1("one", one);
  savepoint::Recoverable hooks3(
      "step", step, [](const int&, const std::filesystem::path&) {},
      [](int&, const std::filesystem::path&, bool) {});
  savepoint::Recoverable hooks2(
      "step", step, [](const int&, const std::filesystem::path&) {},
      [](int&, const std::filesystem::path&) {});
  savepoint::register_hooks<Duck>(
      "test.Duck", [](const Duck&, const std::filesystem::path&) {},
      [](Duck&, const std::filesystem::path&, bool) {});
}
