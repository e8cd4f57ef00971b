// Exact merge of partial attention states.

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "reference.hpp"

namespace star::test {
namespace {

// Attention restricted to the keys whose label is `part`: a partial state over one piece
// of an arbitrary (not necessarily contiguous) split of the keys.
struct KeysLabelled {
    const std::vector<int>* labels;
    int part;
    [[nodiscard]] Coverage coverage(index, index, index, index) const { return Coverage::partial; }
    [[nodiscard]] bool visible(index, index j) const { return (*labels)[j] == part; }
};

struct Split {
    Tensor3<float> q, k, v;
    std::vector<AttentionState> parts;
    ReferenceResult whole;
};

Split random_split(index q_tokens, index k_tokens, int pieces, bool contiguous)
{
    Split s{random_tensor<float>(q_tokens, 4, 32),
            random_tensor<float>(k_tokens, 2, 32),
            random_tensor<float>(k_tokens, 2, 32),
            {},
            {}};
    std::vector<int> labels(static_cast<std::size_t>(k_tokens));
    std::uniform_int_distribution<int> pick(0, pieces - 1);
    for (auto& l : labels)
        l = pick(rng());
    if (contiguous)
        std::sort(labels.begin(), labels.end());
    for (int p = 0; p < pieces; ++p)
        s.parts.push_back(attention(view(s.q), view(s.k), view(s.v), KeysLabelled{&labels, p}));
    s.whole = reference_attention(
        view(s.q), view(s.k), view(s.v), [](index, index) { return true; }, 1.0 / std::sqrt(32.0));
    return s;
}

void expect_equals_whole(const AttentionState& merged, const Split& s)
{
    const Deviation dev = deviation(merged, s.whole);
    const Tolerance tol = tolerance(s.whole, 32, s.k.dimension(0));
    EXPECT_TRUE(dev.all_finite);
    EXPECT_TRUE(dev.infinities_match);
    // Merging adds a few roundings per row on top of the kernel's own error.
    EXPECT_LE(dev.output, 2 * tol.output);
    EXPECT_LE(dev.lse, 2 * tol.lse);
}

TEST(Merge, MergeOfAnySplitEqualsWhole)
{
    for (const bool contiguous : {true, false})
        for (const int pieces : {1, 2, 3, 5, 16}) {
            const Split s = random_split(37, 301, pieces, contiguous);
            expect_equals_whole(merge(s.parts), s);
        }
}

TEST(Merge, PairwiseOnlineMergeEqualsWhole)
{
    const Split s = random_split(20, 250, 6, false);
    AttentionState acc(20, 4, 32);
    for (const auto& p : s.parts)
        merge_into(acc, p);
    expect_equals_whole(acc, s);
}

TEST(Merge, OrderDoesNotMatter)
{
    Split s = random_split(16, 200, 5, false);
    const AttentionState first = merge(s.parts);
    std::shuffle(s.parts.begin(), s.parts.end(), rng());
    const AttentionState second = merge(s.parts);
    for (index n = 0; n < first.output.size(); ++n)
        EXPECT_NEAR(first.output.data()[n], second.output.data()[n], 1e-6);
    for (index n = 0; n < first.lse.size(); ++n)
        EXPECT_NEAR(first.lse.data()[n], second.lse.data()[n], 1e-6);
}

TEST(Merge, EmptyPartialsAreHarmless)
{
    // 3 pieces over 40 keys leave most rows' pieces non-empty; the added empty states and
    // a piece whose label no key carries must weigh nothing.
    Split s = random_split(9, 40, 3, true);
    s.parts.emplace_back(9, 4, 32);
    s.parts.insert(s.parts.begin(), AttentionState(9, 4, 32));
    expect_equals_whole(merge(s.parts), s);

    AttentionState acc(9, 4, 32);
    for (const auto& p : s.parts)
        merge_into(acc, p);
    expect_equals_whole(acc, s);
}

TEST(Merge, AllEmptyStaysEmpty)
{
    const std::vector<AttentionState> parts(3, AttentionState(2, 2, 8));
    const AttentionState m = merge(parts);
    for (index n = 0; n < m.output.size(); ++n)
        EXPECT_EQ(m.output.data()[n], 0.0f);
    for (index n = 0; n < m.lse.size(); ++n)
        EXPECT_EQ(m.lse.data()[n], -std::numeric_limits<float>::infinity());
}

TEST(Merge, ExtremeLseDifferencesDoNotOverflow)
{
    AttentionState a(1, 1, 2), b(1, 1, 2);
    a.output.setValues({{{1.0f, 0.0f}}});
    b.output.setValues({{{0.0f, 1.0f}}});
    a.lse(0, 0) = 1000.0f;
    b.lse(0, 0) = 1000.0f - std::log(3.0f);
    const std::vector<AttentionState> parts{a, b};
    const AttentionState m = merge(parts);
    // Exact weights of the two float LSEs as stored (1000 - log 3 is rounded to float).
    const double gap = double(a.lse(0, 0)) - double(b.lse(0, 0));
    const double weight_a = 1.0 / (1.0 + std::exp(-gap));
    EXPECT_NEAR(m.output(0, 0, 0), weight_a, 1e-6);
    EXPECT_NEAR(m.output(0, 0, 1), 1.0 - weight_a, 1e-6);
    EXPECT_NEAR(m.lse(0, 0), double(a.lse(0, 0)) - std::log(weight_a), 1e-4); // ulp(1000) = 6e-5
}

} // namespace
} // namespace star::test
