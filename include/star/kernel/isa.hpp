#pragma once
/// \file
/// Which instruction set the attention kernel runs on, chosen at run time.
///
/// The kernel is compiled for every path at once, whatever `-march` the including
/// translation unit uses (detail/simd/target.hpp says how), and `attention` takes the best
/// path the CPU and the operating system support. So a program built for plain x86-64 uses
/// AVX2 or AVX-512 where they are present, and `-march=native` only changes the code
/// around the kernel. The environment variable `STAR_ISA` caps the choice, for tests and
/// benchmarks: `STAR_ISA=portable` runs the portable path on any CPU. A program built with
/// `STAR_NO_DISPATCH` defined has the portable path alone (detail/simd/target.hpp).

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <string>
#include <string_view>

#include "../detail/simd/target.hpp"
#include "../error.hpp"

#if STAR_X86_DISPATCH
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace star {

/// The paths of the kernel, in increasing order of preference.
enum class KernelIsa {
    /// xsimd at the architecture the translation unit is compiled for (SSE2 on plain
    /// x86-64, NEON on ARM): runs wherever the program runs.
    portable,
    /// AVX2 with FMA and F16C (Intel Haswell, AMD Zen and later).
    avx2,
    /// AVX-512 F, BW, DQ and VL (Intel Skylake-SP, AMD Zen 4 and later).
    avx512,
    /// avx512 with AVX512_BF16 (Intel Cooper Lake and Sapphire Rapids, AMD Zen 4 and
    /// later): with bf16 K/V, the tile kernel's products are bf16 dot products (`vdpbf16ps`)
    /// summed in float, the queries and the probabilities rounded to bf16 for them
    /// (docs/accuracy.md, "bf16 products"); float and half K/V run as on avx512. Taken only
    /// where those products outrun float ones (`bf16_products_outrun_float`).
    avx512_bf16,
};

/// Every path, in the order of `KernelIsa`.
inline constexpr std::array<KernelIsa, 4> all_kernel_isas{
    KernelIsa::portable, KernelIsa::avx2, KernelIsa::avx512, KernelIsa::avx512_bf16};

namespace detail {

/// What is said of each path, in the order of `KernelIsa`.
struct IsaDescription {
    std::string_view name;     // as STAR_ISA spells it
    std::string_view features; // as the CPU manuals name them
};

inline constexpr std::array<IsaDescription, all_kernel_isas.size()> isa_descriptions{{
    {"portable", "nothing"},
    {"avx2", "x86-64 with AVX2, FMA and F16C"},
    {"avx512", "x86-64 with AVX512F, AVX512BW, AVX512DQ and AVX512VL"},
    {"avx512_bf16", "x86-64 with AVX512F, AVX512BW, AVX512DQ, AVX512VL and AVX512_BF16"},
}};

} // namespace detail

/// The path's name as `STAR_ISA` spells it: "portable", "avx2", "avx512" or "avx512_bf16".
constexpr std::string_view name(KernelIsa isa) noexcept
{
    return detail::isa_descriptions[static_cast<std::size_t>(isa)].name;
}

/// The CPU features the path `isa` needs, as the CPU manuals name them.
constexpr std::string_view required_features(KernelIsa isa) noexcept
{
    return detail::isa_descriptions[static_cast<std::size_t>(isa)].features;
}

namespace detail {

#if STAR_X86_DISPATCH
/// The state components the OS saves on a context switch (XCR0). A CPU may support
/// AVX-512 while the kernel does not enable its registers; then the instructions fault.
STAR_TARGET_BEGIN("xsave")
inline unsigned long long os_saved_state() noexcept
{
    return static_cast<unsigned long long>(_xgetbv(0));
}
STAR_TARGET_END

/// Features of this CPU, read once with CPUID. xsimd's own detection (Debian's 8.1) checks
/// neither F16C nor whether the OS saves the AVX-512 registers, so the library asks itself.
struct CpuFeatures {
    bool avx2 = false;
    bool avx512 = false;
    bool avx512_bf16 = false;
    /// Whether `vdpbf16ps` (32 multiply-adds) outruns the float FMA (16) here. The manuals
    /// do not say; bench_kernel measured it: on AMD Zen 5 the avx512_bf16 path's bf16
    /// prefill reached 1.46x the float FMA peak, but on Intel Emerald Rapids `vdpbf16ps`
    /// itself reached 0.48 of it (one issued for every four FMAs), and oneDNN's bf16 matmul
    /// 0.6 of its float one. Zen 4 is taken to be as Zen 5, and Intel's other AVX512_BF16
    /// cores (Cooper Lake, Sapphire and Granite Rapids) as Emerald Rapids: Intel's bf16
    /// unit is AMX.
    bool fast_bf16_dot = false;

    static CpuFeatures read() noexcept
    {
        CpuFeatures f;
        unsigned a = 0, b = 0, c = 0, d = 0;
        if (__get_cpuid(0, &a, &b, &c, &d) == 0)
            return f;
        // "AuthenticAMD", as CPUID spells it across EBX, EDX, ECX.
        const bool amd = b == 0x68747541U && d == 0x69746E65U && c == 0x444D4163U;
        if (__get_cpuid(1, &a, &b, &c, &d) == 0)
            return f;
        const bool fma = (c >> 12) & 1U, osxsave = (c >> 27) & 1U, avx = (c >> 28) & 1U,
                   f16c = (c >> 29) & 1U;
        if (!osxsave || !avx)
            return f;
        const unsigned long long xcr0 = os_saved_state();
        const bool ymm_saved = (xcr0 & 0x6U) == 0x6U;   // SSE and AVX state
        const bool zmm_saved = (xcr0 & 0xE6U) == 0xE6U; // plus opmask and ZMM
        if (__get_cpuid_count(7, 0, &a, &b, &c, &d) == 0)
            return f;
        const bool avx2 = (b >> 5) & 1U, avx512f = (b >> 16) & 1U, avx512dq = (b >> 17) & 1U,
                   avx512bw = (b >> 30) & 1U, avx512vl = (b >> 31) & 1U;
        f.avx2 = ymm_saved && avx2 && fma && f16c;
        f.avx512 = f.avx2 && zmm_saved && avx512f && avx512dq && avx512bw && avx512vl;
        const unsigned last_subleaf = a;
        if (last_subleaf < 1 || __get_cpuid_count(7, 1, &a, &b, &c, &d) == 0)
            return f;
        f.avx512_bf16 = f.avx512 && ((a >> 5) & 1U);
        f.fast_bf16_dot = f.avx512_bf16 && amd;
        return f;
    }
};

inline const CpuFeatures& cpu_features() noexcept
{
    static const CpuFeatures features = CpuFeatures::read();
    return features;
}
#endif

/// What `STAR_ISA` asks for: no cap (unset or empty), a cap, or an error message.
struct IsaCap {
    KernelIsa cap = all_kernel_isas.back();
    std::string error;
};

/// Reads a value of `STAR_ISA` (null when the variable is unset).
inline IsaCap parse_isa_cap(const char* value)
{
    if (value == nullptr || *value == '\0')
        return {};
    for (const KernelIsa isa : all_kernel_isas)
        if (name(isa) == value)
            return {isa, {}};
    return {KernelIsa::portable,
            "STAR_ISA: unknown kernel path \"" + std::string(value) +
                "\"; use portable, avx2, avx512 or avx512_bf16 (or unset it for the best the CPU "
                "has)"};
}

inline const IsaCap& environment_isa_cap()
{
    static const IsaCap cap = parse_isa_cap(std::getenv("STAR_ISA"));
    return cap;
}

/// For tests: when not negative, the path every kernel call takes, bypassing `STAR_ISA`
/// (tests/reference.hpp's ForcedIsa sets it only to paths the CPU has).
inline std::atomic<int> forced_isa{-1};

} // namespace detail

/// Whether this CPU, and the operating system, can run the kernel's path `isa`; false for
/// every path but the portable one where the paths are not compiled (other instruction set
/// families, or `STAR_NO_DISPATCH`: detail/simd/target.hpp).
inline bool cpu_supports(KernelIsa isa) noexcept
{
    switch (isa) {
    case KernelIsa::portable: return true;
#if STAR_X86_DISPATCH
    case KernelIsa::avx2: return detail::cpu_features().avx2;
    case KernelIsa::avx512: return detail::cpu_features().avx512;
    case KernelIsa::avx512_bf16: return detail::cpu_features().avx512_bf16;
#else
    default: return false;
#endif
    }
    return false;
}

/// Whether this CPU multiplies bf16 faster than float: then, with bf16 K/V, the avx512_bf16
/// path's bf16 products are worth their rounding (docs/accuracy.md, "bf16 products"). True
/// on AMD Zen 4 and later; false on Intel's AVX512_BF16 CPUs, whose `vdpbf16ps` runs at
/// half the float FMA's FLOP rate (measured on Emerald Rapids), and wherever AVX512_BF16 is
/// missing.
inline bool bf16_products_outrun_float() noexcept
{
#if STAR_X86_DISPATCH
    return detail::cpu_features().fast_bf16_dot;
#else
    return false;
#endif
}

namespace detail {

/// The best path under `cap` of a CPU that supports the paths `supports` says it does and
/// on which the bf16 products do or do not pay.
template <class Supports>
KernelIsa preferred_isa(KernelIsa cap, Supports supports, bool bf16_products_pay) noexcept
{
    KernelIsa best = KernelIsa::portable;
    for (const KernelIsa isa : all_kernel_isas)
        if (isa <= cap && supports(isa) && (isa != KernelIsa::avx512_bf16 || bf16_products_pay))
            best = isa;
    return best;
}

} // namespace detail

/// The path `attention` takes: the best one the CPU supports, capped by the environment
/// variable `STAR_ISA` (read once per process). avx512_bf16 counts as better than avx512
/// only where `bf16_products_outrun_float()`; elsewhere bf16 K/V stay in float products.
/// \throws star::error if `STAR_ISA` names no path.
inline KernelIsa kernel_isa()
{
    if (const int forced = detail::forced_isa.load(std::memory_order_relaxed); forced >= 0)
        return static_cast<KernelIsa>(forced);
    const detail::IsaCap& cap = detail::environment_isa_cap();
    if (!cap.error.empty())
        detail::fail_at_runtime(cap.error);
    return detail::preferred_isa(cap.cap, cpu_supports, bf16_products_outrun_float());
}

} // namespace star
