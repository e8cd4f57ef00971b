#pragma once
/// \file
/// A cluster modelled on one machine: a communicator adapter that keeps a simulated clock
/// per host, advanced by each host's measured compute and by a cost model of every message.
///
/// Every host's step runs on the calling thread, one host after the other, in a one-thread
/// oneTBB arena (so a host's own parallelism runs there too), and is timed: as if each host
/// had one core of this machine to itself, whatever the number of hosts. Each message costs
/// `latency + bytes / bandwidth` (the alpha-beta model) and moves no clock backwards; a
/// receiver waits for what it receives. The data itself moves through the inner
/// communicator, so results are those of the inner one, bit for bit. The critical path of a
/// run, what a cluster of such hosts and links would take, is the latest clock
/// (`simulated_seconds`).
///
/// Collectives are modelled as common MPI implementations run them (Thakur, Rabenseifner,
/// Gropp 2005): a broadcast along a binomial tree, a gather as the root receiving one message
/// after another through one link, an all-gather along a ring, a barrier as `ceil(log2 H)`
/// rounds of latency. A point-to-point exchange started with `start_exchange` travels while
/// the receiver computes, so ring attention's overlap is modelled as it is run.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include <tbb/task_arena.h>

#include "communicator.hpp"
#include "local.hpp"

namespace star {

/// What one link between two hosts costs a message: `latency_seconds + bytes /
/// bytes_per_second`.
struct LinkModel {
    double latency_seconds = 0.0;  ///< Per message, e.g. 5e-6 for 5 microseconds.
    double bytes_per_second = 0.0; ///< e.g. 1.25e9 for 10 Gbit/s.

    /// Seconds a message of `bytes` takes.
    [[nodiscard]] double seconds(std::size_t bytes) const noexcept
    {
        return latency_seconds + static_cast<double>(bytes) / bytes_per_second;
    }
};

/// A `Communicator` over `Inner` (every host of which must be in this process) that models
/// a cluster: see the file's comment. Not thread-safe, like the communicators it wraps.
template <Communicator Inner = LocalCommunicator>
class SimulatedCluster {
public:
    /// Hosts of `inner`, linked by `link`; each host's measured compute time is divided by
    /// `compute_speedup` (2: hosts twice as fast as one core here).
    /// \throws star::error if `inner` does not run every host in this process, or if the
    /// latency is negative or not finite, the bandwidth or the speedup not positive and
    /// finite.
    SimulatedCluster(Inner& inner, LinkModel link, double compute_speedup = 1.0)
        : inner_(inner), link_(link), speedup_(compute_speedup), arena_(1)
    {
        const PerHost<int> all = inner.template local<int>();
        if (all.first_rank() != 0 || all.end_rank() != inner.size())
            detail::fail("SimulatedCluster: the inner communicator must run every host in this "
                         "process; it runs hosts [",
                         all.first_rank(), ", ", all.end_rank(), ") of ", inner.size());
        if (!(std::isfinite(link.latency_seconds) && link.latency_seconds >= 0.0))
            detail::fail("SimulatedCluster: the latency must be finite and not negative, got ",
                         link.latency_seconds);
        if (!(std::isfinite(link.bytes_per_second) && link.bytes_per_second > 0.0))
            detail::fail("SimulatedCluster: the bandwidth must be finite and positive, got ",
                         link.bytes_per_second);
        if (!(std::isfinite(compute_speedup) && compute_speedup > 0.0))
            detail::fail("SimulatedCluster: the compute speedup must be finite and positive, got ",
                         compute_speedup);
        const auto hosts = static_cast<std::size_t>(inner.size());
        clock_.assign(hosts, 0.0);
        compute_.assign(hosts, 0.0);
        sent_.assign(hosts, 0);
        link_free_.assign(hosts, 0.0);
    }

    /// Number of hosts.
    [[nodiscard]] int size() const { return inner_.size(); }

    /// As the inner communicator's.
    template <class T>
    [[nodiscard]] PerHost<T> local() const
    {
        return inner_.template local<T>();
    }

    /// Runs `step` for every host, one after the other on this thread in a one-thread
    /// arena, and advances each host's clock by its time.
    template <class F>
    void for_each_host(F&& step)
    {
        // Every host is in this process, so the steps are called here, not through the
        // inner communicator, which might run them at once and blur their times.
        std::vector<double> took(clock_.size(), 0.0);
        arena_.execute([&] {
            for (int rank = 0; rank < size(); ++rank) {
                const auto start = std::chrono::steady_clock::now();
                step(rank);
                took[static_cast<std::size_t>(rank)] =
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() /
                    speedup_;
            }
        });
        for (std::size_t r = 0; r < took.size(); ++r) {
            clock_[r] += took[r];
            compute_[r] += took[r];
        }
    }

    /// A binomial tree from `root`: each host forwards to its subtrees, one message after
    /// another, once it has the data and has reached the broadcast.
    template <Message T>
    void broadcast(PerHost<std::vector<T>>& buffers, int root)
    {
        const std::size_t bytes = buffers[root].size() * sizeof(T);
        inner_.broadcast(buffers, root);
        const int hosts = size();
        const auto at = [&](int relative) -> double& {
            return clock_[static_cast<std::size_t>((relative + root) % hosts)];
        };
        int span = 1;
        while (span < hosts)
            span *= 2;
        // Relative rank 0 holds the data; in round `span / 2, span / 4, ...` every holder
        // `r` sends to `r + half`, after its earlier sends.
        for (int half = span / 2; half >= 1; half /= 2)
            for (int r = 0; r + half < hosts; r += 2 * half) {
                const double arrival = at(r) + link_.seconds(bytes);
                at(r) = arrival;
                at(r + half) = std::max(at(r + half), arrival);
                sent_[static_cast<std::size_t>((r + root) % hosts)] += bytes;
            }
    }

    /// The root receives every other host's message through its one link, in the order the
    /// senders are ready; a sender is done when its message has left.
    template <Message T>
    PerHost<std::vector<std::vector<T>>> gather(const PerHost<std::vector<T>>& buffers, int root)
    {
        std::vector<int> senders;
        for (int r = 0; r < size(); ++r)
            if (r != root)
                senders.push_back(r);
        std::sort(senders.begin(), senders.end(), [&](int a, int b) {
            return clock_[static_cast<std::size_t>(a)] < clock_[static_cast<std::size_t>(b)];
        });
        double link_free = clock_[static_cast<std::size_t>(root)];
        for (const int r : senders) {
            const auto s = static_cast<std::size_t>(r);
            const std::size_t bytes = buffers[r].size() * sizeof(T);
            const double start = std::max(link_free, clock_[s]);
            link_free = start + link_.seconds(bytes);
            clock_[s] = link_free;
            sent_[s] += bytes;
        }
        clock_[static_cast<std::size_t>(root)] = link_free;
        return inner_.gather(buffers, root);
    }

    /// A ring: `H - 1` steps once every host is there, each host receiving every other
    /// host's message.
    template <Message T>
    PerHost<std::vector<std::vector<T>>> all_gather(const PerHost<std::vector<T>>& buffers)
    {
        const double start = *std::max_element(clock_.begin(), clock_.end());
        std::size_t total = 0;
        for (int r = 0; r < size(); ++r)
            total += buffers[r].size() * sizeof(T);
        for (int r = 0; r < size(); ++r) {
            const auto s = static_cast<std::size_t>(r);
            const std::size_t own = buffers[r].size() * sizeof(T);
            clock_[s] = start + (size() - 1) * link_.latency_seconds +
                        static_cast<double>(total - own) / link_.bytes_per_second;
            sent_[s] += total - own; // a ring passes on every other host's message
        }
        return inner_.all_gather(buffers);
    }

    /// Each message leaves when its sender reaches the exchange and arrives a link's time
    /// later; a receiver waits for it.
    template <Message T>
    PerHost<std::vector<T>> exchange(const PerHost<std::vector<T>>& buffers,
                                     const PerHost<Route>& routes)
    {
        return start_exchange(buffers, routes).wait();
    }

    /// What `start_exchange` returns: the data has moved (in-process), the receivers' clocks
    /// wait for it in `wait()`, after whatever the hosts computed meanwhile.
    template <Message T>
    class PendingExchange {
    public:
        /// The received buffers, each receiver's clock moved to its message's arrival if
        /// that is later.
        PerHost<std::vector<T>> wait()
        {
            for (std::size_t r = 0; r < arrival_.size(); ++r)
                cluster_->clock_[r] = std::max(cluster_->clock_[r], arrival_[r]);
            return std::move(received_);
        }

    private:
        friend class SimulatedCluster;
        PendingExchange(SimulatedCluster* cluster, PerHost<std::vector<T>> received,
                        std::vector<double> arrival)
            : cluster_(cluster), received_(std::move(received)), arrival_(std::move(arrival))
        {
        }
        SimulatedCluster* cluster_;
        PerHost<std::vector<T>> received_;
        std::vector<double> arrival_;
    };

    /// Starts the exchange now: each message leaves at its sender's clock, or once the
    /// sender's link has finished sending the messages it started before (Ring's K and V of
    /// one step share the link: the second leaves when the first has left).
    template <Message T>
    PendingExchange<T> start_exchange(const PerHost<std::vector<T>>& buffers,
                                      const PerHost<Route>& routes)
    {
        auto received = inner_.exchange(buffers, routes); // checks the routes
        std::vector<double> arrival(clock_.size(), 0.0);
        for (int r = 0; r < size(); ++r) {
            const int from = routes[r].receive_from;
            if (from == Route::no_host)
                continue;
            const auto sender = static_cast<std::size_t>(from);
            const std::size_t bytes = buffers[from].size() * sizeof(T);
            const double leaves = std::max(clock_[sender], link_free_[sender]);
            link_free_[sender] = leaves + static_cast<double>(bytes) / link_.bytes_per_second;
            arrival[static_cast<std::size_t>(r)] = leaves + link_.seconds(bytes);
            sent_[sender] += bytes;
        }
        return PendingExchange<T>(this, std::move(received), std::move(arrival));
    }

    /// Dissemination: `ceil(log2 H)` rounds of latency once every host is there.
    void barrier()
    {
        inner_.barrier();
        const double start = *std::max_element(clock_.begin(), clock_.end());
        const double rounds = std::ceil(std::log2(static_cast<double>(size())));
        std::fill(clock_.begin(), clock_.end(), start + rounds * link_.latency_seconds);
    }

    /// The latest host clock: what the run so far would take on the modelled cluster, s.
    [[nodiscard]] double simulated_seconds() const
    {
        return *std::max_element(clock_.begin(), clock_.end());
    }
    /// Host `rank`'s clock, s.
    [[nodiscard]] double clock(int rank) const { return clock_.at(static_cast<std::size_t>(rank)); }
    /// Host `rank`'s measured compute so far (divided by the speedup), s.
    [[nodiscard]] double compute_seconds(int rank) const
    {
        return compute_.at(static_cast<std::size_t>(rank));
    }
    /// Payload bytes host `rank` has sent so far (a forwarded broadcast counts at each hop).
    [[nodiscard]] std::uint64_t bytes_sent(int rank) const
    {
        return sent_.at(static_cast<std::size_t>(rank));
    }
    /// Every clock, compute time and byte count back to zero.
    void reset()
    {
        std::fill(clock_.begin(), clock_.end(), 0.0);
        std::fill(compute_.begin(), compute_.end(), 0.0);
        std::fill(sent_.begin(), sent_.end(), 0);
        std::fill(link_free_.begin(), link_free_.end(), 0.0);
    }

private:
    Inner& inner_;
    LinkModel link_;
    double speedup_;
    tbb::task_arena arena_;
    std::vector<double> clock_;   // seconds, per host
    std::vector<double> compute_; // seconds, per host
    std::vector<std::uint64_t> sent_;
    std::vector<double> link_free_; // seconds: when each host's link has sent what it started
};

} // namespace star
