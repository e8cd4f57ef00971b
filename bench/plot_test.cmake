# The `plot_script` test (label `docs`): bench/plot.py on the small sample JSON in
# bench/testdata/ must write every plot as a PNG, and skip (not fail) a plot whose benchmarks
# are missing.
#
# Two roles in one file:
#  * include()d from bench/CMakeLists.txt: finds a Python 3 with matplotlib and registers the
#    test. Without one the test is left out with a message -- except when the environment
#    variable CI is set, where that is a configure error (.ci/deps installs
#    python3-matplotlib). STAR_PLOT_PYTHON names the interpreter (empty: search python3 on
#    the PATH, then /usr/bin/python3; pyenv and venv interpreters often lack Debian's
#    matplotlib).
#  * run with `cmake -P` by the test (PYTHON, SCRIPT, DATA, OUT defined): the checks.

if(NOT CMAKE_SCRIPT_MODE_FILE)
  set(STAR_PLOT_PYTHON "" CACHE FILEPATH
    "Python 3 with matplotlib for the plot_script test (empty: search)")
  set(_star_plot_python "${STAR_PLOT_PYTHON}")
  if(NOT _star_plot_python)
    set(_star_candidates)
    find_program(_star_python3 NAMES python3)
    if(_star_python3)
      list(APPEND _star_candidates "${_star_python3}")
    endif()
    list(APPEND _star_candidates /usr/bin/python3)
    foreach(_star_py IN LISTS _star_candidates)
      if(EXISTS "${_star_py}")
        execute_process(COMMAND "${_star_py}" -c "import matplotlib"
          RESULT_VARIABLE _star_rc OUTPUT_QUIET ERROR_QUIET)
        if(_star_rc EQUAL 0)
          set(_star_plot_python "${_star_py}")
          break()
        endif()
      endif()
    endforeach()
  endif()

  if(_star_plot_python)
    add_test(NAME plot_script
      COMMAND ${CMAKE_COMMAND}
        -DPYTHON=${_star_plot_python}
        -DSCRIPT=${CMAKE_CURRENT_SOURCE_DIR}/plot.py
        -DDATA=${CMAKE_CURRENT_SOURCE_DIR}/testdata
        -DOUT=${CMAKE_CURRENT_BINARY_DIR}/plot_script
        -P ${CMAKE_CURRENT_LIST_FILE})
    set_tests_properties(plot_script PROPERTIES LABELS docs)
  elseif(DEFINED ENV{CI})
    message(FATAL_ERROR "CI is set but no Python 3 with matplotlib was found for the "
      "plot_script test: install python3-matplotlib (.ci/deps), or set STAR_PLOT_PYTHON")
  else()
    message(STATUS "plot_script test disabled: no Python 3 with matplotlib "
      "(Debian: python3-matplotlib; or set STAR_PLOT_PYTHON)")
  endif()
  return()
endif()

# ---- script mode: the test itself
foreach(var PYTHON SCRIPT DATA OUT)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "plot_test.cmake: -D${var}=... missing")
  endif()
endforeach()

function(check_png path)
  if(NOT EXISTS "${path}")
    message(FATAL_ERROR "${path} was not written")
  endif()
  file(SIZE "${path}" size)
  file(READ "${path}" magic LIMIT 8 HEX)
  if(NOT magic STREQUAL "89504e470d0a1a0a" OR size LESS 3000)
    message(FATAL_ERROR "${path} is not a PNG plot (${size} bytes, starts with ${magic})")
  endif()
  message(STATUS "ok: ${path} (${size} bytes)")
endfunction()

# 1. Every input: every plot (--strict: a skipped plot fails).
file(REMOVE_RECURSE "${OUT}")
execute_process(
  COMMAND "${PYTHON}" "${SCRIPT}"
    --kernel "${DATA}/kernel.json" --algorithms "${DATA}/algorithms.json"
    --mpi "${DATA}/mpi.json" --accuracy "${DATA}/accuracy.json"
    --cluster "${DATA}/cluster.json"
    --out "${OUT}/all" --strict
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "plot.py failed on the sample data (exit ${rc})")
endif()
foreach(png kernel_gflops time_vs_context mpi_phases accuracy cluster_scaling)
  check_png("${OUT}/all/${png}.png")
endforeach()

# 2. Missing benchmarks: the kernel's JSON given as the algorithms' input has none of theirs,
#    so time_vs_context.png is skipped with a message; the run still succeeds.
execute_process(
  COMMAND "${PYTHON}" "${SCRIPT}" --kernel "${DATA}/kernel.json" --algorithms "${DATA}/kernel.json"
    --out "${OUT}/partial"
  RESULT_VARIABLE rc OUTPUT_VARIABLE output ERROR_VARIABLE output)
message(STATUS "${output}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "plot.py failed when a plot's benchmarks are missing (exit ${rc})")
endif()
check_png("${OUT}/partial/kernel_gflops.png")
if(EXISTS "${OUT}/partial/time_vs_context.png" OR NOT output MATCHES "skipping time_vs_context.png")
  message(FATAL_ERROR "time_vs_context.png should have been skipped with a message")
endif()
