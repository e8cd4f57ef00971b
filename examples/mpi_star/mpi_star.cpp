// Star Attention and Ring Attention across processes: one host per MPI rank.
//
//   mpiexec -n 4 mpi_star [context_tokens=16384] [decode_steps=8]
//
// Nothing is shared between the ranks but MPI messages. Each rank makes only its own part
// of one attention layer's Q/K/V: every token's row is drawn from a generator seeded with
// (seed, tensor, token), so any rank can make any token without a shared file, and rank 0
// can make the whole sequence to compute exact attention as the yardstick.
//
// For Star (blocks of L/H, the first block as anchor) and for Ring (plain layout) it runs
//   phase 1  the context, spread over the ranks;
//   phase 2  a 32-token query that every rank receives, attended to every rank's K/V;
//   decode   single-token steps, like phase 2.
// Rank 0 prints the time of each phase (the slowest rank's) and the relative error of each
// result against exact attention.

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <deque>
#include <iomanip>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include <star/comm/mpi.hpp> // before <star/star.hpp>: it includes <mpi.h> without C++ bindings
#include <star/star.hpp>

namespace {

constexpr std::uint64_t seed = 2024;
constexpr star::index q_heads = 8, kv_heads = 2, head_dim = 64, query_tokens = 32;

enum class Which : std::uint64_t { q = 1, k = 2, v = 3 };

// Rows `[first, first + count)` of one of the layer's tensors over the whole sequence
// (context, then query, then decoded tokens); the same values on whichever rank makes them.
star::Tensor3<float> rows(Which which, star::index first, star::index count)
{
    const star::index heads = which == Which::q ? q_heads : kv_heads;
    star::Tensor3<float> t(count, heads, head_dim);
    std::normal_distribution<float> normal;
    for (star::index i = 0; i < count; ++i) {
        std::seed_seq token_seed{seed, static_cast<std::uint64_t>(which),
                                 static_cast<std::uint64_t>(first + i)};
        std::mt19937 rng(token_seed);
        for (star::index j = 0; j < heads * head_dim; ++j)
            t.data()[i * heads * head_dim + j] = normal(rng);
    }
    return t;
}

// Q/K/V of a token range, kept alive for the views a HostContext holds.
struct Piece {
    star::TokenRange tokens;
    star::Tensor3<float> q, k, v;
    explicit Piece(star::TokenRange range)
        : tokens(range), q(rows(Which::q, range.begin, range.size())),
          k(rows(Which::k, range.begin, range.size())), v(rows(Which::v, range.begin, range.size()))
    {
    }
};

// The part of the context this rank holds, and the pieces behind it.
struct Holding {
    std::deque<Piece> pieces; // a deque: adding a piece never moves the others
    star::PerHost<star::HostContext<float>> contexts;

    Holding(const star::MpiCommunicator& comm, const std::vector<star::TokenRange>& ranges)
        : contexts(comm.local<star::HostContext<float>>())
    {
        for (const star::TokenRange& range : ranges) {
            if (range.empty())
                continue;
            const Piece& p = pieces.emplace_back(range);
            contexts[comm.rank()].add(range.begin, star::view(p.q), star::view(p.k),
                                      star::view(p.v));
        }
    }
};

// The slowest rank's time of `phase`, in milliseconds, known to every rank.
template <class F>
double timed(F&& phase)
{
    MPI_Barrier(MPI_COMM_WORLD);
    const double start = MPI_Wtime();
    phase();
    const double mine = MPI_Wtime() - start;
    double slowest = 0.0;
    MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return slowest * 1e3;
}

// Every rank's outputs for its context ranges, gathered on rank 0 into context order.
star::Tensor3<float> gather_outputs(star::MpiCommunicator& comm,
                                    const star::PerHost<std::vector<star::RangeOutput>>& outputs,
                                    star::index context)
{
    auto mine = comm.local<std::vector<float>>();
    auto ranges = comm.local<std::vector<std::int64_t>>();
    for (const star::RangeOutput& out : outputs[comm.rank()]) {
        mine[comm.rank()].insert(mine[comm.rank()].end(), out.state.output.data(),
                                 out.state.output.data() + out.state.output.size());
        ranges[comm.rank()].insert(ranges[comm.rank()].end(), {out.tokens.begin, out.tokens.end});
    }
    const auto all_values = comm.gather(mine, 0);
    const auto all_ranges = comm.gather(ranges, 0);
    star::Tensor3<float> whole(context, q_heads, head_dim);
    if (comm.rank() != 0)
        return whole;
    const star::index row = q_heads * head_dim;
    for (int r = 0; r < comm.size(); ++r) {
        const auto& values = all_values[0][static_cast<std::size_t>(r)];
        const auto& bounds = all_ranges[0][static_cast<std::size_t>(r)];
        std::size_t at = 0;
        for (std::size_t i = 0; i + 1 < bounds.size(); i += 2) {
            const auto count = static_cast<std::size_t>((bounds[i + 1] - bounds[i]) * row);
            std::copy_n(values.begin() + static_cast<std::ptrdiff_t>(at), count,
                        whole.data() + bounds[i] * row);
            at += count;
        }
    }
    return whole;
}

// ||a - b|| / ||b|| over `tokens` rows of `b` starting at row `first`.
double relative_error(const float* a, const star::Tensor3<float>& b, star::index first,
                      star::index tokens)
{
    const star::index row = b.dimension(1) * b.dimension(2);
    double diff = 0.0, norm = 0.0;
    for (star::index n = 0; n < tokens * row; ++n) {
        const double want = b.data()[first * row + n];
        diff += (a[n] - want) * (a[n] - want);
        norm += want * want;
    }
    return std::sqrt(diff / norm);
}

struct PhaseReport {
    std::string name;
    double ms = 0.0;
    double error = 0.0;
};

// Phase 2 and the decode steps over per-rank caches that already hold the context: the query
// and then each new token go to every rank (here every rank makes them from the seed; an
// engine would broadcast them), and rank 0 - the query host - gets the merged result.
template <class Algorithm>
void query_and_decode(star::MpiCommunicator& comm, const Algorithm& algorithm,
                      const star::StarPlan& plan, star::PerHost<star::KVCache<float>>& caches,
                      star::index context, star::index decode_steps, const std::string& name,
                      std::vector<PhaseReport>& report, std::vector<star::Tensor3<float>>& results)
{
    star::index position = context;
    for (star::index step = 0; step <= decode_steps; ++step) {
        const star::index tokens = step == 0 ? query_tokens : 1;
        const auto q = rows(Which::q, position, tokens);
        const auto k = rows(Which::k, position, tokens);
        const auto v = rows(Which::v, position, tokens);
        star::PerHost<std::optional<star::AttentionState>> merged;
        const double ms = timed([&] {
            merged = algorithm.attend_query(comm, plan, caches, star::view(q), star::view(k),
                                            star::view(v));
        });
        if (step == 0)
            report.push_back(
                {name + " phase 2 (" + std::to_string(query_tokens) + "-token query)", ms});
        else if (step == 1)
            report.push_back({name + " decode (per step)", ms / static_cast<double>(decode_steps)});
        else
            report.back().ms += ms / static_cast<double>(decode_steps);
        if (comm.rank() == plan.query_host())
            results.push_back(merged[comm.rank()]->output);
        position += tokens;
    }
}

} // namespace

int main(int argc, char** argv)
{
    MPI_Init(&argc, &argv);
    const int status = star::run_or_abort(MPI_COMM_WORLD, [&] {
        star::MpiCommunicator comm(MPI_COMM_WORLD);
        const int hosts = comm.size(), rank = comm.rank();
        const star::index context = argc > 1 ? std::atol(argv[1]) : 16384;
        const star::index decode_steps = argc > 2 ? std::atol(argv[2]) : 8;
        if (context < hosts || decode_steps < 1)
            throw star::invalid_argument(
                "usage: mpi_star [context_tokens >= ranks] [decode_steps >= 1]");
        std::vector<PhaseReport> report;

        // Star: blocks of L/H, each rank one block, anchored on the first block (which each
        // rank makes itself); rank 0 is the query host, so it holds the merged results.
        const star::StarAttention<star::FixedBlocks, star::FirstTokens, star::Contiguous> star_attention(
            star::FixedBlocks{(context + hosts - 1) / hosts}, {}, star::Contiguous{{0}});
        const star::StarPlan plan = star_attention.plan(context, hosts);
        std::vector<star::TokenRange> star_ranges;
        for (const std::size_t i : plan.blocks_of(rank)) {
            star_ranges.push_back(plan.anchors()[i]);
            star_ranges.push_back(plan.blocks()[i]);
        }
        const Holding star_part(comm, star_ranges);
        auto star_caches = comm.local<star::KVCache<float>>();
        star::PerHost<std::vector<star::RangeOutput>> star_out;
        report.push_back({"star phase 1 (context)", timed([&] {
                              star_out = star_attention.encode_context(comm, plan, star_caches,
                                                                       star_part.contexts);
                          })});
        std::vector<star::Tensor3<float>> star_results{gather_outputs(comm, star_out, context)};
        query_and_decode(comm, star_attention, plan, star_caches, context, decode_steps, "star",
                         report, star_results);

        // Ring: each rank one contiguous shard; K/V go round the ring. Ring Attention has no
        // phase 2 of its own: the query attends to the shards where they are and the
        // partials are merged exactly, which is Star's phase 2 over the ring's shards.
        const star::RingAttention ring;
        const auto shards = ring.shards(context, hosts);
        const Holding ring_part(comm, shards[static_cast<std::size_t>(rank)]);
        star::PerHost<std::vector<star::RangeOutput>> ring_out;
        report.push_back({"ring phase 1 (context)",
                          timed([&] { ring_out = ring.run(comm, context, ring_part.contexts); })});
        std::vector<star::Tensor3<float>> ring_results{gather_outputs(comm, ring_out, context)};
        auto ring_caches = comm.local<star::KVCache<float>>();
        for (const Piece& p : ring_part.pieces)
            ring_caches[rank].append(star::view(p.k), star::view(p.v));
        const star::StarAttention<star::EqualBlocks, star::NoAnchor, star::Contiguous> over_shards(
            star::EqualBlocks{hosts}, {}, star::Contiguous{{0}});
        query_and_decode(comm, over_shards, over_shards.plan(context, hosts), ring_caches, context,
                         decode_steps, "ring", report, ring_results);

        if (rank != 0)
            return 0;
        // Exact causal attention over the whole sequence, on rank 0 alone.
        const star::index total = context + query_tokens + decode_steps;
        const auto q = rows(Which::q, 0, total), k = rows(Which::k, 0, total),
                   v = rows(Which::v, 0, total);
        star::AttentionState exact;
        const double exact_start = MPI_Wtime();
        exact = star::global_attention(star::view(q), star::view(k), star::view(v));
        const double exact_ms = (MPI_Wtime() - exact_start) * 1e3;

        // Star's phase 1 against its own definition: each block's queries attend to the
        // block's anchor and, causally, to the block itself. Exact up to float rounding, so
        // its approximation (relative to exact attention, shown below) is the only one.
        star::Tensor3<float> block_sparse(context, q_heads, head_dim);
        for (std::size_t i = 0; i < plan.blocks().size(); ++i) {
            const star::TokenRange block = plan.blocks()[i], anchor = plan.anchors()[i];
            const auto with_anchor = [&](Which which) {
                const star::Tensor3<float> a = rows(which, anchor.begin, anchor.size());
                const star::Tensor3<float> b = rows(which, block.begin, block.size());
                star::Tensor3<float> both(anchor.size() + block.size(), b.dimension(1), head_dim);
                std::copy_n(a.data(), a.size(), both.data());
                std::copy_n(b.data(), b.size(), both.data() + a.size());
                return both;
            };
            const auto bq = rows(Which::q, block.begin, block.size());
            const auto bk = with_anchor(Which::k), bv = with_anchor(Which::v);
            const star::AttentionState s = star::attention(
                star::view(bq), star::view(bk), star::view(bv), star::CausalMask{anchor.size(), 0});
            std::copy_n(s.output.data(), s.output.size(),
                        block_sparse.data() + block.begin * q_heads * head_dim);
        }
        const double phase1_vs_definition =
            relative_error(star_results[0].data(), block_sparse, 0, context);

        // Each algorithm's results: the context, the query, then one per decode step.
        double worst_exact_phase = 0.0;
        for (const auto* results : {&star_results, &ring_results}) {
            const std::size_t first_report = results == &star_results ? 0 : 3;
            star::index first = 0;
            for (std::size_t i = 0; i < results->size(); ++i) {
                const star::index tokens = i == 0 ? context : i == 1 ? query_tokens : 1;
                const double error =
                    relative_error((*results)[i].data(), exact.output, first, tokens);
                auto& entry = report[first_report + std::min<std::size_t>(i, 2)];
                entry.error = std::max(entry.error, error);
                if (!(results == &star_results && i == 0))
                    worst_exact_phase = std::max(worst_exact_phase, error);
                first += tokens;
            }
        }

        std::cout << "mpi_star: " << hosts << " ranks, one host each; one layer of L=" << context
                  << " context tokens, " << q_heads << " query / " << kv_heads
                  << " kv heads, head_dim " << head_dim << "\n\n"
                  << std::left << std::setw(36) << "phase" << std::right << std::setw(12)
                  << "time (ms)" << std::setw(24) << "rel. error vs exact\n";
        for (const PhaseReport& r : report)
            std::cout << std::left << std::setw(36) << r.name << std::right << std::fixed
                      << std::setprecision(2) << std::setw(12) << r.ms << std::scientific
                      << std::setprecision(2) << std::setw(16) << r.error << "\n";
        std::cout << std::left << std::setw(36) << "exact global attention, rank 0" << std::right
                  << std::fixed << std::setprecision(2) << std::setw(12) << exact_ms << "\n\n"
                  << "Star's phase 1 is its one approximation; everything else is exact up to "
                     "float rounding.\nStar's phase 1 vs its definition (each block with its "
                     "anchor): relative error "
                  << std::scientific << std::setprecision(2) << phase1_vs_definition << "\n";
        return worst_exact_phase < 1e-5 && phase1_vs_definition < 1e-5 ? 0 : 1;
    });
    MPI_Finalize();
    return status;
}
