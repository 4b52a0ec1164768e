// io/s3_client.cpp — S3's REST API over libcurl: SigV4 by CURLOPT_AWS_SIGV4, XML by tinyxml2.
//
// What libcurl signs and how (checked against curl 7.88 and 8.x, and against moto):
//   - the path as sent (for service "s3" curl never re-encodes it), so keys are encoded here
//     once, by SigV4's rules;
//   - the query as sent (7.88) or decoded, re-encoded and sorted (8.x): query_string() sends it
//     already sorted and encoded, with "name=" for an empty value, so both sign the same;
//   - every header set with CURLOPT_HTTPHEADER, the removal form "Name:" included before 8.3
//     (the server then sees a signed header that never came): so before 8.3 no removal
//     headers while signing (Expect: 100-continue is cut short by its timeout instead);
//   - the payload hash from x-amz-content-sha256 when set: always UNSIGNED-PAYLOAD here (S3
//     requires the header; 7.88 would otherwise hash only POST fields);
//   - the signed headers sorted by their whole line before 8.10, which puts
//     x-amz-copy-source-range before x-amz-copy-source: such requests (UploadPartCopy) are
//     signed here instead (own_signature), with the same canonical form;
//   - from 8.14 on, SigV4 together with CURLOPT_PATH_AS_IS is refused, and without it curl
//     removes "." and ".." segments from the path: keys holding such segments are signed here
//     too, and sent as they are.
#include "s3_client.hpp"

#include <savepoint/log.hpp>

#include <curl/curl.h>
#include <fmt/format.h>
#include <tinyxml2.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <exception>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <utility>

namespace savepoint::detail::s3 {
namespace {

using Clock = std::chrono::steady_clock;
using Kind = ObjectStoreError::Kind;

constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;
constexpr std::uint64_t kGiB = std::uint64_t{1} << 30;
constexpr std::uint64_t kMaxSingleCopy = 5 * kGiB;  // CopyObject's limit
constexpr std::uint64_t kCopyPartSize = kGiB;       // UploadPartCopy parts above it
constexpr std::size_t kMinPartSize = 5 * kMiB;      // S3: every part but the last
constexpr std::size_t kMaxPartSize = 5 * kGiB;
constexpr int kMaxParts = 10000;
constexpr std::size_t kMaxErrorBody = 64 * 1024;

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// ------------------------------------------------------------------ text helpers

bool unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
         c == '.' || c == '~';
}

/// SigV4's URI encoding: everything but A-Za-z0-9-_.~ as %XX (upper case); '/' kept in paths.
std::string uri_encode(std::string_view text, bool keep_slash) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size() + text.size() / 2);
  for (unsigned char c : text) {
    if (unreserved(c) || (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

using Query = std::vector<std::pair<std::string, std::string>>;

/// The query exactly as SigV4 canonicalizes it: names and values encoded, sorted by name then
/// value, "name=" for an empty value.
std::string query_string(const Query& query) {
  std::vector<std::pair<std::string, std::string>> encoded;
  encoded.reserve(query.size());
  for (const auto& [name, value] : query) encoded.emplace_back(uri_encode(name, false), uri_encode(value, false));
  std::sort(encoded.begin(), encoded.end());
  std::string out;
  for (const auto& [name, value] : encoded) {
    if (!out.empty()) out += '&';
    out += name;
    out += '=';
    out += value;
  }
  return out;
}

std::string lower(std::string_view text) {
  std::string out(text);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

std::string_view trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t' || text.front() == '\r' || text.front() == '\n'))
    text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r' || text.back() == '\n'))
    text.remove_suffix(1);
  return text;
}

std::string xml_escape(std::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default: out += c;
    }
  }
  return out;
}

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

/// "2026-12-07T13:54:13.000Z" (S3's LastModified) -> seconds since the epoch; 0 when unparsable.
std::int64_t parse_iso8601(std::string_view text) {
  const std::string s(trim(text));
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, sec = 0, used = 0;
  if (std::sscanf(s.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &used) < 6) return 0;
  if (mo < 1 || mo > 12 || d < 1 || d > 31) return 0;
  std::int64_t t = days_from_civil(y, static_cast<unsigned>(mo), static_cast<unsigned>(d)) * 86400 + h * 3600 +
                   mi * 60 + sec;
  std::size_t i = static_cast<std::size_t>(used);
  while (i < s.size() && (s[i] == '.' || (s[i] >= '0' && s[i] <= '9'))) ++i;  // fraction
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) {
    int oh = 0, om = 0;
    if (std::sscanf(s.c_str() + i + 1, "%2d:%2d", &oh, &om) >= 1) {
      const std::int64_t offset = oh * 3600 + om * 60;
      t += s[i] == '+' ? -offset : offset;
    }
  }
  return t;
}

/// "Mon, 07 Dec 2026 13:54:10 GMT" (HTTP dates) -> seconds since the epoch; -1 when unparsable.
std::int64_t parse_http_date(const std::string& text) {
  return static_cast<std::int64_t>(curl_getdate(text.c_str(), nullptr));
}

const char* element_text(const tinyxml2::XMLElement* parent, const char* name) {
  const tinyxml2::XMLElement* e = parent ? parent->FirstChildElement(name) : nullptr;
  const char* text = e ? e->GetText() : nullptr;
  return text ? text : "";
}

// ------------------------------------------------------------------ SigV4 of our own
// Only where curl's signature would be wrong: curl before 8.10 sorts the signed headers by
// their whole "name:value" line, so "x-amz-copy-source-range" lands before
// "x-amz-copy-source" (curl commit cf3e3d93d1) and UploadPartCopy's signature never matches.

class Sha256 {
 public:
  Sha256() { reset(); }
  void update(std::string_view data) {
    for (unsigned char c : data) {
      block_[used_++] = c;
      if (used_ == 64) {
        compress();
        used_ = 0;
      }
    }
    length_ += data.size();
  }
  std::array<unsigned char, 32> digest() {
    const std::uint64_t bits = length_ * 8;
    const unsigned char pad = 0x80;
    update(std::string_view(reinterpret_cast<const char*>(&pad), 1));
    const unsigned char zero = 0;
    while (used_ != 56) update(std::string_view(reinterpret_cast<const char*>(&zero), 1));
    for (int i = 7; i >= 0; --i) block_[used_++] = static_cast<unsigned char>(bits >> (8 * i));
    compress();
    std::array<unsigned char, 32> out{};
    for (int i = 0; i < 8; ++i)
      for (int j = 0; j < 4; ++j) out[static_cast<std::size_t>(4 * i + j)] = static_cast<unsigned char>(h_[i] >> (24 - 8 * j));
    reset();
    return out;
  }

 private:
  static std::uint32_t rotr(std::uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
  void reset() {
    static constexpr std::uint32_t init[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                              0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    std::copy(std::begin(init), std::end(init), h_);
    used_ = 0;
    length_ = 0;
  }
  void compress() {
    static constexpr std::uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    std::uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = (std::uint32_t{block_[4 * i]} << 24) | (std::uint32_t{block_[4 * i + 1]} << 16) |
             (std::uint32_t{block_[4 * i + 2]} << 8) | std::uint32_t{block_[4 * i + 3]};
    for (int i = 16; i < 64; ++i) {
      const std::uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const std::uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    std::uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (int i = 0; i < 64; ++i) {
      const std::uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      const std::uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    h_[0] += a;
    h_[1] += b;
    h_[2] += c;
    h_[3] += d;
    h_[4] += e;
    h_[5] += f;
    h_[6] += g;
    h_[7] += h;
  }

  std::uint32_t h_[8];
  unsigned char block_[64];
  std::size_t used_;
  std::uint64_t length_;
};

std::string as_text(const std::array<unsigned char, 32>& bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

std::string hex(std::string_view bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

std::string sha256(std::string_view data) {
  Sha256 h;
  h.update(data);
  return as_text(h.digest());
}

std::string hmac_sha256(std::string_view key, std::string_view data) {
  std::string k = key.size() > 64 ? sha256(key) : std::string(key);
  k.resize(64, '\0');
  std::string inner(64, '\0'), outer(64, '\0');
  for (std::size_t i = 0; i < 64; ++i) {
    inner[i] = static_cast<char>(k[i] ^ 0x36);
    outer[i] = static_cast<char>(k[i] ^ 0x5c);
  }
  Sha256 h;
  h.update(inner);
  h.update(data);
  const std::string inner_hash = as_text(h.digest());
  h.update(outer);
  h.update(inner_hash);
  return as_text(h.digest());
}

/// True when a key has a "." or ".." segment, which curl's URL parser would remove.
bool has_dot_segment(std::string_view key) {
  for (std::size_t start = 0;;) {
    const auto slash = key.find('/', start);
    const std::string_view segment = key.substr(start, slash == std::string_view::npos ? slash : slash - start);
    if (segment == "." || segment == "..") return true;
    if (slash == std::string_view::npos) return false;
    start = slash + 1;
  }
}

/// True when curl (before 8.10) would sort these signed header names wrongly: one name is a
/// prefix of another that goes on with a character below ':'.
bool curl_misorders(const std::vector<std::string>& names) {
  for (const auto& a : names)
    for (const auto& b : names)
      if (b.size() > a.size() && b.compare(0, a.size(), a) == 0 && b[a.size()] < ':') return true;
  return false;
}

// ------------------------------------------------------------------ the request observer

std::mutex g_observer_mutex;
std::shared_ptr<const RequestObserver> g_observer;

std::shared_ptr<const RequestObserver> current_observer() {
  std::lock_guard<std::mutex> lock(g_observer_mutex);
  return g_observer;
}

// ------------------------------------------------------------------ one request

using Sink = std::function<void(long status, const char* data, std::size_t size)>;

struct Request {
  const char* method = "GET";
  std::string bucket, key;
  std::string region;  ///< for messages
  Query query;
  std::vector<std::string> headers;  ///< "Name: value"
  std::string_view body;
  bool send_body = false;     ///< PUT and POST: `body` (maybe empty) with its Content-Length
  bool error_in_200 = false;  ///< CopyObject, UploadPartCopy, CompleteMultipartUpload
  const Sink* sink = nullptr;  ///< 2xx bodies stream here instead of into Response::body
  const std::function<void()>* restart = nullptr;  ///< called before each retry
};

struct Response {
  long status = 0;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  ///< names in lower case
  std::string code, message;                                 ///< S3's <Error>
  int attempts = 0;
  CURLcode curl = CURLE_OK;
  std::string curl_error;

  const std::string* header(std::string_view name) const {
    for (const auto& [n, v] : headers)
      if (n == name) return &v;
    return nullptr;
  }
  bool ok() const { return curl == CURLE_OK && status >= 200 && status < 300 && code.empty(); }
};

// The state libcurl's callbacks see during one attempt. No exception leaves a callback: an
// exception of the sink is kept here and rethrown once curl_easy_perform returned.
struct Transfer {
  std::string_view body;
  std::size_t offset = 0;  // next byte of `body` to send
  std::uint64_t sent = 0, received = 0;
  Response* response = nullptr;
  const Sink* sink = nullptr;
  long status = 0;  // of the last status line seen
  std::exception_ptr error;
};

extern "C" size_t s3_read_cb(char* buffer, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const std::size_t n = std::min(size * count, t->body.size() - t->offset);
  if (n) std::memcpy(buffer, t->body.data() + t->offset, n);
  t->offset += n;
  t->sent += n;
  return n;
}

extern "C" int s3_seek_cb(void* user, curl_off_t offset, int origin) {
  auto* t = static_cast<Transfer*>(user);
  if (origin != SEEK_SET || offset < 0 || static_cast<std::uint64_t>(offset) > t->body.size())
    return CURL_SEEKFUNC_CANTSEEK;
  t->offset = static_cast<std::size_t>(offset);
  return CURL_SEEKFUNC_OK;
}

extern "C" size_t s3_header_cb(char* buffer, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const std::size_t n = size * count;
  try {
    const std::string_view line = trim(std::string_view(buffer, n));
    if (line.substr(0, 5) == "HTTP/") {  // a new response (after a 100 Continue, say)
      const auto space = line.find(' ');
      t->status = space == std::string_view::npos ? 0 : std::strtol(std::string(line.substr(space + 1)).c_str(), nullptr, 10);
      t->response->headers.clear();
    } else if (const auto colon = line.find(':'); colon != std::string_view::npos) {
      t->response->headers.emplace_back(lower(trim(line.substr(0, colon))), std::string(trim(line.substr(colon + 1))));
    }
  } catch (...) {
    t->error = std::current_exception();
    return 0;
  }
  return n;
}

extern "C" size_t s3_write_cb(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const std::size_t n = size * count;
  t->received += n;
  try {
    if (t->sink && t->status >= 200 && t->status < 300) {
      (*t->sink)(t->status, data, n);
    } else if (!t->sink || t->response->body.size() < kMaxErrorBody) {
      t->response->body.append(data, n);
    }
  } catch (...) {
    t->error = std::current_exception();
    return 0;  // != n: curl ends the transfer with CURLE_WRITE_ERROR
  }
  return n;
}

void parse_error_body(Response& r) {
  if (r.body.empty()) return;
  tinyxml2::XMLDocument doc;
  if (doc.Parse(r.body.data(), r.body.size()) != tinyxml2::XML_SUCCESS) return;
  const tinyxml2::XMLElement* root = doc.RootElement();
  if (!root || std::strcmp(root->Name(), "Error") != 0) return;
  r.code = element_text(root, "Code");
  r.message = element_text(root, "Message");
  if (r.code.empty()) r.code = "Error";  // an <Error> without a code is still an error
}

bool retryable_curl(CURLcode code) {
  switch (code) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_PARTIAL_FILE:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
      return true;
    default:
      return false;
  }
}

bool retryable_code(const std::string& code) {
  return code == "SlowDown" || code == "InternalError" || code == "RequestTimeout" || code == "ServiceUnavailable";
}

bool retryable(const Response& r) {
  if (r.curl != CURLE_OK) return retryable_curl(r.curl);
  if (r.status == 500 || r.status == 502 || r.status == 503 || r.status == 504 || r.status == 429) return true;
  return retryable_code(r.code);
}

bool is_credentials_code(const std::string& code) {
  return code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch" || code == "ExpiredToken" ||
         code == "InvalidToken" || code == "TokenRefreshRequired" || code == "InvalidSecurity";
}

Kind kind_of(const Response& r) {
  if (r.curl != CURLE_OK) return Kind::network;
  if (is_credentials_code(r.code)) return Kind::credentials;
  if (r.code == "NoSuchBucket") return Kind::no_bucket;
  if (r.code == "AccessDenied" || r.code == "AllAccessDisabled") return Kind::denied;
  if (r.code == "NoSuchKey" || r.code == "NoSuchUpload") return Kind::not_found;
  if (r.code == "PreconditionFailed" || r.status == 412) return Kind::precondition;
  if (r.status >= 500 || retryable_code(r.code)) return Kind::server;
  if (r.code.empty() && r.status == 404) return Kind::not_found;
  if (r.code.empty() && r.status == 403) return Kind::denied;
  return Kind::other;
}

bool writes(const char* method) { return std::strcmp(method, "GET") != 0 && std::strcmp(method, "HEAD") != 0; }

/// Why, in words, for the codes a user can act on; S3's own message otherwise.
std::string explain(const Request& request, const Response& r) {
  const std::string& c = r.code;
  if (c == "InvalidAccessKeyId")
    return "the server does not know this access key id: check AWS_ACCESS_KEY_ID or the profile's aws_access_key_id";
  if (c == "SignatureDoesNotMatch")
    return "the request's signature does not match: check AWS_SECRET_ACCESS_KEY or the profile's "
           "aws_secret_access_key";
  if (c == "ExpiredToken" || c == "TokenRefreshRequired") return "the session token has expired: renew AWS_SESSION_TOKEN";
  if (c == "InvalidToken") return "the session token is not valid: check AWS_SESSION_TOKEN";
  if (c == "NoSuchBucket")
    return fmt::format("bucket '{}' does not exist: create it, or check the bucket name and the endpoint", request.bucket);
  if (c == "AccessDenied") {
    if (std::strcmp(request.method, "DELETE") == 0) return "access denied: these credentials may not delete here";
    if (writes(request.method)) return "access denied: these credentials may not write here";
    if (request.key.empty()) return "access denied: these credentials may not list this bucket";
    return "access denied: these credentials may not read here";
  }
  if (c == "AllAccessDisabled") return "all access to this bucket has been disabled";
  if (c == "NoSuchKey") return "no such object";
  if (c == "NoSuchUpload") return "no such multipart upload (aborted, or completed already)";
  if (c == "PreconditionFailed" || r.status == 412) return "a precondition failed: the object exists already";
  if (c == "AuthorizationHeaderMalformed" || c == "PermanentRedirect" || r.status == 301)
    return fmt::format("the bucket is not where region '{}' sends requests: set AWS_REGION to the bucket's region{}{}",
                       request.region, r.message.empty() ? "" : "; ", r.message);
  if (c == "SlowDown") return "the server asks to slow down";
  if (!r.message.empty()) return r.message;
  if (c.empty() && r.status == 403) return "access denied or wrong credentials";
  if (r.status >= 500) return "the server failed";
  return {};
}

std::string without_userinfo(const std::string& url) {
  const auto scheme = url.find("://");
  const std::size_t host = scheme == std::string::npos ? 0 : scheme + 3;
  const auto at = url.find('@', host);
  const auto slash = url.find('/', host);
  if (at == std::string::npos || (slash != std::string::npos && at > slash)) return url;
  return url.substr(0, host) + url.substr(at + 1);
}

std::uint64_t header_u64(const Response& r, std::string_view name) {
  const std::string* v = r.header(name);
  return v ? std::strtoull(v->c_str(), nullptr, 10) : 0;
}

// The jitter's generator, one per thread.
std::mt19937_64& random_engine() {
  thread_local std::mt19937_64 engine{std::random_device{}() ^
                                      std::hash<std::thread::id>{}(std::this_thread::get_id())};
  return engine;
}

}  // namespace

// ------------------------------------------------------------------ the client

struct Client::Impl {
  const Config& config;
  std::string endpoint_text;  // for messages: never credentials
  bool signed_requests;
  bool removal_headers_unsigned;  // curl >= 8.3: "Name:" headers are left out of the signature
  bool sorts_header_names;        // curl >= 8.10: signed headers sorted by name, not by line
  std::string sigv4;              // "aws:amz:<region>:s3"

  CURLSH* share = nullptr;
  std::array<std::mutex, CURL_LOCK_DATA_LAST> share_locks;
  std::mutex pool_mutex;
  std::vector<CURL*> idle;
  // Buckets that answered a request: a 404 to a HEAD there means no such key, without the
  // one-byte GET that tells it from no such bucket.
  std::mutex buckets_mutex;
  std::set<std::string> known_buckets;
  bool bucket_known(const std::string& bucket) {
    std::lock_guard<std::mutex> lock(buckets_mutex);
    return known_buckets.count(bucket) != 0;
  }

  std::atomic<std::uint64_t> requests{0}, retries{0}, bytes_sent{0}, bytes_received{0};

  explicit Impl(const Config& c) : config(c) {
    global_init();
    endpoint_text = config.endpoint.empty() ? fmt::format("https://s3.{}.amazonaws.com", config.region)
                                            : without_userinfo(config.endpoint);
    signed_requests = !config.access_key.empty();
    const unsigned version = curl_version_info(CURLVERSION_NOW)->version_num;
    removal_headers_unsigned = version >= 0x080300;
    sorts_header_names = version >= 0x080a00;
    sigv4 = fmt::format("aws:amz:{}:s3", config.region.empty() ? std::string("us-east-1") : config.region);
    share = curl_share_init();
    if (!share) throw std::bad_alloc();
    curl_share_setopt(share, CURLSHOPT_LOCKFUNC, &Impl::lock_share);
    curl_share_setopt(share, CURLSHOPT_UNLOCKFUNC, &Impl::unlock_share);
    curl_share_setopt(share, CURLSHOPT_USERDATA, this);
    curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
  }
  ~Impl() {
    for (CURL* h : idle) curl_easy_cleanup(h);
    if (share) curl_share_cleanup(share);
  }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  static void lock_share(CURL*, curl_lock_data data, curl_lock_access, void* user) {
    static_cast<Impl*>(user)->share_locks[static_cast<std::size_t>(data) % CURL_LOCK_DATA_LAST].lock();
  }
  static void unlock_share(CURL*, curl_lock_data data, void* user) {
    static_cast<Impl*>(user)->share_locks[static_cast<std::size_t>(data) % CURL_LOCK_DATA_LAST].unlock();
  }

  // A handle from the pool (its live connection with it), back when the lease ends.
  struct Lease {
    Impl& impl;
    CURL* handle;
    explicit Lease(Impl& i) : impl(i), handle(nullptr) {
      {
        std::lock_guard<std::mutex> lock(impl.pool_mutex);
        if (!impl.idle.empty()) {
          handle = impl.idle.back();
          impl.idle.pop_back();
        }
      }
      if (!handle) handle = curl_easy_init();
      if (!handle) throw std::bad_alloc();
    }
    ~Lease() {
      std::lock_guard<std::mutex> lock(impl.pool_mutex);
      try {
        impl.idle.push_back(handle);
      } catch (...) {
        curl_easy_cleanup(handle);
      }
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
  };

  std::string url(const std::string& bucket, const std::string& key, const Query& query) const {
    std::string scheme = "https", host, prefix;
    if (config.endpoint.empty()) {
      host = fmt::format("s3.{}.amazonaws.com", config.region);
    } else {
      const auto sep = config.endpoint.find("://");
      std::string rest = config.endpoint;
      if (sep != std::string::npos) {
        scheme = config.endpoint.substr(0, sep);
        rest = config.endpoint.substr(sep + 3);
      }
      const auto slash = rest.find('/');
      host = rest.substr(0, slash);
      if (slash != std::string::npos) prefix = rest.substr(slash);
      while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
    }
    // A bucket with dots would not match the certificate of *.s3.amazonaws.com: path style.
    const bool virtual_host =
        !config.path_style && !bucket.empty() && (scheme != "https" || bucket.find('.') == std::string::npos);
    std::string out = scheme + "://";
    if (virtual_host) {
      const auto at = host.find('@');  // userinfo stays in front of the bucket's name
      if (at != std::string::npos)
        out += host.substr(0, at + 1) + bucket + "." + host.substr(at + 1);
      else
        out += bucket + "." + host;
      out += prefix + "/" + uri_encode(key, true);
    } else {
      out += host + prefix + "/" + uri_encode(bucket, false);
      if (!key.empty()) out += "/" + uri_encode(key, true);
    }
    if (!query.empty()) out += "?" + query_string(query);
    return out;
  }

  /// One attempt's options on a reset handle; `list` gets the headers (freed by the caller).
  void prepare(CURL* h, const Request& r, Transfer& t, const std::string& target, curl_slist*& list,
               char* error_buffer, long timeout_ms) {
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, target.c_str());
    curl_easy_setopt(h, CURLOPT_SHARE, share);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, error_buffer);
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_1_1));
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "savepoint");
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(config.connect_timeout.count()));
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_BUFFERSIZE, 256L * 1024L);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, &s3_header_cb);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &t);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &s3_write_cb);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &t);

    auto add = [&list](const std::string& header) {
      curl_slist* next = curl_slist_append(list, header.c_str());
      if (!next) throw std::bad_alloc();
      list = next;
    };
    for (const auto& header : r.headers) add(header);
    // Where curl would sign wrongly, or would remove the "." and ".." segments of a key (it
    // refuses CURLOPT_PATH_AS_IS with SigV4 from 8.14 on), the signature is made here.
    const bool own = signed_requests && ((!sorts_header_names && curl_misorders(header_names(r))) ||
                                         has_dot_segment(r.key));
    if (signed_requests) {
      add("x-amz-content-sha256: UNSIGNED-PAYLOAD");
      if (!config.session_token.empty()) add("x-amz-security-token: " + config.session_token);
      if (own) {
        for (const auto& header : own_signature(r, target)) add(header);
      } else {
        curl_easy_setopt(h, CURLOPT_AWS_SIGV4, sigv4.c_str());
        curl_easy_setopt(h, CURLOPT_USERNAME, config.access_key.c_str());
        curl_easy_setopt(h, CURLOPT_PASSWORD, config.secret_key.c_str());
      }
    }
    if (!signed_requests || own) curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);

    const std::string_view method = r.method;
    if (method == "HEAD") {
      curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (method == "PUT") {
      curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(h, CURLOPT_READFUNCTION, &s3_read_cb);
      curl_easy_setopt(h, CURLOPT_READDATA, &t);
      curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, &s3_seek_cb);
      curl_easy_setopt(h, CURLOPT_SEEKDATA, &t);
      curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(r.body.size()));
      curl_easy_setopt(h, CURLOPT_UPLOAD_BUFFERSIZE, 512L * 1024L);
    } else if (method == "POST") {
      curl_easy_setopt(h, CURLOPT_POST, 1L);
      curl_easy_setopt(h, CURLOPT_POSTFIELDS, r.body.empty() ? "" : r.body.data());
      curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(r.body.size()));
      t.sent += r.body.size();
    } else if (method == "DELETE") {
      curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "DELETE");
    } else {
      curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    }
    if (r.send_body && !r.body.empty()) {
      // No Expect: 100-continue round trip. The removal header "Expect:" would be signed
      // (and never sent) by curl before 8.3: there, the wait is cut to 1 ms instead.
      if (!signed_requests || own || removal_headers_unsigned)
        add("Expect:");
      else
        curl_easy_setopt(h, CURLOPT_EXPECT_100_TIMEOUT_MS, 1L);
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, list);
  }

  /// The names (lower case) of the headers a signed request carries besides host and x-amz-date.
  std::vector<std::string> header_names(const Request& r) const {
    std::vector<std::string> names{"x-amz-content-sha256"};
    if (!config.session_token.empty()) names.emplace_back("x-amz-security-token");
    for (const auto& header : r.headers) names.push_back(lower(trim(header.substr(0, header.find(':')))));
    return names;
  }

  /// Host, x-amz-date and Authorization of SigV4 computed here (curl signs nothing then).
  std::vector<std::string> own_signature(const Request& r, const std::string& target) const {
    const auto scheme_end = target.find("://") + 3;
    const auto path_start = target.find('/', scheme_end);
    const auto query_start = target.find('?', path_start);
    const std::string host = target.substr(scheme_end, path_start - scheme_end);
    const std::string path = target.substr(path_start, query_start - path_start);
    const std::string query = query_start == std::string::npos ? std::string() : target.substr(query_start + 1);

    const std::time_t now = std::time(nullptr);
    std::tm utc{};
    gmtime_r(&now, &utc);
    char stamp[17];
    std::strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &utc);
    const std::string amz_date = stamp, day = amz_date.substr(0, 8);

    std::vector<std::pair<std::string, std::string>> headers{
        {"host", host}, {"x-amz-content-sha256", "UNSIGNED-PAYLOAD"}, {"x-amz-date", amz_date}};
    if (!config.session_token.empty()) headers.emplace_back("x-amz-security-token", config.session_token);
    for (const auto& header : r.headers) {
      const auto colon = header.find(':');
      headers.emplace_back(lower(trim(header.substr(0, colon))), std::string(trim(header.substr(colon + 1))));
    }
    std::sort(headers.begin(), headers.end());
    std::string canonical_headers, signed_headers;
    for (const auto& [name, value] : headers) {
      canonical_headers += name + ":" + value + "\n";
      signed_headers += (signed_headers.empty() ? "" : ";") + name;
    }
    const std::string canonical_request = fmt::format("{}\n{}\n{}\n{}\n{}\nUNSIGNED-PAYLOAD", r.method, path, query,
                                                      canonical_headers, signed_headers);
    const std::string region = config.region.empty() ? std::string("us-east-1") : config.region;
    const std::string scope = fmt::format("{}/{}/s3/aws4_request", day, region);
    const std::string to_sign =
        fmt::format("AWS4-HMAC-SHA256\n{}\n{}\n{}", amz_date, scope, hex(sha256(canonical_request)));
    std::string key = hmac_sha256("AWS4" + config.secret_key, day);
    key = hmac_sha256(key, region);
    key = hmac_sha256(key, "s3");
    key = hmac_sha256(key, "aws4_request");
    const std::string signature = hex(hmac_sha256(key, to_sign));
    return {"Host: " + host, "x-amz-date: " + amz_date,
            fmt::format("Authorization: AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={}, Signature={}",
                        config.access_key, scope, signed_headers, signature)};
  }

  /// Sends `r`, retrying what can be retried. A transport failure for good throws; an HTTP
  /// reply (success or not) is returned.
  Response execute(const Request& r) {
    const auto start = Clock::now();
    const auto deadline = start + config.deadline;
    const int max_attempts = std::max(1, config.max_attempts);
    const std::string target = url(r.bucket, r.key, r.query);
    Response response;
    for (int attempt = 1;; ++attempt) {
      if (attempt > 1 && r.restart && *r.restart) (*r.restart)();
      response = Response{};
      response.attempts = attempt;
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      const long timeout_ms = static_cast<long>(std::max<std::int64_t>(
          1, std::min<std::int64_t>(config.request_timeout.count(), left)));
      Transfer t;
      t.body = r.body;
      t.response = &response;
      t.sink = r.sink;
      char error_buffer[CURL_ERROR_SIZE] = {0};
      curl_slist* list = nullptr;
      CURLcode rc = CURLE_OK;
      long status = 0;
      try {
        Lease lease(*this);
        prepare(lease.handle, r, t, target, list, error_buffer, timeout_ms);
        rc = curl_easy_perform(lease.handle);
        curl_easy_getinfo(lease.handle, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_setopt(lease.handle, CURLOPT_HTTPHEADER, static_cast<curl_slist*>(nullptr));
        curl_easy_setopt(lease.handle, CURLOPT_ERRORBUFFER, static_cast<char*>(nullptr));
      } catch (...) {
        curl_slist_free_all(list);
        throw;
      }
      curl_slist_free_all(list);
      requests.fetch_add(1, std::memory_order_relaxed);
      bytes_sent.fetch_add(t.sent, std::memory_order_relaxed);
      bytes_received.fetch_add(t.received, std::memory_order_relaxed);
      if (t.error) std::rethrow_exception(t.error);

      response.curl = rc;
      response.status = status;
      if (rc != CURLE_OK) response.curl_error = error_buffer[0] ? error_buffer : curl_easy_strerror(rc);
      if (status > 0) {
        if (auto observer = current_observer(); observer && *observer)
          (*observer)(r.method, r.bucket, r.key, static_cast<int>(status));
      }
      if (rc == CURLE_OK && (status >= 300 || (r.error_in_200 && status >= 200 && status < 300)))
        parse_error_body(response);

      if (!retryable(response) || attempt >= max_attempts) break;
      const double cap = std::min<double>(static_cast<double>(config.backoff_max.count()),
                                          static_cast<double>(config.backoff_base.count()) *
                                              static_cast<double>(std::uint64_t{1} << std::min(attempt - 1, 40)));
      std::uniform_real_distribution<double> jitter(0.0, std::max(0.0, cap));
      const auto delay = std::chrono::milliseconds(static_cast<std::int64_t>(jitter(random_engine())));
      if (Clock::now() + delay >= deadline) break;
      detail::log(LogLevel::debug, "savepoint: object store: {} s3://{}/{}: {}; retry {} of {} in {} ms", r.method, r.bucket,
          r.key,
          response.curl != CURLE_OK ? response.curl_error
                                    : fmt::format("HTTP {} {}", response.status, response.code),
          attempt, max_attempts - 1, delay.count());
      std::this_thread::sleep_for(delay);
      retries.fetch_add(1, std::memory_order_relaxed);
    }
    if (response.curl != CURLE_OK) fail(r, response);
    if (response.ok() && !r.bucket.empty()) {
      std::lock_guard<std::mutex> lock(buckets_mutex);
      known_buckets.insert(r.bucket);
    }
    return response;
  }

  [[noreturn]] void fail(const Request& r, const Response& response, const char* method = nullptr) const {
    const std::string path = r.key.empty() ? fmt::format("s3://{}", r.bucket) : fmt::format("s3://{}/{}", r.bucket, r.key);
    std::string detail;
    if (response.curl != CURLE_OK) {
      detail = fmt::format("no response ({}: {})", curl_easy_strerror(response.curl), response.curl_error);
    } else {
      detail = fmt::format("HTTP {}", response.status);
      if (!response.code.empty()) detail += " " + response.code;
      const std::string why = explain(r, response);
      if (!why.empty()) detail += " (" + why + ")";
    }
    const std::string what =
        fmt::format("savepoint: object store: {} {}: {} after {} attempt{}; endpoint {}", method ? method : r.method,
                    path, detail, response.attempts, response.attempts == 1 ? "" : "s", endpoint_text);
    throw ObjectStoreError(what, path, kind_of(response), static_cast<int>(response.status), response.code);
  }

  [[noreturn]] void fail_message(const Request& r, Kind kind, int status, const std::string& why) const {
    const std::string path = r.key.empty() ? fmt::format("s3://{}", r.bucket) : fmt::format("s3://{}/{}", r.bucket, r.key);
    throw ObjectStoreError(fmt::format("savepoint: object store: {} {}: {}; endpoint {}", r.method, path, why, endpoint_text),
                           path, kind, status, {});
  }

  Request request(const char* method, const std::string& bucket, const std::string& key) const {
    Request r;
    r.method = method;
    r.region = config.region;
    r.bucket = bucket;
    r.key = key;
    return r;
  }

  static ObjectInfo info_from_headers(const std::string& key, const Response& r) {
    ObjectInfo info;
    info.key = key;
    info.size = header_u64(r, "content-length");
    if (const std::string* range = r.header("content-range")) {  // "bytes 0-0/1234" or "bytes */0"
      const auto slash = range->rfind('/');
      if (slash != std::string::npos && slash + 1 < range->size() && (*range)[slash + 1] != '*')
        info.size = std::strtoull(range->c_str() + slash + 1, nullptr, 10);
    }
    if (const std::string* etag = r.header("etag")) info.etag = *etag;
    if (const std::string* modified = r.header("last-modified")) {
      const std::int64_t t = parse_http_date(*modified);
      info.last_modified_unix = t < 0 ? 0 : t;
    }
    return info;
  }
};

Client::Client(Config config) : config_(std::move(config)), impl_(std::make_unique<Impl>(config_)) {}
Client::~Client() = default;

bool Client::put(const std::string& bucket, const std::string& key, std::string_view body, bool if_none_match) {
  Request r = impl_->request("PUT", bucket, key);
  r.body = body;
  r.send_body = true;
  r.headers.emplace_back("Content-Type: application/octet-stream");
  if (if_none_match) r.headers.emplace_back("If-None-Match: *");
  const Response response = impl_->execute(r);
  if (response.ok()) return true;
  if (if_none_match &&
      (response.status == 412 || (response.status == 409 && response.code == "ConditionalRequestConflict")))
    return false;
  impl_->fail(r, response);
}

std::optional<std::string> Client::get(const std::string& bucket, const std::string& key) {
  Request r = impl_->request("GET", bucket, key);
  Response response = impl_->execute(r);
  if (response.ok()) return std::move(response.body);
  if (response.status == 404 && response.code != "NoSuchBucket") return std::nullopt;
  impl_->fail(r, response);
}

std::uint64_t Client::get_range(const std::string& bucket, const std::string& key, std::uint64_t offset,
                                std::uint64_t size, const std::function<void(const char*, std::size_t)>& sink,
                                const std::function<void()>& restart) {
  if (size == 0) return 0;
  std::uint64_t delivered = 0;
  std::uint64_t position = 0;  // in a 200 reply (the whole object: a server ignoring Range)
  const Sink stream = [&](long status, const char* data, std::size_t n) {
    if (status == 200 && offset > 0) {
      const std::uint64_t skip = position < offset ? std::min<std::uint64_t>(offset - position, n) : 0;
      position += n;
      data += skip;
      n -= static_cast<std::size_t>(skip);
    }
    const std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(n, size - delivered));
    if (take == 0) return;
    sink(data, take);
    delivered += take;
  };
  const std::function<void()> again = [&] {
    delivered = 0;
    position = 0;
    if (restart) restart();
  };
  Request r = impl_->request("GET", bucket, key);
  r.headers.push_back(fmt::format("Range: bytes={}-{}", offset, offset + size - 1));
  r.sink = &stream;
  r.restart = &again;
  const Response response = impl_->execute(r);
  if (response.ok()) return delivered;
  if (response.status == 416) return 0;  // the object ends before `offset`
  impl_->fail(r, response);
}

std::optional<ObjectInfo> Client::head(const std::string& bucket, const std::string& key) {
  Request r = impl_->request("HEAD", bucket, key);
  const Response response = impl_->execute(r);
  if (response.ok()) return Impl::info_from_headers(key, response);
  if (response.status < 400 || response.status >= 500) impl_->fail(r, response);
  if (response.status == 404 && impl_->bucket_known(bucket)) return std::nullopt;
  // A HEAD reply has no body, so no error code: is it "no such key" or "no such bucket"
  // (or which kind of 403)? One byte's GET tells.
  Request probe = impl_->request("GET", bucket, key);
  probe.headers.emplace_back("Range: bytes=0-0");
  const Response detail = impl_->execute(probe);
  if (detail.ok() || detail.status == 416) return Impl::info_from_headers(key, detail);  // created meanwhile
  if (detail.status == 404 && detail.code != "NoSuchBucket") return std::nullopt;
  impl_->fail(r, detail, "HEAD");
}

Listing Client::list(const std::string& bucket, const std::string& prefix, const std::string& delimiter) {
  Listing listing;
  std::string token;
  for (;;) {
    Request r = impl_->request("GET", bucket, prefix);
    r.key.clear();  // a bucket-level request; the message names the prefix below
    r.query.emplace_back("list-type", "2");
    if (!prefix.empty()) r.query.emplace_back("prefix", prefix);
    if (!delimiter.empty()) r.query.emplace_back("delimiter", delimiter);
    if (!token.empty()) r.query.emplace_back("continuation-token", token);
    const Response response = impl_->execute(r);
    if (!response.ok()) {
      r.key = prefix;
      impl_->fail(r, response);
    }
    tinyxml2::XMLDocument doc;
    const tinyxml2::XMLElement* root = nullptr;
    if (doc.Parse(response.body.data(), response.body.size()) == tinyxml2::XML_SUCCESS) root = doc.RootElement();
    if (!root || std::strcmp(root->Name(), "ListBucketResult") != 0) {
      r.key = prefix;
      impl_->fail_message(r, Kind::other, static_cast<int>(response.status),
                          "the reply to ListObjectsV2 is not a ListBucketResult");
    }
    for (auto* e = root->FirstChildElement("Contents"); e; e = e->NextSiblingElement("Contents")) {
      ObjectInfo info;
      info.key = element_text(e, "Key");
      info.size = std::strtoull(element_text(e, "Size"), nullptr, 10);
      info.etag = element_text(e, "ETag");
      info.last_modified_unix = parse_iso8601(element_text(e, "LastModified"));
      listing.objects.push_back(std::move(info));
    }
    for (auto* e = root->FirstChildElement("CommonPrefixes"); e; e = e->NextSiblingElement("CommonPrefixes"))
      listing.prefixes.emplace_back(element_text(e, "Prefix"));
    const bool truncated = std::strcmp(element_text(root, "IsTruncated"), "true") == 0;
    std::string next = element_text(root, "NextContinuationToken");
    if (!truncated) break;
    if (next.empty() || next == token) {
      r.key = prefix;
      impl_->fail_message(r, Kind::other, static_cast<int>(response.status),
                          "ListObjectsV2 says the listing is truncated but gives no new continuation token");
    }
    token = std::move(next);
  }
  return listing;
}

void Client::remove(const std::string& bucket, const std::string& key) {
  Request r = impl_->request("DELETE", bucket, key);
  const Response response = impl_->execute(r);
  if (response.ok() || (response.status == 404 && response.code != "NoSuchBucket")) return;
  impl_->fail(r, response);
}

void Client::copy(const std::string& bucket, const std::string& from_key, const std::string& to_key,
                  std::optional<std::uint64_t> size) {
  std::optional<ObjectInfo> source;
  if (size) {
    source = ObjectInfo{from_key, *size, {}, 0};
  } else {
    source = head(bucket, from_key);
  }
  if (!source) {
    Request r = impl_->request("COPY", bucket, from_key);
    impl_->fail_message(r, Kind::not_found, 404, fmt::format("no such object to copy to s3://{}/{}", bucket, to_key));
  }
  const std::string copy_source = "x-amz-copy-source: /" + uri_encode(bucket, false) + "/" + uri_encode(from_key, true);
  if (source->size <= kMaxSingleCopy) {
    Request r = impl_->request("PUT", bucket, to_key);
    r.send_body = true;
    r.error_in_200 = true;
    r.headers.push_back(copy_source);
    const Response response = impl_->execute(r);
    if (response.ok()) return;
    impl_->fail(r, response);
  }
  const std::string upload_id = create_multipart(bucket, to_key);
  try {
    std::vector<Part> parts;
    int number = 1;
    for (std::uint64_t first = 0; first < source->size; first += kCopyPartSize, ++number) {
      const std::uint64_t last = std::min(source->size, first + kCopyPartSize) - 1;
      parts.push_back({number, upload_part_copy(bucket, to_key, upload_id, number, from_key, first, last)});
    }
    complete_multipart(bucket, to_key, upload_id, parts);
  } catch (...) {
    abort_multipart(bucket, to_key, upload_id);
    throw;
  }
}

std::string Client::create_multipart(const std::string& bucket, const std::string& key) {
  Request r = impl_->request("POST", bucket, key);
  r.send_body = true;
  r.query.emplace_back("uploads", "");
  r.headers.emplace_back("Content-Type: application/octet-stream");
  const Response response = impl_->execute(r);
  if (!response.ok()) impl_->fail(r, response);
  tinyxml2::XMLDocument doc;
  std::string id;
  if (doc.Parse(response.body.data(), response.body.size()) == tinyxml2::XML_SUCCESS)
    id = element_text(doc.RootElement(), "UploadId");
  if (id.empty())
    impl_->fail_message(r, Kind::other, static_cast<int>(response.status),
                        "CreateMultipartUpload's reply holds no UploadId");
  return id;
}

std::string Client::upload_part(const std::string& bucket, const std::string& key, const std::string& upload_id,
                                int number, std::string_view body) {
  Request r = impl_->request("PUT", bucket, key);
  r.body = body;
  r.send_body = true;
  r.query = {{"partNumber", std::to_string(number)}, {"uploadId", upload_id}};
  r.headers.emplace_back("Content-Type: application/octet-stream");
  const Response response = impl_->execute(r);
  if (!response.ok()) impl_->fail(r, response);
  const std::string* etag = response.header("etag");
  if (!etag || etag->empty())
    impl_->fail_message(r, Kind::other, static_cast<int>(response.status),
                        fmt::format("UploadPart {}'s reply has no ETag", number));
  return *etag;
}

std::string Client::upload_part_copy(const std::string& bucket, const std::string& key, const std::string& upload_id,
                                     int number, const std::string& from_key, std::uint64_t first,
                                     std::uint64_t last) {
  Request r = impl_->request("PUT", bucket, key);
  r.send_body = true;
  r.error_in_200 = true;
  r.query = {{"partNumber", std::to_string(number)}, {"uploadId", upload_id}};
  r.headers.push_back("x-amz-copy-source: /" + uri_encode(bucket, false) + "/" + uri_encode(from_key, true));
  r.headers.push_back(fmt::format("x-amz-copy-source-range: bytes={}-{}", first, last));
  const Response response = impl_->execute(r);
  if (!response.ok()) impl_->fail(r, response);
  tinyxml2::XMLDocument doc;
  std::string etag;
  if (doc.Parse(response.body.data(), response.body.size()) == tinyxml2::XML_SUCCESS)
    etag = element_text(doc.RootElement(), "ETag");
  if (etag.empty())
    impl_->fail_message(r, Kind::other, static_cast<int>(response.status),
                        fmt::format("UploadPartCopy {}'s reply holds no ETag", number));
  return etag;
}

void Client::complete_multipart(const std::string& bucket, const std::string& key, const std::string& upload_id,
                                const std::vector<Part>& parts) {
  std::string xml = "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">";
  for (const Part& part : parts)
    xml += fmt::format("<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>", part.number, xml_escape(part.etag));
  xml += "</CompleteMultipartUpload>";
  Request r = impl_->request("POST", bucket, key);
  r.body = xml;
  r.send_body = true;
  r.error_in_200 = true;
  r.query = {{"uploadId", upload_id}};
  r.headers.emplace_back("Content-Type: application/xml");
  const Response response = impl_->execute(r);
  if (response.ok()) return;
  // An earlier attempt may have completed it and lost the reply: then the object is there.
  if (response.attempts > 1 && response.code == "NoSuchUpload" && head(bucket, key)) return;
  impl_->fail(r, response);
}

void Client::abort_multipart(const std::string& bucket, const std::string& key, const std::string& upload_id) noexcept {
  try {
    Request r = impl_->request("DELETE", bucket, key);
    r.query = {{"uploadId", upload_id}};
    const Response response = impl_->execute(r);
    if (!response.ok() && response.status != 404)
      detail::log(LogLevel::warn, "savepoint: object store: could not abort the multipart upload of s3://{}/{}: HTTP {} {}",
          bucket, key, response.status, response.code);
  } catch (const std::exception& e) {
    try {
      detail::log(LogLevel::warn, "savepoint: object store: could not abort the multipart upload of s3://{}/{}: {}", bucket,
          key, e.what());
    } catch (...) {
    }
  } catch (...) {
  }
}

std::int64_t Client::server_time(const std::string& bucket) {
  Request r = impl_->request("GET", bucket, {});
  r.query = {{"list-type", "2"}, {"max-keys", "1"}};
  const Response response = impl_->execute(r);
  if (!response.ok()) impl_->fail(r, response);
  const std::string* date = response.header("date");
  const std::int64_t t = date ? parse_http_date(*date) : -1;
  if (t < 0)
    impl_->fail_message(r, Kind::other, static_cast<int>(response.status),
                        date ? fmt::format("unreadable Date header '{}'", *date) : "the reply has no Date header");
  return t;
}

Client::Counters Client::counters() const {
  Counters c;
  c.requests = impl_->requests.load(std::memory_order_relaxed);
  c.retries = impl_->retries.load(std::memory_order_relaxed);
  c.bytes_sent = impl_->bytes_sent.load(std::memory_order_relaxed);
  c.bytes_received = impl_->bytes_received.load(std::memory_order_relaxed);
  return c;
}

void set_request_observer(RequestObserver observer) {
  auto next = observer ? std::make_shared<const RequestObserver>(std::move(observer)) : nullptr;
  std::lock_guard<std::mutex> lock(g_observer_mutex);
  g_observer = std::move(next);
}

// ------------------------------------------------------------------ the streamed writer

struct ObjectWriter::Impl {
  Client& client;
  std::string bucket, key;
  std::size_t part_size;
  int parallel;

  std::string buffer;  // the part being filled
  std::string upload_id;
  int next_number = 1;
  std::uint64_t total = 0;
  bool finished = false;

  std::mutex mutex;
  std::condition_variable changed;
  std::deque<std::pair<int, std::string>> queue;
  int busy = 0;  // parts queued or uploading
  bool stopping = false;
  std::exception_ptr error;  // the first part's
  std::vector<Part> parts;
  std::vector<std::thread> workers;

  Impl(Client& c, std::string b, std::string k, std::size_t size, int n)
      : client(c),
        bucket(std::move(b)),
        key(std::move(k)),
        part_size(std::clamp(size, kMinPartSize, kMaxPartSize)),
        parallel(std::max(1, n)) {}

  void rethrow_error() {
    std::lock_guard<std::mutex> lock(mutex);
    if (error) std::rethrow_exception(error);
  }

  void work() {
    for (;;) {
      std::pair<int, std::string> part;
      {
        std::unique_lock<std::mutex> lock(mutex);
        changed.wait(lock, [&] { return stopping || !queue.empty(); });
        if (queue.empty()) return;
        part = std::move(queue.front());
        queue.pop_front();
        if (error) {  // a part failed: the upload will be aborted, send nothing more
          --busy;
          changed.notify_all();
          continue;
        }
      }
      std::string etag;
      std::exception_ptr failure;
      try {
        etag = client.upload_part(bucket, key, upload_id, part.first, part.second);
      } catch (...) {
        failure = std::current_exception();
      }
      std::string().swap(part.second);  // its memory back before the next part is admitted
      std::lock_guard<std::mutex> lock(mutex);
      if (failure) {
        if (!error) error = failure;
      } else {
        parts.push_back({part.first, std::move(etag)});
      }
      --busy;
      changed.notify_all();
    }
  }

  /// Hands the full buffer to the uploaders; blocks while `parallel` parts are in flight.
  void dispatch() {
    if (next_number > kMaxParts)
      throw_usage(fmt::format("savepoint: object store: s3://{}/{} needs more than {} parts of {} bytes: raise the "
                              "part size",
                              bucket, key, kMaxParts, part_size));
    if (upload_id.empty()) upload_id = client.create_multipart(bucket, key);
    std::unique_lock<std::mutex> lock(mutex);
    changed.wait(lock, [&] { return busy < parallel || error; });
    if (error) std::rethrow_exception(error);
    queue.emplace_back(next_number++, std::move(buffer));
    ++busy;
    if (workers.size() < static_cast<std::size_t>(parallel) && workers.size() < static_cast<std::size_t>(busy))
      workers.emplace_back([this] { work(); });
    lock.unlock();
    changed.notify_all();
    buffer = std::string();
    buffer.reserve(part_size);
  }

  /// Ends the uploaders, waiting for parts in flight (those queued are dropped).
  void stop(bool drop_queue) noexcept {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (drop_queue) {
        busy -= static_cast<int>(queue.size());
        queue.clear();
      }
      stopping = true;
    }
    changed.notify_all();
    for (std::thread& t : workers)
      if (t.joinable()) t.join();
    workers.clear();
  }
};

ObjectWriter::ObjectWriter(Client& client, std::string bucket, std::string key, std::size_t part_size, int parallel)
    : impl_(std::make_unique<Impl>(client, std::move(bucket), std::move(key), part_size, parallel)) {}

ObjectWriter::~ObjectWriter() {
  if (!impl_ || impl_->finished) return;
  impl_->stop(true);
  if (!impl_->upload_id.empty()) impl_->client.abort_multipart(impl_->bucket, impl_->key, impl_->upload_id);
}

void ObjectWriter::write(const void* data, std::size_t size) {
  Impl& w = *impl_;
  if (w.finished) throw_usage(fmt::format("savepoint: object store: s3://{}/{} written after finish()", w.bucket, w.key));
  w.rethrow_error();
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    // A full part goes only once more bytes come: an object of exactly one part is one PUT.
    if (w.buffer.size() == w.part_size) w.dispatch();
    const std::size_t take = std::min(size, w.part_size - w.buffer.size());
    w.buffer.append(p, take);
    p += take;
    size -= take;
    w.total += take;
  }
}

std::uint64_t ObjectWriter::finish() {
  Impl& w = *impl_;
  if (w.finished) return w.total;
  if (w.upload_id.empty()) {
    w.client.put(w.bucket, w.key, w.buffer);
    w.finished = true;
    std::string().swap(w.buffer);
    return w.total;
  }
  try {
    w.dispatch();  // the last part (never empty: a full part waits for more bytes)
    {
      std::unique_lock<std::mutex> lock(w.mutex);
      w.changed.wait(lock, [&] { return w.busy == 0; });
    }
    w.stop(false);
    w.rethrow_error();
    std::sort(w.parts.begin(), w.parts.end(), [](const Part& a, const Part& b) { return a.number < b.number; });
    w.client.complete_multipart(w.bucket, w.key, w.upload_id, w.parts);
  } catch (...) {
    w.stop(true);
    w.client.abort_multipart(w.bucket, w.key, w.upload_id);
    w.finished = true;
    throw;
  }
  w.finished = true;
  return w.total;
}

// ------------------------------------------------------------------ configuration

namespace {

using Section = std::map<std::string, std::string>;
using Ini = std::map<std::string, Section>;

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value ? std::string(value) : std::string();
}

std::string expand_home(const std::string& path) {
  if (path.size() >= 2 && path[0] == '~' && path[1] == '/') return env("HOME") + path.substr(1);
  return path;
}

/// AWS's INI files: [section], key = value, '#'/';' comments, and nested blocks ("s3 =" then
/// indented "key = value" lines, stored as "s3.key").
bool read_ini(const std::string& path, Ini& ini) {
  if (path.empty()) return false;
  std::ifstream in(path);
  if (!in) return false;
  std::string line, section, parent;
  while (std::getline(in, line)) {
    const bool indented = !line.empty() && (line[0] == ' ' || line[0] == '\t');
    const std::string_view text = trim(line);
    if (text.empty() || text[0] == '#' || text[0] == ';') continue;
    if (text.front() == '[') {
      const auto close = text.find(']');
      section = std::string(trim(text.substr(1, close == std::string_view::npos ? std::string_view::npos : close - 1)));
      ini[section];
      parent.clear();
      continue;
    }
    const auto eq = text.find('=');
    if (eq == std::string_view::npos || section.empty()) continue;
    const std::string name = lower(trim(text.substr(0, eq)));
    const std::string value(trim(text.substr(eq + 1)));
    if (indented && !parent.empty()) {
      ini[section][parent + "." + name] = value;
    } else if (value.empty()) {
      parent = name;
    } else {
      parent.clear();
      ini[section][name] = value;
    }
  }
  return true;
}

const Section* find_section(const Ini& ini, const std::string& name) {
  const auto it = ini.find(name);
  return it == ini.end() ? nullptr : &it->second;
}

std::string value_of(const Section* section, const char* name) {
  if (!section) return {};
  const auto it = section->find(name);
  return it == section->end() ? std::string() : it->second;
}

}  // namespace

Config config_from_environment(const std::string& profile) {
  Config config;
  const std::string env_profile = env("AWS_PROFILE");
  const bool named = !profile.empty() || !env_profile.empty();
  const std::string name = !profile.empty() ? profile : !env_profile.empty() ? env_profile : "default";

  const std::string home = env("HOME");
  std::string credentials_file = expand_home(env("AWS_SHARED_CREDENTIALS_FILE"));
  if (credentials_file.empty() && !home.empty()) credentials_file = home + "/.aws/credentials";
  std::string config_file = expand_home(env("AWS_CONFIG_FILE"));
  if (config_file.empty() && !home.empty()) config_file = home + "/.aws/config";

  Ini credentials_ini, config_ini;
  read_ini(credentials_file, credentials_ini);
  read_ini(config_file, config_ini);
  const Section* credentials = find_section(credentials_ini, name);
  const Section* settings = find_section(config_ini, "profile " + name);
  if (!settings && name == "default") settings = find_section(config_ini, "default");
  if (named && !credentials && !settings)
    throw_usage(fmt::format("savepoint: object store: AWS profile '{}' is in neither {} nor {}", name,
                            credentials_file.empty() ? "(no credentials file: HOME is not set)" : credentials_file,
                            config_file.empty() ? "(no config file)" : config_file));

  const std::string env_key = env("AWS_ACCESS_KEY_ID"), env_secret = env("AWS_SECRET_ACCESS_KEY");
  if (!env_key.empty() || !env_secret.empty()) {
    if (env_key.empty() || env_secret.empty())
      throw_usage(fmt::format("savepoint: object store: {} is set but {} is not",
                              env_key.empty() ? "AWS_SECRET_ACCESS_KEY" : "AWS_ACCESS_KEY_ID",
                              env_key.empty() ? "AWS_ACCESS_KEY_ID" : "AWS_SECRET_ACCESS_KEY"));
    config.access_key = env_key;
    config.secret_key = env_secret;
    config.session_token = env("AWS_SESSION_TOKEN");
  } else {
    // The credentials file first, then credentials written into the config file.
    for (const Section* s : {credentials, settings}) {
      if (!value_of(s, "aws_access_key_id").empty()) {
        config.access_key = value_of(s, "aws_access_key_id");
        config.secret_key = value_of(s, "aws_secret_access_key");
        config.session_token = value_of(s, "aws_session_token");
        break;
      }
    }
  }

  config.region = env("AWS_REGION");
  if (config.region.empty()) config.region = env("AWS_DEFAULT_REGION");
  if (config.region.empty()) config.region = value_of(settings, "region");
  if (config.region.empty()) config.region = "us-east-1";

  config.endpoint = env("AWS_ENDPOINT_URL_S3");
  if (config.endpoint.empty()) config.endpoint = env("AWS_ENDPOINT_URL");
  if (config.endpoint.empty()) config.endpoint = value_of(settings, "s3.endpoint_url");
  if (config.endpoint.empty()) config.endpoint = value_of(settings, "endpoint_url");
  while (!config.endpoint.empty() && config.endpoint.back() == '/') config.endpoint.pop_back();

  config.path_style = !config.endpoint.empty();
  std::string addressing = lower(env("SAVEPOINT_S3_ADDRESSING"));
  if (addressing.empty()) addressing = lower(value_of(settings, "s3.addressing_style"));
  if (addressing == "path")
    config.path_style = true;
  else if (addressing == "virtual")
    config.path_style = false;
  return config;
}

}  // namespace savepoint::detail::s3
