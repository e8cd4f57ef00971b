#pragma once
// Naive double-precision attention and random inputs: the yardstick every test measures
// the library against.

#include <algorithm>
#include <concepts>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <limits>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include <star/star.hpp>

namespace star::test {

using Visible = std::function<bool(index query, index key)>;
/// A score transform in double (kernel/score_transform.hpp): the score the softmax uses for
/// the scaled score `score` of query row `query`, key row `key`, query head `head`.
using Transform = std::function<double(double score, index query, index key, index head)>;

/// How a kernel call multiplies (kernel/isa.hpp): in float, or in bf16 with the queries and
/// the probabilities rounded to bf16 (the avx512_bf16 path, bf16 K/V).
enum class Products { float32, bf16 };

/// How a call with K/V of type `KV` on path `isa` multiplies.
template <class KV>
Products products_on(KernelIsa isa)
{
    return std::same_as<KV, Eigen::bfloat16> && isa == KernelIsa::avx512_bf16 ? Products::bf16
                                                                              : Products::float32;
}

struct ReferenceResult {
    Eigen::Tensor<double, 3, Eigen::RowMajor, index> output;
    Eigen::Tensor<double, 2, Eigen::RowMajor, index> lse;
    // Largest `scale * sum_i |q_i k_i|` over visible pairs: what the float rounding error
    // of one score is proportional to.
    double max_abs_dot = 0.0;
    double max_abs_value = 0.0;
    // Largest over rows of `|max score| + sum_j p_j |score_j|`, after the transform: an
    // absolute error of `e |score_j|` in each transformed score moves the output by at most
    // `2 e max|v|` times that and the LSE by `e` times it (a key's error counts in
    // proportion to its weight; the first term bounds the rounding of `score - max`).
    double transformed_magnitude = 0.0;
    // What the kernel compared with this multiplies in (the reference rounds the queries as
    // it does; tolerance() allows for the rounded probabilities).
    Products products = Products::float32;
};

/// Attention in double, one (query, head) row at a time, with the full score row; each
/// visible scaled score passes through `transform` when one is given. `products` says how
/// the kernel it is compared with multiplies: by default, as a call made now would (the
/// path kernel_isa() names). For bf16 products the queries are rounded to bf16 first.
template <class KV>
ReferenceResult reference_attention(const ConstView3<float>& q, const ConstView3<KV>& k,
                                    const ConstView3<KV>& v, const Visible& visible, double scale,
                                    const Transform& transform = {},
                                    Products products = products_on<KV>(kernel_isa()))
{
    const index lq = q.dimension(0), hq = q.dimension(1), d = q.dimension(2);
    const index lk = k.dimension(0), hkv = k.dimension(1);
    const index group = hq / hkv;
    ReferenceResult r;
    r.products = products;
    std::vector<float> rounded_q;
    if (products == Products::bf16)
        for (index n = 0; n < q.size(); ++n)
            rounded_q.push_back(float(Eigen::bfloat16(q.data()[n])));
    const float* q_data = products == Products::bf16 ? rounded_q.data() : q.data();
    r.output.resize(lq, hq, d);
    r.output.setZero();
    r.lse.resize(lq, hq);
    std::vector<double> scores(static_cast<std::size_t>(lk));
    // Raw rows and one visibility test per (query, key) rather than per head: under the
    // sanitizers and Eigen's bounds assertions (the Debug-based presets), indexing a tensor
    // per element made the reference, not the kernel it checks, most of a test's time.
    std::vector<char> sees(static_cast<std::size_t>(lk));
    const auto k_row = [&](index j, index h) { return k.data() + (j * hkv + h) * d; };
    const auto v_row = [&](index j, index h) { return v.data() + (j * hkv + h) * d; };
    for (index j = 0; j < lk; ++j)
        for (index h = 0; h < hkv; ++h)
            for (index c = 0; c < d; ++c)
                r.max_abs_value =
                    std::max(r.max_abs_value, std::abs(static_cast<double>(float(v_row(j, h)[c]))));
    for (index i = 0; i < lq; ++i) {
        for (index j = 0; j < lk; ++j)
            sees[static_cast<std::size_t>(j)] = visible(i, j) ? 1 : 0;
        for (index h = 0; h < hq; ++h) {
            const index kh = h / group;
            const float* qi = q_data + (i * hq + h) * d;
            double* out = r.output.data() + (i * hq + h) * d;
            double max_score = -std::numeric_limits<double>::infinity();
            for (index j = 0; j < lk; ++j) {
                if (sees[static_cast<std::size_t>(j)] == 0) {
                    scores[static_cast<std::size_t>(j)] = -std::numeric_limits<double>::infinity();
                    continue;
                }
                const KV* kj = k_row(j, kh);
                double dot = 0.0, abs_dot = 0.0;
                for (index c = 0; c < d; ++c) {
                    const double p = double(qi[c]) * double(float(kj[c]));
                    dot += p;
                    abs_dot += std::abs(p);
                }
                scores[static_cast<std::size_t>(j)] =
                    transform ? transform(scale * dot, i, j, h) : scale * dot;
                r.max_abs_dot = std::max(r.max_abs_dot, scale * abs_dot);
                max_score = std::max(max_score, scores[static_cast<std::size_t>(j)]);
            }
            if (max_score == -std::numeric_limits<double>::infinity()) {
                r.lse(i, h) = max_score;
                continue;
            }
            double sum = 0.0;
            for (index j = 0; j < lk; ++j)
                sum += std::exp(scores[static_cast<std::size_t>(j)] - max_score);
            double magnitude = std::abs(max_score);
            for (index j = 0; j < lk; ++j) {
                const double p = std::exp(scores[static_cast<std::size_t>(j)] - max_score) / sum;
                if (p == 0.0)
                    continue;
                magnitude += p * std::abs(scores[static_cast<std::size_t>(j)]);
                const KV* vj = v_row(j, kh);
                for (index c = 0; c < d; ++c)
                    out[c] += p * double(float(vj[c]));
            }
            r.lse(i, h) = max_score + std::log(sum);
            r.transformed_magnitude = std::max(r.transformed_magnitude, magnitude);
        }
    }
    return r;
}

/// References for a loop over the kernel's paths, one per kind of products the paths take
/// (products_on), each computed once, when a path first needs it: the reference, not the
/// kernel, is what takes a test's time. `compute(products)` computes one.
template <class KV>
class PathReferences {
public:
    explicit PathReferences(std::function<ReferenceResult(Products)> compute)
        : compute_(std::move(compute))
    {
    }

    /// The reference for calls on path `isa`.
    const ReferenceResult& on(KernelIsa isa)
    {
        const Products products = products_on<KV>(isa);
        auto& slot = products == Products::bf16 ? bf16_ : float32_;
        if (!slot)
            slot = compute_(products);
        return *slot;
    }

private:
    std::function<ReferenceResult(Products)> compute_;
    std::optional<ReferenceResult> float32_, bf16_;
};

/// Float error bounds for comparing the kernel with the reference.
///
/// A score `s = scale * q.k` summed in float over `d` terms carries a rounding error of
/// about `u * sqrt(d) * scale * sum|q_i k_i|` (random-walk model, factor 4 of margin).
/// Each probability inherits that error relatively, twice (numerator and normaliser), and
/// the value sum over `Lk` keys adds `u * sqrt(Lk)` relative to `max|v|`; `exp` adds a few
/// ulps. The LSE has the score error plus the sum's. A score transform whose float result
/// is within `transform_ulps` units of rounding of its own magnitude adds that relative
/// error, weighted as `transformed_magnitude` says; it does not amplify the dot product's
/// error as long as its slope is at most 1 (soft-capping's is, ALiBi's is exactly 1).
/// bf16 products round each probability (relatively, by at most 2^-9) for the value
/// product but not in the normaliser, which moves the output by at most
/// `2^-9 sum_j p_j |v_j| <= 2^-9 max|v|` (2^-8 allowed, for the float errors beside it);
/// the LSE sums unrounded probabilities, and the reference rounds the queries as they are.
struct Tolerance {
    double output;
    double lse;
};

inline Tolerance tolerance(const ReferenceResult& r, index head_dim, index key_count,
                           double transform_ulps = 0.0)
{
    constexpr double u = std::numeric_limits<float>::epsilon() / 2;
    const double score_error = 4 * u * std::sqrt(double(head_dim)) * r.max_abs_dot +
                               transform_ulps * u * r.transformed_magnitude;
    const double sum_error = 4 * u * (std::sqrt(double(key_count)) + 4);
    const double rounded_probabilities = r.products == Products::bf16 ? std::ldexp(1.0, -8) : 0.0;
    return {(2 * score_error + sum_error + rounded_probabilities) * std::max(1.0, r.max_abs_value) +
                1e-7,
            score_error + sum_error + 1e-7};
}

/// Max |kernel - reference| over outputs and LSEs; -inf LSEs must match exactly.
struct Deviation {
    double output = 0.0;
    double lse = 0.0;
    bool infinities_match = true;
    bool all_finite = true;
};

inline Deviation deviation(const AttentionState& s, const ReferenceResult& r)
{
    Deviation dev;
    for (index n = 0; n < s.output.size(); ++n) {
        if (!std::isfinite(s.output.data()[n]))
            dev.all_finite = false;
        dev.output = std::max(dev.output, std::abs(s.output.data()[n] - r.output.data()[n]));
    }
    for (index n = 0; n < s.lse.size(); ++n) {
        const double a = s.lse.data()[n], b = r.lse.data()[n];
        if (std::isnan(a))
            dev.all_finite = false;
        if (std::isinf(a) || std::isinf(b)) {
            if (a != b)
                dev.infinities_match = false;
            continue;
        }
        dev.lse = std::max(dev.lse, std::abs(a - b));
    }
    return dev;
}

/// Whether two states hold the same shape and the same bits: bits, not values, so -inf and
/// NaN compare too (an empty tensor may have no memory, which memcmp must not be given).
inline bool same_bits(const AttentionState& a, const AttentionState& b)
{
    const auto same = [](const float* x, const float* y, index n) {
        return n == 0 || std::memcmp(x, y, sizeof(float) * static_cast<std::size_t>(n)) == 0;
    };
    return a.shape() == b.shape() && a.lse.size() == b.lse.size() &&
           same(a.output.data(), b.output.data(), a.output.size()) &&
           same(a.lse.data(), b.lse.data(), a.lse.size());
}

/// Fresh inputs every run; the seed is printed so that a failure can be replayed with
/// `STAR_TEST_SEED=<seed>`.
inline std::mt19937_64& rng()
{
    static std::mt19937_64 engine = [] {
        const char* fixed = std::getenv("STAR_TEST_SEED");
        const auto seed = fixed ? std::strtoull(fixed, nullptr, 10) : std::random_device{}();
        std::cerr << "random seed " << seed << " (set STAR_TEST_SEED to replay)\n";
        return std::mt19937_64(seed);
    }();
    return engine;
}

/// A tensor of independent normal values times `scale`, rounded to `T`.
template <class T>
Tensor3<T> random_tensor(index tokens, index heads, index d, float scale = 1.0f)
{
    std::normal_distribution<float> normal(0.0f, scale);
    Tensor3<T> t(tokens, heads, d);
    for (index n = 0; n < t.size(); ++n)
        t.data()[n] = T(normal(rng()));
    return t;
}

/// Queries, keys and values of one sequence: q `[tokens, q_heads, d]`, k and v
/// `[tokens, kv_heads, d]`.
template <class KV>
struct Tokens {
    Tensor3<float> q;
    Tensor3<KV> k, v;
};

/// Random `Tokens` (normal values, K and V rounded to `KV`).
template <class KV>
Tokens<KV> random_tokens(index tokens, index q_heads, index kv_heads, index d)
{
    return {random_tensor<float>(tokens, q_heads, d), random_tensor<KV>(tokens, kv_heads, d),
            random_tensor<KV>(tokens, kv_heads, d)};
}

/// The rows of a K/V source (a cache's `keys()`, a paged or strided view) copied into a
/// contiguous `[tokens, heads, head_dim]` tensor, row by row through `KVPages::row`.
template <KVElement KV>
Tensor3<KV> contiguous(const KVPages<KV>& source)
{
    Tensor3<KV> t(source.tokens(), source.heads(), source.head_dim());
    for (index j = 0; j < source.tokens(); ++j)
        for (index h = 0; h < source.heads(); ++h)
            std::copy_n(source.row(j, h), source.head_dim(),
                        t.data() + (j * source.heads() + h) * source.head_dim());
    return t;
}

/// The tokens of `a` followed by those of `b`, which must have the same heads and head_dim.
template <class T>
Tensor3<T> concat_tokens(const Tensor3<T>& a, const Tensor3<T>& b)
{
    Tensor3<T> both(a.dimension(0) + b.dimension(0), a.dimension(1), a.dimension(2));
    std::copy_n(a.data(), a.size(), both.data());
    std::copy_n(b.data(), b.size(), both.data() + a.size());
    return both;
}

/// Star Attention's phase 1 at one layer, as a mask over the whole context: query `i`
/// belongs to the block `n` whose range holds it, and sees the keys of block `n` up to
/// itself plus every key of `anchors[n]` (which lies before the block). With `anchors[0]`
/// empty, block 0 is plain causal. `blocks` must tile `[0, L)` in order.
inline Visible block_sparse_visible(const std::vector<TokenRange>& blocks,
                                    const std::vector<TokenRange>& anchors)
{
    const index tokens = blocks.empty() ? 0 : blocks.back().end;
    std::vector<std::size_t> block_of(static_cast<std::size_t>(tokens));
    for (std::size_t n = 0; n < blocks.size(); ++n)
        for (index t = blocks[n].begin; t < blocks[n].end; ++t)
            block_of[static_cast<std::size_t>(t)] = n;
    return [block_of = std::move(block_of), blocks, anchors](index i, index j) {
        const std::size_t n = block_of[static_cast<std::size_t>(i)];
        const bool own_block = j >= blocks[n].begin && j <= i;
        const bool anchor = j >= anchors[n].begin && j < anchors[n].end;
        return own_block || anchor;
    };
}

} // namespace star::test
