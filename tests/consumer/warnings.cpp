// A user's translation unit, compiled by tests/consumer/warnings.cmake with every warning a
// careful project turns on, as errors: including <star/star.hpp> and calling the library's
// three algorithms must not warn, under GCC and Clang, with and without -march=native and for
// AVX-512 targets. Tiny shapes: what is tested is the compile; the program only runs where the
// target is the build machine.
//
// Eigen first, as many users' files have it: the intrinsics header is then read before Star's
// headers could read it with GCC 12's false positives off (see detail/simd/target.hpp).
#include <Eigen/Core>

#include <cmath>
#include <cstdio>

#include <star/star.hpp>
#include <star/version.hpp>

static_assert(STAR_VERSION_MAJOR >= 0 && STAR_VERSION_MINOR >= 0 && STAR_VERSION_PATCH >= 0);

int main()
{
    star::Tensor3<float> q(8, 2, 8), k(8, 1, 8), v(8, 1, 8);
    q.setRandom();
    k.setRandom();
    v.setRandom();

    const star::AttentionState exact =
        star::global_attention(star::view(q), star::view(k), star::view(v));

    star::LocalCommunicator comm(2);
    const auto ring = star::assemble(
        star::RingAttention{}.run(comm, star::view(q), star::view(k), star::view(v)), {8, 2, 8});

    const star::StarAttention<> star_attention(star::FixedBlocks{4});
    const star::StarPlan plan = star_attention.plan(8, comm.size());
    auto caches = comm.local<star::KVCache<float>>();
    const auto encoded =
        star::assemble(star_attention.encode_context(comm, plan, caches, star::view(q),
                                                     star::view(k), star::view(v)),
                       {8, 2, 8});

    float worst = 0.0f;
    for (Eigen::Index i = 0; i < exact.output.size(); ++i)
        worst = std::fmax(worst, std::fabs(ring.output.data()[i] - exact.output.data()[i]));
    std::printf("star warnings consumer: ring vs global %g, star phase 1 output %g\n",
                static_cast<double>(worst), static_cast<double>(encoded.output.data()[0]));
    return worst < 1e-5f && std::isfinite(encoded.output.data()[0]) ? 0 : 1;
}
