#pragma once
/// \file
/// What every path of the kernel shares: the tile shape, the description of one
/// `attention` call that its tasks read, and the checks made after a row is done.

#include <algorithm>
#include <cmath>
#include <limits>

#include "../kernel/kv_source.hpp"
#include "../kernel/mask.hpp"
#include "../kernel/score_transform.hpp"
#include "../state.hpp"
#include "../tensor.hpp"
#include "outputs.hpp"

namespace star::detail {

inline constexpr float minus_infinity = -std::numeric_limits<float>::infinity();

/// Tile shape. Rows are (query token, head of the group) pairs. A query tile reads every
/// K/V tile it sees from beyond L2, so taller query tiles read K/V fewer times: 512 rows
/// rather than 256 made a bf16 prefill 4% faster on Zen 5 once its softmax had shrunk
/// (float level), with a task's scratch (about 0.9 MB for d = 128) within its 1 MB L2.
struct TileShape {
    index query_rows = 512;
    index keys = 128;
    /// A call with at most this many rows per KV head (a decode step, a short speculative
    /// query) goes to the decode kernel (per_isa/decode_kernel.inl), which runs its vectors
    /// along head_dim rather than across rows.
    index decode_rows = 16;

    [[nodiscard]] index query_tokens(index group) const
    {
        return std::max<index>(1, query_rows / group);
    }
};

/// The queries of a call, `[tokens, heads, head_dim]`: float, or bf16 as a model that runs
/// in bf16 projects them. The kernels read them a row at a time as they stage a tile, so a
/// bf16 row is widened then (per_isa/tile_kernel.inl, `query_row`), into a row's buffer,
/// and the tensor is never copied whole.
class Queries {
public:
    Queries(const ConstView3<float>& q) noexcept // NOLINT: a view is its queries
        : float_(q.data()), tokens_(q.dimension(0)), heads_(q.dimension(1)), dim_(q.dimension(2))
    {
    }
    Queries(const ConstView3<Eigen::bfloat16>& q) noexcept // NOLINT: as above
        : bf16_(q.data()), tokens_(q.dimension(0)), heads_(q.dimension(1)), dim_(q.dimension(2))
    {
    }

    /// Tokens (0), heads (1) or head_dim (2), as a view's `dimension`.
    [[nodiscard]] index dimension(int i) const noexcept
    {
        return i == 0 ? tokens_ : i == 1 ? heads_ : dim_;
    }
    /// The row of `token` and `head` if the queries are float, else null.
    [[nodiscard]] const float* float_row(index token, index head) const noexcept
    {
        return float_ == nullptr ? nullptr : float_ + (token * heads_ + head) * dim_;
    }
    /// The row of `token` and `head` if the queries are bf16, else null.
    [[nodiscard]] const Eigen::bfloat16* bf16_row(index token, index head) const noexcept
    {
        return bf16_ == nullptr ? nullptr : bf16_ + (token * heads_ + head) * dim_;
    }

private:
    const float* float_ = nullptr; // one of the two
    const Eigen::bfloat16* bf16_ = nullptr;
    index tokens_;
    index heads_;
    index dim_;
};

/// One `attention` call, or one slice of its keys under split-KV, as its tasks see it.
/// Task `t` takes KV head `t % kv_heads` and the pair of query tiles `t / kv_heads` and its
/// mirror from the other end, so that under a causal mask every task carries about the
/// same work. Keys `[key_begin, key_end)` are attended to; `key_begin` is a multiple of the
/// tile's keys, so a slice is cut into the same tiles as the whole. The transform is per
/// score, so it sees a slice's scores as it would the whole's.
template <class KV, class M, class T>
struct TileJob {
    Queries q;
    const KVPages<KV>& k; // read run by run: see KVPages::run
    const KVPages<KV>& v;
    const M& mask;
    const T& transform;
    float scale;
    TileShape tiles;
    index tile_tokens; // query tokens per tile
    index query_tiles;
    index key_begin;
    index key_end;
    Outputs out;
};

/// Split-KV (flash-decoding): a call with a single query tile (a decode step, a short
/// query) has only `kv_heads` tasks, too few to occupy many threads while it reads the
/// whole cache. Its keys are then cut into `key_splits` slices, attended to separately and
/// merged exactly. The count depends only on the shapes, never on the thread count, so a
/// result is the same bit for bit however many threads compute it: enough slices for 32
/// tasks, each slice at least 4 tiles of keys.
inline index key_splits(index query_tiles, index kv_heads, index keys, const TileShape& tiles)
{
    constexpr index target_tasks = 32;
    if (query_tiles != 1 || kv_heads >= target_tasks)
        return 1;
    const index wanted = (target_tasks + kv_heads - 1) / kv_heads;
    return std::max<index>(1, std::min(wanted, keys / (4 * tiles.keys)));
}

/// Slices of the keys of a call that goes to the decode kernel, one task each (every KV
/// head in one task, so that each reads its slice of the cache front to back): as for
/// key_splits, the count depends only on the shapes; up to 32 slices, each at least two
/// tiles of keys.
inline index decode_splits(index keys, const TileShape& tiles)
{
    constexpr index target_tasks = 32;
    return std::clamp<index>(keys / (2 * tiles.keys), 1, target_tasks);
}

/// Whether query `i` sees any of the keys `[key_begin, key_end)` under `mask`. Asked only of
/// rows whose scores were all `-inf`: that is a row that sees no key, or one whose every
/// score overflowed float towards `-inf` (an error, not an empty row).
template <Mask M>
bool sees_a_key(const M& mask, index i, index key_begin, index key_end, index tile_keys)
{
    for (index first = key_begin; first < key_end; first += tile_keys) {
        const index end = std::min(first + tile_keys, key_end);
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

/// Writes row `(token, head)` of the job's output and LSE from its accumulator `acc`
/// (`head_dim` floats) and its softmax statistics: its shift (OnlineSoftmax: `-inf` if it
/// saw no score, else near its largest score) and the sum `sum` of `exp(score - shift)`. A
/// row that saw no key gets 0 and `lse = -inf`; one whose arithmetic overflowed is an error.
template <class KV, class M, class T>
void write_row(const TileJob<KV, M, T>& job, index token, index head, const float* acc, float shift,
               float sum)
{
    if (sum > 0.0f) {
        if (!job.out.write_row(token, head, acc, sum))
            overflow(token, head, "output", job.out.element_name());
        job.out.lse(token, head) = shift + std::log(sum);
        return;
    }
    if (shift != minus_infinity ||
        sees_a_key(job.mask, token, job.key_begin, job.key_end, job.tiles.keys))
        overflow(token, head, "scores"); // a score of +inf (or NaN) left no usable weight
    job.out.zero_row(token, head);       // the row sees no key
    job.out.lse(token, head) = minus_infinity;
}

} // namespace star::detail
