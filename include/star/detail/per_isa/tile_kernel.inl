// The tiled attention kernel (FlashAttention-style), written once over a float atom `S`.
// Included by kernels.hpp into one namespace per path, inside that path's target region,
// after the path has named its tile math (`TileMath<KV>`, per_isa/tile_math.inl).
//
// For one KV head and a tile of query tokens, the query heads that share that KV head are
// stacked into one block of rows, so each K/V tile is staged once for all of them. Scores
// come from the tile math's first product, the softmax is online, and the value product is
// its second, into a float accumulator. Nothing of size `Lq x Lk` is ever allocated.

/// Scratch memory of one worker: sized once per task, reused for every tile. The score
/// tile is stored transposed, `[keys, queries]`, so the softmax runs one SIMD lane per
/// query and the float products need no packing of K or of the probabilities.
template <class S, class KV>
struct Workspace {
    index padded_dim;        // head_dim rounded up to a vector
    scratch<float> scores_t; // [keys rounded up to even, query rows rounded up to a vector + skew]
    scratch<float> accumulator; // [rows, padded_dim]
    scratch<float> query_row;   // [head_dim]: a bf16 query row, widened
    OnlineSoftmax<S> softmax;
    TileMath<KV> math; // the staged Q, K and V, and the products

    Workspace(index tile_rows, index tile_keys, index d)
        : padded_dim(round_up(d, S::width)),
          scores_t(static_cast<std::size_t>(round_up(tile_keys, 2) *
                                            (round_up(tile_rows, S::width) + row_skew))),
          accumulator(static_cast<std::size_t>(tile_rows * padded_dim)),
          query_row(static_cast<std::size_t>(d)), math(tile_rows, tile_keys, d)
    {
    }

    /// Memory held, in bytes.
    [[nodiscard]] std::size_t bytes() const noexcept
    {
        return sizeof(float) * (scores_t.size() + accumulator.size() + query_row.size()) +
               softmax.bytes() + math.bytes();
    }
};

/// Query row `token`, `head` as float: in place, or a bf16 row widened into `buffer` (room
/// for head_dim floats) through the atom's converting load.
template <class S>
const float* query_row(const Queries& q, index token, index head, float* buffer) noexcept
{
    if (const float* row = q.float_row(token, head))
        return row;
    widen_rows<S>(q.bf16_row(token, head), 0, 1, q.dimension(2), buffer, 0);
    return buffer;
}

/// Row `(token, head)` of the job's output and LSE, as write_row (tile_job.hpp) writes it,
/// a float output row divided in whole vectors: the same bits (a division is correctly
/// rounded either way), where write_row's scalar loop took 4% of a bf16 prefill.
template <class S, class KV, class M, class T>
void write_result_row(const TileJob<KV, M, T>& job, index token, index head, const float* acc,
                      float shift, float sum)
{
    float* out = job.out.float_row(token, head);
    if (out == nullptr || !(sum > 0.0f)) {
        write_row(job, token, head, acc, shift, sum);
        return;
    }
    const index d = job.q.dimension(2);
    const auto divisor = S::broadcast(sum);
    const auto zero = S::broadcast(0.0f);
    auto not_finite = zero; // stays 0 unless a value is infinite or NaN, which times 0 is NaN
    index c = 0;
    for (; c + S::width <= d; c += S::width) {
        const auto value = S::div(S::load(acc + c), divisor);
        S::store(out + c, value);
        not_finite = S::fma(value, zero, not_finite);
    }
    bool finite = S::reduce_add(not_finite) == 0.0f;
    for (; c < d; ++c) {
        out[c] = acc[c] / sum;
        finite &= std::isfinite(out[c]);
    }
    if (!finite)
        overflow(token, head, "output", job.out.element_name());
    job.out.lse(token, head) = shift + std::log(sum);
}

/// Attention of query tokens `[q_first, q_first + q_count)` of the heads sharing `kv_head`
/// against the job's keys that its mask allows, written into the job's output.
template <class S, class KV, class M, class T>
void attend_query_tile(const TileJob<KV, M, T>& job, index kv_head, index q_first, index q_count,
                       Workspace<S, KV>& ws)
{
    const auto& q = job.q;
    const auto& k = job.k;
    const auto& v = job.v;
    const M& mask = job.mask;
    const index q_heads = q.dimension(1);
    const index kv_heads = k.heads();
    const index group = q_heads / kv_heads;
    const index rows = q_count * group;
    const index columns = round_up(rows, S::width); // a short last tile or a decode step is narrow
    const index ld = columns + row_skew;            // of Q^T and of the scores
    const index first_head = kv_head * group;
    const index tile_keys = job.tiles.keys;

    ws.math.stage_queries(
        [&](index r) {
            return query_row<S>(q, q_first + r / group, first_head + r % group, ws.query_row.data());
        },
        rows, ld, job.scale);
    std::fill_n(ws.accumulator.begin(), rows * ws.padded_dim, 0.0f);
    ws.softmax.reset(columns);

    for (index k_first = job.key_begin; k_first < job.key_end; k_first += tile_keys) {
        const index k_count = std::min(tile_keys, job.key_end - k_first);
        const Coverage coverage =
            mask.coverage(q_first, q_first + q_count, k_first, k_first + k_count);
        if (coverage == Coverage::none)
            continue;

        // S^T = K Q^T
        float* scores = ws.scores_t.data();
        ws.math.scores(k, kv_head, k_first, k_count, scores, ld, columns);
        if constexpr (!std::same_as<T, NoTransform>)
            transform_tile<S>(job.transform, TileScores{scores, ld, k_count, rows, columns, group,
                                                        q_first, first_head, k_first, columns});

        if (coverage == Coverage::partial) {
            for (index j = 0; j < k_count; ++j)
                for (index t = 0; t < q_count; ++t)
                    if (!mask.visible(q_first + t, k_first + j))
                        std::fill_n(scores + j * ld + t * group, group, minus_infinity);
        }

        ws.softmax.absorb(scores, ld, k_count, ws.math);

        // O = O * rescale + P V, with P where the softmax left it for the math.
        ws.math.add_values(v, kv_head, k_first, k_count, scores, ld, rows,
                           ws.softmax.rescale_factors(), ws.accumulator.data());
    }

    for (index r = 0; r < rows; ++r)
        write_result_row<S>(job, q_first + r / group, first_head + r % group,
                            ws.accumulator.data() + r * ws.padded_dim, ws.softmax.shift(r),
                            ws.softmax.sum(r));
}

/// Task `task` of the job (see TileJob): one query tile and its mirror, one KV head.
template <class S, class KV, class M, class T>
void attend_tile_pair(const TileJob<KV, M, T>& job, index task)
{
    const index kv_heads = job.k.heads();
    const index group = job.q.dimension(1) / kv_heads;
    const index q_tokens = job.q.dimension(0);
    // A KV head's tasks are consecutive, so that a thread walks one head's K/V again and
    // again while they are in its caches, not every head's in turn (one thread over 4K
    // tokens of 8 KV heads: float prefill 1.03x-1.09x faster on Zen 5).
    const index pairs = (job.query_tiles + 1) / 2;
    const index kv_head = task / pairs;
    const index pair = task % pairs;
    Workspace<S, KV> ws(job.tile_tokens * group, job.tiles.keys, job.q.dimension(2));
    const auto run_tile = [&](index tile) {
        const index first = tile * job.tile_tokens;
        attend_query_tile<S>(job, kv_head, first, std::min(job.tile_tokens, q_tokens - first), ws);
    };
    run_tile(pair);
    if (const index mirror = job.query_tiles - 1 - pair; mirror != pair)
        run_tile(mirror);
}

/// What one task's Workspace holds for tiles of `rows` query rows and `keys` keys, at most.
template <class S, class KV>
std::size_t workspace_bytes(index rows, index keys, index head_dim)
{
    Workspace<S, KV> ws(rows, keys, head_dim);
    ws.softmax.reset(round_up(rows, S::width)); // as attend_query_tile does, at most
    return ws.bytes();
}
