#pragma once
// Attention for the forward pass (forward.hpp), chosen at run time: exact global attention,
// Ring Attention, or Star Attention with any of the library's policies.
//
// The model calls attention once per layer, in two kinds of calls:
//   - `encode_context`: the whole context at once (Star's phase 1);
//   - `attend`: tokens that follow everything seen so far (Star's phase 2: the query, then
//     one call per generated token).
// Each backend owns the K/V caches of one sequence, one per layer; with several hosts one
// per layer and host, as the library keeps them. Q and K arrive with RoPE already applied
// at their absolute positions; the library knows each token's position only for the
// layer's attention variant (a sliding window counts positions).
//
// What a layer's attention computes (`LayerVariant`) is one of the library's Variant
// policies, chosen per layer from the model's config and dispatched once, at the call, to
// the matching instantiation of global, Ring or Star.
//
// A setting is written like `star:b=L/4:anchor=none` (see `parse_setting`), where `L` is
// the context length the caller says the setting is for.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <star/star.hpp>

#include "model.hpp"

namespace llama {

using star::index;

// A command-line or configuration mistake: bad setting text, incompatible options.
class setting_error : public std::invalid_argument {
public:
    using std::invalid_argument::invalid_argument;
};

// What one layer's attention computes. The library takes the variant as a template
// parameter, so the run-time choice is one of a fixed set of types: exactly those the
// configs the loader reads can produce (a window or none per layer; a cap on every layer or
// none), so that no other combination is compiled. Each is the library's own policy.
using LayerVariant = std::variant<star::Causal, star::SlidingWindow, star::SoftCapped<>,
                                  star::SoftCapped<star::SlidingWindow>>;

// What attention computes in every layer of a model: each layer's variant and the softmax
// scale (1/sqrt(head_dim) when empty).
struct ModelAttention {
    std::vector<LayerVariant> layers;
    std::optional<float> scale;

    [[nodiscard]] int count() const noexcept { return static_cast<int>(layers.size()); }
    [[nodiscard]] const LayerVariant& at(int layer) const
    {
        return layers.at(static_cast<std::size_t>(layer));
    }
};

// Plain causal attention in each of `layers` layers, the default scale.
inline ModelAttention plain_attention(int layers)
{
    return {std::vector<LayerVariant>(static_cast<std::size_t>(std::max(layers, 0)), star::Causal{}),
            {}};
}

// The attention a model's config asks for: per layer its sliding window (or none) and the
// attention logit soft cap (or none); the scale from query_pre_attn_scalar.
inline ModelAttention attention_of(const Config& c)
{
    ModelAttention a;
    for (int l = 0; l < c.layers; ++l) {
        const index window = c.window_of(l);
        const std::optional<float> cap = c.attn_logit_softcapping;
        if (window > 0 && cap)
            a.layers.emplace_back(star::SoftCapped<star::SlidingWindow>{*cap, {window}});
        else if (window > 0)
            a.layers.emplace_back(star::SlidingWindow{window});
        else if (cap)
            a.layers.emplace_back(star::SoftCapped<>{*cap});
        else
            a.layers.emplace_back(star::Causal{});
    }
    if (c.query_pre_attn_scalar)
        a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(*c.query_pre_attn_scalar)));
    return a;
}

// "window 4096", "cap 50", "window 4096, cap 50" or "causal": for describe().
inline std::string describe(const LayerVariant& variant)
{
    return std::visit(
        [](const auto& v) -> std::string {
            const star::VariantSettings s = v.settings();
            std::string text;
            if (s.window > 0)
                text = "window " + std::to_string(s.window);
            if (s.cap) {
                std::ostringstream cap;
                cap << *s.cap;
                text += (text.empty() ? "cap " : ", cap ") + cap.str();
            }
            return text.empty() ? "causal" : text;
        },
        variant);
}

// " (layers: 0-1 window 4, 2 causal)" when some layer is not plain causal, else "".
inline std::string describe(const ModelAttention& a)
{
    std::string text;
    bool plain = true;
    for (int l = 0; l < a.count();) {
        const std::string what = describe(a.at(l));
        plain = plain && what == "causal";
        int last = l;
        while (last + 1 < a.count() && describe(a.at(last + 1)) == what)
            ++last;
        text += (text.empty() ? "" : ", ") + std::to_string(l) +
                (last > l ? "-" + std::to_string(last) : "") + " " + what;
        l = last + 1;
    }
    std::string scale;
    if (a.scale) {
        std::ostringstream s;
        s << " scale " << *a.scale;
        scale = s.str();
    }
    return plain && !a.scale ? "" : " (layers " + text + ")" + scale;
}

class AttentionBackend {
public:
    virtual ~AttentionBackend() = default;

    // Phase 1 at layer `layer` (layers are called in order, once each): causal attention of
    // the context over itself, in whatever way the backend encodes a context. `q` is
    // [L, Hq, d], `k`/`v` are [L, Hkv, d]. Returns the output [L, Hq, d].
    virtual star::Tensor3<float> encode_context(int layer, const star::ConstView3<float>& q,
                                                const star::ConstView3<float>& k,
                                                const star::ConstView3<float>& v) = 0;

    // Phase 2 at layer `layer`: `q`/`k`/`v` are tokens that follow every token this layer
    // has seen; they attend exactly to all of them and causally to each other, and join
    // the cache. Returns the output [tokens, Hq, d].
    virtual star::Tensor3<float> attend(int layer, const star::ConstView3<float>& q,
                                        const star::ConstView3<float>& k,
                                        const star::ConstView3<float>& v) = 0;

    // The context tokens whose hidden states this process computes, as ordered, disjoint
    // ranges, for a context of `tokens` tokens; `encode_context` then receives these tokens'
    // rows, one range after the other. Here: the whole context, since every host runs in
    // this process. One rank of an MPI job computes only its share (rank_backends.hpp).
    [[nodiscard]] virtual std::vector<star::TokenRange> context_rows(index tokens)
    {
        return {{0, tokens}};
    }

    // Whether this process computes the tokens after the context (the query host's part of
    // phase 2). Where it does not, it takes part in each layer's step by `follow`.
    [[nodiscard]] virtual bool runs_query() const { return true; }

    // Phase 2 at layer `layer` on a host that does not run the query: it attends the query
    // the query host sends to its own K/V and returns its partial result to be merged.
    virtual void follow(int layer)
    {
        throw std::logic_error("attention: layer " + std::to_string(layer) +
                               ": this process runs the query itself; nothing to follow");
    }

    // Bytes of K/V held by each host (one entry for the single-host backends; an MPI rank
    // gives its own).
    [[nodiscard]] virtual std::vector<std::size_t> cache_bytes() const = 0;

    // What runs, with every size resolved, e.g. "star b=512 a=512 hosts=4".
    [[nodiscard]] virtual std::string describe() const = 0;
};

// ---------------------------------------------------------------------------------------------
// Global attention: one cache per layer, exact.

class GlobalBackend final : public AttentionBackend {
public:
    explicit GlobalBackend(int layers) : GlobalBackend(plain_attention(layers)) {}
    explicit GlobalBackend(ModelAttention attention)
        : attention_(std::move(attention)), caches_(static_cast<std::size_t>(attention_.count()))
    {
    }

    star::Tensor3<float> encode_context(int layer, const star::ConstView3<float>& q,
                                        const star::ConstView3<float>& k,
                                        const star::ConstView3<float>& v) override
    {
        auto& cache = caches_.at(static_cast<std::size_t>(layer));
        if (cache.tokens() != 0)
            throw setting_error("global attention: the context must come before any other token");
        star::AttentionState s = std::visit(
            [&](const auto& variant) {
                return star::global_attention(
                    q, k, v, variant, star::GlobalOptions{.attention = {.scale = attention_.scale}});
            },
            attention_.at(layer));
        cache.append(k, v);
        return std::move(s.output);
    }

    star::Tensor3<float> attend(int layer, const star::ConstView3<float>& q,
                                const star::ConstView3<float>& k,
                                const star::ConstView3<float>& v) override
    {
        auto& cache = caches_.at(static_cast<std::size_t>(layer));
        const index before = cache.tokens();
        // The variant's settings are checked before the cache changes.
        std::visit([&](const auto& variant) { variant.check(q.dimension(1)); },
                   attention_.at(layer));
        cache.append(k, v);
        // The new queries sit at positions before.. and see every key up to their own (in
        // their window, if the layer has one). The cache checked each K/V as it came in; a
        // NaN in q still ends as an error (its scores are checked on the way out).
        return std::visit(
            [&](const auto& variant) {
                return std::move(star::attention(q, cache.keys(), cache.values(),
                                                 variant.mask(before, 0),
                                                 star::AttentionOptions{.scale = attention_.scale,
                                                                        .check_finite = false},
                                                 variant.transform(before, 0))
                                     .output);
            },
            attention_.at(layer));
    }

    [[nodiscard]] std::vector<std::size_t> cache_bytes() const override
    {
        std::size_t bytes = 0;
        for (const auto& c : caches_)
            bytes += c.bytes();
        return {bytes};
    }

    [[nodiscard]] std::string describe() const override
    {
        return "global" + llama::describe(attention_);
    }

private:
    ModelAttention attention_;
    std::vector<star::KVCache<float>> caches_;
};

// Calls `f` with the StarAttention of a layer: `star`'s policies and scale under the layer's
// variant. (The plan depends on the policies alone: one serves every layer.)
template <class A, class P, class M, class F>
decltype(auto) with_layer_variant(const star::StarAttention<star::FixedBlocks, A, P, M>& star,
                                  const LayerVariant& layer, F&& f)
{
    return std::visit(
        [&](const auto& variant) {
            if constexpr (std::is_same_v<std::decay_t<decltype(variant)>, star::Causal>)
                return f(star);
            else
                return f(
                    star::StarAttention<star::FixedBlocks, A, P, M, std::decay_t<decltype(variant)>>(
                        star.block_policy(), star.anchor_policy(), star.partition_policy(),
                        star.merge_policy(), star.attention_options(), variant));
        },
        layer);
}

// Phase 2 of Ring Attention at a layer: the exact distributed step of Star's phase 2 over
// the ring's shards (`plan`, see `ring_query_plan`), without anchor.
template <star::Communicator C>
star::PerHost<std::optional<star::AttentionState>> ring_attend_query(
    C& comm, const star::StarPlan& plan, const LayerVariant& layer, std::optional<float> scale,
    star::PerHost<star::KVCache<float>>& caches, const star::ConstView3<float>& q,
    const star::ConstView3<float>& k, const star::ConstView3<float>& v)
{
    return std::visit(
        [&](const auto& variant) {
            using Phase2 =
                star::StarAttention<star::FixedBlocks, star::NoAnchor, star::Contiguous,
                                    star::GatherToQueryHost, std::decay_t<decltype(variant)>>;
            return Phase2(star::FixedBlocks{}, {}, {}, {}, {.scale = scale}, variant)
                .attend_query(comm, plan, caches, q, k, v);
        },
        layer);
}

// The plan of Ring Attention's phase 2: blocks = the ring's shards in context order, owned
// as the ring holds them, no anchors (phase 2 reads only the caches, which hold the ring's
// exact K/V), the last host asks the query.
inline star::StarPlan ring_query_plan(const star::RingOptions& options, index tokens, int hosts)
{
    const auto shards = star::RingAttention(options).shards(tokens, hosts);
    std::vector<std::pair<star::TokenRange, int>> owned;
    for (int r = 0; r < hosts; ++r)
        for (const star::TokenRange& s : shards[static_cast<std::size_t>(r)])
            if (!s.empty())
                owned.emplace_back(s, r);
    std::sort(owned.begin(), owned.end(),
              [](const auto& a, const auto& b) { return a.first.begin < b.first.begin; });
    std::vector<star::TokenRange> blocks;
    std::vector<int> owner;
    for (const auto& [range, rank] : owned) {
        blocks.push_back(range);
        owner.push_back(rank);
    }
    std::vector<star::TokenRange> anchors(blocks.size());
    return {tokens, hosts, hosts - 1, std::move(blocks), std::move(owner), std::move(anchors)};
}

// ---------------------------------------------------------------------------------------------
// Star Attention over `hosts` in-process hosts.
//
// The paper describes phase 1 per host: host h runs the whole model over `[anchor ; block]`
// for each of its blocks. We run it per layer instead, all hosts together, through
// `StarAttention::encode_context` — the same computation: at layer l, a block's hidden
// states depend only on its own tokens and the anchor's layer-l K/V; and with a prefix
// anchor (FirstTokens with a <= b, SinkTokens) the anchor's hidden states in every host's
// pass equal those of the first block, because attention is causal and the first block is
// processed alone. So the anchor K/V the library takes from the context at layer l are
// exactly what each host would have recomputed. (An anchor longer than the first block
// differs: its tokens past the first block get the K/V their own block computed, with the
// anchor, instead of plain causal ones. PreviousBlock likewise sees the previous block's
// K/V as its owner computed them, with that block's own anchor.)
template <star::Anchor A, star::Partition P, star::Merge M>
class StarBackend final : public AttentionBackend {
public:
    // `hosts` empty: one host per block, as in the paper's experiments.
    StarBackend(ModelAttention attention, index block, A anchor, P partition, M merge,
                std::optional<int> hosts, std::string label)
        : attention_(std::move(attention)), layers_(attention_.count()),
          star_(star::FixedBlocks{block}, std::move(anchor), std::move(partition), std::move(merge),
                {.scale = attention_.scale}),
          hosts_(hosts), label_(std::move(label))
    {
    }

    star::Tensor3<float> encode_context(int layer, const star::ConstView3<float>& q,
                                        const star::ConstView3<float>& k,
                                        const star::ConstView3<float>& v) override
    {
        if (layer == 0) {
            if (plan_)
                throw setting_error("star attention: the context is encoded only once");
            const index tokens = q.dimension(0);
            const index block = star_.block_policy().size.value();
            const int hosts = hosts_.value_or(static_cast<int>((tokens + block - 1) / block));
            plan_ = star_.plan(tokens, hosts);
            comm_.emplace(hosts);
            caches_.assign(static_cast<std::size_t>(layers_), comm_->local<star::KVCache<float>>());
        }
        const auto outputs = with_variant(layer, [&](const auto& star) {
            return star.encode_context(*comm_, *plan_, cache(layer), q, k, v);
        });
        return std::move(
            star::assemble(outputs, {q.dimension(0), q.dimension(1), q.dimension(2)}).output);
    }

    star::Tensor3<float> attend(int layer, const star::ConstView3<float>& q,
                                const star::ConstView3<float>& k,
                                const star::ConstView3<float>& v) override
    {
        if (!plan_)
            throw setting_error("star attention: encode a context before the query");
        auto merged = with_variant(layer, [&](const auto& star) {
            return star.attend_query(*comm_, *plan_, cache(layer), q, k, v);
        });
        return std::move(merged[plan_->query_host()]->output);
    }

    [[nodiscard]] std::vector<std::size_t> cache_bytes() const override
    {
        std::vector<std::size_t> bytes(plan_ ? static_cast<std::size_t>(plan_->hosts()) : 0);
        for (const auto& layer : caches_)
            for (int r = 0; r < layer.count(); ++r)
                bytes[static_cast<std::size_t>(r)] += layer[r].bytes();
        return bytes;
    }

    [[nodiscard]] std::string describe() const override
    {
        std::ostringstream s;
        s << label_;
        if (plan_)
            s << " hosts=" << plan_->hosts() << " blocks=" << plan_->blocks().size();
        s << llama::describe(attention_);
        return s.str();
    }

private:
    star::PerHost<star::KVCache<float>>& cache(int layer)
    {
        return caches_.at(static_cast<std::size_t>(layer));
    }

    template <class F>
    decltype(auto) with_variant(int layer, F&& f) const
    {
        return with_layer_variant(star_, attention_.at(layer), std::forward<F>(f));
    }

    ModelAttention attention_;
    int layers_;
    star::StarAttention<star::FixedBlocks, A, P, M> star_;
    std::optional<int> hosts_;
    std::string label_;
    std::optional<star::StarPlan> plan_;
    std::optional<star::LocalCommunicator> comm_;
    std::vector<star::PerHost<star::KVCache<float>>> caches_;
};

// ---------------------------------------------------------------------------------------------
// Ring Attention over `hosts` in-process hosts (plain or zig-zag layout).
//
// Ring is exact for the context. For the query and decoding, each host keeps the K/V of
// its own shards, and the query goes through the same exact distributed step as Star's
// phase 2: `StarAttention::attend_query` over a plan whose blocks are the ring's shards,
// without anchor. Phase 2 is exact whatever the blocks are, so this is exact too, and
// no host ever holds the whole context.
class RingBackend final : public AttentionBackend {
public:
    RingBackend(ModelAttention attention, int hosts, star::RingLayout layout)
        : attention_(std::move(attention)), layers_(attention_.count()), hosts_(hosts),
          layout_(layout), options_{.layout = layout, .attention = {.scale = attention_.scale}},
          comm_(hosts)
    {
    }

    star::Tensor3<float> encode_context(int layer, const star::ConstView3<float>& q,
                                        const star::ConstView3<float>& k,
                                        const star::ConstView3<float>& v) override
    {
        const index tokens = q.dimension(0);
        if (layer == 0) {
            if (plan_)
                throw setting_error("ring attention: the context is encoded only once");
            plan_ = ring_query_plan(options_, tokens, hosts_);
            caches_.assign(static_cast<std::size_t>(layers_), comm_.local<star::KVCache<float>>());
        }
        const auto outputs = std::visit(
            [&](const auto& variant) {
                return star::BasicRingAttention(options_, variant).run(comm_, q, k, v);
            },
            attention_.at(layer));
        // Each host keeps its shard's K/V for the query: the blocks the plan gives it.
        auto& caches = caches_.at(static_cast<std::size_t>(layer));
        for (std::size_t i = 0; i < plan_->blocks().size(); ++i) {
            const star::TokenRange b = plan_->blocks()[i];
            caches[plan_->owner()[i]].append(star::token_slice(k, b.begin, b.size()),
                                             star::token_slice(v, b.begin, b.size()));
        }
        return std::move(star::assemble(outputs, {tokens, q.dimension(1), q.dimension(2)}).output);
    }

    star::Tensor3<float> attend(int layer, const star::ConstView3<float>& q,
                                const star::ConstView3<float>& k,
                                const star::ConstView3<float>& v) override
    {
        if (!plan_)
            throw setting_error("ring attention: encode a context before the query");
        auto merged = ring_attend_query(comm_, *plan_, attention_.at(layer), attention_.scale,
                                        caches_.at(static_cast<std::size_t>(layer)), q, k, v);
        return std::move(merged[plan_->query_host()]->output);
    }

    [[nodiscard]] std::vector<std::size_t> cache_bytes() const override
    {
        std::vector<std::size_t> bytes(static_cast<std::size_t>(hosts_));
        for (const auto& layer : caches_)
            for (int r = 0; r < layer.count(); ++r)
                bytes[static_cast<std::size_t>(r)] += layer[r].bytes();
        return bytes;
    }

    [[nodiscard]] std::string describe() const override
    {
        return "ring hosts=" + std::to_string(hosts_) +
               (layout_ == star::RingLayout::zigzag ? " zigzag" : " plain") +
               llama::describe(attention_);
    }

private:
    ModelAttention attention_;
    int layers_;
    int hosts_;
    star::RingLayout layout_;
    star::RingOptions options_;
    star::LocalCommunicator comm_;
    std::optional<star::StarPlan> plan_;
    std::vector<star::PerHost<star::KVCache<float>>> caches_;
};

// ---------------------------------------------------------------------------------------------
// Settings: the text a user writes, parsed once, turned into a backend per sequence.

// A size given as tokens (`512`) or as a fraction of the context length (`L/4`).
struct Size {
    index tokens = 0;  // when divisor == 0
    index divisor = 0; // L / divisor, rounded up

    [[nodiscard]] index resolve(index context_length) const
    {
        return divisor == 0 ? tokens : (context_length + divisor - 1) / divisor;
    }
    [[nodiscard]] std::string text() const
    {
        return divisor == 0 ? std::to_string(tokens) : "L/" + std::to_string(divisor);
    }
};

struct AttentionSetting {
    enum class Kind { global, ring, star };
    enum class AnchorKind { first, sinks, none, previous };
    enum class PartitionKind { contiguous, round_robin, balanced };
    enum class MergeKind { gather, all_gather, tree };

    std::string text; // as the user wrote it, for tables
    Kind kind = Kind::global;
    Size block{0, 4};                // star: b
    std::optional<Size> anchor_size; // star: a (first: default b; sinks: default 4)
    AnchorKind anchor = AnchorKind::first;
    star::AnchorSource anchor_from = star::AnchorSource::compute; // first and sinks
    PartitionKind partition = PartitionKind::contiguous;
    MergeKind merge = MergeKind::gather;
    std::optional<int> hosts; // star: default one per block; ring: default 4
    star::RingLayout ring_layout = star::RingLayout::plain;
};

namespace detail {

inline index parse_count(std::string_view text, std::string_view what)
{
    index value = 0;
    if (text.empty())
        throw setting_error(std::string(what) + ": empty number");
    for (const char c : text) {
        if (c < '0' || c > '9' || value > (index{1} << 40))
            throw setting_error(std::string(what) + ": '" + std::string(text) +
                                "' is not a positive whole number");
        value = value * 10 + (c - '0');
    }
    if (value <= 0)
        throw setting_error(std::string(what) + ": must be at least 1, got " + std::string(text));
    return value;
}

inline Size parse_size(std::string_view text, std::string_view what)
{
    if (text.starts_with("L/"))
        return {0, parse_count(text.substr(2), what)};
    if (text == "L")
        return {0, 1};
    return {parse_count(text, what), 0};
}

} // namespace detail

// Parses one setting:
//   global
//   ring[:hosts=N][:layout=plain|zigzag]
//   star[:b=SIZE][:anchor=first|sinks|none|previous][:a=SIZE][:hosts=N]
//       [:anchor-from=compute|receive]
//       [:partition=contiguous|round-robin|balanced][:merge=gather|all-gather|tree]
// SIZE is a token count or `L/n` (n-th of the context length L, rounded up); star's
// defaults are the paper's: b=L/4, anchor=first with a=b, each host computing the anchor
// itself, contiguous, gather, one host per block.
inline AttentionSetting parse_setting(std::string_view text)
{
    AttentionSetting s;
    s.text = std::string(text);
    std::vector<std::string_view> fields;
    for (std::size_t start = 0;;) {
        const std::size_t colon = text.find(':', start);
        fields.push_back(text.substr(start, colon - start));
        if (colon == std::string_view::npos)
            break;
        start = colon + 1;
    }
    const std::string_view kind = fields.front();
    if (kind == "global")
        s.kind = AttentionSetting::Kind::global;
    else if (kind == "ring")
        s.kind = AttentionSetting::Kind::ring;
    else if (kind == "star")
        s.kind = AttentionSetting::Kind::star;
    else
        throw setting_error("attention setting '" + s.text +
                            "': expected global, ring or star before the first ':'");

    const auto bad = [&](std::string_view why) {
        return setting_error("attention setting '" + s.text + "': " + std::string(why));
    };
    for (std::size_t i = 1; i < fields.size(); ++i) {
        const std::size_t eq = fields[i].find('=');
        if (eq == std::string_view::npos)
            throw bad("expected key=value, got '" + std::string(fields[i]) + "'");
        const std::string_view key = fields[i].substr(0, eq), value = fields[i].substr(eq + 1);
        const std::string where = "attention setting '" + s.text + "', " + std::string(key);
        if (key == "hosts" && s.kind != AttentionSetting::Kind::global) {
            s.hosts = static_cast<int>(detail::parse_count(value, where));
            if (*s.hosts > 4096)
                throw bad("at most 4096 hosts");
        } else if (s.kind == AttentionSetting::Kind::ring && key == "layout") {
            if (value == "plain")
                s.ring_layout = star::RingLayout::plain;
            else if (value == "zigzag")
                s.ring_layout = star::RingLayout::zigzag;
            else
                throw bad("layout must be plain or zigzag");
        } else if (s.kind == AttentionSetting::Kind::star && key == "b") {
            s.block = detail::parse_size(value, where);
        } else if (s.kind == AttentionSetting::Kind::star && key == "a") {
            s.anchor_size = detail::parse_size(value, where);
        } else if (s.kind == AttentionSetting::Kind::star && key == "anchor") {
            using A = AttentionSetting::AnchorKind;
            if (value == "first")
                s.anchor = A::first;
            else if (value == "sinks")
                s.anchor = A::sinks;
            else if (value == "none")
                s.anchor = A::none;
            else if (value == "previous")
                s.anchor = A::previous;
            else
                throw bad("anchor must be first, sinks, none or previous");
        } else if (s.kind == AttentionSetting::Kind::star && key == "anchor-from") {
            if (value == "compute")
                s.anchor_from = star::AnchorSource::compute;
            else if (value == "receive")
                s.anchor_from = star::AnchorSource::receive;
            else
                throw bad("anchor-from must be compute or receive");
        } else if (s.kind == AttentionSetting::Kind::star && key == "partition") {
            using P = AttentionSetting::PartitionKind;
            if (value == "contiguous")
                s.partition = P::contiguous;
            else if (value == "round-robin")
                s.partition = P::round_robin;
            else if (value == "balanced")
                s.partition = P::balanced;
            else
                throw bad("partition must be contiguous, round-robin or balanced");
        } else if (s.kind == AttentionSetting::Kind::star && key == "merge") {
            using M = AttentionSetting::MergeKind;
            if (value == "gather")
                s.merge = M::gather;
            else if (value == "all-gather")
                s.merge = M::all_gather;
            else if (value == "tree")
                s.merge = M::tree;
            else
                throw bad("merge must be gather, all-gather or tree");
        } else {
            throw bad("unknown option '" + std::string(key) + "' for " + std::string(kind));
        }
    }
    if (s.anchor_size && (s.anchor == AttentionSetting::AnchorKind::none ||
                          s.anchor == AttentionSetting::AnchorKind::previous))
        throw bad("a= only applies to anchor=first or anchor=sinks");
    if (s.anchor_from == star::AnchorSource::receive &&
        (s.anchor == AttentionSetting::AnchorKind::none ||
         s.anchor == AttentionSetting::AnchorKind::previous))
        throw bad("anchor-from= only applies to anchor=first or anchor=sinks");
    return s;
}

// Parses a comma-separated list of settings.
inline std::vector<AttentionSetting> parse_settings(std::string_view text)
{
    std::vector<AttentionSetting> result;
    for (std::size_t start = 0;;) {
        const std::size_t comma = text.find(',', start);
        result.push_back(parse_setting(text.substr(start, comma - start)));
        if (comma == std::string_view::npos)
            break;
        start = comma + 1;
    }
    return result;
}

// Calls `f(b, anchor, partition, merge, label)` with the block size and the policies of the
// Star setting `s` (the policies are types: one variant per family turns the run-time choice
// into the matching StarAttention<...> instantiation); `label` describes them, sizes
// resolved against `context_length`.
template <class F>
decltype(auto) with_star_policies(const AttentionSetting& s, index context_length, F&& f)
{
    const index b = s.block.resolve(context_length);
    std::ostringstream label;
    label << "star b=" << b;
    if (s.anchor_from == star::AnchorSource::receive)
        label << " anchor-from=receive";

    using AnchorChoice =
        std::variant<star::FirstTokens, star::SinkTokens, star::NoAnchor, star::PreviousBlock>;
    AnchorChoice anchor;
    switch (s.anchor) {
    case AttentionSetting::AnchorKind::first: {
        star::FirstTokens first;
        if (s.anchor_size)
            first.tokens = s.anchor_size->resolve(context_length);
        first.from = s.anchor_from;
        label << " a=" << first.tokens.value_or(b);
        anchor = first;
        break;
    }
    case AttentionSetting::AnchorKind::sinks: {
        const index n = s.anchor_size ? s.anchor_size->resolve(context_length) : 4;
        label << " anchor=sinks(" << n << ")";
        anchor = star::SinkTokens{n, s.anchor_from};
        break;
    }
    case AttentionSetting::AnchorKind::none:
        label << " anchor=none";
        anchor = star::NoAnchor{};
        break;
    case AttentionSetting::AnchorKind::previous:
        label << " anchor=previous";
        anchor = star::PreviousBlock{};
        break;
    }
    std::variant<star::Contiguous, star::RoundRobin, star::BalancedTokens> partition;
    switch (s.partition) {
    case AttentionSetting::PartitionKind::contiguous: partition = star::Contiguous{}; break;
    case AttentionSetting::PartitionKind::round_robin:
        label << " round-robin";
        partition = star::RoundRobin{};
        break;
    case AttentionSetting::PartitionKind::balanced:
        label << " balanced";
        partition = star::BalancedTokens{};
        break;
    }
    std::variant<star::GatherToQueryHost, star::AllGather, star::TreeReduction> merge;
    switch (s.merge) {
    case AttentionSetting::MergeKind::gather: merge = star::GatherToQueryHost{}; break;
    case AttentionSetting::MergeKind::all_gather:
        label << " all-gather";
        merge = star::AllGather{};
        break;
    case AttentionSetting::MergeKind::tree:
        label << " tree";
        merge = star::TreeReduction{};
        break;
    }
    return std::visit([&](auto a, auto p, auto m) { return f(b, a, p, m, label.str()); }, anchor,
                      partition, merge);
}


// A fresh backend for one sequence of a model whose layers compute `attention`; `L/n` sizes
// resolve against `context_length`.
inline std::unique_ptr<AttentionBackend> make_backend(const AttentionSetting& s,
                                                      ModelAttention attention, index context_length)
{
    using Kind = AttentionSetting::Kind;
    if (s.kind == Kind::global)
        return std::make_unique<GlobalBackend>(std::move(attention));
    if (s.kind == Kind::ring)
        return std::make_unique<RingBackend>(std::move(attention), s.hosts.value_or(4),
                                             s.ring_layout);

    return with_star_policies(
        s, context_length,
        [&](index b, auto a, auto p, auto m,
            const std::string& label) -> std::unique_ptr<AttentionBackend> {
            return std::make_unique<StarBackend<decltype(a), decltype(p), decltype(m)>>(
                attention, b, a, p, m, s.hosts, label);
        });
}

// A fresh backend for one sequence of `model`, every layer under the attention variant its
// config gives it.
inline std::unique_ptr<AttentionBackend> make_backend(const AttentionSetting& s,
                                                      const Config& model, index context_length)
{
    return make_backend(s, attention_of(model), context_length);
}

// Makes the attention backend of one sequence from a setting and the context length its
// `L/n` sizes resolve against: every host in this process (`in_process`), or this process
// one rank of an MPI job (main.cpp).
using BackendMaker =
    std::function<std::unique_ptr<AttentionBackend>(const AttentionSetting&, index)>;

// Every host in this process, for a model of config `model` (which must outlive it).
inline BackendMaker in_process(const Config& model)
{
    return [&model](const AttentionSetting& s, index context_length) {
        return make_backend(s, model, context_length);
    };
}

} // namespace llama
