#pragma once
/// \file
/// Merge policies: how the partial phase-2 states of the hosts reach the query host.

#include <concepts>
#include <optional>
#include <vector>

#include "../comm/communicator.hpp"
#include "../detail/state_buffer.hpp"
#include "../state.hpp"

namespace star {

/// A Merge policy combines one partial state per host (attention of the same queries over
/// each host's keys) into the exact state over all keys. `combine(comm, partials, root)`
/// is called by every host (it contains collectives); it returns the merged state at
/// `root`, and possibly at other hosts, and nothing elsewhere. Every partial has the same
/// shape.
// clang-format off
template <class M>
concept Merge = std::copy_constructible<M> &&
                requires(const M& m, detail::CommunicatorArchetype& comm,
                         const PerHost<AttentionState>& partials, int root) {
                    {
                        m.combine(comm, partials, root)
                    } -> std::same_as<PerHost<std::optional<AttentionState>>>;
                };
// clang-format on

namespace detail {

template <class C>
PerHost<std::vector<float>> pack_all(C& comm, const PerHost<AttentionState>& partials)
{
    auto buffers = comm.template local<std::vector<float>>();
    comm.for_each_host([&](int rank) { buffers[rank] = pack(partials[rank]); });
    return buffers;
}

inline AttentionState merge_messages(const std::vector<std::vector<float>>& messages, Shape shape)
{
    std::vector<AttentionState> states;
    states.reserve(messages.size());
    for (const auto& m : messages)
        states.push_back(unpack(m, shape));
    return merge(states);
}

} // namespace detail

/// Every host sends its partial to the query host, which merges them in one n-way pass
/// (the paper's Algorithm 2).
struct GatherToQueryHost {
    /// Called by every host; returns the merged state at `root`, nothing elsewhere.
    template <class C>
    PerHost<std::optional<AttentionState>> combine(C& comm, const PerHost<AttentionState>& partials,
                                                   int root) const
    {
        const auto received = comm.gather(detail::pack_all(comm, partials), root);
        auto result = comm.template local<std::optional<AttentionState>>();
        if (result.holds(root))
            result[root] = detail::merge_messages(received[root], partials[root].shape());
        return result;
    }
};

/// Every host receives every partial and merges them all (the authors' reference code);
/// the result is then available on every host.
struct AllGather {
    /// Called by every host; returns the merged state at every host (`root` is not needed).
    template <class C>
    PerHost<std::optional<AttentionState>> combine(C& comm, const PerHost<AttentionState>& partials,
                                                   int) const
    {
        const auto received = comm.all_gather(detail::pack_all(comm, partials));
        auto result = comm.template local<std::optional<AttentionState>>();
        comm.for_each_host([&](int rank) {
            result[rank] = detail::merge_messages(received[rank], partials[rank].shape());
        });
        return result;
    }
};

/// Binary-tree reduction towards the query host in `ceil(log2 H)` point-to-point steps:
/// at step `s`, a host `s` places (relative to the root) above a multiple of `2s` sends its
/// running state down and drops out; the receiver merges it into its own.
struct TreeReduction {
    /// Called by every host; returns the merged state at `root`, nothing elsewhere.
    template <class C>
    PerHost<std::optional<AttentionState>> combine(C& comm, const PerHost<AttentionState>& partials,
                                                   int root) const
    {
        const int hosts = comm.size();
        auto running = comm.template local<AttentionState>();
        comm.for_each_host([&](int rank) { running[rank] = partials[rank]; });
        for (int step = 1; step < hosts; step *= 2) {
            auto routes = comm.template local<Route>();
            auto buffers = comm.template local<std::vector<float>>();
            comm.for_each_host([&](int rank) {
                const int relative = (rank - root + hosts) % hosts;
                if (relative % (2 * step) == step) {
                    routes[rank].send_to = (relative - step + root) % hosts;
                    buffers[rank] = detail::pack(running[rank]);
                } else if (relative % (2 * step) == 0 && relative + step < hosts) {
                    routes[rank].receive_from = (relative + step + root) % hosts;
                }
            });
            const auto received = comm.exchange(buffers, routes);
            comm.for_each_host([&](int rank) {
                if (routes[rank].receive_from != Route::no_host)
                    merge_into(running[rank], detail::unpack(received[rank], running[rank].shape()));
            });
        }
        auto result = comm.template local<std::optional<AttentionState>>();
        if (result.holds(root))
            result[root] = std::move(running[root]);
        return result;
    }
};

static_assert(Merge<GatherToQueryHost>);
static_assert(Merge<AllGather>);
static_assert(Merge<TreeReduction>);

} // namespace star
