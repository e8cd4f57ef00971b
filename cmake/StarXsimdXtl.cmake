# Works around a packaging defect of some xsimd builds (Debian 12's libxsimd-dev 8.1 among
# them): the exported `xsimd` target lists `xtl` in INTERFACE_LINK_LIBRARIES, but
# xsimdConfig.cmake never looks for xtl. Unless a target named `xtl` exists, CMake then puts a
# bare `-lxtl` on every link line, which fails because xtl is a header-only library.
#
# xsimd only needs xtl's headers when XSIMD_ENABLE_XTL_COMPLEX is defined, which Star never
# does. So: use the real xtl package if it is installed, otherwise define an empty stand-in
# target so that linking against `xsimd` works. Included after find_package(xsimd) by the
# top-level CMakeLists.txt and by the installed StarAttentionConfig.cmake.
if(TARGET xsimd AND NOT TARGET xtl)
  get_target_property(_star_xsimd_links xsimd INTERFACE_LINK_LIBRARIES)
  if(_star_xsimd_links AND "xtl" IN_LIST _star_xsimd_links)
    find_package(xtl CONFIG QUIET)
    if(NOT TARGET xtl)
      add_library(xtl INTERFACE IMPORTED)
    endif()
  endif()
  unset(_star_xsimd_links)
endif()
