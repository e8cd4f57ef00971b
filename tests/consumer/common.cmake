# Shared by the consumer tests' scripts (run.cmake, warnings.cmake, subproject.cmake,
# deb.cmake), each run with cmake -P by a CTest test of tests/CMakeLists.txt.
#
# star_require(<var>...): each -D<var>=... must be given.
# star_step(<name> <command>...): run a command, print its output, stop the script with
# message(FATAL_ERROR) and the output if it fails. Messages start with ${STAR_TEST_NAME}.
# star_expect_failure(<name> <regex> <command>...): the command must fail, printing <regex>.

function(star_require)
  foreach(var IN LISTS ARGN)
    if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
      message(FATAL_ERROR "${STAR_TEST_NAME}: -D${var}=... is required")
    endif()
  endforeach()
endfunction()

function(star_step name)
  string(JOIN " " command_line ${ARGN})
  message(STATUS "${STAR_TEST_NAME}: ${name}: ${command_line}")
  execute_process(COMMAND ${ARGN}
    RESULT_VARIABLE result
    OUTPUT_VARIABLE output
    ERROR_VARIABLE output)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "${STAR_TEST_NAME}: ${name} failed (${result}):\n${output}")
  endif()
  message("${output}")
endfunction()

function(star_expect_failure name regex)
  string(JOIN " " command_line ${ARGN})
  message(STATUS "${STAR_TEST_NAME}: ${name} (must fail): ${command_line}")
  execute_process(COMMAND ${ARGN}
    RESULT_VARIABLE result
    OUTPUT_VARIABLE output
    ERROR_VARIABLE output)
  if(result EQUAL 0 OR NOT output MATCHES "${regex}")
    message(FATAL_ERROR "${STAR_TEST_NAME}: ${name} should fail with '${regex}' "
                        "(exit ${result}):\n${output}")
  endif()
endfunction()

# star_check_exists(<path>...) / star_check_missing(<path>...): installed layout checks.
function(star_check_exists)
  foreach(path IN LISTS ARGN)
    if(NOT EXISTS "${path}")
      message(FATAL_ERROR "${STAR_TEST_NAME}: expected '${path}' to exist")
    endif()
  endforeach()
endfunction()
function(star_check_missing)
  foreach(path IN LISTS ARGN)
    if(EXISTS "${path}")
      message(FATAL_ERROR "${STAR_TEST_NAME}: '${path}' should not exist")
    endif()
  endforeach()
endfunction()

# star_check_install_layout(<root>): the files a header-only install puts under <root> (a
# prefix, or /usr of the unpacked Debian package): everything arch-independent, in share/.
function(star_check_install_layout root)
  star_check_exists(
    ${root}/include/star/star.hpp
    ${root}/include/star/version.hpp
    ${root}/share/cmake/StarAttention/StarAttentionConfig.cmake
    ${root}/share/cmake/StarAttention/StarAttentionConfigVersion.cmake
    ${root}/share/pkgconfig/star-attention.pc
    ${root}/share/doc/StarAttention/LICENSE)
  star_check_missing(${root}/lib)
endfunction()

# star_consumer_args(<var>): the generator and compiler a consumer is configured with
# (CONSUMER_GENERATOR, CONSUMER_CXX_COMPILER, when given), appended to <var>.
function(star_consumer_args var)
  set(args ${${var}})
  if(CONSUMER_GENERATOR)
    list(APPEND args -G ${CONSUMER_GENERATOR})
  endif()
  if(CONSUMER_CXX_COMPILER)
    list(APPEND args -DCMAKE_CXX_COMPILER=${CONSUMER_CXX_COMPILER})
  endif()
  set(${var} ${args} PARENT_SCOPE)
endfunction()
