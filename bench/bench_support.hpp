#pragma once
/// \file
/// Pieces shared by the Star benchmarks (bench_kernel, bench_algorithms):
///
///  * `ForeignLoad` and the `other_cores` counter: how many cores *other* processes took
///    while a benchmark was measuring;
///  * the quiet gate `wait_for_quiet`: wait (untimed, bounded) for the machine to quieten
///    down before measuring;
///  * `CollectingReporter`: the usual console output, plus every repetition of every
///    benchmark collected (real time and all counters) for a summary printed at the end;
///  * `median`.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <sys/resource.h>
#include <unistd.h>

namespace star_bench {

// ----------------------------------------------------------------------------------------
// Foreign load: this is a small shared VM, so each benchmark also reports how many cores
// *other* processes (and the hypervisor, as steal time) took while it was measuring:
// busy time of the whole machine from /proc/stat minus this process's own CPU time, over
// wall time. Near 0 is a clean measurement; near 1 means one of the 2 cores was taken.
// ----------------------------------------------------------------------------------------

class ForeignLoad {
public:
    ForeignLoad() : start_(now()) {}

    /// Average number of cores used by others since construction (jiffy resolution).
    [[nodiscard]] double cores() const
    {
        const Sample end = now();
        const double wall = end.wall - start_.wall;
        if (wall <= 0.0 || start_.busy < 0.0 || end.busy < 0.0)
            return std::numeric_limits<double>::quiet_NaN();
        return std::max(0.0, ((end.busy - start_.busy) - (end.self - start_.self)) / wall);
    }

private:
    struct Sample {
        double wall = 0.0;  // s
        double busy = -1.0; // s of CPU time of the whole machine, all cores
        double self = 0.0;  // s of CPU time of this process
    };

    static Sample now()
    {
        Sample s;
        s.wall =
            std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
        std::ifstream stat("/proc/stat");
        std::string cpu;
        double user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
        if (stat >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal &&
            cpu == "cpu")
            s.busy = (user + nice + system + irq + softirq + steal) /
                     static_cast<double>(sysconf(_SC_CLK_TCK));
        rusage ru{};
        getrusage(RUSAGE_SELF, &ru);
        s.self = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                 1e-6 * static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
        return s;
    }

    Sample start_;
};

inline void report_foreign_load(benchmark::State& state, const ForeignLoad& load)
{
    // Only benchmark thread 0 reports (counters are summed over threads): the other threads'
    // windows would also cover thread 0's quiet gate.
    if (state.thread_index() == 0)
        state.counters["other_cores"] = load.cores();
}

// ----------------------------------------------------------------------------------------
/// Quiet gate: before measuring, wait (untimed) until other processes use less than
/// kQuietThreshold cores over a kQuietWindow window -- at most kQuietMaxWait per benchmark
/// start, and at most `STAR_BENCH_QUIET_BUDGET` seconds summed over the whole run
/// (environment, default 300; 0 turns the gate off), so a machine that never quietens down
/// costs a bounded delay. Every benchmark still reports its `other_cores`, and the summary
/// counts the starts that timed out (`print_quiet_gate_summary`).
// ----------------------------------------------------------------------------------------

inline constexpr double kQuietThreshold = 0.25;
inline constexpr std::chrono::milliseconds kQuietWindow{200};
inline constexpr std::chrono::seconds kQuietMaxWait{20};

struct QuietGateStats {
    int gates = 0;
    int timeouts = 0;
    double waited = 0.0; // s
};
inline QuietGateStats g_quiet; // only touched by benchmark thread 0

inline double quiet_budget()
{
    static const double seconds = [] {
        const char* env = std::getenv("STAR_BENCH_QUIET_BUDGET");
        return env != nullptr ? std::max(0.0, std::atof(env)) : 300.0;
    }();
    return seconds;
}

inline void wait_for_quiet(const benchmark::State& state)
{
    if (state.thread_index() != 0 || g_quiet.waited >= quiet_budget())
        return;
    ++g_quiet.gates;
    const auto start = std::chrono::steady_clock::now();
    const auto budget_left = std::chrono::duration<double>(quiet_budget() - g_quiet.waited);
    const auto deadline =
        start + std::min<std::chrono::duration<double>>(kQuietMaxWait, budget_left);
    bool quiet = false;
    while (!quiet) {
        const ForeignLoad probe;
        std::this_thread::sleep_for(kQuietWindow);
        quiet = probe.cores() < kQuietThreshold;
        if (!quiet && std::chrono::steady_clock::now() >= deadline) {
            ++g_quiet.timeouts;
            break;
        }
    }
    g_quiet.waited +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

inline void print_quiet_gate_summary()
{
    std::printf("Quiet gate: %d of %d benchmark starts timed out waiting for < %.2f other cores; "
                "%.0f s waited in all (budget STAR_BENCH_QUIET_BUDGET = %.0f s).\n",
                g_quiet.timeouts, g_quiet.gates, kQuietThreshold, g_quiet.waited, quiet_budget());
}

// ----------------------------------------------------------------------------------------
// Reporter: console output as usual, and every repetition collected for the summary.
// ----------------------------------------------------------------------------------------

inline double median(std::vector<double> v)
{
    if (v.empty())
        return std::numeric_limits<double>::quiet_NaN();
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/// Every repetition of one benchmark instance (one function name, one set of arguments).
struct Series {
    std::string function_name;
    std::vector<long> args;
    int threads = 1;
    std::vector<double> real_time;                       // per iteration, in the run's time unit
    std::map<std::string, std::vector<double>> counters; // final counter values, per repetition

    /// The values of counter `name` over the repetitions (empty when never reported).
    [[nodiscard]] std::vector<double> counter(const std::string& name) const
    {
        const auto it = counters.find(name);
        return it == counters.end() ? std::vector<double>{} : it->second;
    }
};

class CollectingReporter : public benchmark::ConsoleReporter {
public:
    using benchmark::ConsoleReporter::ConsoleReporter;

    void ReportRuns(const std::vector<Run>& runs) override
    {
        benchmark::ConsoleReporter::ReportRuns(runs);
        for (const Run& r : runs) {
            if (r.run_type != Run::RT_Iteration || r.error_occurred)
                continue;
            Series& s = series_[r.run_name.str()];
            s.function_name = r.run_name.function_name;
            s.threads = static_cast<int>(r.threads);
            s.args = parse_args(r.run_name.args);
            s.real_time.push_back(r.GetAdjustedRealTime());
            for (const auto& [name, counter] : r.counters)
                s.counters[name].push_back(counter.value);
        }
    }

    [[nodiscard]] const std::map<std::string, Series>& series() const { return series_; }

private:
    static std::vector<long> parse_args(const std::string& text)
    {
        std::vector<long> out;
        std::size_t pos = 0;
        while (pos < text.size()) {
            std::size_t end = text.find('/', pos);
            if (end == std::string::npos)
                end = text.size();
            const std::string part = text.substr(pos, end - pos);
            const std::size_t colon = part.find(':'); // tolerate "name:value"
            out.push_back(std::stol(colon == std::string::npos ? part : part.substr(colon + 1)));
            pos = end + 1;
        }
        return out;
    }

    std::map<std::string, Series> series_;
};

} // namespace star_bench
