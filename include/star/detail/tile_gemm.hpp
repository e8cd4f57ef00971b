#pragma once
/// \file
/// The register-blocked matrix product of the attention kernel, written once over
/// `xsimd::batch<float>`.
///
/// `C (+)= A * B` with B and C row-major and their rows a whole number of SIMD batches
/// wide; A is read one element at a time (broadcast), so it may be stored either way:
/// element `(r, k)` is at `a[r * a_row + k * a_col]`. A block of `rows x packets`
/// accumulators stays in registers while one row of B's panel is loaded per step: no
/// operand is packed, which is why this beats a general GEMM on attention-tile shapes.

#include "../tensor.hpp"
#include "simd.hpp"

namespace star::detail {

/// Accumulator rows: 8 x 3 batches + 3 for B fit AVX-512's 32 registers; 4 x 3 + 3 fit the
/// 16 of AVX2 and SSE.
inline constexpr int gemm_rows = batch_width >= 16 ? 8 : 4;
inline constexpr int gemm_packets = 3;

/// Strides of the A operand: element `(r, k)` at `a[r * row + k * col]`.
struct Strides {
    index row;
    index col;
};

template <int Rows, int Packets, bool Accumulate>
inline void gemm_micro_tile(const float* a, Strides sa, const float* b, index ldb, float* c,
                            index ldc, index depth) noexcept
{
    float_batch acc[Rows][Packets];
    for (int r = 0; r < Rows; ++r)
        for (int p = 0; p < Packets; ++p)
            acc[r][p] = Accumulate ? float_batch::load_unaligned(c + r * ldc + p * batch_width)
                                   : float_batch(0.0f);
    for (index kk = 0; kk < depth; ++kk) {
        float_batch row[Packets];
        for (int p = 0; p < Packets; ++p)
            row[p] = float_batch::load_unaligned(b + kk * ldb + p * batch_width);
        for (int r = 0; r < Rows; ++r) {
            const float_batch broadcast(a[r * sa.row + kk * sa.col]);
            for (int p = 0; p < Packets; ++p)
                acc[r][p] = xsimd::fma(broadcast, row[p], acc[r][p]);
        }
    }
    for (int r = 0; r < Rows; ++r)
        for (int p = 0; p < Packets; ++p)
            acc[r][p].store_unaligned(c + r * ldc + p * batch_width);
}

template <int Rows, int Packets, bool Accumulate>
inline void gemm_leftover_rows(int rows, const float* a, Strides sa, const float* b, index ldb,
                               float* c, index ldc, index depth) noexcept
{
    if constexpr (Rows > 0) {
        if (rows == Rows)
            gemm_micro_tile<Rows, Packets, Accumulate>(a, sa, b, ldb, c, ldc, depth);
        else
            gemm_leftover_rows<Rows - 1, Packets, Accumulate>(rows, a, sa, b, ldb, c, ldc, depth);
    }
}

template <int Packets, bool Accumulate>
inline void gemm_panel(const float* a, Strides sa, const float* b, index ldb, float* c, index ldc,
                       index m, index depth) noexcept
{
    index i = 0;
    for (; i + gemm_rows <= m; i += gemm_rows)
        gemm_micro_tile<gemm_rows, Packets, Accumulate>(a + i * sa.row, sa, b, ldb, c + i * ldc,
                                                        ldc, depth);
    if (i < m)
        gemm_leftover_rows<gemm_rows - 1, Packets, Accumulate>(
            static_cast<int>(m - i), a + i * sa.row, sa, b, ldb, c + i * ldc, ldc, depth);
}

/// `C[m x n] = A[m x depth] * B[depth x n]` (or `+=` when `Accumulate`); B and C row-major
/// with row strides `ldb`, `ldc`; `n` must be a multiple of `batch_width`.
template <bool Accumulate>
inline void tile_gemm(const float* a, Strides sa, const float* b, index ldb, float* c, index ldc,
                      index m, index n, index depth) noexcept
{
    const index packets = n / batch_width;
    index p = 0;
    // Column panels outermost: one panel of B (depth x 3 batches) stays in L1 while every
    // row block of A streams past it.
    for (; p + gemm_packets <= packets; p += gemm_packets)
        gemm_panel<gemm_packets, Accumulate>(a, sa, b + p * batch_width, ldb, c + p * batch_width,
                                             ldc, m, depth);
    if (packets - p == 2)
        gemm_panel<2, Accumulate>(a, sa, b + p * batch_width, ldb, c + p * batch_width, ldc, m, depth);
    else if (packets - p == 1)
        gemm_panel<1, Accumulate>(a, sa, b + p * batch_width, ldb, c + p * batch_width, ldc, m, depth);
}

} // namespace star::detail
