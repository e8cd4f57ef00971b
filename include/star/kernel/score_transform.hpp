#pragma once
/// \file
/// Score transforms: what the kernel does to a visible score before its softmax (the
/// "logits transform" half of an attention variant; masks, mask.hpp, are the other half).
///
/// A transform sees one scaled score `s = scale * q.k` at a time, with the row of its query
/// and key in the `q` and `k` tensors handed to the kernel and its query head. It never
/// decides visibility: the mask alone does, and hidden scores stay `-inf` whatever the
/// transform. A transform that needs absolute positions carries its own offsets, as masks do.
///
/// The library's transforms (`SoftCap`, `Alibi`) are computed in vector registers by every
/// path of the kernel; a type of the caller's own is called once per visible score.

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "../error.hpp"
#include "../tensor.hpp"

namespace star {

/// A function of each visible score of one kernel call.
///
/// - `t(score, query_row, key_row, q_head)` returns the score the softmax uses instead of
///   `score`, the scaled score `scale * q.k` of query row `query_row` (a row of `q`, a token
///   index) and key row `key_row` (a row of `k`) at query head `q_head` (grouped-query heads
///   are distinct here even where they share a KV head).
///
/// It is called for the pairs of every tile the mask does not hide wholly, in no particular
/// order, from several threads at once, and must give the same result for the same
/// arguments. Pairs the mask hides inside such a tile may be transformed too; their results
/// are discarded (hidden scores stay `-inf`), so the call must merely be harmless there. It must not turn
/// every score of a query into `-inf` or `+inf`: a row left with no usable weight although
/// its mask shows it keys is reported as an overflow (`star::runtime_failure`). Transforms
/// are small value types, copied freely.
// clang-format off
template <class T>
concept ScoreTransform =
    std::copy_constructible<T> && requires(const T& t, float score, index i, index j, index h) {
        { t(score, i, j, h) } -> std::convertible_to<float>;
    };
// clang-format on

/// The score as it is: plain softmax attention. The kernel compiles to the same code as
/// with no transform at all.
struct NoTransform {
    /// Returns `score`.
    [[nodiscard]] constexpr float operator()(float score, index, index, index) const noexcept
    {
        return score;
    }
};

/// Logit soft-capping (Gemma 2): `cap * tanh(score / cap)`, which bounds every score to
/// `(-cap, cap)` smoothly, nearly unchanged where `|score|` is well below `cap`. Applied to
/// the scaled score, as Gemma 2 does (`attn_logit_softcapping`, 50 there). `cap` must be
/// finite and positive.
struct SoftCap {
    float cap = 0.0f; ///< The bound; `attention` rejects a cap that is not finite and positive.

    /// `cap * tanh(score / cap)`.
    [[nodiscard]] float operator()(float score, index, index, index) const noexcept
    {
        return cap * std::tanh(score / cap);
    }
};

/// ALiBi (Press et al., "Train Short, Test Long"): a penalty that grows linearly with the
/// distance between query and key, `score - slopes[h] * |key position - query position|`,
/// its slope one per query head. Query row `i` sits at position `query_offset + i`, key row
/// `j` at `key_offset + j` (as in `CausalMask`). Under a causal mask the distance is
/// `query - key`, the paper's bias `slope * (key - query)`; keys after the query (no causal
/// mask) are penalised by their distance too, as flash-attn's ALiBi does, rather than
/// rewarded. `alibi_slopes(heads)` gives the paper's slopes. `slopes` points at the
/// caller's memory, which must outlive the transform.
struct Alibi {
    std::span<const float> slopes; ///< One slope per query head, finite.
    index query_offset = 0;        ///< Position of query row 0.
    index key_offset = 0;          ///< Position of key row 0.

    /// `score - slopes[head] * |key position - query position|`.
    [[nodiscard]] float operator()(float score, index query_row, index key_row,
                                   index head) const noexcept
    {
        const index distance = (key_offset + key_row) - (query_offset + query_row);
        const float slope = slopes[static_cast<std::size_t>(head)];
        return std::fma(-slope, static_cast<float>(distance < 0 ? -distance : distance), score);
    }
};

/// The ALiBi slopes of a model with `heads` query heads, as the paper defines them: for a
/// power of two `n`, the geometric sequence `2^(-8/n), 2^(-16/n), ..., 2^(-8)`; otherwise
/// those of the largest power of two `n` below `heads`, followed by every other slope of
/// `2n` (its 1st, 3rd, ...) until there are `heads` of them. Head `h` takes slope `h`.
/// \throws star::invalid_argument if `heads` is not positive.
inline std::vector<float> alibi_slopes(index heads)
{
    if (heads <= 0)
        detail::fail("alibi_slopes: need a positive number of heads, got ", heads);
    index power = 1;
    while (power * 2 <= heads)
        power *= 2;
    // Slope k of n heads is 2^(-8(k + 1)/n): powers of two, so exact in float for n up to 8,
    // and within an ulp otherwise. Written into a vector of its final size: GCC 12 reported
    // push_back in the earlier loop as an overflowing memmove (-Wstringop-overflow, a false
    // positive) once inlined under ThreadSanitizer's flags, in users' code too.
    const auto slope = [](index k, index n) {
        return static_cast<float>(
            std::exp2(-8.0 * static_cast<double>(k + 1) / static_cast<double>(n)));
    };
    std::vector<float> slopes(static_cast<std::size_t>(heads));
    for (index h = 0; h < heads; ++h)
        slopes[static_cast<std::size_t>(h)] =
            h < power ? slope(h, power) : slope(2 * (h - power), 2 * power);
    return slopes;
}

/// Two transforms, one after the other: `second(first(score, ...), ...)`, such as ALiBi's
/// penalty and then a soft cap (`Composed<Alibi, SoftCap>{{slopes}, {cap}}`). Each part keeps
/// its own code in the kernel (for the library's, vector code: a second pass over a tile that
/// is still in cache), and `attention` checks each part as it would alone.
template <ScoreTransform First, ScoreTransform Second>
struct Composed {
    First first;   ///< Applied to the score.
    Second second; ///< Applied to what `first` returns.

    /// `second(first(score, query_row, key_row, head), query_row, key_row, head)`.
    [[nodiscard]] float operator()(float score, index query_row, index key_row, index head) const
    {
        const auto once = static_cast<float>(first(score, query_row, key_row, head));
        return static_cast<float>(second(once, query_row, key_row, head));
    }
};

static_assert(ScoreTransform<NoTransform>);
static_assert(ScoreTransform<SoftCap>);
static_assert(ScoreTransform<Alibi>);
static_assert(ScoreTransform<Composed<Alibi, SoftCap>>);

namespace detail {

/// A transform of the caller's own: nothing the library can check.
template <class T>
void check_transform(const T&, index, index, index, const char*)
{
}

/// Rejects a cap that is not finite and positive.
inline void check_transform(const SoftCap& t, index, index, index, const char* where)
{
    if (!std::isfinite(t.cap) || t.cap <= 0.0f)
        fail(where, ": SoftCap's cap must be finite and positive, got ", t.cap);
}

/// Rejects a slope count other than `q_heads`, a slope that is not finite, and a slope so
/// steep that its penalty at the call's largest distance would come near float's limit:
/// a penalty of `-inf` for every key of a row would leave it no usable weight, reported
/// only once the work is done. Half of float's range leaves room for the score itself.
inline void check_transform(const Alibi& t, index q_heads, index q_tokens, index k_tokens,
                            const char* where)
{
    if (static_cast<index>(t.slopes.size()) != q_heads)
        fail(where, ": Alibi has ", t.slopes.size(), " slopes but q has ", q_heads,
             " heads; give one slope per query head");
    if (t.slopes.data() == nullptr)
        fail(where, ": Alibi's slopes view null memory");
    // The largest |key - query| of the call, in double so that no offset can overflow it.
    const auto position = [](index offset, index row) {
        return static_cast<double>(offset) + static_cast<double>(row);
    };
    const double farthest =
        q_tokens == 0 || k_tokens == 0
            ? 0.0
            : std::max(std::abs(position(t.key_offset, k_tokens - 1) - position(t.query_offset, 0)),
                       std::abs(position(t.key_offset, 0) - position(t.query_offset, q_tokens - 1)));
    for (std::size_t h = 0; h < t.slopes.size(); ++h) {
        const float slope = t.slopes[h];
        if (!std::isfinite(slope))
            fail(where, ": Alibi's slope for head ", h, " is not finite (", slope, ")");
        if (std::abs(static_cast<double>(slope)) * farthest >
            static_cast<double>(std::numeric_limits<float>::max()) / 2) {
            // Every digit of a distance an index can hold; a double prints six.
            const auto distance = farthest < 9e18 ? std::to_string(static_cast<long long>(farthest))
                                                  : std::to_string(farthest);
            fail(where, ": Alibi's slope for head ", h, " (", slope,
                 ") times the largest query-key distance of the call (", distance,
                 ") overflows float");
        }
    }
}

/// Each part, as `attention` would check it alone.
template <class First, class Second>
void check_transform(const Composed<First, Second>& t, index q_heads, index q_tokens,
                     index k_tokens, const char* where)
{
    check_transform(t.first, q_heads, q_tokens, k_tokens, where);
    check_transform(t.second, q_heads, q_tokens, k_tokens, where);
}

} // namespace detail
} // namespace star
