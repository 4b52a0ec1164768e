// Must not compile: a save hook that cannot be called as save(const T&, path).
// Expected: "a save hook must be callable as save(const T&"
#include <savepoint/hooks.hpp>

void f() {
  int step = 0;
  savepoint::Recoverable r(
      "step", step, [](const int&, int) {},  // wrong: the file is not an int
      [](int&, const std::filesystem::path&, bool) {});
}
