#include "persistence.hpp"

#include "../engine/save_pipeline.hpp"
#include "../engine/save_transaction.hpp"

#include <savepoint/detail/meta.hpp>

#include <memory>

namespace savepoint::tier {

using nlohmann::json;
using namespace detail;

std::optional<Checkpoint> persist(const Layout& layout, const engine::NodeMap& nodes,
                                  const engine::World& replication, engine::Catalog& disk,
                                  const std::optional<KeepOptions>& keep, const ChunkBuffer& buffer) {
  std::unique_ptr<engine::SaveTransaction> transaction;
  Checkpoint source;  // the memory checkpoint, on rank 0
  const json target = json::parse(engine::from_root(replication, "persisting the memory tier (allocating)", [&] {
    const auto markers = layout.markers();
    if (markers.empty()) return std::string("null");
    source = read_checkpoint(layout.own() / markers.front().name);
    json user = source.meta;
    user.erase("unixtime");
    user.erase("end_of_epoch");
    Checkpoint allocated = engine::allocate_target(disk, user, SaveOptions().end_of_epoch(source.end_of_epoch()), 1);
    allocated.meta["unixtime"] = source.unixtime();  // the state's time, not the copy's
    allocated.world_size = source.world_size;
    transaction = std::make_unique<engine::SaveTransaction>(disk.root(), std::move(allocated), SaveOptions());
    return dump(json{{"name", markers.front().name}, {"temp", transaction->directory().filename().string()}});
  }));
  if (target.is_null()) return std::nullopt;
  const std::string name = target.at("name").get<std::string>();
  // Each node's leader copies the files of its node's part (disjoint across nodes).
  engine::agree(replication, "persisting the memory tier (copying)", [&] {
    if (!nodes.is_leader(replication.rank())) return std::string();
    const fs::path part = layout.own() / name;
    const Checkpoint here = read_checkpoint(part);
    const fs::path temp = disk.root() / target.at("temp").get<std::string>();
    for (const auto& rec : here.files)
      if (path_status(part / rec.file)) copy_verified(part / rec.file, temp / rec.file, rec, /*sync=*/true, buffer);
    return std::string();
  });
  const auto persisted = engine::checkpoints_from_root(replication, "persisting the memory tier (committing)", [&] {
    for (const auto& rec : source.files) transaction->record(rec);
    std::function<void()> retention;
    if (keep) retention = [&] { disk.retain(*keep); };
    std::vector<Checkpoint> out{engine::commit_and_retain(*transaction, disk.lock().get(), nullptr, retention)};
    transaction.reset();
    return out;
  });
  return persisted.at(0);
}

}  // namespace savepoint::tier
