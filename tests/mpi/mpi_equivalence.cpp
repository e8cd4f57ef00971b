// Star (phases 1 and 2, decode steps, every Merge policy) and Ring (plain, zig-zag) over
// MPI, one host per rank, must give bit for bit what the in-process runtime gives: the
// per-host computations and the merge orders are the same, only the transport differs.
// Run under mpiexec; every rank checks its own hosts' results and the job fails if any
// rank finds a difference.

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <optional>
#include <random>
#include <string>

#include <star/comm/mpi.hpp> // first: it includes <mpi.h> without the C++ bindings
#include <star/star.hpp>

namespace {

int failures = 0;
int checks = 0;

star::Tensor3<float> random_tensor(star::index tokens, star::index heads, star::index d,
                                   std::mt19937_64& rng)
{
    std::normal_distribution<float> normal;
    star::Tensor3<float> t(tokens, heads, d);
    for (star::index n = 0; n < t.size(); ++n)
        t.data()[n] = normal(rng);
    return t;
}

void expect_identical(const star::AttentionState& a, const star::AttentionState& b, int rank,
                      const std::string& what)
{
    ++checks;
    const bool same =
        a.shape() == b.shape() &&
        std::memcmp(a.output.data(), b.output.data(), sizeof(float) * a.output.size()) == 0 &&
        std::memcmp(a.lse.data(), b.lse.data(), sizeof(float) * a.lse.size()) == 0;
    if (!same) {
        ++failures;
        std::cerr << "rank " << rank << ": " << what << " differs from the in-process run\n";
    }
}

void expect_identical(const std::vector<star::RangeOutput>& a,
                      const std::vector<star::RangeOutput>& b, int rank, const std::string& what)
{
    ++checks;
    if (a.size() != b.size()) {
        ++failures;
        std::cerr << "rank " << rank << ": " << what << ": " << a.size() << " ranges vs "
                  << b.size() << "\n";
        return;
    }
    for (std::size_t i = 0; i < a.size(); ++i)
        expect_identical(a[i].state, b[i].state, rank, what + " range " + std::to_string(i));
}

template <star::Merge M>
void star_equals_in_process(star::MpiCommunicator& mpi, const M& merge, const std::string& name,
                            star::index block_size = 150)
{
    const int rank = mpi.rank(), hosts = mpi.size();
    const star::index context = 701, q_heads = 8, kv_heads = 2, d = 32;
    std::mt19937_64 rng(2024); // the same seed on every rank: every rank makes the same layer
    const auto q = random_tensor(context, q_heads, d, rng);
    const auto k = random_tensor(context, kv_heads, d, rng);
    const auto v = random_tensor(context, kv_heads, d, rng);

    const star::StarAttention<star::FixedBlocks, star::FirstTokens, star::Contiguous, M> star_attention(
        star::FixedBlocks{block_size}, star::FirstTokens{{}, star::AnchorSource::receive}, {},
        merge);
    const star::StarPlan plan = star_attention.plan(context, hosts);
    star::LocalCommunicator local(hosts);

    auto mpi_caches = mpi.local<star::KVCache<float>>();
    auto local_caches = local.local<star::KVCache<float>>();
    const auto mpi_p1 = star_attention.encode_context(mpi, plan, mpi_caches, star::view(q),
                                                      star::view(k), star::view(v));
    const auto local_p1 = star_attention.encode_context(local, plan, local_caches, star::view(q),
                                                        star::view(k), star::view(v));
    expect_identical(mpi_p1[rank], local_p1[rank], rank, name + " phase 1");

    for (int step = 0; step < 4; ++step) {
        const star::index tokens = step == 0 ? 9 : 1;
        const auto nq = random_tensor(tokens, q_heads, d, rng);
        const auto nk = random_tensor(tokens, kv_heads, d, rng);
        const auto nv = random_tensor(tokens, kv_heads, d, rng);
        const auto mpi_out = star_attention.attend_query(mpi, plan, mpi_caches, star::view(nq),
                                                         star::view(nk), star::view(nv));
        const auto local_out = star_attention.attend_query(
            local, plan, local_caches, star::view(nq), star::view(nk), star::view(nv));
        const std::string what =
            name + (step == 0 ? " phase 2 query" : " decode step " + std::to_string(step));
        ++checks;
        if (mpi_out[rank].has_value() != local_out[rank].has_value()) {
            ++failures;
            std::cerr << "rank " << rank << ": " << what << ": result present on one side only\n";
        } else if (mpi_out[rank]) {
            expect_identical(*mpi_out[rank], *local_out[rank], rank, what);
        }
        ++checks;
        if (mpi_caches[rank].tokens() != local_caches[rank].tokens()) {
            ++failures;
            std::cerr << "rank " << rank << ": " << what << ": cache holds "
                      << mpi_caches[rank].tokens() << " tokens, in-process "
                      << local_caches[rank].tokens() << "\n";
        }
    }
}

// Across processes a host holds only its own blocks (and the anchor when it computes it),
// as a deployment does: phase 1 and the query over MPI must still give bit for bit what the
// in-process run over the whole context gives. The queries are `Q`, float or bf16.
template <star::KVElement KV, star::QueryElement Q = float>
void per_host_contexts_equal_in_process(star::MpiCommunicator& mpi, star::AnchorSource source,
                                        const std::string& name)
{
    const int rank = mpi.rank(), hosts = mpi.size();
    const star::index context = 517, q_heads = 4, kv_heads = 2, d = 24;
    std::mt19937_64 rng(99);
    const star::Tensor3<Q> q = random_tensor(context, q_heads, d, rng).cast<Q>();
    const auto k32 = random_tensor(context, kv_heads, d, rng);
    const auto v32 = random_tensor(context, kv_heads, d, rng);
    const star::Tensor3<KV> k = k32.cast<KV>(), v = v32.cast<KV>();
    const star::StarAttention<star::FixedBlocks, star::FirstTokens> star_attention(
        star::FixedBlocks{100}, star::FirstTokens{{}, source});
    const star::StarPlan plan = star_attention.plan(context, hosts);

    auto contexts = mpi.local<star::HostContext<KV, Q>>();
    const auto hold = [&](star::TokenRange r) {
        contexts[rank].add(r.begin, star::token_slice(star::view(q), r.begin, r.size()),
                           star::token_slice(star::view(k), r.begin, r.size()),
                           star::token_slice(star::view(v), r.begin, r.size()));
    };
    for (const std::size_t i : plan.blocks_of(rank)) {
        const star::TokenRange anchor = plan.anchors()[i];
        if (source == star::AnchorSource::compute && !anchor.empty() &&
            plan.owner()[0] != rank) // a host holding block 0 holds the anchor already
            hold(anchor);
        hold(plan.blocks()[i]);
    }
    auto mpi_caches = mpi.local<star::KVCache<KV>>();
    const auto mpi_p1 = star_attention.encode_context(mpi, plan, mpi_caches, contexts);

    star::LocalCommunicator local(hosts);
    auto local_caches = local.local<star::KVCache<KV>>();
    const auto local_p1 = star_attention.encode_context(local, plan, local_caches, star::view(q),
                                                        star::view(k), star::view(v));
    expect_identical(mpi_p1[rank], local_p1[rank], rank, name + " phase 1");

    const star::Tensor3<Q> nq = random_tensor(3, q_heads, d, rng).cast<Q>();
    const star::Tensor3<KV> nk = random_tensor(3, kv_heads, d, rng).cast<KV>();
    const star::Tensor3<KV> nv = random_tensor(3, kv_heads, d, rng).cast<KV>();
    const auto mpi_out = star_attention.attend_query(mpi, plan, mpi_caches, star::view(nq),
                                                     star::view(nk), star::view(nv));
    const auto local_out = star_attention.attend_query(local, plan, local_caches, star::view(nq),
                                                       star::view(nk), star::view(nv));
    ++checks;
    if (mpi_out[rank].has_value() != local_out[rank].has_value()) {
        ++failures;
        std::cerr << "rank " << rank << ": " << name << " query: result on one side only\n";
    } else if (mpi_out[rank]) {
        expect_identical(*mpi_out[rank], *local_out[rank], rank, name + " query");
    }
}

// One setting of a Star layer that a rank may be given differently from the others.
struct Setting {
    star::index block = 100, q_heads = 4, kv_heads = 2, d = 16, query_tokens = 2;
    std::optional<float> scale;
    bool check_finite = true;
    bool half = false;       // K/V as half instead of bf16 (the same size)
    bool all_gather = false; // the AllGather merge instead of GatherToQueryHost
    int extra_steps = 0;     // decode steps after the query, beyond the others'
};

// What this rank holds of a context under `plan` when the anchor is received: its own
// blocks of q, k and v.
template <star::KVElement KV>
star::PerHost<star::HostContext<KV>> own_blocks(star::MpiCommunicator& mpi,
                                                const star::StarPlan& plan,
                                                const star::Tensor3<float>& q,
                                                const star::Tensor3<KV>& k,
                                                const star::Tensor3<KV>& v)
{
    auto contexts = mpi.local<star::HostContext<KV>>();
    for (const std::size_t i : plan.blocks_of(mpi.rank())) {
        const star::TokenRange b = plan.blocks()[i];
        contexts[mpi.rank()].add(b.begin, star::token_slice(star::view(q), b.begin, b.size()),
                                 star::token_slice(star::view(k), b.begin, b.size()),
                                 star::token_slice(star::view(v), b.begin, b.size()));
    }
    return contexts;
}

template <star::KVElement KV, star::Merge M>
void run_star(star::MpiCommunicator& mpi, const Setting& s)
{
    const star::index context = 400;
    std::mt19937_64 rng(5);
    const auto q = random_tensor(context, s.q_heads, s.d, rng);
    const star::Tensor3<KV> k = random_tensor(context, s.kv_heads, s.d, rng).cast<KV>();
    const star::Tensor3<KV> v = random_tensor(context, s.kv_heads, s.d, rng).cast<KV>();
    const star::StarAttention<star::FixedBlocks, star::FirstTokens, star::Contiguous, M> star_attention(
        star::FixedBlocks{s.block}, star::FirstTokens{{}, star::AnchorSource::receive}, {}, M{},
        {.scale = s.scale, .check_finite = s.check_finite});
    const star::StarPlan plan = star_attention.plan(context, mpi.size());
    const auto contexts = own_blocks(mpi, plan, q, k, v);
    auto caches = mpi.local<star::KVCache<KV>>();
    (void)star_attention.encode_context(mpi, plan, caches, contexts);
    for (int step = 0; step < 3 + s.extra_steps; ++step) {
        const star::index tokens = step == 0 ? s.query_tokens : 1;
        const auto nq = random_tensor(tokens, s.q_heads, s.d, rng);
        const star::Tensor3<KV> nk = random_tensor(tokens, s.kv_heads, s.d, rng).cast<KV>();
        const star::Tensor3<KV> nv = random_tensor(tokens, s.kv_heads, s.d, rng).cast<KV>();
        (void)star_attention.attend_query(mpi, plan, caches, star::view(nq), star::view(nk),
                                          star::view(nv));
    }
}

// A Star layer with one setting of `mismatched_rank` changed as `change` says.
void star_with_one_rank_changed(star::MpiCommunicator& mpi, const std::string& change,
                                int mismatched_rank)
{
    Setting s;
    if (mpi.rank() == mismatched_rank) {
        if (change == "block-size")
            s.block = 101;
        else if (change == "kv-heads")
            s.kv_heads = 1;
        else if (change == "q-heads")
            s.q_heads = 8;
        else if (change == "head-dim")
            s.d = 24;
        else if (change == "scale")
            s.scale = 0.5f;
        else if (change == "check-finite")
            s.check_finite = false;
        else if (change == "query-length")
            s.query_tokens = 3;
        else if (change == "element-type")
            s.half = true;
        else if (change == "merge")
            s.all_gather = true;
        else if (change == "extra-step")
            s.extra_steps = 1;
        else
            throw std::invalid_argument("unknown setting " + change);
    }
    if (s.half && s.all_gather)
        run_star<Eigen::half, star::AllGather>(mpi, s);
    else if (s.half)
        run_star<Eigen::half, star::GatherToQueryHost>(mpi, s);
    else if (s.all_gather)
        run_star<Eigen::bfloat16, star::AllGather>(mpi, s);
    else
        run_star<Eigen::bfloat16, star::GatherToQueryHost>(mpi, s);
}

// Queries of type `Q` (float, or bf16 as a bf16 model projects them).
template <class Q = float>
void ring_equals_in_process(star::MpiCommunicator& mpi, star::RingLayout layout,
                            const std::string& name)
{
    const int rank = mpi.rank();
    std::mt19937_64 rng(7);
    const star::Tensor3<Q> q = random_tensor(333, 4, 2 * 8, rng).cast<Q>();
    const auto k = random_tensor(333, 2, 2 * 8, rng);
    const auto v = random_tensor(333, 2, 2 * 8, rng);
    const star::RingAttention ring({.layout = layout});
    star::LocalCommunicator local(mpi.size());
    const auto over_mpi = ring.run(mpi, star::view(q), star::view(k), star::view(v));
    const auto in_process = ring.run(local, star::view(q), star::view(k), star::view(v));
    expect_identical(over_mpi[rank], in_process[rank], rank, name);
}

// Ring Attention with bf16 queries on some ranks and float on the others: the agreement must
// report it (nothing on the wire differs, but the ranks would round their rows differently).
void ring_with_query_type(star::MpiCommunicator& mpi, bool bf16)
{
    std::mt19937_64 rng(7);
    const auto q = random_tensor(120, 4, 16, rng);
    const star::Tensor3<Eigen::bfloat16> q_bf16 = q.cast<Eigen::bfloat16>();
    const auto k = random_tensor(120, 2, 16, rng);
    const auto v = random_tensor(120, 2, 16, rng);
    const star::RingAttention ring;
    if (bf16)
        (void)ring.run(mpi, star::view(q_bf16), star::view(k), star::view(v));
    else
        (void)ring.run(mpi, star::view(q), star::view(k), star::view(v));
}

// Ring Attention under a sliding window of `window` tokens: a rank given another window must
// be reported by the agreement, not compute with it.
void ring_with_window(star::MpiCommunicator& mpi, star::index window)
{
    std::mt19937_64 rng(7);
    const auto q = random_tensor(120, 4, 16, rng);
    const auto k = random_tensor(120, 2, 16, rng);
    const auto v = random_tensor(120, 2, 16, rng);
    const star::BasicRingAttention ring(star::RingOptions{}, star::SlidingWindow{window});
    (void)ring.run(mpi, star::view(q), star::view(k), star::view(v));
}

// Star under a soft cap of `cap`: a rank given another cap must be reported by the
// agreement before phase 1 computes anything with it.
void star_with_cap(star::MpiCommunicator& mpi, float cap)
{
    std::mt19937_64 rng(7);
    const auto q = random_tensor(120, 4, 16, rng);
    const auto k = random_tensor(120, 2, 16, rng);
    const auto v = random_tensor(120, 2, 16, rng);
    const star::StarAttention<star::FixedBlocks, star::FirstTokens, star::Contiguous,
                              star::GatherToQueryHost, star::SoftCapped<>>
        star_attention(star::FixedBlocks{40}, star::FirstTokens{{}, star::AnchorSource::receive},
                       {}, {}, {}, star::SoftCapped<>{cap});
    const star::StarPlan plan = star_attention.plan(120, mpi.size());
    const auto contexts = own_blocks(mpi, plan, q, k, v);
    auto caches = mpi.local<star::KVCache<float>>();
    (void)star_attention.encode_context(mpi, plan, caches, contexts);
}

// Messages of every size (0 included), with hosts that only send, only receive or neither:
// the blocking and the non-blocking exchange over MPI must both deliver exactly what the
// in-process exchange delivers, for float and for bf16 payloads.
template <class T>
void exchanges_equal_in_process(star::MpiCommunicator& mpi, const std::string& name)
{
    const int rank = mpi.rank(), hosts = mpi.size();
    star::LocalCommunicator local(hosts);
    const auto fill = [](auto& buffers) {
        for (int r = buffers.first_rank(); r < buffers.end_rank(); ++r)
            for (int i = 0; i < 5000 * (r % 3); ++i) // 0, 5000 or 10000 elements
                buffers[r].push_back(T(static_cast<float>(r * 100000 + i)));
    };
    auto local_buffers = local.local<std::vector<T>>();
    auto mpi_buffers = mpi.local<std::vector<T>>();
    fill(local_buffers);
    fill(mpi_buffers);
    // Pairs (0,1), (2,3), ...: an odd last host takes no part.
    const auto pairs = [&](int r) {
        const int peer = r ^ 1;
        return peer < hosts ? star::Route{peer, peer} : star::Route{};
    };
    const auto ring = [&](int r) { return star::Route{(r + 1) % hosts, (r + hosts - 1) % hosts}; };
    const auto chain = [&](int r) { // 0 -> 1 -> ... -> H-1: the ends only send or receive
        return star::Route{r + 1 < hosts ? r + 1 : star::Route::no_host,
                           r > 0 ? r - 1 : star::Route::no_host};
    };
    const std::function<star::Route(int)> patterns[] = {pairs, ring, chain};
    for (std::size_t p = 0; p < std::size(patterns); ++p) {
        auto local_routes = local.local<star::Route>();
        auto mpi_routes = mpi.local<star::Route>();
        for (int r = 0; r < hosts; ++r)
            local_routes[r] = patterns[p](r);
        mpi_routes[rank] = patterns[p](rank);
        const auto expected = local.exchange(local_buffers, local_routes);
        const auto blocking = mpi.exchange(mpi_buffers, mpi_routes);
        auto pending = mpi.start_exchange(mpi_buffers, mpi_routes);
        { // an exchange dropped unwaited still completes, and does not disturb the next one
            auto dropped = mpi.start_exchange(mpi_buffers, mpi_routes);
        }
        const auto overlapped = pending.wait();
        const auto same = [&](const std::vector<T>& got) {
            const auto& want = expected[rank];
            return got.size() == want.size() &&
                   (want.empty() || // memcmp must not see the null data() of empty vectors
                    std::memcmp(got.data(), want.data(), sizeof(T) * want.size()) == 0);
        };
        for (const auto* got : {&blocking[rank], &overlapped[rank]}) {
            ++checks;
            if (!same(*got)) {
                ++failures;
                std::cerr << "rank " << rank << ": " << name << " exchange pattern " << p
                          << (got == &blocking[rank] ? " (blocking)" : " (non-blocking)")
                          << " received " << got->size() << " elements unlike in-process\n";
            }
        }
    }
}

// A deadline is reported back as given, none as none, and one that is not positive is
// refused with a message naming it.
void deadline_is_checked(const star::MpiCommunicator& without, const star::MpiCommunicator& with)
{
    const auto expect = [](bool holds, const char* what) {
        ++checks;
        if (!holds) {
            ++failures;
            std::cerr << "deadline: " << what << '\n';
        }
    };
    expect(!without.deadline().has_value(), "a communicator without one reports one");
    expect(with.deadline() == std::chrono::milliseconds(60000), "the deadline reads back wrong");
    for (const auto bad : {std::chrono::milliseconds(0), std::chrono::milliseconds(-5)}) {
        try {
            star::MpiCommunicator refused(MPI_COMM_WORLD, bad);
            expect(false, "a deadline that is not positive was accepted");
        } catch (const star::invalid_argument& e) {
            expect(std::string(e.what()).find("the deadline must be positive, got " +
                                              std::to_string(bad.count()) + " ms") !=
                       std::string::npos,
                   "the message does not name the deadline");
        }
    }
}

} // namespace

int main(int argc, char** argv)
{
    MPI_Init(&argc, &argv);
    const std::string mode = argc > 2 ? argv[1] : "";
    const int chosen_rank = argc > 2 ? std::atoi(argv[2]) : -1;
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    star::run_or_abort(MPI_COMM_WORLD, [&] {
        // `--fail-on-rank R`: rank R throws in the middle of the run while the others wait in
        // a collective for it; the job must end (non-zero, with R's message), not hang.
        if (mode == "--fail-on-rank") {
            star::MpiCommunicator mpi(MPI_COMM_WORLD);
            star_equals_in_process(mpi, star::GatherToQueryHost{}, "star/gather");
            if (rank == chosen_rank)
                throw star::runtime_failure("injected failure");
            star_equals_in_process(mpi, star::AllGather{}, "star/all-gather");
            return;
        }
        // `--mismatch-<setting> R`: rank R is given another value of one setting; every rank
        // must detect it in the agreement and the job must end with that message.
        // `--mismatch-extra-step R` makes R take one decode step more than the others:
        // nobody joins its collective, and its deadline must end the job.
        if (mode.starts_with("--mismatch-")) {
            star::MpiCommunicator mpi(MPI_COMM_WORLD, std::chrono::milliseconds(10000));
            if (mode == "--mismatch-window")
                ring_with_window(mpi, rank == chosen_rank ? 65 : 64);
            else if (mode == "--mismatch-cap")
                star_with_cap(mpi, rank == chosen_rank ? 30.0f : 50.0f);
            else if (mode == "--mismatch-query-type")
                ring_with_query_type(mpi, rank == chosen_rank);
            else if (mode == "--mismatch-ring-layout")
                ring_equals_in_process(
                    mpi, rank == chosen_rank ? star::RingLayout::zigzag : star::RingLayout::plain,
                    "ring");
            else
                star_with_one_rank_changed(mpi, mode.substr(11), chosen_rank);
            return;
        }
        // `--stop-rank R`: rank R stops (SIGSTOP) in the middle of the run; the others'
        // deadline must end the job.
        if (mode == "--stop-rank") {
            star::MpiCommunicator mpi(MPI_COMM_WORLD, std::chrono::milliseconds(5000));
            run_star<Eigen::bfloat16, star::GatherToQueryHost>(mpi, Setting{});
            if (rank == chosen_rank)
                std::raise(SIGSTOP);
            run_star<Eigen::bfloat16, star::GatherToQueryHost>(mpi, Setting{});
            return;
        }
        star::MpiCommunicator mpi(MPI_COMM_WORLD);
        star_equals_in_process(mpi, star::GatherToQueryHost{}, "star/gather");
        star_equals_in_process(mpi, star::AllGather{}, "star/all-gather");
        star_equals_in_process(mpi, star::TreeReduction{}, "star/tree");
        per_host_contexts_equal_in_process<float>(mpi, star::AnchorSource::compute,
                                                  "star/per-host, computed anchor");
        per_host_contexts_equal_in_process<Eigen::bfloat16, Eigen::bfloat16>(
            mpi, star::AnchorSource::receive,
            "star/per-host bf16 with bf16 queries, received anchor");
        // The same with a deadline: every collective is then polled against the clock.
        star::MpiCommunicator patient(MPI_COMM_WORLD, std::chrono::milliseconds(60000));
        deadline_is_checked(mpi, patient);
        star_equals_in_process(patient, star::TreeReduction{}, "star/tree, with a deadline");
        ring_equals_in_process(mpi, star::RingLayout::plain, "ring/plain");
        ring_equals_in_process(mpi, star::RingLayout::zigzag, "ring/zig-zag");
        ring_equals_in_process<Eigen::bfloat16>(mpi, star::RingLayout::zigzag,
                                                "ring/zig-zag, bf16 queries");
        exchanges_equal_in_process<float>(mpi, "float");
        exchanges_equal_in_process<Eigen::bfloat16>(mpi, "bf16");
        exchanges_equal_in_process<float>(patient, "float, with a deadline");
    });
    int total_failures = 0, total_checks = 0;
    MPI_Reduce(&failures, &total_failures, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
    MPI_Reduce(&checks, &total_checks, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
    MPI_Bcast(&total_failures, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (rank == 0)
        std::cout << "MPI vs in-process: " << total_checks - total_failures << " identical, "
                  << total_failures << " different\n";
    MPI_Finalize();
    return total_failures == 0 ? 0 : 1;
}
