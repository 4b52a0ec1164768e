// savepoint::ShardedTensors: the hooks of the sharded kind (docs/distributed.md). The engine
// (src/engine/sharded.cpp) writes one file per rank with per-block checksums and, at load
// time, hands prepare_sharded a ShardReader that reads only the rows this rank holds now.
#include "builtins.hpp"

#include <savepoint/sharded.hpp>

namespace savepoint {

ShardedTensors& ShardedTensors::add(std::string name, torch::Tensor local, std::int64_t global_rows,
                                    std::int64_t offset) {
  if (!local.defined() || local.dim() == 0) {
    throw UsageError(fmt::format("savepoint: sharded tensor '{}' must be a defined tensor with at least one dim",
                                 name));
  }
  if (offset < 0 || offset + local.size(0) > global_rows) {
    throw UsageError(fmt::format("savepoint: sharded tensor '{}' cannot hold rows [{}, {}) of a tensor of {} rows",
                                 name, offset, offset + local.size(0), global_rows));
  }
  for (const auto& s : shards_)
    if (s.name == name) throw UsageError(fmt::format("savepoint: sharded tensor '{}' added twice", name));
  shards_.push_back({std::move(name), std::move(local), global_rows, offset});
  return *this;
}

RowRange even_rows(std::int64_t global_rows, int rank, int world) {
  if (world < 1 || rank < 0 || rank >= world || global_rows < 0)
    throw UsageError(fmt::format("savepoint: even_rows: rank {} of world {} ({} rows)", rank, world, global_rows));
  const std::int64_t base = global_rows / world, extra = global_rows % world;
  return {rank * base + std::min<std::int64_t>(rank, extra), base + (rank < extra ? 1 : 0)};
}

namespace builtin {

Payload save_sharded(void* object, const SaveContext&) {
  const auto& sharded = *static_cast<ShardedTensors*>(object);
  NamedTensors tensors;
  json layout = json::object();
  for (const auto& s : sharded.shards()) {
    std::vector<std::int64_t> global = s.local.sizes().vec();
    global[0] = s.global_rows;
    layout[s.name] = {{"global_shape", global}, {"offset", s.offset}};
    tensors.emplace_back(s.name, s.local);
  }
  return tensor_payload(tensors, {{"savepoint.hook", kShardedTensorsHook}, {"savepoint.shards", layout.dump()}});
}

Apply prepare_sharded(void* object, const LoadContext& ctx) {
  auto& sharded = *static_cast<ShardedTensors*>(object);
  if (!ctx.shards) mismatch(ctx, "the checkpoint's file of this key was not saved as a sharded key");
  const ShardReader& reader = *ctx.shards;
  const int rank = reader.rank();
  for (const auto& saved : reader.tensors()) {
    const bool registered = std::any_of(sharded.shards().begin(), sharded.shards().end(),
                                        [&](const auto& s) { return s.name == saved.name; });
    if (!registered)
      mismatch(ctx, fmt::format("rank {}: the checkpoint holds tensor '{}', which is not registered", rank, saved.name));
  }
  std::vector<std::pair<Tensor, Tensor>> copies;  // (registered tensor, rows read)
  for (const auto& s : sharded.shards()) {
    const auto found = std::find_if(reader.tensors().begin(), reader.tensors().end(),
                                    [&](const ShardedTensorInfo& t) { return t.name == s.name; });
    if (found == reader.tensors().end())
      mismatch(ctx, fmt::format("rank {}: tensor '{}' is not in the checkpoint", rank, s.name));
    std::vector<std::int64_t> global = s.local.sizes().vec();
    global[0] = s.global_rows;
    const auto dtype = to_st(s.local.scalar_type());
    if (!dtype || *dtype != found->dtype || global != found->global_shape) {
      mismatch(ctx, fmt::format("rank {}: tensor '{}' is {} {} in the checkpoint but {} {} here (global shape)", rank,
                                s.name, st::dtype_name(found->dtype), shape_str(found->global_shape),
                                c10::toString(s.local.scalar_type()), shape_str(global)));
    }
    Tensor rows = torch::empty(s.local.sizes(), torch::TensorOptions().dtype(s.local.scalar_type()));
    reader.read_rows(s.name, s.offset, s.offset + s.local.size(0), rows.data_ptr());
    copies.emplace_back(s.local, rows);
  }
  return [copies = std::move(copies)] {
    torch::NoGradGuard no_grad;
    for (const auto& [local, rows] : copies) const_cast<Tensor&>(local).copy_(rows);
  };
}

}  // namespace builtin
}  // namespace savepoint
