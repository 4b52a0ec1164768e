// A sharded row vector without LibTorch: rows [offset, offset + values.size()) of a 1-D float
// tensor of `total` rows, saved as a sharded key (savepoint::ShardedTensors' hook name), so that
// core tests reshard (test_world.cpp, test_object_store.cpp).
#pragma once

#include <savepoint/core.hpp>
#include <savepoint/format/safetensors.hpp>
#include <savepoint/shard_reader.hpp>

#include <cstdint>
#include <vector>

namespace test {

struct Rows {
  std::int64_t offset = 0, total = 0;
  std::vector<float> values;
};

inline void register_rows() {
  static const bool registered = [] {
    savepoint::TypeHooks h;
    h.name = savepoint::kShardedTensorsHook;
    h.extension = ".safetensors";
    h.save = [](void* object, const savepoint::SaveContext&) {
      const auto& r = *static_cast<Rows*>(object);
      savepoint::TensorData t;
      t.spec = {"w", savepoint::safetensors::DType::F32, {static_cast<std::int64_t>(r.values.size())},
                r.values.size() * 4};
      t.host_bytes = r.values.data();
      const nlohmann::json shards = {{"w", {{"global_shape", {r.total}}, {"offset", r.offset}}}};
      return savepoint::Payload::tensors({t}, {{"savepoint.shards", shards.dump()}});
    };
    h.prepare_load = [](void* object, const savepoint::LoadContext& ctx) -> savepoint::Apply {
      auto& r = *static_cast<Rows*>(object);
      std::vector<float> got(r.values.size());
      ctx.shards->read_rows("w", r.offset, r.offset + static_cast<std::int64_t>(got.size()), got.data());
      return [&r, got] { r.values = got; };
    };
    savepoint::hook_table().add<Rows>(h);
    return true;
  }();
  (void)registered;
}

}  // namespace test
