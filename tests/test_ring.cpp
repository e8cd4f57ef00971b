// Ring Attention (plain and zig-zag) against exact causal attention, and its sharding.

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "expect_error.hpp"
#include "reference.hpp"

namespace star::test {
namespace {

const char* name_of(RingLayout layout) { return layout == RingLayout::plain ? "plain" : "zigzag"; }

template <class KV>
struct Sequence {
    Tensor3<float> q;
    Tensor3<KV> k, v;
    ReferenceResult causal; // exact causal attention, in double
    double scale;
};

template <class KV>
Sequence<KV> random_sequence(index tokens, index q_heads, index kv_heads, index d,
                             std::optional<double> scale = {})
{
    Sequence<KV> s{random_tensor<float>(tokens, q_heads, d),
                   random_tensor<KV>(tokens, kv_heads, d),
                   random_tensor<KV>(tokens, kv_heads, d),
                   {},
                   scale.value_or(1.0 / std::sqrt(double(d)))};
    s.causal = reference_attention(
        view(s.q), view(s.k), view(s.v), [](index i, index j) { return j <= i; }, s.scale);
    return s;
}

// Ring attention of `s` on `hosts` hosts equals exact causal attention; every host returns its
// own (non-empty) shards.
template <class KV>
void expect_ring_is_exact(const Sequence<KV>& s, int hosts, RingOptions options)
{
    const index tokens = s.q.dimension(0), q_heads = s.q.dimension(1), d = s.q.dimension(2);
    const std::string what = std::string(name_of(options.layout)) + " ring, " +
                             std::to_string(tokens) + " tokens on " + std::to_string(hosts) +
                             " hosts";
    const RingAttention ring(options);
    LocalCommunicator comm(hosts);
    const auto outputs = ring.run(comm, view(s.q), view(s.k), view(s.v));

    const auto shards = ring.shards(tokens, hosts);
    for (int r = 0; r < hosts; ++r) {
        std::vector<TokenRange> expected;
        for (const TokenRange& range : shards[static_cast<std::size_t>(r)])
            if (!range.empty())
                expected.push_back(range);
        ASSERT_EQ(outputs[r].size(), expected.size()) << what << ", host " << r;
        for (std::size_t n = 0; n < expected.size(); ++n)
            EXPECT_EQ(outputs[r][n].tokens, expected[n]) << what << ", host " << r;
    }

    const AttentionState got = assemble(outputs, {tokens, q_heads, d});
    const Deviation dev = deviation(got, s.causal);
    const Tolerance tol = tolerance(s.causal, d, tokens);
    EXPECT_TRUE(dev.all_finite) << what;
    EXPECT_TRUE(dev.infinities_match) << what;
    // Each query shard merges up to 2H partial states (one per key shard), each merge adding a
    // few roundings per row on top of the kernel's error: twice the kernel tolerance.
    EXPECT_LE(dev.output, 2 * tol.output) << what;
    EXPECT_LE(dev.lse, 2 * tol.lse) << what;
}

TEST(Ring, PlainAndZigzagEqualExactCausalAttentionForManyHostCounts)
{
    // 517 = 11 * 47: no host count divides it evenly into shards.
    const auto s = random_sequence<float>(517, 4, 2, 32);
    for (const RingLayout layout : {RingLayout::plain, RingLayout::zigzag})
        for (const int hosts : {1, 2, 3, 4, 5, 8, 16})
            expect_ring_is_exact(s, hosts, {.layout = layout});
}

TEST(Ring, FewerTokensThanHosts)
{
    // Some hosts hold no token at all (and with zig-zag, some hold one chunk of two).
    const auto s = random_sequence<float>(5, 4, 2, 32);
    for (const RingLayout layout : {RingLayout::plain, RingLayout::zigzag}) {
        expect_ring_is_exact(s, 8, {.layout = layout});
        expect_ring_is_exact(s, 3, {.layout = layout}); // zig-zag: 6 chunks for 5 tokens
    }
}

TEST(Ring, SingleToken)
{
    const auto s = random_sequence<float>(1, 4, 2, 32);
    for (const RingLayout layout : {RingLayout::plain, RingLayout::zigzag})
        for (const int hosts : {1, 2, 5})
            expect_ring_is_exact(s, hosts, {.layout = layout});
}

TEST(Ring, Bfloat16KeysAndValues)
{
    const auto s = random_sequence<Eigen::bfloat16>(517, 8, 2, 32);
    for (const RingLayout layout : {RingLayout::plain, RingLayout::zigzag})
        expect_ring_is_exact(s, 4, {.layout = layout});
}

// A model that runs in bf16 projects bf16 queries: ring takes them as the kernel does, each
// host's result bit for bit that of the same queries widened to float, in both layouts and
// under a variant.
TEST(Ring, Bfloat16QueriesGiveTheResultOfThoseQueriesWidened)
{
    const auto q = random_tensor<Eigen::bfloat16>(517, 8, 32);
    const Tensor3<float> widened = q.cast<float>();
    const auto k = random_tensor<Eigen::bfloat16>(517, 2, 32);
    const auto v = random_tensor<Eigen::bfloat16>(517, 2, 32);
    const auto expect_same = [&](const auto& ring, const std::string& what) {
        LocalCommunicator comm(4);
        const auto got = ring.run(comm, view(q), view(k), view(v));
        const auto want = ring.run(comm, view(widened), view(k), view(v));
        for (int r = 0; r < 4; ++r) {
            ASSERT_EQ(got[r].size(), want[r].size()) << what;
            for (std::size_t n = 0; n < got[r].size(); ++n) {
                EXPECT_EQ(got[r][n].tokens, want[r][n].tokens) << what;
                EXPECT_TRUE(same_bits(got[r][n].state, want[r][n].state))
                    << what << ", host " << r << ", shard " << n;
            }
        }
    };
    for (const RingLayout layout : {RingLayout::plain, RingLayout::zigzag}) {
        expect_same(RingAttention({.layout = layout}), name_of(layout));
        expect_same(BasicRingAttention({.layout = layout}, SlidingWindow{100}),
                    std::string(name_of(layout)) + ", sliding window");
    }
}

TEST(Ring, ExplicitScale)
{
    const auto s = random_sequence<float>(200, 4, 1, 16, 0.3);
    for (const RingLayout layout : {RingLayout::plain, RingLayout::zigzag})
        expect_ring_is_exact(s, 3, {.layout = layout, .attention = {.scale = 0.3f}});
}

TEST(Ring, SameResultOnOneThreadAndOnMany)
{
    // Every partial is computed by one kernel call and merged in a fixed order, so the number
    // of threads must not change a bit.
    const auto s = random_sequence<float>(300, 4, 2, 16);
    for (const RingLayout layout : {RingLayout::plain, RingLayout::zigzag}) {
        const RingAttention ring({.layout = layout});
        LocalCommunicator one(5, 1), many(5);
        const AttentionState a =
            assemble(ring.run(one, view(s.q), view(s.k), view(s.v)), {300, 4, 16});
        const AttentionState b =
            assemble(ring.run(many, view(s.q), view(s.k), view(s.v)), {300, 4, 16});
        for (index n = 0; n < a.output.size(); ++n)
            ASSERT_EQ(a.output.data()[n], b.output.data()[n]) << name_of(layout);
        for (index n = 0; n < a.lse.size(); ++n)
            ASSERT_EQ(a.lse.data()[n], b.lse.data()[n]) << name_of(layout);
    }
}

// ---------------------------------------------------------------------------------------------
// Sharding

// Near-equal consecutive pieces: the first `tokens mod pieces` one token longer.
void expect_near_equal_pieces(const std::vector<TokenRange>& pieces, index tokens)
{
    const auto n = static_cast<index>(pieces.size());
    index begin = 0;
    for (index i = 0; i < n; ++i) {
        const TokenRange& p = pieces[static_cast<std::size_t>(i)];
        EXPECT_EQ(p.begin, begin) << "piece " << i;
        EXPECT_EQ(p.size(), tokens / n + (i < tokens % n ? 1 : 0)) << "piece " << i;
        begin = p.end;
    }
    EXPECT_EQ(begin, tokens);
}

TEST(RingShards, PlainGivesEachHostOneContiguousNearEqualRange)
{
    const RingAttention ring;
    for (const index tokens : {1, 5, 16, 517, 1000})
        for (const int hosts : {1, 2, 3, 8, 16}) {
            const auto shards = ring.shards(tokens, hosts);
            ASSERT_EQ(shards.size(), static_cast<std::size_t>(hosts));
            std::vector<TokenRange> pieces;
            for (const auto& mine : shards) {
                ASSERT_EQ(mine.size(), 1u);
                pieces.push_back(mine.front());
            }
            expect_near_equal_pieces(pieces, tokens);
        }
}

TEST(RingShards, ZigzagGivesHostRChunksRAndTwoHMinusOneMinusR)
{
    const RingAttention ring({.layout = RingLayout::zigzag});
    for (const index tokens : {1, 5, 16, 517, 1000})
        for (const int hosts : {1, 2, 3, 8, 16}) {
            const auto shards = ring.shards(tokens, hosts);
            ASSERT_EQ(shards.size(), static_cast<std::size_t>(hosts));
            // Put the 2H chunks back in order: chunk r from host r, chunk 2H-1-r from host r.
            std::vector<TokenRange> chunks(2 * static_cast<std::size_t>(hosts));
            for (int r = 0; r < hosts; ++r) {
                const auto& mine = shards[static_cast<std::size_t>(r)];
                ASSERT_EQ(mine.size(), 2u);
                chunks[static_cast<std::size_t>(r)] = mine[0];
                chunks[static_cast<std::size_t>(2 * hosts - 1 - r)] = mine[1];
            }
            expect_near_equal_pieces(chunks, tokens);
        }
}

// Visible (query, key) pairs of exact causal attention for the queries of `ranges`.
index causal_work(const std::vector<TokenRange>& ranges)
{
    index pairs = 0;
    for (const TokenRange& r : ranges)
        for (index i = r.begin; i < r.end; ++i)
            pairs += i + 1; // query i sees keys 0..i
    return pairs;
}

TEST(RingShards, ZigzagBalancesCausalWork)
{
    const RingAttention zigzag({.layout = RingLayout::zigzag});
    for (const int hosts : {2, 3, 4, 8, 16})
        for (const index tokens : {index{2} * hosts * 37, index{517}, index{1000}, index{1001}}) {
            std::vector<index> work;
            for (const auto& mine : zigzag.shards(tokens, hosts))
                work.push_back(causal_work(mine));
            const auto [least, most] = std::minmax_element(work.begin(), work.end());
            if (tokens % (2 * hosts) == 0) {
                EXPECT_EQ(*most, *least) << tokens << " tokens on " << hosts << " hosts";
            } else {
                // Chunks differ by at most one token, so each host's pair of chunks is within
                // a token or two of every other's: less than two query rows of work apart.
                EXPECT_LE(*most - *least, 2 * tokens)
                    << tokens << " tokens on " << hosts << " hosts";
            }
        }
}

TEST(RingShards, PlainIsUnbalancedUnderTheCausalMask)
{
    // The contrast that motivates zig-zag: host r of the plain ring answers queries
    // [200r, 200r + 200), i.e. 200 * 200r + 200 * 201 / 2 visible pairs.
    const auto shards = RingAttention{}.shards(800, 4);
    for (int r = 0; r < 4; ++r)
        EXPECT_EQ(causal_work(shards[static_cast<std::size_t>(r)]), 200 * 200 * r + 20100);
    EXPECT_GT(causal_work(shards[3]), 6 * causal_work(shards[0]));
}

// ---------------------------------------------------------------------------------------------
// Bad input

TEST(RingErrors, ZeroHosts)
{
    expect_error([] { (void)RingAttention{}.shards(517, 0); }, "number of hosts must be at least 1");
    expect_error([] { LocalCommunicator comm(0); }, "at least 1");
}

TEST(RingErrors, ZeroTokens)
{
    const Tensor3<float> q(0, 4, 16), k(0, 2, 16), v(0, 2, 16);
    LocalCommunicator comm(2);
    expect_error([&] { (void)RingAttention{}.run(comm, view(q), view(k), view(v)); },
                 "must hold at least 1 token");
    expect_error([] { (void)RingAttention{}.shards(0, 2); }, "must hold at least 1 token");
}

TEST(RingErrors, QueryAndKeyTokenCountsDiffer)
{
    const auto q = random_tensor<float>(10, 4, 16);
    const auto k = random_tensor<float>(12, 2, 16);
    const auto v = random_tensor<float>(12, 2, 16);
    LocalCommunicator comm(2);
    expect_error([&] { (void)RingAttention{}.run(comm, view(q), view(k), view(v)); },
                 "as many queries as keys, got 10 and 12");
}

TEST(RingErrors, HostMissingItsShard)
{
    // Host 1 is handed only the first half of the sequence but owns the second.
    const auto q = random_tensor<float>(10, 4, 16);
    const auto k = random_tensor<float>(10, 2, 16);
    const auto v = random_tensor<float>(10, 2, 16);
    LocalCommunicator comm(2);
    auto contexts = comm.local<HostContext<float>>();
    contexts[0] = HostContext<float>(view(q), view(k), view(v));
    contexts[1].add(0, token_slice(view(q), 0, 5), token_slice(view(k), 0, 5),
                    token_slice(view(v), 0, 5));
    expect_error([&] { (void)RingAttention{}.run(comm, 10, contexts); },
                 "does not hold context tokens [5, 10)");
}

// What travels round the ring is read with the receiver's layout: a host whose K/V have
// other heads would attend to garbage. Across processes only the agreement sees it.
TEST(RingErrors, HostsWhoseContextsDifferInShapeDisagree)
{
    const auto q = random_tensor<float>(10, 4, 16);
    const auto k = random_tensor<float>(10, 2, 16), v = random_tensor<float>(10, 2, 16);
    const auto k1 = random_tensor<float>(10, 1, 16), v1 = random_tensor<float>(10, 1, 16);
    LocalCommunicator comm(2);
    auto contexts = comm.local<HostContext<float>>();
    contexts[0] = HostContext<float>(view(q), view(k), view(v));
    contexts[1] = HostContext<float>(view(q), view(k1), view(v1));
    expect_error([&] { (void)RingAttention{}.run(comm, 10, contexts); },
                 "RingAttention::run: the hosts disagree on the number of kv heads: host 0 has 2, "
                 "host 1 has 1");
}

} // namespace
} // namespace star::test
