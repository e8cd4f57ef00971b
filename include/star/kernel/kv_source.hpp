#pragma once
/// \file
/// Where the kernel reads keys and values from: a *K/V source*. One runtime type,
/// `KVPages`, describes every layout the kernel reads without a copy: a contiguous
/// `[tokens, heads, head_dim]` view (one page), a strided view (K or V sliced out of a
/// fused QKV projection: one page with wider strides) and a paged cache, its pages given
/// either by a page table into a pool of fixed-size pages (the vLLM / FlashInfer layout) or
/// by one pointer per page (pages allocated one by one, as `KVCache` grows); the last page
/// may be partial. Any of them may be narrowed to a range of its tokens (`tokens_from`).
/// Being one type rather than a template parameter, it leaves the kernel one instantiation
/// per element type, so adding a layout costs no compile time.
///
/// The kernel only ever asks a source for *runs*: consecutive tokens that lie in one page,
/// one stride apart. A contiguous view is a single run, so it is read exactly as before.

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>

#include "../error.hpp"
#include "../tensor.hpp"

namespace star {

/// How the rows of a K/V source lie in memory. Strides count elements. The `head_dim`
/// elements of one (token, head) row are contiguous; row `(t, h)` is at
/// `page(t / page_tokens) + (t % page_tokens) * token_stride + h * head_stride`.
struct KVLayout {
    index tokens = 0;       ///< Tokens of the source (the last page may be partly used).
    index heads = 0;        ///< KV heads.
    index head_dim = 0;     ///< Elements of one (token, head) row.
    index page_tokens = 0;  ///< Tokens per page; positive.
    index token_stride = 0; ///< Elements from a token's row to the next token's, in a page.
    index head_stride = 0;  ///< Elements from a head's row to the next head's.
    index page_stride = 0;  ///< Elements from one page of the pool to the next (unused when
                            ///< each page is given by its own pointer).
};

/// A K or V source: `tokens` rows of `heads x head_dim` elements of type `KV`, read in
/// place from caller memory (see the file's comment). It views that memory (and the page
/// table or the array of page pointers) without owning it: both must outlive every use.
/// Copying is cheap.
template <KVElement KV>
class KVPages {
public:
    /// Consecutive tokens of one page: token `first_token + i`, head `h` is at
    /// `first + i * token_stride + h * head_stride`.
    struct Run {
        const KV* first;    ///< Row of the run's first token, head 0.
        index token_stride; ///< Elements from one token's row to the next.
        index length;       ///< Tokens in the run.
    };

    /// A contiguous `[tokens, heads, head_dim]` view as one page. Not checked here, so
    /// that `attention` reports a bad view in its own words.
    KVPages(const ConstView3<KV>& contiguous) // NOLINT(google-explicit-constructor): a view is a source
        : base_(contiguous.data()), layout_{contiguous.dimension(0),
                                            contiguous.dimension(1),
                                            contiguous.dimension(2),
                                            std::max<index>(contiguous.dimension(0), 1),
                                            contiguous.dimension(1) * contiguous.dimension(2),
                                            contiguous.dimension(2),
                                            0}
    {
    }

    /// Pages `page_table[p]` of a pool of `pool_pages` pages starting at `pool`, or, for an
    /// empty `page_table`, the single page `pool`. Token `t` lies in page
    /// `page_table[t / layout.page_tokens]`.
    /// \throws star::invalid_argument for sizes that are not positive (tokens may be 0),
    /// negative strides, strides under which two rows (or two pages) overlap, a page table
    /// too short for the tokens, a page index outside the pool, a null pool, or offsets
    /// that overflow an index.
    KVPages(const KV* pool, std::span<const std::int32_t> page_table, index pool_pages,
            const KVLayout& layout)
        : base_(pool), table_(page_table), layout_(layout)
    {
        validate(pool_pages, false);
    }

    /// Pages `pages[p]`, each `layout.page_tokens` tokens laid out by the layout's token and
    /// head strides (`layout.page_stride` is unused): token `t` lies in page
    /// `pages[t / layout.page_tokens]`. For pages allocated one by one, which no pool
    /// offset can reach (`KVCache`'s).
    /// \throws star::invalid_argument for sizes, strides and offsets as the pool constructor,
    /// fewer page pointers than the tokens need, or a null page among those needed.
    KVPages(std::span<const KV* const> pages, const KVLayout& layout)
        : base_(pages.empty() ? nullptr : pages.front()), pages_(pages), layout_(layout)
    {
        validate(0, true);
    }

    /// Tokens of the source.
    [[nodiscard]] index tokens() const noexcept { return layout_.tokens; }
    /// KV heads.
    [[nodiscard]] index heads() const noexcept { return layout_.heads; }
    /// Elements of one (token, head) row.
    [[nodiscard]] index head_dim() const noexcept { return layout_.head_dim; }
    /// The layout: sizes and strides.
    [[nodiscard]] const KVLayout& layout() const noexcept { return layout_; }
    /// The pool (or single page, or first page) the rows are read from.
    [[nodiscard]] const KV* data() const noexcept { return base_; }
    /// Which token of the pages is the source's token 0: 0 but for a source from
    /// `tokens_from` over pages.
    [[nodiscard]] index first_token() const noexcept { return first_; }
    /// Whether the rows lie as a contiguous `[tokens, heads, head_dim]` tensor.
    [[nodiscard]] bool contiguous() const noexcept
    {
        return table_.empty() && pages_.empty() && layout_.head_stride == layout_.head_dim &&
               layout_.token_stride == layout_.heads * layout_.head_dim;
    }

    /// The `count` tokens `[first, first + count)` of this source, as a source of their own
    /// (its token 0 is this one's token `first`) over the same memory: e.g. the part of a
    /// cache that lies at some positions. A run of it never starts before `first`.
    /// \throws star::invalid_argument unless `0 <= first`, `0 <= count` and
    /// `first + count <= tokens()`.
    [[nodiscard]] KVPages tokens_from(index first, index count) const
    {
        if (first < 0 || count < 0 || first > layout_.tokens - count)
            detail::fail("KVPages::tokens_from: ", count, " tokens from token ", first,
                         " are out of range [0, ", layout_.tokens, ")");
        KVPages part = *this;
        part.layout_.tokens = count;
        if (table_.empty() && pages_.empty()) {
            // A single page stays one: its rows start `first` tokens further on.
            if (count > 0)
                part.base_ = base_ + first * layout_.token_stride;
            part.layout_.page_tokens = std::max<index>(count, 1);
        } else {
            part.first_ = first_ + first;
        }
        return part;
    }

    /// Row `(token, head)`.
    [[nodiscard]] const KV* row(index token, index head) const noexcept
    {
        const Run r = run(token, token + 1);
        return r.first + head * layout_.head_stride;
    }

    /// The run from `token` up to the end of its page or to `end`, whichever comes first
    /// (`token < end <= tokens()`).
    [[nodiscard]] Run run(index token, index end) const noexcept
    {
        const index at = first_ + token; // in the pages
        const index page = at / layout_.page_tokens;
        const index in_page = at - page * layout_.page_tokens;
        const KV* page_base = base_;
        if (!pages_.empty())
            page_base = pages_[static_cast<std::size_t>(page)];
        else if (!table_.empty())
            page_base = base_ + static_cast<index>(table_[static_cast<std::size_t>(page)]) *
                                    layout_.page_stride;
        return {page_base + in_page * layout_.token_stride, layout_.token_stride,
                std::min(first_ + end, (page + 1) * layout_.page_tokens) - at};
    }

private:
    void validate(index pool_pages, bool by_pointer) const;

    const KV* base_;
    std::span<const std::int32_t> table_; // pages in a pool, or
    std::span<const KV* const> pages_;    // pages by pointer, or neither: a single page
    KVLayout layout_;
    index first_ = 0; // the source's token 0 in the pages (tokens_from)
};

/// What the kernel's entry points take as keys or values: anything that converts to
/// `KVPages<KV>` (a `ConstView3<KV>`, or a source from `strided_kv` or `paged_kv`).
template <class S, class KV>
concept KVSource = KVElement<KV> && std::convertible_to<const S&, KVPages<KV>>;

static_assert(KVSource<ConstView3<float>, float>);
static_assert(KVSource<KVPages<Eigen::bfloat16>, Eigen::bfloat16>);

/// `tokens` rows of `heads x head_dim` elements at `data`, token `t`'s row of head `h` at
/// `data + t * token_stride + h * head_stride`: e.g. K of a fused QKV projection
/// `[tokens, (Hq + 2 Hkv) * d]` is `strided_kv(qkv + Hq * d, tokens, Hkv, d,
/// (Hq + 2 Hkv) * d, d)`.
/// \throws star::invalid_argument as KVPages' constructor.
template <KVElement KV>
KVPages<KV> strided_kv(const KV* data, index tokens, index heads, index head_dim,
                       index token_stride, index head_stride)
{
    return KVPages<KV>(data, {}, 1,
                       KVLayout{tokens, heads, head_dim, std::max<index>(tokens, 1), token_stride,
                                head_stride, 0});
}

/// A paged cache: `tokens` tokens in pages of `page_tokens`, page `p` of the sequence being
/// page `page_table[p]` of `pool`, laid out `[pool_pages, page_tokens, heads, head_dim]`
/// (vLLM's block table; FlashInfer's `indices` of one request, with its last page length
/// `tokens - (pages - 1) * page_tokens`). Pages may come in any order, and may be shared.
/// \throws star::invalid_argument as KVPages' constructor.
template <KVElement KV>
KVPages<KV> paged_kv(std::span<const std::int32_t> page_table, const KV* pool, index pool_pages,
                     index page_tokens, index tokens, index heads, index head_dim)
{
    return KVPages<KV>(pool, page_table, pool_pages,
                       KVLayout{tokens, heads, head_dim, page_tokens, heads * head_dim, head_dim,
                                page_tokens * heads * head_dim});
}

/// A paged cache whose pages lie anywhere: `tokens` tokens in pages of `page_tokens`, page
/// `p` of the sequence at `pages[p]`, laid out `[page_tokens, heads, head_dim]` (the last
/// page may be partly used). `KVCache::keys()` and `values()` are such sources.
/// \throws star::invalid_argument as KVPages' constructor.
template <KVElement KV>
KVPages<KV> paged_kv(std::span<const KV* const> pages, index page_tokens, index tokens, index heads,
                     index head_dim)
{
    return KVPages<KV>(
        pages, KVLayout{tokens, heads, head_dim, page_tokens, heads * head_dim, head_dim, 0});
}

template <KVElement KV>
void KVPages<KV>::validate(index pool_pages, bool by_pointer) const
{
    const KVLayout& l = layout_;
    if (l.heads <= 0 || l.head_dim <= 0 || l.tokens < 0)
        detail::fail("KVPages: need positive heads and head_dim and a token count of at least 0, "
                     "got ",
                     l.heads, ", ", l.head_dim, " and ", l.tokens);
    if (l.page_tokens <= 0)
        detail::fail("KVPages: page_tokens must be positive, got ", l.page_tokens);
    if (l.token_stride < 0 || l.head_stride < 0 || l.page_stride < 0)
        detail::fail("KVPages: strides must not be negative, got token_stride ", l.token_stride,
                     ", head_stride ", l.head_stride, ", page_stride ", l.page_stride);
    // Rows of one page may lie token-major (heads within a token, as [page, token, head, d])
    // or head-major ([page, head, token, d], FlashInfer's HND); anything else would make
    // two rows share memory, and a write to the cache corrupt another row.
    const index page_rows = std::min(l.page_tokens, std::max<index>(l.tokens, 1));
    const index most = std::numeric_limits<index>::max();
    const auto fits = [&](index count, index stride) { // (count - 1) * stride + d fits
        return count <= 1 || stride <= (most - l.head_dim) / (count - 1);
    };
    if (!fits(l.heads, l.head_stride) || !fits(page_rows, l.token_stride))
        detail::fail("KVPages: offsets within a page overflow an index (token_stride ",
                     l.token_stride, ", head_stride ", l.head_stride, ")");
    const index head_span = (l.heads - 1) * l.head_stride + l.head_dim;
    const index token_span = (page_rows - 1) * l.token_stride + l.head_dim;
    const bool token_major = (l.heads == 1 || l.head_stride >= l.head_dim) &&
                             (page_rows == 1 || l.token_stride >= head_span);
    const bool head_major = (page_rows == 1 || l.token_stride >= l.head_dim) &&
                            (l.heads == 1 || l.head_stride >= token_span);
    if (!token_major && !head_major)
        detail::fail("KVPages: rows overlap: token_stride ", l.token_stride, " and head_stride ",
                     l.head_stride, " for ", l.heads, " heads of head_dim ", l.head_dim, " and ",
                     page_rows, " tokens per page");
    if (by_pointer) {
        // Pages by pointer.
        const index needed = (l.tokens + l.page_tokens - 1) / l.page_tokens;
        if (static_cast<index>(pages_.size()) < needed)
            detail::fail("KVPages: ", l.tokens, " tokens in pages of ", l.page_tokens, " need ",
                         needed, " pages, but ", pages_.size(), " page pointers are given");
        for (index p = 0; p < needed; ++p)
            if (pages_[static_cast<std::size_t>(p)] == nullptr)
                detail::fail("KVPages: page ", p, " of ", needed, " is null");
        return;
    }
    if (l.tokens > 0 && base_ == nullptr)
        detail::fail("KVPages: the pool is null but holds ", l.tokens, " tokens");
    const index page_extent = (page_rows - 1) * l.token_stride + head_span;
    if (table_.empty())
        return; // a single page
    if (pool_pages <= 0)
        detail::fail("KVPages: the pool must hold at least one page, got ", pool_pages);
    if (pool_pages > 1 && l.page_stride < page_extent)
        detail::fail("KVPages: pages overlap: page_stride ", l.page_stride,
                     " is less than a page's ", page_extent, " elements");
    if (!fits(pool_pages, l.page_stride) || (pool_pages - 1) * l.page_stride > most - page_extent)
        detail::fail("KVPages: offsets in a pool of ", pool_pages, " pages of stride ",
                     l.page_stride, " overflow an index");
    const index needed = (l.tokens + l.page_tokens - 1) / l.page_tokens;
    if (static_cast<index>(table_.size()) < needed)
        detail::fail("KVPages: ", l.tokens, " tokens in pages of ", l.page_tokens, " need ", needed,
                     " pages, but the page table has ", table_.size());
    for (index p = 0; p < needed; ++p) {
        const index page = table_[static_cast<std::size_t>(p)];
        if (page < 0 || page >= pool_pages)
            detail::fail("KVPages: page table entry ", p, " is page ", page,
                         ", outside the pool of ", pool_pages, " pages");
    }
}

} // namespace star
