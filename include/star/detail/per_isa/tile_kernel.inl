// The tiled attention kernel (FlashAttention-style), written once over a float atom `S`.
// Included by kernels.hpp into one namespace per path, inside that path's target region,
// after exp.inl, online_softmax.inl and tile_gemm.inl.
//
// For one KV head and a tile of query tokens, the query heads that share that KV head are
// stacked into one block of rows, so each K/V tile is loaded (and, for bf16/half, widened
// in vector registers) once for all of them. Scores come from tile_gemm, the softmax is
// online, and the value product is a second tile_gemm into a float accumulator. Nothing
// of size `Lq x Lk` is ever allocated.

/// Rows of the scratch tiles that a product walks down (Q^T, the scores, the values) are
/// one cache line longer than their data: widths are powers of two, and rows 512 B or 1 KB
/// apart would fall in 8 or 4 of L1's 64 sets, too few to hold a column panel of 128 rows.
inline constexpr index row_skew = 64 / sizeof(float);

/// Scratch memory of one worker: sized once per task, reused for every tile. The score
/// tile is stored transposed, `[keys, queries]`, so the softmax runs one SIMD lane per
/// query and the products need no packing of K or of the probabilities.
template <class S, class KV>
struct Workspace {
    index head_dim;
    index padded_dim;           // head_dim rounded up to a vector
    index values_ld;            // padded_dim + row_skew
    scratch<float> queries_t;   // [head_dim, query rows rounded up to a vector + skew], scaled
    scratch<float> scores_t;    // [keys, query rows rounded up to a vector + skew]
    scratch<float> accumulator; // [rows, padded_dim]
    // Keys and values are copied (bf16 and half widened) even when they are float: one KV
    // head's rows lie `kv_heads * d` apart (4 KB for 8 heads of 128 floats), so a tile's
    // rows share a few L1 sets, and the products read each of them many times (once per
    // column panel of Q^T, once per block of query rows). With row_skew: 1.2x faster float
    // prefill on Zen 3.
    scratch<float> keys;   // [keys, head_dim]
    scratch<float> values; // [keys, values_ld], padded
    OnlineSoftmax<S> softmax;

    Workspace(index tile_rows, index tile_keys, index d)
        : head_dim(d), padded_dim(round_up(d, S::width)), values_ld(padded_dim + row_skew),
          queries_t(static_cast<std::size_t>(d * (round_up(tile_rows, S::width) + row_skew))),
          scores_t(static_cast<std::size_t>(tile_keys * (round_up(tile_rows, S::width) + row_skew))),
          accumulator(static_cast<std::size_t>(tile_rows * padded_dim)),
          keys(static_cast<std::size_t>(tile_keys * d)),
          values(static_cast<std::size_t>(tile_keys * values_ld), 0.0f)
    {
    }

    /// Memory held, in bytes.
    [[nodiscard]] std::size_t bytes() const noexcept
    {
        return sizeof(float) * (queries_t.size() + scores_t.size() + accumulator.size() +
                                keys.size() + values.size()) +
               softmax.bytes();
    }
};

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
    const index d = ws.head_dim;
    const index q_heads = q.dimension(1);
    const index kv_heads = k.heads();
    const index group = q_heads / kv_heads;
    const index rows = q_count * group;
    const index columns = round_up(rows, S::width); // a short last tile or a decode step is narrow
    const index ld = columns + row_skew;            // of Q^T and of the scores
    const index first_head = kv_head * group;
    const index tile_keys = job.tiles.keys;

    // Q^T, scaled; padding columns stay 0 and their results are never read.
    std::fill_n(ws.queries_t.begin(), d * ld, 0.0f);
    for (index r = 0; r < rows; ++r) {
        const float* src = q.data() + ((q_first + r / group) * q_heads + first_head + r % group) * d;
        for (index c = 0; c < d; ++c)
            ws.queries_t[static_cast<std::size_t>(c * ld + r)] = job.scale * src[c];
    }
    std::fill_n(ws.accumulator.begin(), rows * ws.padded_dim, 0.0f);
    ws.softmax.reset(columns);

    for (index k_first = job.key_begin; k_first < job.key_end; k_first += tile_keys) {
        const index k_count = std::min(tile_keys, job.key_end - k_first);
        const Coverage coverage =
            mask.coverage(q_first, q_first + q_count, k_first, k_first + k_count);
        if (coverage == Coverage::none)
            continue;

        // S^T = K Q^T, K from its copy (see Workspace::keys).
        widen_source<S>(k, kv_head, k_first, k_count, ws.keys.data(), d);
        const float* k_rows = ws.keys.data();
        const Strides k_strides{d, 1};
        float* scores = ws.scores_t.data();
        tile_gemm<S, false>(k_rows, k_strides, ws.queries_t.data(), ld, scores, ld, k_count,
                            columns, d);
        if constexpr (!std::same_as<T, NoTransform>)
            transform_tile<S>(job.transform, TileScores{scores, ld, k_count, rows, columns, group,
                                                        q_first, first_head, k_first});

        if (coverage == Coverage::partial) {
            for (index j = 0; j < k_count; ++j)
                for (index t = 0; t < q_count; ++t)
                    if (!mask.visible(q_first + t, k_first + j))
                        std::fill_n(scores + j * ld + t * group, group, minus_infinity);
        }

        ws.softmax.absorb(scores, ld, k_count);
        for (index r = 0; r < rows; ++r)
            if (const float f = ws.softmax.rescale(r); f != 1.0f)
                scale_in_place<S>(ws.accumulator.data() + r * ws.padded_dim, ws.padded_dim, f);

        // O += P V, reading P from the transposed score tile.
        widen_source<S>(v, kv_head, k_first, k_count, ws.values.data(), ws.values_ld);
        tile_gemm<S, true>(scores, Strides{1, ld}, ws.values.data(), ws.values_ld,
                           ws.accumulator.data(), ws.padded_dim, rows, ws.padded_dim, k_count);
    }

    for (index r = 0; r < rows; ++r)
        write_row(job, q_first + r / group, first_head + r % group,
                  ws.accumulator.data() + r * ws.padded_dim, ws.softmax.max(r), ws.softmax.sum(r));
}

/// Task `task` of the job (see TileJob): one query tile and its mirror, one KV head.
template <class S, class KV, class M, class T>
void attend_tile_pair(const TileJob<KV, M, T>& job, index task)
{
    const index kv_heads = job.k.heads();
    const index group = job.q.dimension(1) / kv_heads;
    const index q_tokens = job.q.dimension(0);
    const index kv_head = task % kv_heads;
    const index pair = task / kv_heads;
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
