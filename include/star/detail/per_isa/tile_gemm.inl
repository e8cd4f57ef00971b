// The register-blocked matrix product of the attention kernel, written once over a float
// atom `S`. Included by kernels.hpp into one namespace per path, inside its target region.
//
// `C (+)= A * B` with B and C row-major and their rows a whole number of vectors wide; A is
// read one element at a time (broadcast), so it may be stored either way: element `(r, k)`
// is at `a[r * a_row + k * a_col]`. A block of `rows x packets` accumulators stays in
// registers while one row of B's panel is loaded per step: no operand is packed, which is
// why this beats a general GEMM on attention-tile shapes (1.5x Eigen's, measured).

/// Accumulators: 8 x 3 vectors + 3 for B fit AVX-512's 32 registers; 6 x 2 + 2 fit the 16
/// of AVX2 and SSE.
template <class S>
inline constexpr int gemm_rows = S::width >= 16 ? 8 : 6;
template <class S>
inline constexpr int gemm_packets = S::width >= 16 ? 3 : 2;

template <class S, int Rows, int Packets, bool Accumulate, class B>
inline void gemm_micro_tile(const float* a, Strides sa, const B* b, index ldb, float* c, index ldc,
                            index depth) noexcept
{
    typename S::reg acc[std::size_t{Rows}][std::size_t{Packets}];
    // clang-format off
    STAR_UNROLL
    for (int r = 0; r < Rows; ++r)
        STAR_UNROLL
        for (int p = 0; p < Packets; ++p)
            acc[r][p] = Accumulate ? S::load(c + r * ldc + p * S::width) : S::broadcast(0.0f);
    // clang-format on
    for (index kk = 0; kk < depth; ++kk) {
        typename S::reg row[std::size_t{Packets}];
        STAR_UNROLL
        for (int p = 0; p < Packets; ++p)
            row[p] = S::load(b + kk * ldb + p * S::width);
        STAR_UNROLL
        for (int r = 0; r < Rows; ++r) {
            const auto broadcast = S::broadcast(a[r * sa.row + kk * sa.col]);
            STAR_UNROLL
            for (int p = 0; p < Packets; ++p)
                acc[r][p] = S::fma(broadcast, row[p], acc[r][p]);
        }
    }
    // clang-format off
    STAR_UNROLL
    for (int r = 0; r < Rows; ++r)
        STAR_UNROLL
        for (int p = 0; p < Packets; ++p)
            S::store(c + r * ldc + p * S::width, acc[r][p]);
    // clang-format on
}

/// The last `m - i` rows of a panel, fewer than a micro-tile's, in blocks of `Rows`, then
/// of half as many, down to 1. Three shapes cover every remainder (7 = 4 + 2 + 1) where a
/// shape per remainder would be 5 to 7: every shape is compiled for every path, B type and
/// mode, in every translation unit (about a tenth of a test file's machine code), and the
/// remainder is only ever the last rows of a call.
template <class S, int Rows, int Packets, bool Accumulate, class B>
inline void gemm_remainder_rows(index i, index m, const float* a, Strides sa, const B* b, index ldb,
                                float* c, index ldc, index depth) noexcept
{
    if constexpr (Rows > 0) {
        if (m - i >= Rows) {
            gemm_micro_tile<S, Rows, Packets, Accumulate>(a + i * sa.row, sa, b, ldb, c + i * ldc,
                                                          ldc, depth);
            i += Rows;
        }
        gemm_remainder_rows<S, Rows / 2, Packets, Accumulate>(i, m, a, sa, b, ldb, c, ldc, depth);
    }
}

template <class S, int Packets, bool Accumulate, class B>
inline void gemm_panel(const float* a, Strides sa, const B* b, index ldb, float* c, index ldc,
                       index m, index depth) noexcept
{
    constexpr int rows = gemm_rows<S>;
    static_assert(rows <= 8, "the remainder takes blocks of 4, 2 and 1 rows");
    index i = 0;
    for (; i + rows <= m; i += rows)
        gemm_micro_tile<S, rows, Packets, Accumulate>(a + i * sa.row, sa, b, ldb, c + i * ldc, ldc,
                                                      depth);
    gemm_remainder_rows<S, 4, Packets, Accumulate>(i, m, a, sa, b, ldb, c, ldc, depth);
}

/// `C[m x n] = A[m x depth] * B[depth x n]` (or `+=` when `Accumulate`); B and C row-major
/// with row strides `ldb`, `ldc`; `n` must be a multiple of the vector width. B may be bf16
/// or half, widened as it is loaded: worth it where each row of B is loaded about once (a
/// few rows of A), not where many row blocks of A load it again.
template <class S, bool Accumulate, class B>
STAR_OUT_OF_LINE inline void tile_gemm(const float* a, Strides sa, const B* b, index ldb, float* c,
                                       index ldc, index m, index n, index depth) noexcept
{
    const index packets = n / S::width;
    index p = 0;
    // Column panels outermost: one panel of B (depth x 3 vectors) stays in L1 while every
    // row block of A streams past it.
    for (; p + gemm_packets<S> <= packets; p += gemm_packets<S>)
        gemm_panel<S, gemm_packets<S>, Accumulate>(a, sa, b + p * S::width, ldb, c + p * S::width,
                                                   ldc, m, depth);
    if (packets - p == 2)
        gemm_panel<S, 2, Accumulate>(a, sa, b + p * S::width, ldb, c + p * S::width, ldc, m, depth);
    else if (packets - p == 1)
        gemm_panel<S, 1, Accumulate>(a, sa, b + p * S::width, ldb, c + p * S::width, ldc, m, depth);
}
