// Must not compile: a temporary would be destroyed right away, leaving a dangling reference.
// Expected: "add_recoverable got a temporary"
#include <savepoint/checkpointer.hpp>

#include <vector>

void f(savepoint::Checkpointer& ckpt) { ckpt.add_recoverable("history", std::vector<int>{1, 2, 3}); }
