// Must not compile: a raw pointer says nothing about ownership; pass the object or a shared_ptr.
// Expected: "not a raw pointer"
#include <savepoint/hooks.hpp>

void f() {
  int step = 0;
  int* p = &step;
  savepoint::Recoverable r("step", p);
}
