// Star Attention beside the exact baselines, on one random layer at a long context.
//
// The same layer (8 query heads sharing 2 KV heads, head_dim 64) goes through
//   - global attention: exact, quadratic, on all cores;
//   - Ring Attention: exact, 4 hosts passing K/V around a ring;
//   - Star Attention: 4 hosts, blocks of L/4 with the first block as anchor (phase 1),
//     then a 32-token query and 16 decode steps (phase 2).
// It prints the time of each phase, the K/V bytes each host holds, and how far each
// result is from exact attention. Phase 1 is Star's only approximation; phase 2 and ring
// are exact up to float rounding.
//
// Usage: star_vs_exact [context_tokens=16384] [hosts=4]

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <random>
#include <string>

#include <star/star.hpp>

namespace {

using Clock = std::chrono::steady_clock;

double milliseconds_since(Clock::time_point start)
{
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

star::Tensor3<float> random_tensor(star::index tokens, star::index heads, star::index d,
                                   std::mt19937& rng)
{
    std::normal_distribution<float> normal;
    star::Tensor3<float> t(tokens, heads, d);
    for (star::index n = 0; n < t.size(); ++n)
        t.data()[n] = normal(rng);
    return t;
}

// ||a - b|| / ||b|| over the first `tokens` tokens of two outputs.
double relative_error(const star::Tensor3<float>& a, const star::Tensor3<float>& b)
{
    double diff = 0.0, norm = 0.0;
    for (star::index n = 0; n < b.size(); ++n) {
        diff += std::pow(double(a.data()[n]) - double(b.data()[n]), 2);
        norm += std::pow(double(b.data()[n]), 2);
    }
    return std::sqrt(diff / norm);
}

// Keys of the context followed by the keys of the query and generated tokens, for the
// exact phase-2 reference.
star::Tensor3<float> concat(const star::Tensor3<float>& a, const star::Tensor3<float>& b)
{
    return a.concatenate(b, 0);
}

} // namespace

int main(int argc, char** argv)
{
    const star::index context = argc > 1 ? std::atol(argv[1]) : 16384;
    const int hosts = argc > 2 ? std::atoi(argv[2]) : 4;
    const star::index q_heads = 8, kv_heads = 2, head_dim = 64, query_tokens = 32, decode_steps = 16;

    std::mt19937 rng(7);
    const auto q = random_tensor(context, q_heads, head_dim, rng);
    const auto k = random_tensor(context, kv_heads, head_dim, rng);
    const auto v = random_tensor(context, kv_heads, head_dim, rng);
    std::cout << std::fixed << std::setprecision(1) << "one layer: L=" << context << ", " << q_heads
              << " query heads / " << kv_heads << " kv heads, head_dim " << head_dim << ", "
              << hosts << " hosts\n\n";

    // Exact global attention: the yardstick.
    auto start = Clock::now();
    const star::AttentionState exact =
        star::global_attention(star::view(q), star::view(k), star::view(v));
    std::cout << "global attention           " << std::setw(9) << milliseconds_since(start)
              << " ms\n";

    // Ring attention: exact, distributed.
    star::LocalCommunicator comm(hosts);
    for (const auto layout : {star::RingLayout::plain, star::RingLayout::zigzag}) {
        const star::RingAttention ring({.layout = layout});
        start = Clock::now();
        const auto ring_out = ring.run(comm, star::view(q), star::view(k), star::view(v));
        const double ms = milliseconds_since(start);
        const auto ring_state = star::assemble(ring_out, {context, q_heads, head_dim});
        std::cout << (layout == star::RingLayout::plain ? "ring attention (plain)     "
                                                        : "ring attention (zig-zag)   ")
                  << std::setw(9) << ms << " ms   relative error vs exact " << std::scientific
                  << relative_error(ring_state.output, exact.output) << std::fixed << "\n";
    }

    // Star attention with the paper's defaults: blocks of L/4, anchor = first block,
    // contiguous partition, query host = last, gather to the query host.
    const star::StarAttention<> star_attention(star::FixedBlocks{(context + 3) / 4});
    const star::StarPlan plan = star_attention.plan(context, hosts);
    auto caches = comm.local<star::KVCache<float>>();
    start = Clock::now();
    const auto phase1 = star_attention.encode_context(comm, plan, caches, star::view(q),
                                                      star::view(k), star::view(v));
    const double phase1_ms = milliseconds_since(start);
    const auto phase1_state = star::assemble(phase1, {context, q_heads, head_dim});
    std::cout << "star phase 1 (context)     " << std::setw(9) << phase1_ms
              << " ms   relative error vs exact " << std::scientific
              << relative_error(phase1_state.output, exact.output) << std::fixed
              << "  (the approximation)\n";

    // Phase 2: a query, then decode steps; each compared with exact attention over every
    // key seen so far.
    star::Tensor3<float> all_k = k, all_v = v;
    double phase2_ms = 0.0, worst_phase2_error = 0.0;
    for (star::index step = 0; step <= decode_steps; ++step) {
        const star::index tokens = step == 0 ? query_tokens : 1;
        const auto nq = random_tensor(tokens, q_heads, head_dim, rng);
        const auto nk = random_tensor(tokens, kv_heads, head_dim, rng);
        const auto nv = random_tensor(tokens, kv_heads, head_dim, rng);
        start = Clock::now();
        const auto merged = star_attention.attend_query(comm, plan, caches, star::view(nq),
                                                        star::view(nk), star::view(nv));
        phase2_ms += milliseconds_since(start);

        const star::index cached = all_k.dimension(0);
        all_k = concat(all_k, nk);
        all_v = concat(all_v, nv);
        const star::AttentionState reference = star::attention(
            star::view(nq), star::view(all_k), star::view(all_v), star::CausalMask{cached, 0});
        worst_phase2_error =
            std::max(worst_phase2_error,
                     relative_error(merged[plan.query_host()]->output, reference.output));
    }
    std::cout << "star phase 2 (" << query_tokens << "-token query + " << decode_steps
              << " decode steps) " << std::setw(6) << phase2_ms
              << " ms   worst relative error vs exact " << std::scientific << worst_phase2_error
              << std::fixed << "\n\n";

    std::cout << "K/V bytes held per host after decoding:\n";
    for (int r = 0; r < hosts; ++r)
        std::cout << "  host " << r << (r == plan.query_host() ? " (query host)" : "             ")
                  << std::setw(12) << caches[r].bytes() << " bytes, " << caches[r].tokens()
                  << " tokens\n";
    return worst_phase2_error < 1e-5 ? 0 : 1;
}
