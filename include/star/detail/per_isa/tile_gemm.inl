// The register-blocked matrix product of the attention kernel, written once over a product
// atom `P` (below, and simd/avx512_bf16_atom.hpp). Included by kernels.hpp into one namespace
// per path, inside its target region.
//
// `C (+)= A * B` with B and C row-major and their rows a whole number of vectors wide; A is
// read one element at a time (broadcast), so it may be stored either way: element `(r, k)`
// is at `a[r * a_row + k * a_col]`. A block of `rows x packets` accumulators stays in
// registers while one row of B's panel is loaded per step: no operand is packed, which is
// why this beats a general GEMM on attention-tile shapes (1.5x Eigen's, measured).
//
// A product atom names what one step multiplies. `FmaProduct` takes one float of A and a
// vector of B widened to float; a bf16 dot-product atom takes a pair of bf16 of A (two
// steps of depth in one 32-bit element) and a vector of such pairs of B, and adds both
// products into each float lane. C is float either way.

/// One step of the product on float operands: `acc += a * b`, B widened as it is loaded.
template <class S, class B>
struct FmaProduct {
    using simd = S;
    using a_type = float;
    using b_type = B;
    static typename S::reg load_b(const B* p) noexcept { return S::load(p); }
    static typename S::reg broadcast_a(float a) noexcept { return S::broadcast(a); }
    static typename S::reg madd(typename S::reg a, typename S::reg b, typename S::reg acc) noexcept
    {
        return S::fma(a, b, acc);
    }
};

/// Accumulators: 8 x 3 vectors + 3 for B fit AVX-512's 32 registers; 6 x 2 + 2 fit the 16
/// of AVX2 and SSE.
template <class S>
inline constexpr int gemm_rows = S::width >= 16 ? 8 : 6;
template <class S>
inline constexpr int gemm_packets = S::width >= 16 ? 3 : 2;

template <class P, int Rows, int Packets, bool Accumulate, bool Scaled>
inline void gemm_micro_tile(const typename P::a_type* a, Strides sa, const typename P::b_type* b,
                            index ldb, float* c, index ldc, index depth, float scale,
                            const float* row_scales) noexcept
{
    using S = typename P::simd;
    typename S::reg acc[std::size_t{Rows}][std::size_t{Packets}];
    // clang-format off
    STAR_UNROLL
    for (int r = 0; r < Rows; ++r)
        STAR_UNROLL
        for (int p = 0; p < Packets; ++p)
            acc[r][p] = !Accumulate        ? S::broadcast(0.0f)
                        : row_scales == nullptr ? S::load(c + r * ldc + p * S::width)
                        : S::mul(S::load(c + r * ldc + p * S::width), S::broadcast(row_scales[r]));
    // clang-format on
    for (index kk = 0; kk < depth; ++kk) {
        decltype(P::load_b(b)) row[std::size_t{Packets}];
        STAR_UNROLL
        for (int p = 0; p < Packets; ++p)
            row[p] = P::load_b(b + kk * ldb + p * S::width);
        STAR_UNROLL
        for (int r = 0; r < Rows; ++r) {
            const auto broadcast = P::broadcast_a(a[r * sa.row + kk * sa.col]);
            STAR_UNROLL
            for (int p = 0; p < Packets; ++p)
                acc[r][p] = P::madd(broadcast, row[p], acc[r][p]);
        }
    }
    // clang-format off
    STAR_UNROLL
    for (int r = 0; r < Rows; ++r)
        STAR_UNROLL
        for (int p = 0; p < Packets; ++p)
            S::store(c + r * ldc + p * S::width,
                     Scaled ? S::mul(acc[r][p], S::broadcast(scale)) : acc[r][p]);
    // clang-format on
}

/// The last `m - i` rows of a panel, fewer than a micro-tile's, in blocks of `Rows`, then
/// of half as many, down to 1. Three shapes cover every remainder (7 = 4 + 2 + 1) where a
/// shape per remainder would be 5 to 7: every shape is compiled for every path, B type and
/// mode, in every translation unit (about a tenth of a test file's machine code), and the
/// remainder is only ever the last rows of a call.
template <class P, int Rows, int Packets, bool Accumulate, bool Scaled>
inline void gemm_remainder_rows(index i, index m, const typename P::a_type* a, Strides sa,
                                const typename P::b_type* b, index ldb, float* c, index ldc,
                                index depth, float scale, const float* row_scales) noexcept
{
    if constexpr (Rows > 0) {
        if (m - i >= Rows) {
            gemm_micro_tile<P, Rows, Packets, Accumulate, Scaled>(
                a + i * sa.row, sa, b, ldb, c + i * ldc, ldc, depth, scale,
                row_scales == nullptr ? nullptr : row_scales + i);
            i += Rows;
        }
        gemm_remainder_rows<P, Rows / 2, Packets, Accumulate, Scaled>(i, m, a, sa, b, ldb, c, ldc,
                                                                      depth, scale, row_scales);
    }
}

template <class P, int Packets, bool Accumulate, bool Scaled>
inline void gemm_panel(const typename P::a_type* a, Strides sa, const typename P::b_type* b,
                       index ldb, float* c, index ldc, index m, index depth, float scale,
                       const float* row_scales) noexcept
{
    constexpr int rows = gemm_rows<typename P::simd>;
    static_assert(rows <= 8, "the remainder takes blocks of 4, 2 and 1 rows");
    index i = 0;
    for (; i + rows <= m; i += rows)
        gemm_micro_tile<P, rows, Packets, Accumulate, Scaled>(
            a + i * sa.row, sa, b, ldb, c + i * ldc, ldc, depth, scale,
            row_scales == nullptr ? nullptr : row_scales + i);
    gemm_remainder_rows<P, 4, Packets, Accumulate, Scaled>(i, m, a, sa, b, ldb, c, ldc, depth,
                                                           scale, row_scales);
}

/// `C[m x n] = A[m x depth] * B[depth x n]` (or `+=` when `Accumulate`) in steps of product
/// atom `P`; B and C row-major with row strides `ldb`, `ldc` (in their own elements); `n`
/// must be a multiple of the vector width. When `Scaled` (and not `Accumulate`), C is
/// `scale * (A * B)`, scaled as it is stored. When accumulating with `row_scales`, row `r`
/// of C is multiplied by `row_scales[r]` as it is loaded, before the sum: the online
/// softmax's rescaling of the output, without a pass of its own over C.
template <class P, bool Accumulate, bool Scaled = false>
STAR_OUT_OF_LINE inline void tile_product(const typename P::a_type* a, Strides sa,
                                          const typename P::b_type* b, index ldb, float* c,
                                          index ldc, index m, index n, index depth,
                                          float scale = 1.0f,
                                          const float* row_scales = nullptr) noexcept
{
    static_assert(!(Accumulate && Scaled), "only a product stored afresh is scaled");
    using S = typename P::simd;
    const index packets = n / S::width;
    index p = 0;
    // Column panels outermost: one panel of B (depth x 3 vectors) stays in L1 while every
    // row block of A streams past it.
    for (; p + gemm_packets<S> <= packets; p += gemm_packets<S>)
        gemm_panel<P, gemm_packets<S>, Accumulate, Scaled>(
            a, sa, b + p * S::width, ldb, c + p * S::width, ldc, m, depth, scale, row_scales);
    if (packets - p == 2)
        gemm_panel<P, 2, Accumulate, Scaled>(a, sa, b + p * S::width, ldb, c + p * S::width, ldc, m,
                                             depth, scale, row_scales);
    else if (packets - p == 1)
        gemm_panel<P, 1, Accumulate, Scaled>(a, sa, b + p * S::width, ldb, c + p * S::width, ldc, m,
                                             depth, scale, row_scales);
}

/// `tile_product` on float A: B may be float, bf16 or half, widened as it is loaded: worth
/// it where each row of B is loaded about once (a few rows of A), not where many row blocks
/// of A load it again.
template <class S, bool Accumulate, class B>
inline void tile_gemm(const float* a, Strides sa, const B* b, index ldb, float* c, index ldc,
                      index m, index n, index depth, const float* row_scales = nullptr) noexcept
{
    tile_product<FmaProduct<S, B>, Accumulate>(a, sa, b, ldb, c, ldc, m, n, depth, 1.0f, row_scales);
}
