#pragma once
/// \file
/// A host's key/value cache for one layer: keys and values of the tokens it keeps, in
/// the order they were appended, stored in the K/V element type.

#include <algorithm>
#include <cstddef>
#include <span>
#include <vector>

#include "detail/check_inputs.hpp"
#include "tensor.hpp"

namespace star {

/// The keys and values one host keeps for one layer, stored as `KV` (`float`, bf16 or half):
/// Star's phase 1 appends the K/V of the host's blocks, phase 2 attends to all of them, and
/// the query host also appends the query's and each generated token's K/V. `bytes()` is
/// what the host's cache costs in memory. Every append is checked to be finite, so attention
/// over `keys()`/`values()` may skip its own check (`AttentionOptions::check_finite = false`)
/// instead of re-reading the whole cache at every decode step.
template <KVElement KV>
class KVCache {
public:
    /// Tokens appended so far.
    [[nodiscard]] index tokens() const noexcept { return tokens_; }
    /// KV heads of the cached tokens; 0 before the first append.
    [[nodiscard]] index kv_heads() const noexcept { return heads_; }
    /// head_dim of the cached tokens; 0 before the first append.
    [[nodiscard]] index head_dim() const noexcept { return head_dim_; }

    /// Bytes of K and V held.
    [[nodiscard]] std::size_t bytes() const noexcept
    {
        return 2 * static_cast<std::size_t>(tokens_ * heads_ * head_dim_) * sizeof(KV);
    }

    /// Appends the tokens of `k` and `v`. The first append fixes the head count and
    /// head_dim; later ones must match. Views from `keys()`/`values()` taken before an
    /// append are invalid after it. A failed append (rejected input, or no memory) leaves
    /// the cache as it was.
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
    /// room for them, so that `append(kv)` then cannot fail. Changes no content. Lets
    /// several caches be updated all or none: reserve in every cache, then append.
    /// \throws as `append(k, v)` does.
    void reserve_for(std::span<const ConstView3<KV>> kv)
    {
        if (kv.size() % 2 != 0)
            detail::fail("KVCache::append: keys and values come in pairs, got ", kv.size(),
                         " views");
        index heads = heads_, head_dim = head_dim_, more = 0;
        bool shaped = !(tokens_ == 0 && keys_.empty());
        for (std::size_t i = 0; i < kv.size(); i += 2) {
            const ConstView3<KV>& k = kv[i];
            const ConstView3<KV>& v = kv[i + 1];
            detail::check_tensor(k, "k", "KVCache::append");
            detail::check_tensor(v, "v", "KVCache::append");
            if (k.dimension(0) != v.dimension(0) || k.dimension(1) != v.dimension(1) ||
                k.dimension(2) != v.dimension(2))
                detail::fail("KVCache::append: k is [", k.dimension(0), ", ", k.dimension(1),
                             ", ", k.dimension(2), "] but v is [", v.dimension(0), ", ",
                             v.dimension(1), ", ", v.dimension(2), "]");
            if (shaped && (k.dimension(1) != heads || k.dimension(2) != head_dim))
                detail::fail("KVCache::append: the cache holds ", heads,
                             " kv heads of head_dim ", head_dim, ", the new tokens have ",
                             k.dimension(1), " of head_dim ", k.dimension(2));
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
        const auto elements = static_cast<std::size_t>(
            detail::checked_product({tokens, heads, head_dim}, "KVCache::append: elements"));
        grow(keys_, elements);
        grow(values_, elements);
    }

    /// The cached keys `[tokens(), kv_heads(), head_dim()]`, in the order appended.
    [[nodiscard]] ConstView3<KV> keys() const
    {
        return ConstView3<KV>(keys_.data(), tokens_, heads_, head_dim_);
    }
    /// The cached values `[tokens(), kv_heads(), head_dim()]`, in the order appended.
    [[nodiscard]] ConstView3<KV> values() const
    {
        return ConstView3<KV>(values_.data(), tokens_, heads_, head_dim_);
    }

private:
    // Appends what reserve_for has checked and made room for: it cannot throw.
    void append_checked(const ConstView3<KV>& k, const ConstView3<KV>& v) noexcept
    {
        if (tokens_ == 0 && keys_.empty()) {
            heads_ = k.dimension(1);
            head_dim_ = k.dimension(2);
        }
        keys_.insert(keys_.end(), k.data(), k.data() + k.size());
        values_.insert(values_.end(), v.data(), v.data() + v.size());
        tokens_ += k.dimension(0);
    }

    // Capacity for `elements`, growing geometrically, so that a decode step's one-token
    // appends do not copy the cache every time.
    static void grow(std::vector<KV>& store, std::size_t elements)
    {
        if (elements > store.capacity())
            store.reserve(std::max(elements, 2 * store.capacity()));
    }

    std::vector<KV> keys_;
    std::vector<KV> values_;
    index tokens_ = 0;
    index heads_ = 0;
    index head_dim_ = 0;
};

} // namespace star
