#pragma once
/// \file
/// Compiling code for an instruction set the translation unit was not compiled for.
///
/// The library is header-only, so its kernel is compiled inside the user's translation
/// units, whatever their `-march`. Code placed between `STAR_TARGET_BEGIN("avx2,fma")` and
/// `STAR_TARGET_END` is compiled as if for that instruction set (GCC's `target` pragma,
/// Clang's `target` attribute applied to every function of the region); it runs only after
/// kernel/isa.hpp has found the CPU able to. Functions declared outside a region, such as
/// the standard library's and the masks', keep the translation unit's own target, so no
/// symbol shared with other translation units ever holds instructions the CPU may lack.
///
/// xsimd cannot serve here: it declares `batch<float, avx2>` only in translation units
/// compiled with `-mavx2`, so a region's code uses the small per-ISA atoms of
/// avx2_ops.hpp and avx512_ops.hpp; xsimd remains the portable path.

#include "../cxx20.hpp"

/// Define `STAR_NO_DISPATCH` (in every translation unit of a program alike) to compile the
/// portable path alone, for the unit's own `-march`, and no run-time dispatch: a quarter of
/// the kernel's compile time, for debug and sanitizer builds (tests/test_global.cpp under
/// ASan compiled in 46 s rather than 93), at the cost of every instruction set beyond that
/// `-march`. kernel/isa.hpp then counts the portable path the only one the CPU supports.
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) &&       \
    !defined(STAR_NO_DISPATCH)
#define STAR_X86_DISPATCH 1
#else
#define STAR_X86_DISPATCH 0
#endif

#define STAR_PRAGMA(text) _Pragma(#text)

/// Put around code into which AVX-512 intrinsics are inlined (STAR_INTRINSICS_END after it).
/// GCC 12 builds an "undefined" vector in its intrinsics as `__m512 __Y = __Y;` and reports
/// it, once inlined, as -Wuninitialized or -Wmaybe-uninitialized (GCC bug 105593, a false
/// positive, fixed in GCC 13). Including <immintrin.h> with them off (below) is not enough:
/// a user's unit that includes it, or Eigen, before the library reads it with the user's
/// warnings on. GCC 12 also consults the pragma state at every place a function was inlined
/// into, so the library's code that inlines intrinsics is marked instead; the warnings stay
/// on for the user's code, and for the library's under Clang and later GCCs.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
// clang-format off
#define STAR_INTRINSICS_BEGIN                                                                 \
    STAR_PRAGMA(GCC diagnostic push) STAR_PRAGMA(GCC diagnostic ignored "-Wuninitialized")    \
    STAR_PRAGMA(GCC diagnostic ignored "-Wmaybe-uninitialized")
// clang-format on
#define STAR_INTRINSICS_END STAR_PRAGMA(GCC diagnostic pop)
#else
#define STAR_INTRINSICS_BEGIN
#define STAR_INTRINSICS_END
#endif

/// Put before a loop over a register block (its trip count a template parameter). GCC
/// unrolls such loops only at -O3; at -O2 (CMake's RelWithDebInfo, many engines' builds) it
/// kept the block's accumulators in memory, and the kernel ran 2.1x (prefill) to 2.4x
/// (decode) more instructions. Unrolled, the arrays of registers become registers.
#if defined(__clang__)
#define STAR_UNROLL STAR_PRAGMA(unroll)
#elif defined(__GNUC__)
#define STAR_UNROLL STAR_PRAGMA(GCC unroll 16)
#else
#define STAR_UNROLL
#endif

/// Put before the products at the heart of the kernel (tile_gemm, the decode kernel's score
/// block). Every mask, transform and caller inlined its own copy of their unrolled register
/// blocks, on each path: a test file using a few masks took 2.4x longer to compile (151 s
/// of CPU instead of 62 s for tests/test_global.cpp with GCC 12 at -O3). Kept out of line,
/// they are compiled once per path and element type, and run the same instructions (a
/// call per tile of 128 keys; callgrind counts within 0.3% for prefill and decode).
#if defined(__GNUC__) || defined(__clang__)
#define STAR_OUT_OF_LINE __attribute__((noinline))
#else
#define STAR_OUT_OF_LINE
#endif

#if STAR_X86_DISPATCH
// GCC 12 warns inside its own AVX-512 intrinsics once they are inlined into the kernel: they
// build an "undefined" vector as `__m512 __Y = __Y;` (GCC bug 105593, fixed in 13), and the
// system-header exemption does not reach inlined code. GCC judges a warning by the pragma
// state where it is reported, inside the intrinsics header, so that header is included
// here first with those warnings off; its include guard makes later includes no-ops. A
// user's code keeps every warning it asked for. (A unit that includes <immintrin.h>, or
// Eigen, before the library still sees them under GCC 12.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

#if defined(__clang__)
#define STAR_TARGET_BEGIN(features)                                                                \
    STAR_PRAGMA(clang attribute push(__attribute__((target(features))), apply_to = function))
#define STAR_TARGET_END STAR_PRAGMA(clang attribute pop)
#elif defined(__GNUC__)
// -Wpsabi: GCC notes that a function returning a vector passes it differently without
// the region's target; every caller of such a function is inside the same region.
// clang-format off
#define STAR_TARGET_BEGIN(features)                                                           \
    STAR_PRAGMA(GCC push_options) STAR_PRAGMA(GCC target(features))                           \
    STAR_PRAGMA(GCC diagnostic push) STAR_PRAGMA(GCC diagnostic ignored "-Wpsabi")
// clang-format on
#define STAR_TARGET_END STAR_PRAGMA(GCC diagnostic pop) STAR_PRAGMA(GCC pop_options)
#else
#define STAR_TARGET_BEGIN(features)
#define STAR_TARGET_END
#endif
