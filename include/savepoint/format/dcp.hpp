// savepoint/format/dcp.hpp — the directories of torch.distributed.checkpoint (DCP), read and
// written without torch or Python.
//
// A DCP checkpoint is a directory:
//   .metadata            a pickle of torch.distributed.checkpoint.metadata.Metadata: for each
//                        key the global size, dtype and chunks (offsets, sizes) of a tensor, or
//                        "bytes" for any other value; for each chunk its file, offset, length
//   __<rank>_<n>.distcp  each rank's chunks, back to back: a tensor chunk is a torch.save
//                        stream (a zip archive), a value a torch.save stream of the object
// The reader parses .metadata with restricted unpickling (the classes above, torch.Size, the
// dtypes: nothing is imported or run), checks every chunk against its tensor and its file
// before any read (inside the tensor, no overlaps, no holes, inside the file), and reads a
// region of a tensor from the chunks that overlap it only, each one CRC-checked, straight
// into the caller's memory. What PyTorch 2.6 and 2.14 write with FileSystemWriter is read,
// in both of 2.14's chunk formats (torch.save streams, and SerializationFormat.SAFETENSORS:
// one safetensors blob per file), and so is 2.14's HuggingFace layout (HuggingFaceStorage-
// Writer: *.safetensors files, no .metadata; a tensor's place from the DCP_SHARDING_INFO
// metadata). Stream transforms (2.14's extensions, e.g. zstd) are refused naming the key and
// the transform. Errors: CorruptCheckpointError or FormatVersionError naming the file and key.
#pragma once

#include <savepoint/format/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace savepoint::dcp {

using safetensors::DType;

inline constexpr const char* kMetadataFile = ".metadata";

/// One piece of a tensor, as a file holds it.
struct Chunk {
  std::vector<std::int64_t> offsets;  ///< where it starts in the global tensor, per dim
  std::vector<std::int64_t> sizes;    ///< its extent, per dim
  std::string file;                   ///< relative to the directory, e.g. "__0_0.distcp"
  std::uint64_t offset = 0;           ///< byte range in the file
  std::uint64_t length = 0;
  std::vector<std::string> transforms;  ///< stream transforms (2.14 extensions); refused when read
  /// The bytes are the raw tensor (contiguous, little-endian), not a torch.save stream: 2.14's
  /// SerializationFormat.SAFETENSORS and the HuggingFace layout. Set by the Reader once it has
  /// found them inside the file's safetensors blob.
  bool raw = false;
};

/// One key of the saved state dict (flattened: "model.fc1.weight", "optim.state.fc1.weight.exp_avg").
struct Item {
  std::string key;
  bool tensor = true;  ///< false: a pickled value (DCP's BYTE_IO)
  DType dtype = DType::F32;
  std::vector<std::int64_t> size;  ///< the global shape
  std::vector<Chunk> chunks;       ///< a value has exactly one
  /// Where the key sits in the nested state dict (DCP's planner_data): strings and integers,
  /// e.g. ["model", "fc1.weight"]. Empty when unknown.
  nlohmann::json path = nlohmann::json::array();

  std::uint64_t numel() const noexcept;
  std::uint64_t nbytes() const noexcept { return numel() * safetensors::dtype_size(dtype); }
};

struct Metadata {
  std::string version;      ///< Metadata.version ("1.0.0" from 2.14; empty before)
  std::string layout = "dcp";  ///< "dcp" (a .metadata), or "huggingface"
  std::vector<Item> items;  ///< sorted by key
  const Item* find(std::string_view key) const;
};

/// Parses a .metadata pickle (`path` names it in errors). Checks its structure, not the files.
Metadata parse_metadata(std::string_view pickle, const std::filesystem::path& path);
/// The .metadata pickle of `metadata`, as Python's pickle.load reads it into DCP's classes.
std::string write_metadata(const Metadata& metadata);

/// Does `dir` hold a DCP checkpoint (a .metadata file, or the HuggingFace layout: a
/// model.safetensors.index.json)?
bool is_dcp_directory(const std::filesystem::path& dir);

/// A DCP checkpoint opened for reading: .metadata parsed and every chunk checked against its
/// tensor and its file's size.
class Reader {
 public:
  explicit Reader(std::filesystem::path dir);
  const Metadata& metadata() const noexcept { return metadata_; }
  const std::filesystem::path& directory() const noexcept { return dir_; }
  /// The item of `key`; MissingKeyError naming the directory and key otherwise.
  const Item& item(std::string_view key) const;

  /// Copies the region [offsets, offsets + sizes) of tensor `item` into `dst` (contiguous,
  /// row-major, sizes' shape), reading only the chunks that overlap it.
  void read(const Item& item, const std::vector<std::int64_t>& offsets, const std::vector<std::int64_t>& sizes,
            void* dst) const;
  /// A value (BYTE_IO) as JSON: None, bools, numbers, strings, bytes (as {"bytes": hex}),
  /// lists, tuples, dicts with string or integer keys. Anything else (a class instance) is
  /// FormatVersionError naming the key and the class: never run.
  nlohmann::json value(const Item& item) const;
  /// Reads every chunk of every key (CRCs, tensors inside their storages, values parsed).
  void verify() const;

 private:
  std::string read_chunk(const Item& item, const Chunk& chunk) const;
  std::filesystem::path dir_;
  Metadata metadata_;
};

// ---------------------------------------------------------------- writing
/// A tensor chunk or a value to write into one rank's file.
struct ChunkData {
  std::string key;
  bool tensor = true;
  DType dtype = DType::F32;
  std::vector<std::int64_t> size;     ///< global shape
  std::vector<std::int64_t> offsets;  ///< this chunk's place in it
  std::vector<std::int64_t> sizes;
  std::string_view bytes;             ///< contiguous little-endian bytes of `sizes`
  nlohmann::json value;               ///< a value's content (tensor == false)
  nlohmann::json path = nlohmann::json::array();
};

/// Writes `chunks` as `dir`/__<rank>_0.distcp (fsynced, a new file) and returns their items,
/// each with its one chunk, for merge_items.
std::vector<Item> write_rank_file(const std::filesystem::path& dir, int rank, const std::vector<ChunkData>& chunks);
/// The ranks' items merged into one Metadata: a key's chunks together, its dtype, size and
/// kind the same on every rank (UsageError naming the key and ranks otherwise), checked for
/// overlaps and holes.
Metadata merge_items(const std::vector<std::vector<Item>>& per_rank);
/// Writes `dir`/.metadata last and atomically (a temporary, fsync, rename, fsync of `dir`):
/// until then the directory is no DCP checkpoint.
void commit(const std::filesystem::path& dir, const Metadata& metadata);

/// Items to and from JSON (for ranks to exchange them).
nlohmann::json to_json(const std::vector<Item>& items);
std::vector<Item> items_from_json(const nlohmann::json& j);

}  // namespace savepoint::dcp
