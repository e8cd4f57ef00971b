// Several sequences per call (kernel/batch.hpp): a batch of sequences over their own keys
// (a decode step of many requests), and sequences packed in one tensor (varlen prefill).
// The promise is exact: each sequence's result is the one `attention` gives it alone, bit
// for bit, whatever else is in the batch and however many threads run it. So the tests
// compare bits with `attention`, which test_kernel and test_masks check against the
// double-precision reference; one case per entry point is also checked against that
// reference directly, so that a batch path that skipped the kernel could not pass.

#include <gtest/gtest.h>

#include <tbb/task_arena.h>

#include <string>
#include <vector>

#include <star/kernel/batch.hpp>

#include "expect_error.hpp"
#include "isa_paths.hpp"
#include "reference.hpp"

namespace star::test {
namespace {

// The rows [first, first + count) of a state, as a state of their own.
AttentionState rows_of(const AttentionState& s, index first, index count)
{
    AttentionState part(count, s.output.dimension(1), s.output.dimension(2));
    const index row = s.output.dimension(1) * s.output.dimension(2);
    std::copy_n(s.output.data() + first * row, count * row, part.output.data());
    std::copy_n(s.lse.data() + first * s.lse.dimension(1), count * s.lse.dimension(1),
                part.lse.data());
    return part;
}

struct Request {
    Tensor3<float> q, k, v;
};

// A decode step of requests of very different caches: a long one (split over its keys),
// short ones, an empty cache, a speculative query of several tokens, other head counts.
std::vector<Request> mixed_requests()
{
    struct Size {
        index q_tokens, keys, q_heads, kv_heads, d;
    };
    const std::vector<Size> sizes = {{1, 3001, 8, 2, 40}, {1, 17, 8, 2, 40}, {1, 0, 8, 2, 40},
                                     {3, 290, 6, 3, 24},  {1, 1, 4, 4, 72},  {40, 700, 4, 1, 20}};
    std::vector<Request> requests;
    for (const Size& s : sizes)
        requests.push_back({random_tensor<float>(s.q_tokens, s.q_heads, s.d),
                            random_tensor<float>(s.keys, s.kv_heads, s.d),
                            random_tensor<float>(s.keys, s.kv_heads, s.d)});
    return requests;
}

class Batch : public ::testing::TestWithParam<KernelIsa> {};

TEST_P(Batch, EachSequenceIsWhatAttentionGivesItAlone)
{
    const ForcedIsa forced(GetParam());
    const std::vector<Request> requests = mixed_requests();
    std::vector<BatchedSequence<float>> batch;
    for (const Request& r : requests)
        batch.push_back({view(r.q), view(r.k), view(r.v)});
    const std::vector<AttentionState> together = attention_batch(batch);
    ASSERT_EQ(together.size(), requests.size());
    for (std::size_t s = 0; s < requests.size(); ++s)
        EXPECT_TRUE(same_bits(
            together[s], attention(view(requests[s].q), view(requests[s].k), view(requests[s].v))))
            << "sequence " << s;

    // The long cache against the reference, so that the batch is known to compute at all.
    const ReferenceResult reference = reference_attention(
        view(requests[0].q), view(requests[0].k), view(requests[0].v),
        [](index, index) { return true; }, 1.0 / std::sqrt(double(requests[0].q.dimension(2))));
    const Deviation dev = deviation(together[0], reference);
    const Tolerance tol =
        tolerance(reference, requests[0].q.dimension(2), requests[0].k.dimension(0));
    EXPECT_TRUE(dev.all_finite && dev.infinities_match);
    EXPECT_LE(dev.output, tol.output);
    EXPECT_LE(dev.lse, tol.lse);
    // The empty cache: output 0 and lse -inf, as attention gives.
    EXPECT_EQ(together[2].lse(0, 0), -std::numeric_limits<float>::infinity());
}

TEST_P(Batch, MasksAndTransformsArePerSequence)
{
    const ForcedIsa forced(GetParam());
    // A speculative step of 4 tokens after its cache: causal with the cache before it.
    const std::vector<Request> requests = mixed_requests();
    std::vector<BatchedSequence<float, CausalMask, SoftCap>> batch;
    for (std::size_t s = 0; s < requests.size(); ++s) {
        const Request& r = requests[s];
        const index cached = r.k.dimension(0) - r.q.dimension(0);
        batch.push_back({view(r.q), view(r.k), view(r.v), CausalMask{std::max<index>(cached, 0)},
                         SoftCap{2.0f + static_cast<float>(s)}});
    }
    const AttentionOptions options{.scale = 0.3f};
    const std::vector<AttentionState> together = attention_batch(batch, options);
    for (std::size_t s = 0; s < requests.size(); ++s)
        EXPECT_TRUE(same_bits(together[s], attention(batch[s].q, batch[s].k, batch[s].v,
                                                     batch[s].mask, options, batch[s].transform)))
            << "sequence " << s;
}

TEST_P(Batch, PackedSequencesAreEachAttendedAlone)
{
    const ForcedIsa forced(GetParam());
    // Lengths that cross tiles, an empty sequence, a single token, a sequence of one tile.
    const std::vector<index> lengths = {130, 0, 1, 300, 7, 256};
    std::vector<index> starts = {0};
    for (const index n : lengths)
        starts.push_back(starts.back() + n);
    const index tokens = starts.back();
    const auto q = random_tensor<float>(tokens, 6, 36);
    const auto k = random_tensor<Eigen::bfloat16>(tokens, 2, 36);
    const auto v = random_tensor<Eigen::bfloat16>(tokens, 2, 36);

    const auto expect_each_alone = [&](const auto& mask, const auto& transform,
                                       const std::string& what) {
        const AttentionState packed =
            attention_packed(view(q), view(k), view(v), std::span<const index>(starts), mask,
                             AttentionOptions{}, transform);
        ASSERT_EQ(packed.output.dimension(0), tokens) << what;
        for (std::size_t s = 0; s + 1 < starts.size(); ++s) {
            const index first = starts[s], count = starts[s + 1] - first;
            const AttentionState alone =
                attention(token_slice(view(q), first, count), token_slice(view(k), first, count),
                          token_slice(view(v), first, count), mask, AttentionOptions{}, transform);
            EXPECT_TRUE(same_bits(rows_of(packed, first, count), alone))
                << what << ", sequence " << s;
        }
    };
    expect_each_alone(CausalMask{}, NoTransform{}, "causal");
    expect_each_alone(SlidingWindowMask{9}, SoftCap{5.0f}, "window of 9, soft cap");

    // Against the reference: a token sees its own sequence's keys up to itself only.
    std::vector<index> document_of(static_cast<std::size_t>(tokens));
    for (std::size_t s = 0; s + 1 < starts.size(); ++s)
        for (index t = starts[s]; t < starts[s + 1]; ++t)
            document_of[static_cast<std::size_t>(t)] = static_cast<index>(s);
    const ReferenceResult reference = reference_attention(
        view(q), view(k), view(v),
        [&](index i, index j) {
            return j <= i && document_of[static_cast<std::size_t>(i)] ==
                                 document_of[static_cast<std::size_t>(j)];
        },
        1.0 / std::sqrt(36.0));
    const AttentionState packed =
        attention_packed(view(q), view(k), view(v), std::span<const index>(starts));
    const Deviation dev = deviation(packed, reference);
    const Tolerance tol = tolerance(reference, 36, 300);
    EXPECT_TRUE(dev.all_finite && dev.infinities_match);
    EXPECT_LE(dev.output, tol.output);
    EXPECT_LE(dev.lse, tol.lse);
}

// bf16 queries, as a model running in bf16 projects them: each sequence of a batch and of
// a packed call is what attention gives its queries alone, bit for bit.
TEST_P(Batch, Bfloat16QueriesAreAttendedAsAloneToo)
{
    const ForcedIsa forced(GetParam());
    const std::vector<Request> requests = mixed_requests();
    std::vector<Tensor3<Eigen::bfloat16>> queries;
    for (const Request& r : requests)
        queries.push_back(r.q.cast<Eigen::bfloat16>());
    std::vector<BatchedSequence<float, NoMask, NoTransform, Eigen::bfloat16>> batch;
    for (std::size_t s = 0; s < requests.size(); ++s)
        batch.push_back({view(queries[s]), view(requests[s].k), view(requests[s].v)});
    const std::vector<AttentionState> together = attention_batch(batch);
    ASSERT_EQ(together.size(), requests.size());
    for (std::size_t s = 0; s < requests.size(); ++s)
        EXPECT_TRUE(same_bits(
            together[s], attention(view(queries[s]), view(requests[s].k), view(requests[s].v))))
            << "sequence " << s;

    const std::vector<index> starts = {0, 130, 131, 431};
    const auto q = random_tensor<Eigen::bfloat16>(431, 6, 36);
    const auto k = random_tensor<Eigen::bfloat16>(431, 2, 36);
    const auto v = random_tensor<Eigen::bfloat16>(431, 2, 36);
    const AttentionState packed =
        attention_packed(view(q), view(k), view(v), std::span<const index>(starts));
    for (std::size_t s = 0; s + 1 < starts.size(); ++s) {
        const index first = starts[s], count = starts[s + 1] - first;
        EXPECT_TRUE(same_bits(rows_of(packed, first, count),
                              attention(token_slice(view(q), first, count),
                                        token_slice(view(k), first, count),
                                        token_slice(view(v), first, count), CausalMask{})))
            << "packed sequence " << s;
    }
}

INSTANTIATE_TEST_SUITE_P(EveryPath, Batch, ::testing::ValuesIn(supported_isas()), isa_name);

TEST(BatchThreads, ResultsDoNotDependOnTheThreadCount)
{
    const std::vector<Request> requests = mixed_requests();
    std::vector<BatchedSequence<float>> batch;
    for (const Request& r : requests)
        batch.push_back({view(r.q), view(r.k), view(r.v)});
    std::vector<AttentionState> one, two;
    tbb::task_arena(1).execute([&] { one = attention_batch(batch); });
    tbb::task_arena(2).execute([&] { two = attention_batch(batch); });
    for (std::size_t s = 0; s < requests.size(); ++s)
        EXPECT_TRUE(same_bits(one[s], two[s])) << "sequence " << s;
}

TEST(BatchThreads, AnEmptyBatchGivesNoResults)
{
    EXPECT_TRUE(attention_batch(std::vector<BatchedSequence<float>>{}).empty());
}

TEST(BatchErrors, EachProblemIsNamed)
{
    const auto q = random_tensor<float>(4, 4, 8);
    const auto k = random_tensor<float>(4, 2, 8);
    const auto odd = random_tensor<float>(4, 3, 8);
    auto bad = random_tensor<float>(4, 2, 8);
    bad(2, 1, 3) = std::numeric_limits<float>::quiet_NaN();

    const std::vector<BatchedSequence<float>> batch = {{view(q), view(k), view(k)},
                                                       {view(q), view(odd), view(odd)}};
    expect_error([&] { (void)attention_batch(batch); }, "attention_batch: sequence 1");
    const std::vector<BatchedSequence<float>> not_finite = {{view(q), view(k), view(k)},
                                                            {view(q), view(k), view(bad)}};
    expect_error([&] { (void)attention_batch(not_finite); }, "attention_batch: sequence 1: v");
    std::vector<BatchedSequence<float, NoMask, SoftCap>> capped = {
        {view(q), view(k), view(k), {}, SoftCap{-1.0f}}};
    expect_error([&] { (void)attention_batch(capped); }, "sequence 0: SoftCap's cap");

    const auto packed = [&](std::vector<index> starts) {
        return [&q, &k, starts] {
            (void)attention_packed(view(q), view(k), view(k), std::span<const index>(starts));
        };
    };
    expect_error(packed({}), "starts needs at least 2 entries");
    expect_error(packed({0}), "starts needs at least 2 entries");
    expect_error(packed({1, 4}), "starts must run from 0 to the token count 4, got 1 to 4");
    expect_error(packed({0, 3}), "starts must run from 0 to the token count 4, got 0 to 3");
    expect_error(packed({0, 3, 2, 4}), "starts must not decrease, got 3 then 2 at entry 2");
    const auto short_k = random_tensor<float>(3, 2, 8);
    expect_error(
        [&] {
            const std::vector<index> starts = {0, 4};
            (void)attention_packed(view(q), view(short_k), view(short_k),
                                   std::span<const index>(starts));
        },
        "q, k and v must hold the same packed tokens, got 4, 3 and 3");
    expect_error(
        [&] {
            const std::vector<index> starts = {0, 2, 4};
            const std::vector<float> slopes = {1.0f};
            (void)attention_packed(view(q), view(k), view(k), std::span<const index>(starts),
                                   CausalMask{}, AttentionOptions{}, Alibi{slopes});
        },
        "attention_packed: sequence 0: Alibi has 1 slopes but q has 4 heads");
}

} // namespace
} // namespace star::test
