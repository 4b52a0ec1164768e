// savepoint prune / pin / unpin: the only subcommands that change a root. They go through a
// writing Checkpointer, which takes the directory's lock: they cannot race a training run's
// own retention (a root locked by a live process is an error, exit 1).
#include "cli.hpp"

#include <fmt/format.h>

namespace savepoint::cli {

namespace {

struct PruneArgs {
  std::string dir;
  int keep = 0;
  std::vector<std::string> min_keys, max_keys;
  bool no_recent = false, dry_run = false, json = false;
  int every_nth_epoch = 0;
};

int prune(const PruneArgs& a) {
  require_directory(a.dir);
  KeepOptions keep = savepoint::keep(a.keep);
  for (const auto& k : a.min_keys) keep.min_key(k);
  for (const auto& k : a.max_keys) keep.max_key(k);
  keep.keep_recent(!a.no_recent);
  if (a.every_nth_epoch > 0) keep.also(keep_every_nth_epoch(a.every_nth_epoch));
  // The dry run asks the same planner the deletion uses (Checkpointer::plan_deletions), so
  // it prints exactly what the real run deletes.
  Checkpointer ckpt(a.dir, CheckpointerOptions().read_only(a.dry_run));
  const auto doomed = a.dry_run ? ckpt.plan_deletions(keep) : ckpt.delete_checkpoints(keep);
  if (a.json) {
    json names = json::array();
    for (const auto& c : doomed) names.push_back(c.name());
    print_json({{"dry_run", a.dry_run}, {a.dry_run ? "would_delete" : "deleted", names}});
    return kOk;
  }
  for (const auto& c : doomed) fmt::print("{} {}\n", a.dry_run ? "would delete" : "deleted", c.name());
  fmt::print("{} checkpoint(s) {}\n", doomed.size(), a.dry_run ? "would be deleted" : "deleted");
  return kOk;
}

int set_pinned(const std::string& where, const std::string& name, bool pinned) {
  const auto located = locate(where, name);
  Checkpointer ckpt(located.root);
  const auto updated = pinned ? ckpt.pin(located.checkpoint) : ckpt.unpin(located.checkpoint);
  fmt::print("{} {}\n", updated.name(), updated.pinned ? "pinned" : "unpinned");
  return kOk;
}

}  // namespace

void add_manage(CLI::App& app, Runner& run) {
  auto a = std::make_shared<PruneArgs>();
  auto* prune_cmd = app.add_subcommand(
      "prune", "Delete the checkpoints the API's keep rules would delete (Checkpointer::delete_checkpoints): "
               "each --min-key/--max-key and recency protect their best N; pinned ones are never deleted");
  prune_cmd->add_option("dir", a->dir, "checkpoint root directory")->required();
  prune_cmd->add_option("--keep", a->keep, "how many checkpoints each rule protects (0: none)")
      ->required()
      ->check(CLI::NonNegativeNumber);
  prune_cmd->add_option("--min-key", a->min_keys, "also protect the N with the lowest meta[KEY] (repeatable)");
  prune_cmd->add_option("--max-key", a->max_keys, "also protect the N with the highest meta[KEY] (repeatable)");
  prune_cmd->add_flag("--no-recent", a->no_recent, "do not protect the N most recent");
  prune_cmd->add_option("--every-nth-epoch", a->every_nth_epoch, "also keep those whose meta[\"epoch\"] is a multiple of N")
      ->check(CLI::PositiveNumber);
  prune_cmd->add_flag("--dry-run", a->dry_run, "print what would be deleted, delete nothing");
  prune_cmd->add_flag("--json", a->json, "print JSON");
  prune_cmd->callback([a, &run] { run = [a] { return prune(*a); }; });

  struct PinArgs {
    std::string where, name;
  };
  for (const bool pinned : {true, false}) {
    auto p = std::make_shared<PinArgs>();
    auto* cmd = app.add_subcommand(pinned ? "pin" : "unpin",
                                   pinned ? "Pin a checkpoint: retention (save_and_keep_only, prune) never deletes it"
                                          : "Unpin a checkpoint: retention may delete it again");
    cmd->add_option("checkpoint", p->where, "DIR NAME, or the checkpoint's own directory")->required();
    cmd->add_option("name", p->name, "checkpoint name in DIR");
    cmd->callback([p, pinned, &run] { run = [p, pinned] { return set_pinned(p->where, p->name, pinned); }; });
  }
}

}  // namespace savepoint::cli
