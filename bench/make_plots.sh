#!/usr/bin/env bash
# Regenerates the performance plots in docs/plots: builds the benchmarks if needed, runs them
# with JSON output into <build_dir>/bench-results/, then draws the PNGs with bench/plot.py.
#
#   bench/make_plots.sh [options] [build_dir] [-- extra benchmark arguments]
#
#   build_dir        default build/release (configured with `cmake --preset release` if it
#                    does not exist yet; any other directory as a Release build)
#   --plot-only      do not build or run anything: replot the JSON already in bench-results/
#   --benchmarks L   comma-separated subset of kernel,algorithms,mpi,cluster to run (default:
#                    all; mpi only where bench_mpi was built and mpiexec exists; cluster is
#                    bench_cluster's host_step/ family, ~4 min, for cluster_scaling.png)
#   --out DIR        where the PNGs go (default: docs/plots of this source tree)
#   after --         passed to every benchmark run, e.g. -- --benchmark_filter=...
#
# Environment: STAR_BENCH_MIN_L / STAR_BENCH_MAX_L choose bench_algorithms' context lengths
# (default 8K..32K, ~20 min; the full set takes ~40 min with bench_kernel). A run with either
# of them set writes algorithms-L<min>-<max>.json instead of algorithms.json, so a separate
# 64K run (STAR_BENCH_MIN_L=65536 STAR_BENCH_MAX_L=65536) sits next to the default one, and
# every algorithms*.json in bench-results/ is plotted (oldest first: for a benchmark in
# several files, the newest file wins). STAR_MPIEXEC overrides the MPI launcher (default
# `mpiexec -n 4 --oversubscribe --allow-run-as-root`, Open MPI); PYTHON the interpreter
# (default: the first of python3, /usr/bin/python3 that has matplotlib).
#
# Results: bench-results/{kernel,algorithms*,mpi,cluster}.json (Google Benchmark JSON) and .txt (the
# console output with each benchmark's summary table). The needle accuracy plot is drawn from
# bench-results/accuracy*.json, which the Llama example writes (it is not run from here: it
# needs ../shared/models and takes hours), e.g. with the Release build's examples:
#   examples/llama/llama $M/needle-byte-llama needle --set $M/needle-byte-llama/needles.jsonl \
#       --published $M/needle-byte-llama/eval.json --json <build_dir>/bench-results/accuracy.json
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=""
plot_only=0
benchmarks="kernel,algorithms,mpi,cluster"
out="$root/docs/plots"
extra=()

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --plot-only) plot_only=1 ;;
        --benchmarks) benchmarks=${2:?--benchmarks needs a list}; shift ;;
        --benchmarks=*) benchmarks=${1#*=} ;;
        --out) out=${2:?--out needs a directory}; shift ;;
        --out=*) out=${1#*=} ;;
        -h|--help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        -*) echo "make_plots.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *)
            if [[ -n "$build" ]]; then
                echo "make_plots.sh: one build directory only (extra benchmark arguments go after --)" >&2
                exit 2
            fi
            build=$1 ;;
    esac
    shift
done
build=${build:-$root/build/release}
[[ "$build" = /* ]] || build="$PWD/$build"
results="$build/bench-results"
wants() { [[ ",$benchmarks," == *",$1,"* ]]; }

# Python with matplotlib (pyenv and venv interpreters often lack Debian's python3-matplotlib).
python=${PYTHON:-}
if [[ -z "$python" ]]; then
    for candidate in python3 /usr/bin/python3; do
        if command -v "$candidate" >/dev/null && "$candidate" -c 'import matplotlib' 2>/dev/null; then
            python=$candidate
            break
        fi
    done
fi
if [[ -z "$python" ]]; then
    echo "make_plots.sh: no python3 with matplotlib (Debian: apt-get install python3-matplotlib)" >&2
    exit 1
fi

if [[ $plot_only -eq 0 ]]; then
    if [[ ! -f "$build/CMakeCache.txt" ]]; then
        if [[ "$build" == "$root/build/release" ]]; then
            (cd "$root" && cmake --preset release)
        else
            cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release
        fi
    fi
    targets=()
    wants kernel && targets+=(bench_kernel)
    wants algorithms && targets+=(bench_algorithms)
    wants cluster && targets+=(bench_cluster)
    if wants mpi; then
        if cmake --build "$build" --target help 2>/dev/null | grep -q '\bbench_mpi\b'; then
            targets+=(bench_mpi)
        else
            echo "make_plots.sh: no bench_mpi target (MPI not found at configure time); skipping MPI"
        fi
    fi
    if [[ ${#targets[@]} -gt 0 ]]; then
        cmake --build "$build" --target "${targets[@]}" -j2
    fi
    mkdir -p "$results"

    # run NAME COMMAND...: COMMAND with JSON output into bench-results/NAME.json, the console
    # output also into NAME.txt. The JSON is written to a temporary name first, so a failed
    # or interrupted run leaves the previous results in place.
    run() {
        local name=$1
        shift
        echo "make_plots.sh: $* -> $results/$name.json"
        "$@" --benchmark_out="$results/$name.json.part" --benchmark_out_format=json ${extra[@]+"${extra[@]}"} \
            | tee "$results/$name.txt"
        if [[ -s "$results/$name.json.part" ]]; then
            mv "$results/$name.json.part" "$results/$name.json"
        else # e.g. a --benchmark_filter that matched none of this program's benchmarks
            rm -f "$results/$name.json.part"
            echo "make_plots.sh: no benchmark of $name ran; keeping the previous $name.json, if any"
        fi
    }
    if wants kernel; then
        run kernel "$build/bench/bench_kernel"
    fi
    if wants algorithms; then
        name=algorithms
        if [[ -n "${STAR_BENCH_MIN_L:-}" || -n "${STAR_BENCH_MAX_L:-}" ]]; then
            name="algorithms-L${STAR_BENCH_MIN_L:-8192}-${STAR_BENCH_MAX_L:-32768}"
        fi
        run "$name" "$build/bench/bench_algorithms"
    fi
    if wants cluster; then
        run cluster "$build/bench/bench_cluster" --benchmark_filter=host_step/
    fi
    if wants mpi && [[ -x "$build/bench/bench_mpi" ]]; then
        read -r -a mpiexec <<< "${STAR_MPIEXEC:-mpiexec -n 4 --oversubscribe --allow-run-as-root}"
        if command -v "${mpiexec[0]}" >/dev/null; then
            run mpi "${mpiexec[@]}" "$build/bench/bench_mpi" --benchmark_color=false
        else
            echo "make_plots.sh: ${mpiexec[0]} not found; skipping bench_mpi"
        fi
    fi
fi

# Plot whatever results exist.
args=()
[[ -f "$results/kernel.json" ]] && args+=(--kernel "$results/kernel.json")
while IFS= read -r file; do
    args+=(--algorithms "$file")
done < <(ls -tr "$results"/algorithms*.json 2>/dev/null || true)
[[ -f "$results/mpi.json" ]] && args+=(--mpi "$results/mpi.json")
[[ -f "$results/cluster.json" ]] && args+=(--cluster "$results/cluster.json")
while IFS= read -r file; do
    args+=(--accuracy "$file")
done < <(ls -tr "$results"/accuracy*.json 2>/dev/null || true)
if [[ ${#args[@]} -eq 0 ]]; then
    echo "make_plots.sh: no benchmark results in $results (run without --plot-only first)" >&2
    exit 1
fi
"$python" "$root/bench/plot.py" "${args[@]}" --out "$out"
