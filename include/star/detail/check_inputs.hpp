#pragma once
/// \file
/// Validation of kernel inputs, shared by every entry point that takes Q/K/V.

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>

#include <Eigen/Core>
#include <xsimd/xsimd.hpp>

#include "../kernel/kv_source.hpp"
#include "../tensor.hpp"

STAR_INTRINSICS_BEGIN // see simd/target.hpp
namespace star::detail {

template <class T>
void check_tensor(const ConstView3<T>& t, const char* name, const char* where)
{
    if (t.dimension(1) <= 0)
        fail(where, ": ", name, " has ", t.dimension(1), " heads; at least 1 is needed");
    if (t.dimension(2) <= 0)
        fail(where, ": ", name, " has head_dim ", t.dimension(2), "; at least 1 is needed");
    if (t.dimension(0) < 0)
        fail(where, ": ", name, " has a negative token count ", t.dimension(0));
    // A view is only a pointer and sizes: sizes whose product overflows describe no memory,
    // and every offset computed from them would wrap.
    constexpr index most = std::numeric_limits<index>::max();
    if (t.dimension(1) > most / t.dimension(2) ||
        t.dimension(0) > most / (t.dimension(1) * t.dimension(2)))
        fail(where, ": ", name, " has ", t.dimension(0), " x ", t.dimension(1), " x ",
             t.dimension(2), " elements, more than an index can count");
    if (t.size() > 0 && t.data() == nullptr)
        fail(where, ": ", name, " views null memory but has ", t.size(), " elements");
}

/// Whether every element of `values` is finite. In every IEEE format (float, bf16, half)
/// a value is non-finite exactly when all its exponent bits are set, so one vectorised max
/// over the bits without the sign decides. Eigen's allFinite() tests element by element (and
/// converts each bf16 or half to float first): over a long decode cache that took longer
/// than the attention itself. `Arch` is the translation unit's own, and part of the
/// function's type, so that units compiled for different architectures share no symbol.
template <KVElement T, class Arch = xsimd::default_arch>
bool all_finite(const T* values, index count)
{
    using Bits = std::conditional_t<sizeof(T) == 4, std::int32_t, std::int16_t>;
    static_assert(sizeof(Bits) == sizeof(T));
    constexpr Bits magnitude = std::numeric_limits<Bits>::max(); // every bit but the sign
    constexpr auto exponent = static_cast<Bits>(std::same_as<T, float>             ? 0x7F800000
                                                : std::same_as<T, Eigen::bfloat16> ? 0x7F80
                                                                                   : 0x7C00);
    using Batch = xsimd::batch<Bits, Arch>;
    constexpr index width = static_cast<index>(Batch::size);
    // SIMD loads may alias any type; the scalar tail reads the elements as themselves.
    const auto* bits = reinterpret_cast<const Bits*>(values);
    Batch largest(Bits{0});
    index i = 0;
    for (; i + width <= count; i += width)
        largest = xsimd::max(largest, Batch::load_unaligned(bits + i) & Batch(magnitude));
    bool finite = !xsimd::any(largest >= Batch(exponent));
    for (; i < count; ++i)
        finite = finite && (Eigen::numext::isfinite)(values[i]);
    return finite;
}

/// Throws, naming `name`, its token (counted from `first_token`), head and element, if `t`
/// holds a NaN or an infinity: the softmax would turn it into plausible-looking numbers in
/// every row that sees it, so it is stopped at the door. One vectorised pass; the element
/// is only searched for once one is known to be there.
template <class T, class... Where>
void check_finite(const ConstView3<T>& t, const char* name, index first_token, const Where&... where)
{
    if (all_finite(t.data(), t.size()))
        return;
    const Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> values(t.data(), t.size());
    const index row = t.dimension(1) * t.dimension(2);
    for (index i = 0; i < t.size(); ++i)
        if (!(Eigen::numext::isfinite)(values[i]))
            fail(where..., ": ", name, " holds a non-finite value (", static_cast<float>(values[i]),
                 ") at token ", first_token + i / row, ", head ", (i % row) / t.dimension(2),
                 ", element ", i % t.dimension(2));
}

/// `check_finite` of a K/V source: one vectorised pass per run where its rows are
/// contiguous (every run of a contiguous view or of a paged cache laid out
/// `[page, token, head, d]`), else one per row.
template <KVElement KV, class... Where>
void check_finite(const KVPages<KV>& s, const char* name, index first_token, const Where&... where)
{
    const index heads = s.heads(), d = s.head_dim();
    const index token_stride = s.layout().token_stride, head_stride = s.layout().head_stride;
    const bool dense_runs = head_stride == d && token_stride == heads * d;
    for (index t = 0; t < s.tokens();) {
        const auto run = s.run(t, s.tokens());
        bool finite = true;
        if (dense_runs)
            finite = all_finite(run.first, run.length * heads * d);
        else
            for (index i = 0; i < run.length && finite; ++i)
                for (index h = 0; h < heads && finite; ++h)
                    finite = all_finite(run.first + i * token_stride + h * head_stride, d);
        if (!finite)
            for (index i = 0; i < run.length; ++i)
                for (index h = 0; h < heads; ++h)
                    for (index c = 0; c < d; ++c)
                        if (const KV x = run.first[i * token_stride + h * head_stride + c];
                            !(Eigen::numext::isfinite)(x))
                            fail(where..., ": ", name, " holds a non-finite value (",
                                 static_cast<float>(x), ") at token ", first_token + t + i,
                                 ", head ", h, ", element ", c);
        t += run.length;
    }
}

/// `check_tensor` of a K/V source, in the same words (a source from `strided_kv` or
/// `paged_kv` was checked when made; one converted from a view was not).
template <KVElement KV>
void check_source(const KVPages<KV>& s, const char* name, const char* where)
{
    if (s.heads() <= 0)
        fail(where, ": ", name, " has ", s.heads(), " heads; at least 1 is needed");
    if (s.head_dim() <= 0)
        fail(where, ": ", name, " has head_dim ", s.head_dim(), "; at least 1 is needed");
    if (s.tokens() < 0)
        fail(where, ": ", name, " has a negative token count ", s.tokens());
    constexpr index most = std::numeric_limits<index>::max();
    if (s.heads() > most / s.head_dim() || s.tokens() > most / (s.heads() * s.head_dim()))
        fail(where, ": ", name, " has ", s.tokens(), " x ", s.heads(), " x ", s.head_dim(),
             " elements, more than an index can count");
    if (s.tokens() > 0 && s.data() == nullptr)
        fail(where, ": ", name, " views null memory but has ",
             s.tokens() * s.heads() * s.head_dim(), " elements");
}

/// `check_qkv` of keys and values read from K/V sources.
template <class Q, KVElement KV>
float check_qkv(const ConstView3<Q>& q, const KVPages<KV>& k, const KVPages<KV>& v,
                std::optional<float> scale, const char* where)
{
    check_tensor(q, "q", where);
    check_source(k, "k", where);
    check_source(v, "v", where);
    if (k.tokens() != v.tokens())
        fail(where, ": k has ", k.tokens(), " tokens but v has ", v.tokens());
    if (k.heads() != v.heads())
        fail(where, ": k has ", k.heads(), " heads but v has ", v.heads());
    if (q.dimension(2) != k.head_dim() || q.dimension(2) != v.head_dim())
        fail(where, ": head_dim differs: q ", q.dimension(2), ", k ", k.head_dim(), ", v ",
             v.head_dim());
    if (q.dimension(1) % k.heads() != 0)
        fail(where, ": q has ", q.dimension(1), " heads, not a multiple of the ", k.heads(),
             " kv heads (grouped-query ratio must be an integer)");
    const float resolved = scale.value_or(1.0f / std::sqrt(static_cast<float>(q.dimension(2))));
    if (!std::isfinite(resolved) || resolved <= 0.0f)
        fail(where, ": scale must be finite and positive, got ", resolved);
    return resolved;
}

/// `check_finite` of the q, k and v of one range of tokens.
template <class Q, class KV, class... Where>
void check_finite_qkv(const ConstView3<Q>& q, const ConstView3<KV>& k, const ConstView3<KV>& v,
                      index first_token, const Where&... where)
{
    check_finite(q, "q", first_token, where...);
    check_finite(k, "k", first_token, where...);
    check_finite(v, "v", first_token, where...);
}

/// Checks the shapes of one attention call and returns the softmax scale to use.
template <class Q, class KV>
float check_qkv(const ConstView3<Q>& q, const ConstView3<KV>& k, const ConstView3<KV>& v,
                std::optional<float> scale, const char* where)
{
    // In a view's own words first; the rest is the same for every source.
    check_tensor(q, "q", where);
    check_tensor(k, "k", where);
    check_tensor(v, "v", where);
    return check_qkv(q, KVPages<KV>(k), KVPages<KV>(v), scale, where);
}

/// Whether the `bytes` at `a` and the `other_bytes` at `b` share a byte. Compared as
/// addresses, since the two need not lie in one object.
inline bool overlap(const void* a, std::size_t bytes, const void* b, std::size_t other_bytes)
{
    const auto first = reinterpret_cast<std::uintptr_t>(a);
    const auto other = reinterpret_cast<std::uintptr_t>(b);
    return bytes > 0 && other_bytes > 0 && first < other + other_bytes && other < first + bytes;
}

/// Whether the `bytes` at `p` share a byte with a row of `s`: page by page, each page's
/// span from its first row to its last.
template <KVElement KV>
bool overlap(const void* p, std::size_t bytes, const KVPages<KV>& s)
{
    const index head_span = (s.heads() - 1) * s.layout().head_stride + s.head_dim();
    for (index t = 0; t < s.tokens();) {
        const auto run = s.run(t, s.tokens());
        const index elements = (run.length - 1) * run.token_stride + head_span;
        if (overlap(p, bytes, run.first, static_cast<std::size_t>(elements) * sizeof(KV)))
            return true;
        t += run.length;
    }
    return false;
}

/// Checks where `attention_into` writes: `output` `[Lq, Hq, d]` and `lse` `[Lq, Hq]` for
/// the checked queries `q`, in memory of their own, apart from each other and from q, k
/// and v (the kernel would overwrite inputs it has yet to read).
template <class O, class Q, KVElement KV>
void check_outputs(const View3<O>& output, const View2f& lse, const ConstView3<Q>& q,
                   const KVPages<KV>& k, const KVPages<KV>& v, const char* where)
{
    if (output.dimension(0) != q.dimension(0) || output.dimension(1) != q.dimension(1) ||
        output.dimension(2) != q.dimension(2))
        fail(where, ": output is [", output.dimension(0), ", ", output.dimension(1), ", ",
             output.dimension(2), "] but the queries need [", q.dimension(0), ", ", q.dimension(1),
             ", ", q.dimension(2), "]");
    if (lse.dimension(0) != q.dimension(0) || lse.dimension(1) != q.dimension(1))
        fail(where, ": lse is [", lse.dimension(0), ", ", lse.dimension(1),
             "] but the queries need [", q.dimension(0), ", ", q.dimension(1), "]");
    if (output.size() > 0 && output.data() == nullptr)
        fail(where, ": output views null memory but has ", output.size(), " elements");
    if (lse.size() > 0 && lse.data() == nullptr)
        fail(where, ": lse views null memory but has ", lse.size(), " elements");
    const auto output_bytes = static_cast<std::size_t>(output.size()) * sizeof(O);
    const auto lse_bytes = static_cast<std::size_t>(lse.size()) * sizeof(float);
    const auto q_bytes = static_cast<std::size_t>(q.size()) * sizeof(Q);
    if (overlap(output.data(), output_bytes, lse.data(), lse_bytes))
        fail(where, ": output and lse overlap");
    const auto refuse_overlap = [&](const char* name, const void* memory, std::size_t bytes) {
        const char* input = overlap(memory, bytes, q.data(), q_bytes) ? "q"
                            : overlap(memory, bytes, k)               ? "k"
                            : overlap(memory, bytes, v)               ? "v"
                                                                      : nullptr;
        if (input != nullptr)
            fail(where, ": ", name, " overlaps ", input,
                 ": the kernel would overwrite inputs it has yet to read");
    };
    refuse_overlap("output", output.data(), output_bytes);
    refuse_overlap("lse", lse.data(), lse_bytes);
}

} // namespace star::detail
STAR_INTRINSICS_END
