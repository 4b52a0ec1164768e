// Catch's main, compiled once for every test program (v2 or v3: tests/catch.hpp).
#if SAVEPOINT_CATCH_MAJOR < 3
#define CATCH_CONFIG_MAIN
#endif
#include "catch.hpp"

#if SAVEPOINT_CATCH_MAJOR >= 3
int main(int argc, char* argv[]) { return Catch::Session().run(argc, argv); }
#endif
