#pragma once
/// \file
/// A communicator over MPI: one host per rank of an `MPI_Comm` the user gives.
///
/// Optional: only this header needs MPI. The algorithms run over it unchanged: a
/// `PerHost<T>` here holds the one host this process runs, `for_each_host` runs its step
/// on the calling thread, and the collectives are MPI's. Messages travel as the bytes of
/// their element type (bf16/half K/V as stored, never converted).

#include <climits>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

// Only MPI's C API is used; Open MPI's and MPICH's deprecated C++ bindings would just add
// warnings (invalid function casts) to every user's build.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include "communicator.hpp"

namespace star {

class MpiCommunicator {
public:
    /// `comm` stays the caller's (not duplicated, not freed); MPI must be initialised.
    explicit MpiCommunicator(MPI_Comm comm) : comm_(comm)
    {
        int initialised = 0;
        MPI_Initialized(&initialised);
        if (!initialised)
            detail::fail("MpiCommunicator: MPI is not initialised (call MPI_Init first)");
        check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
        check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    }

    [[nodiscard]] int size() const noexcept { return size_; }
    [[nodiscard]] int rank() const noexcept { return rank_; }

    template <class T>
    [[nodiscard]] PerHost<T> local() const
    {
        return PerHost<T>(rank_, 1);
    }

    template <class F>
    void for_each_host(F&& step)
    {
        step(rank_);
    }

    template <Message T>
    void broadcast(PerHost<std::vector<T>>& buffers, int root)
    {
        detail::check_rank(root, size_, "broadcast: root");
        std::vector<T>& mine = buffers[rank_];
        std::uint64_t count = mine.size();
        check(MPI_Bcast(&count, 1, MPI_UINT64_T, root, comm_), "MPI_Bcast");
        mine.resize(static_cast<std::size_t>(count));
        const Elements<T> type;
        check(MPI_Bcast(mine.data(), element_count(count), type.handle, root, comm_), "MPI_Bcast");
    }

    template <Message T>
    PerHost<std::vector<std::vector<T>>> gather(const PerHost<std::vector<T>>& buffers, int root)
    {
        detail::check_rank(root, size_, "gather: root");
        const std::vector<T>& mine = buffers[rank_];
        std::vector<std::uint64_t> counts(rank_ == root ? static_cast<std::size_t>(size_) : 0);
        std::uint64_t count = mine.size();
        check(MPI_Gather(&count, 1, MPI_UINT64_T, counts.data(), 1, MPI_UINT64_T, root, comm_),
              "MPI_Gather");
        std::vector<int> sizes, offsets;
        std::vector<T> all;
        if (rank_ == root)
            layout(counts, sizes, offsets, all);
        const Elements<T> type;
        check(MPI_Gatherv(mine.data(), element_count(count), type.handle, all.data(), sizes.data(),
                          offsets.data(), type.handle, root, comm_),
              "MPI_Gatherv");
        auto received = local<std::vector<std::vector<T>>>();
        if (rank_ == root)
            received[rank_] = split(all, sizes, offsets);
        return received;
    }

    template <Message T>
    PerHost<std::vector<std::vector<T>>> all_gather(const PerHost<std::vector<T>>& buffers)
    {
        const std::vector<T>& mine = buffers[rank_];
        std::vector<std::uint64_t> counts(static_cast<std::size_t>(size_));
        std::uint64_t count = mine.size();
        check(MPI_Allgather(&count, 1, MPI_UINT64_T, counts.data(), 1, MPI_UINT64_T, comm_),
              "MPI_Allgather");
        std::vector<int> sizes, offsets;
        std::vector<T> all;
        layout(counts, sizes, offsets, all);
        const Elements<T> type;
        check(MPI_Allgatherv(mine.data(), element_count(count), type.handle, all.data(),
                             sizes.data(), offsets.data(), type.handle, comm_),
              "MPI_Allgatherv");
        auto received = local<std::vector<std::vector<T>>>();
        received[rank_] = split(all, sizes, offsets);
        return received;
    }

    template <Message T>
    PerHost<std::vector<T>> exchange(const PerHost<std::vector<T>>& buffers,
                                     const PerHost<Route>& routes)
    {
        const Route route = routes[rank_];
        if (route.send_to != Route::no_host)
            detail::check_rank(route.send_to, size_, "exchange: destination");
        if (route.receive_from != Route::no_host)
            detail::check_rank(route.receive_from, size_, "exchange: source");
        const int to = route.send_to == Route::no_host ? MPI_PROC_NULL : route.send_to;
        const int from = route.receive_from == Route::no_host ? MPI_PROC_NULL : route.receive_from;
        const std::vector<T>& mine = buffers[rank_];
        std::uint64_t count = route.send_to == Route::no_host ? 0 : mine.size();
        std::uint64_t incoming = 0;
        check(MPI_Sendrecv(&count, 1, MPI_UINT64_T, to, tag, &incoming, 1, MPI_UINT64_T, from, tag,
                           comm_, MPI_STATUS_IGNORE),
              "MPI_Sendrecv");
        auto received = local<std::vector<T>>();
        received[rank_].resize(static_cast<std::size_t>(incoming));
        const Elements<T> type;
        check(MPI_Sendrecv(mine.data(), element_count(count), type.handle, to, tag,
                           received[rank_].data(), element_count(incoming), type.handle, from, tag,
                           comm_, MPI_STATUS_IGNORE),
              "MPI_Sendrecv");
        return received;
    }

    void barrier() { check(MPI_Barrier(comm_), "MPI_Barrier"); }

private:
    static constexpr int tag = 0x5a7;

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

    static int element_count(std::uint64_t count)
    {
        if (count > static_cast<std::uint64_t>(INT_MAX))
            detail::fail("MpiCommunicator: a message of ", count,
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
    static std::vector<std::vector<T>> split(const std::vector<T>& all, const std::vector<int>& sizes,
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
        detail::fail("MpiCommunicator: ", call, " failed: ", std::string(text, length));
    }

    MPI_Comm comm_;
    int size_ = 0;
    int rank_ = 0;
};

static_assert(Communicator<MpiCommunicator>);

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
