// savepoint/config.hpp — version macros and the few compile-time switches.
#pragma once

#define SAVEPOINT_VERSION_MAJOR 0
#define SAVEPOINT_VERSION_MINOR 1
#define SAVEPOINT_VERSION_PATCH 0
#define SAVEPOINT_VERSION_STRING "0.1.0"

namespace savepoint {
/// Version of the on-disk format written by this build (see docs/format.md).
inline constexpr int kFormatVersion = 1;
}  // namespace savepoint
