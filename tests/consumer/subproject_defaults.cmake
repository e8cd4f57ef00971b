# Included by the consumer projects that pull Star in as a subproject (subproject/ with
# add_subdirectory, fetchcontent/ with FetchContent), after Star is added: as a subproject
# Star makes no install rules (STAR_INSTALL defaults to OFF, like fmt's FMT_INSTALL), no
# tests, benchmarks or examples, and does not look for MPI (STAR_MPI defaults to OFF), so
# there is no StarAttention::mpi.
foreach(option STAR_INSTALL STAR_MPI STAR_BUILD_TESTS STAR_BUILD_EXAMPLES STAR_BUILD_BENCHMARKS)
  if(${option})
    message(FATAL_ERROR "${option} should default to OFF in a subproject")
  endif()
endforeach()
if(TARGET StarAttention::mpi OR DEFINED MPI_CXX_FOUND OR DEFINED CACHE{MPI_CXX_COMPILER})
  message(FATAL_ERROR "Star looked for MPI although StarAttention::mpi was not asked for")
endif()
