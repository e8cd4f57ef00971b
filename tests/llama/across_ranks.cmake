# The Llama example across MPI ranks gives what it gives in one process: `llama ALONE` and
# `mpiexec -n RANKS llama ACROSS` (arguments separated by `|`) must print the same
# generated tokens (COLUMNS 0: the whole stdout) or the same table cells (the COLUMNS cells
# after each row's setting, which differs only by hosts=; a needle row's first cell is its
# length; timings and "run as" are left out). Across ranks, generate must also report time
# to first token, tokens/s and each rank's K/V and bytes sent.
# Run with cmake -P; LLAMA, MPIEXEC, RANKS, ALONE, ACROSS and COLUMNS defined by the test.
cmake_minimum_required(VERSION 3.25) # list() keeps empty elements (CMP0007)
foreach(var LLAMA MPIEXEC RANKS ALONE ACROSS COLUMNS)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "across_ranks.cmake: -D${var}=... missing")
  endif()
endforeach()
string(REPLACE "|" ";" alone "${ALONE}")
string(REPLACE "|" ";" across "${ACROSS}")

execute_process(COMMAND "${LLAMA}" ${alone} TIMEOUT 300
  RESULT_VARIABLE rc OUTPUT_VARIABLE alone_out ERROR_VARIABLE alone_log)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "llama ${alone} failed (${rc}):\n${alone_out}\n${alone_log}")
endif()
# --oversubscribe: more ranks than cores; --allow-run-as-root: CI runs as root.
execute_process(
  COMMAND "${MPIEXEC}" -n ${RANKS} --oversubscribe --allow-run-as-root "${LLAMA}" ${across}
  TIMEOUT 300
  RESULT_VARIABLE rc OUTPUT_VARIABLE ranks_out ERROR_VARIABLE ranks_log)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "mpiexec -n ${RANKS} llama ${across} failed (${rc}):\n${ranks_out}\n${ranks_log}")
endif()
message(STATUS "in one process:\n${alone_out}${alone_log}\non ${RANKS} ranks:\n${ranks_out}${ranks_log}")

# The cells to compare: every table row's COLUMNS cells after its setting.
function(table_cells text out)
  string(REPLACE "\n" ";" lines "${text}")
  set(cells)
  foreach(line IN LISTS lines)
    if(line MATCHES "^\\| [0-9a-z]" AND NOT line MATCHES "^\\| (length|setting) \\|")
      string(REPLACE "|" ";" fields "${line}")
      list(REMOVE_AT fields 0) # before the first |
      if(line MATCHES "^\\| [0-9]+ \\|") # needle: length, then setting
        list(REMOVE_AT fields 1)
      else()
        list(REMOVE_AT fields 0)
      endif()
      list(SUBLIST fields 0 ${COLUMNS} kept)
      foreach(cell IN LISTS kept)
        # A KL divergence below 1e-6 nats is float rounding (Ring's against global):
        # its digits depend on the order in which the ranks' partial results merge.
        if(cell MATCHES "^ *[0-9.]+e-(0[7-9]|[1-9][0-9]) *$")
          set(cell "below 1e-6")
        endif()
        list(APPEND cells "${cell}")
      endforeach()
    endif()
  endforeach()
  set(${out} "${cells}" PARENT_SCOPE)
endfunction()

if(COLUMNS EQUAL 0)
  if(alone_out STREQUAL "" OR NOT alone_out STREQUAL ranks_out)
    message(FATAL_ERROR "the outputs differ:\n${alone_out}\nvs\n${ranks_out}")
  endif()
  math(EXPR last "${RANKS} - 1")
  foreach(expected "time to first token [0-9.]+ ms, decode [0-9.]+ tokens/s"
                   "\\| rank \\| phase 1 ms \\| K/V held \\| bytes sent \\|"
                   "\\| ${last} \\(query host\\) \\|")
    if(NOT ranks_log MATCHES "${expected}")
      message(FATAL_ERROR "across ranks, no line matching '${expected}':\n${ranks_log}")
    endif()
  endforeach()
else()
  table_cells("${alone_out}" alone_cells)
  table_cells("${ranks_out}" ranks_cells)
  if(alone_cells STREQUAL "" OR NOT alone_cells STREQUAL ranks_cells)
    message(FATAL_ERROR "the tables differ: '${alone_cells}' vs '${ranks_cells}'")
  endif()
endif()
