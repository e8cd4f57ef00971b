#pragma once
/// \file
/// The library's exceptions: one base, `star::error`, and two kinds below it.

#include "detail/cxx20.hpp"

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace star {

/// The base of every exception the library throws for a reason of its own; `what()` names
/// the problem and the values involved, so that a caller can act without reading the
/// library's source. Catch it to handle both kinds:
/// - `star::invalid_argument`: a shape, a configuration or a value was rejected before any
///   work was done; the same call will fail again.
/// - `star::runtime_failure`: the inputs were acceptable but the work failed: arithmetic
///   overflowed float, a transport failed or delivered something malformed, the
///   environment names no usable kernel path.
class error : public std::exception {
public:
    /// An error whose `what()` is `message`.
    explicit error(const std::string& message) : message_(message) {}
    /// The message: the problem and the values involved.
    [[nodiscard]] const char* what() const noexcept override { return message_.what(); }

private:
    std::runtime_error message_; // copied without throwing, as an exception must be
};

/// A rejected argument or configuration (see `error`).
class invalid_argument : public error {
public:
    /// An error of this kind whose `what()` is `message`.
    using error::error;
};

/// Acceptable inputs whose processing failed (see `error`).
class runtime_failure : public error {
public:
    /// An error of this kind whose `what()` is `message`.
    using error::error;
};

namespace detail {

/// Builds a message from streamable parts and throws it as `E`.
template <class E, class... Parts>
[[noreturn]] void throw_with(Parts&&... parts)
{
    std::ostringstream message;
    (message << ... << std::forward<Parts>(parts));
    throw E(message.str());
}

/// Rejects an argument: `fail("q has ", n, " heads")` throws `star::invalid_argument`.
template <class... Parts>
[[noreturn]] void fail(Parts&&... parts)
{
    throw_with<invalid_argument>(std::forward<Parts>(parts)...);
}

/// Reports a failure of work on acceptable inputs: throws `star::runtime_failure`.
template <class... Parts>
[[noreturn]] void fail_at_runtime(Parts&&... parts)
{
    throw_with<runtime_failure>(std::forward<Parts>(parts)...);
}

} // namespace detail
} // namespace star
