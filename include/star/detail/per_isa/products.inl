// What the kernel is built from, in the order the parts need one another: the float atom's
// exp, score transforms, online softmax, tile products and the float tile math. kernels.hpp
// includes this file once per path, into that path's namespace and target region, with
// `Simd` naming the path's float atom; it has no include guard.
#include "exp.inl"
#include "score_transform.inl"
#include "online_softmax.inl"
#include "tile_gemm.inl"
#include "tile_math.inl"
