// The object store behind `s3://` paths: which client reaches a path, and the file-system
// calls of the I/O seam done with S3 requests (detail/object_store.hpp).
#include "s3_client.hpp"

#include <savepoint/detail/object_store.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <thread>

namespace savepoint {

bool is_object_store_path(const std::filesystem::path& path) noexcept {
  return path.native().rfind("s3://", 0) == 0;
}

namespace detail {

namespace {
constexpr const char* kScheme = "s3://";

// One configured way to reach a prefix: its options and the client built from them.
struct Store {
  fs::path prefix;
  ObjectStoreOptions options;
  std::unique_ptr<s3::Client> client;
  std::once_flag probed;
  bool unconditional = false;  // the probe found If-None-Match ignored, and the options accept it
};

std::mutex g_mutex;
std::map<std::string, std::shared_ptr<Store>>& configured() {  // by prefix ("s3://bucket/p")
  static std::map<std::string, std::shared_ptr<Store>> stores;
  return stores;
}
std::map<std::string, std::shared_ptr<Store>>& defaults() {  // by bucket, from the environment
  static std::map<std::string, std::shared_ptr<Store>> stores;
  return stores;
}
// Stores replaced by configure_object_store: kept, since a Checkpointer may still use one, and
// counted in object_store_traffic.
std::vector<std::shared_ptr<Store>>& retired() {
  static std::vector<std::shared_ptr<Store>> stores;
  return stores;
}

// Two options that reach the store the same way (configuring them again changes nothing).
bool same_options(const ObjectStoreOptions& a, const ObjectStoreOptions& b) {
  return a.endpoint() == b.endpoint() && a.region() == b.region() && a.profile() == b.profile() &&
         a.access_key_id() == b.access_key_id() && a.secret_access_key() == b.secret_access_key() &&
         a.session_token() == b.session_token() && a.path_style() == b.path_style() && a.part_bytes() == b.part_bytes() &&
         a.parallel_requests() == b.parallel_requests() && a.request_timeout() == b.request_timeout() &&
         a.deadline() == b.deadline() && a.max_attempts() == b.max_attempts() &&
         a.accept_unconditional_commit() == b.accept_unconditional_commit() && a.orphan_grace() == b.orphan_grace();
}

s3::Config config_for(const ObjectStoreOptions& o) {
  s3::Config c = s3::config_from_environment(o.profile());
  if (!o.endpoint().empty()) {
    c.endpoint = o.endpoint();
    while (!c.endpoint.empty() && c.endpoint.back() == '/') c.endpoint.pop_back();
    c.path_style = true;
  }
  if (!o.region().empty()) c.region = o.region();
  if (!o.access_key_id().empty()) {
    c.access_key = o.access_key_id();
    c.secret_key = o.secret_access_key();
    c.session_token = o.session_token();
  }
  if (o.path_style()) c.path_style = *o.path_style();
  c.request_timeout = o.request_timeout();
  c.deadline = o.deadline();
  c.max_attempts = std::max(1, o.max_attempts());
  return c;
}

std::shared_ptr<Store> make_store(const fs::path& prefix, const ObjectStoreOptions& options) {
  auto store = std::make_shared<Store>();
  store->prefix = prefix;
  store->options = options;
  store->client = std::make_unique<s3::Client>(config_for(options));
  return store;
}

bool under(const std::string& path, const std::string& prefix) {
  return path.rfind(prefix, 0) == 0 && (path.size() == prefix.size() || path[prefix.size()] == '/');
}

std::shared_ptr<Store> store_for(const fs::path& path) {
  const ObjectPath where = split_object_path(path);
  const std::string text = path.native();
  std::lock_guard<std::mutex> guard(g_mutex);
  std::shared_ptr<Store> best;
  for (const auto& [prefix, store] : configured())
    if (under(text, prefix) && (!best || prefix.size() > best->prefix.native().size())) best = store;
  if (best) return best;
  auto& slot = defaults()[where.bucket];
  if (!slot) slot = make_store(fs::path(kScheme + where.bucket), ObjectStoreOptions());
  return slot;
}

std::string describe(const Store& store) {
  const auto& c = store.client->config();
  return c.endpoint.empty() ? fmt::format("AWS S3 ({})", c.region) : c.endpoint;
}

// An object's identity where a file has (device, inode): every object is its own (a server-side
// copy is a new object), so sharing and scrub count no object twice.
constexpr std::uint64_t kObjectDevice = 0x5333;  // "S3"
void set_identity(FileStatus& st, const std::string& bucket, const std::string& key) {
  st.device = kObjectDevice;
  st.inode = digest_bytes(bucket + "/" + key).xxh3;
}

// Fresh, page-aligned memory that tensors may keep (MappedFile's owner).
std::shared_ptr<void> fresh_memory(std::size_t bytes) {
  const std::size_t rounded = (std::max<std::size_t>(bytes, 1) + 4095) / 4096 * 4096;
  void* p = std::aligned_alloc(4096, rounded);
  if (!p) throw std::bad_alloc();
  return std::shared_ptr<void>(p, [](void* q) { std::free(q); });
}
}  // namespace

ObjectPath split_object_path(const fs::path& path) {
  const std::string& text = path.native();
  if (!is_object_store_path(path)) throw UsageError(fmt::format("savepoint: '{}' is not an s3:// path", text));
  std::string rest = text.substr(std::strlen(kScheme));
  while (!rest.empty() && rest.back() == '/') rest.pop_back();
  ObjectPath out;
  const auto slash = rest.find('/');
  out.bucket = rest.substr(0, slash);
  out.key = slash == std::string::npos ? std::string() : rest.substr(slash + 1);
  if (out.bucket.empty())
    throw UsageError(fmt::format("savepoint: '{}' names no bucket (expected s3://bucket/prefix)", text));
  std::size_t start = 0;
  while (!out.key.empty() && start <= out.key.size()) {
    const auto end = std::min(out.key.find('/', start), out.key.size());
    const std::string segment = out.key.substr(start, end - start);
    if (segment.empty() || segment == "." || segment == "..") {
      throw UsageError(fmt::format("savepoint: '{}' has an empty, '.' or '..' segment: object paths are taken "
                                   "literally",
                                   text));
    }
    start = end + 1;
  }
  return out;
}

ObjectStoreOptions object_store_options(const fs::path& path) { return store_for(path)->options; }

}  // namespace detail

void configure_object_store(const std::filesystem::path& prefix, const ObjectStoreOptions& options) {
  namespace fs = std::filesystem;
  const detail::ObjectPath where = detail::split_object_path(prefix);
  std::string key = std::string(detail::kScheme) + where.bucket;
  if (!where.key.empty()) key += "/" + where.key;
  std::lock_guard<std::mutex> guard(detail::g_mutex);
  auto& slot = detail::configured()[key];
  if (slot && detail::same_options(slot->options, options)) return;  // every rank of a job configures it
  if (slot) detail::retired().push_back(std::move(slot));
  slot = detail::make_store(fs::path(key), options);
}

namespace detail {

ObjectStoreTraffic object_store_traffic() {
  ObjectStoreTraffic t;
  std::lock_guard<std::mutex> guard(g_mutex);
  std::vector<const Store*> all;
  for (const auto& s : retired()) all.push_back(s.get());
  for (auto* stores : {&configured(), &defaults()})
    for (const auto& named : *stores) all.push_back(named.second.get());
  for (const Store* store : all) {
    const auto c = store->client->counters();
    t.requests += c.requests;
    t.retries += c.retries;
    t.bytes_sent += c.bytes_sent;
    t.bytes_received += c.bytes_received;
  }
  return t;
}

void s3_set_request_observer(
    std::function<void(const char* method, const std::string& bucket, const std::string& key, int status)> observer) {
  s3::set_request_observer(std::move(observer));
}

void probe_conditional_create(const fs::path& root) {
  const auto store = store_for(root);
  std::call_once(store->probed, [&] {
    const ObjectPath where = split_object_path(root);
    std::random_device rd;
    const std::string key = (where.key.empty() ? std::string() : where.key + "/") +
                            fmt::format(".savepoint-probe-{}-{:08x}", ::getpid(), rd());
    auto& client = *store->client;
    const std::string reason = [&]() -> std::string {
      if (!client.put(where.bucket, key, "probe 1\n", /*if_none_match=*/true))
        return "a conditional create of a new object failed";
      std::string why;
      if (client.put(where.bucket, key, "probe 2\n", /*if_none_match=*/true))
        why = "a second create of the same object with If-None-Match: * succeeded (the server ignores the "
              "condition, and would let a later save overwrite a committed meta.json)";
      return why;
    }();
    try {
      client.remove(where.bucket, key);
    } catch (const Error& e) {
      detail::log(LogLevel::warn, "Could not remove the probe object s3://{}/{}: {}", where.bucket, key, e.what());
    }
    if (reason.empty()) return;
    if (!store->options.accept_unconditional_commit()) {
      throw UsageError(fmt::format("savepoint: the object store at {} cannot commit checkpoints safely: {}. "
                                   "Use a server that honours conditional writes (AWS S3, MinIO, Ceph RGW, moto), or "
                                   "accept a weaker commit with ObjectStoreOptions().accept_unconditional_commit(true) "
                                   "(docs/object-storage.md, \"The probe\")",
                                   describe(*store), reason));
    }
    store->unconditional = true;
    detail::log(LogLevel::warn,
                "The object store at {} ignores If-None-Match ({}); commits are plain PUTs, as accepted by "
                "accept_unconditional_commit: two writers of one checkpoint name are no longer told apart",
                describe(*store), reason);
  });
}

bool create_object_if_absent(const fs::path& file, std::string_view bytes) {
  const auto store = store_for(file);
  const ObjectPath where = split_object_path(file);
  if (store->unconditional) {
    if (store->client->head(where.bucket, where.key)) return false;
    store->client->put(where.bucket, where.key, bytes);
    return true;
  }
  if (store->client->put(where.bucket, where.key, bytes, /*if_none_match=*/true)) return true;
  // A 412 may answer a retry of our own create whose reply was lost: then the object holds our
  // bytes (callers write bytes no other writer would: a claim names pid, host and time).
  const auto found = store->client->get(where.bucket, where.key);
  return found && *found == bytes;
}

std::int64_t object_store_time(const fs::path& root) {
  return store_for(root)->client->server_time(split_object_path(root).bucket);
}

void copy_object(const fs::path& from, const fs::path& to, std::optional<std::uint64_t> size) {
  const ObjectPath a = split_object_path(from), b = split_object_path(to);
  if (a.bucket != b.bucket) {
    throw UsageError(fmt::format("savepoint: cannot copy '{}' to '{}' on the server: another bucket", from.string(),
                                 to.string()));
  }
  store_for(to)->client->copy(a.bucket, a.key, b.key, size);
}

namespace {
// This process's scratch directory, removed when it exits (never destroyed itself: the exit
// handler runs after static destructors).
const fs::path& scratch_directory() {
  static const fs::path* const dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    auto* d = new fs::path(fs::path(tmp && *tmp ? tmp : "/tmp") / fmt::format("savepoint-scratch-{}", ::getpid()));
    std::atexit([] {
      std::error_code ignored;
      fs::remove_all(scratch_directory(), ignored);
    });
    return d;
  }();
  return *dir;
}
}  // namespace

fs::path scratch_file_for(const fs::path& object) {
  static std::atomic<unsigned> counter{0};
  const fs::path dir = scratch_directory();
  make_directories(dir);
  return dir / fmt::format("{}-{}", counter.fetch_add(1), object.filename().string());
}

void upload_scratch_file(const fs::path& scratch, const fs::path& object) {
  {
    FileWriter out(object);
    const PositionalReader in = PositionalReader::file(scratch);
    const auto st = path_status(scratch);
    std::vector<char> chunk(std::size_t{8} << 20);
    for (std::uint64_t at = 0, size = st ? st->size : 0; at < size; at += chunk.size()) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size(), size - at));
      if (!in.read(at, n, chunk.data())) throw_io(fmt::format("'{}' shrank while uploaded", scratch.string()), scratch, EIO);
      out.write(chunk.data(), n);
    }
    out.finish();
  }
  std::error_code ignored;
  fs::remove(scratch, ignored);
}

namespace object_io {

std::optional<FileStatus> status(const fs::path& path) {
  const ObjectPath where = split_object_path(path);
  const auto store = store_for(path);  // held: configure_object_store may replace it meanwhile
  auto& client = *store->client;
  FileStatus st;
  if (where.key.empty()) {
    st.type = FileType::directory;
    return st;
  }
  if (const auto info = client.head(where.bucket, where.key)) {
    st.type = FileType::regular;
    st.size = info->size;
    st.mtime_ns = info->last_modified_unix * 1000000000LL;
    set_identity(st, where.bucket, where.key);
    return st;
  }
  const s3::Listing below = client.list(where.bucket, where.key + "/", "/");
  if (below.objects.empty() && below.prefixes.empty()) return std::nullopt;
  st.type = FileType::directory;
  return st;
}

std::vector<DirectoryEntry> list(const fs::path& directory, std::string_view prefix) {
  const ObjectPath where = split_object_path(directory);
  const std::string base = where.key.empty() ? std::string() : where.key + "/";
  const s3::Listing listing = store_for(directory)->client->list(where.bucket, base + std::string(prefix), "/");
  std::vector<DirectoryEntry> out;
  for (const auto& p : listing.prefixes) {
    std::string name = p.substr(base.size());
    while (!name.empty() && name.back() == '/') name.pop_back();
    if (name.empty()) continue;
    DirectoryEntry e;
    e.name = std::move(name);
    e.status.type = FileType::directory;
    out.push_back(std::move(e));
  }
  for (const auto& o : listing.objects) {
    if (o.key.size() <= base.size()) continue;
    DirectoryEntry e;
    e.name = o.key.substr(base.size());
    e.status.type = FileType::regular;
    e.status.size = o.size;
    e.status.mtime_ns = o.last_modified_unix * 1000000000LL;
    set_identity(e.status, where.bucket, o.key);
    out.push_back(std::move(e));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return out;
}

std::string read_small(const fs::path& path, std::size_t max_bytes) {
  const ObjectPath where = split_object_path(path);
  auto body = store_for(path)->client->get(where.bucket, where.key);
  if (!body) throw_io(fmt::format("'{}' does not exist", path.string()), path, ENOENT);
  if (body->size() > max_bytes) {
    throw_io(fmt::format("'{}' is larger than expected ({} bytes, at most {})", path.string(), body->size(),
                         max_bytes),
             path, EFBIG);
  }
  return std::move(*body);
}

void write(const fs::path& path, std::string_view bytes) {
  const ObjectPath where = split_object_path(path);
  store_for(path)->client->put(where.bucket, where.key, bytes);
}

void remove(const fs::path& path) {
  const ObjectPath where = split_object_path(path);
  store_for(path)->client->remove(where.bucket, where.key);
}

void remove_tree(const fs::path& directory) {
  const ObjectPath where = split_object_path(directory);
  if (where.key.empty())
    throw UsageError(fmt::format("savepoint: refusing to remove every object of bucket '{}'", where.bucket));
  const auto store = store_for(directory);
  auto& client = *store->client;
  // meta.json first: from then on the checkpoint no longer exists, whatever happens next.
  client.remove(where.bucket, where.key + "/meta.json");
  const s3::Listing all = client.list(where.bucket, where.key + "/");
  // The rest side by side (one DELETE each: DeleteObjects needs a Content-MD5 some servers insist on).
  std::atomic<std::size_t> next{0};
  std::mutex mutex;
  std::exception_ptr error;
  const auto remove_some = [&] {
    for (std::size_t i; (i = next.fetch_add(1)) < all.objects.size();) {
      try {
        client.remove(where.bucket, all.objects[i].key);
      } catch (...) {
        std::lock_guard<std::mutex> guard(mutex);
        if (!error) error = std::current_exception();
      }
    }
  };
  const std::size_t threads = std::min<std::size_t>(all.objects.size(), std::max(1, store->options.parallel_requests()));
  std::vector<std::thread> workers;
  for (std::size_t t = 1; t < threads; ++t) workers.emplace_back(remove_some);
  remove_some();
  for (auto& w : workers) w.join();
  if (error) std::rethrow_exception(error);
  if (client.head(where.bucket, where.key)) client.remove(where.bucket, where.key);  // a plain object of that name
}

FreshRead read_fresh(const fs::path& path, std::optional<std::uint64_t> expected) {
  const auto store = store_for(path);
  const ObjectPath where = split_object_path(path);
  auto& client = *store->client;
  // Known size: no HEAD; the last range asks for one byte more, so a longer object shows.
  if (expected && *expected == 0) expected.reset();  // a range of an empty object is an error (416)
  std::uint64_t size = 0;
  if (expected) {
    size = *expected;
  } else {
    const auto info = client.head(where.bucket, where.key);
    if (!info) throw_io(fmt::format("'{}' does not exist", path.string()), path, ENOENT);
    size = info->size;
  }
  auto memory = fresh_memory(size);
  char* const base = static_cast<char*>(memory.get());
  const std::uint64_t chunk = std::max<std::uint64_t>(store->options.part_bytes(), 1 << 20);
  const std::size_t chunks = size == 0 ? 0 : static_cast<std::size_t>((size + chunk - 1) / chunk);
  // Ranges arrive in any order; each is hashed as soon as every range before it is in.
  Hasher hasher;
  std::mutex mutex;
  std::vector<bool> done(chunks, false);
  std::size_t hashed = 0;
  std::atomic<std::size_t> next{0};
  std::exception_ptr error;
  const auto fetch = [&] {
    for (std::size_t i; (i = next.fetch_add(1)) < chunks;) {
      try {
        const std::uint64_t offset = i * chunk, length = std::min(chunk, size - offset);
        const bool last = i + 1 == chunks;
        std::uint64_t filled = 0;
        std::uint64_t got = 0;
        try {
          got = client.get_range(
              where.bucket, where.key, offset, length + (expected && last ? 1 : 0),
              [&](const char* data, std::size_t n) {
                const std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(n, length - filled));
                std::memcpy(base + offset + filled, data, take);
                filled += take;
              },
              [&] { filled = 0; });
        } catch (const ObjectStoreError& e) {
          if (e.kind() != ObjectStoreError::Kind::not_found) throw;
          throw_io(fmt::format("'{}' does not exist", path.string()), path, ENOENT);
        }
        if (expected && last && got == length + 1) {
          throw_corrupt(fmt::format("'{}' has more than the {} bytes recorded (overwritten)", path.string(), size),
                        path);
        }
        if (got != length) {
          throw_corrupt(fmt::format("'{}' ended after {} bytes, {} {} (truncated or changed while being read)",
                                    path.string(), offset + got, expected ? "meta.json recorded" : "HEAD said", size),
                        path);
        }
        std::lock_guard<std::mutex> guard(mutex);
        done[i] = true;
        while (hashed < chunks && done[hashed]) {
          const std::uint64_t at = hashed * chunk;
          hasher.update(base + at, static_cast<std::size_t>(std::min(chunk, size - at)));
          ++hashed;
        }
      } catch (...) {
        std::lock_guard<std::mutex> guard(mutex);
        if (!error) error = std::current_exception();
        next = chunks;
      }
    }
  };
  const int threads = static_cast<int>(std::min<std::size_t>(chunks, std::max(1, store->options.parallel_requests())));
  std::vector<std::thread> workers;
  for (int t = 1; t < threads; ++t) workers.emplace_back(fetch);
  fetch();
  for (auto& w : workers) w.join();
  if (error) std::rethrow_exception(error);
  FreshRead out;
  out.digest = {size, hasher.digest()};
  out.contents = std::make_shared<const MappedFile>(
      path, std::string_view(base, static_cast<std::size_t>(size)), std::shared_ptr<const void>(memory), true);
  return out;
}

bool read_at(const fs::path& path, std::uint64_t offset, std::uint64_t size, char* out) {
  const ObjectPath where = split_object_path(path);
  std::uint64_t filled = 0;
  const std::uint64_t got = store_for(path)->client->get_range(
      where.bucket, where.key, offset, size,
      [&](const char* data, std::size_t n) {
        const std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(n, size - filled));
        std::memcpy(out + filled, data, take);
        filled += take;
      },
      [&] { filled = 0; });
  return got == size;
}

struct Upload::Impl {
  std::shared_ptr<Store> store;
  s3::ObjectWriter writer;
  Impl(std::shared_ptr<Store> s, const ObjectPath& where)
      : store(std::move(s)),
        writer(*store->client, where.bucket, where.key, static_cast<std::size_t>(store->options.part_bytes()),
               std::max(1, store->options.parallel_requests())) {}
};

Upload::Upload(const fs::path& path) : impl_(std::make_unique<Impl>(store_for(path), split_object_path(path))) {}
Upload::~Upload() = default;
void Upload::write(const void* data, std::size_t size) { impl_->writer.write(data, size); }
std::uint64_t Upload::finish() { return impl_->writer.finish(); }

std::string read_marks(const fs::path& file) {
  const ObjectPath where = split_object_path(file);
  return store_for(file)->client->get(where.bucket, where.key).value_or(std::string());
}

void write_marks(const fs::path& file, const std::string& text) { write(file, text); }

}  // namespace object_io
}  // namespace detail
}  // namespace savepoint
