#pragma once
// Running tests on each path of the kernel (star/kernel/isa.hpp) that this CPU has.

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <star/star.hpp>

namespace star::test {

/// Runs every kernel call of its lifetime on path `isa`, which the CPU must support
/// (check with skip_unless_supported first). Not for concurrent tests.
class ForcedIsa {
public:
    explicit ForcedIsa(KernelIsa isa) { detail::forced_isa.store(static_cast<int>(isa)); }
    ~ForcedIsa() { detail::forced_isa.store(-1); }
    ForcedIsa(const ForcedIsa&) = delete;
    ForcedIsa& operator=(const ForcedIsa&) = delete;
};

/// The paths this CPU can run, portable first.
inline std::vector<KernelIsa> supported_isas()
{
    std::vector<KernelIsa> isas;
    for (const KernelIsa isa : all_kernel_isas)
        if (cpu_supports(isa))
            isas.push_back(isa);
    return isas;
}

/// For a test parameterised by path: gtest's name of the path.
inline std::string isa_name(const ::testing::TestParamInfo<KernelIsa>& info)
{
    return std::string(name(info.param));
}

} // namespace star::test

/// Skips the current test, naming what the CPU lacks, if it cannot run path `isa`.
#define STAR_SKIP_UNLESS_SUPPORTED(isa)                                                            \
    do {                                                                                           \
        if (!::star::cpu_supports(isa)) {                                                          \
            GTEST_SKIP() << "path " << ::star::name(isa) << " needs "                              \
                         << ::star::required_features(isa) << ", which this CPU lacks";            \
        }                                                                                          \
    } while (false)
