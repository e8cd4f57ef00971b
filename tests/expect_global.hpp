#pragma once
// The check that the tests of global attention share: global_attention against the
// double-precision reference on random inputs.

#include <cmath>

#include <gtest/gtest.h>

#include "reference.hpp"

namespace star::test {

/// `q_tokens` random queries against `kv_tokens` random keys and values (K and V rounded to
/// `KV`), causal (equal counts) or full: global_attention's output and LSE within the
/// reference's tolerance, finite, and infinite where the reference's are.
template <class KV>
void expect_global_matches_reference(index q_tokens, index kv_tokens, index q_heads, index kv_heads,
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
    EXPECT_TRUE(dev.infinities_match);
    EXPECT_LE(dev.output, tol.output);
    EXPECT_LE(dev.lse, tol.lse);
}

} // namespace star::test
