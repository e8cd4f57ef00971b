#pragma once
/// \file
/// Several sequences in one kernel call: a batch of sequences each over its own keys and
/// values (a decode step of many requests, each over its own cache), and sequences packed
/// one after another in one tensor (prefill of many prompts, as flash-attn's varlen API).
///
/// Each sequence is cut into the same tasks `attention` would give it alone (query tiles,
/// KV heads, and slices of its keys when it has a single query tile: split-KV), and the
/// tasks of every sequence run in one parallel loop. One long sequence among short ones
/// is therefore spread over the threads instead of holding up the step, and a batch of
/// short ones fills them. Every sequence's result is the one `attention` gives it alone,
/// bit for bit, whatever the batch and the thread count.

#include <algorithm>
#include <cstddef>
#include <deque>
#include <span>
#include <string>
#include <vector>

#include "../detail/attention_call.hpp"
#include "../detail/check_inputs.hpp"
#include "../detail/outputs.hpp"
#include "../detail/parallel.hpp"
#include "../state.hpp"
#include "../tensor.hpp"
#include "attention.hpp"
#include "isa.hpp"
#include "kv_source.hpp"
#include "mask.hpp"
#include "score_transform.hpp"

namespace star {

/// One sequence of `attention_batch`: its queries `q` `[Lq, Hq, d]` (float, or bf16 as
/// `attention` takes them), the keys and values it attends to `[Lk, Hkv, d]` (a contiguous
/// view or any K/V source: a paged cache, a strided view; kv_source.hpp), and its own mask
/// and transform, as `attention` takes them.
template <KVElement KV, Mask M = NoMask, ScoreTransform T = NoTransform, QueryElement Q = float>
struct BatchedSequence {
    ConstView3<Q> q; ///< Queries `[Lq, Hq, d]`.
    KVPages<KV> k;   ///< Keys `[Lk, Hkv, d]`, from any K/V source.
    KVPages<KV> v;   ///< Values `[Lk, Hkv, d]`, from any K/V source.
    M mask{};        ///< Which keys each query sees, rows counted in this sequence's q and k.
    T transform{};   ///< Applied to each visible scaled score.

    /// Not assignable: an Eigen TensorMap's assignment copies elements into the memory it
    /// views instead of viewing other memory, so assigning a sequence would not replace
    /// its tensors. Build a new one instead.
    BatchedSequence& operator=(const BatchedSequence&) = delete;
};

namespace detail {

/// Runs the tasks of every call in one parallel loop. `first_task[c]` is the number of
/// tasks before call `c`.
template <class Call>
void run_calls(const std::deque<Call>& calls)
{
    std::vector<index> first_task;
    first_task.reserve(calls.size() + 1);
    index total = 0;
    for (const Call& call : calls) {
        first_task.push_back(total);
        total += call.tasks();
    }
    first_task.push_back(total);
    parallel_for(index{0}, total, [&](index t) {
        // The last call whose first task is at or before t (calls with no task are skipped
        // by upper_bound, which lands past every equal entry).
        const auto after = std::upper_bound(first_task.begin(), first_task.end(), t);
        const auto c = static_cast<std::size_t>(after - first_task.begin() - 1);
        calls[c].run(t - first_task[c]);
    });
}

} // namespace detail

/// Attention of every sequence of `batch`, each over its own keys and values under its
/// own mask and transform, in one parallel loop (see the file's comment): result `s` is
/// what `attention(q, k, v, mask, options, transform)` returns for sequence `s`, bit for
/// bit. Sequences may differ in every size, heads included. Typical use: one decode step
/// of many requests, each a query of one token over its own cache (`NoMask`).
/// \throws star::error naming the sequence, for anything `attention` rejects in it; every
/// sequence is checked before any is computed. star::runtime_failure when the arithmetic
/// of a sequence overflows float.
template <KVElement KV, Mask M, ScoreTransform T, QueryElement Q>
std::vector<AttentionState> attention_batch(std::span<const BatchedSequence<KV, M, T, Q>> batch,
                                            const AttentionOptions& options = {})
{
    std::vector<float> scales;
    scales.reserve(batch.size());
    for (std::size_t s = 0; s < batch.size(); ++s) {
        const auto& sequence = batch[s];
        const std::string where = "attention_batch: sequence " + std::to_string(s);
        scales.push_back(detail::check_call(sequence.q, sequence.k, sequence.v, options,
                                            sequence.transform, where.c_str()));
    }
    std::vector<AttentionState> results;
    results.reserve(batch.size()); // never reallocated: the calls write into them
    for (const auto& sequence : batch)
        results.push_back(detail::unfilled_state(sequence.q.dimension(0), sequence.q.dimension(1),
                                                 sequence.q.dimension(2)));
    const KernelIsa isa = kernel_isa();
    std::deque<detail::AttentionCall<KV, M, T>> calls; // calls never move: jobs refer to them
    for (std::size_t s = 0; s < batch.size(); ++s)
        calls.emplace_back(batch[s].q, batch[s].k, batch[s].v, batch[s].mask, batch[s].transform,
                           scales[s], isa, detail::Outputs(results[s]));
    detail::run_calls(calls);
    for (const auto& call : calls)
        call.finish();
    return results;
}

/// `attention_batch` of the sequences of a vector.
template <KVElement KV, Mask M, ScoreTransform T, QueryElement Q>
std::vector<AttentionState> attention_batch(const std::vector<BatchedSequence<KV, M, T, Q>>& batch,
                                            const AttentionOptions& options = {})
{
    return attention_batch(std::span<const BatchedSequence<KV, M, T, Q>>(batch), options);
}

/// Self-attention of sequences packed one after another along the tokens of `q`, `k` and
/// `v` (flash-attn's varlen layout): sequence `s` is tokens `[starts[s], starts[s + 1])`,
/// `starts` holding one more entry than there are sequences, from 0 to the token count,
/// never decreasing (an empty sequence is allowed). Within each sequence, rows are counted
/// from its first token: `mask` (causal by default, or e.g. a `SlidingWindowMask`) and
/// `transform` apply to every sequence alike, and no token sees another sequence's. The
/// rows of sequence `s` in the result are what `attention` gives that sequence alone, bit
/// for bit; all sequences' tasks run in one parallel loop. `k` and `v` are any K/V source
/// (kv_source.hpp): a strided view reads them in place from a fused QKV projection.
/// \throws star::error if `starts` is not as above or q, k and v differ in token count,
/// for anything `attention` rejects (naming the sequence), and star::runtime_failure when
/// the arithmetic overflows float.
template <QueryElement Q, KVElement KV, Mask M = CausalMask, ScoreTransform T = NoTransform>
AttentionState attention_packed(const ConstView3<Q>& q, const KVPages<KV>& k, const KVPages<KV>& v,
                                std::span<const index> starts, const M& mask = {},
                                const AttentionOptions& options = {}, const T& transform = {})
{
    const index tokens = q.dimension(0);
    if (k.tokens() != tokens || v.tokens() != tokens)
        detail::fail("attention_packed: q, k and v must hold the same packed tokens, got ", tokens,
                     ", ", k.tokens(), " and ", v.tokens());
    if (starts.size() < 2)
        detail::fail("attention_packed: starts needs at least 2 entries (0 and the token "
                     "count), got ",
                     starts.size());
    if (starts.front() != 0 || starts.back() != tokens)
        detail::fail("attention_packed: starts must run from 0 to the token count ", tokens,
                     ", got ", starts.front(), " to ", starts.back());
    for (std::size_t s = 1; s < starts.size(); ++s)
        if (starts[s] < starts[s - 1])
            detail::fail("attention_packed: starts must not decrease, got ", starts[s - 1],
                         " then ", starts[s], " at entry ", s);
    // Whole-tensor checks first (a view of a wrong shape names the tensor, not a sequence).
    detail::check_call(q, k, v, options, NoTransform{}, "attention_packed");
    const std::size_t sequences = starts.size() - 1;
    std::vector<ConstView3<Q>> queries;
    std::vector<KVPages<KV>> keys, values;
    std::vector<float> scales;
    for (std::size_t s = 0; s < sequences; ++s) {
        const index first = starts[s], count = starts[s + 1] - starts[s];
        queries.push_back(token_slice(q, first, count));
        keys.push_back(k.tokens_from(first, count));
        values.push_back(v.tokens_from(first, count));
        // Already checked for finiteness as a whole.
        const std::string where = "attention_packed: sequence " + std::to_string(s);
        scales.push_back(
            detail::check_call(queries.back(), keys.back(), values.back(),
                               AttentionOptions{.scale = options.scale, .check_finite = false},
                               transform, where.c_str()));
    }
    // Each sequence writes its own rows of the packed result.
    AttentionState out = detail::unfilled_state(tokens, q.dimension(1), q.dimension(2));
    const detail::Outputs packed(out);
    const KernelIsa isa = kernel_isa();
    std::deque<detail::AttentionCall<KV, M, T>> calls;
    for (std::size_t s = 0; s < sequences; ++s)
        calls.emplace_back(queries[s], keys[s], values[s], mask, transform, scales[s], isa,
                           packed.from_token(starts[s]));
    detail::run_calls(calls);
    for (const auto& call : calls)
        call.finish();
    return out;
}

/// `attention_packed` of contiguous `k` and `v`.
template <QueryElement Q, KVElement KV, Mask M = CausalMask, ScoreTransform T = NoTransform>
AttentionState attention_packed(const ConstView3<Q>& q, const ConstView3<KV>& k,
                                const ConstView3<KV>& v, std::span<const index> starts,
                                const M& mask = {}, const AttentionOptions& options = {},
                                const T& transform = {})
{
    return attention_packed(q, KVPages<KV>(k), KVPages<KV>(v), starts, mask, options, transform);
}

} // namespace star
