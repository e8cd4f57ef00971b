// Block, Anchor and Partition policies on their own, and a user-defined policy of every family
// (Block, Anchor, Partition, Merge) inside StarAttention.

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "expect_error.hpp"
#include "reference.hpp"

namespace star::test {
namespace {

std::vector<index> sizes_of(const std::vector<TokenRange>& blocks)
{
    std::vector<index> sizes;
    for (const auto& b : blocks)
        sizes.push_back(b.size());
    return sizes;
}

// The Block contract: non-empty, consecutive ranges covering [0, tokens) in order.
void expect_tiling(const std::vector<TokenRange>& blocks, index tokens)
{
    index expected_begin = 0;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
        EXPECT_EQ(blocks[i].begin, expected_begin) << "block " << i;
        EXPECT_FALSE(blocks[i].empty()) << "block " << i;
        expected_begin = blocks[i].end;
    }
    EXPECT_EQ(expected_begin, tokens);
}

template <class A>
std::vector<TokenRange> anchors_of(const A& anchor, const std::vector<TokenRange>& blocks)
{
    std::vector<TokenRange> anchors;
    for (std::size_t i = 0; i < blocks.size(); ++i)
        anchors.push_back(anchor.anchor_for(blocks, static_cast<index>(i)));
    return anchors;
}

std::vector<index> loads(const std::vector<TokenRange>& blocks, const std::vector<int>& owner,
                         int hosts)
{
    std::vector<index> load(static_cast<std::size_t>(hosts), 0);
    for (std::size_t i = 0; i < blocks.size(); ++i)
        load[static_cast<std::size_t>(owner[i])] += blocks[i].size();
    return load;
}

// ---------------------------------------------------------------------------------------------
// FixedBlocks

TEST(FixedBlocks, LastBlockIsShortWhenTheSizeDoesNotDivideTheContext)
{
    const auto blocks = FixedBlocks{100}.blocks(517);
    expect_tiling(blocks, 517);
    EXPECT_EQ(sizes_of(blocks), (std::vector<index>{100, 100, 100, 100, 100, 17}));
}

TEST(FixedBlocks, ExactDivisionGivesEqualBlocks)
{
    const auto blocks = FixedBlocks{100}.blocks(500);
    expect_tiling(blocks, 500);
    EXPECT_EQ(sizes_of(blocks), std::vector<index>(5, 100));
    EXPECT_EQ(sizes_of(FixedBlocks{1}.blocks(5)), std::vector<index>(5, 1));
}

TEST(FixedBlocks, ContextShorterThanOneBlockIsOneBlock)
{
    EXPECT_EQ(FixedBlocks{100}.blocks(37), (std::vector<TokenRange>{{0, 37}}));
    EXPECT_EQ(FixedBlocks{100}.blocks(100), (std::vector<TokenRange>{{0, 100}}));
    EXPECT_EQ(FixedBlocks{100}.blocks(1), (std::vector<TokenRange>{{0, 1}}));
}

TEST(FixedBlocks, EmptyContextHasNoBlocks) { EXPECT_TRUE(FixedBlocks{10}.blocks(0).empty()); }

TEST(FixedBlocks, EveryBlockButTheLastHasTheGivenSize)
{
    for (index size = 1; size <= 12; ++size)
        for (index tokens = 1; tokens <= 50; ++tokens) {
            const auto blocks = FixedBlocks{size}.blocks(tokens);
            expect_tiling(blocks, tokens);
            ASSERT_EQ(static_cast<index>(blocks.size()), (tokens + size - 1) / size)
                << "size " << size << ", " << tokens << " tokens";
            for (std::size_t i = 0; i + 1 < blocks.size(); ++i)
                EXPECT_EQ(blocks[i].size(), size);
            EXPECT_EQ(blocks.back().size(), tokens - (index(blocks.size()) - 1) * size);
        }
}

// Unset, the sizes follow the host count: one near-equal block per host.
TEST(FixedBlocks, UnsetSizeGivesOneBlockPerHost)
{
    EXPECT_EQ(FixedBlocks{}.blocks(10, 4),
              (std::vector<TokenRange>{{0, 3}, {3, 6}, {6, 8}, {8, 10}}));
    EXPECT_EQ(FixedBlocks{}.blocks(3, 8), (std::vector<TokenRange>{{0, 1}, {1, 2}, {2, 3}}));
    EXPECT_EQ(FixedBlocks{5}.blocks(12, 4), FixedBlocks{5}.blocks(12)); // a set size wins
    expect_error([] { (void)FixedBlocks{}.blocks(10); }, "FixedBlocks: no block size set");
    expect_error([] { (void)FixedBlocks{}.blocks(10, 0); },
                 "the number of hosts must be at least 1");
}

TEST(FixedBlocks, SizeBelowOneThrows)
{
    for (const index size : {0, -1, -100})
        expect_error([&] { (void)FixedBlocks{size}.blocks(517); }, "block size must be at least 1");
}

// ---------------------------------------------------------------------------------------------
// EqualBlocks

TEST(EqualBlocks, SizesDifferByAtMostOneAndTheFirstBlocksAreLonger)
{
    // 517 = 5 * 103 + 2: two blocks of 104, then three of 103.
    const auto blocks = EqualBlocks{5}.blocks(517);
    expect_tiling(blocks, 517);
    EXPECT_EQ(sizes_of(blocks), (std::vector<index>{104, 104, 103, 103, 103}));
    EXPECT_EQ(sizes_of(EqualBlocks{4}.blocks(400)), std::vector<index>(4, 100));
}

TEST(EqualBlocks, SweepOfCountsAndLengths)
{
    for (index tokens = 1; tokens <= 60; ++tokens)
        for (index count = 1; count <= tokens; ++count) {
            const auto blocks = EqualBlocks{count}.blocks(tokens);
            expect_tiling(blocks, tokens);
            ASSERT_EQ(static_cast<index>(blocks.size()), count);
            const auto sizes = sizes_of(blocks);
            const auto [smallest, largest] = std::minmax_element(sizes.begin(), sizes.end());
            EXPECT_LE(*largest - *smallest, 1);
            // exactly the first `tokens mod count` blocks are the longer ones
            for (index i = 0; i < count; ++i)
                EXPECT_EQ(sizes[static_cast<std::size_t>(i)],
                          tokens / count + (i < tokens % count ? 1 : 0))
                    << tokens << " tokens in " << count << " blocks, block " << i;
        }
}

TEST(EqualBlocks, MoreBlocksThanTokensGivesOneTokenBlocks)
{
    const auto blocks = EqualBlocks{10}.blocks(7);
    expect_tiling(blocks, 7);
    EXPECT_EQ(sizes_of(blocks), std::vector<index>(7, 1));
    EXPECT_EQ(EqualBlocks{1000}.blocks(1), (std::vector<TokenRange>{{0, 1}}));
}

TEST(EqualBlocks, UnsetCountGivesOneBlockPerHost)
{
    EXPECT_EQ(EqualBlocks{}.blocks(10, 3), (std::vector<TokenRange>{{0, 4}, {4, 7}, {7, 10}}));
    EXPECT_EQ(EqualBlocks{2}.blocks(10, 3), EqualBlocks{2}.blocks(10));
    expect_error([] { (void)EqualBlocks{}.blocks(10); }, "EqualBlocks: no block count set");
}

TEST(EqualBlocks, CountBelowOneThrows)
{
    for (const index count : {0, -1})
        expect_error([&] { (void)EqualBlocks{count}.blocks(517); },
                     "block count must be at least 1");
}

// ---------------------------------------------------------------------------------------------
// Anchors. Blocks of 100 over 517 tokens: [0,100) ... [400,500), [500,517).

const std::vector<TokenRange> hundreds = FixedBlocks{100}.blocks(517);

TEST(FirstTokens, DefaultAnchorIsAsLargeAsTheFirstBlock)
{
    const auto anchors = anchors_of(FirstTokens{}, hundreds);
    EXPECT_TRUE(anchors[0].empty()) << "block 0 has no anchor";
    for (std::size_t i = 1; i < anchors.size(); ++i)
        EXPECT_EQ(anchors[i], (TokenRange{0, 100})) << "block " << i;
    EXPECT_EQ(FirstTokens{}.source(), AnchorSource::compute);

    // Not the block size policy's parameter but the first block's actual size.
    const auto equal = EqualBlocks{5}.blocks(517); // 104, 104, 103, 103, 103
    const auto equal_anchors = anchors_of(FirstTokens{}, equal);
    EXPECT_TRUE(equal_anchors[0].empty());
    for (std::size_t i = 1; i < equal.size(); ++i)
        EXPECT_EQ(equal_anchors[i], (TokenRange{0, 104})) << "block " << i;
}

TEST(FirstTokens, AnchorSmallerThanTheBlock)
{
    const auto anchors = anchors_of(FirstTokens{37}, hundreds);
    EXPECT_TRUE(anchors[0].empty());
    for (std::size_t i = 1; i < anchors.size(); ++i)
        EXPECT_EQ(anchors[i], (TokenRange{0, 37})) << "block " << i;
}

TEST(FirstTokens, AnchorEqualToTheBlockIsTheDefault)
{
    EXPECT_EQ(anchors_of(FirstTokens{100}, hundreds), anchors_of(FirstTokens{}, hundreds));
}

TEST(FirstTokens, AnchorLargerThanTheBlockIsClippedToTheBlockStart)
{
    const auto anchors = anchors_of(FirstTokens{250}, hundreds);
    EXPECT_TRUE(anchors[0].empty());
    EXPECT_EQ(anchors[1], (TokenRange{0, 100}));
    EXPECT_EQ(anchors[2], (TokenRange{0, 200}));
    for (std::size_t i = 3; i < anchors.size(); ++i)
        EXPECT_EQ(anchors[i], (TokenRange{0, 250})) << "block " << i;
}

TEST(FirstTokens, SourceIsWhatWasAskedFor)
{
    EXPECT_EQ((FirstTokens{std::nullopt, AnchorSource::receive}.source()), AnchorSource::receive);
    EXPECT_EQ((FirstTokens{50, AnchorSource::compute}.source()), AnchorSource::compute);
}

TEST(SinkTokens, FirstFewTokensClippedToTheBlockStart)
{
    const auto anchors = anchors_of(SinkTokens{}, hundreds);
    EXPECT_TRUE(anchors[0].empty());
    for (std::size_t i = 1; i < anchors.size(); ++i)
        EXPECT_EQ(anchors[i], (TokenRange{0, 4})) << "block " << i << ": 4 sinks by default";

    const auto pairs = FixedBlocks{2}.blocks(9);
    const auto clipped = anchors_of(SinkTokens{3}, pairs);
    EXPECT_TRUE(clipped[0].empty());
    EXPECT_EQ(clipped[1], (TokenRange{0, 2}));
    for (std::size_t i = 2; i < clipped.size(); ++i)
        EXPECT_EQ(clipped[i], (TokenRange{0, 3}));
    EXPECT_EQ((SinkTokens{4, AnchorSource::receive}.source()), AnchorSource::receive);
}

TEST(NoAnchor, EveryBlockSeesOnlyItself)
{
    for (const auto& a : anchors_of(NoAnchor{}, hundreds))
        EXPECT_TRUE(a.empty());
    EXPECT_EQ(NoAnchor{}.source(), AnchorSource::compute);
}

TEST(PreviousBlock, EachBlockSeesTheOneBeforeIt)
{
    const auto anchors = anchors_of(PreviousBlock{}, hundreds);
    EXPECT_TRUE(anchors[0].empty());
    for (std::size_t i = 1; i < anchors.size(); ++i)
        EXPECT_EQ(anchors[i], hundreds[i - 1]) << "block " << i;
    EXPECT_EQ(PreviousBlock{}.source(), AnchorSource::compute);
}

TEST(AnchorCheck, AcceptsWhatTheContextCanSatisfy)
{
    EXPECT_NO_THROW(FirstTokens{}.check(517));
    EXPECT_NO_THROW(FirstTokens{517}.check(517));
    EXPECT_NO_THROW(FirstTokens{1}.check(1));
    EXPECT_NO_THROW(SinkTokens{4}.check(4));
    EXPECT_NO_THROW(NoAnchor{}.check(1));
    EXPECT_NO_THROW(PreviousBlock{}.check(1));
}

TEST(AnchorCheck, FirstTokensLargerThanTheContextThrows)
{
    expect_error([] { FirstTokens{518}.check(517); }, "larger than the context");
}

TEST(AnchorCheck, FirstTokensBelowOneThrows)
{
    expect_error([] { FirstTokens{0}.check(517); }, "anchor size must be at least 1");
    expect_error([] { FirstTokens{-3}.check(517); }, "anchor size must be at least 1");
}

TEST(AnchorCheck, SinkTokensBelowOneOrBeyondTheContextThrows)
{
    expect_error([] { SinkTokens{0}.check(517); }, "must be at least 1");
    expect_error([] { SinkTokens{5}.check(4); }, "more than the context");
}

// ---------------------------------------------------------------------------------------------
// Partitions

std::vector<TokenRange> blocks_of_sizes(const std::vector<index>& sizes)
{
    std::vector<TokenRange> blocks;
    index begin = 0;
    for (const index s : sizes) {
        blocks.push_back({begin, begin + s});
        begin += s;
    }
    return blocks;
}

TEST(Contiguous, RunsOfBlocksWithTheFirstHostsGettingOneMore)
{
    for (index n = 0; n <= 20; ++n)
        for (int hosts = 1; hosts <= 10; ++hosts) {
            const auto blocks = FixedBlocks{3}.blocks(3 * n);
            const auto owner = Contiguous{}.assign(blocks, hosts);
            ASSERT_EQ(owner.size(), blocks.size());
            EXPECT_TRUE(std::is_sorted(owner.begin(), owner.end()))
                << "runs must be contiguous: " << n << " blocks, " << hosts << " hosts";
            for (int h = 0; h < hosts; ++h)
                EXPECT_EQ(std::count(owner.begin(), owner.end(), h),
                          n / hosts + (h < n % hosts ? 1 : 0))
                    << n << " blocks on " << hosts << " hosts, host " << h;
        }
    // 10 blocks on 3 hosts: 4, 3, 3
    EXPECT_EQ(Contiguous{}.assign(FixedBlocks{1}.blocks(10), 3),
              (std::vector<int>{0, 0, 0, 0, 1, 1, 1, 2, 2, 2}));
}

TEST(Contiguous, MoreHostsThanBlocksLeavesTheLastHostsEmpty)
{
    EXPECT_EQ(Contiguous{}.assign(FixedBlocks{200}.blocks(517), 8), (std::vector<int>{0, 1, 2}));
}

TEST(RoundRobin, BlockIGoesToHostIModH)
{
    const auto blocks = FixedBlocks{10}.blocks(517);
    for (const int hosts : {1, 3, 8, 100}) {
        const auto owner = RoundRobin{}.assign(blocks, hosts);
        ASSERT_EQ(owner.size(), blocks.size());
        for (std::size_t i = 0; i < owner.size(); ++i)
            EXPECT_EQ(owner[i], static_cast<int>(i) % hosts);
    }
}

TEST(BalancedTokens, LargestBlocksFirstToTheLightestHostTiesToTheLowerRank)
{
    // sizes 10, 50, 30, 20 on 2 hosts: 50 -> 0, 30 -> 1, 20 -> 1 (30 < 50), 10 -> 0 (tie 50/50)
    EXPECT_EQ(BalancedTokens{}.assign(blocks_of_sizes({10, 50, 30, 20}), 2),
              (std::vector<int>{0, 0, 1, 1}));
    // equal blocks: plain rotation
    EXPECT_EQ(BalancedTokens{}.assign(blocks_of_sizes({5, 5, 5, 5, 5, 5}), 3),
              (std::vector<int>{0, 1, 2, 0, 1, 2}));
}

TEST(BalancedTokens, LoadSpreadIsAtMostTheLargestBlock)
{
    std::uniform_int_distribution<index> size(1, 100);
    std::uniform_int_distribution<int> count(1, 30);
    for (int trial = 0; trial < 300; ++trial) {
        std::vector<index> sizes(static_cast<std::size_t>(count(rng())));
        for (auto& s : sizes)
            s = size(rng());
        const auto blocks = blocks_of_sizes(sizes);
        for (int hosts = 1; hosts <= 8; ++hosts) {
            const auto owner = BalancedTokens{}.assign(blocks, hosts);
            ASSERT_EQ(owner.size(), blocks.size());
            for (const int o : owner)
                ASSERT_TRUE(o >= 0 && o < hosts);
            const auto load = loads(blocks, owner, hosts);
            const auto [lightest, heaviest] = std::minmax_element(load.begin(), load.end());
            EXPECT_LE(*heaviest - *lightest, *std::max_element(sizes.begin(), sizes.end()))
                << sizes.size() << " blocks on " << hosts << " hosts";
        }
    }
}

TEST(BalancedTokens, EvensOutWhatContiguousLeavesUneven)
{
    // One huge block and many small ones: Contiguous puts the huge one with others.
    const auto blocks = blocks_of_sizes({400, 10, 10, 10, 10, 10, 10, 10, 10});
    const auto balanced = loads(blocks, BalancedTokens{}.assign(blocks, 2), 2);
    EXPECT_EQ(balanced, (std::vector<index>{400, 80}));
    const auto contiguous = loads(blocks, Contiguous{}.assign(blocks, 2), 2);
    EXPECT_EQ(contiguous, (std::vector<index>{440, 40}));
}

TEST(Partitions, MoreHostsThanBlocksLeavesSomeHostsEmpty)
{
    const auto blocks = FixedBlocks{200}.blocks(517); // 3 blocks
    for (const auto& owner : {Contiguous{}.assign(blocks, 8), RoundRobin{}.assign(blocks, 8),
                              BalancedTokens{}.assign(blocks, 8)}) {
        ASSERT_EQ(owner.size(), 3u);
        const auto load = loads(blocks, owner, 8);
        EXPECT_EQ(std::count(load.begin(), load.end(), 0), 5);
    }
}

TEST(Partitions, ZeroOrNegativeHostsAreRejected)
{
    const auto blocks = FixedBlocks{200}.blocks(517);
    for (const int hosts : {0, -3}) {
        expect_error([&] { (void)Contiguous{}.assign(blocks, hosts); }, "at least 1");
        expect_error([&] { (void)RoundRobin{}.assign(blocks, hosts); }, "at least 1");
        expect_error([&] { (void)BalancedTokens{}.assign(blocks, hosts); }, "at least 1");
    }
}

TEST(QueryHost, DefaultIsTheLastHost)
{
    for (const int hosts : {1, 2, 5}) {
        EXPECT_EQ(Contiguous{}.query_host(hosts), hosts - 1);
        EXPECT_EQ(RoundRobin{}.query_host(hosts), hosts - 1);
        EXPECT_EQ(BalancedTokens{}.query_host(hosts), hosts - 1);
    }
}

TEST(QueryHost, ExplicitRank)
{
    EXPECT_EQ(Contiguous{{0}}.query_host(4), 0);
    EXPECT_EQ(RoundRobin{{2}}.query_host(4), 2);
    EXPECT_EQ(BalancedTokens{{3}}.query_host(4), 3);
}

TEST(QueryHost, OutOfRangeThrows)
{
    expect_error([] { (void)Contiguous{{4}}.query_host(4); }, "query host 4 is out of range");
    expect_error([] { (void)RoundRobin{{-1}}.query_host(4); }, "query host -1 is out of range");
    expect_error([] { (void)BalancedTokens{}.query_host(0); }, "query host");
}

// ---------------------------------------------------------------------------------------------
// User-defined policies: StarAttention knows policies only through the concepts.

// Block: cuts the context at fixed token positions (those inside the context).
struct CutAt {
    std::vector<index> cuts;

    [[nodiscard]] std::vector<TokenRange> blocks(index tokens) const
    {
        std::vector<TokenRange> result;
        index begin = 0;
        for (const index cut : cuts)
            if (cut > begin && cut < tokens) {
                result.push_back({begin, cut});
                begin = cut;
            }
        if (begin < tokens)
            result.push_back({begin, tokens});
        return result;
    }
};
static_assert(Block<CutAt>);

// Anchor: the `window` tokens right before each block, computed locally.
struct RecentTokens {
    index window = 8;

    [[nodiscard]] TokenRange anchor_for(std::span<const TokenRange> blocks, index i) const
    {
        const index begin = blocks[static_cast<std::size_t>(i)].begin;
        return {std::max<index>(0, begin - window), begin};
    }
    [[nodiscard]] AnchorSource source() const noexcept { return AnchorSource::compute; }
    void check(index) const
    {
        if (window < 1)
            throw star::invalid_argument("RecentTokens: the window must be at least 1 token");
    }
};
static_assert(Anchor<RecentTokens>);

// Partition: everything on host 0, which is also the query host.
struct AllOnHostZero {
    [[nodiscard]] std::vector<int> assign(std::span<const TokenRange> blocks, int) const
    {
        return std::vector<int>(blocks.size(), 0);
    }
    [[nodiscard]] int query_host(int) const { return 0; }
};
static_assert(Partition<AllOnHostZero>);

std::vector<float> flatten(const AttentionState& s)
{
    std::vector<float> m(s.output.data(), s.output.data() + s.output.size());
    m.insert(m.end(), s.lse.data(), s.lse.data() + s.lse.size());
    return m;
}

AttentionState unflatten(const std::vector<float>& m, Shape shape)
{
    AttentionState s(shape.tokens, shape.heads, shape.head_dim);
    std::copy_n(m.begin(), s.output.size(), s.output.data());
    std::copy_n(m.begin() + s.output.size(), s.lse.size(), s.lse.data());
    return s;
}

// Merge: the root gathers every partial and folds them in one at a time, in rank order.
struct FoldAtRoot {
    template <class C>
    PerHost<std::optional<AttentionState>> combine(C& comm, const PerHost<AttentionState>& partials,
                                                   int root) const
    {
        auto messages = comm.template local<std::vector<float>>();
        comm.for_each_host([&](int rank) { messages[rank] = flatten(partials[rank]); });
        const auto received = comm.gather(messages, root);
        auto result = comm.template local<std::optional<AttentionState>>();
        if (result.holds(root)) {
            const Shape shape = partials[root].shape();
            AttentionState folded(shape.tokens, shape.heads, shape.head_dim);
            for (const auto& m : received[root])
                merge_into(folded, unflatten(m, shape));
            result[root] = std::move(folded);
        }
        return result;
    }
};
static_assert(Merge<FoldAtRoot>);

constexpr index q_heads = 4, kv_heads = 2, head_dim = 32;

Tokens<float> random_context(index tokens)
{
    return random_tokens<float>(tokens, q_heads, kv_heads, head_dim);
}

void expect_close(const AttentionState& got, const ReferenceResult& want, index key_count,
                  const std::string& what)
{
    const Deviation dev = deviation(got, want);
    const Tolerance tol = tolerance(want, head_dim, key_count);
    EXPECT_TRUE(dev.all_finite) << what;
    EXPECT_TRUE(dev.infinities_match) << what;
    // Block and anchor states (phase 1), or the hosts' partials (phase 2), are merged, which
    // adds a few roundings per row to the kernel's own error: twice its tolerance.
    EXPECT_LE(dev.output, 2 * tol.output) << what;
    EXPECT_LE(dev.lse, 2 * tol.lse) << what;
}

// Phase 1 of `star` over a random context equals the reference under the block-sparse mask
// of `blocks` and `anchors`; each host returns its own blocks.
template <class Star>
void expect_phase_one_matches(const Star& star, index tokens, int hosts,
                              const std::vector<TokenRange>& blocks,
                              const std::vector<TokenRange>& anchors)
{
    const StarPlan plan = star.plan(tokens, hosts);
    ASSERT_EQ(plan.blocks(), blocks);
    for (std::size_t i = 0; i < blocks.size(); ++i)
        EXPECT_TRUE(plan.anchors()[i] == anchors[i] ||
                    (plan.anchors()[i].empty() && anchors[i].empty()))
            << "block " << i << ": plan anchor [" << plan.anchors()[i].begin << ", "
            << plan.anchors()[i].end << ")";
    const Tokens<float> c = random_context(tokens);
    LocalCommunicator comm(hosts);
    auto caches = comm.local<KVCache<float>>();
    const auto outputs = star.encode_context(comm, plan, caches, view(c.q), view(c.k), view(c.v));
    for (int r = 0; r < hosts; ++r) {
        const auto mine = plan.blocks_of(r);
        ASSERT_EQ(outputs[r].size(), mine.size()) << "host " << r;
        for (std::size_t n = 0; n < mine.size(); ++n)
            EXPECT_EQ(outputs[r][n].tokens, blocks[mine[n]]);
    }
    const AttentionState got = assemble(outputs, {tokens, q_heads, head_dim});
    const ReferenceResult want =
        reference_attention(view(c.q), view(c.k), view(c.v), block_sparse_visible(blocks, anchors),
                            1.0 / std::sqrt(double(head_dim)));
    expect_close(got, want, tokens, "phase 1");
}

TEST(UserPolicies, BlockPolicyCuttingAtFixedBoundaries)
{
    const StarAttention star(CutAt{{50, 60, 200, 333}});
    const std::vector<TokenRange> blocks{{0, 50}, {50, 60}, {60, 200}, {200, 333}, {333, 400}};
    // FirstTokens: the first block's 50 tokens for every later block.
    std::vector<TokenRange> anchors(blocks.size(), TokenRange{0, 50});
    anchors[0] = {};
    expect_phase_one_matches(star, 400, 3, blocks, anchors);
}

TEST(UserPolicies, AnchorPolicyOfTheTokensRightBeforeEachBlock)
{
    const StarAttention star(FixedBlocks{64}, RecentTokens{20}, RoundRobin{});
    const auto blocks = FixedBlocks{64}.blocks(300);
    std::vector<TokenRange> anchors{{0, 0}};
    for (std::size_t i = 1; i < blocks.size(); ++i)
        anchors.push_back({blocks[i].begin - 20, blocks[i].begin});
    expect_phase_one_matches(star, 300, 3, blocks, anchors);
}

TEST(UserPolicies, PartitionPuttingEverythingOnHostZero)
{
    const StarAttention star(FixedBlocks{64}, FirstTokens{}, AllOnHostZero{});
    const StarPlan plan = star.plan(300, 4);
    EXPECT_EQ(plan.owner(), std::vector<int>(5, 0));
    EXPECT_EQ(plan.query_host(), 0);
    const auto blocks = FixedBlocks{64}.blocks(300);
    std::vector<TokenRange> anchors(blocks.size(), TokenRange{0, 64});
    anchors[0] = {};
    expect_phase_one_matches(star, 300, 4, blocks, anchors);
}

// Phase 1 then a query of `query_tokens`, which must equal exact attention over the context and,
// causally, over the query itself, and be present at the query host.
template <class Star>
void expect_query_matches(const Star& star, index tokens, index query_tokens, int hosts)
{
    const StarPlan plan = star.plan(tokens, hosts);
    const Tokens<float> c = random_context(tokens);
    const Tokens<float> query = random_context(query_tokens);
    LocalCommunicator comm(hosts);
    auto caches = comm.local<KVCache<float>>();
    (void)star.encode_context(comm, plan, caches, view(c.q), view(c.k), view(c.v));
    const auto merged =
        star.attend_query(comm, plan, caches, view(query.q), view(query.k), view(query.v));
    ASSERT_TRUE(merged[plan.query_host()].has_value());
    const Tensor3<float> keys = concat_tokens(c.k, query.k);
    const Tensor3<float> values = concat_tokens(c.v, query.v);
    const ReferenceResult want = reference_attention(
        view(query.q), view(keys), view(values),
        [&](index i, index j) { return j < tokens || j - tokens <= i; },
        1.0 / std::sqrt(double(head_dim)));
    expect_close(*merged[plan.query_host()], want, tokens + query_tokens, "phase 2");
}

TEST(UserPolicies, MergePolicyFoldingAtTheRoot)
{
    expect_query_matches(StarAttention(FixedBlocks{64}, FirstTokens{}, Contiguous{}, FoldAtRoot{}),
                         300, 9, 4);
}

TEST(UserPolicies, AllFourTogether)
{
    const StarAttention star(CutAt{{100, 120, 250}}, RecentTokens{30}, AllOnHostZero{},
                             FoldAtRoot{});
    const std::vector<TokenRange> blocks{{0, 100}, {100, 120}, {120, 250}, {250, 320}};
    const std::vector<TokenRange> anchors{{}, {70, 100}, {90, 120}, {220, 250}};
    expect_phase_one_matches(star, 320, 3, blocks, anchors);
    expect_query_matches(star, 320, 7, 3);
}

// Policies that break their contract are caught by plan() with a message saying how.

struct Overlapping {
    [[nodiscard]] std::vector<TokenRange> blocks(index tokens) const
    {
        return {{0, tokens / 2 + 1}, {tokens / 2, tokens}};
    }
};
struct TooShort {
    [[nodiscard]] std::vector<TokenRange> blocks(index tokens) const { return {{0, tokens - 1}}; }
};
struct OwnerOutOfRange {
    [[nodiscard]] std::vector<int> assign(std::span<const TokenRange> blocks, int hosts) const
    {
        return std::vector<int>(blocks.size(), hosts);
    }
    [[nodiscard]] int query_host(int) const { return 0; }
};
struct MissingOwners {
    [[nodiscard]] std::vector<int> assign(std::span<const TokenRange>, int) const { return {0}; }
    [[nodiscard]] int query_host(int) const { return 0; }
};
struct OverlapsItsBlock {
    [[nodiscard]] TokenRange anchor_for(std::span<const TokenRange> blocks, index i) const
    {
        return {0, blocks[static_cast<std::size_t>(i)].end};
    }
    [[nodiscard]] AnchorSource source() const noexcept { return AnchorSource::compute; }
    void check(index) const noexcept {}
};
struct ReceivedWindow {
    [[nodiscard]] TokenRange anchor_for(std::span<const TokenRange> blocks, index i) const
    {
        const index begin = blocks[static_cast<std::size_t>(i)].begin;
        return {std::max<index>(0, begin - 5), begin};
    }
    [[nodiscard]] AnchorSource source() const noexcept { return AnchorSource::receive; }
    void check(index) const noexcept {}
};
static_assert(Block<Overlapping> && Block<TooShort>);
static_assert(Partition<OwnerOutOfRange> && Partition<MissingOwners>);
static_assert(Anchor<OverlapsItsBlock> && Anchor<ReceivedWindow>);

TEST(UserPolicies, ContractViolationsAreRejectedByPlan)
{
    expect_error([] { (void)StarAttention(Overlapping{}).plan(100, 2); },
                 "blocks must be non-empty, consecutive");
    expect_error([] { (void)StarAttention(TooShort{}).plan(100, 2); }, "the blocks cover 99 of 100");
    expect_error(
        [] { (void)StarAttention(FixedBlocks{10}, FirstTokens{}, OwnerOutOfRange{}).plan(100, 2); },
        "block owner 2 is out of range");
    expect_error(
        [] { (void)StarAttention(FixedBlocks{10}, FirstTokens{}, MissingOwners{}).plan(100, 2); },
        "the partition assigned 1 of 10 blocks");
    expect_error([] { (void)StarAttention(FixedBlocks{10}, OverlapsItsBlock{}).plan(100, 2); },
                 "not before the block's start");
    expect_error([] { (void)StarAttention(FixedBlocks{10}, ReceivedWindow{}).plan(100, 2); },
                 "must be a prefix of the context");
    expect_error([] { (void)StarAttention(FixedBlocks{10}, RecentTokens{0}).plan(100, 2); },
                 "window must be at least 1");
}

// A plan built by hand (e.g. to run phase 2 over caches another method filled) is
// checked as a whole when it is made.
TEST(StarPlanConstructor, AConsistentPlanIsKept)
{
    const StarPlan plan(10, 2, 1, {{0, 4}, {4, 10}}, {0, 1}, {{}, {0, 4}}, AnchorSource::receive);
    EXPECT_EQ(plan.context_tokens(), 10);
    EXPECT_EQ(plan.hosts(), 2);
    EXPECT_EQ(plan.query_host(), 1);
    EXPECT_EQ(plan.blocks_of(1), std::vector<std::size_t>{1});
    EXPECT_EQ(plan.shared_anchor().end, 4);
    EXPECT_EQ(plan.anchor_source(), AnchorSource::receive);
    // An anchor given as any empty range is stored as {}, as the policies' are.
    const StarPlan empty_anchor(10, 1, 0, {{0, 10}}, {0}, {{3, 3}});
    EXPECT_EQ(empty_anchor.anchors()[0].begin, 0);
    EXPECT_EQ(empty_anchor.anchors()[0].end, 0);
}

TEST(StarPlanConstructor, EveryInconsistencyIsNamed)
{
    using R = std::vector<TokenRange>;
    expect_error(
        [] {
            (void)StarPlan(10, 0, 0, R{{0, 10}}, {0}, R{{}});
        },
        "StarPlan: the number of hosts must be at least 1, got 0");
    expect_error([] { (void)StarPlan(0, 1, 0, R{}, {}, R{}); },
                 "StarPlan: the context must hold at least 1 token, got 0");
    expect_error(
        [] {
            (void)StarPlan(10, 2, 2, R{{0, 10}}, {0}, R{{}});
        },
        "StarPlan: query host 2 is out of range");
    expect_error(
        [] {
            (void)StarPlan(10, 2, 0, R{{0, 4}, {5, 10}}, {0, 1}, R{{}, {}});
        },
        "StarPlan: block 1 = [5, 10); blocks must be non-empty, consecutive");
    expect_error(
        [] {
            (void)StarPlan(10, 2, 0, R{{0, 4}}, {0}, R{{}});
        },
        "StarPlan: the blocks cover 4 of 10 context tokens");
    expect_error(
        [] {
            (void)StarPlan(10, 2, 0, R{{0, 4}, {4, 10}}, {0}, R{{}, {}});
        },
        "StarPlan: 1 block owners for 2 blocks");
    expect_error(
        [] {
            (void)StarPlan(10, 2, 0, R{{0, 4}, {4, 10}}, {0, -1}, R{{}, {}});
        },
        "StarPlan: block owner -1 is out of range");
    expect_error(
        [] {
            (void)StarPlan(10, 2, 0, R{{0, 4}, {4, 10}}, {0, 1}, R{{}});
        },
        "StarPlan: 1 anchors for 2 blocks");
    expect_error(
        [] {
            (void)StarPlan(10, 2, 0, R{{0, 4}, {4, 10}}, {0, 1}, R{{}, {2, 6}});
        },
        "StarPlan: the anchor of block 1 is [2, 6), not before the block's start 4");
    expect_error(
        [] {
            (void)StarPlan(10, 2, 0, R{{0, 4}, {4, 10}}, {0, 1}, R{{}, {2, 4}},
                           AnchorSource::receive);
        },
        "StarPlan: a received anchor must be a prefix of the context; block 1 has [2, 4)");
}

} // namespace
} // namespace star::test
