# cudaemu's own tests (included from tests/cudaemu/CMakeLists.txt): selftest.cpp with the kernels of planted.cu,
# rewritten like y5's .cu files. Two executables, each one CTest test labelled cudaemu:
#   cudaemu_selftest       on the `cudaemu` library, as y5's emulated build uses it;
#   cudaemu_selftest_asan  the same tests on an AddressSanitizer copy of the runtime (runtime.cpp, exec.cpp), so a
#                          kernel's out-of-bounds access is reported with its planted.cu line (its extra test).
enable_testing()  # this folder is added before the top level enables testing, and add_test needs it on
cudaemu_rewrite(_cudaemu_planted ${CMAKE_CURRENT_SOURCE_DIR}/planted.cu)

# Catch2's main, compiled once for both (the single header is slow to compile).
add_library(cudaemu_catch_main OBJECT ${CMAKE_SOURCE_DIR}/tests/test_main.cpp)
target_link_libraries(cudaemu_catch_main PRIVATE Catch2::Catch2)

add_executable(cudaemu_selftest selftest.cpp ${_cudaemu_planted} $<TARGET_OBJECTS:cudaemu_catch_main>)
target_link_libraries(cudaemu_selftest PRIVATE cudaemu Catch2::Catch2)

# The ASan copy of the runtime; -g so that ASan's report names file and line.
add_library(cudaemu_asan STATIC runtime.cpp exec.cpp)
target_include_directories(cudaemu_asan PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_compile_options(cudaemu_asan PUBLIC -fsanitize=address -fno-omit-frame-pointer -g PRIVATE -Wall -Wextra)
target_link_options(cudaemu_asan PUBLIC -fsanitize=address)
target_link_libraries(cudaemu_asan PUBLIC Boost::context Threads::Threads)

add_executable(cudaemu_selftest_asan selftest.cpp ${_cudaemu_planted} $<TARGET_OBJECTS:cudaemu_catch_main>)
target_link_libraries(cudaemu_selftest_asan PRIVATE cudaemu_asan Catch2::Catch2)

foreach(_t cudaemu_selftest cudaemu_selftest_asan)
  target_include_directories(${_t} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})  # emu.h
  target_compile_definitions(${_t} PRIVATE CUDAEMU_SOURCE_DIR="${CMAKE_CURRENT_SOURCE_DIR}")  # planted.cu's marks
  target_compile_options(${_t} PRIVATE -Wall -Wextra)
  add_test(NAME ${_t} COMMAND ${_t})
  set_tests_properties(${_t} PROPERTIES LABELS cudaemu TIMEOUT 120)
endforeach()
