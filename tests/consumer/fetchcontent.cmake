# Run as: cmake -DSTAR_SOURCE_DIR=... -DWORK_DIR=... -DVERSION=...
#               [-DCONSUMER_GENERATOR=...] [-DCONSUMER_CXX_COMPILER=...] -P fetchcontent.cmake
#
# 1. packs Star's source tree into WORK_DIR/star-<VERSION>.tar.gz, the way a release archive
#    holds it (tests, benchmarks and examples included);
# 2. configures tests/consumer/fetchcontent, which gets Star from that archive's file:// URL
#    with FetchContent_Declare(URL ... URL_HASH ...) + FetchContent_MakeAvailable and checks
#    that Star configured nothing but its library;
# 3. builds and runs the consumer;
# 4. installs the consumer into a fresh prefix: its program is there, nothing of Star's is.
#
# Why an archive made here and a file:// URL: FetchContent then downloads, checks the hash of,
# and extracts a tarball as it does from a release URL (what FetchContent's documentation
# recommends over a git clone), offline; and the archive is made from the working tree, so the
# test checks uncommitted changes too, which `git archive` or a clone of the repository would
# not see, and runs where the sources are not a git checkout.
set(STAR_TEST_NAME consumer_fetchcontent)
include(${CMAKE_CURRENT_LIST_DIR}/common.cmake)
star_require(STAR_SOURCE_DIR WORK_DIR VERSION)

file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

# Every top-level entry but build trees (build/, where the presets put them, this test's work
# directory included) and hidden ones (.git and the like), which FetchContent does not need.
file(GLOB entries RELATIVE ${STAR_SOURCE_DIR} ${STAR_SOURCE_DIR}/*)
list(FILTER entries EXCLUDE REGEX "^(build|\\.)")
set(archive ${WORK_DIR}/star-${VERSION}.tar.gz)
# The archive's single top directory is stripped by FetchContent, as for GitHub's archives.
list(TRANSFORM entries PREPEND ${STAR_SOURCE_DIR}/)
file(COPY ${entries} DESTINATION ${WORK_DIR}/pack/star-${VERSION})
star_step(pack ${CMAKE_COMMAND} -E chdir ${WORK_DIR}/pack
          ${CMAKE_COMMAND} -E tar czf ${archive} star-${VERSION})
file(REMOVE_RECURSE ${WORK_DIR}/pack)
file(SHA256 ${archive} sha256)

set(build ${WORK_DIR}/build)
set(args -S ${CMAKE_CURRENT_LIST_DIR}/fetchcontent -B ${build} -DCMAKE_BUILD_TYPE=Release
         -DSTAR_URL=file://${archive} -DSTAR_SHA256=${sha256} -DSTAR_EXPECTED_VERSION=${VERSION})
star_consumer_args(args)
star_step(configure ${CMAKE_COMMAND} ${args})
star_step(build ${CMAKE_COMMAND} --build ${build} --target star_fetchcontent_consumer)
star_step(run ${build}/star_fetchcontent_consumer)

set(prefix ${WORK_DIR}/prefix)
star_step(install ${CMAKE_COMMAND} --install ${build} --prefix ${prefix})
star_check_exists(${prefix}/bin/star_fetchcontent_consumer)
star_check_missing(${prefix}/include ${prefix}/share ${prefix}/lib)
