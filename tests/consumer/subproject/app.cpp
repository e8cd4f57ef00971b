// Links StarAttention::star from the subproject; configured, not built, by the test.
#include <star/star.hpp>
#include <star/version.hpp>

int main() { return STAR_VERSION_MAJOR < 0; }
