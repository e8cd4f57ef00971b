#pragma once
/// \file
/// Umbrella header: every public header of the library, nothing else.
/// `star/comm/mpi.hpp` is not included, since it needs MPI.

/// \namespace star
/// Everything public of the library. Internals live in `star::detail`, which is not part
/// of the API.

#include "detail/cxx20.hpp"
#if STAR_DETAIL_CXX20 // otherwise the one #error above, not hundreds from the headers

#include "error.hpp"
#include "tensor.hpp"
#include "state.hpp"
#include "kv_cache.hpp"
#include "kernel/isa.hpp"
#include "kernel/mask.hpp"
#include "kernel/score_transform.hpp"
#include "kernel/kv_source.hpp"
#include "kernel/attention.hpp"
#include "kernel/batch.hpp"
#include "policy/block.hpp"
#include "policy/anchor.hpp"
#include "policy/partition.hpp"
#include "policy/merge.hpp"
#include "policy/variant.hpp"
#include "comm/communicator.hpp"
#include "comm/local.hpp"
#include "algorithm/context.hpp"
#include "algorithm/global.hpp"
#include "algorithm/ring.hpp"
#include "algorithm/star.hpp"

#endif // STAR_DETAIL_CXX20
