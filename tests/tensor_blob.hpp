// A tensor key without LibTorch (one I64 tensor), so that torch-free programs write tensor
// files: the crash-state scenarios (direct I/O, incremental saves), test_scrub.cpp and the CLI
// test's fixture (scrub_fixture.cpp).
#pragma once

#include <savepoint/core.hpp>
#include <savepoint/format/safetensors.hpp>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <utility>
#include <vector>

namespace test {

struct TensorBlob {
  std::vector<std::int64_t> values;
};

inline void register_tensor_blob() {
  static const bool registered = [] {
    savepoint::TypeHooks h;
    h.name = "test.TensorBlob";
    h.extension = ".safetensors";
    h.save = [](void* obj, const savepoint::SaveContext&) {
      const auto& b = *static_cast<TensorBlob*>(obj);
      savepoint::TensorData d;
      d.spec = {"values", savepoint::safetensors::DType::I64, {static_cast<std::int64_t>(b.values.size())},
                b.values.size() * sizeof(std::int64_t)};
      d.host_bytes = b.values.data();
      return savepoint::Payload::tensors({d});
    };
    h.prepare_load = [](void* obj, const savepoint::LoadContext& ctx) -> savepoint::Apply {
      const auto header = savepoint::safetensors::parse(ctx.bytes(), ctx.file);
      const auto* info = header.find("values");
      if (!info) throw std::runtime_error("no tensor 'values' in " + ctx.file.string());
      std::vector<std::int64_t> values(info->nbytes() / sizeof(std::int64_t));
      std::memcpy(values.data(), ctx.bytes().data() + header.data_start + info->begin, info->nbytes());
      return [obj, values] { static_cast<TensorBlob*>(obj)->values = values; };
    };
    savepoint::hook_table().add<TensorBlob>(std::move(h));
    return true;
  }();
  (void)registered;
}

}  // namespace test
