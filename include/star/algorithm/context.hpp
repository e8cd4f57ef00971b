#pragma once
/// \file
/// What a host holds of the context, and what a distributed algorithm returns per host.

#include <array>
#include <cstdint>
#include <vector>

#include "../comm/communicator.hpp"
#include "../policy/block.hpp"
#include "../state.hpp"
#include "../tensor.hpp"

namespace star {

/// Q/K/V of the tokens `[first_token, first_token + q.dimension(0))` of the context, the
/// queries float or bf16 (`Q`), as the kernel takes them.
template <KVElement KV, QueryElement Q = float>
struct ContextPiece {
    index first_token = 0;              ///< Context position of the piece's first token.
    ConstView3<Q> q{nullptr, 0, 0, 0};  ///< Queries `[tokens, Hq, head_dim]`.
    ConstView3<KV> k{nullptr, 0, 0, 0}; ///< Keys `[tokens, Hkv, head_dim]`.
    ConstView3<KV> v{nullptr, 0, 0, 0}; ///< Values `[tokens, Hkv, head_dim]`.
};

/// Q/K/V of one token range, as views into a `HostContext`'s memory.
template <KVElement KV, QueryElement Q = float>
struct ContextSlice {
    ConstView3<Q> q;  ///< Queries `[tokens, Hq, head_dim]`.
    ConstView3<KV> k; ///< Keys `[tokens, Hkv, head_dim]`.
    ConstView3<KV> v; ///< Values `[tokens, Hkv, head_dim]`.
};

/// The pieces of the context one host holds: in-process every host can see the whole
/// context (one piece from token 0); across processes a host holds the pieces it needs.
/// The queries are float or bf16 (`Q`); a bf16 model's projections give bf16 ones.
template <KVElement KV, QueryElement Q = float>
class HostContext {
public:
    /// Holds no piece.
    HostContext() = default;

    /// The whole context `q`/`k`/`v`, from token 0.
    HostContext(const ConstView3<Q>& q, const ConstView3<KV>& k, const ConstView3<KV>& v)
    {
        add(0, q, k, v);
    }

    /// Adds the tokens `[first_token, first_token + q.dimension(0))`.
    void add(index first_token, const ConstView3<Q>& q, const ConstView3<KV>& k,
             const ConstView3<KV>& v)
    {
        if (q.dimension(0) != k.dimension(0) || k.dimension(0) != v.dimension(0))
            detail::fail("HostContext: q, k and v must have the same token count, got ",
                         q.dimension(0), ", ", k.dimension(0), " and ", v.dimension(0));
        if (first_token < 0)
            detail::fail("HostContext: first token ", first_token, " is negative");
        if (k.dimension(1) != v.dimension(1) || q.dimension(2) != k.dimension(2) ||
            k.dimension(2) != v.dimension(2))
            detail::fail("HostContext: q, k and v disagree: q has ", q.dimension(1),
                         " heads of head_dim ", q.dimension(2), ", k ", k.dimension(1), " of ",
                         k.dimension(2), ", v ", v.dimension(1), " of ", v.dimension(2));
        // One layer's pieces: a received anchor is laid out like the receiver's own pieces.
        if (!pieces_.empty() && (q.dimension(1) != q_heads() || k.dimension(1) != kv_heads() ||
                                 k.dimension(2) != head_dim()))
            detail::fail("HostContext: a piece of ", q.dimension(1), " query heads, ",
                         k.dimension(1), " kv heads of head_dim ", k.dimension(2),
                         " joins pieces of ", q_heads(), ", ", kv_heads(), " of ", head_dim());
        pieces_.push_back({first_token, q, k, v});
    }

    /// Whether it holds no piece.
    [[nodiscard]] bool empty() const noexcept { return pieces_.empty(); }
    /// Query heads of its pieces (0 if it holds none).
    [[nodiscard]] index q_heads() const noexcept { return empty() ? 0 : pieces_[0].q.dimension(1); }
    /// KV heads of its pieces (0 if it holds none).
    [[nodiscard]] index kv_heads() const noexcept
    {
        return empty() ? 0 : pieces_[0].k.dimension(1);
    }
    /// head_dim of its pieces (0 if it holds none).
    [[nodiscard]] index head_dim() const noexcept
    {
        return empty() ? 0 : pieces_[0].k.dimension(2);
    }

    /// Views of `range`, which must lie inside one piece.
    [[nodiscard]] ContextSlice<KV, Q> slice(TokenRange range) const
    {
        for (const auto& p : pieces_) {
            const index offset = range.begin - p.first_token;
            if (offset >= 0 && range.end <= p.first_token + p.q.dimension(0))
                return {token_slice(p.q, offset, range.size()),
                        token_slice(p.k, offset, range.size()),
                        token_slice(p.v, offset, range.size())};
        }
        detail::fail("HostContext: this host does not hold context tokens [", range.begin, ", ",
                     range.end, ")");
    }

private:
    std::vector<ContextPiece<KV, Q>> pieces_;
};

namespace detail {

/// A host's query heads, KV heads and head_dim as settings the hosts must agree on
/// (`check_agreement`); unknown where it holds no piece of the context.
template <KVElement KV, QueryElement Q>
std::array<std::int64_t, 3> head_settings(const HostContext<KV, Q>& context)
{
    if (context.empty())
        return {unknown_setting, unknown_setting, unknown_setting};
    return {context.q_heads(), context.kv_heads(), context.head_dim()};
}

} // namespace detail

/// The attention output of one range of query tokens, as a host returns it.
struct RangeOutput {
    TokenRange tokens;    ///< The query tokens, as positions in the context.
    AttentionState state; ///< Their attention output and LSE, `tokens.size()` rows.
};

/// Puts the per-host range outputs of an in-process run back into context order.
/// \throws star::error if the ranges do not cover `[0, shape.tokens)` exactly once.
template <class PerHostOutputs>
AttentionState assemble(const PerHostOutputs& outputs, Shape shape)
{
    AttentionState whole(shape.tokens, shape.heads, shape.head_dim);
    std::vector<char> covered(static_cast<std::size_t>(shape.tokens), 0);
    const index row = shape.heads * shape.head_dim;
    for (int r = outputs.first_rank(); r < outputs.end_rank(); ++r)
        for (const RangeOutput& out : outputs[r]) {
            if (out.tokens.begin < 0 || out.tokens.end > shape.tokens ||
                out.state.shape() != Shape{out.tokens.size(), shape.heads, shape.head_dim})
                detail::fail("assemble: host ", r, " returned tokens [", out.tokens.begin, ", ",
                             out.tokens.end, ") that do not fit the context");
            for (index t = out.tokens.begin; t < out.tokens.end; ++t) {
                if (covered[static_cast<std::size_t>(t)]++)
                    detail::fail("assemble: token ", t, " is returned twice");
            }
            std::copy_n(out.state.output.data(), out.state.output.size(),
                        whole.output.data() + out.tokens.begin * row);
            std::copy_n(out.state.lse.data(), out.state.lse.size(),
                        whole.lse.data() + out.tokens.begin * shape.heads);
        }
    if (std::find(covered.begin(), covered.end(), 0) != covered.end())
        detail::fail("assemble: some context tokens are returned by no host");
    return whole;
}

} // namespace star
