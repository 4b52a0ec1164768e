// savepoint diff A B: meta changes, then per key and per tensor: equal, max abs diff, shape and
// dtype changes. Tensor values are decoded from the safetensors bytes (no LibTorch); every
// file is checked against its checksum first, so a damaged file is a problem, not a "diff".
#include "cli.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <set>

namespace savepoint::cli {

namespace {

struct TensorView {
  const st::TensorInfo* info = nullptr;
  const char* data = nullptr;
};

std::size_t element_count(const st::TensorInfo& t) {
  std::size_t n = 1;
  for (auto d : t.shape) n *= static_cast<std::size_t>(d);
  return n;
}

std::string number(double v) { return std::isnan(v) ? "nan" : fmt::format("{:.6g}", v); }

// One tensor present on both sides.
json compare_tensor(const std::string& name, const TensorView& a, const TensorView& b) {
  const auto& ta = *a.info;
  const auto& tb = *b.info;
  json out = {{"name", name}, {"dtype_a", st::dtype_name(ta.dtype)}, {"dtype_b", st::dtype_name(tb.dtype)},
              {"shape_a", ta.shape}, {"shape_b", tb.shape}};
  if (ta.shape != tb.shape) {
    out["status"] = "shape_changed";
    return out;
  }
  const bool same_bytes = ta.dtype == tb.dtype && ta.nbytes() == tb.nbytes() &&
                          std::memcmp(a.data, b.data, static_cast<std::size_t>(ta.nbytes())) == 0;
  out["status"] = ta.dtype != tb.dtype ? "dtype_changed" : same_bytes ? "equal" : "different";
  if (same_bytes) {
    out["max_abs_diff"] = 0.0;
  } else if (decodable(ta.dtype) && decodable(tb.dtype)) {
    double max_diff = 0;
    bool nan_mismatch = false;
    const std::size_t n = element_count(ta);
    for (std::size_t i = 0; i < n; ++i) {
      const double x = element(ta.dtype, a.data, i), y = element(tb.dtype, b.data, i);
      if (std::isnan(x) || std::isnan(y)) {
        nan_mismatch = nan_mismatch || std::isnan(x) != std::isnan(y);
        continue;
      }
      const double d = x == y ? 0.0 : std::fabs(x - y);  // inf == inf: no difference
      max_diff = std::isnan(d) ? INFINITY : std::max(max_diff, d);
    }
    out["max_abs_diff"] = max_diff;  // JSON has no inf: nlohmann writes null
    if (nan_mismatch) out["nan_mismatch"] = true;
  }
  return out;
}

// Leaf-level changes between two JSON documents (a JSON patch, with the old values added):
// [{"path": "/param_groups/0/options/lr", "a": 0.01, "b": 0.005}, ...].
json json_changes(const json& a, const json& b) {
  json out = json::array();
  for (const auto& op : json::diff(a, b)) {
    const json::json_pointer at(op["path"].get<std::string>());
    json change = {{"path", op["path"]}};
    if (op["op"] != "add") change["a"] = a.at(at);
    if (op["op"] != "remove") change["b"] = op["value"];
    out.push_back(std::move(change));
  }
  return out;
}

// The safetensors metadata: each key's value, JSON values (the optimizer's "savepoint")
// compared leaf by leaf.
json compare_metadata(const std::map<std::string, std::string>& a, const std::map<std::string, std::string>& b) {
  json out = json::array();
  auto parsed = [](const std::string& text) {
    json j = json::parse(text, nullptr, false);
    return j.is_discarded() || !j.is_structured() ? json(text) : j;
  };
  std::set<std::string> names;
  for (const auto& [k, v] : a) names.insert(k);
  for (const auto& [k, v] : b) names.insert(k);
  for (const auto& name : names) {
    const auto ia = a.find(name), ib = b.find(name);
    if (ia != a.end() && ib != b.end() && ia->second == ib->second) continue;
    const json ja = ia == a.end() ? json() : parsed(ia->second), jb = ib == b.end() ? json() : parsed(ib->second);
    for (auto& change : json_changes(ja, jb)) {
      change["metadata"] = name;
      out.push_back(std::move(change));
    }
  }
  return out;
}

json compare_tensor_files(std::string_view a_bytes, const fs::path& a_path, std::string_view b_bytes,
                          const fs::path& b_path) {
  const auto ha = st::parse(a_bytes, a_path);
  const auto hb = st::parse(b_bytes, b_path);
  json tensors = json::array();
  for (const auto& t : ha.tensors) {
    const auto* other = hb.find(t.name);
    if (!other) {
      tensors.push_back({{"name", t.name}, {"status", "only_in_a"}, {"dtype_a", st::dtype_name(t.dtype)}, {"shape_a", t.shape}});
      continue;
    }
    tensors.push_back(compare_tensor(t.name, {&t, a_bytes.data() + ha.data_start + t.begin},
                                     {other, b_bytes.data() + hb.data_start + other->begin}));
  }
  for (const auto& t : hb.tensors)
    if (!ha.find(t.name))
      tensors.push_back({{"name", t.name}, {"status", "only_in_b"}, {"dtype_b", st::dtype_name(t.dtype)}, {"shape_b", t.shape}});
  std::sort(tensors.begin(), tensors.end(), [](const json& x, const json& y) { return x["name"] < y["name"]; });
  return {{"tensors", tensors}, {"metadata", compare_metadata(ha.metadata, hb.metadata)}};
}

json compare_key(const Checkpoint& a, const FileRecord& ra, const Checkpoint& b, const FileRecord& rb) {
  const auto fa = read_verified(a, ra);
  const auto fb = read_verified(b, rb);
  const std::string_view bytes_a = fa->bytes(), bytes_b = fb->bytes();
  json out = {{"key", ra.key}, {"file_a", ra.file}, {"file_b", rb.file}};
  if (ends_with(ra.file, ".safetensors") && ends_with(rb.file, ".safetensors")) {
    const json compared = compare_tensor_files(bytes_a, a.path / ra.file, bytes_b, b.path / rb.file);
    out["tensors"] = compared["tensors"];
    out["metadata"] = compared["metadata"];
    bool equal = compared["metadata"].empty();
    for (const auto& t : out["tensors"]) equal = equal && t["status"] == "equal";
    out["status"] = equal ? "equal" : "different";
    return out;
  }
  out["status"] = bytes_a == bytes_b ? "equal" : "different";
  if (ends_with(ra.file, ".json") && ends_with(rb.file, ".json") && bytes_a != bytes_b) {
    const json ja = json::parse(bytes_a.begin(), bytes_a.end(), nullptr, false);
    const json jb = json::parse(bytes_b.begin(), bytes_b.end(), nullptr, false);
    if (!ja.is_discarded() && !jb.is_discarded()) {
      out["changes"] = json_changes(ja, jb);
      if (ja == jb) out["status"] = "equal";
    }
  }
  return out;
}

json compare_meta(const Checkpoint& a, const Checkpoint& b) {
  json changes = json::array();
  for (const auto& [k, v] : a.meta.items()) {
    if (!b.meta.contains(k)) changes.push_back({{"key", k}, {"change", "removed"}, {"a", v}});
    else if (b.meta[k] != v) changes.push_back({{"key", k}, {"change", "changed"}, {"a", v}, {"b", b.meta[k]}});
  }
  for (const auto& [k, v] : b.meta.items())
    if (!a.meta.contains(k)) changes.push_back({{"key", k}, {"change", "added"}, {"b", v}});
  return changes;
}

void print_text(const json& d) {
  fmt::print("a: {}\nb: {}\n", d["a"].get<std::string>(), d["b"].get<std::string>());
  fmt::print("meta:{}\n", d["meta"].empty() ? " equal" : "");
  for (const auto& m : d["meta"]) {
    const std::string k = m["key"];
    if (m["change"] == "removed") fmt::print("  - {}: {} (only in a)\n", k, m["a"].dump());
    else if (m["change"] == "added") fmt::print("  + {}: {} (only in b)\n", k, m["b"].dump());
    else fmt::print("  ~ {}: {} -> {}\n", k, m["a"].dump(), m["b"].dump());
  }
  for (const auto& key : d["keys"]) {
    const std::string status = key["status"];
    fmt::print("key {}: {}\n", key["key"].get<std::string>(),
               status == "only_in_a" ? "only in a" : status == "only_in_b" ? "only in b" : status);
    auto print_change = [](const json& c, const std::string& where) {
      if (!c.contains("a")) fmt::print("  + {}{}: {} (only in b)\n", where, c["path"].get<std::string>(), c["b"].dump());
      else if (!c.contains("b")) fmt::print("  - {}{}: {} (only in a)\n", where, c["path"].get<std::string>(), c["a"].dump());
      else fmt::print("  ~ {}{}: {} -> {}\n", where, c["path"].get<std::string>(), c["a"].dump(), c["b"].dump());
    };
    if (key.contains("changes"))
      for (const auto& c : key["changes"]) print_change(c, "");
    if (key.contains("metadata"))
      for (const auto& c : key["metadata"]) print_change(c, "metadata " + c["metadata"].get<std::string>() + " ");
    if (!key.contains("tensors")) continue;
    for (const auto& t : key["tensors"]) {
      const std::string ts = t["status"], name = t["name"];
      const auto shape = [](const json& s) { return shape_text(s.get<std::vector<std::int64_t>>()); };
      if (ts == "only_in_a") fmt::print("  - {:<40} {} {} only in a\n", name, t["dtype_a"].get<std::string>(), shape(t["shape_a"]));
      else if (ts == "only_in_b") fmt::print("  + {:<40} {} {} only in b\n", name, t["dtype_b"].get<std::string>(), shape(t["shape_b"]));
      else if (ts == "shape_changed") fmt::print("  ! {:<40} shape {} -> {}\n", name, shape(t["shape_a"]), shape(t["shape_b"]));
      else {
        std::string line = fmt::format("{:<40} {} {}", name, t["dtype_a"].get<std::string>(), shape(t["shape_a"]));
        if (ts == "dtype_changed") line = fmt::format("{:<40} dtype {} -> {}", name, t["dtype_a"].get<std::string>(), t["dtype_b"].get<std::string>());
        if (ts == "equal") {
          fmt::print("  = {}  equal\n", line);
          continue;
        }
        const char* mark = ts == "dtype_changed" ? "!" : "~";
        if (!t.contains("max_abs_diff")) fmt::print("  {} {}  different (not compared element-wise)\n", mark, line);
        else
          fmt::print("  {} {}  max abs diff {}{}\n", mark, line,
                     t["max_abs_diff"].is_null() ? "inf" : number(t["max_abs_diff"].get<double>()),
                     t.value("nan_mismatch", false) ? " (and NaN in one only)" : "");
      }
    }
  }
  fmt::print("{}\n", d["equal"].get<bool>() ? "same keys, tensors and user meta" : "the checkpoints differ");
}

int diff(const std::string& pa, const std::string& pb, bool as_json, bool exit_code) {
  const auto a = locate(pa, "").checkpoint;
  const auto b = locate(pb, "").checkpoint;
  json d = {{"a", a.path.string()}, {"b", b.path.string()}, {"meta", compare_meta(a, b)}};
  json keys = json::array();
  for (const auto& ra : a.files) {
    if (ra.part > 0) continue;  // a key split into parts is compared once, whole
    if (const auto* rb = b.file(ra.key)) keys.push_back(compare_key(a, ra, b, *rb));
    else keys.push_back({{"key", ra.key}, {"status", "only_in_a"}, {"file_a", ra.file}});
  }
  for (const auto& rb : b.files)
    if (rb.part <= 0 && !a.file(rb.key)) keys.push_back({{"key", rb.key}, {"status", "only_in_b"}, {"file_b", rb.file}});
  bool equal = true;
  for (const auto& k : keys) equal = equal && k["status"] == "equal";
  for (const auto& m : d["meta"]) equal = equal && m["key"] == "unixtime";  // the save time always differs
  d["keys"] = std::move(keys);
  d["equal"] = equal;
  if (as_json) print_json(d);
  else print_text(d);
  return exit_code && !equal ? kProblem : kOk;
}

}  // namespace

void add_diff(CLI::App& app, Runner& run) {
  struct Args {
    std::string a, b;
    bool json = false, exit_code = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("diff", "Compare two checkpoints: meta changes, then per key and tensor: equal, "
                                         "max abs diff, shape or dtype changes (files are verified first)");
  cmd->add_option("a", args->a, "a checkpoint's directory, e.g. runs/x/CKPT+best")->required();
  cmd->add_option("b", args->b, "another checkpoint's directory")->required();
  cmd->add_flag("--json", args->json, "print JSON");
  cmd->add_flag("--exit-code", args->exit_code, "exit 1 when the checkpoints differ (as git diff --exit-code)");
  cmd->callback([args, &run] { run = [args] { return diff(args->a, args->b, args->json, args->exit_code); }; });
}

}  // namespace savepoint::cli
