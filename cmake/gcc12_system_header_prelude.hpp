// Force-included (-include) into the project's own translation units by star_project_target()
// on GCC < 13 only. Never installed, never seen by users of the library.
//
// GCC 12 reports warnings inside its own system headers once their code is inlined into
// ours, where the usual system-header suppression does not apply (fixed in GCC 13):
// - -Wuninitialized / -Wmaybe-uninitialized: the AVX-512 intrinsics build an "undefined"
//   vector as `__m512 __Y = __Y;` (_mm512_undefined_ps and friends), reached through
//   Eigen's AVX-512 GEMM packing under -march=native (GCC bug 105593).
// - -Wrestrict: libstdc++'s `"literal" + std::string&&` is reported as an overlapping
//   memcpy at -O2/-O3 (GCC bug 105651).
//
// GCC decides whether a warning is suppressed by the #pragma state at the warning's
// location, which is inside these headers. So the headers are included here first, inside a
// region where those warnings are off; their include guards make every later include a no-op.
// The warnings stay on for the project's own code.
//
// The library's headers do not rely on this: users never get the prelude, so the code of the
// library into which intrinsics are inlined is itself marked (STAR_INTRINSICS_BEGIN/END in
// include/star/detail/simd/target.hpp), and tests/consumer/warnings.cmake compiles a user's
// file without the prelude, -Werror, for AVX-512 too. What is left here is for the project's
// own tests, benchmarks and examples: their direct use of Eigen (its AVX-512 GEMM) and of
// std::string.
#pragma once

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wrestrict"
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <string>
#pragma GCC diagnostic pop
