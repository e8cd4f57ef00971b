#pragma once
/// \file
/// In-process hosts: every host is a TBB task with its own state, in one address space.
///
/// Local work runs as one TBB task per host, so 64 hosts share 2 cores without trouble:
/// no task ever waits for another (collectives happen between steps, on the calling
/// thread, where they are plain moves of buffers between hosts).

#include <atomic>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include <tbb/task_arena.h>

#include "../detail/parallel.hpp"
#include "communicator.hpp"

namespace star {

/// `hosts` in-process hosts, ranks `0..hosts-1`, all run by this process.
///
/// One communicator serves one thread at a time, like the algorithm run it carries: give
/// each thread its own. A call made while another is running on the same communicator
/// (from a second thread, or from inside a `for_each_host` step) throws `star::error`
/// instead of racing.
class LocalCommunicator {
public:
    /// A group of `hosts` hosts.
    /// \param max_threads caps the threads host tasks may use (0: TBB's default).
    /// \throws star::error if `hosts` is less than 1 or `max_threads` is negative.
    explicit LocalCommunicator(int hosts, int max_threads = 0) : size_(hosts)
    {
        if (hosts <= 0)
            detail::fail("LocalCommunicator: the number of hosts must be at least 1, got ", hosts);
        if (max_threads < 0)
            detail::fail("LocalCommunicator: max_threads must be 0 (default) or positive, got ",
                         max_threads);
        if (max_threads > 0) {
            arena_.emplace(max_threads);
            // Now rather than at first use: oneTBB's lazy initialisation, interrupted by
            // std::bad_alloc, leaves the arena "being initialised" and every later use spins
            // forever. Failing here, the communicator is never made.
            arena_->initialize();
        }
    }

    /// Number of hosts.
    [[nodiscard]] int size() const noexcept { return size_; }

    /// One default-built `T` for every host: this process runs them all.
    template <class T>
    [[nodiscard]] PerHost<T> local() const
    {
        return PerHost<T>(0, size_);
    }

    /// Runs `step(rank)` for every host as oneTBB tasks (in the arena capped by
    /// `max_threads`, if one was given) and returns when all have; an exception thrown by a
    /// step is rethrown here.
    /// (`step` is type-erased, as detail::parallel_for's body is, so that the arena and the
    /// loop are compiled once, not once per caller.)
    void for_each_host(const std::function<void(int)>& step)
    {
        const InUse in_use(busy_, "for_each_host");
        const std::function<void()> run = [&] {
            detail::parallel_for(0, size_, [&](index rank) { step(static_cast<int>(rank)); });
        };
        if (arena_)
            arena_->execute(run);
        else
            run();
    }

    /// Copies `root`'s buffer to every other host.
    /// \throws star::error if `root` is out of range or `buffers` is not over all hosts.
    template <Message T>
    void broadcast(PerHost<std::vector<T>>& buffers, int root)
    {
        const InUse in_use(busy_, "broadcast");
        check_local(buffers, "broadcast");
        detail::check_rank(root, size_, "broadcast: root");
        for (int r = 0; r < size_; ++r)
            if (r != root)
                buffers[r] = buffers[root];
    }

    /// `root` receives a copy of every host's buffer, in rank order; the others receive
    /// nothing.
    /// \throws star::error if `root` is out of range or `buffers` is not over all hosts.
    template <Message T>
    PerHost<std::vector<std::vector<T>>> gather(const PerHost<std::vector<T>>& buffers, int root)
    {
        const InUse in_use(busy_, "gather");
        check_local(buffers, "gather");
        detail::check_rank(root, size_, "gather: root");
        auto received = local<std::vector<std::vector<T>>>();
        received[root].reserve(static_cast<std::size_t>(size_));
        for (int r = 0; r < size_; ++r)
            received[root].push_back(buffers[r]);
        return received;
    }

    /// Every host receives a copy of every host's buffer, in rank order.
    /// \throws star::error if `buffers` is not over all hosts.
    template <Message T>
    PerHost<std::vector<std::vector<T>>> all_gather(const PerHost<std::vector<T>>& buffers)
    {
        const InUse in_use(busy_, "all_gather");
        check_local(buffers, "all_gather");
        std::vector<std::vector<T>> all;
        all.reserve(static_cast<std::size_t>(size_));
        for (int r = 0; r < size_; ++r)
            all.push_back(buffers[r]);
        auto received = local<std::vector<std::vector<T>>>();
        for (int r = 0; r < size_; ++r)
            received[r] = all;
        return received;
    }

    /// Each host receives a copy of the buffer of `routes[rank].receive_from` (an empty
    /// vector when it receives from no host).
    /// \throws star::error if `buffers` or `routes` is not over all hosts, a route names a
    /// rank out of range, or the routes do not pair up.
    template <Message T>
    PerHost<std::vector<T>> exchange(const PerHost<std::vector<T>>& buffers,
                                     const PerHost<Route>& routes)
    {
        const InUse in_use(busy_, "exchange");
        check_local(buffers, "exchange");
        check_local(routes, "exchange");
        for (int r = 0; r < size_; ++r) {
            const Route route = routes[r];
            if (route.send_to != Route::no_host) {
                detail::check_rank(route.send_to, size_, "exchange: destination");
                if (routes[route.send_to].receive_from != r)
                    detail::fail("exchange: host ", r, " sends to host ", route.send_to,
                                 ", which does not receive from it");
            }
            if (route.receive_from != Route::no_host) {
                detail::check_rank(route.receive_from, size_, "exchange: source");
                if (routes[route.receive_from].send_to != r)
                    detail::fail("exchange: host ", r, " receives from host ", route.receive_from,
                                 ", which does not send to it");
            }
        }
        auto received = local<std::vector<T>>();
        for (int r = 0; r < size_; ++r)
            if (routes[r].receive_from != Route::no_host)
                received[r] = buffers[routes[r].receive_from];
        return received;
    }

    /// Does nothing: every step of this communicator already ends only when all hosts have
    /// finished it.
    void barrier() noexcept {}

private:
    template <class T>
    void check_local(const PerHost<T>& values, const char* where) const
    {
        if (values.first_rank() != 0 || values.count() != size_)
            detail::fail(where, ": expected one value for each of the ", size_,
                         " hosts, got hosts [", values.first_rank(), ", ", values.end_rank(), ")");
    }

    // Set while a call runs. A copy of the communicator is a new one, not busy.
    struct BusyFlag {
        std::atomic<bool> value{false};
        BusyFlag() = default;
        BusyFlag(const BusyFlag&) noexcept {}
        BusyFlag& operator=(const BusyFlag&) noexcept { return *this; }
    };

    // Marks the communicator busy for one call, or throws if it already is.
    class InUse {
    public:
        InUse(BusyFlag& flag, const char* call) : flag_(flag)
        {
            if (flag_.value.exchange(true, std::memory_order_acquire))
                detail::fail("LocalCommunicator::", call,
                             ": another call on this communicator "
                             "is running (from another thread, or from inside a for_each_host "
                             "step); give each thread its own communicator");
        }
        ~InUse() { flag_.value.store(false, std::memory_order_release); }
        InUse(const InUse&) = delete;
        InUse& operator=(const InUse&) = delete;

    private:
        BusyFlag& flag_;
    };

    int size_;
    std::optional<tbb::task_arena> arena_;
    BusyFlag busy_;
};

static_assert(Communicator<LocalCommunicator>);

} // namespace star
