// format/bundle_layout.hpp — what a parsed bundle holds (Bundle::Impl): its checkpoint as
// meta.json describes it, and every member's verified bytes. Written and parsed by bundle.cpp,
// loaded by engine/bundle_loader.cpp.
#pragma once

#include <savepoint/bundle.hpp>

#include <map>
#include <memory>
#include <string>
#include <string_view>

namespace savepoint {

struct Bundle::Impl {
  std::string name;
  std::shared_ptr<const void> owner;  // the mapping, for Bundle::open
  Checkpoint checkpoint;
  std::map<std::string, std::string_view> members;  // file name -> verified bytes
};

}  // namespace savepoint
