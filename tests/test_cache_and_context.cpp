// The host-side containers: the K/V cache, what a host holds of the context, and the
// reassembly of per-host outputs.

#include <gtest/gtest.h>

#include "expect_error.hpp"
#include "reference.hpp"

namespace star::test {
namespace {

TEST(KVCacheErrors, AppendRejectsEmptyHeadsOrHeadDim)
{
    KVCache<float> cache;
    const Tensor3<float> no_heads(3, 0, 8), no_dim(3, 2, 0);
    expect_error([&] { cache.append(view(no_heads), view(no_heads)); }, "k has 0 heads");
    expect_error([&] { cache.append(view(no_dim), view(no_dim)); }, "k has head_dim 0");
    EXPECT_EQ(cache.kv_heads(), 0);
}

TEST(KVCache, AppendsInOrderAndCountsBytesInTheStoredType)
{
    const auto k1 = random_tensor<Eigen::half>(3, 2, 8), v1 = random_tensor<Eigen::half>(3, 2, 8);
    const auto k2 = random_tensor<Eigen::half>(5, 2, 8), v2 = random_tensor<Eigen::half>(5, 2, 8);
    KVCache<Eigen::half> cache;
    EXPECT_EQ(cache.bytes(), 0u);
    cache.append(view(k1), view(v1));
    cache.append(view(k2), view(v2));
    EXPECT_EQ(cache.tokens(), 8);
    EXPECT_EQ(cache.bytes(), 2u * 8 * 2 * 8 * sizeof(Eigen::half));
    const Tensor3<Eigen::half> keys = contiguous(cache.keys()), values = contiguous(cache.values());
    for (index c = 0; c < 8; ++c) {
        EXPECT_EQ(float(keys(0, 1, c)), float(k1(0, 1, c)));
        EXPECT_EQ(float(values(7, 0, c)), float(v2(4, 0, c)));
    }
}

TEST(KVCache, KeysAndValuesOfDifferentShapesAreRejected)
{
    KVCache<float> cache;
    const auto k = random_tensor<float>(3, 2, 8), v = random_tensor<float>(4, 2, 8);
    expect_error([&] { cache.append(view(k), view(v)); }, "k is [3, 2, 8] but v is [4, 2, 8]");
    EXPECT_EQ(cache.tokens(), 0);
}

TEST(KVCache, LaterAppendsMustKeepTheHeadLayout)
{
    KVCache<float> cache;
    const auto k = random_tensor<float>(3, 2, 8), v = random_tensor<float>(3, 2, 8);
    cache.append(view(k), view(v));
    const auto k4 = random_tensor<float>(1, 4, 8), v4 = random_tensor<float>(1, 4, 8);
    expect_error([&] { cache.append(view(k4), view(v4)); },
                 "holds 2 kv heads of head_dim 8, the new tokens have 4 of head_dim 8");
    EXPECT_EQ(cache.tokens(), 3);
}

TEST(HostContext, SlicesComeFromThePieceThatHoldsThem)
{
    const auto q = random_tensor<float>(10, 2, 4), k = random_tensor<float>(10, 1, 4),
               v = random_tensor<float>(10, 1, 4);
    HostContext<float> context;
    context.add(100, view(q), view(k), view(v));
    const ContextSlice<float> s = context.slice({103, 106});
    EXPECT_EQ(s.q.dimension(0), 3);
    EXPECT_EQ(s.k.data(), k.data() + 3 * 1 * 4);
    expect_error([&] { (void)context.slice({95, 101}); },
                 "does not hold context tokens [95, 101)");
}

TEST(HostContext, PiecesWithMismatchedTokenCountsAreRejected)
{
    const auto q = random_tensor<float>(10, 2, 4), k = random_tensor<float>(9, 1, 4),
               v = random_tensor<float>(10, 1, 4);
    HostContext<float> context;
    expect_error([&] { context.add(0, view(q), view(k), view(v)); },
                 "same token count, got 10, 9 and 10");
    const auto k10 = random_tensor<float>(10, 1, 4);
    expect_error([&] { context.add(-1, view(q), view(k10), view(v)); }, "first token -1 is negative");
}

TEST(HostContext, PiecesOfAnotherShapeAreRejected)
{
    HostContext<float> context;
    EXPECT_TRUE(context.empty());
    EXPECT_EQ(context.kv_heads(), 0);
    const auto q = random_tensor<float>(4, 2, 4), k = random_tensor<float>(4, 1, 4),
               v = random_tensor<float>(4, 1, 4);
    const auto k_wide = random_tensor<float>(4, 1, 6), v_two = random_tensor<float>(4, 2, 4);
    expect_error([&] { context.add(0, view(q), view(k_wide), view(v)); },
                 "q, k and v disagree: q has 2 heads of head_dim 4, k 1 of 6, v 1 of 4");
    expect_error([&] { context.add(0, view(q), view(k), view(v_two)); },
                 "q, k and v disagree: q has 2 heads of head_dim 4, k 1 of 4, v 2 of 4");
    context.add(0, view(q), view(k), view(v));
    EXPECT_EQ(context.q_heads(), 2);
    EXPECT_EQ(context.kv_heads(), 1);
    EXPECT_EQ(context.head_dim(), 4);
    // A second piece of the same layer must have the same heads: a received anchor is laid
    // out like the receiver's own pieces.
    const auto q4 = random_tensor<float>(4, 4, 4), k2 = random_tensor<float>(4, 2, 4);
    expect_error([&] { context.add(8, view(q4), view(k2), view(v_two)); },
                 "a piece of 4 query heads, 2 kv heads of head_dim 4 joins pieces of 2, 1 of 4");
    context.add(8, view(q), view(k), view(v));
}

PerHost<std::vector<RangeOutput>> outputs_for(std::vector<std::vector<TokenRange>> ranges)
{
    PerHost<std::vector<RangeOutput>> outputs(0, static_cast<int>(ranges.size()));
    for (int r = 0; r < outputs.count(); ++r)
        for (const TokenRange& t : ranges[static_cast<std::size_t>(r)])
            outputs[r].push_back({t, AttentionState(t.size(), 2, 4)});
    return outputs;
}

TEST(Assemble, PutsRangesBackInContextOrder)
{
    auto outputs = outputs_for({{{4, 6}}, {{0, 4}, {6, 7}}});
    outputs[1][0].state.output.setConstant(1.0f);
    const AttentionState whole = assemble(outputs, {7, 2, 4});
    EXPECT_EQ(whole.output(3, 1, 3), 1.0f);
    EXPECT_EQ(whole.output(4, 0, 0), 0.0f);
}

TEST(Assemble, RejectsTokensReturnedTwiceOrNotAtAll)
{
    expect_error([] { (void)assemble(outputs_for({{{0, 4}}, {{3, 7}}}), {7, 2, 4}); },
                 "token 3 is returned twice");
    expect_error([] { (void)assemble(outputs_for({{{0, 4}}, {{5, 7}}}), {7, 2, 4}); },
                 "returned by no host");
    expect_error([] { (void)assemble(outputs_for({{{0, 9}}}), {7, 2, 4}); },
                 "do not fit the context");
}

TEST(StateMessages, RoundTripAndRejectAWrongSize)
{
    AttentionState s(3, 2, 4);
    s.output.setConstant(0.5f);
    s.lse.setConstant(1.5f);
    const std::vector<float> message = detail::pack(s);
    const AttentionState back = detail::unpack(message, s.shape());
    EXPECT_EQ(back.output(2, 1, 3), 0.5f);
    EXPECT_EQ(back.lse(2, 1), 1.5f);
    expect_error([&] { (void)detail::unpack(message, {4, 2, 4}); }, "the message has 30");
}

} // namespace
} // namespace star::test
