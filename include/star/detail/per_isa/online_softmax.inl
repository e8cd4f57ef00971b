// The online softmax of the tiled kernel, written once over a float atom `S`. Included by
// kernels.hpp into one namespace per path, inside that path's target region.
//
// A query meets its keys one tile at a time. It keeps a running shift, close to the largest
// of its scores so far, and the running sum of `exp(score - shift)`; when a tile raises the
// shift, what was accumulated so far is rescaled by `exp(old_shift - new_shift)`. At the
// end `output = accumulator / sum` and `lse = shift + log(sum)`, with no overflow whatever
// the scores. The kernel stores a score tile with one column per query, so every operation
// here is vertical: one SIMD lane per query, no horizontal reductions.
//
// The shift need not be the maximum itself, only near it: a tile whose scores exceed the
// shift by at most `headroom` is taken against the shift it finds, in one pass, and only a
// tile that would exceed it (rare once a query has seen a few tiles) is passed over twice,
// once for its maximum and once for the exps. A pass of its own for each tile's maximum
// over the score tile, which lives in L2, cost 3-4% of a bf16 prefill (docs/performance.md).

/// Running softmax statistics of `columns` queries (a multiple of the vector width).
template <class S>
class OnlineSoftmax {
public:
    /// How far a score may exceed its query's shift without raising it: the weights are
    /// then at most e^8, about 3000, far from overflowing a float sum or output, and their
    /// relative rounding (to bf16, or in float) is what it is at any size.
    static constexpr float headroom = 8.0f;

    void reset(index columns)
    {
        shift_.assign(static_cast<std::size_t>(columns), minus_infinity);
        sum_.assign(static_cast<std::size_t>(columns), 0.0f);
        rescale_.assign(static_cast<std::size_t>(columns), 1.0f);
    }

    /// `scores` is a tile `[keys, columns]` with row stride `ld`: scaled scores, `-inf`
    /// where masked. Turns it into unnormalised probabilities, handed to `sink` two keys at
    /// a time (`sink.store_probabilities(scores, ld, j, c, p_j, p_j+1)`, the second 0 past
    /// the last key) for the value product, folds them into the running statistics, and
    /// leaves in `rescale_factors()[c]` the factor by which query `c`'s output accumulator
    /// must be multiplied before this tile's `P x V` is added. A sink that stores the
    /// probabilities over the scores (`Sink::probabilities_in_place`) has every tile passed
    /// over twice: a pass that finds it must raise the shift has no scores left to redo.
    template <class Sink>
    void absorb(float* scores, index ld, index keys, Sink& sink) noexcept
    {
        for (index c = 0; c < static_cast<index>(shift_.size()); c += S::width) {
            if constexpr (!Sink::probabilities_in_place)
                if (absorb_under_shift(scores, ld, keys, c, sink))
                    continue;
            absorb_raising_shift(scores, ld, keys, c, sink);
        }
    }

    /// The factors absorb() left, one per column.
    [[nodiscard]] const float* rescale_factors() const noexcept { return rescale_.data(); }
    [[nodiscard]] float sum(index c) const noexcept { return sum_[static_cast<std::size_t>(c)]; }
    /// Memory held, in bytes.
    [[nodiscard]] std::size_t bytes() const noexcept
    {
        return sizeof(float) * (shift_.size() + sum_.size() + rescale_.size());
    }
    /// Query `c`'s shift: at most `headroom` below the largest score it has seen, not above
    /// it; `-inf` if it saw none.
    [[nodiscard]] float shift(index c) const noexcept
    {
        return shift_[static_cast<std::size_t>(c)];
    }

private:
    /// Columns `[c, c + width)` against the shifts they have, in one pass over the tile.
    /// False, what it handed the sink to be overwritten, where a column has no shift yet or
    /// a score exceeds its shift by more than the headroom.
    template <class Sink>
    bool absorb_under_shift(float* scores, index ld, index keys, index c, Sink& sink) noexcept
    {
        const auto minus_inf = S::broadcast(minus_infinity);
        const auto shift = S::load(shift_.data() + c);
        if (S::any(S::equal(shift, minus_inf)))
            return false;
        auto tile_max = minus_inf;
        auto tile_sum = S::broadcast(0.0f);
        for (index j = 0; j < keys; j += 2) {
            const auto even_score = S::load(scores + j * ld + c);
            const auto odd_score = j + 1 < keys ? S::load(scores + (j + 1) * ld + c) : minus_inf;
            tile_max = S::max(tile_max, S::max(even_score, odd_score));
            const auto even = softmax_exp<S>(S::sub(even_score, shift));
            const auto odd = softmax_exp<S>(S::sub(odd_score, shift));
            sink.store_probabilities(scores, ld, j, c, even, odd);
            tile_sum = S::add(S::add(tile_sum, even), odd);
        }
        if (S::any(S::less(S::add(shift, S::broadcast(headroom)), tile_max)))
            return false;
        S::store(sum_.data() + c, S::add(S::load(sum_.data() + c), tile_sum));
        S::store(rescale_.data() + c, S::broadcast(1.0f));
        return true;
    }

    /// Columns `[c, c + width)` shifted by the largest score they have seen, this tile's
    /// included: a pass for the tile's maximum, then one for the exps.
    template <class Sink>
    void absorb_raising_shift(float* scores, index ld, index keys, index c, Sink& sink) noexcept
    {
        const auto minus_inf = S::broadcast(minus_infinity);
        const auto zero = S::broadcast(0.0f);
        auto tile_max = minus_inf;
        for (index j = 0; j < keys; ++j)
            tile_max = S::max(tile_max, S::load(scores + j * ld + c));
        const auto old_shift = S::load(shift_.data() + c);
        const auto new_max = S::max(old_shift, tile_max);
        // A query that has seen no key yet keeps its shift at -inf; shifting it by 0 instead
        // makes its exp(-inf) = 0 rather than exp(-inf + inf) = NaN.
        const auto shift = S::select(S::equal(new_max, minus_inf), zero, new_max);
        const auto factor = softmax_exp<S>(S::sub(old_shift, shift));
        auto tile_sum = zero;
        for (index j = 0; j < keys; j += 2) {
            const auto even = softmax_exp<S>(S::sub(S::load(scores + j * ld + c), shift));
            const auto odd = j + 1 < keys
                                 ? softmax_exp<S>(S::sub(S::load(scores + (j + 1) * ld + c), shift))
                                 : zero;
            sink.store_probabilities(scores, ld, j, c, even, odd);
            tile_sum = S::add(S::add(tile_sum, even), odd);
        }
        S::store(sum_.data() + c, S::fma(S::load(sum_.data() + c), factor, tile_sum));
        S::store(shift_.data() + c, new_max);
        S::store(rescale_.data() + c, factor);
    }

    scratch<float> shift_;
    scratch<float> sum_;
    scratch<float> rescale_;
};
