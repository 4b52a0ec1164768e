// savepoint verify: every file of every checkpoint (or of one) against its size and XXH3.
#include "cli.hpp"

#include <savepoint/detail/meta.hpp>

#include <fmt/format.h>

namespace savepoint::cli {

namespace {

struct Verdict {
  std::string name;
  std::string status;  // ok, DAMAGED, UNREADABLE
  std::vector<Problem> problems;
};

int verify(const fs::path& where, const std::string& name, bool as_json) {
  if (is_dcp(where, name)) return verify_dcp(where, as_json);
  std::vector<Verdict> verdicts;
  const bool one = !name.empty() || looks_like_checkpoint(where);
  fs::path root = where;
  std::vector<Checkpoint> targets;
  std::vector<Problem> unreadable;
  if (one) {
    // A checkpoint whose meta.json is damaged is not listed: report it, do not say "no such".
    try {
      auto located = locate(where, name);
      root = located.root;
      targets.push_back(std::move(located.checkpoint));
    } catch (const Failure& e) {
      const fs::path dir = name.empty() ? where : where / name;
      if (!detail::path_status(dir / detail::kMetaFileName)) throw;
      unreadable.push_back({"", dir / detail::kMetaFileName, e.what()});
    }
  }
  const auto ckpt = open_root(root);
  if (!one) {
    targets = ckpt->list_checkpoints();
    unreadable = ckpt->unreadable_checkpoints();
  }
  std::uint64_t total = 0, done = 0;
  for (const auto& c : targets) total += total_bytes(c);
  Progress progress("verifying");
  for (std::size_t i = 0; i < targets.size(); ++i) {
    const auto& c = targets[i];
    progress.update(fmt::format("{}/{} {} ({} of {})", i + 1, targets.size(), c.name(), human_bytes(done), human_bytes(total)));
    auto problems = ckpt->verify(c);
    done += total_bytes(c);
    verdicts.push_back({c.name(), problems.empty() ? "ok" : "DAMAGED", std::move(problems)});
  }
  progress.clear();
  for (auto& p : unreadable) verdicts.push_back({p.file.parent_path().filename().string(), "UNREADABLE", {p}});

  std::size_t bad = 0;
  for (const auto& v : verdicts) bad += v.status != "ok";
  if (as_json) {
    json out = json::array();
    for (const auto& v : verdicts) {
      json problems = json::array();
      for (const auto& p : v.problems) problems.push_back({{"key", p.key}, {"file", p.file.string()}, {"reason", p.reason}});
      out.push_back({{"name", v.name}, {"status", v.status}, {"problems", problems}});
    }
    print_json({{"ok", bad == 0}, {"checkpoints", out}});
  } else {
    for (const auto& v : verdicts) {
      fmt::print("{} {}\n", v.name, v.status);
      for (const auto& p : v.problems) fmt::print("  problem: {}\n", p.reason);
    }
    fmt::print("{} checkpoint(s) checked, {} with problems\n", verdicts.size(), bad);
  }
  return bad ? kProblem : kOk;
}

}  // namespace

void add_verify(CLI::App& app, Runner& run) {
  struct Args {
    std::string where, name;
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("verify", "Check every file of every checkpoint in DIR (or of one checkpoint) "
                                           "against the size and XXH3 recorded in meta.json (a torch.distributed.checkpoint "
                                           "directory: every chunk against its .metadata); exit 1 on any problem");
  cmd->add_option("path", args->where, "checkpoint root, or one checkpoint's directory")->required();
  cmd->add_option("name", args->name, "only this checkpoint of the root");
  cmd->add_flag("--json", args->json, "print JSON");
  cmd->callback([args, &run] { run = [args] { return verify(args->where, args->name, args->json); }; });
}

}  // namespace savepoint::cli
