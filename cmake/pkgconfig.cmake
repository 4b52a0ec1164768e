# pkg-config files, installed next to the CMake config:
#   savepoint.pc       the core + the LibTorch layer: `pkg-config --cflags --libs savepoint`
#   savepoint-core.pc  the core alone (no LibTorch), for tools that list, verify or prune
# LibTorch has no .pc file on Debian, so savepoint.pc carries LibTorch's include directories,
# compile flags and libraries, taken from its CMake package (TORCH_INCLUDE_DIRS,
# TORCH_CXX_FLAGS, and the files of its imported targets, resolved at generate time).
# The paths are relative to the .pc file (${pcfiledir}), so `cmake --install --prefix X` works.
set(pcdir ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}" OR IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(SAVEPOINT_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
else()
  file(RELATIVE_PATH up "/root/${pcdir}" "/root")  # e.g. ../.. or ../../..
  string(REGEX REPLACE "/$" "" up "${up}")
  set(SAVEPOINT_PC_PREFIX "\${pcfiledir}/${up}")
endif()
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}")
  set(SAVEPOINT_PC_LIBDIR "${CMAKE_INSTALL_LIBDIR}")
else()
  set(SAVEPOINT_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
endif()
if(IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(SAVEPOINT_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
else()
  set(SAVEPOINT_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()

# savepoint-core.pc
set(SAVEPOINT_PC_NAME savepoint-core)
set(SAVEPOINT_PC_DESCRIPTION "Crash-safe checkpoint directories without LibTorch (savepoint::core)")
set(SAVEPOINT_PC_CFLAGS "")
set(SAVEPOINT_PC_LIBS " -lsavepoint_core")
configure_file(${PROJECT_SOURCE_DIR}/cmake/savepoint.pc.in ${PROJECT_BINARY_DIR}/savepoint-core.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/savepoint-core.pc DESTINATION ${pcdir})

if(SAVEPOINT_WITH_TORCH)
  set(SAVEPOINT_PC_NAME savepoint)
  set(SAVEPOINT_PC_DESCRIPTION "${PROJECT_DESCRIPTION} (savepoint::savepoint, with LibTorch)")
  set(SAVEPOINT_PC_CFLAGS "")
  if(SAVEPOINT_TORCH_MIN_STANDARD GREATER 17)
    # This LibTorch's headers stop below C++20 (CMakeLists.txt); a later -std of the consumer's wins.
    set(SAVEPOINT_PC_CFLAGS " -std=c++${SAVEPOINT_TORCH_MIN_STANDARD}")
  endif()
  foreach(dir IN LISTS TORCH_INCLUDE_DIRS)
    # Not the compiler's own directories (-I/usr/include breaks #include_next).
    if(NOT dir IN_LIST CMAKE_CXX_IMPLICIT_INCLUDE_DIRECTORIES)
      set(SAVEPOINT_PC_CFLAGS "${SAVEPOINT_PC_CFLAGS} -I${dir}")
    endif()
  endforeach()
  if(TORCH_CXX_FLAGS)
    set(SAVEPOINT_PC_CFLAGS "${SAVEPOINT_PC_CFLAGS} ${TORCH_CXX_FLAGS}")
  endif()
  # libtorch.so and libtorch_cpu.so register operators from static initializers: linked
  # --no-as-needed, as LibTorch's own CMake targets do.
  set(torch_files "")
  foreach(t torch torch_cpu)
    if(TARGET ${t})
      string(APPEND torch_files " $<TARGET_FILE:${t}>")
    endif()
  endforeach()
  set(SAVEPOINT_PC_LIBS " -lsavepoint -lsavepoint_core -Wl,--no-as-needed${torch_files} -Wl,--as-needed")
  if(TARGET c10)
    string(APPEND SAVEPOINT_PC_LIBS " $<TARGET_FILE:c10>")
  endif()
  configure_file(${PROJECT_SOURCE_DIR}/cmake/savepoint.pc.in ${PROJECT_BINARY_DIR}/savepoint.pc.in @ONLY)
  file(GENERATE OUTPUT ${PROJECT_BINARY_DIR}/savepoint.pc INPUT ${PROJECT_BINARY_DIR}/savepoint.pc.in)
  install(FILES ${PROJECT_BINARY_DIR}/savepoint.pc DESTINATION ${pcdir})
endif()
