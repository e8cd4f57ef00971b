#pragma once
// ForkCommunicator: Star's Communicator concept bound to a transport of our own. Each host is
// a process made with fork(); every pair of hosts shares a Unix-domain socket pair; a message
// is its length in bytes followed by its bytes. POSIX.1-2008, no library beyond Star.
//
// docs/guides/transport.md walks through this file.

#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <star/comm/communicator.hpp>

namespace fork_transport {

using star::PerHost;
using star::Route;

[[noreturn]] inline void fail(int rank, const std::string& what)
{
    throw star::runtime_failure("ForkCommunicator: host " + std::to_string(rank) + ": " + what);
}

// One host per process, like MpiCommunicator: a PerHost holds this host's value alone and a
// collective is a call that every process makes.
class ForkCommunicator {
public:
    // `sockets[peer]`: this host's end of its connection to `peer` (-1 for itself).
    ForkCommunicator(int rank, std::vector<int> sockets)
        : rank_(rank), size_(static_cast<int>(sockets.size())), sockets_(std::move(sockets))
    {
    }
    ForkCommunicator(const ForkCommunicator&) = delete;
    ForkCommunicator& operator=(const ForkCommunicator&) = delete;
    ~ForkCommunicator()
    {
        for (const int fd : sockets_)
            if (fd >= 0)
                ::close(fd);
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

    template <star::Message T>
    void broadcast(PerHost<std::vector<T>>& buffers, int root)
    {
        check_rank(root, "broadcast root");
        if (rank_ != root)
            buffers[rank_] = receive<T>(root);
        else
            for (int peer = 0; peer < size_; ++peer)
                if (peer != root)
                    send(peer, buffers[rank_]);
    }

    template <star::Message T>
    PerHost<std::vector<std::vector<T>>> gather(const PerHost<std::vector<T>>& buffers, int root)
    {
        check_rank(root, "gather root");
        auto received = local<std::vector<std::vector<T>>>();
        if (rank_ != root) {
            send(root, buffers[rank_]);
            return received;
        }
        for (int peer = 0; peer < size_; ++peer)
            received[rank_].push_back(peer == rank_ ? buffers[rank_] : receive<T>(peer));
        return received;
    }

    // Gather at host 0, which passes everything on: two hops, but no host ever sends and
    // receives large messages at once.
    template <star::Message T>
    PerHost<std::vector<std::vector<T>>> all_gather(const PerHost<std::vector<T>>& buffers)
    {
        auto all = gather(buffers, 0);
        if (rank_ == 0) {
            for (int peer = 1; peer < size_; ++peer)
                for (const auto& buffer : all[rank_])
                    send(peer, buffer);
        } else {
            for (int r = 0; r < size_; ++r)
                all[rank_].push_back(receive<T>(0));
        }
        return all;
    }

    template <star::Message T>
    PerHost<std::vector<T>> exchange(const PerHost<std::vector<T>>& buffers,
                                     const PerHost<Route>& routes)
    {
        const Route route = routes[rank_];
        auto received = local<std::vector<T>>();
        if (route.send_to == rank_ || route.receive_from == rank_) {
            // A host has no socket to itself; a route to itself is a copy, and must go both ways.
            if (route.send_to != route.receive_from)
                fail(rank_, "a route to itself must also come from itself");
            received[rank_] = buffers[rank_];
            return received;
        }
        if (route.send_to != Route::no_host)
            check_rank(route.send_to, "exchange destination");
        if (route.receive_from != Route::no_host)
            check_rank(route.receive_from, "exchange source");
        const auto bytes = transfer(route.send_to, as_bytes(buffers[rank_]), route.receive_from);
        if (route.receive_from != Route::no_host)
            received[rank_] = from_bytes<T>(bytes, route.receive_from);
        return received;
    }

    void barrier() { (void)all_gather(local<std::vector<char>>()); }

private:
    static constexpr std::size_t header = sizeof(std::uint64_t);

    template <class T>
    static std::vector<std::byte> as_bytes(const std::vector<T>& values)
    {
        std::vector<std::byte> bytes(values.size() * sizeof(T));
        if (!values.empty())
            std::memcpy(bytes.data(), values.data(), bytes.size());
        return bytes;
    }

    template <class T>
    std::vector<T> from_bytes(const std::vector<std::byte>& bytes, int peer) const
    {
        if (bytes.size() % sizeof(T) != 0)
            fail(rank_, "host " + std::to_string(peer) + " sent " + std::to_string(bytes.size()) +
                            " bytes, not a whole number of " + std::to_string(sizeof(T)) +
                            "-byte elements");
        std::vector<T> values(bytes.size() / sizeof(T));
        if (!bytes.empty())
            std::memcpy(values.data(), bytes.data(), bytes.size());
        return values;
    }

    template <class T>
    void send(int peer, const std::vector<T>& values)
    {
        (void)transfer(peer, as_bytes(values), Route::no_host);
    }

    template <class T>
    std::vector<T> receive(int peer)
    {
        return from_bytes<T>(transfer(Route::no_host, {}, peer), peer);
    }

    // Sends `payload` to host `to` while receiving one message from host `from` (either may
    // be Route::no_host). Both directions advance together under poll(): in a ring every host
    // sends and receives at once, and if each finished its send before reading, all would
    // wait on full socket buffers forever.
    std::vector<std::byte> transfer(int to, const std::vector<std::byte>& payload, int from)
    {
        std::vector<std::byte> out;
        if (to != Route::no_host) {
            const std::uint64_t length = payload.size();
            out.resize(header);
            std::memcpy(out.data(), &length, header);
            out.insert(out.end(), payload.begin(), payload.end());
        }
        std::vector<std::byte> in(from == Route::no_host ? 0 : header);
        std::size_t sent = 0, got = 0;
        bool length_known = false;
        while (sent < out.size() || got < in.size()) {
            pollfd watch[2];
            nfds_t count = 0;
            if (sent < out.size())
                watch[count++] = {sockets_[static_cast<std::size_t>(to)], POLLOUT, 0};
            if (got < in.size())
                watch[count++] = {sockets_[static_cast<std::size_t>(from)], POLLIN, 0};
            if (::poll(watch, count, -1) < 0) {
                if (errno == EINTR)
                    continue;
                fail(rank_, std::string("poll failed: ") + std::strerror(errno));
            }
            for (nfds_t w = 0; w < count; ++w) {
                if (watch[w].revents == 0)
                    continue;
                if (watch[w].events == POLLOUT) {
                    // MSG_NOSIGNAL: a peer that has gone away is an error here, not SIGPIPE.
                    const ssize_t n = ::send(watch[w].fd, out.data() + sent, out.size() - sent,
                                             MSG_NOSIGNAL | MSG_DONTWAIT);
                    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                        fail(rank_, "sending to host " + std::to_string(to) +
                                        " failed: " + std::strerror(errno) + " (did it stop?)");
                    sent += n > 0 ? static_cast<std::size_t>(n) : 0;
                } else {
                    const ssize_t n =
                        ::recv(watch[w].fd, in.data() + got, in.size() - got, MSG_DONTWAIT);
                    if (n == 0)
                        fail(rank_, "host " + std::to_string(from) + " closed the connection");
                    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                        fail(rank_, "receiving from host " + std::to_string(from) +
                                        " failed: " + std::strerror(errno));
                    got += n > 0 ? static_cast<std::size_t>(n) : 0;
                    if (!length_known && got == header) {
                        std::uint64_t length = 0;
                        std::memcpy(&length, in.data(), header);
                        in.resize(header + static_cast<std::size_t>(length));
                        length_known = true;
                    }
                }
            }
        }
        return in.empty() ? in : std::vector<std::byte>(in.begin() + header, in.end());
    }

    void check_rank(int rank, const char* what) const
    {
        if (rank < 0 || rank >= size_)
            fail(rank_, std::string(what) + " " + std::to_string(rank) + " is out of range [0, " +
                            std::to_string(size_) + ")");
    }

    int rank_;
    int size_;
    std::vector<int> sockets_;
};

static_assert(star::Communicator<ForkCommunicator>);

// The launcher (what mpiexec is to MPI): runs `body(comm)` in `hosts` child processes, one
// host each, waits for all of them and returns 0 if every body returned 0. A host whose body
// throws prints the error and exits with 1; its sockets close with it, so every peer that
// waits for it gets end-of-file, throws in turn, and nothing hangs.
//
// Call it before anything starts oneTBB's threads: a child of fork() has only the thread
// that forked, and a thread pool copied without its threads would wait for them forever.
template <class Body>
int fork_hosts(int hosts, Body body)
{
    // sockets[a][b]: host a's end of the connection between hosts a and b.
    std::vector<std::vector<int>> sockets(static_cast<std::size_t>(hosts),
                                          std::vector<int>(static_cast<std::size_t>(hosts), -1));
    for (int a = 0; a < hosts; ++a)
        for (int b = a + 1; b < hosts; ++b) {
            int pair[2];
            if (::socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0)
                throw star::runtime_failure(std::string("fork_hosts: socketpair failed: ") +
                                            std::strerror(errno));
            sockets[static_cast<std::size_t>(a)][static_cast<std::size_t>(b)] = pair[0];
            sockets[static_cast<std::size_t>(b)][static_cast<std::size_t>(a)] = pair[1];
        }
    const auto close_all = [&] {
        for (const auto& ends : sockets)
            for (const int fd : ends)
                if (fd >= 0)
                    ::close(fd);
    };
    std::fflush(nullptr); // or the children would print the parent's buffered output again

    std::vector<pid_t> children;
    for (int rank = 0; rank < hosts; ++rank) {
        const pid_t pid = ::fork();
        if (pid < 0) {
            close_all(); // the children started so far see end-of-file and stop
            throw star::runtime_failure(std::string("fork_hosts: fork failed: ") +
                                        std::strerror(errno));
        }
        if (pid > 0) {
            children.push_back(pid);
            continue;
        }
        // The child keeps its own ends only: a stray copy of a peer's end would keep that
        // connection open after the peer died, and the end-of-file would never come.
        for (int a = 0; a < hosts; ++a)
            for (const int fd : sockets[static_cast<std::size_t>(a)])
                if (a != rank && fd >= 0)
                    ::close(fd);
        int status = 1;
        try {
            ForkCommunicator comm(rank, sockets[static_cast<std::size_t>(rank)]);
            status = body(comm);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "host %d failed: %s\n", rank, e.what());
        }
        std::fflush(nullptr);
        std::exit(status);
    }
    close_all();

    int failed = 0;
    for (std::size_t rank = 0; rank < children.size(); ++rank) {
        int status = 0;
        pid_t done = 0;
        do
            done = ::waitpid(children[rank], &status, 0);
        while (done < 0 && errno == EINTR);
        if (done < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            std::fprintf(stderr, "fork_hosts: host %zu %s %d\n", rank,
                         WIFEXITED(status) ? "exited with status" : "was killed by signal",
                         WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
            ++failed;
        }
    }
    return failed == 0 ? 0 : 1;
}

} // namespace fork_transport
