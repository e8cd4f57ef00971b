#pragma once
/// \file
/// Ring Attention: exact causal attention over hosts that each keep one shard of the
/// queries and pass the K/V shards around a ring for `H - 1` steps, merging the partial
/// states with the same LSE rule as Star's phase 2. The exact distributed baseline.

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "../comm/communicator.hpp"
#include "../kernel/attention.hpp"
#include "../policy/block.hpp"
#include "../policy/variant.hpp"
#include "context.hpp"

namespace star {

/// How the sequence is sharded over the ring.
enum class RingLayout {
    /// Host `r` holds the `r`-th of `H` contiguous shards (the paper's baseline). Under the
    /// causal mask host `r` has work in only `r + 1` of the `H` steps.
    plain,
    /// The sequence is cut into `2H` chunks and host `r` holds chunks `r` and `2H-1-r`, so
    /// every host has the same causal work.
    zigzag,
};

/// Options of Ring Attention.
struct RingOptions {
    RingLayout layout = RingLayout::plain; ///< How the sequence is sharded over the hosts.
    /// The softmax scale, and whether each host checks its shards for finiteness.
    AttentionOptions attention{};
};

/// Ring Attention over the hosts of a `Communicator`: exact causal self-attention of one
/// sequence under the Variant `V` (every token at its true position, so exact for every
/// variant), each host computing the outputs of its own query shards (`shards`). Holds only
/// its options and variant, so one object serves every layer and every host.
///
/// `RingAttention` is this with plain causal attention. It stays a class, not a template
/// with a default, so that code naming it as a type (a member, a return type) compiles as
/// before; `BasicRingAttention(options, SlidingWindow{4096})` deduces `V`.
template <Variant V = Causal>
class BasicRingAttention {
public:
    /// Plain layout, softmax scale `1/sqrt(head_dim)`.
    BasicRingAttention() = default;
    /// Ring Attention with `options` under `variant`.
    explicit BasicRingAttention(RingOptions options, V variant = {})
        : options_(options), variant_(std::move(variant))
    {
    }

    /// The token ranges host `r` holds (queries and, at step 0, keys/values), for every host.
    /// \throws star::error if `tokens` or `hosts` is less than 1.
    [[nodiscard]] std::vector<std::vector<TokenRange>> shards(index tokens, int hosts) const
    {
        if (hosts <= 0)
            detail::fail("RingAttention: the number of hosts must be at least 1, got ", hosts);
        if (tokens <= 0)
            detail::fail("RingAttention: the sequence must hold at least 1 token, got ", tokens);
        const index pieces = options_.layout == RingLayout::plain ? hosts : 2 * index{hosts};
        const std::vector<TokenRange> chunks = detail::near_equal_ranges(tokens, pieces);
        std::vector<std::vector<TokenRange>> result(static_cast<std::size_t>(hosts));
        for (int r = 0; r < hosts; ++r) {
            auto& mine = result[static_cast<std::size_t>(r)];
            mine.push_back(chunks[static_cast<std::size_t>(r)]);
            if (options_.layout == RingLayout::zigzag)
                mine.push_back(chunks[static_cast<std::size_t>(pieces - 1 - r)]);
        }
        return result;
    }

    /// Causal self-attention of a sequence of `tokens` tokens. `contexts[r]` must hold host
    /// `r`'s shards (see `shards`), its queries float or bf16. Returns each host's outputs
    /// for its query shards.
    /// \throws star::error on a bad number of tokens or hosts, Q/K/V the kernel rejects, or
    /// a context that lacks one of its host's shards.
    template <KVElement KV, QueryElement Q, Communicator C>
    PerHost<std::vector<RangeOutput>> run(C& comm, index tokens,
                                          const PerHost<HostContext<KV, Q>>& contexts) const
    {
        const int hosts = comm.size();
        const auto layout = shards(tokens, hosts);
        agree(comm, tokens, contexts);
        for (int r = contexts.first_rank(); r < contexts.end_rank(); ++r)
            if (const std::int64_t q_heads = detail::head_settings(contexts[r])[0];
                q_heads != detail::unknown_setting)
                variant_.check(static_cast<index>(q_heads));
        // Every host checks its own shards once below; what travels round the ring was
        // checked by the host it came from.
        const AttentionOptions kernel_options{.scale = options_.attention.scale,
                                              .check_finite = false};

        // Each host starts with its own K/V shards, concatenated in shard order.
        auto keys = comm.template local<std::vector<KV>>();
        auto values = comm.template local<std::vector<KV>>();
        auto partial = comm.template local<std::vector<RangeOutput>>();
        comm.for_each_host([&](int rank) {
            for (const TokenRange& range : layout[static_cast<std::size_t>(rank)]) {
                if (range.empty())
                    continue;
                const ContextSlice<KV, Q> s = contexts[rank].slice(range);
                detail::check_qkv(s.q, s.k, s.v, options_.attention.scale, "RingAttention::run");
                if (options_.attention.check_finite)
                    detail::check_finite_qkv(s.q, s.k, s.v, range.begin,
                                             "RingAttention::run: host ", rank);
                keys[rank].insert(keys[rank].end(), s.k.data(), s.k.data() + s.k.size());
                values[rank].insert(values[rank].end(), s.v.data(), s.v.data() + s.v.size());
                partial[rank].push_back(
                    {range, AttentionState(range.size(), s.q.dimension(1), s.q.dimension(2))});
            }
        });

        auto routes = comm.template local<Route>();
        for (int r = routes.first_rank(); r < routes.end_rank(); ++r)
            routes[r] = {(r + 1) % hosts, (r + hosts - 1) % hosts};

        for (int step = 0; step < hosts; ++step) {
            // The next step's K/V travel while this step's are attended to (over MPI,
            // non-blocking sends and receives); `keys`/`values` stay unchanged until then.
            using Pending = decltype(detail::start_exchange(comm, keys, routes));
            std::optional<Pending> next_keys, next_values;
            if (step + 1 < hosts) {
                next_keys.emplace(detail::start_exchange(comm, keys, routes));
                next_values.emplace(detail::start_exchange(comm, values, routes));
            }
            comm.for_each_host([&](int rank) {
                const int source = (rank + hosts - step) % hosts;
                index offset = 0; // tokens of the held buffer before the current shard
                for (const TokenRange& kv_range : layout[static_cast<std::size_t>(source)]) {
                    for (RangeOutput& out : partial[rank]) {
                        if (kv_range.empty() || kv_range.begin > out.tokens.end - 1)
                            continue; // keys all in the future of these queries
                        const ContextSlice<KV, Q> own = contexts[rank].slice(out.tokens);
                        const index row = own.k.dimension(1) * own.k.dimension(2);
                        const auto held = [&](const std::vector<KV>& buffer) {
                            return ConstView3<KV>(buffer.data() + offset * row, kv_range.size(),
                                                  own.k.dimension(1), own.k.dimension(2));
                        };
                        if (static_cast<index>(keys[rank].size()) < (offset + kv_range.size()) * row)
                            detail::fail_at_runtime("RingAttention: host ", rank, " received ",
                                                    keys[rank].size(), " key values from host ",
                                                    source, ", too few for its shards");
                        merge_into(out.state,
                                   attention(own.q, held(keys[rank]), held(values[rank]),
                                             variant_.mask(out.tokens.begin, kv_range.begin),
                                             kernel_options,
                                             variant_.transform(out.tokens.begin, kv_range.begin)));
                    }
                    offset += kv_range.size();
                }
            });
            if (step + 1 < hosts) {
                auto received_keys = next_keys->wait();
                auto received_values = next_values->wait();
                keys = std::move(received_keys);
                values = std::move(received_values);
            }
        }
        return partial;
    }

    /// In-process: every host sees the whole sequence `q` `[L, Hq, d]` (float or bf16),
    /// `k`/`v` `[L, Hkv, d]`.
    /// \throws star::error as the other overload, and if `q` and `k` have different token
    /// counts.
    template <QueryElement Q, KVElement KV, Communicator C>
    PerHost<std::vector<RangeOutput>> run(C& comm, const ConstView3<Q>& q, const ConstView3<KV>& k,
                                          const ConstView3<KV>& v) const
    {
        detail::check_qkv(q, k, v, options_.attention.scale, "RingAttention::run");
        if (q.dimension(0) != k.dimension(0))
            detail::fail("RingAttention::run: causal self-attention needs as many queries as keys, "
                         "got ",
                         q.dimension(0), " and ", k.dimension(0));
        auto contexts = comm.template local<HostContext<KV, Q>>();
        for (int r = contexts.first_rank(); r < contexts.end_rank(); ++r)
            contexts[r] = HostContext<KV, Q>(q, k, v);
        return run(comm, q.dimension(0), contexts);
    }

    /// The options it was made with.
    [[nodiscard]] const RingOptions& options() const noexcept { return options_; }
    /// The Variant policy.
    [[nodiscard]] const V& variant() const noexcept { return variant_; }

private:
    // Every host must run the same configuration: a host whose K/V have another type or
    // heads would read what travels round the ring with the wrong layout, and one whose
    // queries have another type would compute its rows to another rounding.
    template <KVElement KV, QueryElement Q, Communicator C>
    void agree(C& comm, index tokens, const PerHost<HostContext<KV, Q>>& contexts) const
    {
        static constexpr const char* names[] = {"the number of tokens",
                                                "the layout (0 plain, 1 zig-zag)",
                                                "the softmax scale (bits)",
                                                "whether inputs are checked for finiteness",
                                                "the K/V element type (1 float, 2 bf16, 3 half)",
                                                "the number of query heads",
                                                "the number of kv heads",
                                                "head_dim",
                                                "the Variant policy (digest of its type)",
                                                "the variant's window (-1: none)",
                                                "the variant's soft cap (bits)",
                                                "the variant's ALiBi slopes (digest)",
                                                "the query element type (1 float, 2 bf16)"};
        const std::int64_t variant_digest = detail::type_digest<V>();
        const VariantSettings variant = variant_.settings();
        auto settings = comm.template local<std::vector<std::int64_t>>();
        for (int r = settings.first_rank(); r < settings.end_rank(); ++r) {
            const auto [q_heads, kv_heads, head_dim] = detail::head_settings(contexts[r]);
            settings[r] = {tokens,
                           static_cast<std::int64_t>(options_.layout),
                           detail::float_setting(options_.attention.scale),
                           std::int64_t{options_.attention.check_finite},
                           detail::element_code<KV>(),
                           q_heads,
                           kv_heads,
                           head_dim,
                           variant_digest,
                           variant.window,
                           detail::float_setting(variant.cap),
                           static_cast<std::int64_t>(variant.slopes),
                           detail::element_code<Q>()};
        }
        detail::check_agreement(comm, settings, names, "RingAttention::run");
    }

    RingOptions options_;
    V variant_{};
};

/// Ring Attention of plain causal attention: `BasicRingAttention<Causal>`.
using RingAttention = BasicRingAttention<>;

} // namespace star
