#pragma once
/// \file
/// Where one kernel call writes its result: the memory of the `AttentionState` that
/// `attention` returns, or the caller's own (`attention_into`), whose output rows may be
/// float or bf16 (the LSE is always float).

#include <algorithm>
#include <cmath>
#include <span>
#include <vector>

#include "../state.hpp"
#include "../tensor.hpp"

namespace star::detail {

/// Finite inputs can still overflow float: a score `scale * q.k` beyond 3.4e38, or an
/// output `sum p * v` beyond it (or beyond bf16's slightly smaller range, for a bf16
/// output). The result would be garbage, so it is an error.
[[noreturn]] inline void overflow(index token, index head, const char* what,
                                  const char* type = "float")
{
    fail_at_runtime("attention: the ", what, " of query token ", token, ", head ", head,
                    " overflow ", type, " (inputs too large for ", type,
                    " arithmetic, or not finite)");
}

/// The output `[tokens, heads, head_dim]` (float or bf16) and LSE `[tokens, heads]` rows of
/// one call. It views memory it does not own. Rows are written whole, one task each, so
/// tasks never share a row.
class Outputs {
public:
    explicit Outputs(AttentionState& state) noexcept
        : float_(state.output.data()), lse_(state.lse.data()), heads_(state.output.dimension(1)),
          dim_(state.output.dimension(2))
    {
    }
    Outputs(float* output, float* lse, index heads, index head_dim) noexcept
        : float_(output), lse_(lse), heads_(heads), dim_(head_dim)
    {
    }
    Outputs(Eigen::bfloat16* output, float* lse, index heads, index head_dim) noexcept
        : bf16_(output), lse_(lse), heads_(heads), dim_(head_dim)
    {
    }

    /// The output row of `token` and `head` if the output is float, else null.
    [[nodiscard]] float* float_row(index token, index head) const noexcept
    {
        return float_ == nullptr ? nullptr : float_ + (token * heads_ + head) * dim_;
    }
    /// The output row of `token` and `head` if the output is bf16, else null.
    [[nodiscard]] Eigen::bfloat16* bf16_row(index token, index head) const noexcept
    {
        return bf16_ == nullptr ? nullptr : bf16_ + (token * heads_ + head) * dim_;
    }
    [[nodiscard]] float& lse(index token, index head) const noexcept
    {
        return lse_[token * heads_ + head];
    }
    /// The output's element type, for messages.
    [[nodiscard]] const char* element_name() const noexcept
    {
        return float_ != nullptr ? "float" : "bf16";
    }
    /// The same memory from token `first` on, as the outputs of a call whose token 0 it is.
    [[nodiscard]] Outputs from_token(index first) const noexcept
    {
        Outputs rest = *this;
        if (float_ != nullptr)
            rest.float_ += first * heads_ * dim_;
        if (bf16_ != nullptr)
            rest.bf16_ += first * heads_ * dim_;
        rest.lse_ += first * heads_;
        return rest;
    }

    /// Writes `values[c] / divisor` into the output row of `token` and `head`, rounded to
    /// the output's type, and returns whether every written value is finite (a value near
    /// float's largest can round to infinity in bf16). No early exit, so the loop
    /// vectorises.
    bool write_row(index token, index head, const float* values, float divisor) const noexcept
    {
        bool finite = true;
        if (float* o = float_row(token, head)) {
            for (index c = 0; c < dim_; ++c) {
                o[c] = values[c] / divisor;
                finite &= std::isfinite(o[c]);
            }
        } else {
            Eigen::bfloat16* b = bf16_row(token, head);
            for (index c = 0; c < dim_; ++c) {
                b[c] = Eigen::bfloat16(values[c] / divisor);
                finite &= std::isfinite(static_cast<float>(b[c]));
            }
        }
        return finite;
    }

    /// Writes zeros into the output row of `token` and `head`.
    void zero_row(index token, index head) const noexcept
    {
        if (float* o = float_row(token, head))
            std::fill_n(o, dim_, 0.0f);
        else
            std::fill_n(bf16_row(token, head), dim_, Eigen::bfloat16(0.0f));
    }

private:
    float* float_ = nullptr; // one of the two
    Eigen::bfloat16* bf16_ = nullptr;
    float* lse_;
    index heads_;
    index dim_;
};

/// A state of `tokens x heads x head_dim` whose values are left for a call to write: the
/// kernel writes every row it is given, so clearing them first would only touch the memory
/// twice.
inline AttentionState unfilled_state(index tokens, index heads, index head_dim)
{
    AttentionState state;
    state.output = Tensor3<float>(tokens, heads, head_dim);
    state.lse = Tensor2f(tokens, heads);
    return state;
}

/// Writes the exact merge of `parts` (states over disjoint slices of the keys, as
/// `merge` takes them, already checked alike) into `out`.
/// \throws star::runtime_failure if a merged row rounds beyond a bf16 output's range.
inline void merge_parts(const Outputs& out, std::span<const AttentionState> parts)
{
    const Shape s = parts.front().shape();
    std::vector<float> row(static_cast<std::size_t>(s.head_dim));
    for (index t = 0; t < s.tokens; ++t)
        for (index h = 0; h < s.heads; ++h) {
            const index r = t * s.heads + h;
            if (float* o = out.float_row(t, h)) {
                out.lse(t, h) = merge_row(parts, r, o);
                continue;
            }
            out.lse(t, h) = merge_row(parts, r, row.data());
            if (!out.write_row(t, h, row.data(), 1.0f))
                overflow(t, h, "output", out.element_name());
        }
}

} // namespace star::detail
