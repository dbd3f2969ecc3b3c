// Catch2's main for the CPU test binary (kept alone: the single header is slow to compile).
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
