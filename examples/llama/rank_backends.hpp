#pragma once
// Attention for one rank of an MPI job (`mpiexec -n H llama ...`): the rank is one host of
// Star or Ring Attention, as in the paper's system, and holds only its share of the context.
//
// Phase 1. A Star rank computes the model over its own blocks and, when each host computes
// the anchor itself (the paper's scheme, `anchor-from=compute`), over the anchor too: nothing
// travels through all the layers but each layer's agreement on the configuration. With
// `anchor-from=receive` it computes its blocks only, and at each layer the anchor's owners
// broadcast its K/V. A Ring rank computes its shards, passing K/V around the ring at each
// layer. Each rank keeps the K/V of its own blocks (shards) in its caches.
//
// Phase 2. The query host alone computes the model for the tokens after the context: at each
// layer it broadcasts their Q/K/V, every rank attends them to its own K/V, the partial results
// merge exactly at the query host, and the query host alone appends the new K/V.

#include <star/comm/mpi.hpp> // first: it includes <mpi.h> without the C++ bindings

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <star/star.hpp>

#include "attention_backend.hpp"

namespace llama {

// The job's communicator, counting the payload bytes this rank sends: a broadcast's root
// its buffer once per other rank, a gather's or all-gather's sender its buffer once per
// receiving rank, an exchange its buffer once. How MPI relays them (along a tree, say) is
// not counted.
class CountingCommunicator {
public:
    explicit CountingCommunicator(star::MpiCommunicator& inner) : inner_(&inner) {}

    [[nodiscard]] int size() const { return inner_->size(); }
    [[nodiscard]] int rank() const { return inner_->rank(); }
    template <class T>
    [[nodiscard]] star::PerHost<T> local() const
    {
        return inner_->template local<T>();
    }
    template <class F>
    void for_each_host(F&& step)
    {
        inner_->for_each_host(std::forward<F>(step));
    }
    template <star::Message T>
    void broadcast(star::PerHost<std::vector<T>>& buffers, int root)
    {
        if (rank() == root)
            count(buffers[root], size() - 1);
        inner_->broadcast(buffers, root);
    }
    template <star::Message T>
    star::PerHost<std::vector<std::vector<T>>> gather(const star::PerHost<std::vector<T>>& buffers,
                                                      int root)
    {
        if (rank() != root)
            count(buffers[rank()], 1);
        return inner_->gather(buffers, root);
    }
    template <star::Message T>
    star::PerHost<std::vector<std::vector<T>>> all_gather(const star::PerHost<std::vector<T>>& buffers)
    {
        count(buffers[rank()], size() - 1);
        return inner_->all_gather(buffers);
    }
    template <star::Message T>
    star::PerHost<std::vector<T>> exchange(const star::PerHost<std::vector<T>>& buffers,
                                           const star::PerHost<star::Route>& routes)
    {
        if (routes[rank()].send_to != star::Route::no_host)
            count(buffers[rank()], 1);
        return inner_->exchange(buffers, routes);
    }
    // Ring Attention overlaps its next K/V transfer with compute through this.
    template <star::Message T>
    auto start_exchange(const star::PerHost<std::vector<T>>& buffers,
                        const star::PerHost<star::Route>& routes)
    {
        if (routes[rank()].send_to != star::Route::no_host)
            count(buffers[rank()], 1);
        return inner_->start_exchange(buffers, routes);
    }
    void barrier() { inner_->barrier(); }

    // Payload bytes sent so far.
    [[nodiscard]] std::uint64_t bytes_sent() const noexcept { return sent_; }

private:
    template <class T>
    void count(const std::vector<T>& buffer, int receivers)
    {
        sent_ += static_cast<std::uint64_t>(buffer.size() * sizeof(T)) *
                 static_cast<std::uint64_t>(std::max(receivers, 0));
    }

    star::MpiCommunicator* inner_;
    std::uint64_t sent_ = 0;
};
static_assert(star::OverlappingExchange<CountingCommunicator>);

// What Star and Ring ranks share: the caches, and phase 2 (see the file's comment).
class RankBackend : public AttentionBackend {
public:
    [[nodiscard]] bool runs_query() const override
    {
        return plan_ && comm_->rank() == plan_->query_host();
    }

    star::Tensor3<float> attend(int layer, const star::ConstView3<float>& q,
                                const star::ConstView3<float>& k,
                                const star::ConstView3<float>& v) override
    {
        if (!runs_query())
            throw std::logic_error("attention: rank " + std::to_string(comm_->rank()) +
                                   " is not the query host: it follows the query host's steps");
        auto message = comm_->local<std::vector<float>>();
        std::vector<float>& m = message[comm_->rank()];
        for (const auto* part : {&q, &k, &v})
            m.insert(m.end(), part->data(), part->data() + part->size());
        comm_->broadcast(message, plan_->query_host());
        auto merged = attend_query(layer, q, k, v);
        return std::move(merged[plan_->query_host()]->output);
    }

    void follow(int layer) override
    {
        if (!plan_ || runs_query())
            throw std::logic_error("attention: rank " + std::to_string(comm_->rank()) +
                                   " has no query host's step to follow");
        auto message = comm_->local<std::vector<float>>();
        comm_->broadcast(message, plan_->query_host());
        const std::vector<float>& m = message[comm_->rank()];
        const index per_token = (q_heads_ + 2 * kv_heads_) * head_dim_;
        const auto tokens = static_cast<index>(m.size()) / per_token;
        if (tokens == 0 || static_cast<index>(m.size()) != tokens * per_token)
            throw star::error("attention: rank " + std::to_string(comm_->rank()) + " received " +
                              std::to_string(m.size()) + " values from the query host at layer " +
                              std::to_string(layer) + ", not a whole number of tokens of " +
                              std::to_string(per_token));
        const float* at = m.data();
        const star::ConstView3<float> q(at, tokens, q_heads_, head_dim_);
        const star::ConstView3<float> k(at + q.size(), tokens, kv_heads_, head_dim_);
        const star::ConstView3<float> v(at + q.size() + k.size(), tokens, kv_heads_, head_dim_);
        (void)attend_query(layer, q, k, v); // the merged result is the query host's
    }

    [[nodiscard]] std::vector<std::size_t> cache_bytes() const override
    {
        std::size_t bytes = 0;
        for (const auto& layer : caches_)
            bytes += layer[comm_->rank()].bytes();
        return {bytes};
    }

protected:
    RankBackend(ModelAttention attention, CountingCommunicator& comm, const Config& model,
                std::optional<int> hosts, const std::string& kind)
        : attention_(std::move(attention)), comm_(&comm), q_heads_(model.heads),
          kv_heads_(model.kv_heads), head_dim_(model.head_dim)
    {
        if (hosts && *hosts != comm.size())
            throw setting_error(kind + " attention: hosts=" + std::to_string(*hosts) +
                                " but the job has " + std::to_string(comm.size()) +
                                " ranks: across ranks each rank is one host");
    }

    // The layer's phase-2 step over every rank's cache (every rank calls it).
    virtual star::PerHost<std::optional<star::AttentionState>> attend_query(
        int layer, const star::ConstView3<float>& q, const star::ConstView3<float>& k,
        const star::ConstView3<float>& v) = 0;

    // The first call of a context: keeps the plan and makes this rank's empty caches.
    void start(star::StarPlan plan, const std::string& kind)
    {
        if (plan_)
            throw setting_error(kind + " attention: the context is encoded only once");
        plan_ = std::move(plan);
        caches_.assign(static_cast<std::size_t>(attention_.count()),
                       comm_->local<star::KVCache<float>>());
    }

    // This rank's pieces of the context at a layer: `rows` (as `context_rows` gave them),
    // whose Q/K/V are the consecutive rows of `q`/`k`/`v`.
    star::PerHost<star::HostContext<float>> pieces(const std::vector<star::TokenRange>& rows,
                                                   const star::ConstView3<float>& q,
                                                   const star::ConstView3<float>& k,
                                                   const star::ConstView3<float>& v) const
    {
        auto contexts = comm_->local<star::HostContext<float>>();
        index row = 0;
        for (const star::TokenRange& r : rows) {
            contexts[comm_->rank()].add(r.begin, star::token_slice(q, row, r.size()),
                                        star::token_slice(k, row, r.size()),
                                        star::token_slice(v, row, r.size()));
            row += r.size();
        }
        return contexts;
    }

    // Writes each output of this rank into `result` ([rows, Hq, d], rows as in `rows`) and
    // marks the rows written in `written`.
    static void place(const std::vector<star::RangeOutput>& outputs,
                      const std::vector<star::TokenRange>& rows, star::Tensor3<float>& result,
                      std::vector<char>& written)
    {
        const index width = result.dimension(1) * result.dimension(2);
        for (const star::RangeOutput& out : outputs) {
            index row = 0;
            auto piece = rows.begin();
            for (; piece != rows.end() &&
                   !(out.tokens.begin >= piece->begin && out.tokens.end <= piece->end);
                 ++piece)
                row += piece->size();
            if (piece == rows.end())
                throw std::logic_error("attention: an output for context tokens this rank "
                                       "does not hold");
            row += out.tokens.begin - piece->begin;
            std::copy_n(out.state.output.data(), out.state.output.size(),
                        result.data() + row * width);
            std::fill_n(written.begin() + row, out.tokens.size(), char{1});
        }
    }

    ModelAttention attention_;
    CountingCommunicator* comm_;
    index q_heads_, kv_heads_, head_dim_;
    std::optional<star::StarPlan> plan_;
    std::vector<star::PerHost<star::KVCache<float>>> caches_;
};

// One Star host per rank.
template <star::Anchor A, star::Partition P, star::Merge M>
class RankStarBackend final : public RankBackend {
public:
    RankStarBackend(ModelAttention attention, CountingCommunicator& comm, const Config& model,
                    index block, A anchor, P partition, M merge, std::optional<int> hosts,
                    std::string label)
        : RankBackend(std::move(attention), comm, model, hosts, "star"),
          star_(star::FixedBlocks{block}, std::move(anchor), std::move(partition), std::move(merge),
                {.scale = attention_.scale}),
          label_(std::move(label))
    {
        if constexpr (std::is_same_v<A, star::PreviousBlock>)
            throw setting_error(
                "star attention: anchor=previous does not run across ranks: a block's anchor "
                "is the previous block as its own host computed it, with its own anchor, so no "
                "rank can compute it alone, and only a prefix of the context can be received");
    }

    // This rank's blocks and, when it computes the anchor itself, the anchors they attend to
    // (a prefix of the context), joined where they meet.
    [[nodiscard]] std::vector<star::TokenRange> context_rows(index tokens) override
    {
        start(star_.plan(tokens, comm_->size()), "star");
        std::vector<star::TokenRange> wanted;
        for (const std::size_t i : plan_->blocks_of(comm_->rank())) {
            wanted.push_back(plan_->blocks()[i]);
            if (plan_->anchor_source() == star::AnchorSource::compute && !plan_->anchors()[i].empty())
                wanted.push_back(plan_->anchors()[i]);
        }
        std::sort(wanted.begin(), wanted.end(),
                  [](const auto& a, const auto& b) { return a.begin < b.begin; });
        rows_.clear();
        for (const star::TokenRange& r : wanted) {
            if (!rows_.empty() && r.begin <= rows_.back().end)
                rows_.back().end = std::max(rows_.back().end, r.end);
            else
                rows_.push_back(r);
        }
        return rows_;
    }

    star::Tensor3<float> encode_context(int layer, const star::ConstView3<float>& q,
                                        const star::ConstView3<float>& k,
                                        const star::ConstView3<float>& v) override
    {
        if (!plan_)
            throw std::logic_error("star attention: context_rows comes before encode_context");
        const auto contexts = pieces(rows_, q, k, v);
        const auto outputs = with_layer_variant(star_, attention_.at(layer), [&](const auto& s) {
            return s.encode_context(*comm_, *plan_, caches_.at(static_cast<std::size_t>(layer)),
                                    contexts);
        });
        star::Tensor3<float> result(q.dimension(0), q.dimension(1), q.dimension(2));
        std::vector<char> written(static_cast<std::size_t>(q.dimension(0)), 0);
        place(outputs[comm_->rank()], rows_, result, written);
        // Rows of the anchor this rank computes but does not own: the anchor is a prefix of
        // the context, so its hidden states are plain causal attention over it, as its
        // owner computes them (the paper's hosts recompute the anchor in the same way).
        const auto unwritten = std::find(written.rbegin(), written.rend(), char{0});
        if (unwritten != written.rend()) {
            const index prefix = written.rend() - unwritten;
            if (rows_.front().begin != 0 || prefix > rows_.front().size())
                throw std::logic_error("star attention: rows without output outside the anchor");
            const star::AttentionState anchor = std::visit(
                [&](const auto& variant) {
                    return star::global_attention(
                        star::token_slice(q, 0, prefix), star::token_slice(k, 0, prefix),
                        star::token_slice(v, 0, prefix), variant,
                        star::GlobalOptions{.attention = {.scale = attention_.scale}});
                },
                attention_.at(layer));
            const index width = q.dimension(1) * q.dimension(2);
            for (index t = 0; t < prefix; ++t)
                if (!written[static_cast<std::size_t>(t)])
                    std::copy_n(anchor.output.data() + t * width, width, result.data() + t * width);
        }
        return result;
    }

    [[nodiscard]] std::string describe() const override
    {
        std::string text = label_ + " ranks=" + std::to_string(comm_->size());
        if (plan_)
            text += " blocks=" + std::to_string(plan_->blocks().size());
        return text + llama::describe(attention_);
    }

protected:
    star::PerHost<std::optional<star::AttentionState>> attend_query(
        int layer, const star::ConstView3<float>& q, const star::ConstView3<float>& k,
        const star::ConstView3<float>& v) override
    {
        return with_layer_variant(star_, attention_.at(layer), [&](const auto& s) {
            return s.attend_query(*comm_, *plan_, caches_.at(static_cast<std::size_t>(layer)), q, k,
                                  v);
        });
    }

private:
    star::StarAttention<star::FixedBlocks, A, P, M> star_;
    std::string label_;
    std::vector<star::TokenRange> rows_;
};

// One Ring host per rank.
class RankRingBackend final : public RankBackend {
public:
    RankRingBackend(ModelAttention attention, CountingCommunicator& comm, const Config& model,
                    std::optional<int> hosts, star::RingLayout layout)
        : RankBackend(std::move(attention), comm, model, hosts, "ring"),
          options_{.layout = layout, .attention = {.scale = attention_.scale}}
    {
    }

    // This rank's shards, in context order.
    [[nodiscard]] std::vector<star::TokenRange> context_rows(index tokens) override
    {
        start(ring_query_plan(options_, tokens, comm_->size()), "ring");
        tokens_ = tokens;
        rows_.clear();
        for (const std::size_t i : plan_->blocks_of(comm_->rank()))
            rows_.push_back(plan_->blocks()[i]);
        return rows_;
    }

    star::Tensor3<float> encode_context(int layer, const star::ConstView3<float>& q,
                                        const star::ConstView3<float>& k,
                                        const star::ConstView3<float>& v) override
    {
        if (!plan_)
            throw std::logic_error("ring attention: context_rows comes before encode_context");
        const auto outputs = std::visit(
            [&](const auto& variant) {
                return star::BasicRingAttention(options_, variant)
                    .run(*comm_, tokens_, pieces(rows_, q, k, v));
            },
            attention_.at(layer));
        star::Tensor3<float> result(q.dimension(0), q.dimension(1), q.dimension(2));
        std::vector<char> written(static_cast<std::size_t>(q.dimension(0)), 0);
        place(outputs[comm_->rank()], rows_, result, written);
        if (std::find(written.begin(), written.end(), char{0}) != written.end())
            throw std::logic_error("ring attention: a shard returned no output");
        // The shards' K/V stay for phase 2, in context order as the plan lists them.
        caches_.at(static_cast<std::size_t>(layer))[comm_->rank()].append(k, v);
        return result;
    }

    [[nodiscard]] std::string describe() const override
    {
        return "ring ranks=" + std::to_string(comm_->size()) +
               (options_.layout == star::RingLayout::zigzag ? " zigzag" : " plain") +
               llama::describe(attention_);
    }

protected:
    star::PerHost<std::optional<star::AttentionState>> attend_query(
        int layer, const star::ConstView3<float>& q, const star::ConstView3<float>& k,
        const star::ConstView3<float>& v) override
    {
        return ring_attend_query(*comm_, *plan_, attention_.at(layer), attention_.scale,
                                 caches_.at(static_cast<std::size_t>(layer)), q, k, v);
    }

private:
    star::RingOptions options_;
    index tokens_ = 0;
    std::vector<star::TokenRange> rows_;
};

// A fresh backend for one sequence, this rank being one host of `comm`'s job.
inline std::unique_ptr<RankBackend> make_rank_backend(const AttentionSetting& s,
                                                      const Config& model, index context_length,
                                                      CountingCommunicator& comm)
{
    using Kind = AttentionSetting::Kind;
    if (s.kind == Kind::global)
        throw setting_error("attention setting '" + s.text +
                            "': global attention is one host's; across ranks run ring (exact) "
                            "or star");
    if (s.kind == Kind::ring)
        return std::make_unique<RankRingBackend>(attention_of(model), comm, model, s.hosts,
                                                 s.ring_layout);
    return with_star_policies(
        s, context_length,
        [&](index b, auto a, auto p, auto m,
            const std::string& label) -> std::unique_ptr<RankBackend> {
            return std::make_unique<RankStarBackend<decltype(a), decltype(p), decltype(m)>>(
                attention_of(model), comm, model, b, a, p, m, s.hosts, label);
        });
}

} // namespace llama
