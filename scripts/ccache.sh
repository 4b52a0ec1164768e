# Sourced by the build scripts: sets savepoint_ccache_args, the cmake arguments that run every
# compile through ccache (empty when ccache is not installed).
# The precompiled headers need pch_defines and time_macros (ccache's manual, "Precompiled
# headers"); include_file_[cm]time because a fresh clone's sources all have new times.
# CI builds a fresh clone in another folder each time: paths below the clone are hashed
# relative to it (base_dir), and the working directory is not hashed (it only names the
# directory in the debug info). Unity translation units still miss across clones: CMake
# writes their includes as absolute paths.
savepoint_ccache_args=()
if command -v ccache >/dev/null 2>&1 && [ -z "${SAVEPOINT_NO_CCACHE:-}" ]; then
  savepoint_ccache_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  savepoint_ccache_launcher="env;CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime"
  savepoint_ccache_launcher+=";CCACHE_BASEDIR=$savepoint_ccache_root;CCACHE_NOHASHDIR=1;ccache"
  savepoint_ccache_args=(-DCMAKE_CXX_COMPILER_LAUNCHER="$savepoint_ccache_launcher"
                         -DCMAKE_C_COMPILER_LAUNCHER="$savepoint_ccache_launcher")
fi
