# Run as: cmake -DSTAR_SOURCE_DIR=... -DWORK_DIR=... -DORDER=before|after
#               [-DCONSUMER_GENERATOR=...] [-DCONSUMER_CXX_COMPILER=...] -P subproject.cmake
#
# Configures tests/consumer/subproject, a parent project with a target of its own called
# `star` that adds Star with add_subdirectory(); its CMakeLists.txt checks the rest (the alias,
# the defaults of a subproject, no MPI search, SYSTEM include directories). Then checks that
# the generated install script installs nothing of Star's. Configure only: what is tested is
# CMake's, and tests/consumer/warnings.cmake compiles the headers.
set(STAR_TEST_NAME consumer_subproject)
include(${CMAKE_CURRENT_LIST_DIR}/common.cmake)
star_require(STAR_SOURCE_DIR WORK_DIR ORDER)

file(REMOVE_RECURSE ${WORK_DIR})
set(args -S ${CMAKE_CURRENT_LIST_DIR}/subproject -B ${WORK_DIR} -DORDER=${ORDER}
         -DSTAR_SOURCE_DIR=${STAR_SOURCE_DIR})
star_consumer_args(args)
star_step("configure (own star target ${ORDER})" ${CMAKE_COMMAND} ${args})

file(READ ${WORK_DIR}/star-attention/cmake_install.cmake install_script)
if(install_script MATCHES "StarAttention|include/star")
  message(FATAL_ERROR "${STAR_TEST_NAME}: a subproject Star has install rules:\n${install_script}")
endif()
