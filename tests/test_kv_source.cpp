// K/V sources (star/kernel/kv_source.hpp): paged caches and strided views attended in
// place, against the double-precision reference and against the same keys and values laid
// out contiguously, on every path of the kernel this CPU has.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "expect_error.hpp"
#include "isa_paths.hpp"
#include "reference.hpp"

namespace star::test {
namespace {

/// The tokens of `t` copied into a pool of pages of `page_tokens`, `[page, token, head, d]`,
/// through a shuffled page table that uses each pool page at most once. Every element the
/// sequence does not own (spare pages, the tail of the last page) is NaN, so a read past
/// the sequence shows in the output.
template <class KV>
struct PagedCopy {
    std::vector<KV> pool;
    std::vector<std::int32_t> table;
    index pool_pages = 0;
    index page_tokens = 0;
    index tokens = 0, heads = 0, d = 0;

    PagedCopy(const Tensor3<KV>& t, index page)
        : page_tokens(page), tokens(t.dimension(0)), heads(t.dimension(1)), d(t.dimension(2))
    {
        const index pages = (tokens + page - 1) / page;
        pool_pages = pages + 3;
        const index row = heads * d;
        pool.assign(static_cast<std::size_t>(pool_pages * page * row),
                    KV(std::numeric_limits<float>::quiet_NaN()));
        std::vector<std::int32_t> order(static_cast<std::size_t>(pool_pages));
        std::iota(order.begin(), order.end(), 0);
        std::shuffle(order.begin(), order.end(), rng());
        table.assign(order.begin(), order.begin() + pages);
        for (index tok = 0; tok < tokens; ++tok)
            std::copy_n(t.data() + tok * row, row,
                        pool.data() +
                            (table[static_cast<std::size_t>(tok / page)] * page + tok % page) * row);
    }

    [[nodiscard]] KVPages<KV> source() const
    {
        return paged_kv<KV>(table, pool.data(), pool_pages, page_tokens, tokens, heads, d);
    }
};

bool everything(index, index) { return true; }

struct Shape2 {
    const char* name;
    index q_tokens;
    index k_tokens;
};

// Prefill (tile kernel, 4 query tiles of 64 tokens), a short query (tile kernel, one query
// tile: split-KV, 2 slices of 1100 keys) and a decode step (decode kernel, 4 slices). Sizes
// are the least that reach each of these, as every case runs under the sanitizers.
constexpr Shape2 kShapes[] = {{"prefill", 200, 700}, {"short", 20, 1100}, {"decode", 1, 1100}};
constexpr index kPageSizes[] = {1, 7, 16, 128, 300};

template <class KV>
void expect_paged_matches_reference(const Shape2& s)
{
    SCOPED_TRACE(s.name);
    constexpr index q_heads = 8, kv_heads = 2, d = 64; // GQA, 4 query heads per KV head
    const auto q = random_tensor<float>(s.q_tokens, q_heads, d);
    const auto k = random_tensor<KV>(s.k_tokens, kv_heads, d);
    const auto v = random_tensor<KV>(s.k_tokens, kv_heads, d);
    const index offset = s.k_tokens - s.q_tokens; // the queries are the cache's last tokens
    const CausalMask mask{offset, 0};
    const double scale = 1.0 / std::sqrt(double(d));
    PathReferences<KV> references([&](Products products) {
        return reference_attention(
            view(q), view(k), view(v), [&](index i, index j) { return j <= i + offset; }, scale, {},
            products);
    });

    for (const index page : kPageSizes) {
        SCOPED_TRACE("page_tokens " + std::to_string(page));
        const PagedCopy<KV> pk(k, page), pv(v, page);
        for (const KernelIsa isa : supported_isas()) {
            SCOPED_TRACE("path " + std::string(name(isa)));
            const ReferenceResult& want = references.on(isa);
            const Tolerance tol = tolerance(want, d, s.k_tokens);
            const ForcedIsa forced(isa);
            const AttentionState got = attention(view(q), pk.source(), pv.source(), mask);
            const Deviation dev = deviation(got, want);
            EXPECT_TRUE(dev.all_finite) << "a read outside the sequence's rows";
            EXPECT_TRUE(dev.infinities_match);
            EXPECT_LE(dev.output, tol.output);
            EXPECT_LE(dev.lse, tol.lse);
        }
    }
}

TEST(PagedKV, FloatMatchesReferenceForEveryPageSize)
{
    for (const Shape2& s : kShapes)
        expect_paged_matches_reference<float>(s);
}

TEST(PagedKV, Bf16MatchesReferenceForEveryPageSize)
{
    for (const Shape2& s : kShapes)
        expect_paged_matches_reference<Eigen::bfloat16>(s);
}

// A single page holding the whole sequence is read as the contiguous tensor is: one run,
// the same arithmetic in the same order.
TEST(PagedKV, OnePageIsBitIdenticalToContiguous)
{
    const auto q = random_tensor<float>(40, 8, 64);
    const auto k = random_tensor<float>(500, 2, 64);
    const auto v = random_tensor<float>(500, 2, 64);
    const PagedCopy<float> pk(k, 512), pv(v, 512);
    for (const KernelIsa isa : supported_isas()) {
        SCOPED_TRACE("path " + std::string(name(isa)));
        const ForcedIsa forced(isa);
        const CausalMask mask{460, 0};
        EXPECT_TRUE(same_bits(attention(view(q), pk.source(), pv.source(), mask),
                              attention(view(q), view(k), view(v), mask)));
    }
}

// The decode kernel reads a block of 64 keys across page ends in pieces, one per page, and
// adds each piece's values to the same accumulators key by key: pages of any size give the
// bits of the contiguous cache. Head dims 64 (values read in place) and 40 (values widened
// into a buffer first), a single query and 3 (12 rows per KV head), float and bf16.
template <class KV>
void expect_paged_decode_bit_identical()
{
    for (const index d : {index{64}, index{40}}) {
        const auto k = random_tensor<KV>(1100, 2, d);
        const auto v = random_tensor<KV>(1100, 2, d);
        for (const index q_tokens : {index{1}, index{3}}) {
            const auto q = random_tensor<float>(q_tokens, 8, d);
            const CausalMask mask{1100 - q_tokens, 0};
            for (const index page : kPageSizes) {
                SCOPED_TRACE("d " + std::to_string(d) + ", " + std::to_string(q_tokens) +
                             " queries, pages of " + std::to_string(page));
                const PagedCopy<KV> pk(k, page), pv(v, page);
                for (const KernelIsa isa : supported_isas()) {
                    SCOPED_TRACE("path " + std::string(name(isa)));
                    const ForcedIsa forced(isa);
                    EXPECT_TRUE(same_bits(attention(view(q), pk.source(), pv.source(), mask),
                                          attention(view(q), view(k), view(v), mask)));
                }
            }
        }
    }
}

TEST(PagedKV, FloatDecodeIsBitIdenticalToContiguousForEveryPageSize)
{
    expect_paged_decode_bit_identical<float>();
}

TEST(PagedKV, Bf16DecodeIsBitIdenticalToContiguousForEveryPageSize)
{
    expect_paged_decode_bit_identical<Eigen::bfloat16>();
}

// Pages laid out head-major, `[page, head, token, d]` (FlashInfer's HND), through the
// general constructor.
TEST(PagedKV, HeadMajorPagesMatchReference)
{
    constexpr index tokens = 700, heads = 2, d = 32, page = 16, q_heads = 4;
    const index pages = (tokens + page - 1) / page;
    const auto q = random_tensor<float>(1, q_heads, d);
    const auto k = random_tensor<float>(tokens, heads, d);
    const auto v = random_tensor<float>(tokens, heads, d);
    std::vector<std::int32_t> table(static_cast<std::size_t>(pages));
    std::iota(table.rbegin(), table.rend(), 0); // last page first in the pool
    const auto head_major = [&](const Tensor3<float>& t) {
        std::vector<float> pool(static_cast<std::size_t>(pages * heads * page * d), 0.0f);
        for (index tok = 0; tok < tokens; ++tok)
            for (index h = 0; h < heads; ++h)
                std::copy_n(t.data() + (tok * heads + h) * d, d,
                            pool.data() +
                                ((table[static_cast<std::size_t>(tok / page)] * heads + h) * page +
                                 tok % page) *
                                    d);
        return pool;
    };
    const auto k_pool = head_major(k), v_pool = head_major(v);
    const KVLayout layout{tokens, heads, d, page, d, page * d, heads * page * d};
    const KVPages<float> ks(k_pool.data(), table, pages, layout);
    const KVPages<float> vs(v_pool.data(), table, pages, layout);
    const ReferenceResult want =
        reference_attention(view(q), view(k), view(v), everything, 1.0 / std::sqrt(double(d)));
    const Tolerance tol = tolerance(want, d, tokens);
    for (const KernelIsa isa : supported_isas()) {
        SCOPED_TRACE("path " + std::string(name(isa)));
        const ForcedIsa forced(isa);
        const Deviation dev = deviation(attention(view(q), ks, vs), want);
        EXPECT_TRUE(dev.all_finite);
        EXPECT_LE(dev.output, tol.output);
        EXPECT_LE(dev.lse, tol.lse);
    }
}

/// K and V sliced out of one fused QKV projection `[tokens, (Hq + 2 Hkv) * d]`, beside
/// copies of them laid out contiguously.
template <class KV>
struct FusedQkv {
    index tokens, q_heads, kv_heads, d;
    std::vector<KV> fused;
    Tensor3<float> q;
    Tensor3<KV> k, v;

    FusedQkv(index t, index hq, index hkv, index dim)
        : tokens(t), q_heads(hq), kv_heads(hkv), d(dim), q(random_tensor<float>(t, hq, dim)),
          k(t, hkv, dim), v(t, hkv, dim)
    {
        const Tensor3<KV> all = random_tensor<KV>(t, hq + 2 * hkv, dim);
        fused.assign(all.data(), all.data() + all.size());
        for (index tok = 0; tok < t; ++tok)
            for (index h = 0; h < hkv; ++h)
                for (index c = 0; c < d; ++c) {
                    k(tok, h, c) = all(tok, hq + h, c);
                    v(tok, h, c) = all(tok, hq + hkv + h, c);
                }
    }
    [[nodiscard]] index stride() const { return (q_heads + 2 * kv_heads) * d; }
    [[nodiscard]] KVPages<KV> k_source(index count) const
    {
        return strided_kv(fused.data() + q_heads * d, count, kv_heads, d, stride(), d);
    }
    [[nodiscard]] KVPages<KV> v_source(index count) const
    {
        return strided_kv(fused.data() + (q_heads + kv_heads) * d, count, kv_heads, d, stride(), d);
    }
};

// The strongest check of the strided path: a strided view is one run, so the kernel does
// the same arithmetic in the same order as on the contiguous copy.
template <class KV>
void expect_strided_bit_identical()
{
    // 1100 keys: 9 key tiles, and enough for the short query and the decode step to be split
    // over the keys (2 and 4 slices), at a fifth of the prefill that 2500 cost (65 s under
    // ASan).
    const FusedQkv<KV> in(1100, 8, 2, 64);
    for (const KernelIsa isa : supported_isas()) {
        SCOPED_TRACE("path " + std::string(name(isa)));
        const ForcedIsa forced(isa);
        // Prefill of every token (causal), a short query and a decode step over the cache.
        for (const index q_tokens : {index{1100}, index{20}, index{1}}) {
            SCOPED_TRACE("q_tokens " + std::to_string(q_tokens));
            const ConstView3<float> q = token_slice(view(in.q), in.tokens - q_tokens, q_tokens);
            const CausalMask mask{in.tokens - q_tokens, 0};
            const AttentionState strided =
                attention(q, in.k_source(in.tokens), in.v_source(in.tokens), mask);
            const AttentionState contiguous = attention(q, view(in.k), view(in.v), mask);
            EXPECT_TRUE(same_bits(strided, contiguous));
        }
    }
}

TEST(StridedKV, FloatFusedQkvIsBitIdenticalToContiguous) { expect_strided_bit_identical<float>(); }

TEST(StridedKV, Bf16FusedQkvIsBitIdenticalToContiguous)
{
    expect_strided_bit_identical<Eigen::bfloat16>();
}

TEST(StridedKV, FusedQkvMatchesReference)
{
    const FusedQkv<float> in(300, 4, 2, 40); // head_dim not a whole number of vectors
    const ReferenceResult want = reference_attention(
        view(in.q), view(in.k), view(in.v), [](index i, index j) { return j <= i; },
        1.0 / std::sqrt(40.0));
    const Tolerance tol = tolerance(want, 40, 300);
    for (const KernelIsa isa : supported_isas()) {
        SCOPED_TRACE("path " + std::string(name(isa)));
        const ForcedIsa forced(isa);
        const Deviation dev =
            deviation(attention(view(in.q), in.k_source(300), in.v_source(300), CausalMask{}), want);
        EXPECT_LE(dev.output, tol.output);
        EXPECT_LE(dev.lse, tol.lse);
    }
}

// A batch mixes paged and contiguous sequences; each result is what `attention` gives it
// alone, bit for bit.
TEST(PagedKV, BatchOfPagedAndContiguousSequencesEqualsEachAlone)
{
    const auto q1 = random_tensor<float>(1, 8, 64);
    const auto k1 = random_tensor<Eigen::bfloat16>(2000, 2, 64);
    const auto v1 = random_tensor<Eigen::bfloat16>(2000, 2, 64);
    const auto q2 = random_tensor<float>(3, 8, 64);
    const auto k2 = random_tensor<Eigen::bfloat16>(77, 2, 64);
    const auto v2 = random_tensor<Eigen::bfloat16>(77, 2, 64);
    const PagedCopy<Eigen::bfloat16> pk(k1, 16), pv(v1, 16);
    std::vector<BatchedSequence<Eigen::bfloat16>> batch;
    batch.push_back({view(q1), pk.source(), pv.source()});
    batch.push_back({view(q2), view(k2), view(v2)});
    const auto together = attention_batch(batch);
    ASSERT_EQ(together.size(), 2u);
    EXPECT_TRUE(same_bits(together[0], attention(view(q1), pk.source(), pv.source())));
    EXPECT_TRUE(same_bits(together[1], attention(view(q2), view(k2), view(v2))));
}

// Packed prefill reading K and V in place: from a fused QKV projection (one strided run, so
// the same arithmetic as on contiguous copies) and from pages that cut sequences at
// arbitrary tokens (a sequence starting mid-page, one spanning several pages). Each is
// bit-identical to the contiguous packed call, which test_batch checks against the reference.
TEST(PackedKV, StridedAndPagedSourcesEqualContiguous)
{
    const FusedQkv<float> in(301, 8, 2, 40);
    const std::vector<index> starts{0, 5, 5, 140, 301}; // an empty sequence too
    const std::span<const index> spans(starts);
    const AttentionState contiguous = attention_packed(view(in.q), view(in.k), view(in.v), spans);
    EXPECT_TRUE(same_bits(attention_packed(view(in.q), in.k_source(301), in.v_source(301), spans),
                          contiguous));
    const PagedCopy<float> pk(in.k, 16), pv(in.v, 16);
    EXPECT_TRUE(same_bits(
        attention_packed(view(in.q), pk.source(), pv.source(), spans, SlidingWindowMask{50}),
        attention_packed(view(in.q), view(in.k), view(in.v), spans, SlidingWindowMask{50})));
    expect_error(
        [&] { (void)attention_packed(view(in.q), in.k_source(300), in.v_source(300), spans); },
        "attention_packed: q, k and v must hold the same packed tokens, got 301, 300 and 300");
}

// ---- Errors: each names the problem.

TEST(KVSourceErrors, PageSizeMustBePositive)
{
    const std::vector<float> pool(64, 0.0f);
    const std::vector<std::int32_t> table{0};
    expect_error([&] { (void)paged_kv<float>(table, pool.data(), 1, 0, 4, 2, 8); },
                 "KVPages: page_tokens must be positive, got 0");
    expect_error([&] { (void)paged_kv<float>(table, pool.data(), 1, -4, 4, 2, 8); },
                 "page_tokens must be positive, got -4");
}

TEST(KVSourceErrors, TooFewPagesForTheTokens)
{
    const std::vector<float> pool(4 * 4 * 2 * 8, 0.0f);
    const std::vector<std::int32_t> table{0, 1};
    expect_error([&] { (void)paged_kv<float>(table, pool.data(), 4, 4, 9, 2, 8); },
                 "9 tokens in pages of 4 need 3 pages, but the page table has 2");
}

TEST(KVSourceErrors, PageIndexOutsideThePool)
{
    const std::vector<float> pool(4 * 4 * 2 * 8, 0.0f);
    expect_error(
        [&] {
            const std::vector<std::int32_t> table{0, 5};
            (void)paged_kv<float>(table, pool.data(), 4, 4, 8, 2, 8);
        },
        "page table entry 1 is page 5, outside the pool of 4 pages");
    expect_error(
        [&] {
            const std::vector<std::int32_t> table{-1, 0};
            (void)paged_kv<float>(table, pool.data(), 4, 4, 8, 2, 8);
        },
        "page table entry 0 is page -1, outside the pool of 4 pages");
}

TEST(KVSourceErrors, NullPool)
{
    const std::vector<std::int32_t> table{0};
    expect_error([&] { (void)paged_kv<float>(table, nullptr, 1, 4, 3, 2, 8); },
                 "KVPages: the pool is null but holds 3 tokens");
    expect_error([&] { (void)strided_kv<float>(nullptr, 3, 2, 8, 48, 8); },
                 "the pool is null but holds 3 tokens");
}

TEST(KVSourceErrors, EmptyPool)
{
    const std::vector<float> pool(64, 0.0f);
    const std::vector<std::int32_t> table{0};
    expect_error([&] { (void)paged_kv<float>(table, pool.data(), 0, 4, 3, 2, 8); },
                 "the pool must hold at least one page, got 0");
}

TEST(KVSourceErrors, SizesMustBePositive)
{
    const std::vector<float> data(64, 0.0f);
    expect_error([&] { (void)strided_kv<float>(data.data(), 2, 0, 8, 8, 8); },
                 "KVPages: need positive heads and head_dim and a token count of at least 0, "
                 "got 0, 8 and 2");
    expect_error([&] { (void)strided_kv<float>(data.data(), -1, 2, 8, 16, 8); }, "got 2, 8 and -1");
}

TEST(KVSourceErrors, NegativeStrides)
{
    const std::vector<float> data(64, 0.0f);
    expect_error([&] { (void)strided_kv<float>(data.data() + 32, 2, 2, 8, -16, 8); },
                 "strides must not be negative, got token_stride -16, head_stride 8");
}

TEST(KVSourceErrors, OverlappingRows)
{
    const std::vector<float> data(256, 0.0f);
    // Heads 4 apart but 8 long.
    expect_error([&] { (void)strided_kv<float>(data.data(), 4, 2, 8, 16, 4); },
                 "KVPages: rows overlap: token_stride 16 and head_stride 4 for 2 heads of "
                 "head_dim 8 and 4 tokens per page");
    // Tokens closer than a token's heads.
    expect_error([&] { (void)strided_kv<float>(data.data(), 4, 2, 8, 8, 8); },
                 "rows overlap: token_stride 8 and head_stride 8");
}

TEST(KVSourceErrors, OverlappingPages)
{
    const std::vector<float> pool(256, 0.0f);
    const std::vector<std::int32_t> table{0, 1};
    const KVLayout layout{8, 2, 8, 4, 16, 8, 32}; // a page is 4 x 16 = 64 elements
    expect_error([&] { (void)KVPages<float>(pool.data(), table, 2, layout); },
                 "KVPages: pages overlap: page_stride 32 is less than a page's 64 elements");
}

TEST(KVSourceErrors, OffsetsOverflowAnIndex)
{
    const std::vector<float> data(64, 0.0f);
    const index huge = std::numeric_limits<index>::max() / 2;
    expect_error([&] { (void)strided_kv<float>(data.data(), 4, 1, 8, huge, 8); },
                 "KVPages: offsets within a page overflow an index");
    const std::vector<std::int32_t> table{0};
    const KVLayout layout{4, 1, 8, 4, 8, 8, huge};
    expect_error([&] { (void)KVPages<float>(data.data(), table, 4, layout); },
                 "KVPages: offsets in a pool of 4 pages of stride");
}

TEST(KVSourceErrors, KAndVMustAgree)
{
    const auto q = random_tensor<float>(1, 4, 8);
    const std::vector<float> data(40 * 4 * 8, 0.0f);
    const auto k = strided_kv<float>(data.data(), 10, 2, 8, 16, 8);
    expect_error(
        [&] { (void)attention(view(q), k, strided_kv<float>(data.data(), 12, 2, 8, 16, 8)); },
        "attention: k has 10 tokens but v has 12");
    expect_error(
        [&] { (void)attention(view(q), k, strided_kv<float>(data.data(), 10, 4, 8, 32, 8)); },
        "attention: k has 2 heads but v has 4");
    expect_error(
        [&] { (void)attention(view(q), k, strided_kv<float>(data.data(), 10, 2, 4, 16, 4)); },
        "attention: head_dim differs: q 8, k 8, v 4");
    const auto q3 = random_tensor<float>(1, 3, 8);
    expect_error([&] { (void)attention(view(q3), k, k); },
                 "q has 3 heads, not a multiple of the 2 kv heads");
}

TEST(KVSourceErrors, NonFiniteValueInAPageIsLocated)
{
    auto k = random_tensor<float>(50, 2, 8);
    const auto v = random_tensor<float>(50, 2, 8);
    k(37, 1, 3) = std::numeric_limits<float>::infinity();
    const auto q = random_tensor<float>(1, 2, 8);
    const PagedCopy<float> pk(k, 16), pv(v, 16);
    expect_error([&] { (void)attention(view(q), pk.source(), pv.source()); },
                 "attention: k holds a non-finite value (inf) at token 37, head 1, element 3");
    // The strided (row by row) check finds it too.
    FusedQkv<float> in(20, 2, 1, 8);
    in.fused[static_cast<std::size_t>(13 * in.stride() + 3 * 8 + 5)] =
        std::numeric_limits<float>::quiet_NaN(); // V of token 13, element 5
    expect_error([&] { (void)attention(view(in.q), in.k_source(20), in.v_source(20)); },
                 "attention: v holds a non-finite value (nan) at token 13, head 0, element 5");
    std::vector<BatchedSequence<float>> batch;
    batch.push_back({view(in.q), in.k_source(20), in.v_source(20)});
    expect_error([&] { (void)attention_batch(batch); },
                 "attention_batch: sequence 0: v holds a non-finite value (nan) at token 13");
}

// A zero-token source is empty, not an error: every row sees no key.
TEST(PagedKV, EmptySourceGivesEmptyRows)
{
    const auto q = random_tensor<float>(2, 4, 8);
    const std::vector<float> pool(64, 0.0f);
    const auto k = paged_kv<float>({}, pool.data(), 1, 16, 0, 2, 8);
    const AttentionState got = attention(view(q), k, k);
    for (index n = 0; n < got.lse.size(); ++n)
        EXPECT_EQ(got.lse.data()[n], -std::numeric_limits<float>::infinity());
}


// ---- Pages by pointer (KVCache's pages), and a range of a source's tokens

/// The tokens of `t` in pages of `page_tokens`, each a separate allocation, NaN past the
/// last token: no pool offset reaches them.
template <class KV>
struct PointerPages {
    std::vector<std::vector<KV>> storage;
    std::vector<const KV*> pages;
    index page_tokens = 0, tokens = 0, heads = 0, d = 0;

    PointerPages(const Tensor3<KV>& t, index page)
        : page_tokens(page), tokens(t.dimension(0)), heads(t.dimension(1)), d(t.dimension(2))
    {
        const index row = heads * d;
        for (index first = 0; first < tokens; first += page) {
            storage.emplace_back(static_cast<std::size_t>(page * row),
                                 KV(std::numeric_limits<float>::quiet_NaN()));
            std::copy_n(t.data() + first * row, std::min(page, tokens - first) * row,
                        storage.back().data());
        }
        for (const auto& p : storage)
            pages.push_back(p.data());
    }

    [[nodiscard]] KVPages<KV> source() const
    {
        return paged_kv<KV>(std::span<const KV* const>(pages), page_tokens, tokens, heads, d);
    }
};

TEST(PointerPagedKV, RowsAndRunsFollowThePages)
{
    const auto k = random_tensor<float>(23, 2, 8);
    const PointerPages<float> pages(k, 7);
    const KVPages<float> s = pages.source();
    EXPECT_FALSE(s.contiguous());
    for (index t = 0; t < 23; ++t)
        for (index h = 0; h < 2; ++h) {
            EXPECT_EQ(s.row(t, h),
                      pages.pages[static_cast<std::size_t>(t / 7)] + (t % 7) * 16 + h * 8);
            EXPECT_EQ(std::memcmp(s.row(t, h), &k(t, h, 0), sizeof(float) * 8), 0);
        }
    EXPECT_EQ(s.run(0, 23).length, 7);
    EXPECT_EQ(s.run(5, 23).length, 2);
    EXPECT_EQ(s.run(21, 23).length, 2);
    EXPECT_EQ(s.run(8, 10).length, 2);
}

// A range of tokens starts where it says, on every layout, and its runs never start before
// it or cross a page end.
TEST(KVSourceRange, TokensFromViewsTheRangeInPlace)
{
    const auto k = random_tensor<float>(23, 2, 8);
    const PointerPages<float> by_pointer(k, 7);
    const PagedCopy<float> in_pool(k, 7);
    const KVPages<float> contiguous_source(view(k));
    for (const KVPages<float>& s : {by_pointer.source(), in_pool.source(), contiguous_source}) {
        const KVPages<float> part = s.tokens_from(5, 12);
        EXPECT_EQ(part.tokens(), 12);
        for (index j = 0; j < 12; ++j)
            for (index h = 0; h < 2; ++h)
                EXPECT_EQ(part.row(j, h), s.row(5 + j, h));
        const auto first = part.run(0, 12);
        EXPECT_EQ(first.first, s.row(5, 0));
        EXPECT_EQ(first.length, s.contiguous() ? 12 : 2); // pages of 7: tokens 5 and 6
        const auto last = part.run(9, 12);                // tokens 14 to 16 of the source
        EXPECT_EQ(last.first, s.row(14, 0));
        EXPECT_EQ(last.length, 3);
        // A range of a range.
        const KVPages<float> inner = s.tokens_from(3, 15).tokens_from(2, 12);
        for (index j = 0; j < 12; ++j)
            EXPECT_EQ(inner.row(j, 1), s.row(5 + j, 1));
        EXPECT_EQ(s.tokens_from(23, 0).tokens(), 0);
    }
    // A range of a contiguous view is one.
    const KVPages<float> part = contiguous_source.tokens_from(5, 12);
    EXPECT_TRUE(part.contiguous());
    EXPECT_EQ(part.data(), k.data() + 5 * 16);
}

TEST(KVSourceRange, AttentionOverARangeOfPagesMatchesReference)
{
    constexpr index d = 64;
    const auto q = random_tensor<float>(5, 8, d);
    const auto k = random_tensor<float>(1200, 2, d), v = random_tensor<float>(1200, 2, d);
    const PointerPages<float> pk(k, 7), pv(v, 7);
    const ReferenceResult want =
        reference_attention(view(q), token_slice(view(k), 300, 777), token_slice(view(v), 300, 777),
                            everything, 1.0 / std::sqrt(double(d)));
    const Tolerance tol = tolerance(want, d, 777);
    const Deviation dev = deviation(
        attention(view(q), pk.source().tokens_from(300, 777), pv.source().tokens_from(300, 777)),
        want);
    EXPECT_TRUE(dev.all_finite) << "a read outside the range's rows";
    EXPECT_LE(dev.output, tol.output);
    EXPECT_LE(dev.lse, tol.lse);
}

TEST(KVSourceErrors, PagesByPointerMustCoverTheTokens)
{
    const std::vector<float> page(7 * 2 * 8, 0.0f);
    const std::vector<const float*> three{page.data(), page.data(), page.data()};
    expect_error([&] { (void)paged_kv<float>(std::span<const float* const>(three), 7, 23, 2, 8); },
                 "KVPages: 23 tokens in pages of 7 need 4 pages, but 3 page pointers are given");
    const std::vector<const float*> with_null{page.data(), nullptr};
    expect_error(
        [&] { (void)paged_kv<float>(std::span<const float* const>(with_null), 7, 10, 2, 8); },
        "KVPages: page 1 of 2 is null");
    expect_error([&] { (void)paged_kv<float>(std::span<const float* const>(three), 0, 10, 2, 8); },
                 "KVPages: page_tokens must be positive, got 0");
    // Spare pages past the tokens may be anything.
    EXPECT_EQ(paged_kv<float>(std::span<const float* const>(with_null), 7, 7, 2, 8).tokens(), 7);
}

TEST(KVSourceErrors, TokensFromMustLieInTheSource)
{
    const auto k = random_tensor<float>(23, 2, 8);
    const PointerPages<float> pages(k, 7);
    expect_error([&] { (void)pages.source().tokens_from(20, 5); },
                 "KVPages::tokens_from: 5 tokens from token 20 are out of range [0, 23)");
    expect_error([&] { (void)pages.source().tokens_from(-1, 5); }, "5 tokens from token -1");
    expect_error([&] { (void)KVPages<float>(view(k)).tokens_from(0, 24); },
                 "24 tokens from token 0 are out of range [0, 23)");
}

// ---- Attention over a KVCache, read in place from its pages

// A cache of 3000 tokens appended in pieces of awkward sizes, then a decode step (decode
// kernel), a short query of 5 tokens with 4 query heads per KV head (tile kernel: 20 rows)
// and one without grouping (decode kernel, 5 query tokens), each as the cache's last
// tokens. Against the double-precision reference always; bit for bit against the same K/V
// laid out contiguously where the pages are a multiple of 128 tokens: the tile kernel
// copies each 128-key tile run by run into the same buffer, and the decode kernel's
// 64-key blocks and the split-KV slices (whole 128-key tiles) then start where they do
// over the contiguous tensor, so the arithmetic and its order are the same. Pages of 7
// cut the decode kernel's blocks, which changes the order of the sums: equal up to
// rounding.
template <class KV>
void expect_cache_attention_matches(index page_tokens)
{
    SCOPED_TRACE("page_tokens " + std::to_string(page_tokens));
    constexpr index cached = 3000, kv_heads = 2, d = 64;
    const auto k = random_tensor<KV>(cached, kv_heads, d);
    const auto v = random_tensor<KV>(cached, kv_heads, d);
    KVCache<KV> cache(page_tokens);
    const index pieces[] = {1, 255, 513, 7, 1000, 256};
    for (index first = 0, n = 0; first < cached; ++n) {
        const index count = std::min(pieces[n % 6], cached - first);
        cache.append(token_slice(view(k), first, count), token_slice(view(v), first, count));
        first += count;
    }
    ASSERT_EQ(cache.tokens(), cached);
    struct Case {
        const char* name;
        index q_tokens, q_heads;
    };
    for (const Case c : {Case{"decode", 1, 8}, Case{"short query", 5, 8},
                         Case{"short query, no grouping", 5, 2}}) {
        SCOPED_TRACE(c.name);
        const auto q = random_tensor<float>(c.q_tokens, c.q_heads, d);
        const index offset = cached - c.q_tokens;
        const CausalMask mask{offset, 0};
        PathReferences<KV> references([&](Products products) {
            return reference_attention(
                view(q), view(k), view(v), [&](index i, index j) { return j <= i + offset; },
                1.0 / std::sqrt(double(d)), {}, products);
        });
        for (const KernelIsa isa : supported_isas()) {
            SCOPED_TRACE("path " + std::string(name(isa)));
            const ReferenceResult& want = references.on(isa);
            const Tolerance tol = tolerance(want, d, cached);
            const ForcedIsa forced(isa);
            const AttentionState got = attention(view(q), cache.keys(), cache.values(), mask);
            const Deviation dev = deviation(got, want);
            EXPECT_TRUE(dev.all_finite);
            EXPECT_TRUE(dev.infinities_match);
            EXPECT_LE(dev.output, tol.output);
            EXPECT_LE(dev.lse, tol.lse);
            if (page_tokens % 128 == 0) {
                EXPECT_TRUE(same_bits(got, attention(view(q), view(k), view(v), mask)));
            }
        }
    }
}

TEST(CacheAttention, FloatOverPagesEqualsContiguous)
{
    expect_cache_attention_matches<float>(7);
    expect_cache_attention_matches<float>(KVCache<float>::default_page_tokens);
}

TEST(CacheAttention, Bf16OverPagesEqualsContiguous)
{
    expect_cache_attention_matches<Eigen::bfloat16>(7);
    expect_cache_attention_matches<Eigen::bfloat16>(KVCache<Eigen::bfloat16>::default_page_tokens);
}

} // namespace
} // namespace star::test
