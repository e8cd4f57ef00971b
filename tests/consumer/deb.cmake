# Run as: cmake -DSTAR_SOURCE_DIR=... -DWORK_DIR=... -DDPKG_DEB=... -DCPACK=... -DVERSION=...
#               [-DCONSUMER_GENERATOR=...] [-DCONSUMER_CXX_COMPILER=...] -P deb.cmake
#
# 1. configures Star's source tree afresh with nothing but the library (no tests, examples,
#    benchmarks or docs: nothing to build) and makes the Debian package with cpack -G DEB;
# 2. checks its control fields (name, Architecture all, Depends) and that its files are where
#    a header-only -dev package puts them (/usr/include, /usr/share; nothing in /usr/lib);
# 3. unpacks it with dpkg-deb -x into a scratch root, as no root is needed for that;
# 4. configures tests/consumer against that root with find_package(StarAttention), builds it
#    and runs it: the package's config files must work from wherever it was unpacked.
set(STAR_TEST_NAME consumer_debian_package)
include(${CMAKE_CURRENT_LIST_DIR}/common.cmake)
star_require(STAR_SOURCE_DIR WORK_DIR DPKG_DEB CPACK VERSION)

file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
set(consumer_args)
star_consumer_args(consumer_args)

star_step(configure ${CMAKE_COMMAND} -S ${STAR_SOURCE_DIR} -B ${WORK_DIR}/star ${consumer_args}
          -DCMAKE_BUILD_TYPE=Release -DSTAR_BUILD_TESTS=OFF
          -DSTAR_BUILD_EXAMPLES=OFF -DSTAR_BUILD_BENCHMARKS=OFF -DSTAR_BUILD_DOCS=OFF)
star_step(cpack ${CMAKE_COMMAND} -E chdir ${WORK_DIR}/star ${CPACK} -G DEB -B ${WORK_DIR}/package)

file(GLOB debs ${WORK_DIR}/package/*.deb)
list(LENGTH debs count)
if(NOT count EQUAL 1)
  message(FATAL_ERROR "${STAR_TEST_NAME}: expected one .deb in ${WORK_DIR}/package, got '${debs}'")
endif()
get_filename_component(deb_name ${debs} NAME)
if(NOT deb_name STREQUAL "libstar-attention-dev_${VERSION}_all.deb")
  message(FATAL_ERROR "${STAR_TEST_NAME}: unexpected package file name ${deb_name}")
endif()

# Control fields.
foreach(field_value
    "Package|libstar-attention-dev"
    "Architecture|all"
    "Version|${VERSION}"
    "Depends|libeigen3-dev \\(>= 3.4\\), libxsimd-dev, libtbb-dev")
  string(REPLACE "|" ";" field_value "${field_value}")
  list(GET field_value 0 field)
  list(GET field_value 1 expected)
  execute_process(COMMAND ${DPKG_DEB} -f ${debs} ${field} OUTPUT_VARIABLE value
                  OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE result)
  if(NOT result EQUAL 0 OR NOT value MATCHES "^${expected}$")
    message(FATAL_ERROR "${STAR_TEST_NAME}: field ${field} is '${value}', expected '${expected}'")
  endif()
endforeach()

# Contents.
star_step(unpack ${DPKG_DEB} -x ${debs} ${WORK_DIR}/root)
set(usr ${WORK_DIR}/root/usr)
star_check_install_layout(${usr})
star_check_missing(${usr}/local)

# A consumer against the unpacked root only.
star_step(consumer-configure ${CMAKE_COMMAND} -S ${CMAKE_CURRENT_LIST_DIR} -B ${WORK_DIR}/consumer
          ${consumer_args} -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${usr}
          -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
file(STRINGS ${WORK_DIR}/consumer/CMakeCache.txt found_dir REGEX "^StarAttention_DIR:")
if(NOT found_dir MATCHES "${WORK_DIR}/root/usr/share/cmake/StarAttention")
  message(FATAL_ERROR "${STAR_TEST_NAME}: StarAttention was found in '${found_dir}', "
                      "not in the unpacked package")
endif()
star_step(consumer-build ${CMAKE_COMMAND} --build ${WORK_DIR}/consumer --target star_consumer)
star_step(consumer-run ${WORK_DIR}/consumer/star_consumer)
