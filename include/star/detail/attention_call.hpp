#pragma once
/// \file
/// One `attention` call cut into tasks: the split of its keys, its jobs and the states they
/// write. `attention` runs one call's tasks; the batched entry points (kernel/batch.hpp) run
/// the tasks of many calls in one parallel loop, so that a batch of short sequences, or one
/// long sequence among short ones, keeps every thread busy.

#include <algorithm>
#include <cstddef>
#include <vector>

#include "../kernel/isa.hpp"
#include "../kernel/kv_source.hpp"
#include "../state.hpp"
#include "../tensor.hpp"
#include "kernels.hpp"
#include "outputs.hpp"
#include "tile_job.hpp"

namespace star::detail {

/// The tasks of one kernel call on checked inputs, writing into `out` (sized for the
/// queries). Its jobs refer to its own members, so it neither moves nor copies; it must
/// outlive the running of its tasks, and `finish` must follow them.
template <class KV, class M, class T>
class AttentionCall {
public:
    AttentionCall(const Queries& q, const KVPages<KV>& k, const KVPages<KV>& v, const M& mask,
                  const T& transform, float scale, KernelIsa isa, const Outputs& out)
        : q_(q), k_(k), v_(v), mask_(mask), transform_(transform), out_(out),
          tile_task_(detail::tile_task<KV, M, T>(isa)),
          decode_task_(detail::decode_task<KV, M, T>(isa))
    {
        const index q_tokens = q.dimension(0);
        if (q_tokens == 0)
            return;
        const index kv_heads = k.heads();
        const index group = q.dimension(1) / kv_heads;
        const TileShape tiles;
        const index tile_tokens = tiles.query_tokens(group);
        const index query_tiles = (q_tokens + tile_tokens - 1) / tile_tokens;
        const index key_count = k.tokens();
        decode_ = q_tokens * group <= tiles.decode_rows;
        const index splits = decode_ ? decode_splits(key_count, tiles)
                                     : key_splits(query_tiles, kv_heads, key_count, tiles);
        // The decode kernel takes every KV head in one task; the tile kernel one KV head and
        // a pair of query tiles.
        tasks_per_job_ = decode_ ? 1 : (query_tiles + 1) / 2 * kv_heads;
        // Split-KV: one state per slice of the keys, then the exact merge. Slices are whole
        // tiles, so the tiles are the same as without splitting. A single slice writes
        // straight into `out`.
        const index slice_tiles = (key_count + splits * tiles.keys - 1) / (splits * tiles.keys);
        const index slice_keys = std::max<index>(1, slice_tiles * tiles.keys);
        const index slices = std::max<index>(1, (key_count + slice_keys - 1) / slice_keys);
        jobs_.reserve(static_cast<std::size_t>(slices));
        if (slices > 1)
            parts_.reserve(static_cast<std::size_t>(slices));
        for (index s = 0; s < slices; ++s) {
            const index first = s * slice_keys;
            if (slices > 1)
                parts_.push_back(unfilled_state(q_tokens, q.dimension(1), q.dimension(2)));
            jobs_.push_back(Job{q_, k_, v_, mask_, transform_, scale, tiles, tile_tokens,
                                query_tiles, first, std::min(first + slice_keys, key_count),
                                slices > 1 ? Outputs(parts_.back()) : out_});
        }
    }

    AttentionCall(const AttentionCall&) = delete;
    AttentionCall& operator=(const AttentionCall&) = delete;

    /// How many tasks the call has (0 for no query).
    [[nodiscard]] index tasks() const noexcept
    {
        return static_cast<index>(jobs_.size()) * tasks_per_job_;
    }

    /// Runs task `task` of `[0, tasks())`; tasks write disjoint memory.
    void run(index task) const
    {
        const Job& job = jobs_[static_cast<std::size_t>(task / tasks_per_job_)];
        if (decode_)
            decode_task_(job);
        else
            tile_task_(job, task % tasks_per_job_);
    }

    /// Completes the call's output once every task has run: merges the parts exactly,
    /// if the keys were split.
    void finish() const
    {
        if (!parts_.empty())
            merge_parts(out_, parts_);
    }

private:
    using Job = TileJob<KV, M, T>;
    Queries q_;
    KVPages<KV> k_;
    KVPages<KV> v_;
    M mask_;
    T transform_;
    Outputs out_;
    TileTask<KV, M, T> tile_task_;
    DecodeTask<KV, M, T> decode_task_;
    bool decode_ = false;
    index tasks_per_job_ = 1;
    std::vector<AttentionState> parts_; // reserved before the jobs refer to them
    std::vector<Job> jobs_;
};

} // namespace star::detail
