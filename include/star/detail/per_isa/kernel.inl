// The kernel's two entry points. kernels.hpp includes this file once per path, into that
// path's namespace and target region, after products.inl, with `Simd` naming the path's
// float atom and `TileMath<KV>` its tile math for each K/V type; it has no include guard.
#include "tile_kernel.inl"
#include "decode_kernel.inl"

/// This path's entry points, named alike on every path, so that kernels.hpp's one switch
/// over the paths (`with_path`) serves every entry point.
struct Entries {
    template <class KV, class M, class T>
    static constexpr auto tile = &attend_tile_pair<Simd, KV, M, T>;
    template <class KV, class M, class T>
    static constexpr auto decode = &attend_key_slice<Simd, KV, M, T>;
    template <class KV>
    static constexpr auto tile_bytes = &workspace_bytes<Simd, KV>;
    template <class KV>
    static constexpr auto decode_bytes = &decode_workspace_bytes<Simd, KV>;
};
