# cmake -DSOURCE_DIR=<project root> -P check_links.cmake
#
# Fails when a Markdown page of the project (README.md and every .md under docs, examples,
# bench and tests) links or embeds a local file that does not exist, e.g. a plot in
# docs/plots that was renamed or never committed. Links with a scheme (https:, mailto:) and
# in-page anchors are not checked.
cmake_minimum_required(VERSION 3.21)
include(${CMAKE_CURRENT_LIST_DIR}/DocSnippets.cmake)

set(pages README.md)
foreach(dir docs examples bench tests)
  file(GLOB_RECURSE found RELATIVE ${SOURCE_DIR} ${SOURCE_DIR}/${dir}/*.md)
  list(APPEND pages ${found})
endforeach()
set(problems "")
set(checked 0)
foreach(page IN LISTS pages)
  get_filename_component(page_dir ${SOURCE_DIR}/${page} DIRECTORY)
  file(READ ${SOURCE_DIR}/${page} text)
  # Fenced code may hold anything that looks like a link; drop it first.
  string(REGEX REPLACE "```[^`]*```" "" text "${text}")
  # CMake lists do not split inside square brackets: take the brackets out of the text.
  string(REPLACE "](" "@LINK@(" text "${text}")
  string(REPLACE "[" "" text "${text}")
  string(REPLACE "]" "" text "${text}")
  string(REGEX MATCHALL "@LINK@\\([^)#; ]+[)#]" links "${text}")
  foreach(link IN LISTS links)
    string(REGEX REPLACE "^@LINK@\\(([^)#; ]+)[)#]$" "\\1" target "${link}")
    if(target MATCHES "^[a-zA-Z][a-zA-Z0-9+.-]*:")
      continue()
    endif()
    if(NOT EXISTS ${page_dir}/${target})
      list(APPEND problems "${page}: links to ${target}, which does not exist")
    endif()
    math(EXPR checked "${checked} + 1")
  endforeach()
endforeach()

list(LENGTH pages page_count)
star_report_page_check("${problems}"
  "${checked} local links in ${page_count} pages, every one to a file that exists")
