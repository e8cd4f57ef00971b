#pragma once
/// \file
/// The AVX2 float atom (with FMA and F16C), compiled in a target region (target.hpp).
///
/// `Tu` is the architecture the translation unit itself is compiled for: a region adds to
/// the unit's instruction set, so units built with different `-march` must not share the
/// kernel's symbols, and the tag in every kernel function's type keeps them apart.

#include "target.hpp"

#if STAR_X86_DISPATCH
#include <immintrin.h>

#include <Eigen/Core>

#include "atom.hpp"

namespace star::detail {

STAR_TARGET_BEGIN("avx2,fma,f16c")

template <class Tu>
struct Avx2Atom {
    using reg = __m256;
    using mask = __m256;
    static constexpr index width = 8;

    static reg broadcast(float s) noexcept { return _mm256_set1_ps(s); }
    static reg load(const float* p) noexcept { return _mm256_loadu_ps(p); }
    /// bf16 is the upper half of a float: widen to 32 bits and shift into place.
    static reg load(const Eigen::bfloat16* p) noexcept
    {
        const __m128i narrow = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(narrow), 16));
    }
    static reg load(const Eigen::half* p) noexcept
    {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
    static void store(float* p, reg x) noexcept { _mm256_storeu_ps(p, x); }
    static reg add(reg a, reg b) noexcept { return _mm256_add_ps(a, b); }
    static reg sub(reg a, reg b) noexcept { return _mm256_sub_ps(a, b); }
    static reg mul(reg a, reg b) noexcept { return _mm256_mul_ps(a, b); }
    static reg div(reg a, reg b) noexcept { return _mm256_div_ps(a, b); }
    static reg fma(reg a, reg b, reg c) noexcept { return _mm256_fmadd_ps(a, b, c); }
    static reg max(reg a, reg b) noexcept { return _mm256_max_ps(a, b); }
    static reg min(reg a, reg b) noexcept { return _mm256_min_ps(a, b); }
    static mask equal(reg a, reg b) noexcept { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
    static mask less(reg a, reg b) noexcept { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
    static mask unordered(reg a, reg b) noexcept { return _mm256_cmp_ps(a, b, _CMP_UNORD_Q); }
    static reg select(mask m, reg a, reg b) noexcept { return _mm256_blendv_ps(b, a, m); }
    static bool any(mask m) noexcept { return _mm256_movemask_ps(m) != 0; }
    static float reduce_add(reg x) noexcept
    {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
    }
    /// Four sums at once: pairwise sums of lanes interleave the four vectors, so that one
    /// 128-bit add finishes them all.
    static void reduce_add4(const reg* x, float* out) noexcept
    {
        const __m256 pairs = _mm256_hadd_ps(_mm256_hadd_ps(x[0], x[1]), _mm256_hadd_ps(x[2], x[3]));
        const __m128 low = _mm256_castps256_ps128(pairs);
        _mm_storeu_ps(out, _mm_add_ps(low, _mm256_extractf128_ps(pairs, 1)));
    }
    static reg round(reg x) noexcept
    {
        return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    /// 2^n for whole n in [-126, 127]: n + 127 is the biased exponent.
    static reg pow2(reg n) noexcept
    {
        const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
        return _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23));
    }
};

STAR_TARGET_END

} // namespace star::detail

#endif
