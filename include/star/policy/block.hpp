#pragma once
/// \file
/// Block policies: how the context is cut into blocks.

#include <algorithm>
#include <concepts>
#include <optional>
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
/// with `star::error`. A policy may also offer `blocks(tokens, hosts)`, which `plan` then
/// calls instead, for blocks that depend on the number of hosts.
// clang-format off
template <class B>
concept Block = std::copy_constructible<B> && requires(const B& b, index tokens) {
    { b.blocks(tokens) } -> std::same_as<std::vector<TokenRange>>;
};
// clang-format on

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

/// One block per host (the paper's layout), near-equal; fewer when the context is shorter.
inline std::vector<TokenRange> one_block_per_host(index tokens, int hosts)
{
    if (hosts <= 0)
        fail("one block per host: the number of hosts must be at least 1, got ", hosts);
    return near_equal_ranges(tokens, std::min<index>(hosts, tokens));
}

} // namespace detail

/// Blocks of `size` tokens; the last one is short when `size` does not divide the context.
/// The paper's choice, with `size = L/4` its recommended trade-off. Left unset
/// (`FixedBlocks{}`), one block per host, as the paper lays the context out.
struct FixedBlocks {
    std::optional<index> size; ///< Tokens per block (at least 1); unset: one block per host.

    /// The blocks of a context of `tokens` tokens over `hosts` hosts.
    /// \throws star::error if `size` is set and less than 1, or `hosts` is less than 1.
    [[nodiscard]] std::vector<TokenRange> blocks(index tokens, int hosts) const
    {
        return size ? blocks(tokens) : detail::one_block_per_host(tokens, hosts);
    }

    /// The blocks of a context of `tokens` tokens.
    /// \throws star::error if `size` is unset (it needs the host count) or less than 1.
    [[nodiscard]] std::vector<TokenRange> blocks(index tokens) const
    {
        if (!size)
            detail::fail("FixedBlocks: no block size set; without one, the blocks are one per "
                         "host, and need blocks(tokens, hosts)");
        const index step = *size;
        if (step <= 0)
            detail::fail("FixedBlocks: block size must be at least 1, got ", step);
        std::vector<TokenRange> result;
        // `tokens - begin` rather than `begin + step`, which overflows for a huge size.
        for (index begin = 0; begin < tokens;) {
            const index end = tokens - begin > step ? begin + step : tokens;
            result.push_back({begin, end});
            begin = end;
        }
        return result;
    }
};

/// `count` blocks whose sizes differ by at most one token (the first `tokens mod count`
/// are one longer); fewer, of one token each, when the context is shorter than `count`.
/// Left unset (`EqualBlocks{}`), one block per host.
struct EqualBlocks {
    std::optional<index> count; ///< Number of blocks (at least 1); unset: one per host.

    /// The blocks of a context of `tokens` tokens over `hosts` hosts.
    /// \throws star::error if `count` is set and less than 1, or `hosts` is less than 1.
    [[nodiscard]] std::vector<TokenRange> blocks(index tokens, int hosts) const
    {
        return count ? blocks(tokens) : detail::one_block_per_host(tokens, hosts);
    }

    /// The blocks of a context of `tokens` tokens.
    /// \throws star::error if `count` is unset (it needs the host count) or less than 1.
    [[nodiscard]] std::vector<TokenRange> blocks(index tokens) const
    {
        if (!count)
            detail::fail("EqualBlocks: no block count set; without one, the blocks are one per "
                         "host, and need blocks(tokens, hosts)");
        if (*count <= 0)
            detail::fail("EqualBlocks: block count must be at least 1, got ", *count);
        return detail::near_equal_ranges(tokens, std::min(*count, tokens));
    }
};

static_assert(Block<FixedBlocks>);
static_assert(Block<EqualBlocks>);

} // namespace star
