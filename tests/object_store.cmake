# Object storage against real S3 servers on loopback, each started and stopped around its test
# by scripts/with-s3-server.sh (exit 77, Skipped, where the server is not installed):
#   moto (Debian 13 on, python3-moto): the core suite's "[s3]" cases, the crash at every request
#   boundary ("[s3-crash]"), and the faults through tests/s3_fault_proxy.py ("[s3-faults]");
#   s3rver (npm): a server that ignores If-None-Match, refused at the probe ("[s3rver]").
# The cases are hidden ("[.s3]") from the plain core run: they need the server.
set(with_s3 bash ${PROJECT_SOURCE_DIR}/scripts/with-s3-server.sh)
set(s3_suite "s3: moto: save, load, retention, parts, incremental copies, ranks, errors (the [s3] cases)")
set(s3_crash "s3: moto: a save SIGKILLed after each of its requests, recovery never partial, orphans removed")
set(s3_faults "s3: moto behind a fault proxy: 503, SlowDown, resets, cut bodies, delays retried; a failed save leaves the others")
set(s3_probe "s3: s3rver ignores If-None-Match: refused at the probe, accepted only when asked")
add_test(NAME "${s3_suite}" COMMAND ${with_s3} moto --timeout 400 -- $<TARGET_FILE:savepoint_core_tests> ${SAVEPOINT_CATCH_STRICT} "[s3]")
add_test(NAME "${s3_crash}" COMMAND ${with_s3} moto --timeout 400 -- $<TARGET_FILE:savepoint_core_tests> ${SAVEPOINT_CATCH_STRICT} "[s3-crash]")
add_test(NAME "${s3_faults}" COMMAND ${with_s3} moto --faults --timeout 300 -- $<TARGET_FILE:savepoint_core_tests> ${SAVEPOINT_CATCH_STRICT} "[s3-faults]")
add_test(NAME "${s3_probe}" COMMAND ${with_s3} s3rver --timeout 300 -- $<TARGET_FILE:savepoint_core_tests> ${SAVEPOINT_CATCH_STRICT} "[s3rver]")
set_tests_properties("${s3_suite}" "${s3_crash}" "${s3_faults}" "${s3_probe}"
                     PROPERTIES ENVIRONMENT SAVEPOINT_CTEST=1 SKIP_RETURN_CODE 77 TIMEOUT 480)
if(SAVEPOINT_BUILD_TOOLS AND SAVEPOINT_BUILD_EXAMPLES)
  set(s3_tools "s3: moto: train_resume on s3://, the CLI lists, verifies, diffs, exports and prunes there, Python reads it")
  add_test(NAME "${s3_tools}"
           COMMAND ${with_s3} moto --timeout 400 -- bash ${CMAKE_CURRENT_SOURCE_DIR}/object_store_tools.sh
                   $<TARGET_FILE:savepoint_cli> $<TARGET_FILE:train_resume> ${CMAKE_CURRENT_BINARY_DIR}/s3-tools)
  set_tests_properties("${s3_tools}" PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 480 PASS_REGULAR_EXPRESSION "\nOK: ")
endif()
