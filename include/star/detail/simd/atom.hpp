#pragma once
/// \file
/// The float atom: the few vector operations the kernel is written against, one struct per
/// instruction set (xsimd_atom.hpp, avx2_atom.hpp, avx512_atom.hpp).

#include <concepts>

#include <Eigen/Core>

#include "../../tensor.hpp"

namespace star::detail {

/// A vector of `width` floats and what the kernel does with it. `load` converts bf16 and
/// half to float on the way in, so K/V of any element type are read in whole vectors.
/// Loads and stores are unaligned. An atom may provide `exp`; per_isa/exp.inl gives the
/// others one written against `round` and `pow2` (`2^n` for whole `n` in [-126, 127]).
// clang-format off
template <class A>
concept FloatAtom = requires(typename A::reg x, const typename A::reg* xs, typename A::mask m,
                             float* out, const float* f,
                             const Eigen::bfloat16* b, const Eigen::half* h, float s) {
    { A::width } -> std::convertible_to<index>;
    { A::broadcast(s) } -> std::same_as<typename A::reg>;
    { A::load(f) } -> std::same_as<typename A::reg>;
    { A::load(b) } -> std::same_as<typename A::reg>;
    { A::load(h) } -> std::same_as<typename A::reg>;
    A::store(out, x);
    { A::add(x, x) } -> std::same_as<typename A::reg>;
    { A::sub(x, x) } -> std::same_as<typename A::reg>;
    { A::mul(x, x) } -> std::same_as<typename A::reg>;
    { A::div(x, x) } -> std::same_as<typename A::reg>; // tanh of the soft cap
    { A::fma(x, x, x) } -> std::same_as<typename A::reg>; // x * x + x
    { A::max(x, x) } -> std::same_as<typename A::reg>;
    { A::min(x, x) } -> std::same_as<typename A::reg>;
    { A::equal(x, x) } -> std::same_as<typename A::mask>;
    { A::less(x, x) } -> std::same_as<typename A::mask>;
    { A::unordered(x, x) } -> std::same_as<typename A::mask>;
    { A::select(m, x, x) } -> std::same_as<typename A::reg>; // m ? first : second
    { A::any(m) } -> std::same_as<bool>;                       // m true in some lane
    { A::reduce_add(x) } -> std::same_as<float>;               // the sum of the lanes
    A::reduce_add4(xs, out);                                  // out[i] = reduce_add(xs[i]), i < 4
};
// clang-format on

/// `n` rounded up to a whole number of vectors of `width` floats.
constexpr index round_up(index n, index width) noexcept { return (n + width - 1) / width * width; }

} // namespace star::detail
