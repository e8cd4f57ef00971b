// STAR_NO_DISPATCH (detail/simd/target.hpp): the portable path compiled alone, for this
// unit's own -march, and taken by every call, whatever the CPU has.

#ifndef STAR_NO_DISPATCH // the sanitizer builds define it for this file already
#define STAR_NO_DISPATCH
#endif

#include <gtest/gtest.h>

#include "reference.hpp"

namespace star::test {
namespace {

TEST(NoDispatch, ThePortablePathIsTheOnlyOne)
{
    EXPECT_EQ(kernel_isa(), KernelIsa::portable);
    for (const KernelIsa isa : all_kernel_isas)
        EXPECT_EQ(cpu_supports(isa), isa == KernelIsa::portable) << name(isa);
    EXPECT_FALSE(bf16_products_outrun_float());
}

// `q_tokens` queries against `kv_tokens` keys, causal (equal counts) or full.
template <class KV>
void expect_matches_reference(index q_tokens, index kv_tokens, index q_heads, index kv_heads,
                              index d, bool is_causal)
{
    const auto q = random_tensor<float>(q_tokens, q_heads, d);
    const auto k = random_tensor<KV>(kv_tokens, kv_heads, d);
    const auto v = random_tensor<KV>(kv_tokens, kv_heads, d);
    const AttentionState got = global_attention(view(q), view(k), view(v), {is_causal, {}});
    const ReferenceResult want = reference_attention(
        view(q), view(k), view(v), [&](index i, index j) { return !is_causal || j <= i; },
        1.0 / std::sqrt(double(d)));
    const Deviation dev = deviation(got, want);
    const Tolerance tol = tolerance(want, d, kv_tokens);
    EXPECT_TRUE(dev.all_finite);
    EXPECT_LE(dev.output, tol.output);
    EXPECT_LE(dev.lse, tol.lse);
}

// Prefill (tiles) and a decode step (one query row), every K/V element type.
TEST(NoDispatch, AttentionMatchesTheReference)
{
    expect_matches_reference<float>(301, 301, 8, 2, 72, true);
    expect_matches_reference<Eigen::bfloat16>(130, 130, 4, 1, 64, true);
    expect_matches_reference<Eigen::half>(97, 97, 4, 4, 80, true);
    expect_matches_reference<Eigen::bfloat16>(1, 700, 8, 2, 128, false);
}

} // namespace
} // namespace star::test
