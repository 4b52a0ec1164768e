// engine/retention.hpp — the deletion set: which committed checkpoints a KeepOptions lets go.
#pragma once

#include <savepoint/checkpoint.hpp>
#include <savepoint/retention.hpp>

#include <vector>

namespace savepoint::detail {

/// The checkpoints `keep` would delete from `all` (committed, any order). Pinned ones never,
/// the newest one only when `keep` releases it (savepoint/retention.hpp).
std::vector<Checkpoint> deletion_set(const std::vector<Checkpoint>& all, const KeepOptions& keep);

}  // namespace savepoint::detail
