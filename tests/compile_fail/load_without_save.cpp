// Must not compile: half of the member protocol (load without save).
// Expected: "has a load member but no `void save("
#include <savepoint/hooks.hpp>

struct OnlyLoad {
  void load(const std::filesystem::path&, bool) {}
};

void f() {
  OnlyLoad o;
  savepoint::Recoverable r("o", o);
}
