#pragma once
/// \file
/// The AVX-512 float atom (F, BW, DQ, VL), compiled in a target region (target.hpp). `Tu`
/// keeps translation units of different `-march` apart, as in avx2_atom.hpp.

#include "target.hpp"

#if STAR_X86_DISPATCH
#include <immintrin.h>

#include <Eigen/Core>

#include "atom.hpp"

STAR_INTRINSICS_BEGIN // see simd/target.hpp
namespace star::detail {

STAR_TARGET_BEGIN("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")

template <class Tu>
struct Avx512Atom {
    using reg = __m512;
    using mask = __mmask16;
    static constexpr index width = 16;

    static reg broadcast(float s) noexcept { return _mm512_set1_ps(s); }
    static reg load(const float* p) noexcept { return _mm512_loadu_ps(p); }
    /// bf16 is the upper half of a float: widen to 32 bits and shift into place.
    static reg load(const Eigen::bfloat16* p) noexcept
    {
        const __m256i narrow = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(narrow), 16));
    }
    static reg load(const Eigen::half* p) noexcept
    {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    static void store(float* p, reg x) noexcept { _mm512_storeu_ps(p, x); }
    static reg add(reg a, reg b) noexcept { return _mm512_add_ps(a, b); }
    static reg sub(reg a, reg b) noexcept { return _mm512_sub_ps(a, b); }
    static reg mul(reg a, reg b) noexcept { return _mm512_mul_ps(a, b); }
    static reg div(reg a, reg b) noexcept { return _mm512_div_ps(a, b); }
    static reg fma(reg a, reg b, reg c) noexcept { return _mm512_fmadd_ps(a, b, c); }
    static reg max(reg a, reg b) noexcept { return _mm512_max_ps(a, b); }
    static reg min(reg a, reg b) noexcept { return _mm512_min_ps(a, b); }
    static mask equal(reg a, reg b) noexcept { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
    static mask less(reg a, reg b) noexcept { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
    static mask unordered(reg a, reg b) noexcept { return _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q); }
    static reg select(mask m, reg a, reg b) noexcept { return _mm512_mask_blend_ps(m, b, a); }
    static bool any(mask m) noexcept { return m != 0; }
    static float reduce_add(reg x) noexcept { return _mm512_reduce_add_ps(x); }
    /// Four sums at once: the vectors paired and added within each 128-bit lane (unpack,
    /// then shuffle), so that every add serves all four sums, then the lanes folded: 13
    /// instructions, where folding each vector to 256 bits first and finishing with hadds
    /// took about 20.
    static void reduce_add4(const reg* x, float* out) noexcept
    {
        // Per 128-bit lane: [a0 + a2, b0 + b2, a1 + a3, b1 + b3], then [a, b, c, d] parts.
        const reg ab = _mm512_add_ps(_mm512_unpacklo_ps(x[0], x[1]), _mm512_unpackhi_ps(x[0], x[1]));
        const reg cd = _mm512_add_ps(_mm512_unpacklo_ps(x[2], x[3]), _mm512_unpackhi_ps(x[2], x[3]));
        const reg parts =
            _mm512_add_ps(_mm512_shuffle_ps(ab, cd, 0x44), _mm512_shuffle_ps(ab, cd, 0xEE));
        const __m256 half =
            _mm256_add_ps(_mm512_castps512_ps256(parts),
                          _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(parts), 1)));
        _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1)));
    }
    static reg round(reg x) noexcept
    {
        return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    /// `e^x` as exp.inl's exp_of gives it (Cephes' reduction and degree-6 polynomial; 0
    /// below -87.34, +inf from 88.73, NaN through), with the power of two applied by
    /// `vscalefps` and the limits by a zeroing mask: 16 instructions where exp_of's
    /// selects and exponent arithmetic take 25, and the softmax's exp is about a tenth of
    /// the tile kernel's time.
    static reg exp(reg x) noexcept
    {
        const auto c = [](float value) { return _mm512_set1_ps(value); };
        // Not below ln 2^-126 (NaN too: vcmpps's unordered "not less than" is true for it).
        const __mmask16 kept = _mm512_cmp_ps_mask(x, c(-87.3365447505531f), _CMP_NLT_UQ);
        // Clamped so that n stays finite; max and min pass a NaN in their second operand.
        const reg t = _mm512_min_ps(c(89.0f), _mm512_max_ps(c(-88.0f), x));
        const reg n = round(_mm512_mul_ps(t, c(1.44269504088896341f)));
        reg r = _mm512_fmadd_ps(n, c(-0.693359375f), t);
        r = _mm512_fmadd_ps(n, c(2.12194440e-4f), r);
        reg p = c(1.9875691500e-4f);
        p = _mm512_fmadd_ps(p, r, c(1.3981999507e-3f));
        p = _mm512_fmadd_ps(p, r, c(8.3334519073e-3f));
        p = _mm512_fmadd_ps(p, r, c(4.1665795894e-2f));
        p = _mm512_fmadd_ps(p, r, c(1.6666665459e-1f));
        p = _mm512_fmadd_ps(p, r, c(5.0000001201e-1f));
        const reg e_r = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), c(1.0f));
        return _mm512_maskz_scalef_ps(kept, e_r, n);
    }
    /// `p 2^n` for whole `n <= 127` by `vscalefps`; 0 where `2^n` is no normal float (`-inf`
    /// too, whatever `p`), NaN where `n` is: softmax_exp's power of two (exp.inl).
    static reg times_pow2(reg p, reg n) noexcept
    {
        const __mmask16 normal = _mm512_cmp_ps_mask(n, _mm512_set1_ps(-126.0f), _CMP_NLT_UQ);
        return _mm512_maskz_scalef_ps(normal, p, n);
    }
    /// 2^n for whole n in [-126, 127]: n + 127 is the biased exponent.
    static reg pow2(reg n) noexcept
    {
        const __m512i biased = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
        return _mm512_castsi512_ps(_mm512_slli_epi32(biased, 23));
    }
};

STAR_TARGET_END

} // namespace star::detail
STAR_INTRINSICS_END

#endif
