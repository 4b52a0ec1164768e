#include "transport.hpp"

#include "../engine/catalog.hpp"

#include <savepoint/detail/io.hpp>
#include <savepoint/detail/meta.hpp>
#include <savepoint/errors.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>

namespace savepoint::tier {

using nlohmann::json;
using namespace detail;

void BuddyCopies::exchange(const Checkpoint& committed, const std::vector<std::string>& my_files) {
  if (!send_buffer_) send_buffer_ = std::make_unique<ChunkBuffer>(kChunk);
  const int me = replication_.rank();
  const int buddy = nodes_.buddy_of(me);
  const std::vector<int> senders = nodes_.kept_for(me);
  const fs::path part = layout_.own() / committed.name();
  ProcessGroup& group = replication_.group();

  // What this rank sends: its files, and its node's meta.json (the whole checkpoint's records).
  struct Outbound {
    PositionalReader reader;
    std::uint64_t bytes;
  };
  std::vector<Outbound> sources;
  json header{{"name", committed.name()}, {"meta", read_small_file(part / kMetaFileName, kMaxMetaBytes)}};
  header["files"] = json::array();
  for (const auto& file : my_files) {
    const auto st = path_status(part / file);
    if (!st) throw IoError(fmt::format("savepoint: '{}' vanished before its buddy copy", (part / file).string()), part / file, ENOENT);
    sources.push_back({PositionalReader::file(part / file), st->size});
    header["files"].push_back({{"file", file}, {"bytes", st->size}});
  }
  const std::string mine = dump(header);

  // 1. Header sizes, then headers.
  std::uint64_t my_size = mine.size();
  std::vector<std::uint64_t> sizes(senders.size());
  std::vector<ProcessGroup::Outgoing> sends;
  std::vector<ProcessGroup::Incoming> receives;
  if (buddy >= 0) sends.push_back({buddy, reinterpret_cast<const char*>(&my_size), sizeof my_size});
  for (std::size_t i = 0; i < senders.size(); ++i)
    receives.push_back({senders[i], reinterpret_cast<char*>(&sizes[i]), sizeof sizes[i]});
  group.send_and_receive(sends, receives);
  std::vector<std::string> texts(senders.size());
  sends.clear();
  receives.clear();
  if (buddy >= 0) sends.push_back({buddy, mine.data(), mine.size()});
  for (std::size_t i = 0; i < senders.size(); ++i) {
    texts[i].resize(sizes[i]);
    receives.push_back({senders[i], texts[i].data(), texts[i].size()});
  }
  group.send_and_receive(sends, receives);

  // 2. Every sender's part lands in a temporary directory beside its committed copies.
  struct Inbound {
    int sender;
    json header;
    Checkpoint checkpoint;  // parsed from the sender's meta.json
    fs::path temp, final_path;
    std::vector<const FileRecord*> files;
    std::unique_ptr<FileWriter> writer;  // files[file], while it is being received
    std::size_t file = 0;
    std::uint64_t offset = 0;
  };
  std::vector<Inbound> inbound(senders.size());
  struct TempGuard {  // removes the temporary directories of an incomplete receive
    std::vector<Inbound>& in;
    ~TempGuard() {
      for (auto& i : in) {
        i.writer.reset();
        if (i.temp.empty()) continue;
        try {
          remove_tree(i.temp);
        } catch (const Error&) {
        }
      }
    }
  } guard{inbound};
  for (std::size_t i = 0; i < senders.size(); ++i) {
    Inbound& in = inbound[i];
    in.sender = senders[i];
    in.header = json::parse(texts[i]);
    const fs::path dir = layout_.replicas(in.sender);
    make_directories(dir);
    in.final_path = dir / in.header.at("name").get<std::string>();
    in.temp = dir / (std::string(kTempPrefix) + engine::unique_suffix());
    if (!claim_spare_directory(in.temp)) make_directory(in.temp);
    in.checkpoint = parse_meta(in.final_path, in.header.at("meta").get<std::string>());
    for (const auto& f : in.header.at("files")) {
      const std::string name = f.at("file").get<std::string>();
      const auto rec = std::find_if(in.checkpoint.files.begin(), in.checkpoint.files.end(),
                                    [&](const FileRecord& r) { return r.file == name; });
      if (!is_plain_file_name(name) || rec == in.checkpoint.files.end() ||
          rec->bytes != f.at("bytes").get<std::uint64_t>()) {
        throw CorruptCheckpointError(fmt::format("savepoint: rank {} sent '{}', which its checkpoint {} does not "
                                                 "list with that size",
                                                 in.sender, name, in.final_path.string()),
                                     in.final_path);
      }
      in.files.push_back(&*rec);
    }
  }
  // A received file is complete: its digest checked against the sender's record.
  const auto finish_file = [](Inbound& in) {
    const FileRecord& rec = *in.files[in.file];
    const FileDigest digest = in.writer->finish(/*sync=*/false);  // a tmpfs: nothing to sync
    in.writer.reset();
    if (digest.bytes != rec.bytes || digest.xxh3 != rec.xxh3) {
      throw CorruptCheckpointError(fmt::format("savepoint: the buddy copy of '{}' (key '{}') from rank {} does "
                                               "not match its record ({} bytes, XXH3 {}; recorded {}, {})",
                                               rec.file, rec.key, in.sender, digest.bytes, to_hex(digest.xxh3),
                                               rec.bytes, to_hex(rec.xxh3)),
                                   in.final_path);
    }
    ++in.file;
    in.offset = 0;
  };

  // 3. Chunks: this rank's files out to the buddy while the kept parts come in. Both sides
  //    walk the files in order, one buffer at a time: read() into a reused buffer, sent;
  //    received into a reused buffer, written and hashed while it is in the cache.
  while (receive_buffers_.size() < inbound.size()) receive_buffers_.push_back(std::make_unique<ChunkBuffer>(kChunk));
  std::size_t out_file = 0;
  std::uint64_t out_offset = 0;
  for (;;) {
    sends.clear();
    receives.clear();
    while (out_file < sources.size() && out_offset == sources[out_file].bytes) ++out_file, out_offset = 0;
    std::size_t out_size = 0;
    if (buddy >= 0 && out_file < sources.size()) {
      const Outbound& source = sources[out_file];
      out_size = std::min<std::uint64_t>(kChunk, source.bytes - out_offset);
      if (!source.reader.read(out_offset, out_size, send_buffer_->data())) {
        throw IoError(fmt::format("savepoint: '{}' is shorter than when its buddy copy began",
                                  source.reader.path().string()),
                      source.reader.path(), EIO);
      }
      sends.push_back({buddy, send_buffer_->data(), out_size});
    }
    std::vector<std::size_t> in_sizes(inbound.size(), 0);
    for (std::size_t i = 0; i < inbound.size(); ++i) {
      Inbound& in = inbound[i];
      for (;;) {  // the next file with bytes to come (empty files are created and finished here)
        if (in.file == in.files.size()) break;
        if (!in.writer) in.writer = std::make_unique<FileWriter>(in.temp / in.files[in.file]->file, WriteMode::reuse);
        if (in.offset < in.files[in.file]->bytes) break;
        finish_file(in);
      }
      if (in.file == in.files.size()) continue;
      in_sizes[i] = std::min<std::uint64_t>(kChunk, in.files[in.file]->bytes - in.offset);
      receives.push_back({in.sender, receive_buffers_[i]->data(), in_sizes[i]});
    }
    if (sends.empty() && receives.empty()) break;
    group.send_and_receive(sends, receives);
    out_offset += out_size;
    for (std::size_t i = 0; i < inbound.size(); ++i) {
      if (in_sizes[i] == 0) continue;
      inbound[i].writer->write(receive_buffers_[i]->data(), in_sizes[i]);
      inbound[i].offset += in_sizes[i];
    }
  }

  // 4. Each kept part is committed: meta.json, then the rename.
  for (auto& in : inbound) {
    empty_recycle_bin(in.temp);
    write_file(in.temp / kMetaFileName, in.header.at("meta").get<std::string>(), /*sync=*/false);
    if (path_status(in.final_path)) remove_tree(in.final_path);  // a copy of an earlier run's
    rename_no_replace(in.temp, in.final_path);
    in.temp.clear();
  }
}

}  // namespace savepoint::tier
