// The kernel's paths (star/kernel/isa.hpp): how one is chosen, and the pieces each path
// has of its own (exp, the bf16/half widening) against exact values. The kernel as a
// whole is tested on every path in test_kernel.cpp.

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "expect_error.hpp"
#include "isa_paths.hpp"
#include "reference.hpp"

namespace star::test {
namespace {

TEST(Isa, NamesRoundTripThroughTheCap)
{
    for (const KernelIsa isa : all_kernel_isas) {
        const std::string text(name(isa));
        const detail::IsaCap cap = detail::parse_isa_cap(text.c_str());
        EXPECT_TRUE(cap.error.empty()) << cap.error;
        EXPECT_EQ(cap.cap, isa);
    }
}

TEST(Isa, UnsetOrEmptyMeansNoCap)
{
    EXPECT_EQ(detail::parse_isa_cap(nullptr).cap, all_kernel_isas.back());
    EXPECT_EQ(detail::parse_isa_cap("").cap, all_kernel_isas.back());
    EXPECT_TRUE(detail::parse_isa_cap("").error.empty());
}

TEST(Isa, AnUnknownNameIsAnErrorNamingIt)
{
    const detail::IsaCap cap = detail::parse_isa_cap("avx1024");
    EXPECT_NE(cap.error.find("STAR_ISA"), std::string::npos) << cap.error;
    EXPECT_NE(cap.error.find("\"avx1024\""), std::string::npos) << cap.error;
    EXPECT_NE(cap.error.find("portable, avx2, avx512 or avx512_bf16"), std::string::npos)
        << cap.error;
}

// CTest runs this file a second time with STAR_ISA=bogus (tests/CMakeLists.txt).
TEST(Isa, ABadEnvironmentValueFailsEveryKernelCall)
{
    const char* value = std::getenv("STAR_ISA");
    if (value == nullptr || std::string(value) != "bogus")
        GTEST_SKIP() << "runs under STAR_ISA=bogus only";
    expect_error([] { (void)kernel_isa(); }, "STAR_ISA: unknown kernel path \"bogus\"");
    const auto q = random_tensor<float>(3, 2, 8);
    expect_error([&] { (void)attention(view(q), view(q), view(q)); }, "STAR_ISA");
}

// Under any STAR_ISA that names a path (CTest runs this file under STAR_ISA=portable too).
TEST(Isa, TheChosenPathIsTheBestTheCpuHasUnderTheCap)
{
    const detail::IsaCap cap = detail::parse_isa_cap(std::getenv("STAR_ISA"));
    if (!cap.error.empty())
        GTEST_SKIP() << "STAR_ISA names no path";
    const KernelIsa chosen = kernel_isa();
    EXPECT_TRUE(cpu_supports(chosen));
    EXPECT_LE(chosen, cap.cap);
    for (const KernelIsa isa : all_kernel_isas)
        if (isa > chosen && isa <= cap.cap) {
            const bool passed_over_as_slower =
                isa == KernelIsa::avx512_bf16 && !bf16_products_outrun_float();
            EXPECT_TRUE(!cpu_supports(isa) || passed_over_as_slower)
                << name(isa) << " is supported, allowed and not slower";
        }
    std::cout << "kernel path: " << name(chosen)
              << (bf16_products_outrun_float() ? " (bf16 products outrun float here)" : "") << "\n";
}

// The choice on CPUs this one is not, under caps and with or without fast bf16 products.
TEST(Isa, Avx512Bf16IsTakenOnlyWhereItsProductsOutrunFloat)
{
    const auto up_to = [](KernelIsa top) { return [top](KernelIsa isa) { return isa <= top; }; };
    using detail::preferred_isa;
    constexpr KernelIsa no_cap = KernelIsa::avx512_bf16;
    // An AMD Zen 4 or 5: the bf16 products pay.
    EXPECT_EQ(preferred_isa(no_cap, up_to(KernelIsa::avx512_bf16), true), KernelIsa::avx512_bf16);
    // An Intel Emerald Rapids: they do not, and bf16 K/V stay on avx512's float products.
    EXPECT_EQ(preferred_isa(no_cap, up_to(KernelIsa::avx512_bf16), false), KernelIsa::avx512);
    // The speed of a product the CPU lacks changes nothing.
    EXPECT_EQ(preferred_isa(no_cap, up_to(KernelIsa::avx512), true), KernelIsa::avx512);
    EXPECT_EQ(preferred_isa(no_cap, up_to(KernelIsa::avx2), false), KernelIsa::avx2);
    // The cap holds whatever the CPU has.
    EXPECT_EQ(preferred_isa(KernelIsa::avx2, up_to(KernelIsa::avx512_bf16), true), KernelIsa::avx2);
    EXPECT_EQ(preferred_isa(KernelIsa::portable, up_to(KernelIsa::avx512_bf16), true),
              KernelIsa::portable);
}

TEST(Isa, ForcingAPathOverridesTheChoice)
{
    ForcedIsa forced(KernelIsa::portable);
    EXPECT_EQ(kernel_isa(), KernelIsa::portable);
}

// --- per-path pieces ----------------------------------------------------------------------

using ExpFunction = void (*)(const float*, float*, index);
using WidenBf16 = void (*)(const Eigen::bfloat16*, index, index, index, float*, index);
using WidenHalf = void (*)(const Eigen::half*, index, index, index, float*, index);

struct PathPieces {
    ExpFunction exp;
    ExpFunction softmax_exp;
    WidenBf16 widen_bf16;
    WidenHalf widen_half;
};

PathPieces pieces(KernelIsa isa)
{
    using namespace detail;
    switch (isa) {
#if STAR_X86_DISPATCH
    case KernelIsa::avx512_bf16:
        return {&avx512_bf16_path::exp_array<avx512_bf16_path::Simd,
                                             &avx512_bf16_path::exp_of<avx512_bf16_path::Simd>>,
                &avx512_bf16_path::exp_array<avx512_bf16_path::Simd,
                                             &avx512_bf16_path::softmax_exp<avx512_bf16_path::Simd>>,
                &avx512_bf16_path::widen_rows<avx512_bf16_path::Simd, Eigen::bfloat16>,
                &avx512_bf16_path::widen_rows<avx512_bf16_path::Simd, Eigen::half>};
    case KernelIsa::avx512:
        return {
            &avx512_path::exp_array<avx512_path::Simd, &avx512_path::exp_of<avx512_path::Simd>>,
            &avx512_path::exp_array<avx512_path::Simd, &avx512_path::softmax_exp<avx512_path::Simd>>,
            &avx512_path::widen_rows<avx512_path::Simd, Eigen::bfloat16>,
            &avx512_path::widen_rows<avx512_path::Simd, Eigen::half>};
    case KernelIsa::avx2:
        return {&avx2_path::exp_array<avx2_path::Simd, &avx2_path::exp_of<avx2_path::Simd>>,
                &avx2_path::exp_array<avx2_path::Simd, &avx2_path::softmax_exp<avx2_path::Simd>>,
                &avx2_path::widen_rows<avx2_path::Simd, Eigen::bfloat16>,
                &avx2_path::widen_rows<avx2_path::Simd, Eigen::half>};
#endif
    default:
        return {
            &portable_path::exp_array<portable_path::Simd, &portable_path::exp_of<portable_path::Simd>>,
            &portable_path::exp_array<portable_path::Simd,
                                      &portable_path::softmax_exp<portable_path::Simd>>,
            &portable_path::widen_rows<portable_path::Simd, Eigen::bfloat16>,
            &portable_path::widen_rows<portable_path::Simd, Eigen::half>};
    }
}

class EveryPath : public ::testing::TestWithParam<KernelIsa> {};

/// `[from, to]` in steps of `step`, then `near_zero` points from 0 down in steps of
/// `near_zero_step`: the inputs near 0 weigh most in a softmax's sum.
std::vector<float> exp_sweep(float from, float to, float step, int near_zero, float near_zero_step)
{
    std::vector<float> x;
    for (float t = from; t <= to; t += step)
        x.push_back(t);
    for (int i = 0; i < near_zero; ++i)
        x.push_back(-static_cast<float>(i) * near_zero_step);
    return x;
}

// exp_of serves the score transforms (tanh) and the xsimd path's softmax: its whole range
// where the result is a normal float is swept.
TEST_P(EveryPath, ExpIsWithinTwoUlpOfTheExactValue)
{
    STAR_SKIP_UNLESS_SUPPORTED(GetParam());
    const std::vector<float> x = exp_sweep(-87.3f, 88.0f, 0.0137f, 2000, 1e-4f);
    std::vector<float> y(x.size());
    pieces(GetParam()).exp(x.data(), y.data(), static_cast<index>(x.size()));
    double worst_ulps = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
        const double exact = std::exp(static_cast<double>(x[i]));
        const double ulp = std::ldexp(1.0, std::ilogb(exact) - 23);
        worst_ulps = std::max(worst_ulps, std::abs(y[i] - exact) / ulp);
        ASSERT_LE(std::abs(y[i] - exact), 2 * ulp) << "exp(" << x[i] << ") = " << y[i];
    }
    std::cout << "worst error: " << worst_ulps << " ulp\n";
}

TEST_P(EveryPath, ExpAtTheEdgesOfItsRange)
{
    STAR_SKIP_UNLESS_SUPPORTED(GetParam());
    const float inf = std::numeric_limits<float>::infinity();
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const std::vector<float> x{0.0f, -0.0f, -inf, -1000.0f, -87.5f, 89.0f, 1000.0f, inf, nan};
    std::vector<float> y(x.size());
    pieces(GetParam()).exp(x.data(), y.data(), static_cast<index>(x.size()));
    EXPECT_EQ(y[0], 1.0f); // a row's largest score weighs exactly 1
    EXPECT_EQ(y[1], 1.0f);
    EXPECT_EQ(y[2], 0.0f); // masked scores
    EXPECT_EQ(y[3], 0.0f);
    EXPECT_LE(y[4], std::numeric_limits<float>::min());
    EXPECT_EQ(y[5], inf);
    EXPECT_EQ(y[6], inf);
    EXPECT_EQ(y[7], inf);
    EXPECT_TRUE(std::isnan(y[8]));
}

// The softmax's exp sees score - shift <= 8 (OnlineSoftmax::headroom) only, and its error
// matters against the sum it joins, at least 1: a relative error of (1.25 |x| + 3) 2^-24
// (rounding log2 e and x log2 e, and the polynomial's 2.5 ulp), an absolute one of
// 3 2^-24 where x <= 0 (exp.inl).
TEST_P(EveryPath, SoftmaxExpIsWithinItsBound)
{
    STAR_SKIP_UNLESS_SUPPORTED(GetParam());
    const std::vector<float> x = exp_sweep(-88.0f, 8.0f, 0.00731f, 3000, 1e-5f);
    std::vector<float> y(x.size());
    pieces(GetParam()).softmax_exp(x.data(), y.data(), static_cast<index>(x.size()));
    double worst_relative = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
        const double exact = std::exp(static_cast<double>(x[i]));
        if (exact < static_cast<double>(std::numeric_limits<float>::min())) {
            ASSERT_LE(y[i], std::numeric_limits<float>::min()) << "exp(" << x[i] << ")";
            continue;
        }
        const double relative = std::abs(y[i] - exact) / exact;
        const double bound = (1.25 * std::abs(x[i]) + 3) * 0x1p-24;
        worst_relative = std::max(worst_relative, relative / bound);
        ASSERT_LE(relative, bound) << "exp(" << x[i] << ") = " << y[i];
        if (x[i] <= 0.0f) {
            ASSERT_LE(std::abs(y[i] - exact), 3 * 0x1p-24) << "exp(" << x[i] << ") = " << y[i];
        }
    }
    std::cout << "worst error: " << worst_relative << " of the bound\n";
}

TEST_P(EveryPath, SoftmaxExpOfMaskedAndLargestScores)
{
    STAR_SKIP_UNLESS_SUPPORTED(GetParam());
    const float inf = std::numeric_limits<float>::infinity();
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const std::vector<float> x{0.0f, -0.0f, -inf, -1000.0f, -87.5f, -88.0f, nan};
    std::vector<float> y(x.size());
    pieces(GetParam()).softmax_exp(x.data(), y.data(), static_cast<index>(x.size()));
    EXPECT_EQ(y[0], 1.0f); // a row's largest score weighs exactly 1
    EXPECT_EQ(y[1], 1.0f);
    EXPECT_EQ(y[2], 0.0f); // masked scores
    EXPECT_EQ(y[3], 0.0f);
    EXPECT_LE(y[4], std::numeric_limits<float>::min());
    EXPECT_LE(y[5], std::numeric_limits<float>::min());
    EXPECT_TRUE(std::isnan(y[6]));
}

// Every one of the 65536 bit patterns, in rows whose length is no multiple of any vector
// width, so that the vector body and the scalar tail both see every kind of value.
template <class Narrow, class Widen>
void expect_every_pattern_widens_exactly(Widen widen)
{
    constexpr index d = 37;
    constexpr index rows = (65536 + d - 1) / d;
    std::vector<Narrow> narrow(static_cast<std::size_t>(rows * d));
    for (std::size_t i = 0; i < narrow.size(); ++i)
        narrow[i] = Eigen::numext::bit_cast<Narrow>(static_cast<std::uint16_t>(i));
    std::vector<float> wide(static_cast<std::size_t>(rows * 40), -1.0f);
    widen(narrow.data(), d, rows, d, wide.data(), 40);
    for (index r = 0; r < rows; ++r) {
        for (index c = 0; c < d; ++c) {
            const Narrow n = narrow[static_cast<std::size_t>(r * d + c)];
            const float want = static_cast<float>(n);
            const float got = wide[static_cast<std::size_t>(r * 40 + c)];
            if (std::isnan(want))
                ASSERT_TRUE(std::isnan(got)) << "pattern " << r * d + c;
            else
                ASSERT_EQ(std::bit_cast<std::uint32_t>(got), std::bit_cast<std::uint32_t>(want))
                    << "pattern " << r * d + c;
        }
        for (index c = d; c < 40; ++c)
            ASSERT_EQ(wide[static_cast<std::size_t>(r * 40 + c)], -1.0f) << "wrote past a row";
    }
}

TEST_P(EveryPath, Bfloat16WidensExactly)
{
    STAR_SKIP_UNLESS_SUPPORTED(GetParam());
    expect_every_pattern_widens_exactly<Eigen::bfloat16>(pieces(GetParam()).widen_bf16);
}

TEST_P(EveryPath, HalfWidensExactly)
{
    STAR_SKIP_UNLESS_SUPPORTED(GetParam());
    expect_every_pattern_widens_exactly<Eigen::half>(pieces(GetParam()).widen_half);
}

INSTANTIATE_TEST_SUITE_P(Isa, EveryPath, ::testing::ValuesIn(all_kernel_isas), isa_name);


#if STAR_X86_DISPATCH
// The bf16 product atom's pieces (simd/avx512_bf16_atom.hpp), called from its target region.
using Bf16Product = detail::Avx512Bf16Product<xsimd::default_arch>;

STAR_TARGET_BEGIN("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c")
void pair_up_rows(const float* even, const float* odd, detail::bf16_pair* out)
{
    Bf16Product::store(
        out, Bf16Product::pair_up(Bf16Product::simd::load(even), Bf16Product::simd::load(odd)));
}
STAR_TARGET_END

std::uint16_t bits_of(Eigen::bfloat16 x) { return Eigen::numext::bit_cast<std::uint16_t>(x); }

// Probabilities are rounded to bf16 for the value product; Eigen's conversion (to nearest,
// ties to even) is what the reference assumes. Ties, values just beside them, and the
// range of probabilities, with denormals left out: the hardware takes them as 0.
TEST(Bf16Atom, PairsRoundToNearestEvenAndInterleave)
{
    STAR_SKIP_UNLESS_SUPPORTED(KernelIsa::avx512_bf16);
    std::vector<float> values;
    for (std::uint32_t mantissa : {0x00000U, 0x08000U, 0x18000U, 0x07FFFU, 0x08001U, 0x7FFFFU})
        for (std::uint32_t exponent : {1U, 100U, 126U, 127U, 200U})
            values.push_back(std::bit_cast<float>(exponent << 23 | mantissa));
    std::uniform_real_distribution<float> unit(0.0f, 1.0f);
    while (values.size() % 32 != 0 || values.size() < 512)
        values.push_back(unit(rng()));
    for (std::size_t first = 0; first < values.size(); first += 32) {
        const float* even = values.data() + first;
        const float* odd = even + 16;
        detail::bf16_pair pairs[16];
        pair_up_rows(even, odd, pairs);
        for (int i = 0; i < 16; ++i) {
            ASSERT_EQ(pairs[i] & 0xFFFFU, bits_of(Eigen::bfloat16(even[i]))) << even[i];
            ASSERT_EQ(pairs[i] >> 16, bits_of(Eigen::bfloat16(odd[i]))) << odd[i];
        }
    }
}

TEST(Bf16Atom, RowsPairUpAndPadWithZeros)
{
    STAR_SKIP_UNLESS_SUPPORTED(KernelIsa::avx512_bf16);
    const auto rows = random_tensor<Eigen::bfloat16>(2, 1, 70);
    const Eigen::bfloat16* even = rows.data();
    const Eigen::bfloat16* odd = rows.data() + 70;
    for (const index d : {1, 7, 16, 17, 33, 64, 70}) {
        for (const bool last : {false, true}) {
            const index n = detail::round_up(d, 16);
            std::vector<detail::bf16_pair> out(static_cast<std::size_t>(n + 16), 0xDEADBEEFU);
            Bf16Product::pair_rows(even, last ? nullptr : odd, d, out.data(), n);
            for (index c = 0; c < n; ++c) {
                const auto pair = out[static_cast<std::size_t>(c)];
                const std::uint32_t want_even = c < d ? bits_of(even[c]) : 0U;
                const std::uint32_t want_odd = c < d && !last ? bits_of(odd[c]) : 0U;
                ASSERT_EQ(pair, want_even | want_odd << 16) << "d=" << d << " column " << c;
            }
            ASSERT_EQ(out[static_cast<std::size_t>(n)], 0xDEADBEEFU) << "wrote past the row";
        }
    }
}

TEST(Bf16Atom, QueryRowsRoundToNearestEven)
{
    STAR_SKIP_UNLESS_SUPPORTED(KernelIsa::avx512_bf16);
    const auto rows = random_tensor<float>(1, 1, 70);
    for (const index d : {1, 15, 16, 17, 70}) {
        std::vector<Eigen::bfloat16> out(static_cast<std::size_t>(d + 1), Eigen::bfloat16(-1.0f));
        Bf16Product::round_row(rows.data(), d, out.data());
        for (index c = 0; c < d; ++c)
            ASSERT_EQ(bits_of(out[static_cast<std::size_t>(c)]),
                      bits_of(Eigen::bfloat16(rows.data()[c])))
                << "d=" << d << " column " << c;
        ASSERT_EQ(float(out[static_cast<std::size_t>(d)]), -1.0f) << "wrote past the row";
    }
}

// Products of bf16 are exact in float, so the atom's product differs from the exact one
// only by float summation: `depth` terms, bounded by u * depth * sum|a b| (factor 2 of
// margin for the two products each instruction adds).
TEST(Bf16Atom, TileProductMatchesTheExactProductOfItsPairs)
{
    STAR_SKIP_UNLESS_SUPPORTED(KernelIsa::avx512_bf16);
    const index m = 13, n = 48, pairs = 37;
    const auto a = random_tensor<Eigen::bfloat16>(m, 1, 2 * pairs);
    const auto b = random_tensor<Eigen::bfloat16>(2 * pairs, 1, n);
    std::vector<detail::bf16_pair> a_pairs(static_cast<std::size_t>(m * pairs));
    std::vector<detail::bf16_pair> b_pairs(static_cast<std::size_t>(pairs * n));
    for (index r = 0; r < m; ++r)
        for (index t = 0; t < pairs; ++t)
            a_pairs[static_cast<std::size_t>(r * pairs + t)] =
                bits_of(a(r, 0, 2 * t)) | std::uint32_t{bits_of(a(r, 0, 2 * t + 1))} << 16;
    for (index t = 0; t < pairs; ++t)
        Bf16Product::pair_rows(b.data() + 2 * t * n, b.data() + (2 * t + 1) * n, n,
                               b_pairs.data() + t * n, n);
    std::vector<float> c(static_cast<std::size_t>(m * n));
    detail::avx512_bf16_path::tile_product<Bf16Product, false>(
        a_pairs.data(), detail::Strides{pairs, 1}, b_pairs.data(), n, c.data(), n, m, n, pairs);
    constexpr double u = std::numeric_limits<float>::epsilon() / 2;
    for (index r = 0; r < m; ++r)
        for (index col = 0; col < n; ++col) {
            double exact = 0.0, magnitude = 0.0;
            for (index k = 0; k < 2 * pairs; ++k) {
                const double term = double(float(a(r, 0, k))) * double(float(b(k, 0, col)));
                exact += term;
                magnitude += std::abs(term);
            }
            EXPECT_NEAR(c[static_cast<std::size_t>(r * n + col)], exact,
                        2 * u * double(pairs) * magnitude)
                << "row " << r << " column " << col;
        }
}
#endif

} // namespace
} // namespace star::test
