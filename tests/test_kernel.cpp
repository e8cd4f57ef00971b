// The tiled kernel against the double-precision reference, on every path of the kernel
// this CPU has (star/kernel/isa.hpp): each check runs once per path.

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <type_traits>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "expect_error.hpp"
#include "isa_paths.hpp"
#include "reference.hpp"

namespace star::test {
namespace {

struct Case {
    index q_tokens;
    index k_tokens;
    index q_heads;
    index kv_heads;
    index head_dim;
    float logit_scale = 1.0f; // multiplies q, hence every score
    float key_ramp = 0.0f;    // key j is multiplied by 1 + key_ramp j: scores grow along keys
    bool heads_apart = false; // query head h is multiplied by h: its scores grow h times as fast
};

/// The kernel on each of `isas` against one double-precision reference: the reference,
/// not the kernel, is what takes the time, so it is computed once for all paths.
template <class KV, class M>
void expect_matches_reference_on(const std::vector<KernelIsa>& isas, const Case& c, const M& mask,
                                 const Visible& visible)
{
    auto q = random_tensor<float>(c.q_tokens, c.q_heads, c.head_dim, c.logit_scale);
    if (c.heads_apart)
        for (index t = 0; t < c.q_tokens; ++t)
            for (index h = 0; h < c.q_heads; ++h)
                for (index i = 0; i < c.head_dim; ++i)
                    q(t, h, i) *= float(h);
    auto k = random_tensor<KV>(c.k_tokens, c.kv_heads, c.head_dim);
    for (index j = 0; j < c.k_tokens; ++j)
        for (index h = 0; h < c.kv_heads; ++h)
            for (index i = 0; i < c.head_dim; ++i)
                k(j, h, i) = KV(float(k(j, h, i)) * (1.0f + c.key_ramp * float(j)));
    const auto v = random_tensor<KV>(c.k_tokens, c.kv_heads, c.head_dim);
    const double scale = 1.0 / std::sqrt(double(c.head_dim));
    PathReferences<KV> references([&](Products products) {
        return reference_attention(view(q), view(k), view(v), visible, scale, {}, products);
    });

    for (const KernelIsa isa : isas) {
        SCOPED_TRACE("path " + std::string(name(isa)));
        const ReferenceResult& want = references.on(isa);
        const Tolerance tol = tolerance(want, c.head_dim, c.k_tokens);
        const ForcedIsa forced(isa);
        const AttentionState got = attention(view(q), view(k), view(v), mask);
        const Deviation dev = deviation(got, want);

        EXPECT_TRUE(dev.all_finite) << "NaN or Inf in the output";
        EXPECT_TRUE(dev.infinities_match)
            << "rows with no visible key must have lse = -inf, only they";
        EXPECT_LE(dev.output, tol.output)
            << "Lq=" << c.q_tokens << " Lk=" << c.k_tokens << " Hq=" << c.q_heads
            << " Hkv=" << c.kv_heads << " d=" << c.head_dim;
        EXPECT_LE(dev.lse, tol.lse);
    }
}

template <class KV, class M>
void expect_matches_reference(const Case& c, const M& mask, const Visible& visible)
{
    expect_matches_reference_on<KV>(supported_isas(), c, mask, visible);
}

bool causal(index i, index j) { return j <= i; }
bool everything(index, index) { return true; }

// Sizes straddle the tile edges (1, 7, 63, 65, 1000 are no multiples of the tile) and every
// head_dim and GQA ratio the issue asks for; full and causal masks; every path.
using SweepParam = std::tuple<index, index, index, bool>;
class KernelSweep : public ::testing::TestWithParam<SweepParam> {};

TEST_P(KernelSweep, MatchesDoublePrecisionReference)
{
    const auto [tokens, head_dim, group, is_causal] = GetParam();
    const Case c{tokens, tokens, 2 * group, 2, head_dim};
    if (is_causal)
        expect_matches_reference<float>(c, CausalMask{}, causal);
    else
        expect_matches_reference<float>(c, NoMask{}, everything);
}

std::string sweep_name(const ::testing::TestParamInfo<SweepParam>& info)
{
    const auto [tokens, d, group, is_causal] = info.param;
    return "L" + std::to_string(tokens) + "_d" + std::to_string(d) + "_g" + std::to_string(group) +
           (is_causal ? "_causal" : "_full");
}

INSTANTIATE_TEST_SUITE_P(AwkwardSizes, KernelSweep,
                         ::testing::Combine(::testing::Values<index>(1, 7, 63, 65, 1000),
                                            ::testing::Values<index>(8, 64, 80, 128),
                                            ::testing::Values<index>(1, 2, 4, 8), ::testing::Bool()),
                         sweep_name);

// One case per path, named after it, so that a path this CPU lacks shows as skipped with
// the features it needs (the cases above run only on the paths the CPU has).
class KernelPath : public ::testing::TestWithParam<KernelIsa> {};

TEST_P(KernelPath, CausalGroupedQueryAttentionOfAwkwardSize)
{
    STAR_SKIP_UNLESS_SUPPORTED(GetParam());
    expect_matches_reference_on<Eigen::bfloat16>({GetParam()}, {301, 301, 8, 2, 72}, CausalMask{},
                                                 causal);
    expect_matches_reference_on<float>({GetParam()}, {301, 301, 8, 2, 72}, CausalMask{}, causal);
    // An odd head_dim, no multiple of any vector: the bf16 products pair the columns, the
    // last pair half zero, and the rows are staged a vector's width at a time, the last
    // block short (180 rows in the last tile).
    expect_matches_reference_on<Eigen::bfloat16>({GetParam()}, {301, 301, 8, 2, 37}, CausalMask{},
                                                 causal);
    expect_matches_reference_on<float>({GetParam()}, {301, 301, 8, 2, 37}, CausalMask{}, causal);
}

INSTANTIATE_TEST_SUITE_P(Isa, KernelPath, ::testing::ValuesIn(all_kernel_isas), isa_name);

TEST(Kernel, LongSequenceCausalMatchesReference)
{
    expect_matches_reference<float>({4097, 4097, 4, 1, 64}, CausalMask{}, causal);
}

// One below, at and one above the tile's 128 keys and 256 query rows (256 / group tokens),
// causal, so that a tile edge off by one in the mask or the skipping of hidden tiles shows.
TEST(Kernel, SizesAtTileEdges)
{
    for (const index tokens : {127, 128, 129, 255, 256, 257})
        for (const index group : {1, 4}) {
            SCOPED_TRACE("tokens " + std::to_string(tokens) + ", group " + std::to_string(group));
            expect_matches_reference<float>({tokens, tokens, group, 1, 72}, CausalMask{}, causal);
        }
    expect_matches_reference<Eigen::bfloat16>({129, 129, 4, 1, 72}, CausalMask{}, causal);
}

// With zero offsets and as many queries as keys, a query tile's first and last positions
// never meet a key tile's edge, so CausalMask::coverage answering `full` or `none` one key
// too early goes unseen. Offsets are chosen here to put the diagonal on the edges the
// kernel's tiles have (256 / group query tokens, 128 keys):
//   - the first query of the first tile at the second-to-last key of the first key tile
//     (its last key is then hidden from that query: `full` would show it);
//   - the last query of a query tile, the first tile's and the call's, at the first key of
//     the last key tile (that key is then visible to that query alone: `none` would hide it).
TEST(Kernel, CausalDiagonalOnTileEdges)
{
    const detail::TileShape tiles;
    const std::vector<index> edges{127, 128, 129, 255, 256, 257};
    for (const index group : {1, 2, 4}) {
        const index tile_tokens = tiles.query_tokens(group);
        for (const index q_tokens : edges)
            for (const index k_tokens : edges) {
                const index first_key_tile_end = std::min(tiles.keys, k_tokens);
                const index last_key_tile_begin = (k_tokens - 1) / tiles.keys * tiles.keys;
                // Position of query 0 minus position of key 0.
                std::vector<index> shifts{first_key_tile_end - 2,
                                          last_key_tile_begin + 1 - q_tokens};
                if (q_tokens > tile_tokens)
                    shifts.push_back(last_key_tile_begin + 1 - tile_tokens);
                for (const index shift : shifts) {
                    SCOPED_TRACE("group " + std::to_string(group) + ", Lq " +
                                 std::to_string(q_tokens) + ", Lk " + std::to_string(k_tokens) +
                                 ", query 0 at key " + std::to_string(shift));
                    // Non-negative positions, as a real sequence has.
                    const CausalMask mask{std::max<index>(0, shift), std::max<index>(0, -shift)};
                    expect_matches_reference<float>(
                        {q_tokens, k_tokens, group, 1, 8}, mask,
                        [shift](index i, index j) { return j <= i + shift; });
                }
            }
    }
}

// A query of one tile, too many rows for the decode kernel, over a long cache is split over
// the keys (split-KV) and merged; slices that the mask hides wholly, or rows that see no key
// at all, must merge to nothing.
TEST(Kernel, OneTileQuerySplitsTheKeysAndMergesExactly)
{
    const detail::TileShape tiles;
    ASSERT_GT(detail::key_splits(1, 1, 2500, tiles), 1);
    ASSERT_EQ(detail::key_splits(2, 1, 100000, tiles), 1); // several query tiles: no split
    expect_matches_reference<float>({5, 3000, 8, 1, 128}, CausalMask{2995, 0},
                                    [](index i, index j) { return j <= 2995 + i; });
    expect_matches_reference<float>({9, 2500, 8, 2, 72}, CausalMask{1000, 0},
                                    [](index i, index j) { return j <= 1000 + i; });
    expect_matches_reference<Eigen::bfloat16>({20, 4100, 4, 1, 64}, NoMask{}, everything);
    expect_matches_reference<Eigen::half>({17, 2049, 2, 2, 80}, NoMask{}, everything);
    expect_matches_reference<float>({6, 3000, 4, 1, 64}, CausalMask{0, 5000},
                                    [](index, index) { return false; });
}

// The decode kernel (at most 16 query rows per KV head) on every grouped-query ratio, head
// sizes that are not whole vectors and 128 (which its scores take as a constant, the others
// at run time: detail's dot_fixed_head_dim), caches shorter than a block (of an odd count, so bf16
// value products pair the last key with zeros) and long enough to split, and a causal mask
// that cuts through a block of keys.
struct DecodeRows {
    index q_tokens;
    index group;
};
void PrintTo(const DecodeRows& rows, std::ostream* os)
{
    *os << rows.q_tokens << " query tokens x group " << rows.group;
}
using DecodeParam = std::tuple<DecodeRows, index, index>;
class DecodeSweep : public ::testing::TestWithParam<DecodeParam> {};

TEST_P(DecodeSweep, MatchesDoublePrecisionReference)
{
    const auto [rows, head_dim, k_tokens] = GetParam();
    const auto [q_tokens, group] = rows;
    ASSERT_LE(q_tokens * group, detail::TileShape{}.decode_rows);
    const index cached = k_tokens - q_tokens - 5; // the last 5 keys are hidden from every row
    const Case c{q_tokens, k_tokens, 2 * group, 2, head_dim};
    const auto visible = [cached](index i, index j) { return j <= cached + i; };
    expect_matches_reference<float>(c, CausalMask{cached, 0}, visible);
    expect_matches_reference<Eigen::bfloat16>(c, CausalMask{cached, 0}, visible);
}

std::string decode_name(const ::testing::TestParamInfo<DecodeParam>& info)
{
    const auto [rows, d, k_tokens] = info.param;
    return "q" + std::to_string(rows.q_tokens) + "_g" + std::to_string(rows.group) + "_d" +
           std::to_string(d) + "_L" + std::to_string(k_tokens);
}

INSTANTIATE_TEST_SUITE_P(Shapes, DecodeSweep,
                         ::testing::Combine(::testing::Values(DecodeRows{1, 1}, DecodeRows{3, 1},
                                                              DecodeRows{1, 4}, DecodeRows{3, 4},
                                                              DecodeRows{3, 5}, DecodeRows{1, 16}),
                                            ::testing::Values<index>(20, 37, 72, 128),
                                            ::testing::Values<index>(41, 2600)),
                         decode_name);

TEST(Kernel, DecodeSplitsTheKeysAndMergesExactly)
{
    const detail::TileShape tiles;
    ASSERT_EQ(detail::decode_splits(255, tiles), 1);
    ASSERT_EQ(detail::decode_splits(2600, tiles), 10);
    ASSERT_EQ(detail::decode_splits(1 << 20, tiles), 32);
    expect_matches_reference<float>({1, 3000, 8, 1, 128}, CausalMask{2999, 0},
                                    [](index i, index j) { return j <= 2999 + i; });
    expect_matches_reference<Eigen::half>({2, 2049, 2, 2, 80}, NoMask{}, everything);
    // Slices the mask hides wholly (every key after position 1501), and rows that see no
    // key at all, merge to nothing.
    expect_matches_reference<float>({2, 3000, 4, 2, 64}, CausalMask{1500, 0},
                                    [](index i, index j) { return j <= 1500 + i; });
    expect_matches_reference<float>({2, 3000, 4, 1, 64}, CausalMask{0, 5000},
                                    [](index, index) { return false; });
    // Scores of several hundred: exp would overflow float without max-stabilisation.
    expect_matches_reference<float>({1, 700, 4, 2, 64, 100.0f}, NoMask{}, everything);
}

TEST(Kernel, QueriesAndKeysOfDifferentLengths)
{
    expect_matches_reference<float>({7, 300, 4, 2, 64}, NoMask{}, everything);
    expect_matches_reference<float>({300, 7, 4, 2, 64}, NoMask{}, everything);
}

TEST(Kernel, Bfloat16KeysAndValues)
{
    expect_matches_reference<Eigen::bfloat16>({1000, 1000, 8, 2, 64}, CausalMask{}, causal);
    expect_matches_reference<Eigen::bfloat16>({65, 65, 8, 1, 128}, NoMask{}, everything);
}

// bf16 queries are widened once and attended as float: on every path, the result is that
// of the widened queries bit for bit, for prefill and decode shapes, views and sources.
TEST(Kernel, Bfloat16QueriesGiveTheResultOfThoseQueriesWidened)
{
    const auto k = random_tensor<Eigen::bfloat16>(301, 2, 72);
    const auto v = random_tensor<Eigen::bfloat16>(301, 2, 72);
    for (const KernelIsa isa : supported_isas()) {
        SCOPED_TRACE("path " + std::string(name(isa)));
        const ForcedIsa forced(isa);
        for (const index q_tokens : {1, 3, 301}) {
            SCOPED_TRACE(q_tokens);
            const auto q = random_tensor<Eigen::bfloat16>(q_tokens, 8, 72);
            const Tensor3<float> widened = q.cast<float>();
            const CausalMask mask{301 - q_tokens, 0};
            const AttentionState want = attention(view(widened), view(k), view(v), mask);
            EXPECT_TRUE(same_bits(attention(view(q), view(k), view(v), mask), want));
            EXPECT_TRUE(same_bits(attention(view(q), KVPages<Eigen::bfloat16>(view(k)),
                                            KVPages<Eigen::bfloat16>(view(v)), mask),
                                  want));
        }
    }
}

TEST(Kernel, Bfloat16QueriesAreCheckedAsFloatOnesAre)
{
    const auto k = random_tensor<Eigen::bfloat16>(9, 2, 8);
    auto q = random_tensor<Eigen::bfloat16>(4, 2, 8);
    q(2, 1, 5) = Eigen::bfloat16(std::numeric_limits<float>::quiet_NaN());
    expect_error([&] { (void)attention(view(q), view(k), view(k)); },
                 "attention: q holds a non-finite value (nan) at token 2, head 1, element 5");
    expect_error(
        [&] {
            (void)attention(view(q), KVPages<Eigen::bfloat16>(view(k)),
                            KVPages<Eigen::bfloat16>(view(k)));
        },
        "attention: q holds a non-finite value (nan) at token 2, head 1, element 5");
    const auto q3 = random_tensor<Eigen::bfloat16>(4, 3, 8);
    expect_error([&] { (void)attention(view(q3), view(k), view(k)); },
                 "attention: q has 3 heads, not a multiple of the 2 kv heads");
    const auto q0 = random_tensor<Eigen::bfloat16>(4, 0, 8);
    expect_error([&] { (void)attention(view(q0), view(k), view(k)); }, "attention: q has 0 heads");
}

// attention_into writes what attention returns: bit for bit into float memory, rounded
// once into bf16 memory, on every path, for prefill and decode shapes with and without
// split keys, views and sources, float and bf16 queries. The memory is filled with NaN
// first, so that a row left unwritten would show.
TEST(Kernel, IntoCallerMemoryGivesWhatAttentionReturns)
{
    const auto k = random_tensor<Eigen::bfloat16>(1100, 2, 72);
    const auto v = random_tensor<Eigen::bfloat16>(1100, 2, 72);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const auto same = [](const auto* got, const float* want, index count) {
        for (index i = 0; i < count; ++i)
            if (std::bit_cast<std::uint32_t>(static_cast<float>(got[i])) !=
                std::bit_cast<std::uint32_t>(
                    static_cast<float>(static_cast<std::remove_cvref_t<decltype(got[i])>>(want[i]))))
                return false;
        return true;
    };
    for (const KernelIsa isa : supported_isas()) {
        SCOPED_TRACE("path " + std::string(name(isa)));
        const ForcedIsa forced(isa);
        // 1 and 3 tokens: the decode kernel, its keys split; 20: one query tile, keys
        // split; 301: several tiles.
        for (const index q_tokens : {1, 3, 20, 301}) {
            SCOPED_TRACE(q_tokens);
            const auto q = random_tensor<Eigen::bfloat16>(q_tokens, 8, 72);
            const Tensor3<float> q_float = q.cast<float>();
            const CausalMask mask{1100 - q_tokens, 0};
            const AttentionState want = attention(view(q_float), view(k), view(v), mask);
            Tensor3<float> output(q_tokens, 8, 72);
            Tensor3<Eigen::bfloat16> rounded(q_tokens, 8, 72);
            Tensor2f lse(q_tokens, 8);
            const auto expect_written = [&](const char* what) {
                SCOPED_TRACE(what);
                EXPECT_TRUE(same(output.data(), want.output.data(), want.output.size()));
                EXPECT_TRUE(same(rounded.data(), want.output.data(), want.output.size()));
                EXPECT_TRUE(same(lse.data(), want.lse.data(), want.lse.size()));
                output.setConstant(nan);
                rounded.setConstant(Eigen::bfloat16(nan));
                lse.setConstant(nan);
            };
            output.setConstant(nan);
            rounded.setConstant(Eigen::bfloat16(nan));
            lse.setConstant(nan);
            attention_into(View3<float>(output), View2f(lse), view(q_float), view(k), view(v), mask);
            attention_into(View3<Eigen::bfloat16>(rounded), View2f(lse), view(q_float), view(k),
                           view(v), mask);
            expect_written("float queries, views");
            attention_into(View3<float>(output), View2f(lse), view(q), view(k), view(v), mask);
            attention_into(View3<Eigen::bfloat16>(rounded), View2f(lse), view(q),
                           KVPages<Eigen::bfloat16>(view(k)), KVPages<Eigen::bfloat16>(view(v)),
                           mask);
            expect_written("bf16 queries, views and sources");
        }
    }
}

// A bad output is refused before anything is written: a wrong shape, null memory, or
// memory that overlaps the other output or an input (which the kernel would overwrite
// before reading it), through a paged source too.
TEST(Kernel, IntoCallerMemoryChecksItsOutputs)
{
    const auto q = random_tensor<float>(4, 4, 8);
    auto k = random_tensor<float>(32, 2, 8);
    const auto v = random_tensor<float>(32, 2, 8);
    Tensor3<float> output(4, 4, 8);
    Tensor2f lse(4, 4);
    output.setConstant(7.0f);
    lse.setConstant(7.0f);
    const auto untouched = [&] {
        const auto is_seven = [](float x) { return x == 7.0f; };
        EXPECT_TRUE(std::all_of(output.data(), output.data() + output.size(), is_seven));
        EXPECT_TRUE(std::all_of(lse.data(), lse.data() + lse.size(), is_seven));
    };
    const auto into = [&](const View3<float>& o, const View2f& l, const ConstView3<float>& queries) {
        attention_into(o, l, queries, view(k), view(v));
    };
    expect_error([&] { into(View3<float>(output.data(), 4, 4, 7), View2f(lse), view(q)); },
                 "attention_into: output is [4, 4, 7] but the queries need [4, 4, 8]");
    expect_error([&] { into(View3<float>(output), View2f(lse.data(), 4, 2), view(q)); },
                 "attention_into: lse is [4, 2] but the queries need [4, 4]");
    expect_error([&] { into(View3<float>(nullptr, 4, 4, 8), View2f(lse), view(q)); },
                 "attention_into: output views null memory but has 128 elements");
    expect_error([&] { into(View3<float>(output), View2f(nullptr, 4, 4), view(q)); },
                 "attention_into: lse views null memory but has 16 elements");
    expect_error([&] { into(View3<float>(output), View2f(output.data() + 100, 4, 4), view(q)); },
                 "attention_into: output and lse overlap");
    untouched();
    // In place over the queries, as an engine reusing its buffers might try.
    Tensor3<float> q_copy = q;
    expect_error(
        [&] { into(View3<float>(q_copy), View2f(lse), ConstView3<float>(q_copy.data(), 4, 4, 8)); },
        "attention_into: output overlaps q: the kernel would overwrite inputs it has yet to read");
    EXPECT_TRUE(std::equal(q_copy.data(), q_copy.data() + q_copy.size(), q.data()));
    expect_error([&] { into(View3<float>(k.data() + 5, 4, 4, 8), View2f(lse), view(q)); },
                 "attention_into: output overlaps k");
    expect_error(
        [&] {
            into(View3<float>(output), View2f(const_cast<float*>(v.data()) + 490, 4, 4), view(q));
        },
        "attention_into: lse overlaps v");
    // Keys in pages 3, 0, 2, 1 of a pool: only the bytes of a page the source uses count.
    std::vector<float> pool(static_cast<std::size_t>(4 * 8 * 2 * 8 + 200));
    const std::vector<std::int32_t> table{3, 0, 2, 1};
    const auto paged = paged_kv<float>(table, pool.data(), 4, 8, 32, 2, 8);
    const auto into_paged = [&](float* o) {
        attention_into(View3<float>(o, 4, 4, 8), View2f(lse), view(q), paged, paged);
    };
    expect_error([&] { into_paged(pool.data() + 3 * 128 + 100); }, "output overlaps k");
    into_paged(pool.data() + 4 * 128); // past the pool's last page
    // A failed finiteness check writes nothing either.
    output.setConstant(7.0f);
    lse.setConstant(7.0f);
    k(3, 1, 2) = std::numeric_limits<float>::infinity();
    expect_error([&] { into(View3<float>(output), View2f(lse), view(q)); },
                 "attention_into: k holds a non-finite value (inf) at token 3, head 1, element 2");
    untouched();
}

// A float result beyond bf16's range (slightly smaller than float's) is an overflow of
// a bf16 output, on the path that writes rows and on the merge of split keys alike: one
// key of value 3.4e38 takes all the weight.
TEST(Kernel, IntoBfloat16MemoryRefusesWhatBfloat16CannotHold)
{
    for (const index keys : {8, 1100}) {
        SCOPED_TRACE(keys);
        Tensor3<float> q(1, 2, 8);
        q.setConstant(1.0f);
        auto k = random_tensor<float>(keys, 1, 8);
        Tensor3<float> v(keys, 1, 8);
        v.setZero();
        for (index c = 0; c < 8; ++c) {
            k(keys / 2, 0, c) = 100.0f;
            v(keys / 2, 0, c) = 3.4e38f;
        }
        Tensor3<float> output(1, 2, 8);
        Tensor3<Eigen::bfloat16> rounded(1, 2, 8);
        Tensor2f lse(1, 2);
        attention_into(View3<float>(output), View2f(lse), view(q), view(k), view(v));
        EXPECT_EQ(output(0, 1, 7), 3.4e38f);
        expect_error(
            [&] {
                attention_into(View3<Eigen::bfloat16>(rounded), View2f(lse), view(q), view(k),
                               view(v));
            },
            "attention: the output of query token 0, head 0 overflow bf16");
    }
}

TEST(Kernel, HalfKeysAndValues)
{
    expect_matches_reference<Eigen::half>({1000, 1000, 8, 2, 64}, CausalMask{}, causal);
    expect_matches_reference<Eigen::half>({65, 65, 8, 1, 80}, NoMask{}, everything);
}

TEST(Kernel, ExtremeLogitsDoNotOverflow)
{
    // Scores up to several hundred: exp would overflow float without max-stabilisation.
    expect_matches_reference<float>({257, 257, 4, 2, 64, 100.0f}, CausalMask{}, causal);
    expect_matches_reference<float>({65, 500, 2, 2, 128, 100.0f}, NoMask{}, everything);
    expect_matches_reference<Eigen::bfloat16>({257, 257, 4, 2, 64, 100.0f}, CausalMask{}, causal);
    expect_matches_reference<Eigen::bfloat16>({65, 500, 2, 2, 128, 100.0f}, NoMask{}, everything);
}

// The online softmax takes a tile against the shift it has where its scores exceed it by
// at most the headroom (OnlineSoftmax::headroom) and raises the shift, in a second pass,
// where they exceed it by more. Keys that grow along the sequence make the scores rise
// from one tile to the next, by hundreds by the last (a weight that overflows float if
// the shift is not raised), the more the higher the query head (head 0's stay 0): some
// columns of a vector must raise the shift while others need not. Every path, float and
// bf16 K/V, the decode kernel too.
TEST(Kernel, ScoresRisingAlongTheKeysRaiseTheShift)
{
    const Case rising{300, 700, 8, 2, 64, 1.0f, 0.1f, true};
    expect_matches_reference<Eigen::bfloat16>(rising, CausalMask{}, causal);
    expect_matches_reference<float>(rising, CausalMask{}, causal);
    const Case decode{3, 2000, 8, 2, 128, 1.0f, 0.03f, true};
    expect_matches_reference<Eigen::bfloat16>(decode, NoMask{}, everything);
    expect_matches_reference<float>(decode, NoMask{}, everything);
}

TEST(Kernel, CausalMaskWithOffsetsForAQueryAfterCachedKeys)
{
    // 10 query tokens at positions 290..299 after 290 cached keys: bottom-right causal.
    const CausalMask mask{290, 0};
    expect_matches_reference<float>({10, 300, 4, 2, 64}, mask,
                                    [](index i, index j) { return j <= 290 + i; });
}

TEST(Kernel, RowsThatSeeNoKeyGiveZeroAndMinusInfinity)
{
    // Keys start at position 70: queries 0..69 see nothing, including whole empty tiles.
    const CausalMask mask{0, 70};
    expect_matches_reference<float>({200, 130, 4, 2, 64}, mask,
                                    [](index i, index j) { return 70 + j <= i; });
}

TEST(Kernel, NoKeysAtAll)
{
    const auto q = random_tensor<float>(5, 4, 16);
    const Tensor3<float> k(0, 2, 16), v(0, 2, 16);
    for (const KernelIsa isa : supported_isas()) {
        const ForcedIsa forced(isa);
        const AttentionState s = attention(view(q), view(k), view(v));
        for (index n = 0; n < s.output.size(); ++n)
            EXPECT_EQ(s.output.data()[n], 0.0f) << name(isa);
        for (index n = 0; n < s.lse.size(); ++n)
            EXPECT_EQ(s.lse.data()[n], -std::numeric_limits<float>::infinity()) << name(isa);
    }
}

// A user-defined mask: the kernel knows masks only through `coverage` and `visible`.
// This one is Star's phase-1 pattern (anchor = first 50 keys, blocks of 100, causal inside a
// block) with rows that see nothing mixed in, so every coverage kind occurs.
struct AnchoredBlocks {
    index anchor = 50;
    index block = 100;

    [[nodiscard]] bool visible(index i, index j) const
    {
        if (i % 97 == 5)
            return false;
        return j <= i && (j < anchor || j / block == i / block);
    }
    [[nodiscard]] Coverage coverage(index, index qe, index kb, index) const
    {
        if (kb > qe - 1)
            return Coverage::none;
        return Coverage::partial;
    }
};
static_assert(Mask<AnchoredBlocks>);

TEST(Kernel, UserDefinedBlockSparseMask)
{
    const AnchoredBlocks mask;
    expect_matches_reference<float>({777, 777, 4, 1, 64}, mask,
                                    [&](index i, index j) { return mask.visible(i, j); });
}

TEST(Kernel, ExplicitScale)
{
    const auto q = random_tensor<float>(33, 2, 16);
    const auto k = random_tensor<float>(40, 1, 16);
    const auto v = random_tensor<float>(40, 1, 16);
    const ReferenceResult want = reference_attention(view(q), view(k), view(v), everything, 0.3);
    const Tolerance tol = tolerance(want, 16, 40);
    for (const KernelIsa isa : supported_isas()) {
        const ForcedIsa forced(isa);
        const AttentionState got = attention(view(q), view(k), view(v), NoMask{}, {0.3f});
        const Deviation dev = deviation(got, want);
        EXPECT_LE(dev.output, tol.output) << name(isa);
        EXPECT_LE(dev.lse, tol.lse) << name(isa);
    }
}

} // namespace
} // namespace star::test
