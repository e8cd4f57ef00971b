#pragma once
/// \file
/// The partial attention state `(output, lse)` and its exact merge.
///
/// Attention of a query over a set of keys is fully described by its normalised output `o`
/// and its log-sum-exp `lse = log sum_k exp(scale * q.k)`. Two states over disjoint key sets
/// combine exactly into the state over their union, which is what every distributed
/// algorithm here (split-K, ring, star phase 2) is built from.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>

#include "tensor.hpp"

namespace star {

/// Output `[tokens, heads, head_dim]` and natural-log LSE `[tokens, heads]` of attention
/// over some set of keys. A row that saw no key has output 0 and `lse = -inf`, and weighs
/// nothing in a merge.
struct AttentionState {
    Tensor3<float> output; ///< Normalised attention output `[tokens, heads, head_dim]`.
    Tensor2f lse;          ///< Natural-log log-sum-exp of the scaled scores `[tokens, heads]`.

    /// An empty state: both tensors have size 0.
    AttentionState() = default;

    /// The state of attention over no keys: output 0, lse -inf.
    AttentionState(index tokens, index heads, index head_dim)
        : output(tokens, heads, head_dim), lse(tokens, heads)
    {
        output.setZero();
        lse.setConstant(-std::numeric_limits<float>::infinity());
    }

    /// The shape of `output`.
    [[nodiscard]] Shape shape() const
    {
        return {output.dimension(0), output.dimension(1), output.dimension(2)};
    }

    /// Memory held by a state of `tokens x heads x head_dim`: output and LSE.
    [[nodiscard]] static std::size_t bytes(index tokens, index heads, index head_dim) noexcept
    {
        return sizeof(float) * static_cast<std::size_t>(tokens * heads * (head_dim + 1));
    }
};

namespace detail {

inline void check_same_shape(const AttentionState& a, const AttentionState& b, const char* where)
{
    if (a.shape() != b.shape())
        fail(where, ": states of different shapes [", a.shape().tokens, ", ", a.shape().heads, ", ",
             a.shape().head_dim, "] and [", b.shape().tokens, ", ", b.shape().heads, ", ",
             b.shape().head_dim, "]");
    if (a.lse.dimension(0) != a.shape().tokens || a.lse.dimension(1) != a.shape().heads ||
        b.lse.dimension(0) != b.shape().tokens || b.lse.dimension(1) != b.shape().heads)
        fail(where, ": lse shape does not match output shape");
}

} // namespace detail

/// Folds `part` into `acc` (online, pairwise): afterwards `acc` is the state over the union
/// of both key sets. Max-stabilised, so no `exp` overflows; a `-inf` side weighs 0.
inline void merge_into(AttentionState& acc, const AttentionState& part)
{
    detail::check_same_shape(acc, part, "merge_into");
    const index rows = acc.lse.size();
    const index d = acc.output.dimension(2);
    for (index r = 0; r < rows; ++r) {
        const float la = acc.lse.data()[r];
        const float lb = part.lse.data()[r];
        const float m = std::max(la, lb);
        if (m == -std::numeric_limits<float>::infinity())
            continue; // both empty: acc already is the empty state
        const float wa = std::exp(la - m);
        const float wb = std::exp(lb - m);
        const float total = wa + wb;
        Eigen::Map<Eigen::VectorXf> oa(acc.output.data() + r * d, d);
        Eigen::Map<const Eigen::VectorXf> ob(part.output.data() + r * d, d);
        oa = (wa / total) * oa + (wb / total) * ob;
        acc.lse.data()[r] = m + std::log(total);
    }
}

namespace detail {

/// Row `r` (token-major: `token * heads + head`) of the merge of `parts`, written into the
/// `head_dim` floats at `o`; returns its LSE. One max-stabilised pass:
/// `m = max lse_i, lse = m + log sum exp(lse_i - m), o = sum exp(lse_i - lse) o_i`.
inline float merge_row(std::span<const AttentionState> parts, index r, float* o)
{
    const index d = parts.front().output.dimension(2);
    Eigen::Map<Eigen::VectorXf> row(o, d);
    row.setZero();
    float m = -std::numeric_limits<float>::infinity();
    for (const auto& p : parts)
        m = std::max(m, p.lse.data()[r]);
    if (m == -std::numeric_limits<float>::infinity())
        return m;
    float total = 0.0f;
    for (const auto& p : parts)
        total += std::exp(p.lse.data()[r] - m);
    // Weights relative to m, not to the rounded lse: near |lse| = 1000 a float lse is
    // off by up to 3e-5, and exp(lse_i - lse) would carry that into every weight.
    for (const auto& p : parts) {
        const float w = std::exp(p.lse.data()[r] - m) / total;
        if (w != 0.0f)
            row += w * Eigen::Map<const Eigen::VectorXf>(p.output.data() + r * d, d);
    }
    return m + std::log(total);
}

} // namespace detail

/// The state over the union of the key sets of `parts`, in one max-stabilised pass
/// per row (detail::merge_row).
inline AttentionState merge(std::span<const AttentionState> parts)
{
    if (parts.empty())
        detail::fail("merge: no states to merge");
    for (const auto& p : parts.subspan(1))
        detail::check_same_shape(parts.front(), p, "merge");
    const Shape s = parts.front().shape();
    AttentionState result(s.tokens, s.heads, s.head_dim);
    const index rows = result.lse.size();
    for (index r = 0; r < rows; ++r)
        result.lse.data()[r] = detail::merge_row(parts, r, result.output.data() + r * s.head_dim);
    return result;
}

} // namespace star
