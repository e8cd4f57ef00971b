#pragma once
// Needle-in-a-haystack evaluation: a context with one "special magic number" hidden in it,
// a question asking for it, and the model's greedy continuation compared with the answer.
//
// The context goes through phase 1 (that is where Star approximates), the question
// through phase 2, and the answer is decoded one token at a time; each phase is timed.
// Prompts are byte-level: each UTF-8 byte of the text is one token (vocabulary 256).

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "attention_backend.hpp"
#include "forward.hpp"
#include "input.hpp"
#include "model.hpp"

namespace llama {

struct NeedleSample {
    index length = 0;     // nominal prompt length of the sample's group; `L` in the settings
    double depth = -1.0;  // where the needle sits, as a fraction of the context; -1 if several
    std::string context;  // phase 1
    std::string question; // phase 2; the prompt is context + question
    std::string answer;   // the expected continuation
};

// The largest sample length read: the CLI's --lengths cap. Lengths resolve settings such as
// b=L/4, whose arithmetic must not overflow, and a sample far longer than its context would
// be no sample of that length anyway.
inline constexpr index max_needle_length = index{1} << 30;

// Reads JSON lines with the fields length, depth, context, question, answer (others are
// ignored). Throws std::runtime_error naming the file, the line and the field of the first
// bad record, or the file if it holds no samples: an empty set would measure nothing and
// print an empty table as if it had passed.
inline std::vector<NeedleSample> read_needles(const std::string& path)
{
    require_regular_file<std::runtime_error>(path);
    std::ifstream in(path);
    if (!in)
        throw std::runtime_error(path + ": cannot open the needle set");
    std::vector<NeedleSample> samples;
    std::string line;
    for (int number = 1; std::getline(in, line); ++number) {
        if (line.find_first_not_of(" \t\r") == std::string::npos)
            continue;
        const std::string where = path + ":" + std::to_string(number);
        nlohmann::json j;
        try {
            j = parse_json(line);
        } catch (const json_error& e) {
            throw std::runtime_error(where + ": " + e.what());
        }
        if (!j.is_object())
            throw std::runtime_error(where + ": expected a JSON object per line");
        NeedleSample s;
        // Only a JSON integer: get<index>() would truncate 2048.9 to 2048 and wrap numbers
        // past 2^63.
        const auto length = j.find("length");
        if (length == j.end() || !length->is_number_integer() ||
            (length->is_number_unsigned() && length->get<std::uint64_t>() > max_needle_length) ||
            length->get<index>() <= 0 || length->get<index>() > max_needle_length)
            throw std::runtime_error(
                where + ": field length is " + (length == j.end() ? "missing" : length->dump()) +
                ", expected a whole number in [1, " + std::to_string(max_needle_length) + "]");
        s.length = length->get<index>();
        try {
            // Multi-needle sets have no single depth (null there).
            const auto depth = j.find("depth");
            s.depth = depth != j.end() && depth->is_number() ? depth->get<double>() : -1.0;
            s.context = j.at("context").get<std::string>();
            s.question = j.at("question").get<std::string>();
            s.answer = j.at("answer").get<std::string>();
        } catch (const nlohmann::json::exception& e) {
            throw std::runtime_error(where + ": expected length, context, question and answer (" +
                                     e.what() + ")");
        }
        if (s.context.empty() || s.question.empty() || s.answer.empty())
            throw std::runtime_error(where + ": context, question and answer must be non-empty");
        samples.push_back(std::move(s));
    }
    if (samples.empty())
        throw std::runtime_error(path + ": no needle samples in the set");
    return samples;
}

// Byte-level tokens of a text: the byte values, 0..255.
inline std::vector<int> byte_tokens(const std::string& text)
{
    std::vector<int> tokens;
    tokens.reserve(text.size());
    for (const char c : text)
        tokens.push_back(static_cast<unsigned char>(c));
    return tokens;
}

inline std::string bytes_text(std::span<const int> tokens)
{
    std::string text;
    for (const int t : tokens)
        text.push_back(static_cast<char>(t));
    return text;
}

// Wall time of the three phases of one prompt.
struct PhaseTimes {
    double context_ms = 0.0; // phase 1: context encoding
    double query_ms = 0.0;   // phase 2: the question, up to the first answer token
    double decode_ms = 0.0;  // the remaining answer tokens, all together
    int decoded = 0;         // how many tokens decode_ms covers

    PhaseTimes& operator+=(const PhaseTimes& o)
    {
        context_ms += o.context_ms;
        query_ms += o.query_ms;
        decode_ms += o.decode_ms;
        decoded += o.decoded;
        return *this;
    }
};

struct NeedleOutcome {
    bool correct = false;
    std::string generated;
    PhaseTimes times;
    std::string backend;   // what ran, sizes resolved
    bool ran_query = true; // false on an MPI rank that followed the query host: no answer here
};

// Runs one sample with one attention setting: greedy decoding of as many tokens as the
// answer has; exact match of all of them. `make` makes the attention backend (default:
// every host in this process).
inline NeedleOutcome run_needle(const Model& model, const AttentionSetting& setting,
                                const NeedleSample& sample, const BackendMaker& make = {})
{
    if (model.config.vocab_size < 256)
        throw setting_error("needle prompts are byte-level and need a vocabulary of 256, the "
                            "model has " +
                            std::to_string(model.config.vocab_size));
    using Clock = std::chrono::steady_clock;
    const auto ms = [](Clock::time_point a, Clock::time_point b) {
        return std::chrono::duration<double, std::milli>(b - a).count();
    };
    const std::vector<int> context = byte_tokens(sample.context);
    const std::vector<int> question = byte_tokens(sample.question);
    const int answer_tokens = static_cast<int>(sample.answer.size());

    Sequence sequence(model, (make ? make : in_process(model.config))(setting, sample.length));
    NeedleOutcome out;
    const auto t0 = Clock::now();
    sequence.encode_context(context);
    const auto t1 = Clock::now();
    const Matrix first = sequence.append(question, Logits::last);
    const auto t2 = Clock::now();
    const std::vector<int> generated = generate_greedy(sequence, first, answer_tokens);
    const auto t3 = Clock::now();

    out.generated = bytes_text(generated);
    out.correct = out.generated == sample.answer;
    out.ran_query = sequence.runs_query();
    out.times = {ms(t0, t1), ms(t1, t2), ms(t2, t3), answer_tokens - 1};
    out.backend = sequence.attention().describe();
    return out;
}

} // namespace llama
