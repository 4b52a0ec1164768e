// The C++ side of the cross-language DCP tests (tests/dcp/cross.sh; Python's side is
// tests/dcp/dcp_py.py):
//   dcp_cpp load DIR EXPECTED.pt W...   loads DIR as each rank of each world size W in turn
//                                       (a load is not collective) and compares every value
//                                       bit for bit with Python's full tensors in EXPECTED.pt
//   dcp_cpp save DIR W OUT.pt           trains the model, saves it from W ranks (threads, each
//                                       with its rows) and writes the full state to OUT.pt
// Prints one OK line per check; exits 1 with the first difference or error.
#include "../thread_group.hpp"
#include "dcp_cases.hpp"

#include <iostream>

namespace {

int load(const std::string& dir, const std::string& expected_file, const std::vector<int>& worlds) {
  auto expected = dcp_cases::read_pt(expected_file);
  for (const int world : worlds) {
    int tensors = 0;
    for (int rank = 0; rank < world; ++rank) {
      auto r = dcp_cases::rank_state(rank, world, nullptr);
      r->state.value("step", r->step);
      const auto report = savepoint::dcp::load(dir, r->state);
      tensors += dcp_cases::compare_rank(*r, rank, world, expected);
      if (r->step != 2) throw std::runtime_error("the value 'step' is " + r->step.dump() + ", not 2");
      if (r->adam->param_groups()[0].options().get_lr() != 1e-2) throw std::runtime_error("lr not loaded");
      if (rank == 0)
        std::cout << "rank 0 of " << world << ": loaded " << report.loaded.size() << " keys, "
                  << report.unexpected.size() << " left (" << fmt::format("{}", fmt::join(report.unexpected, ", "))
                  << ")\n";
    }
    std::cout << "OK: " << tensors << " tensor pieces bit-equal to what Python saved, loaded at world " << world << "\n";
  }
  return 0;
}

int save(const std::string& dir, int world, const std::string& out) {
  auto trained = dcp_cases::train(7);
  test::ThreadWorld threads(world, std::chrono::milliseconds(30000));
  auto outcomes = threads.run([&](int rank, std::shared_ptr<savepoint::ProcessGroup> group) {
    auto r = dcp_cases::rank_state(rank, world, &trained);
    r->step = 2;
    r->state.value("step", r->step);
    savepoint::dcp::save(dir, r->state, savepoint::dcp::SaveOptions().process_group(group));
    return 0;
  });
  for (const auto& o : outcomes)
    if (!o.value) throw std::runtime_error("a rank failed: " + o.message());
  std::vector<savepoint::pytorch::TensorBytes> tensors;
  auto full = dcp_cases::full_state(trained);
  for (auto& [key, t] : full) {
    t = t.contiguous();
    tensors.push_back({key, savepoint::safetensors::DType::F32, t.sizes().vec(),
                       std::string_view(static_cast<const char*>(t.data_ptr()), t.nbytes())});
  }
  savepoint::pytorch::write(out, tensors);
  std::cout << "OK: saved from " << world << " ranks into " << dir << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::vector<std::string> args(argv + 1, argv + argc);
    if (args.size() >= 4 && args[0] == "load") {
      std::vector<int> worlds;
      for (std::size_t i = 3; i < args.size(); ++i) worlds.push_back(std::stoi(args[i]));
      return load(args[1], args[2], worlds);
    }
    if (args.size() == 4 && args[0] == "save") return save(args[1], std::stoi(args[2]), args[3]);
    std::cerr << "usage: dcp_cpp load DIR EXPECTED.pt W... | save DIR W OUT.pt\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "dcp_cpp: " << e.what() << "\n";
    return 1;
  }
}
