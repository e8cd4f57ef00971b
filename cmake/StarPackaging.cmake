# CPack: `cpack -G DEB` in a build tree makes a Debian package of the install, like Debian's own
# -dev packages of header-only libraries: Architecture all, installed under /usr, depending on
# the -dev packages of Eigen, xsimd and oneTBB. Included by the top-level CMakeLists.txt when
# Star is the top-level project and STAR_INSTALL is ON.
#
# One package holds everything installed, the `mpi` component's files (the exported
# StarAttention::mpi, present when the build found MPI) included: they are a few lines of CMake
# that only a consumer asking for COMPONENTS mpi reads, and that then needs MPI itself. So
# libopenmpi-dev is suggested, not required; find_package(StarAttention COMPONENTS mpi) names
# it when it is missing.

set(CPACK_PACKAGE_NAME "libstar-attention-dev")
set(CPACK_PACKAGE_VENDOR "Star developers")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
set(CPACK_RESOURCE_FILE_LICENSE ${PROJECT_SOURCE_DIR}/LICENSE)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_GENERATOR DEB)
set(CPACK_SOURCE_GENERATOR TGZ)
set(CPACK_SOURCE_IGNORE_FILES "/\\\\.git/;/build/;/build-[^/]*/")

set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_ARCHITECTURE all)
set(CPACK_DEBIAN_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "Star developers <star@localhost>")
set(CPACK_DEBIAN_PACKAGE_DEPENDS "libeigen3-dev (>= 3.4), libxsimd-dev, libtbb-dev")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "libopenmpi-dev, pkg-config")
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION "${PROJECT_DESCRIPTION}
 Star Attention (Acharya, Jia and Ginsburg, 2024, arXiv 2411.17116) and the exact baselines
 it is measured against (global and Ring Attention), with a FlashAttention-style CPU kernel.
 Use it from CMake with find_package(StarAttention) and StarAttention::star, or with
 pkg-config star-attention.")

include(CPack)
