# cmake -DSOURCE_DIR=<project root> -DPAGES=<page>,<page>... -P check_pages.cmake
#
# Fails when a page has a ```cpp block that is neither a snippet (compiled and run by the
# tests in this directory) nor an excerpt, or when an excerpt no longer appears verbatim in
# the file it quotes: the page has drifted from the code.
cmake_minimum_required(VERSION 3.21)
include(${CMAKE_CURRENT_LIST_DIR}/DocSnippets.cmake)

string(REPLACE "," ";" pages "${PAGES}")
set(problems "")
set(checked 0)
foreach(page IN LISTS pages)
  star_scan_markdown(${SOURCE_DIR}/${page} doc)
  list(APPEND problems ${doc_ERRORS})
  foreach(i IN LISTS doc_EXCERPTS)
    set(quoted ${SOURCE_DIR}/${doc_EXCERPT_${i}_PATH})
    if(NOT EXISTS ${quoted})
      list(APPEND problems "${page}:${doc_EXCERPT_${i}_LINE}: quotes ${doc_EXCERPT_${i}_PATH}, which does not exist")
      continue()
    endif()
    file(READ ${quoted} source)
    string(FIND "${source}" "${doc_EXCERPT_${i}_CODE}" at)
    if(at EQUAL -1)
      list(APPEND problems "${page}:${doc_EXCERPT_${i}_LINE}: this excerpt is not in ${doc_EXCERPT_${i}_PATH} as written (copy it again from the file)")
    endif()
    math(EXPR checked "${checked} + 1")
  endforeach()
endforeach()

star_report_page_check("${problems}"
  "every C++ block is a snippet or an excerpt; ${checked} excerpts match their files")
