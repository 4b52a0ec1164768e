// Must not compile: half of the member protocol (save without load).
// Expected: "has a save(path) member but no `void load("
#include <savepoint/hooks.hpp>

struct OnlySave {
  void save(const std::filesystem::path&) const {}
};

void f() {
  OnlySave o;
  savepoint::Recoverable r("o", o);
}
