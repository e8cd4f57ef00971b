#pragma once
/// \file
/// Masks: which keys a query may see, told to the kernel one tile at a time.
///
/// The kernel never builds an `Lq x Lk` matrix. It asks a mask about a rectangle of
/// (query, key) index pairs; rectangles that are wholly hidden are skipped, wholly visible
/// ones are computed without per-element tests, and only the few that are cut by the
/// mask's boundary are tested element by element with `visible`. Indices are the row
/// numbers in the `q` and `k` tensors handed to the kernel; a mask that needs absolute
/// positions carries its own offsets.

#include <algorithm>
#include <concepts>
#include <span>

#include "../tensor.hpp"

namespace star {

/// How much of a rectangle of (query, key) pairs a mask lets through: `none` (no pair is
/// visible: the kernel skips the rectangle), `partial` (some pairs may be: the kernel asks
/// `visible` for each) or `full` (every pair is visible).
enum class Coverage { none, partial, full };

/// A mask over the (query, key) pairs of one kernel call.
///
/// - `coverage(q_begin, q_end, k_begin, k_end)` classifies the rectangle of queries
///   `[q_begin, q_end)` and keys `[k_begin, k_end)`. It must be exact for `none` and
///   `full`; answering `partial` is always safe (it only costs speed).
/// - `visible(i, j)` says whether query `i` sees key `j`; called only inside rectangles
///   classified `partial`.
///
/// Masks are small value types, copied freely and called from several threads at once.
// clang-format off
template <class M>
concept Mask = std::copy_constructible<M> && requires(const M& m, index i, index j) {
    { m.coverage(i, i, j, j) } -> std::same_as<Coverage>;
    { m.visible(i, j) } -> std::convertible_to<bool>;
};
// clang-format on

namespace detail {

/// The positions at the corners of a rectangle of (query, key) rows, for masks whose rows
/// sit at `query_offset + i` and `key_offset + j`.
struct RectanglePositions {
    index first_query, last_query, first_key, last_key;
};

constexpr RectanglePositions positions(index query_offset, index key_offset, index q_begin,
                                       index q_end, index k_begin, index k_end) noexcept
{
    return {query_offset + q_begin, query_offset + q_end - 1, key_offset + k_begin,
            key_offset + k_end - 1};
}

} // namespace detail

/// Every query sees every key.
struct NoMask {
    /// Always `Coverage::full`.
    [[nodiscard]] constexpr Coverage coverage(index, index, index, index) const noexcept
    {
        return Coverage::full;
    }
    /// Always true.
    [[nodiscard]] constexpr bool visible(index, index) const noexcept { return true; }
};

/// Causal attention with position offsets: query `i` sits at position `query_offset + i`,
/// key `j` at `key_offset + j`, and a query sees the keys at positions up to its own.
/// Self-attention over one sequence uses zero offsets; a query chunk that follows `n`
/// cached keys uses `query_offset = n`.
struct CausalMask {
    index query_offset = 0; ///< Position of query row 0.
    index key_offset = 0;   ///< Position of key row 0.

    /// `full` when every key of the rectangle is at or before its first query's position,
    /// `none` when every key is after its last query's, `partial` otherwise.
    [[nodiscard]] constexpr Coverage coverage(index q_begin, index q_end, index k_begin,
                                              index k_end) const noexcept
    {
        const auto [first_query, last_query, first_key, last_key] =
            detail::positions(query_offset, key_offset, q_begin, q_end, k_begin, k_end);
        if (last_key <= first_query)
            return Coverage::full;
        if (first_key > last_query)
            return Coverage::none;
        return Coverage::partial;
    }
    /// Whether key `j`'s position is at or before query `i`'s.
    [[nodiscard]] constexpr bool visible(index i, index j) const noexcept
    {
        return key_offset + j <= query_offset + i;
    }
};

/// Causal attention within a window (the local layers of Mistral and Gemma): query `i`, at
/// position `query_offset + i`, sees the `window` keys at positions
/// `(position - window, position]`, itself included. A window of 0 or less hides every key.
struct SlidingWindowMask {
    index window = 0;       ///< Keys a query sees, its own included.
    index query_offset = 0; ///< Position of query row 0.
    index key_offset = 0;   ///< Position of key row 0.

    /// `full` when every key of the rectangle is inside every query's window, `none` when
    /// inside none, `partial` otherwise.
    [[nodiscard]] constexpr Coverage coverage(index q_begin, index q_end, index k_begin,
                                              index k_end) const noexcept
    {
        const auto [first_query, last_query, first_key, last_key] =
            detail::positions(query_offset, key_offset, q_begin, q_end, k_begin, k_end);
        // Written as differences to a query position, which cannot overflow for a huge
        // window the way `position - window` can.
        if (first_key > last_query || window <= 0 || first_query - last_key >= window)
            return Coverage::none;
        if (last_key <= first_query && last_query - first_key < window)
            return Coverage::full;
        return Coverage::partial;
    }
    /// Whether key `j` lies in query `i`'s window.
    [[nodiscard]] constexpr bool visible(index i, index j) const noexcept
    {
        const index distance = (query_offset + i) - (key_offset + j);
        return distance >= 0 && distance < window;
    }
};

/// Causal attention within documents packed into one sequence (a document mask, as
/// flash-attn's varlen or FlexAttention's document masking): the documents start at the
/// positions in `starts` (ascending, the first at or before every position used), and a
/// query sees the keys of its own document up to its own position. `starts` points at the
/// caller's memory, which must outlive the mask.
struct DocumentMask {
    std::span<const index> starts; ///< Position of each document's first token, ascending.
    index query_offset = 0;        ///< Position of query row 0.
    index key_offset = 0;          ///< Position of key row 0.

    /// `none` when every key is after the last query or before the first query's document,
    /// `full` when the queries share one document and every key is in it, at or before the
    /// first query; `partial` otherwise.
    [[nodiscard]] constexpr Coverage coverage(index q_begin, index q_end, index k_begin,
                                              index k_end) const noexcept
    {
        const auto [first_query, last_query, first_key, last_key] =
            detail::positions(query_offset, key_offset, q_begin, q_end, k_begin, k_end);
        const index document_start = start_of(first_query);
        if (first_key > last_query || last_key < document_start)
            return Coverage::none;
        if (start_of(last_query) == document_start && first_key >= document_start &&
            last_key <= first_query)
            return Coverage::full;
        return Coverage::partial;
    }
    /// Whether key `j` is in query `i`'s document, at or before it.
    [[nodiscard]] constexpr bool visible(index i, index j) const noexcept
    {
        const index query = query_offset + i, key = key_offset + j;
        return key <= query && key >= start_of(query);
    }

    /// The start of the document holding `position`.
    [[nodiscard]] constexpr index start_of(index position) const noexcept
    {
        const auto after = std::upper_bound(starts.begin(), starts.end(), position);
        return after == starts.begin() ? position : *(after - 1);
    }
};

static_assert(Mask<NoMask>);
static_assert(Mask<CausalMask>);
static_assert(Mask<SlidingWindowMask>);
static_assert(Mask<DocumentMask>);

} // namespace star
