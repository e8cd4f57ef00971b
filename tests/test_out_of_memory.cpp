// "A phase that throws leaves every cache as it was" must hold when memory runs out too,
// not only when an input is rejected. This program replaces the global operator new with
// one that can be told to fail its n-th allocation from now; each test runs a call with the
// first, second, third... allocation failing until the call gets through, and after every
// std::bad_alloc checks that no cache changed. (Eigen's tensors and the kernel's workspaces
// take memory from malloc directly and are not failed here; the caches and the
// algorithms' own containers come through operator new.)

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <new>
#include <string>

#if defined(__GLIBC__)
#include <malloc.h> // malloc_usable_size: the live bytes of operator new
#define STAR_TEST_COUNTS_BYTES 1
#endif

#include <star/star.hpp>

#include "reference.hpp"

namespace {

// Allocations left before one fails; negative: none fails.
std::atomic<long> allocations_until_failure{-1};

// Bytes operator new has handed out and not yet taken back, and the most there were since
// the last reset (where the C library tells a block's size).
std::atomic<std::size_t> live_bytes{0};
std::atomic<std::size_t> peak_live_bytes{0};

// Memory from malloc (`alignment` 0) or aligned_alloc, failed when asked to, counted.
void* allocate(std::size_t bytes, std::size_t alignment = 0)
{
    if (allocations_until_failure.load(std::memory_order_relaxed) >= 0 &&
        allocations_until_failure.fetch_sub(1, std::memory_order_relaxed) == 0)
        throw std::bad_alloc();
    void* p = alignment == 0
                  ? std::malloc(bytes == 0 ? 1 : bytes)
                  : std::aligned_alloc(alignment, (bytes + alignment - 1) / alignment * alignment);
    if (p == nullptr)
        throw std::bad_alloc();
#ifdef STAR_TEST_COUNTS_BYTES
    const std::size_t now = live_bytes.fetch_add(malloc_usable_size(p), std::memory_order_relaxed) +
                            malloc_usable_size(p);
    std::size_t peak = peak_live_bytes.load(std::memory_order_relaxed);
    while (now > peak && !peak_live_bytes.compare_exchange_weak(peak, now))
        ;
#endif
    return p;
}

void release(void* p) noexcept
{
#ifdef STAR_TEST_COUNTS_BYTES
    if (p != nullptr)
        live_bytes.fetch_sub(malloc_usable_size(p), std::memory_order_relaxed);
#endif
    std::free(p);
}

} // namespace

// Not inlined: GCC, seeing std::free inlined where a new-expression allocated, reports a
// mismatched allocation (-Wmismatched-new-delete); it does not know these replace both.
void* operator new(std::size_t bytes) { return allocate(bytes); }
void* operator new[](std::size_t bytes) { return allocate(bytes); }
[[gnu::noinline]] void operator delete(void* p) noexcept { release(p); }
[[gnu::noinline]] void operator delete[](void* p) noexcept { release(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { release(p); }
[[gnu::noinline]] void operator delete[](void* p, std::size_t) noexcept { release(p); }
// The caches' pages are aligned to a cache line (operator new with an alignment).
void* operator new(std::size_t bytes, std::align_val_t a)
{
    return allocate(bytes, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t bytes, std::align_val_t a)
{
    return allocate(bytes, static_cast<std::size_t>(a));
}
[[gnu::noinline]] void operator delete(void* p, std::align_val_t) noexcept { release(p); }
[[gnu::noinline]] void operator delete[](void* p, std::align_val_t) noexcept { release(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t, std::align_val_t) noexcept
{
    release(p);
}
[[gnu::noinline]] void operator delete[](void* p, std::size_t, std::align_val_t) noexcept
{
    release(p);
}

namespace star::test {
namespace {

// The bytes of a cache: equal caches hold the same tokens, shape and K/V.
template <class KV>
struct CacheImage {
    index tokens, heads, head_dim;
    std::vector<KV> keys, values;

    explicit CacheImage(const KVCache<KV>& c)
        : tokens(c.tokens()), heads(c.kv_heads()), head_dim(c.head_dim()), keys(flat(c.keys())),
          values(flat(c.values()))
    {
    }

    static std::vector<KV> flat(const KVPages<KV>& source)
    {
        const Tensor3<KV> t = contiguous(source);
        return std::vector<KV>(t.data(), t.data() + t.size());
    }

    bool operator==(const CacheImage& o) const
    {
        return tokens == o.tokens && heads == o.heads && head_dim == o.head_dim &&
               keys.size() == o.keys.size() && values.size() == o.values.size() &&
               std::memcmp(keys.data(), o.keys.data(), keys.size() * sizeof(KV)) == 0 &&
               std::memcmp(values.data(), o.values.data(), values.size() * sizeof(KV)) == 0;
    }
};

template <class KV>
std::vector<CacheImage<KV>> images(const PerHost<KVCache<KV>>& caches)
{
    std::vector<CacheImage<KV>> all;
    for (int r = caches.first_rank(); r < caches.end_rank(); ++r)
        all.emplace_back(caches[r]);
    return all;
}

// Runs `call` with its first, second, ... allocation failing until it succeeds; after each
// failure `unchanged()` must hold. Returns how many failures were injected. oneTBB must be
// initialised before (a first parallel call): its own lazy start-up, failed, hangs later
// uses, and is not what is tested here.
template <class Call, class Check>
int fail_each_allocation_in_turn(Call&& call, Check&& unchanged)
{
    for (long n = 0; n < 100000; ++n) {
        allocations_until_failure.store(n);
        bool failed = false;
        try {
            call();
        } catch (const std::bad_alloc&) {
            failed = true;
        }
        allocations_until_failure.store(-1);
        if (!failed)
            return static_cast<int>(n);
        if (!unchanged()) {
            ADD_FAILURE() << "allocation " << n << " failed and left a cache changed";
            return static_cast<int>(n);
        }
    }
    ADD_FAILURE() << "the call never got through";
    return 0;
}

// A failed append that grew K but not V would leave the cache's views looking right while
// every later token is misaligned: append one more token and check it is the one read back.
void expect_next_append_lines_up(KVCache<float>& cache, const std::string& what)
{
    const auto k = random_tensor<float>(1, 2, 16), v = random_tensor<float>(1, 2, 16);
    cache.append(view(k), view(v));
    // The two heads of a token are one row of 32 elements in a page.
    const index last = cache.tokens() - 1;
    EXPECT_EQ(std::memcmp(cache.keys().row(last, 0), k.data(), sizeof(float) * 32), 0) << what;
    EXPECT_EQ(std::memcmp(cache.values().row(last, 0), v.data(), sizeof(float) * 32), 0) << what;
}

// A failed append that needed several new pages (pages of 7 tokens: 5 tokens cached, 30
// appended) leaves the cache as it was, down to the memory it holds and where its rows lie:
// the pages are allocated before any is added.
TEST(OutOfMemory, AFailedAppendAcrossPagesLeavesTheCacheAsItWas)
{
    const auto first = random_tensor<float>(5, 2, 16), more = random_tensor<float>(30, 2, 16);
    KVCache<float> cache(7);
    cache.append(view(first), view(first));
    const CacheImage<float> before(cache);
    const std::size_t capacity = cache.capacity_bytes();
    const float* row = cache.keys().row(0, 0);
    const int failures =
        fail_each_allocation_in_turn([&] { cache.append(view(more), view(more)); },
                                     [&] {
                                         return CacheImage<float>(cache) == before &&
                                                cache.capacity_bytes() == capacity &&
                                                cache.keys().row(0, 0) == row;
                                     });
    EXPECT_GE(failures, 4) << "four new pages (of K and V each) at least";
    EXPECT_EQ(cache.tokens(), 35);
    EXPECT_EQ(cache.keys().row(0, 0), row);
    expect_next_append_lines_up(cache, "the cache");
}

// A cache that grows one token at a time (decode) holds, at its peak, the tokens' K/V plus
// at most one page of K and one of V (and its small lists of pages): no growth copies the
// cache. A vector that doubled would have held the old and the new buffer at once, up to 3x
// the tokens' bytes.
TEST(OutOfMemory, PeakMemoryOfAGrowingCacheIsItsTokensPlusOnePage)
{
#ifndef STAR_TEST_COUNTS_BYTES
    GTEST_SKIP() << "needs malloc_usable_size (glibc) to count live bytes";
#else
    constexpr index tokens = 3000, heads = 2, d = 64;
    const auto k = random_tensor<float>(tokens, heads, d);
    KVCache<float> cache;
    const std::size_t page_bytes =
        sizeof(float) * static_cast<std::size_t>(cache.page_tokens() * heads * d);
    const std::size_t baseline = live_bytes.load();
    peak_live_bytes.store(baseline);
    for (index t = 0; t < tokens; ++t)
        cache.append(token_slice(view(k), t, 1), token_slice(view(k), t, 1));
    const std::size_t peak = peak_live_bytes.load() - baseline;
    constexpr std::size_t lists = 4096; // the two lists of page pointers, with slack
    std::cout << "peak " << peak << " bytes for " << cache.bytes() << " bytes of K/V ("
              << double(peak) / double(cache.bytes()) << "x); pages of " << page_bytes << " bytes\n";
    EXPECT_LE(peak, cache.bytes() + 2 * page_bytes + lists);
    EXPECT_EQ(cache.capacity_bytes(), 2 * 12 * page_bytes); // 3000 tokens: 12 pages of 256
#endif
}

struct Layer {
    Tensor3<float> q, k, v;
};

Layer random_layer(index tokens)
{
    return {random_tensor<float>(tokens, 4, 16), random_tensor<float>(tokens, 2, 16),
            random_tensor<float>(tokens, 2, 16)};
}

TEST(OutOfMemory, AFailedAppendLeavesTheCacheAsItWas)
{
    const Layer first = random_layer(5), more = random_layer(7);
    KVCache<float> cache(8); // the 7 more tokens need a second page
    cache.append(view(first.k), view(first.v));
    const CacheImage<float> before(cache);
    const int failures =
        fail_each_allocation_in_turn([&] { cache.append(view(more.k), view(more.v)); },
                                     [&] { return CacheImage<float>(cache) == before; });
    EXPECT_GE(failures, 1) << "no allocation was failed: the test proves nothing";
    EXPECT_EQ(cache.tokens(), 12);
    expect_next_append_lines_up(cache, "the cache");
}

// Phase 1 appends to every host's cache at its end: if the third host's append ran out of
// memory, the first two had their blocks already.
TEST(OutOfMemory, AFailedPhaseOneLeavesEveryCacheAsItWas)
{
    const StarAttention star(FixedBlocks{16});
    const Layer context = random_layer(70);
    const StarPlan plan = star.plan(70, 3);
    LocalCommunicator comm(3, 1);
    auto caches = comm.local<KVCache<float>>();
    (void)star.encode_context(comm, plan, caches, view(context.q), view(context.k),
                              view(context.v)); // starts oneTBB
    caches = comm.local<KVCache<float>>();
    const Layer earlier = random_layer(2); // caches that already hold something
    for (int r = 0; r < 3; ++r)
        caches[r].append(view(earlier.k), view(earlier.v));
    const auto before = images(caches);
    const int failures = fail_each_allocation_in_turn(
        [&] {
            (void)star.encode_context(comm, plan, caches, view(context.q), view(context.k),
                                      view(context.v));
        },
        [&] { return images(caches) == before; });
    EXPECT_GE(failures, 3);
    for (int r = 0; r < 3; ++r) {
        EXPECT_GT(caches[r].tokens(), 2) << "host " << r;
        expect_next_append_lines_up(caches[r], "host " + std::to_string(r));
    }
}

TEST(OutOfMemory, AFailedQueryLeavesEveryCacheAsItWas)
{
    const StarAttention star(FixedBlocks{16});
    const Layer context = random_layer(70), query = random_layer(3);
    const StarPlan plan = star.plan(70, 3);
    LocalCommunicator comm(3, 1);
    auto caches = comm.local<KVCache<float>>();
    (void)star.encode_context(comm, plan, caches, view(context.q), view(context.k), view(context.v));
    const auto before = images(caches);
    const int failures = fail_each_allocation_in_turn(
        [&] {
            (void)star.attend_query(comm, plan, caches, view(query.q), view(query.k), view(query.v));
        },
        [&] { return images(caches) == before; });
    EXPECT_GE(failures, 3);
    EXPECT_EQ(caches[plan.query_host()].tokens(),
              before[static_cast<std::size_t>(plan.query_host())].tokens + 3);
    expect_next_append_lines_up(caches[plan.query_host()], "the query host");
}

} // namespace
} // namespace star::test
