# Runs FUZZER once over a fresh copy of the seed corpus CORPUS (in WORK_DIR) and fails if any
# seed fails. Called by the CTest test fuzz_star_smoke.
foreach(var FUZZER CORPUS WORK_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "smoke.cmake: ${var} is not set")
  endif()
endforeach()

file(GLOB seeds "${CORPUS}/*")
list(LENGTH seeds seed_count)
if(seed_count EQUAL 0)
  message(FATAL_ERROR "the seed corpus ${CORPUS} is empty")
endif()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
file(COPY ${seeds} DESTINATION "${WORK_DIR}/corpus")

execute_process(
  COMMAND "${FUZZER}" -runs=0 -timeout=10 -rss_limit_mb=4096 "${WORK_DIR}/corpus"
  WORKING_DIRECTORY "${WORK_DIR}"
  RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "fuzz_star failed on the seed corpus (exit ${result}); the failing seed "
    "was saved in ${WORK_DIR} as crash-* or timeout-*")
endif()
message(STATUS "fuzz_star ran all ${seed_count} seeds")
