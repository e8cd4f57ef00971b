#pragma once
// The check every bad-input test makes: the call throws star::error (not some other
// exception, not nothing) and the message names the problem.

#include <gtest/gtest.h>

#include <exception>
#include <string>

#include <star/error.hpp>

namespace star::test {

template <class F>
void expect_error(F&& call, const std::string& fragment)
{
    try {
        call();
        ADD_FAILURE() << "no exception; expected one mentioning '" << fragment << "'";
    } catch (const star::error& e) {
        EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos)
            << "the message '" << e.what() << "' does not mention '" << fragment << "'";
    } catch (const std::exception& e) {
        ADD_FAILURE() << "wrong exception type: " << e.what();
    }
}

} // namespace star::test
