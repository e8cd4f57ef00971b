// The attention variants that are masks: a sliding window (Mistral's and Gemma's local
// layers) and documents packed into one sequence. Each mask's coverage must be exact (the
// kernel skips what it calls `none` and tests nothing inside what it calls `full`), and the
// kernel under it must match the double-precision reference on every path, at sizes that
// put the mask's edges on the tiles' edges.

#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

#include "isa_paths.hpp"
#include "reference.hpp"

namespace star::test {
namespace {

// The coverage a rectangle has, found pair by pair.
template <class M>
Coverage brute_force_coverage(const M& mask, index q_begin, index q_end, index k_begin, index k_end)
{
    bool any = false, all = true;
    for (index i = q_begin; i < q_end; ++i)
        for (index j = k_begin; j < k_end; ++j) {
            const bool seen = mask.visible(i, j);
            any = any || seen;
            all = all && seen;
        }
    return !any ? Coverage::none : all ? Coverage::full : Coverage::partial;
}

// Every rectangle of a small grid: these masks' coverage is exact, not only safe.
template <class M>
void expect_exact_coverage(const M& mask, index extent, const std::string& what)
{
    for (index qb = 0; qb < extent; ++qb)
        for (index qe = qb + 1; qe <= extent; ++qe)
            for (index kb = 0; kb < extent; ++kb)
                for (index ke = kb + 1; ke <= extent; ++ke)
                    ASSERT_EQ(mask.coverage(qb, qe, kb, ke),
                              brute_force_coverage(mask, qb, qe, kb, ke))
                        << what << ": queries [" << qb << ", " << qe << "), keys [" << kb << ", "
                        << ke << ")";
}

TEST(CausalMask, CoverageIsExact)
{
    for (const index query_offset : {0, 3})
        for (const index key_offset : {0, 2})
            expect_exact_coverage(CausalMask{query_offset, key_offset}, 12,
                                  "offsets " + std::to_string(query_offset) + ", " +
                                      std::to_string(key_offset));
}

TEST(SlidingWindowMask, CoverageIsExact)
{
    for (const index window : {-1, 0, 1, 2, 5, 13, 100})
        for (const index offset : {0, 3}) {
            const SlidingWindowMask mask{window, offset, 0};
            expect_exact_coverage(mask, 14,
                                  "window " + std::to_string(window) + ", query offset " +
                                      std::to_string(offset));
        }
}

TEST(SlidingWindowMask, SeesItselfAndTheWindowBefore)
{
    const SlidingWindowMask mask{3};
    EXPECT_TRUE(mask.visible(10, 10));
    EXPECT_TRUE(mask.visible(10, 8));
    EXPECT_FALSE(mask.visible(10, 7));
    EXPECT_FALSE(mask.visible(10, 11));
    // A window wider than every distance is causal attention, without overflow.
    const SlidingWindowMask whole{std::numeric_limits<index>::max()};
    EXPECT_EQ(whole.coverage(0, 10, 0, 5), CausalMask{}.coverage(0, 10, 0, 5));
    EXPECT_TRUE(whole.visible(1000000, 0));
}

TEST(DocumentMask, CoverageIsExact)
{
    const std::vector<index> starts{0, 1, 4, 5, 11};
    for (const index offset : {0, 2}) {
        const DocumentMask mask{starts, offset, 0};
        expect_exact_coverage(mask, 14, "query offset " + std::to_string(offset));
    }
}

TEST(DocumentMask, SeesItsOwnDocumentUpToItself)
{
    const std::vector<index> starts{0, 4, 9};
    const DocumentMask mask{starts};
    EXPECT_TRUE(mask.visible(5, 4));
    EXPECT_FALSE(mask.visible(5, 3)); // the previous document
    EXPECT_FALSE(mask.visible(5, 6)); // its own document, but later
    EXPECT_TRUE(mask.visible(12, 9));
    EXPECT_EQ(mask.start_of(8), 4);
}

struct MaskCase {
    index q_tokens, k_tokens, q_heads, kv_heads, head_dim;
};

template <class KV, class M>
void expect_kernel_matches_reference(const MaskCase& c, const M& mask, const std::string& what)
{
    const auto q = random_tensor<float>(c.q_tokens, c.q_heads, c.head_dim);
    const auto k = random_tensor<KV>(c.k_tokens, c.kv_heads, c.head_dim);
    const auto v = random_tensor<KV>(c.k_tokens, c.kv_heads, c.head_dim);
    PathReferences<KV> references([&](Products products) {
        return reference_attention(
            view(q), view(k), view(v), [&](index i, index j) { return mask.visible(i, j); },
            1.0 / std::sqrt(double(c.head_dim)), {}, products);
    });
    for (const KernelIsa isa : supported_isas()) {
        const ReferenceResult& want = references.on(isa);
        const Tolerance tol = tolerance(want, c.head_dim, c.k_tokens);
        const ForcedIsa forced(isa);
        const AttentionState got = attention(view(q), view(k), view(v), mask);
        const Deviation dev = deviation(got, want);
        const std::string where = what + ", path " + std::string(name(isa));
        EXPECT_TRUE(dev.all_finite) << where;
        EXPECT_TRUE(dev.infinities_match) << where;
        EXPECT_LE(dev.output, tol.output) << where;
        EXPECT_LE(dev.lse, tol.lse) << where;
    }
}

// Windows of 1 (each query sees itself), across tile edges (127..129), and wider than the
// sequence; prefill (query = keys) and a decode-sized query after a cache (the decode
// kernel), grouped-query heads.
TEST(SlidingWindowMask, KernelMatchesReference)
{
    for (const index window : {1, 17, 127, 128, 129, 400}) {
        const std::string what = "window " + std::to_string(window);
        expect_kernel_matches_reference<float>({300, 300, 4, 2, 40}, SlidingWindowMask{window},
                                               what + ", prefill");
        expect_kernel_matches_reference<Eigen::bfloat16>(
            {300, 300, 4, 1, 64}, SlidingWindowMask{window}, what + ", prefill, bf16");
        // Two query tokens after 600 cached keys: positions 600 and 601.
        expect_kernel_matches_reference<float>(
            {2, 602, 8, 2, 72}, SlidingWindowMask{window, 600, 0}, what + ", decode");
    }
}

// Documents that start on, just before and just after tile edges, one of a single token.
TEST(DocumentMask, KernelMatchesReference)
{
    const std::vector<index> starts{0, 5, 127, 128, 129, 200, 201, 255, 257};
    expect_kernel_matches_reference<float>({300, 300, 4, 2, 40}, DocumentMask{starts}, "prefill");
    expect_kernel_matches_reference<Eigen::half>({300, 300, 6, 2, 24}, DocumentMask{starts},
                                                 "prefill, half");
    expect_kernel_matches_reference<float>({3, 300, 8, 2, 72}, DocumentMask{starts, 297, 0},
                                           "decode");
}

} // namespace
} // namespace star::test
