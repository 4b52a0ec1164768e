// Fuzzes the meta.json reader: any bytes must give a Checkpoint or a savepoint::Error,
// never a crash, a hang or undefined behaviour.
#include <savepoint/detail/meta.hpp>
#include <savepoint/errors.hpp>
#include <savepoint/log.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const bool quiet = [] {
    savepoint::set_log_level(savepoint::LogLevel::off);
    return true;
  }();
  (void)quiet;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const auto ckpt = savepoint::detail::parse_meta("/fuzz/CKPT+x", text);
    // What parsed must be safe to use: file names stay inside the checkpoint directory.
    for (const auto& f : ckpt.files) {
      if (!savepoint::detail::is_plain_file_name(f.file)) __builtin_trap();
    }
    (void)savepoint::detail::serialize_meta(ckpt);
  } catch (const savepoint::Error&) {
    // rejected with a clear error: fine
  }
  return 0;
}
