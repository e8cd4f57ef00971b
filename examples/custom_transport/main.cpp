// Star and Ring Attention over a transport of our own: three processes made with fork(),
// joined by Unix-domain sockets (fork_communicator.hpp).
//
// How to test a transport: run the algorithms over it and over LocalCommunicator, which
// runs the same hosts in one process, and demand identical bits. Each host does the same
// computations in the same order either way; only the way the bytes travel differs, so any
// difference is the transport's fault (a lost, truncated or misrouted message).
//
// Usage: custom_transport [--fail-on-host R]
//   With --fail-on-host, host R throws before its first collective; the program must then
//   end promptly with a non-zero status, not hang.

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <star/star.hpp>

#include "fork_communicator.hpp"

namespace {

// Large enough that a ring step's K/V (about 260 KB) overflow a socket's buffer, which is
// when a transport that sends before it receives would hang.
constexpr int hosts = 3;
constexpr star::index context = 1536, query_tokens = 9, decode_steps = 3;
constexpr star::index q_heads = 4, kv_heads = 2, head_dim = 64;

struct Tokens {
    star::Tensor3<float> q, k, v;
};

// The same numbers in every process: each host makes the whole layer from one seed.
Tokens random_tokens(star::index tokens, std::mt19937& rng)
{
    std::normal_distribution<float> normal;
    Tokens t{star::Tensor3<float>(tokens, q_heads, head_dim),
             star::Tensor3<float>(tokens, kv_heads, head_dim),
             star::Tensor3<float>(tokens, kv_heads, head_dim)};
    for (star::Tensor3<float>* x : {&t.q, &t.k, &t.v})
        for (star::index n = 0; n < x->size(); ++n)
            x->data()[n] = normal(rng);
    return t;
}

bool same_bits(const star::AttentionState& a, const star::AttentionState& b)
{
    return a.shape() == b.shape() &&
           std::memcmp(a.output.data(), b.output.data(), sizeof(float) * a.output.size()) == 0 &&
           std::memcmp(a.lse.data(), b.lse.data(), sizeof(float) * a.lse.size()) == 0;
}

bool same_bits(const std::vector<star::RangeOutput>& a, const std::vector<star::RangeOutput>& b)
{
    if (a.size() != b.size())
        return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (a[i].tokens != b[i].tokens || !same_bits(a[i].state, b[i].state))
            return false;
    return true;
}

bool same_bits(const std::optional<star::AttentionState>& a,
               const std::optional<star::AttentionState>& b)
{
    return a.has_value() == b.has_value() && (!a || same_bits(*a, *b));
}

// Phase 1, a query and decode steps of `star_attention`, over `comm` and over in-process
// hosts. Returns how many of this host's results differ between the two.
template <class Star>
int compare_star(fork_transport::ForkCommunicator& comm, const Star& star_attention,
                 const Tokens& layer, std::mt19937& rng)
{
    const int rank = comm.rank();
    star::LocalCommunicator local(comm.size());
    const star::StarPlan plan = star_attention.plan(context, comm.size());
    auto caches = comm.local<star::KVCache<float>>();
    auto local_caches = local.local<star::KVCache<float>>();
    const auto q = star::view(layer.q), k = star::view(layer.k), v = star::view(layer.v);

    int differences = 0;
    const auto phase1 = star_attention.encode_context(comm, plan, caches, q, k, v);
    const auto local_phase1 = star_attention.encode_context(local, plan, local_caches, q, k, v);
    differences += !same_bits(phase1[rank], local_phase1[rank]);

    for (star::index step = 0; step <= decode_steps; ++step) {
        const Tokens next = random_tokens(step == 0 ? query_tokens : 1, rng);
        const auto nq = star::view(next.q), nk = star::view(next.k), nv = star::view(next.v);
        const auto merged = star_attention.attend_query(comm, plan, caches, nq, nk, nv);
        const auto local_merged = star_attention.attend_query(local, plan, local_caches, nq, nk, nv);
        differences += !same_bits(merged[rank], local_merged[rank]);
    }
    differences += caches[rank].tokens() != local_caches[rank].tokens();
    return differences;
}

int run_host(fork_transport::ForkCommunicator& comm, int fail_on_host)
{
    if (comm.rank() == fail_on_host)
        throw star::runtime_failure("injected failure, as asked by --fail-on-host");
    std::mt19937 rng(2024);
    const Tokens layer = random_tokens(context, rng);
    int differences = 0;

    // The received anchor travels by broadcast, the agreement check by all_gather, the
    // default merge by gather; the tree merge and the ring use exchange.
    using namespace star;
    differences += compare_star(
        comm, StarAttention(FixedBlocks{512}, FirstTokens{{}, AnchorSource::receive}), layer, rng);
    differences += compare_star(
        comm, StarAttention(FixedBlocks{200}, FirstTokens{}, RoundRobin{{0}}, TreeReduction{}),
        layer, rng);
    differences += compare_star(
        comm, StarAttention(EqualBlocks{5}, SinkTokens{}, BalancedTokens{}, AllGather{}), layer,
        rng);

    LocalCommunicator local(comm.size());
    for (const RingLayout layout : {RingLayout::plain, RingLayout::zigzag}) {
        const RingAttention ring({.layout = layout});
        const auto q = view(layer.q), k = view(layer.k), v = view(layer.v);
        differences +=
            !same_bits(ring.run(comm, q, k, v)[comm.rank()], ring.run(local, q, k, v)[comm.rank()]);
    }
    comm.barrier();

    std::printf("host %d: %s\n", comm.rank(),
                differences == 0 ? "every result is bit-identical to the in-process run"
                                 : (std::to_string(differences) + " results differ").c_str());
    return differences == 0 ? 0 : 1;
}

} // namespace

int main(int argc, char** argv)
{
    int fail_on_host = -1;
    if (argc == 3 && std::strcmp(argv[1], "--fail-on-host") == 0) {
        fail_on_host = std::atoi(argv[2]);
    } else if (argc != 1) {
        std::fprintf(stderr, "usage: custom_transport [--fail-on-host R]\n");
        return 2;
    }
    if (fail_on_host >= 0)
        std::printf("custom_transport: failure injection: host %d will throw, and the run must "
                    "end promptly with its message; the error lines below are expected\n",
                    fail_on_host);
    // Nothing here may start oneTBB before the hosts are forked (see fork_hosts).
    const int status = fork_transport::fork_hosts(
        hosts, [&](fork_transport::ForkCommunicator& comm) { return run_host(comm, fail_on_host); });
    if (fail_on_host >= 0) {
        // The exit status stays the failing run's; what is expected is that it fails.
        std::printf("custom_transport: failure injection: %s\n",
                    status != 0 ? "the injected failure ended every host, as expected (not an error)"
                                : "UNEXPECTED: the run succeeded although a host was made to fail");
        return status;
    }
    std::printf("custom_transport: %d hosts over fork() and socket pairs: %s\n", hosts,
                status == 0 ? "Star and Ring match LocalCommunicator bit for bit" : "FAILED");
    return status;
}
