#pragma once
/// \file
/// Block policies: how the context is cut into blocks.

#include <algorithm>
#include <concepts>
#include <span>
#include <vector>

#include "../tensor.hpp"

namespace star {

/// Tokens `[begin, end)` of the context.
struct TokenRange {
    index begin = 0; ///< First token.
    index end = 0;   ///< One past the last token.

    /// Number of tokens, `end - begin`.
    [[nodiscard]] constexpr index size() const noexcept { return end - begin; }
    /// True when the range holds no token.
    [[nodiscard]] constexpr bool empty() const noexcept { return end <= begin; }
    /// Equal when both bounds are.
    friend constexpr bool operator==(const TokenRange&, const TokenRange&) = default;
};

/// A Block policy cuts a context of `tokens` tokens into blocks: `blocks(tokens)` returns
/// non-empty, consecutive ranges covering `[0, tokens)` in order (none for an empty context).
/// It is called once per plan, and should reject its own bad configuration (say a size of 0)
/// with `star::error`.
template <class B>
concept Block = std::copy_constructible<B> && requires(const B& b, index tokens) {
    { b.blocks(tokens) } -> std::same_as<std::vector<TokenRange>>;
};

/// Blocks of `size` tokens; the last one is short when `size` does not divide the context.
/// The paper's choice, with `size = L/4` its recommended trade-off.
struct FixedBlocks {
    index size = 0; ///< Tokens per block; must be set (at least 1).

    /// The blocks of a context of `tokens` tokens.
    /// \throws star::error if `size` is less than 1.
    [[nodiscard]] std::vector<TokenRange> blocks(index tokens) const
    {
        if (size <= 0)
            detail::fail("FixedBlocks: block size must be at least 1, got ", size);
        std::vector<TokenRange> result;
        // `tokens - begin` rather than `begin + size`, which overflows for a huge size.
        for (index begin = 0; begin < tokens;) {
            const index end = tokens - begin > size ? begin + size : tokens;
            result.push_back({begin, end});
            begin = end;
        }
        return result;
    }
};

namespace detail {

/// `pieces` consecutive ranges covering `[0, tokens)` whose sizes differ by at most one
/// (the first `tokens mod pieces` are one longer); some are empty when `tokens < pieces`.
inline std::vector<TokenRange> near_equal_ranges(index tokens, index pieces)
{
    std::vector<TokenRange> result;
    index begin = 0;
    for (index i = 0; i < pieces; ++i) {
        const index size = tokens / pieces + (i < tokens % pieces ? 1 : 0);
        result.push_back({begin, begin + size});
        begin += size;
    }
    return result;
}

} // namespace detail

/// `count` blocks whose sizes differ by at most one token (the first `tokens mod count`
/// are one longer); fewer, of one token each, when the context is shorter than `count`.
struct EqualBlocks {
    index count = 0; ///< Number of blocks; must be set (at least 1).

    /// The blocks of a context of `tokens` tokens.
    /// \throws star::error if `count` is less than 1.
    [[nodiscard]] std::vector<TokenRange> blocks(index tokens) const
    {
        if (count <= 0)
            detail::fail("EqualBlocks: block count must be at least 1, got ", count);
        return detail::near_equal_ranges(tokens, std::min(count, tokens));
    }
};

static_assert(Block<FixedBlocks>);
static_assert(Block<EqualBlocks>);

} // namespace star
