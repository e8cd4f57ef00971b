// LocalCommunicator: in-process hosts, their collectives and their per-host steps; and
// SimulatedCluster, a cluster modelled over them.

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <star/comm/simulated.hpp>

#include "expect_error.hpp"
#include "reference.hpp"

namespace star::test {
namespace {

// A message for host `rank` that no other host's equals: rank + 1 elements, all distinct.
template <class T>
std::vector<T> message_of(int rank)
{
    std::vector<T> m;
    for (int n = 0; n <= rank; ++n)
        m.push_back(T(static_cast<float>(100 * rank + n) * 0.5f));
    return m;
}

// Element types compare by their bytes: a message travels as it is stored, never converted.
template <class T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b)
{
    return a.size() == b.size() &&
           (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

template <class T>
PerHost<std::vector<T>> messages(LocalCommunicator& comm)
{
    auto buffers = comm.local<std::vector<T>>();
    comm.for_each_host([&](int rank) { buffers[rank] = message_of<T>(rank); });
    return buffers;
}

template <class T>
class Collectives : public ::testing::Test {
};
using MessageTypes = ::testing::Types<float, int, Eigen::bfloat16>;
struct MessageNames {
    template <class T>
    static std::string GetName(int)
    {
        if constexpr (std::is_same_v<T, float>)
            return "float";
        else if constexpr (std::is_same_v<T, int>)
            return "int";
        else
            return "bfloat16";
    }
};
TYPED_TEST_SUITE(Collectives, MessageTypes, MessageNames);

TYPED_TEST(Collectives, BroadcastCopiesTheRootBufferToEveryHost)
{
    for (const int root : {0, 2, 4}) {
        LocalCommunicator comm(5);
        auto buffers = messages<TypeParam>(comm);
        comm.broadcast(buffers, root);
        for (int r = 0; r < 5; ++r)
            EXPECT_TRUE(same_bytes(buffers[r], message_of<TypeParam>(root)))
                << "root " << root << ", host " << r;
    }
}

TYPED_TEST(Collectives, GatherDeliversEveryBufferInRankOrderToTheRootOnly)
{
    for (const int root : {0, 3}) {
        LocalCommunicator comm(4);
        const auto buffers = messages<TypeParam>(comm);
        const auto received = comm.gather(buffers, root);
        ASSERT_EQ(received[root].size(), 4u);
        for (int r = 0; r < 4; ++r)
            EXPECT_TRUE(
                same_bytes(received[root][static_cast<std::size_t>(r)], message_of<TypeParam>(r)))
                << "buffer of host " << r;
        for (int r = 0; r < 4; ++r) {
            if (r != root) {
                EXPECT_TRUE(received[r].empty()) << "host " << r << " is not the root";
            }
        }
        // the senders keep their buffers
        for (int r = 0; r < 4; ++r)
            EXPECT_TRUE(same_bytes(buffers[r], message_of<TypeParam>(r)));
    }
}

TYPED_TEST(Collectives, AllGatherDeliversEveryBufferInRankOrderToEveryHost)
{
    LocalCommunicator comm(4);
    const auto received = comm.all_gather(messages<TypeParam>(comm));
    for (int host = 0; host < 4; ++host) {
        ASSERT_EQ(received[host].size(), 4u) << "host " << host;
        for (int r = 0; r < 4; ++r)
            EXPECT_TRUE(
                same_bytes(received[host][static_cast<std::size_t>(r)], message_of<TypeParam>(r)))
                << "host " << host << ", buffer of host " << r;
    }
}

TYPED_TEST(Collectives, ExchangeAlongARingShift)
{
    for (const int shift : {1, 2}) {
        const int hosts = 5;
        LocalCommunicator comm(hosts);
        auto routes = comm.local<Route>();
        for (int r = 0; r < hosts; ++r)
            routes[r] = {(r + shift) % hosts, (r - shift + hosts) % hosts};
        const auto received = comm.exchange(messages<TypeParam>(comm), routes);
        for (int r = 0; r < hosts; ++r)
            EXPECT_TRUE(same_bytes(received[r], message_of<TypeParam>((r - shift + hosts) % hosts)))
                << "shift " << shift << ", host " << r;
    }
}

TYPED_TEST(Collectives, ExchangeBetweenSomeHostsLeavesTheOthersEmpty)
{
    LocalCommunicator comm(4);
    auto routes = comm.local<Route>();
    routes[0].send_to = 3;
    routes[3].receive_from = 0;
    routes[2].send_to = 1;
    routes[1].receive_from = 2;
    const auto received = comm.exchange(messages<TypeParam>(comm), routes);
    EXPECT_TRUE(same_bytes(received[3], message_of<TypeParam>(0)));
    EXPECT_TRUE(same_bytes(received[1], message_of<TypeParam>(2)));
    EXPECT_TRUE(received[0].empty());
    EXPECT_TRUE(received[2].empty());
}

// A communicator without `start_exchange` still serves algorithms that overlap: the
// exchange happens at the start and `wait()` hands over its result.
TYPED_TEST(Collectives, StartedExchangeFallsBackToTheBlockingOne)
{
    static_assert(!OverlappingExchange<LocalCommunicator>);
    LocalCommunicator comm(3);
    auto routes = comm.local<Route>();
    for (int r = 0; r < 3; ++r)
        routes[r] = {(r + 1) % 3, (r + 2) % 3};
    const auto buffers = messages<TypeParam>(comm);
    auto pending = detail::start_exchange(comm, buffers, routes);
    const auto received = pending.wait();
    for (int r = 0; r < 3; ++r)
        EXPECT_TRUE(same_bytes(received[r], message_of<TypeParam>((r + 2) % 3))) << "host " << r;
}

TEST(LocalCommunicator, SizeAndLocalValuesCoverEveryHost)
{
    LocalCommunicator comm(7);
    EXPECT_EQ(comm.size(), 7);
    const auto values = comm.local<int>();
    EXPECT_EQ(values.first_rank(), 0);
    EXPECT_EQ(values.count(), 7);
    EXPECT_EQ(values.end_rank(), 7);
    for (int r = 0; r < 7; ++r)
        EXPECT_TRUE(values.holds(r));
    EXPECT_FALSE(values.holds(-1));
    EXPECT_FALSE(values.holds(7));
    comm.barrier();
}

TEST(LocalCommunicator, OneHostCollectivesAreIdentities)
{
    LocalCommunicator comm(1);
    auto buffers = messages<float>(comm);
    comm.broadcast(buffers, 0);
    EXPECT_EQ(buffers[0], message_of<float>(0));
    EXPECT_EQ(comm.gather(buffers, 0)[0], std::vector<std::vector<float>>{message_of<float>(0)});
    EXPECT_EQ(comm.all_gather(buffers)[0], std::vector<std::vector<float>>{message_of<float>(0)});
    auto routes = comm.local<Route>();
    routes[0] = {0, 0}; // to itself
    EXPECT_EQ(comm.exchange(buffers, routes)[0], message_of<float>(0));
}

TEST(LocalCommunicator, ExchangeWithUnpairedRoutesThrows)
{
    LocalCommunicator comm(3);
    const auto buffers = messages<float>(comm);
    {
        auto routes = comm.local<Route>();
        routes[0].send_to = 1; // host 1 does not receive
        expect_error([&] { (void)comm.exchange(buffers, routes); },
                     "host 0 sends to host 1, which does not receive from it");
    }
    {
        auto routes = comm.local<Route>();
        routes[0].send_to = 1;
        routes[1].receive_from = 2; // from someone else
        routes[2].send_to = 1;
        expect_error([&] { (void)comm.exchange(buffers, routes); }, "does not receive from it");
    }
    {
        auto routes = comm.local<Route>();
        routes[2].receive_from = 0; // host 0 does not send
        expect_error([&] { (void)comm.exchange(buffers, routes); },
                     "host 2 receives from host 0, which does not send to it");
    }
}

TEST(LocalCommunicator, RanksOutOfRangeThrow)
{
    LocalCommunicator comm(3);
    auto buffers = messages<float>(comm);
    expect_error([&] { comm.broadcast(buffers, 3); }, "root 3 is out of range");
    expect_error([&] { comm.broadcast(buffers, -1); }, "root -1 is out of range");
    expect_error([&] { (void)comm.gather(buffers, 3); }, "root 3 is out of range");
    expect_error([&] { (void)comm.gather(buffers, -1); }, "out of range");
    auto routes = comm.local<Route>();
    routes[0].send_to = 5;
    expect_error([&] { (void)comm.exchange(buffers, routes); }, "destination 5 is out of range");
    routes[0] = {Route::no_host, 7};
    expect_error([&] { (void)comm.exchange(buffers, routes); }, "source 7 is out of range");
}

TEST(LocalCommunicator, BuffersForAnotherGroupSizeThrow)
{
    LocalCommunicator comm(3);
    PerHost<std::vector<float>> wrong(0, 2);
    expect_error([&] { comm.broadcast(wrong, 0); }, "expected one value for each of the 3 hosts");
    expect_error([&] { (void)comm.gather(wrong, 0); }, "expected one value for each");
    expect_error([&] { (void)comm.all_gather(wrong); }, "expected one value for each");
    const PerHost<Route> routes(0, 3);
    expect_error([&] { (void)comm.exchange(wrong, routes); }, "expected one value for each");
}

TEST(LocalCommunicator, ZeroOrNegativeHostsThrow)
{
    expect_error([] { LocalCommunicator comm(0); }, "at least 1");
    expect_error([] { LocalCommunicator comm(-2); }, "at least 1");
    expect_error([] { LocalCommunicator comm(4, -1); }, "max_threads");
}

TEST(PerHost, AccessOutsideTheLocalHostsThrows)
{
    LocalCommunicator comm(4);
    auto values = comm.local<int>();
    const auto& constant = values;
    expect_error([&] { (void)values[4]; }, "host 4 is not run by this process");
    expect_error([&] { (void)values[-1]; }, "host -1 is not run by this process");
    expect_error([&] { (void)constant[4]; }, "is not run by this process");
    PerHost<int> shifted(3, 2, 9); // hosts 3 and 4
    EXPECT_EQ(shifted[3], 9);
    EXPECT_EQ(shifted[4], 9);
    expect_error([&] { (void)shifted[2]; }, "it runs hosts [3, 5)");
}

// Every rank runs exactly once, and never more at a time than the thread cap allows.
void expect_every_host_runs_once(LocalCommunicator& comm, int max_concurrency)
{
    const int hosts = comm.size();
    std::vector<std::atomic<int>> runs(static_cast<std::size_t>(hosts));
    std::atomic<int> running{0}, peak{0};
    comm.for_each_host([&](int rank) {
        const int now = ++running;
        int seen = peak.load();
        while (now > seen && !peak.compare_exchange_weak(seen, now)) {
        }
        // a little work, so that hosts overlap when they can
        volatile double sink = 0;
        for (int n = 0; n < 20000; ++n)
            sink = sink + n * 1e-9;
        ++runs[static_cast<std::size_t>(rank)];
        --running;
    });
    for (int r = 0; r < hosts; ++r)
        EXPECT_EQ(runs[static_cast<std::size_t>(r)].load(), 1) << "host " << r;
    EXPECT_LE(peak.load(), max_concurrency);
}

TEST(ForEachHost, SixtyFourHostsEachRunExactlyOnce)
{
    LocalCommunicator comm(64);
    expect_every_host_runs_once(comm, 64);
    expect_every_host_runs_once(comm, 64); // and again: a communicator is reusable
}

TEST(ForEachHost, SixtyFourHostsOnOneThread)
{
    LocalCommunicator comm(64, 1);
    expect_every_host_runs_once(comm, 1);
}

TEST(ForEachHost, SixtyFourHostsOnTwoThreads)
{
    LocalCommunicator comm(64, 2);
    expect_every_host_runs_once(comm, 2);
}

TEST(ForEachHost, StepsMayUseParallelismThemselves)
{
    // Each host runs a parallel kernel inside its step, as StarAttention does.
    LocalCommunicator comm(16, 2);
    const auto q = random_tensor<float>(40, 2, 16);
    const auto k = random_tensor<float>(300, 1, 16);
    const auto v = random_tensor<float>(300, 1, 16);
    const AttentionState alone = attention(view(q), view(k), view(v));
    auto states = comm.local<AttentionState>();
    comm.for_each_host([&](int rank) { states[rank] = attention(view(q), view(k), view(v)); });
    for (int r = 0; r < 16; ++r)
        for (index n = 0; n < alone.output.size(); ++n)
            ASSERT_EQ(states[r].output.data()[n], alone.output.data()[n]) << "host " << r;
}

struct HostFailure : std::runtime_error {
    int rank;
    explicit HostFailure(int r) : std::runtime_error("host failed"), rank(r) {}
};

TEST(ForEachHost, AnExceptionInOneHostPropagatesAsThatException)
{
    for (const int threads : {0, 1, 2}) {
        LocalCommunicator comm(64, threads);
        try {
            comm.for_each_host([](int rank) {
                if (rank == 37)
                    throw HostFailure(rank);
            });
            ADD_FAILURE() << "no exception with max_threads " << threads;
        } catch (const HostFailure& e) {
            EXPECT_EQ(e.rank, 37);
        } catch (...) {
            ADD_FAILURE() << "another exception type with max_threads " << threads;
        }
    }
    LocalCommunicator comm(8);
    expect_error([&] { comm.for_each_host([](int rank) { (void)PerHost<int>(0, 2)[rank + 5]; }); },
                 "is not run by this process");
}

TEST(ForEachHost, CommunicatorStillWorksAfterAStepThrew)
{
    LocalCommunicator comm(8, 2);
    EXPECT_THROW(comm.for_each_host([](int rank) {
        if (rank == 3)
            throw HostFailure(rank);
    }),
                 HostFailure);
    expect_every_host_runs_once(comm, 2);
}

} // namespace
} // namespace star::test

namespace star::test {
namespace {

TEST(CheckAgreement, EqualSettingsPass)
{
    LocalCommunicator comm(5);
    auto settings = comm.local<std::vector<std::int64_t>>();
    for (int r = 0; r < 5; ++r)
        settings[r] = {7, 8};
    const char* const names[] = {"a", "b"};
    detail::check_agreement(comm, settings, names, "here"); // no throw
}

TEST(CheckAgreement, TheFirstDisagreementIsNamedWithBothHosts)
{
    LocalCommunicator comm(4);
    auto settings = comm.local<std::vector<std::int64_t>>();
    for (int r = 0; r < 4; ++r)
        settings[r] = {128, 64};
    settings[3][1] = 80;
    const char* const names[] = {"the block size", "head_dim"};
    expect_error([&] { detail::check_agreement(comm, settings, names, "phase 1"); },
                 "phase 1: the hosts disagree on head_dim: host 0 has 64, host 3 has 80");
}

// A host that holds no piece of the context cannot know its shapes: it agrees with any
// value, and the first host that knows one is the one the others are compared with.
TEST(CheckAgreement, UnknownSettingsAgreeWithAnyValue)
{
    LocalCommunicator comm(4);
    auto settings = comm.local<std::vector<std::int64_t>>();
    settings[0] = {5, detail::unknown_setting};
    settings[1] = {5, 64};
    settings[2] = {detail::unknown_setting, detail::unknown_setting};
    settings[3] = {5, 64};
    const char* const names[] = {"the block size", "head_dim"};
    detail::check_agreement(comm, settings, names, "here"); // no throw
    settings[3][1] = 80;
    expect_error([&] { detail::check_agreement(comm, settings, names, "phase 1"); },
                 "phase 1: the hosts disagree on head_dim: host 1 has 64, host 3 has 80");
}

// The per-step agreement: one all-gather carries a digest of each host's settings and its
// payload. Agreeing hosts get every payload back; a host whose settings differ, in any one
// place, is named as by check_agreement.
TEST(CheckAgreementInStep, ReturnsThePayloadsAndNamesADisagreement)
{
    LocalCommunicator comm(3);
    auto settings = comm.local<std::vector<std::int64_t>>();
    auto payload = comm.local<std::vector<std::int64_t>>();
    for (int r = 0; r < 3; ++r)
        settings[r] = {128, 64, -1};
    payload[2] = {4242};
    const char* const names[] = {"the block size", "head_dim", "the scale"};
    const auto all = detail::check_agreement_in_step(comm, settings, payload, names, "step");
    for (int r = 0; r < 3; ++r) {
        ASSERT_EQ(all[r].size(), 3u);
        EXPECT_TRUE(all[r][0].empty());
        EXPECT_TRUE(all[r][1].empty());
        EXPECT_EQ(all[r][2], std::vector<std::int64_t>{4242});
    }
    for (const std::size_t place : {0u, 1u, 2u}) {
        auto changed = settings;
        changed[1][place] += std::int64_t{1} << 62; // a large difference, as digests wrap
        expect_error(
            [&] { (void)detail::check_agreement_in_step(comm, changed, payload, names, "step"); },
            std::string("step: the hosts disagree on ") + names[place] + ": host 0 has ");
    }
}

// Counts the values every local host receives through the collectives of a
// LocalCommunicator.
class CountingCommunicator {
public:
    explicit CountingCommunicator(int hosts) : inner_(hosts) {}
    [[nodiscard]] int size() const { return inner_.size(); }
    template <class T>
    [[nodiscard]] PerHost<T> local() const
    {
        return inner_.template local<T>();
    }
    template <class F>
    void for_each_host(F&& step)
    {
        inner_.for_each_host(std::forward<F>(step));
    }
    template <Message T>
    void broadcast(PerHost<std::vector<T>>& buffers, int root)
    {
        inner_.broadcast(buffers, root);
        for (int r = 0; r < size(); ++r)
            received += buffers[r].size();
    }
    template <Message T>
    PerHost<std::vector<std::vector<T>>> gather(const PerHost<std::vector<T>>& buffers, int root)
    {
        auto all = inner_.gather(buffers, root);
        for (int r = 0; r < size(); ++r)
            for (const auto& b : all[r])
                received += b.size();
        return all;
    }
    template <Message T>
    PerHost<std::vector<std::vector<T>>> all_gather(const PerHost<std::vector<T>>& buffers)
    {
        auto all = inner_.all_gather(buffers);
        for (int r = 0; r < size(); ++r)
            for (const auto& b : all[r])
                received += b.size();
        return all;
    }
    template <Message T>
    PerHost<std::vector<T>> exchange(const PerHost<std::vector<T>>& buffers,
                                     const PerHost<Route>& routes)
    {
        return inner_.exchange(buffers, routes);
    }
    void barrier() { inner_.barrier(); }

    std::size_t received = 0;

private:
    LocalCommunicator inner_;
};
static_assert(Communicator<CountingCommunicator>);

// In-process every host runs the same decode call on the same query, plan and object, so
// a step needs no agreement and no broadcast of the query position: what the hosts receive
// is the merge alone, each host's partial state (outputs and log-sum-exps) at the query host.
TEST(StarDecodeStep, InProcessTheMergeIsTheOnlyMessage)
{
    constexpr int hosts = 3;
    constexpr index q_heads = 4, kv_heads = 2, d = 16;
    const Tokens<float> context = random_tokens<float>(90, q_heads, kv_heads, d);
    const Tokens<float> step = random_tokens<float>(1, q_heads, kv_heads, d);
    const auto decode = [&](const auto& star) {
        CountingCommunicator comm(hosts);
        const StarPlan plan = star.plan(90, hosts);
        auto caches = comm.local<KVCache<float>>();
        (void)star.encode_context(comm, plan, caches, view(context.q), view(context.k),
                                  view(context.v));
        comm.received = 0;
        (void)star.attend_query(comm, plan, caches, view(step.q), view(step.k), view(step.v));
        return comm.received;
    };
    const std::size_t merge = hosts * (q_heads * d + q_heads);
    EXPECT_EQ(decode(StarAttention<>(FixedBlocks{30})), merge);
    // A positional variant needs the query's position, known to the query host alone.
    EXPECT_EQ(decode(StarAttention(FixedBlocks{30}, FirstTokens{}, Contiguous{},
                                   GatherToQueryHost{}, {}, SlidingWindow{40})),
              merge);
}

// A transport that moves only float satisfies every requirement spelled for float, but Star
// sends bf16 K/V and std::int64_t settings too: the concept must reject it up front.
struct FloatOnlyCommunicator {
    [[nodiscard]] int size() const;
    template <class T>
    [[nodiscard]] PerHost<T> local() const;
    template <class F>
    void for_each_host(F&& step);
    void broadcast(PerHost<std::vector<float>>& buffers, int root);
    PerHost<std::vector<std::vector<float>>> gather(const PerHost<std::vector<float>>& buffers,
                                                    int root);
    PerHost<std::vector<std::vector<float>>> all_gather(const PerHost<std::vector<float>>& buffers);
    PerHost<std::vector<float>> exchange(const PerHost<std::vector<float>>& buffers,
                                         const PerHost<Route>& routes);
    void barrier();
};
static_assert(CollectivesOf<FloatOnlyCommunicator, float>);
static_assert(!CollectivesOf<FloatOnlyCommunicator, std::int64_t>);
static_assert(!Communicator<FloatOnlyCommunicator>);

// In-process, an all-gather of the settings copied every host's to every host: O(hosts^2)
// values at every phase, layer and decode step (4096 hosts: 13 s per generated token).
// Gathered to one host, with one verdict broadcast, it is O(hosts), agreeing or not.
TEST(CheckAgreement, HostsReceiveValuesLinearInTheirNumber)
{
    for (const int hosts : {4, 64, 1024}) {
        CountingCommunicator comm(hosts);
        auto settings = comm.local<std::vector<std::int64_t>>();
        for (int r = 0; r < hosts; ++r)
            settings[r] = std::vector<std::int64_t>(14, 3);
        const std::vector<const char*> names(14, "x");
        detail::check_agreement(comm, settings, names, "here");
        EXPECT_EQ(comm.received, 14u * static_cast<std::size_t>(hosts)) << hosts << " hosts";
        comm.received = 0;
        settings[hosts - 1][13] = 4;
        expect_error([&] { detail::check_agreement(comm, settings, names, "here"); },
                     "the hosts disagree on x: host 0 has 3, host " + std::to_string(hosts - 1) +
                         " has 4");
        // The settings once, then the five values of the verdict at every host.
        EXPECT_EQ(comm.received, 19u * static_cast<std::size_t>(hosts)) << hosts << " hosts";
    }
}

// ---- SimulatedCluster (star/comm/simulated.hpp): the algorithms give the inner
// communicator's results bit for bit, and every collective advances the host clocks as its
// model says.

// One millisecond of latency and a megabyte per second: a 1000-byte message takes 2 ms.
constexpr LinkModel kLink{1e-3, 1e6};
constexpr double kMessage = 2e-3;

bool same_output_bits(const Tensor3<float>& a, const Tensor3<float>& b)
{
    return a.size() == b.size() &&
           std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0;
}

// 250 floats: 1000 bytes per host.
PerHost<std::vector<float>> kilobyte_messages(LocalCommunicator& comm)
{
    auto buffers = comm.local<std::vector<float>>();
    for (int r = 0; r < comm.size(); ++r)
        buffers[r].assign(250, static_cast<float>(r));
    return buffers;
}

TEST(SimulatedCluster, StarAndRingGiveTheInnerResultsBitForBit)
{
    const Tokens<float> in = random_tokens<float>(300, 4, 2, 32);
    const StarAttention<> star(FixedBlocks{75});
    const StarPlan plan = star.plan(300, 4);
    LocalCommunicator plain(4), inner(4);
    SimulatedCluster cluster(inner, {5e-6, 1.25e9});
    auto plain_caches = plain.local<KVCache<float>>();
    auto cluster_caches = cluster.local<KVCache<float>>();
    const auto expected =
        star.encode_context(plain, plan, plain_caches, view(in.q), view(in.k), view(in.v));
    const auto got =
        star.encode_context(cluster, plan, cluster_caches, view(in.q), view(in.k), view(in.v));
    for (int r = 0; r < 4; ++r)
        EXPECT_TRUE(same_output_bits(got[r][0].state.output, expected[r][0].state.output)) << r;
    const Tokens<float> query = random_tokens<float>(3, 4, 2, 32);
    const auto plain_answer =
        star.attend_query(plain, plan, plain_caches, view(query.q), view(query.k), view(query.v));
    const auto cluster_answer = star.attend_query(cluster, plan, cluster_caches, view(query.q),
                                                  view(query.k), view(query.v));
    EXPECT_TRUE(same_output_bits(cluster_answer[3]->output, plain_answer[3]->output));
    EXPECT_GT(cluster.simulated_seconds(), 0.0);
    EXPECT_GT(cluster.bytes_sent(0), 0u); // a partial state to the query host

    for (const RingLayout layout : {RingLayout::plain, RingLayout::zigzag}) {
        const RingAttention ring({.layout = layout});
        const auto ring_expected = ring.run(plain, view(in.q), view(in.k), view(in.v));
        const auto ring_got = ring.run(cluster, view(in.q), view(in.k), view(in.v));
        for (int r = 0; r < 4; ++r)
            for (std::size_t i = 0; i < ring_got[r].size(); ++i)
                EXPECT_TRUE(
                    same_output_bits(ring_got[r][i].state.output, ring_expected[r][i].state.output))
                    << r;
    }
}

// Binomial tree from host 1 over 4 hosts (relative ranks: host 1 is 0, host 3 is 2): round
// one 1 -> 3; round two 1 -> 2 and 3 -> 0. Everyone has the data after two messages.
TEST(SimulatedCluster, BroadcastFollowsABinomialTree)
{
    LocalCommunicator inner(4);
    SimulatedCluster cluster(inner, kLink);
    auto buffers = kilobyte_messages(inner);
    cluster.broadcast(buffers, 1);
    for (int r = 0; r < 4; ++r) {
        EXPECT_EQ(buffers[r], std::vector<float>(250, 1.0f)) << r;
        EXPECT_DOUBLE_EQ(cluster.clock(r), 2 * kMessage) << r;
    }
    EXPECT_EQ(cluster.bytes_sent(1), 2000u);
    EXPECT_EQ(cluster.bytes_sent(3), 1000u);
    EXPECT_EQ(cluster.bytes_sent(0), 0u);
}

// The root's one link takes the messages one after another.
TEST(SimulatedCluster, GatherQueuesAtTheRoot)
{
    LocalCommunicator inner(3);
    SimulatedCluster cluster(inner, kLink);
    const auto all = cluster.gather(kilobyte_messages(inner), 0);
    EXPECT_EQ(all[0].size(), 3u);
    EXPECT_DOUBLE_EQ(cluster.clock(0), 2 * kMessage);
    EXPECT_DOUBLE_EQ(cluster.clock(1) + cluster.clock(2), 3 * kMessage); // one, then the other
    EXPECT_EQ(cluster.bytes_sent(0), 0u);
    EXPECT_EQ(cluster.bytes_sent(1) + cluster.bytes_sent(2), 2000u);
}

// A ring over 4 hosts: 3 steps of latency, and every other host's 1000 bytes through each
// host's link.
TEST(SimulatedCluster, AllGatherRunsRoundARing)
{
    LocalCommunicator inner(4);
    SimulatedCluster cluster(inner, kLink);
    const auto all = cluster.all_gather(kilobyte_messages(inner));
    for (int r = 0; r < 4; ++r) {
        EXPECT_EQ(all[r].size(), 4u);
        EXPECT_DOUBLE_EQ(cluster.clock(r), 3 * kMessage) << r;
        EXPECT_EQ(cluster.bytes_sent(r), 3000u) << r;
    }
    cluster.barrier();
    EXPECT_DOUBLE_EQ(cluster.simulated_seconds(), 3 * kMessage + 2 * kLink.latency_seconds);
}

// A message started before a step travels while the receiver computes: after the step the
// receiver does not wait at all if the step took longer than the message, and otherwise
// waits only for the rest.
TEST(SimulatedCluster, AnExchangeStartedBeforeAStepOverlapsIt)
{
    LocalCommunicator inner(2);
    SimulatedCluster cluster(inner, kLink);
    auto routes = inner.local<Route>();
    routes[0] = {1, 1};
    routes[1] = {0, 0};
    auto pending = cluster.start_exchange(kilobyte_messages(inner), routes);
    cluster.for_each_host([](int rank) {
        if (rank == 1)
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
    });
    const double busy = cluster.clock(1);
    ASSERT_GE(busy, 20e-3);
    ASSERT_GE(busy, kMessage);
    const auto received = pending.wait();
    EXPECT_EQ(received[0], std::vector<float>(250, 1.0f));
    EXPECT_EQ(cluster.clock(1), busy) << "the message had arrived during the step";
    EXPECT_DOUBLE_EQ(cluster.clock(0), std::max(cluster.compute_seconds(0), kMessage));
    cluster.reset();
    EXPECT_EQ(cluster.simulated_seconds(), 0.0);
    EXPECT_EQ(cluster.bytes_sent(0), 0u);
}

// Two messages started at once from the same host share its link: the second leaves when
// the first has left (one kilobyte at 1 MB/s: 1 ms each), so it arrives 1 ms after it. A
// reset frees the link.
TEST(SimulatedCluster, MessagesStartedTogetherShareTheSendersLink)
{
    LocalCommunicator inner(2);
    SimulatedCluster cluster(inner, kLink);
    auto routes = inner.local<Route>();
    routes[0] = {1, Route::no_host};
    routes[1] = {Route::no_host, 0};
    auto keys = cluster.start_exchange(kilobyte_messages(inner), routes);
    auto values = cluster.start_exchange(kilobyte_messages(inner), routes);
    (void)keys.wait();
    EXPECT_DOUBLE_EQ(cluster.clock(1), kMessage);
    (void)values.wait();
    EXPECT_DOUBLE_EQ(cluster.clock(1), kMessage + 1e-3);
    EXPECT_EQ(cluster.bytes_sent(0), 2000u);
    cluster.reset();
    (void)cluster.exchange(kilobyte_messages(inner), routes);
    EXPECT_DOUBLE_EQ(cluster.clock(1), kMessage) << "the link was freed by the reset";
}

TEST(SimulatedCluster, HostsTwiceAsFastHalveTheComputeTime)
{
    LocalCommunicator inner(1);
    SimulatedCluster cluster(inner, kLink, 2.0);
    cluster.for_each_host([](int) { std::this_thread::sleep_for(std::chrono::milliseconds(20)); });
    EXPECT_GE(cluster.compute_seconds(0), 10e-3);
    EXPECT_EQ(cluster.clock(0), cluster.compute_seconds(0));
}

// Hosts [1, 3) of 3 in this process, the others elsewhere.
class PartOfAGroup {
public:
    [[nodiscard]] int size() const { return 3; }
    template <class T>
    [[nodiscard]] PerHost<T> local() const
    {
        return PerHost<T>(1, 2);
    }
    void for_each_host(const std::function<void(int)>&) {}
    template <Message T>
    void broadcast(PerHost<std::vector<T>>&, int)
    {
    }
    template <Message T>
    PerHost<std::vector<std::vector<T>>> gather(const PerHost<std::vector<T>>&, int)
    {
        return {};
    }
    template <Message T>
    PerHost<std::vector<std::vector<T>>> all_gather(const PerHost<std::vector<T>>&)
    {
        return {};
    }
    template <Message T>
    PerHost<std::vector<T>> exchange(const PerHost<std::vector<T>>&, const PerHost<Route>&)
    {
        return {};
    }
    void barrier() {}
};
static_assert(Communicator<PartOfAGroup>);

TEST(SimulatedCluster, RejectsBadSettings)
{
    LocalCommunicator inner(2);
    expect_error(
        [&] {
            SimulatedCluster cluster(inner, {-1.0, 1e9});
        },
        "SimulatedCluster: the latency must be finite and not negative, got -1");
    expect_error(
        [&] {
            SimulatedCluster cluster(inner, {0.0, 0.0});
        },
        "SimulatedCluster: the bandwidth must be finite and positive, got 0");
    expect_error([&] { SimulatedCluster cluster(inner, kLink, 0.0); },
                 "SimulatedCluster: the compute speedup must be finite and positive, got 0");
    PartOfAGroup part;
    expect_error([&] { SimulatedCluster cluster(part, kLink); },
                 "SimulatedCluster: the inner communicator must run every host in this "
                 "process; it runs hosts [1, 3) of 3");
}

} // namespace
} // namespace star::test
