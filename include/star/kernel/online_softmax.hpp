#pragma once
/// \file
/// The online softmax of the tiled kernel, written once over `xsimd::batch<float>`.
///
/// A query meets its keys one tile at a time. It keeps the running maximum of its scores
/// and the running sum of `exp(score - max)`; when a tile raises the maximum, what was
/// accumulated so far is rescaled by `exp(old_max - new_max)`. At the end
/// `output = accumulator / sum` and `lse = max + log(sum)`, with no overflow whatever the
/// scores. The kernel stores a score tile with one column per query, so every operation
/// here is vertical: one SIMD lane per query, no horizontal reductions.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#include "../detail/simd.hpp"
#include "../tensor.hpp"

namespace star::detail {

inline constexpr float minus_infinity = -std::numeric_limits<float>::infinity();

/// `values[0..n) *= factor`.
inline void scale_in_place(float* values, index n, float factor) noexcept
{
    const float_batch factor_lanes(factor);
    index i = 0;
    for (; i + batch_width <= n; i += batch_width)
        (float_batch::load_unaligned(values + i) * factor_lanes).store_unaligned(values + i);
    for (; i < n; ++i)
        values[i] *= factor;
}

/// Running softmax statistics of `columns` queries (a multiple of the batch width).
class OnlineSoftmax {
public:
    void reset(index columns)
    {
        max_.assign(static_cast<std::size_t>(columns), minus_infinity);
        sum_.assign(static_cast<std::size_t>(columns), 0.0f);
        rescale_.assign(static_cast<std::size_t>(columns), 1.0f);
    }

    /// `scores` is a tile `[keys, columns]` with row stride `ld`: scaled scores, `-inf`
    /// where masked. Turns it into unnormalised probabilities in place, folds it into the
    /// running statistics, and leaves in `rescale(c)` the factor by which query `c`'s
    /// output accumulator must be multiplied before this tile's `P x V` is added.
    void absorb(float* scores, index ld, index keys) noexcept
    {
        const float_batch minus_inf(minus_infinity);
        for (index c = 0; c < static_cast<index>(max_.size()); c += batch_width) {
            float_batch tile_max = minus_inf;
            for (index j = 0; j < keys; ++j)
                tile_max = xsimd::max(tile_max, float_batch::load_unaligned(scores + j * ld + c));
            const float_batch old_max = float_batch::load_aligned(max_.data() + c);
            const float_batch new_max = xsimd::max(old_max, tile_max);
            // A query that has seen no key yet keeps max = -inf; shifting it by 0 instead
            // makes its exp(-inf) = 0 rather than exp(-inf + inf) = NaN.
            const float_batch shift = xsimd::select(new_max == minus_inf, float_batch(0.0f), new_max);
            const float_batch factor = xsimd::exp(old_max - shift);
            float_batch tile_sum(0.0f);
            for (index j = 0; j < keys; ++j) {
                float* row = scores + j * ld + c;
                const float_batch p = xsimd::exp(float_batch::load_unaligned(row) - shift);
                p.store_unaligned(row);
                tile_sum += p;
            }
            const float_batch old_sum = float_batch::load_aligned(sum_.data() + c);
            xsimd::fma(old_sum, factor, tile_sum).store_aligned(sum_.data() + c);
            new_max.store_aligned(max_.data() + c);
            factor.store_aligned(rescale_.data() + c);
        }
    }

    [[nodiscard]] float rescale(index c) const noexcept { return rescale_[static_cast<std::size_t>(c)]; }
    [[nodiscard]] float sum(index c) const noexcept { return sum_[static_cast<std::size_t>(c)]; }
    /// Memory held, in bytes.
    [[nodiscard]] std::size_t bytes() const noexcept
    {
        return sizeof(float) * (max_.size() + sum_.size() + rescale_.size());
    }
    /// The largest score query `c` has seen; `-inf` if it saw none.
    [[nodiscard]] float max(index c) const noexcept { return max_[static_cast<std::size_t>(c)]; }

    /// `log sum_k exp(score_k)` over every key absorbed by query `c`; `-inf` if it saw none.
    [[nodiscard]] float lse(index c) const noexcept
    {
        const auto i = static_cast<std::size_t>(c);
        return sum_[i] > 0.0f ? max_[i] + std::log(sum_[i]) : minus_infinity;
    }

private:
    aligned_vector<float> max_;
    aligned_vector<float> sum_;
    aligned_vector<float> rescale_;
};

} // namespace star::detail
