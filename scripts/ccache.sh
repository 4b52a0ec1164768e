# Sourced by the build scripts: sets savepoint_ccache_args, the cmake arguments that run every
# compile through ccache (empty when ccache is not installed).
# The precompiled headers need pch_defines and time_macros (ccache's manual, "Precompiled
# headers"); include_file_[cm]time because a fresh clone's sources all have new times.
savepoint_ccache_args=()
if command -v ccache >/dev/null 2>&1 && [ -z "${SAVEPOINT_NO_CCACHE:-}" ]; then
  savepoint_ccache_launcher="env;CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime;ccache"
  savepoint_ccache_args=(-DCMAKE_CXX_COMPILER_LAUNCHER="$savepoint_ccache_launcher"
                         -DCMAKE_C_COMPILER_LAUNCHER="$savepoint_ccache_launcher")
fi
