// The kernel's body, in the order its parts need one another. kernels.hpp includes this
// file once per path, into that path's namespace and target region, with `Simd` naming
// the path's float atom; it has no include guard.
#include "exp.inl"
#include "online_softmax.inl"
#include "tile_gemm.inl"
#include "tile_kernel.inl"
#include "decode_kernel.inl"
