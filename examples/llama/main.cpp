// llama: a Llama-architecture model whose every attention call goes through Star.
//
//   llama <model> generate (--prompt TEXT | --tokens FILE | --token-ids 1,2,3)
//                          [--query TEXT] [--steps 64] [--attention global]
//   llama <model> logits   --reference reference_logits.safetensors [--attention global]
//                          [--tolerance 1e-3]
//   llama <model> needle   --set needles.jsonl [--lengths 2048,4096] [--samples 50]
//                          [--settings global,star:b=L/4,star:b=L/8,star:b=L/4:anchor=none]
//                          [--published eval.json] [--json results.json] [--verbose]
//   llama <model> agree    (--prompt TEXT | --tokens FILE | --token-ids 1 |
//                           --needles needles.jsonl --length 2048 [--samples 5])
//                          [--generate 64] [--context C] [--settings star:b=L/4,...]
//   common: [--threads N]
//
// <model> is a Hugging Face directory (config.json + model.safetensors) or a llama2.c
// checkpoint file. Attention settings (see attention_backend.hpp):
//   global | ring[:hosts=4][:layout=plain|zigzag]
//   star[:b=L/4][:anchor=first|sinks|none|previous][:a=SIZE][:hosts=N]
//       [:anchor-from=compute|receive]
//       [:partition=contiguous|round-robin|balanced][:merge=gather|all-gather|tree]
// where L is the context length (needle mode: the sample's nominal length).
//
// For Star, the context is encoded by phase 1 (every host its own blocks, with the anchor,
// through all layers) and the query and every generated token by phase 2.
//
// Every host runs in this process, or, started by `mpiexec -n H llama ...`, one host per
// rank (rank_backends.hpp): each rank computes only its own part of the context and keeps
// only its own K/V; the last rank is the query host, runs the tokens after the context and
// prints the results. Across ranks the exact baseline is `ring` (global attention is one
// host's), and `logits` is not available.
//
// A config.json may give layers a sliding window (sliding_window, layer_types, Qwen2's
// use_sliding_window/max_window_layers) and soft caps (attn_logit_softcapping,
// final_logit_softcapping): each layer then runs the matching library variant under every
// setting. The keys read and refused are listed in README.md.

#if LLAMA_WITH_MPI
#include "rank_backends.hpp" // first: <star/comm/mpi.hpp> must be the first to include <mpi.h>
#endif

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <tbb/global_control.h>

#include "agree.hpp"
#include "attention_backend.hpp"
#include "forward.hpp"
#include "input.hpp"
#include "load.hpp"
#include "needle.hpp"
#include "safetensors.hpp"

namespace {

using llama::index;
using llama::setting_error;

constexpr const char* usage = R"(usage: llama <model> <mode> [options]

<model>: a Hugging Face directory (config.json + model.safetensors) or a llama2.c file.
         config.json may set sliding windows and soft caps (examples/llama/README.md).

modes:
  generate  (--prompt TEXT | --tokens FILE | --token-ids 1,2,3) [--query TEXT]
            [--steps 64] [--attention SETTING]
            Greedy continuation. The prompt is the context (phase 1); the query (default:
            the prompt's last token) and the generated tokens go through phase 2.
  logits    --reference FILE [--attention SETTING] [--tolerance 1e-3]
            Logits of the reference's input_ids against its logits; fails above tolerance.
  needle    --set FILE [--lengths 2048,4096] [--samples N] [--settings LIST]
            [--published FILE] [--json FILE] [--verbose]
            Exact-match accuracy and time per phase, per length and setting. --published:
            figures to print beside ours (a model's eval.json: per length, % per setting
            name, e.g. "star b=L/4", "no anchor b=L/4"). --json: the table as JSON, rewritten
            after every row (bench/plot.py --accuracy draws it).
  agree     (--prompt TEXT | --tokens FILE | --token-ids LIST |
             --needles FILE --length N [--samples 1]) [--generate 64] [--context C]
            [--settings LIST]
            Greedy agreement and KL divergence of each setting against global attention
            over the tokens after the context.

options for every mode: --threads N (cap on worker threads)

mpiexec -n H llama ...: one host per rank (star or ring; generate, needle, agree). The last
         rank is the query host and prints the results; generate also prints each rank's
         K/V and bytes sent. A rank that fails ends the job.

SETTING: global | ring[:hosts=4][:layout=plain|zigzag]
         | star[:b=L/4][:anchor=first|sinks|none|previous][:a=SIZE][:hosts=N]
                [:anchor-from=compute|receive]
                [:partition=contiguous|round-robin|balanced][:merge=gather|all-gather|tree]
         SIZE is a token count or L/n (L: the context length). LIST: comma-separated.
         anchor-from=receive: the anchor's owners send its K/V at each layer instead of
         every host computing the anchor itself.
)";

// Options after the mode: `--name value` pairs and `--flag`s, each allowed for some modes.
class Options {
public:
    Options(int argc, char** argv, int first, const std::set<std::string>& with_value,
            const std::set<std::string>& flags)
    {
        for (int i = first; i < argc; ++i) {
            const std::string name = argv[i];
            if (flags.contains(name)) {
                values_[name] = "";
            } else if (with_value.contains(name)) {
                if (i + 1 >= argc)
                    throw setting_error(name + " needs a value");
                if (values_.contains(name))
                    throw setting_error(name + " is given twice");
                values_[name] = argv[++i];
            } else {
                throw setting_error("unknown option '" + name + "' for this mode");
            }
        }
    }

    [[nodiscard]] bool has(const std::string& name) const { return values_.contains(name); }

    [[nodiscard]] std::string text(const std::string& name, const std::string& fallback = "") const
    {
        const auto it = values_.find(name);
        return it == values_.end() ? fallback : it->second;
    }

    [[nodiscard]] long long number(const std::string& name, long long fallback, long long min,
                                   long long max) const
    {
        if (!has(name))
            return fallback;
        return parse_number(text(name), name, min, max);
    }

    static long long parse_number(const std::string& text, const std::string& what, long long min,
                                  long long max)
    {
        long long value = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
        if (ec != std::errc{} || end != text.data() + text.size() || value < min || value > max)
            throw setting_error(what + ": expected a whole number in [" + std::to_string(min) +
                                ", " + std::to_string(max) + "], got '" + text + "'");
        return value;
    }

private:
    std::map<std::string, std::string> values_;
};

std::vector<int> parse_token_list(const std::string& text, const std::string& what)
{
    std::vector<int> tokens;
    std::string item;
    std::istringstream in(text);
    while (std::getline(in, item, ','))
        tokens.push_back(static_cast<int>(Options::parse_number(item, what, 0, 1 << 30)));
    if (tokens.empty())
        throw setting_error(what + ": no token ids");
    return tokens;
}

// Token ids from a file: whole numbers separated by white space or commas.
std::vector<int> read_token_file(const std::string& path)
{
    llama::require_regular_file<std::runtime_error>(path);
    std::ifstream in(path);
    if (!in)
        throw std::runtime_error(path + ": cannot open the token file");
    std::vector<int> tokens;
    std::string word;
    while (in >> word) {
        std::replace(word.begin(), word.end(), ',', ' ');
        std::istringstream parts(word);
        std::string part;
        while (parts >> part)
            tokens.push_back(static_cast<int>(Options::parse_number(part, path, 0, 1 << 30)));
    }
    if (tokens.empty())
        throw std::runtime_error(path + ": no token ids in the file");
    return tokens;
}

// The prompt of generate/agree: bytes of --prompt, or ids from --tokens / --token-ids.
std::optional<std::vector<int>> prompt_tokens(const Options& o, bool& is_text)
{
    const int sources = int(o.has("--prompt")) + int(o.has("--tokens")) + int(o.has("--token-ids"));
    if (sources > 1)
        throw setting_error("give only one of --prompt, --tokens, --token-ids");
    is_text = o.has("--prompt");
    if (o.has("--prompt"))
        return llama::byte_tokens(o.text("--prompt"));
    if (o.has("--tokens"))
        return read_token_file(o.text("--tokens"));
    if (o.has("--token-ids"))
        return parse_token_list(o.text("--token-ids"), "--token-ids");
    return std::nullopt;
}

void check_tokens(const llama::Model& model, const std::vector<int>& tokens)
{
    for (const int t : tokens)
        if (t >= model.config.vocab_size)
            throw setting_error("token id " + std::to_string(t) + " is outside the model's " +
                                std::to_string(model.config.vocab_size) + "-token vocabulary");
}

void warn_length(const llama::Model& model, index tokens)
{
    if (model.config.max_positions > 0 && tokens > model.config.max_positions)
        std::cerr << "warning: " << tokens << " tokens exceed the model's trained context of "
                  << model.config.max_positions << "\n";
}

std::string printable(const std::string& bytes)
{
    std::string out;
    for (const char c : bytes) {
        const auto u = static_cast<unsigned char>(c);
        if (u == '\n' || u == '\t' || u >= 32)
            out.push_back(c);
        else
            out += "\\x" + std::string(1, "0123456789abcdef"[u >> 4]) + "0123456789abcdef"[u & 15];
    }
    return out;
}

double ms_since(std::chrono::steady_clock::time_point start)
{
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

// Where this process runs: alone, every host of an attention setting in this process, or,
// when mpiexec started it, as one host of the setting per rank of the MPI job. The last rank
// leads: it is the query host of every setting (each partition's default), computes the
// tokens after the context, and prints the results.
class Job {
public:
    Job() = default;
#if LLAMA_WITH_MPI
    Job(star::MpiCommunicator& mpi, llama::CountingCommunicator& hosts) : mpi_(&mpi), hosts_(&hosts)
    {
    }
#endif

    [[nodiscard]] bool across_ranks() const { return ranks() > 1; }
    [[nodiscard]] int rank() const
    {
#if LLAMA_WITH_MPI
        if (mpi_)
            return mpi_->rank();
#endif
        return 0;
    }
    [[nodiscard]] int ranks() const
    {
#if LLAMA_WITH_MPI
        if (mpi_)
            return mpi_->size();
#endif
        return 1;
    }
    [[nodiscard]] bool leads() const { return rank() == ranks() - 1; }

    // The attention backends of `model`'s sequences.
    [[nodiscard]] llama::BackendMaker backends(const llama::Model& model) const
    {
#if LLAMA_WITH_MPI
        if (hosts_)
            return [&model, hosts = hosts_](const llama::AttentionSetting& s, index context) {
                return std::unique_ptr<llama::AttentionBackend>(
                    llama::make_rank_backend(s, model.config, context, *hosts));
            };
#endif
        return llama::in_process(model.config);
    }

    // The largest of every rank's `value`, at every rank.
    [[nodiscard]] double slowest(double value) const
    {
        double most = value;
        for (const auto& v : gathered({value}))
            most = std::max(most, v.at(0));
        return most;
    }

    // Every rank's `values`, in rank order, at every rank.
    [[nodiscard]] std::vector<std::vector<double>> gathered(std::vector<double> values) const
    {
#if LLAMA_WITH_MPI
        if (mpi_) {
            auto mine = mpi_->local<std::vector<double>>();
            mine[rank()] = std::move(values);
            return mpi_->all_gather(mine)[rank()];
        }
#endif
        return {std::move(values)};
    }

    // The leading rank's `tokens`, at every rank.
    [[nodiscard]] std::vector<int> from_leader(std::vector<int> tokens) const
    {
#if LLAMA_WITH_MPI
        if (mpi_) {
            auto buffer = mpi_->local<std::vector<int>>();
            buffer[rank()] = std::move(tokens);
            mpi_->broadcast(buffer, ranks() - 1);
            return std::move(buffer[rank()]);
        }
#endif
        return tokens;
    }

    // Payload bytes this rank's attention has sent to other ranks so far.
    [[nodiscard]] std::uint64_t bytes_sent() const
    {
#if LLAMA_WITH_MPI
        if (hosts_)
            return hosts_->bytes_sent();
#endif
        return 0;
    }

private:
#if LLAMA_WITH_MPI
    // The job's messages to run the modes (results, timings) go through `mpi_`; the
    // attention's, counted, through `hosts_`.
    star::MpiCommunicator* mpi_ = nullptr;
    llama::CountingCommunicator* hosts_ = nullptr;
#endif
};

// ---------------------------------------------------------------------------------------------

// "1.5 MB": a byte count for people.
std::string bytes_text(double bytes)
{
    std::ostringstream s;
    s << std::fixed << std::setprecision(1);
    if (bytes >= 1e6)
        s << bytes / 1e6 << " MB";
    else if (bytes >= 1e3)
        s << bytes / 1e3 << " kB";
    else
        s << std::setprecision(0) << bytes << " B";
    return s.str();
}

int run_generate(const llama::Model& model, const Options& o, const Job& job)
{
    bool is_text = false;
    const auto prompt = prompt_tokens(o, is_text);
    if (!prompt)
        throw setting_error("generate needs --prompt, --tokens or --token-ids");
    check_tokens(model, *prompt);
    const llama::AttentionSetting setting = llama::parse_setting(o.text("--attention", "global"));
    const int steps = static_cast<int>(o.number("--steps", 64, 1, 1 << 20));

    // The context is the prompt; the query is --query, or else the prompt's last token, so
    // that the first generated token already comes from phase 2.
    std::vector<int> context = *prompt, query;
    if (o.has("--query")) {
        query = llama::byte_tokens(o.text("--query"));
        check_tokens(model, query);
    } else if (context.size() > 1) {
        query.push_back(context.back());
        context.pop_back();
    }
    if (query.empty() && job.across_ranks())
        throw setting_error("across ranks the prompt needs at least two tokens: the last one is "
                            "the query, which the query host runs after the context");
    if (job.leads())
        warn_length(model, static_cast<index>(context.size() + query.size()) + steps);

    llama::Sequence sequence(model,
                             job.backends(model)(setting, static_cast<index>(context.size())));
    auto start = std::chrono::steady_clock::now();
    if (!query.empty())
        sequence.encode_context(context);
    const double context_ms = ms_since(start);
    start = std::chrono::steady_clock::now();
    // A one-token prompt is all context: its prediction comes from phase 1.
    const llama::Matrix logits = query.empty()
                                     ? sequence.encode_context(context, llama::Logits::last)
                                     : sequence.append(query, llama::Logits::last);
    const double query_ms = ms_since(start);
    start = std::chrono::steady_clock::now();
    const std::vector<int> generated = llama::generate_greedy(sequence, logits, steps);
    const double decode_ms = ms_since(start);

    // Per host: phase 1's time, the K/V it holds and the bytes it sent (across ranks; hosts
    // in one process send nothing).
    const std::vector<std::size_t> cache = sequence.attention().cache_bytes();
    std::vector<std::vector<double>> hosts;
    if (job.across_ranks()) {
        hosts = job.gathered(
            {context_ms, static_cast<double>(cache.at(0)), static_cast<double>(job.bytes_sent())});
    } else {
        for (const std::size_t bytes : cache)
            hosts.push_back({context_ms, static_cast<double>(bytes), 0.0});
    }
    if (!sequence.runs_query())
        return 0;

    if (is_text || o.has("--query")) {
        std::cout << printable(llama::bytes_text(generated)) << "\n";
    } else {
        for (std::size_t i = 0; i < generated.size(); ++i)
            std::cout << (i ? " " : "") << generated[i];
        std::cout << "\n";
    }
    const int decoded = steps - 1;
    std::cerr << std::fixed << std::setprecision(1) << sequence.attention().describe()
              << ": context " << context.size() << " tokens " << context_ms << " ms, query "
              << query.size() << " tokens " << query_ms << " ms, decode " << decoded << " tokens "
              << decode_ms << " ms\n"
              << "time to first token " << context_ms + query_ms << " ms, decode "
              << (decoded > 0 && decode_ms > 0 ? 1000.0 * decoded / decode_ms : 0.0)
              << " tokens/s\n";
    if (job.across_ranks()) {
        std::cerr << "| rank | phase 1 ms | K/V held | bytes sent |\n|---:|---:|---:|---:|\n";
        for (std::size_t r = 0; r < hosts.size(); ++r)
            std::cerr << "| " << r << (static_cast<int>(r) == job.rank() ? " (query host)" : "")
                      << " | " << hosts[r][0] << " | " << bytes_text(hosts[r][1]) << " | "
                      << bytes_text(hosts[r][2]) << " |\n";
    } else if (hosts.size() > 1) {
        std::cerr << "K/V held per host:";
        for (const auto& h : hosts)
            std::cerr << " " << bytes_text(h[1]);
        std::cerr << "\n";
    }
    return 0;
}

int run_logits(const llama::Model& model, const Options& o)
{
    if (!o.has("--reference"))
        throw setting_error("logits needs --reference FILE");
    const llama::SafeTensors reference(o.text("--reference"));
    const std::vector<std::int32_t> ids = reference.int32s("input_ids");
    if (ids.empty())
        throw setting_error("the reference holds no input_ids");
    const auto n = static_cast<std::int64_t>(ids.size());
    const std::vector<float> expected =
        reference.floats("logits", {n, std::int64_t{model.config.vocab_size}});
    const std::vector<int> tokens(ids.begin(), ids.end());
    check_tokens(model, tokens);
    double tolerance = 1e-3;
    if (o.has("--tolerance")) {
        try {
            tolerance = std::stod(o.text("--tolerance"));
        } catch (const std::exception&) {
            throw setting_error("--tolerance: not a number: " + o.text("--tolerance"));
        }
    }

    const llama::AttentionSetting setting = llama::parse_setting(o.text("--attention", "global"));
    llama::Sequence sequence(model, llama::make_backend(setting, model.config, n));
    const llama::Matrix logits = sequence.encode_context(tokens, llama::Logits::all);
    const llama::LogitsCheck check = llama::check_logits(logits, expected);
    if (check.non_finite)
        throw std::runtime_error("logits: " + check.describe(tolerance));
    std::cout << sequence.attention().describe() << ": " << n << " tokens, "
              << check.describe(tolerance) << "\n";
    return check.within(tolerance) ? 0 : 1;
}

// `count` samples spread evenly over `group` (which is ordered by needle depth).
std::vector<const llama::NeedleSample*> spread(const std::vector<const llama::NeedleSample*>& group,
                                               std::size_t count)
{
    if (count >= group.size())
        return group;
    std::vector<const llama::NeedleSample*> chosen;
    for (std::size_t i = 0; i < count; ++i)
        chosen.push_back(group[i * group.size() / count]);
    return chosen;
}

std::vector<index> parse_lengths(const std::string& text)
{
    std::vector<index> lengths;
    for (const int l : parse_token_list(text, "--lengths"))
        lengths.push_back(l);
    return lengths;
}

// Published accuracy figures, as in a model's eval.json: [{"length": 2048, "global": 100.0,
// "star b=L/4": 98.0, "no anchor b=L/4": 98.0, ...}, ...].
using PublishedFigures = std::map<std::pair<index, std::string>, double>;

PublishedFigures read_published(const std::string& path)
{
    nlohmann::json rows;
    try {
        rows = llama::read_json_file(path);
    } catch (const llama::load_error& e) {
        throw setting_error(std::string("--published: ") + e.what());
    }
    if (!rows.is_array())
        throw setting_error("--published: " + path + " must hold an array of per-length objects");
    PublishedFigures figures;
    for (const auto& row : rows) {
        if (!row.is_object() || !row.contains("length") || !row.at("length").is_number_integer())
            throw setting_error("--published: " + path + ": every entry needs an integer length");
        const index length = row.at("length").get<index>();
        for (const auto& [name, value] : row.items())
            if (name != "length" && value.is_number())
                figures[{length, name}] = value.get<double>();
    }
    return figures;
}

// The name eval.json gives a setting: "star:b=L/4" is "star b=L/4", and the no-anchor
// ablation "star:b=L/4:anchor=none" is "no anchor b=L/4". Other settings have none.
std::string published_name(const llama::AttentionSetting& setting)
{
    std::string name = setting.text;
    constexpr std::string_view no_anchor = ":anchor=none";
    if (const auto at = name.find(no_anchor); at != std::string::npos && name.starts_with("star")) {
        name.erase(at, no_anchor.size());
        name.replace(0, 4, "no anchor");
    }
    std::replace(name.begin(), name.end(), ':', ' ');
    return name;
}

void write_json(const std::string& path, const nlohmann::json& document)
{
    std::ofstream out(path, std::ios::trunc);
    out << document.dump(1) << "\n";
    if (!out)
        throw setting_error("--json: cannot write " + path);
}

int run_needle(const llama::Model& model, const Options& o, const Job& job)
{
    if (!o.has("--set"))
        throw setting_error("needle needs --set FILE");
    const std::vector<llama::NeedleSample> samples = llama::read_needles(o.text("--set"));
    // Across ranks the exact baseline is Ring Attention: global attention is one host's.
    const auto settings = llama::parse_settings(
        o.text("--settings", std::string(job.across_ranks() ? "ring" : "global") +
                                 ",star:b=L/4,star:b=L/8,star:b=L/4:anchor=none"));
    const auto per_length = static_cast<std::size_t>(o.number("--samples", 1 << 30, 1, 1 << 30));
    const bool verbose = o.has("--verbose");
    const PublishedFigures published =
        o.has("--published") ? read_published(o.text("--published")) : PublishedFigures{};
    const std::string json_path = job.leads() ? o.text("--json") : std::string();
    // Accuracies in percent, like the table and eval.json.
    nlohmann::json document{
        {"set", o.text("--set")}, {"unit", "percent"}, {"results", nlohmann::json::array()}};
    if (!json_path.empty()) // fail on an unwritable path now, not after the first row's run
        write_json(json_path, document);

    std::map<index, std::vector<const llama::NeedleSample*>> groups;
    for (const auto& s : samples)
        groups[s.length].push_back(&s);
    std::vector<index> lengths;
    if (o.has("--lengths")) {
        lengths = parse_lengths(o.text("--lengths"));
        for (const index l : lengths)
            if (!groups.contains(l))
                throw setting_error("--lengths: the set has no samples of length " +
                                    std::to_string(l));
    } else {
        for (const auto& [l, g] : groups)
            lengths.push_back(l);
    }

    // Every rank runs every sample; the leading rank, the query host, knows the answers and
    // prints. Phase 1 is timed on the slowest rank.
    std::ostringstream discarded;
    std::ostream& table = job.leads() ? std::cout : discarded;
    table << "| length | setting | samples | exact match % |"
          << (published.empty() ? "" : " published % |")
          << " phase 1 ms | phase 2 ms | decode ms/token | run as |\n"
          << "|---:|---|---:|---:|" << (published.empty() ? "" : "---:|") << "---:|---:|---:|---|\n"
          << std::fixed << std::flush;
    bool all_ran = true;
    for (const index length : lengths) {
        const auto chosen = spread(groups[length], per_length);
        for (const auto& setting : settings) {
            int correct = 0;
            llama::PhaseTimes total;
            std::string backend;
            for (const llama::NeedleSample* s : chosen) {
                llama::NeedleOutcome out =
                    llama::run_needle(model, setting, *s, job.backends(model));
                out.times.context_ms = job.slowest(out.times.context_ms);
                correct += out.correct ? 1 : 0;
                total += out.times;
                backend = out.backend;
                if (verbose && out.ran_query)
                    std::cerr << length << " depth " << std::setprecision(2) << s->depth << " "
                              << setting.text << ": " << (out.correct ? "ok   " : "WRONG")
                              << " answer " << s->answer << " got " << printable(out.generated)
                              << " (" << std::setprecision(0) << out.times.context_ms << " + "
                              << out.times.query_ms << " + " << out.times.decode_ms << " ms)\n";
            }
            const double n = static_cast<double>(chosen.size());
            const double accuracy = 100.0 * correct / n;
            const double decode_ms = total.decoded ? total.decode_ms / total.decoded : 0.0;
            const auto reported = published.find({length, published_name(setting)});
            table << "| " << length << " | " << setting.text << " | " << chosen.size() << " | "
                  << std::setprecision(1) << accuracy << " | ";
            if (!published.empty()) {
                if (reported != published.end())
                    table << reported->second << " | ";
                else
                    table << "- | ";
            }
            table << total.context_ms / n << " | " << total.query_ms / n << " | "
                  << std::setprecision(2) << decode_ms << " | " << backend << " |\n"
                  << std::flush;
            if (!json_path.empty() && !chosen.empty()) {
                nlohmann::json row{{"length", length},
                                   {"setting", setting.text},
                                   {"samples", chosen.size()},
                                   {"correct", correct},
                                   {"accuracy", accuracy},
                                   {"phase1_ms", total.context_ms / n},
                                   {"phase2_ms", total.query_ms / n},
                                   {"decode_ms_per_token", decode_ms},
                                   {"run_as", backend}};
                if (reported != published.end())
                    row["published"] = reported->second;
                document["results"].push_back(std::move(row));
                write_json(json_path, document);
            }
            all_ran = all_ran && !chosen.empty();
        }
    }
    return all_ran ? 0 : 1;
}

int run_agree(const llama::Model& model, const Options& o, const Job& job)
{
    const auto settings =
        llama::parse_settings(o.text("--settings", "star:b=L/4,star:b=L/8,star:b=L/4:anchor=none"));
    const int generate = static_cast<int>(o.number("--generate", 64, 1, 1 << 20));

    // Each text: the prompt plus global's continuation, and how much of it is the context.
    struct Text {
        std::vector<int> prompt;
        index context = 0;
    };
    std::vector<Text> texts;
    bool is_text = false;
    if (const auto prompt = prompt_tokens(o, is_text)) {
        if (o.has("--needles"))
            throw setting_error("give either a prompt or --needles");
        check_tokens(model, *prompt);
        const index context = o.number("--context", static_cast<long long>(prompt->size()), 1,
                                       static_cast<long long>(prompt->size()) + generate - 1);
        texts.push_back({*prompt, context});
    } else if (o.has("--needles")) {
        if (!o.has("--length"))
            throw setting_error("--needles needs --length");
        if (o.has("--context"))
            throw setting_error("with --needles the context is each sample's context");
        const index length = o.number("--length", 0, 1, 1 << 30);
        std::vector<const llama::NeedleSample*> group;
        const auto samples = llama::read_needles(o.text("--needles"));
        for (const auto& s : samples)
            if (s.length == length)
                group.push_back(&s);
        if (group.empty())
            throw setting_error("--length: no needle samples of length " + std::to_string(length));
        for (const auto* s :
             spread(group, static_cast<std::size_t>(o.number("--samples", 1, 1, 1 << 20))))
            texts.push_back({llama::byte_tokens(s->context + s->question),
                             static_cast<index>(s->context.size())});
    } else {
        throw setting_error("agree needs --prompt, --tokens, --token-ids or --needles");
    }

    std::vector<llama::Agreement> results(settings.size());
    std::vector<double> context_ms(settings.size()), rest_ms(settings.size());
    std::vector<std::string> backends(settings.size());
    const llama::AttentionSetting global = llama::parse_setting("global");
    index context_tokens = 0, total_tokens = 0;
    for (const Text& t : texts) {
        // Across ranks the yardstick, global attention's continuation and logits, is the
        // leading rank's alone; the text then goes to every rank.
        std::vector<int> text;
        llama::Matrix exact;
        if (job.leads()) {
            text = llama::global_continuation(model, t.prompt, generate);
            warn_length(model, static_cast<index>(text.size()));
            exact = llama::continuation_logits(model, global, text, t.context).logits;
        }
        text = job.from_leader(std::move(text));
        context_tokens += t.context;
        total_tokens += static_cast<index>(text.size());
        for (std::size_t i = 0; i < settings.size(); ++i) {
            const auto approx = llama::continuation_logits(model, settings[i], text, t.context,
                                                           job.backends(model));
            if (job.leads())
                results[i] += llama::compare(exact, approx.logits);
            context_ms[i] += job.slowest(approx.context_ms);
            rest_ms[i] += approx.rest_ms;
            backends[i] = approx.backend;
        }
    }
    if (!job.leads())
        return 0;
    std::cout << texts.size() << " text(s), " << context_tokens << " context tokens and "
              << total_tokens - context_tokens << " compared positions in all (" << generate
              << " generated by global attention per text)\n\n"
              << "| setting | positions | greedy agreement % | mean KL (nats) | max KL | phase 1 ms"
                 " | phase 2 ms | run as |\n|---|---:|---:|---:|---:|---:|---:|---|\n";
    bool finite = true;
    for (std::size_t i = 0; i < settings.size(); ++i) {
        const auto& r = results[i];
        finite = finite && std::isfinite(r.kl_sum);
        std::cout << "| " << settings[i].text << " | " << r.positions << " | " << std::fixed
                  << std::setprecision(1) << 100.0 * r.rate() << " | " << std::scientific
                  << std::setprecision(2) << r.mean_kl() << " | " << r.kl_max << " | " << std::fixed
                  << std::setprecision(1) << context_ms[i] / texts.size() << " | "
                  << rest_ms[i] / texts.size() << " | " << backends[i] << " |\n";
    }
    return finite ? 0 : 1;
}

// Runs `mode` on the model at `path` as `job`; errors are thrown.
int run(const char* path, const std::string& mode, const Options& o, const Job& job)
{
    std::optional<tbb::global_control> threads;
    if (o.has("--threads"))
        threads.emplace(tbb::global_control::max_allowed_parallelism,
                        static_cast<std::size_t>(o.number("--threads", 0, 1, 1024)));
    if (mode == "logits" && job.across_ranks())
        throw setting_error("logits runs in one process: start it without mpiexec");

    const auto start = std::chrono::steady_clock::now();
    const llama::Model model = llama::load_model(path);
    const llama::Config& c = model.config;
    if (job.leads())
        std::cerr << "loaded " << path << " in " << std::fixed << std::setprecision(0)
                  << ms_since(start) << " ms: " << c.layers << " layers, hidden " << c.hidden_size
                  << ", " << c.heads << " heads / " << c.kv_heads << " kv heads of " << c.head_dim
                  << ", vocabulary " << c.vocab_size << ", RoPE "
                  << (c.rope == llama::RopeStyle::rotate_half ? "rotate-half" : "interleaved")
                  << (job.across_ranks() ? ", " + std::to_string(job.ranks()) + " ranks" : "")
                  << "\n";
    if (mode == "generate")
        return run_generate(model, o, job);
    if (mode == "logits")
        return run_logits(model, o);
    if (mode == "needle")
        return run_needle(model, o, job);
    return run_agree(model, o, job);
}

// The number of ranks of the MPI job whose launcher (mpiexec) started this process, read
// from the environment Open MPI or MPICH's launcher sets; none when started by hand.
std::optional<int> launched_ranks()
{
    for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"})
        if (const char* value = std::getenv(name))
            return std::atoi(value);
    return std::nullopt;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc < 3 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
        std::cerr << usage;
        return argc >= 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") ? 0
                                                                                               : 2;
    }
    const std::string mode = argv[2];
    const std::map<std::string, std::set<std::string>> options{
        {"generate", {"--prompt", "--tokens", "--token-ids", "--query", "--steps", "--attention"}},
        {"logits", {"--reference", "--attention", "--tolerance"}},
        {"needle", {"--set", "--lengths", "--samples", "--settings", "--published", "--json"}},
        {"agree",
         {"--prompt", "--tokens", "--token-ids", "--needles", "--length", "--samples", "--generate",
          "--context", "--settings"}},
    };
    const auto allowed = options.find(mode);
    if (allowed == options.end()) {
        std::cerr << "llama: unknown mode '" << mode << "'\n\n" << usage;
        return 2;
    }
    std::set<std::string> with_value = allowed->second;
    with_value.insert("--threads");
    const std::set<std::string> flags =
        mode == "needle" ? std::set<std::string>{"--verbose"} : std::set<std::string>{};

    // Started by mpiexec on several ranks: one host per rank. A rank that fails ends the
    // whole job with its message, so that no other rank waits for it forever.
    if (const std::optional<int> ranks = launched_ranks(); ranks && *ranks > 1) {
#if LLAMA_WITH_MPI
        MPI_Init(&argc, &argv);
        const int status = star::run_or_abort(MPI_COMM_WORLD, [&] {
            star::MpiCommunicator mpi(MPI_COMM_WORLD);
            llama::CountingCommunicator hosts(mpi);
            return run(argv[1], mode, Options(argc, argv, 3, with_value, flags), Job(mpi, hosts));
        });
        MPI_Finalize();
        return status;
#else
        std::cerr << "llama: started by mpiexec on " << *ranks
                  << " ranks, but this llama was built without MPI (install an MPI, e.g. "
                     "Debian's libopenmpi-dev, and build again)\n";
        return 1;
#endif
    }
    try {
        return run(argv[1], mode, Options(argc, argv, 3, with_value, flags), Job{});
    } catch (const std::exception& e) {
        std::cerr << "llama: " << e.what() << "\n";
        return 1;
    }
}
