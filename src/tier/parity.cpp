#include "parity.hpp"

#include "../engine/catalog.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace savepoint::tier {

using nlohmann::json;
using namespace detail;

namespace {
// What one ring step moves: two buffers of it per rank while encoding.
constexpr std::size_t kParityChunk = std::size_t{8} << 20;

// A member's data: its files concatenated in order, zero past their end.
class DataStream {
 public:
  DataStream(const fs::path& dir, const std::vector<std::pair<std::string, std::uint64_t>>& files) {
    for (const auto& [name, bytes] : files) {
      if (bytes > 0) parts_.push_back({PositionalReader::file(dir / name), start_ + 0, bytes});
      start_ += bytes;
    }
  }
  void read(std::uint64_t offset, std::size_t n, char* out) const {
    std::memset(out, 0, n);
    for (const auto& p : parts_) {
      const std::uint64_t begin = std::max(offset, p.start), end = std::min(offset + n, p.start + p.bytes);
      if (begin >= end) continue;
      if (!p.reader.read(begin - p.start, end - begin, out + (begin - offset))) {
        throw IoError(fmt::format("savepoint: '{}' is shorter than its record ({} bytes)", p.reader.path().string(),
                                  p.bytes),
                      p.reader.path(), EIO);
      }
    }
  }

 private:
  struct Part {
    PositionalReader reader;
    std::uint64_t start, bytes;
  };
  std::vector<Part> parts_;
  std::uint64_t start_ = 0;
};

void xor_into(char* out, const char* in, std::size_t n) {
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {  // word by word: the compiler vectorises it
    std::uint64_t a, b;
    std::memcpy(&a, out + i, 8);
    std::memcpy(&b, in + i, 8);
    a ^= b;
    std::memcpy(out + i, &a, 8);
  }
  for (; i < n; ++i) out[i] ^= in[i];
}

// Segment ((p - j - 1) mod m) of member j's data is in member p's parity.
int segment_of(int p, int j, int m) { return ((p - j - 1) % m + m) % m; }

json files_json(const std::vector<std::pair<std::string, std::uint64_t>>& files) {
  json out = json::array();
  for (const auto& [name, bytes] : files) out.push_back({name, bytes});
  return out;
}
}  // namespace

int ParityManifest::position_of(int rank) const {
  const auto it = std::find(ranks.begin(), ranks.end(), rank);
  return it == ranks.end() ? -1 : static_cast<int>(it - ranks.begin());
}

std::uint64_t ParityManifest::length(std::size_t member) const {
  std::uint64_t n = 0;
  for (const auto& f : files.at(member)) n += f.second;
  return n;
}

ParityManifest parse_manifest(const fs::path& share, const std::string& text) {
  const fs::path path = share / kManifestFile;
  try {
    const json j = json::parse(text);
    ParityManifest m;
    m.ranks = j.at("ranks").get<std::vector<int>>();
    for (const auto& member : j.at("files")) {
      m.files.emplace_back();
      for (const auto& f : member) m.files.back().emplace_back(f.at(0).get<std::string>(), f.at(1).get<std::uint64_t>());
    }
    m.segment = j.at("segment").get<std::uint64_t>();
    m.parity_xxh3 = std::stoull(j.at("parity_xxh3").get<std::string>(), nullptr, 16);
    if (m.ranks.size() < 2 || m.files.size() != m.ranks.size())
      throw std::runtime_error("a parity group needs at least 2 members, each with its files");
    return m;
  } catch (const std::exception& e) {
    throw CorruptCheckpointError(fmt::format("'{}' is not a parity manifest: {}", path.string(), e.what()), path);
  }
}

ParityManifest read_manifest(const fs::path& share) {
  return parse_manifest(share, read_small_file(share / kManifestFile, kMaxMetaBytes));
}

void check_parity_share(const fs::path& share, const ParityManifest& manifest, bool verify) {
  const fs::path path = share / kParityFile;
  const auto st = path_status(path);
  if (!st || st->size != manifest.segment) {
    throw CorruptCheckpointError(fmt::format("'{}' has {} bytes, its manifest records {}", path.string(),
                                             st ? std::to_string(st->size) : std::string("none"), manifest.segment),
                                 path);
  }
  if (!verify) return;
  const FileDigest digest = digest_file(path);
  if (digest.xxh3 != manifest.parity_xxh3) {
    throw CorruptCheckpointError(fmt::format("'{}' does not match its manifest: XXH3 {} (recorded {})", path.string(),
                                             to_hex(digest.xxh3), to_hex(manifest.parity_xxh3)),
                                 path);
  }
}

ParitySets::ParitySets(const Layout& layout, const engine::NodeMap& nodes, const engine::World& replication,
                       int set_size)
    : layout_(layout), nodes_(nodes), replication_(replication) {
  if (set_size < 2)
    throw UsageError(fmt::format("savepoint: MemoryTierOptions::parity_set_size must be >= 2 (got {})", set_size));
  for (int n = 1; n < nodes.nodes(); ++n) {
    if (nodes.members(n).size() != nodes.members(0).size()) {
      throw UsageError(fmt::format("savepoint: parity sets need the same number of ranks on every node: node '{}' has "
                                   "{}, node '{}' has {} (use Redundancy::partner)",
                                   nodes.id_of(nodes.members(0).front()), nodes.members(0).size(),
                                   nodes.id_of(nodes.members(n).front()), nodes.members(n).size()));
    }
  }
  // Sets of set_size nodes in order; a last set of one joins the one before.
  const int count = std::max(1, nodes.nodes() / set_size + (nodes.nodes() % set_size >= 2 ? 1 : 0));
  for (int n = 0; n < nodes.nodes(); ++n) node_set_.push_back(std::min(n / set_size, count - 1));
}

std::vector<int> ParitySets::group_of(int rank) const {
  const int node = nodes_.node_of(rank);
  const auto& members = nodes_.members(node);
  const auto local = std::find(members.begin(), members.end(), rank) - members.begin();
  std::vector<int> out;
  for (int n = 0; n < nodes_.nodes(); ++n)
    if (node_set_[n] == node_set_[node]) out.push_back(nodes_.members(n).at(local));
  return out.size() < 2 ? std::vector<int>() : out;
}

void ParitySets::encode(const Checkpoint& committed, const std::vector<std::string>& my_files) {
  bytes_sent_ = 0;
  const int me = replication_.rank();
  const std::vector<int> group = group_of(me);
  if (group.empty()) return;
  const int m = static_cast<int>(group.size());
  const int pos = static_cast<int>(std::find(group.begin(), group.end(), me) - group.begin());
  ProcessGroup& pg = replication_.group();
  const fs::path part = layout_.own() / committed.name();

  // 1. Every member's files and sizes reach every member (the manifest; the segment size).
  std::vector<std::pair<std::string, std::uint64_t>> mine;
  for (const auto& file : my_files) {
    const auto st = path_status(part / file);
    if (!st) throw IoError(fmt::format("savepoint: '{}' vanished before its parity", (part / file).string()), part / file, ENOENT);
    mine.emplace_back(file, st->size);
  }
  const std::string text = dump(files_json(mine));
  std::uint64_t my_size = text.size();
  std::vector<std::uint64_t> sizes(m);
  std::vector<std::string> texts(m);
  {
    std::vector<ProcessGroup::Outgoing> sends;
    std::vector<ProcessGroup::Incoming> receives;
    for (int j = 0; j < m; ++j) {
      if (j == pos) continue;
      sends.push_back({group[j], reinterpret_cast<const char*>(&my_size), sizeof my_size});
      receives.push_back({group[j], reinterpret_cast<char*>(&sizes[j]), sizeof sizes[j]});
    }
    pg.send_and_receive(sends, receives);
    sends.clear();
    receives.clear();
    for (int j = 0; j < m; ++j) {
      if (j == pos) continue;
      texts[j].resize(sizes[j]);
      sends.push_back({group[j], text.data(), text.size()});
      receives.push_back({group[j], texts[j].data(), texts[j].size()});
    }
    pg.send_and_receive(sends, receives);
  }
  texts[pos] = text;
  json manifest{{"ranks", group}, {"files", json::array()}};
  std::uint64_t longest = 0;
  for (int j = 0; j < m; ++j) {
    const json files = json::parse(texts[j]);
    std::uint64_t length = 0;
    for (const auto& f : files) length += f.at(1).get<std::uint64_t>();
    longest = std::max(longest, length);
    manifest["files"].push_back(files);
  }
  const std::uint64_t segment = (longest + m - 2) / (m - 1);

  // 2. The ring: in step k every member adds its segment m-1-k to what came from the member
  //    before it and passes it on; after step m-1 what arrived is its own parity.
  if (!out_) out_ = std::make_unique<ChunkBuffer>(kParityChunk);
  if (!in_) in_ = std::make_unique<ChunkBuffer>(kParityChunk);
  const int right = group[(pos + 1) % m], left = group[(pos + m - 1) % m];
  const DataStream data(part, mine);
  const fs::path dir = layout_.parity(me);
  make_directories(dir);
  const fs::path temp = dir / (std::string(kTempPrefix) + engine::unique_suffix());
  if (!claim_spare_directory(temp)) make_directory(temp);
  struct TempGuard {  // removes the temporary directory of an unfinished parity
    fs::path path;
    ~TempGuard() {
      if (path.empty()) return;
      try {
        remove_tree(path);
      } catch (const Error&) {
      }
    }
  } guard{temp};
  FileWriter out(temp / kParityFile, WriteMode::reuse);
  for (std::uint64_t offset = 0; offset < segment; offset += kParityChunk) {
    const std::size_t n = std::min<std::uint64_t>(kParityChunk, segment - offset);
    for (int k = 1; k < m; ++k) {
      data.read(static_cast<std::uint64_t>(m - 1 - k) * segment + offset, n, out_->data());
      if (k > 1) xor_into(out_->data(), in_->data(), n);
      pg.send_and_receive({{right, out_->data(), n}}, {{left, in_->data(), n}});
      bytes_sent_ += n;
    }
    out.write(in_->data(), n);
  }
  const FileDigest digest = out.finish(/*sync=*/false);
  manifest["segment"] = segment;
  manifest["parity_xxh3"] = to_hex(digest.xxh3);
  empty_recycle_bin(temp);
  write_file(temp / kManifestFile, dump(manifest), /*sync=*/false);
  const fs::path final_path = dir / committed.name();
  if (path_status(final_path)) remove_tree(final_path);  // an earlier run's
  rename_no_replace(temp, final_path);
  guard.path.clear();
}

bool rebuild(const engine::World& world, const ParityManifest& manifest, int lost, const std::vector<Holding>& data,
             const std::vector<Holding>& parity, int at, const fs::path& into, const Checkpoint& records,
             const ChunkBuffer& buffer) {
  const int m = static_cast<int>(manifest.ranks.size());
  const std::uint64_t segment = manifest.segment;
  const int me = world.rank();
  const std::size_t chunk = buffer.size() / 2;
  char* acc = buffer.data();
  char* piece = buffer.data() + chunk;

  // What `at` writes: the lost member's files, in order, from the rebuilt stream.
  struct Writer {
    Writer(const std::vector<std::pair<std::string, std::uint64_t>>& files_in, fs::path dir_in,
           const Checkpoint& records_in)
        : files(files_in), dir(std::move(dir_in)), records(records_in) {}
    const std::vector<std::pair<std::string, std::uint64_t>>& files;
    fs::path dir;
    const Checkpoint& records;
    std::size_t file = 0;
    std::uint64_t offset = 0;
    std::unique_ptr<FileWriter> out;
    std::string damage;
    void finish_file() {
      const FileDigest digest = out->finish(/*sync=*/false);
      out.reset();
      const auto& [name, bytes] = files[file];
      const auto rec = std::find_if(records.files.begin(), records.files.end(),
                                    [&, &n = name](const FileRecord& r) { return r.file == n; });
      if (rec == records.files.end() || digest.bytes != rec->bytes || digest.xxh3 != rec->xxh3) {
        if (damage.empty()) damage = fmt::format("'{}' rebuilt from its parity set does not match its record "
                                                 "(a damaged parity share or part)", name);
      }
      ++file;
      offset = 0;
    }
    void write(const char* bytes, std::size_t n) {  // the stream past the last file is padding
      while (n > 0 && file < files.size()) {
        if (!out) out = std::make_unique<FileWriter>(dir / files[file].first);
        const std::size_t take = std::min<std::uint64_t>(n, files[file].second - offset);
        out->write(bytes, take);
        bytes += take, n -= take, offset += take;
        if (offset == files[file].second) finish_file();
      }
    }
    void finish() {
      while (file < files.size()) {  // empty files (and any the stream did not reach)
        if (!out) out = std::make_unique<FileWriter>(dir / files[file].first);
        finish_file();
      }
    }
  };
  std::unique_ptr<Writer> writer;
  if (me == at) {
    if (path_status(into)) remove_tree(into);
    make_directories(into);
    writer = std::make_unique<Writer>(manifest.files.at(lost), into, records);
  }
  const auto outcome = engine::agree(world, "memory tier recovery (rebuilding from parity)", [&] {
    const std::uint64_t length = manifest.length(lost);
    for (int c = 0; c < m - 1; ++c) {
      const int p = (lost + c + 1) % m;
      // Contributors: p's parity, and segment (p - j - 1) of every other member j's data.
      struct Piece {
        const Holding* holding;
        int member;  // -1: the parity
      };
      std::vector<Piece> pieces{{&parity.at(p), -1}};
      for (int j = 0; j < m; ++j)
        if (j != p && j != lost) pieces.push_back({&data.at(j), j});
      for (std::uint64_t offset = 0; offset < segment; offset += chunk) {
        const std::uint64_t at_stream = static_cast<std::uint64_t>(c) * segment + offset;
        if (at_stream >= length) break;  // only padding left
        const std::size_t n = std::min<std::uint64_t>(chunk, segment - offset);
        for (std::size_t i = 0; i < pieces.size(); ++i) {
          const Piece& pc = pieces[i];
          const bool reader = pc.holding->rank == me, writer_here = me == at;
          if (!reader && !writer_here) continue;
          char* dst = i == 0 ? acc : piece;
          if (reader) {
            // A piece that cannot be read is sent as zeros: the stream stays in step (no rank
            // waits for a message that never comes) and the rebuilt file's digest says so.
            try {
              if (pc.member < 0) {
                const auto r = PositionalReader::file(pc.holding->dir / kParityFile);
                if (!r.read(offset, n, dst)) std::memset(dst, 0, n);
              } else {
                DataStream(pc.holding->dir, manifest.files.at(pc.member))
                    .read(static_cast<std::uint64_t>(segment_of(p, pc.member, m)) * segment + offset, n, dst);
              }
            } catch (const Error& e) {
              std::memset(dst, 0, n);
              detail::log(LogLevel::warn, "savepoint: memory tier: rebuilding from parity: {}", e.what());
            }
            if (!writer_here) world.group().send_and_receive({{at, dst, n}}, {});
          } else {
            world.group().send_and_receive({}, {{pc.holding->rank, dst, n}});
          }
          if (writer_here && i > 0) xor_into(acc, piece, n);
        }
        if (writer) writer->write(acc, std::min<std::uint64_t>(n, length - at_stream));
      }
    }
    if (!writer) return std::string();
    writer->finish();
    return writer->damage;
  });
  const std::string& damage = outcome.at(at);
  if (!damage.empty()) {
    detail::log(LogLevel::warn, "savepoint: memory tier: checkpoint {}: {}", records.name(), damage);
    return false;
  }
  return true;
}

}  // namespace savepoint::tier
