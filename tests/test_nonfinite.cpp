// What a NaN or an infinity does: every entry point that takes Q/K/V rejects it with
// star::error naming the tensor, the host where there is one, and the position; scores far
// beyond exp's range still give the exact answer; finite inputs whose scores or outputs
// overflow float are an error, never garbage.

#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

#include <star/star.hpp>

#include "expect_error.hpp"
#include "reference.hpp"

namespace star::test {
namespace {

constexpr float nan = std::numeric_limits<float>::quiet_NaN();
constexpr float inf = std::numeric_limits<float>::infinity();

struct Layer {
    Tensor3<float> q, k, v;
    explicit Layer(index tokens, index q_heads = 4, index kv_heads = 2, index d = 16)
        : q(random_tensor<float>(tokens, q_heads, d)), k(random_tensor<float>(tokens, kv_heads, d)),
          v(random_tensor<float>(tokens, kv_heads, d))
    {
    }
    Tensor3<float>& tensor(char name) { return name == 'q' ? q : name == 'k' ? k : v; }
};


struct Case {
    char tensor; // 'q', 'k' or 'v'
    float bad;
};

class NonFinite : public ::testing::TestWithParam<Case> {};

// The start of the message every check gives, up to the value it found.
std::string expected(char tensor)
{
    return std::string(1, tensor) + " holds a non-finite value";
}

TEST_P(NonFinite, KernelNamesTensorTokenHeadAndElement)
{
    const auto [tensor, bad] = GetParam();
    Layer layer(37);
    layer.tensor(tensor)(21, 1, 5) = bad;
    try {
        (void)attention(view(layer.q), view(layer.k), view(layer.v), CausalMask{});
        ADD_FAILURE() << "no exception";
    } catch (const star::error& e) {
        const std::string message = e.what();
        EXPECT_NE(message.find(expected(tensor)), std::string::npos) << message;
        EXPECT_NE(message.find("at token 21, head 1, element 5"), std::string::npos) << message;
    }
}

TEST_P(NonFinite, GlobalAttentionRejectsIt)
{
    const auto [tensor, bad] = GetParam();
    Layer layer(50);
    layer.tensor(tensor)(49, 0, 0) = bad;
    expect_error([&] { (void)global_attention(view(layer.q), view(layer.k), view(layer.v)); },
                 expected(tensor));
}

TEST_P(NonFinite, RingNamesTheHostThatHoldsIt)
{
    const auto [tensor, bad] = GetParam();
    Layer layer(40);
    layer.tensor(tensor)(25, 0, 3) = bad; // plain layout on 4 hosts: tokens 20..29 on host 2
    LocalCommunicator comm(4);
    expect_error([&] { (void)RingAttention{}.run(comm, view(layer.q), view(layer.k), view(layer.v)); },
                 "host 2: " + expected(tensor) + " (");
}

TEST_P(NonFinite, StarPhase1NamesTheHostAndLeavesEveryCacheEmpty)
{
    const auto [tensor, bad] = GetParam();
    Layer layer(40);
    layer.tensor(tensor)(33, 1, 2) = bad; // blocks of 10 on 4 hosts: block 3 on host 3
    LocalCommunicator comm(4);
    const StarAttention<> star(FixedBlocks{10});
    const StarPlan plan = star.plan(40, 4);
    auto caches = comm.local<KVCache<float>>();
    expect_error(
        [&] {
            (void)star.encode_context(comm, plan, caches, view(layer.q), view(layer.k), view(layer.v));
        },
        "host 3: " + expected(tensor));
    for (int r = 0; r < 4; ++r)
        EXPECT_EQ(caches[r].tokens(), 0) << "host " << r;
}

TEST_P(NonFinite, StarPhase1CatchesItInTheComputedAnchor)
{
    const auto [tensor, bad] = GetParam();
    if (tensor == 'q')
        GTEST_SKIP() << "the anchor's queries are never used";
    Layer layer(40);
    layer.tensor(tensor)(4, 0, 0) = bad; // in block 0, the anchor of every other block
    LocalCommunicator comm(4);
    const StarAttention<> star(FixedBlocks{10});
    const StarPlan plan = star.plan(40, 4);
    auto caches = comm.local<KVCache<float>>();
    expect_error(
        [&] {
            (void)star.encode_context(comm, plan, caches, view(layer.q), view(layer.k), view(layer.v));
        },
        expected(tensor));
}

TEST_P(NonFinite, StarPhase2RejectsItAndKeepsTheCaches)
{
    const auto [tensor, bad] = GetParam();
    Layer context(40), query(3);
    query.tensor(tensor)(2, 0, 1) = bad;
    LocalCommunicator comm(2);
    const StarAttention<> star(FixedBlocks{20});
    const StarPlan plan = star.plan(40, 2);
    auto caches = comm.local<KVCache<float>>();
    (void)star.encode_context(comm, plan, caches, view(context.q), view(context.k), view(context.v));
    expect_error(
        [&] {
            (void)star.attend_query(comm, plan, caches, view(query.q), view(query.k), view(query.v));
        },
        "query: " + expected(tensor));
    EXPECT_EQ(caches[0].tokens(), 20);
    EXPECT_EQ(caches[1].tokens(), 20);
}

TEST_P(NonFinite, CacheRefusesIt)
{
    const auto [tensor, bad] = GetParam();
    if (tensor == 'q')
        GTEST_SKIP() << "a cache holds no queries";
    Layer layer(5);
    KVCache<float> cache;
    cache.append(view(layer.k), view(layer.v));
    layer.tensor(tensor)(3, 1, 0) = bad;
    expect_error([&] { cache.append(view(layer.k), view(layer.v)); },
                 expected(tensor) + " (");
    EXPECT_EQ(cache.tokens(), 5);
    // A rejected first append leaves a cache with no shape at all.
    KVCache<float> fresh;
    expect_error([&] { fresh.append(view(layer.k), view(layer.v)); }, expected(tensor));
    EXPECT_EQ(fresh.tokens(), 0);
    EXPECT_EQ(fresh.kv_heads(), 0);
    EXPECT_EQ(fresh.head_dim(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    EveryTensorAndValue, NonFinite,
    ::testing::Values(Case{'q', nan}, Case{'q', inf}, Case{'q', -inf}, Case{'k', nan},
                      Case{'k', inf}, Case{'k', -inf}, Case{'v', nan}, Case{'v', inf},
                      Case{'v', -inf}),
    [](const auto& info) {
        const float bad = info.param.bad;
        return std::string(1, info.param.tensor) + "_" +
               (bad != bad ? "nan" : bad > 0 ? "plus_inf" : "minus_inf");
    });

TEST(NonFinite, Bf16AndHalfKeysAreCheckedToo)
{
    Layer layer(9);
    Tensor3<Eigen::bfloat16> k_bf16 = layer.k.cast<Eigen::bfloat16>();
    k_bf16(7, 1, 1) = Eigen::bfloat16(nan);
    expect_error([&] { (void)attention(view(layer.q), view(k_bf16), view(k_bf16)); },
                 "k holds a non-finite value (nan) at token 7, head 1, element 1");
    const Tensor3<Eigen::half> k_half = layer.k.cast<Eigen::half>();
    Tensor3<Eigen::half> v_half = layer.v.cast<Eigen::half>();
    v_half(2, 0, 4) = Eigen::half(inf);
    expect_error([&] { (void)attention(view(layer.q), view(k_half), view(v_half)); },
                 "v holds a non-finite value (inf) at token 2, head 0, element 4");
}

// The bit test behind every check, on each element type: every position of lengths around
// and between the SIMD widths (the vector part and the scalar tail), each kind of bad value,
// and the values next to it that are finite (the largest, subnormals, negative zero).
template <class T>
class AllFinite : public ::testing::Test {};
using ElementTypes = ::testing::Types<float, Eigen::bfloat16, Eigen::half>;
TYPED_TEST_SUITE(AllFinite, ElementTypes);

TYPED_TEST(AllFinite, FindsEveryBadValueAndNoGoodOne)
{
    using T = TypeParam;
    const T largest = std::numeric_limits<T>::max();
    const T subnormal = std::numeric_limits<T>::denorm_min();
    const std::vector<T> finite{T(0.5f), T(-0.0f), largest, -largest, subnormal, -subnormal};
    const std::vector<T> bad{T(nan), T(inf), T(-inf)};
    for (index count = 0; count <= 70; ++count) {
        std::vector<T> values(static_cast<std::size_t>(count));
        for (index i = 0; i < count; ++i)
            values[static_cast<std::size_t>(i)] = finite[static_cast<std::size_t>(i) % finite.size()];
        ASSERT_TRUE(detail::all_finite(values.data(), count)) << "count " << count;
        for (index at = 0; at < count; ++at)
            for (const T b : bad) {
                const T kept = values[static_cast<std::size_t>(at)];
                values[static_cast<std::size_t>(at)] = b;
                EXPECT_FALSE(detail::all_finite(values.data(), count))
                    << static_cast<float>(b) << " at " << at << " of " << count;
                values[static_cast<std::size_t>(at)] = kept;
            }
    }
}

// With the check off, a bad value still cannot crash the kernel; a NaN score is caught on
// the way out.
TEST(NonFinite, UncheckedNanScoreIsStillAnError)
{
    Layer layer(20);
    layer.k(5, 0, 0) = nan;
    expect_error(
        [&] {
            (void)attention(view(layer.q), view(layer.k), view(layer.v), CausalMask{},
                            AttentionOptions{{}, false});
        },
        "overflow float");
}

// Scores of order 1e3..1e5 overflow exp() in a naive softmax (exp(89) is already inf in
// float); the max-shifted online softmax must still give the exact answer.
TEST(LargeScores, BeyondExpRangeStillExact)
{
    for (const float magnitude : {30.0f, 100.0f, 300.0f}) {
        Layer layer(130, 4, 2, 32);
        layer.q = random_tensor<float>(130, 4, 32, magnitude);
        layer.k = random_tensor<float>(130, 2, 32, magnitude);
        const AttentionState got = global_attention(view(layer.q), view(layer.k), view(layer.v));
        const ReferenceResult want =
            reference_attention(view(layer.q), view(layer.k), view(layer.v),
                                [](index i, index j) { return j <= i; }, 1.0 / std::sqrt(32.0));
        ASSERT_GT(want.max_abs_dot, 1e3) << "the scores must reach far beyond exp's range";
        const Tolerance tol = tolerance(want, 32, 130);
        const Deviation dev = deviation(got, want);
        EXPECT_LE(dev.output, tol.output) << "magnitude " << magnitude;
        EXPECT_LE(dev.lse, tol.lse) << "magnitude " << magnitude;
    }
}

TEST(LargeScores, ScoresBeyondFloatAreAnError)
{
    Layer layer(8, 2, 1, 4);
    layer.q.setConstant(1e20f);
    layer.k.setConstant(1e20f); // q.k = 4e40: not a float
    expect_error([&] { (void)global_attention(view(layer.q), view(layer.k), view(layer.v)); },
                 "the scores of query token 0, head 0 overflow float");
}

// Every score overflowing towards -inf is not a row that sees no key (found by the fuzzer).
TEST(LargeScores, ScoresOverflowingToMinusInfinityAreAnError)
{
    Tensor3<float> q(1, 1, 1), k(1, 1, 1), v(1, 1, 1);
    q(0, 0, 0) = 1.0f;
    k(0, 0, 0) = -4.0f; // scale * q.k = -4e38: not a float
    v(0, 0, 0) = 2.0f;
    expect_error([&] { (void)attention(view(q), view(k), view(v), NoMask{}, AttentionOptions{1e38f}); },
                 "the scores of query token 0, head 0 overflow float");
    // A row that really sees no key is still output 0, lse -inf.
    const AttentionState empty = attention(view(q), view(k), view(v), CausalMask{0, 1});
    EXPECT_EQ(empty.output(0, 0, 0), 0.0f);
    EXPECT_EQ(empty.lse(0, 0), -std::numeric_limits<float>::infinity());
}

TEST(LargeScores, ValuesWhoseSumOverflowsAreAnError)
{
    Layer layer(64, 2, 1, 4);
    layer.q.setZero(); // equal weights: the output is the mean of v, but the running sum
    layer.v.setConstant(3e38f); // of 3e38 over many keys is not a float
    expect_error([&] { (void)global_attention(view(layer.q), view(layer.k), view(layer.v)); },
                 "the output of query token");
}

} // namespace
} // namespace star::test
