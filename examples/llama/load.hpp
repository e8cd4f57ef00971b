#pragma once
// Loading a Llama-architecture model into llama::Model (model.hpp) from the two checkpoint
// formats small Llama models are distributed in:
//
//   load_hf(dir)        Hugging Face layout: dir/config.json + dir/model.safetensors
//   load_llama2c(file)  Karpathy's llama2.c checkpoint: a 7-int32 header, then float32 weights
//   load_model(path)    a directory is read as Hugging Face, a regular file as llama2.c
//
// Every weight is converted to float32 whatever its stored type. Every check a checkpoint can
// fail (a missing key, a tensor whose shape the config contradicts, a truncated file) throws
// llama::load_error with a message that starts with the file and names the key or tensor.

#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "input.hpp"
#include "model.hpp"
#include "safetensors.hpp"

namespace llama {

// The JSON document in `path`. A file that cannot be opened or parsed is a load_error
// naming it: "<path>: cannot open", "<path>: not valid JSON (...)", "<path>: JSON nested
// more than 64 levels deep", "<path>: key "k" appears twice in one object".
inline nlohmann::json read_json_file(const std::filesystem::path& path)
{
    require_regular_file<load_error>(path);
    std::ifstream in(path);
    if (!in)
        throw load_error(detail::message(path.string(), ": cannot open"));
    try {
        return parse_json(in);
    } catch (const json_error& e) {
        throw load_error(detail::message(path.string(), ": ", e.what()));
    }
}

namespace detail {

// The keys of a Hugging Face config.json, read with the same defaults as transformers'
// LlamaConfig; each error names the file and the key.
class JsonConfig {
public:
    explicit JsonConfig(std::filesystem::path path)
        : path_(std::move(path)), json_(read_json_file(path_))
    {
        if (!json_.is_object())
            fail("not a JSON object");
    }

    // A key counts as absent when it is null: transformers writes e.g. "rope_scaling": null.
    bool has(const char* key) const { return json_.contains(key) && !json_.at(key).is_null(); }

    const nlohmann::json& at(const char* key) const { return json_.at(key); }

    // Whether the key is written at all, null included (Gemma 2's defaults apply only to
    // absent keys: a null cap means no cap).
    bool present(const char* key) const { return json_.contains(key); }

    const std::filesystem::path& path() const { return path_; }

    int positive_int(const char* key) const
    {
        if (!has(key))
            fail("key ", key, json_.contains(key) ? " is null" : " is missing");
        return int_at_least(key, 1, "a positive integer");
    }

    int positive_int(const char* key, int fallback) const
    {
        return has(key) ? positive_int(key) : fallback;
    }

    // A non-negative integer (max_window_layers may be 0: every layer slides).
    int non_negative_int(const char* key, int fallback) const
    {
        return has(key) ? int_at_least(key, 0, "a non-negative integer") : fallback;
    }

    // The integer at `key`, which is there, from `least` to int's largest; `expected` names
    // that range in the error.
    int int_at_least(const char* key, std::int64_t least, const char* expected) const
    {
        const nlohmann::json& value = json_.at(key);
        std::optional<std::int64_t> n;
        if (value.is_number_unsigned()) {
            if (value.get<std::uint64_t>() <= std::numeric_limits<int>::max())
                n = value.get<std::int64_t>();
        } else if (value.is_number_integer()) {
            n = value.get<std::int64_t>();
        }
        if (!n || *n < least || *n > std::numeric_limits<int>::max())
            fail("key ", key, " is ", value.dump(), ", expected ", expected);
        return static_cast<int>(*n);
    }

    float positive_float(const char* key, float fallback) const
    {
        if (!has(key))
            return fallback;
        const nlohmann::json& value = json_.at(key);
        const double x = value.is_number() ? value.get<double>() : -1.0;
        if (!(x > 0.0 && x <= std::numeric_limits<float>::max()))
            fail("key ", key, " is ", value.dump(), ", expected a positive number");
        return static_cast<float>(x);
    }

    bool boolean(const char* key, bool fallback) const
    {
        if (!has(key))
            return fallback;
        if (!json_.at(key).is_boolean())
            fail("key ", key, " is ", json_.at(key).dump(), ", expected true or false");
        return json_.at(key).get<bool>();
    }

    template <class... Parts>
    [[noreturn]] void fail(const Parts&... parts) const
    {
        throw load_error(message(path_.string(), ": ", parts...));
    }

private:
    std::filesystem::path path_;
    nlohmann::json json_;
};

// A positive float key: `fallback` when absent, empty when null.
inline std::optional<float> optional_positive_float(const JsonConfig& json, const char* key,
                                                    std::optional<float> fallback = {})
{
    if (!json.present(key))
        return fallback;
    if (!json.has(key))
        return std::nullopt;
    return json.positive_float(key, 0.0f);
}

// The attention variants of config.json, into `c` (whose num_hidden_layers is read):
//
//   sliding_window           the window in tokens: a query at position p sees the keys at
//                            (p - w, p], itself included. That is transformers' meaning
//                            (masking_utils.sliding_window_overlay: kv_idx > q_idx - w) and
//                            star::SlidingWindow's. Which layers slide:
//     - layer_types present (Gemma 2/3, and every family in transformers >= 4.53): the
//       layers listed as "sliding_attention"; "full_attention" layers attend to everything;
//     - else Qwen2 (model_type "qwen2", or a config that writes use_sliding_window or
//       max_window_layers): Qwen2Config's rule, layers i >= max_window_layers (default 28);
//     - else (Mistral and the Llama family): every layer.
//     use_sliding_window false (Qwen2; its default when model_type is "qwen2") switches the
//     window off on every layer, as Qwen2Config sets sliding_window to None then; so does a
//     null sliding_window. (Gemma 2 without layer_types alternates, layer 0 sliding: its
//     layer_types default; model_type gemma2 is refused above.)
//   attn_logit_softcapping   every layer's scores, scaled, become cap * tanh(score / cap)
//   final_logit_softcapping  the output logits become cap * tanh(logits / cap)
//   query_pre_attn_scalar    the softmax scale is 1/sqrt(this) instead of 1/sqrt(head_dim)
inline void read_attention_variants(const JsonConfig& json, Config& c)
{
    // Gemma2Config's defaults for absent keys: caps 50 and 30, query_pre_attn_scalar 256, a
    // window of 4096 on alternate layers.
    const bool gemma2 = c.family == Family::gemma2;
    const auto gemma_default = [&](float value) {
        return gemma2 ? std::optional<float>(value) : std::nullopt;
    };
    c.attn_logit_softcapping =
        optional_positive_float(json, "attn_logit_softcapping", gemma_default(50.0f));
    c.final_logit_softcapping =
        optional_positive_float(json, "final_logit_softcapping", gemma_default(30.0f));
    c.query_pre_attn_scalar =
        optional_positive_float(json, "query_pre_attn_scalar", gemma_default(256.0f));

    const bool qwen2_type = json.has("model_type") && json.at("model_type") == "qwen2";
    const bool qwen2 = qwen2_type || json.has("use_sliding_window") || json.has("max_window_layers");
    // Both read (and so checked) whether or not a window is on.
    const bool window_on = json.boolean("use_sliding_window", !qwen2_type);
    const int max_window_layers = json.non_negative_int("max_window_layers", 28);

    std::vector<bool> slides(static_cast<std::size_t>(c.layers), !qwen2);
    if (json.has("layer_types")) {
        const nlohmann::json& types = json.at("layer_types");
        if (!types.is_array() || types.size() != static_cast<std::size_t>(c.layers))
            json.fail("key layer_types is ", types.dump(), ", expected an array of ", c.layers,
                      " entries (num_hidden_layers), each \"sliding_attention\" or "
                      "\"full_attention\"");
        for (std::size_t i = 0; i < types.size(); ++i) {
            if (types[i] == "sliding_attention")
                slides[i] = true;
            else if (types[i] == "full_attention")
                slides[i] = false;
            else
                json.fail("layer_types[", i, "] is ", types[i].dump(),
                          ": only \"sliding_attention\" and \"full_attention\" are supported");
        }
    } else if (gemma2) {
        // Gemma2Config's layer_types default: "sliding_attention" if (i + 1) % 2 else
        // "full_attention", i.e. layers 0, 2, 4, ... slide.
        for (int i = 0; i < c.layers; ++i)
            slides[static_cast<std::size_t>(i)] = (i + 1) % 2 != 0;
    } else if (qwen2) {
        for (int i = 0; i < c.layers; ++i)
            slides[static_cast<std::size_t>(i)] = i >= max_window_layers;
    }

    const bool absent_gemma_window = gemma2 && !json.present("sliding_window");
    if ((!json.has("sliding_window") && !absent_gemma_window) || !window_on)
        return;
    const int window = absent_gemma_window ? 4096 : json.positive_int("sliding_window");
    c.sliding_window.assign(static_cast<std::size_t>(c.layers), 0);
    for (std::size_t i = 0; i < slides.size(); ++i)
        if (slides[i])
            c.sliding_window[i] = window;
}

inline Config read_hf_config(const JsonConfig& json)
{
    // Options that change what the model computes. Loading the weights anyway would give a
    // model that runs and answers wrongly, so refuse them by name.
    if (json.has("rope_scaling"))
        json.fail("rope_scaling ", json.at("rope_scaling").dump(),
                  " is not supported: the forward pass implements plain RoPE only");
    // Of the Gemma family, Gemma 2 is implemented (Family::gemma2); Gemma 1 and 3 differ
    // from it (Gemma 3: norms of q and k, a second RoPE base for local layers).
    const bool gemma2 = json.has("model_type") && json.at("model_type") == "gemma2";
    if (!gemma2 && json.has("model_type") && json.at("model_type").is_string() &&
        json.at("model_type").get<std::string>().starts_with("gemma"))
        json.fail("model_type ", json.at("model_type").dump(),
                  " is not supported: of the Gemma family only gemma2 is implemented");
    // Gemma 2's MLP reads hidden_activation (transformers' Gemma2MLP), the others hidden_act.
    if (gemma2 && json.has("hidden_activation") &&
        json.at("hidden_activation") != "gelu_pytorch_tanh")
        json.fail("hidden_activation ", json.at("hidden_activation").dump(),
                  " is not supported: the forward pass implements Gemma 2's gelu_pytorch_tanh");
    if (!gemma2 && json.has("hidden_act") && json.at("hidden_act") != "silu")
        json.fail("hidden_act ", json.at("hidden_act").dump(),
                  " is not supported: the forward pass implements SwiGLU (silu) only");
    for (const char* bias : {"attention_bias", "mlp_bias"})
        if (json.boolean(bias, false))
            json.fail(bias, " = true is not supported: the forward pass has no biases");

    Config c;
    c.vocab_size = json.positive_int("vocab_size");
    c.hidden_size = json.positive_int("hidden_size");
    c.intermediate_size = json.positive_int("intermediate_size");
    c.layers = json.positive_int("num_hidden_layers");
    c.heads = json.positive_int("num_attention_heads");
    // Gemma2Config's defaults: 4 KV heads, head_dim 256.
    c.kv_heads = json.positive_int("num_key_value_heads", gemma2 ? 4 : c.heads);
    if (!gemma2 && !json.has("head_dim") && c.hidden_size % c.heads != 0)
        json.fail("hidden_size ", c.hidden_size, " is not a multiple of num_attention_heads ",
                  c.heads, " and head_dim is not given");
    c.head_dim = json.positive_int("head_dim", gemma2 ? 256 : c.hidden_size / c.heads);
    if (c.heads % c.kv_heads != 0)
        json.fail("num_attention_heads ", c.heads, " is not a multiple of num_key_value_heads ",
                  c.kv_heads, ": every KV head must serve the same number of query heads");
    if (c.head_dim % 2 != 0)
        json.fail("head_dim ", c.head_dim, " is odd: RoPE rotates pairs of dimensions");
    c.rope_theta = json.positive_float("rope_theta", 10000.0f);
    c.rms_norm_eps = json.positive_float("rms_norm_eps", 1e-6f);
    c.max_positions = json.positive_int("max_position_embeddings", 0);
    c.rope = RopeStyle::rotate_half;
    if (gemma2) {
        c.family = Family::gemma2;
        c.activation = Activation::gelu_tanh;
        // transformers: hidden * torch.tensor(hidden_size**0.5, dtype=hidden.dtype)
        c.embedding_scale = static_cast<float>(std::sqrt(static_cast<double>(c.hidden_size)));
    }
    read_attention_variants(json, c);
    return c;
}

// One dimension of a weight as the config implies it, and the keys it comes from.
struct ImpliedExtent {
    std::int64_t size;
    const char* keys; // e.g. "num_key_value_heads x head_dim"
};

struct ImpliedWeight {
    std::string name;
    std::vector<ImpliedExtent> shape;
};

// The indices n of the layers whose tensors ("model.layers.<n>.*") the file holds.
inline std::set<std::int64_t> layers_in(const SafeTensors& weights)
{
    constexpr std::string_view prefix = "model.layers.";
    std::set<std::int64_t> layers;
    for (const std::string& name : weights.names()) {
        if (!name.starts_with(prefix))
            continue;
        const char* first = name.data() + prefix.size();
        const char* last = name.data() + name.size();
        std::int64_t n = 0;
        const auto [end, error] = std::from_chars(first, last, n);
        // A number past int64 still names a layer no config can have: count it as the
        // largest, so that it is reported rather than ignored.
        if (error == std::errc::result_out_of_range)
            n = std::numeric_limits<std::int64_t>::max();
        else if (error != std::errc{} || end == last || *end != '.')
            continue;
        layers.insert(n);
    }
    return layers;
}

// Every tensor the config implies, with its shape. Called once the layer count is known to
// match the file, so the list is no longer than the file's own.
inline std::vector<ImpliedWeight> implied_weights(const Config& c, bool tied)
{
    const ImpliedExtent hidden{c.hidden_size, "hidden_size"};
    const ImpliedExtent q_size{std::int64_t{c.heads} * c.head_dim, "num_attention_heads x head_dim"};
    const ImpliedExtent kv_size{std::int64_t{c.kv_heads} * c.head_dim,
                                "num_key_value_heads x head_dim"};
    const ImpliedExtent ffn{c.intermediate_size, "intermediate_size"};
    const ImpliedExtent vocab{c.vocab_size, "vocab_size"};

    std::vector<ImpliedWeight> w{{"model.embed_tokens.weight", {vocab, hidden}}};
    for (int i = 0; i < c.layers; ++i) {
        const std::string prefix = "model.layers." + std::to_string(i) + ".";
        w.push_back({prefix + "input_layernorm.weight", {hidden}});
        w.push_back({prefix + "self_attn.q_proj.weight", {q_size, hidden}});
        w.push_back({prefix + "self_attn.k_proj.weight", {kv_size, hidden}});
        w.push_back({prefix + "self_attn.v_proj.weight", {kv_size, hidden}});
        w.push_back({prefix + "self_attn.o_proj.weight", {hidden, q_size}});
        w.push_back({prefix + "post_attention_layernorm.weight", {hidden}});
        if (c.family == Family::gemma2) {
            w.push_back({prefix + "pre_feedforward_layernorm.weight", {hidden}});
            w.push_back({prefix + "post_feedforward_layernorm.weight", {hidden}});
        }
        w.push_back({prefix + "mlp.gate_proj.weight", {ffn, hidden}});
        w.push_back({prefix + "mlp.up_proj.weight", {ffn, hidden}});
        w.push_back({prefix + "mlp.down_proj.weight", {hidden, ffn}});
    }
    w.push_back({"model.norm.weight", {hidden}});
    if (!tied)
        w.push_back({"lm_head.weight", {vocab, hidden}});
    return w;
}

// Checks every size in the config against the weight file before anything is allocated:
// a config's sizes are only as trustworthy as the file, and a num_hidden_layers or
// hidden_size far beyond it would otherwise allocate gigabytes (or fail with a bare
// bad_alloc) before the first missing tensor is noticed. Each error names the key.
inline void check_weights(const JsonConfig& json, const SafeTensors& weights, const Config& c,
                          bool tied)
{
    const std::string file = weights.path().filename().string();
    const std::set<std::int64_t> layers = layers_in(weights);
    if (!layers.empty() && *layers.rbegin() >= c.layers)
        json.fail("num_hidden_layers is ", c.layers, ", but ", file, " holds tensors of layer ",
                  *layers.rbegin(), " (model.layers.", *layers.rbegin(),
                  ".*): the config belongs to another checkpoint");
    for (std::int64_t i = 0; i < c.layers; ++i)
        if (!layers.contains(i))
            json.fail("num_hidden_layers is ", c.layers, ", but ", file,
                      " holds no tensors of layer ", i, " (model.layers.", i, ".*)");

    // Biases (Qwen2's q/k/v projections have them whatever its config says) would be left
    // out of the forward pass, which has none: refuse them rather than answer wrongly.
    for (const std::string& name : weights.names())
        if (name.ends_with(".bias"))
            throw load_error(message(weights.path().string(), ": tensor ", name,
                                     " is not supported: the forward pass has no biases"));
    for (const ImpliedWeight& w : implied_weights(c, tied)) {
        if (!weights.contains(w.name)) {
            if (w.name == "lm_head.weight")
                throw load_error(message(weights.path().string(),
                                         ": tensor lm_head.weight is missing and the config has "
                                         "tie_word_embeddings false"));
            throw load_error(message(weights.path().string(), ": tensor ", w.name, " is missing"));
        }
        const std::vector<std::int64_t>& shape = weights.info(w.name).shape;
        std::vector<std::int64_t> sizes;
        std::string keys; // of the dimensions that differ; of all if the ranks differ
        for (std::size_t d = 0; d < w.shape.size(); ++d) {
            sizes.push_back(w.shape[d].size);
            if (shape.size() != w.shape.size() || shape[d] != w.shape[d].size)
                keys += (keys.empty() ? "" : ", ") + std::string(w.shape[d].keys);
        }
        if (shape != sizes)
            throw load_error(message(weights.path().string(), ": tensor ", w.name, " has shape ",
                                     shape_string(shape), ", the config implies ",
                                     shape_string(sizes), " (", keys, " in ",
                                     json.path().filename().string(), ")"));
    }
}

inline Matrix read_matrix(const SafeTensors& weights, const std::string& name, Eigen::Index rows,
                          Eigen::Index cols)
{
    Matrix m(rows, cols);
    weights.read_floats(name, {rows, cols}, {m.data(), static_cast<std::size_t>(m.size())});
    return m;
}

inline Vector read_vector(const SafeTensors& weights, const std::string& name, Eigen::Index size)
{
    Vector v(size);
    weights.read_floats(name, {size}, {v.data(), static_cast<std::size_t>(v.size())});
    return v;
}

inline Model load_hf_unguarded(const std::filesystem::path& dir)
{
    const JsonConfig json(dir / "config.json");
    Model model;
    model.config = read_hf_config(json);
    const Config& c = model.config;
    // Tied models store no lm_head; transformers' default is untied, Gemma 2's tied.
    const bool tied = json.boolean("tie_word_embeddings", c.family == Family::gemma2);

    const std::filesystem::path weights_file = dir / "model.safetensors";
    std::error_code unreadable; // then SafeTensors below reports why
    if (!std::filesystem::exists(weights_file, unreadable) &&
        std::filesystem::exists(dir / "model.safetensors.index.json", unreadable))
        throw load_error(message(weights_file.string(),
                                 ": missing; sharded checkpoints (model.safetensors.index.json) "
                                 "are not supported, merge the shards into one file"));
    const SafeTensors weights(weights_file);
    check_weights(json, weights, c, tied);
    const auto matrix = [&](const std::string& name, Eigen::Index rows, Eigen::Index cols) {
        return read_matrix(weights, name, rows, cols);
    };
    // Gemma 2 stores each RMSNorm weight as w and scales by 1 + w (Gemma2RMSNorm, in
    // float32: the same sum as here).
    const bool gemma2 = c.family == Family::gemma2;
    const auto vector = [&](const std::string& name, Eigen::Index size) {
        Vector v = read_vector(weights, name, size);
        if (gemma2)
            v.array() += 1.0f;
        return v;
    };

    const Eigen::Index hidden = c.hidden_size;
    const Eigen::Index q_size = Eigen::Index{c.heads} * c.head_dim;
    const Eigen::Index kv_size = Eigen::Index{c.kv_heads} * c.head_dim;
    const Eigen::Index ffn = c.intermediate_size;

    model.embedding = matrix("model.embed_tokens.weight", c.vocab_size, hidden);
    model.layers.resize(static_cast<std::size_t>(c.layers));
    for (int i = 0; i < c.layers; ++i) {
        const std::string prefix = "model.layers." + std::to_string(i) + ".";
        LayerWeights& layer = model.layers[static_cast<std::size_t>(i)];
        layer.attention_norm = vector(prefix + "input_layernorm.weight", hidden);
        layer.wq = matrix(prefix + "self_attn.q_proj.weight", q_size, hidden);
        layer.wk = matrix(prefix + "self_attn.k_proj.weight", kv_size, hidden);
        layer.wv = matrix(prefix + "self_attn.v_proj.weight", kv_size, hidden);
        layer.wo = matrix(prefix + "self_attn.o_proj.weight", hidden, q_size);
        if (gemma2) {
            layer.post_attention_norm = vector(prefix + "post_attention_layernorm.weight", hidden);
            layer.mlp_norm = vector(prefix + "pre_feedforward_layernorm.weight", hidden);
            layer.post_mlp_norm = vector(prefix + "post_feedforward_layernorm.weight", hidden);
        } else {
            layer.mlp_norm = vector(prefix + "post_attention_layernorm.weight", hidden);
        }
        layer.w_gate = matrix(prefix + "mlp.gate_proj.weight", ffn, hidden);
        layer.w_up = matrix(prefix + "mlp.up_proj.weight", ffn, hidden);
        layer.w_down = matrix(prefix + "mlp.down_proj.weight", hidden, ffn);
    }
    model.final_norm = vector("model.norm.weight", hidden);
    model.lm_head = tied ? model.embedding : matrix("lm_head.weight", c.vocab_size, hidden);
    return model;
}

} // namespace detail

// Reads a Hugging Face Llama checkpoint: dir/config.json and dir/model.safetensors, with
// weights in F32, BF16 or F16 and the standard LlamaForCausalLM tensor names.
inline Model load_hf(const std::filesystem::path& dir)
{
    try {
        return detail::load_hf_unguarded(dir);
    } catch (const nlohmann::json::exception& e) {
        // The checks above should leave nlohmann nothing to object to; if they missed a
        // case, the caller still gets the one exception type the loaders promise.
        throw load_error(detail::message(dir.string(), ": ", e.what()));
    }
}

// Reads a llama2.c checkpoint in the legacy format that run.c reads (export.py --version 0).
inline Model load_llama2c(const std::filesystem::path& file)
{
    const auto fail = [&](const auto&... parts) {
        throw load_error(detail::message(file.string(), ": ", parts...));
    };

    std::error_code error;
    const std::uintmax_t file_size = std::filesystem::file_size(file, error);
    if (error)
        fail("cannot read: ", error.message());
    std::ifstream in(file, std::ios::binary);
    if (!in)
        fail("cannot open");

    std::array<std::int32_t, 7> header{};
    if (file_size < sizeof header)
        fail("the file is ", file_size, " bytes, shorter than the ", sizeof header,
             "-byte llama2.c header");
    in.read(reinterpret_cast<char*>(header.data()), sizeof header);
    const auto [dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_field, seq_len] = header;

    // Newer exports start with the magic "ak42" and a version number, and lay weights out
    // differently (version 2 is int8-quantized): say so rather than misread them.
    if (static_cast<std::uint32_t>(dim) == 0x616b3432u)
        fail("a versioned llama2.c export (magic \"ak42\", version ", hidden_dim,
             "); only the legacy format (export.py --version 0) is supported");

    const std::string header_text = detail::message(
        "dim ", dim, ", hidden_dim ", hidden_dim, ", n_layers ", n_layers, ", n_heads ", n_heads,
        ", n_kv_heads ", n_kv_heads, ", vocab_size ", vocab_field, ", seq_len ", seq_len);
    const std::pair<const char*, std::int32_t> must_be_positive[] = {
        {"dim", dim},         {"hidden_dim", hidden_dim}, {"n_layers", n_layers},
        {"n_heads", n_heads}, {"n_kv_heads", n_kv_heads}, {"seq_len", seq_len}};
    for (const auto& [name, value] : must_be_positive)
        if (value <= 0)
            fail("header field ", name, " is ", value,
                 ", expected a positive number (header: ", header_text, ")");
    // The sign of vocab_size says whether the classifier is shared; its size is the magnitude.
    if (vocab_field == 0 || vocab_field == std::numeric_limits<std::int32_t>::min())
        fail("header field vocab_size is ", vocab_field, " (header: ", header_text, ")");
    if (dim % n_heads != 0)
        fail("dim ", dim, " is not a multiple of n_heads ", n_heads);
    if (n_heads % n_kv_heads != 0)
        fail("n_heads ", n_heads, " is not a multiple of n_kv_heads ", n_kv_heads);
    const std::int32_t head_size = dim / n_heads;
    if (head_size % 2 != 0)
        fail("the head size dim / n_heads = ", head_size, " is odd: RoPE rotates pairs");
    const bool shared_classifier = vocab_field > 0;
    const std::int32_t vocab = std::abs(vocab_field);
    const std::int32_t kv_dim = head_size * n_kv_heads;

    // The file must be exactly the header plus the weights it announces: a size off by even
    // one float means a different format or a truncated download, and every weight after the
    // first mistake would be garbage.
    {
        using U = std::uint64_t;
        const U D = U(dim), F = U(hidden_dim), L = U(n_layers), V = U(vocab), S = U(seq_len);
        const U KV = U(kv_dim), HS = U(head_size);
        std::optional<U> floats = 0;
        const auto add = [&](std::initializer_list<U> factors) {
            const auto term = detail::checked_product(factors);
            if (!floats || !term || *term > std::numeric_limits<U>::max() - *floats)
                floats.reset();
            else
                *floats += *term;
        };
        add({V, D});                            // token embedding
        add({L, D});                            // attention RMSNorm
        add({L, D, D});                         // wq
        add({L, KV, D});                        // wk
        add({L, KV, D});                        // wv
        add({L, D, D});                         // wo
        add({L, D});                            // FFN RMSNorm
        add({L, F, D});                         // w1
        add({L, D, F});                         // w2
        add({L, F, D});                         // w3
        add({D});                               // final RMSNorm
        add({S, HS});                           // freq_cis real and imaginary, S * HS/2 each
        add({shared_classifier ? U(0) : V, D}); // classifier
        const auto bytes = floats ? detail::checked_product({*floats, sizeof(float)}) : std::nullopt;
        if (!bytes || *bytes > std::numeric_limits<U>::max() - sizeof header)
            fail("the header (", header_text, ") implies a file of more than 2^64 bytes");
        if (*bytes + sizeof header != file_size)
            fail("the header (", header_text, ") implies ", *bytes + sizeof header,
                 " bytes, the file has ", file_size);
    }

    Model model;
    Config& c = model.config;
    c.vocab_size = vocab;
    c.hidden_size = dim;
    c.intermediate_size = hidden_dim;
    c.layers = n_layers;
    c.heads = n_heads;
    c.kv_heads = n_kv_heads;
    c.head_dim = head_size;
    c.rope_theta = 10000.0f; // fixed in llama2.c (its freq_cis tables are computed from it)
    c.rms_norm_eps = 1e-5f;
    c.max_positions = seq_len;
    c.rope = RopeStyle::interleaved;

    // Row-major matrices and vectors are contiguous, so each tensor is one read.
    const auto read = [&](auto& tensor, const char* name) {
        in.read(reinterpret_cast<char*>(tensor.data()),
                static_cast<std::streamsize>(tensor.size() * sizeof(float)));
        if (!in)
            fail("cannot read ", name);
    };

    // llama2.c stores each kind of weight for all layers before the next kind.
    model.layers.resize(static_cast<std::size_t>(n_layers));
    model.embedding.resize(vocab, dim);
    read(model.embedding, "token_embedding_table");
    for (LayerWeights& layer : model.layers) {
        layer.attention_norm.resize(dim);
        read(layer.attention_norm, "rms_att_weight");
    }
    for (LayerWeights& layer : model.layers) {
        layer.wq.resize(dim, dim);
        read(layer.wq, "wq");
    }
    for (LayerWeights& layer : model.layers) {
        layer.wk.resize(kv_dim, dim);
        read(layer.wk, "wk");
    }
    for (LayerWeights& layer : model.layers) {
        layer.wv.resize(kv_dim, dim);
        read(layer.wv, "wv");
    }
    for (LayerWeights& layer : model.layers) {
        layer.wo.resize(dim, dim);
        read(layer.wo, "wo");
    }
    for (LayerWeights& layer : model.layers) {
        layer.mlp_norm.resize(dim);
        read(layer.mlp_norm, "rms_ffn_weight");
    }
    for (LayerWeights& layer : model.layers) {
        layer.w_gate.resize(hidden_dim, dim); // llama2.c's w1
        read(layer.w_gate, "w1");
    }
    for (LayerWeights& layer : model.layers) {
        layer.w_down.resize(dim, hidden_dim); // w2
        read(layer.w_down, "w2");
    }
    for (LayerWeights& layer : model.layers) {
        layer.w_up.resize(hidden_dim, dim); // w3
        read(layer.w_up, "w3");
    }
    model.final_norm.resize(dim);
    read(model.final_norm, "rms_final_weight");

    // RoPE tables precomputed for theta 10000; the forward pass computes its own.
    in.seekg(static_cast<std::streamoff>(std::int64_t{seq_len} * head_size * sizeof(float)),
             std::ios::cur);
    if (shared_classifier) {
        model.lm_head = model.embedding;
    } else {
        model.lm_head.resize(vocab, dim);
        read(model.lm_head, "wcls");
    }
    return model;
}

// Reads a model whichever format it is in: a directory is a Hugging Face checkpoint
// (config.json + model.safetensors), a regular file a llama2.c checkpoint.
inline Model load_model(const std::filesystem::path& path)
{
    std::error_code error;
    const std::filesystem::file_status status = std::filesystem::status(path, error);
    if (std::filesystem::is_directory(status))
        return load_hf(path);
    if (std::filesystem::is_regular_file(status))
        return load_llama2c(path);
    if (!std::filesystem::exists(status))
        throw load_error(detail::message(path.string(), ": no such file or directory"));
    throw load_error(detail::message(path.string(),
                                     ": neither a directory (Hugging Face checkpoint) nor a "
                                     "regular file (llama2.c checkpoint)"));
}

} // namespace llama
