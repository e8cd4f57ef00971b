#pragma once
/// \file
/// The AVX512-BF16 product atom: one step of tile_product (per_isa/tile_gemm.inl) as
/// `vdpbf16ps`, which multiplies 16 pairs of bf16 by 16 other pairs and adds both products
/// of each pair into a float lane. Its operands hold two consecutive elements along the
/// product's depth in each 32-bit lane ("pairs"); per_isa/bf16_tile_math.inl lays the
/// kernel's tiles out so. Compiled in a target region (target.hpp); `Tu` keeps translation
/// units of different `-march` apart, as in avx2_atom.hpp.

#include "target.hpp"

#if STAR_X86_DISPATCH
#include <immintrin.h>

#include <cstdint>

#include <Eigen/Core>

#include "../../tensor.hpp"
#include "avx512_atom.hpp"

STAR_INTRINSICS_BEGIN // see simd/target.hpp
namespace star::detail {

STAR_TARGET_BEGIN("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c")

/// Two bf16 in one 32-bit lane: the one of even depth in the low half.
using bf16_pair = std::uint32_t;

template <class Tu>
struct Avx512Bf16Product {
    using simd = Avx512Atom<Tu>;
    using a_type = bf16_pair;
    using b_type = bf16_pair;
    static constexpr index width = simd::width;

    static __m512i load_b(const bf16_pair* p) noexcept { return _mm512_loadu_si512(p); }
    /// `2 * width` consecutive bf16 of a row, which are `width` pairs as they lie.
    static __m512i load_pairs(const Eigen::bfloat16* p) noexcept { return _mm512_loadu_si512(p); }
    static __m512i broadcast_a(bf16_pair a) noexcept
    {
        return _mm512_set1_epi32(static_cast<int>(a));
    }
    /// `acc + a[2i] b[2i] + a[2i + 1] b[2i + 1]` in lane `i`, the products exact.
    static __m512 madd(__m512i a, __m512i b, __m512 acc) noexcept
    {
        return _mm512_dpbf16_ps(acc, as_bf16(a), as_bf16(b));
    }

    /// Lane `i` of the result pairs `even[i]` and `odd[i]`, each rounded to bf16 to nearest
    /// even (denormals become 0, as `vdpbf16ps` takes them anyway).
    static __m512i pair_up(__m512 even, __m512 odd) noexcept
    {
        // vcvtne2ps2bf16 puts its second operand's 16 results below the first's; the
        // permutation interleaves the two halves.
        const auto both = (__m512i)_mm512_cvtne2ps_pbh(odd, even);
        return _mm512_permutexvar_epi16(interleave_halves(), both);
    }

    /// Pairs of two bf16 rows: lane `i` of `out[0, n)` pairs `even[i]` and `odd[i]`, with 0
    /// for `i >= d` (so for the padding of a row rounded up to whole vectors). `odd` may be
    /// null: the row after the last of an odd count, all zeros.
    static void pair_rows(const Eigen::bfloat16* even, const Eigen::bfloat16* odd, index d,
                          bf16_pair* out, index n) noexcept
    {
        for (index c = 0; c < n; c += width) {
            const __mmask16 present = first_lanes(d - c);
            const __m256i low = _mm256_maskz_loadu_epi16(present, even + c);
            const __m256i high = odd != nullptr ? _mm256_maskz_loadu_epi16(present, odd + c)
                                                : _mm256_setzero_si256();
            const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
            _mm512_storeu_si512(out + c, _mm512_permutexvar_epi16(interleave_halves(), both));
        }
    }

    static void store(bf16_pair* p, __m512i pairs) noexcept { _mm512_storeu_si512(p, pairs); }

    /// Pairs of 32 columns of two bf16 rows, as `vpunpcklwd` and `vpunpckhwd` make them in
    /// each 128-bit lane: `low` pairs columns 0-3, 8-11, 16-19 and 24-27, `high` columns
    /// 4-7, 12-15, 20-23 and 28-31. Two instructions for 32 pairs, where pairing them in
    /// column order (pair_rows) takes a permutation and a store for every 16; a product of
    /// such pairs leaves its sums in this order, and `restore_order` puts them back.
    static void interleave(const Eigen::bfloat16* even, const Eigen::bfloat16* odd, __m512i& low,
                           __m512i& high) noexcept
    {
        const __m512i e = _mm512_loadu_si512(even);
        const __m512i o = _mm512_loadu_si512(odd);
        low = _mm512_unpacklo_epi16(e, o);
        high = _mm512_unpackhi_epi16(e, o);
    }

    /// The 32 floats at `row`, sums over pairs `interleave` made (`low`'s 16 lanes, then
    /// `high`'s), put back in column order: column `k` is in lane `4 (k / 8) + k % 4` of
    /// `low` if `k % 8 < 4`, else of `high`.
    static void restore_order(float* row) noexcept
    {
        alignas(64) static constexpr std::int32_t order[32] = {
            0, 1, 2,  3,  16, 17, 18, 19, 4,  5,  6,  7,  20, 21, 22, 23,
            8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31};
        const __m512 low = _mm512_loadu_ps(row);
        const __m512 high = _mm512_loadu_ps(row + 16);
        _mm512_storeu_ps(row, _mm512_permutex2var_ps(low, _mm512_load_si512(order), high));
        _mm512_storeu_ps(row + 16, _mm512_permutex2var_ps(low, _mm512_load_si512(order + 16), high));
    }

    /// `src[0, n)` rounded to bf16 (nearest even, denormals to 0) into `out[0, n)`.
    static void round_row(const float* src, index n, Eigen::bfloat16* out) noexcept
    {
        for (index c = 0; c < n; c += width) {
            const __mmask16 present = first_lanes(n - c);
            const auto rounded =
                (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(present, src + c));
            _mm256_mask_storeu_epi16(out + c, present, rounded);
        }
    }

private:
    /// The first `lanes` lanes of a vector (none for `lanes <= 0`, all for `>= width`).
    static __mmask16 first_lanes(index lanes) noexcept
    {
        return lanes >= width ? __mmask16(0xFFFF)
               : lanes > 0    ? __mmask16((1U << lanes) - 1U)
                              : __mmask16(0);
    }

    /// The same bits as bf16 lanes. A vector cast, not std::bit_cast: that is a function of
    /// <bit>, compiled outside the target region, where returning a 512-bit vector changes
    /// the ABI (GCC refuses it with -Werror=psabi in a unit built for plain x86-64).
    static __m512bh as_bf16(__m512i x) noexcept { return (__m512bh)x; }

    /// Word `2i` from word `i`, word `2i + 1` from word `16 + i`.
    static __m512i interleave_halves() noexcept
    {
        return _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7,
                                22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    }
};

STAR_TARGET_END

} // namespace star::detail
STAR_INTRINSICS_END

#endif
