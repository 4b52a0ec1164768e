// Must not compile: a const object cannot be a recoverable (loading writes into it).
// Expected: "a recoverable must be mutable"
#include <savepoint/checkpointer.hpp>

void f(savepoint::Checkpointer& ckpt) {
  const int step = 0;
  ckpt.add_recoverable("step", step);
}
