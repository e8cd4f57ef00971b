#pragma once
// The weights of a Llama-architecture model, held in float32 whatever their stored type.
// Filled by the loaders (load.hpp); read by the forward pass (forward.hpp).

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <Eigen/Core>

namespace llama {

// Row-major so that a weight stored as [out_features, in_features] (the Hugging Face and
// llama2.c layout) maps without a transpose: y = x * W^T for x of shape [tokens, in].
using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vector = Eigen::VectorXf;

// The MLP's gate activation: SwiGLU (Llama) or GeGLU with tanh-approximated GELU (Gemma 2,
// gelu_pytorch_tanh).
enum class Activation { silu, gelu_tanh };

// The architecture around attention: Llama's (also Mistral's and Qwen2's), or Gemma 2's
// (post-attention and post-MLP RMSNorms, norm weights stored as w and used as 1 + w, GeGLU,
// embeddings scaled by sqrt(hidden_size), tied embeddings by default).
enum class Family { llama, gemma2 };

// How RoPE pairs the dimensions of a head.
enum class RopeStyle {
    rotate_half, // Hugging Face: dimension i pairs with i + head_dim/2
    interleaved, // llama2.c / Meta: dimension 2i pairs with 2i + 1
};

struct Config {
    int vocab_size = 0;
    int hidden_size = 0;
    int intermediate_size = 0;
    int layers = 0;
    int heads = 0;
    int kv_heads = 0;
    int head_dim = 0;
    float rope_theta = 10000.0f;
    float rms_norm_eps = 1e-5f;
    int max_positions = 0; // trained context length; 0 if unknown
    RopeStyle rope = RopeStyle::rotate_half;
    Family family = Family::llama;
    Activation activation = Activation::silu;
    float embedding_scale = 1.0f; // the embeddings are multiplied by it (Gemma 2: sqrt(hidden))

    // Attention variants (load.hpp reads them from config.json; the forward pass hands each
    // layer's to the library as a star::Variant policy, attention_backend.hpp).
    // The sliding window of each layer in tokens (a query at p sees the keys of
    // (p - w, p], itself included), 0 for plain causal attention. Empty: every layer plain.
    std::vector<std::int64_t> sliding_window;
    std::optional<float> attn_logit_softcapping;  // scores -> cap * tanh(score / cap)
    std::optional<float> final_logit_softcapping; // logits -> cap * tanh(logits / cap)
    std::optional<float> query_pre_attn_scalar; // softmax scale 1/sqrt(this), else 1/sqrt(head_dim)

    // The window of layer `layer`, 0 for none.
    [[nodiscard]] std::int64_t window_of(int layer) const
    {
        return sliding_window.empty() ? 0 : sliding_window.at(static_cast<std::size_t>(layer));
    }
};

struct LayerWeights {
    Vector attention_norm; // [hidden]
    Matrix wq;             // [heads * head_dim, hidden]
    Matrix wk;             // [kv_heads * head_dim, hidden]
    Matrix wv;             // [kv_heads * head_dim, hidden]
    Matrix wo;             // [hidden, heads * head_dim]
    Vector mlp_norm;       // [hidden]
    Matrix w_gate;         // [intermediate, hidden]
    Matrix w_up;           // [intermediate, hidden]
    Matrix w_down;         // [hidden, intermediate]
    // Gemma 2 only (empty otherwise): RMSNorms of the attention's and the MLP's outputs,
    // before each is added to the residual stream.
    Vector post_attention_norm; // [hidden]
    Vector post_mlp_norm;       // [hidden]
};

struct Model {
    Config config;
    Matrix embedding; // [vocab, hidden]
    std::vector<LayerWeights> layers;
    Vector final_norm; // [hidden]
    Matrix lm_head;    // [vocab, hidden] (a copy of `embedding` when the model ties them)
};

} // namespace llama
