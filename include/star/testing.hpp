#pragma once
/// \file
/// Helpers for users' tests, examples and benchmarks: reproducible random inputs and the
/// largest difference between two results. Not included by `<star/star.hpp>`.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include "detail/checked_arithmetic.hpp"
#include "error.hpp"
#include "state.hpp"
#include "tensor.hpp"

namespace star {

/// A `[tokens, heads, head_dim]` tensor of independent normal values of mean 0 and standard
/// deviation `stddev`, drawn in float and rounded to `T` (float, bf16 or half), all from
/// `seed`. The same seed gives the same tensor on every run with the same standard library
/// (`std::normal_distribution`'s algorithm is the library's own).
/// \throws star::error if a dimension is negative or `stddev` is not finite and positive.
template <KVElement T = float>
Tensor3<T> random_tensor(index tokens, index heads, index head_dim, std::uint64_t seed,
                         float stddev = 1.0f)
{
    if (tokens < 0 || heads < 0 || head_dim < 0)
        detail::fail("random_tensor: dimensions must not be negative, got [", tokens, ", ", heads,
                     ", ", head_dim, "]");
    if (!(std::isfinite(stddev) && stddev > 0.0f))
        detail::fail("random_tensor: stddev must be finite and positive, got ", stddev);
    (void)detail::checked_product({tokens, heads, head_dim}, "random_tensor: elements");
    std::mt19937_64 engine(seed);
    std::normal_distribution<float> normal(0.0f, stddev);
    Tensor3<T> t(tokens, heads, head_dim);
    for (index n = 0; n < t.size(); ++n)
        t.data()[n] = static_cast<T>(normal(engine));
    return t;
}

namespace detail {

// |a - b| in double, with equal values (equal infinities included) 0 apart and a NaN on
// one side only infinitely far: a NaN where the other has a number must never pass as close.
inline double element_difference(double a, double b)
{
    if (a == b)
        return 0.0;
    if (std::isnan(a) && std::isnan(b))
        return 0.0;
    if (std::isnan(a) || std::isnan(b))
        return std::numeric_limits<double>::infinity();
    return std::abs(a - b);
}

} // namespace detail

/// The largest elementwise `|a - b|` of two tensors of one shape, in double (0 for empty
/// tensors). Equal infinities, and NaN against NaN, count as 0 apart; a NaN against a number,
/// or infinities of different signs, as infinitely far.
/// \throws star::error if the shapes differ.
template <KVElement T>
double max_difference(const ConstView3<T>& a, const ConstView3<T>& b)
{
    if (shape_of(a) != shape_of(b))
        detail::fail("max_difference: the tensors differ in shape: [", a.dimension(0), ", ",
                     a.dimension(1), ", ", a.dimension(2), "] and [", b.dimension(0), ", ",
                     b.dimension(1), ", ", b.dimension(2), "]");
    double largest = 0.0;
    for (index n = 0; n < a.size(); ++n)
        largest = std::max(largest, detail::element_difference(static_cast<double>(a.data()[n]),
                                                               static_cast<double>(b.data()[n])));
    return largest;
}

/// `max_difference` of two tensors.
template <KVElement T>
double max_difference(const Tensor3<T>& a, const Tensor3<T>& b)
{
    return max_difference(view(a), view(b));
}

/// The largest difference between two attention states, over their outputs and their
/// log-sum-exps alike (a row that saw no key has `lse = -inf` in both, 0 apart).
/// \throws star::error if the shapes differ.
inline double max_difference(const AttentionState& a, const AttentionState& b)
{
    const double outputs = max_difference(view(a.output), view(b.output));
    if (a.lse.dimension(0) != b.lse.dimension(0) || a.lse.dimension(1) != b.lse.dimension(1))
        detail::fail("max_difference: the log-sum-exps differ in shape: [", a.lse.dimension(0),
                     ", ", a.lse.dimension(1), "] and [", b.lse.dimension(0), ", ",
                     b.lse.dimension(1), "]");
    double lse = 0.0;
    for (index n = 0; n < a.lse.size(); ++n)
        lse = std::max(lse, detail::element_difference(a.lse.data()[n], b.lse.data()[n]));
    return std::max(outputs, lse);
}

} // namespace star
