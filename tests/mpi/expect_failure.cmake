# An MPI job that must fail: COMMAND (the whole mpiexec line, arguments separated by `|`)
# has to end within TIMEOUT seconds with a non-zero exit and print a message matching
# EXPECTED. A hang (timeout) or a success fails this test.
# Run with cmake -P; COMMAND, TIMEOUT and EXPECTED defined by the test.
foreach(var COMMAND TIMEOUT EXPECTED)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "expect_failure.cmake: -D${var}=... missing")
  endif()
endforeach()
string(REPLACE "|" ";" command "${COMMAND}")
execute_process(COMMAND ${command} TIMEOUT ${TIMEOUT}
  RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(result MATCHES "timeout|Process terminated due to timeout")
  message(FATAL_ERROR "the job did not end within ${TIMEOUT} s (${result}):\n${out}\n${err}")
endif()
if(result EQUAL 0)
  message(FATAL_ERROR "the job succeeded:\n${out}\n${err}")
endif()
if(NOT "${out}${err}" MATCHES "${EXPECTED}")
  message(FATAL_ERROR "no message matching '${EXPECTED}':\n${out}\n${err}")
endif()
message(STATUS "ended with ${result} as expected:\n${err}")
