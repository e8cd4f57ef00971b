#pragma once
/// \file
/// The kernel compiled once per path: the per_isa/ bodies are included into one namespace
/// per instruction set, each inside its target region (simd/target.hpp), each over its own
/// float atom. `with_path` picks a path's entry points (`tile_task`, `decode_task`) once per
/// `attention` call.

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstring>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "../kernel/isa.hpp"
#include "../kernel/mask.hpp"
#include "../kernel/score_transform.hpp"
#include "../state.hpp"
#include "../tensor.hpp"
#include "simd/atom.hpp"
#include "simd/avx2_atom.hpp"
#include "simd/avx512_atom.hpp"
#include "simd/avx512_bf16_atom.hpp"
#include "simd/target.hpp"
#include "simd/xsimd_atom.hpp"
#include "tile_job.hpp"

STAR_INTRINSICS_BEGIN // see simd/target.hpp
namespace star::detail {

/// Scratch memory of the kernel, aligned for the widest vector of any path.
template <class T>
using scratch = std::vector<T, xsimd::aligned_allocator<T, 64>>;

/// Strides of a product's A operand: element `(r, k)` at `a[r * row + k * col]`.
struct Strides {
    index row;
    index col;
};

} // namespace star::detail

// clang-format off
namespace star::detail::portable_path {
using Simd = XsimdAtom<xsimd::default_arch>;
#include "per_isa/products.inl"
template <class KV>
using TileMath = FloatTileMath<Simd, KV>;
#include "per_isa/kernel.inl"
} // namespace star::detail::portable_path

#if STAR_X86_DISPATCH
STAR_TARGET_BEGIN("avx2,fma,f16c")
namespace star::detail::avx2_path {
using Simd = Avx2Atom<xsimd::default_arch>;
#include "per_isa/products.inl"
template <class KV>
using TileMath = FloatTileMath<Simd, KV>;
#include "per_isa/kernel.inl"
} // namespace star::detail::avx2_path
STAR_TARGET_END

STAR_TARGET_BEGIN("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
namespace star::detail::avx512_path {
using Simd = Avx512Atom<xsimd::default_arch>;
#include "per_isa/products.inl"
template <class KV>
using TileMath = FloatTileMath<Simd, KV>;
#include "per_isa/kernel.inl"
} // namespace star::detail::avx512_path
STAR_TARGET_END

// The AVX-512 path with bf16 products for bf16 K/V; float and half K/V as on avx512.
STAR_TARGET_BEGIN("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c")
namespace star::detail::avx512_bf16_path {
using Simd = Avx512Atom<xsimd::default_arch>;
#include "per_isa/products.inl"
#include "per_isa/bf16_tile_math.inl"
template <class KV>
using TileMath =
    std::conditional_t<std::same_as<KV, Eigen::bfloat16>,
                       Bf16TileMath<Simd, Avx512Bf16Product<xsimd::default_arch>>,
                       FloatTileMath<Simd, KV>>;
#include "per_isa/kernel.inl"
} // namespace star::detail::avx512_bf16_path
STAR_TARGET_END
#endif
// clang-format on

namespace star::detail {

static_assert(FloatAtom<portable_path::Simd>);
#if STAR_X86_DISPATCH
static_assert(FloatAtom<avx2_path::Simd>);
static_assert(FloatAtom<avx512_path::Simd>);
static_assert(FloatAtom<avx512_bf16_path::Simd>);
#endif

/// Calls `f` with the entry points (per_isa/kernel.inl's `Entries`) of path `isa`, which
/// the CPU must support.
template <class F>
decltype(auto) with_path(KernelIsa isa, F&& f)
{
    switch (isa) {
#if STAR_X86_DISPATCH
    case KernelIsa::avx512_bf16: return f(avx512_bf16_path::Entries{});
    case KernelIsa::avx512: return f(avx512_path::Entries{});
    case KernelIsa::avx2: return f(avx2_path::Entries{});
#endif
    default: return f(portable_path::Entries{});
    }
}

/// One task of an `attention` call on one path (see TileJob).
template <class KV, class M, class T>
using TileTask = void (*)(const TileJob<KV, M, T>&, index);

/// The tile kernel's entry point on path `isa`.
template <class KV, class M, class T>
TileTask<KV, M, T> tile_task(KernelIsa isa)
{
    return with_path(isa, [](auto path) -> TileTask<KV, M, T> {
        return decltype(path)::template tile<KV, M, T>;
    });
}

/// One task of a decode call on one path: every KV head over the job's slice of keys.
template <class KV, class M, class T>
using DecodeTask = void (*)(const TileJob<KV, M, T>&);

/// The decode kernel's entry point on path `isa`.
template <class KV, class M, class T>
DecodeTask<KV, M, T> decode_task(KernelIsa isa)
{
    return with_path(isa, [](auto path) -> DecodeTask<KV, M, T> {
        return decltype(path)::template decode<KV, M, T>;
    });
}

/// The scratch memory one task of path `isa` holds for tiles of `rows` query rows.
template <class KV>
std::size_t tile_workspace_bytes(KernelIsa isa, index rows, index keys, index head_dim)
{
    return with_path(isa, [&](auto path) -> std::size_t {
        return decltype(path)::template tile_bytes<KV>(rows, keys, head_dim);
    });
}

/// The scratch memory one decode task of path `isa` holds for `rows` query rows per KV head.
template <class KV>
std::size_t decode_workspace_bytes(KernelIsa isa, index kv_heads, index rows, index head_dim)
{
    return with_path(isa, [&](auto path) -> std::size_t {
        return decltype(path)::template decode_bytes<KV>(kv_heads, rows, head_dim);
    });
}

} // namespace star::detail
STAR_INTRINSICS_END
