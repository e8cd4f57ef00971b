// Every rejected input throws star::error with a message naming the problem.

#include <gtest/gtest.h>

#include <limits>
#include <type_traits>
#include <vector>

#include "expect_error.hpp"
#include "reference.hpp"

namespace star::test {
namespace {

struct Inputs {
    Tensor3<float> q = random_tensor<float>(4, 4, 8);
    Tensor3<float> k = random_tensor<float>(6, 2, 8);
    Tensor3<float> v = random_tensor<float>(6, 2, 8);
};

TEST(Errors, HeadDimMismatchBetweenQueryAndKey)
{
    Inputs in;
    in.k = random_tensor<float>(6, 2, 16);
    expect_error([&] { attention(view(in.q), view(in.k), view(in.v)); }, "head_dim differs");
}

TEST(Errors, HeadDimMismatchBetweenKeyAndValue)
{
    Inputs in;
    in.v = random_tensor<float>(6, 2, 16);
    expect_error([&] { attention(view(in.q), view(in.k), view(in.v)); }, "head_dim differs");
}

TEST(Errors, KeyAndValueTokenCountsDiffer)
{
    Inputs in;
    in.v = random_tensor<float>(5, 2, 8);
    expect_error([&] { attention(view(in.q), view(in.k), view(in.v)); },
                 "k has 6 tokens but v has 5");
}

TEST(Errors, KeyAndValueHeadCountsDiffer)
{
    Inputs in;
    in.v = random_tensor<float>(6, 1, 8);
    expect_error([&] { attention(view(in.q), view(in.k), view(in.v)); },
                 "k has 2 heads but v has 1");
}

TEST(Errors, ZeroQueryHeads)
{
    Inputs in;
    in.q = Tensor3<float>(4, 0, 8);
    expect_error([&] { attention(view(in.q), view(in.k), view(in.v)); }, "q has 0 heads");
}

TEST(Errors, ZeroKeyHeads)
{
    Inputs in;
    in.k = Tensor3<float>(6, 0, 8);
    in.v = Tensor3<float>(6, 0, 8);
    expect_error([&] { attention(view(in.q), view(in.k), view(in.v)); }, "k has 0 heads");
}

TEST(Errors, HeadDimZero)
{
    const Tensor3<float> q(4, 2, 0), k(6, 2, 0), v(6, 2, 0);
    expect_error([&] { attention(view(q), view(k), view(v)); }, "head_dim 0");
}

TEST(Errors, GroupedQueryRatioNotIntegral)
{
    Inputs in;
    in.q = random_tensor<float>(4, 3, 8);
    expect_error([&] { attention(view(in.q), view(in.k), view(in.v)); },
                 "3 heads, not a multiple of the 2 kv heads");
}

TEST(Errors, ScaleNotFinite)
{
    Inputs in;
    expect_error(
        [&] {
            attention(view(in.q), view(in.k), view(in.v), NoMask{},
                      {std::numeric_limits<float>::quiet_NaN()});
        },
        "scale must be finite and positive");
}

TEST(Errors, ScaleNotPositive)
{
    Inputs in;
    expect_error([&] { attention(view(in.q), view(in.k), view(in.v), NoMask{}, {0.0f}); },
                 "scale must be finite and positive");
}

TEST(Errors, CausalGlobalAttentionWithMismatchedTokenCounts)
{
    Inputs in;
    expect_error([&] { global_attention(view(in.q), view(in.k), view(in.v)); },
                 "4 query tokens and 6 key tokens");
}

TEST(Errors, NullMemoryWithNonZeroShape)
{
    Inputs in;
    const ConstView3<float> null_q(nullptr, 4, 4, 8);
    expect_error([&] { attention(null_q, view(in.k), view(in.v)); }, "q views null memory");
}

TEST(Errors, TokenSliceOutOfRange)
{
    Inputs in;
    expect_error([&] { token_slice(view(in.k), 4, 3); },
                 "3 tokens from token 4 are out of range [0, 6)");
}

// Offsets and sizes computed from a caller's numbers must not wrap: a wrapped offset is a
// view of memory before the tensor, a wrapped size an allocation the kernel then overruns.
TEST(Errors, TokenSliceWhoseEndOverflows)
{
    Inputs in;
    constexpr index most = std::numeric_limits<index>::max();
    expect_error([&] { token_slice(view(in.k), most, 1); },
                 "1 tokens from token 9223372036854775807 are out of range [0, 6)");
    expect_error([&] { token_slice(view(in.k), 1, most); }, "out of range [0, 6)");
}

TEST(Errors, ViewsWhoseElementCountOverflows)
{
    Inputs in;
    constexpr index huge = index{1} << 40; // 2^40 x 2^20 x 8 elements: 2^63, one too many
    const ConstView3<float> k(in.k.data(), huge, index{1} << 20, 8);
    const ConstView3<float> q(in.q.data(), huge, index{1} << 20, 8);
    const char* message = "has 1099511627776 x 1048576 x 8 elements, more than an index can count";
    expect_error([&] { (void)attention(view(in.q), k, k); }, message);
    expect_error([&] { (void)global_attention(q, k, k, GlobalOptions{.causal = false}); }, message);
    KVCache<float> cache;
    expect_error([&] { cache.append(k, k); }, message);
    EXPECT_EQ(cache.tokens(), 0);
}

TEST(Errors, AHugeBlockSizeGivesOneBlock)
{
    constexpr index most = std::numeric_limits<index>::max();
    const auto blocks = FixedBlocks{most}.blocks(100);
    ASSERT_EQ(blocks.size(), 1u);
    EXPECT_EQ(blocks[0], (TokenRange{0, 100}));
    const auto two = FixedBlocks{most - 1}.blocks(most);
    ASSERT_EQ(two.size(), 2u);
    EXPECT_EQ(two[1], (TokenRange{most - 1, most}));
}

// A caller can tell a call it must fix (the same call fails again) from work that failed
// on acceptable inputs; both are star::error.
TEST(Errors, RejectedArgumentsAndFailedWorkAreDifferentKinds)
{
    Inputs in;
    const auto wrong_dim = random_tensor<float>(6, 2, 4);
    EXPECT_THROW((void)attention(view(in.q), view(wrong_dim), view(wrong_dim)),
                 star::invalid_argument);
    // Finite inputs whose scores overflow float: 8 x (2e19)^2 / sqrt(8) is beyond 3.4e38.
    Tensor3<float> big(2, 1, 8);
    big.setConstant(2e19f);
    EXPECT_THROW((void)attention(view(big), view(big), view(big)), star::runtime_failure);
    // A message of the wrong size, as a broken transport would deliver.
    EXPECT_THROW((void)detail::unpack(std::vector<float>(3), Shape{2, 2, 4}), star::runtime_failure);
    static_assert(std::is_base_of_v<star::error, star::invalid_argument>);
    static_assert(std::is_base_of_v<star::error, star::runtime_failure>);
    static_assert(std::is_nothrow_copy_constructible_v<star::error>);
}

TEST(Errors, MergeOfDifferentShapes)
{
    AttentionState a(2, 2, 8), b(3, 2, 8);
    expect_error([&] { merge_into(a, b); }, "states of different shapes");
    const std::vector<AttentionState> parts{a, b};
    expect_error([&] { merge(parts); }, "states of different shapes");
}

TEST(Errors, MergeOfNothing)
{
    expect_error([] { merge({}); }, "no states to merge");
}

} // namespace
} // namespace star::test
