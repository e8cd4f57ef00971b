#pragma once
/// \file
/// The library's one exception type.

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace star {

/// Thrown at the API boundary when a shape, a configuration or a value is rejected.
/// The message names the argument and the offending values, so that a caller can fix
/// the call without reading the library's source.
class error : public std::invalid_argument {
public:
    using std::invalid_argument::invalid_argument;
};

namespace detail {

/// Builds an error message from streamable parts: `fail("q has ", n, " heads")`.
template <class... Parts>
[[noreturn]] void fail(Parts&&... parts)
{
    std::ostringstream message;
    (message << ... << std::forward<Parts>(parts));
    throw error(message.str());
}

} // namespace detail
} // namespace star
