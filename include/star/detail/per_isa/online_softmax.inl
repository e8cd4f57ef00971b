// The online softmax of the tiled kernel, written once over a float atom `S`. Included by
// kernels.hpp into one namespace per path, inside that path's target region.
//
// A query meets its keys one tile at a time. It keeps the running maximum of its scores
// and the running sum of `exp(score - max)`; when a tile raises the maximum, what was
// accumulated so far is rescaled by `exp(old_max - new_max)`. At the end
// `output = accumulator / sum` and `lse = max + log(sum)`, with no overflow whatever the
// scores. The kernel stores a score tile with one column per query, so every operation
// here is vertical: one SIMD lane per query, no horizontal reductions.

/// Running softmax statistics of `columns` queries (a multiple of the vector width).
template <class S>
class OnlineSoftmax {
public:
    void reset(index columns)
    {
        max_.assign(static_cast<std::size_t>(columns), minus_infinity);
        sum_.assign(static_cast<std::size_t>(columns), 0.0f);
        rescale_.assign(static_cast<std::size_t>(columns), 1.0f);
    }

    /// `scores` is a tile `[keys, columns]` with row stride `ld`: scaled scores, `-inf`
    /// where masked. Turns it into unnormalised probabilities, handed to `sink` two keys at
    /// a time (`sink.store_probabilities(scores, ld, j, c, p_j, p_j+1)`, the second 0 past
    /// the last key) for the value product, folds them into the running statistics, and
    /// leaves in `rescale_factors()[c]` the factor by which query `c`'s output accumulator
    /// must be multiplied before this tile's `P x V` is added.
    template <class Sink>
    void absorb(float* scores, index ld, index keys, Sink& sink) noexcept
    {
        const auto minus_inf = S::broadcast(minus_infinity);
        const auto zero = S::broadcast(0.0f);
        for (index c = 0; c < static_cast<index>(max_.size()); c += S::width) {
            auto tile_max = minus_inf;
            for (index j = 0; j < keys; ++j)
                tile_max = S::max(tile_max, S::load(scores + j * ld + c));
            const auto old_max = S::load(max_.data() + c);
            const auto new_max = S::max(old_max, tile_max);
            // A query that has seen no key yet keeps max = -inf; shifting it by 0 instead
            // makes its exp(-inf) = 0 rather than exp(-inf + inf) = NaN.
            const auto shift = S::select(S::equal(new_max, minus_inf), zero, new_max);
            const auto factor = softmax_exp<S>(S::sub(old_max, shift));
            auto tile_sum = zero;
            for (index j = 0; j < keys; j += 2) {
                const auto even = softmax_exp<S>(S::sub(S::load(scores + j * ld + c), shift));
                const auto odd =
                    j + 1 < keys ? softmax_exp<S>(S::sub(S::load(scores + (j + 1) * ld + c), shift))
                                 : zero;
                sink.store_probabilities(scores, ld, j, c, even, odd);
                tile_sum = S::add(S::add(tile_sum, even), odd);
            }
            S::store(sum_.data() + c, S::fma(S::load(sum_.data() + c), factor, tile_sum));
            S::store(max_.data() + c, new_max);
            S::store(rescale_.data() + c, factor);
        }
    }

    /// The factors absorb() left, one per column.
    [[nodiscard]] const float* rescale_factors() const noexcept { return rescale_.data(); }
    [[nodiscard]] float sum(index c) const noexcept { return sum_[static_cast<std::size_t>(c)]; }
    /// Memory held, in bytes.
    [[nodiscard]] std::size_t bytes() const noexcept
    {
        return sizeof(float) * (max_.size() + sum_.size() + rescale_.size());
    }
    /// The largest score query `c` has seen; `-inf` if it saw none.
    [[nodiscard]] float max(index c) const noexcept { return max_[static_cast<std::size_t>(c)]; }

private:
    scratch<float> max_;
    scratch<float> sum_;
    scratch<float> rescale_;
};
