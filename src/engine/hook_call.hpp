// engine/hook_call.hpp — runs a hook and gives its failure one shape: HookError with the
// original nested. savepoint's own errors (a MismatchError from a built-in hook, say) and
// std::bad_alloc pass through unchanged.
#pragma once

#include <savepoint/errors.hpp>
#include <savepoint/hooks.hpp>

#include <fmt/format.h>

#include <filesystem>
#include <new>

namespace savepoint::engine {

template <class Fn>
auto call_hook(const Recoverable& r, const char* phase, const std::filesystem::path& checkpoint, Fn&& fn)
    -> decltype(fn()) {
  try {
    return fn();
  } catch (const Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    throw HookError(fmt::format("savepoint: the {} hook '{}' of key '{}' failed for checkpoint '{}': {}", phase,
                                r.hook_name(), r.key(), checkpoint.string(), e.what()),
                    r.key(), r.hook_name(), checkpoint);
  } catch (...) {
    throw HookError(fmt::format("savepoint: the {} hook '{}' of key '{}' failed for checkpoint '{}' with a "
                                "non-standard exception",
                                phase, r.hook_name(), r.key(), checkpoint.string()),
                    r.key(), r.hook_name(), checkpoint);
  }
}

}  // namespace savepoint::engine
