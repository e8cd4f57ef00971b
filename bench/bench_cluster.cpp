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
// Every benchmark starts behind the quiet gate of bench_support.hpp and reports
// `other_cores`: the hosts' times are wall times, which other processes inflate.
//
// The `host_step/...` family measures, on one core (a one-thread arena, as SimulatedCluster
// gives each host), the kernel calls a host's step is made of, at the sizes the scaling
// study needs (issue 15; bench/cluster_model.py reads them and models 8..128 hosts and
// 128K..1M tokens):
//   host_step/full/<shape>/<n>         n queries over n earlier keys, no mask: a Ring step
//                                      off the diagonal, and Star's block over its anchor;
//   host_step/causal/<shape>/<n>       n queries over their own n keys, causal: the diagonal
//                                      (Ring's step 0, Star's block over itself);
//   host_step/merge/<shape>/<n>        merge_into of two n-token partial states;
//   host_step/append/<shape>/<n>       n tokens of K/V appended to a KVCache (Star's cache
//                                      fill; Ring's copy of its shard is the same bytes);
//   host_step/decode/<shape>/<lq>/<b>  phase 2: lq query tokens over a KVCache of b tokens;
//   host_step/gemm/<n>                 an Eigen float product [n x 4096] x [4096 x 14336]
//                                      (the Llama-3.1-8B MLP's up projection), for the MLP.
// Shapes: `llama` is Llama-3.1-8B's layer (32 query / 8 KV heads, d = 128); `group` one of
// its 8 KV-head groups (4 / 1, d = 128), measured at 512..32K tokens (32K: 45 s and 24 s on
// one Zen 3 core), where the whole layer would take too long (cluster_model.py scales it by 8; `llama` at 2K checks that scaling);
// `small` is the layer of the phase1/ benchmarks above (8 / 2, d = 64), for the cross-check.
// Counter `pairs_per_s`: (query head, query, key) score pairs per second, masked ones not
// counted; `gflops` = 4 d pairs_per_s / 1e9.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <tbb/task_arena.h>

#include <star/comm/simulated.hpp>
#include <star/star.hpp>
#include <star/testing.hpp>

#include <benchmark/benchmark.h>

#include "bench_support.hpp"

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
    star_bench::wait_for_quiet(state);
    const star_bench::ForeignLoad load;
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
    star_bench::report_foreign_load(state, load);
}

// ---- host_step: the pieces of a host's step, one core ------------------------------------

struct HeadShape {
    const char* name;
    index q_heads, kv_heads, head_dim;
};
constexpr HeadShape kLlama{"llama", 32, 8, 128}, kGroup{"group", 4, 1, 128},
    kSmall{"small", kQHeads, kKVHeads, kHeadDim};

// Runs `step` once per iteration on one thread (as SimulatedCluster runs a host) and reports
// its wall time as the iteration's time; `pairs` score pairs per call, `head_dim` for gflops.
template <class F>
void time_on_one_core(benchmark::State& state, double pairs, index head_dim, F&& step)
{
    tbb::task_arena one_core(1);
    star_bench::wait_for_quiet(state);
    const star_bench::ForeignLoad load;
    for (auto _ : state) {
        double took = 0.0;
        one_core.execute([&] {
            const auto start = std::chrono::steady_clock::now();
            step();
            took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        });
        state.SetIterationTime(took);
    }
    if (pairs > 0.0) {
        state.counters["pairs_per_s"] =
            benchmark::Counter(pairs, benchmark::Counter::kIsIterationInvariantRate);
        state.counters["gflops"] =
            benchmark::Counter(4.0 * static_cast<double>(head_dim) * pairs * 1e-9,
                               benchmark::Counter::kIsIterationInvariantRate);
    }
    star_bench::report_foreign_load(state, load);
}

enum class Piece { full, causal };

void BM_Attention(benchmark::State& state, HeadShape shape, Piece piece)
{
    const index n = state.range(0);
    const auto q = star::random_tensor(n, shape.q_heads, shape.head_dim, 11);
    const auto k = star::random_tensor(n, shape.kv_heads, shape.head_dim, 12);
    const auto v = star::random_tensor(n, shape.kv_heads, shape.head_dim, 13);
    const star::AttentionOptions options{.check_finite = false};
    const double nd = static_cast<double>(n);
    const double pairs = static_cast<double>(shape.q_heads) *
                         (piece == Piece::full ? nd * nd : nd * (nd + 1.0) / 2.0);
    time_on_one_core(state, pairs, shape.head_dim, [&] {
        // The calls encode_context and RingAttention::run make: the keys all before the
        // queries (NoMask, Causal::past_mask), or the same tokens (CausalMask at the diagonal).
        if (piece == Piece::full)
            benchmark::DoNotOptimize(star::attention(star::view(q), star::view(k), star::view(v),
                                                     star::NoMask{}, options));
        else
            benchmark::DoNotOptimize(star::attention(star::view(q), star::view(k), star::view(v),
                                                     star::CausalMask{0, 0}, options));
    });
}

void BM_Merge(benchmark::State& state, HeadShape shape)
{
    const index n = state.range(0);
    const auto q = star::random_tensor(n, shape.q_heads, shape.head_dim, 21);
    const auto k = star::random_tensor(16, shape.kv_heads, shape.head_dim, 22);
    const auto v = star::random_tensor(16, shape.kv_heads, shape.head_dim, 23);
    const star::AttentionState part = star::attention(star::view(q), star::view(k), star::view(v));
    star::AttentionState acc = part;
    time_on_one_core(state, 0.0, shape.head_dim, [&] { star::merge_into(acc, part); });
    state.counters["rows_per_s"] =
        benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Append(benchmark::State& state, HeadShape shape)
{
    const index n = state.range(0);
    const auto k = star::random_tensor(n, shape.kv_heads, shape.head_dim, 31);
    const auto v = star::random_tensor(n, shape.kv_heads, shape.head_dim, 32);
    time_on_one_core(state, 0.0, shape.head_dim, [&] {
        star::KVCache<float> cache;
        cache.append(star::view(k), star::view(v));
        benchmark::DoNotOptimize(cache.tokens());
    });
    state.counters["bytes_per_s"] = benchmark::Counter(
        2.0 * static_cast<double>(n * shape.kv_heads * shape.head_dim) * sizeof(float),
        benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Decode(benchmark::State& state, HeadShape shape)
{
    const index lq = state.range(0), b = state.range(1);
    const auto q = star::random_tensor(lq, shape.q_heads, shape.head_dim, 41);
    star::KVCache<float> cache;
    cache.append(star::view(star::random_tensor(b, shape.kv_heads, shape.head_dim, 42)),
                 star::view(star::random_tensor(b, shape.kv_heads, shape.head_dim, 43)));
    const star::AttentionOptions options{.check_finite = false};
    const double pairs = static_cast<double>(shape.q_heads * lq) * static_cast<double>(b);
    // attend_query's call on a host's cache: every cached key precedes the query.
    time_on_one_core(state, pairs, shape.head_dim, [&] {
        benchmark::DoNotOptimize(
            star::attention(star::view(q), cache.keys(), cache.values(), star::NoMask{}, options));
    });
}

void BM_Gemm(benchmark::State& state)
{
    const index n = state.range(0);
    constexpr index kModel = 4096, kHidden = 14336; // Llama-3.1-8B
    Eigen::setNbThreads(1);
    const Eigen::MatrixXf x = Eigen::MatrixXf::Random(n, kModel);
    const Eigen::MatrixXf w = Eigen::MatrixXf::Random(kModel, kHidden);
    Eigen::MatrixXf y(n, kHidden);
    time_on_one_core(state, 0.0, 0, [&] {
        y.noalias() = x * w;
        benchmark::DoNotOptimize(y.data());
    });
    state.counters["gflops"] = benchmark::Counter(2e-9 * static_cast<double>(n) * kModel * kHidden,
                                                  benchmark::Counter::kIsIterationInvariantRate);
}

void register_host_steps()
{
    const auto configure = [](benchmark::internal::Benchmark* b) {
        b->UseManualTime()->Unit(benchmark::kMillisecond)->MinTime(0.2);
    };
    const auto name = [](const char* piece, const HeadShape& shape) {
        return std::string("host_step/") + piece + "/" + shape.name;
    };
    for (const Piece piece : {Piece::full, Piece::causal}) {
        const char* piece_name = piece == Piece::full ? "full" : "causal";
        auto* group = benchmark::RegisterBenchmark(name(piece_name, kGroup).c_str(), BM_Attention,
                                                   kGroup, piece);
        for (index n = 512; n <= 32768; n *= 2)
            group->Arg(n);
        configure(group);
        auto* llama = benchmark::RegisterBenchmark(name(piece_name, kLlama).c_str(), BM_Attention,
                                                   kLlama, piece);
        llama->Arg(2048);
        configure(llama);
        auto* small = benchmark::RegisterBenchmark(name(piece_name, kSmall).c_str(), BM_Attention,
                                                   kSmall, piece);
        for (index n = 512; n <= 4096; n *= 2)
            small->Arg(n);
        configure(small);
    }
    for (const HeadShape& shape : {kLlama, kSmall}) {
        auto* merge = benchmark::RegisterBenchmark(name("merge", shape).c_str(), BM_Merge, shape);
        auto* append = benchmark::RegisterBenchmark(name("append", shape).c_str(), BM_Append, shape);
        for (index n = 1024; n <= 16384; n *= 4) {
            merge->Arg(n);
            append->Arg(n);
        }
        configure(merge);
        configure(append);
    }
    auto* decode = benchmark::RegisterBenchmark(name("decode", kLlama).c_str(), BM_Decode, kLlama);
    for (const index lq : {1, 32})
        for (index b = 1024; b <= 32768; b *= 4)
            decode->Args({lq, b});
    configure(decode);
    auto* gemm = benchmark::RegisterBenchmark("host_step/gemm", BM_Gemm);
    gemm->Arg(512);
    configure(gemm);
}

void register_benchmarks()
{
    struct Link {
        const char* name;
        star::LinkModel model;
    };
    const Link links[] = {{"1Gbit_5us", {5e-6, 1.25e8}},    {"1Gbit_50us", {50e-6, 1.25e8}},
                          {"10Gbit_5us", {5e-6, 1.25e9}},   {"10Gbit_50us", {50e-6, 1.25e9}},
                          {"100Gbit_5us", {5e-6, 1.25e10}}, {"100Gbit_50us", {50e-6, 1.25e10}}};
    const std::pair<const char*, Algorithm> algorithms[] = {{"star", Algorithm::star},
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
    register_host_steps();
    benchmark::Initialize(&argc, argv);
    benchmark::RunSpecifiedBenchmarks();
    star_bench::print_quiet_gate_summary();
    benchmark::Shutdown();
    return 0;
}
