// format/unpickler.hpp — the pickle of a PyTorch file's data.pkl, read as far as a state_dict
// needs (~35 opcodes, three torch globals; private to src/format).
#pragma once

#include "zip.hpp"

#include <savepoint/format/pytorch.hpp>

#include <filesystem>
#include <string>
#include <string_view>

namespace savepoint::pytorch::internal {

/// Runs `pickle` (the archive's data.pkl; its storages are the records
/// `<prefix>data/<key>` of `zip`, CRC-checked and bounds-checked as they are met) and returns
/// its tensors: those of a dict (nested dicts flattened with '.'; values that are not tensors
/// named in File::skipped), or the one unnamed tensor torch.save(tensor) writes. Throws
/// CorruptCheckpointError or FormatVersionError naming `path`.
File read_state_dict(std::string_view pickle, ZipReader& zip, const std::string& prefix, const fs::path& path);

}  // namespace savepoint::pytorch::internal
