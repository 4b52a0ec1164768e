#include "incremental.hpp"

#include "../format/parts.hpp"
#include "../format/tensor_writer.hpp"

#include <savepoint/log.hpp>

namespace savepoint::engine {

namespace {
std::optional<PartSignature> signature_of(const Payload& part) {
  PartSignature out;
  for (const auto& t : part.tensor_data()) {
    if (!t.host_bytes || !t.version) return std::nullopt;  // nothing to identify it by: hashed
    out.emplace_back(t.host_bytes, t.version());
  }
  return out;
}

const FileRecord* record_of(const Checkpoint& checkpoint, const std::string& file) {
  for (const auto& f : checkpoint.files)
    if (f.file == file) return &f;
  return nullptr;
}
}  // namespace

PlannedPart IncrementalSaves::decide(std::string file, Payload payload, int part, const Checkpoint* reference) const {
  PlannedPart p{std::move(file), std::move(payload), nullptr, std::nullopt, std::nullopt};
  p.signature = signature_of(p.payload);
  const FileRecord* before = reference ? record_of(*reference, p.file) : nullptr;
  if (before && before->part != part) before = nullptr;
  if (before) p.reference_xxh3 = before->xxh3;
  const auto last = last_.find(p.file);
  const bool moved = p.signature && last != last_.end() && last->second.signature != p.signature;
  const bool still_changing = moved && last->second.changed;
  if (before && !still_changing) {
    const auto digest = safetensors::digest_tensors(p.payload, p.file);
    if (digest.bytes == before->bytes && digest.xxh3 == before->xxh3) p.unchanged = before;
  }
  return p;
}

std::vector<PlannedPart> IncrementalSaves::plan(const std::string& file, const Payload& payload,
                                                const Checkpoint* reference) const {
  std::vector<PlannedPart> out;
  auto parts = safetensors::split_into_parts(payload, part_bytes_);
  for (std::size_t i = 0; i < parts.size(); ++i)
    out.push_back(decide(safetensors::part_file_name(file, i), std::move(parts[i]), static_cast<int>(i), reference));
  return out;
}

PlannedPart IncrementalSaves::plan_whole(const std::string& file, Payload payload, const Checkpoint* reference) const {
  return decide(file, std::move(payload), -1, reference);
}

void IncrementalSaves::committed(std::map<std::string, PartHistory> parts) { last_ = std::move(parts); }

void IncrementalSaves::link_failed(const fs::path& file, const std::string& why) {
  std::call_once(warned_, [&] {
    detail::log(LogLevel::warn,
                "Incremental save: cannot hard-link '{}' ({}); unchanged parts are written (copied) instead",
                file.string(), why);
  });
}

}  // namespace savepoint::engine
