// The helpers <star/testing.hpp> offers users' tests: reproducible random tensors and the
// largest difference between two results.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include <star/testing.hpp>

#include "expect_error.hpp"

namespace star::test {
namespace {

constexpr float nan = std::numeric_limits<float>::quiet_NaN();
constexpr float inf = std::numeric_limits<float>::infinity();

TEST(RandomTensor, IsReproducibleFromItsSeed)
{
    const Tensor3<float> a = star::random_tensor(7, 3, 5, 42);
    const Tensor3<float> b = star::random_tensor(7, 3, 5, 42);
    const Tensor3<float> c = star::random_tensor(7, 3, 5, 43);
    ASSERT_EQ(shape_of(view(a)), (Shape{7, 3, 5}));
    EXPECT_EQ(star::max_difference(a, b), 0.0);
    EXPECT_GT(star::max_difference(a, c), 0.0);
}

// Mean and standard deviation of n = 3 * 10^5 draws: the sample mean has standard error
// stddev / sqrt(n) = 0.0046 at stddev 2.5, and the sample standard deviation about
// stddev / sqrt(2n) = 0.0032; 6 standard errors leave no room for a flaky failure.
TEST(RandomTensor, HasTheRequestedMeanAndSpread)
{
    constexpr float stddev = 2.5f;
    const Tensor3<float> t = star::random_tensor(1000, 3, 100, 7, stddev);
    double sum = 0.0, squares = 0.0;
    for (index n = 0; n < t.size(); ++n) {
        sum += t.data()[n];
        squares += double{t.data()[n]} * t.data()[n];
    }
    const double count = static_cast<double>(t.size());
    const double mean = sum / count;
    const double spread = std::sqrt(squares / count - mean * mean);
    EXPECT_NEAR(mean, 0.0, 6 * stddev / std::sqrt(count));
    EXPECT_NEAR(spread, stddev, 6 * stddev / std::sqrt(2 * count));
}

TEST(RandomTensor, Bf16AndHalfAreTheFloatValuesRounded)
{
    const Tensor3<float> exact = star::random_tensor(9, 2, 17, 5);
    const Tensor3<Eigen::bfloat16> bf16 = star::random_tensor<Eigen::bfloat16>(9, 2, 17, 5);
    const Tensor3<Eigen::half> half = star::random_tensor<Eigen::half>(9, 2, 17, 5);
    for (index n = 0; n < exact.size(); ++n) {
        EXPECT_EQ(bf16.data()[n], static_cast<Eigen::bfloat16>(exact.data()[n])) << n;
        EXPECT_EQ(half.data()[n], static_cast<Eigen::half>(exact.data()[n])) << n;
    }
}

TEST(RandomTensor, RejectsBadArguments)
{
    expect_error([] { (void)star::random_tensor(-1, 2, 3, 0); },
                 "random_tensor: dimensions must not be negative, got [-1, 2, 3]");
    expect_error([] { (void)star::random_tensor(1, 2, 3, 0, 0.0f); },
                 "random_tensor: stddev must be finite and positive, got 0");
    expect_error([] { (void)star::random_tensor(1, 2, 3, 0, nan); },
                 "random_tensor: stddev must be finite and positive, got nan");
    const index huge = index{1} << 40;
    expect_error([=] { (void)star::random_tensor(huge, huge, 1, 0); }, "random_tensor: elements");
}

TEST(MaxDifference, IsTheLargestElementwiseGap)
{
    Tensor3<float> a = star::random_tensor(4, 3, 6, 1);
    Tensor3<float> b = a;
    EXPECT_EQ(star::max_difference(a, b), 0.0);
    b(2, 1, 4) += 0.25f;
    b(0, 0, 0) -= 0.125f;
    EXPECT_EQ(star::max_difference(a, b), static_cast<double>(b(2, 1, 4)) - a(2, 1, 4));
    EXPECT_EQ(star::max_difference(view(a), view(b)), star::max_difference(b, a));
}

TEST(MaxDifference, NaNAndInfinityNeverPassAsClose)
{
    Tensor3<float> a(1, 1, 2), b(1, 1, 2);
    a.setZero();
    b.setZero();
    a(0, 0, 1) = nan;
    EXPECT_EQ(star::max_difference(a, b), std::numeric_limits<double>::infinity());
    b(0, 0, 1) = nan;
    EXPECT_EQ(star::max_difference(a, b), 0.0) << "NaN against NaN";
    a(0, 0, 0) = inf;
    b(0, 0, 0) = inf;
    EXPECT_EQ(star::max_difference(a, b), 0.0) << "equal infinities";
    b(0, 0, 0) = -inf;
    EXPECT_EQ(star::max_difference(a, b), std::numeric_limits<double>::infinity());
}

TEST(MaxDifference, RejectsTensorsOfDifferentShapes)
{
    const Tensor3<float> a(2, 3, 4), b(2, 4, 3);
    expect_error([&] { (void)star::max_difference(a, b); },
                 "max_difference: the tensors differ in shape: [2, 3, 4] and [2, 4, 3]");
}

TEST(MaxDifference, OfStatesCoversOutputsAndLogSumExps)
{
    AttentionState a(3, 2, 4), b(3, 2, 4); // no keys seen: output 0, lse -inf
    EXPECT_EQ(star::max_difference(a, b), 0.0);
    a.lse(1, 1) = 2.0f;
    b.lse(1, 1) = 2.5f;
    EXPECT_EQ(star::max_difference(a, b), 0.5);
    b.output(2, 0, 3) = 1.0f;
    EXPECT_EQ(star::max_difference(a, b), 1.0);
    b.lse(0, 0) = 0.0f; // -inf against a number
    EXPECT_EQ(star::max_difference(a, b), std::numeric_limits<double>::infinity());
    const AttentionState c(3, 1, 4);
    expect_error([&] { (void)star::max_difference(a, c); },
                 "max_difference: the tensors differ in shape: [3, 2, 4] and [3, 1, 4]");
}

} // namespace
} // namespace star::test
