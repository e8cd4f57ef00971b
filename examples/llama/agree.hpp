#pragma once
// Agreement of an approximate attention with exact attention, in token space.
//
// Global attention first continues a prompt greedily. That whole text is then read again
// by each setting: its first `context_tokens` tokens as the context (phase 1, where Star
// approximates), the rest as tokens that follow it (phase 2, exact over whatever phase 1
// cached). At every position after the context we compare the setting's next-token
// distribution with global attention's: does the greedy choice agree, and how far apart
// are the distributions (KL divergence of the setting's from global's, in nats).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iomanip>
#include <optional>
#include <sstream>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention_backend.hpp"
#include "forward.hpp"
#include "model.hpp"

namespace llama {

// `prompt` continued by `count` greedy tokens under global attention.
inline std::vector<int> global_continuation(const Model& model, std::span<const int> prompt,
                                            int count)
{
    Sequence sequence(model, std::make_unique<GlobalBackend>(attention_of(model.config)));
    const Matrix logits = sequence.encode_context(prompt, Logits::last);
    std::vector<int> text(prompt.begin(), prompt.end());
    const std::vector<int> generated = generate_greedy(sequence, logits, count);
    text.insert(text.end(), generated.begin(), generated.end());
    return text;
}

struct ContinuationLogits {
    Matrix logits; // [tokens - context_tokens, vocab]: the predictions after each later token
    double context_ms = 0.0;
    double rest_ms = 0.0;
    std::string backend;
};

// The next-token logits at every position from `context_tokens` on, with `text`'s first
// `context_tokens` tokens read as the context. `L/n` sizes of the setting resolve against
// `context_tokens`; `make` makes the attention backend (default: every host in this
// process). On an MPI rank that follows the query host, `logits` has no rows.
inline ContinuationLogits continuation_logits(const Model& model, const AttentionSetting& setting,
                                              std::span<const int> text, index context_tokens,
                                              const BackendMaker& make = {})
{
    if (context_tokens < 1 || context_tokens >= static_cast<index>(text.size()))
        throw setting_error("agree: the context must hold between 1 and " +
                            std::to_string(text.size() - 1) + " tokens of the " +
                            std::to_string(text.size()) + "-token text, got " +
                            std::to_string(context_tokens));
    using Clock = std::chrono::steady_clock;
    Sequence sequence(model, (make ? make : in_process(model.config))(setting, context_tokens));
    const auto c = static_cast<std::size_t>(context_tokens);
    ContinuationLogits out;
    const auto t0 = Clock::now();
    sequence.encode_context(text.first(c));
    const auto t1 = Clock::now();
    // All later tokens in one phase-2 call: as exact as feeding them one at a time.
    out.logits = sequence.append(text.subspan(c), Logits::all);
    const auto t2 = Clock::now();
    out.context_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
    out.rest_ms = std::chrono::duration<double, std::milli>(t2 - t1).count();
    out.backend = sequence.attention().describe();
    return out;
}

struct Agreement {
    index positions = 0;
    index agreeing = 0;  // positions where both pick the same greedy token
    double kl_sum = 0.0; // sum over positions of KL(exact || approximate), nats
    double kl_max = 0.0;

    [[nodiscard]] double rate() const { return positions ? double(agreeing) / positions : 0.0; }
    [[nodiscard]] double mean_kl() const { return positions ? kl_sum / positions : 0.0; }

    Agreement& operator+=(const Agreement& o)
    {
        positions += o.positions;
        agreeing += o.agreeing;
        kl_sum += o.kl_sum;
        kl_max = std::max(kl_max, o.kl_max);
        return *this;
    }
};

// Log-softmax of one row, in double: the KL of two nearly equal distributions is a small
// difference of large sums, which float would drown in rounding.
inline std::vector<double> log_softmax(const Eigen::Ref<const Eigen::RowVectorXf>& logits)
{
    const double top = logits.maxCoeff();
    double sum = 0.0;
    for (index i = 0; i < logits.size(); ++i)
        sum += std::exp(double(logits[i]) - top);
    const double log_sum = top + std::log(sum);
    std::vector<double> out(static_cast<std::size_t>(logits.size()));
    for (index i = 0; i < logits.size(); ++i)
        out[static_cast<std::size_t>(i)] = double(logits[i]) - log_sum;
    return out;
}

// Compares `approximate` with `exact`, row by row (both [positions, vocab]).
inline Agreement compare(const Matrix& exact, const Matrix& approximate)
{
    if (exact.rows() != approximate.rows() || exact.cols() != approximate.cols())
        throw std::invalid_argument("compare: logits of different shapes");
    Agreement a;
    for (index r = 0; r < exact.rows(); ++r) {
        const std::vector<double> p = log_softmax(exact.row(r));
        const std::vector<double> q = log_softmax(approximate.row(r));
        double kl = 0.0;
        for (std::size_t i = 0; i < p.size(); ++i)
            kl += std::exp(p[i]) * (p[i] - q[i]);
        kl = std::max(kl, 0.0); // rounding can make a zero divergence slightly negative
        ++a.positions;
        a.agreeing += argmax(exact.row(r)) == argmax(approximate.row(r)) ? 1 : 0;
        a.kl_sum += kl;
        a.kl_max = std::max(a.kl_max, kl);
    }
    return a;
}

// How far logits are from reference logits (both [positions, vocab], row-major): the
// largest absolute difference, and the first entry where either side is not finite in a
// way that equality does not excuse (a NaN anywhere, an infinity against anything but the
// same infinity). That entry is reported apart, not folded into the maximum: a NaN
// difference compares false with everything, so a running maximum would let the next
// finite difference replace it and the run would pass.
struct LogitsCheck {
    double max_difference = 0.0;
    index max_position = 0;
    struct Entry {
        index position = 0;
        index vocab = 0;
        float value = 0.0f;
        float reference = 0.0f;
    };
    std::optional<Entry> non_finite; // the first such entry, in row-major order

    [[nodiscard]] bool within(double tolerance) const
    {
        return !non_finite && max_difference <= tolerance;
    }

    // One line for the user; names the first non-finite position if there is one.
    [[nodiscard]] std::string describe(double tolerance) const
    {
        std::ostringstream out;
        if (non_finite) {
            out << "position " << non_finite->position << ", vocabulary entry " << non_finite->vocab
                << ": logit " << non_finite->value << ", reference " << non_finite->reference
                << ": a logit is not finite";
            return out.str();
        }
        out << "max abs logit difference " << std::scientific << std::setprecision(3)
            << max_difference << " (position " << max_position << "), tolerance " << tolerance;
        return out.str();
    }
};

inline LogitsCheck check_logits(const Matrix& logits, std::span<const float> reference)
{
    if (reference.size() != static_cast<std::size_t>(logits.size()))
        throw std::invalid_argument("check_logits: " + std::to_string(logits.size()) +
                                    " logits against " + std::to_string(reference.size()) +
                                    " reference values");
    LogitsCheck check;
    for (index t = 0; t < logits.rows(); ++t)
        for (index v = 0; v < logits.cols(); ++v) {
            const float a = logits(t, v);
            const float b = reference[static_cast<std::size_t>(t * logits.cols() + v)];
            if (a == b) // equal infinities included: their difference would be NaN
                continue;
            const double diff = std::abs(double(a) - double(b));
            if (!std::isfinite(diff)) {
                check.non_finite = LogitsCheck::Entry{t, v, a, b};
                return check;
            }
            if (diff > check.max_difference) {
                check.max_difference = diff;
                check.max_position = t;
            }
        }
    return check;
}

} // namespace llama
