// Phase 1 of Star and Ring on a modelled cluster (star/comm/simulated.hpp): every host's
// compute measured on one core of this machine, one host after another, and every message
// charged latency + bytes / bandwidth on per-host simulated clocks. The reported time
// (manual time) is the simulated wall time of the phase: the latest host clock. Ring's next
// K/V travel while it computes, as the implementation overlaps them.
//
//   bench_cluster [--benchmark_filter=...]
//
// One layer: 8 query heads / 2 KV heads, head_dim 64, float K/V; L = 16K tokens by default
// (STAR_BENCH_CLUSTER_L); H = 4 and 8 hosts; links of 1, 10 and 100 Gbit/s with 5 or 50
// microseconds of latency. Star: blocks of L/H, the first block as anchor, computed by each
// host (nothing travels but the agreement). Counters: `compute_ms`, the slowest host's
// measured compute; `bytes_per_host`, the most payload one host sent.
//
// What is measured and what is modelled: compute is measured; the network is modelled.
// Contention between hosts for a switch, and MPI's own overheads, are not modelled.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include <star/comm/simulated.hpp>
#include <star/star.hpp>
#include <star/testing.hpp>

#include <benchmark/benchmark.h>

namespace {

using star::index;

constexpr index kQHeads = 8, kKVHeads = 2, kHeadDim = 64;

index context_tokens()
{
    const char* value = std::getenv("STAR_BENCH_CLUSTER_L");
    return value ? std::atol(value) : index{16384};
}

struct Layer {
    star::Tensor3<float> q, k, v;
};

const Layer& layer()
{
    static const Layer inputs{star::random_tensor(context_tokens(), kQHeads, kHeadDim, 1),
                              star::random_tensor(context_tokens(), kKVHeads, kHeadDim, 2),
                              star::random_tensor(context_tokens(), kKVHeads, kHeadDim, 3)};
    return inputs;
}

enum class Algorithm { star, ring_plain, ring_zigzag };

void BM_Phase1(benchmark::State& state, Algorithm algorithm, star::LinkModel link)
{
    const int hosts = static_cast<int>(state.range(0));
    const Layer& in = layer();
    const index tokens = in.q.dimension(0);
    star::LocalCommunicator inner(hosts);
    star::SimulatedCluster cluster(inner, link);
    double compute = 0.0;
    std::uint64_t bytes = 0;
    for (auto _ : state) {
        cluster.reset();
        if (algorithm == Algorithm::star) {
            const star::StarAttention<> star(star::FixedBlocks{(tokens + hosts - 1) / hosts});
            const star::StarPlan plan = star.plan(tokens, hosts);
            auto caches = cluster.local<star::KVCache<float>>();
            benchmark::DoNotOptimize(star.encode_context(cluster, plan, caches, star::view(in.q),
                                                         star::view(in.k), star::view(in.v)));
        } else {
            const star::RingAttention ring({.layout = algorithm == Algorithm::ring_plain
                                                          ? star::RingLayout::plain
                                                          : star::RingLayout::zigzag});
            benchmark::DoNotOptimize(
                ring.run(cluster, star::view(in.q), star::view(in.k), star::view(in.v)));
        }
        state.SetIterationTime(cluster.simulated_seconds());
        compute = 0.0;
        bytes = 0;
        for (int r = 0; r < hosts; ++r) {
            compute = std::max(compute, cluster.compute_seconds(r));
            bytes = std::max(bytes, cluster.bytes_sent(r));
        }
    }
    state.counters["compute_ms"] = compute * 1e3;
    state.counters["bytes_per_host"] = static_cast<double>(bytes);
}

void register_benchmarks()
{
    struct Link {
        const char* name;
        star::LinkModel model;
    };
    const Link links[] = {{"1Gbit_5us", {5e-6, 1.25e8}},   {"1Gbit_50us", {50e-6, 1.25e8}},
                          {"10Gbit_5us", {5e-6, 1.25e9}},  {"10Gbit_50us", {50e-6, 1.25e9}},
                          {"100Gbit_5us", {5e-6, 1.25e10}}, {"100Gbit_50us", {50e-6, 1.25e10}}};
    const std::pair<const char*, Algorithm> algorithms[] = {
        {"star", Algorithm::star},
        {"ring_plain", Algorithm::ring_plain},
        {"ring_zigzag", Algorithm::ring_zigzag}};
    for (const auto& [algorithm_name, algorithm] : algorithms)
        for (const Link& link : links)
            benchmark::RegisterBenchmark(
                ("phase1/" + std::string(algorithm_name) + "/" + link.name).c_str(), BM_Phase1,
                algorithm, link.model)
                ->Arg(4)
                ->Arg(8)
                ->Iterations(1)
                ->Repetitions(3)
                ->ReportAggregatesOnly(true)
                ->UseManualTime()
                ->Unit(benchmark::kMillisecond);
}

} // namespace

int main(int argc, char** argv)
{
    register_benchmarks();
    benchmark::Initialize(&argc, argv);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
