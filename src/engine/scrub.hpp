// engine/scrub.hpp — a whole root checked file by file, each distinct file (inode) once, each
// damage reported with every checkpoint that holds the file (Checkpointer::scrub).
#pragma once

#include <savepoint/scrub.hpp>

#include <filesystem>

namespace savepoint::engine {

/// UsageError unless options.subset_percent is in (0, 100].
void check_scrub_options(const ScrubOptions& options);
/// Scrubs the committed checkpoints of `root`, every meta.json read again (a listing's cache
/// would hide one damaged in place). Checkpoints deleted while it runs (the training run's
/// retention) are left out, never reported as damaged.
ScrubReport scrub(const std::filesystem::path& root, const ScrubOptions& options);

}  // namespace savepoint::engine
