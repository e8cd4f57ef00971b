#pragma once
/// \file
/// The communicator concept: how the hosts of a distributed algorithm move data.
///
/// Algorithms are written once, in bulk-synchronous steps, for "the hosts this process
/// runs": every host in-process (comm/local.hpp), one host per MPI rank (comm/mpi.hpp).
/// A step is either local work, run for every local host by `for_each_host`, or a
/// collective that every host reaches at the same point of the algorithm. Per-host data
/// lives in `PerHost<T>`, which holds one value for each local host. Nothing ever blocks
/// inside `for_each_host` waiting for another host, so any number of hosts runs on any
/// number of cores without deadlock.

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <span>
#include <string_view>
#include <typeinfo>
#include <type_traits>
#include <utility>
#include <vector>

#include "../error.hpp"
#include "../tensor.hpp" // Eigen::bfloat16 and Eigen::half, after simd/target.hpp

namespace star {

/// One value for each host this process runs: hosts `[first_rank, first_rank + count)`.
template <class T>
class PerHost {
public:
    /// No hosts.
    PerHost() = default;
    /// `count` copies of `value`, for hosts `[first_rank, first_rank + count)`. Usually made
    /// by a communicator's `local<T>()` rather than directly.
    PerHost(int first_rank, int count, const T& value = T{})
        : first_rank_(first_rank), values_(static_cast<std::size_t>(count), value)
    {
    }

    /// Rank of the first host held.
    [[nodiscard]] int first_rank() const noexcept { return first_rank_; }
    /// Number of hosts held.
    [[nodiscard]] int count() const noexcept { return static_cast<int>(values_.size()); }
    /// One past the rank of the last host held.
    [[nodiscard]] int end_rank() const noexcept { return first_rank_ + count(); }
    /// Whether this process runs host `rank` (holds a value for it).
    [[nodiscard]] bool holds(int rank) const noexcept
    {
        return rank >= first_rank_ && rank < end_rank();
    }

    /// The value of host `rank`, which must be local.
    /// \throws star::error if `holds(rank)` is false.
    T& operator[](int rank)
    {
        check(rank);
        return values_[static_cast<std::size_t>(rank - first_rank_)];
    }
    /// The value of host `rank`, which must be local.
    /// \throws star::error if `holds(rank)` is false.
    const T& operator[](int rank) const
    {
        check(rank);
        return values_[static_cast<std::size_t>(rank - first_rank_)];
    }

private:
    void check(int rank) const
    {
        if (!holds(rank))
            detail::fail("PerHost: host ", rank, " is not run by this process (it runs hosts [",
                         first_rank_, ", ", end_rank(), "))");
    }

    int first_rank_ = 0;
    std::vector<T> values_;
};

/// Where one host sends and from where it receives in a point-to-point step;
/// `no_host` for neither.
struct Route {
    static constexpr int no_host = -1; ///< No peer: nothing sent, or nothing received.
    int send_to = no_host;             ///< Rank this host sends its buffer to.
    int receive_from = no_host;        ///< Rank this host receives from.
};

/// Element types that may travel in a message: copied as bytes, never converted, so bf16
/// and half K/V travel as they are stored.
template <class T>
concept Message = std::is_trivially_copyable_v<T>;

/// The collectives of a `Communicator` over messages of type `T` (see there).
// clang-format off
template <class C, class T>
concept CollectivesOf =
    requires(C& c, PerHost<std::vector<T>>& buffers, const PerHost<Route>& routes) {
        c.broadcast(buffers, 0);
        { c.gather(buffers, 0) } -> std::same_as<PerHost<std::vector<std::vector<T>>>>;
        { c.all_gather(buffers) } -> std::same_as<PerHost<std::vector<std::vector<T>>>>;
        { c.exchange(buffers, routes) } -> std::same_as<PerHost<std::vector<T>>>;
    };
// clang-format on

/// A group of `size()` hosts, ranks `0..size()-1`, of which this process runs
/// `[local.first_rank(), local.end_rank())` for any `PerHost local` it hands out.
///
/// - `size()`: number of hosts.
/// - `local<T>()`: a `PerHost<T>` over the hosts this process runs, values default-built.
/// - `for_each_host(f)`: calls `f(rank)` once for every local host, possibly concurrently,
///   and returns when all calls have; an exception from any call is rethrown. `f` may use
///   parallelism itself but must not call the communicator.
/// - Collectives, which every host of the group reaches in the same order (data travels as
///   `std::vector<T>` of a `Message` type T; a receiving host's vector is resized to what
///   arrives):
///   - `broadcast(buffers, root)`: every host's buffer becomes a copy of `root`'s.
///   - `gather(buffers, root)`: `root` receives all `size()` buffers in rank order; other
///     hosts receive nothing.
///   - `all_gather(buffers)`: every host receives all `size()` buffers in rank order.
///   - `exchange(buffers, routes)`: every host sends its buffer to `routes[r].send_to`
///     and receives into the result from `routes[r].receive_from`; routes must pair up
///     (if `a` sends to `b`, `b` receives from `a`). Used for the ring and tree steps.
///   - `barrier()`.
/// The collectives must move every message type the algorithms send (`CollectivesOf`):
/// partial states as `float`, K/V as `float`, bf16 or half, the configuration agreement as
/// `std::int64_t`. A communicator that moves only `float` is rejected here, not deep inside
/// an algorithm; implementations usually take any `Message` type.
// clang-format off
template <class C>
concept Communicator =
    requires(C& c, const C& cc, std::function<void(int)> step) {
        { cc.size() } -> std::same_as<int>;
        { cc.template local<int>() } -> std::same_as<PerHost<int>>;
        c.for_each_host(step);
        c.barrier();
    } && CollectivesOf<C, float> && CollectivesOf<C, Eigen::bfloat16> &&
    CollectivesOf<C, Eigen::half> && CollectivesOf<C, std::int64_t>;
// clang-format on

/// Optional, for overlapping communication with compute: a communicator may also provide
/// `start_exchange(buffers, routes)`, which starts the same exchange as `exchange` and
/// returns at once a handle whose `wait()` returns what `exchange` would have. Between the
/// two the caller computes; `buffers` must stay alive and unchanged until `wait()` returns.
/// Every host starts and waits for its exchanges in the same order. A handle destroyed
/// without `wait()` still completes its exchange first (the peers have posted theirs).
/// Algorithms reach it through `detail::start_exchange`, which falls back to `exchange`.
// clang-format off
template <class C>
concept OverlappingExchange =
    Communicator<C> && requires(C& c, const PerHost<std::vector<float>>& buffers,
                                const PerHost<Route>& routes) {
        { c.start_exchange(buffers, routes).wait() } -> std::same_as<PerHost<std::vector<float>>>;
    };
// clang-format on

namespace detail {

/// The least a Communicator provides, for checking concepts that take one (a Merge policy
/// must work with every communicator, so it is checked against this stand-in). Declared
/// only: it is never called.
struct CommunicatorArchetype {
    [[nodiscard]] int size() const;
    template <class T>
    [[nodiscard]] PerHost<T> local() const;
    template <class F>
    void for_each_host(F&& step);
    template <Message T>
    void broadcast(PerHost<std::vector<T>>& buffers, int root);
    template <Message T>
    PerHost<std::vector<std::vector<T>>> gather(const PerHost<std::vector<T>>& buffers, int root);
    template <Message T>
    PerHost<std::vector<std::vector<T>>> all_gather(const PerHost<std::vector<T>>& buffers);
    template <Message T>
    PerHost<std::vector<T>> exchange(const PerHost<std::vector<T>>& buffers,
                                     const PerHost<Route>& routes);
    void barrier();
};
static_assert(Communicator<CommunicatorArchetype>);

/// A setting a host cannot know (the shape of a context it holds no piece of): it agrees
/// with any value.
inline constexpr std::int64_t unknown_setting = std::numeric_limits<std::int64_t>::min();

/// A setting that is a float, compared by its bits (-1 when unset).
inline std::int64_t float_setting(std::optional<float> value)
{
    if (!value)
        return -1;
    std::uint32_t bits = 0;
    std::memcpy(&bits, &*value, sizeof bits);
    return bits;
}

/// A setting that says which type `T` a host was compiled with (a policy, a variant), for
/// `check_agreement`. Every rank of a job runs the same program, so the same type has the
/// same name.
template <class T>
std::int64_t type_digest()
{
    return static_cast<std::int64_t>(std::hash<std::string_view>{}(typeid(T).name()));
}

/// Checks that every host of the group was given the same configuration: `settings[r]`
/// holds host `r`'s values of the settings named by `names` (`unknown_setting` where it
/// has none). Host 0 gathers them and broadcasts its verdict, so each host throws the
/// same `star::error`, naming the first setting on which two hosts disagree, and no host
/// is left waiting for the others. In-process this copies O(hosts) values, where an
/// all-gather would copy O(hosts^2).
template <class C>
void check_agreement(C& comm, const PerHost<std::vector<std::int64_t>>& settings,
                     std::span<const char* const> names, const char* where)
{
    constexpr int root = 0;
    const auto all = comm.gather(settings, root);
    // The verdict: empty, or {setting, host a, its value, host b, its value}.
    auto verdict = comm.template local<std::vector<std::int64_t>>();
    if (verdict.holds(root)) {
        const auto& hosts = all[root];
        for (std::size_t i = 0; i < names.size() && verdict[root].empty(); ++i) {
            const auto value = [&](std::size_t h) {
                return i < hosts[h].size() ? hosts[h][i] : unknown_setting;
            };
            std::size_t first = 0; // the first host that knows setting i
            while (first < hosts.size() && value(first) == unknown_setting)
                ++first;
            for (std::size_t h = first + 1; h < hosts.size(); ++h)
                if (value(h) != unknown_setting && value(h) != value(first)) {
                    verdict[root] = {static_cast<std::int64_t>(i), static_cast<std::int64_t>(first),
                                     value(first), static_cast<std::int64_t>(h), value(h)};
                    break;
                }
        }
    }
    comm.broadcast(verdict, root);
    for (int r = verdict.first_rank(); r < verdict.end_rank(); ++r)
        if (const auto& v = verdict[r]; v.size() == 5)
            fail(where, ": the hosts disagree on ", names[static_cast<std::size_t>(v[0])],
                 ": host ", v[1], " has ", v[2], ", host ", v[3], " has ", v[4]);
}

/// `check_agreement` carried by a message the step sends anyway: each host sends a digest of
/// its settings (every one known) followed by `payload` (what the step would otherwise
/// broadcast), in one all-gather. When the digests are equal that is all it costs; when two
/// differ, every host sees so in the same gathered values, and all run `check_agreement`,
/// which throws naming the setting. Returns every host's payload in rank order, at each
/// local host. A digest is a polynomial in the settings with an odd base, so settings that
/// differ in one place always give different digests.
template <class C>
PerHost<std::vector<std::vector<std::int64_t>>> check_agreement_in_step(
    C& comm, const PerHost<std::vector<std::int64_t>>& settings,
    const PerHost<std::vector<std::int64_t>>& payload, std::span<const char* const> names,
    const char* where)
{
    auto sent = comm.template local<std::vector<std::int64_t>>();
    for (int r = sent.first_rank(); r < sent.end_rank(); ++r) {
        std::uint64_t digest = 0; // unsigned: wrapping is intended
        for (const std::int64_t setting : settings[r])
            digest = digest * 1000003 + static_cast<std::uint64_t>(setting);
        sent[r].reserve(payload[r].size() + 1);
        sent[r].push_back(static_cast<std::int64_t>(digest));
        sent[r].insert(sent[r].end(), payload[r].begin(), payload[r].end());
    }
    auto all = comm.all_gather(sent);
    const auto& seen = all[all.first_rank()];
    const bool agreed = std::all_of(seen.begin(), seen.end(), [&](const auto& host) {
        return !host.empty() && !seen.front().empty() && host.front() == seen.front().front();
    });
    if (!agreed) {
        check_agreement(comm, settings, names, where);
        fail_at_runtime(where, ": the hosts' settings digests differ, yet every setting agrees");
    }
    for (int r = all.first_rank(); r < all.end_rank(); ++r)
        for (auto& host : all[r])
            host.erase(host.begin());
    return all;
}

/// An exchange that has already happened, for communicators without `start_exchange`.
template <Message T>
class CompletedExchange {
public:
    explicit CompletedExchange(PerHost<std::vector<T>> received) : received_(std::move(received)) {}
    PerHost<std::vector<T>> wait() { return std::move(received_); }

private:
    PerHost<std::vector<T>> received_;
};

/// Starts `comm.exchange(buffers, routes)` so that it can travel while the caller
/// computes, where the communicator can (`OverlappingExchange`); otherwise exchanges now.
/// Either way `.wait()` on the result returns what was received.
template <Message T, class C>
auto start_exchange(C& comm, const PerHost<std::vector<T>>& buffers, const PerHost<Route>& routes)
{
    if constexpr (requires { comm.start_exchange(buffers, routes).wait(); })
        return comm.start_exchange(buffers, routes);
    else
        return CompletedExchange<T>(comm.exchange(buffers, routes));
}

/// Rejects a rank outside `[0, size)` with a message naming `what`.
inline void check_rank(int rank, int size, const char* what)
{
    if (rank < 0 || rank >= size)
        fail(what, " ", rank, " is out of range: the group has ", size, " hosts (ranks 0..",
             size - 1, ")");
}

} // namespace detail
} // namespace star
