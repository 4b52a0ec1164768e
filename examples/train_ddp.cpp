// Data-parallel training over several processes (c10d / Gloo, CPU) that survives being killed
// and resumes at another number of processes. Each rank runs this program:
//
//   train_ddp <checkpoint-dir> [--rank R --world W --store FILE] [--epochs N] [--samples S]
//             [--global-batch G] [--every-steps K] [--every-minutes M --minutes-per-step X]
//             [--step-ms MS] [--trace]
//             [--memory DIR [--node ID] [--memory-every K] [--skip-while-busy] [--persist-every M] [--parity N]
//              [--background-priority normal|low|idle]]
//             [--iface NAME]
//
// Under a launcher (torchrun --no-python, srun, a Kubeflow PyTorchJob, mpirun) leave out
// --rank, --world and --store: savepoint::process_group_from_environment reads the rank, the
// world and the store's address from the environment (docs/distributed.md, "Launching").
// Started by hand: --store FILE rendezvouses on a FileStore; --store tcp://HOST:PORT on a
// TCPStore that rank 0 serves. Gloo uses the network interface --iface (by hand, default lo;
// under a launcher, default GLOO_SOCKET_IFNAME or the host name's address).
//
// (scripts/ddp-demo.sh starts W of them, kills them and resumes with another W.) A tiny MLP
// on synthetic data; every step each rank takes its slice of a global batch of G samples from
// savepoint::DistributedSampler, computes its share of the mean loss, the gradients are summed
// over the ranks (one allreduce), and every rank applies the same Adam step. savepoint saves
// model, optimizer, sampler and epoch counter (replicated keys, written once, spread over the
// ranks) every K steps, at the end of each epoch, and when any rank gets SIGTERM/SIGUSR1: then
// every rank saves the same step and exits 0. Because the sampler's position counts the
// samples of the whole job, a run stopped at W ranks resumes at W' ranks (G divisible by both)
// on the very next sample; at the same W it ends bit-identical to an uninterrupted run.
//
// --every-minutes M with --minutes-per-step X: time-based saves decided by rank 0's clock,
// here a simulated one that advances X minutes per step (so that a test can rely on it).
// --trace prints, per step, the samples this rank consumed ("consumed epoch E position P:
// i j k"); --step-ms makes each step take at least MS milliseconds, like real training.
//
// --memory DIR: the memory tier (docs/distributed.md). Every K steps (default 1) each rank
// snapshots the state into its node's memory directory DIR (a tmpfs such as /dev/shm/<job>);
// the node's part is copied to the next node's ranks in the background, and every M complete
// memory checkpoints the newest is persisted to <checkpoint-dir>. --node names this rank's
// node (ranks with the same name share DIR; default: the launcher's node, else the host name,
// see savepoint/launch.hpp). A rank killed at any step: the job restarts and
// resumes from memory at the last complete step; a lost node: its part comes from its buddy.
// --skip-while-busy: a call every step starts a memory save only once the last one is
// foreseen complete (MemoryTierOptions::skip_while_busy): as many as complete, no waiting.
// --parity N: XOR parity over sets of N nodes instead of buddy copies (Redundancy::parity):
// a lost node per set is rebuilt from the others. --background-priority normal|low|idle: the
// priority of the tier's background work (MemoryTierOptions::background_priority, default low;
// normal where other jobs share the machine: a nice-19 thread waits for them all).
#include <savepoint/c10d.hpp>
#include <savepoint/savepoint.hpp>

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>

#include "state_hash.hpp"

struct Mlp : torch::nn::Module {
  Mlp() {
    fc1 = register_module("fc1", torch::nn::Linear(8, 16));
    fc2 = register_module("fc2", torch::nn::Linear(16, 1));
  }
  torch::Tensor forward(torch::Tensor x) { return fc2(torch::tanh(fc1(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};

// FNV-1a over the parameters' bytes: equal exactly when the weights are bit-identical.
std::string weights_hash(const Mlp& net) {
  std::uint64_t h = 1469598103934665603ULL;
  for (const auto& p : net.parameters()) {
    const auto c = p.detach().contiguous();
    const auto* bytes = static_cast<const unsigned char*>(c.data_ptr());
    const auto n = static_cast<std::size_t>(c.numel() * static_cast<std::int64_t>(c.element_size()));
    for (std::size_t i = 0; i < n; ++i) h = (h ^ bytes[i]) * 1099511628211ULL;
  }
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(h));
  return text;
}

std::string g_iface;  // --iface

c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo_group(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                      int world, std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(g_iface.empty() ? "lo" : g_iface));
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
}

int train(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: train_ddp <checkpoint-dir> [--rank R --world W --store FILE] [--epochs N] [--samples S] "
                 "[--global-batch G] [--every-steps K] [--every-minutes M --minutes-per-step X] [--step-ms MS] "
                 "[--trace] [--memory DIR [--node ID] [--memory-every K] [--skip-while-busy] [--persist-every M] [--parity N] "
                 "[--background-priority normal|low|idle]] "
                 "[--iface NAME]\n(under torchrun, srun or mpirun, without --rank, --world and --store)\n";
    return 2;
  }
  const std::string dir = argv[1];
  int rank = -1, world = -1, epochs_total = 4, samples = 96, global_batch = 12, every_steps = 4, step_ms = 0;
  double every_minutes = 0, minutes_per_step = 0;
  std::string store_path, memory_dir, node_id;
  int memory_every = 1, persist_every = 0, parity = 0;
  bool skip_while_busy = false;
  auto background_priority = savepoint::BackgroundPriority::low;
  bool trace = false;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--rank" && has_value) rank = std::atoi(argv[++i]);
    else if (arg == "--world" && has_value) world = std::atoi(argv[++i]);
    else if (arg == "--store" && has_value) store_path = argv[++i];
    else if (arg == "--epochs" && has_value) epochs_total = std::atoi(argv[++i]);
    else if (arg == "--samples" && has_value) samples = std::atoi(argv[++i]);
    else if (arg == "--global-batch" && has_value) global_batch = std::atoi(argv[++i]);
    else if (arg == "--every-steps" && has_value) every_steps = std::atoi(argv[++i]);
    else if (arg == "--every-minutes" && has_value) every_minutes = std::atof(argv[++i]);
    else if (arg == "--minutes-per-step" && has_value) minutes_per_step = std::atof(argv[++i]);
    else if (arg == "--step-ms" && has_value) step_ms = std::atoi(argv[++i]);
    else if (arg == "--trace") trace = true;
    else if (arg == "--memory" && has_value) memory_dir = argv[++i];
    else if (arg == "--node" && has_value) node_id = argv[++i];
    else if (arg == "--memory-every" && has_value) memory_every = std::atoi(argv[++i]);
    else if (arg == "--persist-every" && has_value) persist_every = std::atoi(argv[++i]);
    else if (arg == "--parity" && has_value) parity = std::atoi(argv[++i]);
    else if (arg == "--skip-while-busy") skip_while_busy = true;
    else if (arg == "--background-priority" && has_value) {
      const std::string p = argv[++i];
      if (p == "normal") background_priority = savepoint::BackgroundPriority::normal;
      else if (p == "low") background_priority = savepoint::BackgroundPriority::low;
      else if (p == "idle") background_priority = savepoint::BackgroundPriority::idle;
      else {
        std::cerr << "train_ddp: --background-priority is normal, low or idle, not '" << p << "'\n";
        return 2;
      }
    }
    else if (arg == "--iface" && has_value) g_iface = argv[++i];
    else {
      std::cerr << "train_ddp: unknown argument '" << arg << "'\n";
      return 2;
    }
  }
  // Two process groups on one rendezvous store: the gradients', and savepoint's own (its
  // collectives never interleave with the training's; its timeout is its own); with the memory
  // tier a third, for the buddy copies (the background thread uses it while this thread uses
  // savepoint's).
  c10::intrusive_ptr<savepoint::C10dGroup> train_pg;
  std::shared_ptr<savepoint::ProcessGroup> ckpt_group, replication_group;
  const bool by_hand = rank >= 0 || world >= 0 || !store_path.empty();
  // With the memory tier, say where recovery looked: "the directory has a checkpoint newer
  // than the memory tier's" is an info line (the tests and demos accept it as the reason for
  // resuming on disk). Rank 0 alone: every rank would say the same.
  const bool rank0 = by_hand ? rank == 0 : savepoint::launch_from_environment().rank == 0;
  if (!memory_dir.empty() && trace && rank0) savepoint::set_log_level(savepoint::LogLevel::info);
  if (by_hand) {
    if (rank < 0 || world < 1 || rank >= world || store_path.empty()) {
      std::cerr << "train_ddp: needs --rank R --world W --store FILE with 0 <= R < W, or none of them under a launcher\n";
      return 2;
    }
    c10::intrusive_ptr<c10d::Store> store;
    if (store_path.rfind("tcp://", 0) == 0) {  // tcp://HOST:PORT, served by rank 0
      const std::string address = store_path.substr(6);
      c10d::TCPStoreOptions tcp;
      tcp.port = static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
      tcp.isServer = rank == 0;
      tcp.numWorkers = static_cast<std::size_t>(world);
      tcp.timeout = std::chrono::seconds(60);
      store = c10::make_intrusive<c10d::TCPStore>(address.substr(0, address.rfind(':')), tcp);
    } else {
      store = c10::make_intrusive<c10d::FileStore>(store_path, world);
    }
    auto ckpt_store = c10::make_intrusive<c10d::PrefixStore>("ckpt", store);
    train_pg = gloo_group(c10::make_intrusive<c10d::PrefixStore>("train", store), rank, world, std::chrono::seconds(30));
    ckpt_group = savepoint::c10d_process_group(gloo_group(ckpt_store, rank, world, std::chrono::seconds(30)),
                                               std::chrono::seconds(30), ckpt_store);
    if (!memory_dir.empty()) {
      replication_group = savepoint::c10d_process_group(
          gloo_group(c10::make_intrusive<c10d::PrefixStore>("replication", store), rank, world, std::chrono::seconds(30)),
          std::chrono::seconds(30));
    }
  } else {  // started by a launcher: everything from its environment
    auto job = savepoint::process_group_from_environment(
        savepoint::EnvironmentGroupOptions().interface(g_iface).timeout(std::chrono::seconds(30)));
    rank = job.launch.rank;
    world = job.launch.world_size;
    if (rank == 0) std::cout << "rank 0: launched by " << job.launch.describe() << std::endl;
    train_pg = job.c10d_group("train");
    ckpt_group = job.group;
    if (!memory_dir.empty()) replication_group = job.savepoint_group("replication");
  }
  if (global_batch % world != 0) {
    std::cerr << "train_ddp: the world size " << world << " must divide --global-batch (" << global_batch << ")\n";
    return 2;
  }
  const auto per_rank = static_cast<std::uint64_t>(global_batch / world);

  // Synthetic regression data, the same on every rank and in every run.
  torch::manual_seed(0);
  const auto x = torch::randn({samples, 8});
  const auto y = torch::sin(x.matmul(torch::linspace(-1, 1, 8).unsqueeze(1))) + 0.05 * torch::randn({samples, 1});
  torch::manual_seed(1);  // the same initial weights on every rank
  auto net = std::make_shared<Mlp>();
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(0.01));
  savepoint::DistributedSampler sampler(static_cast<std::uint64_t>(samples), /*seed=*/42);
  savepoint::EpochCounter epochs(epochs_total);

  savepoint::CheckpointerOptions ckpt_options;
  ckpt_options.process_group(ckpt_group);
  const bool memory_tier = !memory_dir.empty();
  if (memory_tier) {
    // The snapshot is overlapped: the copy runs during the next forward and backward, and
    // before_update() below waits for what is left before the optimizer step.
    ckpt_options.async_snapshot(savepoint::AsyncSnapshot::overlapped)
        .memory_tier(savepoint::MemoryTierOptions(memory_dir)
                         .node_id(node_id)
                         .persist_every(persist_every)
                         .skip_while_busy(skip_while_busy)
                         .background_priority(background_priority)
                         .redundancy(parity > 0 ? savepoint::Redundancy::parity : savepoint::Redundancy::partner)
                         .parity_set_size(parity > 0 ? parity : 4)
                         .replication_group(replication_group));
  }
  savepoint::Checkpointer ckpt(dir, ckpt_options);
  ckpt.add_recoverable("model", net);  // replicated: identical on every rank, written once
  ckpt.add_recoverable("optimizer", opt);
  ckpt.add_recoverable("sampler", sampler);
  ckpt.add_recoverable("epochs", epochs);
  std::uint64_t step = 0;  // this run's steps (the simulated clock's ticks)
  const auto start = std::chrono::steady_clock::now();
  auto options = savepoint::IntervalOptions().every_steps(static_cast<std::uint64_t>(every_steps));
  if (every_minutes > 0) {
    options.every_minutes(every_minutes).clock([&step, start, minutes_per_step] {
      return start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                         std::chrono::duration<double, std::ratio<60>>(minutes_per_step * static_cast<double>(step)));
    });
  }
  savepoint::IntervalSaver saver(ckpt, options);  // collective; SIGTERM/SIGUSR1 on any rank: all save

  if (auto c = ckpt.recover_if_possible()) {
    const bool from_memory = c->path.parent_path().filename() == "recovery";  // the memory tier's
    std::cout << "rank " << rank << ": resumed from " << c->name() << (from_memory ? " in memory" : " on disk")
              << " (saved by " << c->world_size
              << " ranks) at epoch " << epochs.current + 1 << " position "
              << (c->end_of_epoch() ? 0 : sampler.position()) << std::endl;
  } else {
    std::cout << "rank " << rank << ": starting a new run" << std::endl;
  }

  for (auto epoch : epochs) {
    sampler.begin_epoch(epoch);
    while (auto batch = sampler.next(rank, world, per_rank)) {
      const auto idx = torch::tensor(std::vector<std::int64_t>(batch->indices.begin(), batch->indices.end()),
                                     torch::kInt64);
      opt.zero_grad();
      // This rank's share of the global batch's mean loss: summed over the ranks below, the
      // gradient is the mean over the global batch, however it was split.
      auto loss = (net->forward(x.index_select(0, idx)) - y.index_select(0, idx)).pow(2).sum() /
                  static_cast<double>(batch->global_size);
      loss.backward();
      std::vector<torch::Tensor> grads;
      for (auto& p : net->parameters()) {
        if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
        grads.push_back(p.grad().view(-1));
      }
      std::vector<torch::Tensor> flat{torch::cat(grads)};
      train_pg->allreduce(flat)->wait();  // one gradient allreduce per step (keeps the ranks in step)
      std::int64_t offset = 0;
      for (auto& p : net->parameters()) {
        const auto n = p.numel();
        p.mutable_grad().copy_(flat[0].slice(0, offset, offset + n).view_as(p));
        offset += n;
      }
      if (memory_tier) ckpt.before_update();  // the memory snapshot is copied before the step changes it
      opt.step();
      ++step;
      if (trace) {
        std::string line = "consumed epoch " + std::to_string(epoch) + " position " + std::to_string(batch->position) + ":";
        for (auto i : batch->indices) line += " " + std::to_string(i);
        std::cout << line << std::endl;
      }
      if (memory_tier && step % static_cast<std::uint64_t>(memory_every) == 0)
        ckpt.save_to_memory({{"epoch", epoch}, {"position", sampler.position()}}, savepoint::intra_epoch());
      if (step_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(step_ms));
      if (saver.after_step({{"epoch", epoch}, {"position", sampler.position()}})) {
        std::cout << "rank " << rank << ": saved epoch " << epoch << " position " << sampler.position() << " ("
                  << saver.last_saved()->meta.value("saved_by", "") << ")" << std::endl;
      }
      if (saver.preempted()) {
        std::cout << "rank " << rank << ": preempted at epoch " << epoch << " position " << sampler.position()
                  << "; checkpoint saved, exiting" << std::endl;
        return 0;
      }
    }
    torch::NoGradGuard no_grad;
    const double full_loss = (net->forward(x) - y).pow(2).mean().item<double>();
    if (rank == 0) std::cout << "epoch " << epoch << " loss " << full_loss << std::endl;
    saver.save_end_of_epoch({{"epoch", epoch}, {"loss", full_loss}}, savepoint::keep_latest(2));
  }

  std::cout << "rank " << rank << ": final weights " << weights_hash(*net) << std::endl;
  if (rank == 0) {  // every rank holds the same state ("final weights" above shows it for the weights)
    const auto state = state_hash(*net, opt);
    std::cout << "rank 0: final state xxh3 " << state.hex << " (every byte of " << state.tensors
              << " tensors: parameters, optimizer moments; and the optimizer's steps and learning rate)" << std::endl;
  }
  if (trace) {
    std::string values = "rank " + std::to_string(rank) + ": weights";
    for (const auto& p : net->parameters()) {
      const auto c = p.detach().contiguous().view(-1);
      for (std::int64_t i = 0; i < c.numel(); ++i) {
        char v[32];
        std::snprintf(v, sizeof v, " %.9g", static_cast<double>(c[i].item<float>()));
        values += v;
      }
    }
    std::cout << values << std::endl;
  }
  return 0;
}

// A failed collective (a peer died; its launcher restarts the job) or a bad environment ends
// the rank with one line and exit code 1, not an abort.
int main(int argc, char** argv) {
  try {
    return train(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "train_ddp: " << e.what() << std::endl;
    return 1;
  }
}
