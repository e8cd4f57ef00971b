/// \file
/// Several sequences per call (star/kernel/batch.hpp) against one call per sequence, side
/// by side in one run, on a Llama-3-8B layer (32 query heads over 8 KV heads of 128):
///
///  * `BM_DecodeStep/<mix>/<kv>/<how>/threads:N`: one decode step (one query token each) of
///    16 requests, each over its own cache, float or bf16 K/V. Mixes: `even` (16 caches of
///    4K tokens) and `skewed` (one of 32K and 15 of 1K, where one long request would hold up
///    a step that ran the requests one after another on a thread each).
///  * `BM_PackedPrefill/<how>/threads:N`: 8 prompts of 128..2048 tokens, causal, packed in one
///    tensor (`attention_packed`) against 8 `attention` calls.
///
/// `<how>` is `separate` (one `attention` call per sequence, in a loop, each parallel over its
/// own tasks) or `batched` (one call: every sequence's tasks in one parallel loop). The summary
/// prints separate/batched, medians of the repetitions of the same run.

#include "bench_support.hpp"

#include <star/star.hpp>

#include <tbb/task_arena.h>

#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace {

using star::index;
using namespace star_bench;

constexpr index kQHeads = 32;
constexpr index kKvHeads = 8;
constexpr index kHeadDim = 128;

template <class T>
star::Tensor3<T> random_tensor(index tokens, index heads, std::mt19937& rng)
{
    std::normal_distribution<float> normal(0.0f, 1.0f);
    star::Tensor3<T> t(tokens, heads, kHeadDim);
    for (index i = 0; i < t.size(); ++i)
        t.data()[i] = T(normal(rng));
    return t;
}

enum class Mix { even, skewed };

std::vector<index> cache_lengths(Mix mix)
{
    if (mix == Mix::even)
        return std::vector<index>(16, 4096);
    std::vector<index> lengths(16, 1024);
    lengths[7] = 32768;
    return lengths;
}

/// One decode step's requests: a query token each, over its own cache.
template <class KV>
struct Requests {
    std::vector<star::Tensor3<float>> q;
    std::vector<star::Tensor3<KV>> k, v;
    std::vector<star::BatchedSequence<KV>> batch;
    index cached_bytes = 0;

    explicit Requests(Mix mix)
    {
        std::mt19937 rng(7);
        for (const index length : cache_lengths(mix)) {
            q.push_back(random_tensor<float>(1, kQHeads, rng));
            k.push_back(random_tensor<KV>(length, kKvHeads, rng));
            v.push_back(random_tensor<KV>(length, kKvHeads, rng));
            cached_bytes += 2 * length * kKvHeads * kHeadDim * static_cast<index>(sizeof(KV));
        }
        batch.reserve(q.size());
        for (std::size_t s = 0; s < q.size(); ++s)
            batch.push_back({star::view(q[s]), star::view(k[s]), star::view(v[s])});
    }
};

template <class KV>
const Requests<KV>& requests(Mix mix)
{
    static std::map<Mix, std::unique_ptr<Requests<KV>>> cache;
    auto& slot = cache[mix];
    if (!slot)
        slot = std::make_unique<Requests<KV>>(mix);
    return *slot;
}

template <class KV>
void BM_DecodeStep(benchmark::State& state, Mix mix, bool batched)
{
    const Requests<KV>& in = requests<KV>(mix);
    tbb::task_arena arena(static_cast<int>(state.range(0)));
    const auto step = [&] {
        arena.execute([&] {
            if (batched) {
                const auto out = star::attention_batch(in.batch);
                benchmark::DoNotOptimize(out.data());
            } else {
                for (const auto& s : in.batch) {
                    const auto out = star::attention(s.q, s.k, s.v);
                    benchmark::DoNotOptimize(out.output.data());
                }
            }
            benchmark::ClobberMemory();
        });
    };
    step(); // warm-up: the arena's threads and the caches' pages
    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state)
        step();
    report_foreign_load(state, load);
    state.counters["GB/s"] = benchmark::Counter(static_cast<double>(in.cached_bytes) * 1e-9,
                                                benchmark::Counter::kIsIterationInvariantRate);
}

/// Prompts of a packed prefill: 8 lengths from 128 to 2048 tokens, packed one after another.
struct Prompts {
    std::vector<index> starts{0};
    star::Tensor3<float> q, k, v;

    Prompts()
    {
        for (const index length : {2048, 128, 1024, 384, 1536, 256, 768, 640})
            starts.push_back(starts.back() + length);
        std::mt19937 rng(11);
        q = random_tensor<float>(starts.back(), kQHeads, rng);
        k = random_tensor<float>(starts.back(), kKvHeads, rng);
        v = random_tensor<float>(starts.back(), kKvHeads, rng);
    }
};

void BM_PackedPrefill(benchmark::State& state, bool packed)
{
    static const Prompts in;
    tbb::task_arena arena(static_cast<int>(state.range(0)));
    const auto prefill = [&] {
        arena.execute([&] {
            if (packed) {
                const auto out = star::attention_packed(star::view(in.q), star::view(in.k),
                                                        star::view(in.v), in.starts);
                benchmark::DoNotOptimize(out.output.data());
            } else {
                for (std::size_t s = 0; s + 1 < in.starts.size(); ++s) {
                    const index first = in.starts[s], count = in.starts[s + 1] - first;
                    const auto out = star::attention(
                        star::token_slice(star::view(in.q), first, count),
                        star::token_slice(star::view(in.k), first, count),
                        star::token_slice(star::view(in.v), first, count), star::CausalMask{});
                    benchmark::DoNotOptimize(out.output.data());
                }
            }
            benchmark::ClobberMemory();
        });
    };
    prefill();
    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state)
        prefill();
    report_foreign_load(state, load);
}

constexpr const char* name(Mix mix) { return mix == Mix::even ? "even" : "skewed"; }

void register_all()
{
    for (const Mix mix : {Mix::even, Mix::skewed})
        for (const bool batched : {false, true}) {
            const std::string how = batched ? "batched" : "separate";
            benchmark::RegisterBenchmark(
                ("BM_DecodeStep/" + std::string(name(mix)) + "/float/" + how).c_str(),
                BM_DecodeStep<float>, mix, batched)
                ->ArgName("threads")
                ->Arg(1)
                ->Arg(2)
                ->UseRealTime()
                ->Unit(benchmark::kMicrosecond);
            benchmark::RegisterBenchmark(
                ("BM_DecodeStep/" + std::string(name(mix)) + "/bf16/" + how).c_str(),
                BM_DecodeStep<Eigen::bfloat16>, mix, batched)
                ->ArgName("threads")
                ->Arg(1)
                ->Arg(2)
                ->UseRealTime()
                ->Unit(benchmark::kMicrosecond);
        }
    for (const bool packed : {false, true})
        benchmark::RegisterBenchmark(packed ? "BM_PackedPrefill/batched"
                                            : "BM_PackedPrefill/separate",
                                     BM_PackedPrefill, packed)
            ->ArgName("threads")
            ->Arg(1)
            ->Arg(2)
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
}

/// separate/batched for each benchmark and thread count, medians of the repetitions.
void print_summary(const std::map<std::string, Series>& series)
{
    std::printf("\nOne call per sequence / one call for all (medians; > 1: batching is faster)\n");
    for (const auto& [run, s] : series) {
        const auto at = run.find("/separate");
        if (at == std::string::npos)
            continue;
        std::string other = run;
        other.replace(at, 9, "/batched");
        const auto match = series.find(other);
        if (match == series.end())
            continue;
        std::string label = run;
        label.erase(at, 9);
        if (const auto suffix = label.find("/real_time"); suffix != std::string::npos)
            label.erase(suffix);
        std::printf("  %-44s %.2fx\n", label.c_str(),
                    median(s.real_time) / median(match->second.real_time));
    }
    print_quiet_gate_summary();
}

} // namespace

int main(int argc, char** argv)
{
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv))
        return 1;
    std::printf("Star batch benchmark: %ld query heads over %ld KV heads of %ld; kernel path %s\n\n",
                static_cast<long>(kQHeads), static_cast<long>(kKvHeads),
                static_cast<long>(kHeadDim), std::string(star::name(star::kernel_isa())).c_str());
    register_all();
    CollectingReporter reporter(benchmark::ConsoleReporter::OO_Tabular);
    benchmark::RunSpecifiedBenchmarks(&reporter);
    print_summary(reporter.series());
    benchmark::Shutdown();
    return 0;
}
