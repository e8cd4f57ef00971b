// Many threads using the library at once, each with its own communicator and caches, and
// sharing the (immutable) algorithm objects: every thread must get exactly what a run on
// its own gets. Run under TSan by the tsan preset. And the rule for sharing: one
// communicator serves one thread at a time, which LocalCommunicator enforces.

#include <gtest/gtest.h>

#include <cstring>
#include <future>
#include <thread>
#include <vector>

#include <star/star.hpp>

#include "expect_error.hpp"
#include "reference.hpp"

namespace star::test {
namespace {

bool identical(const AttentionState& a, const AttentionState& b)
{
    return a.shape() == b.shape() &&
           std::memcmp(a.output.data(), b.output.data(), sizeof(float) * a.output.size()) == 0 &&
           std::memcmp(a.lse.data(), b.lse.data(), sizeof(float) * a.lse.size()) == 0;
}

// One conversation: a context through global, ring and Star phase 1, then a query and two
// decode steps through Star phase 2. Everything it allocates is its own; the algorithm
// objects are shared with every other thread.
struct Conversation {
    Tensor3<float> q, k, v;
    std::vector<Tensor3<float>> steps_q, steps_k, steps_v;

    explicit Conversation(index tokens)
        : q(random_tensor<float>(tokens, 4, 24)), k(random_tensor<float>(tokens, 2, 24)),
          v(random_tensor<float>(tokens, 2, 24))
    {
        for (const index step_tokens : {5, 1, 1}) {
            steps_q.push_back(random_tensor<float>(step_tokens, 4, 24));
            steps_k.push_back(random_tensor<float>(step_tokens, 2, 24));
            steps_v.push_back(random_tensor<float>(step_tokens, 2, 24));
        }
    }

    std::vector<AttentionState> run(const StarAttention<>& star, const RingAttention& ring) const
    {
        const index tokens = q.dimension(0);
        std::vector<AttentionState> results;
        results.push_back(global_attention(view(q), view(k), view(v)));
        LocalCommunicator comm(3);
        results.push_back(assemble(ring.run(comm, view(q), view(k), view(v)), {tokens, 4, 24}));
        const StarPlan plan = star.plan(tokens, 3);
        auto caches = comm.local<KVCache<float>>();
        results.push_back(assemble(
            star.encode_context(comm, plan, caches, view(q), view(k), view(v)), {tokens, 4, 24}));
        for (std::size_t s = 0; s < steps_q.size(); ++s)
            results.push_back(*star.attend_query(comm, plan, caches, view(steps_q[s]),
                                                 view(steps_k[s]),
                                                 view(steps_v[s]))[plan.query_host()]);
        return results;
    }
};

TEST(Concurrency, ThreadsWithTheirOwnStateGetWhatTheyGetAlone)
{
    const StarAttention<> star(FixedBlocks{70});
    const RingAttention ring({.layout = RingLayout::zigzag});
    constexpr int threads = 6;
    std::vector<Conversation> conversations;
    std::vector<std::vector<AttentionState>> alone;
    for (int t = 0; t < threads; ++t) {
        conversations.emplace_back(150 + 37 * t);
        alone.push_back(conversations.back().run(star, ring));
    }

    std::vector<std::vector<AttentionState>> together(threads);
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t)
        workers.emplace_back([&, t] { together[t] = conversations[t].run(star, ring); });
    for (std::thread& w : workers)
        w.join();

    for (int t = 0; t < threads; ++t) {
        ASSERT_EQ(together[t].size(), alone[t].size());
        for (std::size_t i = 0; i < alone[t].size(); ++i)
            EXPECT_TRUE(identical(together[t][i], alone[t][i]))
                << "thread " << t << ", result " << i;
    }
}

TEST(Concurrency, ASecondThreadOnTheSameCommunicatorIsRefused)
{
    LocalCommunicator comm(2);
    std::promise<void> step_started, may_finish;
    std::shared_future<void> finish = may_finish.get_future().share();
    std::thread first([&] {
        comm.for_each_host([&](int rank) {
            if (rank == 0) {
                step_started.set_value();
                finish.wait();
            }
        });
    });
    step_started.get_future().wait();
    auto buffers = comm.local<std::vector<float>>();
    expect_error([&] { comm.broadcast(buffers, 0); },
                 "another call on this communicator is running");
    expect_error([&] { comm.for_each_host([](int) {}); }, "give each thread its own communicator");
    may_finish.set_value();
    first.join();
    comm.for_each_host([](int) {}); // free again once the first call has returned
}

TEST(Concurrency, CallingTheCommunicatorFromInsideAStepIsRefused)
{
    LocalCommunicator comm(2, 1);
    auto buffers = comm.local<std::vector<float>>();
    expect_error([&] { comm.for_each_host([&](int) { (void)comm.all_gather(buffers); }); },
                 "from inside a for_each_host step");
    comm.for_each_host([](int) {}); // the failed call left the communicator usable
}

} // namespace
} // namespace star::test
