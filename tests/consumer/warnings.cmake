# Run as: cmake -DSTAR_SOURCE_DIR=... -DSTAR_BUILD_DIR=... -DWORK_DIR=... -DCOMPILERS=g++|clang++
#               -DDEPENDENCY_INCLUDES=... -DTBB_LIBRARY=... [-DMPI_INCLUDES=...] -P warnings.cmake
#
# Compiles tests/consumer/warnings.cpp, a user's file that includes <star/star.hpp> after
# <Eigen/Core> and calls global, Ring and Star attention, with each compiler of COMPILERS and
# the warnings careful projects turn on, as errors. Star's headers come in as plain -I, not
# as system headers, so that nothing of the library is hidden; its dependencies (Eigen, xsimd,
# oneTBB) come in as -isystem, as their CMake targets give them. Per compiler:
#   -O2                                  compiled, linked and run
#   -O2 -march=native                    compiled, linked and run
#   -O2 -march=sapphirerapids            compiled only: AVX-512 (and bf16) in the unit's own
#                                        target, where GCC 12 reports its intrinsics
#   -O2 -march=native -DSTAR_NO_DISPATCH compiled only: the portable path alone
# and with MPI_INCLUDES, tests/consumer/mpi_main.cpp (star/comm/mpi.hpp) once, compiled only.
set(STAR_TEST_NAME consumer_warnings)
include(${CMAKE_CURRENT_LIST_DIR}/common.cmake)
star_require(STAR_SOURCE_DIR STAR_BUILD_DIR WORK_DIR COMPILERS DEPENDENCY_INCLUDES TBB_LIBRARY)
# Lists come joined with "|" (a ";" would split the test's command line).
foreach(var COMPILERS DEPENDENCY_INCLUDES MPI_INCLUDES)
  string(REPLACE "|" ";" ${var} "${${var}}")
endforeach()

file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

set(warnings -Wall -Wextra -Wpedantic -Wconversion -Wsign-conversion -Werror)
# Plain -I: star/version.hpp is generated into the build tree.
set(includes -I${STAR_SOURCE_DIR}/include -I${STAR_BUILD_DIR}/include)
foreach(dir IN LISTS DEPENDENCY_INCLUDES)
  list(APPEND includes -isystem ${dir})
endforeach()

set(variants "plain|-O2|run" "native|-O2,-march=native|run" "avx512|-O2,-march=sapphirerapids|compile"
             "no-dispatch|-O2,-march=native,-DSTAR_NO_DISPATCH|compile")
foreach(compiler IN LISTS COMPILERS)
  get_filename_component(compiler_name ${compiler} NAME)
  foreach(variant IN LISTS variants)
    string(REPLACE "|" ";" fields "${variant}")
    list(GET fields 0 name)
    list(GET fields 1 flags)
    string(REPLACE "," ";" flags "${flags}")
    list(GET fields 2 what)
    set(object ${WORK_DIR}/${compiler_name}-${name}.o)
    star_step("${compiler_name} ${name}" ${compiler} -std=c++20 ${flags} ${warnings} ${includes}
              -c ${STAR_SOURCE_DIR}/tests/consumer/warnings.cpp -o ${object})
    if(what STREQUAL "run")
      set(program ${WORK_DIR}/${compiler_name}-${name})
      star_step("${compiler_name} ${name} link" ${compiler} ${object} ${TBB_LIBRARY} -pthread
                -o ${program})
      star_step("${compiler_name} ${name} run" ${program})
    endif()
  endforeach()
endforeach()

if(MPI_INCLUDES)
  list(GET COMPILERS 0 compiler)
  set(mpi_includes)
  foreach(dir IN LISTS MPI_INCLUDES)
    list(APPEND mpi_includes -isystem ${dir})
  endforeach()
  star_step("mpi header" ${compiler} -std=c++20 -O2 ${warnings} ${includes} ${mpi_includes}
            -c ${STAR_SOURCE_DIR}/tests/consumer/mpi_main.cpp -o ${WORK_DIR}/mpi_main.o)
endif()
message(STATUS "${STAR_TEST_NAME}: no warnings")
