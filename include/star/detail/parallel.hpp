#pragma once
/// \file
/// The library's one parallel loop: oneTBB's `parallel_for`, except under ThreadSanitizer.
///
/// Debian's oneTBB is not built with `-fsanitize=thread`, so TSan cannot see how it hands
/// work from thread to thread, and reports races inside TBB's own (header) code on every
/// hand-off. Under TSan the same loop therefore runs on `std::thread`s, whose every
/// synchronisation TSan sees, so that what it reports is about this library's code. The
/// thread count still follows the enclosing `tbb::task_arena`, so arena limits hold.

#include <functional>

#include <tbb/parallel_for.h>

#include "../tensor.hpp"

#if defined(__SANITIZE_THREAD__)
#define STAR_THREAD_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define STAR_THREAD_SANITIZER 1
#endif
#endif

#ifdef STAR_THREAD_SANITIZER
#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include <tbb/task_arena.h>
#endif

namespace star::detail {

/// Calls `body(i)` for every `i` in `[first, last)`, possibly concurrently; returns when
/// all calls have, and rethrows the first exception a call threw (the calls not yet
/// started are then skipped, as with TBB).
///
/// The body is type-erased on purpose: TBB's loop machinery is instantiated once instead of
/// once per calling lambda. Per lambda it was a third of the machine code of a test of the
/// algorithms (4.2 of 12.4 MB in tests/test_star.cpp under ASan). A body is a whole task
/// (a tile, a host's step), so one indirect call per index costs nothing measurable.
inline void parallel_for(index first, index last, const std::function<void(index)>& body)
{
#ifndef STAR_THREAD_SANITIZER
    tbb::parallel_for(first, last, body);
#else
    if (last <= first)
        return;
    const index threads = std::min<index>(
        last - first, static_cast<index>(std::max(1, tbb::this_task_arena::max_concurrency())));
    std::atomic<index> next{first};
    std::exception_ptr failure;
    std::mutex failure_mutex;
    const auto work = [&] {
        for (index i = next++; i < last; i = next++) {
            try {
                body(i);
            } catch (...) {
                const std::lock_guard lock(failure_mutex);
                if (!failure)
                    failure = std::current_exception();
                next = last;
            }
        }
    };
    std::vector<std::thread> helpers;
    for (index t = 1; t < threads; ++t)
        helpers.emplace_back(work);
    work();
    for (std::thread& helper : helpers)
        helper.join();
    if (failure)
        std::rethrow_exception(failure);
#endif
}

} // namespace star::detail
