#include <savepoint/savepoint.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  int step = 7;
  {
    savepoint::Checkpointer ckpt(argv[1], {{"step", step}});
    ckpt.save_checkpoint({{"loss", 0.5}});
  }
  step = 0;
  savepoint::Checkpointer ckpt(argv[1], {{"step", step}});
  const auto loaded = ckpt.recover_if_possible(savepoint::min_key("loss"));
  std::printf("consumer recovered step=%d\n", step);
  return loaded && step == 7 ? 0 : 1;
}
