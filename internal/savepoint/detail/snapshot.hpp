// savepoint/detail/snapshot.hpp — the test seam of overlapped async snapshots (internal).
#pragma once

#include <cstddef>
#include <functional>

namespace savepoint::detail {

/// Called by the background copier of an overlapped snapshot (AsyncSnapshot::overlapped)
/// before it claims tensor copy `index` (0-based, in save order; never called once every copy
/// is claimed). A test blocks in it to pause the copier after `index` copies, so that what the
/// training thread does meanwhile is ordered by events, not by timing. nullptr removes it;
/// like set_fault_hook, change it only while no save is in flight.
using SnapshotCopyHook = std::function<void(std::size_t index)>;
void set_snapshot_copy_hook(SnapshotCopyHook hook);

}  // namespace savepoint::detail
