#pragma once
/// \file
/// The one place the SIMD type is chosen: `xsimd::batch<float>` at the architecture the
/// translation unit is compiled for (AVX-512 under -march=native on this project's
/// machines). Every vectorised loop of the kernel is written against these names.

#include <vector>

#include <xsimd/xsimd.hpp>

#include "../tensor.hpp"

namespace star::detail {

using float_batch = xsimd::batch<float>;
inline constexpr index batch_width = static_cast<index>(float_batch::size);

template <class T>
using aligned_vector = std::vector<T, xsimd::aligned_allocator<T>>;

/// `n` rounded up to a whole number of SIMD batches.
constexpr index round_up_to_batch(index n) noexcept
{
    return (n + batch_width - 1) / batch_width * batch_width;
}

} // namespace star::detail
