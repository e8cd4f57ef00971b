// Model tests (CTest label `model`): the Llama example on the real checkpoints in
// STAR_MODELS_DIR (see their READMEs). A few seconds in all in Release.

#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "agree.hpp"
#include "attention_backend.hpp"
#include "forward.hpp"
#include "load.hpp"
#include "needle.hpp"
#include "safetensors.hpp"

namespace {

const std::filesystem::path models = std::filesystem::path(STAR_MODELS_DIR);
const std::filesystem::path needle_model = models / "needle-byte-llama";

const llama::Model& needle_llama()
{
    static const llama::Model model = llama::load_model(needle_model);
    return model;
}

double max_logit_difference(const std::string& setting)
{
    const llama::SafeTensors reference(needle_model / "reference_logits.safetensors");
    const std::vector<std::int32_t> ids = reference.int32s("input_ids");
    const auto n = static_cast<std::int64_t>(ids.size());
    const std::vector<float> expected = reference.floats("logits", {n, 256});
    llama::Sequence seq(needle_llama(), llama::make_backend(llama::parse_setting(setting),
                                                            needle_llama().config, n));
    const llama::Matrix logits =
        seq.encode_context(std::vector<int>(ids.begin(), ids.end()), llama::Logits::all);
    double worst = 0.0;
    for (llama::index t = 0; t < logits.rows(); ++t)
        for (llama::index v = 0; v < logits.cols(); ++v) {
            const double d = std::abs(double(logits(t, v)) -
                                      expected[static_cast<std::size_t>(t * logits.cols() + v)]);
            worst = std::isnan(d) ? INFINITY : std::max(worst, d);
        }
    return worst;
}

// The PyTorch logits were computed from the same bf16 weights in float32; what is left is
// float32 rounding in a different order (measured 3.2e-5).
TEST(NeedleByteLlama, LogitsMatchTheReference)
{
    EXPECT_LT(max_logit_difference("global"), 1e-3);
    // The exact distributed paths, and Star with a single block, on the same input.
    EXPECT_LT(max_logit_difference("ring:hosts=3"), 1e-3);
    EXPECT_LT(max_logit_difference("star:b=L"), 1e-3);
}

// Three samples at 2048 tokens, spread over needle depths. Global attention answered every
// one of the 50 in PyTorch and here; Star with b = L/4 answered 49 of 50 in both (its miss
// is not among these three), so at most one miss is allowed in case a different CPU's
// rounding flips a close call.
TEST(NeedleByteLlama, NeedleSliceGlobalExactStarClose)
{
    const auto samples = llama::read_needles((needle_model / "needles.jsonl").string());
    std::vector<const llama::NeedleSample*> slice;
    for (const auto& s : samples)
        if (s.length == 2048)
            slice.push_back(&s);
    ASSERT_EQ(slice.size(), 50u);
    slice = {slice[0], slice[24], slice[49]};

    const auto global = llama::parse_setting("global");
    const auto star_quarter = llama::parse_setting("star:b=L/4");
    int star_correct = 0;
    for (const llama::NeedleSample* s : slice) {
        const auto exact = llama::run_needle(needle_llama(), global, *s);
        EXPECT_TRUE(exact.correct) << "depth " << s->depth << ": expected " << s->answer
                                   << ", global attention gave " << exact.generated;
        const auto star = llama::run_needle(needle_llama(), star_quarter, *s);
        star_correct += star.correct ? 1 : 0;
        EXPECT_EQ(star.backend, "star b=512 a=512 hosts=4 blocks=4");
    }
    EXPECT_GE(star_correct, 2);
}

// stories260K (llama2.c format, interleaved RoPE, GQA 2:1): global attention writes 511
// tokens after BOS; the first 256 are the context of a second reading, and at the 256
// positions after it each setting's next-token distribution is compared with global's.
TEST(Stories260K, StarAgreesWithGlobalRingExactly)
{
    const llama::Model model = llama::load_model(models / "stories260K" / "stories260K.bin");
    const std::vector<int> bos{1};
    const std::vector<int> text = llama::global_continuation(model, bos, 511);
    ASSERT_EQ(text.size(), 512u);
    const llama::index context = 256;
    const llama::Matrix exact =
        llama::continuation_logits(model, llama::parse_setting("global"), text, context).logits;

    // Ring is exact: the same choices, divergence at rounding level (measured 1e-11).
    const auto ring = llama::compare(
        exact,
        llama::continuation_logits(model, llama::parse_setting("ring:hosts=4"), text, context).logits);
    EXPECT_EQ(ring.agreeing, ring.positions);
    EXPECT_LT(ring.kl_max, 1e-6);

    // Star with the paper's defaults (b = L/4 = 64, a = b, 4 hosts) against the same run
    // without anchor, measured on this text (AMD EPYC, 2026-11-30; 256 positions):
    //
    //   setting                  greedy agreement   mean KL (nats)
    //   star:b=L/4               67.2% (172)        0.67
    //   star:b=L/4:anchor=none   52.3% (134)        1.65
    //
    // This model's 64-token blocks lose most of a story either way; the anchor is what keeps
    // the rest. The floors sit between the two with a margin on both sides: 60% agreement
    // (154 positions, 18 from either run) and a mean KL of 1.1 nats (1.6 times the anchored
    // run's, 1/1.5 of the other's). A Star run whose anchor were dropped fails both, while
    // another CPU's rounding, which may change global's 511-token text, still leaves room.
    // The no-anchor run is checked to fail them too: that shows the floors separate the two
    // on the text actually generated. That each piece is exactly right is shown by the unit
    // tests (test_llama_forward.cpp) and, here, by ring.
    const auto agreement = [&](const char* setting) {
        return llama::compare(
            exact,
            llama::continuation_logits(model, llama::parse_setting(setting), text, context).logits);
    };
    constexpr double min_agreement = 0.60, max_mean_kl = 1.1;
    const auto star_quarter = agreement("star:b=L/4");
    EXPECT_EQ(star_quarter.positions, 256);
    EXPECT_GT(star_quarter.rate(), min_agreement);
    EXPECT_TRUE(std::isfinite(star_quarter.mean_kl()));
    EXPECT_GT(star_quarter.mean_kl(), 0.0);
    EXPECT_LT(star_quarter.mean_kl(), max_mean_kl);

    const auto no_anchor = agreement("star:b=L/4:anchor=none");
    EXPECT_LT(no_anchor.rate(), min_agreement);
    EXPECT_GT(no_anchor.mean_kl(), max_mean_kl);
}

} // namespace
