#pragma once
/// \file
/// Index arithmetic that reports overflow instead of wrapping: sizes and offsets computed
/// from a caller's shapes (token counts, heads, head_dim, block sizes) can exceed
/// `index`, and a wrapped value would become a negative offset, a small allocation that is
/// then overrun, or a loop that never ends.

#include <initializer_list>
#include <limits>

#include "../error.hpp"

namespace star::detail {

/// `a + b` of signed integers. \throws star::error naming `what` if it overflows.
template <class I>
I checked_add(I a, I b, const char* what)
{
    constexpr I most = std::numeric_limits<I>::max(), least = std::numeric_limits<I>::min();
    if ((b > 0 && a > most - b) || (b < 0 && a < least - b))
        fail(what, ": ", a, " + ", b, " overflows");
    return a + b;
}

/// The product of `factors`, none negative. \throws star::error naming `what` if it
/// overflows.
template <class I>
I checked_product(std::initializer_list<I> factors, const char* what)
{
    I product = 1;
    for (const I f : factors) {
        if (f != 0 && product > std::numeric_limits<I>::max() / f)
            fail(what, ": the product of the sizes overflows at a factor of ", f);
        product *= f;
    }
    return product;
}

} // namespace star::detail
