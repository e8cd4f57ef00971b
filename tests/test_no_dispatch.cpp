// STAR_NO_DISPATCH (detail/simd/target.hpp): the portable path compiled alone, for this
// unit's own -march, and taken by every call, whatever the CPU has.

#ifndef STAR_NO_DISPATCH // the sanitizer builds define it for this file already
#define STAR_NO_DISPATCH
#endif

#include <gtest/gtest.h>

#include "expect_global.hpp"

namespace star::test {
namespace {

TEST(NoDispatch, ThePortablePathIsTheOnlyOne)
{
    EXPECT_EQ(kernel_isa(), KernelIsa::portable);
    for (const KernelIsa isa : all_kernel_isas)
        EXPECT_EQ(cpu_supports(isa), isa == KernelIsa::portable) << name(isa);
    EXPECT_FALSE(bf16_products_outrun_float());
}

// Prefill (tiles) and a decode step (one query row), every K/V element type.
TEST(NoDispatch, AttentionMatchesTheReference)
{
    expect_global_matches_reference<float>(301, 301, 8, 2, 72, true);
    expect_global_matches_reference<Eigen::bfloat16>(130, 130, 4, 1, 64, true);
    expect_global_matches_reference<Eigen::half>(97, 97, 4, 4, 80, true);
    expect_global_matches_reference<Eigen::bfloat16>(1, 700, 8, 2, 128, false);
}

} // namespace
} // namespace star::test
