#pragma once
/// \file
/// The tiled attention kernel (FlashAttention-style) on the CPU: its entry points.
///
/// The kernel itself (detail/per_isa/tile_kernel.inl) is compiled once per instruction
/// set; each call takes the path `kernel_isa()` names (isa.hpp) and runs its tiles as
/// oneTBB tasks. Nothing of size `Lq x Lk` is ever allocated.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <optional>
#include <type_traits>
#include <vector>


#include "../detail/attention_call.hpp"
#include "../detail/check_inputs.hpp"
#include "../detail/kernels.hpp"
#include "../detail/outputs.hpp"
#include "../detail/parallel.hpp"
#include "../detail/tile_job.hpp"
#include "../state.hpp"
#include "../tensor.hpp"
#include "isa.hpp"
#include "kv_source.hpp"
#include "mask.hpp"
#include "score_transform.hpp"

namespace star {

/// What every attention entry point computes besides its mask and transform: the kernel's
/// calls take it directly, and `GlobalOptions`, `RingOptions` and `StarAttention` hold one,
/// so the softmax scale is set in this one place, and a baseline and an approximation given
/// the same `AttentionOptions` compute the same thing. Name the fields:
/// `{.scale = 0.125f, .check_finite = false}`.
struct AttentionOptions {
    /// Softmax scale `tau` in `softmax(tau * q.k)`; `1/sqrt(head_dim)` when empty. Must be
    /// finite and positive.
    std::optional<float> scale = std::nullopt;
    /// Check that the inputs hold no NaN or infinity (one linear pass), throwing
    /// `star::error` naming the first one found. Turn it off only in a hot loop whose inputs
    /// are known to be finite: a non-finite input then gives unspecified values in the
    /// output rows that see it (and possibly in rows of the same tile), never a crash.
    /// K/V entering a `KVCache` are checked whatever it says (a cache holds only finite K/V).
    bool check_finite = true;
};

/// Scratch memory one task of `attention` holds for `q_heads` query heads sharing
/// `kv_heads` KV heads of `head_dim`: at most one per thread is live at a time. It does not
/// depend on how many queries or keys there are - attention never builds a score matrix
/// larger than one tile. It is that of the path `kernel_isa()` names (vectors of different
/// widths pad differently).
/// \throws star::error for zero heads or head_dim, a non-integral grouped-query ratio, or a
/// `STAR_ISA` that names no path.
template <KVElement KV>
std::size_t attention_workspace_bytes(index q_heads, index kv_heads, index head_dim)
{
    if (q_heads <= 0 || kv_heads <= 0 || head_dim <= 0 || q_heads % kv_heads != 0)
        detail::fail("attention_workspace_bytes: need positive head counts with q_heads a "
                     "multiple of kv_heads and a positive head_dim, got ",
                     q_heads, ", ", kv_heads, " and ", head_dim);
    const detail::TileShape tiles;
    const index group = q_heads / kv_heads;
    const index rows = tiles.query_tokens(group) * group;
    const KernelIsa isa = kernel_isa();
    return std::max(detail::tile_workspace_bytes<KV>(isa, rows, tiles.keys, head_dim),
                    detail::decode_workspace_bytes<KV>(isa, kv_heads, tiles.decode_rows, head_dim));
}

namespace detail {

/// What every entry point of one call checks, before anything is computed; returns the
/// softmax scale.
template <QueryElement Q, KVElement KV, ScoreTransform T>
float check_call(const ConstView3<Q>& q, const KVPages<KV>& k, const KVPages<KV>& v,
                 const AttentionOptions& options, const T& transform, const char* where)
{
    const float scale = check_qkv(q, k, v, options.scale, where);
    check_transform(transform, q.dimension(1), q.dimension(0), k.tokens(), where);
    if (options.check_finite) {
        check_finite(q, "q", 0, where);
        check_finite(k, "k", 0, where);
        check_finite(v, "v", 0, where);
    }
    return scale;
}

/// Runs one checked call, writing its result into `out`.
template <QueryElement Q, KVElement KV, Mask M, ScoreTransform T>
void run_call(const Outputs& out, const ConstView3<Q>& q, const KVPages<KV>& k,
              const KVPages<KV>& v, const M& mask, const T& transform, float scale)
{
    AttentionCall<KV, M, T> call(Queries(q), k, v, mask, transform, scale, kernel_isa(), out);
    parallel_for(index{0}, call.tasks(), [&](index t) { call.run(t); });
    call.finish();
}

} // namespace detail

/// `attention` (the overload on views, below) over keys and values read in place from K/V
/// sources (kv_source.hpp): a paged cache (`paged_kv`), K and V sliced out of a fused QKV
/// projection (`strided_kv`), or any other `KVPages` layout; nothing is copied. The result is that of the same keys
/// and values laid out contiguously, up to rounding: bit for bit when each source is a
/// single page (a strided view), since the kernel's arithmetic and its order are then the
/// same. `k` and `v` may have different layouts but must have the same tokens, heads and
/// head_dim; to pair a contiguous view with another source, pass it as `KVPages<KV>(view)`.
/// \throws star::error as the overload on views does.
template <QueryElement Q, KVElement KV, Mask M = NoMask, ScoreTransform T = NoTransform>
AttentionState attention(const ConstView3<Q>& q, const KVPages<KV>& k, const KVPages<KV>& v,
                         const M& mask = {}, const AttentionOptions& options = {},
                         const T& transform = {})
{
    const float scale = detail::check_call(q, k, v, options, transform, "attention");
    AttentionState result = detail::unfilled_state(q.dimension(0), q.dimension(1), q.dimension(2));
    detail::run_call(detail::Outputs(result), q, k, v, mask, transform, scale);
    return result;
}

/// `attention`, its result written into memory the caller owns instead of a new state:
/// `output` `[Lq, Hq, d]`, float or bf16, and `lse` `[Lq, Hq]`. A float output holds what
/// `attention` returns, bit for bit; a bf16 one holds it rounded to bf16 (as a model that
/// runs in bf16 feeds it to the next projection; the LSE stays float). Nothing is
/// allocated for the result, so a loop that reuses its buffers never pays for fresh memory:
/// on a VM the page faults of a new output's first touch made a 2K-token prefill (32 heads
/// of 128, one thread) 1.13x to 1.68x slower (docs/performance.md, "Fresh memory").
/// \throws star::error as `attention` does, and when `output` or `lse` does not have the
/// queries' shape, views null memory, or overlaps the other or q, k or v; nothing is
/// written then. star::runtime_failure when the arithmetic overflows float (or a bf16
/// output), and std::bad_alloc when a task's scratch memory runs out: the contents of
/// `output` and `lse` are then unspecified.
template <OutputElement O, QueryElement Q, KVElement KV, Mask M = NoMask, ScoreTransform T = NoTransform>
void attention_into(const View3<O>& output, const View2f& lse, const ConstView3<Q>& q,
                    const KVPages<KV>& k, const KVPages<KV>& v, const M& mask = {},
                    const AttentionOptions& options = {}, const T& transform = {})
{
    const float scale = detail::check_call(q, k, v, options, transform, "attention_into");
    detail::check_outputs(output, lse, q, k, v, "attention_into");
    detail::run_call(detail::Outputs(output.data(), lse.data(), q.dimension(1), q.dimension(2)), q,
                     k, v, mask, transform, scale);
}

/// `attention_into` of contiguous `k` and `v`.
template <OutputElement O, QueryElement Q, KVElement KV, Mask M = NoMask, ScoreTransform T = NoTransform>
void attention_into(const View3<O>& output, const View2f& lse, const ConstView3<Q>& q,
                    const ConstView3<KV>& k, const ConstView3<KV>& v, const M& mask = {},
                    const AttentionOptions& options = {}, const T& transform = {})
{
    (void)detail::check_qkv(q, k, v, options.scale, "attention_into"); // a view's own words
    attention_into(output, lse, q, KVPages<KV>(k), KVPages<KV>(v), mask, options, transform);
}

/// Attention of `q` over `k`/`v` under `mask`, parallel over (KV head x query tile) with TBB.
/// Each visible scaled score passes through `transform` (score_transform.hpp: `SoftCap`,
/// `Alibi`, or one of the caller's own) before the softmax; the default leaves it as is.
///
/// Shapes: `q` is `[Lq, Hq, d]`, `k` and `v` are `[Lk, Hkv, d]`, with `Hq` a multiple of
/// `Hkv` (query head `h` uses KV head `h / (Hq / Hkv)`). `q` is float or bf16 (as a model
/// that runs in bf16 projects it: each row is widened to float as the kernel stages it, no
/// copy of the whole; the result is that of the widened queries, bit for bit, and the path
/// with bf16 products loses nothing, since it rounds float queries to bf16 anyway); `k` and
/// `v` are float, bf16 or half.
/// Returns the normalised output `[Lq, Hq, d]` and the natural-log LSE `[Lq, Hq]` of the
/// scaled scores; rows that see no key get output 0 and `lse = -inf`.
/// Query tiles are scheduled in pairs from both ends, so under a causal mask every task
/// carries about the same work. A call with a single query tile also splits the keys over
/// tasks and merges the parts exactly (split-KV; detail::key_splits says when), so that
/// reading a long cache is spread over the threads. A call with at most 16 query rows per
/// KV head (query tokens x grouped-query ratio: a decode step) goes to a kernel made for
/// it, which reads the cache at memory speed (detail/per_isa/decode_kernel.inl), split the
/// same way. The split depends only on the shapes, so the result does not depend on the
/// thread count. The instruction set is the one `kernel_isa()` names.
/// \throws star::error on inconsistent shapes, zero heads or head_dim, a non-integral
/// grouped-query ratio, a scale that is not finite and positive, a transform the library
/// rejects (a `SoftCap` cap that is not finite and positive; `Alibi` slopes not one per
/// query head, not finite, or so steep that a penalty would overflow float), or a
/// `STAR_ISA` that names no path; star::runtime_failure when the arithmetic overflows float.
template <QueryElement Q, KVElement KV, Mask M = NoMask, ScoreTransform T = NoTransform>
AttentionState attention(const ConstView3<Q>& q, const ConstView3<KV>& k, const ConstView3<KV>& v,
                         const M& mask = {}, const AttentionOptions& options = {},
                         const T& transform = {})
{
    // The view's own words for a bad view (a source is described by its layout instead).
    (void)detail::check_qkv(q, k, v, options.scale, "attention");
    return attention(q, KVPages<KV>(k), KVPages<KV>(v), mask, options, transform);
}

} // namespace star
