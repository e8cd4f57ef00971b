#pragma once
/// \file
/// The portable float atom: xsimd at the architecture `Arch` (the translation unit's own,
/// `xsimd::default_arch`, for the portable path). Having `Arch` in the type keeps
/// translation units compiled for different architectures from sharing a symbol.

#include <cstdint>

#include <Eigen/Core>
#include <xsimd/xsimd.hpp>

#include "atom.hpp"
#include "target.hpp"

STAR_INTRINSICS_BEGIN // see simd/target.hpp
namespace star::detail {

template <class Arch>
struct XsimdAtom {
    using reg = xsimd::batch<float, Arch>;
    using mask = xsimd::batch_bool<float, Arch>;
    static constexpr index width = static_cast<index>(reg::size);

    static reg broadcast(float s) noexcept { return reg(s); }
    static reg load(const float* p) noexcept { return reg::load_unaligned(p); }
    /// bf16 is the upper half of a float: its bits, widened and shifted, are the float's.
    /// xsimd 8 has no such conversion, but the compiler turns this loop into a vector
    /// widen and shift, stored and reloaded whole. Converting each element to float in
    /// the loop instead (Eigen writes half of a float at a time) was neither vectorised nor
    /// forwarded from store to load: the portable path's bf16 product ran at a tenth of
    /// its float one.
    static reg load(const Eigen::bfloat16* p) noexcept
    {
        alignas(64) std::uint32_t bits[reg::size];
        STAR_UNROLL
        for (index i = 0; i < width; ++i)
            bits[i] = std::uint32_t{Eigen::numext::bit_cast<std::uint16_t>(p[i])} << 16;
        return xsimd::bitwise_cast<reg>(xsimd::batch<std::uint32_t, Arch>::load_aligned(bits));
    }
    /// half is widened one element at a time (x86 atoms use F16C in registers).
    static reg load(const Eigen::half* p) noexcept
    {
        alignas(64) float wide[reg::size];
        for (index i = 0; i < width; ++i)
            wide[i] = static_cast<float>(p[i]);
        return reg::load_aligned(wide);
    }
    static void store(float* p, reg x) noexcept { x.store_unaligned(p); }
    static reg add(reg a, reg b) noexcept { return a + b; }
    static reg sub(reg a, reg b) noexcept { return a - b; }
    static reg mul(reg a, reg b) noexcept { return a * b; }
    static reg div(reg a, reg b) noexcept { return a / b; }
    static reg fma(reg a, reg b, reg c) noexcept { return xsimd::fma(a, b, c); }
    static reg max(reg a, reg b) noexcept { return xsimd::max(a, b); }
    static reg min(reg a, reg b) noexcept { return xsimd::min(a, b); }
    static mask equal(reg a, reg b) noexcept { return a == b; }
    static mask less(reg a, reg b) noexcept { return a < b; }
    static mask unordered(reg a, reg b) noexcept { return xsimd::isnan(a) || xsimd::isnan(b); }
    static reg select(mask m, reg a, reg b) noexcept { return xsimd::select(m, a, b); }
    static bool any(mask m) noexcept { return xsimd::any(m); }
    static float reduce_add(reg x) noexcept { return xsimd::hadd(x); }
    static void reduce_add4(const reg* x, float* out) noexcept
    {
        for (int i = 0; i < 4; ++i)
            out[i] = xsimd::hadd(x[i]);
    }
    static reg exp(reg x) noexcept { return xsimd::exp(x); }
};

static_assert(FloatAtom<XsimdAtom<xsimd::default_arch>>);

} // namespace star::detail
STAR_INTRINSICS_END
