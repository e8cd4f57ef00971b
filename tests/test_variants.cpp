// Attention variants that transform scores (kernel/score_transform.hpp): logit soft-capping
// and ALiBi, under every mask, on the tile kernel and the decode kernel, split over the keys
// or not, on every path this CPU has, against the double-precision reference; the vector
// tanh they rest on; and the checks of their parameters.
//
// Tolerances: tests/reference.hpp's float bound, plus the transform's own rounding
// (`transform_ulps` units of rounding of each transformed score, weighted by probability).
// - SoftCap computes `cap * tanh(s * (1/cap))`: 1/cap and the product round twice (1 u of
//   the argument; tanh's relative condition number 2x/sinh(2x) is at most 1, so 1 u of the
//   result), tanh_of is within 2 ulp (TanhIsWithinTwoUlp below; 2 u near a power of two
//   where an ulp is 2 u), the product by cap 0.5 u: 3.5 u of |cap tanh|. Budget 8 u.
// - Alibi adds `-slope * |distance|` with one fma, the distance exact in float below 2^24:
//   0.5 u of the result. Budget 2 u.
// Errors of the dot product pass through both with a slope of at most 1, so the reference's
// bound for them stands.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "expect_error.hpp"
#include "isa_paths.hpp"
#include "reference.hpp"

namespace star::test {
namespace {

constexpr double soft_cap_ulps = 8.0;
constexpr double alibi_ulps = 2.0;

// --- the vector tanh, on each path -------------------------------------------------------

using TanhFunction = void (*)(const float*, float*, index);

TanhFunction tanh_of_path(KernelIsa isa)
{
    using namespace detail;
    switch (isa) {
#if STAR_X86_DISPATCH
    case KernelIsa::avx512: return &avx512_path::tanh_array<avx512_path::Simd>;
    case KernelIsa::avx2: return &avx2_path::tanh_array<avx2_path::Simd>;
#endif
    default: return &portable_path::tanh_array<portable_path::Simd>;
    }
}

class EveryPath : public ::testing::TestWithParam<KernelIsa> {};

// Densely through both branches and the switch between them at 0.625, near 0 where the
// polynomial alone counts, and out to where tanh is 1 in float.
TEST_P(EveryPath, TanhIsWithinTwoUlp)
{
    STAR_SKIP_UNLESS_SUPPORTED(GetParam());
    std::vector<float> x;
    for (float t = -12.0f; t <= 12.0f; t += 0.000731f)
        x.push_back(t);
    for (float t = 1e-30f; t < 1.0f; t *= 1.01f) {
        x.push_back(t);
        x.push_back(-t);
    }
    for (float t = 0.62f; t < 0.63f; t = std::nextafter(t, 1.0f))
        x.push_back(t);
    std::vector<float> y(x.size());
    tanh_of_path(GetParam())(x.data(), y.data(), static_cast<index>(x.size()));
    double worst = 0.0;
    for (std::size_t i = 0; i < x.size(); ++i) {
        const long double exact = std::tanh(static_cast<long double>(x[i]));
        const long double ulp = std::ldexp(1.0L, std::ilogb(exact) - 23);
        const double ulps = static_cast<double>(std::abs(y[i] - exact) / ulp);
        worst = std::max(worst, ulps);
        ASSERT_LE(ulps, 2.0) << "tanh(" << x[i] << ") = " << y[i];
    }
    std::cout << "worst error: " << worst << " ulp\n";
}

TEST_P(EveryPath, TanhAtTheEdgesOfItsRange)
{
    STAR_SKIP_UNLESS_SUPPORTED(GetParam());
    const float inf = std::numeric_limits<float>::infinity();
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const std::vector<float> x{0.0f,   44.0f, 89.0f,
                               1e30f,  inf,   -inf,
                               -1e30f, nan,   std::numeric_limits<float>::denorm_min()};
    std::vector<float> y(x.size());
    tanh_of_path(GetParam())(x.data(), y.data(), static_cast<index>(x.size()));
    EXPECT_EQ(y[0], 0.0f);
    EXPECT_EQ(y[1], 1.0f);
    EXPECT_EQ(y[2], 1.0f); // e^(2x) overflows: 2 / inf is 0, no NaN
    EXPECT_EQ(y[3], 1.0f);
    EXPECT_EQ(y[4], 1.0f);
    EXPECT_EQ(y[5], -1.0f);
    EXPECT_EQ(y[6], -1.0f);
    EXPECT_TRUE(std::isnan(y[7])); // left for write_row to report
    EXPECT_EQ(y[8], x[8]);
}

INSTANTIATE_TEST_SUITE_P(Isa, EveryPath, ::testing::ValuesIn(all_kernel_isas), isa_name);

// --- the kernel against the reference ----------------------------------------------------

struct Shape {
    index q_tokens, k_tokens, q_heads, kv_heads, head_dim;
    float logit_scale = 1.0f; // multiplies q, hence every score
    std::string what;
};

// The query tokens are the last of the sequence (a chunk after a cache, or the whole of
// it), for the masks and ALiBi alike.
index query_offset(const Shape& s) { return s.k_tokens - s.q_tokens; }

// Documents that start on, just before and just after tile edges (128, 256) and decode
// blocks (32), one of a single token, one past the longest sequence.
const std::vector<index> document_starts{0, 5, 31, 127, 128, 129, 200, 201, 255, 257, 1000, 2401};

NoMask make_mask(const Shape&, NoMask) { return {}; }
CausalMask make_mask(const Shape& s, CausalMask) { return {query_offset(s), 0}; }
SlidingWindowMask make_mask(const Shape& s, SlidingWindowMask) { return {100, query_offset(s), 0}; }
DocumentMask make_mask(const Shape& s, DocumentMask)
{
    return {document_starts, query_offset(s), 0};
}

// Each transform as the kernel takes it and in double for the reference.
struct SoftCapCase {
    float cap;
    SoftCap make(const Shape&, const std::vector<float>&) const { return {cap}; }
    Transform reference(const Shape&, const std::vector<float>&) const
    {
        const double c = cap;
        return [c](double s, index, index, index) { return c * std::tanh(s / c); };
    }
    static constexpr double ulps = soft_cap_ulps;
};

struct AlibiCase {
    Alibi make(const Shape& s, const std::vector<float>& slopes) const
    {
        return {slopes, query_offset(s), 0};
    }
    Transform reference(const Shape& s, const std::vector<float>& slopes) const
    {
        const index offset = query_offset(s);
        return [offset, slopes](double score, index i, index j, index h) {
            const double distance = std::abs(double(j) - double(offset + i));
            return score - double(slopes[static_cast<std::size_t>(h)]) * distance;
        };
    }
    static constexpr double ulps = alibi_ulps;
};

// ALiBi's penalty, then a soft cap: the rounding of the penalty (0.5 u of the penalised
// score x) reaches the capped score through tanh's slope, as at most 0.5 u of it (x sech^2(x/c)
// <= c tanh(x/c)), so the budgets add.
struct AlibiThenCapCase {
    float cap;
    Composed<Alibi, SoftCap> make(const Shape& s, const std::vector<float>& slopes) const
    {
        return {AlibiCase{}.make(s, slopes), SoftCap{cap}};
    }
    Transform reference(const Shape& s, const std::vector<float>& slopes) const
    {
        const double c = cap;
        return
            [c, alibi = AlibiCase{}.reference(s, slopes)](double score, index i, index j, index h) {
                return c * std::tanh(alibi(score, i, j, h) / c);
            };
    }
    static constexpr double ulps = soft_cap_ulps + alibi_ulps;
};

// A transform of the caller's own (the kernel's scalar fallback): a soft cap written out,
// and a per-head shift that only the LSE sees, so that the head argument is checked too.
struct ScalarCapAndShift {
    float cap;
    float operator()(float s, index, index, index head) const
    {
        return cap * std::tanh(s / cap) + 0.25f * static_cast<float>(head);
    }
};
static_assert(ScoreTransform<ScalarCapAndShift>);

struct ScalarCase {
    float cap;
    ScalarCapAndShift make(const Shape&, const std::vector<float>&) const { return {cap}; }
    Transform reference(const Shape&, const std::vector<float>&) const
    {
        const double c = cap;
        return [c](double s, index, index, index h) {
            return c * std::tanh(s / c) + 0.25 * double(h);
        };
    }
    static constexpr double ulps = soft_cap_ulps + 2.0; // std::tanh's, and the add
};

template <class KV, class M, class Case>
void expect_matches_reference(const Shape& s, const Case& transform_case)
{
    SCOPED_TRACE(s.what);
    const auto q = random_tensor<float>(s.q_tokens, s.q_heads, s.head_dim, s.logit_scale);
    const auto k = random_tensor<KV>(s.k_tokens, s.kv_heads, s.head_dim);
    const auto v = random_tensor<KV>(s.k_tokens, s.kv_heads, s.head_dim);
    const std::vector<float> slopes = alibi_slopes(s.q_heads);
    const M mask = make_mask(s, M{});
    const auto transform = transform_case.make(s, slopes);
    PathReferences<KV> references([&](Products products) {
        return reference_attention(
            view(q), view(k), view(v), [&](index i, index j) { return mask.visible(i, j); },
            1.0 / std::sqrt(double(s.head_dim)), transform_case.reference(s, slopes), products);
    });
    for (const KernelIsa isa : supported_isas()) {
        SCOPED_TRACE("path " + std::string(name(isa)));
        const ReferenceResult& want = references.on(isa);
        const Tolerance tol = tolerance(want, s.head_dim, s.k_tokens, Case::ulps);
        const ForcedIsa forced(isa);
        const AttentionState got = attention(view(q), view(k), view(v), mask, {}, transform);
        const Deviation dev = deviation(got, want);
        EXPECT_TRUE(dev.all_finite);
        EXPECT_TRUE(dev.infinities_match)
            << "rows with no visible key must have lse = -inf, only they";
        EXPECT_LE(dev.output, tol.output);
        EXPECT_LE(dev.lse, tol.lse);
    }
}

// Awkward sizes for each kernel: head_dim no multiple of any vector width, token counts no
// multiple of a tile (128 keys, 256 rows) or a decode block (64 keys), grouped-query ratios
// of 1 and more, the non-power-of-two head counts of ALiBi's second rule.
std::vector<Shape> shapes()
{
    return {
        // Tile kernel, several query tiles (group 2 gives 128 tokens a tile): prefill.
        {300, 300, 4, 2, 40, 3.0f, "tile kernel, prefill, group 2, d 40"},
        {131, 131, 3, 3, 20, 3.0f, "tile kernel, prefill, group 1, 3 heads, d 20"},
        // One query tile of more than 16 rows over a long cache: split over the keys.
        {9, 2500, 8, 2, 72, 3.0f, "tile kernel, split-KV, group 4, d 72"},
        // At most 16 rows per KV head: the decode kernel, its keys split or not.
        {2, 602, 12, 2, 72, 3.0f, "decode kernel, group 6 (12 heads), d 72"},
        {1, 45, 2, 2, 20, 3.0f, "decode kernel, one block and a bit, group 1, d 20"},
        {3, 2600, 5, 1, 24, 3.0f, "decode kernel, split-KV, group 5, d 24"},
    };
}

template <class M, class Case>
void for_every_shape(const Case& transform_case)
{
    for (const Shape& s : shapes())
        expect_matches_reference<float, M>(s, transform_case);
}

// Scores of standard deviation 3 (logit_scale) under a cap of 2.5: the cap bends most.
constexpr SoftCapCase soft_cap{2.5f};

TEST(SoftCap, WithoutMaskMatchesReference) { for_every_shape<NoMask>(soft_cap); }
TEST(SoftCap, CausalMatchesReference) { for_every_shape<CausalMask>(soft_cap); }
TEST(SoftCap, SlidingWindowMatchesReference) { for_every_shape<SlidingWindowMask>(soft_cap); }
TEST(SoftCap, DocumentMaskMatchesReference) { for_every_shape<DocumentMask>(soft_cap); }

TEST(Alibi, WithoutMaskMatchesReference) { for_every_shape<NoMask>(AlibiCase{}); }
TEST(Alibi, CausalMatchesReference) { for_every_shape<CausalMask>(AlibiCase{}); }
TEST(Alibi, SlidingWindowMatchesReference) { for_every_shape<SlidingWindowMask>(AlibiCase{}); }
TEST(Alibi, DocumentMaskMatchesReference) { for_every_shape<DocumentMask>(AlibiCase{}); }

TEST(Composed, AlibiThenSoftCapMatchesReference)
{
    for_every_shape<CausalMask>(AlibiThenCapCase{2.5f});
}

TEST(ScoreTransform, CallersOwnTransformMatchesReference)
{
    for_every_shape<CausalMask>(ScalarCase{2.5f});
    for_every_shape<DocumentMask>(ScalarCase{2.5f});
}

TEST(ScoreTransform, Bfloat16KeysAndValues)
{
    expect_matches_reference<Eigen::bfloat16, CausalMask>(
        {300, 300, 4, 1, 40, 3.0f, "tile kernel, bf16"}, soft_cap);
    expect_matches_reference<Eigen::bfloat16, CausalMask>(
        {2, 602, 4, 1, 72, 3.0f, "decode kernel, bf16"}, soft_cap);
}

// Rows that see no key stay empty (output 0, lse -inf) whatever the transform: a transform
// never changes visibility. Queries before every key, in both kernels.
TEST(ScoreTransform, RowsThatSeeNoKeyStayEmpty)
{
    const auto q = random_tensor<float>(20, 4, 24);
    const auto k = random_tensor<float>(300, 2, 24);
    const auto v = random_tensor<float>(300, 2, 24);
    const std::vector<float> slopes = alibi_slopes(4);
    for (const KernelIsa isa : supported_isas()) {
        const ForcedIsa forced(isa);
        for (const index tokens : {index{20}, index{2}}) { // tile kernel, decode kernel
            const auto queries = token_slice(view(q), 0, tokens);
            const CausalMask before_every_key{0, 5000};
            const auto expect_empty = [](const AttentionState& got) {
                for (index n = 0; n < got.lse.size(); ++n)
                    ASSERT_EQ(got.lse.data()[n], -std::numeric_limits<float>::infinity());
                for (index n = 0; n < got.output.size(); ++n)
                    ASSERT_EQ(got.output.data()[n], 0.0f);
            };
            expect_empty(attention(queries, view(k), view(v), before_every_key, {}, SoftCap{3.0f}));
            expect_empty(
                attention(queries, view(k), view(v), before_every_key, {}, Alibi{slopes, 0, 5000}));
        }
    }
}

// Scores that overflow float (q.k = 4.5e38) cannot survive a soft cap: the cap is what
// their tanh gives, as in double. Without it the same call is an overflow error.
TEST(SoftCap, BoundsScoresThatOverflowFloat)
{
    for (const index tokens : {index{1}, index{20}}) { // decode kernel, tile kernel
        Tensor3<float> q(tokens, 1, 2), k(3, 1, 2), v(3, 1, 2);
        q.setConstant(1.5e19f);
        k.setValues({{{1.5e19f, 1.5e19f}}, {{1.0f, 0.0f}}, {{-1.5e19f, -1.5e19f}}});
        v.setValues({{{1.0f, 2.0f}}, {{3.0f, 4.0f}}, {{5.0f, 6.0f}}});
        const AttentionOptions unscaled{.scale = 1.0f};
        for (const KernelIsa isa : supported_isas()) {
            SCOPED_TRACE(std::string(name(isa)) + ", " + std::to_string(tokens) + " tokens");
            const ForcedIsa forced(isa);
            const float cap = 4.0f;
            const AttentionState got =
                attention(view(q), view(k), view(v), NoMask{}, unscaled, SoftCap{cap});
            // Scores: cap, 4 tanh(1.5e19 / 4) = cap, -cap.
            const double e = std::exp(-2.0 * cap);
            const double sum = 2.0 + e;
            for (index t = 0; t < tokens; ++t) {
                EXPECT_NEAR(got.output(t, 0, 0), (1.0 + 3.0 + 5.0 * e) / sum, 1e-6);
                EXPECT_NEAR(got.output(t, 0, 1), (2.0 + 4.0 + 6.0 * e) / sum, 1e-6);
                EXPECT_NEAR(got.lse(t, 0), cap + std::log(sum), 1e-6);
            }
            expect_error([&] { (void)attention(view(q), view(k), view(v), NoMask{}, unscaled); },
                         "overflow float");
        }
    }
}

// --- parameters --------------------------------------------------------------------------

TEST(Alibi, SlopesAreThePapers)
{
    // A power of two: 2^(-8/n), 2^(-16/n), ..., 2^-8.
    const std::vector<float> eight = alibi_slopes(8);
    ASSERT_EQ(eight.size(), 8u);
    for (std::size_t h = 0; h < 8; ++h)
        EXPECT_EQ(eight[h], std::ldexp(1.0f, -static_cast<int>(h) - 1));
    // Otherwise the largest power of two below, then every other slope of twice that.
    const std::vector<float> twelve = alibi_slopes(12);
    ASSERT_EQ(twelve.size(), 12u);
    for (std::size_t h = 0; h < 8; ++h)
        EXPECT_EQ(twelve[h], eight[h]);
    for (std::size_t h = 8; h < 12; ++h)
        EXPECT_FLOAT_EQ(twelve[h], static_cast<float>(std::exp2(-0.5 - double(h - 8))));
    const std::vector<float> three = alibi_slopes(3);
    EXPECT_EQ(three, (std::vector<float>{0.0625f, 0.00390625f, 0.25f}));
    EXPECT_EQ(alibi_slopes(1), std::vector<float>{0.00390625f});
    expect_error([] { (void)alibi_slopes(0); },
                 "alibi_slopes: need a positive number of heads, got 0");
}

TEST(Alibi, PenalisesDistanceBothWays)
{
    const std::vector<float> slopes{0.5f, 2.0f};
    const Alibi alibi{slopes, 10, 3};
    EXPECT_EQ(alibi(1.0f, 0, 7, 0), 1.0f);                // positions 10 and 10
    EXPECT_EQ(alibi(1.0f, 0, 4, 1), 1.0f - 2.0f * 3.0f);  // a key 3 before the query
    EXPECT_EQ(alibi(1.0f, 0, 10, 0), 1.0f - 0.5f * 3.0f); // 3 after
}

struct BadInputs {
    Tensor3<float> q = random_tensor<float>(5, 4, 8);
    Tensor3<float> k = random_tensor<float>(1000, 2, 8);
    Tensor3<float> v = random_tensor<float>(1000, 2, 8);

    template <ScoreTransform T>
    void call(const T& transform) const
    {
        (void)attention(view(q), view(k), view(v), NoMask{}, {}, transform);
    }
};

TEST(SoftCap, RejectsACapThatIsNotFiniteAndPositive)
{
    const BadInputs in;
    for (const float cap : {0.0f, -1.0f, std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN()})
        expect_error([&] { in.call(SoftCap{cap}); },
                     "attention: SoftCap's cap must be finite and positive, got ");
    expect_error([&] { in.call(SoftCap{}); }, "finite and positive, got 0");
}

TEST(Alibi, RejectsSlopesNotOnePerQueryHead)
{
    const BadInputs in;
    const std::vector<float> three(3, 0.5f);
    expect_error([&] { in.call(Alibi{three}); },
                 "attention: Alibi has 3 slopes but q has 4 heads; give one slope per query head");
    expect_error([&] { in.call(Alibi{}); }, "Alibi has 0 slopes but q has 4 heads");
}

TEST(Composed, ChecksEachPart)
{
    const BadInputs in;
    const std::vector<float> three(3, 0.5f), four(4, 0.5f);
    expect_error(
        [&] {
            in.call(Composed<Alibi, SoftCap>{{three}, {2.0f}});
        },
        "Alibi has 3 slopes but q has 4 heads");
    expect_error(
        [&] {
            in.call(Composed<Alibi, SoftCap>{{four}, {0.0f}});
        },
        "SoftCap's cap must be finite and positive, got 0");
}

TEST(Alibi, RejectsASlopeThatIsNotFinite)
{
    const BadInputs in;
    std::vector<float> slopes(4, 0.5f);
    slopes[2] = std::numeric_limits<float>::quiet_NaN();
    expect_error([&] { in.call(Alibi{slopes}); }, "Alibi's slope for head 2 is not finite");
    slopes[2] = -std::numeric_limits<float>::infinity();
    expect_error([&] { in.call(Alibi{slopes}); }, "Alibi's slope for head 2 is not finite");
}

// A penalty past float's range would make every score of a row -inf: rejected before any
// work, naming the slope and the distance (here 999 + 100: the first key to the last query
// at position 104).
TEST(Alibi, RejectsASlopeWhosePenaltyOverflowsFloat)
{
    const BadInputs in;
    std::vector<float> slopes(4, 0.5f);
    slopes[1] = 1e36f;
    expect_error(
        [&] {
            in.call(Alibi{slopes, 0, 0});
        },
        "Alibi's slope for head 1 (1e+36) times the largest query-key distance of the "
        "call (999) overflows float");
    slopes[1] = 1e35f;
    in.call(Alibi{slopes, 0, 0}); // 1e38: within range
    expect_error([&] { in.call(Alibi{slopes, 1000000, 0}); }, "(1000004) overflows float");
}

// A finite penalty on a score near float's limit can still overflow: every visible score of
// the row is then -inf. That is reported after the work, on both kernels, as the overflow
// it is, never returned as a row that sees no key.
TEST(Alibi, AnOverflowingPenaltyIsAnErrorNotAnEmptyRow)
{
    for (const index tokens : {index{1}, index{20}}) { // decode kernel, tile kernel
        Tensor3<float> q(tokens, 1, 1), k(10, 1, 1), v(10, 1, 1);
        q.setConstant(1.5e19f);
        k.setConstant(-1.5e19f); // scores -2.25e38, finite
        v.setConstant(1.0f);
        const std::vector<float> slopes{1.6e35f}; // penalties of 1.6e38 at most, finite
        const Alibi far{slopes, 1000, 0};
        for (const KernelIsa isa : supported_isas()) {
            SCOPED_TRACE(std::string(name(isa)) + ", " + std::to_string(tokens) + " tokens");
            const ForcedIsa forced(isa);
            EXPECT_THROW((void)attention(view(q), view(k), view(v), NoMask{}, {1.0f}, far),
                         runtime_failure);
            expect_error([&] { (void)attention(view(q), view(k), view(v), NoMask{}, {1.0f}, far); },
                         "the scores of query token 0, head 0 overflow float");
        }
    }
}

} // namespace
} // namespace star::test
