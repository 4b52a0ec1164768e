// The sharded-tensor scenarios of tests/dist_worker (tests/test_sharded.cpp starts them):
//   dist_worker sharded_<what> <rank> <world> <store file> <checkpoint dir> <step>
// Part of tests/dist_worker.cpp's translation unit (it includes this file).
// The state of step S is three global tensors, each split by rows over the ranks of the
// current world with even_rows (so a run at another world size holds other rows):
//   A: float [37, 5]    = S * 1000 + arange      (37 rows: uneven at 2, 3 and 4 ranks)
//   B: int64 [37]       = S - arange
//   C: float [600, 2048] = S + arange / 4096      (4.7 MiB: several 1 MiB blocks per shard)
// and a replicated int "step" = S.
//
//   sharded_save S       saves step S (save_and_keep_only keep(3); for an even S the async
//                        variant, the rows of C overwritten right after the call)
//   sharded_recover S    recovers at this world size and expects exactly the rows of step S
//   sharded_load S       load_checkpoint of the newest checkpoint; expects the rows of step S
//   sharded_mismatch S   registers C with 2047 columns: recovery must raise DistributedError
//                        naming key 'state', tensor 'C' and the rank, on every rank
//   sharded_single_save S no process group: saves step S as one file with all rows
//   sharded_reassemble S no process group: one ShardedTensors with all rows, loaded from
//                        however many files; expects the whole tensors of step S
//   sharded_partial S    no process group: registers rows that lie in rank 0's file only and
//                        loads the newest checkpoint; every read must be of rank 0's file
//                        (counted through the I/O fault hook), and fewer bytes than the files hold
#include "worker_support.hpp"

#include <savepoint/detail/io.hpp>

#include <algorithm>
#include <iostream>
#include <map>
#include <mutex>
#include <string>

namespace {
struct Global {
  torch::Tensor a, b, c;
};

Global global_state(int step) {
  return {torch::arange(37 * 5, torch::kFloat).reshape({37, 5}) + step * 1000.0,
          step - torch::arange(37, torch::kLong),
          torch::arange(600 * 2048, torch::kFloat).reshape({600, 2048}) / 4096.0 + step};
}

// This rank's rows of every tensor (zeros), registered in `shards`; `columns` of C.
struct Local {
  torch::Tensor a, b, c;
  savepoint::RowRange ra, rc;
};

Local register_rows(savepoint::ShardedTensors& shards, int rank, int world, std::int64_t c_columns = 2048) {
  Local l;
  l.ra = savepoint::even_rows(37, rank, world);
  l.rc = savepoint::even_rows(600, rank, world);
  l.a = torch::zeros({l.ra.rows, 5});
  l.b = torch::zeros({l.ra.rows}, torch::kLong);
  l.c = torch::zeros({l.rc.rows, c_columns});
  shards.add("A", l.a, 37, l.ra.offset).add("B", l.b, 37, l.ra.offset).add("C", l.c, 600, l.rc.offset);
  return l;
}

bool equal_rows(const Local& l, const Global& g) {
  return torch::equal(l.a, g.a.narrow(0, l.ra.offset, l.ra.rows)) &&
         torch::equal(l.b, g.b.narrow(0, l.ra.offset, l.ra.rows)) &&
         torch::equal(l.c, g.c.narrow(0, l.rc.offset, l.rc.rows));
}
}  // namespace

int run_sharded_scenario(const std::string& scenario, const std::shared_ptr<savepoint::ProcessGroup>& group,
                         int rank, int world, const std::filesystem::path& dir, int step) {
  using worker::out;  // "rank R: ..."; the group, rank and world are dist_worker's (tests/worker_support.hpp)
  auto fail = [&](const std::string& why) {
    out("FAILED: " + why);
    return 1;
  };
  const Global g = global_state(step);
  savepoint::ShardedTensors shards;
  int saved_step = -1;

  if (scenario == "sharded_single_save") {  // no process group: one file with all rows
    savepoint::Checkpointer ckpt(dir);
    ckpt.add_recoverable("step", saved_step);
    const Local l = register_rows(shards, 0, 1);
    ckpt.add_recoverable("state", shards, savepoint::sharded());
    torch::NoGradGuard no_grad;
    const_cast<torch::Tensor&>(l.a).copy_(g.a);
    const_cast<torch::Tensor&>(l.b).copy_(g.b);
    const_cast<torch::Tensor&>(l.c).copy_(g.c);
    saved_step = step;
    out("saved " + ckpt.save_checkpoint({{"step", step}}).name());
    out("ok");
    return 0;
  }
  if (scenario == "sharded_reassemble" || scenario == "sharded_partial") {
    savepoint::Checkpointer ckpt(dir, savepoint::CheckpointerOptions().read_only(true));
    ckpt.add_recoverable("step", saved_step);
    Local l;
    if (scenario == "sharded_reassemble") {
      l = register_rows(shards, 0, 1);
    } else {  // rows [0, 10) of A and B, [0, 100) of C: the first block of rank 0's file of a 4-rank save
      l.ra = {0, 10};
      l.rc = {0, 100};
      l.a = torch::zeros({10, 5});
      l.b = torch::zeros({10}, torch::kLong);
      l.c = torch::zeros({100, 2048});
      shards.add("A", l.a, 37, 0).add("B", l.b, 37, 0).add("C", l.c, 600, 0);
    }
    ckpt.add_recoverable("state", shards);  // sharded: the hook says so, no option needed
    std::mutex mutex;
    std::map<std::string, int> reads;  // file name -> reads of the sharded key's files
    savepoint::detail::set_fault_hook([&](savepoint::detail::IoOp op, const std::filesystem::path& p) {
      if (op == savepoint::detail::IoOp::read && p.filename().string().rfind("state.", 0) == 0) {
        std::lock_guard<std::mutex> lock(mutex);
        ++reads[p.filename().string()];
      }
      return savepoint::detail::Fault{};
    });
    const auto loaded = ckpt.recover_if_possible();
    savepoint::detail::set_fault_hook(nullptr);
    if (!loaded) return fail("nothing recovered");
    if (saved_step != step) return fail("recovered step " + std::to_string(saved_step));
    if (!equal_rows(l, g)) return fail("the rows differ from the saved global tensors");
    for (const auto& [file, n] : reads) out("read " + file + " " + std::to_string(n) + " time(s)");
    if (scenario == "sharded_partial") {
      if (reads.size() != 1 || reads.begin()->first != "state.rank0.safetensors")
        return fail("read other files than rank 0's");
      std::uint64_t file_bytes = loaded->file("state", 0)->bytes;
      out("rank 0's file has " + std::to_string(file_bytes) + " bytes");
    }
    out("ok");
    return 0;
  }

  savepoint::Checkpointer ckpt(dir, savepoint::CheckpointerOptions().process_group(group));
  ckpt.add_recoverable("step", saved_step);
  const Local l = register_rows(shards, rank, world, scenario == "sharded_mismatch" ? 2047 : 2048);
  ckpt.add_recoverable("state", shards, savepoint::sharded());

  if (scenario == "sharded_save") {
    torch::NoGradGuard no_grad;
    const_cast<torch::Tensor&>(l.a).copy_(g.a.narrow(0, l.ra.offset, l.ra.rows));
    const_cast<torch::Tensor&>(l.b).copy_(g.b.narrow(0, l.ra.offset, l.ra.rows));
    const_cast<torch::Tensor&>(l.c).copy_(g.c.narrow(0, l.rc.offset, l.rc.rows));
    saved_step = step;
    if (step % 2 == 0) {  // async: the snapshot holds step S although the rows change at once
      ckpt.save_and_keep_only_async({{"step", step}}, savepoint::keep(3));
      const_cast<torch::Tensor&>(l.c).fill_(-1.0);
      const auto saved = ckpt.wait();
      if (!saved) return fail("the async save returned nothing");
      out("saved " + saved->name() + " (async)");
    } else {
      const auto saved = ckpt.save_and_keep_only({{"step", step}}, savepoint::keep(3));
      out("saved " + saved.name());
    }
  } else if (scenario == "sharded_recover") {
    const auto loaded = ckpt.recover_if_possible();
    if (!loaded) return fail("nothing recovered");
    if (saved_step != step) return fail("recovered step " + std::to_string(saved_step) + ", expected " + std::to_string(step));
    if (!equal_rows(l, g)) return fail("the rows differ from the saved global tensors");
    out("recovered " + loaded->name() + " at world " + std::to_string(world));
  } else if (scenario == "sharded_load") {  // load_checkpoint of the newest, not recovery
    const auto all = ckpt.list_checkpoints();
    if (all.empty()) return fail("nothing listed");
    const auto newest = *std::max_element(all.begin(), all.end(),
                                          [](const auto& a, const auto& b) { return a.sequence < b.sequence; });
    ckpt.load_checkpoint(newest);
    if (saved_step != step) return fail("loaded step " + std::to_string(saved_step) + ", expected " + std::to_string(step));
    if (!equal_rows(l, g)) return fail("the rows differ from the saved global tensors");
    out("loaded " + newest.name() + " at world " + std::to_string(world));
  } else if (scenario == "sharded_mismatch") {
    try {
      ckpt.recover_if_possible();
      return fail("a mismatched global shape did not raise");
    } catch (const savepoint::DistributedError& e) {
      out(std::string("raised: ") + e.what());
      const std::string what = e.what();
      if (what.find("'state'") == std::string::npos || what.find("'C'") == std::string::npos ||
          what.find("rank ") == std::string::npos)
        return fail("the error does not name key, tensor and rank");
    }
    if (torch::count_nonzero(l.c).item<std::int64_t>() != 0 || saved_step != -1) return fail("something was applied");
  } else {
    return fail("unknown scenario " + scenario);
  }
  out("ok");
  return 0;
}
