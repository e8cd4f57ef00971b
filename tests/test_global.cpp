// Global attention: exact causal attention, parallel over TBB.

#include <gtest/gtest.h>

#include <tbb/task_arena.h>

#include "expect_global.hpp"
#include "reference.hpp"

namespace star::test {
namespace {

TEST(Global, CausalMatchesReference)
{
    expect_global_matches_reference<float>(1, 1, 4, 4, 64, true);
    expect_global_matches_reference<float>(513, 513, 8, 2, 128, true);
    expect_global_matches_reference<Eigen::bfloat16>(300, 300, 8, 1, 64, true);
}

TEST(Global, FullMatchesReference)
{
    expect_global_matches_reference<float>(129, 129, 4, 4, 64, false);
    expect_global_matches_reference<Eigen::half>(100, 100, 4, 2, 80, false);
}

TEST(Global, SameResultOnOneThreadAndOnMany)
{
    // Each (kv head, query tile) is computed by one task in a fixed order, so the thread
    // count must not change a single bit.
    const auto q = random_tensor<float>(1000, 8, 64);
    const auto k = random_tensor<float>(1000, 2, 64);
    const auto v = random_tensor<float>(1000, 2, 64);
    AttentionState one, many;
    tbb::task_arena(1).execute([&] { one = global_attention(view(q), view(k), view(v)); });
    tbb::task_arena(2).execute([&] { many = global_attention(view(q), view(k), view(v)); });
    for (index n = 0; n < one.output.size(); ++n)
        ASSERT_EQ(one.output.data()[n], many.output.data()[n]);
    for (index n = 0; n < one.lse.size(); ++n)
        ASSERT_EQ(one.lse.data()[n], many.lse.data()[n]);
}

// The exact baseline of a model that runs in bf16: its bf16 queries attended as attention
// takes them, the result that of the widened queries bit for bit, with and without a
// variant.
TEST(Global, Bfloat16QueriesGiveTheResultOfThoseQueriesWidened)
{
    const auto q = random_tensor<Eigen::bfloat16>(300, 8, 64);
    const Tensor3<float> widened = q.cast<float>();
    const auto k = random_tensor<Eigen::bfloat16>(300, 2, 64);
    const auto v = random_tensor<Eigen::bfloat16>(300, 2, 64);
    EXPECT_TRUE(same_bits(global_attention(view(q), view(k), view(v)),
                          global_attention(view(widened), view(k), view(v))));
    EXPECT_TRUE(same_bits(global_attention(view(q), view(k), view(v), SlidingWindow{50}),
                          global_attention(view(widened), view(k), view(v), SlidingWindow{50})));
}

} // namespace
} // namespace star::test
