// The Llama forward pass (examples/llama/forward.hpp) on tiny random models that the test
// writes to disk in both checkpoint formats and loads back, against an independent
// double-precision forward pass written here with naive loops.
//
// Tolerance. The forward pass computes in float32 (unit roundoff 6e-8), the reference in
// double. Through 2-3 layers of dot products over at most ~40 terms of O(1) values the
// logits (of size O(1)) differ by rounding only: measured at most 5.4e-6 against the
// reference, and 5.0e-6 between two float runs that differ only in summation order
// (decoding vs. one pass, ring vs. global, where the kernel's tiles and merges group the
// sums differently). 1e-4 leaves a margin of about 20x, while a real mistake (a wrong RoPE
// pairing, a query head on the wrong KV head, a mask off by one token) moves logits by 1e-2
// or more: the last check of StarEqualsBlockSparseDoublePrecisionForward shows that even
// the intended block-sparse approximation does.

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <numbers>
#include <ostream>
#include <stdexcept>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <unistd.h>

#include "agree.hpp"
#include "attention_backend.hpp"
#include "forward.hpp"
#include "load.hpp"
#include "needle.hpp"
#include "safetensors.hpp"

namespace {

using llama::index;

// ---------------------------------------------------------------------------------------------
// A random model, kept in double by the test; written in float32, so the loaded weights are
// the same numbers.

struct TinyShape {
    int vocab = 41;
    int hidden = 20;
    int intermediate = 37;
    int layers = 3;
    int heads = 6;
    int kv_heads = 2;
    int head_dim = 4;
    double theta = 10000.0;
    double eps = 1e-5;
    llama::RopeStyle rope = llama::RopeStyle::rotate_half;
    bool gemma2 = false; // Gemma 2's architecture (written as model_type gemma2)
};

using Weights = std::vector<double>; // row-major

struct TinyLayer {
    Weights attention_norm, wq, wk, wv, wo, mlp_norm, gate, up, down;
    Weights post_attention_norm, post_mlp_norm; // Gemma 2 only
};

// Attention variants, as config.json states them (`config`, a fragment of JSON keys
// written into the HF config) and as the reference computes them (the rest).
struct TinyVariants {
    std::string config;         // e.g. "\"sliding_window\": 5"
    std::vector<index> windows; // per layer, 0 for none; empty: no window anywhere
    double attn_cap = 0.0;      // 0 for none
    double final_cap = 0.0;     // 0 for none
    double scale = 0.0;         // the softmax scale; 0 for 1/sqrt(head_dim)
};

struct TinyModel {
    TinyShape shape;
    Weights embedding, final_norm, lm_head;
    std::vector<TinyLayer> layers;
    TinyVariants variants;
};

TinyModel random_model(const TinyShape& s, unsigned seed)
{
    std::mt19937 rng(seed);
    const auto random = [&](std::size_t rows, std::size_t cols, double scale) {
        std::normal_distribution<double> normal(0.0, scale);
        Weights w(rows * cols);
        for (double& x : w)
            x = static_cast<float>(normal(rng)); // representable in float: written exactly
        return w;
    };
    const auto norm = [&](std::size_t n) {
        Weights w = random(n, 1, 0.2);
        for (double& x : w)
            x = static_cast<float>(1.0 + x);
        return w;
    };
    const auto h = static_cast<std::size_t>(s.hidden), f = static_cast<std::size_t>(s.intermediate);
    const auto q = static_cast<std::size_t>(s.heads * s.head_dim);
    const auto kv = static_cast<std::size_t>(s.kv_heads * s.head_dim);
    TinyModel m;
    m.shape = s;
    m.embedding = random(static_cast<std::size_t>(s.vocab), h, 1.0);
    for (int l = 0; l < s.layers; ++l) {
        TinyLayer layer;
        layer.attention_norm = norm(h);
        // Scales 1/sqrt(fan_in), except Q and K a little larger, so that attention is far
        // from uniform and a wrong mask or position shows.
        layer.wq = random(q, h, 2.0 / std::sqrt(double(h)));
        layer.wk = random(kv, h, 2.0 / std::sqrt(double(h)));
        layer.wv = random(kv, h, 1.0 / std::sqrt(double(h)));
        layer.wo = random(h, q, 1.0 / std::sqrt(double(q)));
        layer.mlp_norm = norm(h);
        layer.gate = random(f, h, 1.0 / std::sqrt(double(h)));
        layer.up = random(f, h, 1.0 / std::sqrt(double(h)));
        layer.down = random(h, f, 1.0 / std::sqrt(double(f)));
        if (s.gemma2) {
            layer.post_attention_norm = norm(h);
            layer.post_mlp_norm = norm(h);
        }
        m.layers.push_back(std::move(layer));
    }
    m.final_norm = norm(h);
    m.lm_head = random(static_cast<std::size_t>(s.vocab), h, 1.0 / std::sqrt(double(h)));
    if (s.gemma2) {
        // Gemma 2 stores norm weights as w and scales by 1 + w: norms near 1 are stored near
        // 0. Its embeddings are tied.
        for (Weights* w : {&m.final_norm})
            for (double& x : *w)
                x = static_cast<float>(x - 1.0);
        for (TinyLayer& layer : m.layers)
            for (Weights* w : {&layer.attention_norm, &layer.mlp_norm, &layer.post_attention_norm,
                               &layer.post_mlp_norm})
                for (double& x : *w)
                    x = static_cast<float>(x - 1.0);
        m.lm_head = m.embedding;
    }
    return m;
}

std::filesystem::path scratch_dir(const std::string& name)
{
    const auto dir = std::filesystem::temp_directory_path() /
                     ("star_llama_forward_" + std::to_string(::getpid()) + "_" + name);
    std::filesystem::create_directories(dir);
    return dir;
}

// Hugging Face layout: config.json + model.safetensors (F32), rotate-half RoPE.
std::filesystem::path write_hf(const TinyModel& m, const std::string& name)
{
    const TinyShape& s = m.shape;
    const auto dir = scratch_dir(name);
    std::ofstream(dir / "config.json")
        << "{\"vocab_size\": " << s.vocab << ", \"hidden_size\": " << s.hidden
        << ", \"intermediate_size\": " << s.intermediate << ", \"num_hidden_layers\": " << s.layers
        << ", \"num_attention_heads\": " << s.heads << ", \"num_key_value_heads\": " << s.kv_heads
        << ", \"head_dim\": " << s.head_dim << ", \"rope_theta\": " << s.theta
        << ", \"rms_norm_eps\": " << s.eps
        << (s.gemma2 ? ", \"model_type\": \"gemma2\", \"hidden_activation\": "
                       "\"gelu_pytorch_tanh\", \"tie_word_embeddings\": true"
                     : ", \"tie_word_embeddings\": false")
        << (m.variants.config.empty() ? "" : ", ") << m.variants.config << "}";
    std::vector<llama::NamedTensor> tensors;
    const auto add = [&](const std::string& tensor, std::vector<std::int64_t> shape,
                         const Weights& w) {
        const std::vector<float> values(w.begin(), w.end());
        tensors.push_back(llama::f32_tensor(tensor, std::move(shape), values));
    };
    const std::int64_t h = s.hidden, f = s.intermediate, q = s.heads * s.head_dim,
                       kv = s.kv_heads * s.head_dim;
    add("model.embed_tokens.weight", {s.vocab, h}, m.embedding);
    for (int l = 0; l < s.layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        const TinyLayer& w = m.layers[static_cast<std::size_t>(l)];
        add(p + "input_layernorm.weight", {h}, w.attention_norm);
        add(p + "self_attn.q_proj.weight", {q, h}, w.wq);
        add(p + "self_attn.k_proj.weight", {kv, h}, w.wk);
        add(p + "self_attn.v_proj.weight", {kv, h}, w.wv);
        add(p + "self_attn.o_proj.weight", {h, q}, w.wo);
        if (s.gemma2) {
            add(p + "post_attention_layernorm.weight", {h}, w.post_attention_norm);
            add(p + "pre_feedforward_layernorm.weight", {h}, w.mlp_norm);
            add(p + "post_feedforward_layernorm.weight", {h}, w.post_mlp_norm);
        } else {
            add(p + "post_attention_layernorm.weight", {h}, w.mlp_norm);
        }
        add(p + "mlp.gate_proj.weight", {f, h}, w.gate);
        add(p + "mlp.up_proj.weight", {f, h}, w.up);
        add(p + "mlp.down_proj.weight", {h, f}, w.down);
    }
    add("model.norm.weight", {h}, m.final_norm);
    if (!s.gemma2)
        add("lm_head.weight", {s.vocab, h}, m.lm_head);
    llama::write_safetensors(dir / "model.safetensors", tensors);
    return dir;
}

// llama2.c layout: a header of 7 int32, then float32 weights kind by kind; interleaved RoPE,
// theta 10000, eps 1e-5, head_dim = hidden / heads.
std::filesystem::path write_llama2c(const TinyModel& m, const std::string& name)
{
    const TinyShape& s = m.shape;
    const auto file = scratch_dir(name) / "model.bin";
    std::ofstream out(file, std::ios::binary);
    const int seq_len = 64;
    const std::int32_t header[7] = {s.hidden, s.intermediate, s.layers,
                                    s.heads,  s.kv_heads,     -s.vocab /* separate classifier */,
                                    seq_len};
    out.write(reinterpret_cast<const char*>(header), sizeof header);
    const auto put = [&](const Weights& w) {
        for (const double x : w) {
            const auto f = static_cast<float>(x);
            out.write(reinterpret_cast<const char*>(&f), sizeof f);
        }
    };
    put(m.embedding);
    for (const auto member :
         {&TinyLayer::attention_norm, &TinyLayer::wq, &TinyLayer::wk, &TinyLayer::wv,
          &TinyLayer::wo, &TinyLayer::mlp_norm, &TinyLayer::gate, &TinyLayer::down, &TinyLayer::up})
        for (const TinyLayer& layer : m.layers)
            put(layer.*member);
    put(m.final_norm);
    put(Weights(static_cast<std::size_t>(seq_len * s.head_dim), 0.0)); // unused RoPE tables
    put(m.lm_head);
    return file;
}

// ---------------------------------------------------------------------------------------------
// The double-precision reference: naive loops, a visibility rule for attention.

// visible(i, j): does query position i see key position j (at every layer)?
using Visibility = std::function<bool(index, index)>;

Visibility causal()
{
    return [](index i, index j) { return j <= i; };
}

// Star's phase 1 as one mask (the paper, arXiv 2411.17116, section 2): a context token of block
// k > 0 sees the anchor [0, a) and its own block up to itself, block 0 is plain causal;
// tokens after the context (query, generated) see everything before them.
Visibility star_mask(index context, index block, index anchor)
{
    return [=](index i, index j) {
        if (j > i)
            return false;
        if (i >= context)
            return true;
        const index bi = i / block;
        return j / block == bi || (bi > 0 && j < anchor);
    };
}

// The previous-block anchor (the paper's ablation) as a mask: a context token of block k > 0
// sees all of block k - 1 and its own block up to itself. The backend runs phase 1 layer by
// layer over all blocks, so block k - 1's K/V at each layer are the ones its own tokens
// computed under this same mask.
Visibility previous_block_mask(index context, index block)
{
    return [=](index i, index j) {
        if (j > i)
            return false;
        if (i >= context)
            return true;
        const index bi = i / block, bj = j / block;
        return bj == bi || bj + 1 == bi;
    };
}

std::vector<double> matvec(const Weights& w, std::size_t rows, const std::vector<double>& x)
{
    std::vector<double> y(rows, 0.0);
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < x.size(); ++c)
            y[r] += w[r * x.size() + c] * x[c];
    return y;
}

// RMSNorm; Gemma 2 (`offset` 1) scales by 1 + w.
std::vector<double> rms(const std::vector<double>& x, const Weights& w, double eps,
                        double offset = 0.0)
{
    double ss = 0.0;
    for (const double v : x)
        ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / double(x.size()) + eps);
    std::vector<double> y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i)
        y[i] = x[i] * inv * (offset + w[i]);
    return y;
}

void rope(std::vector<double>& x, int heads, int d, index position, const TinyShape& s)
{
    for (int h = 0; h < heads; ++h)
        for (int i = 0; i < d / 2; ++i) {
            const double angle = double(position) * std::pow(s.theta, -2.0 * i / d);
            const bool half = s.rope == llama::RopeStyle::rotate_half;
            double& a = x[static_cast<std::size_t>(h * d + (half ? i : 2 * i))];
            double& b = x[static_cast<std::size_t>(h * d + (half ? i + d / 2 : 2 * i + 1))];
            const double a0 = a, b0 = b;
            a = a0 * std::cos(angle) - b0 * std::sin(angle);
            b = b0 * std::cos(angle) + a0 * std::sin(angle);
        }
}

// Logits [tokens][vocab] of every position.
std::vector<std::vector<double>> reference_logits(const TinyModel& m, const std::vector<int>& tokens,
                                                  const Visibility& visible)
{
    const TinyShape& s = m.shape;
    const auto n = tokens.size();
    const auto h = static_cast<std::size_t>(s.hidden);
    const int d = s.head_dim, group = s.heads / s.kv_heads;
    std::vector<std::vector<double>> x(n);
    for (std::size_t t = 0; t < n; ++t)
        x[t].assign(m.embedding.begin() + static_cast<long>(tokens[t] * h),
                    m.embedding.begin() + static_cast<long>((tokens[t] + 1) * h));
    const double offset = s.gemma2 ? 1.0 : 0.0; // Gemma 2's norms scale by 1 + w
    if (s.gemma2)
        for (auto& row : x)
            for (double& value : row)
                value *= std::sqrt(double(s.hidden));
    const TinyVariants& variants = m.variants;
    for (std::size_t l = 0; l < m.layers.size(); ++l) {
        const TinyLayer& w = m.layers[l];
        const index window = variants.windows.empty() ? 0 : variants.windows[l];
        // The layer's window on top of the visibility rule: key j in (i - window, i].
        const auto sees = [&](index i, index j) {
            return visible(i, j) && (window == 0 || i - j < window);
        };
        const double scale = variants.scale > 0.0 ? variants.scale : 1.0 / std::sqrt(double(d));
        std::vector<std::vector<double>> q(n), k(n), v(n);
        for (std::size_t t = 0; t < n; ++t) {
            const auto hn = rms(x[t], w.attention_norm, s.eps, offset);
            q[t] = matvec(w.wq, static_cast<std::size_t>(s.heads * d), hn);
            k[t] = matvec(w.wk, static_cast<std::size_t>(s.kv_heads * d), hn);
            v[t] = matvec(w.wv, static_cast<std::size_t>(s.kv_heads * d), hn);
            rope(q[t], s.heads, d, static_cast<index>(t), s);
            rope(k[t], s.kv_heads, d, static_cast<index>(t), s);
        }
        for (std::size_t i = 0; i < n; ++i) {
            std::vector<double> attended(static_cast<std::size_t>(s.heads * d), 0.0);
            for (int head = 0; head < s.heads; ++head) {
                const int kvh = head / group;
                std::vector<double> score(n, -INFINITY);
                double top = -INFINITY;
                for (std::size_t j = 0; j < n; ++j) {
                    if (!sees(static_cast<index>(i), static_cast<index>(j)))
                        continue;
                    double dot = 0.0;
                    for (int c = 0; c < d; ++c)
                        dot += q[i][static_cast<std::size_t>(head * d + c)] *
                               k[j][static_cast<std::size_t>(kvh * d + c)];
                    score[j] = dot * scale;
                    if (variants.attn_cap > 0.0)
                        score[j] = variants.attn_cap * std::tanh(score[j] / variants.attn_cap);
                    top = std::max(top, score[j]);
                }
                double sum = 0.0;
                for (std::size_t j = 0; j < n; ++j)
                    sum += std::isinf(score[j]) ? 0.0 : std::exp(score[j] - top);
                for (std::size_t j = 0; j < n; ++j) {
                    if (std::isinf(score[j]))
                        continue;
                    const double p = std::exp(score[j] - top) / sum;
                    for (int c = 0; c < d; ++c)
                        attended[static_cast<std::size_t>(head * d + c)] +=
                            p * v[j][static_cast<std::size_t>(kvh * d + c)];
                }
            }
            auto o = matvec(w.wo, h, attended);
            if (s.gemma2)
                o = rms(o, w.post_attention_norm, s.eps, offset);
            for (std::size_t c = 0; c < h; ++c)
                x[i][c] += o[c];
        }
        for (std::size_t t = 0; t < n; ++t) {
            const auto hn = rms(x[t], w.mlp_norm, s.eps, offset);
            const auto g = matvec(w.gate, static_cast<std::size_t>(s.intermediate), hn);
            auto u = matvec(w.up, static_cast<std::size_t>(s.intermediate), hn);
            for (std::size_t c = 0; c < u.size(); ++c) {
                const double x3 = g[c] * g[c] * g[c];
                u[c] *= s.gemma2 ? 0.5 * g[c] *
                                       (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) *
                                                        (g[c] + 0.044715 * x3)))
                                 : g[c] / (1.0 + std::exp(-g[c]));
            }
            auto down = matvec(w.down, h, u);
            if (s.gemma2)
                down = rms(down, w.post_mlp_norm, s.eps, offset);
            for (std::size_t c = 0; c < h; ++c)
                x[t][c] += down[c];
        }
    }
    std::vector<std::vector<double>> logits(n);
    for (std::size_t t = 0; t < n; ++t) {
        logits[t] = matvec(m.lm_head, static_cast<std::size_t>(s.vocab),
                           rms(x[t], m.final_norm, s.eps, offset));
        if (variants.final_cap > 0.0)
            for (double& z : logits[t])
                z = variants.final_cap * std::tanh(z / variants.final_cap);
    }
    return logits;
}

// ---------------------------------------------------------------------------------------------
// Running the float forward pass the way the example does.

std::vector<int> random_tokens(int count, int vocab, unsigned seed)
{
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> pick(0, vocab - 1);
    std::vector<int> tokens(static_cast<std::size_t>(count));
    for (int& t : tokens)
        t = pick(rng);
    return tokens;
}

// Logits of every position: the first `context` tokens as the context (phase 1), then the
// next `query` tokens as one phase-2 call, then the rest one token at a time (decoding).
llama::Matrix run(const llama::Model& model, const std::string& setting,
                  const std::vector<int>& tokens, index context, index query)
{
    llama::Sequence seq(model,
                        llama::make_backend(llama::parse_setting(setting), model.config, context));
    const std::span<const int> all(tokens);
    llama::Matrix logits(static_cast<index>(tokens.size()), model.config.vocab_size);
    const auto c = static_cast<std::size_t>(context);
    logits.topRows(context) = seq.encode_context(all.first(c), llama::Logits::all);
    if (query > 0)
        logits.middleRows(context, query) =
            seq.append(all.subspan(c, static_cast<std::size_t>(query)), llama::Logits::all);
    for (index t = context + query; t < static_cast<index>(tokens.size()); ++t)
        logits.row(t) = seq.append(all.subspan(static_cast<std::size_t>(t), 1), llama::Logits::all);
    EXPECT_EQ(seq.tokens(), static_cast<index>(tokens.size()));
    return logits;
}

double max_difference(const llama::Matrix& a, const std::vector<std::vector<double>>& b)
{
    double worst = 0.0;
    for (index t = 0; t < a.rows(); ++t)
        for (index v = 0; v < a.cols(); ++v) {
            const double d = std::abs(double(a(t, v)) -
                                      b[static_cast<std::size_t>(t)][static_cast<std::size_t>(v)]);
            worst = std::isnan(d) ? INFINITY : std::max(worst, d);
        }
    return worst;
}

double max_difference(const llama::Matrix& a, const llama::Matrix& b)
{
    if (a.rows() != b.rows() || a.cols() != b.cols())
        return INFINITY;
    const double d = (a - b).cwiseAbs().maxCoeff();
    return std::isnan(d) ? INFINITY : d;
}

constexpr double tolerance = 1e-4;

struct Case {
    const char* name;
    TinyShape shape;
};

// Test names show the case's name rather than its bytes.
void PrintTo(const Case& c, std::ostream* out) { *out << c.name; }

class ForwardVsReference : public ::testing::TestWithParam<Case> {};

// Writes the model in its format, loads it back and deletes the files.
llama::Model load_written(const TinyModel& m, const std::string& name)
{
    const bool hf = m.shape.rope == llama::RopeStyle::rotate_half;
    const std::filesystem::path path = hf ? write_hf(m, name) : write_llama2c(m, name);
    llama::Model model = llama::load_model(path);
    std::filesystem::remove_all(hf ? path : path.parent_path());
    return model;
}

TEST_P(ForwardVsReference, GlobalForwardEqualsDoublePrecisionReference)
{
    const TinyModel tiny = random_model(GetParam().shape, 11);
    const llama::Model model = load_written(tiny, GetParam().name);
    ASSERT_EQ(model.config.rope, GetParam().shape.rope);
    const std::vector<int> tokens = random_tokens(29, tiny.shape.vocab, 5);
    const auto expected = reference_logits(tiny, tokens, causal());
    // All at once as a context, and split into context, query and decode steps.
    EXPECT_LT(max_difference(run(model, "global", tokens, 29, 0), expected), tolerance);
    EXPECT_LT(max_difference(run(model, "global", tokens, 17, 5), expected), tolerance);
}

TEST_P(ForwardVsReference, DecodingWithTheCacheEqualsOneFullForward)
{
    const TinyModel tiny = random_model(GetParam().shape, 12);
    const llama::Model model = load_written(tiny, GetParam().name);
    const std::vector<int> tokens = random_tokens(31, tiny.shape.vocab, 6);
    llama::Sequence whole(model,
                          llama::make_backend(llama::parse_setting("global"), model.config, 31));
    const llama::Matrix once = whole.encode_context(tokens, llama::Logits::all);
    EXPECT_LT(max_difference(run(model, "global", tokens, 9, 1), once), tolerance);
    EXPECT_LT(max_difference(run(model, "global", tokens, 1, 12), once), tolerance);
}

TEST_P(ForwardVsReference, RingAndSingleBlockStarEqualGlobal)
{
    const TinyModel tiny = random_model(GetParam().shape, 13);
    const llama::Model model = load_written(tiny, GetParam().name);
    const std::vector<int> tokens = random_tokens(33, tiny.shape.vocab, 7);
    const llama::Matrix global = run(model, "global", tokens, 23, 4);
    // Star with one block (b = L) has nothing to approximate, on one host or several (the
    // extra hosts hold no block); ring is exact with any number of hosts, even more hosts
    // than context tokens (some hosts then hold nothing).
    for (const char* setting :
         {"star:b=L", "star:b=L:hosts=1", "star:b=L:hosts=3", "star:b=L:hosts=2:merge=tree",
          "ring:hosts=1", "ring:hosts=2", "ring:hosts=3", "ring:hosts=4:layout=zigzag",
          "ring:hosts=16", "ring:hosts=32"}) {
        SCOPED_TRACE(setting);
        EXPECT_LT(max_difference(run(model, setting, tokens, 23, 4), global), tolerance);
    }
}

TEST_P(ForwardVsReference, StarEqualsBlockSparseDoublePrecisionForward)
{
    const TinyModel tiny = random_model(GetParam().shape, 14);
    const llama::Model model = load_written(tiny, GetParam().name);
    const index context = 23, query = 4, decoded = 3;
    const std::vector<int> tokens = random_tokens(context + query + decoded, tiny.shape.vocab, 8);
    struct Star {
        const char* setting;
        index block, anchor;
    };
    for (const Star& s :
         {Star{"star:b=5:hosts=3", 5, 5},
          Star{"star:b=5:a=3:hosts=2:partition=round-robin:merge=tree", 5, 3},
          Star{"star:b=L/4:partition=balanced:merge=all-gather", 6, 6},
          Star{"star:b=7:anchor=none:hosts=4", 7, 0},
          Star{"star:b=4:anchor=sinks:a=2:hosts=5", 4, 2}, Star{"star:b=8:hosts=1", 8, 8}}) {
        SCOPED_TRACE(s.setting);
        const auto expected = reference_logits(tiny, tokens, star_mask(context, s.block, s.anchor));
        EXPECT_LT(max_difference(run(model, s.setting, tokens, context, query), expected),
                  tolerance);
    }
    // The approximation is real: the block-sparse logits are not the causal ones.
    const auto exact = reference_logits(tiny, tokens, causal());
    EXPECT_GT(max_difference(run(model, "star:b=5:hosts=3", tokens, context, query), exact), 1e-2);
}

// anchor=previous is its own mask, not one of the others: a setting that silently ran
// without anchor (or with the first block) would match a different reference. The three
// references differ by far more than the tolerance, so the check can tell them apart.
TEST_P(ForwardVsReference, PreviousBlockAnchorEqualsItsMaskNotTheOthers)
{
    const TinyModel tiny = random_model(GetParam().shape, 16);
    const llama::Model model = load_written(tiny, GetParam().name);
    const index context = 23, query = 4, block = 5;
    const std::vector<int> tokens = random_tokens(context + query, tiny.shape.vocab, 9);
    const auto previous = reference_logits(tiny, tokens, previous_block_mask(context, block));
    const auto none = reference_logits(tiny, tokens, star_mask(context, block, 0));
    const auto first = reference_logits(tiny, tokens, star_mask(context, block, block));
    for (const char* setting : {"star:b=5:anchor=previous", "star:b=5:anchor=previous:hosts=2",
                                "star:b=5:anchor=previous:hosts=3:partition=round-robin"}) {
        SCOPED_TRACE(setting);
        const llama::Matrix logits = run(model, setting, tokens, context, query);
        EXPECT_LT(max_difference(logits, previous), tolerance);
        EXPECT_GT(max_difference(logits, none), 1e-2);
        EXPECT_GT(max_difference(logits, first), 1e-2);
    }
    EXPECT_EQ(llama::make_backend(llama::parse_setting("star:b=5:anchor=previous"),
                                  llama::plain_attention(3), context)
                  ->describe(),
              "star b=5 anchor=previous");
}

INSTANTIATE_TEST_SUITE_P(
    TinyModels, ForwardVsReference,
    ::testing::Values(
        // Hugging Face, rotate-half RoPE, GQA 3:1, q width 24 != hidden 20, odd sizes.
        Case{"hf_gqa", TinyShape{}},
        // Multi-query attention (one KV head), every size odd but head_dim.
        Case{"hf_mqa",
             TinyShape{37, 15, 23, 2, 5, 1, 6, 500000.0, 1e-6, llama::RopeStyle::rotate_half}},
        // llama2.c, interleaved RoPE, GQA 2:1 (as stories260K), head_dim = hidden / heads.
        Case{"llama2c_gqa",
             TinyShape{43, 24, 29, 2, 4, 2, 6, 10000.0, 1e-5, llama::RopeStyle::interleaved}},
        // llama2.c with plain multi-head attention.
        Case{"llama2c_mha",
             TinyShape{19, 16, 21, 3, 2, 2, 8, 10000.0, 1e-5, llama::RopeStyle::interleaved}}),
    [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

// ---------------------------------------------------------------------------------------------
// Attention variants read from config.json: the forward pass against the same reference with
// each layer's window, the attention soft cap, the final soft cap and the softmax scale.
//
// Tolerance: the same 1e-4 as above, for the same reason. A window only removes terms from
// the sums, and tanh has slope at most 1, so the caps do not amplify the float rounding of
// their inputs (cap * tanh(x / cap) moves by at most as much as x); the scale is one more
// rounded factor. Measured: at most 4.6e-6 on these cases (1.9e-6 for the exact
// previous-block run), a margin of 20x. A variant that is ignored or misplaced moves logits
// by far more: each case checks that the same model without its variant differs by more
// than 1e-2 (measured 2.8 to 3.9).

struct VariantCase {
    const char* name;
    TinyVariants variants;
    // The same model without the case's variant, which the logits must differ from.
    TinyVariants without;
};

void PrintTo(const VariantCase& c, std::ostream* out) { *out << c.name; }

class VariantForward : public ::testing::TestWithParam<VariantCase> {};

// The context, query and decoded tokens of every variant test: longer than every window, and
// cut into blocks of 4 to 7 tokens by the Star settings.
constexpr index variant_context = 23, variant_query = 4, variant_decoded = 2;

TinyModel variant_model(const VariantCase& c, unsigned seed)
{
    TinyModel tiny = random_model(TinyShape{}, seed); // 3 layers
    tiny.variants = c.variants;
    return tiny;
}

TEST_P(VariantForward, GlobalRingAndSingleBlockStarEqualTheExactReference)
{
    const TinyModel tiny = variant_model(GetParam(), 21);
    const llama::Model model = load_written(tiny, GetParam().name);
    const std::vector<int> tokens =
        random_tokens(variant_context + variant_query + variant_decoded, tiny.shape.vocab, 31);
    const auto expected = reference_logits(tiny, tokens, causal());
    for (const char* setting :
         {"global", "ring:hosts=3", "ring:hosts=4:layout=zigzag", "star:b=L:hosts=2"}) {
        SCOPED_TRACE(setting);
        EXPECT_LT(
            max_difference(run(model, setting, tokens, variant_context, variant_query), expected),
            tolerance);
    }
    // The whole text as one context, and a context of one token then decoding.
    const index all = static_cast<index>(tokens.size());
    EXPECT_LT(max_difference(run(model, "global", tokens, all, 0), expected), tolerance);
    EXPECT_LT(max_difference(run(model, "global", tokens, 1, 0), expected), tolerance);

    // The variant is real: without it the logits are not these.
    TinyModel plain = tiny;
    plain.variants = GetParam().without;
    EXPECT_GT(max_difference(run(model, "global", tokens, variant_context, variant_query),
                             reference_logits(plain, tokens, causal())),
              1e-2);
}

// Star's phase 1 under a variant (docs/guides/variants.md): a block's query sees the keys of
// its block and its anchor that its window holds, every visible score capped; phase 2 is
// exact. So the reference is the block-sparse mask intersected with each layer's window.
TEST_P(VariantForward, StarEqualsBlockSparseReferenceUnderTheVariant)
{
    const TinyModel tiny = variant_model(GetParam(), 22);
    const llama::Model model = load_written(tiny, GetParam().name);
    const index context = variant_context;
    const std::vector<int> tokens =
        random_tokens(context + variant_query + variant_decoded, tiny.shape.vocab, 32);
    struct Star {
        const char* setting;
        Visibility mask;
    };
    for (const Star& s :
         {Star{"star:b=5:hosts=3", star_mask(context, 5, 5)},
          Star{"star:b=5:a=3:hosts=2:partition=round-robin:merge=tree", star_mask(context, 5, 3)},
          Star{"star:b=L/4:partition=balanced:merge=all-gather", star_mask(context, 6, 6)},
          Star{"star:b=7:anchor=none:hosts=4", star_mask(context, 7, 0)},
          Star{"star:b=4:anchor=sinks:a=2:hosts=5", star_mask(context, 4, 2)},
          Star{"star:b=5:anchor=previous:hosts=2", previous_block_mask(context, 5)}}) {
        SCOPED_TRACE(s.setting);
        EXPECT_LT(max_difference(run(model, s.setting, tokens, context, variant_query),
                                 reference_logits(tiny, tokens, s.mask)),
                  tolerance);
    }
    // These references are not the exact one: the check tells phase 1 from exact attention.
    EXPECT_GT(max_difference(run(model, "star:b=5:hosts=3", tokens, context, variant_query),
                             reference_logits(tiny, tokens, causal())),
              1e-2);
}

INSTANTIATE_TEST_SUITE_P(
    TinyModels, VariantForward,
    ::testing::Values(
        // (a) Mistral: one window on every layer, smaller than the context and the blocks.
        VariantCase{"window_every_layer",
                    {"\"model_type\": \"mistral\", \"sliding_window\": 4", {4, 4, 4}},
                    {}},
        // Qwen2: the window on the layers from max_window_layers on.
        VariantCase{"qwen2_window_from_layer_1",
                    {"\"model_type\": \"qwen2\", \"use_sliding_window\": true, "
                     "\"sliding_window\": 3, \"max_window_layers\": 1",
                     {0, 3, 3}},
                    {}},
        // (b) Gemma 2/3 style: layer_types alternates sliding and full layers.
        VariantCase{"layer_types_alternate",
                    {"\"sliding_window\": 3, \"layer_types\": [\"sliding_attention\", "
                     "\"full_attention\", \"sliding_attention\"]",
                     {3, 0, 3}},
                    {}},
        // (c) The attention logits capped on every layer and the output logits capped, with
        // Gemma 2's softmax scale 1/sqrt(query_pre_attn_scalar).
        VariantCase{"soft_caps_and_scale",
                    {"\"attn_logit_softcapping\": 1.5, \"final_logit_softcapping\": 2.0, "
                     "\"query_pre_attn_scalar\": 2",
                     {},
                     1.5,
                     2.0,
                     1.0 / std::sqrt(2.0)},
                    {"", {}, 0.0, 0.0, 1.0 / std::sqrt(2.0)}},
        // Everything at once: capped sliding layers beside capped full ones.
        VariantCase{"caps_with_alternating_windows",
                    {"\"sliding_window\": 4, \"attn_logit_softcapping\": 1.5, "
                     "\"final_logit_softcapping\": 2.0, \"layer_types\": [\"full_attention\", "
                     "\"sliding_attention\", \"full_attention\"]",
                     {0, 4, 0},
                     1.5,
                     2.0},
                    {"", {0, 4, 0}, 0.0, 0.0}}),
    [](const ::testing::TestParamInfo<VariantCase>& info) { return std::string(info.param.name); });

// A window at least as long as the whole text hides nothing: the same logits as no window,
// for every kind of attention (the window counts positions in phase 2 too).
TEST(VariantForwardWindow, WindowLongerThanTheTextChangesNothing)
{
    TinyModel tiny = random_model(TinyShape{}, 23);
    const llama::Model plain = load_written(tiny, "plain_for_window");
    tiny.variants.config = "\"sliding_window\": 29";
    const llama::Model windowed = load_written(tiny, "window_29");
    ASSERT_EQ(windowed.config.window_of(2), 29);
    const std::vector<int> tokens = random_tokens(29, tiny.shape.vocab, 33);
    for (const char* setting :
         {"global", "ring:hosts=3", "star:b=6:hosts=2", "star:b=5:anchor=previous"}) {
        SCOPED_TRACE(setting);
        EXPECT_LT(max_difference(run(windowed, setting, tokens, 20, 3),
                                 run(plain, setting, tokens, 20, 3)),
                  tolerance);
    }
}

// With the previous block as anchor and blocks of at least window - 1 tokens, phase 1 is
// exact sliding-window attention (docs/guides/variants.md): Star equals global.
TEST(VariantForwardWindow, PreviousBlockAnchorIsExactForAShortWindow)
{
    TinyModel tiny = random_model(TinyShape{}, 24);
    tiny.variants = {"\"sliding_window\": 5", {5, 5, 5}};
    const llama::Model model = load_written(tiny, "previous_exact");
    const std::vector<int> tokens = random_tokens(27, tiny.shape.vocab, 34);
    const auto expected = reference_logits(tiny, tokens, causal());
    EXPECT_LT(max_difference(run(model, "star:b=4:anchor=previous:hosts=3", tokens, 22, 3), expected),
              tolerance);
    // The paper's first-block anchor is not: its late blocks lose the keys before them.
    EXPECT_GT(max_difference(run(model, "star:b=4:hosts=3", tokens, 22, 3), expected), 1e-2);
}

// Gemma 2: its architecture (post norms, 1 + w norm weights, GeGLU, scaled and tied
// embeddings) with its variants, alternate layers sliding by default (no layer_types).
TEST(Gemma2Forward, EqualsTheReferenceUnderGlobalRingAndStar)
{
    TinyShape shape;
    shape.gemma2 = true;
    TinyModel tiny = random_model(shape, 25);
    tiny.variants = {"\"sliding_window\": 4, \"attn_logit_softcapping\": 1.5, "
                     "\"final_logit_softcapping\": 2.0, \"query_pre_attn_scalar\": 2",
                     {4, 0, 4},
                     1.5,
                     2.0,
                     1.0 / std::sqrt(2.0)};
    const llama::Model model = load_written(tiny, "gemma2");
    ASSERT_EQ(model.config.family, llama::Family::gemma2);
    const index context = 23, query = 4;
    const std::vector<int> tokens = random_tokens(context + query + 2, tiny.shape.vocab, 35);
    const auto exact = reference_logits(tiny, tokens, causal());
    for (const char* setting : {"global", "ring:hosts=3", "star:b=L:hosts=2"}) {
        SCOPED_TRACE(setting);
        EXPECT_LT(max_difference(run(model, setting, tokens, context, query), exact), tolerance);
    }
    EXPECT_LT(max_difference(run(model, "star:b=5:hosts=3", tokens, context, query),
                             reference_logits(tiny, tokens, star_mask(context, 5, 5))),
              tolerance);
    // The architecture is real: the same weights as a Llama give other logits.
    TinyModel as_llama = tiny;
    as_llama.shape.gemma2 = false;
    EXPECT_GT(max_difference(run(model, "global", tokens, context, query),
                             reference_logits(as_llama, tokens, causal())),
              1e-2);
}

// What the backends say they run names each layer's variant.
TEST(VariantForwardWindow, BackendsDescribeTheLayersVariants)
{
    llama::Config c;
    c.layers = 3;
    c.sliding_window = {4, 0, 4};
    c.attn_logit_softcapping = 50.0f;
    EXPECT_EQ(llama::make_backend(llama::parse_setting("global"), c, 10)->describe(),
              "global (layers 0 window 4, cap 50, 1 cap 50, 2 window 4, cap 50)");
    c.sliding_window.clear();
    c.attn_logit_softcapping.reset();
    EXPECT_EQ(llama::make_backend(llama::parse_setting("ring:hosts=2"), c, 10)->describe(),
              "ring hosts=2 plain");
}

// ---------------------------------------------------------------------------------------------
// Settings, agreement and errors.

TEST(AttentionSettings, ParseTheDocumentedSyntax)
{
    const auto s =
        llama::parse_setting("star:b=L/8:anchor=sinks:a=16:hosts=3:partition=balanced:merge=tree");
    EXPECT_EQ(s.kind, llama::AttentionSetting::Kind::star);
    EXPECT_EQ(s.block.resolve(1000), 125);
    EXPECT_EQ(s.anchor, llama::AttentionSetting::AnchorKind::sinks);
    EXPECT_EQ(s.anchor_size->resolve(1000), 16);
    EXPECT_EQ(*s.hosts, 3);
    EXPECT_EQ(s.partition, llama::AttentionSetting::PartitionKind::balanced);
    EXPECT_EQ(s.merge, llama::AttentionSetting::MergeKind::tree);
    EXPECT_EQ(llama::parse_setting("star").block.resolve(2041), 511); // L/4 rounds up
    const auto list = llama::parse_settings("global,ring:hosts=2:layout=zigzag,star:b=512");
    ASSERT_EQ(list.size(), 3u);
    EXPECT_EQ(list[1].ring_layout, star::RingLayout::zigzag);
    EXPECT_EQ(list[2].block.resolve(4096), 512);
    const auto backend = llama::make_backend(list[2], llama::plain_attention(2), 4096);
    EXPECT_EQ(backend->describe(), "star b=512 a=512");
}

TEST(AttentionSettings, RejectBadTextWithAMessage)
{
    for (const char* bad :
         {"", "glob", "star:b=0", "star:b=L/0", "star:b=-3", "star:b=4x", "star:anchor=last",
          "star:a=4:anchor=none", "ring:b=4", "global:hosts=2", "star:hosts=0",
          "ring:layout=spiral", "star:b", "star:partition=random", "star:merge=ring", "global,"}) {
        SCOPED_TRACE(bad);
        EXPECT_THROW(llama::parse_settings(bad), llama::setting_error);
    }
}

TEST(Agreement, IdenticalLogitsAgreeWithZeroDivergence)
{
    llama::Matrix a = llama::Matrix::Random(5, 9);
    llama::Matrix b = a;
    const auto same = llama::compare(a, b);
    EXPECT_EQ(same.positions, 5);
    EXPECT_EQ(same.agreeing, 5);
    EXPECT_NEAR(same.mean_kl(), 0.0, 1e-12);
    b.row(2).setZero();
    b(2, 0) = 100.0f; // a confident different choice
    const auto different = llama::compare(a, b);
    EXPECT_GT(different.mean_kl(), 1.0);
    EXPECT_LE(different.agreeing, 5);
}

// logits --reference: a NaN difference compares false with everything, so a running
// maximum let the next finite difference replace it and the run passed.
TEST(LogitsCheck, NonFiniteLogitFailsWhateverFollows)
{
    const llama::Matrix logits = llama::Matrix::Constant(4, 3, 1.0f);
    std::vector<float> reference(12, 1.0f);
    reference[11] = 1.5f; // a finite difference after the non-finite one
    EXPECT_TRUE(llama::check_logits(logits, reference).within(1.0));

    const float nan = std::numeric_limits<float>::quiet_NaN();
    const float inf = std::numeric_limits<float>::infinity();
    struct Case {
        float value, expected;
    };
    for (const Case c : {Case{nan, 1.0f}, Case{1.0f, nan}, Case{nan, nan}, Case{inf, 1.0f},
                         Case{1.0f, -inf}, Case{inf, -inf}}) {
        SCOPED_TRACE(std::to_string(c.value) + " against " + std::to_string(c.expected));
        llama::Matrix run = logits;
        run(1, 2) = c.value;
        std::vector<float> ref = reference;
        ref[5] = c.expected;
        const llama::LogitsCheck check = llama::check_logits(run, ref);
        EXPECT_FALSE(check.within(1.0));
        EXPECT_FALSE(check.within(std::numeric_limits<double>::infinity()));
        const std::string message = check.describe(1.0);
        EXPECT_NE(message.find("position 1, vocabulary entry 2"), std::string::npos) << message;
        EXPECT_NE(message.find("not finite"), std::string::npos) << message;
    }
    // The same infinity on both sides is agreement, not a difference of NaN.
    llama::Matrix run = logits;
    run(2, 0) = -inf;
    std::vector<float> ref = reference;
    ref[6] = -inf;
    const llama::LogitsCheck same = llama::check_logits(run, ref);
    EXPECT_TRUE(same.within(1.0));
    EXPECT_EQ(same.max_position, 3);
    EXPECT_DOUBLE_EQ(same.max_difference, 0.5);
}

// Needle sets: a field the reader cannot use exactly is an error naming it, and a set with
// no samples is an error rather than an empty table that exits 0.
TEST(NeedleSet, RejectsEmptySetsAndLengthsThatAreNotSmallWholeNumbers)
{
    const std::filesystem::path path =
        std::filesystem::temp_directory_path() /
        ("star-llama-needles-" + std::to_string(::getpid()) + ".jsonl");
    const auto expect_error = [&](const std::string& text, const std::string& fragment) {
        std::ofstream(path) << text;
        try {
            llama::read_needles(path.string());
            ADD_FAILURE() << "no error for " << text;
        } catch (const std::runtime_error& e) {
            EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos)
                << "'" << e.what() << "' does not mention '" << fragment << "'";
        }
    };
    const std::string rest = R"(, "context": "c", "question": "q", "answer": "a"})";
    expect_error("", "no needle samples");
    expect_error("\n  \n", "no needle samples");
    expect_error(R"({"length": 9223372036854775807)" + rest,
                 ":1: field length is 9223372036854775807, expected a whole number in [1, ");
    expect_error(R"({"length": 18446744073709551615)" + rest,
                 "field length is 18446744073709551615");
    expect_error(R"({"length": 2048.9)" + rest, "field length is 2048.9");
    expect_error(R"({"length": 2048.0)" + rest, "field length is 2048.0");
    expect_error(R"({"length": "2048")" + rest, "field length is \"2048\"");
    expect_error(R"({"length": 0)" + rest, "field length is 0");
    expect_error(R"({"length": -5)" + rest, "field length is -5");
    expect_error(R"({"context": "c", "question": "q", "answer": "a"})", "field length is missing");
    expect_error(R"({"length": 2048)" + rest + "\n[1]", ":2: expected a JSON object");
    expect_error(R"({"length": 2048, "length": 4096)" + rest, "key \"length\" appears twice");
    expect_error(std::string(100'000, '[') + std::string(100'000, ']'),
                 "nested more than 64 levels deep");

    std::ofstream(path) << R"({"length": 1073741824, "depth": 0.5)" << rest << "\n";
    const auto samples = llama::read_needles(path.string());
    ASSERT_EQ(samples.size(), 1u);
    EXPECT_EQ(samples[0].length, llama::index{1} << 30);
    std::filesystem::remove(path);
}

TEST(SequenceErrors, BadTokensAndOrderAreRejected)
{
    const TinyModel tiny = random_model(TinyShape{}, 15);
    const llama::Model model = load_written(tiny, "errors");
    llama::Sequence seq(
        model, llama::make_backend(llama::parse_setting("star:b=2"), llama::plain_attention(3), 8));
    const std::vector<int> out_of_range{1, 2, 41};
    EXPECT_THROW(seq.encode_context(out_of_range), std::out_of_range);
    const std::vector<int> negative{-1};
    EXPECT_THROW(seq.encode_context(negative), std::out_of_range);
    const std::vector<int> good{1, 2, 3};
    EXPECT_THROW(seq.append(good), std::logic_error); // no context yet
    EXPECT_THROW(seq.encode_context({}), std::invalid_argument);
    seq.encode_context(good);
    EXPECT_THROW(seq.encode_context(good), std::logic_error); // a second context
    EXPECT_EQ(seq.append(good).rows(), 1);
    EXPECT_EQ(seq.tokens(), 6);
}

} // namespace
