// Catch2 v2 (Debian 12: catch2 2.13) and v3 (Debian 13 on: libcatch2-dev 3.x) behind one
// include. Tests are written in v2's spelling; this header supplies it on v3. CMake defines
// SAVEPOINT_CATCH_MAJOR from the Catch2 package it found (tests/CMakeLists.txt).
#pragma once

#ifndef SAVEPOINT_CATCH_MAJOR
#error "SAVEPOINT_CATCH_MAJOR is not defined: link the savepoint_catch target (tests/CMakeLists.txt)"
#endif

#if SAVEPOINT_CATCH_MAJOR >= 3
#include <catch2/catch_all.hpp>

#include <string>

namespace Catch {
// v2's string matcher; v3 calls it Matchers::ContainsSubstring.
inline Matchers::StringContainsMatcher Contains(const std::string& text,
                                               CaseSensitive sensitivity = CaseSensitive::Yes) {
  return Matchers::ContainsSubstring(text, sensitivity);
}
// v2's listener base: v3's assertionEnded returns void, so listeners use the alias below.
using TestEventListenerBase = EventListenerBase;
}  // namespace Catch
using Catch::Approx;  // v2 has Approx in the global namespace

#define SAVEPOINT_LISTENER_ASSERTION_RESULT void
#define SAVEPOINT_LISTENER_RETURN_FROM_ASSERTION return
#define SAVEPOINT_REGISTER_LISTENER(type, variable) inline Catch::ListenerRegistrar<type> variable{#type};
#else
#include <catch2/catch.hpp>

#define SAVEPOINT_LISTENER_ASSERTION_RESULT bool
#define SAVEPOINT_LISTENER_RETURN_FROM_ASSERTION return true
#define SAVEPOINT_REGISTER_LISTENER(type, variable) inline Catch::ListenerRegistrar<type> variable;
#endif
