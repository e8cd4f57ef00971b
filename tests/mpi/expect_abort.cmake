# Runs an MPI job that must fail: `PROGRAM MODE RANK` has to end within TIMEOUT seconds with
# a non-zero exit and print a message matching EXPECTED. A hang (timeout) or a success fails
# this test.
execute_process(
  COMMAND ${MPIEXEC} -n ${RANKS} --oversubscribe --allow-run-as-root ${PROGRAM} ${MODE} ${RANK}
  TIMEOUT ${TIMEOUT}
  RESULT_VARIABLE result
  OUTPUT_VARIABLE out
  ERROR_VARIABLE err)
if(result MATCHES "timeout|Process terminated due to timeout")
  message(FATAL_ERROR "the job did not end within ${TIMEOUT} s (${result}):\n${out}\n${err}")
endif()
if(result EQUAL 0)
  message(FATAL_ERROR "the job succeeded although it was run with ${MODE} ${RANK}:\n${out}\n${err}")
endif()
if(NOT err MATCHES "${EXPECTED}")
  message(FATAL_ERROR "no message matching '${EXPECTED}':\n${out}\n${err}")
endif()
message(STATUS "ended with ${result} as expected")
