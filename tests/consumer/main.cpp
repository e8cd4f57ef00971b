// Smoke test of an installed Star: include the umbrella header, run global attention on a
// small random input, and check that every output value and every LSE is finite. Built with
// find_package (tests/consumer/CMakeLists.txt) and with pkg-config (run.cmake), each passing
// the version of the package it found as EXPECTED_VERSION_*.

#include <cmath>
#include <cstdio>

#include <star/star.hpp>
#include <star/version.hpp>

static_assert(STAR_VERSION_MAJOR == EXPECTED_VERSION_MAJOR &&
                  STAR_VERSION_MINOR == EXPECTED_VERSION_MINOR &&
                  STAR_VERSION_PATCH == EXPECTED_VERSION_PATCH,
              "<star/version.hpp> disagrees with the version of the package found");
static_assert(STAR_VERSION ==
              STAR_VERSION_MAJOR * 10000 + STAR_VERSION_MINOR * 100 + STAR_VERSION_PATCH);

int main()
{
    constexpr Eigen::Index tokens = 37;
    constexpr Eigen::Index heads = 2;
    constexpr Eigen::Index head_dim = 16;

    star::Tensor3<float> q(tokens, heads, head_dim);
    star::Tensor3<float> k(tokens, heads, head_dim);
    star::Tensor3<float> v(tokens, heads, head_dim);
    q.setRandom();
    k.setRandom();
    v.setRandom();

    const star::AttentionState state =
        star::global_attention(star::view(q), star::view(k), star::view(v));

    if (state.output.dimension(0) != tokens || state.output.dimension(1) != heads ||
        state.output.dimension(2) != head_dim) {
        std::fprintf(stderr, "unexpected output shape\n");
        return 1;
    }
    for (Eigen::Index i = 0; i < state.output.size(); ++i) {
        if (!std::isfinite(state.output.data()[i])) {
            std::fprintf(stderr, "output[%ld] is not finite\n", static_cast<long>(i));
            return 1;
        }
    }
    for (Eigen::Index i = 0; i < state.lse.size(); ++i) {
        if (!std::isfinite(state.lse.data()[i])) {
            std::fprintf(stderr, "lse[%ld] is not finite\n", static_cast<long>(i));
            return 1;
        }
    }
    std::printf("star consumer: global attention over %ld tokens OK\n", static_cast<long>(tokens));
    return 0;
}
