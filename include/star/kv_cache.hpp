#pragma once
/// \file
/// A host's key/value cache for one layer: keys and values of the tokens it keeps, in
/// the order they were appended, stored in the K/V element type.

#include <algorithm>
#include <cstddef>
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
    /// append are invalid after it.
    void append(const ConstView3<KV>& k, const ConstView3<KV>& v)
    {
        detail::check_tensor(k, "k", "KVCache::append");
        detail::check_tensor(v, "v", "KVCache::append");
        if (k.dimension(0) != v.dimension(0) || k.dimension(1) != v.dimension(1) ||
            k.dimension(2) != v.dimension(2))
            detail::fail("KVCache::append: k is [", k.dimension(0), ", ", k.dimension(1), ", ",
                         k.dimension(2), "] but v is [", v.dimension(0), ", ", v.dimension(1),
                         ", ", v.dimension(2), "]");
        const bool first = tokens_ == 0 && keys_.empty();
        if (!first && (k.dimension(1) != heads_ || k.dimension(2) != head_dim_))
            detail::fail("KVCache::append: the cache holds ", heads_, " kv heads of head_dim ",
                         head_dim_, ", the new tokens have ", k.dimension(1), " of head_dim ",
                         k.dimension(2));
        // A cache holds only finite K/V, so the attention over it need not check them again.
        detail::check_finite(k, "k", tokens_, "KVCache::append");
        detail::check_finite(v, "v", tokens_, "KVCache::append");
        // Only an append that passed every check fixes the shape.
        if (first) {
            heads_ = k.dimension(1);
            head_dim_ = k.dimension(2);
        }
        keys_.insert(keys_.end(), k.data(), k.data() + k.size());
        values_.insert(values_.end(), v.data(), v.data() + v.size());
        tokens_ += k.dimension(0);
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
    std::vector<KV> keys_;
    std::vector<KV> values_;
    index tokens_ = 0;
    index heads_ = 0;
    index head_dim_ = 0;
};

} // namespace star
