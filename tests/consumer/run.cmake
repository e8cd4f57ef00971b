# Run as: cmake -DSTAR_BUILD_DIR=... -DCONSUMER_SOURCE_DIR=... -DWORK_DIR=...
#               [-DSTAR_CONFIG=...] [-DCONSUMER_GENERATOR=...] [-DCONSUMER_CXX_COMPILER=...]
#               [-DMPIEXEC=...] [-DPKG_CONFIG=...] [-DVERSION=...] -P run.cmake
#
# 1. installs the Star build tree STAR_BUILD_DIR into a fresh prefix WORK_DIR/prefix, and
#    checks the layout of a header-only package (config files and .pc in share/, nothing in
#    lib/; the HTML reference when it was built);
# 2. configures CONSUMER_SOURCE_DIR against that prefix only, in WORK_DIR/build;
# 3. builds it and runs the resulting executable (which checks <star/version.hpp> against the
#    version find_package found);
# 4. checks that asking for an unknown component fails with a message naming it;
# 5. with MPIEXEC (Star built with MPI): again with COMPONENTS mpi, running the MPI program
#    on 2 ranks;
# 6. with PKG_CONFIG: moves the prefix elsewhere and builds and runs the consumer with
#    `pkg-config --cflags --libs star-attention` alone, checking --modversion against VERSION.
# Any failing step stops the script with message(FATAL_ERROR) and that step's output.
set(STAR_TEST_NAME install_and_consume)
include(${CMAKE_CURRENT_LIST_DIR}/common.cmake)
star_require(STAR_BUILD_DIR CONSUMER_SOURCE_DIR WORK_DIR)

set(prefix ${WORK_DIR}/prefix)
set(build ${WORK_DIR}/build)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

set(config_args)
if(STAR_CONFIG)
  set(config_args --config ${STAR_CONFIG})
endif()

star_step(install ${CMAKE_COMMAND} --install ${STAR_BUILD_DIR} --prefix ${prefix} ${config_args})

# Header-only: everything arch-independent, in share/ (issue 14).
star_check_install_layout(${prefix})
if(EXISTS ${STAR_BUILD_DIR}/docs/html/index.html)
  star_check_exists(${prefix}/share/doc/StarAttention/html/index.html)
endif()

set(common_configure_args
  -DCMAKE_PREFIX_PATH=${prefix}
  # Find Star only in the fresh prefix, never through a package registry.
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
  -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
star_consumer_args(common_configure_args)
if(STAR_CONFIG)
  list(APPEND common_configure_args -DCMAKE_BUILD_TYPE=${STAR_CONFIG})
endif()

# consume(<build dir> <components>): configure against the prefix, check where the package
# came from, build. Sets `exe_dir` in the caller to where the executables are.
function(consume build components)
  star_step(configure ${CMAKE_COMMAND} -S ${CONSUMER_SOURCE_DIR} -B ${build} ${common_configure_args}
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

  star_step(build ${CMAKE_COMMAND} --build ${build} ${config_args})

  # Single-config generators put executables in the build dir, multi-config ones in a
  # per-configuration subdirectory.
  set(dir ${build})
  if(STAR_CONFIG AND EXISTS ${build}/${STAR_CONFIG}/star_consumer)
    set(dir ${build}/${STAR_CONFIG})
  endif()
  set(exe_dir ${dir} PARENT_SCOPE)
endfunction()

consume(${build} "")
star_step(run ${exe_dir}/star_consumer)

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
  star_step(run-mpi ${MPIEXEC} -n 2 --oversubscribe --allow-run-as-root ${exe_dir}/star_consumer_mpi)
endif()

# pkg-config, from a prefix moved after the install: the .pc file finds its prefix from where it
# is (${pcfiledir}), and its Requires bring Eigen's, xsimd's and oneTBB's own .pc files.
if(PKG_CONFIG)
  set(moved ${WORK_DIR}/moved/elsewhere)
  file(MAKE_DIRECTORY ${WORK_DIR}/moved)
  file(RENAME ${prefix} ${moved})
  set(ENV{PKG_CONFIG_PATH} ${moved}/share/pkgconfig)
  foreach(query modversion cflags libs)
    execute_process(COMMAND ${PKG_CONFIG} --${query} star-attention
      RESULT_VARIABLE result OUTPUT_VARIABLE pc_${query} ERROR_VARIABLE error
      OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(NOT result EQUAL 0)
      message(FATAL_ERROR "install_and_consume: pkg-config --${query} star-attention failed:\n${error}")
    endif()
    message(STATUS "install_and_consume: pkg-config --${query} star-attention: ${pc_${query}}")
  endforeach()
  if(VERSION AND NOT pc_modversion STREQUAL VERSION)
    message(FATAL_ERROR "install_and_consume: pkg-config says version '${pc_modversion}', the "
                        "project is ${VERSION}")
  endif()
  string(FIND "${pc_cflags}" "-I${moved}/" at) # ${pcfiledir}/../../include, not normalised
  if(at EQUAL -1)
    message(FATAL_ERROR "install_and_consume: pkg-config's --cflags '${pc_cflags}' do not point "
                        "into the moved prefix ${moved}")
  endif()
  string(REPLACE "." ";" version_parts "${pc_modversion}")
  list(GET version_parts 0 major)
  list(GET version_parts 1 minor)
  list(GET version_parts 2 patch)
  separate_arguments(pc_cflags UNIX_COMMAND "${pc_cflags}")
  separate_arguments(pc_libs UNIX_COMMAND "${pc_libs}")
  set(cxx c++)
  if(CONSUMER_CXX_COMPILER)
    set(cxx ${CONSUMER_CXX_COMPILER})
  endif()
  star_step(pkg-config-build ${cxx} -std=c++20 -O1 -DEXPECTED_VERSION_MAJOR=${major}
       -DEXPECTED_VERSION_MINOR=${minor} -DEXPECTED_VERSION_PATCH=${patch}
       ${CONSUMER_SOURCE_DIR}/main.cpp ${pc_cflags} ${pc_libs} -o ${WORK_DIR}/star_consumer_pc)
  star_step(pkg-config-run ${WORK_DIR}/star_consumer_pc)
endif()
