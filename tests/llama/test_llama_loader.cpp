// The model loaders of examples/llama: a tiny random model written in each format reads back
// weight for weight, and every malformed file is rejected with a load_error whose message
// names the file and the problem.

#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <fstream>
#include <future>
#include <initializer_list>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "load.hpp"
#include "safetensors.hpp"

namespace llama::test {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// The check every bad-input test makes: the call throws load_error (not some other exception,
// not nothing) and the message contains every fragment.
template <class F>
void expect_load_error(F&& call, std::initializer_list<std::string> fragments)
{
    try {
        call();
        ADD_FAILURE() << "no exception; expected a load_error";
    } catch (const load_error& e) {
        const std::string message = e.what();
        for (const std::string& fragment : fragments)
            EXPECT_NE(message.find(fragment), std::string::npos)
                << "the message '" << message << "' does not mention '" << fragment << "'";
    } catch (const std::exception& e) {
        ADD_FAILURE() << "wrong exception type: " << e.what();
    }
}

// A fresh directory under the system's temporary directory, removed with its contents.
// The process id keeps concurrent test runs apart, the counter the tests of one run.
class TempDir {
public:
    TempDir()
    {
        static std::atomic<int> counter{0};
        path_ = fs::temp_directory_path() / ("star-llama-loader-" + std::to_string(::getpid()) +
                                             "-" + std::to_string(counter++));
        fs::remove_all(path_);
        fs::create_directories(path_);
    }
    ~TempDir()
    {
        std::error_code ignored;
        fs::remove_all(path_, ignored);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    const fs::path& path() const { return path_; }
    fs::path operator/(const std::string& name) const { return path_ / name; }

private:
    fs::path path_;
};

class WithTempDir : public ::testing::Test {
protected:
    TempDir dir;
};

// ---------------------------------------------------------------------------------------------
// Writing test files

void write_bytes(const fs::path& path, std::span<const char> bytes)
{
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(out.good()) << "cannot write " << path;
}

// A safetensors file with a header given verbatim and `data_bytes` zero bytes of data: the
// way to make headers the writer would never produce.
void write_raw_safetensors(const fs::path& path, const std::string& header, std::size_t data_bytes,
                           std::uint64_t header_length)
{
    std::vector<char> bytes(8);
    std::memcpy(bytes.data(), &header_length, 8);
    bytes.insert(bytes.end(), header.begin(), header.end());
    bytes.resize(bytes.size() + data_bytes, 0);
    write_bytes(path, bytes);
}

void write_raw_safetensors(const fs::path& path, const std::string& header, std::size_t data_bytes)
{
    write_raw_safetensors(path, header, data_bytes, header.size());
}

void write_text(const fs::path& path, const std::string& text)
{
    write_bytes(path, std::span<const char>(text.data(), text.size()));
}

enum class Stored { f32, bf16, f16 };

float round_to(Stored stored, float x)
{
    switch (stored) {
    case Stored::bf16: return static_cast<float>(Eigen::bfloat16(x));
    case Stored::f16: return static_cast<float>(Eigen::half(x));
    case Stored::f32: break;
    }
    return x;
}

template <class Tensor>
NamedTensor encode(Stored stored, const std::string& name, const Tensor& t,
                   std::vector<std::int64_t> shape)
{
    const std::span<const float> values(t.data(), static_cast<std::size_t>(t.size()));
    switch (stored) {
    case Stored::bf16: return bf16_tensor(name, std::move(shape), values);
    case Stored::f16: return f16_tensor(name, std::move(shape), values);
    case Stored::f32: break;
    }
    return f32_tensor(name, std::move(shape), values);
}

// A random model whose every weight is already representable in `stored`, so that loading
// must give it back exactly.
Model random_model(const Config& c, Stored stored, unsigned seed)
{
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 0.5f);
    const auto matrix = [&](Eigen::Index rows, Eigen::Index cols) {
        Matrix m(rows, cols);
        for (Eigen::Index i = 0; i < m.size(); ++i)
            m.data()[i] = round_to(stored, normal(rng));
        return m;
    };
    const auto vector = [&](Eigen::Index size) {
        Vector v = matrix(size, 1).col(0);
        return v;
    };
    const Eigen::Index q = Eigen::Index{c.heads} * c.head_dim;
    const Eigen::Index kv = Eigen::Index{c.kv_heads} * c.head_dim;

    Model m;
    m.config = c;
    m.embedding = matrix(c.vocab_size, c.hidden_size);
    for (int i = 0; i < c.layers; ++i) {
        LayerWeights layer;
        layer.attention_norm = vector(c.hidden_size);
        layer.wq = matrix(q, c.hidden_size);
        layer.wk = matrix(kv, c.hidden_size);
        layer.wv = matrix(kv, c.hidden_size);
        layer.wo = matrix(c.hidden_size, q);
        layer.mlp_norm = vector(c.hidden_size);
        layer.w_gate = matrix(c.intermediate_size, c.hidden_size);
        layer.w_up = matrix(c.intermediate_size, c.hidden_size);
        layer.w_down = matrix(c.hidden_size, c.intermediate_size);
        m.layers.push_back(std::move(layer));
    }
    m.final_norm = vector(c.hidden_size);
    m.lm_head = matrix(c.vocab_size, c.hidden_size);
    return m;
}

// Awkward sizes on purpose: head_dim 6 is not hidden / heads, GQA 2:1, a vocabulary that is
// no power of two.
Config hf_test_config()
{
    Config c;
    c.vocab_size = 11;
    c.hidden_size = 16;
    c.intermediate_size = 20;
    c.layers = 2;
    c.heads = 4;
    c.kv_heads = 2;
    c.head_dim = 6;
    c.rope_theta = 500000.0f;
    c.rms_norm_eps = 1e-6f;
    c.max_positions = 64;
    c.rope = RopeStyle::rotate_half;
    return c;
}

// As transformers' save_pretrained writes it, with the keys the loader must tolerate.
json hf_config_json(const Config& c, bool tie)
{
    return {{"architectures", {"LlamaForCausalLM"}},
            {"model_type", "llama"},
            {"hidden_act", "silu"},
            {"attention_bias", false},
            {"mlp_bias", false},
            {"rope_scaling", nullptr},
            {"torch_dtype", "bfloat16"},
            {"tie_word_embeddings", tie},
            {"vocab_size", c.vocab_size},
            {"hidden_size", c.hidden_size},
            {"intermediate_size", c.intermediate_size},
            {"num_hidden_layers", c.layers},
            {"num_attention_heads", c.heads},
            {"num_key_value_heads", c.kv_heads},
            {"head_dim", c.head_dim},
            {"rope_theta", c.rope_theta},
            {"rms_norm_eps", c.rms_norm_eps},
            {"max_position_embeddings", c.max_positions}};
}

std::vector<NamedTensor> hf_tensors(const Model& m, Stored stored, bool tie)
{
    const auto matrix = [&](const std::string& name, const Matrix& w) {
        return encode(stored, name, w, {w.rows(), w.cols()});
    };
    const auto vector = [&](const std::string& name, const Vector& v) {
        return encode(stored, name, v, {v.size()});
    };
    std::vector<NamedTensor> tensors;
    tensors.push_back(matrix("model.embed_tokens.weight", m.embedding));
    for (std::size_t i = 0; i < m.layers.size(); ++i) {
        const std::string prefix = "model.layers." + std::to_string(i) + ".";
        const LayerWeights& layer = m.layers[i];
        tensors.push_back(vector(prefix + "input_layernorm.weight", layer.attention_norm));
        tensors.push_back(matrix(prefix + "self_attn.q_proj.weight", layer.wq));
        tensors.push_back(matrix(prefix + "self_attn.k_proj.weight", layer.wk));
        tensors.push_back(matrix(prefix + "self_attn.v_proj.weight", layer.wv));
        tensors.push_back(matrix(prefix + "self_attn.o_proj.weight", layer.wo));
        tensors.push_back(vector(prefix + "post_attention_layernorm.weight", layer.mlp_norm));
        tensors.push_back(matrix(prefix + "mlp.gate_proj.weight", layer.w_gate));
        tensors.push_back(matrix(prefix + "mlp.up_proj.weight", layer.w_up));
        tensors.push_back(matrix(prefix + "mlp.down_proj.weight", layer.w_down));
    }
    tensors.push_back(vector("model.norm.weight", m.final_norm));
    if (!tie)
        tensors.push_back(matrix("lm_head.weight", m.lm_head));
    // Older checkpoints carry RoPE buffers; the loader must skip tensors it does not use.
    const std::array<float, 3> inv_freq{1.0f, 0.1f, 0.01f};
    tensors.push_back(f32_tensor("model.layers.0.self_attn.rotary_emb.inv_freq", {3}, inv_freq));
    return tensors;
}

void write_hf(const TempDir& dir, const json& config, const std::vector<NamedTensor>& tensors)
{
    write_text(dir / "config.json", config.dump(2));
    write_safetensors(dir / "model.safetensors", tensors, {{"format", "pt"}});
}

Config llama2c_test_config()
{
    Config c;
    c.vocab_size = 11;
    c.hidden_size = 16;
    c.intermediate_size = 20;
    c.layers = 2;
    c.heads = 4;
    c.kv_heads = 2;
    c.head_dim = 4; // llama2.c has no separate head_dim: always dim / n_heads
    c.rope_theta = 10000.0f;
    c.rms_norm_eps = 1e-5f;
    c.max_positions = 7;
    c.rope = RopeStyle::interleaved;
    return c;
}

using Llama2cHeader = std::array<std::int32_t, 7>;

Llama2cHeader llama2c_header(const Config& c, bool shared)
{
    return {c.hidden_size,  c.intermediate_size, c.layers,
            c.heads,        c.kv_heads,          shared ? c.vocab_size : -c.vocab_size,
            c.max_positions};
}

// The weights in llama2.c's order: each kind for every layer before the next kind.
std::vector<float> llama2c_weights(const Model& m, bool shared)
{
    std::vector<float> out;
    const auto append = [&](const auto& tensor) {
        out.insert(out.end(), tensor.data(), tensor.data() + tensor.size());
    };
    append(m.embedding);
    for (const auto& l : m.layers)
        append(l.attention_norm);
    for (const auto& l : m.layers)
        append(l.wq);
    for (const auto& l : m.layers)
        append(l.wk);
    for (const auto& l : m.layers)
        append(l.wv);
    for (const auto& l : m.layers)
        append(l.wo);
    for (const auto& l : m.layers)
        append(l.mlp_norm);
    for (const auto& l : m.layers)
        append(l.w_gate);
    for (const auto& l : m.layers)
        append(l.w_down);
    for (const auto& l : m.layers)
        append(l.w_up);
    append(m.final_norm);
    // freq_cis real and imaginary parts: contents the loader must skip, not interpret.
    const std::size_t freq = static_cast<std::size_t>(m.config.max_positions) *
                             static_cast<std::size_t>(m.config.head_dim);
    out.insert(out.end(), freq, 12345.0f);
    if (!shared)
        append(m.lm_head);
    return out;
}

void write_llama2c(const fs::path& path, const Llama2cHeader& header,
                   const std::vector<float>& weights)
{
    std::vector<char> bytes(sizeof header + weights.size() * sizeof(float));
    std::memcpy(bytes.data(), header.data(), sizeof header);
    std::memcpy(bytes.data() + sizeof header, weights.data(), weights.size() * sizeof(float));
    write_bytes(path, bytes);
}

// ---------------------------------------------------------------------------------------------
// Comparing models

template <class A, class B>
void expect_identical(const Eigen::MatrixBase<A>& loaded, const Eigen::MatrixBase<B>& written,
                      const std::string& what)
{
    ASSERT_EQ(loaded.rows(), written.rows()) << what;
    ASSERT_EQ(loaded.cols(), written.cols()) << what;
    EXPECT_TRUE((loaded.array() == written.array()).all()) << what << " differs";
}

void expect_same_config(const Config& a, const Config& b)
{
    EXPECT_EQ(a.vocab_size, b.vocab_size);
    EXPECT_EQ(a.hidden_size, b.hidden_size);
    EXPECT_EQ(a.intermediate_size, b.intermediate_size);
    EXPECT_EQ(a.layers, b.layers);
    EXPECT_EQ(a.heads, b.heads);
    EXPECT_EQ(a.kv_heads, b.kv_heads);
    EXPECT_EQ(a.head_dim, b.head_dim);
    EXPECT_EQ(a.rope_theta, b.rope_theta);
    EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
    EXPECT_EQ(a.max_positions, b.max_positions);
    EXPECT_EQ(a.rope, b.rope);
    EXPECT_EQ(a.sliding_window, b.sliding_window);
    EXPECT_EQ(a.attn_logit_softcapping, b.attn_logit_softcapping);
    EXPECT_EQ(a.final_logit_softcapping, b.final_logit_softcapping);
    EXPECT_EQ(a.query_pre_attn_scalar, b.query_pre_attn_scalar);
}

void expect_same_model(const Model& loaded, const Model& written)
{
    expect_same_config(loaded.config, written.config);
    expect_identical(loaded.embedding, written.embedding, "embedding");
    ASSERT_EQ(loaded.layers.size(), written.layers.size());
    for (std::size_t i = 0; i < loaded.layers.size(); ++i) {
        const LayerWeights& a = loaded.layers[i];
        const LayerWeights& b = written.layers[i];
        const std::string layer = "layer " + std::to_string(i) + " ";
        expect_identical(a.attention_norm, b.attention_norm, layer + "attention_norm");
        expect_identical(a.wq, b.wq, layer + "wq");
        expect_identical(a.wk, b.wk, layer + "wk");
        expect_identical(a.wv, b.wv, layer + "wv");
        expect_identical(a.wo, b.wo, layer + "wo");
        expect_identical(a.mlp_norm, b.mlp_norm, layer + "mlp_norm");
        expect_identical(a.w_gate, b.w_gate, layer + "w_gate");
        expect_identical(a.w_up, b.w_up, layer + "w_up");
        expect_identical(a.w_down, b.w_down, layer + "w_down");
    }
    expect_identical(loaded.final_norm, written.final_norm, "final_norm");
    expect_identical(loaded.lm_head, written.lm_head, "lm_head");
}

// ---------------------------------------------------------------------------------------------
// safetensors: round trips

using SafeTensorsRoundTrip = WithTempDir;

TEST_F(SafeTensorsRoundTrip, EveryDtypeReadsBackTheRoundedValues)
{
    const std::vector<float> values{0.1f, -1.5f, 3.14159f, 65504.0f, -2.0e-3f, 7.0f};
    const std::vector<std::int32_t> ids{0, -1, 2147483647, 42};
    write_safetensors(dir / "t.safetensors",
                      {f32_tensor("f32", {2, 3}, values), bf16_tensor("bf16", {3, 2}, values),
                       f16_tensor("f16", {6}, values), i32_tensor("ids", {2, 2}, ids),
                       f32_tensor("scalar", {}, std::span(values).first(1)),
                       f32_tensor("empty", {0, 3}, {})},
                      {{"format", "pt"}});

    const SafeTensors file(dir / "t.safetensors");
    EXPECT_EQ(file.names(),
              (std::vector<std::string>{"bf16", "empty", "f16", "f32", "ids", "scalar"}));
    EXPECT_EQ(file.metadata().at("format"), "pt");
    EXPECT_TRUE(file.contains("f32"));
    EXPECT_FALSE(file.contains("format"));
    EXPECT_EQ(file.info("bf16").dtype, "BF16");
    EXPECT_EQ(file.info("bf16").shape, (std::vector<std::int64_t>{3, 2}));

    std::vector<float> as_bf16, as_f16;
    for (const float x : values) {
        as_bf16.push_back(round_to(Stored::bf16, x));
        as_f16.push_back(round_to(Stored::f16, x));
    }
    EXPECT_EQ(file.floats("f32", {2, 3}), values);
    EXPECT_EQ(file.floats("bf16", {3, 2}), as_bf16);
    EXPECT_EQ(file.floats("f16", {6}), as_f16);
    EXPECT_NE(as_bf16, values); // the rounding is real, so the comparison above means something
    EXPECT_EQ(file.int32s("ids"), ids);
    EXPECT_EQ(file.floats("scalar", {}), std::vector<float>{values[0]});
    EXPECT_TRUE(file.floats("empty", {0, 3}).empty());

    // The writer pads the header so the data starts 8-byte aligned.
    std::uint64_t header_length = 0;
    std::ifstream(dir / "t.safetensors", std::ios::binary)
        .read(reinterpret_cast<char*>(&header_length), 8);
    EXPECT_EQ((8 + header_length) % 8, 0u);
}

TEST_F(SafeTensorsRoundTrip, UnalignedTensorsReadCorrectly)
{
    const std::vector<float> values{1.0f, -2.0f, 3.5f};
    NamedTensor one_byte{"pad", "U8", {1}, {std::byte{7}}};
    write_safetensors(dir / "t.safetensors",
                      {one_byte, f32_tensor("w", {3}, values), bf16_tensor("h", {3}, values)});
    const SafeTensors file(dir / "t.safetensors");
    EXPECT_EQ(file.info("w").begin, 1u); // a float at an odd address: read with memcpy
    EXPECT_EQ(file.floats("w", {3}), values);
    EXPECT_EQ(file.floats("h", {3}), values);
}

TEST_F(SafeTensorsRoundTrip, MovedReaderKeepsItsMapping)
{
    static_assert(!std::is_copy_constructible_v<SafeTensors>);
    static_assert(!std::is_copy_assignable_v<SafeTensors>);
    static_assert(std::is_nothrow_move_constructible_v<SafeTensors>);

    const std::vector<float> values{1.0f, 2.0f};
    write_safetensors(dir / "a.safetensors", {f32_tensor("a", {2}, values)});
    write_safetensors(dir / "b.safetensors", {f32_tensor("b", {1}, std::span(values).last(1))});
    SafeTensors first(dir / "a.safetensors");
    SafeTensors moved(std::move(first));
    EXPECT_EQ(moved.floats("a", {2}), values);
    moved = SafeTensors(dir / "b.safetensors");
    EXPECT_EQ(moved.floats("b", {1}), std::vector<float>{2.0f});
}

TEST_F(SafeTensorsRoundTrip, WriterRejectsBytesThatDoNotMatchTheShape)
{
    const std::vector<float> values{1.0f, 2.0f, 3.0f};
    EXPECT_THROW(write_safetensors(dir / "t.safetensors", {f32_tensor("w", {2, 2}, values)}),
                 std::invalid_argument);
    EXPECT_THROW(write_safetensors(dir / "t.safetensors",
                                   {f32_tensor("w", {3}, values), f32_tensor("w", {3}, values)}),
                 std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// safetensors: hostile files

using SafeTensorsRejects = WithTempDir;

// One F32 tensor of shape [2, 3] over a 24-byte buffer; each test breaks one thing.
const std::string valid_entry = R"("dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24])";

TEST_F(SafeTensorsRejects, MissingFile)
{
    expect_load_error([&] { SafeTensors(dir / "absent.safetensors"); },
                      {"absent.safetensors", "cannot open"});
}

TEST_F(SafeTensorsRejects, Directory)
{
    expect_load_error([&] { SafeTensors(dir.path()); }, {"not a regular file"});
}

TEST_F(SafeTensorsRejects, FileShorterThanTheHeaderLength)
{
    write_text(dir / "t.safetensors", "abc");
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                      {"t.safetensors", "the file is 3 bytes"});
    write_text(dir / "empty.safetensors", "");
    expect_load_error([&] { SafeTensors(dir / "empty.safetensors"); }, {"the file is 0 bytes"});
}

TEST_F(SafeTensorsRejects, HeaderLengthBeyondTheFile)
{
    write_raw_safetensors(dir / "t.safetensors", "{}", 0, 1000);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                      {"header length is 1000 bytes but only 2 bytes follow"});
}

TEST_F(SafeTensorsRejects, AbsurdHeaderLength)
{
    // 8 + length would wrap around to 7 in 64-bit arithmetic.
    write_raw_safetensors(dir / "t.safetensors", "{}", 0, std::numeric_limits<std::uint64_t>::max());
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                      {"header length is 18446744073709551615 bytes"});
}

TEST_F(SafeTensorsRejects, HeaderLengthAboveTheLimit)
{
    // A sparse file: 200 MB long without writing 200 MB.
    write_raw_safetensors(dir / "t.safetensors", "", 0, 150'000'000);
    fs::resize_file(dir / "t.safetensors", 200'000'000);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                      {"header length is 150000000 bytes, more than the limit"});
}

// 100000 levels: far past the stack any recursive walk of the value (dump(), comparison,
// destruction in nlohmann before 3.10) can take. The parse itself must stop at the limit.
std::string nested_arrays(std::size_t depth)
{
    return std::string(depth, '[') + std::string(depth, ']');
}

TEST_F(SafeTensorsRejects, DeeplyNestedHeader)
{
    write_raw_safetensors(dir / "t.safetensors", nested_arrays(100'000), 0);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                      {"t.safetensors", "nested more than 64 levels deep"});
}

TEST_F(SafeTensorsRejects, DeeplyNestedMetadata)
{
    write_raw_safetensors(dir / "t.safetensors",
                          R"({"__metadata__": {"format": )" + nested_arrays(100'000) + "}}", 0);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                      {"t.safetensors", "nested more than 64 levels deep"});
}

TEST_F(SafeTensorsRejects, DeeplyNestedShape)
{
    write_raw_safetensors(dir / "t.safetensors",
                          R"({"w": {"dtype": "F32", "shape": )" + nested_arrays(100'000) +
                              R"(, "data_offsets": [0, 24]}})",
                          24);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                      {"t.safetensors", "nested more than 64 levels deep"});
}

// The nesting the files really have is far below the limit: 64 levels still read.
TEST_F(SafeTensorsRejects, NestingUpToTheLimitIsRead)
{
    write_raw_safetensors(dir / "t.safetensors",
                          R"({"__metadata__": {"k": )" + nested_arrays(62) + "}}", 0);
    EXPECT_EQ(SafeTensors(dir / "t.safetensors").metadata().at("k"),
              std::string(62, '[') + std::string(62, ']'));
    write_raw_safetensors(dir / "t.safetensors",
                          R"({"__metadata__": {"k": )" + nested_arrays(63) + "}}", 0);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                      {"nested more than 64 levels deep"});
}

TEST_F(SafeTensorsRejects, HeaderNotJson)
{
    write_raw_safetensors(dir / "t.safetensors", "{\"w\": {\"dtype\": ", 0);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); }, {"not valid JSON"});
}

TEST_F(SafeTensorsRejects, HeaderNotAnObject)
{
    write_raw_safetensors(dir / "t.safetensors", "[1, 2]", 0);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); }, {"not an object", "array"});
}

TEST_F(SafeTensorsRejects, EntryNotAnObject)
{
    write_raw_safetensors(dir / "t.safetensors", R"({"w": 5})", 0);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); }, {"tensor w", "not an object"});
}

TEST_F(SafeTensorsRejects, EntryMissingAKey)
{
    for (const std::string key : {"dtype", "shape", "data_offsets"}) {
        json entry = json::parse("{" + valid_entry + "}");
        entry.erase(key);
        write_raw_safetensors(dir / "t.safetensors", json{{"w", entry}}.dump(), 24);
        expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                          {"tensor w has no \"" + key + "\""});
    }
}

TEST_F(SafeTensorsRejects, DtypeNotAString)
{
    write_raw_safetensors(dir / "t.safetensors",
                          R"({"w": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}})", 4);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                      {"tensor w", "dtype is not a string"});
}

TEST_F(SafeTensorsRejects, ShapeNotNonNegativeIntegers)
{
    for (const std::string shape :
         {"[-2, 3]", "[2.5, 3]", "[\"2\", 3]", "[2, null]", "[9223372036854775808, 1]"}) {
        write_raw_safetensors(
            dir / "t.safetensors",
            R"({"w": {"dtype": "F32", "shape": )" + shape + R"(, "data_offsets": [0, 24]}})", 24);
        expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                          {"tensor w", "is not a list of non-negative integers"});
    }
}

TEST_F(SafeTensorsRejects, ShapeNotAnArray)
{
    write_raw_safetensors(dir / "t.safetensors",
                          R"({"w": {"dtype": "F32", "shape": 6, "data_offsets": [0, 24]}})", 24);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                      {"tensor w", "shape is not an array"});
}

TEST_F(SafeTensorsRejects, ElementCountOverflows)
{
    write_raw_safetensors(
        dir / "t.safetensors",
        R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 0]}})",
        0);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                      {"tensor w", "more than 2^64 elements"});
}

TEST_F(SafeTensorsRejects, ByteSizeOverflows)
{
    // 2^62 elements fit in 64 bits; their 2^64 bytes do not, and would wrap to 0.
    write_raw_safetensors(
        dir / "t.safetensors",
        R"({"w": {"dtype": "F32", "shape": [2305843009213693952, 2], "data_offsets": [0, 0]}})", 0);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                      {"tensor w of dtype F32", "needs 4611686018427387904 x 4 bytes"});
}

TEST_F(SafeTensorsRejects, OffsetsOutsideTheDataBuffer)
{
    write_raw_safetensors(dir / "t.safetensors",
                          R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [4, 28]}})",
                          24);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                      {"tensor w", "[4, 28] is not a byte range within the 24-byte data buffer"});
}

TEST_F(SafeTensorsRejects, OffsetsReversed)
{
    write_raw_safetensors(dir / "t.safetensors",
                          R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [24, 0]}})", 24);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                      {"tensor w", "[24, 0] is not a byte range"});
}

TEST_F(SafeTensorsRejects, OffsetsNotAPairOfIntegers)
{
    for (const std::string offsets : {"[0]", "[0, 24, 48]", "[-1, 23]", "[0, \"24\"]", "24"}) {
        write_raw_safetensors(
            dir / "t.safetensors",
            R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": )" + offsets + "}}", 24);
        expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                          {"tensor w", "is not a pair of non-negative integers"});
    }
}

TEST_F(SafeTensorsRejects, ByteSizeDisagreesWithShapeAndDtype)
{
    write_raw_safetensors(dir / "t.safetensors",
                          R"({"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 24]}})",
                          24);
    expect_load_error(
        [&] { SafeTensors(dir / "t.safetensors"); },
        {"tensor w of dtype BF16 and shape [2, 3] needs 6 x 2 bytes", "[0, 24] hold 24"});
}

TEST_F(SafeTensorsRejects, MetadataNotAnObject)
{
    write_raw_safetensors(dir / "t.safetensors", R"({"__metadata__": [1]})", 0);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                      {"__metadata__ is not an object"});
}

TEST_F(SafeTensorsRejects, UnknownDtypeOnlyWhenConverted)
{
    write_raw_safetensors(dir / "t.safetensors",
                          R"({"w": {"dtype": "Q4_K", "shape": [2, 3], "data_offsets": [0, 24]},
                              "i": {"dtype": "I32", "shape": [6], "data_offsets": [24, 48]}})",
                          48);
    const SafeTensors file(dir / "t.safetensors"); // opening is fine: other tensors are usable
    expect_load_error(
        [&] {
            file.floats("w", {2, 3});
        },
        {"t.safetensors", "tensor w has dtype Q4_K", "only F32, BF16 and F16"});
    expect_load_error([&] { file.floats("i", {6}); }, {"tensor i has dtype I32"});
    expect_load_error([&] { file.int32s("w"); }, {"tensor w has dtype Q4_K, expected I32"});
}

TEST_F(SafeTensorsRejects, MissingTensor)
{
    write_raw_safetensors(dir / "t.safetensors", "{\"w\": {" + valid_entry + "}}", 24);
    const SafeTensors file(dir / "t.safetensors");
    expect_load_error([&] { file.floats("v", {2, 3}); }, {"t.safetensors", "no tensor named v"});
    expect_load_error([&] { file.info("v"); }, {"no tensor named v"});
    expect_load_error([&] { file.int32s("v"); }, {"no tensor named v"});
}

TEST_F(SafeTensorsRejects, UnexpectedShape)
{
    write_raw_safetensors(dir / "t.safetensors", "{\"w\": {" + valid_entry + "}}", 24);
    const SafeTensors file(dir / "t.safetensors");
    expect_load_error(
        [&] {
            file.floats("w", {3, 2});
        },
        {"tensor w has shape [2, 3], expected [3, 2]"});
    expect_load_error([&] { file.floats("w", {6}); }, {"expected [6]"});
}

// Byte ranges that do not tile the data buffer: each file below is otherwise valid, and was
// read before with tensors made of the wrong bytes.
TEST_F(SafeTensorsRejects, DuplicateTensorName)
{
    // nlohmann keeps one of the two entries; which one is read must not be left to chance.
    write_raw_safetensors(dir / "t.safetensors",
                          R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                              "w": {"dtype": "F32", "shape": [6], "data_offsets": [24, 48]}})",
                          48);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                      {"t.safetensors", "key \"w\" appears twice"});
}

TEST_F(SafeTensorsRejects, OverlappingOffsets)
{
    write_raw_safetensors(dir / "t.safetensors",
                          R"({"a": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]},
                              "b": {"dtype": "F32", "shape": [6], "data_offsets": [12, 36]}})",
                          36);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                      {"t.safetensors", "tensor b: data_offsets [12, 36] overlap those of tensor a"});
    // The same range twice is an overlap too.
    write_raw_safetensors(dir / "t.safetensors",
                          R"({"a": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]},
                              "b": {"dtype": "I32", "shape": [6], "data_offsets": [0, 24]}})",
                          24);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                      {"tensor b: data_offsets [0, 24] overlap those of tensor a"});
}

TEST_F(SafeTensorsRejects, GapBetweenTensors)
{
    write_raw_safetensors(dir / "t.safetensors",
                          R"({"a": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]},
                              "b": {"dtype": "F32", "shape": [6], "data_offsets": [28, 52]}})",
                          52);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                      {"t.safetensors", "tensor b: data_offsets [28, 52] leave bytes [24, 28)",
                       "after tensor a"});
}

TEST_F(SafeTensorsRejects, FirstTensorNotAtZero)
{
    write_raw_safetensors(dir / "t.safetensors",
                          R"({"a": {"dtype": "F32", "shape": [6], "data_offsets": [4, 28]}})", 28);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                      {"tensor a: data_offsets [4, 28] leave bytes [0, 4)", "at its start"});
}

TEST_F(SafeTensorsRejects, BytesAfterTheLastTensor)
{
    write_raw_safetensors(dir / "t.safetensors", "{\"w\": {" + valid_entry + "}}", 30);
    expect_load_error(
        [&] { SafeTensors(dir / "t.safetensors"); },
        {"t.safetensors", "the data buffer is 30 bytes but the tensors end at 24", "tensor w"});
    write_raw_safetensors(dir / "t.safetensors", "{}", 8);
    expect_load_error([&] { SafeTensors(dir / "t.safetensors"); },
                      {"the data buffer is 8 bytes but the tensors end at 0 (no tensors)"});
}

// What does tile: empty tensors anywhere on a boundary (the writer puts them there), and no
// tensors over no data.
TEST_F(SafeTensorsRejects, EmptyTensorsOnABoundaryTile)
{
    write_raw_safetensors(dir / "t.safetensors",
                          R"({"z": {"dtype": "F32", "shape": [0], "data_offsets": [24, 24]},
                              "a": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]},
                              "y": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]}})",
                          24);
    EXPECT_EQ(SafeTensors(dir / "t.safetensors").names().size(), 3u);
    write_raw_safetensors(dir / "t.safetensors", "{}", 0);
    EXPECT_TRUE(SafeTensors(dir / "t.safetensors").names().empty());
}

// A FIFO in place of a model file: opening it for reading blocks until a writer comes, so
// the loader must look before it opens. If the call under test does block, the test fails
// and unblocks it by opening the write end, rather than hanging the suite.
template <class F>
void expect_fifo_rejected(const fs::path& fifo, F&& call,
                          std::initializer_list<std::string> fragments)
{
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << "mkfifo " << fifo;
    auto done = std::async(std::launch::async, [&] { expect_load_error(call, fragments); });
    if (done.wait_for(std::chrono::seconds(10)) == std::future_status::timeout) {
        ADD_FAILURE() << "reading " << fifo << " blocked";
        // The blocked open counts as a reader, so a non-blocking writer's open succeeds.
        for (int attempt = 0; attempt < 1000; ++attempt) {
            const int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
            if (fd >= 0) {
                ::close(fd);
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }
    done.get();
}

TEST_F(SafeTensorsRejects, Fifo)
{
    expect_fifo_rejected(dir / "t.safetensors", [&] { SafeTensors(dir / "t.safetensors"); },
                         {"t.safetensors", "not a regular file"});
}

// ---------------------------------------------------------------------------------------------
// Hugging Face checkpoints

using HfLoader = WithTempDir;

void check_hf_round_trip(const TempDir& dir, Stored stored)
{
    const Model written = random_model(hf_test_config(), stored, 7);
    write_hf(dir, hf_config_json(written.config, false), hf_tensors(written, stored, false));
    expect_same_model(load_hf(dir.path()), written);
}

TEST_F(HfLoader, ReadsEveryF32WeightExactly) { check_hf_round_trip(dir, Stored::f32); }
TEST_F(HfLoader, ReadsEveryBf16WeightExactly) { check_hf_round_trip(dir, Stored::bf16); }
TEST_F(HfLoader, ReadsEveryF16WeightExactly) { check_hf_round_trip(dir, Stored::f16); }

TEST_F(HfLoader, TiedEmbeddingsCopyTheEmbeddingIntoLmHead)
{
    Model written = random_model(hf_test_config(), Stored::bf16, 8);
    write_hf(dir, hf_config_json(written.config, true), hf_tensors(written, Stored::bf16, true));
    written.lm_head = written.embedding;
    expect_same_model(load_hf(dir.path()), written);
}

TEST_F(HfLoader, AbsentKeysTakeTransformersDefaults)
{
    Config c = hf_test_config();
    c.kv_heads = c.heads;
    c.head_dim = c.hidden_size / c.heads;
    Model written = random_model(c, Stored::f32, 9);
    json config = hf_config_json(c, false);
    for (const char* key : {"num_key_value_heads", "head_dim", "rope_theta", "rms_norm_eps",
                            "max_position_embeddings", "tie_word_embeddings", "rope_scaling",
                            "hidden_act", "attention_bias", "mlp_bias"})
        config.erase(key);
    write_hf(dir, config, hf_tensors(written, Stored::f32, false));
    written.config.rope_theta = 10000.0f;
    written.config.rms_norm_eps = 1e-6f;
    written.config.max_positions = 0;
    expect_same_model(load_hf(dir.path()), written);
}

TEST_F(HfLoader, LoadModelReadsADirectoryAsHuggingFace)
{
    const Model written = random_model(hf_test_config(), Stored::f32, 10);
    write_hf(dir, hf_config_json(written.config, false), hf_tensors(written, Stored::f32, false));
    expect_same_model(load_model(dir.path()), written);
}

using HfRejects = WithTempDir;

// Writes the valid test model after letting the test break its config or its tensors.
template <class EditConfig, class EditTensors>
void write_broken_hf(const TempDir& dir, EditConfig&& edit_config, EditTensors&& edit_tensors)
{
    const Model m = random_model(hf_test_config(), Stored::f32, 11);
    json config = hf_config_json(m.config, false);
    std::vector<NamedTensor> tensors = hf_tensors(m, Stored::f32, false);
    edit_config(config);
    edit_tensors(tensors);
    write_hf(dir, config, tensors);
}

template <class EditConfig>
void write_hf_with_config(const TempDir& dir, EditConfig&& edit_config)
{
    write_broken_hf(dir, edit_config, [](std::vector<NamedTensor>&) {});
}

void erase_tensor(std::vector<NamedTensor>& tensors, const std::string& name)
{
    std::erase_if(tensors, [&](const NamedTensor& t) { return t.name == name; });
}

TEST_F(HfRejects, MissingConfig)
{
    expect_load_error([&] { load_hf(dir.path()); }, {"config.json", "cannot open"});
}

TEST_F(HfRejects, ConfigNotJson)
{
    write_text(dir / "config.json", "{\"vocab_size\": 11,");
    expect_load_error([&] { load_hf(dir.path()); }, {"config.json", "not valid JSON"});
}

TEST_F(HfRejects, ConfigNotAnObject)
{
    write_text(dir / "config.json", "[11]");
    expect_load_error([&] { load_hf(dir.path()); }, {"config.json", "not a JSON object"});
}

TEST_F(HfRejects, RequiredKeyMissing)
{
    for (const std::string key : {"vocab_size", "hidden_size", "intermediate_size",
                                  "num_hidden_layers", "num_attention_heads"}) {
        write_hf_with_config(dir, [&](json& config) { config.erase(key); });
        expect_load_error([&] { load_hf(dir.path()); },
                          {"config.json", "key " + key + " is missing"});
    }
}

TEST_F(HfRejects, KeyNotAPositiveInteger)
{
    for (const json& value :
         {json(0), json(-3), json(2.5), json("2"), json(1099511627776LL), json(nullptr)}) {
        write_hf_with_config(dir, [&](json& config) { config["num_hidden_layers"] = value; });
        expect_load_error([&] { load_hf(dir.path()); }, {"config.json", "num_hidden_layers"});
    }
    write_hf_with_config(dir, [](json& config) { config["hidden_size"] = nullptr; });
    expect_load_error([&] { load_hf(dir.path()); }, {"key hidden_size is null"});
    write_hf_with_config(dir, [](json& config) { config["num_key_value_heads"] = -2; });
    expect_load_error([&] { load_hf(dir.path()); },
                      {"key num_key_value_heads is -2, expected a positive integer"});
    write_hf_with_config(dir, [](json& config) { config["rope_theta"] = "big"; });
    expect_load_error([&] { load_hf(dir.path()); },
                      {"key rope_theta is \"big\", expected a positive number"});
    write_hf_with_config(dir, [](json& config) { config["tie_word_embeddings"] = 1; });
    expect_load_error([&] { load_hf(dir.path()); },
                      {"key tie_word_embeddings is 1, expected true or false"});
}

TEST_F(HfRejects, RopeScaling)
{
    write_hf_with_config(dir, [](json& config) {
        config["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
    });
    expect_load_error([&] { load_hf(dir.path()); },
                      {"config.json", "rope_scaling", "llama3", "is not supported"});
}

TEST_F(HfRejects, ArchitectureVariants)
{
    write_hf_with_config(dir, [](json& config) { config["hidden_act"] = "gelu"; });
    expect_load_error([&] { load_hf(dir.path()); }, {"hidden_act \"gelu\" is not supported"});
    write_hf_with_config(dir, [](json& config) { config["attention_bias"] = true; });
    expect_load_error([&] { load_hf(dir.path()); }, {"attention_bias = true is not supported"});
}

// The attention variants of config.json, with the layers transformers gives them.
TEST_F(HfLoader, ReadsAttentionVariants)
{
    // hf_test_config has 2 layers.
    const auto config_of = [&](const std::function<void(json&)>& edit) {
        write_hf_with_config(dir, edit);
        return load_hf(dir.path()).config;
    };
    using Windows = std::vector<std::int64_t>;
    // Mistral (and any family without a rule of its own): every layer.
    EXPECT_EQ(config_of([](json& c) { c["sliding_window"] = 4096; }).sliding_window,
              (Windows{4096, 4096}));
    EXPECT_EQ(config_of([](json& c) {
                  c["model_type"] = "mistral";
                  c["sliding_window"] = 8;
              }).sliding_window,
              (Windows{8, 8}));
    // Qwen2: layers from max_window_layers on (default 28), only with use_sliding_window
    // (default false for model_type qwen2).
    EXPECT_EQ(config_of([](json& c) {
                  c["model_type"] = "qwen2";
                  c["use_sliding_window"] = true;
                  c["sliding_window"] = 8;
                  c["max_window_layers"] = 1;
              }).sliding_window,
              (Windows{0, 8}));
    EXPECT_EQ(config_of([](json& c) {
                  c["model_type"] = "qwen2";
                  c["use_sliding_window"] = true;
                  c["sliding_window"] = 8;
                  c["max_window_layers"] = 0;
              }).sliding_window,
              (Windows{8, 8}));
    const Config default_layers = config_of([](json& c) {
        c["model_type"] = "qwen2";
        c["use_sliding_window"] = true;
        c["sliding_window"] = 8;
    });
    EXPECT_EQ(default_layers.window_of(0), 0);
    EXPECT_EQ(default_layers.window_of(1), 0);
    EXPECT_TRUE(config_of([](json& c) {
                    c["model_type"] = "qwen2";
                    c["sliding_window"] = 8;
                    c["max_window_layers"] = 0;
                }).sliding_window.empty());
    // A window switched off: null, or use_sliding_window false (Qwen2 writes both).
    EXPECT_TRUE(config_of([](json& c) { c["sliding_window"] = nullptr; }).sliding_window.empty());
    EXPECT_TRUE(config_of([](json& c) {
                    c["sliding_window"] = 4096;
                    c["use_sliding_window"] = false;
                }).sliding_window.empty());
    // layer_types (Gemma 2/3 and newer configs) says which layers slide, before any rule.
    EXPECT_EQ(config_of([](json& c) {
                  c["sliding_window"] = 16;
                  c["layer_types"] = {"full_attention", "sliding_attention"};
              }).sliding_window,
              (Windows{0, 16}));
    EXPECT_EQ(config_of([](json& c) {
                  c["model_type"] = "qwen2";
                  c["use_sliding_window"] = true;
                  c["sliding_window"] = 16;
                  c["max_window_layers"] = 5;
                  c["layer_types"] = {"sliding_attention", "full_attention"};
              }).sliding_window,
              (Windows{16, 0}));
    EXPECT_TRUE(config_of([](json& c) {
                    c["layer_types"] = {"sliding_attention", "sliding_attention"};
                }).sliding_window.empty());
    // The caps and the scale.
    const Config capped = config_of([](json& c) {
        c["attn_logit_softcapping"] = 50.0;
        c["final_logit_softcapping"] = 30;
        c["query_pre_attn_scalar"] = 256;
    });
    EXPECT_EQ(capped.attn_logit_softcapping, 50.0f);
    EXPECT_EQ(capped.final_logit_softcapping, 30.0f);
    EXPECT_EQ(capped.query_pre_attn_scalar, 256.0f);
    EXPECT_TRUE(capped.sliding_window.empty());
    const Config uncapped = config_of([](json& c) {
        c["attn_logit_softcapping"] = nullptr;
        c["final_logit_softcapping"] = nullptr;
    });
    EXPECT_FALSE(uncapped.attn_logit_softcapping);
    EXPECT_FALSE(uncapped.final_logit_softcapping);
    EXPECT_FALSE(uncapped.query_pre_attn_scalar);
}

// Gemma 2's config: Gemma2Config's defaults for absent keys, its own activation key.
TEST_F(HfLoader, Gemma2ConfigTakesGemma2Defaults)
{
    const auto config_of = [&](const json& config) {
        write_text(dir / "config.json", config.dump());
        return detail::read_hf_config(detail::JsonConfig(dir / "config.json"));
    };
    json gemma = {{"model_type", "gemma2"},  {"hidden_act", "gelu_pytorch_tanh"},
                  {"vocab_size", 11},        {"hidden_size", 16},
                  {"intermediate_size", 20}, {"num_hidden_layers", 3},
                  {"num_attention_heads", 8}};
    const Config c = config_of(gemma);
    EXPECT_EQ(c.family, Family::gemma2);
    EXPECT_EQ(c.activation, Activation::gelu_tanh);
    EXPECT_EQ(c.embedding_scale, 4.0f);
    EXPECT_EQ(c.kv_heads, 4);
    EXPECT_EQ(c.head_dim, 256);
    EXPECT_EQ(c.attn_logit_softcapping, 50.0f);
    EXPECT_EQ(c.final_logit_softcapping, 30.0f);
    EXPECT_EQ(c.query_pre_attn_scalar, 256.0f);
    EXPECT_EQ(c.sliding_window, (std::vector<std::int64_t>{4096, 0, 4096}));
    // Null switches a default off; written values win.
    gemma["final_logit_softcapping"] = nullptr;
    gemma["sliding_window"] = 8;
    gemma["layer_types"] = {"full_attention", "sliding_attention", "full_attention"};
    const Config d = config_of(gemma);
    EXPECT_FALSE(d.final_logit_softcapping);
    EXPECT_EQ(d.sliding_window, (std::vector<std::int64_t>{0, 8, 0}));
    gemma["hidden_activation"] = "gelu";
    expect_load_error([&] { config_of(gemma); },
                      {"config.json", "hidden_activation \"gelu\" is not supported"});
}

// A variant key the forward pass cannot honour exactly is an error naming it, never a model
// that runs plain causal attention instead.
TEST_F(HfRejects, AttentionVariantKeys)
{
    for (const json& bad : {json(0), json(-4), json(2.5), json("4096")}) {
        write_hf_with_config(dir, [&](json& config) { config["sliding_window"] = bad; });
        expect_load_error([&] { load_hf(dir.path()); },
                          {"config.json", "key sliding_window is " + bad.dump() +
                                              ", expected a positive integer"});
    }
    for (const char* key :
         {"attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar"})
        for (const json& bad : {json(0.0), json(-30.0), json("50"), json(1e300)}) {
            write_hf_with_config(dir, [&](json& config) { config[key] = bad; });
            expect_load_error([&] { load_hf(dir.path()); },
                              {"config.json", std::string("key ") + key + " is " + bad.dump() +
                                                  ", expected a positive number"});
        }
    write_hf_with_config(dir, [](json& config) {
        config["use_sliding_window"] = "no";
        config["sliding_window"] = 64;
    });
    expect_load_error([&] { load_hf(dir.path()); },
                      {"key use_sliding_window is \"no\", expected true or false"});
    write_hf_with_config(dir, [](json& config) {
        config["sliding_window"] = 64;
        config["max_window_layers"] = -1;
    });
    expect_load_error([&] { load_hf(dir.path()); },
                      {"key max_window_layers is -1, expected a non-negative integer"});
    write_hf_with_config(dir, [](json& config) {
        config["sliding_window"] = 64;
        config["layer_types"] = {"sliding_attention"};
    });
    expect_load_error([&] { load_hf(dir.path()); },
                      {"key layer_types is [\"sliding_attention\"], expected an array of 2 "
                       "entries (num_hidden_layers)"});
    write_hf_with_config(dir, [](json& config) { config["layer_types"] = "sliding_attention"; });
    expect_load_error([&] { load_hf(dir.path()); }, {"key layer_types is \"sliding_attention\""});
    write_hf_with_config(dir, [](json& config) {
        config["sliding_window"] = 64;
        config["layer_types"] = {"full_attention", "chunked_attention"};
    });
    expect_load_error([&] { load_hf(dir.path()); },
                      {"layer_types[1] is \"chunked_attention\": only \"sliding_attention\" "
                       "and \"full_attention\" are supported"});
    for (const char* family : {"gemma", "gemma3", "gemma3_text"}) {
        write_hf_with_config(dir, [&](json& config) { config["model_type"] = family; });
        expect_load_error([&] { load_hf(dir.path()); },
                          {"config.json", "model_type \"" + std::string(family) +
                                              "\" is not supported: of the Gemma family only "
                                              "gemma2 is implemented"});
    }
}

// Qwen2 checkpoints hold q/k/v biases whatever their config says; the forward pass has none.
TEST_F(HfRejects, BiasTensors)
{
    write_broken_hf(
        dir, [](json&) {},
        [](std::vector<NamedTensor>& tensors) {
            tensors.push_back(f32_tensor("model.layers.1.self_attn.k_proj.bias", {12},
                                         std::vector<float>(12, 0.5f)));
        });
    expect_load_error([&] { load_hf(dir.path()); },
                      {"model.safetensors", "tensor model.layers.1.self_attn.k_proj.bias is not "
                                            "supported: the forward pass has no biases"});
}

TEST_F(HfRejects, HeadsNotAMultipleOfKvHeads)
{
    write_hf_with_config(dir, [](json& config) { config["num_key_value_heads"] = 3; });
    expect_load_error([&] { load_hf(dir.path()); },
                      {"num_attention_heads 4 is not a multiple of num_key_value_heads 3"});
}

TEST_F(HfRejects, HeadDimUnusable)
{
    write_hf_with_config(dir, [](json& config) { config["head_dim"] = 5; });
    expect_load_error([&] { load_hf(dir.path()); }, {"head_dim 5 is odd"});
    write_hf_with_config(dir, [](json& config) {
        config.erase("head_dim");
        config["num_attention_heads"] = 3;
        config["num_key_value_heads"] = 1;
    });
    expect_load_error([&] { load_hf(dir.path()); },
                      {"hidden_size 16 is not a multiple of num_attention_heads 3"});
}

TEST_F(HfRejects, TensorShapeContradictsTheConfig)
{
    write_broken_hf(
        dir, [](json&) {},
        [](std::vector<NamedTensor>& tensors) {
            const std::string name = "model.layers.1.self_attn.k_proj.weight";
            erase_tensor(tensors, name);
            tensors.push_back(f32_tensor(name, {8, 16}, std::vector<float>(8 * 16)));
        });
    expect_load_error([&] { load_hf(dir.path()); },
                      {"model.safetensors: tensor model.layers.1.self_attn.k_proj.weight has "
                       "shape [8, 16], the config implies [12, 16]"});

    write_broken_hf(
        dir, [](json&) {},
        [](std::vector<NamedTensor>& tensors) {
            erase_tensor(tensors, "model.norm.weight");
            tensors.push_back(f32_tensor("model.norm.weight", {1, 16}, std::vector<float>(16)));
        });
    expect_load_error([&] { load_hf(dir.path()); },
                      {"tensor model.norm.weight has shape [1, 16], the config implies [16]"});
}

TEST_F(HfRejects, TensorMissing)
{
    write_broken_hf(
        dir, [](json&) {},
        [](std::vector<NamedTensor>& tensors) {
            erase_tensor(tensors, "model.layers.1.mlp.up_proj.weight");
        });
    expect_load_error([&] { load_hf(dir.path()); },
                      {"model.safetensors", "tensor model.layers.1.mlp.up_proj.weight is missing"});
}

TEST_F(HfRejects, LmHeadMissingWhenNotTied)
{
    write_broken_hf(
        dir, [](json&) {},
        [](std::vector<NamedTensor>& tensors) { erase_tensor(tensors, "lm_head.weight"); });
    expect_load_error([&] { load_hf(dir.path()); },
                      {"lm_head.weight is missing", "tie_word_embeddings false"});
}

TEST_F(HfRejects, IntegerWeight)
{
    write_broken_hf(
        dir, [](json&) {},
        [](std::vector<NamedTensor>& tensors) {
            erase_tensor(tensors, "model.norm.weight");
            tensors.push_back(i32_tensor("model.norm.weight", {16}, std::vector<std::int32_t>(16)));
        });
    expect_load_error([&] { load_hf(dir.path()); }, {"tensor model.norm.weight has dtype I32"});
}

TEST_F(HfRejects, WeightsFileMissingOrSharded)
{
    write_text(dir / "config.json", hf_config_json(hf_test_config(), false).dump());
    expect_load_error([&] { load_hf(dir.path()); }, {"model.safetensors", "cannot open"});
    write_text(dir / "model.safetensors.index.json", "{}");
    expect_load_error([&] { load_hf(dir.path()); }, {"sharded checkpoints", "not supported"});
}

TEST_F(HfRejects, CorruptWeightsFileIsReportedAsLoadError)
{
    write_text(dir / "config.json", hf_config_json(hf_test_config(), false).dump());
    write_raw_safetensors(dir / "model.safetensors", "not json at all", 0);
    expect_load_error([&] { load_model(dir.path()); }, {"model.safetensors", "not valid JSON"});
}

TEST_F(HfRejects, DeeplyNestedConfigValue)
{
    const std::string config = hf_config_json(hf_test_config(), false).dump();
    write_text(dir / "config.json", config.substr(0, config.size() - 1) +
                                        R"(, "task_specific_params": )" + nested_arrays(100'000) +
                                        "}");
    expect_load_error([&] { load_hf(dir.path()); },
                      {"config.json", "nested more than 64 levels deep"});
}

TEST_F(HfRejects, RepeatedConfigKey)
{
    write_text(dir / "config.json", R"({"vocab_size": 11, "vocab_size": 12})");
    expect_load_error([&] { load_hf(dir.path()); },
                      {"config.json", "key \"vocab_size\" appears twice"});
}

TEST_F(HfRejects, ConfigOrWeightsAFifo)
{
    expect_fifo_rejected(dir / "config.json", [&] { load_hf(dir.path()); },
                         {"config.json", "not a regular file"});
    fs::remove(dir / "config.json");
    write_text(dir / "config.json", hf_config_json(hf_test_config(), false).dump());
    expect_fifo_rejected(dir / "model.safetensors", [&] { load_hf(dir.path()); },
                         {"model.safetensors", "not a regular file"});
}

TEST_F(HfRejects, LoadModelOfAFifo)
{
    expect_fifo_rejected(dir / "model.bin", [&] { load_model(dir / "model.bin"); },
                         {"model.bin", "neither a directory", "nor a regular file"});
}

// Sizes are checked against the weight file before anything is allocated: 2^31 - 1 layers
// used to end in a bare std::bad_alloc, 10^7 in gigabytes of empty layers first.
TEST_F(HfRejects, LayerCountBeyondTheWeights)
{
    for (const int layers : {3, 10'000'000, std::numeric_limits<int>::max()}) {
        write_hf_with_config(dir, [&](json& config) { config["num_hidden_layers"] = layers; });
        expect_load_error([&] { load_hf(dir.path()); },
                          {"config.json: num_hidden_layers is " + std::to_string(layers),
                           "model.safetensors holds no tensors of layer 2 (model.layers.2.*)"});
    }
}

TEST_F(HfRejects, LayerCountBelowTheWeights)
{
    // The file's second layer would be silently left out of the model.
    write_hf_with_config(dir, [](json& config) { config["num_hidden_layers"] = 1; });
    expect_load_error([&] { load_hf(dir.path()); }, {"config.json: num_hidden_layers is 1",
                                                     "model.safetensors holds tensors of layer 1"});
}

// Each size key set far beyond the test model's weights: the error names the key.
TEST_F(HfRejects, SizeKeysBeyondTheWeights)
{
    const int big = 1 << 30; // even and a multiple of the KV heads, so only the sizes differ
    for (const std::string key : {"vocab_size", "hidden_size", "intermediate_size",
                                  "num_attention_heads", "num_key_value_heads", "head_dim"}) {
        // The test model's 4 query heads allow 1, 2 or 4 KV heads; it has 2.
        write_hf_with_config(
            dir, [&](json& config) { config[key] = key == "num_key_value_heads" ? 4 : big; });
        expect_load_error([&] { load_hf(dir.path()); },
                          {"model.safetensors: tensor", "the config implies", key});
    }
}

TEST_F(HfRejects, EverySizeKeyMustBeAPositiveInteger)
{
    for (const std::string key :
         {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
          "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"})
        for (const json& value :
             {json(2048.9), json(16.0), json(-1), json(true), json("16"), json(0),
              json::parse("18446744073709551616"), json(2147483648LL), json::array({16})}) {
            write_hf_with_config(dir, [&](json& config) { config[key] = value; });
            expect_load_error([&] { load_hf(dir.path()); },
                              {"config.json", "key " + key + " is " + value.dump(),
                               "expected a positive integer"});
        }
}

// ---------------------------------------------------------------------------------------------
// llama2.c checkpoints

using Llama2cLoader = WithTempDir;

TEST_F(Llama2cLoader, SharedClassifierIsTheEmbedding)
{
    Model written = random_model(llama2c_test_config(), Stored::f32, 12);
    written.lm_head = written.embedding;
    write_llama2c(dir / "m.bin", llama2c_header(written.config, true),
                  llama2c_weights(written, true));
    expect_same_model(load_llama2c(dir / "m.bin"), written);
}

TEST_F(Llama2cLoader, UnsharedClassifierIsReadFromTheEnd)
{
    const Model written = random_model(llama2c_test_config(), Stored::f32, 13);
    write_llama2c(dir / "m.bin", llama2c_header(written.config, false),
                  llama2c_weights(written, false));
    const Model loaded = load_llama2c(dir / "m.bin");
    expect_same_model(loaded, written);
    EXPECT_FALSE((loaded.lm_head.array() == loaded.embedding.array()).all());
}

TEST_F(Llama2cLoader, LoadModelReadsAFileAsLlama2c)
{
    const Model written = random_model(llama2c_test_config(), Stored::f32, 14);
    write_llama2c(dir / "m.bin", llama2c_header(written.config, false),
                  llama2c_weights(written, false));
    expect_same_model(load_model(dir / "m.bin"), written);
}

using Llama2cRejects = WithTempDir;

// The valid test model's header and weights, for the test to break.
struct Llama2cParts {
    Llama2cHeader header;
    std::vector<float> weights;
};

Llama2cParts llama2c_parts()
{
    const Model m = random_model(llama2c_test_config(), Stored::f32, 15);
    return {llama2c_header(m.config, false), llama2c_weights(m, false)};
}

TEST_F(Llama2cRejects, FileShorterThanTheHeader)
{
    write_text(dir / "m.bin", "0123456789");
    expect_load_error([&] { load_llama2c(dir / "m.bin"); },
                      {"m.bin", "the file is 10 bytes, shorter than the 28-byte"});
}

TEST_F(Llama2cRejects, SizeDisagreesWithTheHeader)
{
    Llama2cParts parts = llama2c_parts();
    const std::size_t bytes = 28 + parts.weights.size() * 4;

    parts.weights.pop_back();
    write_llama2c(dir / "m.bin", parts.header, parts.weights);
    expect_load_error([&] { load_llama2c(dir / "m.bin"); },
                      {"m.bin", "implies " + std::to_string(bytes) + " bytes, the file has " +
                                    std::to_string(bytes - 4)});

    parts.weights.resize(parts.weights.size() + 2);
    write_llama2c(dir / "m.bin", parts.header, parts.weights);
    expect_load_error([&] { load_llama2c(dir / "m.bin"); },
                      {"the file has " + std::to_string(bytes + 4)});

    // A shared classifier means one [vocab, dim] matrix fewer than the file holds.
    parts = llama2c_parts();
    parts.header[5] = -parts.header[5];
    write_llama2c(dir / "m.bin", parts.header, parts.weights);
    expect_load_error([&] { load_llama2c(dir / "m.bin"); }, {"vocab_size 11", "implies"});
}

TEST_F(Llama2cRejects, HeaderFieldNotPositive)
{
    const std::array<std::string, 7> names{"dim",        "hidden_dim", "n_layers", "n_heads",
                                           "n_kv_heads", "vocab_size", "seq_len"};
    for (const std::size_t field : {0u, 1u, 2u, 3u, 4u, 6u}) {
        for (const std::int32_t value : {0, -4}) {
            Llama2cParts parts = llama2c_parts();
            parts.header[field] = value;
            write_llama2c(dir / "m.bin", parts.header, parts.weights);
            expect_load_error([&] { load_llama2c(dir / "m.bin"); },
                              {"header field " + names[field] + " is " + std::to_string(value)});
        }
    }
    Llama2cParts parts = llama2c_parts();
    parts.header[5] = 0;
    write_llama2c(dir / "m.bin", parts.header, parts.weights);
    expect_load_error([&] { load_llama2c(dir / "m.bin"); }, {"header field vocab_size is 0"});
}

TEST_F(Llama2cRejects, InconsistentHeads)
{
    Llama2cParts parts = llama2c_parts();
    parts.header[3] = 5; // dim 16 over 5 heads
    write_llama2c(dir / "m.bin", parts.header, parts.weights);
    expect_load_error([&] { load_llama2c(dir / "m.bin"); },
                      {"dim 16 is not a multiple of n_heads 5"});

    parts = llama2c_parts();
    parts.header[4] = 3; // 4 query heads over 3 KV heads
    write_llama2c(dir / "m.bin", parts.header, parts.weights);
    expect_load_error([&] { load_llama2c(dir / "m.bin"); },
                      {"n_heads 4 is not a multiple of n_kv_heads 3"});

    parts = llama2c_parts();
    parts.header[0] = 12; // head size 3
    write_llama2c(dir / "m.bin", parts.header, parts.weights);
    expect_load_error([&] { load_llama2c(dir / "m.bin"); }, {"dim / n_heads = 3 is odd"});
}

TEST_F(Llama2cRejects, HeaderImpliesAnImpossibleSize)
{
    Llama2cParts parts = llama2c_parts();
    parts.header = {2147483646, 2147483647, 2147483647, 1, 1, 2147483647, 2147483647};
    write_llama2c(dir / "m.bin", parts.header, parts.weights);
    expect_load_error([&] { load_llama2c(dir / "m.bin"); }, {"more than 2^64 bytes"});
}

TEST_F(Llama2cRejects, VersionedExport)
{
    Llama2cParts parts = llama2c_parts();
    parts.header[0] = 0x616b3432;
    parts.header[1] = 1;
    write_llama2c(dir / "m.bin", parts.header, parts.weights);
    expect_load_error([&] { load_llama2c(dir / "m.bin"); },
                      {"magic \"ak42\", version 1", "only the legacy format"});
}

TEST_F(Llama2cRejects, LoadModelOfAMissingPath)
{
    expect_load_error([&] { load_model(dir / "nothing-here"); },
                      {"nothing-here", "no such file or directory"});
    expect_load_error([&] { load_llama2c(dir / "nothing-here"); }, {"nothing-here"});
}

} // namespace
} // namespace llama::test
