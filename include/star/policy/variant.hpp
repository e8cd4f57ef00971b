#pragma once
/// \file
/// Variant policies: what attention computes (a causal-type mask plus a score transform),
/// placed by the algorithms at the tokens' true positions.
///
/// The algorithms (global, Ring, Star) only ever call causal-type attention; a Variant says
/// how each call of theirs is masked and how its scores are transformed, given the true
/// position of the call's first query row and first key row. What each variant means per
/// phase of Star is in docs/guides/variants.md.

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <span>
#include <type_traits>

#include "../error.hpp"
#include "../kernel/mask.hpp"
#include "../kernel/score_transform.hpp"

namespace star {

/// A variant's settings as the hosts of a group must agree on them (besides its type).
struct VariantSettings {
    index window = -1;        ///< The sliding window in tokens; -1 for none.
    std::optional<float> cap; ///< The soft cap; empty for none.
    std::uint64_t slopes = 0; ///< A digest of the ALiBi slopes; 0 for none.
};

/// A Variant policy. With `q` the position of a call's first query row and `k` that of its
/// first key row (rows follow at consecutive positions):
/// - `mask(q, k)` is the kernel Mask of a call whose keys may follow some of its queries
///   (a block or a query attending to itself); it must hide every key after its query;
/// - `past_mask(q, k)` that of a call whose keys all precede every query (an anchor, a
///   cache): may be cheaper (`NoMask` where nothing earlier is hidden);
/// - `transform(q, k)` the ScoreTransform of either call;
/// - `positional` says whether any of these depends on the positions: when false, the
///   algorithms may attend to keys of scattered positions in one call;
/// - `check(q_heads)` rejects settings that cannot work for `q_heads` query heads;
/// - `settings()` is what hosts compare before running together.
/// Called by the algorithms on every host; variants are small value types.
// clang-format off
template <class V>
concept Variant = std::copy_constructible<V> && requires(const V& v, index p) {
    { v.mask(p, p) } -> Mask;
    { v.past_mask(p, p) } -> Mask;
    { v.transform(p, p) } -> ScoreTransform;
    { V::positional } -> std::convertible_to<bool>;
    v.check(p);
    { v.settings() } -> std::same_as<VariantSettings>;
};
// clang-format on

/// Plain causal attention, the default: the same kernel calls as before variants existed.
struct Causal {
    static constexpr bool positional = false; ///< Distances never matter.
    /// `CausalMask` at the given positions.
    [[nodiscard]] CausalMask mask(index q, index k) const noexcept { return {q, k}; }
    /// `NoMask`: every earlier key is seen.
    [[nodiscard]] NoMask past_mask(index, index) const noexcept { return {}; }
    /// `NoTransform`.
    [[nodiscard]] NoTransform transform(index, index) const noexcept { return {}; }
    /// Accepts every head count.
    void check(index) const noexcept {}
    /// No settings.
    [[nodiscard]] VariantSettings settings() const noexcept { return {}; }
};

/// Causal attention within a window (Mistral, Gemma's local layers): a query sees the
/// `window` keys at positions `(position - window, position]`, itself included.
struct SlidingWindow {
    static constexpr bool positional = true; ///< The window counts positions.
    index window = 0;                        ///< Keys a query sees, its own included.

    /// `SlidingWindowMask` at the given positions.
    [[nodiscard]] SlidingWindowMask mask(index q, index k) const noexcept { return {window, q, k}; }
    /// The same window: earlier keys may lie outside it.
    [[nodiscard]] SlidingWindowMask past_mask(index q, index k) const noexcept
    {
        return mask(q, k);
    }
    /// `NoTransform`.
    [[nodiscard]] NoTransform transform(index, index) const noexcept { return {}; }
    /// \throws star::error if `window` is less than 1.
    void check(index) const
    {
        if (window <= 0)
            detail::fail("SlidingWindow: the window must be at least 1 token, got ", window);
    }
    /// The window.
    [[nodiscard]] VariantSettings settings() const noexcept { return {window, {}, 0}; }
};

namespace detail {

// `t` then `then`, without a `Composed` around a `NoTransform`: a variant with one
// transform gets the kernel's code for that transform alone.
template <class T, class U>
auto then_transform(const T& t, const U& then)
{
    if constexpr (std::is_same_v<T, NoTransform>)
        return then;
    else
        return Composed<T, U>{t, then};
}

} // namespace detail

/// `Base` with logit soft-capping after its own transform (Gemma 2: `SoftCapped<>{50}` on
/// global layers, `SoftCapped<SlidingWindow>{50, {4096}}` on local ones).
template <Variant Base = Causal>
struct SoftCapped {
    static constexpr bool positional = Base::positional; ///< As `Base`.
    float cap = 0.0f;                                    ///< The bound, finite and positive.
    Base base{};                                         ///< Mask and first transform.

    /// `Base`'s mask.
    [[nodiscard]] auto mask(index q, index k) const { return base.mask(q, k); }
    /// `Base`'s past mask.
    [[nodiscard]] auto past_mask(index q, index k) const { return base.past_mask(q, k); }
    /// `Base`'s transform, then `SoftCap{cap}`.
    [[nodiscard]] auto transform(index q, index k) const
    {
        return detail::then_transform(base.transform(q, k), SoftCap{cap});
    }
    /// \throws star::error if `cap` is not finite and positive, or as `Base`.
    void check(index q_heads) const
    {
        if (!(cap > 0.0f) || cap > std::numeric_limits<float>::max())
            detail::fail("SoftCapped: the cap must be finite and positive, got ", cap);
        base.check(q_heads);
    }
    /// `Base`'s settings with the cap.
    [[nodiscard]] VariantSettings settings() const
    {
        VariantSettings s = base.settings();
        s.cap = cap;
        return s;
    }
};

/// `Base` with ALiBi's distance penalty after its own transform. `slopes` (one per query
/// head, `alibi_slopes`) points at the caller's memory, which must outlive the variant.
template <Variant Base = Causal>
struct WithAlibi {
    static constexpr bool positional = true; ///< The penalty counts positions.
    std::span<const float> slopes;           ///< One slope per query head, finite.
    Base base{};                             ///< Mask and first transform.

    /// `Base`'s mask.
    [[nodiscard]] auto mask(index q, index k) const { return base.mask(q, k); }
    /// `Base`'s past mask.
    [[nodiscard]] auto past_mask(index q, index k) const { return base.past_mask(q, k); }
    /// `Base`'s transform, then `Alibi` at the given positions.
    [[nodiscard]] auto transform(index q, index k) const
    {
        return detail::then_transform(base.transform(q, k), Alibi{slopes, q, k});
    }
    /// \throws star::error if there are not `q_heads` slopes or one is not finite, or as
    /// `Base`.
    void check(index q_heads) const
    {
        if (static_cast<index>(slopes.size()) != q_heads)
            detail::fail("WithAlibi: ", slopes.size(), " slopes for ", q_heads,
                         " query heads; give one slope per query head");
        for (std::size_t h = 0; h < slopes.size(); ++h)
            if (!(std::abs(slopes[h]) <= std::numeric_limits<float>::max()))
                detail::fail("WithAlibi: the slope of head ", h, " is not finite (", slopes[h], ")");
        base.check(q_heads);
    }
    /// `Base`'s settings with a digest of the slopes' bits.
    [[nodiscard]] VariantSettings settings() const
    {
        VariantSettings s = base.settings();
        std::uint64_t digest = 1; // unsigned: wrapping is intended; 0 means no slopes
        for (const float slope : slopes) {
            std::uint32_t bits = 0;
            std::memcpy(&bits, &slope, sizeof bits);
            digest = digest * 1000003 + bits;
        }
        s.slopes = digest;
        return s;
    }
};

static_assert(Variant<Causal>);
static_assert(Variant<SlidingWindow>);
static_assert(Variant<SoftCapped<>>);
static_assert(Variant<SoftCapped<SlidingWindow>>);
static_assert(Variant<WithAlibi<>>);
static_assert(Variant<SoftCapped<WithAlibi<>>>);

} // namespace star
