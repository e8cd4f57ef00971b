// Attention variants (policy/variant.hpp) through the algorithms: global and Ring exact for
// every variant, Star's phase 1 what docs/guides/variants.md says it is, its phase 2 exact,
// all against the double-precision reference; bad variants rejected by name, changing no
// cache.
//
// Tolerances: as tests/test_star.cpp (twice the kernel's bound: every result is a merge), plus
// the transforms' own rounding as tests/test_variants.cpp budgets it (8 u for the soft cap,
// 2 u for ALiBi; 10 u covers both at once).

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "expect_error.hpp"
#include "reference.hpp"

namespace star::test {
namespace {

constexpr index q_heads = 4, kv_heads = 2, head_dim = 24;

Tokens<float> random_tokens(index tokens)
{
    return test::random_tokens<float>(tokens, q_heads, kv_heads, head_dim);
}

// A variant as the reference computes it, at true positions: a window (0: none), a cap (0:
// none), ALiBi slopes (empty: none).
struct Spec {
    index window = 0;
    double cap = 0.0;
    std::vector<float> slopes;

    [[nodiscard]] bool sees(index query, index key) const
    {
        return key <= query && (window == 0 || query - key < window);
    }
    [[nodiscard]] double transform(double s, index query, index key, index head) const
    {
        if (!slopes.empty())
            s -= double(slopes[static_cast<std::size_t>(head)]) * double(std::abs(key - query));
        if (cap > 0.0)
            s = cap * std::tanh(s / cap);
        return s;
    }
};

const std::vector<float>& slopes()
{
    static const std::vector<float> s = alibi_slopes(q_heads);
    return s;
}

// Rows of `q` at positions `query_at + i`, rows of `k` at `j`, under `spec` and `also`.
ReferenceResult reference(const Tokens<float>& q, const Tokens<float>& kv, index query_at,
                          const Spec& spec, const Visible& also = {})
{
    return reference_attention(
        view(q.q), view(kv.k), view(kv.v),
        [&](index i, index j) {
            return spec.sees(query_at + i, j) && (!also || also(query_at + i, j));
        },
        1.0 / std::sqrt(double(head_dim)),
        [&](double s, index i, index j, index h) { return spec.transform(s, query_at + i, j, h); });
}

void expect_close(const AttentionState& got, const ReferenceResult& want, index keys,
                  const std::string& what)
{
    ASSERT_EQ(got.output.size(), want.output.size()) << what;
    const Deviation dev = deviation(got, want);
    const Tolerance tol = tolerance(want, head_dim, keys, 10.0);
    EXPECT_TRUE(dev.all_finite) << what;
    EXPECT_TRUE(dev.infinities_match) << what;
    EXPECT_LE(dev.output, 2 * tol.output) << what;
    EXPECT_LE(dev.lse, 2 * tol.lse) << what;
}

// Calls `f(variant, spec, name)` for each built-in variant but plain causal (tested everywhere
// else): a window, a soft cap, ALiBi, Gemma 2's local layers (a window and a cap), and all
// three nested.
template <class F>
void for_each_variant(F&& f)
{
    f(SlidingWindow{37}, Spec{37, 0.0, {}}, "SlidingWindow{37}");
    f(SoftCapped<>{1.5f}, Spec{0, 1.5, {}}, "SoftCapped{1.5}");
    f(WithAlibi<>{slopes()}, Spec{0, 0.0, slopes()}, "WithAlibi");
    f(SoftCapped<SlidingWindow>{1.5f, {37}}, Spec{37, 1.5, {}}, "SoftCapped<SlidingWindow{37}>");
    // All three nested: ALiBi's penalty first, then the cap (the reference's order).
    f(SoftCapped<WithAlibi<SlidingWindow>>{1.5f, {slopes(), {37}}}, Spec{37, 1.5, slopes()},
      "SoftCapped<WithAlibi<SlidingWindow{37}>>");
}

AttentionState assembled(const PerHost<std::vector<RangeOutput>>& outputs, index tokens)
{
    return assemble(outputs, {tokens, q_heads, head_dim});
}

// =============================================================================================
// Exact algorithms: global and Ring equal the reference for every variant

TEST(ExactVariants, GlobalAndRingEqualTheReference)
{
    constexpr index tokens = 203;
    const Tokens<float> in = random_tokens(tokens);
    for_each_variant([&](const auto& variant, const Spec& spec, const std::string& name) {
        const ReferenceResult want = reference(in, in, 0, spec);
        expect_close(global_attention(view(in.q), view(in.k), view(in.v), variant), want, tokens,
                     name + ", global");
        for (const RingLayout layout : {RingLayout::plain, RingLayout::zigzag}) {
            LocalCommunicator comm(3);
            const BasicRingAttention ring(RingOptions{.layout = layout}, variant);
            expect_close(assembled(ring.run(comm, view(in.q), view(in.k), view(in.v)), tokens), want,
                         tokens, name + (layout == RingLayout::plain ? ", ring" : ", zig-zag ring"));
        }
    });
}

// =============================================================================================
// Star, phase 1

// Star's phase 1 of `in` under `star` on 3 hosts.
template <class Star>
AttentionState phase_one(const Star& star, const Tokens<float>& in)
{
    LocalCommunicator comm(3);
    const index tokens = in.q.dimension(0);
    const StarPlan plan = star.plan(tokens, 3);
    auto caches = comm.local<KVCache<float>>();
    return assembled(star.encode_context(comm, plan, caches, view(in.q), view(in.k), view(in.v)),
                     tokens);
}

// With the previous block as the anchor and a window no longer than a block plus one, every
// key of a query's window is in its block or the previous one: phase 1 is exact.
TEST(StarPhaseOne, WindowWithinThePreviousBlockIsExact)
{
    constexpr index tokens = 203; // blocks of 64: three full and one of 11
    const Tokens<float> in = random_tokens(tokens);
    const auto check = [&](const auto& variant, const Spec& spec, const std::string& name) {
        const StarAttention star(FixedBlocks{64}, PreviousBlock{}, Contiguous{},
                                 GatherToQueryHost{}, {}, variant);
        expect_close(phase_one(star, in), reference(in, in, 0, spec), tokens, name);
    };
    check(SlidingWindow{64}, Spec{64, 0.0, {}}, "SlidingWindow{64}");
    check(SlidingWindow{65}, Spec{65, 0.0, {}}, "SlidingWindow{65}");
    check(SoftCapped<SlidingWindow>{1.5f, {37}}, Spec{37, 1.5, {}}, "SoftCapped<SlidingWindow>");
}

// With the first block as the anchor (the paper's), a block starting at `s` sees anchor key
// `a - 1` only if `s - (a - 1) < W`: from the third block of 64 on, a window of 37 hides the
// whole anchor, and those blocks get what they would without one. Phase 1 is then the
// block-local window: the reference's window restricted to the block and its anchor.
TEST(StarPhaseOne, FirstBlockAnchorOutsideTheWindowIsInvisible)
{
    constexpr index tokens = 203, block = 64;
    const Tokens<float> in = random_tokens(tokens);
    const SlidingWindow window{37};
    const auto block_of = [](index t) { return t / block; };
    const AttentionState with_anchor =
        phase_one(StarAttention(FixedBlocks{block}, FirstTokens{}, Contiguous{},
                                GatherToQueryHost{}, {}, window),
                  in);
    expect_close(with_anchor,
                 reference(in, in, 0, Spec{37, 0.0, {}},
                           [&](index query, index key) {
                               return block_of(key) == block_of(query) || key < block;
                           }),
                 tokens, "first-block anchor");
    const AttentionState without = phase_one(
        StarAttention(FixedBlocks{block}, NoAnchor{}, Contiguous{}, GatherToQueryHost{}, {}, window),
        in);
    // The hidden anchor's state weighs nothing in the merge: a few roundings at most.
    for (index t = 2 * block; t < tokens; ++t)
        for (index h = 0; h < q_heads; ++h) {
            EXPECT_NEAR(with_anchor.lse(t, h), without.lse(t, h), 1e-5) << t;
            for (index c = 0; c < head_dim; ++c)
                EXPECT_NEAR(with_anchor.output(t, h, c), without.output(t, h, c), 1e-5) << t;
        }
}

// =============================================================================================
// Star, phase 2: exact given the caches, for the query and every decode step

// With caches in pages of `page_tokens`: pages of 7 cut the runs of positions a
// positional variant attends to one by one (KVPages::tokens_from) at page ends.
template <class P>
void expect_phase_two_exact(P partition, const std::string& where,
                            index page_tokens = KVCache<float>::default_page_tokens)
{
    constexpr index context = 203, query = 7;
    constexpr int steps = 3;
    const Tokens<float> ctx = random_tokens(context), q = random_tokens(query);
    std::vector<Tokens<float>> decode;
    for (int s = 0; s < steps; ++s)
        decode.push_back(random_tokens(1));
    for_each_variant([&](const auto& variant, const Spec& spec, const std::string& name) {
        const StarAttention star(FixedBlocks{64}, FirstTokens{}, partition, GatherToQueryHost{}, {},
                                 variant);
        LocalCommunicator comm(3);
        const StarPlan plan = star.plan(context, 3);
        auto caches = comm.local<KVCache<float>>();
        for (int r = 0; r < 3; ++r)
            caches[r] = KVCache<float>(page_tokens);
        (void)star.encode_context(comm, plan, caches, view(ctx.q), view(ctx.k), view(ctx.v));
        Tokens<float> all{ctx.q, ctx.k, ctx.v};
        const auto step = [&](const Tokens<float>& t, const std::string& what) {
            const index at = all.k.dimension(0);
            all = {concat_tokens(all.q, t.q), concat_tokens(all.k, t.k), concat_tokens(all.v, t.v)};
            const auto merged =
                star.attend_query(comm, plan, caches, view(t.q), view(t.k), view(t.v));
            ASSERT_TRUE(merged[plan.query_host()].has_value()) << what;
            expect_close(*merged[plan.query_host()], reference(t, all, at, spec),
                         all.k.dimension(0), name + ", " + where + ", " + what);
        };
        step(q, "query");
        for (int s = 0; s < steps; ++s)
            step(decode[static_cast<std::size_t>(s)], "decode step " + std::to_string(s + 1));
    });
}

TEST(StarPhaseTwo, ExactForEveryVariant) { expect_phase_two_exact(Contiguous{}, "contiguous"); }

// The query host's cache holds blocks that are not its last ones, then the query: runs of
// positions that are not one range.
TEST(StarPhaseTwo, ExactWithScatteredBlocksAndAnotherQueryHost)
{
    expect_phase_two_exact(RoundRobin{{0}}, "round robin, query host 0");
}

TEST(StarPhaseTwo, ExactOverCachesInPagesThatCutTheRuns)
{
    expect_phase_two_exact(Contiguous{}, "contiguous, pages of 7", 7);
    expect_phase_two_exact(RoundRobin{{0}}, "round robin, pages of 7", 7);
}

// =============================================================================================
// Bad variants

TEST(VariantErrors, EachNamesTheProblem)
{
    const Tokens<float> in = random_tokens(20);
    expect_error([&] { (void)global_attention(view(in.q), view(in.k), view(in.v), SlidingWindow{}); },
                 "SlidingWindow: the window must be at least 1 token, got 0");
    expect_error(
        [&] {
            (void)global_attention(view(in.q), view(in.k), view(in.v), Causal{},
                                   GlobalOptions{.causal = false});
        },
        "a Variant is causal; options.causal must be true");
    LocalCommunicator comm(2);
    expect_error(
        [&] {
            (void)BasicRingAttention(RingOptions{}, SoftCapped<>{-1.0f})
                .run(comm, view(in.q), view(in.k), view(in.v));
        },
        "SoftCapped: the cap must be finite and positive, got -1");
    expect_error(
        [&] {
            (void)BasicRingAttention(RingOptions{}, SoftCapped<>{INFINITY})
                .run(comm, view(in.q), view(in.k), view(in.v));
        },
        "SoftCapped: the cap must be finite and positive, got inf");
    const std::vector<float> three{0.5f, 0.25f, 0.125f};
    expect_error(
        [&] { (void)global_attention(view(in.q), view(in.k), view(in.v), WithAlibi<>{three}); },
        "WithAlibi: 3 slopes for 4 query heads");
    const std::vector<float> nan{0.5f, NAN, 0.25f, 0.125f};
    expect_error(
        [&] { (void)global_attention(view(in.q), view(in.k), view(in.v), WithAlibi<>{nan}); },
        "WithAlibi: the slope of head 1 is not finite");
}

// A rejected variant in either phase changes no cache.
TEST(VariantErrors, RejectedPhasesLeaveEveryCacheUnchanged)
{
    const Tokens<float> ctx = random_tokens(50), q = random_tokens(3);
    LocalCommunicator comm(2);
    const StarAttention good(FixedBlocks{}, FirstTokens{}, Contiguous{}, GatherToQueryHost{}, {},
                             SoftCapped<SlidingWindow>{2.0f, {8}});
    const StarPlan plan = good.plan(50, 2);
    auto caches = comm.local<KVCache<float>>();

    const StarAttention bad_window(FixedBlocks{}, FirstTokens{}, Contiguous{}, GatherToQueryHost{},
                                   {}, SoftCapped<SlidingWindow>{2.0f, {-3}});
    expect_error(
        [&] {
            (void)bad_window.encode_context(comm, plan, caches, view(ctx.q), view(ctx.k),
                                            view(ctx.v));
        },
        "SlidingWindow: the window must be at least 1 token, got -3");
    EXPECT_EQ(caches[0].tokens(), 0);
    EXPECT_EQ(caches[1].tokens(), 0);

    (void)good.encode_context(comm, plan, caches, view(ctx.q), view(ctx.k), view(ctx.v));
    const index before[] = {caches[0].tokens(), caches[1].tokens()};
    const StarAttention bad_cap(FixedBlocks{}, FirstTokens{}, Contiguous{}, GatherToQueryHost{}, {},
                                SoftCapped<SlidingWindow>{0.0f, {8}});
    expect_error(
        [&] { (void)bad_cap.attend_query(comm, plan, caches, view(q.q), view(q.k), view(q.v)); },
        "SoftCapped: the cap must be finite and positive, got 0");
    EXPECT_EQ(caches[0].tokens(), before[0]);
    EXPECT_EQ(caches[1].tokens(), before[1]);
}

// A positional variant reads each cached key's position off the plan: a cache phase 1 did not
// fill is refused, not read past its end.
TEST(VariantErrors, PositionalVariantNeedsThePhaseOneCaches)
{
    const Tokens<float> q = random_tokens(3);
    LocalCommunicator comm(2);
    const StarAttention star(FixedBlocks{}, FirstTokens{}, Contiguous{}, GatherToQueryHost{}, {},
                             SlidingWindow{8});
    const StarPlan plan = star.plan(50, 2);
    auto caches = comm.local<KVCache<float>>();
    expect_error(
        [&] { (void)star.attend_query(comm, plan, caches, view(q.q), view(q.k), view(q.v)); },
        "host 0's cache holds 0 tokens, fewer than the 25 of its blocks");
    EXPECT_EQ(caches[1].tokens(), 0);
}

} // namespace
} // namespace star::test
