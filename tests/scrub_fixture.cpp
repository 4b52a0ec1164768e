// Writes incremental checkpoints whose parts are shared, for the CLI test's scrub cases
// (tests/cli_test.sh): a "frozen" key that never changes (its parts are hard-linked from save
// to save) and a "trained" one that changes at every save. Torch-free.
//   savepoint_scrub_fixture DIR [SAVES]   (default: 5 saves, parts of 4 KiB)
#include "tensor_blob.hpp"

#include <cstdlib>
#include <iostream>
#include <string>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: savepoint_scrub_fixture DIR [SAVES]\n";
    return 2;
  }
  const int saves = argc > 2 ? std::atoi(argv[2]) : 5;
  test::register_tensor_blob();
  test::TensorBlob frozen, trained;
  frozen.values.resize(4 * 512);
  for (std::size_t i = 0; i < frozen.values.size(); ++i) frozen.values[i] = static_cast<std::int64_t>(i * i);
  savepoint::Checkpointer ckpt(argv[1], savepoint::CheckpointerOptions().incremental(true).part_bytes(4096));
  ckpt.add_recoverable("frozen", frozen);
  ckpt.add_recoverable("trained", trained);
  for (int s = 0; s < saves; ++s) {
    trained.values.assign(2 * 512, s);
    ckpt.save_checkpoint({{"save", s}});
  }
  std::cout << "wrote " << saves << " incremental checkpoints to " << argv[1] << "\n";
  return 0;
}
