// libFuzzer target over the library's public entry points (tests/fuzz/README.md).
//
// Each input is decoded into one configuration: an entry point (the kernel, global
// attention, Ring Attention, Star Attention phase 1 + query + decode steps, KVCache appends,
// the n-way and pairwise merges), shapes, policies, host counts, a softmax scale, and small
// input values. Before each call the target predicts, from the library's documented rules,
// whether the configuration is valid. Then:
//   - valid: the call must succeed and match the double-precision reference of
//     tests/reference.hpp within the tolerances the unit tests use;
//   - invalid: the call must throw star::error with a message;
//   - valid, but scores might exceed float's range (a huge scale): either, and an error
//     must be the documented overflow error;
// and no call may crash, trip a sanitizer or throw anything but star::error. Any breach
// prints the decoded configuration and traps, so libFuzzer saves the input.
//
// The byte format is read by `Input` in a fixed order of fields, so that
// tests/fuzz/make_corpus.py can write seeds aimed at each entry point and policy: the
// 12-byte header of decode_common, then the entry's own fields (decode_* below), then the
// input values, one byte per element. When the bytes run out, fields read as 0 (each
// field's 0 is a valid, simple choice) and values come from a generator seeded with a hash
// of the input, so a few configuration bytes make a complete, reproducible case.

#include <cxxabi.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <typeinfo>
#include <utility>
#include <variant>
#include <vector>

#include <tbb/global_control.h>

#include <star/star.hpp>

#include "reference.hpp"

namespace {

using star::index;
using star::Shape;
using star::test::ReferenceResult;

// =============================================================================================
// Failure reporting

std::string g_case;     // the decoded configuration of the current input
bool g_verbose = false; // FUZZ_STAR_VERBOSE=1: print every case and call outcome

template <class... Parts>
std::string cat(const Parts&... parts)
{
    std::ostringstream s;
    (s << ... << parts);
    return s.str();
}

template <class... Parts>
void describe(const Parts&... parts)
{
    g_case += cat(parts...);
}

template <class... Parts>
[[noreturn]] void fail(const Parts&... parts)
{
    std::fprintf(stderr, "\nfuzz_star: FAILURE: %s\n  case: %s\n", cat(parts...).c_str(),
                 g_case.c_str());
    std::fflush(stderr);
    __builtin_trap();
}

std::string type_name(const std::type_info& type)
{
    int status = 0;
    const std::unique_ptr<char, decltype(&std::free)> name(
        abi::__cxa_demangle(type.name(), nullptr, nullptr, &status), &std::free);
    return status == 0 && name ? name.get() : type.name();
}

// What the library must do with a configuration.
enum class Outcome {
    succeed,      // valid: must succeed
    reject,       // invalid: must throw star::error
    may_overflow, // valid, but scores may leave float's range: success, or the overflow error
    unspecified,  // documented as unspecified (non-finite input with the check off): no crash
};

struct Verdict {
    Outcome outcome = Outcome::succeed;
    std::string reason; // why it must be rejected
};

// `problem`: why the configuration must be rejected; empty when it is valid.
Verdict verdict(const std::string& problem, bool overflow_possible)
{
    if (!problem.empty())
        return {Outcome::reject, problem};
    return {overflow_possible ? Outcome::may_overflow : Outcome::succeed, {}};
}

// Runs `call` and holds its outcome to `expected`. Returns whether it succeeded.
template <class F>
bool attempt(const char* entry, const Verdict& expected, F&& call)
{
    try {
        call();
    } catch (const star::error& e) {
        const std::string message = e.what();
        if (g_verbose)
            std::fprintf(stderr, "  %s: star::error: %s\n", entry, message.c_str());
        if (message.empty())
            fail(entry, ": star::error with an empty message");
        if (expected.outcome == Outcome::succeed)
            fail(entry, ": a valid configuration was rejected: ", message);
        if (expected.outcome == Outcome::may_overflow &&
            message.find("overflow") == std::string::npos)
            fail(entry,
                 ": a valid configuration (whose scores may overflow float) was rejected "
                 "for another reason: ",
                 message);
        return false;
    } catch (const std::exception& e) {
        fail(entry, ": threw ", type_name(typeid(e)), ", not star::error: ", e.what());
    } catch (...) {
        fail(entry, ": threw something that is not a std::exception");
    }
    if (g_verbose)
        std::fprintf(stderr, "  %s: ok\n", entry);
    if (expected.outcome == Outcome::reject)
        fail(entry,
             ": an invalid configuration was accepted (expected a rejection: ", expected.reason,
             ")");
    return true;
}

// A check on the library's results after a successful call: a star::error here means the
// library handed back something inconsistent, so it fails the case instead of passing.
template <class F>
void verify(const char* what, F&& check)
{
    try {
        check();
    } catch (const std::exception& e) {
        fail(what, ": checking the results threw ", type_name(typeid(e)), ": ", e.what());
    }
}

// =============================================================================================
// Decoding

class Input {
public:
    Input(const std::uint8_t* data, std::size_t size) : data_(data), size_(size)
    {
        std::uint64_t hash = 14695981039346656037ull; // FNV-1a
        for (std::size_t i = 0; i < size; ++i)
            hash = (hash ^ data[i]) * 1099511628211ull;
        state_ = hash | 1;
    }

    // A configuration byte: 0 once the input is used up.
    std::uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
    int choose(int n) { return byte() % n; }
    std::uint16_t word()
    {
        const int high = byte();
        return static_cast<std::uint16_t>(high << 8 | byte());
    }

    // A value byte: from the input while it lasts, then from xorshift64.
    std::uint8_t value_byte()
    {
        if (pos_ < size_)
            return data_[pos_++];
        state_ ^= state_ << 13;
        state_ ^= state_ >> 7;
        state_ ^= state_ << 17;
        return static_cast<std::uint8_t>(state_ >> 56);
    }

private:
    const std::uint8_t* data_;
    std::size_t size_;
    std::size_t pos_ = 0;
    std::uint64_t state_;
};

// A count parameter (block size, block count, anchor size) around `high`: byte values give
// 1..high+1 (so 0 gives 1, always valid), then 0 and -1, which must be rejected.
index count_parameter(std::uint8_t b, index high)
{
    const index v = b % (high + 3);
    return v <= high ? v + 1 : (v == high + 1 ? 0 : -1);
}

// Host count -1..9: byte 0 gives 1 host.
int host_count(std::uint8_t b)
{
    const int v = b % 11;
    return v <= 8 ? v + 1 : (v == 9 ? 0 : -1);
}

// max_threads of LocalCommunicator: 0 (TBB's default), 1, 2, or -1 (rejected).
int thread_count(std::uint8_t b)
{
    const int v = b % 4;
    return v == 3 ? -1 : v;
}

struct Heads {
    index q = 0, kv = 0, d = 0;
};

struct Common {
    int entry = 0;
    int kv_type = 0;
    Heads heads;
    index tokens = 0;
    std::optional<float> scale;
    float magnitude[3] = {}; // q, k, v: element = int8 * magnitude
};

// A token count from one byte: 0..80 for most values (cheap cases, many of them), and for
// the top 13 a length at or around the kernel's tile edges (128 keys, 256 query rows), up to
// just past three key tiles, so that Ring shards, Star blocks and queries span several.
index long_or_short(std::uint8_t b)
{
    static constexpr index long_tokens[] = {100, 127, 128, 129, 200, 255, 256,
                                            257, 300, 320, 383, 384, 385};
    return b < 243 ? b % 81 : long_tokens[b - 243];
}

const char* const entry_names[] = {"attention",   "attention_causal", "global_causal",
                                   "global_full", "ring_plain",       "ring_zigzag",
                                   "star",        "kv_cache",         "merge"};
const char* const kv_names[] = {"float", "bfloat16", "half"};

std::optional<float> decode_scale(Input& in)
{
    const int kind = in.choose(8);
    const std::uint8_t p = in.byte();
    switch (kind) {
    case 0: return std::nullopt;
    case 1: return std::exp2((p - 128) / 32.0f); // [1/16, 16)
    case 2:
        // From subnormal up to near float's maximum: products of q and k may overflow.
        return std::ldexp(1.5f, static_cast<std::int8_t>(p));
    case 3: return p & 1 ? -0.0f : 0.0f;
    case 4: return -std::exp2((p - 128) / 32.0f);
    case 5: return std::numeric_limits<float>::quiet_NaN();
    case 6: return std::numeric_limits<float>::infinity();
    default: return -std::numeric_limits<float>::infinity();
    }
}

Common decode_common(Input& in)
{
    Common c;
    c.entry = in.choose(9);
    c.kv_type = in.choose(3);
    // Mostly valid head layouts (kv 1..4, q a multiple of it up to 16, so groups up to 16,
    // where one token fills the decode kernel's 16 rows and a query tile holds 16 tokens;
    // d 1..20, rarely 21..48 to reach the widest tile products); one style in four takes any
    // counts, zeros and non-integral GQA ratios included.
    const bool raw = in.choose(4) == 3;
    const int a = in.byte(), b = in.byte(), d = in.byte();
    if (raw) {
        c.heads = {a % 9, b % 5, d % 21};
    } else {
        const index kv = 1 + b % 4;
        c.heads = {kv * (1 + a % (16 / kv)), kv, d < 224 ? 1 + d % 20 : 21 + (d - 224) % 28};
    }
    c.tokens = long_or_short(in.byte());
    c.scale = decode_scale(in);
    static constexpr float magnitudes[] = {1.0f / 32, 1.0f / 256, 1.0f / 8, 1.0f / 2};
    for (float& m : c.magnitude)
        m = magnitudes[in.choose(4)];
    describe(entry_names[c.entry], " kv=", kv_names[c.kv_type], " Hq=", c.heads.q,
             " Hkv=", c.heads.kv, " d=", c.heads.d, " L=", c.tokens, " scale=");
    if (c.scale)
        describe(*c.scale);
    else
        describe("default");
    describe(" magnitudes=", c.magnitude[0], "/", c.magnitude[1], "/", c.magnitude[2]);
    return c;
}

// One dimension of q, k, v, or k and v together, changed by -2..+2 (never below 0).
struct Mutation {
    int tensor = -1; // 0 q, 1 k, 2 v, 3 k and v; -1 none
    int dim = 0;     // 0 tokens, 1 heads, 2 head_dim
    index delta = 0;
};

// One element of q/k/v set to NaN or an infinity.
struct Injection {
    int tensor = -1;
    float value = 0.0f;
    std::uint16_t position = 0;
};

struct CallSpec {
    Mutation mutation;
    Injection injection;
};

CallSpec decode_call(Input& in)
{
    CallSpec c;
    const std::uint8_t mutate = in.byte(), what = in.byte();
    if (mutate % 8 == 7) {
        static constexpr index deltas[] = {-1, 1, -2, 2};
        c.mutation = {what % 4, (what / 4) % 3, deltas[(what / 12) % 4]};
    }
    const std::uint8_t inject = in.byte(), kind = in.byte();
    const std::uint16_t position = in.word();
    if (inject % 8 == 5) {
        static constexpr float bad[] = {std::numeric_limits<float>::quiet_NaN(),
                                        std::numeric_limits<float>::infinity(),
                                        -std::numeric_limits<float>::infinity()};
        c.injection = {kind % 3, bad[(kind / 3) % 3], position};
    }
    return c;
}

void describe_call(const char* name, const CallSpec& c)
{
    static const char* const tensors[] = {"q", "k", "v", "kv"};
    static const char* const dims[] = {"tokens", "heads", "head_dim"};
    if (c.mutation.tensor >= 0)
        describe(" ", name, ":", tensors[c.mutation.tensor], ".", dims[c.mutation.dim],
                 c.mutation.delta > 0 ? "+" : "", c.mutation.delta);
    if (c.injection.tensor >= 0)
        describe(" ", name, ":", tensors[c.injection.tensor], "[", c.injection.position,
                 "]=", c.injection.value);
}

// =============================================================================================
// Tensors

index element_count(Shape s) { return s.tokens * s.heads * s.head_dim; }

template <class KV>
struct Tensors {
    Shape qs, ks, vs;
    std::vector<float> q;
    std::vector<KV> k, v;
    bool non_finite = false;
    Injection injection;

    star::ConstView3<float> qv() const { return star::view(q.data(), qs); }
    star::ConstView3<KV> kv() const { return star::view(k.data(), ks); }
    star::ConstView3<KV> vv() const { return star::view(v.data(), vs); }
};

template <class KV>
Tensors<KV> make_tensors(Shape q, Shape k, Shape v, const CallSpec& spec)
{
    Tensors<KV> t{q, k, v, {}, {}, {}, false, spec.injection};
    const auto change = [&](Shape& s) {
        const Mutation& m = spec.mutation;
        index& dim = m.dim == 0 ? s.tokens : m.dim == 1 ? s.heads : s.head_dim;
        dim = std::max<index>(0, dim + m.delta);
    };
    switch (spec.mutation.tensor) {
    case 0: change(t.qs); break;
    case 1: change(t.ks); break;
    case 2: change(t.vs); break;
    case 3:
        change(t.ks);
        change(t.vs);
        break;
    default: break;
    }
    t.q.resize(static_cast<std::size_t>(element_count(t.qs)));
    t.k.resize(static_cast<std::size_t>(element_count(t.ks)));
    t.v.resize(static_cast<std::size_t>(element_count(t.vs)));
    return t;
}

float value_of(Input& in, float magnitude)
{
    return static_cast<float>(static_cast<std::int8_t>(in.value_byte())) * magnitude;
}

template <class KV>
void fill(Tensors<KV>& t, Input& in, const Common& c)
{
    for (float& x : t.q)
        x = value_of(in, c.magnitude[0]);
    for (KV& x : t.k)
        x = KV(value_of(in, c.magnitude[1]));
    for (KV& x : t.v)
        x = KV(value_of(in, c.magnitude[2]));
    const Injection& inj = t.injection;
    const auto put = [&](auto& values) {
        if (values.empty())
            return;
        using T = typename std::decay_t<decltype(values)>::value_type;
        values[inj.position % values.size()] = T(inj.value);
        t.non_finite = true;
    };
    if (inj.tensor == 0)
        put(t.q);
    else if (inj.tensor == 1)
        put(t.k);
    else if (inj.tensor == 2)
        put(t.v);
}

template <class T>
double max_abs(const std::vector<T>& values)
{
    double m = 0.0;
    for (const T& x : values)
        m = std::max(m, std::abs(static_cast<double>(static_cast<float>(x))));
    return m;
}

// =============================================================================================
// The rules: when is a call valid?

std::string qkv_problem(Shape q, Shape k, Shape v, std::optional<float> scale)
{
    if (q.heads <= 0 || k.heads <= 0 || v.heads <= 0)
        return "a tensor has no heads";
    if (q.head_dim <= 0 || k.head_dim <= 0 || v.head_dim <= 0)
        return "a tensor has head_dim 0";
    if (k.tokens != v.tokens)
        return "k and v token counts differ";
    if (k.heads != v.heads)
        return "k and v head counts differ";
    if (q.head_dim != k.head_dim || q.head_dim != v.head_dim)
        return "head_dims differ";
    if (q.heads % k.heads != 0)
        return "query heads not a multiple of kv heads";
    const float resolved = scale.value_or(1.0f / std::sqrt(static_cast<float>(q.head_dim)));
    if (!std::isfinite(resolved) || resolved <= 0.0f)
        return "scale not finite and positive";
    return {};
}

template <class KV>
std::string qkv_problem(const Tensors<KV>& t, std::optional<float> scale)
{
    return qkv_problem(t.qs, t.ks, t.vs, scale);
}

double reference_scale(std::optional<float> scale, index d)
{
    return scale ? static_cast<double>(*scale) : 1.0 / std::sqrt(static_cast<double>(d));
}

// Whether some score `scale * q.k` (or `scale * q` itself) could leave float's range: a
// bound, with a 30x margin below FLT_MAX. Below it the library must not report overflow.
bool overflow_possible(std::optional<float> scale, double max_q, double max_k, index d)
{
    const double scaled_q = reference_scale(scale, d) * max_q;
    return scaled_q > 1e37 || scaled_q * max_k * static_cast<double>(d) > 1e37;
}

// =============================================================================================
// Comparison with the reference

void expect_close(const star::AttentionState& got, const ReferenceResult& want, index head_dim,
                  index key_count, double factor, const std::string& what)
{
    for (int dim = 0; dim < 3; ++dim)
        if (got.output.dimension(dim) != want.output.dimension(dim))
            fail(what, ": output has shape [", got.output.dimension(0), ", ",
                 got.output.dimension(1), ", ", got.output.dimension(2), "], expected [",
                 want.output.dimension(0), ", ", want.output.dimension(1), ", ",
                 want.output.dimension(2), "]");
    if (got.lse.dimension(0) != want.lse.dimension(0) ||
        got.lse.dimension(1) != want.lse.dimension(1))
        fail(what, ": lse has shape [", got.lse.dimension(0), ", ", got.lse.dimension(1),
             "], expected [", want.lse.dimension(0), ", ", want.lse.dimension(1), "]");
    const star::test::Deviation dev = star::test::deviation(got, want);
    const star::test::Tolerance tol = star::test::tolerance(want, head_dim, key_count);
    if (!dev.all_finite)
        fail(what, ": NaN or infinity in the result");
    if (!dev.infinities_match)
        fail(what, ": rows with lse = -inf differ from the reference's (a row sees no key "
                   "exactly when the reference's does)");
    if (dev.output > factor * tol.output)
        fail(what, ": output deviates by ", dev.output, " > ", factor * tol.output);
    if (dev.lse > factor * tol.lse)
        fail(what, ": lse deviates by ", dev.lse, " > ", factor * tol.lse);
}

// Kernel calls are compared with the kernel's tolerance; results that merge partial states
// (Ring, Star, merge) with twice it, as tests/test_ring.cpp and tests/test_star.cpp do.
constexpr double kernel_factor = 1.0;
constexpr double merged_factor = 2.0;

// =============================================================================================
// Entry: the kernel, star::attention with NoMask or CausalMask

template <class KV>
void fuzz_attention(Input& in, const Common& c, bool causal)
{
    // Rarely more keys than one key tile (128), for the online softmax across tiles.
    const index key_tokens = long_or_short(in.byte());
    const bool check_finite = in.choose(4) != 3;
    index query_offset = static_cast<std::int8_t>(in.byte());
    index key_offset = static_cast<std::int8_t>(in.byte());
    if (in.choose(4) == 3) { // positions far from 0, as deep into a long sequence
        query_offset += index{1} << 32;
        key_offset += index{1} << 32;
    }
    const CallSpec spec = decode_call(in);
    describe(" Lk=", key_tokens, " check_finite=", check_finite);
    if (causal)
        describe(" offsets=", query_offset, "/", key_offset);
    describe_call("call", spec);

    auto t = make_tensors<KV>({c.tokens, c.heads.q, c.heads.d}, {key_tokens, c.heads.kv, c.heads.d},
                              {key_tokens, c.heads.kv, c.heads.d}, spec);
    fill(t, in, c);

    std::string problem = qkv_problem(t, c.scale);
    if (problem.empty() && t.non_finite && check_finite)
        problem = "a non-finite input";
    Verdict expected =
        verdict(problem, overflow_possible(c.scale, max_abs(t.q), max_abs(t.k), t.qs.head_dim));
    if (problem.empty() && t.non_finite)
        expected.outcome = Outcome::unspecified;

    const star::AttentionOptions options{.scale = c.scale, .check_finite = check_finite};
    const star::CausalMask mask{query_offset, key_offset};
    star::AttentionState got;
    const bool ok = attempt("star::attention", expected, [&] {
        got = causal ? star::attention(t.qv(), t.kv(), t.vv(), mask, options)
                     : star::attention(t.qv(), t.kv(), t.vv(), star::NoMask{}, options);
    });
    if (!ok || expected.outcome == Outcome::unspecified)
        return;
    const auto want = star::test::reference_attention(
        t.qv(), t.kv(), t.vv(), [&](index i, index j) { return !causal || mask.visible(i, j); },
        reference_scale(c.scale, t.qs.head_dim));
    expect_close(got, want, t.qs.head_dim, t.ks.tokens, kernel_factor, "star::attention");
}

// =============================================================================================
// Entry: global_attention, causal or not

template <class KV>
void fuzz_global(Input& in, const Common& c, bool causal)
{
    const CallSpec spec = decode_call(in);
    describe_call("call", spec);
    auto t = make_tensors<KV>({c.tokens, c.heads.q, c.heads.d}, {c.tokens, c.heads.kv, c.heads.d},
                              {c.tokens, c.heads.kv, c.heads.d}, spec);
    fill(t, in, c);

    std::string problem = qkv_problem(t, c.scale);
    if (problem.empty() && causal && t.qs.tokens != t.ks.tokens)
        problem = "causal with query and key counts differing";
    if (problem.empty() && t.non_finite)
        problem = "a non-finite input";
    const Verdict expected =
        verdict(problem, overflow_possible(c.scale, max_abs(t.q), max_abs(t.k), t.qs.head_dim));

    star::AttentionState got;
    if (!attempt("star::global_attention", expected, [&] {
            got = star::global_attention(t.qv(), t.kv(), t.vv(),
                                         {.causal = causal, .attention = {.scale = c.scale}});
        }))
        return;
    const auto want = star::test::reference_attention(
        t.qv(), t.kv(), t.vv(), [&](index i, index j) { return !causal || j <= i; },
        reference_scale(c.scale, t.qs.head_dim));
    expect_close(got, want, t.qs.head_dim, t.ks.tokens, kernel_factor, "star::global_attention");
}

// =============================================================================================
// Entry: RingAttention, plain or zig-zag, over LocalCommunicator

std::optional<star::LocalCommunicator> make_communicator(int hosts, int threads)
{
    std::string problem;
    if (hosts <= 0)
        problem = "no hosts";
    else if (threads < 0)
        problem = "negative max_threads";
    std::optional<star::LocalCommunicator> comm;
    attempt("star::LocalCommunicator", verdict(problem, false),
            [&] { comm.emplace(hosts, threads); });
    return comm;
}

template <class KV>
void fuzz_ring(Input& in, const Common& c, star::RingLayout layout)
{
    const int hosts = host_count(in.byte());
    const int threads = thread_count(in.byte());
    const CallSpec spec = decode_call(in);
    describe(" hosts=", hosts, " threads=", threads);
    describe_call("call", spec);
    auto t = make_tensors<KV>({c.tokens, c.heads.q, c.heads.d}, {c.tokens, c.heads.kv, c.heads.d},
                              {c.tokens, c.heads.kv, c.heads.d}, spec);
    fill(t, in, c);

    auto comm = make_communicator(hosts, threads);
    if (!comm)
        return;
    const star::RingAttention ring({.layout = layout, .attention = {.scale = c.scale}});

    std::string problem = qkv_problem(t, c.scale);
    if (problem.empty() && t.qs.tokens != t.ks.tokens)
        problem = "query and key counts differ";
    if (problem.empty() && t.qs.tokens < 1)
        problem = "an empty sequence";
    if (problem.empty() && t.non_finite)
        problem = "a non-finite input";
    const Verdict expected =
        verdict(problem, overflow_possible(c.scale, max_abs(t.q), max_abs(t.k), t.qs.head_dim));

    star::PerHost<std::vector<star::RangeOutput>> outputs;
    if (!attempt("star::RingAttention::run", expected,
                 [&] { outputs = ring.run(*comm, t.qv(), t.kv(), t.vv()); }))
        return;

    const index tokens = t.qs.tokens, d = t.qs.head_dim;
    star::AttentionState got;
    verify("star::RingAttention::run", [&] {
        // Every host returns its own non-empty shards, in order.
        const auto shards = ring.shards(tokens, hosts);
        if (outputs.first_rank() != 0 || outputs.count() != hosts)
            fail("RingAttention::run returned outputs for hosts [", outputs.first_rank(), ", ",
                 outputs.end_rank(), ")");
        for (int r = 0; r < hosts; ++r) {
            std::vector<star::TokenRange> expected_ranges;
            for (const star::TokenRange& range : shards[static_cast<std::size_t>(r)])
                if (!range.empty())
                    expected_ranges.push_back(range);
            if (outputs[r].size() != expected_ranges.size())
                fail("RingAttention::run: host ", r, " returned ", outputs[r].size(),
                     " ranges, it holds ", expected_ranges.size(), " non-empty shards");
            for (std::size_t n = 0; n < expected_ranges.size(); ++n)
                if (!(outputs[r][n].tokens == expected_ranges[n]))
                    fail("RingAttention::run: host ", r, " returned range ", n, " = [",
                         outputs[r][n].tokens.begin, ", ", outputs[r][n].tokens.end,
                         "), its shard is [", expected_ranges[n].begin, ", ",
                         expected_ranges[n].end, ")");
        }
        got = star::assemble(outputs, {tokens, t.qs.heads, d});
    });
    const auto want = star::test::reference_attention(
        t.qv(), t.kv(), t.vv(), [](index i, index j) { return j <= i; },
        reference_scale(c.scale, d));
    expect_close(got, want, d, tokens, merged_factor, "star::RingAttention::run");
}

// =============================================================================================
// Entry: StarAttention, plan + encode_context + attend_query for the query and decode steps

struct StarSpec {
    int hosts = 1;
    int threads = 0;
    int block_kind = 0; // 0 FixedBlocks{size}, 1 EqualBlocks{count}
    index block_parameter = 1;
    int anchor_kind = 0; // 0 FirstTokens{}, 1 FirstTokens{n}, 2 SinkTokens{n}, 3 SinkTokens{},
                         // 4 NoAnchor, 5 PreviousBlock
    index anchor_parameter = 1;
    bool receive = false;
    int partition_kind = 0; // 0 Contiguous, 1 RoundRobin, 2 BalancedTokens
    std::optional<int> query_host;
    int merge_kind = 0;  // 0 GatherToQueryHost, 1 AllGather, 2 TreeReduction
    int plan_change = 0; // 1: plan for one more host; 2/3: for one more/fewer token
    CallSpec context;
    index query_tokens = 0;
    CallSpec query;
    int steps = 0;
    CallSpec step[3];
};

StarSpec decode_star(Input& in, const Common& c)
{
    StarSpec s;
    s.hosts = host_count(in.byte());
    s.threads = thread_count(in.byte());
    s.block_kind = in.choose(2);
    s.block_parameter = count_parameter(in.byte(), c.tokens);
    s.anchor_kind = in.choose(6);
    s.anchor_parameter = count_parameter(in.byte(), c.tokens);
    s.receive = in.choose(2) == 1;
    s.partition_kind = in.choose(3);
    if (const int qh = in.choose(13); qh > 0)
        s.query_host = qh - 2; // -1..10
    s.merge_kind = in.choose(3);
    const int change = in.choose(16);
    s.plan_change = change >= 13 ? change - 12 : 0;
    s.context = decode_call(in);
    s.query_tokens = in.choose(13);
    s.query = decode_call(in);
    s.steps = in.choose(4);
    for (CallSpec& step : s.step)
        step = decode_call(in);

    static const char* const blocks[] = {"FixedBlocks", "EqualBlocks"};
    static const char* const partitions[] = {"Contiguous", "RoundRobin", "BalancedTokens"};
    static const char* const merges[] = {"GatherToQueryHost", "AllGather", "TreeReduction"};
    describe(" hosts=", s.hosts, " threads=", s.threads, " ", blocks[s.block_kind], "{",
             s.block_parameter, "} ");
    const char* const from = s.receive ? "receive" : "compute";
    switch (s.anchor_kind) {
    case 0: describe("FirstTokens{default,", from, "}"); break;
    case 1: describe("FirstTokens{", s.anchor_parameter, ",", from, "}"); break;
    case 2: describe("SinkTokens{", s.anchor_parameter, ",", from, "}"); break;
    case 3: describe("SinkTokens{4,", from, "}"); break;
    case 4: describe("NoAnchor"); break;
    default: describe("PreviousBlock"); break;
    }
    describe(" ", partitions[s.partition_kind], "{query_host=");
    if (s.query_host)
        describe(*s.query_host);
    else
        describe("last");
    describe("} ", merges[s.merge_kind], " plan_change=", s.plan_change, " Lq=", s.query_tokens,
             " steps=", s.steps);
    describe_call("context", s.context);
    describe_call("query", s.query);
    for (int i = 0; i < s.steps; ++i)
        describe_call(("step" + std::to_string(i + 1)).c_str(), s.step[i]);
    return s;
}

// Runtime choices among the library's Block, Anchor and Partition policies, themselves
// policies (they satisfy the concepts and forward every call), so that one StarAttention type
// serves every combination. With the library's types directly, the 72 combinations per K/V
// type took 17 minutes to compile under the sanitizers; the StarAttention code run is the
// same template either way. The Merge policy stays a compile-time choice of the library's
// own types (3 per K/V type).
struct AnyBlock {
    std::variant<star::FixedBlocks, star::EqualBlocks> policy;

    [[nodiscard]] std::vector<star::TokenRange> blocks(index tokens) const
    {
        return std::visit([&](const auto& p) { return p.blocks(tokens); }, policy);
    }
};

struct AnyAnchor {
    std::variant<star::FirstTokens, star::SinkTokens, star::NoAnchor, star::PreviousBlock> policy;

    [[nodiscard]] star::TokenRange anchor_for(std::span<const star::TokenRange> blocks, index i) const
    {
        return std::visit([&](const auto& p) { return p.anchor_for(blocks, i); }, policy);
    }
    [[nodiscard]] star::AnchorSource source() const
    {
        return std::visit([](const auto& p) { return p.source(); }, policy);
    }
    void check(index tokens) const
    {
        std::visit([&](const auto& p) { p.check(tokens); }, policy);
    }
};

struct AnyPartition {
    std::variant<star::Contiguous, star::RoundRobin, star::BalancedTokens> policy;

    [[nodiscard]] std::vector<int> assign(std::span<const star::TokenRange> blocks, int hosts) const
    {
        return std::visit([&](const auto& p) { return p.assign(blocks, hosts); }, policy);
    }
    [[nodiscard]] int query_host(int hosts) const
    {
        return std::visit([&](const auto& p) { return p.query_host(hosts); }, policy);
    }
};

static_assert(star::Block<AnyBlock>);
static_assert(star::Anchor<AnyAnchor>);
static_assert(star::Partition<AnyPartition>);

// Calls `f(star)` with the StarAttention the spec describes.
template <class F>
void with_star(const StarSpec& s, std::optional<float> scale, F&& f)
{
    AnyBlock block;
    if (s.block_kind == 0)
        block.policy = star::FixedBlocks{s.block_parameter};
    else
        block.policy = star::EqualBlocks{s.block_parameter};

    AnyAnchor anchor;
    const auto from = s.receive ? star::AnchorSource::receive : star::AnchorSource::compute;
    switch (s.anchor_kind) {
    case 0: anchor.policy = star::FirstTokens{std::nullopt, from}; break;
    case 1: anchor.policy = star::FirstTokens{s.anchor_parameter, from}; break;
    case 2: anchor.policy = star::SinkTokens{s.anchor_parameter, from}; break;
    case 3: {
        star::SinkTokens sinks; // the default number of sinks
        sinks.from = from;
        anchor.policy = sinks;
        break;
    }
    case 4: anchor.policy = star::NoAnchor{}; break;
    default: anchor.policy = star::PreviousBlock{}; break;
    }

    AnyPartition partition;
    const auto with_rank = [&](auto p) {
        p.rank = s.query_host;
        partition.policy = p;
    };
    switch (s.partition_kind) {
    case 0: with_rank(star::Contiguous{}); break;
    case 1: with_rank(star::RoundRobin{}); break;
    default: with_rank(star::BalancedTokens{}); break;
    }

    switch (s.merge_kind) {
    case 0:
        return f(star::StarAttention(block, anchor, partition, star::GatherToQueryHost{},
                                     {.scale = scale}));
    case 1:
        return f(star::StarAttention(block, anchor, partition, star::AllGather{}, {.scale = scale}));
    default:
        return f(
            star::StarAttention(block, anchor, partition, star::TreeReduction{}, {.scale = scale}));
    }
}

// The three calls of one StarAttention type, behind one interface, so that the checking
// code below is compiled once per K/V type rather than once per policy combination.
template <class KV>
struct StarCalls {
    using Caches = star::PerHost<star::KVCache<KV>>;
    std::function<star::StarPlan(index, int)> plan;
    std::function<star::PerHost<std::vector<star::RangeOutput>>(
        star::LocalCommunicator&, const star::StarPlan&, Caches&, const star::ConstView3<float>&,
        const star::ConstView3<KV>&, const star::ConstView3<KV>&)>
        encode_context;
    std::function<star::PerHost<std::optional<star::AttentionState>>(
        star::LocalCommunicator&, const star::StarPlan&, Caches&, const star::ConstView3<float>&,
        const star::ConstView3<KV>&, const star::ConstView3<KV>&)>
        attend_query;
};

template <class KV, class S>
StarCalls<KV> calls_of(const S& algorithm)
{
    using Caches = typename StarCalls<KV>::Caches;
    return {[algorithm](index tokens, int hosts) { return algorithm.plan(tokens, hosts); },
            [algorithm](star::LocalCommunicator& comm, const star::StarPlan& plan, Caches& caches,
                        const star::ConstView3<float>& q, const star::ConstView3<KV>& k,
                        const star::ConstView3<KV>& v) {
                return algorithm.encode_context(comm, plan, caches, q, k, v);
            },
            [algorithm](star::LocalCommunicator& comm, const star::StarPlan& plan, Caches& caches,
                        const star::ConstView3<float>& q, const star::ConstView3<KV>& k,
                        const star::ConstView3<KV>& v) {
                return algorithm.attend_query(comm, plan, caches, q, k, v);
            }};
}

std::string plan_problem(const StarSpec& s, index tokens, int hosts)
{
    if (hosts <= 0)
        return "no hosts";
    if (tokens <= 0)
        return "an empty context";
    if (s.block_parameter <= 0)
        return "block size or count below 1";
    if ((s.anchor_kind == 1 || s.anchor_kind == 2) &&
        (s.anchor_parameter <= 0 || s.anchor_parameter > tokens))
        return "anchor size outside [1, context]";
    if (s.anchor_kind == 3 && 4 > tokens)
        return "4 sink tokens in a shorter context";
    if (const int qh = s.query_host.value_or(hosts - 1); qh < 0 || qh >= hosts)
        return "query host out of range";
    return {};
}

std::vector<star::TokenRange> expected_blocks(const StarSpec& s, index tokens)
{
    std::vector<star::TokenRange> blocks;
    if (s.block_kind == 0) {
        for (index begin = 0; begin < tokens; begin += s.block_parameter)
            blocks.push_back({begin, std::min(tokens, begin + s.block_parameter)});
    } else {
        const index n = std::min(s.block_parameter, tokens);
        index begin = 0;
        for (index i = 0; i < n; ++i) {
            const index size = tokens / n + (i < tokens % n ? 1 : 0);
            blocks.push_back({begin, begin + size});
            begin += size;
        }
    }
    return blocks;
}

star::TokenRange normalised(star::TokenRange r) { return r.empty() ? star::TokenRange{} : r; }

std::vector<star::TokenRange> expected_anchors(const StarSpec& s,
                                               const std::vector<star::TokenRange>& blocks)
{
    std::vector<star::TokenRange> anchors;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
        const index start = blocks[i].begin;
        star::TokenRange a{};
        switch (s.anchor_kind) {
        case 0: a = {0, std::min(blocks.front().size(), start)}; break;
        case 1:
        case 2: a = {0, std::min(s.anchor_parameter, start)}; break;
        case 3: a = {0, std::min(index{4}, start)}; break;
        case 4: break;
        default:
            if (i > 0)
                a = blocks[i - 1];
            break;
        }
        anchors.push_back(normalised(a));
    }
    return anchors;
}

std::vector<int> expected_owners(const StarSpec& s, const std::vector<star::TokenRange>& blocks,
                                 int hosts)
{
    const auto n = static_cast<index>(blocks.size());
    std::vector<int> owner(blocks.size());
    if (s.partition_kind == 0) { // runs of n/H, the first n mod H hosts one more
        std::size_t b = 0;
        for (int h = 0; h < hosts; ++h)
            for (index i = 0; i < n / hosts + (h < n % hosts ? 1 : 0); ++i)
                owner[b++] = h;
    } else if (s.partition_kind == 1) {
        for (std::size_t i = 0; i < owner.size(); ++i)
            owner[i] = static_cast<int>(i % static_cast<std::size_t>(hosts));
    } else { // largest block first (earlier first among equals) to the least-loaded host
        std::vector<bool> placed(blocks.size(), false);
        std::vector<index> load(static_cast<std::size_t>(hosts), 0);
        for (std::size_t round = 0; round < blocks.size(); ++round) {
            std::size_t next = blocks.size();
            for (std::size_t i = 0; i < blocks.size(); ++i)
                if (!placed[i] && (next == blocks.size() || blocks[i].size() > blocks[next].size()))
                    next = i;
            int lightest = 0;
            for (int h = 1; h < hosts; ++h)
                if (load[static_cast<std::size_t>(h)] < load[static_cast<std::size_t>(lightest)])
                    lightest = h;
            owner[next] = lightest;
            placed[next] = true;
            load[static_cast<std::size_t>(lightest)] += blocks[next].size();
        }
    }
    return owner;
}

void check_plan(const star::StarPlan& plan, const StarSpec& s, index tokens, int hosts)
{
    if (plan.context_tokens() != tokens || plan.hosts() != hosts)
        fail("StarAttention::plan: plan for ", plan.context_tokens(), " tokens on ", plan.hosts(),
             " hosts, asked for ", tokens, " on ", hosts);
    if (plan.query_host() != s.query_host.value_or(hosts - 1))
        fail("StarAttention::plan: query host ", plan.query_host());
    const auto blocks = expected_blocks(s, tokens);
    if (plan.blocks() != blocks)
        fail("StarAttention::plan: ", plan.blocks().size(),
             " blocks differ from the block "
             "policy's definition (",
             blocks.size(), " expected)");
    std::vector<star::TokenRange> anchors;
    for (const star::TokenRange& a : plan.anchors())
        anchors.push_back(normalised(a));
    if (anchors != expected_anchors(s, blocks))
        fail("StarAttention::plan: the anchors differ from the anchor policy's definition");
    if (plan.owner() != expected_owners(s, blocks, hosts))
        fail("StarAttention::plan: the owners differ from the partition policy's definition");
    const bool receives = s.receive && s.anchor_kind <= 3;
    if ((plan.anchor_source() == star::AnchorSource::receive) != receives)
        fail("StarAttention::plan: anchor source differs from the policy's");
}

// The K/V every cache holds between them, in context order then query order: what phase 2
// must attend to. Its head layout is fixed once it holds a token, as a cache's is.
template <class KV>
struct KeyStore {
    index tokens = 0, heads = 0, head_dim = 0;
    std::vector<KV> k, v;

    void append(const Tensors<KV>& t)
    {
        if (tokens == 0) {
            heads = t.ks.heads;
            head_dim = t.ks.head_dim;
        }
        k.insert(k.end(), t.k.begin(), t.k.end());
        v.insert(v.end(), t.v.begin(), t.v.end());
        tokens += t.ks.tokens;
    }
};

template <class KV>
std::vector<index> token_counts(const star::PerHost<star::KVCache<KV>>& caches)
{
    std::vector<index> counts;
    for (int r = caches.first_rank(); r < caches.end_rank(); ++r)
        counts.push_back(caches[r].tokens());
    return counts;
}

template <class KV>
bool same_bytes(const KV* a, const KV* b, index count)
{
    return count == 0 || std::memcmp(a, b, static_cast<std::size_t>(count) * sizeof(KV)) == 0;
}

template <class KV>
void check_phase_one(const star::StarPlan& plan, const Tensors<KV>& t,
                     const star::PerHost<std::vector<star::RangeOutput>>& outputs,
                     const star::PerHost<star::KVCache<KV>>& caches, std::optional<float> scale)
{
    const index tokens = t.qs.tokens, d = t.qs.head_dim;
    const index row = t.ks.heads * t.ks.head_dim;
    star::AttentionState got;
    verify("StarAttention::encode_context", [&] {
        for (int r = 0; r < plan.hosts(); ++r) {
            // Each host returns its own blocks, in context order...
            const auto mine = plan.blocks_of(r);
            if (outputs[r].size() != mine.size())
                fail("encode_context: host ", r, " returned ", outputs[r].size(),
                     " block outputs, it owns ", mine.size(), " blocks");
            for (std::size_t n = 0; n < mine.size(); ++n)
                if (!(outputs[r][n].tokens == plan.blocks()[mine[n]]))
                    fail("encode_context: host ", r, " returned output ", n, " for tokens [",
                         outputs[r][n].tokens.begin, ", ", outputs[r][n].tokens.end, ")");
            // ...and its cache holds exactly those blocks' K/V.
            const star::KVCache<KV>& cache = caches[r];
            std::vector<KV> keys, values;
            for (const std::size_t i : mine) {
                const star::TokenRange b = plan.blocks()[i];
                keys.insert(keys.end(), t.k.begin() + b.begin * row, t.k.begin() + b.end * row);
                values.insert(values.end(), t.v.begin() + b.begin * row, t.v.begin() + b.end * row);
            }
            const auto count = static_cast<index>(keys.size()) / row;
            if (cache.tokens() != count)
                fail("encode_context: host ", r, "'s cache holds ", cache.tokens(),
                     " tokens, its blocks ", count);
            if (cache.bytes() != 2 * keys.size() * sizeof(KV))
                fail("encode_context: host ", r, "'s cache reports ", cache.bytes(), " bytes");
            const auto cached_k = star::test::contiguous(cache.keys());
            const auto cached_v = star::test::contiguous(cache.values());
            if (cache.tokens() > 0 &&
                (cached_k.size() != static_cast<index>(keys.size()) ||
                 !same_bytes(cached_k.data(), keys.data(), static_cast<index>(keys.size())) ||
                 !same_bytes(cached_v.data(), values.data(), static_cast<index>(values.size()))))
                fail("encode_context: host ", r, "'s cache does not hold its blocks' K/V");
        }
        got = star::assemble(outputs, {tokens, t.qs.heads, d});
    });
    const auto want = star::test::reference_attention(
        t.qv(), t.kv(), t.vv(), star::test::block_sparse_visible(plan.blocks(), plan.anchors()),
        reference_scale(scale, d));
    expect_close(got, want, d, tokens, merged_factor, "StarAttention::encode_context (phase 1)");
}

template <class KV>
void fuzz_star(Input& in, const Common& c)
{
    const StarSpec s = decode_star(in, c);
    const Shape q{c.tokens, c.heads.q, c.heads.d}, kv{c.tokens, c.heads.kv, c.heads.d};
    auto context = make_tensors<KV>(q, kv, kv, s.context);
    std::vector<Tensors<KV>> calls; // the query, then the decode steps
    calls.push_back(make_tensors<KV>({s.query_tokens, c.heads.q, c.heads.d},
                                     {s.query_tokens, c.heads.kv, c.heads.d},
                                     {s.query_tokens, c.heads.kv, c.heads.d}, s.query));
    for (int i = 0; i < s.steps; ++i)
        calls.push_back(make_tensors<KV>({1, c.heads.q, c.heads.d}, {1, c.heads.kv, c.heads.d},
                                         {1, c.heads.kv, c.heads.d}, s.step[i]));
    fill(context, in, c);
    for (auto& call : calls)
        fill(call, in, c);

    const index plan_tokens = c.tokens + (s.plan_change == 2 ? 1 : s.plan_change == 3 ? -1 : 0);
    const int plan_hosts = s.hosts + (s.plan_change == 1 ? 1 : 0);

    with_star(s, c.scale, [&](const auto& algorithm) {
        const StarCalls<KV> star_calls = calls_of<KV>(algorithm);
        std::optional<star::StarPlan> plan;
        if (!attempt("StarAttention::plan", verdict(plan_problem(s, plan_tokens, plan_hosts), false),
                     [&] { plan = star_calls.plan(plan_tokens, plan_hosts); }))
            return;
        check_plan(*plan, s, plan_tokens, plan_hosts);

        auto comm = make_communicator(s.hosts, s.threads);
        if (!comm)
            return;
        auto caches = comm->template local<star::KVCache<KV>>();

        // Phase 1.
        std::string problem;
        if (plan->hosts() != comm->size())
            problem = "a plan for another number of hosts";
        if (problem.empty())
            problem = qkv_problem(context, c.scale);
        if (problem.empty() && (context.qs.tokens != plan_tokens || context.ks.tokens != plan_tokens))
            problem = "a context of another length than the plan's";
        if (problem.empty() && context.non_finite)
            problem = "a non-finite input";
        star::PerHost<std::vector<star::RangeOutput>> outputs;
        const bool encoded =
            attempt("StarAttention::encode_context",
                    verdict(problem, overflow_possible(c.scale, max_abs(context.q),
                                                       max_abs(context.k), context.qs.head_dim)),
                    [&] {
                        outputs = star_calls.encode_context(*comm, *plan, caches, context.qv(),
                                                            context.kv(), context.vv());
                    });
        KeyStore<KV> store;
        if (encoded) {
            check_phase_one(*plan, context, outputs, caches, c.scale);
            store.append(context);
        } else {
            for (const index n : token_counts(caches))
                if (n != 0)
                    fail("encode_context failed but left a cache with ", n, " tokens");
        }

        // Phase 2: the query and each decode step, over whatever the caches hold (nothing
        // if phase 1 was rejected). A rejected step must change no cache, and the next
        // step must still be exact.
        for (std::size_t n = 0; n < calls.size(); ++n) {
            const Tensors<KV>& call = calls[n];
            const std::string what = n == 0 ? std::string("StarAttention::attend_query (query)")
                                            : cat("StarAttention::attend_query (step ", n, ")");
            problem.clear();
            if (plan->hosts() != comm->size())
                problem = "a plan for another number of hosts";
            if (problem.empty())
                problem = qkv_problem(call, c.scale);
            if (problem.empty() && call.qs.tokens != call.ks.tokens)
                problem = "query and key counts differ";
            if (problem.empty() && call.non_finite)
                problem = "a non-finite input";
            if (problem.empty() && store.tokens > 0 &&
                (call.ks.heads != store.heads || call.ks.head_dim != store.head_dim))
                problem = "query K/V heads or head_dim differ from the caches'";
            const double max_k = std::max(max_abs(call.k), max_abs(store.k));
            const std::vector<index> before = token_counts(caches);
            star::PerHost<std::optional<star::AttentionState>> merged;
            const bool ok = attempt(what.c_str(),
                                    verdict(problem, overflow_possible(c.scale, max_abs(call.q),
                                                                       max_k, call.qs.head_dim)),
                                    [&] {
                                        merged = star_calls.attend_query(
                                            *comm, *plan, caches, call.qv(), call.kv(), call.vv());
                                    });
            const std::vector<index> after = token_counts(caches);
            if (!ok) {
                if (after != before)
                    fail(what, ": a rejected call changed a cache");
                continue;
            }
            for (int r = 0; r < s.hosts; ++r) {
                const index grown = r == plan->query_host() ? call.ks.tokens : 0;
                if (after[static_cast<std::size_t>(r)] != before[static_cast<std::size_t>(r)] + grown)
                    fail(what, ": host ", r, "'s cache went from ",
                         before[static_cast<std::size_t>(r)], " to ",
                         after[static_cast<std::size_t>(r)], " tokens");
            }

            // Exact attention over every cached key, and the query's own keys causally.
            const index prior = store.tokens;
            Tensors<KV> keys;
            keys.ks = keys.vs = {prior + call.ks.tokens, call.ks.heads, call.ks.head_dim};
            keys.k = store.k;
            keys.k.insert(keys.k.end(), call.k.begin(), call.k.end());
            keys.v = store.v;
            keys.v.insert(keys.v.end(), call.v.begin(), call.v.end());
            const auto want = star::test::reference_attention(
                call.qv(), keys.kv(), keys.vv(),
                [prior](index i, index j) { return j < prior || j - prior <= i; },
                reference_scale(c.scale, call.qs.head_dim));
            const bool everywhere = s.merge_kind == 1; // AllGather
            for (int r = 0; r < s.hosts; ++r) {
                const bool expected_here = everywhere || r == plan->query_host();
                if (merged[r].has_value() != expected_here)
                    fail(what, ": host ", r, (expected_here ? " has no" : " has a"),
                         " merged result");
                if (expected_here)
                    expect_close(*merged[r], want, call.qs.head_dim, prior + call.ks.tokens,
                                 merged_factor, cat(what, " at host ", r));
            }
            store.append(call);
        }
    });
}

// =============================================================================================
// Entry: KVCache appends

template <class KV>
void fuzz_cache(Input& in, const Common& c)
{
    struct Append {
        index tokens = 0, heads = 0, head_dim = 0;
        CallSpec spec;
    };
    std::vector<Append> appends(static_cast<std::size_t>(1 + in.choose(4)));
    for (Append& a : appends) {
        a.tokens = in.choose(6);
        const int kind = in.choose(4);
        const int raw_heads = in.byte(), raw_dim = in.byte();
        a.heads = c.heads.kv + (kind == 1 ? 1 : 0);
        a.head_dim = c.heads.d + (kind == 2 ? 1 : 0);
        if (kind == 3) {
            a.heads = raw_heads % 5;
            a.head_dim = raw_dim % 21;
        }
        a.spec = decode_call(in);
        if (a.spec.mutation.tensor == 0) // there is no q: aim at k instead
            a.spec.mutation.tensor = 1;
        if (a.spec.injection.tensor == 0)
            a.spec.injection.tensor = 1;
        describe(" append[", a.tokens, ",", a.heads, ",", a.head_dim, "]");
        describe_call("", a.spec);
    }
    std::vector<Tensors<KV>> tensors;
    for (const Append& a : appends) {
        const Shape s{a.tokens, a.heads, a.head_dim};
        tensors.push_back(make_tensors<KV>({0, 1, 1}, s, s, a.spec)); // q unused
        fill(tensors.back(), in, c);
    }

    star::KVCache<KV> cache;
    KeyStore<KV> model;
    for (const Tensors<KV>& t : tensors) {
        std::string problem;
        if (t.ks.heads <= 0 || t.ks.head_dim <= 0 || t.vs.heads <= 0 || t.vs.head_dim <= 0)
            problem = "zero heads or head_dim";
        else if (!(t.ks == t.vs))
            problem = "k and v shapes differ";
        else if (model.tokens > 0 && (t.ks.heads != model.heads || t.ks.head_dim != model.head_dim))
            problem = "heads or head_dim differ from the cached tokens'";
        else if (t.non_finite)
            problem = "a non-finite input";
        if (attempt("KVCache::append", verdict(problem, false),
                    [&] { cache.append(t.kv(), t.vv()); }))
            model.append(t);
        const auto bytes =
            2 * static_cast<std::size_t>(model.tokens * model.heads * model.head_dim) * sizeof(KV);
        if (cache.tokens() != model.tokens || cache.bytes() != bytes)
            fail("KVCache: holds ", cache.tokens(), " tokens in ", cache.bytes(),
                 " bytes, expected ", model.tokens, " in ", bytes);
        if (model.tokens == 0)
            continue;
        if (cache.kv_heads() != model.heads || cache.head_dim() != model.head_dim)
            fail("KVCache: reports ", cache.kv_heads(), " kv heads of head_dim ", cache.head_dim(),
                 ", expected ", model.heads, " of ", model.head_dim);
        const auto size = static_cast<index>(model.k.size());
        const auto cached_k = star::test::contiguous(cache.keys());
        const auto cached_v = star::test::contiguous(cache.values());
        if (cached_k.size() != size || cached_v.size() != size ||
            !same_bytes(cached_k.data(), model.k.data(), size) ||
            !same_bytes(cached_v.data(), model.v.data(), size))
            fail("KVCache: keys()/values() differ from what was appended");
    }
}

// =============================================================================================
// Entry: merge and merge_into of partial states over disjoint key ranges

template <class KV>
void fuzz_merge(Input& in, const Common& c)
{
    const int parts = in.choose(5);
    const index key_tokens = in.choose(81);
    const bool causal = in.choose(2) == 1;
    const index query_offset = static_cast<std::int8_t>(in.byte());
    std::vector<index> cuts{0, key_tokens};
    for (int i = 0; i < 3; ++i) {
        const std::uint8_t b = in.byte();
        if (i + 1 < parts)
            cuts.push_back(b % (key_tokens + 1));
    }
    std::sort(cuts.begin(), cuts.end());
    // One part may cover one query token fewer: a state of another shape, which every merge
    // of it with the others must reject.
    const std::uint8_t bad = in.byte(), bad_part = in.byte();
    const bool misshapen = bad % 8 == 7 && parts >= 2 && c.tokens > 0;
    const std::size_t odd = misshapen ? bad_part % static_cast<std::size_t>(parts) : 0;
    const auto queries_of = [&](std::size_t p) {
        return misshapen && p == odd ? c.tokens - 1 : c.tokens;
    };
    describe(" parts=", parts, " Lk=", key_tokens, " causal=", causal,
             " query_offset=", query_offset);
    if (misshapen)
        describe(" part ", odd, " misshapen");

    auto t = make_tensors<KV>({c.tokens, c.heads.q, c.heads.d}, {key_tokens, c.heads.kv, c.heads.d},
                              {key_tokens, c.heads.kv, c.heads.d}, {});
    fill(t, in, c);

    const star::AttentionOptions options{.scale = c.scale};
    const std::string shape_problem = qkv_problem(t, c.scale);
    const Verdict expected = verdict(
        shape_problem, overflow_possible(c.scale, max_abs(t.q), max_abs(t.k), t.qs.head_dim));
    std::vector<star::AttentionState> states;
    for (int p = 0; p < parts; ++p) {
        const auto part = static_cast<std::size_t>(p);
        const index begin = cuts[part];
        const index count = (p + 1 < parts ? cuts[part + 1] : key_tokens) - begin;
        star::AttentionState state;
        if (!attempt("star::attention (merge part)", expected, [&] {
                const auto q = star::token_slice(t.qv(), 0, queries_of(part));
                const auto k = star::token_slice(t.kv(), begin, count);
                const auto v = star::token_slice(t.vv(), begin, count);
                state = causal ? star::attention(q, k, v, star::CausalMask{query_offset, begin},
                                                 options)
                               : star::attention(q, k, v, star::NoMask{}, options);
            }))
            return;
        states.push_back(std::move(state));
    }

    std::string problem;
    if (parts == 0)
        problem = "no states";
    else if (misshapen)
        problem = "states of different shapes";
    star::AttentionState merged;
    const bool merged_ok = attempt("star::merge", verdict(problem, false), [&] {
        merged = star::merge(std::span<const star::AttentionState>(states));
    });
    if (parts == 0)
        return;
    star::AttentionState folded = states.front();
    for (std::size_t p = 1; p < states.size(); ++p)
        if (!attempt(
                "star::merge_into",
                verdict(queries_of(p) != queries_of(0) ? "states of different shapes" : "", false),
                [&] { star::merge_into(folded, states[p]); }))
            return;
    if (!merged_ok || misshapen)
        return;
    // Every part was computed, so the shapes are valid and the reference can be.
    const auto want = star::test::reference_attention(
        t.qv(), t.kv(), t.vv(), [&](index i, index j) { return !causal || j <= query_offset + i; },
        reference_scale(c.scale, t.qs.head_dim));
    expect_close(merged, want, t.qs.head_dim, key_tokens, merged_factor, "star::merge");
    expect_close(folded, want, t.qs.head_dim, key_tokens, merged_factor, "star::merge_into");
}

// =============================================================================================

template <class KV>
void run(Input& in, const Common& c)
{
    switch (c.entry) {
    case 0: return fuzz_attention<KV>(in, c, false);
    case 1: return fuzz_attention<KV>(in, c, true);
    case 2: return fuzz_global<KV>(in, c, true);
    case 3: return fuzz_global<KV>(in, c, false);
    case 4: return fuzz_ring<KV>(in, c, star::RingLayout::plain);
    case 5: return fuzz_ring<KV>(in, c, star::RingLayout::zigzag);
    case 6: return fuzz_star<KV>(in, c);
    case 7: return fuzz_cache<KV>(in, c);
    default: return fuzz_merge<KV>(in, c);
    }
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***)
{
    // Two threads at most, whatever TBB finds: the machine is shared and libFuzzer's one
    // process should stay small.
    static tbb::global_control threads(tbb::global_control::max_allowed_parallelism, 2);
    const char* verbose = std::getenv("FUZZ_STAR_VERBOSE");
    g_verbose = verbose != nullptr && *verbose != '\0' && *verbose != '0';
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    g_case.clear();
    Input in(data, size);
    const Common c = decode_common(in);
    if (g_verbose)
        std::fprintf(stderr, "case: %s\n", g_case.c_str()); // before the entry's own fields
    switch (c.kv_type) {
    case 0: run<float>(in, c); break;
    case 1: run<Eigen::bfloat16>(in, c); break;
    default: run<Eigen::half>(in, c); break;
    }
    if (g_verbose)
        std::fprintf(stderr, "  full case: %s\n", g_case.c_str());
    return 0;
}
