#pragma once
/// \file
/// Tensors of one attention layer: `[tokens, heads, head_dim]`, row-major.
///
/// Inputs are views (`Eigen::TensorMap`) over memory the caller owns, so nothing is copied
/// on the way into a kernel; results are owning `Eigen::Tensor`s. K/V may be stored as
/// `float`, `Eigen::bfloat16` or `Eigen::half`; arithmetic is always done in `float`.

#include <concepts>
#include <cstdint>
#include <type_traits>

// First, so that the intrinsics header is read before Eigen includes it (see there).
#include "detail/simd/target.hpp"

#include <Eigen/Core>
#include <unsupported/Eigen/CXX11/Tensor>

#include "detail/checked_arithmetic.hpp"
#include "error.hpp"

namespace star {

/// Signed integer type of every size, count and index in the library (Eigen's index type,
/// `std::ptrdiff_t` unless Eigen is configured otherwise).
using index = Eigen::Index;

/// Owning tensor `[tokens, heads, head_dim]`, row-major: one token's heads are contiguous.
template <class T>
using Tensor3 = Eigen::Tensor<T, 3, Eigen::RowMajor, index>;

/// Owning tensor `[tokens, heads]`, used for log-sum-exp values.
using Tensor2f = Eigen::Tensor<float, 2, Eigen::RowMajor, index>;

/// Read-only view of caller memory laid out as `[tokens, heads, head_dim]`.
template <class T>
using ConstView3 = Eigen::TensorMap<const Tensor3<T>>;

/// Writable view of caller memory laid out as `[tokens, heads, head_dim]`: where
/// `attention_into` writes its output. Over an owning tensor: `View3<float>(tensor)`.
template <class T>
using View3 = Eigen::TensorMap<Tensor3<T>>;

/// Writable view of caller memory laid out as `[tokens, heads]`: where `attention_into`
/// writes the LSE.
using View2f = Eigen::TensorMap<Tensor2f>;

/// Element types accepted for keys and values.
template <class T>
concept KVElement =
    std::same_as<T, float> || std::same_as<T, Eigen::bfloat16> || std::same_as<T, Eigen::half>;

/// Element types accepted for the queries of the kernel's `attention`: float, or bf16 as a
/// model that runs in bf16 projects them.
template <class T>
concept QueryElement = std::same_as<T, float> || std::same_as<T, Eigen::bfloat16>;

/// Element types `attention_into` writes its output in: float, or bf16 as a model that
/// runs in bf16 feeds it to its next projection.
template <class T>
concept OutputElement = std::same_as<T, float> || std::same_as<T, Eigen::bfloat16>;

namespace detail {

/// A number for each K/V element type, the same in every program, so that hosts in
/// different processes can check they store K/V alike (bf16 and half have the same size).
template <KVElement KV>
constexpr std::int64_t element_code() noexcept
{
    if constexpr (std::same_as<KV, float>)
        return 1;
    else if constexpr (std::same_as<KV, Eigen::bfloat16>)
        return 2;
    else
        return 3;
}

} // namespace detail

/// Sizes of one `[tokens, heads, head_dim]` tensor.
struct Shape {
    index tokens = 0;   ///< Number of tokens (the outermost dimension).
    index heads = 0;    ///< Number of heads.
    index head_dim = 0; ///< Elements per head (the innermost, contiguous dimension).

    /// Equal when all three sizes are.
    friend bool operator==(const Shape&, const Shape&) = default;
};

/// The heads of one attention layer: `q_heads` query heads sharing `kv_heads` KV heads of
/// `head_dim`. Named fields, so that three adjacent counts cannot be swapped silently:
/// `HeadShape{.q_heads = 32, .kv_heads = 8, .head_dim = 128}`.
struct HeadShape {
    index q_heads = 0;  ///< Query heads (a multiple of `kv_heads`).
    index kv_heads = 0; ///< KV heads.
    index head_dim = 0; ///< Elements per head.

    /// Equal when all three sizes are.
    friend bool operator==(const HeadShape&, const HeadShape&) = default;
};

/// The sizes of the view `t`.
template <class T>
Shape shape_of(const Eigen::TensorMap<const Tensor3<T>>& t)
{
    return {t.dimension(0), t.dimension(1), t.dimension(2)};
}

/// A view over `data`, which must hold `tokens * heads * head_dim` elements.
template <class T>
ConstView3<T> view(const T* data, Shape s)
{
    return ConstView3<T>(data, s.tokens, s.heads, s.head_dim);
}

/// A read-only view of an owning tensor.
template <class T>
ConstView3<T> view(const Tensor3<T>& t)
{
    return ConstView3<T>(t.data(), t.dimension(0), t.dimension(1), t.dimension(2));
}

/// A read-only view of tokens `[begin, begin + count)` of `t`; no copy, since tokens are outermost.
template <class T>
ConstView3<T> token_slice(const ConstView3<T>& t, index begin, index count)
{
    // Compared without forming begin + count, which may overflow.
    if (begin < 0 || count < 0 || begin > t.dimension(0) - count)
        detail::fail("token_slice: ", count, " tokens from token ", begin, " are out of range [0, ",
                     t.dimension(0), ")");
    return ConstView3<T>(t.data() + begin * t.dimension(1) * t.dimension(2), count, t.dimension(1),
                         t.dimension(2));
}

} // namespace star
