// savepoint/config.hpp — version macros and the few compile-time switches.
#pragma once

#define SAVEPOINT_VERSION_MAJOR 0
#define SAVEPOINT_VERSION_MINOR 1
#define SAVEPOINT_VERSION_PATCH 0
#define SAVEPOINT_VERSION_STRING "0.1.0"

namespace savepoint {
/// The newest on-disk format this build reads and writes (see docs/format.md). A checkpoint is
/// written as version 2 only when it has a key split into parts (an incremental save); every
/// other checkpoint stays version 1, which older builds read.
inline constexpr int kFormatVersion = 2;
/// The oldest format this build reads.
inline constexpr int kOldestFormatVersion = 1;
}  // namespace savepoint
