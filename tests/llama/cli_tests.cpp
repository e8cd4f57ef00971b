// The `llama` command line on bad input (CTest label `model`: it needs the real checkpoint in
// STAR_MODELS_DIR/needle-byte-llama): every case must end with exit code 1 and a
// message naming the problem, never a crash, a hang or a run that passes. Each case is run
// under `timeout`, so a regression that blocks fails the test instead of hanging the suite.

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "safetensors.hpp"

namespace {

namespace fs = std::filesystem;

const fs::path model_dir = fs::path(STAR_MODELS_DIR) / "needle-byte-llama";

// A fresh directory under the system's temporary directory, removed with its contents.
class CliTest : public ::testing::Test {
protected:
    CliTest()
    {
        static std::atomic<int> counter{0};
        dir_ = fs::temp_directory_path() /
               ("star-llama-cli-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
        fs::remove_all(dir_);
        fs::create_directories(dir_);
    }
    ~CliTest() override
    {
        std::error_code ignored;
        fs::remove_all(dir_, ignored);
    }

    fs::path operator/(const std::string& name) const { return dir_ / name; }

    struct Outcome {
        int exit_code = -1; // -1: killed by a signal
        std::string error;  // what it wrote to stderr
    };

    Outcome run(const std::vector<std::string>& arguments) const
    {
        std::string command = "timeout 60 " + quoted(LLAMA_CLI);
        for (const std::string& a : arguments)
            command += " " + quoted(a);
        command += " > /dev/null 2> " + quoted((dir_ / "stderr.txt").string());
        const int status = std::system(command.c_str());
        Outcome out;
        if (status != -1 && WIFEXITED(status))
            out.exit_code = WEXITSTATUS(status);
        std::ifstream in(dir_ / "stderr.txt");
        std::ostringstream text;
        text << in.rdbuf();
        out.error = text.str();
        return out;
    }

    // Exit code 1 (124 would be `timeout` killing a hang) and every fragment in the message.
    void expect_rejected(const std::vector<std::string>& arguments,
                         const std::vector<std::string>& fragments) const
    {
        const Outcome out = run(arguments);
        EXPECT_EQ(out.exit_code, 1) << out.error;
        for (const std::string& f : fragments)
            EXPECT_NE(out.error.find(f), std::string::npos)
                << "stderr '" << out.error << "' does not mention '" << f << "'";
    }

private:
    static std::string quoted(const std::string& s)
    {
        std::string q = "'";
        for (const char c : s)
            q += c == '\'' ? std::string("'\\''") : std::string(1, c);
        return q + "'";
    }

    fs::path dir_;
};

// A NaN in the reference used to be replaced by the next finite difference (all of them
// below the tolerance here), and the run passed.
TEST_F(CliTest, LogitsFailOnANanInTheReference)
{
    const llama::SafeTensors reference(model_dir / "reference_logits.safetensors");
    const std::vector<std::int32_t> ids = reference.int32s("input_ids");
    const auto n = static_cast<std::int64_t>(ids.size());
    std::vector<float> logits = reference.floats("logits", {n, 256});
    logits[5 * 256 + 3] = std::numeric_limits<float>::quiet_NaN();
    llama::write_safetensors(
        *this / "reference.safetensors",
        {llama::i32_tensor("input_ids", {n}, ids), llama::f32_tensor("logits", {n, 256}, logits)});
    expect_rejected(
        {model_dir.string(), "logits", "--reference", (*this / "reference.safetensors").string()},
        {"llama: logits: position 5, vocabulary entry 3", "reference nan", "not finite"});
}

TEST_F(CliTest, NeedleSetsThatCannotBeMeasured)
{
    const std::string rest = R"(, "depth": 0.5, "context": "c", "question": "q", "answer": "a"})";
    const auto needle = [&](const std::string& set, const std::string& fragment) {
        std::ofstream(*this / "set.jsonl") << set;
        expect_rejected({model_dir.string(), "needle", "--set", (*this / "set.jsonl").string(),
                         "--settings", "global"},
                        {"set.jsonl", fragment});
    };
    needle("", "no needle samples");
    needle(R"({"length": 9223372036854775807)" + rest, "field length is 9223372036854775807");
    needle(R"({"length": 2048.9)" + rest, "field length is 2048.9");
}

TEST_F(CliTest, ConfigNestedTooDeep)
{
    fs::create_directories(*this / "model");
    std::ofstream(*this / "model" / "config.json")
        << R"({"vocab_size": )" << std::string(100'000, '[') << std::string(100'000, ']') << "}";
    expect_rejected({(*this / "model").string(), "generate", "--prompt", "hi"},
                    {"config.json", "nested more than 64 levels deep"});
}

TEST_F(CliTest, WeightsAFifo)
{
    fs::create_directories(*this / "model");
    fs::copy_file(model_dir / "config.json", *this / "model" / "config.json");
    ASSERT_EQ(::mkfifo((*this / "model" / "model.safetensors").c_str(), 0600), 0);
    expect_rejected({(*this / "model").string(), "generate", "--prompt", "hi"},
                    {"model.safetensors", "not a regular file"});
}

TEST_F(CliTest, LayerCountBeyondTheWeights)
{
    fs::create_directories(*this / "model");
    fs::create_symlink(model_dir / "model.safetensors", *this / "model" / "model.safetensors");
    std::ifstream in(model_dir / "config.json");
    std::ostringstream config;
    config << in.rdbuf();
    std::string text = config.str();
    const std::string key = "\"num_hidden_layers\":";
    const std::size_t at = text.find(key);
    ASSERT_NE(at, std::string::npos);
    const std::size_t value = text.find_first_of("0123456789", at + key.size());
    const std::size_t end = text.find_first_not_of("0123456789", value);
    text.replace(value, end - value, "2147483647");
    std::ofstream(*this / "model" / "config.json") << text;
    expect_rejected({(*this / "model").string(), "generate", "--prompt", "hi"},
                    {"config.json: num_hidden_layers is 2147483647", "holds no tensors of layer 6"});
}

TEST_F(CliTest, WeightsWithBytesAfterTheLastTensor)
{
    fs::create_directories(*this / "model");
    fs::copy_file(model_dir / "config.json", *this / "model" / "config.json");
    fs::copy_file(model_dir / "model.safetensors", *this / "model" / "model.safetensors");
    std::ofstream(*this / "model" / "model.safetensors", std::ios::app | std::ios::binary)
        << "trailing";
    expect_rejected({(*this / "model").string(), "generate", "--prompt", "hi"},
                    {"model.safetensors", "bytes after the last tensor"});
}

// The real model's weights beside its config with `keys` (JSON members) added and its
// model_type replaced by `model_type`.
void write_model_with_keys(const fs::path& dir, const std::string& keys,
                           const std::string& model_type = "llama")
{
    fs::create_directories(dir);
    fs::create_symlink(model_dir / "model.safetensors", dir / "model.safetensors");
    std::ifstream in(model_dir / "config.json");
    std::ostringstream config;
    config << in.rdbuf();
    std::string text = config.str();
    const std::string llama = R"("model_type": "llama")";
    const std::size_t at = text.find(llama);
    ASSERT_NE(at, std::string::npos);
    text.replace(at, llama.size(), R"("model_type": ")" + model_type + "\"");
    if (!keys.empty())
        text.insert(text.find('{') + 1, keys + ", ");
    std::ofstream(dir / "config.json") << text;
}

// A config with a window on alternate layers and both soft caps runs under Star, and says
// what each layer runs.
TEST_F(CliTest, VariantConfigRunsUnderStar)
{
    write_model_with_keys(*this / "model",
                          R"("sliding_window": 16, "attn_logit_softcapping": 30.0, )"
                          R"("final_logit_softcapping": 20.0, "layer_types": ["sliding_attention", )"
                          R"("full_attention", "sliding_attention", "full_attention", )"
                          R"("sliding_attention", "full_attention"])");
    const Outcome out = run({(*this / "model").string(), "generate", "--prompt",
                             "The quick brown fox jumps over the lazy dog, twice over.", "--steps",
                             "4", "--attention", "star:b=16:hosts=2"});
    EXPECT_EQ(out.exit_code, 0) << out.error;
    EXPECT_NE(out.error.find("(layers 0 window 16, cap 30, 1 cap 30, 2 window 16, cap 30"),
              std::string::npos)
        << out.error;
}

// A window longer than the reference text changes nothing: the reference logits still match.
TEST_F(CliTest, WindowLongerThanTheReferenceKeepsTheLogits)
{
    write_model_with_keys(*this / "model", R"("sliding_window": 4096)", "mistral");
    const Outcome out =
        run({(*this / "model").string(), "logits", "--reference",
             (model_dir / "reference_logits.safetensors").string(), "--tolerance", "1e-3"});
    EXPECT_EQ(out.exit_code, 0) << out.error;
}

TEST_F(CliTest, GemmaIsRefused)
{
    write_model_with_keys(*this / "model", "", "gemma3");
    expect_rejected({(*this / "model").string(), "generate", "--prompt", "hi"},
                    {"config.json", "model_type \"gemma3\" is not supported"});
}

} // namespace
