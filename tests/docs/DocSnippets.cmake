# Reads the C++ blocks of a Markdown page, so that the test suite can compile and run them.
#
# Every ```cpp block of a page must be preceded (blank lines aside) by one of two markers:
#
#   <!-- snippet: NAME [OPTION...] -->
#       The block is (part of) the program NAME. Blocks with the same NAME are joined in the
#       order they appear, so a program can be shown a piece at a time between paragraphs;
#       what the reader sees is all that is compiled. The first marker of a program may give
#       options: `mpi` builds it against StarAttention::mpi and runs it under mpiexec.
#
#   <!-- excerpt: PATH -->
#       The block quotes the file PATH (relative to the project's root) verbatim: it must
#       appear in that file exactly as written. The file itself is compiled elsewhere.
#
# star_scan_markdown(<page> <prefix>) sets, in the caller's scope:
#   <prefix>_SNIPPETS            program names, in the order of their first block
#   <prefix>_CODE_<name>         the program's source, each block after a #line directive
#                                that points compiler messages back into the page
#   <prefix>_OPTIONS_<name>      the options of its first marker
#   <prefix>_EXCERPTS            1..n, one per excerpt
#   <prefix>_EXCERPT_<i>_PATH    the file it quotes
#   <prefix>_EXCERPT_<i>_CODE    the quoted text
#   <prefix>_EXCERPT_<i>_LINE    its first line in the page
#   <prefix>_ERRORS              what is wrong with the page (a block without a marker, a
#                                block that is never closed); empty when nothing is
#
# Plain CMake, so it runs at configure time and in `cmake -P` scripts alike. Strings are
# cut with string(FIND)/string(SUBSTRING) rather than handled as lists, because C++ is full
# of the semicolons that CMake lists split on.

set(STAR_DOC_OPEN_FENCE "\n```cpp\n")
set(STAR_DOC_CLOSE_FENCE "\n```")

function(star_scan_markdown page prefix)
  file(READ "${page}" text)
  # A leading newline lets a fence on the first line be found like any other.
  set(rest "\n${text}")
  set(line 0) # the page line of rest's first character (0: the newline added above)
  set(snippets "")
  set(excerpts "")
  set(errors "")
  string(LENGTH "${STAR_DOC_OPEN_FENCE}" open_length)
  string(LENGTH "${STAR_DOC_CLOSE_FENCE}" close_length)

  while(TRUE)
    string(FIND "${rest}" "${STAR_DOC_OPEN_FENCE}" open)
    if(open EQUAL -1)
      break()
    endif()
    string(SUBSTRING "${rest}" 0 ${open} before)
    _star_count_lines("${before}" before_lines)
    math(EXPR block_line "${line} + ${before_lines} + 2") # first line of code
    math(EXPR code_start "${open} + ${open_length}")
    string(SUBSTRING "${rest}" ${code_start} -1 after)
    string(FIND "${after}" "${STAR_DOC_CLOSE_FENCE}" close)
    if(close EQUAL -1)
      list(APPEND errors "${page}:${block_line}: the ```cpp block is never closed")
      break()
    endif()
    string(SUBSTRING "${after}" 0 ${close} code)
    string(APPEND code "\n")

    # The marker: the last HTML comment before the fence, with only blank space after it.
    string(FIND "${before}" "<!--" marker_start REVERSE)
    set(marker "")
    if(NOT marker_start EQUAL -1)
      string(SUBSTRING "${before}" ${marker_start} -1 marker)
    endif()
    if(marker MATCHES "^<!--[ \t]*snippet:[ \t]*([A-Za-z0-9_]+)([^>]*)-->[ \t\r\n]*$")
      set(name "${CMAKE_MATCH_1}")
      string(STRIP "${CMAKE_MATCH_2}" options)
      separate_arguments(options UNIX_COMMAND "${options}")
      if(NOT name IN_LIST snippets)
        list(APPEND snippets ${name})
        set(code_${name} "")
        set(options_${name} "${options}")
      endif()
      string(APPEND code_${name} "#line ${block_line} \"${page}\"\n${code}")
    elseif(marker MATCHES "^<!--[ \t]*excerpt:[ \t]*([^ \t>]+)[ \t]*-->[ \t\r\n]*$")
      list(LENGTH excerpts count)
      math(EXPR i "${count} + 1")
      list(APPEND excerpts ${i})
      set(excerpt_${i}_path "${CMAKE_MATCH_1}")
      set(excerpt_${i}_code "${code}")
      set(excerpt_${i}_line ${block_line})
    else()
      list(APPEND errors "${page}:${block_line}: a ```cpp block without a <!-- snippet: NAME --> or <!-- excerpt: PATH --> marker right before it")
    endif()

    _star_count_lines("${code}" code_lines)
    math(EXPR line "${block_line} + ${code_lines}") # the closing fence's line
    math(EXPR consumed "${close} + ${close_length}")
    string(SUBSTRING "${after}" ${consumed} -1 rest)
  endwhile()

  set(${prefix}_SNIPPETS "${snippets}" PARENT_SCOPE)
  foreach(name IN LISTS snippets)
    set(${prefix}_CODE_${name} "${code_${name}}" PARENT_SCOPE)
    set(${prefix}_OPTIONS_${name} "${options_${name}}" PARENT_SCOPE)
  endforeach()
  set(${prefix}_EXCERPTS "${excerpts}" PARENT_SCOPE)
  foreach(i IN LISTS excerpts)
    set(${prefix}_EXCERPT_${i}_PATH "${excerpt_${i}_path}" PARENT_SCOPE)
    set(${prefix}_EXCERPT_${i}_CODE "${excerpt_${i}_code}" PARENT_SCOPE)
    set(${prefix}_EXCERPT_${i}_LINE "${excerpt_${i}_line}" PARENT_SCOPE)
  endforeach()
  set(${prefix}_ERRORS "${errors}" PARENT_SCOPE)
endfunction()

# The number of newlines in `text`.
function(_star_count_lines text out)
  string(REGEX REPLACE "[^\n]" "" newlines "${text}")
  string(LENGTH "${newlines}" count)
  set(${out} ${count} PARENT_SCOPE)
endfunction()

# Writes `content` to `path` unless it already holds exactly that, so that re-configuring
# does not rebuild every snippet.
function(star_write_if_changed path content)
  set(old "")
  if(EXISTS "${path}")
    file(READ "${path}" old)
  endif()
  if(NOT "${old}" STREQUAL "${content}")
    file(WRITE "${path}" "${content}")
  endif()
endfunction()

# star_report_page_check(<problems list> <summary>)
#   Ends a page check (cmake -P script): fails listing every problem, one per line, or
#   reports the summary.
function(star_report_page_check problems summary)
  if(problems)
    string(REPLACE ";" "\n" problems "${problems}")
    message(FATAL_ERROR "${problems}")
  endif()
  message(STATUS "${summary}")
endfunction()
