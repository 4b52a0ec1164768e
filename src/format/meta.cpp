// meta.json: what makes a directory a checkpoint. Written last, read first, self-checksummed.
#include <savepoint/config.hpp>
#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/errors.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <utility>

namespace savepoint::detail {

using nlohmann::json;

namespace {
// The checksum covers the compact dump of the document without its "checksum" member;
// nlohmann's dump is canonical (sorted keys, round-tripping numbers), so it can be recomputed.
std::uint64_t meta_checksum(const json& doc_without_checksum) {
  return digest_bytes(doc_without_checksum.dump()).xxh3;
}

[[noreturn]] void bad_meta(const std::filesystem::path& file, const std::string& why) {
  throw_corrupt(fmt::format("checkpoint meta '{}' is invalid: {}", file.string(), why), file);
}
}  // namespace

json file_record_json(const FileRecord& f) {
  json out{{"key", f.key}, {"file", f.file}, {"hook", f.hook}, {"bytes", f.bytes}, {"xxh3", to_hex(f.xxh3)}};
  if (f.rank >= 0) out["rank"] = f.rank;           // per-rank and sharded keys only
  if (!f.shard.is_null()) out["shard"] = f.shard;  // sharded keys only
  if (f.part >= 0) out["part"] = f.part;           // keys split into parts (format 2)
  return out;
}

std::string serialize_meta(const Checkpoint& ckpt) {
  json user = ckpt.meta;
  json doc = json::object();
  doc["format"] = "savepoint";
  // Version 2 only where it is needed: checkpoints without parts stay readable by older builds.
  const bool parts = std::any_of(ckpt.files.begin(), ckpt.files.end(), [](const FileRecord& f) { return f.part >= 0; });
  doc["format_version"] = parts ? 2 : 1;
  doc["savepoint_version"] = SAVEPOINT_VERSION_STRING;
  doc["sequence"] = ckpt.sequence;
  if (ckpt.world_size > 0) doc["world_size"] = ckpt.world_size;  // distributed checkpoints only
  doc["unixtime"] = user.at("unixtime");
  doc["end_of_epoch"] = user.at("end_of_epoch");
  user.erase("unixtime");
  user.erase("end_of_epoch");
  doc["meta"] = std::move(user);
  json files = json::array();
  for (const auto& f : ckpt.files) files.push_back(file_record_json(f));
  doc["files"] = std::move(files);
  doc["checksum"] = to_hex(meta_checksum(doc));
  return doc.dump(2) + "\n";
}

Checkpoint parse_meta(const std::filesystem::path& dir, std::string_view text) {
  const auto file = dir / kMetaFileName;
  json doc;
  try {
    doc = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    bad_meta(file, fmt::format("not valid JSON ({})", e.what()));
  }
  if (!doc.is_object()) bad_meta(file, "not a JSON object");
  // Every field is type-checked before use: a number where a string belongs is a damaged
  // file, not a json::type_error (found by fuzz/fuzz_meta.cpp: {"format": 1}).
  const auto format = doc.find("format");
  if (format == doc.end() || !format->is_string() || format->get<std::string>() != "savepoint")
    bad_meta(file, "\"format\" is not \"savepoint\"");
  const auto version = doc.find("format_version");
  if (version == doc.end() || !version->is_number_integer()) bad_meta(file, "no integer format_version");
  if (version->get<long long>() < kOldestFormatVersion || version->get<long long>() > kFormatVersion) {
    throw FormatVersionError(
        fmt::format("checkpoint '{}' has format version {}, but this savepoint ({}) reads "
                    "versions {} to {}; upgrade savepoint to load it",
                    dir.string(), version->get<long long>(), SAVEPOINT_VERSION_STRING,
                    kOldestFormatVersion, kFormatVersion),
        file);
  }
  const bool may_have_parts = version->get<long long>() >= 2;
  const auto checksum = doc.find("checksum");
  std::uint64_t stored = 0;
  if (checksum == doc.end() || !checksum->is_string() ||
      !parse_hex(checksum->get<std::string>(), stored)) {
    bad_meta(file, "missing or malformed \"checksum\"");
  }
  json body = doc;
  body.erase("checksum");
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION  // the fuzzer must reach the checks below
  if (meta_checksum(body) != stored) bad_meta(file, "checksum mismatch (the file was modified or damaged)");
#endif

  Checkpoint ckpt;
  ckpt.path = dir;
  try {
    const auto& seq = doc.at("sequence");
    if (!seq.is_number_unsigned()) bad_meta(file, "\"sequence\" is not a non-negative integer");
    ckpt.sequence = seq.get<std::uint64_t>();
    if (const auto ws = doc.find("world_size"); ws != doc.end()) {
      if (!ws->is_number_unsigned() || ws->get<std::uint64_t>() < 1 || ws->get<std::uint64_t>() > 1u << 20)
        bad_meta(file, "\"world_size\" is not a positive integer");
      ckpt.world_size = ws->get<int>();
    }
    const auto& t = doc.at("unixtime");
    if (!t.is_number()) bad_meta(file, "\"unixtime\" is not a number");
    const auto& eoe = doc.at("end_of_epoch");
    if (!eoe.is_boolean()) bad_meta(file, "\"end_of_epoch\" is not a boolean");
    const auto& user = doc.at("meta");
    if (!user.is_object()) bad_meta(file, "\"meta\" is not an object");
    ckpt.meta = user;
    ckpt.meta["unixtime"] = t;
    ckpt.meta["end_of_epoch"] = eoe;
    const auto& files = doc.at("files");
    if (!files.is_array()) bad_meta(file, "\"files\" is not an array");
    for (const auto& f : files) {
      if (!f.is_object()) bad_meta(file, "an entry of \"files\" is not an object");
      FileRecord rec;
      rec.key = f.at("key").get<std::string>();
      rec.file = f.at("file").get<std::string>();
      rec.hook = f.at("hook").get<std::string>();
      if (!f.at("bytes").is_number_unsigned()) bad_meta(file, "\"bytes\" of key '" + rec.key + "' is not a size");
      rec.bytes = f.at("bytes").get<std::uint64_t>();
      if (!parse_hex(f.at("xxh3").get<std::string>(), rec.xxh3))
        bad_meta(file, "malformed xxh3 of key '" + rec.key + "'");
      if (rec.key.empty() || !is_plain_file_name(rec.key))
        bad_meta(file, fmt::format("invalid key name '{}'", rec.key));
      if (const auto r = f.find("rank"); r != f.end()) {
        if (!r->is_number_unsigned() || ckpt.world_size == 0 || r->get<std::uint64_t>() >= std::uint64_t(ckpt.world_size))
          bad_meta(file, fmt::format("\"rank\" of key '{}' is not a rank below \"world_size\"", rec.key));
        rec.rank = r->get<int>();
      }
      // Checked in full where it is used (engine/sharded.cpp): a bad layout is a damaged key.
      if (const auto s = f.find("shard"); s != f.end()) {
        if (!s->is_object()) bad_meta(file, fmt::format("\"shard\" of key '{}' is not an object", rec.key));
        rec.shard = *s;
      }
      if (const auto p = f.find("part"); p != f.end()) {
        if (!may_have_parts || !p->is_number_unsigned() || p->get<std::uint64_t>() > (1u << 24))
          bad_meta(file, fmt::format("\"part\" of key '{}' is not a part index (format 2)", rec.key));
        rec.part = p->get<int>();
      }
      if (!is_plain_file_name(rec.file) || rec.file == kMetaFileName || rec.file == kPinFileName)
        bad_meta(file, fmt::format("key '{}' names file '{}', which is not a plain file name in "
                                   "the checkpoint directory",
                                   rec.key, rec.file));
      // A per-rank key has one record per rank; any other key exactly one; a key split into
      // parts one record per part (of each rank).
      for (const auto& other : ckpt.files) {
        if (other.key != rec.key || !(other.rank < 0 || rec.rank < 0 || other.rank == rec.rank)) continue;
        if (other.rank != rec.rank || other.part < 0 || rec.part < 0 || other.part == rec.part)
          bad_meta(file, "duplicate key '" + rec.key + "'");
      }
      for (const auto& other : ckpt.files)
        if (other.file == rec.file) bad_meta(file, "two keys share file '" + rec.file + "'");
      ckpt.files.push_back(std::move(rec));
    }
    // The parts of a key are 0..n-1, each once (a gap is a record lost from the list).
    for (const auto& f : ckpt.files) {
      if (f.part != 0) continue;
      std::size_t n = 0;
      int highest = -1;
      for (const auto& other : ckpt.files) {
        if (other.key != f.key || other.rank != f.rank) continue;
        if (other.part < 0) bad_meta(file, fmt::format("key '{}' mixes parts and a whole file", f.key));
        ++n;
        highest = std::max(highest, other.part);
      }
      if (static_cast<std::size_t>(highest) + 1 != n)
        bad_meta(file, fmt::format("the parts of key '{}' are not numbered 0 to {}", f.key, n - 1));
    }
    for (const auto& f : ckpt.files) {
      if (f.part > 0 && std::none_of(ckpt.files.begin(), ckpt.files.end(),
                       [&](const FileRecord& o) { return o.key == f.key && o.rank == f.rank && o.part == 0; }))
        bad_meta(file, fmt::format("key '{}' has parts but no part 0", f.key));
    }
  } catch (const json::exception& e) {
    bad_meta(file, fmt::format("missing or mistyped field ({})", e.what()));
  }
  ckpt.paramfiles = paramfiles_of(ckpt.files, dir);
  return ckpt;
}

std::map<std::string, std::filesystem::path> paramfiles_of(const std::vector<FileRecord>& files,
                                                           const std::filesystem::path& dir) {
  // Why: the shared or rank 0's file and part 0 exist at any world size and split, and a minimum ignores record order.
  std::map<std::string, const FileRecord*> first;
  for (const auto& f : files) {
    const FileRecord*& best = first[f.key];
    if (best == nullptr || std::make_pair(f.rank, f.part) < std::make_pair(best->rank, best->part)) best = &f;
  }
  std::map<std::string, std::filesystem::path> out;
  for (const auto& [key, rec] : first) out.emplace(key, dir / rec->file);
  return out;
}

Checkpoint read_checkpoint(const std::filesystem::path& dir) {
  Checkpoint ckpt = parse_meta(dir, read_small_file(dir / kMetaFileName, kMaxMetaBytes));
  const auto pin = path_status(dir / kPinFileName);
  ckpt.pinned = pin && pin->type == FileType::regular;
  return ckpt;
}

bool is_plain_file_name(std::string_view name) {
  if (name.empty() || name == "." || name == ".." || name.size() > 255) return false;
  for (char c : name)
    if (c == '/' || c == '\\' || c == '\0') return false;
  return true;
}

double now_unixtime() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

std::string timestamp_dir_stem(double unixtime) {
  const std::time_t t = static_cast<std::time_t>(std::floor(unixtime));
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d+%H-%M-%S", &tm);
  return std::string(kCheckpointPrefix) + buf;
}

const FileRecord* whole_key_record(const Checkpoint& ckpt, const std::string& key, const char* operation) {
  const FileRecord* first = nullptr;
  std::size_t count = 0;
  for (const auto& f : ckpt.files) {
    if (f.key != key) continue;
    if (first == nullptr) first = &f;
    ++count;
  }
  for (const auto& f : ckpt.files)
    if (f.key == key && f.part > 0) --count;  // a key split into parts is still one key
  if (count > 1) {
    const bool sharded = first->shard.is_object();
    throw UsageError(fmt::format(
        "savepoint: key '{}' of checkpoint '{}' is {} ({} files, one per rank of the job that saved it): {} takes "
        "one file per key. {}",
        key, ckpt.path.string(), sharded ? "sharded" : "per-rank", count, operation,
        sharded ? "Load it in one process (a ShardedTensors reassembles every row) and save it again as one key."
                : "Load the rank you want and save it again as one key."));
  }
  return first;
}

}  // namespace savepoint::detail
