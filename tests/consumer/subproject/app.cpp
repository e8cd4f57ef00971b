// Links StarAttention::star from the subproject; configured, not built, by the test.
#include <star/star.hpp>

int main() { return 0; }
