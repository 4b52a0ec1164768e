// Power loss, not just kill -9 (issue 15): the file-system operations of a save are recorded
// through the I/O seam (detail::set_io_recorder), and every state a file system may persist
// when the power goes after any one of them is rebuilt in a fresh directory and checked with
// a fresh Checkpointer. The two persistence models are described in crash_explorer.hpp, the
// scenarios and the checks of each state in crash_scenarios.hpp; docs/reliability.md
// ("Power loss: the crash-state explorer") has the figures.
//
// CI checks at most SAVEPOINT_CRASH_STATES_PER_POINT (4 by default) states per crash point
// and model; scripts/crash-explore.sh raises it to 1000 (all states at most crash points)
// and prints the figures. The sample is deterministic: SAVEPOINT_CRASH_SEED (1 by default).
#include "crash_scenarios.hpp"
#include "support.hpp"

#include <savepoint/detail/io.hpp>

#include "catch.hpp"
#include <fmt/format.h>

#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <string>

namespace crash_states {

std::size_t env_number(const char* name, std::size_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? static_cast<std::size_t>(std::strtoull(v, nullptr, 10)) : fallback;
}

}  // namespace crash_states

TEST_CASE("power loss: every crash state of a save recovers the previous or the new checkpoint",
          "[crash-states]") {
  using namespace crash_states;
  const std::size_t cap = env_number("SAVEPOINT_CRASH_STATES_PER_POINT", 4);
  const std::uint64_t seed = env_number("SAVEPOINT_CRASH_SEED", 1);
  savepoint::set_log_sink([](savepoint::LogLevel, std::string_view) {});  // recovery warnings are expected
  std::size_t total = 0, violations = 0;
  for (const auto& name : kScenarios) {
    test::TempDir dir;
    const Scenario s = record_scenario(name, dir / "recorded");
    if (s.incremental) {  // the scenario is only one if the frozen key's three parts were linked
      std::size_t links = 0;
      for (const auto& op : s.recording->ops()) links += op.what.rfind("link ", 0) == 0;
      CHECK(links == 3);
    }
    if (name == "incremental_damaged") {  // ... and the damaged one's link replaced by the part written
      std::size_t rewritten = 0;
      for (const auto& op : s.recording->ops())
        rewritten += op.what.rfind("unlink ", 0) == 0 && op.what.find("frozen.part00001") != std::string::npos;
      CHECK(rewritten == 1);
    }
    const Figures f = explore(s, dir / "states", cap, seed);
    std::cout << fmt::format("crash-states: {:<15} {:>3} operations  {:>6} states ({} weak, {} ordered)  {} violations"
                             "  (weak model sampled at {} of {} crash points)",
                             name, f.ops, f.weak + f.ordered, f.weak, f.ordered, f.violations, f.sampled_points,
                             f.ops + 1)
              << std::endl;
    for (const auto& r : f.reports) UNSCOPED_INFO(r);
    CHECK(f.violations == 0);
    total += f.weak + f.ordered;
    violations += f.violations;
  }
  savepoint::set_log_sink(nullptr);
  std::cout << fmt::format("crash-states: total {} states, {} violations (seed {}, {} states per crash point and "
                           "model at most)",
                           total, violations, seed, cap)
            << std::endl;
}

TEST_CASE("power loss: the explorer catches a commit that skips the directory fsync before the rename",
          "[crash-states]") {
  using namespace crash_states;
  savepoint::set_log_sink([](savepoint::LogLevel, std::string_view) {});
  test::TempDir dir;
  dio::protocol_breaks().skip_directory_fsync_before_rename = true;
  Scenario s;
  try {
    s = record_scenario("sync", dir / "recorded");
  } catch (...) {
    dio::protocol_breaks().skip_directory_fsync_before_rename = false;
    throw;
  }
  dio::protocol_breaks().skip_directory_fsync_before_rename = false;
  const Figures f = explore(s, dir / "states", 4, 1);
  savepoint::set_log_sink(nullptr);
  std::cout << fmt::format("crash-states: broken protocol: {} states, {} violations", f.weak + f.ordered, f.violations)
            << std::endl;
  REQUIRE(f.violations > 0);
  INFO(f.reports.front());
  // What it finds: the rename persisted, the new directory's entries did not.
  CHECK(f.reports.front().find("missing though its save returned") != std::string::npos);
  // Only the weak model finds it: in order, the root's fsync would have persisted them too.
  for (const auto& r : f.reports) CHECK(r.find("(weak: ") != std::string::npos);
}
