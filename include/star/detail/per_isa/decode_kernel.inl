// The decode kernel: a few query rows (a decode step, a short speculative query) against a
// long cache, written once over a float atom `S`. Included by kernels.hpp into one
// namespace per path, inside that path's target region, after tile_kernel.inl.
//
// A decode step reads the whole cache to do two flops per byte, so it is a matter of
// reading memory at its speed. The tile kernel does not: it runs one SIMD lane per query
// row, so a step with 4 rows per KV head leaves half an AVX2 vector idle (three quarters
// of an AVX-512 one), and it walks one KV head at a time through a cache laid out
// `[token, head, d]`, reading 1/Hkv of each token's memory. Here vectors run along
// head_dim instead, a task takes a slice of the cache's tokens for every KV head at once
// (so its memory is read front to back), and bf16/half K and V are widened as they are
// loaded. A block's scores are stored as the tile kernel stores its tile, `[key, row]`,
// with the rows of every KV head side by side, so the tile kernel's online softmax and
// transforms serve it as they are, one SIMD lane per query row.

/// How a decode step multiplies a query row by a key row: as the path's tile math does
/// (`FmaDot` in tile_math.inl, `Bf16Dot` in bf16_tile_math.inl).
template <class KV>
using DecodeDot = typename TileMath<KV>::decode_dot;
template <class KV>
using DecodeQuery = typename DecodeDot<KV>::query_type;
/// How a decode step adds P x V: as the path's tile math does (FmaDot::Values,
/// Bf16Dot::Values).
template <class KV>
using DecodeValues = typename DecodeDot<KV>::Values;

/// Keys per block: a block's scores for every row of every KV head stay in L1. Each block
/// costs every row a fold into its running max and sum; 64 keys rather than 32 made bf16
/// decode 1.1x-1.3x faster on Zen 5, and 128 no faster than 64.
inline constexpr index decode_block_keys = 64;

/// Register blocking of the scores: `Rows` query rows against one key. Four rows let
/// reduce_add4 finish four sums at once. (Splitting each sum over two accumulators, to have
/// eight chains of fmas in flight rather than four, measured no faster on Zen 5.)
template <class S>
inline constexpr int dot_rows = 4;

/// The head_dim that the scores are compiled for as a constant (that of Llama, Mistral,
/// Qwen and most models): the loop along d then unrolls whole, with no bound to test and no
/// remainder to branch over. Other head_dims take the same code with d read at run time.
/// On Emerald Rapids, one thread, the scores of a decode step in cache took 1.2x-1.3x less
/// time on the avx512 path with d a constant, and the whole step (bench_kernel's
/// decode_cached, where the scores are about 60% of it) 1.04x-1.17x less on both paths.
inline constexpr index dot_fixed_head_dim = 128;

/// How many keys ahead a key step asks for the key rows it will read (1, 2 and 4 measured
/// on Zen 5: the nearest is best; the hardware streams the rest, as the rows come in order).
inline constexpr index keys_ahead = 1;

/// Where the scores of one block come from and go. Token `j`'s key row for KV head `h` is
/// at `keys + j * k_stride + h * k_head_stride`, its value row likewise from `values`; the
/// queries of head `h` are `rows` rows from `queries + h * rows * head_dim`, and the score
/// of key `j` and row `r` of head `h` is at `scores + j * ld + h * rows + r`.
template <class KV>
struct ScoreBlock {
    const DecodeQuery<KV>* queries; // as DecodeDot<KV>::stage leaves them
    const KV* keys;
    const KV* values;
    index k_stride;
    index k_head_stride;
    index v_stride;
    index v_head_stride;
    index heads;
    index rows;
    index head_dim;
    float* scores;
    index ld;
    float scale; // of the scores, for DecodeDot<KV>::score
    /// Elements from a key row to the row to ask for early (0: none, the row asks for
    /// itself, which costs nothing).
    index ahead;
};

/// `scores[r] = q_r . k` for `Rows` query rows (`d` apart) and the key row `k`, where `d`
/// is `D`, or the block's head_dim where `D` is 0:
/// whole vectors multiplied along d, lanes summed at the end. It asks for the key row
/// `block.ahead` further on and for the value row beside its own, so that memory is read
/// while the arithmetic runs rather than when the next loop waits for it.
/// Always inlined: left to itself GCC calls it once per key and head, and the call (saving
/// registers, the accumulators spilled for the reduction) cost bf16 decode 1.15x-1.2x of
/// its time in cache on Zen 5.
template <class S, int Rows, index D, class KV>
[[gnu::always_inline]] inline void dot_micro_tile(const ScoreBlock<KV>& block,
                                                  const DecodeQuery<KV>* q, const KV* k,
                                                  const KV* v, float* scores) noexcept
{
    const index d = D != 0 ? D : block.head_dim;
    typename S::reg acc[std::size_t{Rows}];
    STAR_UNROLL
    for (int r = 0; r < Rows; ++r)
        acc[r] = S::broadcast(0.0f);
    const auto multiply = [&](index c) {
        STAR_UNROLL
        for (int r = 0; r < Rows; ++r)
            acc[r] = DecodeDot<KV>::madd(q + r * d + c, k + c, acc[r]);
    };
    // Whole cache lines first, each with its requests (a line holds one madd's elements of
    // AVX-512 float or of bf16 pairs, two of AVX-512 bf16 widened or of AVX2 float, four of
    // AVX2 bf16 widened), then what is left of d.
    constexpr index step = DecodeDot<KV>::step;
    constexpr index line_vectors = std::max<index>(1, 64 / (step * sizeof(KV)));
    constexpr index line = line_vectors * step;
    index c = 0;
    for (; c + line <= d; c += line) {
        __builtin_prefetch(k + block.ahead + c);
        __builtin_prefetch(v + c);
        STAR_UNROLL
        for (index n = 0; n < line_vectors; ++n)
            multiply(c + n * step);
    }
    for (; c + step <= d; c += step)
        multiply(c);

    float sums[std::size_t{Rows}];
    if constexpr (Rows == 4)
        S::reduce_add4(acc, sums);
    else {
        STAR_UNROLL
        for (int r = 0; r < Rows; ++r)
            sums[r] = S::reduce_add(acc[r]);
    }
    STAR_UNROLL
    for (int r = 0; r < Rows; ++r) {
        for (index t = c; t < d; ++t) // a head_dim that is not a whole number of vectors
            sums[r] += static_cast<float>(q[r * d + t]) * static_cast<float>(k[t]);
        scores[r] = DecodeDot<KV>::score(sums[r], block.scale);
    }
}

/// Key `j` against every row of every head. Heads are the inner loop and keys the outer,
/// so that memory is read in the order it lies, `[token, head, d]`, front to back: only
/// then does the hardware's prefetcher stream it at full speed. Reading a few keys of one
/// head at a time (the rows a few KB apart, then the next head's beside them) held one
/// thread below two thirds of the streaming bandwidth on Zen 5, arithmetic or none.
template <class S, index D, class KV>
inline void dot_key_step(const ScoreBlock<KV>& block, index j) noexcept
{
    constexpr int step = dot_rows<S>;
    const index d = D != 0 ? D : block.head_dim;
    for (index h = 0; h < block.heads; ++h) {
        const DecodeQuery<KV>* q = block.queries + h * block.rows * d;
        const KV* k = block.keys + j * block.k_stride + h * block.k_head_stride;
        const KV* v = block.values + j * block.v_stride + h * block.v_head_stride;
        float* scores = block.scores + j * block.ld + h * block.rows;
        index r = 0;
        for (; r + step <= block.rows; r += step)
            dot_micro_tile<S, step, D>(block, q + r * d, k, v, scores + r);
        const int left = static_cast<int>(block.rows - r);
        q += r * d;
        scores += r;
        // Up to 3 rows left: 2 and 1, two shapes where a shape per remainder would be three.
        if (left >= 2) {
            dot_micro_tile<S, 2, D>(block, q, k, v, scores);
            q += 2 * d;
            scores += 2;
        }
        if (left % 2 == 1)
            dot_micro_tile<S, 1, D>(block, q, k, v, scores);
    }
}

/// The scores of `keys` keys, every row of every head.
template <class S, class KV>
STAR_OUT_OF_LINE inline void dot_scores(const ScoreBlock<KV>& block, index keys) noexcept
{
    static_assert(dot_rows<S> == 4, "dot_key_step finishes up to 3 leftover rows");
    if (block.head_dim == dot_fixed_head_dim)
        for (index j = 0; j < keys; ++j)
            dot_key_step<S, dot_fixed_head_dim>(block, j);
    else
        for (index j = 0; j < keys; ++j)
            dot_key_step<S, 0>(block, j);
}

/// A piece of a decode block that lies within one run of K and one of V: `keys` keys from
/// the block's key `first`, their rows `k_stride` (`v_stride`) apart from `k_rows`
/// (`v_rows`), and `k_run_left` keys left in K's run from the piece's first.
template <class KV>
struct DecodePiece {
    index first;
    index keys;
    const KV* k_rows;
    const KV* v_rows;
    index k_stride;
    index v_stride;
    index k_run_left;
};

/// Scratch memory of one decode task: every KV head's rows at once, as the columns of one
/// score block.
template <class S, class KV>
struct DecodeWorkspace {
    index padded_dim;                 // head_dim rounded up to a vector
    index columns;                    // every KV head's rows, rounded up to a vector
    index ld;                         // of the scores: columns + skew
    scratch<DecodeQuery<KV>> queries; // [kv head, row, head_dim], as DecodeDot<KV>::stage leaves them
    scratch<float> accumulator;       // [kv head, row, padded_dim]
    scratch<float> scores;            // [block keys rounded up to even, ld]; padding columns 0
    scratch<float> query_row;         // [head_dim]: a bf16 query row, widened
    OnlineSoftmax<S> softmax;         // of every column
    DecodeValues<KV> values;
    std::array<DecodePiece<KV>, decode_block_keys + 1> pieces; // the block's, the next's first

    DecodeWorkspace(index kv_heads, index rows_per_head, index d)
        : padded_dim(round_up(d, S::width)), columns(round_up(kv_heads * rows_per_head, S::width)),
          ld(columns + row_skew), queries(static_cast<std::size_t>(kv_heads * rows_per_head * d)),
          accumulator(static_cast<std::size_t>(kv_heads * rows_per_head * padded_dim), 0.0f),
          scores(static_cast<std::size_t>(round_up(decode_block_keys, 2) * ld), 0.0f),
          query_row(static_cast<std::size_t>(d)), values(ld, decode_block_keys, d)
    {
        softmax.reset(columns);
    }

    /// Memory held, in bytes.
    [[nodiscard]] std::size_t bytes() const noexcept
    {
        return sizeof(DecodeQuery<KV>) * queries.size() +
               sizeof(float) * (accumulator.size() + scores.size() + query_row.size()) +
               softmax.bytes() + values.bytes();
    }
};

/// Cuts the block of `count` keys from key `first` into pieces, and adds the first piece
/// of the next block where the job has one, to be asked for ahead. `pieces` has room for
/// `decode_block_keys + 1`. Returns the block's pieces (without the next block's).
template <class KV, class M, class T>
index decode_pieces(const TileJob<KV, M, T>& job, index first, index count,
                    DecodePiece<KV>* pieces) noexcept
{
    index n = 0;
    const auto piece_at = [&](index j, index most) {
        const auto k_run = job.k.run(first + j, job.key_end);
        const auto v_run = job.v.run(first + j, job.key_end);
        return DecodePiece<KV>{j,
                               std::min({most, k_run.length, v_run.length}),
                               k_run.first,
                               v_run.first,
                               k_run.token_stride,
                               v_run.token_stride,
                               k_run.length};
    };
    for (index j = 0; j < count; j += pieces[n - 1].keys)
        pieces[n++] = piece_at(j, count - j);
    if (first + count < job.key_end)
        pieces[n] = piece_at(count, job.key_end - first - count);
    else
        pieces[n].keys = 0;
    return n;
}

/// Asks for the first `keys` key and value rows of `piece`, every head, a cache line at a
/// time: the memory of a page that the stride ahead inside the previous page cannot reach.
template <class KV>
void prefetch_rows(const DecodePiece<KV>& piece, index keys, index heads, index k_head_stride,
                   index v_head_stride, index head_dim) noexcept
{
    constexpr index line = 64 / static_cast<index>(sizeof(KV));
    for (index j = 0; j < std::min(keys, piece.keys); ++j)
        for (index h = 0; h < heads; ++h)
            for (index c = 0; c < head_dim; c += line) {
                __builtin_prefetch(piece.k_rows + j * piece.k_stride + h * k_head_stride + c);
                __builtin_prefetch(piece.v_rows + j * piece.v_stride + h * v_head_stride + c);
            }
}

/// Attention of all of the job's query tokens (a single tile of few rows), every head,
/// against the job's keys that its mask allows, written into the job's output.
template <class S, class KV, class M, class T>
void attend_key_slice(const TileJob<KV, M, T>& job)
{
    const auto& q = job.q;
    const M& mask = job.mask;
    const index q_tokens = q.dimension(0);
    const index q_heads = q.dimension(1);
    const index d = q.dimension(2);
    const index kv_heads = job.k.heads();
    const index group = q_heads / kv_heads;
    const index rows = q_tokens * group;
    const index k_head_stride = job.k.layout().head_stride;
    const index v_head_stride = job.v.layout().head_stride;
    DecodeWorkspace<S, KV> ws(kv_heads, rows, d);

    // Row r of KV head h is query token r / group, head h * group + r % group.
    for (index h = 0; h < kv_heads; ++h)
        for (index r = 0; r < rows; ++r)
            DecodeDot<KV>::stage(
                query_row<S>(q, r / group, h * group + r % group, ws.query_row.data()), d,
                job.scale, ws.queries.data() + (h * rows + r) * d);

    for (index k_first = job.key_begin; k_first < job.key_end; k_first += decode_block_keys) {
        const index k_count = std::min(decode_block_keys, job.key_end - k_first);
        const Coverage coverage = mask.coverage(0, q_tokens, k_first, k_first + k_count);
        if (coverage == Coverage::none)
            continue;
        // A block may span pages: it is read in pieces, each within one run of K and one of
        // V (rows one stride apart), into one block of scores. A contiguous source is one
        // run, so its blocks are one piece each. Cutting blocks at page ends instead would
        // leave pages of 16 tokens with half-filled blocks (1.2x to 1.5x the time).
        const index pieces = decode_pieces(job, k_first, k_count, ws.pieces.data());
        // Scores of every head first, then the values of every head: each loop over the
        // block's memory keeps to one of K and V, and the first asks for the second's rows.
        for (index p = 0; p < pieces; ++p) {
            const DecodePiece<KV>& piece = ws.pieces[static_cast<std::size_t>(p)];
            // Each key asks for the key rows `keys_ahead` further on where the run has them.
            // Where it ends (a page's end), the next piece is elsewhere: its first rows are
            // asked for here, a piece ahead.
            const bool keys_follow = piece.k_run_left - piece.keys >= keys_ahead;
            if (!keys_follow)
                prefetch_rows(ws.pieces[static_cast<std::size_t>(p + 1)], keys_ahead, kv_heads,
                              k_head_stride, v_head_stride, d);
            const ScoreBlock<KV> block{ws.queries.data(),
                                       piece.k_rows,
                                       piece.v_rows,
                                       piece.k_stride,
                                       k_head_stride,
                                       piece.v_stride,
                                       v_head_stride,
                                       kv_heads,
                                       rows,
                                       d,
                                       ws.scores.data() + piece.first * ws.ld,
                                       ws.ld,
                                       job.scale,
                                       keys_follow ? keys_ahead * piece.k_stride : 0};
            dot_scores<S>(block, piece.keys);
        }
        float* scores = ws.scores.data();
        if constexpr (!std::same_as<T, NoTransform>)
            transform_tile<S>(job.transform, TileScores{scores, ws.ld, k_count, kv_heads * rows,
                                                        ws.columns, group, 0, 0, k_first, rows});
        if (coverage == Coverage::partial)
            for (index j = 0; j < k_count; ++j)
                for (index t = 0; t < q_tokens; ++t)
                    if (!mask.visible(t, k_first + j))
                        for (index h = 0; h < kv_heads; ++h)
                            std::fill_n(scores + j * ws.ld + h * rows + t * group, group,
                                        minus_infinity);

        ws.softmax.absorb(scores, ws.ld, k_count, ws.values);

        // O = O * rescale + P V, head by head, with P where the softmax left it.
        for (index h = 0; h < kv_heads; ++h)
            ws.values.add(ws.pieces.data(), pieces, h * v_head_stride, scores, ws.ld, h * rows,
                          rows, ws.softmax.rescale_factors() + h * rows,
                          ws.accumulator.data() + h * rows * ws.padded_dim);
    }

    ws.values.finish(ws.accumulator.data(), kv_heads * rows);
    for (index h = 0; h < kv_heads; ++h)
        for (index r = 0; r < rows; ++r) {
            const index column = h * rows + r;
            write_result_row<S>(job, r / group, h * group + r % group,
                                ws.accumulator.data() + column * ws.padded_dim,
                                ws.softmax.shift(column), ws.softmax.sum(column));
        }
}

/// What one decode task's workspace holds for `rows` query rows per KV head.
template <class S, class KV>
std::size_t decode_workspace_bytes(index kv_heads, index rows, index head_dim)
{
    return DecodeWorkspace<S, KV>(kv_heads, rows, head_dim).bytes();
}
