#pragma once
// The forward pass of a Llama-architecture model, with every attention call going through
// the Star library (attention_backend.hpp) and everything else done with Eigen and oneTBB.
//
//   x = embedding[tokens]
//   per layer:  x += Wo * attention(RoPE(Wq * norm(x)), RoPE(Wk * norm(x)), Wv * norm(x))
//               x += Wdown * (silu(Wgate * norm(x)) .* (Wup * norm(x)))
//   (Gemma 2: x = sqrt(hidden) * embedding[tokens]; each of the two outputs normalized before
//    it is added; GeGLU with tanh-approximated GELU in place of SwiGLU)
//   logits = lm_head * norm(x)            (then cap * tanh(logits / cap) under a final soft cap)
//
// Each layer's attention is the variant its config gives it (a sliding window, a soft cap on
// the scores; attention_backend.hpp), run by the library wherever attention runs.
//
// A `Sequence` is one text being read and continued. Its first call encodes the context
// (Star's phase 1); every later call appends tokens that attend to everything before them
// (phase 2: the query, then each generated token). The attention backend keeps the K/V
// cache of every layer, so a call only computes its own new tokens.

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <star/star.hpp>

#include "attention_backend.hpp"
#include "model.hpp"

namespace llama {

namespace forward_detail {

// Rows of activations per TBB task. Every token-wise step (norms, projections, RoPE, the
// MLP) is independent per row, so we cut the tokens into chunks; 32 rows make each chunk's
// matrix products large enough that Eigen's GEMM runs near full speed, while a 2K context
// still gives 64 chunks to balance over the cores. A single decoded token runs inline.
constexpr index rows_per_task = 32;

template <class F>
void for_each_chunk(index rows, F&& work)
{
    if (rows <= rows_per_task) {
        work(index{0}, rows);
        return;
    }
    tbb::parallel_for(tbb::blocked_range<index>(0, rows, rows_per_task),
                      [&](const tbb::blocked_range<index>& r) { work(r.begin(), r.size()); });
}

} // namespace forward_detail

// RMSNorm of each row of `x`: x / sqrt(mean(x^2) + eps) * weight.
inline Matrix rms_norm(const Eigen::Ref<const Matrix>& x, const Vector& weight, float eps)
{
    Matrix out(x.rows(), x.cols());
    for (index r = 0; r < x.rows(); ++r) {
        const float mean_square = x.row(r).squaredNorm() / static_cast<float>(x.cols());
        out.row(r) = (x.row(r) / std::sqrt(mean_square + eps)).cwiseProduct(weight.transpose());
    }
    return out;
}

// Rotary position embedding: rotates each pair of dimensions of a head by the angle
// `position * theta^(-2i/d)`, in one of the two pairings checkpoints use.
class Rope {
public:
    explicit Rope(const Config& c) : style_(c.rope), head_dim_(c.head_dim)
    {
        if (c.head_dim % 2 != 0)
            throw std::invalid_argument("RoPE needs an even head_dim, got " +
                                        std::to_string(c.head_dim));
        // The frequencies are rounded to float, as the reference implementations store
        // them; the angles are then formed in double, so a position of 16K loses nothing.
        for (int i = 0; i < c.head_dim / 2; ++i)
            inverse_frequency_.push_back(static_cast<float>(
                1.0 / std::pow(static_cast<double>(c.rope_theta), 2.0 * i / c.head_dim)));
    }

    // Rotates rows of `heads` heads each (row-major [rows, heads, head_dim]), row `t` at
    // absolute position `positions[t]`.
    void apply(float* rows, std::span<const index> positions, index heads) const
    {
        const index half = head_dim_ / 2;
        std::vector<float> cosines(static_cast<std::size_t>(half)), sines(cosines.size());
        for (std::size_t t = 0; t < positions.size(); ++t) {
            const double position = static_cast<double>(positions[t]);
            for (index i = 0; i < half; ++i) {
                const double angle = position * inverse_frequency_[static_cast<std::size_t>(i)];
                cosines[static_cast<std::size_t>(i)] = static_cast<float>(std::cos(angle));
                sines[static_cast<std::size_t>(i)] = static_cast<float>(std::sin(angle));
            }
            for (index h = 0; h < heads; ++h) {
                float* x = rows + (static_cast<index>(t) * heads + h) * head_dim_;
                for (index i = 0; i < half; ++i) {
                    const float c = cosines[static_cast<std::size_t>(i)];
                    const float s = sines[static_cast<std::size_t>(i)];
                    // rotate_half pairs i with i + d/2; interleaved pairs 2i with 2i + 1.
                    float& a = style_ == RopeStyle::rotate_half ? x[i] : x[2 * i];
                    float& b = style_ == RopeStyle::rotate_half ? x[i + half] : x[2 * i + 1];
                    const float a0 = a, b0 = b;
                    a = a0 * c - b0 * s;
                    b = b0 * c + a0 * s;
                }
            }
        }
    }

private:
    RopeStyle style_;
    index head_dim_;
    std::vector<float> inverse_frequency_;
};

// Which logits a call returns: none (a context whose predictions nobody reads), the last
// token's (generation), or every token's (scoring, comparisons).
enum class Logits { none, last, all };

class Sequence {
public:
    Sequence(const Model& model, std::unique_ptr<AttentionBackend> attention)
        : model_(&model), attention_(std::move(attention)), rope_(model.config)
    {
        const Config& c = model.config;
        if (c.layers != static_cast<int>(model.layers.size()) || c.heads <= 0 || c.kv_heads <= 0 ||
            c.heads % c.kv_heads != 0)
            throw std::invalid_argument("Sequence: inconsistent model configuration (" +
                                        std::to_string(model.layers.size()) + " layers for " +
                                        std::to_string(c.layers) + ", " + std::to_string(c.heads) +
                                        " heads, " + std::to_string(c.kv_heads) + " kv heads)");
    }

    // Phase 1: the context, which must come first. Returns the requested logits
    // [rows, vocab] (0 rows for Logits::none). Where the attention backend has this process
    // compute only part of the context (one rank of an MPI job: its own blocks and their
    // anchor), the context has no logits here: only Logits::none is possible.
    Matrix encode_context(std::span<const int> tokens, Logits logits = Logits::none)
    {
        if (position_ != 0)
            throw std::logic_error("Sequence::encode_context: the context must come first");
        check_tokens(tokens);
        const auto n = static_cast<index>(tokens.size());
        std::vector<int> ids;
        std::vector<index> positions;
        for (const star::TokenRange& rows : attention_->context_rows(n))
            for (index t = rows.begin; t < rows.end; ++t) {
                ids.push_back(tokens[static_cast<std::size_t>(t)]);
                positions.push_back(t);
            }
        if (logits != Logits::none && static_cast<index>(ids.size()) != n)
            throw std::logic_error("Sequence::encode_context: this process computes " +
                                   std::to_string(ids.size()) + " of the " + std::to_string(n) +
                                   " context tokens, so it has no logits of the context");
        Matrix out = run(ids, positions, true, logits);
        position_ = n;
        return out;
    }

    // Phase 2: tokens that follow everything so far (the query, then generated tokens).
    // Where another process runs them (an MPI rank that is not the query host), this one
    // only takes part in each layer's attention and returns no logits (0 rows).
    Matrix append(std::span<const int> tokens, Logits logits = Logits::last)
    {
        if (position_ == 0)
            throw std::logic_error("Sequence::append: encode a context first");
        check_tokens(tokens);
        const auto n = static_cast<index>(tokens.size());
        Matrix out(0, model_->config.vocab_size);
        if (attention_->runs_query()) {
            std::vector<index> positions(tokens.size());
            std::iota(positions.begin(), positions.end(), position_);
            out = run(tokens, positions, false, logits);
        } else {
            for (int l = 0; l < model_->config.layers; ++l)
                attention_->follow(l);
        }
        position_ += n;
        return out;
    }

    // Tokens read so far: the position of the next one.
    [[nodiscard]] index tokens() const noexcept { return position_; }
    // Whether this process computes the tokens after the context and their logits.
    [[nodiscard]] bool runs_query() const { return attention_->runs_query(); }
    [[nodiscard]] const AttentionBackend& attention() const noexcept { return *attention_; }

private:
    void check_tokens(std::span<const int> tokens) const
    {
        if (tokens.empty())
            throw std::invalid_argument("Sequence: no tokens given");
        for (const int t : tokens)
            if (t < 0 || t >= model_->config.vocab_size)
                throw std::out_of_range("Sequence: token id " + std::to_string(t) +
                                        " outside the vocabulary [0, " +
                                        std::to_string(model_->config.vocab_size) + ")");
    }

    // The layers over `tokens` at `positions` (one each; this process's share of the context
    // may be several runs of positions, and none at all).
    Matrix run(std::span<const int> tokens, std::span<const index> positions, bool context,
               Logits want)
    {
        using forward_detail::for_each_chunk;
        const Model& m = *model_;
        const Config& c = m.config;
        const auto n = static_cast<index>(tokens.size());

        Matrix x(n, c.hidden_size);
        for (index t = 0; t < n; ++t)
            x.row(t) = m.embedding.row(tokens[static_cast<std::size_t>(t)]);
        if (c.embedding_scale != 1.0f)
            x *= c.embedding_scale;

        const index q_width = index{c.heads} * c.head_dim;
        const index kv_width = index{c.kv_heads} * c.head_dim;
        for (int l = 0; l < c.layers; ++l) {
            const LayerWeights& w = m.layers[static_cast<std::size_t>(l)];

            // Q, K, V of the new tokens, RoPE at their absolute positions. Row-major
            // [tokens, heads * head_dim] is exactly the library's [tokens, heads, head_dim].
            Matrix q(n, q_width), k(n, kv_width), v(n, kv_width);
            for_each_chunk(n, [&](index begin, index rows) {
                const Matrix h =
                    rms_norm(x.middleRows(begin, rows), w.attention_norm, c.rms_norm_eps);
                q.middleRows(begin, rows).noalias() = h * w.wq.transpose();
                k.middleRows(begin, rows).noalias() = h * w.wk.transpose();
                v.middleRows(begin, rows).noalias() = h * w.wv.transpose();
                const auto at = positions.subspan(static_cast<std::size_t>(begin),
                                                  static_cast<std::size_t>(rows));
                rope_.apply(q.row(begin).data(), at, c.heads);
                rope_.apply(k.row(begin).data(), at, c.kv_heads);
            });
            const star::ConstView3<float> qv(q.data(), n, c.heads, c.head_dim);
            const star::ConstView3<float> kv(k.data(), n, c.kv_heads, c.head_dim);
            const star::ConstView3<float> vv(v.data(), n, c.kv_heads, c.head_dim);
            const star::Tensor3<float> attended = context ? attention_->encode_context(l, qv, kv, vv)
                                                          : attention_->attend(l, qv, kv, vv);
            const Eigen::Map<const Matrix> o(attended.data(), n, q_width);

            // Output projection, then the gated MLP (SwiGLU, or Gemma 2's GeGLU), each added
            // to the residual stream; Gemma 2 normalizes each output before adding it.
            for_each_chunk(n, [&](index begin, index rows) {
                const Matrix attended_out = o.middleRows(begin, rows) * w.wo.transpose();
                if (w.post_attention_norm.size() != 0)
                    x.middleRows(begin, rows) +=
                        rms_norm(attended_out, w.post_attention_norm, c.rms_norm_eps);
                else
                    x.middleRows(begin, rows) += attended_out;
                const Matrix h = rms_norm(x.middleRows(begin, rows), w.mlp_norm, c.rms_norm_eps);
                Matrix gate = h * w.w_gate.transpose();
                const Matrix up = h * w.w_up.transpose();
                if (c.activation == Activation::silu) {
                    gate.array() = gate.array() / (1.0f + (-gate.array()).exp()) * up.array();
                } else {
                    // gelu_pytorch_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
                    const float k = 0.7978845608028654f;
                    gate.array() =
                        0.5f * gate.array() *
                        (1.0f + (k * (gate.array() + 0.044715f * gate.array().cube())).tanh()) *
                        up.array();
                }
                const Matrix mlp_out = gate * w.w_down.transpose();
                if (w.post_mlp_norm.size() != 0)
                    x.middleRows(begin, rows) += rms_norm(mlp_out, w.post_mlp_norm, c.rms_norm_eps);
                else
                    x.middleRows(begin, rows) += mlp_out;
            });
        }

        const index first = want == Logits::all ? 0 : want == Logits::last ? n - 1 : n;
        const index rows = n - first;
        Matrix logits(rows, c.vocab_size);
        for_each_chunk(rows, [&](index begin, index count) {
            logits.middleRows(begin, count).noalias() =
                rms_norm(x.middleRows(first + begin, count), m.final_norm, c.rms_norm_eps) *
                m.lm_head.transpose();
            if (c.final_logit_softcapping) {
                const float cap = *c.final_logit_softcapping;
                logits.middleRows(begin, count).array() =
                    cap * (logits.middleRows(begin, count).array() / cap).tanh();
            }
        });
        return logits;
    }

    const Model* model_;
    std::unique_ptr<AttentionBackend> attention_;
    Rope rope_;
    index position_ = 0;
};

// The index of the largest logit of a row (greedy decoding); the first on ties.
inline int argmax(const Eigen::Ref<const Eigen::RowVectorXf>& logits)
{
    Eigen::Index best = 0;
    logits.maxCoeff(&best);
    return static_cast<int>(best);
}

// Greedy continuation: `count` tokens, the first chosen from `logits` (the last row of the
// previous call), each next one from the logits of appending the one before. On an MPI rank
// that follows the query host, the steps without their tokens: an empty result.
inline std::vector<int> generate_greedy(Sequence& sequence, const Matrix& logits, int count)
{
    std::vector<int> out;
    if (count <= 0)
        return out;
    if (!sequence.runs_query()) {
        // This rank follows the query host's decoding: the same number of steps, whose
        // tokens it never sees (it attends to the query host's K/V, which come with each).
        const int unseen = 0;
        for (int i = 1; i < count; ++i)
            sequence.append(std::span<const int>(&unseen, 1));
        return out;
    }
    out.push_back(argmax(logits.row(logits.rows() - 1)));
    while (static_cast<int>(out.size()) < count) {
        const int last = out.back();
        const Matrix next = sequence.append(std::span<const int>(&last, 1));
        out.push_back(argmax(next.row(0)));
    }
    return out;
}

} // namespace llama
