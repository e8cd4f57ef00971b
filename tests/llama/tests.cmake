# Tests of the Llama example (examples/llama): its headers are compiled straight into the
# tests. They read JSON through nlohmann_json; without it they are skipped, except in CI.
# Not under ThreadSanitizer: the example's own oneTBB loops are invisible to it (Debian's TBB
# is not instrumented), and the library calls these tests make are covered there by the
# library's own tests. (The tsan preset's `llama` label filter did not catch them:
# gtest_discover_tests gave them the `unit` label only.)
# Included by tests/CMakeLists.txt (see there why): paths are this file's directory and a
# binary directory of its own.
if(CMAKE_CXX_FLAGS MATCHES "-fsanitize=thread")
  return()
endif()
set(STAR_LLAMA_BINARY_DIR ${CMAKE_CURRENT_BINARY_DIR}/llama)
file(MAKE_DIRECTORY ${STAR_LLAMA_BINARY_DIR})
find_package(nlohmann_json 3 QUIET)
if(NOT nlohmann_json_FOUND)
  if(DEFINED ENV{CI})
    message(FATAL_ERROR "nlohmann_json 3 was not found, but CI must run tests/llama: "
                        "install nlohmann-json3-dev (.ci/deps does)")
  endif()
  message(STATUS "tests/llama skipped: nlohmann_json 3 not found (Debian: nlohmann-json3-dev)")
  return()
endif()

set(STAR_LLAMA_DIR ${PROJECT_SOURCE_DIR}/examples/llama)

function(star_llama_test name source)
  add_executable(${name} ${source})
  target_include_directories(${name} PRIVATE
    ${PROJECT_SOURCE_DIR}/include ${STAR_LLAMA_DIR} ${PROJECT_SOURCE_DIR}/tests)
  target_link_libraries(${name} PRIVATE
    StarAttention::star nlohmann_json::nlohmann_json GTest::gtest_main)
  star_project_target(${name})
  star_portable_path_when_sanitized(${name} ${source})
endfunction()

# ---------------------------------------------------------------------------------------------
# Unit tests: one executable per tests/llama/test_*.cpp, on tiny models the tests write.
file(GLOB STAR_LLAMA_TEST_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/test_*.cpp)
foreach(source IN LISTS STAR_LLAMA_TEST_SOURCES)
  get_filename_component(name ${source} NAME_WE)
  star_llama_test(${name} ${source})
  gtest_discover_tests(${name}
    DISCOVERY_TIMEOUT 60
    PROPERTIES LABELS "unit;llama")
endforeach()

# The command line itself: a bad model path is a message and exit code 1, never a crash.
if(STAR_BUILD_EXAMPLES)
  add_test(NAME llama_cli_rejects_a_missing_model
    COMMAND $<TARGET_FILE:llama> ${STAR_LLAMA_BINARY_DIR}/no-such-model generate --prompt hi)
  set_tests_properties(llama_cli_rejects_a_missing_model PROPERTIES
    LABELS "unit;llama"
    PASS_REGULAR_EXPRESSION "llama: .*no-such-model: no such file or directory")
endif()

# ---------------------------------------------------------------------------------------------
# The sanitizer presets leave the model tests out (real checkpoints overrun their timeouts
# without optimisation), so their builds do not compile them.
if(CMAKE_CXX_FLAGS MATCHES "-fsanitize")
  return()
endif()

# ---------------------------------------------------------------------------------------------
# Model tests (label `model`): the real checkpoints that travel with the project, in
# examples/llama/models (needle-byte-llama and stories260K, MIT; see their READMEs). CI must
# run them; elsewhere they are left out if the directory was removed.
set(STAR_MODELS_DIR "${PROJECT_SOURCE_DIR}/examples/llama/models" CACHE PATH
    "Directory holding needle-byte-llama/ and stories260K/ for the model tests")
if(NOT EXISTS "${STAR_MODELS_DIR}/needle-byte-llama/model.safetensors")
  if(DEFINED ENV{CI})
    message(FATAL_ERROR "CI must run the model tests: ${STAR_MODELS_DIR}/needle-byte-llama "
                        "does not hold the model (set STAR_MODELS_DIR)")
  endif()
  message(STATUS "tests/llama: model tests skipped, ${STAR_MODELS_DIR} does not hold the "
                 "models (set STAR_MODELS_DIR)")
  return()
endif()

star_llama_test(llama_model_tests ${CMAKE_CURRENT_LIST_DIR}/model_tests.cpp)
get_filename_component(models_dir "${STAR_MODELS_DIR}" ABSOLUTE)
target_compile_definitions(llama_model_tests PRIVATE "STAR_MODELS_DIR=\"${models_dir}\"")
gtest_discover_tests(llama_model_tests
  DISCOVERY_TIMEOUT 60
  PROPERTIES LABELS model TIMEOUT 300)

# The command line on the real model: `logits` exits non-zero above the tolerance.
if(STAR_BUILD_EXAMPLES)
  # Bad input to the command line: exit code 1 and a message, never a crash, hang or pass.
  star_llama_test(llama_cli_tests ${CMAKE_CURRENT_LIST_DIR}/cli_tests.cpp)
  target_compile_definitions(llama_cli_tests PRIVATE "STAR_MODELS_DIR=\"${models_dir}\""
                                                     "LLAMA_CLI=\"$<TARGET_FILE:llama>\"")
  add_dependencies(llama_cli_tests llama)
  gtest_discover_tests(llama_cli_tests
    DISCOVERY_TIMEOUT 60
    PROPERTIES LABELS model TIMEOUT 300)

  add_test(NAME llama_cli_logits_match_the_reference
    COMMAND $<TARGET_FILE:llama> ${models_dir}/needle-byte-llama logits
            --reference ${models_dir}/needle-byte-llama/reference_logits.safetensors
            --tolerance 1e-3)
  set_tests_properties(llama_cli_logits_match_the_reference PROPERTIES
    LABELS model
    TIMEOUT 120)

  # `needle --json` (what bench/plot.py --accuracy draws) with the published figures.
  add_test(NAME llama_cli_needle_writes_json
    COMMAND ${CMAKE_COMMAND}
      -DLLAMA=$<TARGET_FILE:llama>
      -DMODEL=${models_dir}/needle-byte-llama
      -DOUT=${STAR_LLAMA_BINARY_DIR}/needle_json_test.json
      -P ${CMAKE_CURRENT_LIST_DIR}/needle_json_test.cmake)
  set(no_length ${STAR_LLAMA_BINARY_DIR}/eval_without_length.json)
  file(WRITE ${no_length} "[{\"global\": 100.0}]\n")
  set(bad_needle_options
    "published_file_is_missing\;--published\;${STAR_LLAMA_BINARY_DIR}/no-such-eval.json\;--published: .*no-such-eval.json: cannot open"
    "published_file_is_not_json\;--published\;${models_dir}/needle-byte-llama/needles.jsonl\;--published: .*needles.jsonl: not valid JSON"
    "published_file_is_not_a_table\;--published\;${models_dir}/needle-byte-llama/config.json\;--published: .* must hold an array"
    "published_entry_has_no_length\;--published\;${no_length}\;--published: .*: every entry needs an integer length"
    "json_path_is_unwritable\;--json\;${STAR_LLAMA_BINARY_DIR}/no-such-dir/out.json\;--json: cannot write")
  foreach(case IN LISTS bad_needle_options)
    list(GET case 0 what)
    list(GET case 1 option)
    list(GET case 2 value)
    list(GET case 3 message)
    add_test(NAME llama_cli_needle_rejects_${what}
      COMMAND $<TARGET_FILE:llama> ${models_dir}/needle-byte-llama needle
              --set ${models_dir}/needle-byte-llama/needles.jsonl --lengths 2048
              --samples 1 --settings global ${option} ${value})
    set_tests_properties(llama_cli_needle_rejects_${what} PROPERTIES
      PASS_REGULAR_EXPRESSION "llama: ${message}")
  endforeach()

  # anchor-from= only with an anchor that is a prefix of the context.
  add_test(NAME llama_cli_rejects_anchor_from_without_anchor
    COMMAND $<TARGET_FILE:llama> ${models_dir}/stories260K/stories260K.bin generate
            --token-ids 1,2,3 --attention star:anchor=none:anchor-from=receive)
  set_tests_properties(llama_cli_rejects_anchor_from_without_anchor PROPERTIES
    LABELS model
    PASS_REGULAR_EXPRESSION "llama: attention setting 'star:anchor=none:anchor-from=receive': anchor-from= only applies to anchor=first or anchor=sinks")

  # Across MPI ranks (examples/llama/rank_backends.hpp), one host per rank: the same tokens,
  # accuracy and agreement as in one process, on both models, on 2, 3 and 4 ranks.
  if(TARGET StarAttention::mpi)
    set(stories ${models_dir}/stories260K/stories260K.bin)
    set(needle ${models_dir}/needle-byte-llama)
    set(prompt --token-ids|1,403,407,261,378,395,285,343,263,145,300,301,302,303,304,305,306,307,308,309)
    set(needle_args ${needle}|needle|--set|${needle}/needles.jsonl|--lengths|2048|--samples|2)
    set(agree_args ${stories}|agree|--token-ids|1|--generate|96|--context|64)
    foreach(ranks 2 3 4)
      # name | columns compared (0: stdout) | arguments alone | arguments across ranks
      set(cases
        "stories_generate_star\;0\;${stories}|generate|${prompt}|--steps|24|--attention|star:b=L/4\;${stories}|generate|${prompt}|--steps|24|--attention|star:b=L/4"
        "stories_generate_ring\;0\;${stories}|generate|${prompt}|--steps|24|--attention|ring:hosts=${ranks}\;${stories}|generate|${prompt}|--steps|24|--attention|ring"
        "stories_agree\;4\;${agree_args}|--settings|star:b=L/4:anchor-from=receive,star:b=L/4:anchor=sinks:merge=tree,ring:hosts=${ranks}:layout=zigzag\;${agree_args}|--settings|star:b=L/4:anchor-from=receive,star:b=L/4:anchor=sinks:merge=tree,ring:layout=zigzag"
        "needle\;3\;${needle_args}|--settings|ring:hosts=${ranks},star:b=L/4\;${needle_args}|--settings|ring,star:b=L/4")
      foreach(case IN LISTS cases)
        list(GET case 0 what)
        list(GET case 1 columns)
        list(GET case 2 alone)
        list(GET case 3 across)
        add_test(NAME llama_ranks_${ranks}_${what}
          COMMAND ${CMAKE_COMMAND} -DLLAMA=$<TARGET_FILE:llama> -DMPIEXEC=${MPIEXEC_EXECUTABLE}
                  -DRANKS=${ranks} -DCOLUMNS=${columns} "-DALONE=${alone}" "-DACROSS=${across}"
                  -P ${CMAKE_CURRENT_LIST_DIR}/across_ranks.cmake)
        set_tests_properties(llama_ranks_${ranks}_${what} PROPERTIES
          LABELS "model;mpi" TIMEOUT 600)
      endforeach()
    endforeach()

    # A rank that fails ends the job with its message: a model file missing on one rank;
    # ranks given different settings (the library's agreement names what differs); a rank
    # killed halfway through.
    set(mpiexec ${MPIEXEC_EXECUTABLE}|--oversubscribe|--allow-run-as-root)
    set(generate generate|${prompt}|--steps|4)
    set(long_needle needle|--set|${needle}/needles.jsonl|--settings|ring)
    set(failures
      # Settings every rank accepts (the default, global, is refused across ranks, and rank 0
      # saying so could end the job before rank 1 reports its missing file).
      "bad_model_on_one_rank\;${mpiexec}|-n|1|$<TARGET_FILE:llama>|${stories}|${generate}|--attention|ring|:|-n|1|$<TARGET_FILE:llama>|${STAR_LLAMA_BINARY_DIR}/no-such-model|${generate}|--attention|ring\;rank 1 failed: .*no-such-model: no such file"
      "ranks_disagree\;${mpiexec}|-n|1|$<TARGET_FILE:llama>|${stories}|${generate}|--attention|star:b=L/4|:|-n|1|$<TARGET_FILE:llama>|${stories}|${generate}|--attention|star:b=L/2\;failed: StarAttention::encode_context: the hosts disagree on"
      "killed_rank\;${mpiexec}|-n|1|$<TARGET_FILE:llama>|${needle}|${long_needle}|:|-n|1|timeout|-s|KILL|3|$<TARGET_FILE:llama>|${needle}|${long_needle}\;exited on signal 9"
      # What cannot run across ranks is refused with the reason.
      "global_is_refused\;${mpiexec}|-n|2|$<TARGET_FILE:llama>|${stories}|${generate}|--attention|global\;global attention is one host's. across ranks run ring \\(exact\\) or star"
      "previous_anchor_is_refused\;${mpiexec}|-n|2|$<TARGET_FILE:llama>|${stories}|${generate}|--attention|star:anchor=previous\;anchor=previous does not run across ranks"
      "hosts_other_than_ranks_are_refused\;${mpiexec}|-n|2|$<TARGET_FILE:llama>|${stories}|${generate}|--attention|ring:hosts=3\;ring attention: hosts=3 but the job has 2 ranks"
      "one_token_prompt_is_refused\;${mpiexec}|-n|2|$<TARGET_FILE:llama>|${stories}|generate|--token-ids|1\;across ranks the prompt needs at least two tokens"
      "logits_mode_is_refused\;${mpiexec}|-n|2|$<TARGET_FILE:llama>|${needle}|logits|--reference|${needle}/reference_logits.safetensors\;logits runs in one process: start it without mpiexec")
    foreach(case IN LISTS failures)
      list(GET case 0 what)
      list(GET case 1 command)
      list(GET case 2 expected)
      add_test(NAME llama_ranks_fail_${what}
        COMMAND ${CMAKE_COMMAND} "-DCOMMAND=${command}" -DTIMEOUT=120 "-DEXPECTED=${expected}"
                -P ${PROJECT_SOURCE_DIR}/tests/mpi/expect_failure.cmake)
      set_tests_properties(llama_ranks_fail_${what} PROPERTIES LABELS "model;mpi" TIMEOUT 180)
    endforeach()
  endif()
  set_tests_properties(llama_cli_needle_writes_json
    llama_cli_needle_rejects_published_file_is_missing
    llama_cli_needle_rejects_published_file_is_not_json
    llama_cli_needle_rejects_published_file_is_not_a_table
    llama_cli_needle_rejects_published_entry_has_no_length
    llama_cli_needle_rejects_json_path_is_unwritable
    PROPERTIES LABELS model TIMEOUT 120)
endif()
