// What a NaN or an infinity does: every entry point that takes Q/K/V rejects it with
// star::error naming the tensor, the host where there is one, and the position; scores far
// beyond exp's range still give the exact answer; finite inputs whose scores or outputs
// overflow float are an error, never garbage.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <ostream>
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

// gtest would otherwise print a Case as its bytes, padding included: uninitialised, so the
// listed parameters changed from build to build.
void PrintTo(const Case& c, std::ostream* os) { *os << c.tensor << " holding " << c.bad; }

class NonFinite : public ::testing::TestWithParam<Case> {};

// The start of the message every check gives, up to the value it found.
std::string expected(char tensor) { return std::string(1, tensor) + " holds a non-finite value"; }

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
    expect_error(
        [&] { (void)RingAttention{}.run(comm, view(layer.q), view(layer.k), view(layer.v)); },
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
            (void)star.encode_context(comm, plan, caches, view(layer.q), view(layer.k),
                                      view(layer.v));
        },
        "host 3: " + expected(tensor));
    for (int r = 0; r < 4; ++r)
        EXPECT_EQ(caches[r].tokens(), 0) << "host " << r;
}

// Across processes each host holds its own copy of the anchor tokens (HostContext), which
// only its own check can vouch for: here host 2's copy alone is bad, and every block,
// anchor included, is clean at its owner. The anchor's queries are never used (its outputs
// are not computed), yet a bad one is rejected too: phase 1 accepts only finite Q/K/V in
// everything a host is handed, so the rule needs no knowledge of which inputs a policy uses.
TEST_P(NonFinite, StarPhase1CatchesItInAHostsCopyOfTheComputedAnchor)
{
    const auto [tensor, bad] = GetParam();
    constexpr index tokens = 40, block = 10;
    Layer layer(tokens);
    Layer anchor(block); // the first block, the anchor of every other one
    std::copy_n(layer.q.data(), anchor.q.size(), anchor.q.data());
    std::copy_n(layer.k.data(), anchor.k.size(), anchor.k.data());
    std::copy_n(layer.v.data(), anchor.v.size(), anchor.v.data());
    anchor.tensor(tensor)(4, 0, 0) = bad;
    LocalCommunicator comm(4);
    const StarAttention<> star(FixedBlocks{block});
    const StarPlan plan = star.plan(tokens, 4);
    ASSERT_EQ(plan.anchor_source(), AnchorSource::compute);
    auto contexts = comm.local<HostContext<float>>();
    for (int r = 0; r < 4; ++r) {
        const index first = r * block;
        contexts[r].add(first, token_slice(view(layer.q), first, block),
                        token_slice(view(layer.k), first, block),
                        token_slice(view(layer.v), first, block));
        if (r == 2)
            contexts[r].add(0, view(anchor.q), view(anchor.k), view(anchor.v));
        else if (r > 0)
            contexts[r].add(0, token_slice(view(layer.q), 0, block),
                            token_slice(view(layer.k), 0, block),
                            token_slice(view(layer.v), 0, block));
    }
    auto caches = comm.local<KVCache<float>>();
    expect_error([&] { (void)star.encode_context(comm, plan, caches, contexts); },
                 "host 2, anchor: " + expected(tensor) + " (" +
                     (bad != bad ? "nan"
                      : bad > 0  ? "inf"
                                 : "-inf") +
                     ") at token 4, head 0, element 0");
    for (int r = 0; r < 4; ++r)
        EXPECT_EQ(caches[r].tokens(), 0) << "host " << r;
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
    expect_error([&] { cache.append(view(layer.k), view(layer.v)); }, expected(tensor) + " (");
    EXPECT_EQ(cache.tokens(), 5);
    // A rejected first append leaves a cache with no shape at all.
    KVCache<float> fresh;
    expect_error([&] { fresh.append(view(layer.k), view(layer.v)); }, expected(tensor));
    EXPECT_EQ(fresh.tokens(), 0);
    EXPECT_EQ(fresh.kv_heads(), 0);
    EXPECT_EQ(fresh.head_dim(), 0);
}

// `check_finite = false` skips the up-front pass wherever `AttentionOptions` are taken. What
// a bad value then gives is unspecified (non-finite outputs, or the kernel's overflow error
// on the way out), but never the check's message. Bad K/V never reach a cache: the kernel's
// error or the cache's own check stops phase 1 before any cache changes.
TEST_P(NonFinite, UncheckedInputsSkipThePassButCachesStillRefuseThem)
{
    const auto [tensor, bad] = GetParam();
    constexpr AttentionOptions unchecked{.check_finite = false};
    const auto check_skipped = [&](const char* where, auto&& run) {
        try {
            run();
        } catch (const star::error& e) {
            EXPECT_EQ(std::string(e.what()).find("non-finite value"), std::string::npos)
                << where << ": " << e.what();
        }
    };
    Layer layer(40);
    layer.tensor(tensor)(25, 0, 3) = bad;
    check_skipped("global", [&] {
        (void)global_attention(view(layer.q), view(layer.k), view(layer.v),
                               {.attention = unchecked});
    });
    LocalCommunicator comm(4);
    check_skipped("ring", [&] {
        (void)RingAttention({.attention = unchecked})
            .run(comm, view(layer.q), view(layer.k), view(layer.v));
    });
    const StarAttention<> star(FixedBlocks{10}, {}, {}, {}, unchecked);
    const StarPlan plan = star.plan(40, 4);
    auto caches = comm.local<KVCache<float>>();
    const auto encode = [&] {
        (void)star.encode_context(comm, plan, caches, view(layer.q), view(layer.k), view(layer.v));
    };
    if (tensor == 'q') {
        check_skipped("star", encode);
        return;
    }
    try {
        encode();
        ADD_FAILURE() << "bad K/V were cached";
    } catch (const star::error& e) {
        const std::string message = e.what();
        EXPECT_TRUE(message.find("KVCache::append: " + expected(tensor)) != std::string::npos ||
                    message.find("overflow float") != std::string::npos)
            << message;
    }
    for (int r = 0; r < 4; ++r)
        EXPECT_EQ(caches[r].tokens(), 0) << "host " << r;
}

INSTANTIATE_TEST_SUITE_P(EveryTensorAndValue, NonFinite,
                         ::testing::Values(Case{'q', nan}, Case{'q', inf}, Case{'q', -inf},
                                           Case{'k', nan}, Case{'k', inf}, Case{'k', -inf},
                                           Case{'v', nan}, Case{'v', inf}, Case{'v', -inf}),
                         [](const auto& info) {
                             const float bad = info.param.bad;
                             return std::string(1, info.param.tensor) + "_" +
                                    (bad != bad ? "nan"
                                     : bad > 0  ? "plus_inf"
                                                : "minus_inf");
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

// bf16 queries are checked as float ones are, wherever they are taken: by Ring, naming the
// host that holds the bad one, and by both phases of Star, which then change no cache.
TEST(NonFinite, Bf16QueriesAreCheckedInRingAndStar)
{
    Layer layer(40), query(3);
    Tensor3<Eigen::bfloat16> q = layer.q.cast<Eigen::bfloat16>();
    q(25, 0, 3) = Eigen::bfloat16(nan); // plain layout on 4 hosts: tokens 20..29 on host 2
    LocalCommunicator comm(4);
    expect_error([&] { (void)RingAttention{}.run(comm, view(q), view(layer.k), view(layer.v)); },
                 "host 2: q holds a non-finite value (nan) at token 25, head 0, element 3");

    const StarAttention<> star(FixedBlocks{10});
    const StarPlan plan = star.plan(40, 4);
    auto caches = comm.local<KVCache<float>>();
    q(25, 0, 3) = Eigen::bfloat16(inf); // blocks of 10 on 4 hosts: block 2 on host 2
    expect_error(
        [&] { (void)star.encode_context(comm, plan, caches, view(q), view(layer.k), view(layer.v)); },
        "host 2: q holds a non-finite value (inf)");
    for (int r = 0; r < 4; ++r)
        EXPECT_EQ(caches[r].tokens(), 0) << "host " << r;

    q(25, 0, 3) = Eigen::bfloat16(0.5f);
    (void)star.encode_context(comm, plan, caches, view(q), view(layer.k), view(layer.v));
    Tensor3<Eigen::bfloat16> query_q = query.q.cast<Eigen::bfloat16>();
    query_q(1, 2, 0) = Eigen::bfloat16(-inf);
    expect_error(
        [&] {
            (void)star.attend_query(comm, plan, caches, view(query_q), view(query.k), view(query.v));
        },
        "query: q holds a non-finite value (-inf) at token 1, head 2, element 0");
    for (int r = 0; r < 4; ++r)
        EXPECT_EQ(caches[r].tokens(), 10) << "host " << r;
}

// The bit test behind every check, on each element type: every position of lengths around
// and between the SIMD widths (the vector part and the scalar tail), each kind of bad value,
// and the values next to it that are finite (the largest, subnormals, negative zero).
template <class T>
class AllFinite : public ::testing::Test {
};
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
            values[static_cast<std::size_t>(i)] =
                finite[static_cast<std::size_t>(i) % finite.size()];
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
                            AttentionOptions{.check_finite = false});
        },
        "overflow float");
}

// Scores of order 1e3..1e5 overflow exp() in a naive softmax (exp(89) is already inf in
// float); the max-shifted online softmax must still give the exact answer.
//
// How exact. A score s = scale * q.k summed in float over d products is off by up to
// delta = 4 u sqrt(d) scale sum_i |q_i k_i| (u = eps / 2; the random-walk model of
// reference.hpp's tolerance(), factor 4 of margin), plus a few ulps of exp: relative to the
// score that is ~1e-6, but at magnitude 300 (scores ~1e5) it is ~0.4 in the exponent. A
// weight p_j = exp(s_j - lse) then errs by a factor within exp(+-2 delta) (its own score,
// and the lse's), and as the weights sum to 1 the output errs by
//     sum_j (p'_j - p_j) (v_j - o)  <=  expm1(2 delta) * sum_j p_j |v_j - o|,
// the spread of v under the row's weights. Large scores make a row's weights one-hot (the
// top key outweighs the next by e^(thousands)), so that spread is 0 but for near ties;
// what remains is the float sum of Lk weighted values, 4 u (sqrt(Lk) + 4) max|v| as in
// tolerance(). The LSE errs by delta, that sum, and its own rounding (u |lse|).
// tolerance() bounds the spread by max|v| instead: ~7.5 at magnitude 300, more than any
// output (a mean of values of order 1) can be wrong by, so it could never fail here.
TEST(LargeScores, BeyondExpRangeStillExact)
{
    // Three key tiles: a later tile raises a row's maximum by thousands, and what the
    // earlier tiles accumulated must be rescaled to nothing.
    constexpr index tokens = 300, q_heads = 4, kv_heads = 2, d = 32, group = q_heads / kv_heads;
    constexpr double u = std::numeric_limits<float>::epsilon() / 2;
    const double scale = 1.0 / std::sqrt(double(d));
    for (const float magnitude : {30.0f, 100.0f, 300.0f}) {
        SCOPED_TRACE("magnitude " + std::to_string(magnitude));
        Layer layer(tokens, q_heads, kv_heads, d);
        layer.q = random_tensor<float>(tokens, q_heads, d, magnitude);
        layer.k = random_tensor<float>(tokens, kv_heads, d, magnitude);
        const AttentionState got = global_attention(view(layer.q), view(layer.k), view(layer.v));
        double max_v = 0.0;
        for (index n = 0; n < layer.v.size(); ++n)
            max_v = std::max(max_v, std::abs(double(layer.v.data()[n])));

        double largest_score = 0.0, worst_output = 0.0, worst_lse = 0.0; // deviation / bound
        std::string worst_output_at, worst_lse_at;
        std::vector<double> scores, p, o(static_cast<std::size_t>(d));
        for (index i = 0; i < tokens; ++i)
            for (index h = 0; h < q_heads; ++h) {
                const index keys = i + 1; // causal
                scores.assign(static_cast<std::size_t>(keys), 0.0);
                double delta = 0.0;
                for (index j = 0; j < keys; ++j) {
                    double dot = 0.0, abs_dot = 0.0;
                    for (index c = 0; c < d; ++c) {
                        const double t = double(layer.q(i, h, c)) * double(layer.k(j, h / group, c));
                        dot += t;
                        abs_dot += std::abs(t);
                    }
                    scores[static_cast<std::size_t>(j)] = scale * dot;
                    largest_score = std::max(largest_score, std::abs(scale * dot));
                    delta = std::max(delta, 4 * u * std::sqrt(double(d)) * scale * abs_dot);
                }
                delta += 4 * u; // exp's ulps
                const double top = *std::max_element(scores.begin(), scores.end());
                double sum = 0.0;
                p.resize(scores.size());
                for (std::size_t j = 0; j < scores.size(); ++j) {
                    p[j] = std::exp(scores[j] - top);
                    sum += p[j];
                }
                std::fill(o.begin(), o.end(), 0.0);
                for (index j = 0; j < keys; ++j)
                    for (index c = 0; c < d; ++c)
                        o[static_cast<std::size_t>(c)] +=
                            p[static_cast<std::size_t>(j)] / sum * double(layer.v(j, h / group, c));
                const double sum_error = 4 * u * (std::sqrt(double(keys)) + 4);
                for (index c = 0; c < d; ++c) {
                    const double want = o[static_cast<std::size_t>(c)];
                    double spread = 0.0;
                    for (index j = 0; j < keys; ++j)
                        spread += p[static_cast<std::size_t>(j)] / sum *
                                  std::abs(double(layer.v(j, h / group, c)) - want);
                    const double bound = std::expm1(2 * delta) * spread + sum_error * max_v + 1e-7;
                    const double ratio = std::abs(double(got.output(i, h, c)) - want) / bound;
                    if (ratio > worst_output) {
                        worst_output = ratio;
                        worst_output_at = "token " + std::to_string(i) + ", head " +
                                          std::to_string(h) + ", element " + std::to_string(c) +
                                          ": got " + std::to_string(got.output(i, h, c)) +
                                          ", want " + std::to_string(want) + ", bound " +
                                          std::to_string(bound);
                    }
                }
                const double lse = top + std::log(sum);
                const double bound = delta + sum_error + u * std::abs(lse) + 1e-7;
                const double ratio = std::abs(double(got.lse(i, h)) - lse) / bound;
                if (ratio > worst_lse) {
                    worst_lse = ratio;
                    worst_lse_at = "token " + std::to_string(i) + ", head " + std::to_string(h);
                }
            }
        ASSERT_GT(largest_score, 1e3) << "the scores must reach far beyond exp's range";
        EXPECT_LE(worst_output, 1.0) << "output beyond its bound at " << worst_output_at;
        EXPECT_LE(worst_lse, 1.0) << "lse beyond its bound at " << worst_lse_at;
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
    expect_error(
        [&] {
            (void)attention(view(q), view(k), view(v), NoMask{}, AttentionOptions{.scale = 1e38f});
        },
        "the scores of query token 0, head 0 overflow float");
    // A row that really sees no key is still output 0, lse -inf.
    const AttentionState empty = attention(view(q), view(k), view(v), CausalMask{0, 1});
    EXPECT_EQ(empty.output(0, 0, 0), 0.0f);
    EXPECT_EQ(empty.lse(0, 0), -std::numeric_limits<float>::infinity());
}

TEST(LargeScores, ValuesWhoseSumOverflowsAreAnError)
{
    Layer layer(64, 2, 1, 4);
    layer.q.setZero();          // equal weights: the output is the mean of v, but the running sum
    layer.v.setConstant(3e38f); // of 3e38 over many keys is not a float
    expect_error([&] { (void)global_attention(view(layer.q), view(layer.k), view(layer.v)); },
                 "the output of query token");
}

} // namespace
} // namespace star::test
