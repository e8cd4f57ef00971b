#pragma once
/// \file
/// A host's key/value cache for one layer: keys and values of the tokens it keeps, in
/// the order they were appended, stored in the K/V element type, in pages.

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/check_inputs.hpp"
#include "error.hpp"
#include "kernel/kv_source.hpp"
#include "tensor.hpp"

namespace star {

/// The keys and values one host keeps for one layer, stored as `KV` (`float`, bf16 or half):
/// Star's phase 1 appends the K/V of the host's blocks, phase 2 attends to all of them, and
/// the query host also appends the query's and each generated token's K/V. `bytes()` is
/// what the host's cache costs in memory. Every append is checked to be finite, so attention
/// over `keys()`/`values()` may skip its own check (`AttentionOptions::check_finite = false`)
/// instead of re-reading the whole cache at every decode step.
///
/// The cache grows by pages of `page_tokens()` tokens, each allocated on its own: an append
/// never moves or copies what is cached, and the memory held is that of the tokens plus at
/// most one partly filled page of K and one of V (`capacity_bytes()`), where a vector that
/// doubled would copy the whole cache and briefly hold it twice. `keys()` and `values()` are
/// paged K/V sources (kernel/kv_source.hpp) that `attention` reads in place.
template <KVElement KV>
class KVCache {
    static_assert(std::is_trivially_copyable_v<KV>, "pages are copied as bytes");

public:
    /// Tokens per page unless the constructor is told otherwise: 256, a multiple of the
    /// decode kernel's 64-key blocks and of the tile kernel's 128-key tiles, so that page
    /// ends cut neither (attention over the cache then gives bit for bit the result over the
    /// same K/V laid out contiguously), and large enough that a page of even one head of
    /// head_dim 64 in bf16 (32 KiB) is read at memory speed, yet small enough that the one
    /// partly filled page costs little beside a long context.
    static constexpr index default_page_tokens = 256;

    /// An empty cache with pages of `default_page_tokens` tokens.
    KVCache() = default;

    /// An empty cache with pages of `page_tokens` tokens.
    /// \throws star::invalid_argument if `page_tokens` is not positive.
    explicit KVCache(index page_tokens) : page_tokens_(page_tokens)
    {
        if (page_tokens <= 0)
            detail::fail("KVCache: page_tokens must be positive, got ", page_tokens);
    }

    /// A copy of `other`'s tokens, in pages of its size.
    /// \throws std::bad_alloc if memory runs out.
    KVCache(const KVCache& other)
        : page_tokens_(other.page_tokens_), row_(other.row_), tokens_(other.tokens_),
          heads_(other.heads_), head_dim_(other.head_dim_)
    {
        Pages copy;
        copy.add(page_elements(), pages_for(tokens_));
        const std::size_t row = static_cast<std::size_t>(row_);
        for (index t = 0; t < tokens_; t += page_tokens_) {
            const std::size_t p = static_cast<std::size_t>(t / page_tokens_);
            const std::size_t rows = static_cast<std::size_t>(std::min(page_tokens_, tokens_ - t));
            std::memcpy(copy.keys[p], other.pages_.keys[p], rows * row * sizeof(KV));
            std::memcpy(copy.values[p], other.pages_.values[p], rows * row * sizeof(KV));
        }
        pages_ = std::move(copy);
    }

    /// Takes `other`'s pages; `other` is left empty, with pages of the same size.
    KVCache(KVCache&& other) noexcept : page_tokens_(other.page_tokens_) { swap(other); }

    /// Replaces the tokens by a copy of `other`'s (strong guarantee).
    /// \throws std::bad_alloc if memory runs out.
    KVCache& operator=(const KVCache& other)
    {
        if (this != &other) {
            KVCache copy(other);
            swap(copy);
        }
        return *this;
    }

    /// Takes `other`'s pages, freeing this cache's; `other` is left empty, with pages of the
    /// same size.
    KVCache& operator=(KVCache&& other) noexcept
    {
        if (this != &other) {
            KVCache taken(std::move(other));
            swap(taken);
        }
        return *this;
    }

    /// Frees the pages.
    ~KVCache() = default;

    /// Exchanges the contents, pages and page sizes of two caches.
    void swap(KVCache& other) noexcept
    {
        std::swap(page_tokens_, other.page_tokens_);
        std::swap(row_, other.row_);
        std::swap(tokens_, other.tokens_);
        std::swap(heads_, other.heads_);
        std::swap(head_dim_, other.head_dim_);
        pages_.swap(other.pages_);
    }

    /// Tokens appended so far.
    [[nodiscard]] index tokens() const noexcept { return tokens_; }
    /// KV heads of the cached tokens; 0 before the first append.
    [[nodiscard]] index kv_heads() const noexcept { return heads_; }
    /// head_dim of the cached tokens; 0 before the first append.
    [[nodiscard]] index head_dim() const noexcept { return head_dim_; }
    /// Tokens per page.
    [[nodiscard]] index page_tokens() const noexcept { return page_tokens_; }

    /// Bytes of K and V held for the cached tokens.
    [[nodiscard]] std::size_t bytes() const noexcept
    {
        return 2 * static_cast<std::size_t>(tokens_ * heads_ * head_dim_) * sizeof(KV);
    }

    /// Bytes of K and V allocated: `bytes()` plus the unused rest of the last page of K and
    /// of V (plus whole pages `reserve_for` made room for and no append has used yet).
    [[nodiscard]] std::size_t capacity_bytes() const noexcept
    {
        return 2 * pages_.keys.size() * static_cast<std::size_t>(page_elements()) * sizeof(KV);
    }

    /// Appends the tokens of `k` and `v`. The first append fixes the head count and
    /// head_dim; later ones must match. Views from `keys()`/`values()` taken before an
    /// append are invalid after it (the rows they read stay where they are, but the list
    /// of pages may move). A failed append (rejected input, or no memory) leaves the cache
    /// as it was.
    /// \throws star::error if the shapes disagree or a value is not finite;
    /// std::bad_alloc if memory runs out.
    void append(const ConstView3<KV>& k, const ConstView3<KV>& v)
    {
        const ConstView3<KV> pieces[2] = {k, v};
        append(std::span<const ConstView3<KV>>(pieces));
    }

    /// Appends several `(k, v)` pairs at once (`kv[2i]`, `kv[2i + 1]`), all or none: the
    /// checks and the allocation come first, so a failure leaves the cache as it was.
    /// \throws as `append(k, v)` does.
    void append(std::span<const ConstView3<KV>> kv)
    {
        reserve_for(kv);
        for (std::size_t i = 0; i + 1 < kv.size(); i += 2)
            append_checked(kv[i], kv[i + 1]);
    }

    /// Checks that the pairs `kv` (as `append(kv)` takes them) may be appended and makes
    /// room for them, so that `append(kv)` then cannot fail. Changes no content, but views
    /// from `keys()`/`values()` are invalid after it, as after an append. Lets several
    /// caches be updated all or none: reserve in every cache, then append. New pages are
    /// allocated first and only then added, so a failure leaves the cache as it was.
    /// \throws as `append(k, v)` does.
    void reserve_for(std::span<const ConstView3<KV>> kv)
    {
        if (kv.size() % 2 != 0)
            detail::fail("KVCache::append: keys and values come in pairs, got ", kv.size(),
                         " views");
        index heads = heads_, head_dim = head_dim_, more = 0;
        bool shaped = tokens_ > 0;
        for (std::size_t i = 0; i < kv.size(); i += 2) {
            const ConstView3<KV>& k = kv[i];
            const ConstView3<KV>& v = kv[i + 1];
            detail::check_tensor(k, "k", "KVCache::append");
            detail::check_tensor(v, "v", "KVCache::append");
            if (k.dimension(0) != v.dimension(0) || k.dimension(1) != v.dimension(1) ||
                k.dimension(2) != v.dimension(2))
                detail::fail("KVCache::append: k is [", k.dimension(0), ", ", k.dimension(1), ", ",
                             k.dimension(2), "] but v is [", v.dimension(0), ", ", v.dimension(1),
                             ", ", v.dimension(2), "]");
            if (shaped && (k.dimension(1) != heads || k.dimension(2) != head_dim))
                detail::fail("KVCache::append: the cache holds ", heads, " kv heads of head_dim ",
                             head_dim, ", the new tokens have ", k.dimension(1), " of head_dim ",
                             k.dimension(2));
            shaped = true;
            heads = k.dimension(1);
            head_dim = k.dimension(2);
            // A cache holds only finite K/V, so the attention over it need not check them
            // again.
            detail::check_finite(k, "k", tokens_ + more, "KVCache::append");
            detail::check_finite(v, "v", tokens_ + more, "KVCache::append");
            more = detail::checked_add(more, k.dimension(0), "KVCache::append: tokens");
        }
        const index tokens = detail::checked_add(tokens_, more, "KVCache::append: tokens");
        (void)detail::checked_product({tokens, heads, head_dim}, "KVCache::append: elements");
        if (more == 0)
            return;
        const index row = heads * head_dim;
        // 2 * page elements (a page of K and one of V) in one allocation must count too.
        (void)detail::checked_product({index{2}, page_tokens_, row},
                                      "KVCache::append: page elements");
        // Pages left from a reserve_for of another shape, before any token: of no use.
        const bool reshape = tokens_ == 0 && row != row_;
        const std::size_t have = reshape ? 0 : pages_.keys.size();
        const std::size_t needed = pages_for(tokens);
        if (needed <= have)
            return;
        // The new pages first (freed again if one fails), then room in the page lists
        // (which changes no content), then nothing that throws.
        Pages fresh;
        fresh.add(page_tokens_ * row, needed - have);
        if (reshape) {
            pages_ = std::move(fresh);
            row_ = row;
            return;
        }
        pages_.reserve(needed);
        pages_.take(fresh);
    }

    /// The cached keys `[tokens(), kv_heads(), head_dim()]`, in the order appended, read in
    /// place from the pages; valid until the next append or `reserve_for`.
    [[nodiscard]] KVPages<KV> keys() const { return source(pages_.keys); }
    /// The cached values `[tokens(), kv_heads(), head_dim()]`, in the order appended, read
    /// in place from the pages; valid until the next append or `reserve_for`.
    [[nodiscard]] KVPages<KV> values() const { return source(pages_.values); }

private:
    // Pages of K and of V: page p of K at keys[p], of V at values[p] = keys[p] + elements,
    // one allocation of 2 * elements owned through keys[p]. Aligned to a cache line (so V
    // too when a page's K is a whole number of lines): operator new alone gives 16 bytes,
    // and the kernel's vector loads from rows that straddle lines cost a thread streaming
    // a cache about a fifth of its read speed (Zen 5, one thread: 33 GB/s against 41).
    struct Pages {
        static constexpr std::align_val_t alignment{64};

        index elements = 0; // of one page of K (or of V)
        std::vector<KV*> keys;
        std::vector<KV*> values;

        Pages() = default;
        Pages(const Pages&) = delete;
        Pages& operator=(const Pages&) = delete;
        Pages(Pages&& other) noexcept { swap(other); }
        Pages& operator=(Pages&& other) noexcept
        {
            Pages taken;
            taken.swap(other);
            swap(taken);
            return *this;
        }
        ~Pages()
        {
            for (KV* page : keys)
                ::operator delete(page, alignment);
        }
        [[nodiscard]] std::size_t bytes() const noexcept
        {
            return 2 * static_cast<std::size_t>(elements) * sizeof(KV);
        }
        void swap(Pages& other) noexcept
        {
            std::swap(elements, other.elements);
            keys.swap(other.keys);
            values.swap(other.values);
        }
        // Allocates `count` pages of `page_elements`, into empty lists; on a failure those
        // allocated so far are freed with the object.
        void add(index page_elements, std::size_t count)
        {
            elements = page_elements;
            reserve(count);
            while (keys.size() < count) {
                auto* page = static_cast<KV*>(::operator new(bytes(), alignment));
                keys.push_back(page); // cannot throw: reserved
                values.push_back(page + elements);
            }
        }
        void reserve(std::size_t count)
        {
            keys.reserve(count);
            values.reserve(count);
        }
        // Moves `other`'s pages to the end of these (of the same size); room reserved.
        void take(Pages& other) noexcept
        {
            keys.insert(keys.end(), other.keys.begin(), other.keys.end());
            values.insert(values.end(), other.values.begin(), other.values.end());
            other.keys.clear();
            other.values.clear();
        }
    };

    [[nodiscard]] index page_elements() const noexcept { return page_tokens_ * row_; }

    [[nodiscard]] std::size_t pages_for(index tokens) const noexcept
    {
        return static_cast<std::size_t>((tokens + page_tokens_ - 1) / page_tokens_);
    }

    [[nodiscard]] KVPages<KV> source(const std::vector<KV*>& pages) const
    {
        if (tokens_ == 0)
            return KVPages<KV>(ConstView3<KV>(nullptr, 0, heads_, head_dim_));
        const KV* const* first = pages.data(); // read-only from here
        return paged_kv<KV>(std::span<const KV* const>(first, pages.size()), page_tokens_, tokens_,
                            heads_, head_dim_);
    }

    // Appends what reserve_for has checked and made room for: it cannot throw.
    void append_checked(const ConstView3<KV>& k, const ConstView3<KV>& v) noexcept
    {
        if (tokens_ == 0) {
            heads_ = k.dimension(1);
            head_dim_ = k.dimension(2);
        }
        const index row = k.dimension(1) * k.dimension(2);
        for (index t = 0, count = 0; t < k.dimension(0); t += count) {
            const index at = tokens_ + t;
            const std::size_t page = static_cast<std::size_t>(at / page_tokens_);
            const index in_page = at % page_tokens_;
            count = std::min(page_tokens_ - in_page, k.dimension(0) - t);
            const std::size_t bytes = static_cast<std::size_t>(count * row) * sizeof(KV);
            std::memcpy(pages_.keys[page] + in_page * row, k.data() + t * row, bytes);
            std::memcpy(pages_.values[page] + in_page * row, v.data() + t * row, bytes);
        }
        tokens_ += k.dimension(0);
    }

    index page_tokens_ = default_page_tokens;
    index row_ = 0; // elements of one token in the allocated pages: heads x head_dim
    Pages pages_;   // pages of K and of V
    index tokens_ = 0;
    index heads_ = 0;
    index head_dim_ = 0;
};

} // namespace star
