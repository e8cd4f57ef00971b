#pragma once
/// \file
/// Star Attention (Acharya, Jia, Ginsburg 2024): block-sparse context encoding with an
/// anchor block (phase 1), then exact query encoding and decoding over every host's cache
/// (phase 2). The method: S. Acharya, F. Jia, B. Ginsburg, "Star Attention: Efficient LLM
/// Inference over Long Sequences", arXiv:2411.17116 (https://arxiv.org/abs/2411.17116). This
/// library's account of it: docs/architecture.md (the two phases and their data flow) and
/// docs/tutorial.md in the source repository, and the API reference (target `docs`).
///
/// `StarAttention<Block, Anchor, Partition, Merge, Variant>` reads as a sentence: cut the
/// context into blocks like this, let each see this anchor, give blocks to hosts like that,
/// bring phase-2 partials together like so, and compute this kind of attention. The defaults
/// are the paper's method.
///
/// Every kernel call places its rows at their true positions: a block at its start in the
/// context, the anchor at its own (`[0, a)` for the paper's), the query right after the
/// context and each decode step after that. So under a Variant (policy/variant.hpp) phase 2
/// is exact given the phase-1 caches, and phase 1 is the usual approximation: a block sees
/// its anchor and itself, each through the variant (a window hides the part of the anchor
/// outside it; see docs/guides/variants.md).

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "../comm/communicator.hpp"
#include "../kernel/attention.hpp"
#include "../kv_cache.hpp"
#include "../policy/anchor.hpp"
#include "../policy/block.hpp"
#include "../policy/merge.hpp"
#include "../policy/partition.hpp"
#include "../policy/variant.hpp"
#include "context.hpp"

namespace star {

namespace detail {

/// Checks that `blocks` cut `[0, context_tokens)` into non-empty consecutive ranges.
inline void check_blocks(const std::vector<TokenRange>& blocks, index context_tokens,
                         std::string_view where)
{
    index expected = 0;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
        if (blocks[i].begin != expected || blocks[i].empty())
            fail(where, ": block ", i, " = [", blocks[i].begin, ", ", blocks[i].end,
                 "); blocks must be non-empty, consecutive and start at 0");
        expected = blocks[i].end;
    }
    if (expected != context_tokens)
        fail(where, ": the blocks cover ", expected, " of ", context_tokens, " context tokens");
}

} // namespace detail

/// Where the blocks of one context go: computed once by `StarAttention::plan`, shared by
/// phase 1 and phase 2 on every host. Its constructor checks that the pieces fit together,
/// so a plan built by hand (e.g. to run phase 2 over caches another method filled) is
/// either consistent or an error, never a silent misplacement.
class StarPlan {
public:
    /// `blocks` cut `[0, context_tokens)` into non-empty consecutive ranges; `owner[i]` is
    /// the host of `blocks[i]` and `anchors[i]` the earlier keys it also sees (empty for
    /// none; with `AnchorSource::receive`, a prefix of the context). `query_host` receives the
    /// merged phase-2 result.
    /// \throws star::error naming the first piece that does not fit.
    StarPlan(index context_tokens, int hosts, int query_host, std::vector<TokenRange> blocks,
             std::vector<int> owner, std::vector<TokenRange> anchors,
             AnchorSource anchor_source = AnchorSource::compute)
        : context_tokens_(context_tokens), hosts_(hosts), query_host_(query_host),
          blocks_(std::move(blocks)), owner_(std::move(owner)), anchors_(std::move(anchors)),
          anchor_source_(anchor_source)
    {
        if (hosts_ <= 0)
            detail::fail("StarPlan: the number of hosts must be at least 1, got ", hosts_);
        if (context_tokens_ <= 0)
            detail::fail("StarPlan: the context must hold at least 1 token, got ", context_tokens_);
        detail::check_rank(query_host_, hosts_, "StarPlan: query host");
        detail::check_blocks(blocks_, context_tokens_, "StarPlan");
        if (owner_.size() != blocks_.size())
            detail::fail("StarPlan: ", owner_.size(), " block owners for ", blocks_.size(),
                         " blocks");
        for (const int o : owner_)
            detail::check_rank(o, hosts_, "StarPlan: block owner");
        if (anchors_.size() != blocks_.size())
            detail::fail("StarPlan: ", anchors_.size(), " anchors for ", blocks_.size(), " blocks");
        for (std::size_t i = 0; i < blocks_.size(); ++i) {
            TokenRange& a = anchors_[i];
            if (a.empty()) {
                a = {};
                continue;
            }
            if (a.begin < 0 || a.end > blocks_[i].begin)
                detail::fail("StarPlan: the anchor of block ", i, " is [", a.begin, ", ", a.end,
                             "), not before the block's start ", blocks_[i].begin);
            if (anchor_source_ == AnchorSource::receive && a.begin != 0)
                detail::fail("StarPlan: a received anchor must be a prefix of the context; "
                             "block ",
                             i, " has [", a.begin, ", ", a.end, ")");
        }
    }

    /// Tokens in the context.
    [[nodiscard]] index context_tokens() const noexcept { return context_tokens_; }
    /// Hosts in the group.
    [[nodiscard]] int hosts() const noexcept { return hosts_; }
    /// Rank that receives the merged phase-2 result.
    [[nodiscard]] int query_host() const noexcept { return query_host_; }
    /// The blocks, consecutive, covering the context.
    [[nodiscard]] const std::vector<TokenRange>& blocks() const noexcept { return blocks_; }
    /// `owner()[i]`: the host of `blocks()[i]`.
    [[nodiscard]] const std::vector<int>& owner() const noexcept { return owner_; }
    /// `anchors()[i]`: earlier keys block `i` also sees (`{}` for none).
    [[nodiscard]] const std::vector<TokenRange>& anchors() const noexcept { return anchors_; }
    /// How hosts get the anchors' K/V.
    [[nodiscard]] AnchorSource anchor_source() const noexcept { return anchor_source_; }

    /// Indices of the blocks `host` owns, in context order.
    [[nodiscard]] std::vector<std::size_t> blocks_of(int host) const
    {
        std::vector<std::size_t> mine;
        for (std::size_t i = 0; i < blocks_.size(); ++i)
            if (owner_[i] == host)
                mine.push_back(i);
        return mine;
    }

    /// The union of all anchors, `[0, a)`, for a received anchor.
    [[nodiscard]] TokenRange shared_anchor() const
    {
        index end = 0;
        for (const auto& a : anchors_)
            end = std::max(end, a.end);
        return {0, end};
    }

private:
    index context_tokens_;
    int hosts_;
    int query_host_;
    std::vector<TokenRange> blocks_;
    std::vector<int> owner_;
    std::vector<TokenRange> anchors_;
    AnchorSource anchor_source_;
};

namespace detail {

/// Everything StarAttention does once it has a plan. None of it depends on the Block, Anchor
/// or Partition policy, which only make the plan, so StarAttentions that differ in those
/// share one copy of the phases' code: the Llama example's 36 combinations of policies
/// compile 3 copies of it (one per Merge policy) rather than 36.
template <Merge M, Variant V>
class StarPhases {
public:
    StarPhases() = default;
    StarPhases(M merge, V variant, AttentionOptions attention)
        : merge_(std::move(merge)), variant_(std::move(variant)), attention_(attention)
    {
    }

    // As StarAttention::encode_context.
    template <KVElement KV, QueryElement Q, Communicator C>
    PerHost<std::vector<RangeOutput>> encode_context(C& comm, const StarPlan& plan,
                                                     PerHost<KVCache<KV>>& caches,
                                                     const PerHost<HostContext<KV, Q>>& contexts) const
    {
        check_group(comm, plan);
        agree<KV, Q>(comm, plan, "StarAttention::encode_context", [&](int rank) {
            const auto [q_heads, kv_heads, head_dim] = detail::head_settings(contexts[rank]);
            return LayerShape{0, q_heads, kv_heads, head_dim};
        });
        for (int r = contexts.first_rank(); r < contexts.end_rank(); ++r)
            if (const std::int64_t q_heads = detail::head_settings(contexts[r])[0];
                q_heads != detail::unknown_setting)
                variant_.check(static_cast<index>(q_heads));
        const AnchorKV<KV> received = plan.anchor_source() == AnchorSource::receive
                                          ? receive_anchor(comm, plan, contexts)
                                          : AnchorKV<KV>{};
        auto outputs = comm.template local<std::vector<RangeOutput>>();
        comm.for_each_host([&](int rank) {
            for (const std::size_t i : plan.blocks_of(rank)) {
                const ContextSlice<KV, Q> block = contexts[rank].slice(plan.blocks()[i]);
                if (attention_.check_finite)
                    check_finite(block, plan.blocks()[i].begin,
                                 "StarAttention::encode_context: host ", rank);
                // Inputs are checked once here (a received anchor was checked by its owner),
                // not again by every kernel call.
                const AttentionOptions options{.scale = attention_.scale, .check_finite = false};
                const index at = plan.blocks()[i].begin;
                AttentionState state = attention(block.q, block.k, block.v, variant_.mask(at, at),
                                                 options, variant_.transform(at, at));
                if (const TokenRange a = plan.anchors()[i]; !a.empty()) {
                    if (plan.anchor_source() == AnchorSource::compute && attention_.check_finite)
                        check_finite(contexts[rank].slice(a), a.begin,
                                     "StarAttention::encode_context: host ", rank, ", anchor");
                    const auto [k, v] = plan.anchor_source() == AnchorSource::receive
                                            ? received.prefix(rank, a.end, block.k)
                                            : kv_of(contexts[rank].slice(a));
                    // The anchor precedes the block: the past mask (all of it, for plain causal
                    // attention; what lies in the window, for a sliding window).
                    merge_into(state, attention(block.q, k, v, variant_.past_mask(at, a.begin),
                                                options, variant_.transform(at, a.begin)));
                }
                outputs[rank].push_back({plan.blocks()[i], std::move(state)});
            }
        });
        // Caches change only once every host has succeeded, and all or none: every cache
        // makes room first, so that running out of memory leaves none half-filled.
        auto blocks_kv = comm.template local<std::vector<ConstView3<KV>>>();
        comm.for_each_host([&](int rank) {
            for (const std::size_t i : plan.blocks_of(rank)) {
                const ContextSlice<KV, Q> block = contexts[rank].slice(plan.blocks()[i]);
                blocks_kv[rank].push_back(block.k);
                blocks_kv[rank].push_back(block.v);
            }
            caches[rank].reserve_for(blocks_kv[rank]);
        });
        comm.for_each_host([&](int rank) { caches[rank].append(blocks_kv[rank]); });
        return outputs;
    }

    // As StarAttention::encode_context.
    template <QueryElement Q, KVElement KV, Communicator C>
    PerHost<std::vector<RangeOutput>> encode_context(C& comm, const StarPlan& plan,
                                                     PerHost<KVCache<KV>>& caches,
                                                     const ConstView3<Q>& q, const ConstView3<KV>& k,
                                                     const ConstView3<KV>& v) const
    {
        detail::check_qkv(q, k, v, attention_.scale, "StarAttention::encode_context");
        if (q.dimension(0) != plan.context_tokens() || k.dimension(0) != plan.context_tokens())
            detail::fail("StarAttention::encode_context: the plan is for ", plan.context_tokens(),
                         " context tokens, q has ", q.dimension(0), " and k ", k.dimension(0));
        auto contexts = comm.template local<HostContext<KV, Q>>();
        for (int r = contexts.first_rank(); r < contexts.end_rank(); ++r)
            contexts[r] = HostContext<KV, Q>(q, k, v);
        return encode_context(comm, plan, caches, contexts);
    }

    // As StarAttention::attend_query.
    template <QueryElement Q, KVElement KV, Communicator C>
    PerHost<std::optional<AttentionState>> attend_query(C& comm, const StarPlan& plan,
                                                        PerHost<KVCache<KV>>& caches,
                                                        const ConstView3<Q>& q,
                                                        const ConstView3<KV>& k,
                                                        const ConstView3<KV>& v) const
    {
        check_group(comm, plan);
        detail::check_qkv(q, k, v, attention_.scale, "StarAttention::attend_query");
        if (q.dimension(0) != k.dimension(0))
            detail::fail("StarAttention::attend_query: q has ", q.dimension(0),
                         " tokens but k has ", k.dimension(0));
        if (attention_.check_finite)
            check_finite(ContextSlice<KV, Q>{q, k, v}, 0, "StarAttention::attend_query: query");
        const index position = agree_on_query<Q>(
            comm, plan, caches,
            LayerShape{q.dimension(0), q.dimension(1), k.dimension(1), q.dimension(2)});
        variant_.check(q.dimension(1));
        for (int rank = caches.first_rank(); rank < caches.end_rank(); ++rank) {
            const KVCache<KV>& cache = caches[rank];
            if (cache.tokens() > 0 &&
                (cache.kv_heads() != k.dimension(1) || cache.head_dim() != k.dimension(2)))
                detail::fail("StarAttention::attend_query: host ", rank, "'s cache holds ",
                             cache.kv_heads(), " kv heads of head_dim ", cache.head_dim(),
                             ", the query's k has ", k.dimension(1), " of head_dim ",
                             k.dimension(2));
        }
        if constexpr (V::positional) {
            // Positions are read off the plan: each cache must start with its blocks.
            for (int rank = caches.first_rank(); rank < caches.end_rank(); ++rank) {
                index own = 0;
                for (const std::size_t i : plan.blocks_of(rank))
                    own += plan.blocks()[i].size();
                if (caches[rank].tokens() < own)
                    detail::fail("StarAttention::attend_query: host ", rank, "'s cache holds ",
                                 caches[rank].tokens(), " tokens, fewer than the ", own,
                                 " of its blocks; a positional variant places the cached keys "
                                 "by the plan, so phase 1 must have filled the caches");
            }
        }
        // The caches hold only checked K/V (KVCache::append checks), the query was checked
        // above.
        const AttentionOptions options{.scale = attention_.scale, .check_finite = false};
        auto partials = comm.template local<AttentionState>();
        comm.for_each_host([&](int rank) {
            const KVCache<KV>& cache = caches[rank];
            partials[rank] = AttentionState(q.dimension(0), q.dimension(1), q.dimension(2));
            if constexpr (V::positional) {
                // Each run of consecutive positions in the cache at its own positions.
                for (const auto& run : cache_runs(plan, rank, cache.tokens())) {
                    // Named, not a structured binding: Clang before 16 cannot capture one.
                    const TokenRange tokens = run.first;
                    const auto part = [&](const KVPages<KV>& all) {
                        return all.tokens_from(run.second, tokens.size());
                    };
                    merge_into(partials[rank],
                               attention(q, part(cache.keys()), part(cache.values()),
                                         variant_.past_mask(position, tokens.begin), options,
                                         variant_.transform(position, tokens.begin)));
                }
            } else if (cache.tokens() > 0) {
                // Positions do not matter: the whole cache in one call.
                partials[rank] =
                    attention(q, cache.keys(), cache.values(), variant_.past_mask(position, 0),
                              options, variant_.transform(position, 0));
            }
            // The query host also sees the query's own keys, causally. They join its cache
            // only once the whole step has succeeded, so a failed step changes no cache.
            if (rank == plan.query_host())
                merge_into(partials[rank],
                           attention(q, k, v, variant_.mask(position, position), options,
                                     variant_.transform(position, position)));
        });
        auto merged = merge_.combine(comm, partials, plan.query_host());
        if (caches.holds(plan.query_host()))
            caches[plan.query_host()].append(k, v);
        return merged;
    }

    // As StarAttention::phase1_working_bytes.
    template <KVElement KV>
    [[nodiscard]] std::size_t phase1_working_bytes(const StarPlan& plan, int host,
                                                   const HeadShape& heads, int threads) const
    {
        const auto [q_heads, kv_heads, head_dim] = heads;
        detail::check_rank(host, plan.hosts(), "phase1_working_bytes: host");
        if (threads <= 0)
            detail::fail("phase1_working_bytes: threads must be at least 1, got ", threads);
        std::size_t outputs = 0, anchor_state = 0;
        for (const std::size_t i : plan.blocks_of(host)) {
            const std::size_t state =
                AttentionState::bytes(plan.blocks()[i].size(), q_heads, head_dim);
            outputs += state;
            if (!plan.anchors()[i].empty())
                anchor_state = std::max(anchor_state, state);
        }
        std::size_t received = 0;
        if (plan.anchor_source() == AnchorSource::receive) {
            const TokenRange anchor = plan.shared_anchor();
            index largest_part = 0;
            for (const TokenRange& b : plan.blocks())
                largest_part = std::max(largest_part, std::min(b.end, anchor.end) - b.begin);
            received =
                2 * sizeof(KV) *
                static_cast<std::size_t>((anchor.size() + largest_part) * kv_heads * head_dim);
        }
        return outputs + anchor_state + received +
               static_cast<std::size_t>(threads) *
                   attention_workspace_bytes<KV>(q_heads, kv_heads, head_dim);
    }

    [[nodiscard]] const M& merge_policy() const noexcept { return merge_; }
    [[nodiscard]] const V& variant() const noexcept { return variant_; }
    [[nodiscard]] const AttentionOptions& attention_options() const noexcept { return attention_; }

private:
    // A host's shapes of a layer, `detail::unknown_setting` where it has none.
    struct LayerShape {
        std::int64_t query_tokens, q_heads, kv_heads, head_dim;
    };

    // Checks that every host runs the same configuration for this query (as `agree`) and
    // returns the position of the query's first token: right after the context and the
    // tokens the query host has appended since, which only the query host knows. Across
    // processes, the settings digest and that position travel in one all-gather, the step's
    // only collective besides the merge. When every host is in this process they all run
    // this very call, with one query, plan and object, so they cannot disagree: no
    // collective at all.
    template <QueryElement Q, KVElement KV, Communicator C>
    index agree_on_query(C& comm, const StarPlan& plan, const PerHost<KVCache<KV>>& caches,
                         const LayerShape& shape) const
    {
        auto position = comm.template local<std::vector<std::int64_t>>();
        if (position.holds(plan.query_host())) {
            index own = 0;
            for (const std::size_t i : plan.blocks_of(plan.query_host()))
                own += plan.blocks()[i].size();
            position[plan.query_host()] = {plan.context_tokens() +
                                           caches[plan.query_host()].tokens() - own};
        }
        if (position.first_rank() == 0 && position.end_rank() == comm.size())
            return position[plan.query_host()][0];
        const auto payloads = detail::check_agreement_in_step(
            comm, settings<KV, Q>(comm, plan, [&](int) { return shape; }), position, setting_names,
            "StarAttention::attend_query");
        const auto& from_query_host =
            payloads[payloads.first_rank()][static_cast<std::size_t>(plan.query_host())];
        if (from_query_host.size() != 1)
            detail::fail_at_runtime("StarAttention: host ", payloads.first_rank(),
                                    " received no query position from the query host");
        return from_query_host[0];
    }

    // The runs of consecutive positions in host `rank`'s cache of `tokens` tokens: its blocks
    // in context order (neighbours joined), then at the query host the tokens appended after
    // the context. Each run with the cache row it starts at.
    static std::vector<std::pair<TokenRange, index>> cache_runs(const StarPlan& plan, int rank,
                                                                index tokens)
    {
        std::vector<std::pair<TokenRange, index>> runs;
        index row = 0;
        const auto add = [&](TokenRange r) {
            if (r.empty())
                return;
            if (!runs.empty() && runs.back().first.end == r.begin)
                runs.back().first.end = r.end;
            else
                runs.push_back({r, row});
            row += r.size();
        };
        for (const std::size_t i : plan.blocks_of(rank))
            add(plan.blocks()[i]);
        if (rank == plan.query_host())
            add({plan.context_tokens(), plan.context_tokens() + (tokens - row)});
        return runs;
    }

    // K/V of the shared anchor `[0, a)` as received by every local host.
    template <KVElement KV>
    struct AnchorKV {
        PerHost<std::vector<KV>> keys;
        PerHost<std::vector<KV>> values;

        // The first `tokens` anchor tokens, laid out like `like` (the host's own block).
        [[nodiscard]] std::pair<ConstView3<KV>, ConstView3<KV>> prefix(int rank, index tokens,
                                                                       const ConstView3<KV>& like) const
        {
            const index heads = like.dimension(1), d = like.dimension(2);
            if (static_cast<index>(keys[rank].size()) < tokens * heads * d)
                detail::fail_at_runtime("StarAttention: host ", rank, " received ",
                                        keys[rank].size(), " anchor key values, fewer than ",
                                        tokens, " tokens x ", heads, " kv heads x head_dim ", d);
            return {ConstView3<KV>(keys[rank].data(), tokens, heads, d),
                    ConstView3<KV>(values[rank].data(), tokens, heads, d)};
        }
    };

    template <KVElement KV, QueryElement Q, class... Where>
    static void check_finite(const ContextSlice<KV, Q>& s, index first_token, const Where&... where)
    {
        detail::check_finite_qkv(s.q, s.k, s.v, first_token, where...);
    }

    template <KVElement KV, QueryElement Q>
    static std::pair<ConstView3<KV>, ConstView3<KV>> kv_of(const ContextSlice<KV, Q>& s)
    {
        return {s.k, s.v};
    }

    // The owners of the anchor tokens broadcast them, block by block, to every host.
    template <KVElement KV, QueryElement Q, Communicator C>
    static AnchorKV<KV> receive_anchor(C& comm, const StarPlan& plan,
                                       const PerHost<HostContext<KV, Q>>& contexts)
    {
        AnchorKV<KV> anchor{comm.template local<std::vector<KV>>(),
                            comm.template local<std::vector<KV>>()};
        const TokenRange shared = plan.shared_anchor();
        for (std::size_t i = 0; i < plan.blocks().size(); ++i) {
            const TokenRange part{plan.blocks()[i].begin,
                                  std::min(plan.blocks()[i].end, shared.end)};
            if (part.empty())
                continue;
            const int root = plan.owner()[i];
            auto keys = comm.template local<std::vector<KV>>();
            auto values = comm.template local<std::vector<KV>>();
            if (keys.holds(root)) {
                const ContextSlice<KV, Q> s = contexts[root].slice(part);
                keys[root].assign(s.k.data(), s.k.data() + s.k.size());
                values[root].assign(s.v.data(), s.v.data() + s.v.size());
            }
            comm.broadcast(keys, root);
            comm.broadcast(values, root);
            for (int r = keys.first_rank(); r < keys.end_rank(); ++r) {
                anchor.keys[r].insert(anchor.keys[r].end(), keys[r].begin(), keys[r].end());
                anchor.values[r].insert(anchor.values[r].end(), values[r].begin(), values[r].end());
            }
        }
        return anchor;
    }

    // Every host must run the same configuration; across processes nothing else checks it,
    // and a difference gives wrong results (a received anchor read with the wrong type or
    // heads) or a hang (hosts calling different collectives). The plan stands for the
    // Block, Anchor and Partition policies; the Merge policy, the scale, the K/V and query
    // types and `shape_of(rank)`, each local host's shapes, complete it. (Queries of another
    // type break nothing on the wire, but a host would compute its part to another rounding.)
    static constexpr const char* setting_names[] = {"the number of context tokens",
                                                    "the query host",
                                                    "the number of blocks",
                                                    "the block boundaries (digest)",
                                                    "the block owners (digest)",
                                                    "the anchors (digest)",
                                                    "the anchor source",
                                                    "the K/V element type (1 float, 2 bf16, 3 half)",
                                                    "the Merge policy (digest of its type)",
                                                    "the softmax scale (bits)",
                                                    "whether inputs are checked for finiteness",
                                                    "the query length",
                                                    "the number of query heads",
                                                    "the number of kv heads",
                                                    "head_dim",
                                                    "the Variant policy (digest of its type)",
                                                    "the variant's window (-1: none)",
                                                    "the variant's soft cap (bits)",
                                                    "the variant's ALiBi slopes (digest)",
                                                    "the query element type (1 float, 2 bf16)"};

    // Each local host's values of `setting_names`.
    template <KVElement KV, QueryElement Q, Communicator C, class ShapeOf>
    PerHost<std::vector<std::int64_t>> settings(C& comm, const StarPlan& plan,
                                                ShapeOf&& shape_of) const
    {
        // Order-sensitive digests of the block layout: equal layouts give equal values.
        std::uint64_t bounds = 0, owners = 0, anchors = 0; // unsigned: wrapping is intended
        for (std::size_t i = 0; i < plan.blocks().size(); ++i) {
            bounds = bounds * 1000003 + static_cast<std::uint64_t>(plan.blocks()[i].end);
            owners = owners * 1000003 + static_cast<std::uint64_t>(plan.owner()[i]);
            anchors = (anchors * 1000003 + static_cast<std::uint64_t>(plan.anchors()[i].begin)) *
                          1000003 +
                      static_cast<std::uint64_t>(plan.anchors()[i].end);
        }
        const std::int64_t merge_digest = detail::type_digest<M>();
        const std::int64_t variant_digest = detail::type_digest<V>();
        const VariantSettings variant = variant_.settings();
        auto values = comm.template local<std::vector<std::int64_t>>();
        for (int r = values.first_rank(); r < values.end_rank(); ++r) {
            const LayerShape shape = shape_of(r);
            values[r] = {plan.context_tokens(),
                         plan.query_host(),
                         static_cast<std::int64_t>(plan.blocks().size()),
                         static_cast<std::int64_t>(bounds),
                         static_cast<std::int64_t>(owners),
                         static_cast<std::int64_t>(anchors),
                         static_cast<std::int64_t>(plan.anchor_source()),
                         detail::element_code<KV>(),
                         merge_digest,
                         detail::float_setting(attention_.scale),
                         std::int64_t{attention_.check_finite},
                         shape.query_tokens,
                         shape.q_heads,
                         shape.kv_heads,
                         shape.head_dim,
                         variant_digest,
                         variant.window,
                         detail::float_setting(variant.cap),
                         static_cast<std::int64_t>(variant.slopes),
                         detail::element_code<Q>()};
        }
        return values;
    }

    // Phase 1's check, each host with its own shapes: a gather and a broadcast, once per
    // layer and context.
    template <KVElement KV, QueryElement Q, Communicator C, class ShapeOf>
    void agree(C& comm, const StarPlan& plan, const char* where, ShapeOf&& shape_of) const
    {
        detail::check_agreement(comm, settings<KV, Q>(comm, plan, shape_of), setting_names, where);
    }

    template <Communicator C>
    static void check_group(const C& comm, const StarPlan& plan)
    {
        if (comm.size() != plan.hosts())
            detail::fail("StarAttention: the plan is for ", plan.hosts(),
                         " hosts but the communicator has ", comm.size());
    }

    M merge_{};
    V variant_{};
    AttentionOptions attention_;
};

} // namespace detail

/// Star Attention over the hosts of a `Communicator`, composed of four policies: `B` cuts
/// the context into blocks (`Block`), `A` picks the earlier keys each block also sees
/// (`Anchor`), `P` gives the blocks to hosts and names the query host (`Partition`), and `M`
/// brings the phase-2 partial states together (`Merge`), and `V` says what attention computes
/// (`Variant`: plain causal by default). The defaults are the paper's method.
///
/// For each layer: `plan` once per context, `encode_context` (phase 1) to fill every host's
/// `KVCache`, then `attend_query` (phase 2) for the query and for each decode step. The object
/// holds only its policies and the softmax scale; the state lives in the caches.
template <Block B = FixedBlocks, Anchor A = FirstTokens, Partition P = Contiguous,
          Merge M = GatherToQueryHost, Variant V = Causal>
class StarAttention {
public:
    /// Default-built policies and scale: with the default policies, the paper's method (one
    /// block per host, the first block as every other block's anchor, the last host asks
    /// the query, partial states gathered to it).
    StarAttention() = default;
    /// The given policies, softmax scale and finiteness check (`attention`, e.g.
    /// `{.scale = 0.125f}`) and variant.
    explicit StarAttention(B block, A anchor = {}, P partition = {}, M merge = {},
                           AttentionOptions attention = {}, V variant = {})
        : block_(std::move(block)), anchor_(std::move(anchor)), partition_(std::move(partition)),
          phases_(std::move(merge), std::move(variant), attention)
    {
    }

    /// Cuts a context of `context_tokens` tokens into blocks, gives them to `hosts` hosts
    /// and picks their anchors. Every host must compute the same plan.
    /// \throws star::error for an empty context, zero hosts, a bad block size, an anchor
    /// larger than the context, a query host or block owner out of range.
    [[nodiscard]] StarPlan plan(index context_tokens, int hosts) const
    {
        if (hosts <= 0)
            detail::fail("StarAttention: the number of hosts must be at least 1, got ", hosts);
        if (context_tokens <= 0)
            detail::fail("StarAttention: the context must hold at least 1 token, got ",
                         context_tokens);
        anchor_.check(context_tokens);
        std::vector<TokenRange> blocks;
        if constexpr (requires { block_.blocks(context_tokens, hosts); })
            blocks = block_.blocks(context_tokens, hosts);
        else
            blocks = block_.blocks(context_tokens);
        // Before the partition and anchor policies read them.
        detail::check_blocks(blocks, context_tokens, "StarAttention: the block policy's plan");
        std::vector<int> owner = partition_.assign(blocks, hosts);
        if (owner.size() != blocks.size())
            detail::fail("StarAttention: the partition assigned ", owner.size(), " of ",
                         blocks.size(), " blocks");
        std::vector<TokenRange> anchors;
        for (std::size_t i = 0; i < blocks.size(); ++i)
            anchors.push_back(anchor_.anchor_for(blocks, static_cast<index>(i)));
        return StarPlan(context_tokens, hosts, partition_.query_host(hosts), std::move(blocks),
                        std::move(owner), std::move(anchors), anchor_.source());
    }

    /// Phase 1 for one layer: every host attends over each of its blocks with the block's
    /// anchor (the anchor's own outputs are never computed) and appends the block's K/V to
    /// its cache. Returns each host's block outputs. `contexts[r]` holds what host `r` has
    /// of the context: its blocks, and the anchor tokens when the anchor is computed; the
    /// queries float or bf16.
    template <KVElement KV, QueryElement Q, Communicator C>
    PerHost<std::vector<RangeOutput>> encode_context(C& comm, const StarPlan& plan,
                                                     PerHost<KVCache<KV>>& caches,
                                                     const PerHost<HostContext<KV, Q>>& contexts) const
    {
        return phases_.encode_context(comm, plan, caches, contexts);
    }

    /// Phase 1 in-process, every host seeing the whole context `q`/`k`/`v`
    /// (`[L, Hq, d]`, float or bf16, and `[L, Hkv, d]`).
    template <QueryElement Q, KVElement KV, Communicator C>
    PerHost<std::vector<RangeOutput>> encode_context(C& comm, const StarPlan& plan,
                                                     PerHost<KVCache<KV>>& caches,
                                                     const ConstView3<Q>& q, const ConstView3<KV>& k,
                                                     const ConstView3<KV>& v) const
    {
        return phases_.encode_context(comm, plan, caches, q, k, v);
    }

    /// Phase 2 for one layer, also one decode step (`Lq = 1`): the query `q` `[Lq, Hq, d]`
    /// (float or bf16) with its own keys and values `k`/`v` `[Lq, Hkv, d]` goes to every
    /// host; each attends to all its cached keys (no causal mask: the query follows the whole
    /// context), the query host also to `k`/`v` causally; the partials are merged exactly by
    /// the Merge policy, and the query host alone appends `k`/`v` to its cache.
    /// Returns the merged state at the query host (and wherever the Merge policy puts it).
    /// \throws star::error on shapes that disagree with the query or the caches; a failed
    /// call changes no cache.
    template <QueryElement Q, KVElement KV, Communicator C>
    PerHost<std::optional<AttentionState>> attend_query(C& comm, const StarPlan& plan,
                                                        PerHost<KVCache<KV>>& caches,
                                                        const ConstView3<Q>& q,
                                                        const ConstView3<KV>& k,
                                                        const ConstView3<KV>& v) const
    {
        return phases_.attend_query(comm, plan, caches, q, k, v);
    }

    /// The most memory host `host` allocates in phase 1 (one `encode_context` call) besides
    /// its cache and its inputs, for a layer of `heads`, with K/V stored as `KV`, on
    /// `threads` threads:
    /// - the outputs of its blocks (what `encode_context` returns for it);
    /// - one block-sized partial state for the anchor, merged in and dropped block by block;
    /// - one kernel workspace per thread (`attention_workspace_bytes`);
    /// - a received anchor's K/V, plus the one block of it in flight.
    /// It is a sum of block-, anchor- and tile-sized terms: with the blocks a host owns fixed,
    /// it does not grow with the context length. No L x L (or L x b) buffer is ever built.
    /// \throws star::error if `host` is out of range or the shapes are invalid.
    template <KVElement KV>
    [[nodiscard]] std::size_t phase1_working_bytes(const StarPlan& plan, int host,
                                                   const HeadShape& heads, int threads) const
    {
        return phases_.template phase1_working_bytes<KV>(plan, host, heads, threads);
    }

    /// The Block policy.
    [[nodiscard]] const B& block_policy() const noexcept { return block_; }
    /// The Anchor policy.
    [[nodiscard]] const A& anchor_policy() const noexcept { return anchor_; }
    /// The Partition policy.
    [[nodiscard]] const P& partition_policy() const noexcept { return partition_; }
    /// The Merge policy.
    [[nodiscard]] const M& merge_policy() const noexcept { return phases_.merge_policy(); }
    /// The Variant policy.
    [[nodiscard]] const V& variant() const noexcept { return phases_.variant(); }
    /// The softmax scale and the finiteness check it was made with.
    [[nodiscard]] const AttentionOptions& attention_options() const noexcept
    {
        return phases_.attention_options();
    }

private:
    B block_{};
    A anchor_{};
    P partition_{};
    detail::StarPhases<M, V> phases_;
};

} // namespace star
