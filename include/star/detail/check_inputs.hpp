#pragma once
/// \file
/// Validation of kernel inputs, shared by every entry point that takes Q/K/V.

#include <cmath>
#include <optional>

#include <Eigen/Core>

#include "../tensor.hpp"

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
    if (t.size() > 0 && t.data() == nullptr)
        fail(where, ": ", name, " views null memory but has ", t.size(), " elements");
}

/// Throws, naming `name`, its token (counted from `first_token`), head and element, if `t`
/// holds a NaN or an infinity: the softmax would turn it into plausible-looking numbers in
/// every row that sees it, so it is stopped at the door. One vectorised pass; the element
/// is only searched for once one is known to be there.
template <class T, class... Where>
void check_finite(const ConstView3<T>& t, const char* name, index first_token, const Where&... where)
{
    const Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> values(t.data(), t.size());
    if (values.allFinite())
        return;
    const index row = t.dimension(1) * t.dimension(2);
    for (index i = 0; i < t.size(); ++i)
        if (!(Eigen::numext::isfinite)(values[i]))
            fail(where..., ": ", name, " holds a non-finite value (", static_cast<float>(values[i]),
                 ") at token ", first_token + i / row, ", head ", (i % row) / t.dimension(2),
                 ", element ", i % t.dimension(2));
}

/// `check_finite` of the q, k and v of one range of tokens.
template <class KV, class... Where>
void check_finite_qkv(const ConstView3<float>& q, const ConstView3<KV>& k, const ConstView3<KV>& v,
                      index first_token, const Where&... where)
{
    check_finite(q, "q", first_token, where...);
    check_finite(k, "k", first_token, where...);
    check_finite(v, "v", first_token, where...);
}

/// Checks the shapes of one attention call and returns the softmax scale to use.
template <class KV>
float check_qkv(const ConstView3<float>& q, const ConstView3<KV>& k, const ConstView3<KV>& v,
                std::optional<float> scale, const char* where)
{
    check_tensor(q, "q", where);
    check_tensor(k, "k", where);
    check_tensor(v, "v", where);
    if (k.dimension(0) != v.dimension(0))
        fail(where, ": k has ", k.dimension(0), " tokens but v has ", v.dimension(0));
    if (k.dimension(1) != v.dimension(1))
        fail(where, ": k has ", k.dimension(1), " heads but v has ", v.dimension(1));
    if (q.dimension(2) != k.dimension(2) || q.dimension(2) != v.dimension(2))
        fail(where, ": head_dim differs: q ", q.dimension(2), ", k ", k.dimension(2), ", v ",
             v.dimension(2));
    if (q.dimension(1) % k.dimension(1) != 0)
        fail(where, ": q has ", q.dimension(1), " heads, not a multiple of the ", k.dimension(1),
             " kv heads (grouped-query ratio must be an integer)");
    const float resolved = scale.value_or(1.0f / std::sqrt(static_cast<float>(q.dimension(2))));
    if (!std::isfinite(resolved) || resolved <= 0.0f)
        fail(where, ": scale must be finite and positive, got ", resolved);
    return resolved;
}

} // namespace star::detail
