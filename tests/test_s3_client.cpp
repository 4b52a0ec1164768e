// The S3 client (src/io/s3_client.cpp) on its own: requests, URLs and signatures, retries,
// multipart uploads and copies, errors that never show a credential, the configuration from
// the environment. Cases tagged [.s3] need a server (AWS_ENDPOINT_URL and
// SAVEPOINT_TEST_S3_BUCKET, as scripts/with-s3-server.sh sets them) and are skipped without
// one; cases tagged [s3-client] run against a scripted HTTP server on loopback, or none.
#include "support.hpp"

#include "../src/io/s3_client.hpp"

#include "catch.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace s3client_test {

namespace s3 = savepoint::detail::s3;
using savepoint::ObjectStoreError;
using namespace std::chrono_literals;

struct Server {
  std::string endpoint, bucket;
};

std::optional<Server> server() {
  const char* endpoint = std::getenv("AWS_ENDPOINT_URL");
  const char* bucket = std::getenv("SAVEPOINT_TEST_S3_BUCKET");
  if (!endpoint || !*endpoint || !bucket || !*bucket) return std::nullopt;
  return Server{endpoint, bucket};
}

s3::Config config_for(const Server& s) {
  s3::Config c = s3::config_from_environment();
  c.endpoint = s.endpoint;
  c.path_style = true;
  c.max_attempts = 4;
  c.backoff_base = 20ms;
  c.backoff_max = 200ms;
  c.deadline = 120s;
  return c;
}

std::string unique_prefix() {
  static std::atomic<int> counter{0};
  std::random_device rd;
  return fmt::format("s3client-{}-{}-{:06x}/", ::getpid(), counter++, rd() & 0xffffff);
}

// Removes every object under the prefix at the end of the case.
struct Cleanup {
  s3::Client& client;
  std::string bucket, prefix;
  ~Cleanup() {
    try {
      for (const auto& o : client.list(bucket, prefix).objects) client.remove(bucket, o.key);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "could not empty s3://%s/%s: %s\n", bucket.c_str(), prefix.c_str(), e.what());
    }
  }
};

std::string pattern(std::size_t n, unsigned seed) {
  std::string out(n, '\0');
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& c : out) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    c = static_cast<char>(x & 0xff);
  }
  return out;
}

// Counts the requests the client reports through the test seam, per method.
struct Observed {
  std::mutex mutex;
  std::map<std::string, int> by_method;
  std::vector<int> statuses;
  Observed() {
    s3::set_request_observer([this](const char* method, const std::string&, const std::string&, int status) {
      std::lock_guard<std::mutex> lock(mutex);
      ++by_method[method];
      statuses.push_back(status);
    });
  }
  ~Observed() { s3::set_request_observer(nullptr); }
  int count(const std::string& method) {
    std::lock_guard<std::mutex> lock(mutex);
    return by_method[method];
  }
};

// Sets (or unsets) environment variables for its lifetime.
class EnvGuard {
 public:
  explicit EnvGuard(std::vector<std::string> names) {
    for (auto& n : names) {
      const char* v = std::getenv(n.c_str());
      saved_.emplace_back(n, v ? std::optional<std::string>(v) : std::nullopt);
      ::unsetenv(n.c_str());
    }
  }
  void set(const std::string& name, const std::string& value) { ::setenv(name.c_str(), value.c_str(), 1); }
  void unset(const std::string& name) { ::unsetenv(name.c_str()); }
  ~EnvGuard() {
    for (auto& [n, v] : saved_) {
      if (v)
        ::setenv(n.c_str(), v->c_str(), 1);
      else
        ::unsetenv(n.c_str());
    }
  }
  EnvGuard(const EnvGuard&) = delete;
  EnvGuard& operator=(const EnvGuard&) = delete;

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

// A scripted HTTP server on loopback: each connection gets the next canned reply (written as
// it is, then the connection is closed); the requests' header blocks are kept.
class ScriptedServer {
 public:
  explicit ScriptedServer(std::vector<std::string> replies) : replies_(std::move(replies)) {
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(listener_ >= 0);
    int one = 1;
    ::setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    REQUIRE(::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(listener_, 16) == 0);
    socklen_t len = sizeof addr;
    ::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~ScriptedServer() {
    stop_ = true;
    thread_.join();
    ::close(listener_);
  }
  ScriptedServer(const ScriptedServer&) = delete;
  ScriptedServer& operator=(const ScriptedServer&) = delete;

  std::string endpoint() const { return fmt::format("http://127.0.0.1:{}", port_); }
  std::vector<std::string> requests() {
    std::lock_guard<std::mutex> lock(mutex_);
    return requests_;
  }

 private:
  void serve() {
    for (const std::string& reply : replies_) {
      int fd = -1;
      while (!stop_ && fd < 0) {
        pollfd p{listener_, POLLIN, 0};
        if (::poll(&p, 1, 50) > 0) fd = ::accept(listener_, nullptr, nullptr);
      }
      if (fd < 0) return;
      std::string request;
      char buffer[4096];
      std::size_t body_left = 0;
      bool headers_done = false;
      while (!headers_done || body_left > 0) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 5000) <= 0) break;
        const ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n <= 0) break;
        if (headers_done) {
          body_left -= std::min(body_left, static_cast<std::size_t>(n));
          continue;
        }
        request.append(buffer, static_cast<std::size_t>(n));
        const auto end = request.find("\r\n\r\n");
        if (end == std::string::npos) continue;
        headers_done = true;
        std::string lower = request.substr(0, end);
        for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        const auto cl = lower.find("content-length:");
        const std::size_t length = cl == std::string::npos ? 0 : std::strtoull(lower.c_str() + cl + 15, nullptr, 10);
        const std::size_t have = request.size() - end - 4;
        body_left = length > have ? length - have : 0;
        request.resize(end);
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        requests_.push_back(request);
      }
      std::size_t off = 0;
      while (off < reply.size()) {
        const ssize_t n = ::write(fd, reply.data() + off, reply.size() - off);
        if (n <= 0) break;
        off += static_cast<std::size_t>(n);
      }
      ::shutdown(fd, SHUT_RDWR);
      ::close(fd);
    }
  }

  std::vector<std::string> replies_;
  int listener_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::vector<std::string> requests_;
  std::thread thread_;
};

std::string reply(int status, const std::string& reason, const std::string& body,
                  const std::string& extra_headers = {}) {
  return fmt::format("HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n{}", status, reason,
                     body.size(), extra_headers, body);
}

std::string error_xml(const std::string& code, const std::string& message) {
  return fmt::format("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message></Error>",
                     code, message);
}

s3::Config scripted_config(const std::string& endpoint) {
  s3::Config c;
  c.endpoint = endpoint;
  c.access_key = "AKIDSCRIPTED";
  c.secret_key = "scripted-secret-never-shown";
  c.session_token = "scripted-token-never-shown";
  c.max_attempts = 5;
  c.backoff_base = 1ms;
  c.backoff_max = 5ms;
  c.connect_timeout = 2000ms;
  c.request_timeout = 5000ms;
  return c;
}

}  // namespace s3client_test

using namespace s3client_test;

#define S3CLIENT_SERVER_OR_SKIP(var)                                                             \
  const auto var = server();                                                                     \
  if (!var) return test::skip("no S3 server: set AWS_ENDPOINT_URL and SAVEPOINT_TEST_S3_BUCKET")

// ------------------------------------------------------------------ no server needed

TEST_CASE("s3 client: URLs, SigV4 headers and query strings as sent", "[s3-client]") {
  const std::string list_xml =
      "<ListBucketResult><IsTruncated>false</IsTruncated>"
      "<Contents><Key>a b/c+d</Key><Size>3</Size><ETag>\"e\"</ETag><LastModified>2024-02-29T12:34:56.000Z</LastModified>"
      "</Contents><CommonPrefixes><Prefix>a b/x/</Prefix></CommonPrefixes></ListBucketResult>";
  ScriptedServer fake({reply(200, "OK", "", "ETag: \"abc\"\r\n"), reply(200, "OK", list_xml),
                       reply(200, "OK", "<InitiateMultipartUploadResult><UploadId>u+1/=</UploadId>"
                                        "</InitiateMultipartUploadResult>"),
                       reply(200, "OK", "<CopyPartResult><ETag>\"p1\"</ETag></CopyPartResult>"),
                       reply(200, "OK", "dots")});
  s3::Client client(scripted_config(fake.endpoint()));
  REQUIRE(client.put("bkt", "a b/c+d/\xc3\xa9~x", "xyz"));
  const auto listing = client.list("bkt", "a b/", "/");
  REQUIRE(listing.objects.size() == 1);
  CHECK(listing.objects[0].key == "a b/c+d");
  CHECK(listing.objects[0].size == 3);
  CHECK(listing.objects[0].etag == "\"e\"");
  CHECK(listing.objects[0].last_modified_unix == 1709210096);
  CHECK(listing.prefixes == std::vector<std::string>{"a b/x/"});
  CHECK(client.create_multipart("bkt", "k") == "u+1/=");
  CHECK(client.upload_part_copy("bkt", "k", "u+1/=", 7, "from key", 0, 99) == "\"p1\"");

  CHECK(client.get("bkt", "a/./b/../c") == std::optional<std::string>("dots"));

  const auto requests = fake.requests();
  REQUIRE(requests.size() == 5);
  CHECK_THAT(requests[0], Catch::Matchers::StartsWith("PUT /bkt/a%20b/c%2Bd/%C3%A9~x HTTP/1.1\r\n"));
  CHECK_THAT(requests[0], Catch::Contains("Authorization: AWS4-HMAC-SHA256 Credential=AKIDSCRIPTED/"));
  CHECK_THAT(requests[0], Catch::Contains("/us-east-1/s3/aws4_request"));
  CHECK_THAT(requests[0], Catch::Contains("x-amz-content-sha256: UNSIGNED-PAYLOAD"));
  CHECK_THAT(requests[0], Catch::Contains("x-amz-security-token: scripted-token-never-shown"));
  CHECK_THAT(requests[0], Catch::Contains("Content-Length: 3"));
  CHECK_THAT(requests[0], !Catch::Contains("scripted-secret-never-shown"));
  CHECK_THAT(requests[1], Catch::Matchers::StartsWith("GET /bkt?delimiter=%2F&list-type=2&prefix=a%20b%2F HTTP/1.1\r\n"));
  CHECK_THAT(requests[2], Catch::Matchers::StartsWith("POST /bkt/k?uploads= HTTP/1.1\r\n"));
  CHECK_THAT(requests[2], Catch::Contains("Content-Length: 0"));
  CHECK_THAT(requests[3],
             Catch::Matchers::StartsWith("PUT /bkt/k?partNumber=7&uploadId=u%2B1%2F%3D HTTP/1.1\r\n"));
  CHECK_THAT(requests[3], Catch::Contains("x-amz-copy-source: /bkt/from%20key"));
  CHECK_THAT(requests[3], Catch::Contains("x-amz-copy-source-range: bytes=0-99"));
  // Sorted by name (curl before 8.10 sorts by line, so the client signs this one itself).
  CHECK_THAT(requests[3], Catch::Contains("SignedHeaders=host;x-amz-content-sha256;x-amz-copy-source;"
                                          "x-amz-copy-source-range;x-amz-date;x-amz-security-token, Signature="));
  CHECK_THAT(requests[4], Catch::Matchers::StartsWith("GET /bkt/a/./b/../c HTTP/1.1\r\n"));  // as it is
  CHECK_THAT(requests[4], Catch::Contains("Authorization: AWS4-HMAC-SHA256 Credential=AKIDSCRIPTED/"));
}

TEST_CASE("s3 client: 503 SlowDown and a cut-off body are retried, the sink told to restart", "[s3-client]") {
  ScriptedServer fake({reply(503, "Slow Down", s3client_test::error_xml("SlowDown", "Please reduce your request rate.")),
                       "HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nContent-Range: bytes 5-14/100\r\n"
                       "Connection: close\r\n\r\n01234",
                       reply(206, "Partial Content", "0123456789", "Content-Range: bytes 5-14/100\r\n")});
  s3::Client client(scripted_config(fake.endpoint()));
  std::string got;
  int restarts = 0;
  const auto n = client.get_range(
      "bkt", "obj", 5, 10, [&](const char* data, std::size_t size) { got.append(data, size); },
      [&] {
        ++restarts;
        got.clear();
      });
  CHECK(n == 10);
  CHECK(got == "0123456789");
  CHECK(restarts == 2);
  const auto counters = client.counters();
  CHECK(counters.requests == 3);
  CHECK(counters.retries == 2);
  const auto requests = fake.requests();
  REQUIRE(requests.size() == 3);
  for (const auto& r : requests) CHECK_THAT(r, Catch::Contains("Range: bytes=5-14"));
}

TEST_CASE("s3 client: a server error for good says which, how often, and never a credential", "[s3-client]") {
  const std::string body = s3client_test::error_xml("InternalError", "We encountered an internal error.");
  ScriptedServer fake({reply(500, "Internal Server Error", body), reply(500, "Internal Server Error", body),
                       reply(500, "Internal Server Error", body)});
  auto config = scripted_config(fake.endpoint());
  config.max_attempts = 3;
  s3::Client client(config);
  try {
    client.put("bkt", "dir/obj", "payload");
    FAIL("no exception");
  } catch (const ObjectStoreError& e) {
    CHECK(e.kind() == ObjectStoreError::Kind::server);
    CHECK(e.http_status() == 500);
    CHECK(e.code() == "InternalError");
    CHECK(e.path() == "s3://bkt/dir/obj");
    CHECK_THAT(e.what(), Catch::Matchers::StartsWith("savepoint: object store: PUT s3://bkt/dir/obj: HTTP 500 InternalError"));
    CHECK_THAT(e.what(), Catch::Contains("after 3 attempts; endpoint " + fake.endpoint()));
    CHECK_THAT(e.what(), !Catch::Contains("scripted-secret-never-shown"));
    CHECK_THAT(e.what(), !Catch::Contains("scripted-token-never-shown"));
  }
  CHECK(client.counters().retries == 2);
}

TEST_CASE("s3 client: CopyObject's 200 with an <Error> body is an error, retried when S3 says so", "[s3-client]") {
  const std::string head = "Content-Length: 3\r\nETag: \"x\"\r\nConnection: close\r\n";
  ScriptedServer fake({"HTTP/1.1 200 OK\r\n" + head + "\r\n",  // the HEAD of the source
                       reply(200, "OK", s3client_test::error_xml("InternalError", "try again")),
                       reply(200, "OK", "<CopyObjectResult><ETag>\"x\"</ETag></CopyObjectResult>"),
                       "HTTP/1.1 200 OK\r\n" + head + "\r\n",
                       reply(200, "OK", s3client_test::error_xml("AccessDenied", "Access Denied"))});
  s3::Client client(scripted_config(fake.endpoint()));
  client.copy("bkt", "from/k", "to/k");
  CHECK(client.counters().retries == 1);
  const auto requests = fake.requests();
  REQUIRE(requests.size() == 3);
  CHECK_THAT(requests[0], Catch::Matchers::StartsWith("HEAD /bkt/from/k HTTP/1.1"));
  CHECK_THAT(requests[1], Catch::Matchers::StartsWith("PUT /bkt/to/k HTTP/1.1"));
  CHECK_THAT(requests[1], Catch::Contains("x-amz-copy-source: /bkt/from/k"));
  try {
    client.copy("bkt", "from/k", "to/k");
    FAIL("no exception");
  } catch (const ObjectStoreError& e) {
    CHECK(e.kind() == ObjectStoreError::Kind::denied);
    CHECK(e.code() == "AccessDenied");
    CHECK_THAT(e.what(), Catch::Contains("may not write"));
  }
}

TEST_CASE("s3 client: a listing follows its continuation tokens", "[s3-client]") {
  const std::string page1 =
      "<ListBucketResult><IsTruncated>true</IsTruncated><NextContinuationToken>tok/en+=</NextContinuationToken>"
      "<Contents><Key>p/1</Key><Size>1</Size></Contents></ListBucketResult>";
  const std::string page2 =
      "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>p/2</Key><Size>2</Size></Contents>"
      "</ListBucketResult>";
  ScriptedServer fake({reply(200, "OK", page1), reply(200, "OK", page2)});
  s3::Client client(scripted_config(fake.endpoint()));
  const auto listing = client.list("bkt", "p/");
  REQUIRE(listing.objects.size() == 2);
  CHECK(listing.objects[0].key == "p/1");
  CHECK(listing.objects[1].key == "p/2");
  CHECK(listing.objects[1].size == 2);
  const auto requests = fake.requests();
  REQUIRE(requests.size() == 2);
  CHECK_THAT(requests[0], Catch::Matchers::StartsWith("GET /bkt?list-type=2&prefix=p%2F HTTP/1.1"));
  CHECK_THAT(requests[1], Catch::Matchers::StartsWith(
                              "GET /bkt?continuation-token=tok%2Fen%2B%3D&list-type=2&prefix=p%2F HTTP/1.1"));
}

TEST_CASE("s3 client: a part that fails is rethrown by the writer, which aborts the upload", "[s3-client]") {
  ScriptedServer fake({reply(200, "OK", "<InitiateMultipartUploadResult><UploadId>U1</UploadId>"
                                        "</InitiateMultipartUploadResult>"),
                       reply(403, "Forbidden", s3client_test::error_xml("AccessDenied", "Access Denied")),
                       reply(204, "No Content", "")});
  s3::Client client(scripted_config(fake.endpoint()));
  const std::string data = pattern((5 << 20) + 1, 5);
  s3::ObjectWriter writer(client, "bkt", "obj", 5 << 20, 1);
  try {
    writer.write(data.data(), data.size());  // the first part goes up in the background
    writer.finish();
    FAIL("no exception");
  } catch (const ObjectStoreError& e) {
    CHECK(e.kind() == ObjectStoreError::Kind::denied);
    CHECK_THAT(e.what(), Catch::Contains("PUT s3://bkt/obj: HTTP 403 AccessDenied"));
  }
  const auto requests = fake.requests();
  REQUIRE(requests.size() == 3);
  CHECK_THAT(requests[0], Catch::Matchers::StartsWith("POST /bkt/obj?uploads= HTTP/1.1"));
  CHECK_THAT(requests[1], Catch::Matchers::StartsWith("PUT /bkt/obj?partNumber=1&uploadId=U1 HTTP/1.1"));
  CHECK_THAT(requests[2], Catch::Matchers::StartsWith("DELETE /bkt/obj?uploadId=U1 HTTP/1.1"));
}

TEST_CASE("s3 client: no server listening is a network error after the retries", "[s3-client]") {
  int port = 0;
  {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    socklen_t len = sizeof addr;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
    ::close(fd);  // bound, never listening: connections are refused
  }
  auto config = scripted_config(fmt::format("http://127.0.0.1:{}", port));
  config.max_attempts = 3;
  s3::Client client(config);
  try {
    client.get("bkt", "k");
    FAIL("no exception");
  } catch (const ObjectStoreError& e) {
    CHECK(e.kind() == ObjectStoreError::Kind::network);
    CHECK(e.http_status() == 0);
    CHECK_THAT(e.what(), Catch::Matchers::StartsWith("savepoint: object store: GET s3://bkt/k: no response"));
    CHECK_THAT(e.what(), Catch::Contains("after 3 attempts"));
  }
  CHECK(client.counters().requests == 3);
}

TEST_CASE("s3 client: config_from_environment reads the AWS files of HOME and the environment", "[s3-client]") {
  test::TempDir home;
  EnvGuard env({"HOME", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SHARED_CREDENTIALS_FILE",
                "AWS_CONFIG_FILE", "SAVEPOINT_S3_ADDRESSING"});
  std::filesystem::create_directories(home / ".aws");
  test::write_text(home / ".aws" / "credentials",
                   "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = default-secret\n\n"
                   "# the work account\n[work]\naws_access_key_id=AKIDWORK\naws_secret_access_key = work-secret\n"
                   "aws_session_token = work-token\n");
  test::write_text(home / ".aws" / "config",
                   "[default]\nregion = eu-west-1\n\n[profile work]\nregion = eu-central-1\n"
                   "endpoint_url = http://127.0.0.1:9000/\n\n[profile nested]\nregion = ap-south-1\ns3 =\n"
                   "  endpoint_url = http://minio:9000\n  addressing_style = virtual\n");
  env.set("HOME", home.path().string());

  env.set("AWS_PROFILE", "work");
  auto c = s3::config_from_environment();
  CHECK(c.access_key == "AKIDWORK");
  CHECK(c.secret_key == "work-secret");
  CHECK(c.session_token == "work-token");
  CHECK(c.region == "eu-central-1");
  CHECK(c.endpoint == "http://127.0.0.1:9000");
  CHECK(c.path_style);

  env.unset("AWS_PROFILE");
  c = s3::config_from_environment();
  CHECK(c.access_key == "AKIDDEFAULT");
  CHECK(c.session_token.empty());
  CHECK(c.region == "eu-west-1");
  CHECK(c.endpoint.empty());
  CHECK_FALSE(c.path_style);  // AWS itself: virtual-hosted

  c = s3::config_from_environment("nested");  // no credentials of its own: unsigned
  CHECK(c.access_key.empty());
  CHECK(c.region == "ap-south-1");
  CHECK(c.endpoint == "http://minio:9000");
  CHECK_FALSE(c.path_style);

  env.set("AWS_ACCESS_KEY_ID", "AKIDENV");
  env.set("AWS_SECRET_ACCESS_KEY", "env-secret");
  env.set("AWS_REGION", "us-west-2");
  env.set("AWS_ENDPOINT_URL", "http://localhost:5000//");
  env.set("SAVEPOINT_S3_ADDRESSING", "virtual");
  c = s3::config_from_environment("work");
  CHECK(c.access_key == "AKIDENV");
  CHECK(c.secret_key == "env-secret");
  CHECK(c.session_token.empty());
  CHECK(c.region == "us-west-2");
  CHECK(c.endpoint == "http://localhost:5000");
  CHECK_FALSE(c.path_style);

  try {
    s3::config_from_environment("nowhere");
    FAIL("no exception");
  } catch (const savepoint::UsageError& e) {
    CHECK_THAT(e.what(), Catch::Contains("'nowhere'"));
    CHECK_THAT(e.what(), Catch::Contains((home / ".aws" / "credentials").string()));
    CHECK_THAT(e.what(), !Catch::Contains("secret"));
  }

  env.unset("AWS_ACCESS_KEY_ID");
  env.unset("AWS_SECRET_ACCESS_KEY");
  env.unset("AWS_REGION");
  env.unset("AWS_ENDPOINT_URL");
  env.unset("SAVEPOINT_S3_ADDRESSING");
  test::write_text(home / "creds", "[other]\naws_access_key_id = AKIDOTHER\naws_secret_access_key = other-secret\n");
  env.set("AWS_SHARED_CREDENTIALS_FILE", (home / "creds").string());
  env.set("AWS_CONFIG_FILE", (home / "none").string());
  c = s3::config_from_environment("other");
  CHECK(c.access_key == "AKIDOTHER");
  CHECK(c.region == "us-east-1");
}

// ------------------------------------------------------------------ against a server

TEST_CASE("s3 client: put, get, head, list with a delimiter, remove, server time", "[.s3]") {
  S3CLIENT_SERVER_OR_SKIP(s);
  s3::Client client(config_for(*s));
  const std::string p = unique_prefix();
  Cleanup cleanup{client, s->bucket, p};
  Observed observed;

  const std::string binary = pattern(3000, 1) + std::string(5, '\0');
  REQUIRE(client.put(s->bucket, p + "a.txt", "alpha"));
  REQUIRE(client.put(s->bucket, p + "dir/b.bin", binary));
  REQUIRE(client.put(s->bucket, p + "dir/sub/c", ""));
  REQUIRE(client.put(s->bucket, p + "sp ace+plus~(1).txt", "spaced"));
  CHECK(observed.count("PUT") == 4);

  CHECK(client.get(s->bucket, p + "a.txt") == std::optional<std::string>("alpha"));
  CHECK(client.get(s->bucket, p + "dir/b.bin") == std::optional<std::string>(binary));
  CHECK(client.get(s->bucket, p + "dir/sub/c") == std::optional<std::string>(""));
  CHECK(client.get(s->bucket, p + "sp ace+plus~(1).txt") == std::optional<std::string>("spaced"));
  CHECK_FALSE(client.get(s->bucket, p + "absent"));

  const auto info = client.head(s->bucket, p + "dir/b.bin");
  REQUIRE(info);
  CHECK(info->key == p + "dir/b.bin");
  CHECK(info->size == binary.size());
  CHECK_FALSE(info->etag.empty());
  const auto now = static_cast<std::int64_t>(std::time(nullptr));
  CHECK(std::abs(info->last_modified_unix - now) < 600);
  CHECK_FALSE(client.head(s->bucket, p + "absent"));

  const auto all = client.list(s->bucket, p);
  REQUIRE(all.objects.size() == 4);
  CHECK(all.prefixes.empty());
  std::map<std::string, std::uint64_t> sizes;
  for (const auto& o : all.objects) {
    sizes[o.key] = o.size;
    CHECK(std::abs(o.last_modified_unix - now) < 600);
    CHECK_FALSE(o.etag.empty());
  }
  CHECK(sizes[p + "a.txt"] == 5);
  CHECK(sizes[p + "dir/b.bin"] == binary.size());
  CHECK(sizes[p + "dir/sub/c"] == 0);

  const auto top = client.list(s->bucket, p, "/");
  REQUIRE(top.objects.size() == 2);
  CHECK(top.objects[0].key == p + "a.txt");
  CHECK(top.objects[1].key == p + "sp ace+plus~(1).txt");
  CHECK(top.prefixes == std::vector<std::string>{p + "dir/"});
  const auto dir = client.list(s->bucket, p + "dir/", "/");
  REQUIRE(dir.objects.size() == 1);
  CHECK(dir.prefixes == std::vector<std::string>{p + "dir/sub/"});

  client.remove(s->bucket, p + "a.txt");
  CHECK_FALSE(client.get(s->bucket, p + "a.txt"));
  client.remove(s->bucket, p + "a.txt");  // absent: not an error

  CHECK(std::abs(client.server_time(s->bucket) - now) < 600);
  const auto counters = client.counters();
  CHECK(counters.requests >= 15);
  CHECK(counters.bytes_sent >= 5 + binary.size() + 6);
  CHECK(counters.bytes_received >= 5 + binary.size() + 6);
}

TEST_CASE("s3 client: a conditional put creates once, then returns false", "[.s3]") {
  S3CLIENT_SERVER_OR_SKIP(s);
  s3::Client client(config_for(*s));
  const std::string p = unique_prefix();
  Cleanup cleanup{client, s->bucket, p};
  CHECK(client.put(s->bucket, p + "marker", "first", true));
  CHECK_FALSE(client.put(s->bucket, p + "marker", "second", true));
  CHECK(client.get(s->bucket, p + "marker") == std::optional<std::string>("first"));
  CHECK(client.put(s->bucket, p + "marker", "third"));  // unconditional: replaces
  CHECK(client.get(s->bucket, p + "marker") == std::optional<std::string>("third"));

  // "." and ".." segments are part of a key: sent as they are, never resolved.
  CHECK(client.put(s->bucket, p + "d/./e/../f", "dots", true));
  CHECK_FALSE(client.put(s->bucket, p + "d/./e/../f", "again", true));
  CHECK(client.get(s->bucket, p + "d/./e/../f") == std::optional<std::string>("dots"));
  CHECK_FALSE(client.get(s->bucket, p + "d/f"));
  const auto listing = client.list(s->bucket, p + "d/");
  REQUIRE(listing.objects.size() == 1);
  CHECK(listing.objects[0].key == p + "d/./e/../f");
}

TEST_CASE("s3 client: a ranged get streams its range, less at the end, none past it", "[.s3]") {
  S3CLIENT_SERVER_OR_SKIP(s);
  s3::Client client(config_for(*s));
  const std::string p = unique_prefix();
  Cleanup cleanup{client, s->bucket, p};
  const std::string data = pattern(1000, 7);
  REQUIRE(client.put(s->bucket, p + "obj", data));
  std::string got;
  auto sink = [&](const char* d, std::size_t n) { got.append(d, n); };
  CHECK(client.get_range(s->bucket, p + "obj", 100, 50, sink) == 50);
  CHECK(got == data.substr(100, 50));
  got.clear();
  CHECK(client.get_range(s->bucket, p + "obj", 990, 50, sink) == 10);
  CHECK(got == data.substr(990));
  got.clear();
  CHECK(client.get_range(s->bucket, p + "obj", 2000, 10, sink) == 0);
  CHECK(got.empty());
  try {
    client.get_range(s->bucket, p + "absent", 0, 10, sink);
    FAIL("no exception");
  } catch (const ObjectStoreError& e) {
    CHECK(e.kind() == ObjectStoreError::Kind::not_found);
    CHECK(e.http_status() == 404);
  }
}

TEST_CASE("s3 client: ObjectWriter uploads parts in parallel, small objects in one PUT", "[.s3]") {
  S3CLIENT_SERVER_OR_SKIP(s);
  s3::Client client(config_for(*s));
  const std::string p = unique_prefix();
  Cleanup cleanup{client, s->bucket, p};
  const std::string data = pattern(12 << 20, 3);
  {
    Observed observed;
    s3::ObjectWriter writer(client, s->bucket, p + "big", 5 << 20, 2);
    for (std::size_t off = 0; off < data.size(); off += 777777)
      writer.write(data.data() + off, std::min<std::size_t>(777777, data.size() - off));
    CHECK(writer.finish() == data.size());
    CHECK(observed.count("POST") == 2);  // create, complete
    CHECK(observed.count("PUT") == 3);   // 5 + 5 + 2 MiB
  }
  CHECK(client.get(s->bucket, p + "big") == std::optional<std::string>(data));
  {
    Observed observed;
    s3::ObjectWriter writer(client, s->bucket, p + "small", 1, 4);  // part size clamped to 5 MiB
    writer.write("tiny", 4);
    CHECK(writer.finish() == 4);
    CHECK(observed.count("PUT") == 1);
    CHECK(observed.count("POST") == 0);
  }
  CHECK(client.get(s->bucket, p + "small") == std::optional<std::string>("tiny"));
  {
    s3::ObjectWriter writer(client, s->bucket, p + "clamped", 1, 2);
    writer.write(data.data(), 6 << 20);  // 5 MiB + 1 MiB: S3 refuses smaller parts but the last
    CHECK(writer.finish() == 6u << 20);
  }
  CHECK(client.get(s->bucket, p + "clamped") == std::optional<std::string>(data.substr(0, 6 << 20)));
  {
    Observed observed;
    s3::ObjectWriter writer(client, s->bucket, p + "abandoned", 5 << 20, 2);
    writer.write(data.data(), 11 << 20);
  }  // never finished: aborted
  CHECK_FALSE(client.get(s->bucket, p + "abandoned"));
}

TEST_CASE("s3 client: server-side copies, whole and by UploadPartCopy", "[.s3]") {
  S3CLIENT_SERVER_OR_SKIP(s);
  s3::Client client(config_for(*s));
  const std::string p = unique_prefix();
  Cleanup cleanup{client, s->bucket, p};
  const std::string data = pattern(6 << 20, 11);
  REQUIRE(client.put(s->bucket, p + "src file", data));
  client.copy(s->bucket, p + "src file", p + "copy");
  CHECK(client.get(s->bucket, p + "copy") == std::optional<std::string>(data));

  const std::string id = client.create_multipart(s->bucket, p + "assembled");
  std::vector<s3::Part> parts;
  parts.push_back({1, client.upload_part_copy(s->bucket, p + "assembled", id, 1, p + "src file", 0, (5 << 20) - 1)});
  parts.push_back({2, client.upload_part(s->bucket, p + "assembled", id, 2, "tail")});
  client.complete_multipart(s->bucket, p + "assembled", id, parts);
  CHECK(client.get(s->bucket, p + "assembled") == std::optional<std::string>(data.substr(0, 5 << 20) + "tail"));

  const std::string dropped = client.create_multipart(s->bucket, p + "dropped");
  client.abort_multipart(s->bucket, p + "dropped", dropped);
  CHECK_FALSE(client.get(s->bucket, p + "dropped"));

  try {
    client.copy(s->bucket, p + "absent", p + "copy2");
    FAIL("no exception");
  } catch (const ObjectStoreError& e) {
    CHECK(e.kind() == ObjectStoreError::Kind::not_found);
  }
}

// Slow against moto (about 20 s for the 1003 PUTs): run by name or with "[s3-slow]".
TEST_CASE("s3 client: a listing of more than 1000 keys comes in pages", "[.s3-slow]") {
  S3CLIENT_SERVER_OR_SKIP(s);
  s3::Client client(config_for(*s));
  const std::string p = unique_prefix();
  Cleanup cleanup{client, s->bucket, p};
  constexpr int n = 1003;
  std::vector<std::thread> threads;
  std::atomic<int> next{0};
  std::atomic<int> failed{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i; (i = next++) < n;) {
        try {
          client.put(s->bucket, fmt::format("{}k{:05}", p, i), "x");
        } catch (...) {
          ++failed;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  REQUIRE(failed == 0);
  Observed observed;
  const auto listing = client.list(s->bucket, p);
  CHECK(observed.count("GET") == 2);
  REQUIRE(listing.objects.size() == static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) CHECK(listing.objects[static_cast<std::size_t>(i)].key == fmt::format("{}k{:05}", p, i));
}

TEST_CASE("s3 client: a wrong secret is a credentials error that never shows the secret", "[.s3]") {
  S3CLIENT_SERVER_OR_SKIP(s);
  auto config = config_for(*s);
  if (config.access_key.empty()) config.access_key = "AKIDTESTING";
  config.secret_key = "wrong-secret-Zq8pX1";
  config.session_token = "";
  s3::Client client(config);
  const std::string key = unique_prefix() + "never";
  try {
    if (client.put(s->bucket, key, "data")) {
      s3::Client(config_for(*s)).remove(s->bucket, key);
      WARN("the server does not check signatures (moto without INITIAL_NO_AUTH_ACTION_COUNT): nothing to check");
      return;
    }
    FAIL("a conditional-free put returned false");
  } catch (const ObjectStoreError& e) {
    CHECK(e.kind() == ObjectStoreError::Kind::credentials);
    CHECK(e.http_status() == 403);
    CHECK((e.code() == "SignatureDoesNotMatch" || e.code() == "InvalidAccessKeyId"));
    CHECK_THAT(e.what(), Catch::Contains("PUT s3://" + s->bucket + "/" + key + ": HTTP 403 " + e.code()));
    CHECK_THAT(e.what(), Catch::Contains("after 1 attempt;"));
    CHECK_THAT(e.what(), Catch::Contains("endpoint " + s->endpoint));
    CHECK_THAT(e.what(), !Catch::Contains("wrong-secret-Zq8pX1"));
    if (e.code() == "SignatureDoesNotMatch") CHECK_THAT(e.what(), Catch::Contains("AWS_SECRET_ACCESS_KEY"));
  }
}

TEST_CASE("s3 client: a missing bucket is a no_bucket error from every request", "[.s3]") {
  S3CLIENT_SERVER_OR_SKIP(s);
  s3::Client client(config_for(*s));
  std::random_device rd;
  const std::string bucket = fmt::format("savepoint-absent-{:08x}", rd());
  auto expect_no_bucket = [&](auto&& request, const std::string& method) {
    try {
      request();
      FAIL("no exception from " << method);
    } catch (const ObjectStoreError& e) {
      CHECK(e.kind() == ObjectStoreError::Kind::no_bucket);
      CHECK(e.http_status() == 404);
      CHECK(e.code() == "NoSuchBucket");
      CHECK_THAT(e.what(), Catch::Contains(method + " s3://" + bucket));
      CHECK_THAT(e.what(), Catch::Contains("bucket '" + bucket + "' does not exist"));
    }
  };
  expect_no_bucket([&] { client.put(bucket, "k", "v"); }, "PUT");
  expect_no_bucket([&] { client.get(bucket, "k"); }, "GET");
  expect_no_bucket([&] { client.head(bucket, "k"); }, "HEAD");
  expect_no_bucket([&] { client.list(bucket, "p/"); }, "GET");
}

TEST_CASE("s3 client: a write the credentials may not make is a denied error", "[.s3]") {
  S3CLIENT_SERVER_OR_SKIP(s);
  const char* key_id = std::getenv("SAVEPOINT_TEST_S3_READONLY_ACCESS_KEY_ID");
  const char* secret = std::getenv("SAVEPOINT_TEST_S3_READONLY_SECRET_ACCESS_KEY");
  if (!key_id || !secret) {
    WARN("no read-only credentials (SAVEPOINT_TEST_S3_READONLY_ACCESS_KEY_ID, ..._SECRET_ACCESS_KEY): not checked");
    return;
  }
  auto config = config_for(*s);
  config.access_key = key_id;
  config.secret_key = secret;
  s3::Client client(config);
  try {
    client.put(s->bucket, unique_prefix() + "denied", "v");
    FAIL("no exception");
  } catch (const ObjectStoreError& e) {
    CHECK(e.kind() == ObjectStoreError::Kind::denied);
    CHECK(e.http_status() == 403);
    CHECK(e.code() == "AccessDenied");
    CHECK_THAT(e.what(), Catch::Contains("may not write"));
    CHECK_THAT(e.what(), !Catch::Contains(secret));
  }
}
