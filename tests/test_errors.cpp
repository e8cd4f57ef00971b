// Every rejected input throws star::error with a message naming the problem.

#include <gtest/gtest.h>

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
    expect_error([&] { token_slice(view(in.k), 4, 3); }, "tokens [4, 7) out of range [0, 6)");
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
