// Must not compile: the hook table is for class types (it finds base classes at run time).
// Expected: "hooks are registered for class types"
#include <savepoint/hooks.hpp>

void f() {
  savepoint::register_hooks<int>(
      "int", [](const int&, const std::filesystem::path&) {},
      [](int&, const std::filesystem::path&, bool) {});
}
