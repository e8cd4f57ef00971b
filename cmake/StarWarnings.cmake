# Compile settings for the project's own targets (tests, benchmarks, examples, header check).
# None of this reaches the exported `star` interface target: consumers pick their own
# warnings and target ISA.

set(STAR_GCC12_PRELUDE ${CMAKE_CURRENT_LIST_DIR}/gcc12_system_header_prelude.hpp)

# star_project_target(<target> [NO_PRELUDE])
#   Applies the project's warning set (-Wall -Wextra -Wpedantic, plus -Werror when
#   STAR_WERROR is ON) and, when STAR_NATIVE is ON, -march=native. These are GCC/Clang
#   flags; other compilers get none of them.
#
#   Warnings from Eigen, xsimd and oneTBB headers do not reach us: their include directories
#   come from imported targets and are therefore passed as -isystem. GCC 12 has false
#   positives in its own headers that escape that suppression once inlined into our code;
#   on GCC < 13 the prelude cmake/gcc12_system_header_prelude.hpp (see there) is
#   force-included to silence exactly those. NO_PRELUDE leaves it out; the header
#   self-containment check uses it, as the prelude would include <string> for every header.
function(star_project_target tgt)
  cmake_parse_arguments(PARSE_ARGV 1 arg "NO_PRELUDE" "" "")
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${tgt} PRIVATE -Wall -Wextra -Wpedantic)
    if(STAR_WERROR)
      target_compile_options(${tgt} PRIVATE -Werror)
    endif()
    if(STAR_NATIVE)
      target_compile_options(${tgt} PRIVATE -march=native)
    endif()
  endif()
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13
     AND NOT arg_NO_PRELUDE)
    target_compile_options(${tgt} PRIVATE "SHELL:-include \"${STAR_GCC12_PRELUDE}\"")
  endif()
endfunction()
