// Score transforms (kernel/score_transform.hpp) over a tile of scores, written once over a
// float atom `S`. Included by kernels.hpp into one namespace per path, inside that path's
// target region, after exp.inl; it has no include guard.
//
// The library's own transforms run in vector registers: a scalar tanhf per score would
// cost about as much as the score's whole dot product. A transform of the caller's own is
// called once per score. Both kernels transform every score of the tile they have just
// computed, before the mask writes -inf over the hidden ones: masked scores are computed
// and thrown away either way, and one pass without a test per score is cheaper than asking
// the mask.

/// `tanh(x)` in every lane, within 2 ulp (tests/test_variants.cpp sweeps it). Below
/// |x| = 0.625 an odd polynomial `x + x^3 P(x^2)`, P of degree 4 fitted (least squares on
/// Chebyshev nodes, relative error) for this library: 0.83 ulp in float. Above it
/// `1 - 2 / (e^(2|x|) + 1)`, which loses nothing to cancellation there: the subtrahend is
/// at most 0.45, so the relative error of the quotient (exp's ulp or two, the add's and the
/// divide's) reaches the result at most 0.8 times; 1.2 ulp measured. `2|x|` is clamped at
/// 20, where `2 / (e^20 + 1)` is already below half an ulp of 1, so the exp needs none of
/// exp_of's limits (a quarter of the cost). The clamp would turn NaN into 1, so NaN is put
/// back at the end: write_row reports it.
template <class S>
typename S::reg tanh_of(typename S::reg x) noexcept
{
    const auto c = [](float value) { return S::broadcast(value); };
    const auto zero = c(0.0f);
    const auto a = S::max(x, S::sub(zero, x));
    const auto twice = S::min(S::add(a, a), c(20.0f));
    typename S::reg e;
    if constexpr (requires { S::exp(twice); })
        e = S::exp(twice);
    else
        e = exp_in_range<S>(twice);
    const auto large = S::sub(c(1.0f), S::div(c(2.0f), S::add(e, c(1.0f))));
    const auto y = S::mul(a, a);
    auto p = c(-5.6919855997e-3f);
    p = S::fma(p, y, c(2.0626291633e-2f));
    p = S::fma(p, y, c(-5.3735319525e-2f));
    p = S::fma(p, y, c(1.3331381977e-1f));
    p = S::fma(p, y, c(-3.3333280683e-1f));
    const auto small = S::fma(S::mul(a, y), p, a);
    const auto magnitude = S::select(S::less(a, c(0.625f)), small, large);
    const auto signed_magnitude = S::select(S::less(x, zero), S::sub(zero, magnitude), magnitude);
    return S::select(S::unordered(x, x), x, signed_magnitude);
}

/// `out[i] = tanh(in[i])` for `i < n` through `tanh_of`: how the tests reach one path's
/// tanh from code compiled for another.
template <class S>
void tanh_array(const float* in, float* out, index n) noexcept
{
    index i = 0;
    for (; i + S::width <= n; i += S::width)
        S::store(out + i, tanh_of<S>(S::load(in + i)));
    if (i < n) {
        float padded[S::width] = {};
        for (index j = i; j < n; ++j)
            padded[j - i] = in[j];
        S::store(padded, tanh_of<S>(S::load(padded)));
        for (index j = i; j < n; ++j)
            out[j] = padded[j - i];
    }
}

/// `cap * tanh(x / cap)` in every lane, `inverse` being `1 / cap`. Multiplying by the
/// rounded inverse instead of dividing adds an ulp to the argument; tanh's relative
/// condition number, `2x / sinh(2x)`, is at most 1, so it adds at most that to the result.
template <class S>
typename S::reg soft_cap_of(typename S::reg x, typename S::reg cap, typename S::reg inverse) noexcept
{
    return S::mul(cap, tanh_of<S>(S::mul(x, inverse)));
}

/// The kernels' scores, transposed: key `j` of the tile is row `j` (`ld` apart), and the
/// columns are query rows in blocks of `head_rows`, one block per KV head: column `c` is
/// row `r = c % head_rows` of block `b = c / head_rows`, query token `q_first + r / group`
/// at query head `first_head + b * group + r % group`. The tile kernel's tile is one block
/// (one KV head); a decode step's holds every KV head (decode_kernel.inl). `columns` is
/// `rows` rounded up to a vector; padding columns are transformed too, their results
/// never read.
struct TileScores {
    float* scores;
    index ld;
    index keys;
    index rows;
    index columns;
    index group;
    index q_first;
    index first_head;
    index k_first;
    index head_rows;

    [[nodiscard]] index token(index c) const noexcept { return q_first + c % head_rows / group; }
    [[nodiscard]] index head(index c) const noexcept
    {
        return first_head + c / head_rows * group + c % head_rows % group;
    }
};

/// A transform of the caller's own, one call per score of the tile's real rows and keys
/// (those the mask hides are overwritten after).
template <class S, class T>
void transform_tile(const T& transform, const TileScores& tile)
{
    for (index j = 0; j < tile.keys; ++j) {
        float* row = tile.scores + j * tile.ld;
        for (index r = 0; r < tile.rows; ++r)
            row[r] =
                static_cast<float>(transform(row[r], tile.token(r), tile.k_first + j, tile.head(r)));
    }
}

template <class S>
void transform_tile(const SoftCap& transform, const TileScores& tile) noexcept
{
    const auto cap = S::broadcast(transform.cap);
    const auto inverse = S::broadcast(1.0f / transform.cap);
    for (index j = 0; j < tile.keys; ++j) {
        float* row = tile.scores + j * tile.ld;
        for (index c = 0; c < tile.columns; c += S::width)
            S::store(row + c, soft_cap_of<S>(S::load(row + c), cap, inverse));
    }
}

/// Columns at a time in `transform_tile(const Alibi&, ...)`: the per-column slopes and
/// distances of a chunk are set up once, then every key of the tile walks the chunk's part
/// of its row, in the order the scores lie in memory.
inline constexpr index alibi_chunk = 64;

/// Column `r`'s distance to key `j` is `|first + j|`, where `first` is the signed
/// distance from its query to the tile's first key, computed exactly in integers and
/// rounded once to float (exact below 2^24 tokens; beyond, relative to the distance, as
/// the product's own rounding is). The penalty is one fma: a single rounding.
template <class S>
void transform_tile(const Alibi& transform, const TileScores& tile) noexcept
{
    static_assert(alibi_chunk % S::width == 0);
    const index to_first_key =
        (transform.key_offset + tile.k_first) - (transform.query_offset + tile.q_first);
    const auto zero = S::broadcast(0.0f);
    for (index chunk = 0; chunk < tile.columns; chunk += alibi_chunk) {
        const index width = std::min(alibi_chunk, tile.columns - chunk); // a whole number of vectors
        alignas(64) float minus_slope[alibi_chunk];
        alignas(64) float first[alibi_chunk];
        for (index c = 0; c < width; ++c) {
            const index r = chunk + c;
            const bool real = r < tile.rows;
            minus_slope[c] = real ? -transform.slopes[static_cast<std::size_t>(tile.head(r))] : 0.0f;
            first[c] =
                real ? static_cast<float>(to_first_key - (tile.token(r) - tile.q_first)) : 0.0f;
        }
        for (index j = 0; j < tile.keys; ++j) {
            float* row = tile.scores + j * tile.ld + chunk;
            const auto key = S::broadcast(static_cast<float>(j));
            for (index c = 0; c < width; c += S::width) {
                const auto distance = S::add(S::load(first + c), key);
                const auto magnitude = S::max(distance, S::sub(zero, distance));
                S::store(row + c, S::fma(S::load(minus_slope + c), magnitude, S::load(row + c)));
            }
        }
    }
}

template <class S, class First, class Second>
void transform_tile(const Composed<First, Second>& transform, const TileScores& tile)
{
    transform_tile<S>(transform.first, tile);
    transform_tile<S>(transform.second, tile);
}
