// savepoint — inspect, verify, compare, export and prune checkpoint directories from the shell.
// Exit codes: 0 ok, 1 a problem was found (damage, missing directory, failed operation), 2 bad
// usage. docs/cli.md documents every subcommand; `savepoint <command> --help` prints its flags.
#include "cli.hpp"

#include <iostream>

int main(int argc, char** argv) {
  using namespace savepoint::cli;
  CLI::App app{"savepoint: inspect, verify, compare, export and prune savepoint checkpoint directories.\n"
               "Exit codes: 0 ok, 1 a problem was found, 2 bad usage. See docs/cli.md.",
               "savepoint"};
  app.require_subcommand(1);
  Runner run;
  add_list_show(app, run);
  add_verify(app, run);
  add_manage(app, run);
  add_diff(app, run);
  add_export(app, run);
  add_average(app, run);
  add_scrub(app, run);
  add_convert(app, run);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);  // help on stdout, exit 0
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);  // the message and "Run with --help" on stderr
    return kUsage;
  }
  try {
    return run ? run() : kUsage;
  } catch (const Failure& e) {
    std::cerr << "savepoint: " << e.what() << "\n";
    return e.exit_code;
  } catch (const savepoint::UsageError& e) {  // e.g. a negative --keep
    std::cerr << "savepoint: " << e.what() << "\n";
    return kUsage;
  } catch (const std::exception& e) {  // savepoint::Error (damage, I/O, lock), file-system errors
    std::cerr << "savepoint: " << e.what() << "\n";
    return kProblem;
  }
}
