#pragma once
/// \file
/// Global (dense) attention: the exact baseline every approximation is measured against.

#include <optional>

#include "../kernel/attention.hpp"
#include "../policy/variant.hpp"

namespace star {

/// Options of global attention.
struct GlobalOptions {
    /// Causal self-attention (token `i` sees tokens `0..i`) when true; every query sees
    /// every key when false.
    bool causal = true;
    /// The softmax scale and the finiteness check.
    AttentionOptions attention{};
};

/// Exact attention of one layer over one sequence: `q` `[L, Hq, d]` (float or bf16, as
/// `attention` takes it), `k`/`v` `[L, Hkv, d]`. Causal self-attention requires as many
/// queries as keys; for a query chunk that follows cached keys, call `attention` with a
/// `CausalMask` carrying the offset.
/// \throws star::error as `attention`, and when causal with `q` and `k` token counts differing.
template <QueryElement Q, KVElement KV>
AttentionState global_attention(const ConstView3<Q>& q, const ConstView3<KV>& k,
                                const ConstView3<KV>& v, const GlobalOptions& options = {})
{
    if (!options.causal)
        return attention(q, k, v, NoMask{}, options.attention);
    if (q.dimension(0) != k.dimension(0))
        detail::fail("global_attention: causal self-attention needs as many queries as keys, got ",
                     q.dimension(0), " query tokens and ", k.dimension(0), " key tokens");
    return attention(q, k, v, CausalMask{}, options.attention);
}

/// Exact self-attention of one layer over one sequence under `variant` (policy/variant.hpp),
/// token `i` at position `i`: the baseline of every variant. `options.causal` must be true
/// (every variant is causal).
/// \throws star::error as `attention`, when `q` and `k` token counts differ, when
/// `options.causal` is false, and when the variant rejects its settings.
template <QueryElement Q, KVElement KV, Variant V>
AttentionState global_attention(const ConstView3<Q>& q, const ConstView3<KV>& k,
                                const ConstView3<KV>& v, const V& variant,
                                const GlobalOptions& options = {})
{
    if (!options.causal)
        detail::fail("global_attention: a Variant is causal; options.causal must be true");
    if (q.dimension(0) != k.dimension(0))
        detail::fail("global_attention: causal self-attention needs as many queries as keys, got ",
                     q.dimension(0), " query tokens and ", k.dimension(0), " key tokens");
    variant.check(q.dimension(1));
    return attention(q, k, v, variant.mask(0, 0), options.attention, variant.transform(0, 0));
}

} // namespace star
