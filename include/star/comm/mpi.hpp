#pragma once
/// \file
/// A communicator over MPI: one host per rank of an `MPI_Comm` the user gives.
///
/// Optional: only this header needs MPI. The algorithms run over it unchanged: a
/// `PerHost<T>` here holds the one host this process runs, `for_each_host` runs its step
/// on the calling thread, and the collectives are MPI's. Messages travel as the bytes of
/// their element type (bf16/half K/V as stored, never converted).

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

// Only MPI's C API is used; Open MPI's and MPICH's deprecated C++ bindings would just add
// warnings (invalid function casts) to every user's build.
#ifndef OMPI_SKIP_MPICXX
/// Open MPI's switch: defined to 1 here, unless already defined, before `<mpi.h>` is
/// included, so that Open MPI leaves out its deprecated C++ bindings. It stays defined in
/// the including translation unit: where this header is the first to include `<mpi.h>`,
/// the C++ bindings (`MPI::`) are not available; MPI's C API is.
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
/// MPICH's switch, as `OMPI_SKIP_MPICXX` is Open MPI's: defined to 1 here, unless already
/// defined, so that MPICH leaves out its deprecated C++ bindings.
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include "communicator.hpp"

namespace star {

/// A `Communicator` over MPI: the group is the ranks of an `MPI_Comm`, and this process runs
/// one host, the one whose rank is its MPI rank. Every rank must make the same sequence of
/// collective calls. An MPI call that returns an error (under an error handler such as
/// `MPI_ERRORS_RETURN`; MPI's default handler aborts the job itself) is reported as a
/// `star::error` naming the call. Wrap each rank's work in `run_or_abort`, so that a rank
/// that throws ends the job instead of leaving the others waiting.
///
/// A rank that stops (a crash MPI does not notice, SIGSTOP, a deadlock) or that makes a
/// different sequence of calls than the others (one decode step more) leaves them waiting
/// forever. Given a deadline, a rank that has waited that long in one collective prints
/// which one and ends the job with `MPI_Abort`. The deadline must exceed the longest time a
/// rank may compute while the others already wait for it (a phase of the slowest host).
class MpiCommunicator {
    // An MPI datatype of sizeof(T) bytes, so counts are in elements.
    template <class T>
    struct Elements {
        MPI_Datatype handle{};
        Elements()
        {
            check(MPI_Type_contiguous(static_cast<int>(sizeof(T)), MPI_BYTE, &handle),
                  "MPI_Type_contiguous");
            check(MPI_Type_commit(&handle), "MPI_Type_commit");
        }
        ~Elements() { MPI_Type_free(&handle); }
        Elements(const Elements&) = delete;
        Elements& operator=(const Elements&) = delete;
    };

    // How a rank waits for its requests: copied into an exchange in flight, which may
    // outlive the communicator object that started it.
    struct Waiter {
        MPI_Comm comm;
        int rank;
        std::chrono::milliseconds deadline; // zero: none

        // Waits for both requests; past the deadline, ends the job. Returns MPI's code.
        int wait_for(MPI_Request (&requests)[2], const char* call) const
        {
            if (deadline == std::chrono::milliseconds::zero())
                return MPI_Waitall(2, requests, MPI_STATUSES_IGNORE);
            const auto give_up = std::chrono::steady_clock::now() + deadline;
            // Polls often at first (most collectives end within microseconds), then at most
            // every millisecond, so that a long wait does not take a core from the others.
            auto pause = std::chrono::microseconds(1);
            for (;;) {
                int done = 0;
                if (const int code = MPI_Testall(2, requests, &done, MPI_STATUSES_IGNORE);
                    code != MPI_SUCCESS || done)
                    return code;
                if (std::chrono::steady_clock::now() >= give_up) {
                    std::fprintf(stderr,
                                 "star: rank %d waited more than %lld ms in %s, a collective "
                                 "some rank has not joined (it stopped, failed, or made other "
                                 "calls); ending the job\n",
                                 rank, static_cast<long long>(deadline.count()), call);
                    std::fflush(stderr);
                    MPI_Abort(comm, 1);
                    std::terminate(); // MPI_Abort does not return
                }
                std::this_thread::sleep_for(pause);
                pause = std::min<std::chrono::microseconds>(2 * pause, std::chrono::milliseconds(1));
            }
        }
    };

public:
    /// `comm` stays the caller's (not duplicated, not freed); MPI must be initialised.
    /// Collectives wait as long as it takes.
    /// \throws star::error if MPI is not initialised or an MPI call fails.
    explicit MpiCommunicator(MPI_Comm comm) : comm_(comm)
    {
        int initialised = 0;
        MPI_Initialized(&initialised);
        if (!initialised)
            detail::fail("MpiCommunicator: MPI is not initialised (call MPI_Init first)");
        check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
        check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    }

    /// As above, but a rank that waits longer than `deadline` in one collective ends the job.
    /// \throws star::error if MPI is not initialised, an MPI call fails or the deadline is
    /// not positive.
    MpiCommunicator(MPI_Comm comm, std::chrono::milliseconds deadline)
        : MpiCommunicator(positive_deadline(comm, deadline))
    {
        deadline_ = deadline;
    }

    /// Number of ranks in the communicator.
    [[nodiscard]] int size() const noexcept { return size_; }
    /// This process's rank: the one host it runs.
    [[nodiscard]] int rank() const noexcept { return rank_; }
    /// The longest wait in one collective, if any.
    [[nodiscard]] std::optional<std::chrono::milliseconds> deadline() const noexcept
    {
        if (deadline_ == std::chrono::milliseconds::zero())
            return std::nullopt;
        return deadline_;
    }

    /// One default-built `T` for this process's host, `rank()`.
    template <class T>
    [[nodiscard]] PerHost<T> local() const
    {
        return PerHost<T>(rank_, 1);
    }

    /// Runs `step(rank())` on the calling thread.
    template <class F>
    void for_each_host(F&& step)
    {
        step(rank_);
    }

    /// `root`'s buffer replaces this rank's (`MPI_Bcast`).
    /// \throws star::error if `root` is out of range, the message exceeds MPI's `int`
    /// counts or an MPI call fails.
    template <Message T>
    void broadcast(PerHost<std::vector<T>>& buffers, int root)
    {
        detail::check_rank(root, size_, "broadcast: root");
        std::vector<T>& mine = buffers[rank_];
        std::uint64_t count = mine.size();
        complete(MPI_Ibcast(&count, 1, MPI_UINT64_T, root, comm_, &request_), "MPI_Ibcast");
        mine.resize(static_cast<std::size_t>(count));
        const Elements<T> type;
        complete(MPI_Ibcast(mine.data(), element_count(count), type.handle, root, comm_, &request_),
                 "MPI_Ibcast");
    }

    /// `root` receives every rank's buffer, in rank order (`MPI_Gatherv`); the others
    /// receive nothing.
    /// \throws star::error if `root` is out of range, a message exceeds MPI's `int` counts
    /// or an MPI call fails.
    template <Message T>
    PerHost<std::vector<std::vector<T>>> gather(const PerHost<std::vector<T>>& buffers, int root)
    {
        detail::check_rank(root, size_, "gather: root");
        const std::vector<T>& mine = buffers[rank_];
        std::vector<std::uint64_t> counts(rank_ == root ? static_cast<std::size_t>(size_) : 0);
        std::uint64_t count = mine.size();
        complete(MPI_Igather(&count, 1, MPI_UINT64_T, counts.data(), 1, MPI_UINT64_T, root, comm_,
                             &request_),
                 "MPI_Igather");
        std::vector<int> sizes, offsets;
        std::vector<T> all;
        if (rank_ == root)
            layout(counts, sizes, offsets, all);
        const Elements<T> type;
        complete(MPI_Igatherv(mine.data(), element_count(count), type.handle, all.data(),
                              sizes.data(), offsets.data(), type.handle, root, comm_, &request_),
                 "MPI_Igatherv");
        auto received = local<std::vector<std::vector<T>>>();
        if (rank_ == root)
            received[rank_] = split(all, sizes, offsets);
        return received;
    }

    /// Every rank receives every rank's buffer, in rank order (`MPI_Allgatherv`).
    /// \throws star::error if a message exceeds MPI's `int` counts or an MPI call fails.
    template <Message T>
    PerHost<std::vector<std::vector<T>>> all_gather(const PerHost<std::vector<T>>& buffers)
    {
        const std::vector<T>& mine = buffers[rank_];
        std::vector<std::uint64_t> counts(static_cast<std::size_t>(size_));
        std::uint64_t count = mine.size();
        complete(MPI_Iallgather(&count, 1, MPI_UINT64_T, counts.data(), 1, MPI_UINT64_T, comm_,
                                &request_),
                 "MPI_Iallgather");
        std::vector<int> sizes, offsets;
        std::vector<T> all;
        layout(counts, sizes, offsets, all);
        const Elements<T> type;
        complete(MPI_Iallgatherv(mine.data(), element_count(count), type.handle, all.data(),
                                 sizes.data(), offsets.data(), type.handle, comm_, &request_),
                 "MPI_Iallgatherv");
        auto received = local<std::vector<std::vector<T>>>();
        received[rank_] = split(all, sizes, offsets);
        return received;
    }

    /// Sends this rank's buffer to `routes[rank()].send_to` and receives from
    /// `routes[rank()].receive_from` (`MPI_Sendrecv`; an empty vector when receiving from
    /// no rank). Blocks until both are done.
    /// \throws star::error if a route names a rank out of range, a message exceeds MPI's
    /// `int` counts or an MPI call fails.
    template <Message T>
    PerHost<std::vector<T>> exchange(const PerHost<std::vector<T>>& buffers,
                                     const PerHost<Route>& routes)
    {
        return start_exchange(buffers, routes).wait();
    }

    /// An exchange in flight (see `OverlappingExchange`): the data travel by MPI_Isend /
    /// MPI_Irecv while the caller computes. How much actually moves before `wait()` is up to
    /// the MPI library's progress engine (small messages, and shared memory with single-copy
    /// transfers, move at once; large messages over TCP may wait for the next MPI call).
    template <Message T>
    class PendingExchange {
    public:
        /// Takes over the exchange in flight; the moved-from handle holds none.
        PendingExchange(PendingExchange&&) noexcept = default;
        PendingExchange& operator=(PendingExchange&&) = delete;
        PendingExchange(const PendingExchange&) = delete;
        PendingExchange& operator=(const PendingExchange&) = delete;
        /// Completes the exchange first if `wait()` was not called.
        // The peers have posted the matching operations, so completing here cannot hang
        // on a live job; unwinding past an exchange in flight would free its buffers.
        ~PendingExchange()
        {
            if (state_ && !state_->done)
                state_->waiter.wait_for(state_->requests, "MPI_Isend/MPI_Irecv");
        }

        /// Blocks until this host's send and receive have completed; returns what arrived.
        PerHost<std::vector<T>> wait()
        {
            if (!state_ || state_->done)
                detail::fail("MpiCommunicator: an exchange was waited for twice");
            state_->done = true;
            check(state_->waiter.wait_for(state_->requests, "MPI_Isend/MPI_Irecv"),
                  "MPI_Isend/MPI_Irecv");
            return std::move(state_->received);
        }

    private:
        friend class MpiCommunicator;
        // Behind a pointer: MPI holds the addresses of the requests and the receive buffer.
        struct State {
            Waiter waiter;
            Elements<T> type;
            MPI_Request requests[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
            PerHost<std::vector<T>> received;
            bool done = false;
        };
        PendingExchange() : state_(std::make_unique<State>()) {}
        std::unique_ptr<State> state_;
    };

    /// Starts the exchange `exchange(buffers, routes)` would do and returns at once
    /// (`MPI_Irecv` and `MPI_Isend`); `buffers` must stay alive and unchanged until the
    /// handle's `wait()` returns. See `OverlappingExchange`.
    /// \throws star::error if a route names a rank out of range, a message exceeds MPI's
    /// `int` counts or an MPI call fails.
    template <Message T>
    PendingExchange<T> start_exchange(const PerHost<std::vector<T>>& buffers,
                                      const PerHost<Route>& routes)
    {
        const Endpoints ends = endpoints(routes);
        const std::vector<T>& mine = buffers[rank_];
        const std::uint64_t count = ends.to == MPI_PROC_NULL ? 0 : mine.size();
        const std::uint64_t incoming = exchange_counts(ends, count);
        PendingExchange<T> pending;
        auto& state = *pending.state_;
        state.waiter = waiter();
        state.received = local<std::vector<T>>();
        state.received[rank_].resize(static_cast<std::size_t>(incoming));
        post_exchange(mine.data(), element_count(count), state.received[rank_].data(),
                      element_count(incoming), state.type.handle, ends, state.requests);
        return pending;
    }

    /// `MPI_Barrier` over the communicator.
    /// \throws star::error if it fails.
    void barrier() { complete(MPI_Ibarrier(comm_, &request_), "MPI_Ibarrier"); }

private:
    static constexpr int tag = 0x5a7;

    // This host's peers in an exchange, MPI_PROC_NULL for none.
    struct Endpoints {
        int to = MPI_PROC_NULL;
        int from = MPI_PROC_NULL;
    };

    Endpoints endpoints(const PerHost<Route>& routes) const
    {
        const Route route = routes[rank_];
        Endpoints ends;
        if (route.send_to != Route::no_host) {
            detail::check_rank(route.send_to, size_, "exchange: destination");
            ends.to = route.send_to;
        }
        if (route.receive_from != Route::no_host) {
            detail::check_rank(route.receive_from, size_, "exchange: source");
            ends.from = route.receive_from;
        }
        return ends;
    }

    // Sends how many elements go out, returns how many come in, so the receiver can size
    // its buffer before the data arrive.
    std::uint64_t exchange_counts(const Endpoints& ends, std::uint64_t count)
    {
        std::uint64_t incoming = 0;
        MPI_Request requests[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
        post_exchange(&count, 1, &incoming, 1, MPI_UINT64_T, ends, requests);
        check(waiter().wait_for(requests, "MPI_Isend/MPI_Irecv"), "MPI_Isend/MPI_Irecv");
        return incoming;
    }

    // Posts one exchange step: the receive, then the send.
    void post_exchange(const void* out, int out_count, void* in, int in_count, MPI_Datatype type,
                       const Endpoints& ends, MPI_Request (&requests)[2]) const
    {
        check(MPI_Irecv(in, in_count, type, ends.from, tag, comm_, &requests[0]), "MPI_Irecv");
        const int sent = MPI_Isend(out, out_count, type, ends.to, tag, comm_, &requests[1]);
        if (sent != MPI_SUCCESS) {
            // The receive may never be matched now: withdraw it rather than wait for it.
            MPI_Cancel(&requests[0]);
            MPI_Wait(&requests[0], MPI_STATUS_IGNORE);
            requests[0] = requests[1] = MPI_REQUEST_NULL;
            check(sent, "MPI_Isend");
        }
    }

    static int element_count(std::uint64_t count)
    {
        if (count > static_cast<std::uint64_t>(INT_MAX))
            detail::fail_at_runtime("MpiCommunicator: a message of ", count,
                                    " elements is larger than MPI's int count");
        return static_cast<int>(count);
    }

    template <class T>
    static void layout(const std::vector<std::uint64_t>& counts, std::vector<int>& sizes,
                       std::vector<int>& offsets, std::vector<T>& all)
    {
        std::uint64_t total = 0;
        for (const std::uint64_t c : counts) {
            sizes.push_back(element_count(c));
            offsets.push_back(element_count(total));
            total += c;
        }
        element_count(total);
        all.resize(static_cast<std::size_t>(total));
    }

    template <class T>
    static std::vector<std::vector<T>> split(const std::vector<T>& all,
                                             const std::vector<int>& sizes,
                                             const std::vector<int>& offsets)
    {
        std::vector<std::vector<T>> parts;
        for (std::size_t r = 0; r < sizes.size(); ++r)
            parts.emplace_back(all.begin() + offsets[r], all.begin() + offsets[r] + sizes[r]);
        return parts;
    }

    static void check(int code, const char* call)
    {
        if (code == MPI_SUCCESS)
            return;
        char text[MPI_MAX_ERROR_STRING];
        int length = 0;
        MPI_Error_string(code, text, &length);
        detail::fail_at_runtime("MpiCommunicator: ", call,
                                " failed: ", std::string(text, static_cast<std::size_t>(length)));
    }

    // Checked before the delegated constructor touches MPI, so that a bad deadline is
    // reported as such even without MPI.
    static MPI_Comm positive_deadline(MPI_Comm comm, std::chrono::milliseconds deadline)
    {
        if (deadline.count() <= 0)
            detail::fail("MpiCommunicator: the deadline must be positive, got ", deadline.count(),
                         " ms");
        return comm;
    }

    [[nodiscard]] Waiter waiter() const { return {comm_, rank_, deadline_}; }

    // Completes the non-blocking collective just started into `request_` (`started` is what
    // starting it returned).
    void complete(int started, const char* call)
    {
        check(started, call);
        MPI_Request requests[2] = {request_, MPI_REQUEST_NULL};
        request_ = MPI_REQUEST_NULL;
        check(waiter().wait_for(requests, call), call);
    }

    MPI_Comm comm_;
    // Zero: none. Kept out of std::optional, whose disengaged payload GCC 12 reports as
    // maybe-uninitialized in users' code once the constructor is inlined.
    std::chrono::milliseconds deadline_ = std::chrono::milliseconds::zero();
    int size_ = 0;
    int rank_ = 0;
    MPI_Request request_ = MPI_REQUEST_NULL;
};

static_assert(Communicator<MpiCommunicator>);
static_assert(OverlappingExchange<MpiCommunicator>);

/// Runs `body()` on this rank; if it throws, prints the error with the rank number to
/// stderr and ends the whole job with `MPI_Abort`, so the ranks still waiting in a
/// collective for this one do not hang. Returns what `body` returns.
template <class F>
decltype(auto) run_or_abort(MPI_Comm comm, F&& body)
{
    try {
        return body();
    } catch (const std::exception& e) {
        int rank = -1;
        MPI_Comm_rank(comm, &rank);
        std::fprintf(stderr, "star: rank %d failed: %s\n", rank, e.what());
        std::fflush(stderr);
        MPI_Abort(comm, 1);
    } catch (...) {
        int rank = -1;
        MPI_Comm_rank(comm, &rank);
        std::fprintf(stderr, "star: rank %d failed with an unknown exception\n", rank);
        std::fflush(stderr);
        MPI_Abort(comm, 1);
    }
    std::terminate(); // MPI_Abort does not return
}

} // namespace star
