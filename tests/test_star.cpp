// Star Attention: phase 1 against the block-sparse reference, the hosts' caches, phase 2 and
// decoding against exact attention, every merge policy, 64 in-process hosts, bad
// configurations.

#include <gtest/gtest.h>

#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "expect_error.hpp"
#include "reference.hpp"

namespace star::test {
namespace {

// `got` equals the double-precision reference to float accuracy. Every result checked here is
// a merge of partial states (phase 1 merges a block's state with its anchor's, phase 2 the
// hosts' partials), and each merge adds a few roundings per row (the weights' exp and
// division, the weighted sum, the log of the total) to the kernel's own error: twice the
// kernel's tolerance is allowed.
void expect_close(const AttentionState& got, const ReferenceResult& want, index head_dim,
                  index key_count, const std::string& what)
{
    ASSERT_EQ(got.output.size(), want.output.size()) << what;
    const Deviation dev = deviation(got, want);
    const Tolerance tol = tolerance(want, head_dim, key_count);
    EXPECT_TRUE(dev.all_finite) << what;
    EXPECT_TRUE(dev.infinities_match) << what;
    EXPECT_LE(dev.output, 2 * tol.output) << what;
    EXPECT_LE(dev.lse, 2 * tol.lse) << what;
}

// memcmp that accepts the null pointers of empty buffers.
bool same_bytes(const void* a, const void* b, std::size_t bytes)
{
    return bytes == 0 || std::memcmp(a, b, bytes) == 0;
}

void expect_bit_identical(const AttentionState& a, const AttentionState& b, const std::string& what)
{
    ASSERT_EQ(a.shape(), b.shape()) << what;
    EXPECT_TRUE(same_bytes(a.output.data(), b.output.data(), sizeof(float) * a.output.size()))
        << what << ": outputs differ";
    EXPECT_TRUE(same_bytes(a.lse.data(), b.lse.data(), sizeof(float) * a.lse.size()))
        << what << ": LSEs differ";
}

std::vector<TokenRange> normalised(std::vector<TokenRange> ranges)
{
    for (auto& r : ranges)
        if (r.empty())
            r = {};
    return ranges;
}

// =============================================================================================
// Phase 1 against causal attention under the block-sparse mask

enum class BlockKind { fixed, equal };
enum class AnchorKind { first_default, first, sinks, none, previous };
enum class PartitionKind { contiguous, round_robin, balanced };

struct PhaseOneCase {
    std::string name;
    index tokens;
    BlockKind block;
    index block_parameter; // FixedBlocks size or EqualBlocks count
    AnchorKind anchor;
    index anchor_parameter; // FirstTokens / SinkTokens size
    PartitionKind partition;
    int hosts;
    index q_heads = 4;
    index kv_heads = 2;
    index head_dim = 32;
    bool bf16 = false;
};

void PrintTo(const PhaseOneCase& c, std::ostream* os) { *os << c.name; }

// The blocks, derived token by token from the policy's definition rather than from the plan:
// FixedBlocks puts token t in block t / size; EqualBlocks makes the first `L mod n` blocks one
// token longer than the rest.
std::vector<TokenRange> expected_blocks(const PhaseOneCase& c)
{
    std::vector<index> block_of(static_cast<std::size_t>(c.tokens));
    for (index t = 0; t < c.tokens; ++t) {
        if (c.block == BlockKind::fixed) {
            block_of[static_cast<std::size_t>(t)] = t / c.block_parameter;
        } else {
            const index n = std::min(c.block_parameter, c.tokens);
            const index small = c.tokens / n, longer = c.tokens % n;
            const index in_longer = longer * (small + 1);
            block_of[static_cast<std::size_t>(t)] =
                t < in_longer ? t / (small + 1) : longer + (t - in_longer) / small;
        }
    }
    std::vector<TokenRange> blocks;
    for (index t = 0; t < c.tokens; ++t) {
        if (t == 0 ||
            block_of[static_cast<std::size_t>(t)] != block_of[static_cast<std::size_t>(t - 1)])
            blocks.push_back({t, t});
        blocks.back().end = t + 1;
    }
    return blocks;
}

// The anchors as the method defines them: the first `a` tokens (a = the first block's size by
// default), clipped to the block's start; the sinks likewise; nothing; the previous block.
std::vector<TokenRange> expected_anchors(const PhaseOneCase& c,
                                         const std::vector<TokenRange>& blocks)
{
    std::vector<TokenRange> anchors;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
        const index start = blocks[i].begin;
        TokenRange a{};
        switch (c.anchor) {
        case AnchorKind::first_default: a = {0, std::min(blocks.front().size(), start)}; break;
        case AnchorKind::first:
        case AnchorKind::sinks: a = {0, std::min(c.anchor_parameter, start)}; break;
        case AnchorKind::none: break;
        case AnchorKind::previous:
            if (i > 0)
                a = blocks[i - 1];
            break;
        }
        anchors.push_back(a);
    }
    return normalised(anchors);
}

template <class F>
void with_block(const PhaseOneCase& c, F&& f)
{
    if (c.block == BlockKind::fixed)
        f(FixedBlocks{c.block_parameter});
    else
        f(EqualBlocks{c.block_parameter});
}

template <class F>
void with_anchor(const PhaseOneCase& c, F&& f)
{
    switch (c.anchor) {
    case AnchorKind::first_default: return f(FirstTokens{});
    case AnchorKind::first: return f(FirstTokens{c.anchor_parameter});
    case AnchorKind::sinks: return f(SinkTokens{c.anchor_parameter});
    case AnchorKind::none: return f(NoAnchor{});
    case AnchorKind::previous: return f(PreviousBlock{});
    }
}

template <class F>
void with_partition(const PhaseOneCase& c, F&& f)
{
    switch (c.partition) {
    case PartitionKind::contiguous: return f(Contiguous{});
    case PartitionKind::round_robin: return f(RoundRobin{});
    case PartitionKind::balanced: return f(BalancedTokens{});
    }
}

// Calls `f(star)` with the StarAttention the case describes.
template <class F>
void with_star(const PhaseOneCase& c, F&& f)
{
    with_block(c, [&](auto block) {
        with_anchor(c, [&](auto anchor) {
            with_partition(c, [&](auto partition) { f(StarAttention(block, anchor, partition)); });
        });
    });
}

template <class KV, class Star>
void expect_phase_one_matches_reference(const Star& star, const PhaseOneCase& c)
{
    const StarPlan plan = star.plan(c.tokens, c.hosts);
    const auto blocks = expected_blocks(c);
    ASSERT_EQ(plan.blocks(), blocks);
    const auto anchors = expected_anchors(c, blocks);
    EXPECT_EQ(normalised(plan.anchors()), anchors);
    ASSERT_EQ(plan.owner().size(), blocks.size());

    const auto in = random_tokens<KV>(c.tokens, c.q_heads, c.kv_heads, c.head_dim);
    LocalCommunicator comm(c.hosts);
    auto caches = comm.template local<KVCache<KV>>();
    const auto outputs = star.encode_context(comm, plan, caches, view(in.q), view(in.k), view(in.v));

    // Each host returns the outputs of exactly the blocks it owns, in context order.
    for (int r = 0; r < c.hosts; ++r) {
        std::vector<TokenRange> mine;
        for (std::size_t i = 0; i < blocks.size(); ++i)
            if (plan.owner()[i] == r)
                mine.push_back(blocks[i]);
        ASSERT_EQ(outputs[r].size(), mine.size()) << "host " << r;
        for (std::size_t n = 0; n < mine.size(); ++n)
            EXPECT_EQ(outputs[r][n].tokens, mine[n]) << "host " << r;
    }

    const AttentionState got = assemble(outputs, {c.tokens, c.q_heads, c.head_dim});
    const ReferenceResult want = reference_attention(view(in.q), view(in.k), view(in.v),
                                                     block_sparse_visible(blocks, anchors),
                                                     1.0 / std::sqrt(double(c.head_dim)));
    expect_close(got, want, c.head_dim, c.tokens, c.name);
}

class PhaseOne : public ::testing::TestWithParam<PhaseOneCase> {};

TEST_P(PhaseOne, MatchesBlockSparseReference)
{
    const PhaseOneCase& c = GetParam();
    with_star(c, [&](const auto& star) {
        if (c.bf16)
            expect_phase_one_matches_reference<Eigen::bfloat16>(star, c);
        else
            expect_phase_one_matches_reference<float>(star, c);
    });
}

using B = BlockKind;
using A = AnchorKind;
using P = PartitionKind;

// clang-format off
using C = PhaseOneCase;
// 517 tokens in blocks of 100: five full blocks and one of 17.
INSTANTIATE_TEST_SUITE_P(
    Policies, PhaseOne,
    ::testing::Values(
        C{"FirstTokensDefault", 517, B::fixed, 100, A::first_default, 0, P::contiguous, 3},
        C{"FirstTokensSmallerThanBlock", 517, B::fixed, 100, A::first, 37, P::contiguous, 3},
        C{"FirstTokensEqualToBlock", 517, B::fixed, 100, A::first, 100, P::contiguous, 3},
        C{"FirstTokensLargerThanBlock", 517, B::fixed, 100, A::first, 250, P::contiguous, 3},
        C{"SinkTokens", 517, B::fixed, 100, A::sinks, 4, P::contiguous, 3},
        C{"NoAnchor", 517, B::fixed, 100, A::none, 0, P::contiguous, 3},
        C{"PreviousBlock", 517, B::fixed, 100, A::previous, 0, P::contiguous, 3},
        C{"EqualBlocks", 517, B::equal, 5, A::first_default, 0, P::contiguous, 2},
        C{"EqualBlocksPreviousBlock", 517, B::equal, 7, A::previous, 0, P::round_robin, 3},
        C{"RoundRobin", 517, B::fixed, 64, A::first_default, 0, P::round_robin, 4},
        C{"BalancedTokens", 517, B::fixed, 150, A::first, 60, P::balanced, 3},
        C{"OneHost", 517, B::fixed, 100, A::first_default, 0, P::contiguous, 1},
        C{"MoreHostsThanBlocks", 517, B::fixed, 200, A::first_default, 0, P::contiguous, 8},
        C{"MoreHostsThanBlocksRoundRobin", 517, B::fixed, 200, A::first, 300, P::round_robin, 8},
        C{"OneBlock", 300, B::fixed, 400, A::first_default, 0, P::contiguous, 2},
        C{"OneTokenBlocks", 40, B::fixed, 1, A::first, 3, P::balanced, 3},
        C{"GroupedQuery", 517, B::fixed, 100, A::first_default, 0, P::contiguous, 3, 8, 2, 32},
        C{"MultiHeadHeadDim64", 300, B::fixed, 70, A::first_default, 0, P::round_robin, 2, 2, 2, 64},
        C{"HeadDim16SingleKvHead", 300, B::fixed, 70, A::sinks, 2, P::balanced, 2, 4, 1, 16},
        C{"Bfloat16", 517, B::fixed, 100, A::first_default, 0, P::contiguous, 3, 8, 2, 32, true},
        C{"Bfloat16LargeAnchor", 517, B::equal, 6, A::first, 200, P::round_robin, 4, 4, 2, 32, true}),
    [](const ::testing::TestParamInfo<PhaseOneCase>& info) { return info.param.name; });
// clang-format on

TEST(PhaseOneScale, ExplicitScaleIsUsed)
{
    const StarAttention star(FixedBlocks{50}, FirstTokens{}, Contiguous{}, GatherToQueryHost{},
                             {.scale = 0.2f});
    const auto in = random_tokens<float>(160, 4, 2, 16);
    LocalCommunicator comm(2);
    const StarPlan plan = star.plan(160, 2);
    auto caches = comm.local<KVCache<float>>();
    const auto got = assemble(
        star.encode_context(comm, plan, caches, view(in.q), view(in.k), view(in.v)), {160, 4, 16});
    const ReferenceResult want =
        reference_attention(view(in.q), view(in.k), view(in.v),
                            block_sparse_visible(plan.blocks(), normalised(plan.anchors())), 0.2);
    expect_close(got, want, 16, 160, "scale 0.2");
}

// =============================================================================================
// Received anchors

template <class KV, class BlockPolicy, class PartitionPolicy>
void expect_received_anchor_identical(BlockPolicy block, std::optional<index> anchor,
                                      PartitionPolicy partition, index tokens, int hosts)
{
    const StarAttention compute(block, FirstTokens{anchor, AnchorSource::compute}, partition);
    const StarAttention receive(block, FirstTokens{anchor, AnchorSource::receive}, partition);
    const StarPlan plan_compute = compute.plan(tokens, hosts);
    const StarPlan plan_receive = receive.plan(tokens, hosts);
    EXPECT_EQ(plan_receive.anchor_source(), AnchorSource::receive);
    EXPECT_EQ(plan_compute.anchor_source(), AnchorSource::compute);
    ASSERT_EQ(plan_compute.anchors(), plan_receive.anchors());

    const auto in = random_tokens<KV>(tokens, 4, 2, 32);
    LocalCommunicator comm(hosts);
    auto caches_compute = comm.template local<KVCache<KV>>();
    auto caches_receive = comm.template local<KVCache<KV>>();
    const auto a = compute.encode_context(comm, plan_compute, caches_compute, view(in.q),
                                          view(in.k), view(in.v));
    const auto b = receive.encode_context(comm, plan_receive, caches_receive, view(in.q),
                                          view(in.k), view(in.v));
    const std::string what = "anchor " +
                             (anchor ? std::to_string(*anchor) : std::string("default")) + ", " +
                             std::to_string(hosts) + " hosts";
    for (int r = 0; r < hosts; ++r) {
        ASSERT_EQ(a[r].size(), b[r].size()) << what;
        for (std::size_t n = 0; n < a[r].size(); ++n) {
            EXPECT_EQ(a[r][n].tokens, b[r][n].tokens) << what;
            expect_bit_identical(a[r][n].state, b[r][n].state,
                                 what + ", host " + std::to_string(r) + ", block " +
                                     std::to_string(n));
        }
        ASSERT_EQ(caches_compute[r].tokens(), caches_receive[r].tokens());
        const Tensor3<KV> keys_compute = contiguous(caches_compute[r].keys());
        EXPECT_TRUE(same_bytes(keys_compute.data(), contiguous(caches_receive[r].keys()).data(),
                               sizeof(KV) * keys_compute.size()))
            << what << ", host " << r;
    }
}

TEST(ReceivedAnchor, BitIdenticalToComputedAnchor)
{
    expect_received_anchor_identical<float>(FixedBlocks{100}, std::nullopt, Contiguous{}, 517, 3);
    expect_received_anchor_identical<float>(FixedBlocks{100}, 37, RoundRobin{}, 517, 4);
    expect_received_anchor_identical<float>(FixedBlocks{100}, 100, BalancedTokens{}, 517, 2);
    expect_received_anchor_identical<float>(FixedBlocks{100}, std::nullopt, Contiguous{}, 517, 1);
    expect_received_anchor_identical<float>(FixedBlocks{100}, std::nullopt, Contiguous{}, 517, 8);
}

TEST(ReceivedAnchor, BitIdenticalWhenTheAnchorSpansSeveralBlocks)
{
    // a = 250 over blocks of 100: blocks 0, 1 and half of 2 are broadcast, by their owners.
    expect_received_anchor_identical<float>(FixedBlocks{100}, 250, Contiguous{}, 517, 3);
    expect_received_anchor_identical<float>(FixedBlocks{100}, 250, RoundRobin{}, 517, 4);
    expect_received_anchor_identical<float>(FixedBlocks{40}, 517, RoundRobin{}, 517, 5);
    expect_received_anchor_identical<Eigen::bfloat16>(FixedBlocks{64}, 200, RoundRobin{}, 517, 3);
}

TEST(ReceivedAnchor, SinkTokensToo)
{
    const StarAttention compute(FixedBlocks{64}, SinkTokens{4, AnchorSource::compute}, RoundRobin{});
    const StarAttention receive(FixedBlocks{64}, SinkTokens{4, AnchorSource::receive}, RoundRobin{});
    const auto in = random_tokens<float>(300, 4, 2, 16);
    LocalCommunicator comm(3);
    auto c1 = comm.local<KVCache<float>>(), c2 = comm.local<KVCache<float>>();
    const auto a = assemble(
        compute.encode_context(comm, compute.plan(300, 3), c1, view(in.q), view(in.k), view(in.v)),
        {300, 4, 16});
    const auto b = assemble(
        receive.encode_context(comm, receive.plan(300, 3), c2, view(in.q), view(in.k), view(in.v)),
        {300, 4, 16});
    expect_bit_identical(a, b, "sinks");
}

// =============================================================================================
// The caches after phase 1

template <class KV>
void expect_caches_hold_own_blocks(int hosts, PartitionKind partition_kind)
{
    const index tokens = 517, kv_heads = 2, d = 32;
    const auto in = random_tokens<KV>(tokens, 4, kv_heads, d);
    PhaseOneCase c{"caches", tokens, B::fixed, 64, A::first_default, 0, partition_kind, hosts};
    with_partition(c, [&](auto partition) {
        const StarAttention star(FixedBlocks{64}, FirstTokens{}, partition);
        const StarPlan plan = star.plan(tokens, hosts);
        LocalCommunicator comm(hosts);
        auto caches = comm.template local<KVCache<KV>>();
        (void)star.encode_context(comm, plan, caches, view(in.q), view(in.k), view(in.v));
        const index row = kv_heads * d;
        for (int r = 0; r < hosts; ++r) {
            const KVCache<KV>& cache = caches[r];
            // this host's blocks, concatenated in context order
            std::vector<KV> keys, values;
            index count = 0;
            for (std::size_t i = 0; i < plan.blocks().size(); ++i) {
                if (plan.owner()[i] != r)
                    continue;
                const TokenRange b = plan.blocks()[i];
                keys.insert(keys.end(), in.k.data() + b.begin * row, in.k.data() + b.end * row);
                values.insert(values.end(), in.v.data() + b.begin * row, in.v.data() + b.end * row);
                count += b.size();
            }
            EXPECT_EQ(cache.tokens(), count) << "host " << r;
            EXPECT_EQ(cache.bytes(), 2 * static_cast<std::size_t>(count * kv_heads * d) * sizeof(KV))
                << "host " << r;
            if (count == 0)
                continue;
            EXPECT_EQ(cache.kv_heads(), kv_heads);
            EXPECT_EQ(cache.head_dim(), d);
            const Tensor3<KV> cached_k = contiguous(cache.keys());
            const Tensor3<KV> cached_v = contiguous(cache.values());
            ASSERT_EQ(cached_k.size(), static_cast<index>(keys.size()));
            EXPECT_TRUE(same_bytes(cached_k.data(), keys.data(), sizeof(KV) * keys.size()))
                << "host " << r << " keys";
            EXPECT_TRUE(same_bytes(cached_v.data(), values.data(), sizeof(KV) * values.size()))
                << "host " << r << " values";
        }
    });
}

TEST(Caches, EachHostHoldsExactlyItsBlocksKeysAndValues)
{
    expect_caches_hold_own_blocks<float>(3, P::contiguous);
    expect_caches_hold_own_blocks<float>(3, P::round_robin); // non-adjacent blocks, in order
    expect_caches_hold_own_blocks<float>(4, P::balanced);
    expect_caches_hold_own_blocks<float>(16, P::contiguous); // 9 blocks: some hosts hold none
}

TEST(Caches, Bfloat16CachesStoreBfloat16)
{
    expect_caches_hold_own_blocks<Eigen::bfloat16>(3, P::round_robin);
    KVCache<Eigen::bfloat16> cache;
    const auto k = random_tensor<Eigen::bfloat16>(10, 2, 16);
    cache.append(view(k), view(k));
    EXPECT_EQ(cache.bytes(), 2u * 10 * 2 * 16 * 2);
}

// =============================================================================================
// Phase 2: the query and decoding, exact over every host's cache

// The context, a query of `query_tokens` and `steps` generated tokens, with the exact results
// of the query and of every decode step.
template <class KV>
struct Conversation {
    index context_tokens = 0, query_tokens = 0;
    index q_heads = 0, kv_heads = 0, head_dim = 0;
    Tokens<KV> context, query;
    std::vector<Tokens<KV>> steps;
    std::vector<ReferenceResult> exact; // query, then each step
    std::vector<index> key_counts;
};

template <class KV>
Conversation<KV> make_conversation(index context_tokens, index query_tokens, int steps,
                                   index q_heads = 8, index kv_heads = 2, index d = 32)
{
    Conversation<KV> c;
    c.context_tokens = context_tokens;
    c.query_tokens = query_tokens;
    c.q_heads = q_heads;
    c.kv_heads = kv_heads;
    c.head_dim = d;
    c.context = random_tokens<KV>(context_tokens, q_heads, kv_heads, d);
    c.query = random_tokens<KV>(query_tokens, q_heads, kv_heads, d);
    const double scale = 1.0 / std::sqrt(double(d));
    // The query sees every context key (it follows the whole context) and its own keys causally.
    Tensor3<KV> keys = concat_tokens(c.context.k, c.query.k);
    Tensor3<KV> values = concat_tokens(c.context.v, c.query.v);
    c.exact.push_back(reference_attention(
        view(c.query.q), view(keys), view(values),
        [&](index i, index j) { return j < context_tokens || j - context_tokens <= i; }, scale));
    c.key_counts.push_back(keys.dimension(0));
    // Each generated token sees everything before it and itself.
    for (int s = 0; s < steps; ++s) {
        c.steps.push_back(random_tokens<KV>(1, q_heads, kv_heads, d));
        keys = concat_tokens(keys, c.steps.back().k);
        values = concat_tokens(values, c.steps.back().v);
        c.exact.push_back(reference_attention(
            view(c.steps.back().q), view(keys), view(values), [](index, index) { return true; },
            scale));
        c.key_counts.push_back(keys.dimension(0));
    }
    return c;
}

// Runs phase 1, the query and the decode steps of `c` with `star` on `hosts` hosts; checks
// where the results are and which caches grow; returns the query host's results.
template <class KV, class Star>
std::vector<AttentionState> converse(const Star& star, const Conversation<KV>& c, int hosts,
                                     bool result_everywhere, const std::string& what)
{
    LocalCommunicator comm(hosts);
    const StarPlan plan = star.plan(c.context_tokens, hosts);
    auto caches = comm.template local<KVCache<KV>>();
    (void)star.encode_context(comm, plan, caches, view(c.context.q), view(c.context.k),
                              view(c.context.v));
    std::vector<index> phase_one_tokens;
    for (int r = 0; r < hosts; ++r)
        phase_one_tokens.push_back(caches[r].tokens());

    std::vector<AttentionState> results;
    const auto attend = [&](const Tokens<KV>& t) {
        const auto merged = star.attend_query(comm, plan, caches, view(t.q), view(t.k), view(t.v));
        const int qh = plan.query_host();
        if (!merged[qh].has_value()) {
            ADD_FAILURE() << what << ": no result at the query host " << qh;
            results.emplace_back();
            return;
        }
        results.push_back(*merged[qh]);
        if (!result_everywhere)
            return;
        for (int r = 0; r < hosts; ++r) {
            if (!merged[r].has_value()) {
                ADD_FAILURE() << what << ": no result at host " << r;
                continue;
            }
            // Every host merged the same partials; agreement to a fraction of the tolerance.
            const AttentionState& other = *merged[r];
            for (index n = 0; n < other.output.size(); ++n)
                ASSERT_NEAR(other.output.data()[n], merged[qh]->output.data()[n], 1e-6)
                    << what << ", host " << r;
            for (index n = 0; n < other.lse.size(); ++n)
                ASSERT_NEAR(other.lse.data()[n], merged[qh]->lse.data()[n], 1e-5)
                    << what << ", host " << r;
        }
    };
    attend(c.query);
    for (const auto& step : c.steps)
        attend(step);

    // Only the query host stores the query's and the generated tokens' K/V.
    for (int r = 0; r < hosts; ++r) {
        const index grown =
            r == plan.query_host() ? c.query_tokens + static_cast<index>(c.steps.size()) : 0;
        EXPECT_EQ(caches[r].tokens(), phase_one_tokens[static_cast<std::size_t>(r)] + grown)
            << what << ", host " << r;
    }
    return results;
}

template <class KV>
void expect_exact(const std::vector<AttentionState>& results, const Conversation<KV>& c,
                  const std::string& what)
{
    ASSERT_EQ(results.size(), c.exact.size()) << what;
    for (std::size_t s = 0; s < results.size(); ++s)
        expect_close(results[s], c.exact[s], c.head_dim, c.key_counts[s],
                     what + (s == 0 ? ", query" : ", decode step " + std::to_string(s)));
}

// Results of two merge policies agree to float tolerance (they merge the same partials, in a
// different order).
template <class KV>
void expect_agree(const std::vector<AttentionState>& a, const std::vector<AttentionState>& b,
                  const Conversation<KV>& c, const std::string& what)
{
    ASSERT_EQ(a.size(), b.size());
    for (std::size_t s = 0; s < a.size(); ++s) {
        const Tolerance tol = tolerance(c.exact[s], c.head_dim, c.key_counts[s]);
        ASSERT_EQ(a[s].output.size(), b[s].output.size());
        for (index n = 0; n < a[s].output.size(); ++n)
            ASSERT_NEAR(a[s].output.data()[n], b[s].output.data()[n], tol.output)
                << what << ", step " << s;
        for (index n = 0; n < a[s].lse.size(); ++n)
            ASSERT_NEAR(a[s].lse.data()[n], b[s].lse.data()[n], tol.lse) << what << ", step " << s;
    }
}

class PhaseTwo : public ::testing::TestWithParam<index> {};

TEST_P(PhaseTwo, QueryAndDecodeEqualExactAttentionForEveryMergeAndHostCount)
{
    const index query_tokens = GetParam();
    const auto c = make_conversation<float>(400, query_tokens, 5);
    for (const int hosts : {1, 2, 3, 5, 8}) {
        const std::string where =
            "Lq=" + std::to_string(query_tokens) + ", " + std::to_string(hosts) + " hosts, ";
        // 5 blocks of 80: with 8 hosts the query host (the last) holds none.
        const auto gather =
            converse(StarAttention(FixedBlocks{80}), c, hosts, false, where + "GatherToQueryHost");
        const auto all =
            converse(StarAttention(FixedBlocks{80}, FirstTokens{}, Contiguous{}, AllGather{}), c,
                     hosts, true, where + "AllGather");
        const auto tree =
            converse(StarAttention(FixedBlocks{80}, FirstTokens{}, Contiguous{}, TreeReduction{}),
                     c, hosts, false, where + "TreeReduction");
        expect_exact(gather, c, where + "GatherToQueryHost");
        expect_exact(all, c, where + "AllGather");
        expect_exact(tree, c, where + "TreeReduction");
        expect_agree(gather, all, c, where + "GatherToQueryHost vs AllGather");
        expect_agree(gather, tree, c, where + "GatherToQueryHost vs TreeReduction");
    }
}

INSTANTIATE_TEST_SUITE_P(QueryLengths, PhaseTwo, ::testing::Values<index>(1, 7, 40),
                         [](const ::testing::TestParamInfo<index>& info) {
                             return "Lq" + std::to_string(info.param);
                         });

TEST(PhaseTwoQueryHost, QueryHostNotTheLastOne)
{
    const auto c = make_conversation<float>(517, 7, 5);
    for (const int hosts : {2, 3, 5}) {
        const std::string where = std::to_string(hosts) + " hosts, ";
        expect_exact(converse(StarAttention(FixedBlocks{100}, FirstTokens{}, Contiguous{{0}}), c,
                              hosts, false, where + "query host 0, gather"),
                     c, where + "query host 0, gather");
        expect_exact(converse(StarAttention(FixedBlocks{100}, FirstTokens{}, Contiguous{{0}},
                                            TreeReduction{}),
                              c, hosts, false, where + "query host 0, tree"),
                     c, where + "query host 0, tree");
        expect_exact(
            converse(StarAttention(FixedBlocks{64}, FirstTokens{}, RoundRobin{{1}}, TreeReduction{}),
                     c, hosts, false, where + "query host 1, tree"),
            c, where + "query host 1, tree");
        expect_exact(
            converse(StarAttention(FixedBlocks{64}, SinkTokens{}, BalancedTokens{{1}}, AllGather{}),
                     c, hosts, true, where + "query host 1, all-gather"),
            c, where + "query host 1, all-gather");
    }
}

TEST(PhaseTwoVariants, Bfloat16Caches)
{
    const auto c = make_conversation<Eigen::bfloat16>(517, 7, 3);
    expect_exact(
        converse(StarAttention(FixedBlocks{100}, FirstTokens{}, RoundRobin{}, TreeReduction{}), c,
                 3, false, "bf16"),
        c, "bf16");
}

TEST(PhaseTwoVariants, ExplicitScale)
{
    // The context Q/K/V are as in make_conversation; the references are recomputed at 0.2.
    auto c = make_conversation<float>(300, 5, 2, 4, 2, 16);
    Tensor3<float> keys = concat_tokens(c.context.k, c.query.k);
    Tensor3<float> values = concat_tokens(c.context.v, c.query.v);
    c.exact[0] = reference_attention(
        view(c.query.q), view(keys), view(values),
        [&](index i, index j) { return j < 300 || j - 300 <= i; }, 0.2);
    for (std::size_t s = 0; s < c.steps.size(); ++s) {
        keys = concat_tokens(keys, c.steps[s].k);
        values = concat_tokens(values, c.steps[s].v);
        c.exact[s + 1] = reference_attention(
            view(c.steps[s].q), view(keys), view(values), [](index, index) { return true; }, 0.2);
    }
    expect_exact(converse(StarAttention(FixedBlocks{64}, FirstTokens{}, Contiguous{},
                                        GatherToQueryHost{}, {.scale = 0.2f}),
                          c, 3, false, "scale 0.2"),
                 c, "scale 0.2");
}

TEST(PhaseTwoVariants, PhaseOneApproximationDoesNotLeakIntoPhaseTwo)
{
    // Phase 2 is exact whatever the anchor: even with no anchor at all.
    const auto c = make_conversation<float>(400, 7, 2);
    expect_exact(converse(StarAttention(FixedBlocks{50}, NoAnchor{}, RoundRobin{}), c, 3, false,
                          "no anchor"),
                 c, "no anchor");
    expect_exact(
        converse(StarAttention(EqualBlocks{5}, PreviousBlock{}, BalancedTokens{}, TreeReduction{}),
                 c, 4, false, "previous block"),
        c, "previous block");
}

// =============================================================================================
// 64 in-process hosts

void expect_sixty_four_hosts_work(index block_size)
{
    const index tokens = 640, q_heads = 4, kv_heads = 2, d = 16;
    const int hosts = 64;
    const std::string what = "64 hosts, blocks of " + std::to_string(block_size);
    const auto c = make_conversation<float>(tokens, 7, 2, q_heads, kv_heads, d);

    // Phase 1 against the block-sparse reference.
    const StarAttention star(FixedBlocks{block_size}, FirstTokens{}, Contiguous{}, TreeReduction{});
    const StarPlan plan = star.plan(tokens, hosts);
    LocalCommunicator comm(hosts);
    auto caches = comm.local<KVCache<float>>();
    const auto outputs = star.encode_context(comm, plan, caches, view(c.context.q),
                                             view(c.context.k), view(c.context.v));
    std::vector<TokenRange> anchors;
    for (const auto& b : plan.blocks())
        anchors.push_back(b.begin == 0 ? TokenRange{}
                                       : TokenRange{0, std::min(block_size, b.begin)});
    const ReferenceResult want = reference_attention(
        view(c.context.q), view(c.context.k), view(c.context.v),
        block_sparse_visible(plan.blocks(), anchors), 1.0 / std::sqrt(double(d)));
    expect_close(assemble(outputs, {tokens, q_heads, d}), want, d, tokens, what + ", phase 1");

    // Phase 2 with every merge policy.
    expect_exact(converse(star, c, hosts, false, what + ", tree"), c, what + ", tree");
    expect_exact(converse(StarAttention(FixedBlocks{block_size}), c, hosts, false, what + ", gather"),
                 c, what + ", gather");
    expect_exact(
        converse(StarAttention(FixedBlocks{block_size}, FirstTokens{}, Contiguous{}, AllGather{}),
                 c, hosts, true, what + ", all-gather"),
        c, what + ", all-gather");
}

TEST(SixtyFourHosts, OneBlockPerHost)
{
    expect_sixty_four_hosts_work(10); // 64 blocks of 10
}

TEST(SixtyFourHosts, FewerBlocksThanHosts)
{
    expect_sixty_four_hosts_work(100); // 7 blocks: 57 hosts hold nothing
}

// A default-constructed StarAttention runs the paper's method: one block per host, the
// first block as every other block's anchor, the query on the last host. (It used to
// compile and then throw from every plan: the block size had no default.)
TEST(DefaultStarAttention, RunsThePapersMethod)
{
    const StarAttention<> star;
    const StarPlan plan = star.plan(103, 4);
    EXPECT_EQ(plan.blocks(), (std::vector<TokenRange>{{0, 26}, {26, 52}, {52, 78}, {78, 103}}));
    EXPECT_EQ(plan.owner(), (std::vector<int>{0, 1, 2, 3}));
    EXPECT_EQ(plan.anchors(), (std::vector<TokenRange>{{}, {0, 26}, {0, 26}, {0, 26}}));
    EXPECT_EQ(plan.query_host(), 3);

    const auto c = make_conversation<float>(103, 5, 2, 4, 2, 16);
    LocalCommunicator comm(4);
    auto caches = comm.local<KVCache<float>>();
    const auto outputs = star.encode_context(comm, plan, caches, view(c.context.q),
                                             view(c.context.k), view(c.context.v));
    const ReferenceResult want = reference_attention(
        view(c.context.q), view(c.context.k), view(c.context.v),
        block_sparse_visible(plan.blocks(), plan.anchors()), 1.0 / std::sqrt(16.0));
    expect_close(assemble(outputs, {103, 4, 16}), want, 16, 52, "default, phase 1");
    expect_exact(converse(star, c, 4, false, "default"), c, "default");
    // A context shorter than the hosts: one token per block, some hosts hold none.
    EXPECT_EQ(star.plan(2, 4).blocks(), (std::vector<TokenRange>{{0, 1}, {1, 2}}));
}

// =============================================================================================
// bf16 queries

// One layer of a bf16 model: its context and its query steps, the queries `Q`.
template <class Q>
struct Bf16Layer {
    Tensor3<Q> q;
    Tensor3<Eigen::bfloat16> k, v;
    std::vector<Tensor3<Q>> step_q;
    std::vector<Tensor3<Eigen::bfloat16>> step_k, step_v;
};

// Both phases of `star` on `hosts` in-process hosts: the assembled phase-1 outputs, then the
// query host's result of each step.
template <class S, class Q>
std::vector<AttentionState> run_both_phases(const S& star, int hosts, const Bf16Layer<Q>& layer)
{
    const Shape shape{layer.q.dimension(0), layer.q.dimension(1), layer.q.dimension(2)};
    const StarPlan plan = star.plan(shape.tokens, hosts);
    LocalCommunicator comm(hosts);
    auto caches = comm.local<KVCache<Eigen::bfloat16>>();
    std::vector<AttentionState> results{assemble(
        star.encode_context(comm, plan, caches, view(layer.q), view(layer.k), view(layer.v)), shape)};
    for (std::size_t s = 0; s < layer.step_q.size(); ++s)
        results.push_back(*star.attend_query(comm, plan, caches, view(layer.step_q[s]),
                                             view(layer.step_k[s]),
                                             view(layer.step_v[s]))[plan.query_host()]);
    return results;
}

// A model that runs in bf16 projects bf16 queries: both phases take them as the kernel does,
// each result bit for bit that of the same queries widened to float, with a computed and a
// received anchor, and under a positional variant (which places each cache run on its own).
TEST(Bfloat16Queries, BothPhasesGiveTheResultOfThoseQueriesWidened)
{
    const index context = 517, q_heads = 8, kv_heads = 2, d = 32;
    Bf16Layer<Eigen::bfloat16> bf16{random_tensor<Eigen::bfloat16>(context, q_heads, d),
                                    random_tensor<Eigen::bfloat16>(context, kv_heads, d),
                                    random_tensor<Eigen::bfloat16>(context, kv_heads, d),
                                    {},
                                    {},
                                    {}};
    for (const index tokens : {5, 1, 1}) {
        bf16.step_q.push_back(random_tensor<Eigen::bfloat16>(tokens, q_heads, d));
        bf16.step_k.push_back(random_tensor<Eigen::bfloat16>(tokens, kv_heads, d));
        bf16.step_v.push_back(random_tensor<Eigen::bfloat16>(tokens, kv_heads, d));
    }
    Bf16Layer<float> widened{bf16.q.cast<float>(), bf16.k, bf16.v, {}, bf16.step_k, bf16.step_v};
    for (const auto& q : bf16.step_q)
        widened.step_q.push_back(q.cast<float>());

    const auto expect_same = [&](const auto& star, int hosts, const std::string& what) {
        const auto got = run_both_phases(star, hosts, bf16);
        const auto want = run_both_phases(star, hosts, widened);
        ASSERT_EQ(got.size(), want.size());
        for (std::size_t n = 0; n < got.size(); ++n)
            EXPECT_TRUE(same_bits(got[n], want[n]))
                << what << (n == 0 ? ", phase 1" : ", step " + std::to_string(n));
    };
    expect_same(StarAttention(FixedBlocks{100}, FirstTokens{}, RoundRobin{}, TreeReduction{}), 3,
                "computed anchor, tree");
    expect_same(StarAttention(FixedBlocks{100}, FirstTokens{{}, AnchorSource::receive},
                              Contiguous{}, GatherToQueryHost{}, {}, SlidingWindow{150}),
                4, "received anchor, sliding window");
}

// =============================================================================================
// Bad configurations

TEST(StarErrors, BlockSizeZero)
{
    expect_error([] { (void)StarAttention(FixedBlocks{0}).plan(100, 2); },
                 "block size must be at least 1");
    expect_error([] { (void)StarAttention(EqualBlocks{0}).plan(100, 2); },
                 "block count must be at least 1");
}

TEST(StarErrors, AnchorLargerThanTheContext)
{
    expect_error([] { (void)StarAttention(FixedBlocks{10}, FirstTokens{101}).plan(100, 2); },
                 "larger than the context");
    expect_error([] { (void)StarAttention(FixedBlocks{10}, FirstTokens{0}).plan(100, 2); },
                 "anchor size must be at least 1");
    expect_error([] { (void)StarAttention(FixedBlocks{10}, SinkTokens{0}).plan(100, 2); },
                 "must be at least 1");
}

TEST(StarErrors, ZeroHostsOrEmptyContext)
{
    expect_error([] { (void)StarAttention(FixedBlocks{10}).plan(100, 0); },
                 "number of hosts must be at least 1");
    expect_error([] { (void)StarAttention(FixedBlocks{10}).plan(100, -1); }, "at least 1");
    expect_error([] { (void)StarAttention(FixedBlocks{10}).plan(0, 2); },
                 "context must hold at least 1 token");
}

TEST(StarErrors, QueryHostOutOfRange)
{
    expect_error(
        [] { (void)StarAttention(FixedBlocks{10}, FirstTokens{}, Contiguous{{2}}).plan(100, 2); },
        "query host 2 is out of range");
    expect_error(
        [] { (void)StarAttention(FixedBlocks{10}, FirstTokens{}, RoundRobin{{-1}}).plan(100, 2); },
        "query host");
}

TEST(StarErrors, PlanForAnotherNumberOfHosts)
{
    const StarAttention star(FixedBlocks{10});
    const auto in = random_tokens<float>(100, 4, 2, 16);
    const StarPlan plan = star.plan(100, 4);
    LocalCommunicator comm(3);
    auto caches = comm.local<KVCache<float>>();
    expect_error(
        [&] { (void)star.encode_context(comm, plan, caches, view(in.q), view(in.k), view(in.v)); },
        "the plan is for 4 hosts but the communicator has 3");
    const auto query = random_tokens<float>(2, 4, 2, 16);
    expect_error(
        [&] {
            (void)star.attend_query(comm, plan, caches, view(query.q), view(query.k), view(query.v));
        },
        "the plan is for 4 hosts");
}

TEST(StarErrors, ContextLengthDiffersFromThePlan)
{
    const StarAttention star(FixedBlocks{10});
    const StarPlan plan = star.plan(100, 2);
    LocalCommunicator comm(2);
    auto caches = comm.local<KVCache<float>>();
    const auto shorter = random_tokens<float>(90, 4, 2, 16);
    expect_error(
        [&] {
            (void)star.encode_context(comm, plan, caches, view(shorter.q), view(shorter.k),
                                      view(shorter.v));
        },
        "the plan is for 100 context tokens, q has 90");
    const auto longer = random_tokens<float>(120, 4, 2, 16);
    expect_error(
        [&] {
            (void)star.encode_context(comm, plan, caches, view(longer.q), view(longer.k),
                                      view(longer.v));
        },
        "the plan is for 100 context tokens");
}

TEST(StarErrors, QueryWithOtherKvHeadsThanTheCache)
{
    const StarAttention star(FixedBlocks{10});
    const auto in = random_tokens<float>(100, 4, 2, 16);
    const StarPlan plan = star.plan(100, 2);
    LocalCommunicator comm(2);
    auto caches = comm.local<KVCache<float>>();
    (void)star.encode_context(comm, plan, caches, view(in.q), view(in.k), view(in.v));
    const auto four_heads = random_tokens<float>(3, 4, 4, 16); // 4 kv heads, cache has 2
    expect_error(
        [&] {
            (void)star.attend_query(comm, plan, caches, view(four_heads.q), view(four_heads.k),
                                    view(four_heads.v));
        },
        "kv heads");
    const auto odd = random_tokens<float>(3, 3, 2, 16); // 3 query heads over 2 kv heads
    expect_error(
        [&] { (void)star.attend_query(comm, plan, caches, view(odd.q), view(odd.k), view(odd.v)); },
        "kv heads");
}

// Blocks go to hosts 1..H-1 in turn; host 0, the query host, holds no context.
struct QueryHostWithoutContext {
    [[nodiscard]] std::vector<int> assign(std::span<const TokenRange> blocks, int hosts) const
    {
        std::vector<int> owner;
        for (std::size_t i = 0; i < blocks.size(); ++i)
            owner.push_back(1 + static_cast<int>(i % static_cast<std::size_t>(hosts - 1)));
        return owner;
    }
    [[nodiscard]] int query_host(int) const { return 0; }
};
static_assert(Partition<QueryHostWithoutContext>);

// Across processes each host holds only its own pieces of the context, and nothing but the
// agreement sees another host's shapes. A host whose layer has other heads would read a
// received anchor with the wrong layout (wrong results, no error).
TEST(StarErrors, HostsWhoseContextsDifferInShapeDisagree)
{
    const StarAttention star(FixedBlocks{10}, FirstTokens{{}, AnchorSource::receive});
    const StarPlan plan = star.plan(30, 3);
    const auto in = random_tokens<float>(30, 4, 2, 8);
    const auto narrow = random_tokens<float>(30, 4, 1, 8); // one kv head, not two
    const auto contexts_with = [&](const auto& last_host) {
        PerHost<HostContext<float>> contexts(0, 3);
        for (int r = 0; r < 3; ++r) {
            const auto& t = r == 2 ? last_host : in;
            for (const std::size_t i : plan.blocks_of(r)) {
                const TokenRange b = plan.blocks()[i];
                contexts[r].add(b.begin, token_slice(view(t.q), b.begin, b.size()),
                                token_slice(view(t.k), b.begin, b.size()),
                                token_slice(view(t.v), b.begin, b.size()));
            }
        }
        return contexts;
    };
    LocalCommunicator comm(3);
    auto caches = comm.local<KVCache<float>>();
    expect_error([&] { (void)star.encode_context(comm, plan, caches, contexts_with(narrow)); },
                 "StarAttention::encode_context: the hosts disagree on the number of kv heads: "
                 "host 0 has 2, host 2 has 1");
    for (int r = 0; r < 3; ++r)
        EXPECT_EQ(caches[r].tokens(), 0) << "host " << r;
    (void)star.encode_context(comm, plan, caches, contexts_with(in)); // the same, agreeing
    EXPECT_EQ(caches[2].tokens(), 10);
}

// A host that holds no piece of the context has no shapes to compare: it agrees.
TEST(StarErrors, AHostWithoutContextAgreesWithTheOthers)
{
    const StarAttention star(FixedBlocks{10}, FirstTokens{}, QueryHostWithoutContext{});
    const StarPlan plan = star.plan(30, 3);
    const auto in = random_tokens<float>(30, 4, 2, 8);
    PerHost<HostContext<float>> contexts(0, 3);
    for (int r = 1; r < 3; ++r)
        contexts[r] = HostContext<float>(view(in.q), view(in.k), view(in.v));
    LocalCommunicator comm(3);
    auto caches = comm.local<KVCache<float>>();
    (void)star.encode_context(comm, plan, caches, contexts);
    EXPECT_EQ(caches[0].tokens(), 0);
    EXPECT_EQ(caches[1].tokens() + caches[2].tokens(), 30);
}


TEST(StarErrors, RejectedQueryLeavesEveryCacheUnchanged)
{
    // The query host (0) holds no context; hosts 1 and 2 hold 2 kv heads. A query whose K/V
    // have 4 kv heads is rejected, and must not leave its K/V behind in the query host's
    // cache: the next, well-formed query must still work. One thread, so that host 0's step
    // runs before the steps that throw (with more threads that order, and so whether the
    // damage is done, is up to the scheduler).
    const StarAttention star(FixedBlocks{50}, FirstTokens{}, QueryHostWithoutContext{});
    const auto in = random_tokens<float>(100, 4, 2, 16);
    const StarPlan plan = star.plan(100, 3);
    LocalCommunicator comm(3, 1);
    auto caches = comm.local<KVCache<float>>();
    (void)star.encode_context(comm, plan, caches, view(in.q), view(in.k), view(in.v));
    ASSERT_EQ(caches[0].tokens(), 0);

    const auto four_heads = random_tokens<float>(3, 4, 4, 16);
    expect_error(
        [&] {
            (void)star.attend_query(comm, plan, caches, view(four_heads.q), view(four_heads.k),
                                    view(four_heads.v));
        },
        "kv heads");
    EXPECT_EQ(caches[1].tokens(), 50);
    EXPECT_EQ(caches[2].tokens(), 50);
    EXPECT_EQ(caches[0].tokens(), 0) << "the rejected query's K/V were appended to the query "
                                        "host's cache";

    const auto query = random_tokens<float>(3, 4, 2, 16);
    try {
        const auto merged =
            star.attend_query(comm, plan, caches, view(query.q), view(query.k), view(query.v));
        ASSERT_TRUE(merged[0].has_value());
        const Tensor3<float> keys = concat_tokens(in.k, query.k);
        const Tensor3<float> values = concat_tokens(in.v, query.v);
        const ReferenceResult want = reference_attention(
            view(query.q), view(keys), view(values),
            [](index i, index j) { return j < 100 || j - 100 <= i; }, 0.25);
        expect_close(*merged[0], want, 16, 103, "query after a rejected one");
    } catch (const star::error& e) {
        ADD_FAILURE() << "a well-formed query after a rejected one throws: " << e.what();
    }
}

TEST(StarErrors, QueryAndItsKeysOfDifferentLengths)
{
    const StarAttention star(FixedBlocks{10});
    const StarPlan plan = star.plan(100, 2);
    LocalCommunicator comm(2);
    auto caches = comm.local<KVCache<float>>();
    const auto q = random_tensor<float>(3, 4, 16);
    const auto k = random_tensor<float>(4, 2, 16);
    expect_error([&] { (void)star.attend_query(comm, plan, caches, view(q), view(k), view(k)); },
                 "q has 3 tokens but k has 4");
}

} // namespace
} // namespace star::test
