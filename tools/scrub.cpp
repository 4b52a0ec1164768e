// savepoint scrub: every distinct file of a root read once (Checkpointer::scrub), each damaged
// one named with every checkpoint that holds it.
#include "cli.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in fmt/format.h before fmt 11)

namespace savepoint::cli {

namespace {

struct Args {
  std::string dir;
  double subset = 100;
  std::uint64_t seed = 0;
  bool json = false;
};

json to_json(const ScrubReport& r) {
  json damaged = json::array(), unreadable = json::array();
  for (const auto& d : r.damaged)
    damaged.push_back({{"key", d.key}, {"file", d.file}, {"path", d.path.string()}, {"reason", d.reason},
                       {"checkpoints", d.checkpoints}});
  for (const auto& p : r.unreadable)
    unreadable.push_back({{"name", p.file.parent_path().filename().string()}, {"path", p.file.string()},
                          {"reason", p.reason}});
  return {{"clean", r.clean()},   {"checkpoints", r.checkpoints}, {"files", r.files},
          {"files_read", r.files_read}, {"bytes", r.bytes}, {"bytes_read", r.bytes_read},
          {"damaged", damaged},   {"unreadable", unreadable}};
}

int scrub(const Args& a) {
  if (looks_like_checkpoint(a.dir)) {
    throw Failure(fmt::format("'{}' is a checkpoint, not a root: scrub reads every checkpoint of a root (verify "
                              "checks one checkpoint)",
                              a.dir),
                  kUsage);
  }
  const auto ckpt = open_root(a.dir);
  Progress progress("scrubbing");
  ScrubOptions options;
  options.subset(a.subset).with_seed(a.seed).on_progress([&](std::uint64_t done, std::uint64_t total) {
    progress.update(fmt::format("{} of {}", human_bytes(done), human_bytes(total)));
  });
  const ScrubReport report = ckpt->scrub(options);
  progress.clear();
  if (a.json) {
    print_json(to_json(report));
  } else {
    for (const auto& d : report.damaged)
      fmt::print("DAMAGED {}: {}; held by {} checkpoint(s): {}\n", d.file, d.reason, d.checkpoints.size(),
                 fmt::join(d.checkpoints, ", "));
    for (const auto& p : report.unreadable)
      fmt::print("UNREADABLE {}: {}\n", p.file.parent_path().filename().string(), p.reason);
    const double share = report.bytes ? 100.0 * static_cast<double>(report.bytes_read) / static_cast<double>(report.bytes) : 100.0;
    std::string verdict = fmt::format("{} damaged", report.damaged.size());
    if (!report.unreadable.empty()) verdict += fmt::format(", {} unreadable", report.unreadable.size());
    fmt::print("scrubbed {} of {} distinct files ({} of {}, {:.0f}%) in {} checkpoints: {}\n", report.files_read,
               report.files, human_bytes(report.bytes_read), human_bytes(report.bytes), share, report.checkpoints,
               verdict);
  }
  return report.clean() ? kOk : kProblem;
}

}  // namespace

void add_scrub(CLI::App& app, Runner& run) {
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("scrub", "Read every distinct file of every checkpoint in DIR once (files that "
                                          "incremental saves share are read once) and check it against meta.json; "
                                          "name each damaged file with every checkpoint holding it; exit 1 on any");
  cmd->add_option("dir", a->dir, "checkpoint root directory")->required();
  cmd->add_option("--subset", a->subset, "read only this share of the bytes, in percent (0, 100], files chosen at random")
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            double p = 0;
            try {
              std::size_t used = 0;
              p = std::stod(text, &used);
              if (used != text.size()) return "must be a number, got '" + text + "'";
            } catch (const std::exception&) {
              return "must be a number, got '" + text + "'";
            }
            return p > 0 && p <= 100 ? "" : "must be a percentage in (0, 100], got " + text;
          },
          "PERCENT in (0, 100]", "percentage"));
  cmd->add_option("--seed", a->seed, "seed of the random choice of --subset (0: a random one); the same seed "
                                     "chooses the same files");
  cmd->add_flag("--json", a->json, "print JSON");
  cmd->callback([a, &run] { run = [a] { return scrub(*a); }; });
}

}  // namespace savepoint::cli
