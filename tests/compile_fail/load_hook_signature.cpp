// Must not compile: a per-object load hook that takes neither (T&, path, bool) nor (T&, path).
// Expected: "a load hook must be callable as load(T&"
#include <savepoint/hooks.hpp>

#include <string>

void f() {
  int step = 0;
  savepoint::Recoverable r(
      "step", step, [](const int&, const std::filesystem::path&) {},
      [](int&, const std::string&, int, int) {});  // wrong: four parameters
}
