#pragma once
/// \file
/// The tiled attention kernel (FlashAttention-style) on the CPU.
///
/// For one KV head and a tile of query tokens, the query heads that share that KV head
/// are stacked into one block of rows, so each K/V tile is loaded (and, for bf16/half,
/// converted) once for all of them. Scores come from a register-blocked xsimd product
/// (detail/tile_gemm.hpp; measured 1.5x faster than Eigen's GEMM on these tile shapes,
/// as it needs no operand packing), the softmax is online (online_softmax.hpp), and the
/// value product is a second such product into a float accumulator. Nothing of size
/// `Lq x Lk` is ever allocated.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <optional>
#include <type_traits>
#include <vector>


#include "../detail/check_inputs.hpp"
#include "../detail/parallel.hpp"
#include "../detail/tile_gemm.hpp"
#include "../state.hpp"
#include "../tensor.hpp"
#include "mask.hpp"
#include "online_softmax.hpp"

namespace star {

/// Options of one attention call.
struct AttentionOptions {
    /// Softmax scale `tau` in `softmax(tau * q.k)`; `1/sqrt(head_dim)` when empty.
    std::optional<float> scale;
    /// Check that q, k and v hold no NaN or infinity (one linear pass), throwing
    /// `star::error` naming the first one found. Turn it off only in a hot loop whose inputs
    /// are known to be finite: a non-finite input then gives unspecified values in the
    /// output rows that see it (and possibly in rows of the same tile), never a crash.
    bool check_finite = true;
};

namespace detail {

/// Tile shape. Rows are (query token, head of the group) pairs.
struct TileShape {
    index query_rows = 256;
    index keys = 128;

    [[nodiscard]] index query_tokens(index group) const
    {
        return std::max<index>(1, query_rows / group);
    }
};

/// Scratch memory of one worker: sized once per task, reused for every tile. The score
/// tile is stored transposed, `[keys, queries]`, so the softmax runs one SIMD lane per
/// query and the products need no packing of K or of the probabilities.
template <class KV>
struct Workspace {
    index head_dim;
    index padded_dim;    // head_dim rounded up to a SIMD batch
    aligned_vector<float> queries_t;   // [head_dim, query rows rounded up to a batch], scaled
    aligned_vector<float> scores_t;    // [keys, query rows rounded up to a batch]
    aligned_vector<float> accumulator; // [rows, padded_dim]
    aligned_vector<float> keys;        // [keys, head_dim], bf16/half converted to float
    aligned_vector<float> values;      // [keys, padded_dim], converted and/or padded
    OnlineSoftmax softmax;

    Workspace(index tile_rows, index tile_keys, index d)
        : head_dim(d), padded_dim(round_up_to_batch(d)),
          queries_t(static_cast<std::size_t>(d * round_up_to_batch(tile_rows))),
          scores_t(static_cast<std::size_t>(tile_keys * round_up_to_batch(tile_rows))),
          accumulator(static_cast<std::size_t>(tile_rows * padded_dim)),
          keys(std::is_same_v<KV, float> ? 0 : static_cast<std::size_t>(tile_keys * d)),
          values(values_in_place() ? 0 : static_cast<std::size_t>(tile_keys * padded_dim), 0.0f)
    {
    }

    /// Float values whose rows are whole batches are read straight from the caller's memory.
    [[nodiscard]] bool values_in_place() const
    {
        return std::is_same_v<KV, float> && head_dim == padded_dim;
    }

    /// Memory held, in bytes.
    [[nodiscard]] std::size_t bytes() const noexcept
    {
        return sizeof(float) * (queries_t.size() + scores_t.size() + accumulator.size() +
                                keys.size() + values.size()) +
               softmax.bytes();
    }
};

/// Finite inputs can still overflow float: a score `scale * q.k` beyond 3.4e38, or an
/// output `sum p * v` beyond it. The result would be garbage, so it is an error.
[[noreturn]] inline void overflow(index token, index head, const char* what)
{
    fail("attention: the ", what, " of query token ", token, ", head ", head,
         " overflow float (inputs too large for float arithmetic, or not finite)");
}

/// Whether query `i` sees any of the keys `[0, key_count)` under `mask`. Asked only of rows
/// whose scores were all `-inf`: that is a row that sees no key, or one whose every score
/// overflowed float towards `-inf` (an error, not an empty row).
template <Mask M>
bool sees_a_key(const M& mask, index i, index key_count, index tile_keys)
{
    for (index first = 0; first < key_count; first += tile_keys) {
        const index end = std::min(first + tile_keys, key_count);
        const Coverage coverage = mask.coverage(i, i + 1, first, end);
        if (coverage == Coverage::full)
            return true;
        if (coverage == Coverage::partial)
            for (index j = first; j < end; ++j)
                if (mask.visible(i, j))
                    return true;
    }
    return false;
}

/// Attention of query tokens `[q_first, q_first + q_count)` of the heads sharing `kv_head`
/// against all keys allowed by `mask`, written into `out`.
template <class KV, Mask M>
void attend_query_tile(const ConstView3<float>& q, const ConstView3<KV>& k,
                       const ConstView3<KV>& v, const M& mask, float scale, index kv_head,
                       index q_first, index q_count, const TileShape& tiles, Workspace<KV>& ws,
                       AttentionState& out)
{
    const index d = ws.head_dim;
    const index q_heads = q.dimension(1);
    const index kv_heads = k.dimension(1);
    const index group = q_heads / kv_heads;
    const index rows = q_count * group;
    const index columns = round_up_to_batch(rows); // a short last tile or a decode step is narrow
    const index key_count = k.dimension(0);
    const index first_head = kv_head * group;
    const index kv_row_stride = kv_heads * d;

    // Q^T, scaled; padding columns stay 0 and their results are never read.
    std::fill_n(ws.queries_t.begin(), d * columns, 0.0f);
    for (index r = 0; r < rows; ++r) {
        const float* src = q.data() + ((q_first + r / group) * q_heads + first_head + r % group) * d;
        for (index c = 0; c < d; ++c)
            ws.queries_t[static_cast<std::size_t>(c * columns + r)] = scale * src[c];
    }
    std::fill_n(ws.accumulator.begin(), rows * ws.padded_dim, 0.0f);
    ws.softmax.reset(columns);

    for (index k_first = 0; k_first < key_count; k_first += tiles.keys) {
        const index k_count = std::min(tiles.keys, key_count - k_first);
        const Coverage coverage =
            mask.coverage(q_first, q_first + q_count, k_first, k_first + k_count);
        if (coverage == Coverage::none)
            continue;

        // S^T = K Q^T: K rows are read in place (float) or from the converted copy.
        const KV* k_tile = k.data() + (k_first * kv_heads + kv_head) * d;
        const float* k_rows = nullptr;
        Strides k_strides{kv_row_stride, 1};
        if constexpr (std::is_same_v<KV, float>) {
            k_rows = k_tile;
        } else {
            for (index j = 0; j < k_count; ++j)
                std::transform(k_tile + j * kv_row_stride, k_tile + j * kv_row_stride + d,
                               ws.keys.begin() + j * d, [](KV x) { return static_cast<float>(x); });
            k_rows = ws.keys.data();
            k_strides = {d, 1};
        }
        float* scores = ws.scores_t.data();
        tile_gemm<false>(k_rows, k_strides, ws.queries_t.data(), columns, scores, columns, k_count,
                         columns, d);

        if (coverage == Coverage::partial) {
            for (index j = 0; j < k_count; ++j)
                for (index t = 0; t < q_count; ++t)
                    if (!mask.visible(q_first + t, k_first + j))
                        std::fill_n(scores + j * columns + t * group, group, minus_infinity);
        }

        ws.softmax.absorb(scores, columns, k_count);
        for (index r = 0; r < rows; ++r)
            if (const float f = ws.softmax.rescale(r); f != 1.0f)
                scale_in_place(ws.accumulator.data() + r * ws.padded_dim, ws.padded_dim, f);

        // O += P V, reading P from the transposed score tile.
        const KV* v_tile = v.data() + (k_first * kv_heads + kv_head) * d;
        const float* v_rows = nullptr;
        index v_stride = kv_row_stride;
        if (ws.values_in_place()) {
            if constexpr (std::is_same_v<KV, float>)
                v_rows = v_tile;
        } else {
            for (index j = 0; j < k_count; ++j)
                std::transform(v_tile + j * kv_row_stride, v_tile + j * kv_row_stride + d,
                               ws.values.begin() + j * ws.padded_dim,
                               [](KV x) { return static_cast<float>(x); });
            v_rows = ws.values.data();
            v_stride = ws.padded_dim;
        }
        tile_gemm<true>(scores, Strides{1, columns}, v_rows, v_stride, ws.accumulator.data(),
                        ws.padded_dim, rows, ws.padded_dim, k_count);
    }

    for (index r = 0; r < rows; ++r) {
        const index token = q_first + r / group;
        const index head = first_head + r % group;
        float* o = out.output.data() + (token * q_heads + head) * d;
        const float sum = ws.softmax.sum(r);
        const float* acc = ws.accumulator.data() + r * ws.padded_dim;
        if (sum > 0.0f) {
            std::transform(acc, acc + d, o, [sum](float x) { return x / sum; });
            if (!std::all_of(o, o + d, [](float x) { return std::isfinite(x); }))
                overflow(token, head, "output");
        } else if (ws.softmax.max(r) == minus_infinity &&
                   !sees_a_key(mask, token, key_count, tiles.keys)) {
            std::fill_n(o, d, 0.0f); // the row sees no key
        } else {
            overflow(token, head, "scores"); // a score of +inf (or NaN) left no usable weight
        }
        out.lse(token, head) = ws.softmax.lse(r);
    }
}

} // namespace detail

/// Scratch memory one task of `attention` holds for `q_heads` query heads sharing
/// `kv_heads` KV heads of `head_dim`: at most one per thread is live at a time. It does not
/// depend on how many queries or keys there are - attention never builds a score matrix
/// larger than one tile.
/// \throws star::error for zero heads or head_dim, or a non-integral grouped-query ratio.
template <KVElement KV>
std::size_t attention_workspace_bytes(index q_heads, index kv_heads, index head_dim)
{
    if (q_heads <= 0 || kv_heads <= 0 || head_dim <= 0 || q_heads % kv_heads != 0)
        detail::fail("attention_workspace_bytes: need positive head counts with q_heads a "
                     "multiple of kv_heads and a positive head_dim, got ", q_heads, ", ",
                     kv_heads, " and ", head_dim);
    const detail::TileShape tiles;
    const index group = q_heads / kv_heads;
    const index rows = tiles.query_tokens(group) * group;
    detail::Workspace<KV> ws(rows, tiles.keys, head_dim);
    ws.softmax.reset(detail::round_up_to_batch(rows)); // as attend_query_tile does, at most
    return ws.bytes();
}

/// Attention of `q` over `k`/`v` under `mask`, parallel over (KV head x query tile) with TBB.
///
/// Shapes: `q` is `[Lq, Hq, d]` (float), `k` and `v` are `[Lk, Hkv, d]` (float, bf16 or
/// half), with `Hq` a multiple of `Hkv` (query head `h` uses KV head `h / (Hq / Hkv)`).
/// Returns the normalised output `[Lq, Hq, d]` and the natural-log LSE `[Lq, Hq]` of the
/// scaled scores; rows that see no key get output 0 and `lse = -inf`.
/// Query tiles are scheduled in pairs from both ends, so under a causal mask every task
/// carries about the same work.
/// \throws star::error on inconsistent shapes, zero heads or head_dim, a non-integral
/// grouped-query ratio, or a scale that is not finite and positive.
template <KVElement KV, Mask M = NoMask>
AttentionState attention(const ConstView3<float>& q, const ConstView3<KV>& k,
                         const ConstView3<KV>& v, const M& mask = {},
                         const AttentionOptions& options = {})
{
    const float scale = detail::check_qkv(q, k, v, options.scale, "attention");
    if (options.check_finite) {
        detail::check_finite(q, "q", 0, "attention");
        detail::check_finite(k, "k", 0, "attention");
        detail::check_finite(v, "v", 0, "attention");
    }
    const index q_tokens = q.dimension(0);
    const index kv_heads = k.dimension(1);
    const index group = q.dimension(1) / kv_heads;
    const index d = q.dimension(2);
    AttentionState out(q_tokens, q.dimension(1), d);
    if (q_tokens == 0)
        return out;

    const detail::TileShape tiles;
    const index tile_tokens = tiles.query_tokens(group);
    const index query_tiles = (q_tokens + tile_tokens - 1) / tile_tokens;
    const index pairs = (query_tiles + 1) / 2;
    detail::parallel_for(index{0}, pairs * kv_heads, [&](index task) {
        const index kv_head = task % kv_heads;
        const index pair = task / kv_heads;
        detail::Workspace<KV> ws(tile_tokens * group, tiles.keys, d);
        const auto run_tile = [&](index tile) {
            const index first = tile * tile_tokens;
            detail::attend_query_tile(q, k, v, mask, scale, kv_head, first,
                                      std::min(tile_tokens, q_tokens - first), tiles, ws, out);
        };
        run_tile(pair);
        if (const index mirror = query_tiles - 1 - pair; mirror != pair)
            run_tile(mirror);
    });
    return out;
}

} // namespace star
