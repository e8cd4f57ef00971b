// The host-side containers: the K/V cache, what a host holds of the context, and the
// reassembly of per-host outputs.

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "expect_error.hpp"
#include "reference.hpp"

namespace star::test {
namespace {

TEST(KVCacheErrors, AppendRejectsEmptyHeadsOrHeadDim)
{
    KVCache<float> cache;
    const Tensor3<float> no_heads(3, 0, 8), no_dim(3, 2, 0);
    expect_error([&] { cache.append(view(no_heads), view(no_heads)); }, "k has 0 heads");
    expect_error([&] { cache.append(view(no_dim), view(no_dim)); }, "k has head_dim 0");
    EXPECT_EQ(cache.kv_heads(), 0);
}

TEST(KVCache, AppendsInOrderAndCountsBytesInTheStoredType)
{
    const auto k1 = random_tensor<Eigen::half>(3, 2, 8), v1 = random_tensor<Eigen::half>(3, 2, 8);
    const auto k2 = random_tensor<Eigen::half>(5, 2, 8), v2 = random_tensor<Eigen::half>(5, 2, 8);
    KVCache<Eigen::half> cache;
    EXPECT_EQ(cache.bytes(), 0u);
    cache.append(view(k1), view(v1));
    cache.append(view(k2), view(v2));
    EXPECT_EQ(cache.tokens(), 8);
    EXPECT_EQ(cache.bytes(), 2u * 8 * 2 * 8 * sizeof(Eigen::half));
    const Tensor3<Eigen::half> keys = contiguous(cache.keys()), values = contiguous(cache.values());
    for (index c = 0; c < 8; ++c) {
        EXPECT_EQ(float(keys(0, 1, c)), float(k1(0, 1, c)));
        EXPECT_EQ(float(values(7, 0, c)), float(v2(4, 0, c)));
    }
}

TEST(KVCache, KeysAndValuesOfDifferentShapesAreRejected)
{
    KVCache<float> cache;
    const auto k = random_tensor<float>(3, 2, 8), v = random_tensor<float>(4, 2, 8);
    expect_error([&] { cache.append(view(k), view(v)); }, "k is [3, 2, 8] but v is [4, 2, 8]");
    EXPECT_EQ(cache.tokens(), 0);
}

TEST(KVCache, LaterAppendsMustKeepTheHeadLayout)
{
    KVCache<float> cache;
    const auto k = random_tensor<float>(3, 2, 8), v = random_tensor<float>(3, 2, 8);
    cache.append(view(k), view(v));
    const auto k4 = random_tensor<float>(1, 4, 8), v4 = random_tensor<float>(1, 4, 8);
    expect_error([&] { cache.append(view(k4), view(v4)); },
                 "holds 2 kv heads of head_dim 8, the new tokens have 4 of head_dim 8");
    EXPECT_EQ(cache.tokens(), 3);
}

// ---- Pages

static_assert(KVCache<float>::default_page_tokens % 128 == 0,
              "pages of the default size must not cut the kernel's 64-key blocks or 128-key tiles");

bool same_bytes(const Tensor3<float>& a, const Tensor3<float>& b)
{
    return a.dimensions() == b.dimensions() &&
           std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0;
}

// Everything one can observe of a cache, and where its rows lie.
struct Snapshot {
    index tokens, heads, head_dim;
    std::size_t bytes, capacity;
    Tensor3<float> keys, values;
    std::vector<const float*> rows;

    explicit Snapshot(const KVCache<float>& c)
        : tokens(c.tokens()), heads(c.kv_heads()), head_dim(c.head_dim()), bytes(c.bytes()),
          capacity(c.capacity_bytes()), keys(contiguous(c.keys())), values(contiguous(c.values()))
    {
        for (index t = 0; t < tokens; ++t) {
            rows.push_back(c.keys().row(t, 0));
            rows.push_back(c.values().row(t, 0));
        }
    }

    bool operator==(const Snapshot& o) const
    {
        return tokens == o.tokens && heads == o.heads && head_dim == o.head_dim &&
               bytes == o.bytes && capacity == o.capacity && same_bytes(keys, o.keys) &&
               same_bytes(values, o.values) && rows == o.rows;
    }
};

// Appends of 1, P - 1, P and 3P + 5 tokens, twice (the second round starts mid-page): after
// each, the cache holds what was appended, every row appended before is where it was (no
// append moves or copies the cache), and the memory held is the tokens' plus at most one
// partly filled page of K and one of V.
TEST(PagedKVCache, AppendingNeverMovesCachedRowsAndHoldsAtMostOnePartPage)
{
    constexpr index heads = 2, d = 8;
    for (const index page : {index{1}, index{7}, index{256}}) {
        SCOPED_TRACE("page_tokens " + std::to_string(page));
        KVCache<float> cache(page);
        EXPECT_EQ(cache.page_tokens(), page);
        EXPECT_EQ(cache.capacity_bytes(), 0u);
        Tensor3<float> all_k(0, heads, d), all_v(0, heads, d);
        std::vector<const float*> k_rows, v_rows;
        const std::size_t page_bytes = sizeof(float) * static_cast<std::size_t>(page * heads * d);
        for (int round = 0; round < 2; ++round)
            for (const index n : {index{1}, page - 1, page, 3 * page + 5}) {
                if (n == 0)
                    continue;
                const auto k = random_tensor<float>(n, heads, d),
                           v = random_tensor<float>(n, heads, d);
                cache.append(view(k), view(v));
                all_k = concat_tokens(all_k, k);
                all_v = concat_tokens(all_v, v);
                SCOPED_TRACE(std::to_string(cache.tokens()) + " tokens");
                ASSERT_EQ(cache.tokens(), all_k.dimension(0));
                EXPECT_TRUE(same_bytes(contiguous(cache.keys()), all_k));
                EXPECT_TRUE(same_bytes(contiguous(cache.values()), all_v));
                for (std::size_t t = 0; t < k_rows.size(); ++t) {
                    EXPECT_EQ(cache.keys().row(static_cast<index>(t), 0), k_rows[t]);
                    EXPECT_EQ(cache.values().row(static_cast<index>(t), 0), v_rows[t]);
                }
                for (auto t = static_cast<index>(k_rows.size()); t < cache.tokens(); ++t) {
                    k_rows.push_back(cache.keys().row(t, 0));
                    v_rows.push_back(cache.values().row(t, 0));
                }
                const auto pages = static_cast<std::size_t>((cache.tokens() + page - 1) / page);
                EXPECT_EQ(cache.capacity_bytes(), 2 * pages * page_bytes);
                EXPECT_LT(cache.capacity_bytes(), cache.bytes() + 2 * page_bytes);
                EXPECT_EQ(cache.bytes(),
                          2 * sizeof(float) * static_cast<std::size_t>(cache.tokens() * heads * d));
            }
    }
}

// Pages start on a cache line (and V's too when a page of K is whole lines), so the
// kernel's vector loads never straddle two lines: a thread streams a cache a fifth slower
// when they do.
TEST(PagedKVCache, PagesStartOnACacheLine)
{
    const auto aligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 64 == 0; };
    KVCache<Eigen::bfloat16> cache(16);
    const auto k = random_tensor<Eigen::bfloat16>(100, 2, 64);
    cache.append(view(k), view(k));
    for (index t = 0; t < cache.tokens(); t += cache.page_tokens()) {
        EXPECT_TRUE(aligned(cache.keys().row(t, 0))) << "token " << t;
        EXPECT_TRUE(aligned(cache.values().row(t, 0))) << "token " << t;
    }
}

TEST(PagedKVCache, DefaultPagesAre256Tokens)
{
    const KVCache<float> cache;
    EXPECT_EQ(cache.page_tokens(), 256);
    EXPECT_EQ(cache.page_tokens(), KVCache<float>::default_page_tokens);
}

TEST(KVCacheErrors, PageSizeMustBePositive)
{
    expect_error([] { (void)KVCache<float>(0); }, "KVCache: page_tokens must be positive, got 0");
    expect_error([] { (void)KVCache<float>(-3); }, "page_tokens must be positive, got -3");
}

// A rejected append changes nothing: not the tokens, the shape, the memory, nor where the
// rows lie. The rejected pieces would have crossed pages.
TEST(PagedKVCache, ARejectedAppendLeavesTheCacheAsItWas)
{
    KVCache<float> cache(7);
    const auto k = random_tensor<float>(10, 2, 8), v = random_tensor<float>(10, 2, 8);
    cache.append(view(k), view(v));
    const Snapshot before(cache);

    const auto k3 = random_tensor<float>(20, 3, 8), v3 = random_tensor<float>(20, 3, 8);
    expect_error([&] { cache.append(view(k3), view(v3)); },
                 "KVCache::append: the cache holds 2 kv heads of head_dim 8, the new tokens "
                 "have 3 of head_dim 8");
    EXPECT_TRUE(Snapshot(cache) == before);

    const auto k20 = random_tensor<float>(20, 2, 8), v19 = random_tensor<float>(19, 2, 8);
    expect_error([&] { cache.append(view(k20), view(v19)); },
                 "KVCache::append: k is [20, 2, 8] but v is [19, 2, 8]");
    EXPECT_TRUE(Snapshot(cache) == before);

    auto bad_v = random_tensor<float>(20, 2, 8);
    bad_v(13, 1, 2) = std::numeric_limits<float>::quiet_NaN();
    expect_error([&] { cache.append(view(k20), view(bad_v)); },
                 "KVCache::append: v holds a non-finite value (nan) at token 23, head 1, "
                 "element 2");
    EXPECT_TRUE(Snapshot(cache) == before);

    // All or none: the first pair is fine, the second is not.
    const ConstView3<float> pairs[4] = {view(k20), view(k20), view(k20), view(bad_v)};
    expect_error([&] { cache.append(std::span<const ConstView3<float>>(pairs)); },
                 "v holds a non-finite value (nan) at token 43");
    EXPECT_TRUE(Snapshot(cache) == before);
    const ConstView3<float> odd[3] = {view(k20), view(k20), view(k20)};
    expect_error([&] { cache.append(std::span<const ConstView3<float>>(odd)); },
                 "KVCache::append: keys and values come in pairs, got 3 views");
    EXPECT_TRUE(Snapshot(cache) == before);

    // It still appends after.
    cache.append(view(k20), view(k20));
    EXPECT_EQ(cache.tokens(), 30);
}

// reserve_for makes room (whole pages) without changing the content; the append that
// follows then allocates nothing and moves nothing.
TEST(PagedKVCache, ReserveThenAppendAllocatesOnce)
{
    KVCache<float> cache(7);
    const auto k = random_tensor<float>(10, 2, 8);
    cache.append(view(k), view(k));
    const auto more = random_tensor<float>(30, 2, 8);
    const ConstView3<float> pair[2] = {view(more), view(more)};
    cache.reserve_for(pair);
    EXPECT_EQ(cache.tokens(), 10);
    const std::size_t page_bytes = 7 * 2 * 8 * sizeof(float);
    EXPECT_EQ(cache.capacity_bytes(), 2 * 6 * page_bytes); // 40 tokens
    const float* first = cache.keys().row(0, 0);
    cache.append(pair);
    EXPECT_EQ(cache.capacity_bytes(), 2 * 6 * page_bytes);
    EXPECT_EQ(cache.keys().row(0, 0), first);
    EXPECT_TRUE(same_bytes(contiguous(cache.keys()), concat_tokens(k, more)));
}

TEST(PagedKVCache, CopiesAreDeepAndMovesTakeThePages)
{
    KVCache<float> cache(7);
    const auto k = random_tensor<float>(17, 2, 8), v = random_tensor<float>(17, 2, 8);
    cache.append(view(k), view(v));
    KVCache<float> copy = cache;
    EXPECT_EQ(copy.page_tokens(), 7);
    EXPECT_TRUE(same_bytes(contiguous(copy.keys()), k));
    EXPECT_TRUE(same_bytes(contiguous(copy.values()), v));
    EXPECT_NE(copy.keys().row(0, 0), cache.keys().row(0, 0));
    const auto one = random_tensor<float>(1, 2, 8);
    copy.append(view(one), view(one));
    EXPECT_EQ(cache.tokens(), 17);

    const float* rows = cache.keys().row(0, 0);
    KVCache<float> moved = std::move(cache);
    EXPECT_EQ(moved.keys().row(0, 0), rows);
    EXPECT_EQ(moved.tokens(), 17);
    EXPECT_EQ(cache.tokens(), 0); // NOLINT(bugprone-use-after-move): moved-from is empty
    EXPECT_EQ(cache.capacity_bytes(), 0u);
    EXPECT_EQ(cache.page_tokens(), 7);
    cache.append(view(one), view(one)); // and usable
    EXPECT_EQ(cache.tokens(), 1);

    copy = moved;
    EXPECT_EQ(copy.tokens(), 17);
    EXPECT_TRUE(same_bytes(contiguous(copy.keys()), k));
    KVCache<float> empty;
    copy = empty;
    EXPECT_EQ(copy.tokens(), 0);
    EXPECT_EQ(copy.keys().tokens(), 0);
}

TEST(HostContext, SlicesComeFromThePieceThatHoldsThem)
{
    const auto q = random_tensor<float>(10, 2, 4), k = random_tensor<float>(10, 1, 4),
               v = random_tensor<float>(10, 1, 4);
    HostContext<float> context;
    context.add(100, view(q), view(k), view(v));
    const ContextSlice<float> s = context.slice({103, 106});
    EXPECT_EQ(s.q.dimension(0), 3);
    EXPECT_EQ(s.k.data(), k.data() + 3 * 1 * 4);
    expect_error([&] { (void)context.slice({95, 101}); }, "does not hold context tokens [95, 101)");
}

TEST(HostContext, PiecesWithMismatchedTokenCountsAreRejected)
{
    const auto q = random_tensor<float>(10, 2, 4), k = random_tensor<float>(9, 1, 4),
               v = random_tensor<float>(10, 1, 4);
    HostContext<float> context;
    expect_error([&] { context.add(0, view(q), view(k), view(v)); },
                 "same token count, got 10, 9 and 10");
    const auto k10 = random_tensor<float>(10, 1, 4);
    expect_error([&] { context.add(-1, view(q), view(k10), view(v)); },
                 "first token -1 is negative");
}

TEST(HostContext, PiecesOfAnotherShapeAreRejected)
{
    HostContext<float> context;
    EXPECT_TRUE(context.empty());
    EXPECT_EQ(context.kv_heads(), 0);
    const auto q = random_tensor<float>(4, 2, 4), k = random_tensor<float>(4, 1, 4),
               v = random_tensor<float>(4, 1, 4);
    const auto k_wide = random_tensor<float>(4, 1, 6), v_two = random_tensor<float>(4, 2, 4);
    expect_error([&] { context.add(0, view(q), view(k_wide), view(v)); },
                 "q, k and v disagree: q has 2 heads of head_dim 4, k 1 of 6, v 1 of 4");
    expect_error([&] { context.add(0, view(q), view(k), view(v_two)); },
                 "q, k and v disagree: q has 2 heads of head_dim 4, k 1 of 4, v 2 of 4");
    context.add(0, view(q), view(k), view(v));
    EXPECT_EQ(context.q_heads(), 2);
    EXPECT_EQ(context.kv_heads(), 1);
    EXPECT_EQ(context.head_dim(), 4);
    // A second piece of the same layer must have the same heads: a received anchor is laid
    // out like the receiver's own pieces.
    const auto q4 = random_tensor<float>(4, 4, 4), k2 = random_tensor<float>(4, 2, 4);
    expect_error([&] { context.add(8, view(q4), view(k2), view(v_two)); },
                 "a piece of 4 query heads, 2 kv heads of head_dim 4 joins pieces of 2, 1 of 4");
    context.add(8, view(q), view(k), view(v));
}

PerHost<std::vector<RangeOutput>> outputs_for(std::vector<std::vector<TokenRange>> ranges)
{
    PerHost<std::vector<RangeOutput>> outputs(0, static_cast<int>(ranges.size()));
    for (int r = 0; r < outputs.count(); ++r)
        for (const TokenRange& t : ranges[static_cast<std::size_t>(r)])
            outputs[r].push_back({t, AttentionState(t.size(), 2, 4)});
    return outputs;
}

TEST(Assemble, PutsRangesBackInContextOrder)
{
    auto outputs = outputs_for({{{4, 6}}, {{0, 4}, {6, 7}}});
    outputs[1][0].state.output.setConstant(1.0f);
    const AttentionState whole = assemble(outputs, {7, 2, 4});
    EXPECT_EQ(whole.output(3, 1, 3), 1.0f);
    EXPECT_EQ(whole.output(4, 0, 0), 0.0f);
}

TEST(Assemble, RejectsTokensReturnedTwiceOrNotAtAll)
{
    expect_error(
        [] {
            (void)assemble(outputs_for({{{0, 4}}, {{3, 7}}}), {7, 2, 4});
        },
        "token 3 is returned twice");
    expect_error(
        [] {
            (void)assemble(outputs_for({{{0, 4}}, {{5, 7}}}), {7, 2, 4});
        },
        "returned by no host");
    expect_error(
        [] {
            (void)assemble(outputs_for({{{0, 9}}}), {7, 2, 4});
        },
        "do not fit the context");
}

TEST(StateMessages, RoundTripAndRejectAWrongSize)
{
    AttentionState s(3, 2, 4);
    s.output.setConstant(0.5f);
    s.lse.setConstant(1.5f);
    const std::vector<float> message = detail::pack(s);
    const AttentionState back = detail::unpack(message, s.shape());
    EXPECT_EQ(back.output(2, 1, 3), 0.5f);
    EXPECT_EQ(back.lse(2, 1), 1.5f);
    expect_error([&] { (void)detail::unpack(message, {4, 2, 4}); }, "the message has 30");
}

} // namespace
} // namespace star::test
