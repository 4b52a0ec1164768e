// savepoint average DIR KEY --to FILE: the mean of one key's tensors over the last N
// checkpoints (or the best N by a meta key), streamed one tensor at a time from verified
// files (savepoint::write_average: floating tensors averaged in float64, integers from the
// newest). Written as safetensors, or as a PyTorch file with --format pt.
#include "cli.hpp"

#include <savepoint/average.hpp>
#include <savepoint/format/pytorch.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in fmt/format.h before fmt 11)
#include <unistd.h>

namespace savepoint::cli {

namespace {

struct Args {
  std::string dir, key, to, min_key, max_key, format = "safetensors";
  int last = 0, best = 0;
  bool force = false, json = false;
};

int average(const Args& a) {
  require_directory(a.dir);
  const int n = a.best > 0 ? a.best : a.last;
  const Selector selector = !a.min_key.empty() ? savepoint::min_key(a.min_key)
                            : !a.max_key.empty() ? savepoint::max_key(a.max_key)
                                                 : savepoint::most_recent();
  const auto checkpoints = open_root(a.dir)->find_checkpoints(selector, n);
  if (checkpoints.empty()) throw Failure(fmt::format("no checkpoint in '{}' to average", a.dir));
  if (static_cast<int>(checkpoints.size()) < n)
    std::fprintf(stderr, "savepoint: only %zu checkpoint(s) match; averaging those\n", checkpoints.size());

  const fs::path to = a.to;
  std::error_code ec;
  if (fs::exists(fs::symlink_status(to, ec)) && !a.force)
    throw Failure(fmt::format("'{}' already exists; pass --force to replace it", to.string()));
  // Always written whole under a temporary name first: a failed average leaves no partial file.
  const fs::path tmp = to.string() + fmt::format(".savepoint-average-{}", ::getpid());
  Progress progress(fmt::format("averaging '{}' over {} checkpoint(s)", a.key, checkpoints.size()));
  progress.update("verifying and averaging");
  AverageReport report;
  try {
    if (a.format == "pt") {
      const fs::path safetensors_tmp = tmp.string() + ".safetensors";
      try {
        report = write_average(checkpoints, a.key, safetensors_tmp);
        // The average is checked as it is written; convert it to a PyTorch file as it stands.
        const detail::MappedFile averaged(safetensors_tmp);
        const auto header = st::parse(averaged.bytes(), safetensors_tmp);
        std::vector<pytorch::TensorBytes> tensors;
        for (const auto& info : header.tensors)
          tensors.push_back({info.name, info.dtype, info.shape,
                             averaged.bytes().substr(header.data_start + info.begin, info.nbytes())});
        pytorch::write(tmp, tensors);
      } catch (...) {
        fs::remove(safetensors_tmp, ec);
        throw;
      }
      fs::remove(safetensors_tmp, ec);
    } else {
      report = write_average(checkpoints, a.key, tmp);
    }
    fs::rename(tmp, to);
  } catch (...) {
    fs::remove(tmp, ec);
    throw;
  }
  progress.clear();
  std::vector<std::string> names;
  for (const auto& c : report.checkpoints) names.push_back(c.name());
  if (a.json) {
    print_json({{"output", to.string()},
                {"format", a.format},
                {"key", a.key},
                {"checkpoints", names},
                {"averaged", report.averaged},
                {"from_newest", report.from_newest}});
    return kOk;
  }
  fmt::print("averaged key '{}' over {} checkpoint(s) ({}) into {} ({}): {} tensor(s) averaged, {} taken from "
             "the newest\n",
             a.key, names.size(), fmt::join(names, ", "), to.string(), a.format, report.averaged.size(),
             report.from_newest.size());
  return kOk;
}

}  // namespace

void add_average(CLI::App& app, Runner& run) {
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("average",
                                 "Average one key's tensors (e.g. the model) over the last N checkpoints or the "
                                 "best N by a meta key, into a standalone file (files verified first)");
  cmd->add_option("dir", a->dir, "checkpoint root directory")->required();
  cmd->add_option("key", a->key, "the recoverable's key, e.g. model")->required();
  cmd->add_option("--to", a->to, "the file to write")->required();
  auto* last = cmd->add_option("--last", a->last, "average the N most recent checkpoints")->check(CLI::PositiveNumber);
  auto* best = cmd->add_option("--best", a->best, "average the N best checkpoints by --min-key or --max-key")
                   ->check(CLI::PositiveNumber);
  last->excludes(best);
  auto* min = cmd->add_option("--min-key", a->min_key, "with --best: smaller meta[KEY] is better");
  auto* max = cmd->add_option("--max-key", a->max_key, "with --best: larger meta[KEY] is better");
  min->excludes(max);
  min->needs(best);
  max->needs(best);
  cmd->add_option("--format", a->format, "safetensors (default) or pt (a file Python's torch.load reads)")
      ->check(CLI::IsMember({"safetensors", "pt"}));
  cmd->add_flag("--force", a->force, "replace FILE if it exists");
  cmd->add_flag("--json", a->json, "print the result as JSON");
  cmd->callback([a, &run, cmd] {
    if (a->last == 0 && a->best == 0) throw CLI::RequiredError("--last or --best");
    if (a->best > 0 && a->min_key.empty() && a->max_key.empty())
      throw CLI::ValidationError("--best", "needs --min-key KEY or --max-key KEY");
    (void)cmd;
    run = [a] { return average(*a); };
  });
}

}  // namespace savepoint::cli
