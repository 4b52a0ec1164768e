// The adapter from savepoint::ProcessGroup to c10d::ProcessGroup: strings travel as uint8
// CPU tensors, each collective is waited on with the savepoint timeout.
//
// LibTorch 1.13 vs 2.x: both declare c10d::ProcessGroup in
// torch/csrc/distributed/c10d/ProcessGroup.hpp with broadcast/allgather/barrier returning
// c10::intrusive_ptr<Work> and getRank()/getSize(); the Work class moved (ProcessGroup::Work
// in <= 1.12, c10d::Work since 1.13), hence `auto` below. 2.x is not tested here.
#include <savepoint/c10d.hpp>

#include <torch/torch.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace savepoint {

namespace {
class C10dProcessGroup final : public ProcessGroup {
 public:
  C10dProcessGroup(c10::intrusive_ptr<::c10d::ProcessGroup> group, std::chrono::milliseconds timeout,
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

  c10::intrusive_ptr<::c10d::ProcessGroup> group_;
  std::chrono::milliseconds timeout_;
  c10::intrusive_ptr<::c10d::Store> store_;  // null: none given
};
}  // namespace

std::shared_ptr<ProcessGroup> c10d_process_group(c10::intrusive_ptr<::c10d::ProcessGroup> group,
                                                 std::chrono::milliseconds timeout) {
  if (!group) throw UsageError("savepoint: c10d_process_group got a null process group");
  if (timeout.count() <= 0)
    throw UsageError(fmt::format("savepoint: the collective timeout must be positive (got {} ms)", timeout.count()));
  return std::make_shared<C10dProcessGroup>(std::move(group), timeout, c10::intrusive_ptr<::c10d::Store>());
}

std::shared_ptr<ProcessGroup> c10d_process_group(c10::intrusive_ptr<::c10d::ProcessGroup> group,
                                                 std::chrono::milliseconds timeout,
                                                 c10::intrusive_ptr<::c10d::Store> store) {
  if (!store) throw UsageError("savepoint: c10d_process_group got a null store");
  (void)c10d_process_group(group, timeout);  // the same checks
  return std::make_shared<C10dProcessGroup>(std::move(group), timeout, std::move(store));
}

}  // namespace savepoint
