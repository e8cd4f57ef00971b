// Smoke test of an installed Star's `mpi` component: each rank is one host; Ring Attention
// over MPI must agree with global attention computed on the rank itself.

#include <cmath>
#include <cstdio>

#include <star/comm/mpi.hpp>
#include <star/star.hpp>

int main(int argc, char** argv)
{
    MPI_Init(&argc, &argv);
    const int status = star::run_or_abort(MPI_COMM_WORLD, [] {
        star::MpiCommunicator comm(MPI_COMM_WORLD);
        star::Tensor3<float> q(53, 4, 16), k(53, 2, 16), v(53, 2, 16);
        q.setRandom(); // the same on every rank: Eigen's generator starts from the same state
        k.setRandom();
        v.setRandom();
        const auto ring =
            star::RingAttention{}.run(comm, star::view(q), star::view(k), star::view(v));
        const auto exact = star::global_attention(star::view(q), star::view(k), star::view(v));
        float worst = 0.0f;
        for (const star::RangeOutput& out : ring[comm.rank()])
            for (star::index t = out.tokens.begin; t < out.tokens.end; ++t)
                for (star::index h = 0; h < 4; ++h)
                    for (star::index i = 0; i < 16; ++i)
                        worst = std::fmax(worst,
                                          std::fabs(out.state.output(t - out.tokens.begin, h, i) -
                                                    exact.output(t, h, i)));
        std::printf("star consumer (mpi): rank %d of %d, ring vs global max difference %g\n",
                    comm.rank(), comm.size(), static_cast<double>(worst));
        return worst < 1e-5f ? 0 : 1;
    });
    MPI_Finalize();
    return status;
}
