/// \file
/// Kernel benchmark for Star, measured in one run so that every ratio below comes from the
/// same machine state:
///
///  * `BM_FmaPeak/chains:N`   single-core FP32 FMA peak, probed with `xsimd::batch<float>` at
///                            the default (compile-time best) arch, N independent chains.
///  * `BM_Bf16DotPeak/chains:N`  the same for the bf16 dot product of the avx512_bf16 path
///                            (`vdpbf16ps`), where the CPU has it: the summary gives its peak
///                            over the FMA peak, which tells whether the path pays here.
///  * `BM_GlobalCausal/T/d/threads`  exact causal `star::global_attention(q, k, v)`.
///  * `BM_NaiveEigen/T/d`     naive Eigen baseline (full T x T score matrix), single thread.
///  * `BM_ReadBandwidth/N`    streaming read of 1 GiB on N threads (the decode bound).
///  * `BM_Path/<isa>/<kv>/prefill|decode|decode_cached/N`  every kernel path this CPU has
///                            (STAR_ISA's names), float and bf16 K/V, 32 q / 8 kv heads of
///                            128: causal prefill of 4K tokens (GFLOP/s), one decode step over
///                            a 32K-token cache (GB/s of K/V read), on N threads, and the same
///                            step over a 128-token cache that stays in L2, on one (decode_cached:
///                            what the step's instructions allow, where memory is not the limit;
///                            above the streaming read, decode is bound by memory), written
///                            into float memory reused from call to call (`attention_into`).
///  * `BM_KVSource/<kv>/decode|prefill/contiguous|paged:P`  K/V read in place from a paged
///                            cache (pages of P tokens, shuffled) beside the same K/V laid out
///                            contiguously: one decode step over 16K tokens, a causal prefill
///                            of 2K; BM_Path's heads, best path, one thread.
///  * `BM_Transform/<none|soft_cap|alibi>/prefill|decode`  the best path, float K/V, one
///                            thread, BM_Path's layer (causal prefill of 2K tokens, one decode
///                            step over 32K) with each score transform back to back: the
///                            summary gives each transform's time over none's.
///  * `BM_TransformTile/<soft_cap|alibi>`  the transform alone over one of the tile kernel's
///                            score tiles (128 keys x 256 rows, in cache), best path: its cost
///                            per score, which the summary sets beside the kernel's own per
///                            score computed (BM_Transform/none/prefill) - a ratio that the
///                            load of other processes disturbs far less than two long runs.
///  * `BM_Output/<new_state|into_float|into_bf16>`  a causal bf16 prefill of 2K tokens (best
///                            path, one thread, BM_Path's heads), its result in a new state
///                            (`attention`) or in reused caller memory, float or bf16
///                            (`attention_into`): the cost of fresh output memory.
///  * `BM_TileProduct/star/<isa>/<B>/MxNxK`, `BM_TileProduct/onednn/<type>/MxNxK`  the
///                            kernel's register-blocked product (`detail::tile_gemm`: A float,
///                            B float or bf16 widened as loaded; on avx512_bf16 with bf16 B,
///                            bf16 x bf16 on vdpbf16ps, as its tile math runs it) on every path, beside
///                            Debian's oneDNN matmul (f32, and bf16 x bf16 -> f32) of the same
///                            shapes, one thread: what a mature GEMM gets from this CPU's
///                            product units (AMX or AVX512-BF16 where present). Built when
///                            oneDNN is found (libdnnl-dev; required in CI).
///  * `BM_FiniteCheck/<type>/<how>`  the NaN/Inf check every entry point makes, over the K/V
///                            of an 8K-token cache (8 KV heads of 128: 16.8M elements), by the
///                            library's `detail::all_finite` and by Eigen's `allFinite()`.
///
/// Before the benchmarks, two accuracy checks are printed: the kernel against the naive
/// baseline, and each path's error with bf16 K/V against exact attention in double (what
/// the avx512_bf16 path's bf16 products cost; docs/accuracy.md quotes it).
///
/// A summary table (medians over repetitions) is printed at the end. The `other_cores`
/// counter, the quiet gate and the collecting reporter come from bench_support.hpp (shared
/// with bench_algorithms).
///
/// Every attention benchmark uses Hq = Hkv = kHeads = 4: plain multi-head attention, no GQA,
/// the same setting for all sizes. FLOPs are counted as 4 * d * Hq * T(T+1)/2 for both the
/// kernel and the naive baseline (QK^T and PV, 2 flops per multiply-add, over the visible
/// causal pairs) -- the naive baseline actually does the full T*T work, but it is credited
/// with the causal FLOPs so that GFLOP/s compare like for like (a ratio of rates is then an
/// inverse ratio of times).

#include <star/star.hpp>

#include "bench_support.hpp"

#include <benchmark/benchmark.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>
#include <xsimd/xsimd.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <unistd.h>

#if STAR_BENCH_HAVE_ONEDNN
#include <omp.h>

#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace {

using Index = Eigen::Index;

// ----------------------------------------------------------------------------------------
// Settings
// ----------------------------------------------------------------------------------------

/// Query heads = key/value heads (no grouped-query attention), one setting for every size.
constexpr Index kHeads = 4;
constexpr std::array<Index, 5> kTokens{1024, 2048, 4096, 8192, 16384};
constexpr std::array<Index, 2> kHeadDims{64, 128};
constexpr std::array<int, 2> kThreads{1, 2};

/// The naive baseline is run up to this many tokens (its score matrix is T*T*4 bytes per
/// head, 1 GiB at 16K; it is reused across heads).
constexpr Index kNaiveMaxTokens = 16384;

/// Repetitions per attention benchmark (odd, so the median is a measured sample) and the
/// minimum measuring time per repetition; the big sizes run a single iteration each.
constexpr int kRepetitions = 3;
constexpr double kMinTime = 0.5;

/// FMA probe: chain counts, FMA steps per chain per benchmark iteration, repetitions.
constexpr std::int64_t kFmaInner = 1 << 14;
constexpr int kFmaRepetitions = 3;
constexpr double kFmaMinTime = 0.25;
/// Chain counts that should be enough to hide FMA latency (latency 4 x 2 pipes = 8 in
/// flight on Zen 4/5); the peak is the best median among these.
constexpr std::size_t kFmaMinPeakChains = 8;

double causal_flops(Index tokens, Index head_dim)
{
    const double t = static_cast<double>(tokens);
    return 4.0 * static_cast<double>(head_dim) * static_cast<double>(kHeads) * (t * (t + 1.0) / 2.0);
}

// Foreign load (`other_cores`), quiet gate, collecting reporter and median: shared with
// bench_algorithms, see bench_support.hpp.
using star_bench::CollectingReporter;
using star_bench::ForeignLoad;
using star_bench::median;
using star_bench::report_foreign_load;
using star_bench::Series;
using star_bench::wait_for_quiet;

// ----------------------------------------------------------------------------------------
// 1. FMA peak probe
// ----------------------------------------------------------------------------------------

using Batch = xsimd::batch<float>;

template <std::size_t Chains, std::size_t... I>
inline void fma_step(std::array<Batch, Chains>& acc, const Batch& a, const Batch& b,
                     std::index_sequence<I...>)
{
    // One FMA per chain; the chains are independent, so they overlap in the pipelines.
    ((acc[I] = xsimd::fma(acc[I], a, b)), ...);
}

template <std::size_t Chains>
void BM_FmaPeak(benchmark::State& state)
{
    // acc <- acc * a + b converges to b / (1 - a) = 1: the values stay normal (no denormal
    // or infinity slow paths). The seeds go through DoNotOptimize so nothing is folded.
    float fa = 0.999f;
    float fb = 0.001f;
    float f0 = 0.5f;
    benchmark::DoNotOptimize(fa);
    benchmark::DoNotOptimize(fb);
    benchmark::DoNotOptimize(f0);
    const Batch a(fa);
    const Batch b(fb);
    std::array<Batch, Chains> acc;
    for (std::size_t i = 0; i < Chains; ++i)
        acc[i] = Batch(f0 + 0.01f * static_cast<float>(i));

    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state) {
        for (std::int64_t it = 0; it < kFmaInner; ++it)
            fma_step(acc, a, b, std::make_index_sequence<Chains>());
        for (auto& x : acc)
            benchmark::DoNotOptimize(x);
    }
    report_foreign_load(state, load);

    const double flops = 2.0 * static_cast<double>(Batch::size) * static_cast<double>(Chains) *
                         static_cast<double>(kFmaInner);
    // kAvgThreads: with ->Threads(n) the per-thread counters are summed, so averaging them
    // and dividing by wall time gives the aggregate rate of all threads.
    state.counters["FLOPS"] = benchmark::Counter(
        flops, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kAvgThreads);
    state.SetLabel(std::string(Batch::arch_type::name()) + " x" + std::to_string(Batch::size));
}

#if STAR_X86_DISPATCH
// The avx512_bf16 path's product step (`vdpbf16ps`: 16 lanes, two bf16 products each) in
// independent chains, as the FMA probe runs its FMAs: the path pays only where this unit
// outruns the float FMA, and CPUs differ (docs/performance.md).
STAR_INTRINSICS_BEGIN
STAR_TARGET_BEGIN("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c")
template <std::size_t Chains>
__attribute__((noinline)) void bf16_dot_chains(std::array<float, Chains>& sums,
                                               star::detail::bf16_pair pair, std::int64_t steps)
{
    using Product = star::detail::Avx512Bf16Product<xsimd::default_arch>;
    const __m512i a = Product::broadcast_a(pair);
    __m512 acc[Chains];
    STAR_UNROLL
    for (std::size_t c = 0; c < Chains; ++c)
        acc[c] = _mm512_set1_ps(static_cast<float>(c));
    for (std::int64_t s = 0; s < steps; ++s) {
        STAR_UNROLL
        for (std::size_t c = 0; c < Chains; ++c)
            acc[c] = Product::madd(a, a, acc[c]);
    }
    STAR_UNROLL
    for (std::size_t c = 0; c < Chains; ++c)
        sums[c] = _mm512_reduce_add_ps(acc[c]);
}
STAR_TARGET_END
STAR_INTRINSICS_END

/// Lanes of one `vdpbf16ps` times its two products per lane.
constexpr double kBf16DotMultiplies = 32.0;

template <std::size_t Chains>
void BM_Bf16DotPeak(benchmark::State& state)
{
    // Both halves of the pair 2^-10: each step adds 2^-19 to a lane, so the sums stay small
    // and normal however long the probe runs.
    star::detail::bf16_pair pair = 0x3A803A80U;
    benchmark::DoNotOptimize(pair);
    std::array<float, Chains> sums{};
    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state) {
        bf16_dot_chains<Chains>(sums, pair, kFmaInner);
        benchmark::DoNotOptimize(sums.data());
    }
    report_foreign_load(state, load);
    const double flops =
        2.0 * kBf16DotMultiplies * static_cast<double>(Chains) * static_cast<double>(kFmaInner);
    state.counters["FLOPS"] = benchmark::Counter(
        flops, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kAvgThreads);
}
#endif

// ----------------------------------------------------------------------------------------
// Inputs, shared by the kernel and the naive baseline of one (T, d)
// ----------------------------------------------------------------------------------------

struct Inputs {
    Index tokens = 0;
    Index head_dim = 0;
    star::Tensor3<float> q, k, v;
};

void fill_normal(star::Tensor3<float>& t, std::mt19937& rng)
{
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (Index i = 0; i < t.size(); ++i)
        t.data()[i] = dist(rng);
}

/// Random N(0, 1) inputs of shape [T, kHeads, d]. One slot: the benchmarks are registered
/// grouped by (T, d), so consecutive benchmarks reuse it.
const Inputs& inputs(Index tokens, Index head_dim)
{
    static std::unique_ptr<Inputs> slot;
    if (!slot || slot->tokens != tokens || slot->head_dim != head_dim) {
        slot.reset(); // free the previous set first
        auto in = std::make_unique<Inputs>();
        in->tokens = tokens;
        in->head_dim = head_dim;
        std::mt19937 rng(static_cast<std::uint32_t>(tokens * 1000 + head_dim));
        for (star::Tensor3<float>* t : {&in->q, &in->k, &in->v}) {
            *t = star::Tensor3<float>(tokens, kHeads, head_dim);
            fill_normal(*t, rng);
        }
        slot = std::move(in);
    }
    return *slot;
}

// ----------------------------------------------------------------------------------------
// 2. The library kernel
// ----------------------------------------------------------------------------------------

void BM_GlobalCausal(benchmark::State& state)
{
    const Index tokens = state.range(0);
    const Index head_dim = state.range(1);
    const int threads = static_cast<int>(state.range(2));
    const Inputs& in = inputs(tokens, head_dim);

    tbb::task_arena arena(threads);
    // Untimed warm-up on a short prefix (tokens are outermost, so a prefix is a plain view):
    // brings up the arena's worker threads and touches the code paths.
    {
        const Index warm = std::min<Index>(tokens, 256);
        const star::ConstView3<float> q(in.q.data(), warm, kHeads, head_dim);
        const star::ConstView3<float> k(in.k.data(), warm, kHeads, head_dim);
        const star::ConstView3<float> v(in.v.data(), warm, kHeads, head_dim);
        arena.execute([&] {
            star::AttentionState out = star::global_attention(q, k, v);
            benchmark::DoNotOptimize(out.output.data());
        });
    }

    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state) {
        arena.execute([&] {
            star::AttentionState out =
                star::global_attention(star::view(in.q), star::view(in.k), star::view(in.v));
            benchmark::DoNotOptimize(out.output.data());
            benchmark::DoNotOptimize(out.lse.data());
            benchmark::ClobberMemory();
        });
    }
    report_foreign_load(state, load);
    state.counters["FLOPS"] = benchmark::Counter(causal_flops(tokens, head_dim),
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

// ----------------------------------------------------------------------------------------
// 2b. Every kernel path this CPU has (star/kernel/isa.hpp), on a Llama-like layer
// ----------------------------------------------------------------------------------------

/// 32 query heads sharing 8 KV heads of 128 (Llama 3 8B's attention), float or bf16 K/V.
constexpr Index kPathQHeads = 32;
constexpr Index kPathKvHeads = 8;
constexpr Index kPathHeadDim = 128;
constexpr Index kPathPrefillTokens = 4096;
constexpr Index kDecodeCacheTokens = 32768;
/// 1 MiB of float K/V (half a MiB of bf16): within the L2 of a core of Zen 4/5 and of
/// Sapphire/Emerald Rapids, two decode blocks.
constexpr Index kCachedDecodeTokens = 128;

/// What BM_Path runs.
enum class PathWork { prefill, decode, decode_cached };

template <class KV>
struct PathInputs {
    star::Tensor3<float> q;
    star::Tensor3<KV> k, v;
};

template <class KV>
const PathInputs<KV>& path_inputs(Index q_tokens, Index kv_tokens)
{
    static std::unique_ptr<PathInputs<KV>> slot;
    if (!slot || slot->q.dimension(0) != q_tokens || slot->k.dimension(0) != kv_tokens) {
        slot.reset();
        auto in = std::make_unique<PathInputs<KV>>();
        std::mt19937 rng(static_cast<std::uint32_t>(q_tokens * 7 + kv_tokens));
        std::normal_distribution<float> dist(0.0f, 1.0f);
        in->q = star::Tensor3<float>(q_tokens, kPathQHeads, kPathHeadDim);
        for (Index i = 0; i < in->q.size(); ++i)
            in->q.data()[i] = dist(rng);
        for (star::Tensor3<KV>* t : {&in->k, &in->v}) {
            *t = star::Tensor3<KV>(kv_tokens, kPathKvHeads, kPathHeadDim);
            for (Index i = 0; i < t->size(); ++i)
                t->data()[i] = static_cast<KV>(dist(rng));
        }
        slot = std::move(in);
    }
    return *slot;
}

/// `BM_Path/<isa>/<kv>/prefill|decode|decode_cached/threads:N`: causal prefill of
/// kPathPrefillTokens, or one decode step (1 query token after kDecodeCacheTokens cached
/// ones, or kCachedDecodeTokens), on path `isa`. Prefill reports FLOPS; decode reports the
/// K/V bytes read per second.
template <class KV>
void BM_Path(benchmark::State& state, star::KernelIsa isa, PathWork work)
{
    const int threads = static_cast<int>(state.range(0));
    const bool decode = work != PathWork::prefill;
    const Index q_tokens = decode ? 1 : kPathPrefillTokens;
    const Index kv_tokens = work == PathWork::decode          ? kDecodeCacheTokens
                            : work == PathWork::decode_cached ? kCachedDecodeTokens
                                                              : kPathPrefillTokens;
    const PathInputs<KV>& in = path_inputs<KV>(q_tokens, kv_tokens);
    star::detail::forced_isa.store(static_cast<int>(isa));
    const star::CausalMask mask{kv_tokens - q_tokens, 0};
    const star::AttentionOptions options{.check_finite = false};
    // The result goes into memory reused from call to call, as an engine's layer writes it:
    // a new state's output would time the first touch of fresh pages (BM_Output), which in
    // a VM can cost a prefill as much as the kernel's arithmetic.
    star::Tensor3<float> output(q_tokens, kPathQHeads, kPathHeadDim);
    star::Tensor2f lse(q_tokens, kPathQHeads);
    tbb::task_arena arena(threads);
    const auto run = [&] {
        arena.execute([&] {
            star::attention_into(star::View3<float>(output), star::View2f(lse), star::view(in.q),
                                 star::view(in.k), star::view(in.v), mask, options);
            benchmark::ClobberMemory();
        });
    };
    run(); // warm-up: the arena's threads, the code, the output's pages and (decode) the cache's
    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state)
        run();
    report_foreign_load(state, load);
    star::detail::forced_isa.store(-1);
    if (decode) {
        const double bytes = 2.0 * static_cast<double>(in.k.size()) * sizeof(KV);
        state.counters["BYTES"] =
            benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
    } else {
        const double t = static_cast<double>(q_tokens);
        const double flops = 4.0 * kPathHeadDim * kPathQHeads * (t * (t + 1.0) / 2.0);
        state.counters["FLOPS"] =
            benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
    }
}

/// Score transforms (kernel/score_transform.hpp) in BM_Transform.
enum class TransformKind { none, soft_cap, alibi };

constexpr std::array<std::pair<TransformKind, const char*>, 3> kTransforms{
    {{TransformKind::none, "none"},
     {TransformKind::soft_cap, "soft_cap"},
     {TransformKind::alibi, "alibi"}}};

/// Prefill is shorter than BM_Path's: the three transforms run back to back, each for the
/// same repetitions, and what they add per score does not depend on the length.
constexpr Index kTransformPrefillTokens = 2048;

/// `BM_Transform/<transform>/prefill|decode`: BM_Path's work on the best path, float K/V, one
/// thread (the cost of a transform is per score, so one thread measures it without the
/// scheduling of two), with the transform `kind`: Gemma 2's cap of 50, or ALiBi's slopes of
/// 32 heads with the queries at the end of the sequence.
void BM_Transform(benchmark::State& state, TransformKind kind, bool decode)
{
    const Index q_tokens = decode ? 1 : kTransformPrefillTokens;
    const Index kv_tokens = decode ? kDecodeCacheTokens : kTransformPrefillTokens;
    const PathInputs<float>& in = path_inputs<float>(q_tokens, kv_tokens);
    const star::CausalMask mask{kv_tokens - q_tokens, 0};
    const star::AttentionOptions options{.check_finite = false};
    const std::vector<float> slopes = star::alibi_slopes(kPathQHeads);
    tbb::task_arena arena(1);
    const auto attend = [&](const auto& transform) {
        star::AttentionState out = star::attention(star::view(in.q), star::view(in.k),
                                                   star::view(in.v), mask, options, transform);
        benchmark::DoNotOptimize(out.output.data());
        benchmark::ClobberMemory();
    };
    const auto run = [&] {
        arena.execute([&] {
            switch (kind) {
            case TransformKind::none: attend(star::NoTransform{}); break;
            case TransformKind::soft_cap: attend(star::SoftCap{50.0f}); break;
            case TransformKind::alibi: attend(star::Alibi{slopes, kv_tokens - q_tokens, 0}); break;
            }
        });
    };
    run(); // warm-up, as in BM_Path
    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state)
        run();
    report_foreign_load(state, load);
}

/// Where BM_Output's result goes.
enum class OutputKind { new_state, into_float, into_bf16 };

constexpr std::array<std::pair<OutputKind, const char*>, 3> kOutputs{
    {{OutputKind::new_state, "new_state"},
     {OutputKind::into_float, "into_float"},
     {OutputKind::into_bf16, "into_bf16"}}};

/// `BM_Output/<kind>`: a causal bf16 prefill of kTransformPrefillTokens on the best path,
/// one thread, its result in a new state (`attention`), or in float or bf16 memory of the
/// caller's, reused from call to call (`attention_into`): what the first touch of fresh
/// output memory costs, side by side.
void BM_Output(benchmark::State& state, OutputKind kind)
{
    const Index tokens = kTransformPrefillTokens;
    const PathInputs<Eigen::bfloat16>& in = path_inputs<Eigen::bfloat16>(tokens, tokens);
    const star::AttentionOptions options{.check_finite = false};
    star::Tensor3<float> output(tokens, kPathQHeads, kPathHeadDim);
    star::Tensor3<Eigen::bfloat16> rounded(tokens, kPathQHeads, kPathHeadDim);
    star::Tensor2f lse(tokens, kPathQHeads);
    tbb::task_arena arena(1);
    const auto run = [&] {
        arena.execute([&] {
            const auto q = star::view(in.q);
            const auto k = star::view(in.k);
            const auto v = star::view(in.v);
            switch (kind) {
            case OutputKind::new_state: {
                star::AttentionState out = star::attention(q, k, v, star::CausalMask{}, options);
                benchmark::DoNotOptimize(out.output.data());
                break;
            }
            case OutputKind::into_float:
                star::attention_into(star::View3<float>(output), star::View2f(lse), q, k, v,
                                     star::CausalMask{}, options);
                break;
            case OutputKind::into_bf16:
                star::attention_into(star::View3<Eigen::bfloat16>(rounded), star::View2f(lse), q, k,
                                     v, star::CausalMask{}, options);
                break;
            }
            benchmark::ClobberMemory();
        });
    };
    run(); // warm-up, as in BM_Path; it also touches the reused buffers once
    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state)
        run();
    report_foreign_load(state, load);
}

/// The tile kernel's transform of path `isa` over a tile of `keys x rows` scores, `ld`
/// apart, query rows grouped as BM_Path's heads are (4 query heads a KV head).
template <class T>
void transform_tile_on(star::KernelIsa isa, const T& transform, float* scores, Index ld, Index keys,
                       Index rows)
{
    namespace sd = star::detail;
    constexpr Index group = kPathQHeads / kPathKvHeads;
    switch (isa) {
#if STAR_X86_DISPATCH
    case star::KernelIsa::avx512:
        sd::avx512_path::transform_tile<sd::avx512_path::Simd>(
            transform,
            sd::avx512_path::TileScores{scores, ld, keys, rows, rows, group, 0, 0, 1000, rows});
        return;
    case star::KernelIsa::avx2:
        sd::avx2_path::transform_tile<sd::avx2_path::Simd>(
            transform,
            sd::avx2_path::TileScores{scores, ld, keys, rows, rows, group, 0, 0, 1000, rows});
        return;
#endif
    default:
        sd::portable_path::transform_tile<sd::portable_path::Simd>(
            transform,
            sd::portable_path::TileScores{scores, ld, keys, rows, rows, group, 0, 0, 1000, rows});
    }
}

/// `BM_TransformTile/<transform>`: one score tile of the tile kernel transformed, again and
/// again (both transforms keep scores finite and normal, and neither branches on them), on
/// the best path. Reports seconds per score.
void BM_TransformTile(benchmark::State& state, TransformKind kind)
{
    constexpr Index keys = 128, rows = 256, ld = rows + 16;
    std::vector<float, xsimd::aligned_allocator<float>> scores(static_cast<std::size_t>(keys * ld));
    std::mt19937 rng(7);
    std::normal_distribution<float> dist(0.0f, 3.0f);
    for (float& s : scores)
        s = dist(rng);
    const std::vector<float> slopes = star::alibi_slopes(kPathQHeads);
    const star::KernelIsa isa = star::kernel_isa();
    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state) {
        if (kind == TransformKind::soft_cap)
            transform_tile_on(isa, star::SoftCap{50.0f}, scores.data(), ld, keys, rows);
        else
            transform_tile_on(isa, star::Alibi{slopes, 0, 0}, scores.data(), ld, keys, rows);
        benchmark::ClobberMemory();
    }
    report_foreign_load(state, load);
    state.counters["per_score"] = benchmark::Counter(static_cast<double>(keys * rows),
                                                     benchmark::Counter::kIsIterationInvariantRate |
                                                         benchmark::Counter::kInvert);
}

/// Scores the tile kernel computes for BM_Transform's causal prefill: every score of each
/// (query tile, key tile) pair the mask does not hide wholly.
double transform_prefill_scores_computed()
{
    const Index group = kPathQHeads / kPathKvHeads;
    const Index tile_tokens = star::detail::TileShape{}.query_tokens(group);
    const Index tile_keys = star::detail::TileShape{}.keys;
    const Index tokens = kTransformPrefillTokens;
    double scores = 0.0;
    for (Index first = 0; first < tokens; first += tile_tokens) {
        const Index count = std::min(tile_tokens, tokens - first);
        const Index keys = std::min(tokens, (first + count + tile_keys - 1) / tile_keys * tile_keys);
        scores += static_cast<double>(count * keys * kPathQHeads);
    }
    return scores;
}

/// `BM_ReadBandwidth/threads:N`: streaming read of 1 GiB (a sum, so nothing is written),
/// split over N threads: what a decode step that reads its cache once can hope for.
void BM_ReadBandwidth(benchmark::State& state)
{
    const int threads = static_cast<int>(state.range(0));
    constexpr std::size_t floats = std::size_t{1} << 28;
    static const std::vector<float, xsimd::aligned_allocator<float>> buffer(floats, 1.0f);
    tbb::task_arena arena(threads);
    const auto run = [&] {
        std::vector<float> partial(static_cast<std::size_t>(threads));
        arena.execute([&] {
            tbb::parallel_for(0, threads, [&](int t) {
                const std::size_t first =
                    floats / static_cast<std::size_t>(threads) * static_cast<std::size_t>(t);
                const std::size_t last = first + floats / static_cast<std::size_t>(threads);
                Batch sum0(0.0f), sum1(0.0f), sum2(0.0f), sum3(0.0f);
                for (std::size_t i = first; i < last; i += 4 * Batch::size) {
                    sum0 += Batch::load_aligned(&buffer[i]);
                    sum1 += Batch::load_aligned(&buffer[i + Batch::size]);
                    sum2 += Batch::load_aligned(&buffer[i + 2 * Batch::size]);
                    sum3 += Batch::load_aligned(&buffer[i + 3 * Batch::size]);
                }
                partial[static_cast<std::size_t>(t)] = xsimd::hadd((sum0 + sum1) + (sum2 + sum3));
            });
        });
        benchmark::DoNotOptimize(partial.data());
    };
    run();
    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state)
        run();
    report_foreign_load(state, load);
    state.counters["BYTES"] = benchmark::Counter(static_cast<double>(floats * sizeof(float)),
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

// ----------------------------------------------------------------------------------------
// 2b'. K/V read in place from a paged cache, beside the same K/V laid out contiguously
// ----------------------------------------------------------------------------------------

constexpr Index kSourceDecodeTokens = 16384;
constexpr Index kSourcePrefillTokens = 2048;

/// BM_Path's inputs with K and V also copied into pools of pages of `page_tokens`, through
/// a shuffled page table (pages out of pool order, as a cache that has served many
/// requests holds them).
template <class KV>
struct PagedInputs {
    std::vector<KV> k_pool, v_pool;
    std::vector<std::int32_t> table;
    Index pages = 0;
};

template <class KV>
const PagedInputs<KV>& paged_inputs(const PathInputs<KV>& in, Index page_tokens)
{
    // Keyed by sizes, not by address: path_inputs frees and refills its tensors (with the
    // same values, from the same seed), so an address may come back holding other inputs.
    static std::map<std::pair<Index, Index>, std::unique_ptr<PagedInputs<KV>>> cache;
    auto& slot = cache[{in.k.dimension(0), page_tokens}];
    if (!slot) {
        slot = std::make_unique<PagedInputs<KV>>();
        const Index tokens = in.k.dimension(0), row = kPathKvHeads * kPathHeadDim;
        slot->pages = (tokens + page_tokens - 1) / page_tokens;
        slot->table.resize(static_cast<std::size_t>(slot->pages));
        std::iota(slot->table.begin(), slot->table.end(), 0);
        std::shuffle(slot->table.begin(), slot->table.end(), std::mt19937(7));
        for (auto [pool, from] : {std::pair{&slot->k_pool, &in.k}, std::pair{&slot->v_pool, &in.v}}) {
            pool->assign(static_cast<std::size_t>(slot->pages * page_tokens * row), KV(0.0f));
            for (Index t = 0; t < tokens; ++t)
                std::copy_n(from->data() + t * row, row,
                            pool->data() + (slot->table[static_cast<std::size_t>(t / page_tokens)] *
                                                page_tokens +
                                            t % page_tokens) *
                                               row);
        }
    }
    return *slot;
}

/// `BM_KVSource/<kv>/decode|prefill/contiguous|paged:<P>`: one decode step over a cache of
/// kSourceDecodeTokens, or a causal prefill of kSourcePrefillTokens, BM_Path's heads, the
/// best path, one thread; K/V contiguous (page_tokens 0) or in pages of `page_tokens`.
template <class KV>
void BM_KVSource(benchmark::State& state, bool decode, Index page_tokens)
{
    const Index q_tokens = decode ? 1 : kSourcePrefillTokens;
    const Index kv_tokens = decode ? kSourceDecodeTokens : kSourcePrefillTokens;
    const PathInputs<KV>& in = path_inputs<KV>(q_tokens, kv_tokens);
    const star::CausalMask mask{kv_tokens - q_tokens, 0};
    const star::AttentionOptions options{.check_finite = false};
    tbb::task_arena arena(1);
    std::optional<star::KVPages<KV>> k, v;
    if (page_tokens > 0) {
        const PagedInputs<KV>& paged = paged_inputs(in, page_tokens);
        k.emplace(star::paged_kv<KV>(paged.table, paged.k_pool.data(), paged.pages, page_tokens,
                                     kv_tokens, kPathKvHeads, kPathHeadDim));
        v.emplace(star::paged_kv<KV>(paged.table, paged.v_pool.data(), paged.pages, page_tokens,
                                     kv_tokens, kPathKvHeads, kPathHeadDim));
    } else {
        k.emplace(star::view(in.k));
        v.emplace(star::view(in.v));
    }
    const auto run = [&] {
        arena.execute([&] {
            star::AttentionState out = star::attention(star::view(in.q), *k, *v, mask, options);
            benchmark::DoNotOptimize(out.output.data());
            benchmark::ClobberMemory();
        });
    };
    run();
    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state)
        run();
    report_foreign_load(state, load);
}

// ----------------------------------------------------------------------------------------
// 2c. The kernel's tile product beside oneDNN's matmul
// ----------------------------------------------------------------------------------------

/// (M, N, K) of `C[M x N] = A[M x K] B[K x N]`: the kernel's two products of one tile of
/// 128 keys x 256 query rows at d = 128 (scores, then probabilities times values), and a
/// square one.
constexpr std::array<std::array<Index, 3>, 3> kTileProducts{
    {{128, 256, 128}, {256, 128, 128}, {512, 512, 512}}};

double product_flops(const std::array<Index, 3>& s)
{
    return 2.0 * static_cast<double>(s[0]) * static_cast<double>(s[1]) * static_cast<double>(s[2]);
}

template <class T>
std::vector<T> random_matrix(Index rows, Index cols, std::uint32_t seed)
{
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<T> m(static_cast<std::size_t>(rows * cols));
    for (T& x : m)
        x = static_cast<T>(dist(rng));
    return m;
}

/// `tile_gemm` of path `isa` (the same instantiation the kernel runs).
template <class B>
void star_tile_gemm(star::KernelIsa isa, const float* a, const B* b, float* c, Index m, Index n,
                    Index k)
{
    namespace sd = star::detail;
    const sd::Strides sa{k, 1};
    switch (isa) {
#if STAR_X86_DISPATCH
    case star::KernelIsa::avx512_bf16: // its float product; bf16 x bf16 in BM_StarTileProduct
        sd::avx512_bf16_path::tile_gemm<sd::avx512_bf16_path::Simd, false>(a, sa, b, n, c, n, m, n,
                                                                           k);
        return;
    case star::KernelIsa::avx512:
        sd::avx512_path::tile_gemm<sd::avx512_path::Simd, false>(a, sa, b, n, c, n, m, n, k);
        return;
    case star::KernelIsa::avx2:
        sd::avx2_path::tile_gemm<sd::avx2_path::Simd, false>(a, sa, b, n, c, n, m, n, k);
        return;
#endif
    default:
        sd::portable_path::tile_gemm<sd::portable_path::Simd, false>(a, sa, b, n, c, n, m, n, k);
    }
}

template <class B>
void BM_StarTileProduct(benchmark::State& state, star::KernelIsa isa, std::array<Index, 3> shape)
{
    const auto [m, n, k] = shape;
    const auto a = random_matrix<float>(m, k, 1);
    const auto b = random_matrix<B>(k, n, 2);
    std::vector<float> c(static_cast<std::size_t>(m * n));
    std::function<void()> product = [&] {
        star_tile_gemm(isa, a.data(), b.data(), c.data(), m, n, k);
    };
#if STAR_X86_DISPATCH
    // The avx512_bf16 path multiplies bf16 by bf16 (vdpbf16ps): A rounded to bf16, and both
    // operands laid out in pairs along the depth, as the kernel stages its tiles.
    namespace sd = star::detail;
    using Pairs = sd::Avx512Bf16Product<xsimd::default_arch>;
    std::vector<sd::bf16_pair> a_pairs, b_pairs;
    if constexpr (std::is_same_v<B, Eigen::bfloat16>)
        if (isa == star::KernelIsa::avx512_bf16) {
            const auto a_bf16 = random_matrix<Eigen::bfloat16>(m, k, 1);
            a_pairs.resize(static_cast<std::size_t>(m * k / 2));
            std::memcpy(a_pairs.data(), a_bf16.data(), a_pairs.size() * sizeof(sd::bf16_pair));
            b_pairs.resize(static_cast<std::size_t>(k / 2 * n));
            for (Index t = 0; t < k / 2; ++t)
                Pairs::pair_rows(b.data() + 2 * t * n, b.data() + (2 * t + 1) * n, n,
                                 b_pairs.data() + t * n, n);
            product = [&] {
                sd::avx512_bf16_path::tile_product<Pairs, false>(
                    a_pairs.data(), sd::Strides{k / 2, 1}, b_pairs.data(), n, c.data(), n, m, n,
                    k / 2);
            };
        }
#endif
    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state) {
        product();
        benchmark::DoNotOptimize(c.data());
        benchmark::ClobberMemory();
    }
    report_foreign_load(state, load);
    state.counters["FLOPS"] =
        benchmark::Counter(product_flops(shape), benchmark::Counter::kIsIterationInvariantRate);
}

#if STAR_BENCH_HAVE_ONEDNN
/// oneDNN's matmul, one thread, A and B of `type`, C f32, all row-major.
void BM_OneDnnProduct(benchmark::State& state, dnnl::memory::data_type type,
                      std::array<Index, 3> shape)
{
    using tag = dnnl::memory::format_tag;
    const auto [m, n, k] = shape;
    omp_set_num_threads(1); // a tile product runs on one core in the kernel
    const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    dnnl::stream stream(engine);
    const dnnl::memory::desc a_desc({m, k}, type, tag::ab), b_desc({k, n}, type, tag::ab),
        c_desc({m, n}, dnnl::memory::data_type::f32, tag::ab);
    std::optional<dnnl::matmul> made;
    try {
        made.emplace(
            dnnl::matmul::primitive_desc(dnnl::matmul::desc(a_desc, b_desc, c_desc), engine));
    } catch (const dnnl::error& e) {
        // oneDNN 2.6 has bf16 matmul only from AVX-512 (avx512_core) up.
        state.SkipWithError(
            ("oneDNN has no such matmul on this CPU: " + std::string(e.what())).c_str());
        return;
    }
    const dnnl::matmul& product = *made;
    dnnl::memory a(a_desc, engine), b(b_desc, engine), c(c_desc, engine);
    const auto fill = [](dnnl::memory& mem, Index count, dnnl::memory::data_type t,
                         std::uint32_t seed) {
        if (t == dnnl::memory::data_type::bf16) {
            const auto values = random_matrix<Eigen::bfloat16>(count, 1, seed);
            std::memcpy(mem.get_data_handle(), values.data(), values.size() * sizeof(values[0]));
        } else {
            const auto values = random_matrix<float>(count, 1, seed);
            std::memcpy(mem.get_data_handle(), values.data(), values.size() * sizeof(values[0]));
        }
    };
    fill(a, m * k, type, 1);
    fill(b, k * n, type, 2);
    const std::unordered_map<int, dnnl::memory> args{
        {DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}};
    product.execute(stream, args); // warm-up: oneDNN builds its kernel on first use
    stream.wait();
    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state) {
        product.execute(stream, args);
        stream.wait();
    }
    report_foreign_load(state, load);
    state.counters["FLOPS"] =
        benchmark::Counter(product_flops(shape), benchmark::Counter::kIsIterationInvariantRate);
    const dnnl_version_t* version = dnnl::version();
    state.SetLabel("oneDNN " + std::to_string(version->major) + "." +
                   std::to_string(version->minor) + "." + std::to_string(version->patch));
}
#endif

// ----------------------------------------------------------------------------------------
// 3. Naive Eigen baseline
// ----------------------------------------------------------------------------------------

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using HeadMap = Eigen::Map<const RowMatrix, 0, Eigen::OuterStride<>>;
using HeadMapOut = Eigen::Map<RowMatrix, 0, Eigen::OuterStride<>>;

/// Workspace of the naive baseline: the full score matrix and the per-row max / sum.
struct NaiveWorkspace {
    Eigen::MatrixXf scores;
    Eigen::VectorXf row_max;
    Eigen::VectorXf row_sum;

    explicit NaiveWorkspace(Index tokens) : scores(tokens, tokens), row_max(tokens), row_sum(tokens)
    {
    }
};

/// Per head: S = scale * Q K^T (full T x T GEMM), upper triangle set to -inf, row softmax,
/// O = P V. Writes `out` [T, H, d] and, if given, the natural-log LSE [T, H].
void naive_attention(const Inputs& in, NaiveWorkspace& ws, star::Tensor3<float>& out,
                     star::Tensor2f* lse = nullptr)
{
    const Index tokens = in.q.dimension(0);
    const Index heads = in.q.dimension(1);
    const Index d = in.q.dimension(2);
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    const float neg_inf = -std::numeric_limits<float>::infinity();
    const Eigen::OuterStride<> stride(heads * d);
    Eigen::MatrixXf& s = ws.scores;

    for (Index h = 0; h < heads; ++h) {
        const HeadMap q(in.q.data() + h * d, tokens, d, stride);
        const HeadMap k(in.k.data() + h * d, tokens, d, stride);
        const HeadMap v(in.v.data() + h * d, tokens, d, stride);
        HeadMapOut o(out.data() + h * d, tokens, d, stride);

        s.noalias() = (scale * q) * k.transpose();
        s.triangularView<Eigen::StrictlyUpper>().setConstant(neg_inf);
        ws.row_max = s.rowwise().maxCoeff();
        s.array() = (s.array().colwise() - ws.row_max.array()).exp();
        // Eigen's vectorised exp clamps its argument at -88.7, so exp(-inf) comes out as a
        // denormal (~3e-39) instead of 0; put exact zeros back so no denormals reach the
        // P V GEMM (numerically it changes nothing).
        s.triangularView<Eigen::StrictlyUpper>().setZero();
        ws.row_sum = s.rowwise().sum();
        o.noalias() = s * v;
        o.array().colwise() /= ws.row_sum.array();
        if (lse != nullptr)
            for (Index i = 0; i < tokens; ++i)
                (*lse)(i, h) = ws.row_max(i) + std::log(ws.row_sum(i));
    }
}

void BM_NaiveEigen(benchmark::State& state)
{
    const Index tokens = state.range(0);
    const Index head_dim = state.range(1);
    const Inputs& in = inputs(tokens, head_dim);
    NaiveWorkspace ws(tokens);
    ws.scores.setZero(); // fault the pages in before timing
    star::Tensor3<float> out(tokens, kHeads, head_dim);

    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state) {
        naive_attention(in, ws, out);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    report_foreign_load(state, load);
    state.counters["FLOPS"] = benchmark::Counter(causal_flops(tokens, head_dim),
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

// ----------------------------------------------------------------------------------------
// Finiteness check
// ----------------------------------------------------------------------------------------

enum class FiniteCheck { library, eigen };

template <class T>
void BM_FiniteCheck(benchmark::State& state, FiniteCheck how)
{
    constexpr Index elements = 2 * 8192 * 8 * 128;
    const std::vector<T> values(static_cast<std::size_t>(elements), T(0.5f));
    const Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> array(values.data(), elements);
    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state) {
        const bool finite = how == FiniteCheck::library
                                ? star::detail::all_finite(values.data(), elements)
                                : array.allFinite();
        if (!finite)
            state.SkipWithError("finite values reported as non-finite");
        benchmark::DoNotOptimize(finite);
    }
    report_foreign_load(state, load);
    state.counters["bytes"] = benchmark::Counter(static_cast<double>(elements * sizeof(T)),
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

// ----------------------------------------------------------------------------------------
// Correctness cross-check (untimed): kernel vs naive on small sizes, so the benchmark is
// known to time the right computation.
// ----------------------------------------------------------------------------------------

bool cross_check()
{
    bool ok = true;
    std::printf("Cross-check star::global_attention vs naive Eigen (Hq = Hkv = %ld, causal):\n",
                static_cast<long>(kHeads));
    for (const Index d : kHeadDims) {
        for (const Index tokens : {Index{1024}, Index{2048}}) {
            const Inputs& in = inputs(tokens, d);
            NaiveWorkspace ws(tokens);
            star::Tensor3<float> ref(tokens, kHeads, d);
            star::Tensor2f ref_lse(tokens, kHeads);
            naive_attention(in, ws, ref, &ref_lse);
            const star::AttentionState got =
                star::global_attention(star::view(in.q), star::view(in.k), star::view(in.v));
            float max_out = 0.0f;
            float max_lse = 0.0f;
            for (Index i = 0; i < ref.size(); ++i)
                max_out = std::max(max_out, std::abs(got.output.data()[i] - ref.data()[i]));
            for (Index i = 0; i < ref_lse.size(); ++i)
                max_lse = std::max(max_lse, std::abs(got.lse.data()[i] - ref_lse.data()[i]));
            const bool pass = max_out < 1e-3f && max_lse < 1e-3f;
            ok = ok && pass;
            std::printf("  T=%-6ld d=%-4ld max|dO|=%.3g  max|dLSE|=%.3g  %s\n",
                        static_cast<long>(tokens), static_cast<long>(d),
                        static_cast<double>(max_out), static_cast<double>(max_lse),
                        pass ? "ok" : "MISMATCH");
        }
    }
    std::printf("\n");
    std::fflush(stdout);
    return ok;
}

/// Exact causal attention in double of `q` over `k`, `v` (any element type), `[T, H, d]`
/// with `q_heads / kv_heads` query heads per KV head: the output and the LSE.
template <class KV>
std::pair<std::vector<double>, std::vector<double>> exact_causal(const star::Tensor3<float>& q,
                                                                 const star::Tensor3<KV>& k,
                                                                 const star::Tensor3<KV>& v)
{
    const Index tokens = q.dimension(0), q_heads = q.dimension(1), d = q.dimension(2);
    const Index kv_heads = k.dimension(1), group = q_heads / kv_heads;
    const double scale = 1.0 / std::sqrt(double(d));
    std::vector<double> out(static_cast<std::size_t>(q.size())), lse(tokens * q_heads);
    std::vector<double> p(static_cast<std::size_t>(tokens));
    for (Index i = 0; i < tokens; ++i)
        for (Index h = 0; h < q_heads; ++h) {
            const float* qi = q.data() + (i * q_heads + h) * d;
            double max = -std::numeric_limits<double>::infinity();
            for (Index j = 0; j <= i; ++j) {
                const KV* kj = k.data() + (j * kv_heads + h / group) * d;
                double dot = 0.0;
                for (Index c = 0; c < d; ++c)
                    dot += double(qi[c]) * double(float(kj[c]));
                p[j] = scale * dot;
                max = std::max(max, p[j]);
            }
            double sum = 0.0;
            for (Index j = 0; j <= i; ++j)
                sum += (p[j] = std::exp(p[j] - max));
            double* o = out.data() + (i * q_heads + h) * d;
            for (Index j = 0; j <= i; ++j) {
                const KV* vj = v.data() + (j * kv_heads + h / group) * d;
                for (Index c = 0; c < d; ++c)
                    o[c] += p[j] / sum * double(float(vj[c]));
            }
            lse[i * q_heads + h] = max + std::log(sum);
        }
    return {std::move(out), std::move(lse)};
}

/// The cost of bf16 products (the avx512_bf16 path rounds the queries and the probabilities
/// to bf16), beside the cost of keeping K/V in bf16 at all: with K/V drawn in float and
/// rounded to bf16, each path's output error against exact attention (in double) over the
/// same bf16 K/V, and against exact attention over the float K/V before rounding. BM_Path's
/// heads (32 q / 8 kv, d = 128), causal, T = 512, queries of N(0, 1) and N(0, 16) (sharper
/// attention: there a few keys take most of the weight). Printed, never judged: the tests
/// bound the error.
void print_bf16_accuracy()
{
    constexpr Index tokens = 512, q_heads = 32, kv_heads = 8, d = 128;
    std::printf("bf16 K/V: output error against exact attention (double) over the same bf16 K/V, "
                "and over\nthe float K/V they were rounded from; 32 q / 8 kv heads, d = %ld, "
                "causal T = %ld:\n",
                static_cast<long>(d), static_cast<long>(tokens));
    std::printf("  %-12s %-8s %14s %14s %14s %14s\n", "path", "q", "max|dO| bf16", "rms|dO| bf16",
                "max|dLSE| bf16", "rms|dO| float");
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    star::Tensor3<float> k_float(tokens, kv_heads, d), v_float(tokens, kv_heads, d);
    star::Tensor3<Eigen::bfloat16> k(tokens, kv_heads, d), v(tokens, kv_heads, d);
    for (Index i = 0; i < k.size(); ++i) {
        k.data()[i] = Eigen::bfloat16(k_float.data()[i] = normal(rng));
        v.data()[i] = Eigen::bfloat16(v_float.data()[i] = normal(rng));
    }
    for (const float sigma : {1.0f, 4.0f}) {
        star::Tensor3<float> q(tokens, q_heads, d);
        for (Index i = 0; i < q.size(); ++i)
            q.data()[i] = sigma * normal(rng);
        const auto [out, lse] = exact_causal(q, k, v);
        const auto unrounded = exact_causal(q, k_float, v_float).first;
        for (const star::KernelIsa isa : star::all_kernel_isas) {
            if (!star::cpu_supports(isa))
                continue;
            star::detail::forced_isa.store(static_cast<int>(isa));
            const star::AttentionState got =
                star::attention(star::view(q), star::view(k), star::view(v), star::CausalMask{});
            star::detail::forced_isa.store(-1);
            double max_out = 0.0, squares = 0.0, max_lse = 0.0, squares_float = 0.0;
            for (Index n = 0; n < got.output.size(); ++n) {
                const double e = std::abs(got.output.data()[n] - out[n]);
                const double e_float = got.output.data()[n] - unrounded[n];
                max_out = std::max(max_out, e);
                squares += e * e;
                squares_float += e_float * e_float;
            }
            for (Index n = 0; n < got.lse.size(); ++n)
                max_lse = std::max(max_lse, std::abs(got.lse.data()[n] - lse[n]));
            const double count = double(got.output.size());
            std::printf("  %-12s N(0,%-3g) %14.3g %14.3g %14.3g %14.3g\n",
                        std::string(star::name(isa)).c_str(), double(sigma * sigma), max_out,
                        std::sqrt(squares / count), max_lse, std::sqrt(squares_float / count));
        }
    }
    std::printf("\n");
    std::fflush(stdout);
}

/// Median time and median rate of the series `function_name` with exactly `args`.
struct Stat {
    bool found = false;
    double time = 0.0;   // ms for the attention benchmarks
    double gflops = 0.0; // GFLOP/s
    double other = 0.0;  // cores taken by other processes (median)
};

Stat find_stat(const std::map<std::string, Series>& all, const std::string& function_name,
               const std::vector<long>& args, int threads = 1)
{
    for (const auto& [key, s] : all)
        if (s.function_name == function_name && s.args == args && s.threads == threads)
            return {true, median(s.real_time), median(s.counter("FLOPS")) * 1e-9,
                    median(s.counter("other_cores"))};
    return {};
}

/// `value` right-aligned in `width` columns with `precision` decimals, or "n/a".
void print_cell(double value, bool found, int width, int precision)
{
    if (found)
        std::printf("%*.*f", width, precision, value);
    else
        std::printf("%*s", width, "n/a");
}

/// The kernel paths side by side: prefill against the FMA peak of as many cores, decode
/// against the read bandwidth of as many threads.
void print_paths_summary(const std::map<std::string, Series>& all, double peak,
                         double two_thread_peak)
{
    std::map<long, double> bandwidth;
    for (const auto& [key, s] : all)
        if (s.function_name == "BM_ReadBandwidth" && !s.args.empty())
            bandwidth[s.args[0]] = median(s.counter("BYTES")) * 1e-9;
    for (const auto& [threads, gbs] : bandwidth)
        std::printf("Streaming read, %ld thread(s): %.1f GB/s\n", threads, gbs);
    std::printf(
        "\nKernel paths, %ld q / %ld kv heads, d = %ld; prefill: causal T = %ld; decode: 1 token "
        "over %ld cached (decode_cached: over %ld)\n",
        static_cast<long>(kPathQHeads), static_cast<long>(kPathKvHeads),
        static_cast<long>(kPathHeadDim), static_cast<long>(kPathPrefillTokens),
        static_cast<long>(kDecodeCacheTokens), static_cast<long>(kCachedDecodeTokens));
    std::printf("%-34s %3s %10s %12s %10s %8s\n", "path/kv/work", "thr", "ms", "rate", "of bound",
                "other");
    for (const auto& [key, s] : all) {
        if (s.function_name.rfind("BM_Path/", 0) != 0 || s.args.empty())
            continue;
        const long threads = s.args[0];
        const bool decode = s.function_name.find("/decode") != std::string::npos;
        const double rate = median(s.counter(decode ? "BYTES" : "FLOPS")) * 1e-9;
        const double bound = decode ? (bandwidth.count(threads) != 0 ? bandwidth[threads] : 0.0)
                                    : (threads == 1 ? peak : two_thread_peak);
        std::printf("%-34s %3ld %10.3f %7.1f %s %9.2f %8.2f\n", s.function_name.c_str() + 8,
                    threads, median(s.real_time), rate, decode ? "GB/s" : "GF/s",
                    bound > 0 ? rate / bound : 0.0, median(s.counter("other_cores")));
    }
    std::printf("(of bound: prefill / FP32 FMA peak of as many cores; decode / streaming read of as "
                "many threads;\n decode_cached above 1: that path's decode is bound by memory, "
                "not by its instructions)\n\n");
}

/// Each score transform's time over that of none, for the same work in the same run.
void print_transforms_summary(const std::map<std::string, Series>& all)
{
    bool any = false;
    for (const char* work : {"prefill", "decode"}) {
        std::map<std::string, std::pair<double, double>> times; // name -> (ms, other cores)
        for (const auto& [key, s] : all)
            for (const auto& [kind, name] : kTransforms)
                if (s.function_name == std::string("BM_Transform/") + name + "/" + work)
                    times[name] = {median(s.real_time), median(s.counter("other_cores"))};
        if (times.count("none") == 0)
            continue;
        if (!any)
            std::printf("Score transforms (best path, float K/V, 1 thread; prefill: causal T = %ld; "
                        "decode: 1 token over %ld cached), time over none's:\n",
                        static_cast<long>(kTransformPrefillTokens),
                        static_cast<long>(kDecodeCacheTokens));
        any = true;
        for (const auto& [kind, name] : kTransforms)
            if (times.count(name) != 0)
                std::printf("  %-8s %-9s %10.2f ms  %5.3fx  (other processes: %.2f cores)\n", work,
                            name, times[name].first, times[name].first / times["none"].first,
                            times[name].second);
    }
    const auto named = [&](const std::string& function) -> const Series* {
        for (const auto& [key, s] : all)
            if (s.function_name == function)
                return &s;
        return nullptr;
    };
    if (const Series* none = named("BM_Transform/none/prefill")) {
        const double kernel = median(none->real_time) * 1e-3 / transform_prefill_scores_computed();
        for (const auto& [kind, name] : kTransforms) {
            const Series* alone = named(std::string("BM_TransformTile/") + name);
            if (alone == nullptr)
                continue;
            const double cost = median(alone->counter("per_score"));
            std::printf("  %-9s alone: %.3f ns per score, the tile kernel %.3f ns per score computed: "
                        "prefill %.3fx  (other processes: %.2f cores)\n",
                        name, cost * 1e9, kernel * 1e9, 1.0 + cost / kernel,
                        median(alone->counter("other_cores")));
        }
    }
    if (any)
        std::printf("\n");
}

/// The kernel's tile product on each path beside oneDNN's matmul of the same shape.
void print_tile_products_summary(const std::map<std::string, Series>& all, double peak)
{
    std::printf("Tile products C[MxN] = A[MxK] B[KxN], one thread, GFLOP/s (of the FMA peak); "
                "star: A float, B float or bf16; oneDNN: f32, bf16 x bf16 -> f32:\n");
    for (const auto& shape : kTileProducts) {
        const std::string dims = std::to_string(shape[0]) + "x" + std::to_string(shape[1]) + "x" +
                                 std::to_string(shape[2]);
        std::printf("  %-12s", dims.c_str());
        for (const auto& [key, s] : all) {
            const std::string& f = s.function_name;
            if (f.rfind("BM_TileProduct/", 0) != 0 || f.size() < dims.size() ||
                f.compare(f.size() - dims.size(), dims.size(), dims) != 0)
                continue;
            const double gflops = median(s.counter("FLOPS")) * 1e-9;
            const std::string who = f.substr(15, f.size() - 15 - dims.size() - 1);
            std::printf("  %s %.1f (%.2f)", who.c_str(), gflops, peak > 0.0 ? gflops / peak : 0.0);
        }
        std::printf("\n");
    }
    std::printf("\n");
}

/// The bf16 dot-product probe beside the FMA peak, one thread and two.
void print_bf16_dot_summary(const std::map<std::string, Series>& all, double peak,
                            double two_thread_peak)
{
    if (!star::cpu_supports(star::KernelIsa::avx512_bf16)) {
        std::printf("bf16 dot probe (vdpbf16ps): skipped, this CPU lacks %s\n\n",
                    std::string(star::required_features(star::KernelIsa::avx512_bf16)).c_str());
        return;
    }
    std::printf("bf16 dot probe (vdpbf16ps, 32 multiply-adds each), %lld per chain per iteration:\n",
                static_cast<long long>(kFmaInner));
    double best[3] = {0.0, 0.0, 0.0}; // by threads
    for (const auto& [key, s] : all) {
        const std::size_t colon = s.function_name.find("chains:");
        if (s.function_name.rfind("BM_Bf16DotPeak", 0) != 0 || colon == std::string::npos)
            continue;
        const double gflops = median(s.counter("FLOPS")) * 1e-9;
        std::printf("  %-10s threads=%d  %8.1f GFLOP/s   (other processes: %.2f cores)\n",
                    s.function_name.substr(colon).c_str(), s.threads, gflops,
                    median(s.counter("other_cores")));
        if (s.threads >= 1 && s.threads <= 2)
            best[s.threads] = std::max(best[s.threads], gflops);
    }
    if (peak > 0.0)
        std::printf("  => bf16 dot peak / FP32 FMA peak: %.2f one thread", best[1] / peak);
    if (two_thread_peak > 0.0 && best[2] > 0.0)
        std::printf(", %.2f two", best[2] / two_thread_peak);
    std::printf("\n\n");
}

void print_summary(const std::map<std::string, Series>& all)
{
    std::printf("\n==================================== Summary (medians of %d repetitions) "
                "====================================\n",
                kRepetitions);

    // FMA probe.
    std::printf(
        "\nFP32 FMA probe, xsimd::batch<float> (%s, %zu lanes), %lld FMAs per chain per iteration:\n",
        Batch::arch_type::name(), Batch::size, static_cast<long long>(kFmaInner));
    struct FmaRow {
        std::size_t chains;
        int threads;
        double gflops;
        double other;
    };
    std::vector<FmaRow> fma;
    for (const auto& [key, s] : all) {
        const std::size_t colon = s.function_name.find("chains:");
        if (s.function_name.rfind("BM_FmaPeak", 0) != 0 || colon == std::string::npos)
            continue;
        fma.push_back({std::stoul(s.function_name.substr(colon + 7)), s.threads,
                       median(s.counter("FLOPS")) * 1e-9, median(s.counter("other_cores"))});
    }
    std::sort(fma.begin(), fma.end(), [](const FmaRow& a, const FmaRow& b) {
        return std::pair(a.threads, a.chains) < std::pair(b.threads, b.chains);
    });
    double peak = 0.0;
    std::string peak_name;
    double one_chain = 0.0;
    double two_threads = 0.0;
    for (const FmaRow& r : fma) {
        std::printf("  chains=%-3zu threads=%d  %8.1f GFLOP/s   (other processes: %.2f cores)\n",
                    r.chains, r.threads, r.gflops, r.other);
        if (r.threads == 1 && r.chains == 1)
            one_chain = r.gflops;
        if (r.threads == 2)
            two_threads = std::max(two_threads, r.gflops);
        if (r.threads == 1 && r.chains >= kFmaMinPeakChains && r.gflops > peak) {
            peak = r.gflops;
            peak_name = "chains=" + std::to_string(r.chains);
        }
    }
    if (one_chain > 0.0 && peak > 0.0)
        std::printf(
            "  peak / 1-chain rate = %.1f FMAs in flight needed (= FMA latency x FMA pipes)\n",
            peak / one_chain);
    if (two_threads > 0.0 && peak > 0.0)
        std::printf("  2-thread aggregate / 1-thread peak = %.2f\n", two_threads / peak);
    std::printf("  => single-core peak used below: %.1f GFLOP/s (%s)\n\n", peak, peak_name.c_str());
    print_bf16_dot_summary(all, peak, two_threads);
    print_paths_summary(all, peak, two_threads);
    print_tile_products_summary(all, peak);
    print_transforms_summary(all);

    std::printf("Attention, Hq = Hkv = %ld (no GQA), causal FLOPs = 4*d*Hq*T(T+1)/2 for kernel and "
                "naive alike.\n",
                static_cast<long>(kHeads));
    std::printf(
        "k1/k2 = star::global_attention at 1/2 TBB threads; naive = Eigen full-matrix, 1 thread.\n");
    std::printf("%6s %4s | %8s %8s %8s | %9s %9s %9s | %7s %6s %9s %8s | %s\n", "T", "d", "k1 GF/s",
                "k2 GF/s", "nv GF/s", "k1 ms", "k2 ms", "naive ms", "k1/peak", "k2/k1", "t_k1/t_nv",
                "nv/k1", "other k1/k2/nv");
    std::printf("%s\n", std::string(117, '-').c_str());
    for (const Index d : kHeadDims) {
        for (const Index tokens : kTokens) {
            const std::vector<long> a1{static_cast<long>(tokens), static_cast<long>(d), 1};
            const std::vector<long> a2{static_cast<long>(tokens), static_cast<long>(d), 2};
            const std::vector<long> an{static_cast<long>(tokens), static_cast<long>(d)};
            const Stat k1 = find_stat(all, "BM_GlobalCausal", a1);
            const Stat k2 = find_stat(all, "BM_GlobalCausal", a2);
            const Stat nv = find_stat(all, "BM_NaiveEigen", an);
            if (!k1.found && !k2.found && !nv.found)
                continue;
            std::printf("%6ld %4ld | ", static_cast<long>(tokens), static_cast<long>(d));
            print_cell(k1.gflops, k1.found, 8, 1);
            std::printf(" ");
            print_cell(k2.gflops, k2.found, 8, 1);
            std::printf(" ");
            print_cell(nv.gflops, nv.found, 8, 1);
            std::printf(" | ");
            print_cell(k1.time, k1.found, 9, 1);
            std::printf(" ");
            print_cell(k2.time, k2.found, 9, 1);
            std::printf(" ");
            print_cell(nv.time, nv.found, 9, 1);
            std::printf(" | ");
            print_cell(k1.gflops / peak, k1.found && peak > 0.0, 7, 3);
            std::printf(" ");
            print_cell(k1.time / k2.time, k1.found && k2.found, 6, 2);
            std::printf(" ");
            print_cell(k1.time / nv.time, k1.found && nv.found, 9, 4);
            std::printf(" ");
            print_cell(nv.time / k1.time, k1.found && nv.found, 6, 1);
            std::printf("x");
            std::printf(" | %.2f/%.2f/", k1.found ? k1.other : 0.0, k2.found ? k2.other : 0.0);
            if (nv.found)
                std::printf("%.2f", nv.other);
            else if (tokens > kNaiveMaxTokens)
                std::printf("-  (naive capped at T=%ld)", static_cast<long>(kNaiveMaxTokens));
            else
                std::printf("-");
            std::printf("\n");
        }
    }
    std::printf(
        "\nk1/peak = 1-thread kernel GFLOP/s / measured single-core FMA peak; k2/k1 = 2-thread "
        "speed-up (ratio of median times);\nt_k1/t_nv = 1-thread kernel time / naive time (same FLOP "
        "count, so also nv GF/s / k1 GF/s); nv/k1 = its inverse (kernel speed-up over naive);\n"
        "other = median number of cores other processes/steal took while k1, k2, naive were measured "
        "(clean: ~0; ~1 means the 2-thread numbers are not a valid speed-up).\n");
    star_bench::print_quiet_gate_summary();
}

// ----------------------------------------------------------------------------------------
// Registration
// ----------------------------------------------------------------------------------------

template <std::size_t Chains>
void register_fma(int threads)
{
    auto* b = benchmark::RegisterBenchmark(("BM_FmaPeak/chains:" + std::to_string(Chains)).c_str(),
                                           &BM_FmaPeak<Chains>);
    b->MinTime(kFmaMinTime)->Repetitions(kFmaRepetitions)->UseRealTime();
    if (threads > 1)
        b->Threads(threads);
}

void register_all()
{
    // Few chains are latency-bound (validation of the probe: rate grows ~linearly with the
    // chain count until both FMA pipes are full, then stays flat).
    register_fma<1>(1);
    register_fma<2>(1);
    register_fma<4>(1);
    register_fma<8>(1);
    register_fma<10>(1);
    register_fma<12>(1);
    register_fma<16>(1);
    register_fma<24>(1);
    // Both cores at once: should be ~2x if the 2 vCPUs are separate physical cores.
    register_fma<12>(2);
#if STAR_X86_DISPATCH
    if (star::cpu_supports(star::KernelIsa::avx512_bf16)) {
        const auto dot = [](const char* name, auto* function, int threads) {
            auto* b = benchmark::RegisterBenchmark(name, function);
            b->MinTime(kFmaMinTime)->Repetitions(kFmaRepetitions)->UseRealTime();
            if (threads > 1)
                b->Threads(threads);
        };
        dot("BM_Bf16DotPeak/chains:8", &BM_Bf16DotPeak<8>, 1);
        dot("BM_Bf16DotPeak/chains:12", &BM_Bf16DotPeak<12>, 1);
        dot("BM_Bf16DotPeak/chains:16", &BM_Bf16DotPeak<16>, 1);
        dot("BM_Bf16DotPeak/chains:24", &BM_Bf16DotPeak<24>, 1);
        dot("BM_Bf16DotPeak/chains:12", &BM_Bf16DotPeak<12>, 2);
    }
#endif

    const auto finite_check = [](const char* name, auto* function) {
        for (const auto& [how, label] : {std::pair{FiniteCheck::library, "library"},
                                         std::pair{FiniteCheck::eigen, "eigen_allFinite"}})
            benchmark::RegisterBenchmark(
                (std::string("BM_FiniteCheck/") + name + "/" + label).c_str(), function, how)
                ->Unit(benchmark::kMillisecond)
                ->UseRealTime()
                ->MinTime(0.2)
                ->Repetitions(kRepetitions);
    };
    finite_check("float", &BM_FiniteCheck<float>);
    finite_check("bf16", &BM_FiniteCheck<Eigen::bfloat16>);
    finite_check("half", &BM_FiniteCheck<Eigen::half>);

    for (const int threads : kThreads)
        benchmark::RegisterBenchmark("BM_ReadBandwidth", &BM_ReadBandwidth)
            ->Arg(threads)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime()
            ->MinTime(kMinTime)
            ->Repetitions(kRepetitions);
    // Paths side by side: for each kind of work, every path of this CPU back to back.
    constexpr std::array<std::pair<PathWork, const char*>, 3> works{
        {{PathWork::prefill, "/prefill"},
         {PathWork::decode, "/decode"},
         {PathWork::decode_cached, "/decode_cached"}}};
    for (const auto& [work, tail] : works)
        for (const int threads : kThreads)
            for (const star::KernelIsa isa : star::all_kernel_isas) {
                // 128 cached tokens split over two threads time the split, not the step.
                if (!star::cpu_supports(isa) || (work == PathWork::decode_cached && threads != 1))
                    continue;
                const std::string isa_name(star::name(isa));
                benchmark::RegisterBenchmark(("BM_Path/" + isa_name + "/float" + tail).c_str(),
                                             &BM_Path<float>, isa, work)
                    ->Arg(threads)
                    ->Unit(benchmark::kMillisecond)
                    ->UseRealTime()
                    ->MinTime(kMinTime)
                    ->Repetitions(kRepetitions);
                benchmark::RegisterBenchmark(("BM_Path/" + isa_name + "/bf16" + tail).c_str(),
                                             &BM_Path<Eigen::bfloat16>, isa, work)
                    ->Arg(threads)
                    ->Unit(benchmark::kMillisecond)
                    ->UseRealTime()
                    ->MinTime(kMinTime)
                    ->Repetitions(kRepetitions);
            }

    // K/V sources: contiguous and paged side by side for each kind of work and element.
    for (const bool decode : {true, false})
        for (const bool bf16 : {false, true})
            for (const Index page : {Index{0}, Index{16}, Index{128}}) {
                const std::string label =
                    std::string("BM_KVSource/") + (bf16 ? "bf16" : "float") +
                    (decode ? "/decode/" : "/prefill/") +
                    (page == 0 ? std::string("contiguous") : "paged:" + std::to_string(page));
                auto* b = bf16 ? benchmark::RegisterBenchmark(
                                     label.c_str(), &BM_KVSource<Eigen::bfloat16>, decode, page)
                               : benchmark::RegisterBenchmark(label.c_str(), &BM_KVSource<float>,
                                                              decode, page);
                b->Unit(benchmark::kMillisecond)
                    ->UseRealTime()
                    ->MinTime(kMinTime)
                    ->Repetitions(kRepetitions);
            }

    // Each kind of work with every transform, back to back.
    for (const bool decode : {false, true})
        for (const auto& [kind, name] : kTransforms)
            benchmark::RegisterBenchmark(
                (std::string("BM_Transform/") + name + (decode ? "/decode" : "/prefill")).c_str(),
                &BM_Transform, kind, decode)
                ->Unit(benchmark::kMillisecond)
                ->UseRealTime()
                ->MinTime(kMinTime)
                ->Repetitions(kRepetitions);
    for (const auto& [kind, name] : kOutputs)
        benchmark::RegisterBenchmark((std::string("BM_Output/") + name).c_str(), &BM_Output, kind)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime()
            ->MinTime(kMinTime)
            ->Repetitions(kRepetitions);
    for (const auto& [kind, name] : kTransforms)
        if (kind != TransformKind::none)
            benchmark::RegisterBenchmark((std::string("BM_TransformTile/") + name).c_str(),
                                         &BM_TransformTile, kind)
                ->Unit(benchmark::kMicrosecond)
                ->UseRealTime()
                ->MinTime(0.2)
                ->Repetitions(kRepetitions);

    // Each shape: the kernel's product on every path, then oneDNN's, back to back.
    for (const auto& shape : kTileProducts) {
        const std::string dims = std::to_string(shape[0]) + "x" + std::to_string(shape[1]) + "x" +
                                 std::to_string(shape[2]);
        const auto tile = [](benchmark::internal::Benchmark* b) {
            b->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(0.2)->Repetitions(kRepetitions);
        };
        for (const star::KernelIsa isa : star::all_kernel_isas) {
            if (!star::cpu_supports(isa))
                continue;
            const std::string prefix = "BM_TileProduct/star/" + std::string(star::name(isa));
            tile(benchmark::RegisterBenchmark((prefix + "/float/" + dims).c_str(),
                                              &BM_StarTileProduct<float>, isa, shape));
            tile(benchmark::RegisterBenchmark((prefix + "/bf16/" + dims).c_str(),
                                              &BM_StarTileProduct<Eigen::bfloat16>, isa, shape));
        }
#if STAR_BENCH_HAVE_ONEDNN
        tile(benchmark::RegisterBenchmark(("BM_TileProduct/onednn/f32/" + dims).c_str(),
                                          &BM_OneDnnProduct, dnnl::memory::data_type::f32, shape));
        tile(benchmark::RegisterBenchmark(("BM_TileProduct/onednn/bf16/" + dims).c_str(),
                                          &BM_OneDnnProduct, dnnl::memory::data_type::bf16, shape));
#endif
    }

    // Grouped by (d, T) so the kernel and the baseline of one size run back to back.
    for (const Index d : kHeadDims) {
        for (const Index tokens : kTokens) {
            for (const int threads : kThreads)
                benchmark::RegisterBenchmark("BM_GlobalCausal", &BM_GlobalCausal)
                    ->Args({tokens, d, threads})
                    ->Unit(benchmark::kMillisecond)
                    ->UseRealTime()
                    ->MinTime(kMinTime)
                    ->Repetitions(kRepetitions);
            if (tokens <= kNaiveMaxTokens)
                benchmark::RegisterBenchmark("BM_NaiveEigen", &BM_NaiveEigen)
                    ->Args({tokens, d})
                    ->Unit(benchmark::kMillisecond)
                    ->UseRealTime()
                    ->MinTime(kMinTime)
                    ->Repetitions(kRepetitions);
        }
    }
}

} // namespace

int main(int argc, char** argv)
{
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv))
        return 1;

    std::printf("Star kernel benchmark: Hq = Hkv = %ld (no GQA), T in {1K..16K}, d in {64, 128}, "
                "threads in {1, 2}; naive baseline up to T = %ld; Eigen SIMD: %s; xsimd arch: %s\n\n",
                static_cast<long>(kHeads), static_cast<long>(kNaiveMaxTokens),
                Eigen::SimdInstructionSetsInUse(), Batch::arch_type::name());
    const bool ok = cross_check();
    print_bf16_accuracy();

    register_all();
    const auto options = isatty(STDOUT_FILENO) != 0 ? benchmark::ConsoleReporter::OO_ColorTabular
                                                    : benchmark::ConsoleReporter::OO_Tabular;
    CollectingReporter reporter(options);
    benchmark::RunSpecifiedBenchmarks(&reporter);
    print_summary(reporter.series());
    benchmark::Shutdown();
    return ok ? 0 : 2;
}
