#pragma once
/// \file
/// The kernel compiled once per path: the per_isa/ bodies are included into one namespace
/// per instruction set, each inside its target region (simd/target.hpp), each over its own
/// float atom. `tile_task` and `decode_task` pick a path's entry point once per
/// `attention` call.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "../kernel/isa.hpp"
#include "../kernel/mask.hpp"
#include "../state.hpp"
#include "../tensor.hpp"
#include "simd/atom.hpp"
#include "simd/avx2_atom.hpp"
#include "simd/avx512_atom.hpp"
#include "simd/target.hpp"
#include "simd/xsimd_atom.hpp"
#include "tile_job.hpp"

namespace star::detail {

inline constexpr float minus_infinity = -std::numeric_limits<float>::infinity();

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
#include "per_isa/kernel.inl"
} // namespace star::detail::portable_path

#if STAR_X86_DISPATCH
STAR_TARGET_BEGIN("avx2,fma,f16c")
namespace star::detail::avx2_path {
using Simd = Avx2Atom<xsimd::default_arch>;
#include "per_isa/kernel.inl"
} // namespace star::detail::avx2_path
STAR_TARGET_END

STAR_TARGET_BEGIN("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
namespace star::detail::avx512_path {
using Simd = Avx512Atom<xsimd::default_arch>;
#include "per_isa/kernel.inl"
} // namespace star::detail::avx512_path
STAR_TARGET_END
#endif
// clang-format on

namespace star::detail {

static_assert(FloatAtom<portable_path::Simd>);
#if STAR_X86_DISPATCH
static_assert(FloatAtom<avx2_path::Simd>);
static_assert(FloatAtom<avx512_path::Simd>);
#endif

/// One task of an `attention` call on one path (see TileJob).
template <class KV, class M>
using TileTask = void (*)(const TileJob<KV, M>&, index);

/// The entry point of path `isa`, which the CPU must support.
template <class KV, class M>
TileTask<KV, M> tile_task(KernelIsa isa) noexcept
{
    switch (isa) {
#if STAR_X86_DISPATCH
    case KernelIsa::avx512:
        return &avx512_path::attend_tile_pair<avx512_path::Simd, KV, M>;
    case KernelIsa::avx2:
        return &avx2_path::attend_tile_pair<avx2_path::Simd, KV, M>;
#endif
    default:
        return &portable_path::attend_tile_pair<portable_path::Simd, KV, M>;
    }
}

/// One task of a decode call on one path: every KV head over the job's slice of keys.
template <class KV, class M>
using DecodeTask = void (*)(const TileJob<KV, M>&);

/// The decode entry point of path `isa`, which the CPU must support.
template <class KV, class M>
DecodeTask<KV, M> decode_task(KernelIsa isa) noexcept
{
    switch (isa) {
#if STAR_X86_DISPATCH
    case KernelIsa::avx512:
        return &avx512_path::attend_key_slice<avx512_path::Simd, KV, M>;
    case KernelIsa::avx2:
        return &avx2_path::attend_key_slice<avx2_path::Simd, KV, M>;
#endif
    default:
        return &portable_path::attend_key_slice<portable_path::Simd, KV, M>;
    }
}

/// The scratch memory one decode task of path `isa` holds for `rows` query rows per KV head.
template <class KV>
std::size_t decode_workspace_bytes(KernelIsa isa, index kv_heads, index rows, index head_dim)
{
    switch (isa) {
#if STAR_X86_DISPATCH
    case KernelIsa::avx512:
        return avx512_path::decode_workspace_bytes<avx512_path::Simd, KV>(kv_heads, rows, head_dim);
    case KernelIsa::avx2:
        return avx2_path::decode_workspace_bytes<avx2_path::Simd, KV>(kv_heads, rows, head_dim);
#endif
    default:
        return portable_path::decode_workspace_bytes<portable_path::Simd, KV>(kv_heads, rows,
                                                                              head_dim);
    }
}

/// The scratch memory one task of path `isa` holds for tiles of `rows` query rows.
template <class KV>
std::size_t tile_workspace_bytes(KernelIsa isa, index rows, index keys, index head_dim)
{
    switch (isa) {
#if STAR_X86_DISPATCH
    case KernelIsa::avx512:
        return avx512_path::workspace_bytes<avx512_path::Simd, KV>(rows, keys, head_dim);
    case KernelIsa::avx2:
        return avx2_path::workspace_bytes<avx2_path::Simd, KV>(rows, keys, head_dim);
#endif
    default:
        return portable_path::workspace_bytes<portable_path::Simd, KV>(rows, keys, head_dim);
    }
}

} // namespace star::detail
