// Phase 1 works in O(block) memory per host: the library's own account of what a host
// allocates (StarAttention::phase1_working_bytes) does not grow with the context, and a
// real run at 16K tokens stays within that account - far below one L x b score buffer,
// let alone L x L.

#include <gtest/gtest.h>

#include <sys/resource.h>

#include <star/star.hpp>

#include "expect_error.hpp"
#include "reference.hpp"

namespace star::test {
namespace {

constexpr index q_heads = 4, kv_heads = 1, head_dim = 32;
constexpr HeadShape layer{.q_heads = q_heads, .kv_heads = kv_heads, .head_dim = head_dim};

template <class Anchor>
std::size_t working_bytes(index context, index block, Anchor anchor, int host)
{
    const StarAttention<FixedBlocks, Anchor> star(FixedBlocks{block}, anchor);
    const int hosts = static_cast<int>((context + block - 1) / block); // one block each
    return star.template phase1_working_bytes<float>(star.plan(context, hosts), host, layer, 2);
}

TEST(Memory, Phase1AccountDoesNotGrowWithTheContext)
{
    for (const AnchorSource source : {AnchorSource::compute, AnchorSource::receive}) {
        const FirstTokens anchor{std::nullopt, source};
        const std::size_t at_4k = working_bytes(4096, 512, anchor, 3);
        for (const index context : {8192, 32768, 262144})
            EXPECT_EQ(working_bytes(context, 512, anchor, 3), at_4k)
                << "context " << context << ", anchor "
                << (source == AnchorSource::compute ? "computed" : "received");
    }
}

TEST(Memory, Phase1AccountGrowsLinearlyWithTheBlock)
{
    const std::size_t small = working_bytes(65536, 1024, FirstTokens{}, 5);
    const std::size_t large = working_bytes(65536, 4096, FirstTokens{}, 5);
    // Block-sized terms scale by 4, the tile workspaces not at all: never more than 4x.
    EXPECT_LE(large, 4 * small);
    EXPECT_GT(large, 3 * small / 2);
    // And nothing quadratic: a single b x b float score matrix would already exceed it.
    EXPECT_LT(large, sizeof(float) * 4096 * 4096);
}

TEST(Memory, AccountCountsTheHostsBlocksOutputs)
{
    const StarAttention<> star(FixedBlocks{100});
    const StarPlan plan = star.plan(1000, 3); // 10 blocks: 4, 3 and 3 per host
    const std::size_t four = star.phase1_working_bytes<float>(plan, 0, layer, 1);
    const std::size_t three = star.phase1_working_bytes<float>(plan, 1, layer, 1);
    EXPECT_EQ(four - three, AttentionState::bytes(100, q_heads, head_dim));
    expect_error([&] { (void)star.phase1_working_bytes<float>(plan, 3, layer, 1); },
                 "host 3 is out of range");
    expect_error([&] { (void)star.phase1_working_bytes<float>(plan, 0, layer, 0); },
                 "threads must be at least 1");
}

// The account in bytes, each term worked out by hand from what phase1_working_bytes says it
// counts, on plans small enough to follow: blocks of 100 tokens, the last of 50 (250 or
// 350 tokens), dealt round-robin to 2 hosts, an anchor of the first 150 tokens (block 1
// sees [0,100), later blocks [0,150)), K/V in bf16, 3 threads. No shape is 1 and the K/V
// type is not float's size, so that a term that drops a factor or takes the wrong element
// size is off too. Every other test here compares accounts with each other, which a term
// missing from both sides passes.
TEST(Memory, AccountIsTheSumOfItsDocumentedTerms)
{
    constexpr index hq = 6, hkv = 2, d = 24;
    constexpr int threads = 3;
    using KV = Eigen::bfloat16;
    // A block's outputs: its output rows [tokens, hq, d] and LSEs [tokens, hq], in float.
    constexpr std::size_t state_per_token = sizeof(float) * hq * (d + 1); // 600
    // A received anchor token: its key and its value, [hkv, d] each, in KV.
    constexpr std::size_t anchor_kv_per_token = 2 * sizeof(KV) * hkv * d; // 192
    const std::size_t workspace = attention_workspace_bytes<KV>(hq, hkv, d);
    const auto account = [&](index context, AnchorSource source, int host) {
        const StarAttention<FixedBlocks, FirstTokens, RoundRobin> star(FixedBlocks{100},
                                                                       FirstTokens{150, source});
        return star.phase1_working_bytes<KV>(
            star.plan(context, 2), host, {.q_heads = hq, .kv_heads = hkv, .head_dim = d}, threads);
    };

    // Host 0 of 250 tokens owns blocks 0 (no anchor) and 2 (50 tokens, anchored):
    //   outputs 100 + 50 tokens; one anchored block's partial state, 50 tokens (block 0
    //   has no anchor, so its 100 do not count); the received anchor, 150 tokens, and the
    //   largest piece of it one block holds in flight, block 0's 100 tokens.
    EXPECT_EQ(account(250, AnchorSource::receive, 0),
              state_per_token * (150 + 50) + anchor_kv_per_token * (150 + 100) + threads * workspace);
    EXPECT_EQ(account(250, AnchorSource::receive, 0) - threads * workspace, 168000u);

    // Host 1 of 350 tokens owns blocks 1 and 3 (100 and 50 tokens, both anchored): the
    // partial state is the larger one's, 100 tokens, not both (they are dropped in turn).
    EXPECT_EQ(account(350, AnchorSource::receive, 1), state_per_token * (150 + 100) +
                                                          anchor_kv_per_token * (150 + 100) +
                                                          threads * workspace);
    EXPECT_EQ(account(350, AnchorSource::receive, 1) - threads * workspace, 198000u);

    // A computed anchor is read from the host's own context: nothing is received.
    EXPECT_EQ(account(350, AnchorSource::compute, 1),
              state_per_token * (150 + 100) + threads * workspace);
    EXPECT_EQ(account(350, AnchorSource::compute, 1) - threads * workspace, 150000u);
}

TEST(Memory, WorkspaceAccountRejectsBadShapes)
{
    EXPECT_GT(attention_workspace_bytes<float>(8, 2, 64), 0u);
    expect_error([] { (void)attention_workspace_bytes<float>(6, 4, 64); }, "multiple of kv_heads");
    expect_error([] { (void)attention_workspace_bytes<float>(4, 0, 64); }, "positive head counts");
}

#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
std::size_t peak_rss_bytes()
{
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    return static_cast<std::size_t>(usage.ru_maxrss) * 1024; // Linux reports KiB
}
#endif

// The process's peak resident memory while phase 1 runs over 16K tokens on 8 hosts, one
// host at a time, must stay within the hosts' accounts plus their caches (and a margin for
// the allocator and thread stacks). An L x b score buffer would be 128 MiB.
TEST(Memory, Phase1AtSixteenThousandTokensStaysWithinTheAccount)
{
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    GTEST_SKIP() << "sanitizers keep shadow memory and quarantines: resident size says nothing";
#else
    constexpr index context = 16384, block = 2048;
    constexpr int hosts = 8;
    const auto q = random_tensor<float>(context, q_heads, head_dim);
    const auto k = random_tensor<float>(context, kv_heads, head_dim);
    const auto v = random_tensor<float>(context, kv_heads, head_dim);
    LocalCommunicator comm(hosts, 1);
    const StarAttention<> star(FixedBlocks{block});
    const StarPlan plan = star.plan(context, hosts);
    std::size_t account = 0;
    for (int h = 0; h < hosts; ++h)
        account += star.phase1_working_bytes<float>(plan, h, layer, 1);
    const std::size_t caches = 2 * sizeof(float) * context * kv_heads * head_dim;
    constexpr std::size_t margin = 24u << 20;

    const std::size_t before = peak_rss_bytes();
    auto caches_of = comm.local<KVCache<float>>();
    const auto outputs = star.encode_context(comm, plan, caches_of, view(q), view(k), view(v));
    const std::size_t growth = peak_rss_bytes() - before;
    EXPECT_LE(growth, account + caches + margin)
        << "peak grew by " << growth << " bytes; account " << account << ", caches " << caches;
    EXPECT_LT(account + caches + margin, sizeof(float) * context * block)
        << "the check must be able to tell an L x b buffer apart";
#endif
}

} // namespace
} // namespace star::test
