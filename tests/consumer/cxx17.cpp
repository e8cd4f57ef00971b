#include <star/star.hpp> // tests/CMakeLists.txt compiles this as C++17: one #error must say why it fails
