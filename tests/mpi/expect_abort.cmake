# Runs an MPI job that must fail: it has to end within TIMEOUT seconds with a non-zero exit
# and print the failing rank's message. A hang (timeout) or a success fails this test.
execute_process(
  COMMAND ${MPIEXEC} -n ${RANKS} --oversubscribe --allow-run-as-root ${PROGRAM} --fail-on-rank ${FAILING_RANK}
  TIMEOUT ${TIMEOUT}
  RESULT_VARIABLE result
  OUTPUT_VARIABLE out
  ERROR_VARIABLE err)
if(result MATCHES "timeout|Process terminated due to timeout")
  message(FATAL_ERROR "the job did not end within ${TIMEOUT} s (${result}):\n${out}\n${err}")
endif()
if(result EQUAL 0)
  message(FATAL_ERROR "the job succeeded although rank ${FAILING_RANK} threw:\n${out}\n${err}")
endif()
if(NOT err MATCHES "rank ${FAILING_RANK} failed: injected failure")
  message(FATAL_ERROR "the failing rank's message is missing:\n${out}\n${err}")
endif()
message(STATUS "ended with ${result} as expected")
