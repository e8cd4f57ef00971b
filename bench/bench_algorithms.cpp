/// \file
/// Algorithm benchmark for Star: one attention layer (32 query heads sharing 8 KV heads,
/// head_dim 128, float K/V, N(0, 1) inputs) at context lengths L = 8K..64K, H = 4 in-process
/// hosts, block size b = L/4 (anchor a = b, the paper's defaults).
///
/// Wall time on this machine (all benchmarks use both cores through TBB's default arena):
///  * `global`           exact causal `star::global_attention(q, k, v)`;
///  * `ring_plain`, `ring_zigzag`  `star::RingAttention` over `star::LocalCommunicator(4)`;
///  * `star_p1`          Star phase 1, `encode_context` into fresh per-host caches;
///  * `star_p2`          Star phase 2 after an (untimed) phase 1: one 64-token
///                       `attend_query`, then 128 decode steps of 1 token, timed as one unit;
///  * `exact_p2`         the exact equivalent on one host: per step, append the step's K/V
///                       to one growing `star::KVCache` holding the whole context and run
///                       `star::attention(q_step, keys, values, CausalMask{cached, 0})`.
///
/// Critical path, i.e. the time the same work would take on 4 single-core machines with
/// free communication: `TimedHosts` forwards every collective to a LocalCommunicator but
/// runs `for_each_host` sequentially on one thread (a `tbb::task_arena(1)`), timing each
/// host in each bulk-synchronous step; critical path = sum over steps of the slowest host.
/// Collectives and the calling thread's work between steps (`glue_ms`) count as zero.
/// Host times are recorded as wall time (`crit_ms`) and as the thread's CPU time
/// (`crit_cpu_ms`), which leaves out the time other processes held the core: on this shared
/// machine the CPU-time figures are the robust ones.
///  * `ring_plain_crit`, `ring_zigzag_crit`, `star_p1_crit`, `star_p2_crit`;
///  * `global_1t`, `exact_p2_1t`: the exact algorithms on one thread -- the single-machine
///    baseline (a 4-machine exact algorithm is ring attention); `cpu_ms` is their thread CPU
///    time.
///
/// Every benchmark also reports `other_cores` (bench_support.hpp) and starts behind the
/// shared quiet gate.
///
/// Sizes: L from `STAR_BENCH_MIN_L` (default 8192) to `STAR_BENCH_MAX_L` (default 32768).
/// The default run takes ~20 minutes on this 2-core machine (up to 5 of them in the quiet
/// gate); 64K alone takes another ~20 minutes (about 4x the 32K work), so it is not in the
/// default. For 64K only:
///   STAR_BENCH_MIN_L=65536 STAR_BENCH_MAX_L=65536 build/release/bench/bench_algorithms
/// Below 32K every benchmark runs 3 repetitions of 1 iteration (the summary uses medians),
/// from 32K on a single iteration. A summary table is printed at the end.

#include <star/star.hpp>

#include "bench_support.hpp"

#include <benchmark/benchmark.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <time.h>
#include <unistd.h>

namespace {

using star::index;
using star_bench::CollectingReporter;
using star_bench::ForeignLoad;
using star_bench::median;
using star_bench::report_foreign_load;
using star_bench::Series;
using star_bench::wait_for_quiet;
using Clock = std::chrono::steady_clock;
using Caches = star::PerHost<star::KVCache<float>>;

// ----------------------------------------------------------------------------------------
// Settings
// ----------------------------------------------------------------------------------------

constexpr index kQHeads = 32;
constexpr index kKVHeads = 8;
constexpr index kHeadDim = 128;
constexpr int kHosts = 4;
constexpr std::array<index, 4> kContexts{8192, 16384, 32768, 65536};
constexpr index kDefaultMinContext = 8192;
constexpr index kDefaultMaxContext = 32768;

/// Below this context length: kRepetitions repetitions of one iteration; from it on, one.
constexpr index kSingleRunFrom = 32768;
constexpr int kRepetitions = 3;

/// Phase 2: a query of kQueryTokens tokens, then kDecodeSteps steps of one token.
constexpr index kQueryTokens = 64;
constexpr int kDecodeSteps = 128;

/// Untimed warm-up of the TBB workers and code paths, on a prefix of this many tokens.
constexpr index kWarmTokens = 256;

double ms_since(Clock::time_point start)
{
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

/// CPU time of the calling thread, ms. Unlike wall time it does not grow while other
/// processes hold the core, so one-thread figures stay comparable on a busy machine.
double thread_cpu_ms()
{
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return 1e3 * static_cast<double>(ts.tv_sec) + 1e-6 * static_cast<double>(ts.tv_nsec);
}

index env_tokens(const char* name, index fallback)
{
    const char* env = std::getenv(name);
    if (env == nullptr || *env == '\0')
        return fallback;
    char* end = nullptr;
    const long long value = std::strtoll(env, &end, 10);
    if (end == env || *end != '\0' || value <= 0) {
        std::fprintf(stderr, "ignoring %s=%s (not a positive integer)\n", name, env);
        return fallback;
    }
    return static_cast<index>(value);
}

index min_context() { return env_tokens("STAR_BENCH_MIN_L", kDefaultMinContext); }
index max_context() { return env_tokens("STAR_BENCH_MAX_L", kDefaultMaxContext); }

star::StarAttention<> star_for(index context)
{
    return star::StarAttention<>(star::FixedBlocks{context / kHosts});
}

// ----------------------------------------------------------------------------------------
// TimedHosts: the critical-path communicator
// ----------------------------------------------------------------------------------------

/// A `star::Communicator` that forwards every collective to a `LocalCommunicator` but runs
/// `for_each_host` sequentially, one host after the other, on the calling thread inside a
/// one-thread `tbb::task_arena` (so the hosts' own TBB parallelism runs on that thread too),
/// and records each host's time in each step, as wall time and as the thread's CPU time
/// (the same on a quiet machine; CPU time leaves out the time other processes held the
/// core). A step is one `for_each_host` call; the collectives between steps are not timed
/// (communication counts as zero).
class TimedHosts {
public:
    explicit TimedHosts(int hosts) : inner_(hosts), arena_(1) {}

    [[nodiscard]] int size() const noexcept { return inner_.size(); }

    template <class T>
    [[nodiscard]] star::PerHost<T> local() const
    {
        return inner_.local<T>();
    }

    template <class F>
    void for_each_host(F&& step)
    {
        std::vector<double> wall(static_cast<std::size_t>(size()), 0.0);
        std::vector<double> cpu(wall.size(), 0.0);
        arena_.execute([&] {
            for (int rank = 0; rank < size(); ++rank) {
                const auto start = Clock::now();
                const double cpu_start = thread_cpu_ms();
                step(rank);
                cpu[static_cast<std::size_t>(rank)] = thread_cpu_ms() - cpu_start;
                wall[static_cast<std::size_t>(rank)] = ms_since(start);
            }
        });
        wall_.push_back(std::move(wall));
        cpu_.push_back(std::move(cpu));
    }

    template <star::Message T>
    void broadcast(star::PerHost<std::vector<T>>& buffers, int root)
    {
        note_message(buffers);
        inner_.broadcast(buffers, root);
    }

    template <star::Message T>
    star::PerHost<std::vector<std::vector<T>>> gather(const star::PerHost<std::vector<T>>& buffers,
                                                      int root)
    {
        note_message(buffers);
        return inner_.gather(buffers, root);
    }

    template <star::Message T>
    star::PerHost<std::vector<std::vector<T>>> all_gather(const star::PerHost<std::vector<T>>& buffers)
    {
        note_message(buffers);
        return inner_.all_gather(buffers);
    }

    template <star::Message T>
    star::PerHost<std::vector<T>> exchange(const star::PerHost<std::vector<T>>& buffers,
                                           const star::PerHost<star::Route>& routes)
    {
        note_message(buffers);
        return inner_.exchange(buffers, routes);
    }

    void barrier() { inner_.barrier(); }

    // ---- what was recorded since the last reset()

    /// Sum over steps of the slowest host's time, ms (wall time, or thread CPU time).
    [[nodiscard]] double critical_path(bool cpu = false) const
    {
        double total = 0.0;
        for (const auto& step : cpu ? cpu_ : wall_)
            total += *std::max_element(step.begin(), step.end());
        return total;
    }
    /// Sum of every host's time over every step (the work of all hosts on one thread), ms.
    [[nodiscard]] double work(bool cpu = false) const
    {
        double total = 0.0;
        for (const auto& step : cpu ? cpu_ : wall_)
            for (const double t : step)
                total += t;
        return total;
    }
    /// Largest message any one host sent in one collective, bytes.
    [[nodiscard]] std::size_t max_message_bytes() const noexcept { return max_message_bytes_; }

    void reset()
    {
        wall_.clear();
        cpu_.clear();
        max_message_bytes_ = 0;
    }

private:
    template <class T>
    void note_message(const star::PerHost<std::vector<T>>& buffers)
    {
        for (int r = buffers.first_rank(); r < buffers.end_rank(); ++r)
            max_message_bytes_ = std::max(max_message_bytes_, buffers[r].size() * sizeof(T));
    }

    star::LocalCommunicator inner_;
    tbb::task_arena arena_;
    std::vector<std::vector<double>> wall_; // [step][host], ms
    std::vector<std::vector<double>> cpu_;  // [step][host], ms
    std::size_t max_message_bytes_ = 0;
};

static_assert(star::Communicator<TimedHosts>);

// ----------------------------------------------------------------------------------------
// Inputs of one context length (one slot: benchmarks are registered grouped by L)
// ----------------------------------------------------------------------------------------

void fill_normal(star::Tensor3<float>& t, std::mt19937& rng)
{
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (index i = 0; i < t.size(); ++i)
        t.data()[i] = dist(rng);
}

struct Inputs {
    index tokens = 0;
    star::Tensor3<float> q, k, v;      // the context: [L, Hq, d], [L, Hkv, d]
    star::Tensor3<float> q2, k2, v2;   // phase-2 tokens: the query, then one per decode step
    std::optional<Caches> star_caches; // every host's cache after phase 1
    std::optional<star::KVCache<float>> exact_cache; // the whole context's K/V
};

Inputs& inputs(index tokens)
{
    static std::unique_ptr<Inputs> slot;
    if (!slot || slot->tokens != tokens) {
        slot.reset(); // free the previous set first
        auto in = std::make_unique<Inputs>();
        in->tokens = tokens;
        std::mt19937 rng(static_cast<std::uint32_t>(tokens));
        in->q = star::Tensor3<float>(tokens, kQHeads, kHeadDim);
        in->k = star::Tensor3<float>(tokens, kKVHeads, kHeadDim);
        in->v = star::Tensor3<float>(tokens, kKVHeads, kHeadDim);
        const index extra = kQueryTokens + kDecodeSteps;
        in->q2 = star::Tensor3<float>(extra, kQHeads, kHeadDim);
        in->k2 = star::Tensor3<float>(extra, kKVHeads, kHeadDim);
        in->v2 = star::Tensor3<float>(extra, kKVHeads, kHeadDim);
        for (star::Tensor3<float>* t : {&in->q, &in->k, &in->v, &in->q2, &in->k2, &in->v2})
            fill_normal(*t, rng);
        slot = std::move(in);
    }
    return *slot;
}

/// Every host's cache after Star phase 1 (computed once per L, or kept from `star_p1`).
const Caches& star_caches(Inputs& in)
{
    if (!in.star_caches) {
        star::LocalCommunicator comm(kHosts);
        const auto s = star_for(in.tokens);
        const star::StarPlan plan = s.plan(in.tokens, kHosts);
        Caches caches = comm.local<star::KVCache<float>>();
        s.encode_context(comm, plan, caches, star::view(in.q), star::view(in.k), star::view(in.v));
        in.star_caches = std::move(caches);
    }
    return *in.star_caches;
}

/// One cache holding the whole context's K/V, for exact decoding.
const star::KVCache<float>& exact_cache(Inputs& in)
{
    if (!in.exact_cache) {
        star::KVCache<float> cache;
        cache.append(star::view(in.k), star::view(in.v));
        in.exact_cache = std::move(cache);
    }
    return *in.exact_cache;
}

/// Q/K/V of phase-2 step `step`: step 0 is the query, steps 1..kDecodeSteps one token each.
struct StepTokens {
    star::ConstView3<float> q, k, v;
};
StepTokens step_tokens(const Inputs& in, int step)
{
    const index first = step == 0 ? 0 : kQueryTokens + step - 1;
    const index count = step == 0 ? kQueryTokens : 1;
    return {star::token_slice(star::view(in.q2), first, count),
            star::token_slice(star::view(in.k2), first, count),
            star::token_slice(star::view(in.v2), first, count)};
}

/// A prefix of the context, for warm-ups.
StepTokens prefix(const Inputs& in, index tokens)
{
    return {star::token_slice(star::view(in.q), 0, tokens),
            star::token_slice(star::view(in.k), 0, tokens),
            star::token_slice(star::view(in.v), 0, tokens)};
}

void warm_up(const Inputs& in)
{
    const StepTokens p = prefix(in, std::min(in.tokens, kWarmTokens));
    star::AttentionState out = star::global_attention(p.q, p.k, p.v);
    benchmark::DoNotOptimize(out.output.data());
}

// ----------------------------------------------------------------------------------------
// Facts that are not timings (per-host K/V bytes), per L
// ----------------------------------------------------------------------------------------

struct Facts {
    double star_p1_bytes = -1.0;      // max over hosts of caches[r].bytes() after phase 1
    double star_decode_bytes = -1.0;  // ... after the query and all decode steps
    double ring_message_bytes = -1.0; // largest K (or V) shard a host sent in the ring
};
std::map<index, Facts> g_facts;

double max_cache_bytes(const Caches& caches)
{
    std::size_t most = 0;
    for (int r = caches.first_rank(); r < caches.end_rank(); ++r)
        most = std::max(most, caches[r].bytes());
    return static_cast<double>(most);
}

// ----------------------------------------------------------------------------------------
// Phase-2 runs, shared by the wall and critical-path benchmarks
// ----------------------------------------------------------------------------------------

/// The query and the decode steps through Star; `on_step(step, ms)` after each.
template <class C, class OnStep>
void star_phase2(C& comm, const star::StarAttention<>& s, const star::StarPlan& plan,
                 Caches& caches, const Inputs& in, OnStep&& on_step)
{
    for (int step = 0; step <= kDecodeSteps; ++step) {
        const StepTokens t = step_tokens(in, step);
        const auto start = Clock::now();
        const auto merged = s.attend_query(comm, plan, caches, t.q, t.k, t.v);
        benchmark::DoNotOptimize(merged[plan.query_host()]->output.data());
        on_step(step, ms_since(start));
    }
}

/// The same steps with exact attention over one growing cache; wall and calling-thread CPU
/// time per step (the CPU time is the whole cost only when run on one thread).
void exact_phase2(star::KVCache<float>& cache, const Inputs& in, std::vector<double>& step_ms,
                  std::vector<double>& step_cpu_ms)
{
    for (int step = 0; step <= kDecodeSteps; ++step) {
        const StepTokens t = step_tokens(in, step);
        const auto start = Clock::now();
        const double cpu_start = thread_cpu_ms();
        const index cached = cache.tokens();
        cache.append(t.k, t.v);
        // The cache checked each token's K/V once, as they were appended; checking the whole
        // cache again at every step would add a pass over it that Star's phase 2 does not make.
        const star::AttentionState out =
            star::attention(t.q, cache.keys(), cache.values(), star::CausalMask{cached, 0},
                            star::AttentionOptions{.check_finite = false});
        benchmark::DoNotOptimize(out.output.data());
        step_cpu_ms[static_cast<std::size_t>(step)] = thread_cpu_ms() - cpu_start;
        step_ms[static_cast<std::size_t>(step)] = ms_since(start);
    }
}

/// Median of the decode steps (1..kDecodeSteps) of `step_ms`.
double decode_median(const std::vector<double>& step_ms)
{
    return median(std::vector<double>(step_ms.begin() + 1, step_ms.end()));
}

star::RingAttention ring_for(star::RingLayout layout)
{
    return star::RingAttention({.layout = layout});
}

benchmark::Counter per_iteration(double value)
{
    return benchmark::Counter(value, benchmark::Counter::kAvgIterations);
}

// ----------------------------------------------------------------------------------------
// Wall-time benchmarks (2 cores)
// ----------------------------------------------------------------------------------------

void BM_Global(benchmark::State& state, int threads)
{
    const index tokens = state.range(0);
    const Inputs& in = inputs(tokens);
    tbb::task_arena arena(threads == 0 ? tbb::task_arena::automatic : threads);
    arena.execute([&] { warm_up(in); });

    star::AttentionState out;
    double cpu_sum = 0.0;
    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state) {
        const double cpu_start = thread_cpu_ms();
        arena.execute([&] {
            out = star::global_attention(star::view(in.q), star::view(in.k), star::view(in.v));
        });
        cpu_sum += thread_cpu_ms() - cpu_start;
        benchmark::DoNotOptimize(out.output.data());
        benchmark::ClobberMemory();
        state.PauseTiming();
        out = star::AttentionState{}; // free outside the timed region
        state.ResumeTiming();
    }
    report_foreign_load(state, load);
    if (threads == 1) // all the work ran on this thread
        state.counters["cpu_ms"] = per_iteration(cpu_sum);
}

void BM_RingWall(benchmark::State& state, star::RingLayout layout)
{
    const index tokens = state.range(0);
    const Inputs& in = inputs(tokens);
    star::LocalCommunicator comm(kHosts);
    const star::RingAttention ring = ring_for(layout);
    warm_up(in);

    star::PerHost<std::vector<star::RangeOutput>> out;
    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state) {
        out = ring.run(comm, star::view(in.q), star::view(in.k), star::view(in.v));
        benchmark::DoNotOptimize(out[0].data());
        benchmark::ClobberMemory();
        state.PauseTiming();
        out = {};
        state.ResumeTiming();
    }
    report_foreign_load(state, load);
}

void BM_StarPhase1Wall(benchmark::State& state)
{
    const index tokens = state.range(0);
    Inputs& in = inputs(tokens);
    star::LocalCommunicator comm(kHosts);
    const auto s = star_for(tokens);
    const star::StarPlan plan = s.plan(tokens, kHosts);
    warm_up(in);

    Caches caches;
    star::PerHost<std::vector<star::RangeOutput>> out;
    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state) {
        // Fresh, empty caches made (and the previous ones freed) outside the timed region;
        // filling them (allocation + copy of each block's K/V) is part of phase 1.
        state.PauseTiming();
        out = {};
        caches = comm.local<star::KVCache<float>>();
        state.ResumeTiming();
        out = s.encode_context(comm, plan, caches, star::view(in.q), star::view(in.k),
                               star::view(in.v));
        benchmark::DoNotOptimize(out[0].data());
        benchmark::ClobberMemory();
    }
    report_foreign_load(state, load);
    g_facts[tokens].star_p1_bytes = max_cache_bytes(caches);
    if (!in.star_caches)
        in.star_caches = std::move(caches); // phase 2 starts from these
}

void BM_StarPhase2Wall(benchmark::State& state)
{
    const index tokens = state.range(0);
    Inputs& in = inputs(tokens);
    star::LocalCommunicator comm(kHosts);
    const auto s = star_for(tokens);
    const star::StarPlan plan = s.plan(tokens, kHosts);
    const Caches& after_phase1 = star_caches(in);

    Caches caches;
    std::vector<double> step_ms(kDecodeSteps + 1);
    double query_sum = 0.0, step_sum = 0.0;
    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state) {
        state.PauseTiming();
        caches = after_phase1; // the state right after phase 1
        state.ResumeTiming();
        star_phase2(comm, s, plan, caches, in,
                    [&](int step, double ms) { step_ms[static_cast<std::size_t>(step)] = ms; });
        query_sum += step_ms[0];
        step_sum += decode_median(step_ms);
    }
    report_foreign_load(state, load);
    state.counters["query_ms"] = per_iteration(query_sum);
    state.counters["step_ms"] = per_iteration(step_sum);
    g_facts[tokens].star_decode_bytes = max_cache_bytes(caches);
}

void BM_ExactPhase2(benchmark::State& state, int threads)
{
    const index tokens = state.range(0);
    Inputs& in = inputs(tokens);
    const star::KVCache<float>& context = exact_cache(in);
    tbb::task_arena arena(threads == 0 ? tbb::task_arena::automatic : threads);
    arena.execute([&] { warm_up(in); });

    star::KVCache<float> cache;
    std::vector<double> step_ms(kDecodeSteps + 1), step_cpu(kDecodeSteps + 1);
    double query_sum = 0.0, step_sum = 0.0, cpu_sum = 0.0, query_cpu_sum = 0.0, step_cpu_sum = 0.0;
    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state) {
        state.PauseTiming();
        cache = context;
        state.ResumeTiming();
        arena.execute([&] { exact_phase2(cache, in, step_ms, step_cpu); });
        query_sum += step_ms[0];
        step_sum += decode_median(step_ms);
        for (const double ms : step_cpu)
            cpu_sum += ms;
        query_cpu_sum += step_cpu[0];
        step_cpu_sum += decode_median(step_cpu);
    }
    report_foreign_load(state, load);
    state.counters["query_ms"] = per_iteration(query_sum);
    state.counters["step_ms"] = per_iteration(step_sum);
    if (threads == 1) { // all the work ran on this thread
        state.counters["cpu_ms"] = per_iteration(cpu_sum);
        state.counters["query_cpu_ms"] = per_iteration(query_cpu_sum);
        state.counters["step_cpu_ms"] = per_iteration(step_cpu_sum);
    }
}

// ----------------------------------------------------------------------------------------
// Critical-path benchmarks (TimedHosts, one thread)
// ----------------------------------------------------------------------------------------

/// Accumulates TimedHosts' figures over iterations and reports them as counters (ms):
/// crit_ms (critical path, wall), crit_cpu_ms (critical path, thread CPU time), work_ms and
/// work_cpu_ms (all hosts' time), glue_ms (wall time outside host steps: collectives and
/// the calling thread's work, counted as zero in the critical path).
struct CritTotals {
    double crit = 0.0, crit_cpu = 0.0, work = 0.0, work_cpu = 0.0, glue = 0.0;

    void add(const TimedHosts& comm, double elapsed_ms)
    {
        crit += comm.critical_path();
        crit_cpu += comm.critical_path(true);
        work += comm.work();
        work_cpu += comm.work(true);
        glue += elapsed_ms - comm.work();
    }
    void report(benchmark::State& state) const
    {
        state.counters["crit_ms"] = per_iteration(crit);
        state.counters["crit_cpu_ms"] = per_iteration(crit_cpu);
        state.counters["work_ms"] = per_iteration(work);
        state.counters["work_cpu_ms"] = per_iteration(work_cpu);
        state.counters["glue_ms"] = per_iteration(glue);
    }
};

void BM_RingCrit(benchmark::State& state, star::RingLayout layout)
{
    const index tokens = state.range(0);
    const Inputs& in = inputs(tokens);
    TimedHosts comm(kHosts);
    const star::RingAttention ring = ring_for(layout);

    star::PerHost<std::vector<star::RangeOutput>> out;
    CritTotals totals;
    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state) {
        comm.reset();
        const auto start = Clock::now();
        out = ring.run(comm, star::view(in.q), star::view(in.k), star::view(in.v));
        totals.add(comm, ms_since(start));
        benchmark::DoNotOptimize(out[0].data());
        state.PauseTiming();
        out = {};
        state.ResumeTiming();
    }
    report_foreign_load(state, load);
    totals.report(state);
    g_facts[tokens].ring_message_bytes = static_cast<double>(comm.max_message_bytes());
}

void BM_StarPhase1Crit(benchmark::State& state)
{
    const index tokens = state.range(0);
    const Inputs& in = inputs(tokens);
    TimedHosts comm(kHosts);
    const auto s = star_for(tokens);
    const star::StarPlan plan = s.plan(tokens, kHosts);

    Caches caches;
    star::PerHost<std::vector<star::RangeOutput>> out;
    CritTotals totals;
    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state) {
        state.PauseTiming();
        out = {};
        caches = comm.local<star::KVCache<float>>();
        state.ResumeTiming();
        comm.reset();
        const auto start = Clock::now();
        out = s.encode_context(comm, plan, caches, star::view(in.q), star::view(in.k),
                               star::view(in.v));
        totals.add(comm, ms_since(start));
        benchmark::DoNotOptimize(out[0].data());
    }
    report_foreign_load(state, load);
    totals.report(state);
}

void BM_StarPhase2Crit(benchmark::State& state)
{
    const index tokens = state.range(0);
    Inputs& in = inputs(tokens);
    TimedHosts comm(kHosts);
    const auto s = star_for(tokens);
    const star::StarPlan plan = s.plan(tokens, kHosts);
    const Caches& after_phase1 = star_caches(in);

    Caches caches;
    CritTotals totals;
    std::vector<double> step_crit(kDecodeSteps + 1), step_crit_cpu(kDecodeSteps + 1);
    double query_sum = 0.0, step_sum = 0.0, query_cpu_sum = 0.0, step_cpu_sum = 0.0;
    wait_for_quiet(state);
    const ForeignLoad load;
    for (auto _ : state) {
        state.PauseTiming();
        caches = after_phase1;
        state.ResumeTiming();
        comm.reset();
        const auto start = Clock::now();
        double crit_before = 0.0, crit_cpu_before = 0.0;
        star_phase2(comm, s, plan, caches, in, [&](int step, double) {
            const double crit = comm.critical_path(), crit_cpu = comm.critical_path(true);
            step_crit[static_cast<std::size_t>(step)] = crit - crit_before;
            step_crit_cpu[static_cast<std::size_t>(step)] = crit_cpu - crit_cpu_before;
            crit_before = crit;
            crit_cpu_before = crit_cpu;
        });
        totals.add(comm, ms_since(start));
        query_sum += step_crit[0];
        step_sum += decode_median(step_crit);
        query_cpu_sum += step_crit_cpu[0];
        step_cpu_sum += decode_median(step_crit_cpu);
    }
    report_foreign_load(state, load);
    totals.report(state);
    state.counters["query_ms"] = per_iteration(query_sum);
    state.counters["step_ms"] = per_iteration(step_sum);
    state.counters["query_cpu_ms"] = per_iteration(query_cpu_sum);
    state.counters["step_cpu_ms"] = per_iteration(step_cpu_sum);
}

// ----------------------------------------------------------------------------------------
// Correctness cross-check (untimed): the benchmarked calls compute what they should.
// ----------------------------------------------------------------------------------------

float max_abs_diff(const star::Tensor3<float>& a, const star::Tensor3<float>& b)
{
    float most = 0.0f;
    for (index i = 0; i < a.size(); ++i)
        most = std::max(most, std::abs(a.data()[i] - b.data()[i]));
    return most;
}

bool cross_check()
{
    constexpr index tokens = 2048;
    const Inputs& in = inputs(tokens);
    const star::Shape shape{tokens, kQHeads, kHeadDim};
    bool ok = true;
    const auto line = [&](const char* what, float diff, float tolerance) {
        const bool pass = diff <= tolerance;
        ok = ok && pass;
        std::printf("  %-52s max|d| = %.3g  %s\n", what, static_cast<double>(diff),
                    pass ? "ok" : "MISMATCH");
    };
    std::printf("Cross-check at L = %ld (Hq = %ld, Hkv = %ld, d = %ld, %d hosts, b = L/%d):\n",
                static_cast<long>(tokens), static_cast<long>(kQHeads), static_cast<long>(kKVHeads),
                static_cast<long>(kHeadDim), kHosts, kHosts);

    const star::AttentionState exact =
        star::global_attention(star::view(in.q), star::view(in.k), star::view(in.v));
    star::LocalCommunicator local(kHosts);
    TimedHosts timed(kHosts);
    for (const auto layout : {star::RingLayout::plain, star::RingLayout::zigzag}) {
        const auto ring = ring_for(layout);
        const auto a = star::assemble(
            ring.run(local, star::view(in.q), star::view(in.k), star::view(in.v)), shape);
        const auto b = star::assemble(
            ring.run(timed, star::view(in.q), star::view(in.k), star::view(in.v)), shape);
        const bool plain = layout == star::RingLayout::plain;
        line(plain ? "ring plain (Local) vs global" : "ring zigzag (Local) vs global",
             max_abs_diff(a.output, exact.output), 1e-4f);
        line(plain ? "ring plain (TimedHosts) vs (Local)" : "ring zigzag (TimedHosts) vs (Local)",
             max_abs_diff(b.output, a.output), 1e-5f);
    }

    const auto s = star_for(tokens);
    const star::StarPlan plan = s.plan(tokens, kHosts);
    Caches local_caches = local.local<star::KVCache<float>>();
    Caches timed_caches = timed.local<star::KVCache<float>>();
    const auto a = star::assemble(s.encode_context(local, plan, local_caches, star::view(in.q),
                                                   star::view(in.k), star::view(in.v)),
                                  shape);
    const auto b = star::assemble(s.encode_context(timed, plan, timed_caches, star::view(in.q),
                                                   star::view(in.k), star::view(in.v)),
                                  shape);
    line("star phase 1 (TimedHosts) vs (Local)", max_abs_diff(b.output, a.output), 1e-5f);
    std::printf("  %-52s max|d| = %.3g  (the approximation, not checked)\n",
                "star phase 1 vs global", static_cast<double>(max_abs_diff(a.output, exact.output)));

    // Phase 2: Star through both communicators vs exact decoding, step by step.
    star::KVCache<float> cache;
    cache.append(star::view(in.k), star::view(in.v));
    float worst_local = 0.0f, worst_timed = 0.0f;
    for (int step = 0; step <= kDecodeSteps; ++step) {
        const StepTokens t = step_tokens(in, step);
        const auto ml = s.attend_query(local, plan, local_caches, t.q, t.k, t.v);
        const auto mt = s.attend_query(timed, plan, timed_caches, t.q, t.k, t.v);
        const index cached = cache.tokens();
        cache.append(t.k, t.v);
        const star::AttentionState ref =
            star::attention(t.q, cache.keys(), cache.values(), star::CausalMask{cached, 0});
        worst_local = std::max(worst_local, max_abs_diff(ml[plan.query_host()]->output, ref.output));
        worst_timed = std::max(worst_timed, max_abs_diff(mt[plan.query_host()]->output, ref.output));
    }
    line("star phase 2, 64 + 128 steps (Local) vs exact", worst_local, 1e-4f);
    line("star phase 2, 64 + 128 steps (TimedHosts) vs exact", worst_timed, 1e-4f);
    std::printf("\n");
    std::fflush(stdout);
    return ok;
}

// ----------------------------------------------------------------------------------------
// Summary
// ----------------------------------------------------------------------------------------

struct Stat {
    bool found = false;
    double value = 0.0; // median of the real time (ms) or of the counter
    double other = 0.0; // median other_cores
};

/// Median real time (ms), or median of `counter` when given, of benchmark `name` at `tokens`.
Stat find_stat(const std::map<std::string, Series>& all, const std::string& name, index tokens,
               const std::string& counter = "")
{
    for (const auto& [key, s] : all) {
        if (s.function_name != name || s.args != std::vector<long>{static_cast<long>(tokens)})
            continue;
        const double v = counter.empty() ? median(s.real_time) : median(s.counter(counter));
        return {!std::isnan(v), v, median(s.counter("other_cores"))};
    }
    return {};
}

void cell(double value, bool found, int width, int precision)
{
    if (found && std::isfinite(value))
        std::printf(" %*.*f", width, precision, value);
    else
        std::printf(" %*s", width, "n/a");
}

void ratio_cell(const Stat& a, const Stat& b, int width)
{
    cell(a.value / b.value, a.found && b.found && b.value > 0.0, width, 3);
}

/// Largest median other_cores among the found stats.
double worst_other(std::initializer_list<Stat> stats)
{
    double most = 0.0;
    for (const Stat& s : stats)
        if (s.found && std::isfinite(s.other))
            most = std::max(most, s.other);
    return most;
}

void print_rule(int width)
{
    std::printf("%s\n", std::string(static_cast<std::size_t>(width), '-').c_str());
}

void print_summary(const std::map<std::string, Series>& all, const std::vector<index>& sizes)
{
    std::printf(
        "\n=============================== Summary (medians; Hq = %ld, Hkv = %ld, d = %ld, H = %d, "
        "b = a = L/%d) ===============================\n",
        static_cast<long>(kQHeads), static_cast<long>(kKVHeads), static_cast<long>(kHeadDim),
        kHosts, kHosts);

    // 1. Wall time.
    std::printf("\n1. Wall time on this machine (2 cores; the 4 in-process hosts share them), ms:\n");
    std::printf("%6s | %10s %10s %10s %10s | %9s %9s %9s | %6s\n", "L", "global", "ring-plain",
                "ring-zz", "star-p1", "star/glob", "star/r-pl", "star/r-zz", "other");
    print_rule(99);
    for (const index L : sizes) {
        const Stat g = find_stat(all, "global", L), rp = find_stat(all, "ring_plain", L),
                   rz = find_stat(all, "ring_zigzag", L), sp = find_stat(all, "star_p1", L);
        std::printf("%6ld |", static_cast<long>(L));
        for (const Stat& s : {g, rp, rz, sp})
            cell(s.value, s.found, 10, 1);
        std::printf(" |");
        ratio_cell(sp, g, 9);
        ratio_cell(sp, rp, 9);
        ratio_cell(sp, rz, 9);
        std::printf(" | %6.2f\n", worst_other({g, rp, rz, sp}));
    }

    // 2. Critical path, in wall time and in thread CPU time.
    const auto crit_table = [&](bool cpu) {
        const std::string crit = cpu ? "crit_cpu_ms" : "crit_ms";
        std::printf("%6s | %10s %10s %10s %10s | %9s %9s %9s | %9s %9s | %6s\n", "L", "global-1t",
                    "ring-plain", "ring-zz", "star-p1", "star/r-pl", "star/r-zz", "star/g1t",
                    "glob/star", "zz/star", "other");
        print_rule(111);
        for (const index L : sizes) {
            const Stat g =
                cpu ? find_stat(all, "global_1t", L, "cpu_ms") : find_stat(all, "global_1t", L);
            const Stat rp = find_stat(all, "ring_plain_crit", L, crit),
                       rz = find_stat(all, "ring_zigzag_crit", L, crit),
                       sp = find_stat(all, "star_p1_crit", L, crit);
            std::printf("%6ld |", static_cast<long>(L));
            for (const Stat& s : {g, rp, rz, sp})
                cell(s.value, s.found, 10, 1);
            std::printf(" |");
            ratio_cell(sp, rp, 9);
            ratio_cell(sp, rz, 9);
            ratio_cell(sp, g, 9);
            std::printf(" |");
            ratio_cell(g, sp, 9);
            ratio_cell(rz, sp, 9);
            std::printf(" | %6.2f\n", worst_other({g, rp, rz, sp}));
        }
    };
    std::printf(
        "\n2. Critical path on 4 single-core hosts, ms: TimedHosts runs the hosts one after the other on one "
        "thread;\n   critical path = sum over steps of the slowest host, communication counted as zero. "
        "global-1t = exact global\n   attention on 1 thread, the single-machine baseline (on 4 machines, "
        "exact attention is ring attention).\n");
    std::printf("2a. wall clock:\n");
    crit_table(false);
    std::printf(
        "2b. thread CPU time (leaves out the time other processes held the core; trust this one when "
        "'other' is high):\n");
    crit_table(true);
    // FLOP model (b = a = L/H): star's slowest host does a*b + b^2/2 = 1.5 b^2; ring plain's
    // slowest step sequence b^2/2 + (H-1) b^2; zigzag H * b^2/2; global (H b)^2 / 2.
    const double h = kHosts;
    const double star_model = 1.5, plain_model = 0.5 + (h - 1.0), zz_model = h / 2.0,
                 global_model = h * h / 2.0;
    std::printf(
        "   FLOP model (units of b^2, b = a = L/H): star %.1f, ring plain %.1f, ring zigzag %.1f, global "
        "%.1f -> star/r-pl %.3f, star/r-zz %.3f, star/g1t %.3f\n",
        star_model, plain_model, zz_model, global_model, star_model / plain_model,
        star_model / zz_model, star_model / global_model);
    std::printf(
        "   Work of all hosts on one thread (work, CPU ms; star's FLOP model: 5 b^2 = 0.625 x global) and "
        "wall time outside host steps\n   (glue, ms: collectives and calling-thread work, not in the "
        "critical path):\n");
    for (const index L : sizes) {
        const Stat g = find_stat(all, "global_1t", L, "cpu_ms");
        std::printf("   L=%-6ld", static_cast<long>(L));
        for (const char* name : {"ring_plain_crit", "ring_zigzag_crit", "star_p1_crit"}) {
            const Stat w = find_stat(all, name, L, "work_cpu_ms"),
                       gl = find_stat(all, name, L, "glue_ms");
            std::printf("  %s work", name);
            cell(w.value, w.found, 9, 1);
            std::printf(" glue");
            cell(gl.value, gl.found, 6, 1);
        }
        std::printf("  | star work/global-1t");
        ratio_cell(find_stat(all, "star_p1_crit", L, "work_cpu_ms"), g, 6);
        std::printf("\n");
    }

    // 3. Phase 2.
    std::printf(
        "\n3. Phase 2: one %ld-token query + %d decode steps of 1 token, timed as one unit, ms; "
        "query = the %ld-token step,\n   step = median decode step. The first append to a cache "
        "reallocates it (a one-off copy, in the query step).\n",
        static_cast<long>(kQueryTokens), kDecodeSteps, static_cast<long>(kQueryTokens));
    std::printf(
        "3a. wall time on 2 cores: star over 4 in-process hosts; exact = one KVCache and star::attention "
        "with CausalMask{cached, 0}:\n");
    std::printf("%6s | %9s %9s %8s | %8s %8s %8s %8s %8s | %6s\n", "L", "star", "exact", "st/ex",
                "st-query", "ex-query", "st-step", "ex-step", "st/ex", "other");
    print_rule(101);
    for (const index L : sizes) {
        const Stat s = find_stat(all, "star_p2", L), e = find_stat(all, "exact_p2", L);
        const Stat sq = find_stat(all, "star_p2", L, "query_ms"),
                   eq = find_stat(all, "exact_p2", L, "query_ms");
        const Stat ss = find_stat(all, "star_p2", L, "step_ms"),
                   es = find_stat(all, "exact_p2", L, "step_ms");
        std::printf("%6ld |", static_cast<long>(L));
        cell(s.value, s.found, 9, 1);
        cell(e.value, e.found, 9, 1);
        ratio_cell(s, e, 8);
        std::printf(" |");
        cell(sq.value, sq.found, 8, 2);
        cell(eq.value, eq.found, 8, 2);
        cell(ss.value, ss.found, 8, 3);
        cell(es.value, es.found, 8, 3);
        ratio_cell(ss, es, 8);
        std::printf(" | %6.2f\n", worst_other({s, e}));
    }
    std::printf(
        "3b. critical path of star on TimedHosts vs exact on 1 thread (wall, then thread CPU time; "
        "query/step columns in CPU time):\n");
    std::printf("%6s | %9s %9s %7s | %9s %9s %7s | %8s %8s %8s %8s %7s | %6s\n", "L", "star-crit",
                "exact-1t", "ratio", "star-cpu", "exact-cpu", "ratio", "st-query", "ex-query",
                "st-step", "ex-step", "ratio", "other");
    print_rule(123);
    for (const index L : sizes) {
        const Stat sc = find_stat(all, "star_p2_crit", L, "crit_ms"),
                   e1 = find_stat(all, "exact_p2_1t", L);
        const Stat scc = find_stat(all, "star_p2_crit", L, "crit_cpu_ms"),
                   e1c = find_stat(all, "exact_p2_1t", L, "cpu_ms");
        const Stat sq = find_stat(all, "star_p2_crit", L, "query_cpu_ms"),
                   eq = find_stat(all, "exact_p2_1t", L, "query_cpu_ms");
        const Stat ss = find_stat(all, "star_p2_crit", L, "step_cpu_ms"),
                   es = find_stat(all, "exact_p2_1t", L, "step_cpu_ms");
        std::printf("%6ld |", static_cast<long>(L));
        cell(sc.value, sc.found, 9, 1);
        cell(e1.value, e1.found, 9, 1);
        ratio_cell(sc, e1, 7);
        std::printf(" |");
        cell(scc.value, scc.found, 9, 1);
        cell(e1c.value, e1c.found, 9, 1);
        ratio_cell(scc, e1c, 7);
        std::printf(" |");
        cell(sq.value, sq.found, 8, 2);
        cell(eq.value, eq.found, 8, 2);
        cell(ss.value, ss.found, 8, 3);
        cell(es.value, es.found, 8, 3);
        ratio_cell(ss, es, 7);
        std::printf(" | %6.2f\n", worst_other({sc, e1}));
    }

    // 4. K/V bytes per host.
    std::printf(
        "\n4. Peak K/V bytes per host, MiB (2^20 bytes): global = the whole K/V, 2*L*Hkv*d*4;\n"
        "   ring = own shard + one in flight, 2*2*(L/H)*Hkv*d*4 (measured: 4 x the largest K or V message);\n"
        "   star = max over hosts of caches[r].bytes() after phase 1 and after the query + decode steps:\n");
    std::printf("%6s | %9s %9s %9s | %9s %9s | %9s %9s\n", "L", "global", "ring", "ring-meas",
                "star-p1", "star-dec", "star/glob", "star/ring");
    print_rule(86);
    constexpr double mib = 1024.0 * 1024.0;
    for (const index L : sizes) {
        const double kv_row = static_cast<double>(kKVHeads * kHeadDim) * sizeof(float);
        const double global = 2.0 * static_cast<double>(L) * kv_row;
        const double ring = 2.0 * 2.0 * static_cast<double>(L / kHosts) * kv_row;
        const auto it = g_facts.find(L);
        const Facts f = it == g_facts.end() ? Facts{} : it->second;
        std::printf("%6ld |", static_cast<long>(L));
        cell(global / mib, true, 9, 1);
        cell(ring / mib, true, 9, 1);
        cell(4.0 * f.ring_message_bytes / mib, f.ring_message_bytes >= 0.0, 9, 1);
        std::printf(" |");
        cell(f.star_p1_bytes / mib, f.star_p1_bytes >= 0.0, 9, 1);
        cell(f.star_decode_bytes / mib, f.star_decode_bytes >= 0.0, 9, 1);
        std::printf(" |");
        const double star_peak = std::max(f.star_p1_bytes, f.star_decode_bytes);
        cell(star_peak / global, star_peak >= 0.0, 9, 3);
        cell(star_peak / ring, star_peak >= 0.0, 9, 3);
        std::printf("\n");
    }
    std::printf(
        "\nother = largest median number of cores other processes/steal took during the row's "
        "benchmarks (clean: ~0; ~1 means one of the 2 cores was taken).\n");
    star_bench::print_quiet_gate_summary();
}

// ----------------------------------------------------------------------------------------
// Registration
// ----------------------------------------------------------------------------------------

template <class F>
void add(const std::string& name, index tokens, F&& fn)
{
    benchmark::RegisterBenchmark(name.c_str(), std::forward<F>(fn))
        ->Arg(tokens)
        ->ArgName("L")
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->Iterations(1)
        ->Repetitions(tokens >= kSingleRunFrom ? 1 : kRepetitions);
}

std::vector<index> register_all()
{
    std::vector<index> sizes;
    for (const index L : kContexts) {
        if (L < min_context() || L > max_context())
            continue;
        sizes.push_back(L);
        // Grouped by L, so the inputs (and the phase-1 caches) are built once per L.
        add("global", L, [](benchmark::State& s) { BM_Global(s, 0); });
        add("global_1t", L, [](benchmark::State& s) { BM_Global(s, 1); });
        add("ring_plain", L, [](benchmark::State& s) { BM_RingWall(s, star::RingLayout::plain); });
        add("ring_zigzag", L, [](benchmark::State& s) { BM_RingWall(s, star::RingLayout::zigzag); });
        add("star_p1", L, BM_StarPhase1Wall);
        add("ring_plain_crit", L,
            [](benchmark::State& s) { BM_RingCrit(s, star::RingLayout::plain); });
        add("ring_zigzag_crit", L,
            [](benchmark::State& s) { BM_RingCrit(s, star::RingLayout::zigzag); });
        add("star_p1_crit", L, BM_StarPhase1Crit);
        add("star_p2", L, BM_StarPhase2Wall);
        add("exact_p2", L, [](benchmark::State& s) { BM_ExactPhase2(s, 0); });
        add("star_p2_crit", L, BM_StarPhase2Crit);
        add("exact_p2_1t", L, [](benchmark::State& s) { BM_ExactPhase2(s, 1); });
    }
    return sizes;
}

} // namespace

int main(int argc, char** argv)
{
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv))
        return 1;
    const auto start = Clock::now();

    std::printf(
        "Star algorithm benchmark: one layer, Hq = %ld, Hkv = %ld, d = %ld, float K/V, N(0,1) inputs; "
        "H = %d in-process hosts, b = a = L/%d;\nL from STAR_BENCH_MIN_L = %ld to STAR_BENCH_MAX_L = %ld "
        "(of 8K, 16K, 32K, 64K); phase 2 = %ld-token query + %d decode steps.\n\n",
        static_cast<long>(kQHeads), static_cast<long>(kKVHeads), static_cast<long>(kHeadDim),
        kHosts, kHosts, static_cast<long>(min_context()), static_cast<long>(max_context()),
        static_cast<long>(kQueryTokens), kDecodeSteps);
    const bool ok = cross_check();

    const std::vector<star::index> sizes = register_all();
    const auto options = isatty(STDOUT_FILENO) != 0 ? benchmark::ConsoleReporter::OO_ColorTabular
                                                    : benchmark::ConsoleReporter::OO_Tabular;
    CollectingReporter reporter(options);
    benchmark::RunSpecifiedBenchmarks(&reporter);
    print_summary(reporter.series(), sizes);
    std::printf("Total run time: %.1f s\n", ms_since(start) / 1000.0);
    benchmark::Shutdown();
    return ok ? 0 : 2;
}
