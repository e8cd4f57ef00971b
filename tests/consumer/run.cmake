# Run as: cmake -DSTAR_BUILD_DIR=... -DCONSUMER_SOURCE_DIR=... -DWORK_DIR=...
#               [-DSTAR_CONFIG=...] [-DCONSUMER_GENERATOR=...] [-DCONSUMER_CXX_COMPILER=...]
#               [-DMPIEXEC=...] -P run.cmake
#
# 1. installs the Star build tree STAR_BUILD_DIR into a fresh prefix WORK_DIR/prefix;
# 2. configures CONSUMER_SOURCE_DIR against that prefix only, in WORK_DIR/build;
# 3. builds it and runs the resulting executable;
# 4. checks that asking for an unknown component fails with a message naming it;
# 5. with MPIEXEC (Star built with MPI): again with COMPONENTS mpi, running the MPI program
#    on 2 ranks.
# Any failing step stops the script with message(FATAL_ERROR) and that step's output.

foreach(var STAR_BUILD_DIR CONSUMER_SOURCE_DIR WORK_DIR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run.cmake: -D${var}=... is required")
  endif()
endforeach()

set(prefix ${WORK_DIR}/prefix)
set(build ${WORK_DIR}/build)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

# step(<name> <command>...): run a command, print its output, fail if it fails.
function(step name)
  string(JOIN " " command_line ${ARGN})
  message(STATUS "install_and_consume: ${name}: ${command_line}")
  execute_process(COMMAND ${ARGN}
    RESULT_VARIABLE result
    OUTPUT_VARIABLE output
    ERROR_VARIABLE output)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "install_and_consume: ${name} failed (${result}):\n${output}")
  endif()
  message("${output}")
endfunction()

set(config_args)
if(STAR_CONFIG)
  set(config_args --config ${STAR_CONFIG})
endif()

step(install ${CMAKE_COMMAND} --install ${STAR_BUILD_DIR} --prefix ${prefix} ${config_args})

set(common_configure_args
  -DCMAKE_PREFIX_PATH=${prefix}
  # Find Star only in the fresh prefix, never through a package registry.
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
  -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
if(CONSUMER_GENERATOR)
  list(APPEND common_configure_args -G ${CONSUMER_GENERATOR})
endif()
if(CONSUMER_CXX_COMPILER)
  list(APPEND common_configure_args -DCMAKE_CXX_COMPILER=${CONSUMER_CXX_COMPILER})
endif()
if(STAR_CONFIG)
  list(APPEND common_configure_args -DCMAKE_BUILD_TYPE=${STAR_CONFIG})
endif()

# consume(<build dir> <components>): configure against the prefix, check where the package
# came from, build. Sets `exe_dir` in the caller to where the executables are.
function(consume build components)
  step(configure ${CMAKE_COMMAND} -S ${CONSUMER_SOURCE_DIR} -B ${build} ${common_configure_args}
       "-DCONSUMER_COMPONENTS=${components}")

  # The package must have come from the prefix just installed, not from anywhere else.
  file(STRINGS ${build}/CMakeCache.txt found_dir REGEX "^StarAttention_DIR:")
  file(REAL_PATH ${prefix} real_prefix)
  string(REGEX REPLACE "^StarAttention_DIR:[A-Z]+=" "" found_dir "${found_dir}")
  file(REAL_PATH "${found_dir}" found_dir)
  string(FIND "${found_dir}" "${real_prefix}/" at)
  if(NOT at EQUAL 0)
    message(FATAL_ERROR "install_and_consume: StarAttention was found in '${found_dir}', "
                        "not in the fresh prefix '${real_prefix}'")
  endif()

  step(build ${CMAKE_COMMAND} --build ${build} ${config_args})

  # Single-config generators put executables in the build dir, multi-config ones in a
  # per-configuration subdirectory.
  set(dir ${build})
  if(STAR_CONFIG AND EXISTS ${build}/${STAR_CONFIG}/star_consumer)
    set(dir ${build}/${STAR_CONFIG})
  endif()
  set(exe_dir ${dir} PARENT_SCOPE)
endfunction()

consume(${build} "")
step(run ${exe_dir}/star_consumer)

# An unknown component must stop the consumer's configure step with a message naming it.
execute_process(
  COMMAND ${CMAKE_COMMAND} -S ${CONSUMER_SOURCE_DIR} -B ${WORK_DIR}/build-bogus
          ${common_configure_args} -DCONSUMER_COMPONENTS=bogus
  RESULT_VARIABLE result
  OUTPUT_VARIABLE output
  ERROR_VARIABLE output)
if(result EQUAL 0 OR NOT output MATCHES "unknown component 'bogus'")
  message(FATAL_ERROR "install_and_consume: asking for component 'bogus' should fail naming it "
                      "(exit ${result}):\n${output}")
endif()
message(STATUS "install_and_consume: an unknown component is rejected by name")

if(MPIEXEC)
  consume(${WORK_DIR}/build-mpi "mpi")
  step(run-mpi ${MPIEXEC} -n 2 --oversubscribe --allow-run-as-root ${exe_dir}/star_consumer_mpi)
endif()
