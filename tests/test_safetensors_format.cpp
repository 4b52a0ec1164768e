// The safetensors reader enforces every rule of the format (no torch needed here).
#include "support.hpp"

#include <savepoint/format/safetensors.hpp>

#include "catch.hpp"

using namespace savepoint;
namespace st = savepoint::safetensors;

namespace {
std::string file_with(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return out + header + data;
}
std::string reason(const std::string& file) {
  try {
    st::parse(file, "test.safetensors");
  } catch (const CorruptCheckpointError& e) {
    CHECK(e.path() == "test.safetensors");
    return e.what();
  }
  return "accepted";
}
}  // namespace

TEST_CASE("a valid file parses, with metadata and tensors in offset order", "[safetensors]") {
  const auto f = file_with(
      R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"U8","shape":[1,2],"data_offsets":[8,10]},"__metadata__":{"format":"pt"}})",
      std::string(10, 'x'));
  const auto h = st::parse(f, "x");
  REQUIRE(h.tensors.size() == 2);
  CHECK(h.tensors[0].name == "b");
  CHECK(h.tensors[1].shape == std::vector<std::int64_t>{1, 2});
  CHECK(h.metadata.at("format") == "pt");
  CHECK(h.data_start == 8 + f.size() - 8 - 10);
}

TEST_CASE("every malformed header is rejected with a specific reason", "[safetensors]") {
  const std::string t = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  CHECK_THAT(reason("abc"), Catch::Contains("shorter than"));
  CHECK_THAT(reason(std::string("\xff\xff\xff\xff\x00\x00\x00\x00", 8) + "{}"), Catch::Contains("cap"));
  CHECK_THAT(reason(std::string("\x40\x00\x00\x00\x00\x00\x00\x00", 8) + "{}"), Catch::Contains("past the end"));
  CHECK_THAT(reason(file_with("[1]", "")), Catch::Contains("start with '{'"));
  CHECK_THAT(reason(file_with("{\"t\":", "")), Catch::Contains("not valid JSON"));
  CHECK_THAT(reason(file_with("{" + t + "}", std::string(4, 'x'))), Catch::Contains("ends at byte 8"));
  CHECK_THAT(reason(file_with("{" + t + "}", std::string(12, 'x'))), Catch::Contains("not described"));
  CHECK_THAT(reason(file_with(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, 'x'))),
             Catch::Contains("need a different size"));
  CHECK_THAT(reason(file_with(R"({"t":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}})", std::string(8, 'x'))),
             Catch::Contains("unknown dtype 'Q7'"));
  CHECK_THAT(reason(file_with(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", std::string(8, 'x'))),
             Catch::Contains("dimension"));
  CHECK_THAT(reason(file_with(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", std::string(8, 'x'))),
             Catch::Contains("ends before it begins"));
  CHECK_THAT(reason(file_with(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
                              std::string(6, 'x'))),
             Catch::Contains("overlaps"));
  CHECK_THAT(reason(file_with(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})", std::string(4, 'x'))),
             Catch::Contains("hole"));
  CHECK_THAT(reason(file_with("{" + t + "," + t + "}", std::string(8, 'x'))), Catch::Contains("appears twice"));
  CHECK_THAT(reason(file_with(R"({"__metadata__":{"a":1}})", "")), Catch::Contains("not a string"));
  CHECK_THAT(reason(file_with(R"({"t":{"dtype":"U8","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}})", "")),
             Catch::Contains("need a different size"));
  CHECK_THAT(reason(file_with(R"({"t":{"shape":[2],"data_offsets":[0,8]}})", std::string(8, 'x'))), Catch::Contains("no dtype"));
  CHECK_THAT(reason(file_with(R"({"t":{"dtype":"F32","shape":[2]}})", std::string(8, 'x'))), Catch::Contains("data_offsets"));
}

TEST_CASE("build_header pads to 8 bytes and orders tensors by alignment, then name", "[safetensors]") {
  std::vector<st::TensorSpec> specs{{"z8", st::DType::U8, {3}, 3}, {"a32", st::DType::F32, {2}, 8}, {"b64", st::DType::F64, {1}, 8}};
  const auto header = st::build_header(specs, {{"k", "v"}});
  CHECK(header.size() % 8 == 0);
  CHECK(specs[0].name == "b64");
  CHECK(specs[1].name == "a32");
  CHECK(specs[2].name == "z8");
  const auto h = st::parse(header + std::string(19, '\0'), "x");
  CHECK(h.find("a32")->begin == 8);
  CHECK(h.find("z8")->end == 19);
  CHECK(h.metadata.at("k") == "v");
}

TEST_CASE("parse_header validates the header alone against the file size", "[safetensors]") {
  const std::string header =
      R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"U8","shape":[1,2],"data_offsets":[8,10]}})";
  const auto f = file_with(header, std::string(10, 'x'));
  const auto prefix_and_header = f.substr(0, 8 + header.size());
  const auto h = st::parse_header(prefix_and_header, f.size(), "x");
  const auto whole = st::parse(f, "x");
  REQUIRE(h.tensors.size() == 2);
  CHECK(h.tensors[0].name == whole.tensors[0].name);
  CHECK(h.tensors[1].shape == whole.tensors[1].shape);
  CHECK(h.data_start == whole.data_start);
  // parse itself needs the tensor bytes: the header alone describes data that is not there.
  CHECK_THROWS_AS(st::parse(prefix_and_header, "x"), CorruptCheckpointError);

  const auto header_reason = [](std::string_view bytes, std::uint64_t file_size) -> std::string {
    try {
      st::parse_header(bytes, file_size, "test.safetensors");
    } catch (const CorruptCheckpointError& e) {
      CHECK(e.path() == "test.safetensors");
      return e.what();
    }
    return "accepted";
  };
  // The same rules as parse, offsets checked against the file size given.
  CHECK_THAT(header_reason(prefix_and_header, f.size() - 2), Catch::Contains("ends at byte 10"));
  CHECK_THAT(header_reason(prefix_and_header, f.size() + 4), Catch::Contains("not described"));
  CHECK_THAT(header_reason(f.substr(0, 5), f.size()), Catch::Contains("shorter than"));
  CHECK_THAT(header_reason(f.substr(0, 4), 4), Catch::Contains("only 4 bytes, shorter than"));
  CHECK_THAT(header_reason(f.substr(0, 8), 20), Catch::Contains("past the end"));
  CHECK_THAT(header_reason(f.substr(0, 8 + 10), f.size()), Catch::Contains("only 10 header bytes given"));
  CHECK_THAT(header_reason(std::string("\xff\xff\xff\xff\x00\x00\x00\x00", 8), 1ull << 40), Catch::Contains("cap"));
  CHECK_THAT(header_reason(f, f.size() - 1), Catch::Contains("for a file of only"));
}
