// The bf16 tile math: the tile kernel's two products in bf16 with float accumulation, on a
// bf16 dot-product atom `P` (simd/avx512_bf16_atom.hpp). Included by kernels.hpp into the
// namespace of a path whose CPU has such an atom, inside its target region, after
// tile_math.inl; that path names it as its `TileMath` for bf16 K/V.
//
// The atom multiplies pairs of bf16 along the product's depth, so each operand is staged
// with two consecutive elements of the depth in each 32-bit element: Q^T (depth: head_dim)
// as pairs of rows, K as it is stored (its rows run along head_dim already), and for P V
// (depth: the tile's keys) the probabilities and the values as pairs of key rows. K and V
// are bf16 already; the queries and the probabilities are rounded to bf16 (nearest even) as
// they are staged. Each product of two bf16 is exact in float and summed in float, so what
// this changes against the float math is those two roundings: docs/accuracy.md, "bf16
// products", says what they cost. The queries are rounded unscaled, as a bf16 Q would come,
// and the scale multiplies the float scores as they are stored.

/// The decode kernel's dot product of a query row and a key row (decode_kernel.inl) on the
/// bf16 dot-product atom `P`: the query rounded to bf16, unscaled, as the tile math rounds
/// it, and the key read as it is stored: consecutive elements of a row are pairs already.
template <class S, class P>
struct Bf16Dot {
    using query_type = Eigen::bfloat16;
    /// Elements of the rows one madd takes: a vector of pairs.
    static constexpr index step = 2 * S::width;

    /// A query row as madd reads it: rounded to bf16, unscaled.
    static void stage(const float* src, index d, float, Eigen::bfloat16* dst) noexcept
    {
        P::round_row(src, d, dst);
    }
    /// `acc` plus the products of `step` elements of a query row and of a key row, exact,
    /// summed two by two into its lanes.
    static typename S::reg madd(const Eigen::bfloat16* q, const Eigen::bfloat16* k,
                                typename S::reg acc) noexcept
    {
        return P::madd(P::load_pairs(q), P::load_pairs(k), acc);
    }
    /// The score of a finished dot product: scaled here, as the tile math scales its scores.
    static float score(float dot, float scale) noexcept { return dot * scale; }

    /// A decode block's value product on bf16 pairs, as the tile math forms it: the
    /// probabilities rounded and paired as the softmax makes them, the value rows paired
    /// key by key (vdpbf16ps sums along the keys). A head_dim of whole 64-column chunks
    /// (the usual 64, 128 and 256) pairs the rows in registers as it multiplies, read
    /// where they lie, its sums in the atom's interleaved order until `finish`; other
    /// head_dims pair them into a block first, in column order, for tile_product.
    class Values {
    public:
        Values(index ld, index block_keys, index d)
            : head_dim_(d), padded_dim_(round_up(d, S::width)), values_ld_(padded_dim_ + row_skew),
              in_registers_(d % chunk == 0),
              probabilities_(static_cast<std::size_t>((block_keys + 1) / 2 * ld)),
              values_(in_registers_ ? 0
                                    : static_cast<std::size_t>((block_keys + 1) / 2 * values_ld_),
                      0U),
              value_rows_(static_cast<std::size_t>(block_keys)),
              zeros_(in_registers_ ? static_cast<std::size_t>(d) : 0, Eigen::bfloat16(0.0f))
        {
        }

        static constexpr bool probabilities_in_place = false;
        /// As Bf16TileMath::store_probabilities.
        void store_probabilities(float*, index ld, index j, index c, typename S::reg even,
                                 typename S::reg odd) noexcept
        {
            P::store(probabilities_.data() + j / 2 * ld + c, P::pair_up(even, odd));
        }

        /// As FmaDot::Values::add, with the probabilities store_probabilities paired.
        template <class Piece>
        void add(const Piece* pieces, index count, index head_offset, const float*, index ld,
                 index column, index rows, const float* rescale, float* acc) noexcept
        {
            index keys = 0;
            for (index p = 0; p < count; ++p) {
                for (index i = 0; i < pieces[p].keys; ++i)
                    value_rows_[static_cast<std::size_t>(pieces[p].first + i)] =
                        pieces[p].v_rows + head_offset + i * pieces[p].v_stride;
                keys = pieces[p].first + pieces[p].keys;
            }
            const index pairs = (keys + 1) / 2;
            if (in_registers_) {
                index r = 0;
                for (; r + 4 <= rows; r += 4)
                    add_rows<4>(probabilities_.data() + column + r, ld, keys, rescale + r,
                                acc + r * padded_dim_);
                if (rows - r >= 2) {
                    add_rows<2>(probabilities_.data() + column + r, ld, keys, rescale + r,
                                acc + r * padded_dim_);
                    r += 2;
                }
                if (r < rows)
                    add_rows<1>(probabilities_.data() + column + r, ld, keys, rescale + r,
                                acc + r * padded_dim_);
                return;
            }
            for (index t = 0; t < pairs; ++t) // the odd key out pairs with zeros
                P::pair_rows(value_rows_[static_cast<std::size_t>(2 * t)],
                             2 * t + 1 < keys ? value_rows_[static_cast<std::size_t>(2 * t + 1)]
                                              : nullptr,
                             head_dim_, values_.data() + t * values_ld_, padded_dim_);
            tile_product<P, true>(probabilities_.data() + column, Strides{1, ld}, values_.data(),
                                  values_ld_, acc, padded_dim_, rows, padded_dim_, pairs, 1.0f,
                                  rescale);
        }

        /// Puts the `rows` accumulator rows at `acc` (`padded_dim` apart) in column order,
        /// once every block is added.
        void finish(float* acc, index rows) const noexcept
        {
            if (in_registers_)
                for (index r = 0; r < rows; ++r)
                    for (index c = 0; c < head_dim_; c += chunk / 2)
                        P::restore_order(acc + r * padded_dim_ + c);
        }

        /// Memory held, in bytes.
        [[nodiscard]] std::size_t bytes() const noexcept
        {
            return sizeof(bf16_pair) * (probabilities_.size() + values_.size()) +
                   sizeof(const Eigen::bfloat16*) * value_rows_.size() +
                   sizeof(Eigen::bfloat16) * zeros_.size();
        }

    private:
        /// Columns one step of add_rows multiplies: two `interleave`s, four vectors of sums.
        static constexpr index chunk = 4 * S::width;

        /// `acc[r] = rescale[r] * acc[r] + sum_t p[r + t * ld] . pair_t` for `Rows` rows,
        /// the pairs made from value_rows_ in registers, a chunk of columns at a time.
        template <int Rows>
        void add_rows(const bf16_pair* p, index ld, index keys, const float* rescale,
                      float* acc) const noexcept
        {
            const index pairs = (keys + 1) / 2;
            for (index c = 0; c < head_dim_; c += chunk) {
                typename S::reg sums[std::size_t{Rows}][4];
                STAR_UNROLL
                for (int r = 0; r < Rows; ++r) {
                    const auto factor = S::broadcast(rescale[r]);
                    STAR_UNROLL
                    for (int v = 0; v < 4; ++v)
                        sums[r][v] =
                            S::mul(S::load(acc + r * padded_dim_ + c + v * S::width), factor);
                }
                for (index t = 0; t < pairs; ++t) {
                    const Eigen::bfloat16* even = value_rows_[static_cast<std::size_t>(2 * t)] + c;
                    const Eigen::bfloat16* odd =
                        2 * t + 1 < keys ? value_rows_[static_cast<std::size_t>(2 * t + 1)] + c
                                         : zeros_.data() + c; // the odd key out
                    decltype(P::broadcast_a(0)) values[4];
                    P::interleave(even, odd, values[0], values[1]);
                    P::interleave(even + chunk / 2, odd + chunk / 2, values[2], values[3]);
                    STAR_UNROLL
                    for (int r = 0; r < Rows; ++r) {
                        const auto probability = P::broadcast_a(p[r + t * ld]);
                        STAR_UNROLL
                        for (int v = 0; v < 4; ++v)
                            sums[r][v] = P::madd(probability, values[v], sums[r][v]);
                    }
                }
                // clang-format off
                STAR_UNROLL
                for (int r = 0; r < Rows; ++r)
                    STAR_UNROLL
                    for (int v = 0; v < 4; ++v)
                        S::store(acc + r * padded_dim_ + c + v * S::width, sums[r][v]);
                // clang-format on
            }
        }

        index head_dim_;
        index padded_dim_;
        index values_ld_; // padded_dim + row_skew
        bool in_registers_;
        scratch<bf16_pair> probabilities_; // [block keys / 2 rounded up, ld]
        scratch<bf16_pair> values_; // [block keys / 2 rounded up, values_ld], zero padded, or none
        std::vector<const Eigen::bfloat16*> value_rows_; // of the block's keys, for the head
        scratch<Eigen::bfloat16> zeros_;                 // [head_dim]: the odd key out's partner
    };
};

/// Tile products of bf16 K/V on the bf16 dot-product atom `P`.
template <class S, class P>
class Bf16TileMath {
public:
    /// How the decode kernel multiplies: as this math does (see FloatTileMath).
    using decode_dot = Bf16Dot<S, P>;

    Bf16TileMath(index tile_rows, index tile_keys, index d)
        : head_dim_(d), depth_pairs_((d + 1) / 2), padded_dim_(round_up(d, S::width)),
          values_ld_(padded_dim_ + row_skew),
          queries_(
              static_cast<std::size_t>(depth_pairs_ * (round_up(tile_rows, S::width) + row_skew))),
          keys_(static_cast<std::size_t>(tile_keys * depth_pairs_), 0U),
          values_(static_cast<std::size_t>((tile_keys + 1) / 2 * values_ld_), 0U),
          probabilities_(static_cast<std::size_t>((tile_keys + 1) / 2 *
                                                  (round_up(tile_rows, S::width) + row_skew))),
          value_rows_(static_cast<std::size_t>(tile_keys)),
          query_block_(static_cast<std::size_t>(S::width * 2 * depth_pairs_), Eigen::bfloat16(0.0f))
    {
    }

    /// Q^T as `[head_dim / 2, ld]` pairs rounded to bf16: column `r < rows` from
    /// `query_row(r)`, the columns up to the next whole vector 0 (their results are never
    /// read). The scores are multiplied by `scale`.
    template <class QueryRow>
    void stage_queries(const QueryRow& query_row, index rows, index ld, float scale)
    {
        scale_ = scale;
        // A vector's width of rows at a time, rounded in whole vectors into a block, then
        // transposed a pair at a time (an odd head_dim's last pair has the 0 the constructor
        // left in each row), so that the lines of Q^T the block fills stay in L1 meanwhile
        // (as FloatTileMath::stage_queries).
        const index row_length = 2 * depth_pairs_;
        for (index first = 0; first < rows; first += S::width) {
            for (index r = 0; r < S::width; ++r) {
                Eigen::bfloat16* row = query_block_.data() + r * row_length;
                if (first + r < rows)
                    P::round_row(query_row(first + r), head_dim_, row);
                else
                    std::fill_n(row, row_length, Eigen::bfloat16(0.0f));
            }
            for (index t = 0; t < depth_pairs_; ++t)
                for (index r = 0; r < S::width; ++r)
                    std::memcpy(&queries_[static_cast<std::size_t>(t * ld + first + r)],
                                query_block_.data() + r * row_length + 2 * t, sizeof(bf16_pair));
        }
    }

    /// As FloatTileMath::scores.
    void scores(const KVPages<Eigen::bfloat16>& k, index head, index first, index count,
                float* scores, index ld, index columns)
    {
        // Key rows copied whole (an odd head_dim leaves its last pair's upper half 0, from
        // the constructor): a KV head's rows lie far apart in the cache (see FloatTileMath).
        const index head_offset = head * k.layout().head_stride;
        for (index j = 0; j < count;) {
            const auto run = k.run(first + j, first + count);
            for (index i = 0; i < run.length; ++i)
                std::memcpy(keys_.data() + (j + i) * depth_pairs_,
                            run.first + head_offset + i * run.token_stride,
                            sizeof(Eigen::bfloat16) * static_cast<std::size_t>(head_dim_));
            j += run.length;
        }
        tile_product<P, false, true>(keys_.data(), Strides{depth_pairs_, 1}, queries_.data(), ld,
                                     scores, ld, count, columns, depth_pairs_, scale_);
    }

    /// Where the online softmax leaves the probabilities of keys `j` and `j + 1` for columns
    /// `[c, c + width)`: rounded and paired for the value product, as it makes them (pairing
    /// them in a pass of its own over the score tile made the bf16 prefill about 4% slower).
    void store_probabilities(float*, index ld, index j, index c, typename S::reg even,
                             typename S::reg odd) noexcept
    {
        P::store(probabilities_.data() + j / 2 * ld + c, P::pair_up(even, odd));
    }
    /// The scores stay as they are: the softmax may take a tile in one pass.
    static constexpr bool probabilities_in_place = false;

    /// As FloatTileMath::add_values, with the probabilities store_probabilities paired.
    void add_values(const KVPages<Eigen::bfloat16>& v, index head, index first, index count,
                    const float*, index ld, index rows, const float* rescale, float* accumulator)
    {
        const index head_offset = head * v.layout().head_stride;
        for (index j = 0; j < count;) {
            const auto run = v.run(first + j, first + count);
            for (index i = 0; i < run.length; ++i)
                value_rows_[static_cast<std::size_t>(j + i)] =
                    run.first + head_offset + i * run.token_stride;
            j += run.length;
        }
        const index pairs = (count + 1) / 2;
        for (index t = 0; t < pairs; ++t) {
            const bool whole = 2 * t + 1 < count; // else the odd key out pairs with zeros
            const auto* even = value_rows_[static_cast<std::size_t>(2 * t)];
            const auto* odd = whole ? value_rows_[static_cast<std::size_t>(2 * t + 1)] : nullptr;
            P::pair_rows(even, odd, head_dim_, values_.data() + t * values_ld_, padded_dim_);
        }
        tile_product<P, true>(probabilities_.data(), Strides{1, ld}, values_.data(), values_ld_,
                              accumulator, padded_dim_, rows, padded_dim_, pairs, 1.0f, rescale);
    }

    /// Memory held, in bytes.
    [[nodiscard]] std::size_t bytes() const noexcept
    {
        return sizeof(bf16_pair) *
                   (queries_.size() + keys_.size() + values_.size() + probabilities_.size()) +
               sizeof(const Eigen::bfloat16*) * value_rows_.size() +
               sizeof(Eigen::bfloat16) * query_block_.size();
    }

private:
    index head_dim_;
    index depth_pairs_;                // head_dim / 2, rounded up
    index padded_dim_;                 // head_dim rounded up to a vector
    index values_ld_;                  // padded_dim + row_skew
    float scale_ = 1.0f;               // of the scores
    scratch<bf16_pair> queries_;       // [depth_pairs, query rows rounded up to a vector + skew]
    scratch<bf16_pair> keys_;          // [keys, depth_pairs]
    scratch<bf16_pair> values_;        // [tile keys / 2 rounded up, values_ld], padded with zeros
    scratch<bf16_pair> probabilities_; // [tile keys / 2 rounded up, query rows rounded up + skew]
    std::vector<const Eigen::bfloat16*> value_rows_; // of the tile's keys
    scratch<Eigen::bfloat16> query_block_; // [vector width, head_dim rounded up to even]: rows
                                           // being staged, rounded
};
