// The kernel's paths (star/kernel/isa.hpp): how one is chosen, and the pieces each path
// has of its own (exp, the bf16/half widening) against exact values. The kernel as a
// whole is tested on every path in test_kernel.cpp.

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
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
    EXPECT_NE(cap.error.find("portable, avx2 or avx512"), std::string::npos) << cap.error;
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
            EXPECT_FALSE(cpu_supports(isa)) << name(isa) << " is supported and allowed";
        }
    std::cout << "kernel path: " << name(chosen) << "\n";
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
    WidenBf16 widen_bf16;
    WidenHalf widen_half;
};

PathPieces pieces(KernelIsa isa)
{
    using namespace detail;
    switch (isa) {
#if STAR_X86_DISPATCH
    case KernelIsa::avx512:
        return {&avx512_path::exp_array<avx512_path::Simd>,
                &avx512_path::widen_rows<avx512_path::Simd, Eigen::bfloat16>,
                &avx512_path::widen_rows<avx512_path::Simd, Eigen::half>};
    case KernelIsa::avx2:
        return {&avx2_path::exp_array<avx2_path::Simd>,
                &avx2_path::widen_rows<avx2_path::Simd, Eigen::bfloat16>,
                &avx2_path::widen_rows<avx2_path::Simd, Eigen::half>};
#endif
    default:
        return {&portable_path::exp_array<portable_path::Simd>,
                &portable_path::widen_rows<portable_path::Simd, Eigen::bfloat16>,
                &portable_path::widen_rows<portable_path::Simd, Eigen::half>};
    }
}

class EveryPath : public ::testing::TestWithParam<KernelIsa> {};

// The softmax takes exp of (score - running max) <= 0 and of (old max - new max) <= 0, so
// that range is swept densely; the rest of the float range is checked for its limits.
TEST_P(EveryPath, ExpIsWithinTwoUlpOfTheExactValue)
{
    STAR_SKIP_UNLESS_SUPPORTED(GetParam());
    std::vector<float> x;
    for (float t = -87.3f; t <= 88.0f; t += 0.0137f)
        x.push_back(t);
    for (int i = 0; i < 2000; ++i)
        x.push_back(-static_cast<float>(i) * 1e-4f); // near 0, where the sum is made
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

} // namespace
} // namespace star::test
