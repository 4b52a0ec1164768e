// The adapter from savepoint::ProcessGroup to c10d::ProcessGroup: strings travel as uint8
// CPU tensors, each collective is waited on with the savepoint timeout.
//
// LibTorch 1.13 vs 2.x: c10d::ProcessGroup (1.13's groups derive from it; in 2.x it wraps
// backends) and c10d::Backend (2.x's groups derive from it; 1.13 declares it too) have the same
// broadcast/allgather/barrier returning c10::intrusive_ptr<Work>, and getRank()/getSize(), so
// one template adapts both. The Work class moved (ProcessGroup::Work in <= 1.12, c10d::Work
// since 1.13), hence `auto` below. Store::set/check/get are the same in 1.13 and 2.x.
#include <savepoint/c10d.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include <torch/torch.h>

#include <fmt/format.h>

#include <csignal>

#include <algorithm>
#include <cstring>
#include <mutex>

namespace savepoint {

namespace {
// See "SIGPIPE" in c10d.hpp. Checked at each adapter's creation; said once per process, by
// rank 0 only (every rank of a job would say the same).
void ignore_default_sigpipe(int rank) {
  struct sigaction current {};
  if (sigaction(SIGPIPE, nullptr, &current) != 0) return;
  if ((current.sa_flags & SA_SIGINFO) != 0 || current.sa_handler != SIG_DFL) return;  // the program's choice
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  if (sigaction(SIGPIPE, &ignore, nullptr) != 0) return;
  if (rank != 0) return;
  static std::once_flag logged;
  std::call_once(logged, [] {
    detail::log(LogLevel::info,
                "savepoint: SIGPIPE was at its default action (end the process); it is now ignored, so that a "
                "peer's death raises DistributedError here instead of killing this process (as under Python)");
  });
}

template <class Group>
class C10dProcessGroup final : public ProcessGroup {
 public:
  C10dProcessGroup(c10::intrusive_ptr<Group> group, std::chrono::milliseconds timeout,
                   c10::intrusive_ptr<::c10d::Store> store)
      : group_(std::move(group)), timeout_(timeout), store_(std::move(store)) {}

  int rank() const override { return group_->getRank(); }
  int world_size() const override { return group_->getSize(); }
  std::chrono::milliseconds timeout() const override { return timeout_; }

  std::string broadcast(const std::string& bytes) override {
    std::vector<at::Tensor> size{torch::tensor({static_cast<std::int64_t>(bytes.size())}, torch::kInt64)};
    wait(group_->broadcast(size), "broadcast");
    const auto n = size[0].item<std::int64_t>();
    if (n == 0) return {};
    std::vector<at::Tensor> data{torch::empty({n}, torch::kUInt8)};
    if (rank() == 0) std::memcpy(data[0].data_ptr(), bytes.data(), bytes.size());
    wait(group_->broadcast(data), "broadcast");
    return std::string(static_cast<const char*>(data[0].data_ptr()), static_cast<std::size_t>(n));
  }

  std::vector<std::string> all_gather(const std::string& bytes) override {
    const int world = world_size();
    // Sizes first, then every rank's bytes padded to the largest.
    std::vector<at::Tensor> mine{torch::tensor({static_cast<std::int64_t>(bytes.size())}, torch::kInt64)};
    std::vector<std::vector<at::Tensor>> sizes(1);
    for (int r = 0; r < world; ++r) sizes[0].push_back(torch::empty({1}, torch::kInt64));
    wait(group_->allgather(sizes, mine), "all_gather");
    std::int64_t longest = 1;
    for (const auto& s : sizes[0]) longest = std::max(longest, s.item<std::int64_t>());
    std::vector<at::Tensor> padded{torch::zeros({longest}, torch::kUInt8)};
    std::memcpy(padded[0].data_ptr(), bytes.data(), bytes.size());
    std::vector<std::vector<at::Tensor>> all(1);
    for (int r = 0; r < world; ++r) all[0].push_back(torch::empty({longest}, torch::kUInt8));
    wait(group_->allgather(all, padded), "all_gather");
    std::vector<std::string> out;
    for (int r = 0; r < world; ++r) {
      out.emplace_back(static_cast<const char*>(all[0][r].data_ptr()),
                       static_cast<std::size_t>(sizes[0][r].item<std::int64_t>()));
    }
    return out;
  }

  void barrier() override { wait(group_->barrier(), "barrier"); }

  // Gloo matches a pair's messages of one tag in the order they were posted. The tensors
  // view the caller's buffers: nothing is copied here.
  void send_and_receive(const std::vector<Outgoing>& sends, const std::vector<Incoming>& receives) override {
    std::vector<std::vector<at::Tensor>> buffers;
    buffers.reserve(sends.size() + receives.size());
    std::vector<decltype(group_->barrier())> works;  // c10d::Work moved between releases
    const auto view = [](const char* data, std::size_t size) {
      return torch::from_blob(const_cast<char*>(data), {static_cast<std::int64_t>(size)}, torch::kUInt8);
    };
    for (const auto& in : receives) {
      if (in.size == 0) continue;
      buffers.push_back({view(in.data, in.size)});
      works.push_back(group_->recv(buffers.back(), in.from, /*tag=*/0));
    }
    for (const auto& out : sends) {
      if (out.size == 0) continue;
      buffers.push_back({view(out.data, out.size)});
      works.push_back(group_->send(buffers.back(), out.to, /*tag=*/0));
    }
    for (const auto& work : works) wait(work, "send/receive");
  }

  // Store::set/check/get have these signatures in 1.13 and 2.x. check() does not wait; get()
  // of a key check() saw does not either.
  bool has_store() const override { return static_cast<bool>(store_); }
  void store_set(const std::string& key, const std::string& value) override {
    if (!store_) return ProcessGroup::store_set(key, value);
    store_->set(key, std::vector<std::uint8_t>(value.begin(), value.end()));
  }
  std::optional<std::string> store_get(const std::string& key) override {
    if (!store_) return ProcessGroup::store_get(key);
    if (!store_->check({key})) return std::nullopt;
    const std::vector<std::uint8_t> value = store_->get(key);
    return std::string(value.begin(), value.end());
  }

 private:
  template <class Work>
  void wait(const Work& work, const char* what) const {
    // Work::wait throws when a peer failed or (with a timeout) when it expires.
    if (!work->wait(timeout_))
      throw std::runtime_error(fmt::format("c10d {} did not complete within {} ms", what, timeout_.count()));
  }

  c10::intrusive_ptr<Group> group_;
  std::chrono::milliseconds timeout_;
  c10::intrusive_ptr<::c10d::Store> store_;  // null: none given
};

template <class Group>
std::shared_ptr<ProcessGroup> make_adapter(c10::intrusive_ptr<Group> group, std::chrono::milliseconds timeout,
                                           c10::intrusive_ptr<::c10d::Store> store) {
  if (!group) throw UsageError("savepoint: c10d_process_group got a null process group");
  if (timeout.count() <= 0)
    throw UsageError(fmt::format("savepoint: the collective timeout must be positive (got {} ms)", timeout.count()));
  ignore_default_sigpipe(group->getRank());
  return std::make_shared<C10dProcessGroup<Group>>(std::move(group), timeout, std::move(store));
}
}  // namespace

std::shared_ptr<ProcessGroup> c10d_process_group(c10::intrusive_ptr<::c10d::ProcessGroup> group,
                                                 std::chrono::milliseconds timeout) {
  return make_adapter(std::move(group), timeout, {});
}

std::shared_ptr<ProcessGroup> c10d_process_group(c10::intrusive_ptr<::c10d::Backend> group,
                                                 std::chrono::milliseconds timeout) {
  return make_adapter(std::move(group), timeout, {});
}

std::shared_ptr<ProcessGroup> c10d_process_group(c10::intrusive_ptr<::c10d::ProcessGroup> group,
                                                 std::chrono::milliseconds timeout,
                                                 c10::intrusive_ptr<::c10d::Store> store) {
  if (!store) throw UsageError("savepoint: c10d_process_group got a null store");
  return make_adapter(std::move(group), timeout, std::move(store));
}

std::shared_ptr<ProcessGroup> c10d_process_group(c10::intrusive_ptr<::c10d::Backend> group,
                                                 std::chrono::milliseconds timeout,
                                                 c10::intrusive_ptr<::c10d::Store> store) {
  if (!store) throw UsageError("savepoint: c10d_process_group got a null store");
  return make_adapter(std::move(group), timeout, std::move(store));
}

}  // namespace savepoint
