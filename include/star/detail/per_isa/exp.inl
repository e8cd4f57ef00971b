// The kernel's exp, written once over a float atom. Included by kernels.hpp into one
// namespace per path, inside that path's target region; it has no include guard.

/// `e^x` for `x` in [-87.34, 88.02], where the result is a normal float, by Cephes' `expf`
/// (x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial for e^r; about 1 ulp), with no
/// test of the range: for callers that know it (exp_of, and tanh_of in
/// score_transform.inl, which saves exp_of's limits and their three selects per vector).
/// Needs the atom's `round` and `pow2`.
template <class S>
typename S::reg exp_in_range(typename S::reg x) noexcept
{
    const auto c = [](float value) { return S::broadcast(value); };
    const auto n = S::round(S::mul(x, c(1.44269504088896341f)));
    // r = x - n ln2, with ln2 split in two so that n * 0.693359375 is exact.
    auto r = S::fma(n, c(-0.693359375f), x);
    r = S::fma(n, c(2.12194440e-4f), r);
    auto p = c(1.9875691500e-4f);
    p = S::fma(p, r, c(1.3981999507e-3f));
    p = S::fma(p, r, c(8.3334519073e-3f));
    p = S::fma(p, r, c(4.1665795894e-2f));
    p = S::fma(p, r, c(1.6666665459e-1f));
    p = S::fma(p, r, c(5.0000001201e-1f));
    const auto e_r = S::add(S::fma(p, S::mul(r, r), r), c(1.0f));
    return S::mul(e_r, S::pow2(n));
}

/// `e^x` in every lane: the atom's own where it has one (xsimd), else exp_in_range. Inputs
/// below -87.34 give 0, not a subnormal (the softmax adds these to a sum of at least 1);
/// above 88.02 give +inf (the kernel only asks for x <= 0); NaN stays NaN; exp(0) is 1
/// exactly, so a row's largest score weighs exactly 1.
template <class S>
typename S::reg exp_of(typename S::reg x) noexcept
{
    if constexpr (requires { S::exp(x); }) {
        return S::exp(x);
    } else {
        const auto c = [](float value) { return S::broadcast(value); };
        const auto lowest = c(-87.3365447505531f); // ln 2^-126
        const auto highest = c(88.0296919311131f); // ln 2^127.5
        auto y = exp_in_range<S>(S::min(S::max(x, lowest), highest));
        y = S::select(S::less(x, lowest), c(0.0f), y);
        y = S::select(S::less(highest, x), c(__builtin_huge_valf()), y);
        return S::select(S::unordered(x, x), x, y);
    }
}

/// `e^x` for the online softmax, whose `x` is a score minus the query's shift: at most
/// `OnlineSoftmax::headroom` (8), `-inf` where masked, NaN through. `2^y`, `y = x log2(e)`,
/// as `2^n 2^r` with `n` whole, `|r| <= 1/2` and a degree-5 polynomial for `2^r` (minimax in
/// relative error, its leading coefficient 1 so that `exp(0)` is exactly 1). Rounding `y`
/// and log2(e) to float costs a relative error of `1.25 |x| 2^-24`, the polynomial 2.5 ulp:
/// at most `(1.25 |x| + 3) 2^-24` of each weight, and against the row's sum, at least its
/// largest weight and at least 1, at most `13 2^-24`: the sum is as exact as its own
/// rounding makes it, where Cephes' exact range reduction and degree-6 polynomial (exp_of)
/// took about 6 instructions per vector more, 5% of a bf16 prefill. Needs the atom's
/// `round` and `pow2`, or its `times_pow2` where it has one; atoms without `round`
/// (xsimd's) use their own exp.
template <class S>
typename S::reg softmax_exp(typename S::reg x) noexcept
{
    if constexpr (requires { S::round(x); }) {
        const auto c = [](float value) { return S::broadcast(value); };
        const auto y = S::mul(x, c(1.44269504088896341f));
        const auto n = S::round(y);
        const auto r = S::sub(y, n); // NaN where y is -inf: n is then -inf, and the result 0
        auto p = c(1.326465164e-3f);
        p = S::fma(p, r, c(9.671518579e-3f));
        p = S::fma(p, r, c(5.550733954e-2f));
        p = S::fma(p, r, c(2.402224243e-1f));
        p = S::fma(p, r, c(6.931470037e-1f));
        p = S::fma(p, r, c(1.0f));
        if constexpr (requires { S::times_pow2(p, n); }) {
            return S::times_pow2(p, n);
        } else {
            const auto lowest = c(-126.0f); // below it 2^n is no normal float
            const auto scaled = S::mul(p, S::pow2(S::max(n, lowest)));
            return S::select(S::less(n, lowest), c(0.0f), scaled);
        }
    } else {
        return exp_of<S>(x);
    }
}

/// `out[i] = Exp(in[i])` for `i < n`, `Exp` one of the exps above (a short tail through a
/// padded vector): how the tests reach one path's exps from code compiled for another.
template <class S, typename S::reg (*Exp)(typename S::reg) noexcept>
void exp_array(const float* in, float* out, index n) noexcept
{
    index i = 0;
    for (; i + S::width <= n; i += S::width)
        S::store(out + i, Exp(S::load(in + i)));
    if (i < n) {
        float padded[S::width] = {};
        for (index j = i; j < n; ++j)
            padded[j - i] = in[j];
        S::store(padded, Exp(S::load(padded)));
        for (index j = i; j < n; ++j)
            out[j] = padded[j - i];
    }
}
