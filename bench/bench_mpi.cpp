// Star vs Ring over MPI, one host per rank: time per phase, and the bytes each rank sends
// per phase, against the formula of the paper (arXiv 2411.17116).
//
//   mpiexec -n 4 --oversubscribe bench_mpi [--benchmark_...]
//
// Every rank runs the same benchmarks with fixed iteration counts (a collective must be
// reached by all ranks the same number of times); the time of an iteration is the slowest
// rank's, and only rank 0 reports. Each rank is capped at one TBB thread: with more ranks
// than cores the ranks share the cores, and more threads would only add contention.
//
// One attention layer: 8 query heads / 2 kv heads, head_dim 64 (as examples/mpi_star),
// context L = 16K and 32K, query 64 tokens, decode steps of 1 token. Star: blocks L/H, the
// first block as anchor, computed (no communication) or received (broadcast once). Ring:
// plain and zig-zag, with the next K/V in flight during each step (non-blocking exchange),
// and plain again with blocking exchanges, to see what the overlap buys.
//
// Bytes are the payload this rank's collectives hand to MPI for other ranks, counted as if
// every message went straight to its destination (a broadcast or all-gather of n bytes
// from this rank counts n x (H-1)); MPI's own headers and the 8-byte element counts that
// precede each variable-size message are not counted.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <star/comm/mpi.hpp> // before <star/star.hpp>: it includes <mpi.h> without C++ bindings
#include <star/star.hpp>

#include <benchmark/benchmark.h>
#include <tbb/global_control.h>

namespace {

using star::index;

constexpr index kQHeads = 8, kKVHeads = 2, kHeadDim = 64, kQueryTokens = 64;

// Forwards to an MpiCommunicator and counts the payload bytes this rank sends.
template <bool Overlap>
class CountingMpi {
public:
    explicit CountingMpi(star::MpiCommunicator& inner) : inner_(inner) {}

    [[nodiscard]] int size() const noexcept { return inner_.size(); }
    template <class T>
    [[nodiscard]] star::PerHost<T> local() const
    {
        return inner_.local<T>();
    }
    template <class F>
    void for_each_host(F&& step)
    {
        inner_.for_each_host(std::forward<F>(step));
    }

    template <star::Message T>
    void broadcast(star::PerHost<std::vector<T>>& buffers, int root)
    {
        if (inner_.rank() == root)
            sent_ += bytes(buffers) * static_cast<std::uint64_t>(size() - 1);
        inner_.broadcast(buffers, root);
    }
    template <star::Message T>
    auto gather(const star::PerHost<std::vector<T>>& buffers, int root)
    {
        if (inner_.rank() != root)
            sent_ += bytes(buffers);
        return inner_.gather(buffers, root);
    }
    template <star::Message T>
    auto all_gather(const star::PerHost<std::vector<T>>& buffers)
    {
        sent_ += bytes(buffers) * static_cast<std::uint64_t>(size() - 1);
        return inner_.all_gather(buffers);
    }
    template <star::Message T>
    auto exchange(const star::PerHost<std::vector<T>>& buffers,
                  const star::PerHost<star::Route>& routes)
    {
        count_exchange(buffers, routes);
        return inner_.exchange(buffers, routes);
    }
    template <star::Message T>
    auto start_exchange(const star::PerHost<std::vector<T>>& buffers,
                        const star::PerHost<star::Route>& routes) requires Overlap
    {
        count_exchange(buffers, routes);
        return inner_.start_exchange(buffers, routes);
    }
    void barrier() { inner_.barrier(); }

    /// Bytes sent since the last call, the most any rank sent (known to every rank).
    std::uint64_t take_max_sent()
    {
        std::uint64_t most = 0;
        MPI_Allreduce(&sent_, &most, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
        sent_ = 0;
        return most;
    }

private:
    template <class T>
    std::uint64_t bytes(const star::PerHost<std::vector<T>>& buffers) const
    {
        return buffers[inner_.rank()].size() * sizeof(T);
    }
    template <class T>
    void count_exchange(const star::PerHost<std::vector<T>>& buffers,
                        const star::PerHost<star::Route>& routes)
    {
        const int to = routes[inner_.rank()].send_to;
        if (to != star::Route::no_host && to != inner_.rank())
            sent_ += bytes(buffers);
    }

    star::MpiCommunicator& inner_;
    std::uint64_t sent_ = 0;
};

static_assert(star::Communicator<CountingMpi<true>>);
static_assert(star::OverlappingExchange<CountingMpi<true>>);
static_assert(!star::OverlappingExchange<CountingMpi<false>>);

star::MpiCommunicator* g_mpi = nullptr;

star::Tensor3<float> random_tensor(index tokens, index heads, std::mt19937& rng)
{
    std::normal_distribution<float> normal;
    star::Tensor3<float> t(tokens, heads, kHeadDim);
    for (index i = 0; i < t.size(); ++i)
        t.data()[i] = normal(rng);
    return t;
}

// Random Q/K/V for the token ranges this rank holds (the values do not matter for timing).
struct Part {
    std::vector<star::Tensor3<float>> tensors; // q, k, v per range
    star::PerHost<star::HostContext<float>> contexts;

    explicit Part(const std::vector<star::TokenRange>& ranges)
        : contexts(g_mpi->local<star::HostContext<float>>())
    {
        std::mt19937 rng(static_cast<unsigned>(g_mpi->rank()) + 1);
        tensors.reserve(3 * ranges.size()); // no reallocation: contexts hold views into them
        for (const star::TokenRange& r : ranges) {
            if (r.empty())
                continue;
            auto& q = tensors.emplace_back(random_tensor(r.size(), kQHeads, rng));
            auto& k = tensors.emplace_back(random_tensor(r.size(), kKVHeads, rng));
            auto& v = tensors.emplace_back(random_tensor(r.size(), kKVHeads, rng));
            contexts[g_mpi->rank()].add(r.begin, star::view(q), star::view(k), star::view(v));
        }
    }
};

// The formula's payload per non-query host for a phase-2 step of `tokens` query tokens.
double phase2_formula_bytes(index tokens)
{
    return static_cast<double>(tokens * kQHeads * kHeadDim + tokens * kQHeads) * sizeof(float);
}

// Times one iteration as the slowest rank's, and records bytes per rank per iteration.
template <class C, class F>
void run_timed(benchmark::State& state, C& comm, F&& iteration, double formula_bytes)
{
    std::uint64_t bytes = 0;
    for (auto _ : state) {
        MPI_Barrier(MPI_COMM_WORLD);
        (void)comm.take_max_sent();
        const double start = MPI_Wtime();
        iteration();
        const double mine = MPI_Wtime() - start;
        double slowest = 0.0;
        MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        state.SetIterationTime(slowest);
        bytes = comm.take_max_sent();
    }
    state.counters["bytes_sent_per_rank"] = static_cast<double>(bytes);
    if (formula_bytes > 0)
        state.counters["formula_bytes"] = formula_bytes;
    state.counters["ranks"] = g_mpi->size();
}

using StarDefault = star::StarAttention<star::FixedBlocks, star::FirstTokens>;

StarDefault star_for(index context, star::AnchorSource source)
{
    const int hosts = g_mpi->size();
    return StarDefault(star::FixedBlocks{(context + hosts - 1) / hosts},
                       star::FirstTokens{std::nullopt, source});
}

std::vector<star::TokenRange> star_ranges(const star::StarPlan& plan)
{
    std::vector<star::TokenRange> ranges;
    for (const std::size_t i : plan.blocks_of(g_mpi->rank())) {
        if (plan.anchor_source() == star::AnchorSource::compute)
            ranges.push_back(plan.anchors()[i]);
        ranges.push_back(plan.blocks()[i]);
    }
    if (plan.anchor_source() == star::AnchorSource::receive) // the owner of the anchor sends it
        ranges.push_back(plan.shared_anchor());
    return ranges;
}

void BM_StarPhase1(benchmark::State& state, star::AnchorSource source)
{
    const index context = state.range(0);
    CountingMpi<true> comm(*g_mpi);
    const auto star_attention = star_for(context, source);
    const star::StarPlan plan = star_attention.plan(context, comm.size());
    const Part part(star_ranges(plan));
    // A received anchor is broadcast once: a tokens x K and V by its owner to H-1 ranks.
    const double formula =
        source == star::AnchorSource::receive
            ? static_cast<double>(plan.shared_anchor().size() * kKVHeads * kHeadDim * 2 *
                                  sizeof(float) * static_cast<std::size_t>(comm.size() - 1))
            : 0.0;
    run_timed(
        state, comm,
        [&] {
            auto caches = comm.local<star::KVCache<float>>();
            benchmark::DoNotOptimize(
                star_attention.encode_context(comm, plan, caches, part.contexts));
        },
        formula);
}

template <bool Overlap>
void BM_RingPhase1(benchmark::State& state, star::RingLayout layout)
{
    const index context = state.range(0);
    CountingMpi<Overlap> comm(*g_mpi);
    const star::RingAttention ring({.layout = layout});
    const Part part(ring.shards(context, comm.size())[static_cast<std::size_t>(g_mpi->rank())]);
    // Every rank passes on a K and a V shard of L/H tokens in each of H-1 steps.
    const double formula = static_cast<double>(context) / comm.size() * kKVHeads * kHeadDim * 2 *
                           sizeof(float) * (comm.size() - 1);
    run_timed(
        state, comm, [&] { benchmark::DoNotOptimize(ring.run(comm, context, part.contexts)); },
        formula);
}

// Phase 2 (`tokens` = kQueryTokens) or one decode step (`tokens` = 1) over caches that hold
// this rank's L/H context tokens, as after Star's phase 1 or Ring's.
template <star::Merge M>
void BM_Phase2(benchmark::State& state, M merge)
{
    const index context = state.range(0);
    const index tokens = state.range(1);
    CountingMpi<true> comm(*g_mpi);
    const int hosts = comm.size();
    const star::StarAttention<star::FixedBlocks, star::FirstTokens, star::Contiguous, M> star_attention(
        star::FixedBlocks{(context + hosts - 1) / hosts}, {}, {}, merge);
    const star::StarPlan plan = star_attention.plan(context, hosts);
    std::mt19937 rng(static_cast<unsigned>(g_mpi->rank()) + 7);
    auto caches = comm.local<star::KVCache<float>>();
    for (const std::size_t i : plan.blocks_of(g_mpi->rank())) {
        const auto k = random_tensor(plan.blocks()[i].size(), kKVHeads, rng);
        const auto v = random_tensor(plan.blocks()[i].size(), kKVHeads, rng);
        caches[g_mpi->rank()].append(star::view(k), star::view(v));
    }
    const auto q = random_tensor(tokens, kQHeads, rng);
    const auto k = random_tensor(tokens, kKVHeads, rng);
    const auto v = random_tensor(tokens, kKVHeads, rng);
    run_timed(
        state, comm,
        [&] {
            benchmark::DoNotOptimize(star_attention.attend_query(comm, plan, caches, star::view(q),
                                                                 star::view(k), star::view(v)));
        },
        phase2_formula_bytes(tokens));
}

// Only rank 0 prints; the other ranks run the same benchmarks silently.
class Silent : public benchmark::BenchmarkReporter {
public:
    bool ReportContext(const Context&) override { return true; }
    void ReportRuns(const std::vector<Run>&) override {}
};

// Rank 0's reporter: the console output, plus a table of bytes per phase at the end.
class ByteTable : public benchmark::ConsoleReporter {
public:
    void ReportRuns(const std::vector<Run>& runs) override
    {
        ConsoleReporter::ReportRuns(runs);
        for (const Run& run : runs) {
            if (run.run_type != Run::RT_Iteration || run.repetition_index != 0)
                continue;
            const auto bytes = run.counters.find("bytes_sent_per_rank");
            const auto formula = run.counters.find("formula_bytes");
            rows_.push_back({run.benchmark_name(),
                             bytes == run.counters.end() ? 0 : bytes->second.value,
                             formula == run.counters.end() ? 0 : formula->second.value});
        }
    }
    void Finalize() override
    {
        ConsoleReporter::Finalize();
        std::printf("\nBytes sent per iteration by the rank that sends most (payload):\n");
        std::printf("%-52s %14s %14s %8s\n", "benchmark", "measured", "formula", "ratio");
        for (const Row& r : rows_)
            std::printf("%-52s %14.0f %14.0f %8.4f\n", r.name.c_str(), r.bytes, r.formula,
                        r.formula > 0 ? r.bytes / r.formula : 0.0);
    }

private:
    struct Row {
        std::string name;
        double bytes, formula;
    };
    std::vector<Row> rows_;
};

void register_benchmarks()
{
    const std::vector<index> contexts{16384, 32768};
    const auto with_contexts = [&](benchmark::internal::Benchmark* b, int iterations) {
        for (const index l : contexts)
            b->Arg(l);
        b->Iterations(iterations)->Repetitions(3)->UseManualTime()->Unit(benchmark::kMillisecond);
    };
    with_contexts(benchmark::RegisterBenchmark("star_phase1/anchor_computed", BM_StarPhase1,
                                               star::AnchorSource::compute),
                  2);
    with_contexts(benchmark::RegisterBenchmark("star_phase1/anchor_received", BM_StarPhase1,
                                               star::AnchorSource::receive),
                  2);
    with_contexts(benchmark::RegisterBenchmark("ring_phase1/plain", BM_RingPhase1<true>,
                                               star::RingLayout::plain),
                  1);
    with_contexts(benchmark::RegisterBenchmark("ring_phase1/zigzag", BM_RingPhase1<true>,
                                               star::RingLayout::zigzag),
                  1);
    with_contexts(benchmark::RegisterBenchmark("ring_phase1/plain_blocking", BM_RingPhase1<false>,
                                               star::RingLayout::plain),
                  1);
    for (const index tokens : {kQueryTokens, index{1}}) {
        const auto add = [&](const char* name, auto merge) {
            auto* b = benchmark::RegisterBenchmark(name, BM_Phase2<decltype(merge)>, merge);
            for (const index l : contexts)
                b->Args({l, tokens});
            b->Iterations(tokens == 1 ? 50 : 10)
                ->Repetitions(3)
                ->UseManualTime()
                ->Unit(benchmark::kMillisecond);
        };
        add(tokens == 1 ? "decode_step/gather" : "phase2/gather", star::GatherToQueryHost{});
        add(tokens == 1 ? "decode_step/tree" : "phase2/tree", star::TreeReduction{});
        add(tokens == 1 ? "decode_step/all_gather" : "phase2/all_gather", star::AllGather{});
    }
}

} // namespace

int main(int argc, char** argv)
{
    MPI_Init(&argc, &argv);
    const int status = star::run_or_abort(MPI_COMM_WORLD, [&] {
        star::MpiCommunicator mpi(MPI_COMM_WORLD);
        g_mpi = &mpi;
        const tbb::global_control one_thread(tbb::global_control::max_allowed_parallelism, 1);
        // Every rank must run the same benchmarks in the same order, or their collectives
        // pair up wrongly and the job hangs: random interleaving shuffles per process.
        for (int i = 1; i < argc; ++i) {
            const std::string arg = argv[i];
            if (arg.starts_with("--benchmark_enable_random_interleaving") && !arg.ends_with("=false"))
                throw star::error("bench_mpi: --benchmark_enable_random_interleaving would run the "
                                  "benchmarks in a different order on each rank");
        }
        // Only rank 0 writes --benchmark_out: the others must not write the same file.
        std::vector<char*> args(argv, argv + argc);
        if (mpi.rank() != 0)
            std::erase_if(
                args, [](const char* a) { return std::string(a).starts_with("--benchmark_out"); });
        int arg_count = static_cast<int>(args.size());
        benchmark::Initialize(&arg_count, args.data());
        register_benchmarks();
        if (mpi.rank() == 0) {
            ByteTable table;
            benchmark::RunSpecifiedBenchmarks(&table);
        } else {
            Silent display;
            benchmark::RunSpecifiedBenchmarks(&display);
        }
        benchmark::Shutdown();
        return 0;
    });
    MPI_Finalize();
    return status;
}
