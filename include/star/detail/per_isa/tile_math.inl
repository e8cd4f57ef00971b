// How the tile kernel forms its two products, written once over a float atom `S`: the
// float tile math, which widens K and V to float and multiplies in float. Included by
// kernels.hpp into one namespace per path, inside that path's target region, after
// tile_gemm.inl; per_isa/bf16_tile_math.inl is the other kind. A path names the one its
// kernel uses for each K/V type (`TileMath<KV>`, kernels.hpp).
//
// A tile math holds the staged copies of one query tile and one K/V tile, and gives the
// kernel three steps: stage the queries, compute a tile's scores `S^T = K Q^T`
// into a float tile `[keys, columns]`, and add `P V` into a float accumulator from the
// probabilities the online softmax hands it (store_probabilities). The softmax between
// them is float whatever the math, and the scores leave the first product scaled.

/// Rows of the scratch tiles that a product walks down (Q^T, the scores, the values) are
/// one cache line longer than their data: widths are powers of two, and rows 512 B or 1 KB
/// apart would fall in 8 or 4 of L1's 64 sets, too few to hold a column panel of 128 rows.
inline constexpr index row_skew = 64 / sizeof(float);

/// Rows `[0, rows)` of `d` elements, `src_stride` apart, widened to float into `dst`,
/// `dst_stride` apart: whole vectors through the atom's converting load, the rest of a row
/// (fewer than a vector's width) one by one.
template <class S, class KV>
void widen_rows(const KV* src, index src_stride, index rows, index d, float* dst,
                index dst_stride) noexcept
{
    for (index j = 0; j < rows; ++j) {
        const KV* from = src + j * src_stride;
        float* to = dst + j * dst_stride;
        index c = 0;
        for (; c + S::width <= d; c += S::width)
            S::store(to + c, S::load(from + c));
        for (; c < d; ++c)
            to[c] = static_cast<float>(from[c]);
    }
}

/// Rows of keys `[first, first + count)` of `head` of `source`, widened into `dst` as
/// widen_rows does: one call per run of the source, so a tile of 128 keys over pages of 16
/// is 8 calls, and a contiguous source one.
template <class S, class KV>
void widen_source(const KVPages<KV>& source, index head, index first, index count, float* dst,
                  index dst_stride) noexcept
{
    const index head_offset = head * source.layout().head_stride;
    for (index j = 0; j < count;) {
        const auto run = source.run(first + j, first + count);
        widen_rows<S>(run.first + head_offset, run.token_stride, run.length, source.head_dim(),
                      dst + j * dst_stride, dst_stride);
        j += run.length;
    }
}

/// The decode kernel's dot product of a query row and a key row (decode_kernel.inl) on
/// float: the query staged as float, scaled, and the key widened to float as it is loaded.
template <class S, class KV>
struct FmaDot {
    using query_type = float;
    /// Elements of the rows one madd takes.
    static constexpr index step = S::width;

    /// A query row as madd reads it: `scale * src`.
    static void stage(const float* src, index d, float scale, float* dst) noexcept
    {
        for (index c = 0; c < d; ++c)
            dst[c] = scale * src[c];
    }
    /// `acc` plus the products of `step` elements of a query row and of a key row, summed
    /// into its lanes.
    static typename S::reg madd(const float* q, const KV* k, typename S::reg acc) noexcept
    {
        return S::fma(S::load(q), S::load(k), acc);
    }
    /// The score of a finished dot product: the query was scaled as it was staged.
    static float score(float dot, float) noexcept { return dot; }

    /// A decode block's value product on float, as the float tile math forms it: the
    /// probabilities left in place of the scores, V widened as it is loaded. V is read
    /// where it lies, not copied as the tile math copies it: a value row serves only the
    /// few query rows of its KV head, so a copy would cost more than it saves. A head_dim
    /// that is not a whole number of vectors is widened into a block of its own first.
    class Values {
    public:
        Values(index, index block_keys, index d)
            : head_dim_(d), padded_dim_(round_up(d, S::width)),
              widened_(d == padded_dim_ ? 0 : static_cast<std::size_t>(block_keys * padded_dim_),
                       0.0f)
        {
        }

        static constexpr bool probabilities_in_place = true;
        /// As FloatTileMath::store_probabilities: in place of the scores.
        static void store_probabilities(float* scores, index ld, index j, index c,
                                        typename S::reg even, typename S::reg odd) noexcept
        {
            S::store(scores + j * ld + c, even);
            S::store(scores + (j + 1) * ld + c, odd);
        }

        /// `acc[r] = rescale[r] * acc[r] + sum_j p[j * ld + column + r] * value_j` for rows
        /// `r < rows` (`padded_dim` apart): the block's keys in `pieces[0, count)` (each
        /// with `first`, `keys`, `v_rows` and `v_stride`: its value rows, `head_offset`
        /// further on for the KV head), the probabilities where store_probabilities left
        /// them in `scores`.
        template <class Piece>
        void add(const Piece* pieces, index count, index head_offset, const float* scores, index ld,
                 index column, index rows, const float* rescale, float* acc) noexcept
        {
            if (widened_.empty()) {
                // Key by key from what `acc` holds, so the pieces give the same bits as one.
                for (index p = 0; p < count; ++p)
                    tile_gemm<S, true>(scores + pieces[p].first * ld + column, Strides{1, ld},
                                       pieces[p].v_rows + head_offset, pieces[p].v_stride, acc,
                                       padded_dim_, rows, padded_dim_, pieces[p].keys,
                                       p == 0 ? rescale : nullptr);
                return;
            }
            index keys = 0;
            for (index p = 0; p < count; ++p) {
                widen_rows<S>(pieces[p].v_rows + head_offset, pieces[p].v_stride, pieces[p].keys,
                              head_dim_, widened_.data() + pieces[p].first * padded_dim_,
                              padded_dim_);
                keys = pieces[p].first + pieces[p].keys;
            }
            tile_gemm<S, true>(scores + column, Strides{1, ld}, widened_.data(), padded_dim_, acc,
                               padded_dim_, rows, padded_dim_, keys, rescale);
        }

        /// The accumulator rows are in column order already.
        void finish(float*, index) const noexcept {}

        /// Memory held, in bytes.
        [[nodiscard]] std::size_t bytes() const noexcept { return sizeof(float) * widened_.size(); }

    private:
        index head_dim_;
        index padded_dim_;
        scratch<float> widened_; // [block keys, padded_dim] when V is not read in place
    };
};

/// Float products: Q^T and K and V tiles copied as float. Keys and values are copied (bf16
/// and half widened) even when they are float: one KV head's rows lie `kv_heads * d` apart
/// (4 KB for 8 heads of 128 floats), so a tile's rows share a few L1 sets, and the
/// products read each of them many times (once per column panel of Q^T, once per block of
/// query rows). With row_skew: 1.2x faster float prefill on Zen 3.
template <class S, class KV>
class FloatTileMath {
public:
    /// How the decode kernel multiplies: as this math does, so that a call's result does not
    /// depend on which of the two kernels its shape takes.
    using decode_dot = FmaDot<S, KV>;

    FloatTileMath(index tile_rows, index tile_keys, index d)
        : head_dim_(d), padded_dim_(round_up(d, S::width)), values_ld_(padded_dim_ + row_skew),
          queries_t_(static_cast<std::size_t>(d * (round_up(tile_rows, S::width) + row_skew))),
          query_block_(static_cast<std::size_t>(S::width * d)),
          keys_(static_cast<std::size_t>(tile_keys * d)),
          values_(static_cast<std::size_t>(tile_keys * values_ld_), 0.0f)
    {
    }

    /// Q^T `[head_dim, ld]`, scaled: column `r < rows` from `query_row(r)`, the columns up
    /// to the next whole vector 0 (their results are never read).
    template <class QueryRow>
    void stage_queries(const QueryRow& query_row, index rows, index ld, float scale)
    {
        // A vector's width of rows at a time, scaled into a block first: the lines of Q^T
        // that the block fills then stay in L1 while it is transposed into them. Row by row,
        // each element of a row went to another line of a Q^T larger than L1.
        for (index first = 0; first < rows; first += S::width) {
            for (index r = 0; r < S::width; ++r) {
                float* row = query_block_.data() + r * head_dim_;
                if (first + r < rows) {
                    const float* src = query_row(first + r);
                    for (index c = 0; c < head_dim_; ++c)
                        row[c] = scale * src[c];
                } else {
                    std::fill_n(row, head_dim_, 0.0f);
                }
            }
            for (index c = 0; c < head_dim_; ++c)
                for (index r = 0; r < S::width; ++r)
                    queries_t_[static_cast<std::size_t>(c * ld + first + r)] =
                        query_block_[static_cast<std::size_t>(r * head_dim_ + c)];
        }
    }

    /// `scores[j * ld + c]` = key `first + j` of `head` of `k` . staged query `c`, for
    /// `j < count`, `c < columns`.
    void scores(const KVPages<KV>& k, index head, index first, index count, float* scores, index ld,
                index columns)
    {
        widen_source<S>(k, head, first, count, keys_.data(), head_dim_);
        tile_gemm<S, false>(keys_.data(), Strides{head_dim_, 1}, queries_t_.data(), ld, scores, ld,
                            count, columns, head_dim_);
    }

    /// Where the online softmax leaves the probabilities of keys `j` and `j + 1` (0 past the
    /// tile's last: the score tile has a row past an odd count) for columns `[c, c + width)`:
    /// here, in place of their scores.
    /// The softmax stores the probabilities over the scores (see OnlineSoftmax::absorb).
    static constexpr bool probabilities_in_place = true;
    static void store_probabilities(float* scores, index ld, index j, index c, typename S::reg even,
                                    typename S::reg odd) noexcept
    {
        S::store(scores + j * ld + c, even);
        S::store(scores + (j + 1) * ld + c, odd);
    }

    /// `accumulator[r] = rescale[r] * accumulator[r] + sum_j p[j * ld + r] * value_j` for
    /// rows `r < rows` (`padded_dim` apart) and values `first + j`, `j < count`, of `head`
    /// of `v`, with the probabilities `p` store_probabilities left in `scores`.
    void add_values(const KVPages<KV>& v, index head, index first, index count,
                    const float* probabilities, index ld, index rows, const float* rescale,
                    float* accumulator)
    {
        widen_source<S>(v, head, first, count, values_.data(), values_ld_);
        tile_gemm<S, true>(probabilities, Strides{1, ld}, values_.data(), values_ld_, accumulator,
                           padded_dim_, rows, padded_dim_, count, rescale);
    }

    /// Memory held, in bytes.
    [[nodiscard]] std::size_t bytes() const noexcept
    {
        return sizeof(float) *
               (queries_t_.size() + query_block_.size() + keys_.size() + values_.size());
    }

private:
    index head_dim_;
    index padded_dim_;           // head_dim rounded up to a vector
    index values_ld_;            // padded_dim + row_skew
    scratch<float> queries_t_;   // [head_dim, query rows rounded up to a vector + skew], scaled
    scratch<float> query_block_; // [vector width, head_dim]: rows being staged, scaled
    scratch<float> keys_;        // [keys, head_dim]
    scratch<float> values_;      // [keys, values_ld], padded with zeros
};
