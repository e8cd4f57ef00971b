#pragma once
/// \file
/// The library needs C++20 (concepts, std::span, designated initialisers...). Compiled as an
/// older C++, every header would fail with hundreds of errors that do not say why; this says
/// it once, first. Included first by the headers every other one includes (error.hpp,
/// detail/simd/target.hpp) and by the umbrella header, which then includes nothing else.
///
/// MSVC reports __cplusplus as 199711L unless given /Zc:__cplusplus; _MSVC_LANG has the
/// standard it compiles.

#if defined(_MSVC_LANG) && _MSVC_LANG > __cplusplus
#define STAR_DETAIL_CPLUSPLUS _MSVC_LANG
#else
#define STAR_DETAIL_CPLUSPLUS __cplusplus
#endif

#if STAR_DETAIL_CPLUSPLUS < 202002L
#define STAR_DETAIL_CXX20 0
// clang-format off
#error "Star needs C++20: compile with -std=c++20 (GCC, Clang) or /std:c++20 (MSVC), or link the CMake target StarAttention::star, which asks for it"
// clang-format on
#else
#define STAR_DETAIL_CXX20 1
#endif
