// Bundle::load: a bundle loads by the engine's one load (prepare_load, loader.hpp), reading
// its members from memory instead of files: the same key matching, checks, two phases and
// messages as a checkpoint directory, sharded keys included.
#include "../format/bundle_layout.hpp"
#include "catalog.hpp"
#include "loader.hpp"
#include "world.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include <fmt/format.h>

namespace savepoint {

namespace {
class BundleSource final : public engine::LoadSource {
 public:
  using Members = std::map<std::string, std::string_view>;
  BundleSource(std::string name, const Members& members, std::shared_ptr<const void> keep)
      : name_(std::move(name)), members_(members), keep_(std::move(keep)) {}
  ~BundleSource() override {
    if (scratch_.empty()) return;
    try {
      detail::remove_tree(scratch_);
    } catch (const std::exception& e) {
      detail::log(LogLevel::warn, "could not remove '{}': {}", scratch_.string(), e.what());
    }
  }
  BundleSource(const BundleSource&) = delete;
  BundleSource& operator=(const BundleSource&) = delete;

  std::string describe() const override { return fmt::format("checkpoint bundle '{}'", name_); }
  // Every member was verified against meta.json when the bundle was opened.
  std::shared_ptr<const FileContents> verified(const FileRecord& record, bool /*fresh*/) const override {
    return std::make_shared<const detail::MappedFile>(fs::path(name_) / record.file, member(record), keep_);
  }
  detail::PositionalReader positional(const FileRecord& record) const override {
    return detail::PositionalReader::memory(fs::path(name_) / record.file, member(record), keep_);
  }
  // A path-based hook of the user's reads a file: a private copy, removed after the load.
  fs::path file_for_hook(const FileRecord& record, const FileContents&) const override {
    if (scratch_.empty()) {
      scratch_ = fs::temp_directory_path() / ("savepoint-bundle-" + engine::unique_suffix());
      detail::make_directory(scratch_);
    }
    const fs::path file = scratch_ / record.file;
    if (!detail::path_status(file)) detail::write_file(file, member(record), /*sync=*/false);
    return file;
  }

 private:
  std::string_view member(const FileRecord& record) const { return members_.at(record.file); }
  std::string name_;
  const Members& members_;
  std::shared_ptr<const void> keep_;  // the bundle's bytes stay alive while tensors view them
  mutable fs::path scratch_;
};
}  // namespace

void Bundle::load(const std::vector<Recoverable>& recoverables, bool partial) const {
  const BundleSource source(impl_->name, impl_->members, impl_);
  const engine::World alone(nullptr);
  const auto options = CheckpointerOptions().allow_partial_load(partial);
  const Apply apply = engine::prepare_load(alone, impl_->checkpoint, source, recoverables, options);
  apply();
}

}  // namespace savepoint
