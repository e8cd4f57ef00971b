#pragma once
/// \file
/// Anchor policies: which earlier keys every block sees besides its own, and how a host
/// obtains their K/V.

#include <algorithm>
#include <concepts>
#include <optional>
#include <span>

#include "block.hpp"

namespace star {

/// How a host gets the K/V of its anchor tokens.
enum class AnchorSource {
    /// The host has the anchor tokens' inputs and computes their K/V itself (the paper's
    /// reference: every host runs `[anchor ; block]` through the model). No communication.
    compute,
    /// The hosts that own the anchor tokens send their K/V to every host, once per layer:
    /// communication instead of recomputation.
    receive,
};

/// An Anchor policy names, for block `i` of `blocks`, the range of earlier context tokens
/// that block also attends to (`anchor_for`, empty for none; it must end at or before
/// `blocks[i].begin`), and where hosts get those tokens' K/V (`source`). A `receive`
/// anchor must be a prefix `[0, a)` of the context, the same for every block up to the
/// block's own start, so that its owners can broadcast it once. `check(context_tokens)`
/// rejects a configuration the context cannot satisfy.
// clang-format off
template <class A>
concept Anchor = std::copy_constructible<A> &&
                 requires(const A& a, std::span<const TokenRange> blocks, index i) {
                     { a.anchor_for(blocks, i) } -> std::same_as<TokenRange>;
                     { a.source() } -> std::same_as<AnchorSource>;
                     a.check(i);
                 };
// clang-format on

/// The first `tokens` context tokens, at their original positions (the paper's anchor);
/// by default as many as the first block holds (`a = b`). A block that starts before the
/// anchor ends sees the part of the anchor before it, and the rest causally as its own.
struct FirstTokens {
    /// Anchor size in tokens; the first block's size when empty.
    std::optional<index> tokens;
    AnchorSource from = AnchorSource::compute; ///< How hosts get the anchor's K/V.

    /// `[0, min(anchor size, blocks[i].begin))`: empty for the first block.
    [[nodiscard]] TokenRange anchor_for(std::span<const TokenRange> blocks, index i) const
    {
        const index size = tokens.value_or(blocks.empty() ? 0 : blocks.front().size());
        return {0, std::min(size, blocks[static_cast<std::size_t>(i)].begin)};
    }
    /// `from`.
    [[nodiscard]] AnchorSource source() const noexcept { return from; }
    /// Checks the anchor size against a context of `context_tokens` tokens.
    /// \throws star::error if `tokens` is set and less than 1 or more than `context_tokens`.
    void check(index context_tokens) const
    {
        if (tokens && *tokens <= 0)
            detail::fail("FirstTokens: anchor size must be at least 1, got ", *tokens,
                         " (use NoAnchor for none)");
        if (tokens && *tokens > context_tokens)
            detail::fail("FirstTokens: anchor of ", *tokens,
                         " tokens is larger than the context of ", context_tokens, " tokens");
    }
};

/// Attention sinks: only the first `tokens` tokens (a handful) as the anchor.
struct SinkTokens {
    index tokens = 4;                          ///< Number of sink tokens.
    AnchorSource from = AnchorSource::compute; ///< How hosts get the sinks' K/V.

    /// `[0, min(tokens, blocks[i].begin))`: empty for the first block.
    [[nodiscard]] TokenRange anchor_for(std::span<const TokenRange> blocks, index i) const
    {
        return {0, std::min(tokens, blocks[static_cast<std::size_t>(i)].begin)};
    }
    /// `from`.
    [[nodiscard]] AnchorSource source() const noexcept { return from; }
    /// Checks the number of sinks against a context of `context_tokens` tokens.
    /// \throws star::error if `tokens` is less than 1 or more than `context_tokens`.
    void check(index context_tokens) const
    {
        if (tokens <= 0)
            detail::fail("SinkTokens: number of sink tokens must be at least 1, got ", tokens);
        if (tokens > context_tokens)
            detail::fail("SinkTokens: ", tokens, " sink tokens is more than the context of ",
                         context_tokens, " tokens");
    }
};

/// No anchor: each block attends to itself only (the paper's ablation).
struct NoAnchor {
    /// Always the empty range.
    [[nodiscard]] TokenRange anchor_for(std::span<const TokenRange>, index) const { return {}; }
    /// `AnchorSource::compute` (there is nothing to receive).
    [[nodiscard]] AnchorSource source() const noexcept { return AnchorSource::compute; }
    /// Accepts every context.
    void check(index) const noexcept {}
};

/// The previous block as the anchor (the paper's ablation); always computed locally, since
/// every block needs a different one.
struct PreviousBlock {
    /// `blocks[i - 1]`; empty for the first block.
    [[nodiscard]] TokenRange anchor_for(std::span<const TokenRange> blocks, index i) const
    {
        return i == 0 ? TokenRange{} : blocks[static_cast<std::size_t>(i - 1)];
    }
    /// `AnchorSource::compute`.
    [[nodiscard]] AnchorSource source() const noexcept { return AnchorSource::compute; }
    /// Accepts every context.
    void check(index) const noexcept {}
};

static_assert(Anchor<FirstTokens>);
static_assert(Anchor<SinkTokens>);
static_assert(Anchor<NoAnchor>);
static_assert(Anchor<PreviousBlock>);

} // namespace star
