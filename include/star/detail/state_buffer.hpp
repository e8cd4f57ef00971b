#pragma once
/// \file
/// Attention states as flat float messages: output values, then LSEs.

#include <algorithm>
#include <span>
#include <vector>

#include "../state.hpp"

namespace star::detail {

inline std::vector<float> pack(const AttentionState& s)
{
    std::vector<float> buffer(static_cast<std::size_t>(s.output.size() + s.lse.size()));
    std::copy_n(s.output.data(), s.output.size(), buffer.begin());
    std::copy_n(s.lse.data(), s.lse.size(), buffer.begin() + s.output.size());
    return buffer;
}

inline AttentionState unpack(std::span<const float> buffer, Shape shape)
{
    AttentionState s(shape.tokens, shape.heads, shape.head_dim);
    const auto expected = static_cast<std::size_t>(s.output.size() + s.lse.size());
    if (buffer.size() != expected)
        fail_at_runtime("unpack: a state of shape [", shape.tokens, ", ", shape.heads, ", ",
                        shape.head_dim, "] needs ", expected, " floats, the message has ",
                        buffer.size());
    std::copy_n(buffer.begin(), s.output.size(), s.output.data());
    std::copy_n(buffer.begin() + s.output.size(), s.lse.size(), s.lse.data());
    return s;
}

} // namespace star::detail
