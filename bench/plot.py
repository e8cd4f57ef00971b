#!/usr/bin/env python3
"""Plots of Star's benchmarks, from Google Benchmark's JSON output.

    bench/plot.py --kernel kernel.json --algorithms algorithms.json [--mpi mpi.json]
                  [--accuracy needle.json] [--cluster cluster.json] [--out docs/plots]

Inputs are the files written by `--benchmark_out=FILE --benchmark_out_format=json` of
bench_kernel, bench_algorithms, bench_mpi and bench_cluster. Each option may be given more than once (e.g.
the default 8K..32K run of bench_algorithms and a separate 64K run): the files are merged in
the order given, a benchmark that appears in several files taking its values from the last.
Where a benchmark has repetitions, its median aggregate is used (or, without aggregates, the
median of its repetitions).

Plots written into --out (PNG), each skipped with a message when its benchmarks are missing:

  kernel_gflops.png    bench_kernel: star::global_attention (causal) GFLOP/s vs T, one panel
                       per head_dim, 1 and 2 threads, the naive Eigen baseline, and the
                       measured FP32 FMA peak of 1 core and of 2 cores as horizontal lines.
  time_vs_context.png  bench_algorithms: phase 1 (context encoding) time vs context length L
                       for global, ring plain, ring zig-zag and Star -- wall time on this
                       machine, and the critical path on 4 single-core hosts (thread CPU
                       time) -- and phase 2 (query + decode steps) and one decode step, Star
                       vs exact decoding. Log-log axes.
  mpi_phases.png       bench_mpi: time per phase over MPI, Star vs Ring (phase 1), and the
                       Star merges for the query and for a decode step; bytes sent per rank
                       in phase 1.
  cluster_scaling.png  --cluster: bench_cluster's host_step/* runs (MEASURED: one core's rate
                       of each piece of a host's step) and, from them, bench/cluster_model.py's
                       MODELLED Ring / Star ratios: phase 1 at L = 1M against H with the
                       measured rates and with A100-like rates, and end to end at the paper's
                       points (b = 32K) beside the paper's 10.8x / 16.2x / 16.9x.
  accuracy.png         --accuracy (optional): needle accuracy vs context length, one panel per
                       attention setting, with the published figure where a row has one. The
                       JSON of `llama <model> needle --json FILE`, any JSON list of objects (or
                       {"results": [...]}) or a CSV, with the fields setting, length, accuracy
                       and optionally published (in 0..1 or %; "unit": "percent" says which).

Points measured while other processes took more than --busy (default 0.5) cores, according
to the benchmarks' `other_cores` counter, are drawn hollow.

Only the standard library and matplotlib (Agg backend) are used. Exit status: 0 when every
plot with inputs was written (skipped plots are not errors unless --strict), 1 on an
unreadable input, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after use("Agg"))
from matplotlib.ticker import (FixedLocator, FuncFormatter, LogLocator, NullFormatter,  # noqa: E402
                               NullLocator)

# ------------------------------------------------------------------------------------------
# Reading Google Benchmark JSON
# ------------------------------------------------------------------------------------------

_TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
# Name components Google Benchmark appends for options, not arguments.
_OPTION = re.compile(
    r"^(min_time:|min_warmup_time:|repeats:|iterations:|threads:|real_time$|manual_time$|process_time$)")
_INT = re.compile(r"^-?\d+$")
_NAMED_INT = re.compile(r"^([A-Za-z_]\w*):(-?\d+)$")
# Fields of a JSON benchmark entry that are not counters.
_NOT_COUNTERS = {
    "name", "family_index", "per_family_instance_index", "run_name", "run_type", "repetitions",
    "repetition_index", "threads", "iterations", "real_time", "cpu_time", "time_unit",
    "aggregate_name", "aggregate_unit", "label", "error_occurred", "error_message",
    "big_o", "rms", "complexity_n",
}


@dataclass
class Bench:
    """One benchmark instance (a run_name), reduced to medians."""

    run_name: str
    family: str  # the registered name without its arguments, e.g. "BM_GlobalCausal", "star_p1"
    args: list  # positional integer arguments, in order (named ones too, e.g. L:8192 -> 8192)
    named: dict  # named integer arguments, e.g. {"L": 8192, "chains": 8}
    threads: int
    real_ms: float  # median real time per iteration, ms
    cpu_ms: float
    counters: dict = field(default_factory=dict)  # median of each counter
    label: str = ""

    def counter(self, name, default=math.nan):
        value = self.counters.get(name, default)
        return value if isinstance(value, (int, float)) else default


def _parse_name(run_name):
    family, args, named = [], [], {}
    for part in run_name.split("/"):
        if _OPTION.match(part):
            continue
        if _INT.match(part):
            args.append(int(part))
            continue
        m = _NAMED_INT.match(part)
        if m:
            named[m.group(1)] = int(m.group(2))
            args.append(int(m.group(2)))
            continue
        if not args:  # name components come before the arguments
            family.append(part)
    return "/".join(family), args, named


def _median(values):
    values = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def load_benchmarks(paths):
    """Reads JSON files; returns ({run_name: Bench}, [context dicts]). Later files win."""
    merged, contexts = {}, []
    for path in paths:
        try:
            if os.path.getsize(path) == 0:  # what a filter that matched nothing leaves behind
                print(f"plot.py: {path} is empty (no benchmark ran); ignored")
                continue
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise SystemExit(f"plot.py: cannot read {path}: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
            raise SystemExit(f"plot.py: {path} is not Google Benchmark JSON (no 'benchmarks' list)")
        contexts.append(dict(data.get("context", {}), file=os.path.basename(path)))
        runs, medians = {}, {}
        for entry in data["benchmarks"]:
            if entry.get("error_occurred"):
                continue
            run_name = entry.get("run_name") or entry.get("name", "")
            if entry.get("run_type") == "aggregate":
                if entry.get("aggregate_name") == "median":
                    medians[run_name] = entry
            else:
                runs.setdefault(run_name, []).append(entry)
        for run_name in list(runs) + [r for r in medians if r not in runs]:
            entries = [medians[run_name]] if run_name in medians else runs[run_name]
            first = entries[0]
            scale = _TO_MS.get(first.get("time_unit", "ns"), 1e-6)
            keys = {k for e in entries for k in e if k not in _NOT_COUNTERS}
            family, args, named = _parse_name(run_name)
            merged[run_name] = Bench(
                run_name=run_name,
                family=family,
                args=args,
                named=named,
                threads=int(first.get("threads", 1)),
                real_ms=_median([e.get("real_time") for e in entries]) * scale,
                cpu_ms=_median([e.get("cpu_time") for e in entries]) * scale,
                counters={k: _median([e.get(k) for e in entries]) for k in keys},
                label=str(first.get("label", "")),
            )
    return merged, contexts


def find(benches, family, args=None, threads=None):
    """The benchmarks of `family` (optionally with these leading args / thread count)."""
    out = []
    for b in benches.values():
        if b.family != family:
            continue
        if args is not None and b.args[: len(args)] != list(args):
            continue
        if threads is not None and b.threads != threads:
            continue
        out.append(b)
    return out


# ------------------------------------------------------------------------------------------
# Shared plotting helpers
# ------------------------------------------------------------------------------------------

BUSY_CORES = 0.5  # set from --busy


def _tokens_label(value, _pos=None):
    value = int(round(value))
    if value >= 1024 and value % 1024 == 0:
        return f"{value // 1024}K"
    return str(value)


def _log2_x(ax, values):
    ax.set_xscale("log", base=2)
    ticks = sorted(set(values))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(_tokens_label))
    ax.xaxis.set_minor_locator(NullLocator())
    if len(ticks) == 1:  # a single point: give the axis some room
        ax.set_xlim(ticks[0] / 1.5, ticks[0] * 1.5)


def _log_y(ax):
    """Log y axis labelled in plain numbers (1, 2, 5 per decade)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:g}"))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(3.0, 4.0, 6.0, 7.0, 8.0, 9.0)))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _busy(bench):
    other = bench.counter("other_cores")
    return not math.isnan(other) and other > BUSY_CORES


def _series(ax, points, label, color, style="-", marker="o"):
    """points: [(x, y, busy)], sorted by x; busy points are drawn hollow. Returns True if drawn."""
    points = sorted(p for p in points if p[1] is not None and not math.isnan(p[1]) and p[1] > 0)
    if not points:
        return False
    ax.plot([p[0] for p in points], [p[1] for p in points], style, marker=marker, color=color,
            label=label, linewidth=1.6, markersize=5.5, markeredgewidth=1.3, zorder=2)
    busy = [p for p in points if p[2]]
    if busy:
        ax.plot([p[0] for p in busy], [p[1] for p in busy], linestyle="none", marker=marker,
                color=color, markerfacecolor="white", markersize=5.5, markeredgewidth=1.3, zorder=3)
    return True


def _footer(fig, contexts, note=""):
    parts = []
    for c in contexts:
        bits = [c.get("file", "")]
        if c.get("date"):
            bits.append(str(c["date"])[:16].replace("T", " "))
        if c.get("num_cpus"):
            bits.append(f"{c['num_cpus']} CPUs")
        parts.append(", ".join(b for b in bits if b))
    text = "; ".join(parts)
    if note:
        text = f"{note}\n{text}" if text else note
    if text:
        fig.text(0.01, 0.005, text, fontsize=7, color="0.35", ha="left", va="bottom")


def _save(fig, out_dir, name, written):
    path = os.path.join(out_dir, name)
    # A ~1000 x 800 px figure is ~170 KB as an RGBA PNG and ~40 KB with a 128-colour palette
    # (no visible difference: the plots have a few flat colours). Pillow, which does the
    # quantisation, is a dependency of matplotlib; without it the RGBA PNG is kept.
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    plt.close(fig)
    try:
        from PIL import Image

        method = getattr(Image, "Quantize", Image).FASTOCTREE
        buffer.seek(0)
        Image.open(buffer).convert("RGB").quantize(colors=128, method=method).save(path, optimize=True)
    except ImportError:
        with open(path, "wb") as f:
            f.write(buffer.getvalue())
    print(f"plot.py: wrote {path} ({os.path.getsize(path) // 1024} KB)")
    written.append(path)


def _skip(name, why):
    print(f"plot.py: skipping {name}: {why}")


# ------------------------------------------------------------------------------------------
# kernel_gflops.png
# ------------------------------------------------------------------------------------------

def plot_kernel(benches, contexts, out_dir, written):
    name = "kernel_gflops.png"
    kernel = find(benches, "BM_GlobalCausal")
    if not kernel:
        return _skip(name, "no BM_GlobalCausal benchmarks in the --kernel input")

    # Measured peak, as bench_kernel's summary: 1 core = best median among >= 8 chains on one
    # thread (enough chains to hide the FMA latency); 2 cores = best median on 2 threads.
    peak1 = peak2 = 0.0
    for b in benches.values():
        if not b.family.startswith("BM_FmaPeak"):
            continue
        gflops = b.counter("FLOPS") * 1e-9
        if math.isnan(gflops):
            continue
        chains = b.named.get("chains", 0)
        if b.threads == 1 and chains >= 8:
            peak1 = max(peak1, gflops)
        elif b.threads == 2:
            peak2 = max(peak2, gflops)

    head_dims = sorted({b.args[1] for b in kernel if len(b.args) >= 3})
    if not head_dims:
        return _skip(name, "BM_GlobalCausal names without T/d/threads arguments")
    fig, axes = plt.subplots(1, len(head_dims), figsize=(5.0 * len(head_dims) + 0.6, 5.0),
                             dpi=100, sharey=True, squeeze=False)
    colors = {1: "tab:blue", 2: "tab:red"}
    ymax = max(peak1, peak2)
    for ax, d in zip(axes[0], head_dims):
        xs = []
        for threads in sorted({b.args[2] for b in kernel if len(b.args) >= 3}):
            pts = [(b.args[0], b.counter("FLOPS") * 1e-9, _busy(b))
                   for b in kernel if len(b.args) >= 3 and b.args[1] == d and b.args[2] == threads]
            xs += [p[0] for p in pts]
            ymax = max([ymax] + [p[1] for p in pts if not math.isnan(p[1])])
            _series(ax, pts, f"star::global_attention, {threads} thread{'s' if threads > 1 else ''}",
                    colors.get(threads, "tab:green"))
        naive = [(b.args[0], b.counter("FLOPS") * 1e-9, _busy(b))
                 for b in find(benches, "BM_NaiveEigen") if len(b.args) >= 2 and b.args[1] == d]
        xs += [p[0] for p in naive]
        _series(ax, naive, "naive Eigen, 1 thread", "0.45", style="--", marker="s")
        if peak1 > 0:
            ax.axhline(peak1, color="tab:blue", linestyle=":", linewidth=1.3,
                       label=f"FMA peak, 1 core ({peak1:.0f} GFLOP/s)")
        if peak2 > 0:
            ax.axhline(peak2, color="tab:red", linestyle=":", linewidth=1.3,
                       label=f"FMA peak, 2 cores ({peak2:.0f} GFLOP/s)")
        if xs:
            _log2_x(ax, xs)
        ax.set_title(f"causal attention, head_dim {d}", fontsize=10)
        ax.set_xlabel("tokens T")
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("GFLOP/s  (4·d·H·T(T+1)/2 flops)")
    axes[0][0].set_ylim(0, ymax * 1.08 if ymax > 0 else 1)
    if peak1 > 0:
        sec = axes[0][-1].secondary_yaxis("right", functions=(lambda y: y / peak1, lambda f: f * peak1))
        sec.set_ylabel("fraction of the 1-core peak")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3, bbox_to_anchor=(0.5, 0.07),
               frameon=False)
    fig.suptitle("Kernel: star::global_attention vs the measured FP32 FMA peak (Hq = Hkv = 4)",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.15, 1, 1))
    _footer(fig, contexts, f"medians of the repetitions; hollow markers: other processes took > "
                           f"{BUSY_CORES:g} cores meanwhile")
    _save(fig, out_dir, name, written)


# ------------------------------------------------------------------------------------------
# time_vs_context.png
# ------------------------------------------------------------------------------------------

# Colours per algorithm, shared by the panels.
_ALGO = {
    "global": ("global (exact)", "black"),
    "ring_plain": ("ring, plain", "tab:blue"),
    "ring_zigzag": ("ring, zig-zag", "tab:purple"),
    "star": ("Star", "tab:red"),
}


def _by_context(benches, family, value):
    """[(L, value(bench), busy)] for the benchmarks `family` with a single L argument."""
    pts = []
    for b in find(benches, family):
        if len(b.args) >= 1:
            pts.append((b.args[0], value(b), _busy(b)))
    return pts


def _counter_or(b, name, fallback):
    v = b.counter(name)
    return fallback if math.isnan(v) else v


def plot_algorithms(benches, contexts, out_dir, written):
    name = "time_vs_context.png"
    families = {b.family for b in benches.values()}
    phase1 = {"global", "ring_plain", "ring_zigzag", "star_p1"} & families
    crit = {"global_1t", "ring_plain_crit", "ring_zigzag_crit", "star_p1_crit"} & families
    phase2 = {"star_p2", "exact_p2", "star_p2_crit", "exact_p2_1t"} & families
    if not (phase1 or crit or phase2):
        return _skip(name, "none of global, ring_*, star_p1*, star_p2*, exact_p2* in the --algorithms input")

    panels = []
    if phase1:
        panels.append("wall")
    if crit:
        panels.append("crit")
    if phase2:
        panels += ["p2", "step"]
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows + 0.4), dpi=100, squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(panels):]:
        ax.set_visible(False)

    real = lambda b: b.real_ms  # noqa: E731
    # Critical path: thread CPU time (leaves out time other processes held the core), falling
    # back to wall time; exact on 1 core: its thread CPU time, else its wall time.
    crit_cpu = lambda b: _counter_or(b, "crit_cpu_ms", b.counter("crit_ms"))  # noqa: E731
    one_core = lambda b: _counter_or(b, "cpu_ms", b.real_ms)  # noqa: E731
    all_x = [b.args[0] for b in benches.values() if b.args]

    for ax, panel in zip(flat, panels):
        if panel == "wall":
            for fam, key in (("global", "global"), ("ring_plain", "ring_plain"),
                             ("ring_zigzag", "ring_zigzag"), ("star_p1", "star")):
                label, color = _ALGO[key]
                _series(ax, _by_context(benches, fam, real), label, color)
            ax.set_title("Phase 1, wall time on this machine\n(4 in-process hosts share its cores)",
                         fontsize=9.5)
        elif panel == "crit":
            for fam, key, value in (("global_1t", "global", one_core),
                                    ("ring_plain_crit", "ring_plain", crit_cpu),
                                    ("ring_zigzag_crit", "ring_zigzag", crit_cpu),
                                    ("star_p1_crit", "star", crit_cpu)):
                label, color = _ALGO[key]
                if fam == "global_1t":
                    label = "global (exact), 1 core"
                _series(ax, _by_context(benches, fam, value), label, color)
            ax.set_title("Phase 1, critical path on 4 single-core hosts\n"
                         "(thread CPU time, communication free)", fontsize=9.5)
        elif panel == "p2":
            _series(ax, _by_context(benches, "star_p2", real), "Star, wall (2 cores)", "tab:red")
            _series(ax, _by_context(benches, "exact_p2", real), "exact, wall (2 cores)", "black")
            _series(ax, _by_context(benches, "star_p2_crit", crit_cpu),
                    "Star, critical path (1 core/host)", "tab:red", style="--", marker="D")
            _series(ax, _by_context(benches, "exact_p2_1t", one_core), "exact, 1 core", "black",
                    style="--", marker="D")
            ax.set_title("Phase 2: 64-token query + 128 decode steps", fontsize=9.5)
        else:  # one decode step (median over the steps)
            _series(ax, _by_context(benches, "star_p2", lambda b: b.counter("step_ms")),
                    "Star, wall (2 cores)", "tab:red")
            _series(ax, _by_context(benches, "exact_p2", lambda b: b.counter("step_ms")),
                    "exact, wall (2 cores)", "black")
            _series(ax, _by_context(benches, "star_p2_crit",
                                    lambda b: _counter_or(b, "step_cpu_ms", b.counter("step_ms"))),
                    "Star, critical path (1 core/host)", "tab:red", style="--", marker="D")
            _series(ax, _by_context(benches, "exact_p2_1t",
                                    lambda b: _counter_or(b, "step_cpu_ms", b.counter("step_ms"))),
                    "exact, 1 core", "black", style="--", marker="D")
            ax.set_title("One decode step (median of the 128)", fontsize=9.5)
        _log_y(ax)
        if all_x:
            _log2_x(ax, all_x)
        ax.set_xlabel("context length L (tokens)")
        ax.set_ylabel("time, ms")
        ax.grid(True, which="major", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7.5, loc="upper left")
    fig.suptitle("Global, ring and Star attention: one layer (Hq 32, Hkv 8, d 128), "
                 "4 hosts, block b = anchor a = L/4", fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    _footer(fig, contexts, f"medians of the repetitions; hollow markers: other processes took > "
                           f"{BUSY_CORES:g} cores meanwhile")
    _save(fig, out_dir, name, written)


# ------------------------------------------------------------------------------------------
# mpi_phases.png
# ------------------------------------------------------------------------------------------

_MPI_PHASE1 = [
    ("star_phase1/anchor_computed", "Star, anchor computed", "tab:red"),
    ("star_phase1/anchor_received", "Star, anchor received", "salmon"),
    ("ring_phase1/plain", "ring plain", "tab:blue"),
    ("ring_phase1/zigzag", "ring zig-zag", "tab:purple"),
    ("ring_phase1/plain_blocking", "ring plain, blocking", "lightsteelblue"),
]
_MPI_MERGES = [("gather", "gather to query host", "tab:red"),
               ("tree", "tree reduction", "tab:orange"),
               ("all_gather", "all-gather", "tab:olive")]


def _bars(ax, groups, series, value, find_one, fmt="{:.3g}", reference=None, headroom=1.4):
    """Grouped bars: groups = [L, ...], series = [(family, label, color)], find_one(family, L).
    Each bar is labelled with its value (fmt); reference(bench), if given, is drawn as a black
    tick across the bar (e.g. the formula's bytes)."""
    present = [s for s in series if any(find_one(s[0], L) for L in groups)]
    if not present:
        return False
    width = 0.8 / len(present)
    top, drew_reference = 0.0, False
    for i, (fam, label, color) in enumerate(present):
        xs, ys = [], []
        for g, L in enumerate(groups):
            b = find_one(fam, L)
            if b is None or math.isnan(value(b)):
                continue
            x = g + (i - (len(present) - 1) / 2) * width
            xs.append(x)
            ys.append(value(b))
            ref = reference(b) if reference else math.nan
            if not math.isnan(ref) and ref > 0:
                ax.plot([x - width * 0.45, x + width * 0.45], [ref, ref], "k-", linewidth=1.5,
                        label=None if drew_reference else "formula", zorder=3)
                drew_reference = True
                top = max(top, ref)
        bars = ax.bar(xs, ys, width * 0.95, label=label, color=color)
        ax.bar_label(bars, labels=[fmt.format(y) for y in ys], fontsize=7, padding=2)
        top = max([top] + ys)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"L = {_tokens_label(L)}" for L in groups])
    ax.set_ylim(0, top * headroom if top > 0 else 1)  # room for the labels (and a legend)
    return True


def plot_mpi(benches, contexts, out_dir, written):
    name = "mpi_phases.png"

    def find_one(family, L):
        hits = find(benches, family, args=[L])
        return hits[0] if hits else None

    families = {b.family for b in benches.values()}
    if not any(f.startswith(("star_phase1/", "ring_phase1/", "phase2/", "decode_step/")) for f in families):
        return _skip(name, "no star_phase1/*, ring_phase1/*, phase2/* or decode_step/* benchmarks "
                           "in the --mpi input")
    contexts_L = sorted({b.args[0] for b in benches.values() if b.args})
    ranks = next((int(b.counter("ranks")) for b in benches.values()
                  if not math.isnan(b.counter("ranks"))), None)

    fig, axes = plt.subplots(2, 2, figsize=(10.4, 8.0), dpi=100)
    (a_p1, a_bytes), (a_p2, a_step) = axes
    mib = 2.0**20
    drew = [
        _bars(a_p1, contexts_L, _MPI_PHASE1, lambda b: b.real_ms, find_one, "{:.0f}", headroom=1.12),
        _bars(a_bytes, contexts_L, _MPI_PHASE1, lambda b: b.counter("bytes_sent_per_rank", 0.0) / mib,
              find_one, "{:.1f}", reference=lambda b: b.counter("formula_bytes") / mib, headroom=1.12),
        _bars(a_p2, contexts_L, [("phase2/" + m, l, c) for m, l, c in _MPI_MERGES],
              lambda b: b.real_ms, find_one, "{:.1f}"),
        _bars(a_step, contexts_L, [("decode_step/" + m, l, c) for m, l, c in _MPI_MERGES],
              lambda b: b.real_ms, find_one, "{:.2f}"),
    ]
    titles = ["Phase 1 (context encoding): time, slowest rank",
              "Phase 1: bytes sent by the rank that sends most",
              "Phase 2: 64-token query (Star's merge strategies)",
              "One decode step (Star's merge strategies)"]
    ylabels = ["time, ms", "MiB sent per rank", "time, ms", "time, ms"]
    for ax, title, ylabel, ok in zip(axes.flat, titles, ylabels, drew):
        ax.set_title(title, fontsize=9.5)
        if not ok:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="0.5")
            ax.set_xticks([])
            continue
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
        if ax in (a_p2, a_step):
            ax.legend(fontsize=7.5, loc="upper center", ncol=3)
    # Phase 1: one legend for both panels, between the title and the panels.
    handles = {}
    for ax in (a_bytes, a_p1):
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    if handles:
        order = [label for _, label, _ in _MPI_PHASE1 if label in handles] + \
            [label for label in handles if label not in {s[1] for s in _MPI_PHASE1}]
        fig.legend([handles[label] for label in order], order, fontsize=8, loc="upper center",
                   ncol=6, bbox_to_anchor=(0.5, 0.955), frameon=False)
    who = f"{ranks} ranks" if ranks else "MPI ranks"
    fig.suptitle(f"Star vs ring over MPI, one host per rank ({who}; Hq 8, Hkv 2, d 64)", fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 0.94))
    _footer(fig, contexts, "medians of the repetitions; time of an iteration = slowest rank's")
    _save(fig, out_dir, name, written)


# ------------------------------------------------------------------------------------------
# accuracy.png (optional)
# ------------------------------------------------------------------------------------------

def _load_accuracy(path):
    """Rows (setting, length, accuracy, published or None), accuracies as fractions."""
    unit = None
    try:
        with open(path, encoding="utf-8") as f:
            if path.lower().endswith(".csv"):
                rows = list(csv.DictReader(f))
            else:
                data = json.load(f)
                if isinstance(data, dict):
                    rows = data.get("results", [])
                    unit = data.get("unit")
                else:
                    rows = data
    except (OSError, ValueError) as e:
        raise SystemExit(f"plot.py: cannot read {path}: {e}") from None
    out = []
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict):
            continue
        try:
            setting = str(row.get("setting", row.get("method", row.get("name"))))
            length = int(float(row.get("length", row.get("context", row.get("L")))))
            accuracy = float(row.get("accuracy", row.get("score")))
            published = row.get("published")
            published = None if published in (None, "") else float(published)
        except (TypeError, ValueError):
            continue
        out.append((setting, length, accuracy, published))
    # llama's needle --json says "percent"; other files: percentages if any value exceeds 1.
    values = [a for _, _, a, _ in out] + [p for _, _, _, p in out if p is not None]
    if unit == "percent" or (unit is None and values and max(values) > 1.0):
        out = [(s, n, a / 100.0, None if p is None else p / 100.0) for s, n, a, p in out]
    return out


def plot_accuracy(paths, out_dir, written):
    name = "accuracy.png"
    # Rows of later files replace those of earlier ones for the same setting and length.
    merged = {}
    for path in paths:
        for row in _load_accuracy(path):
            merged[(row[0], row[1])] = row
    rows = list(merged.values())
    if not rows:
        return _skip(name, f"no rows with setting, length and accuracy in {', '.join(paths)}")
    # One small panel per setting: the settings often score the same, and lines drawn over
    # each other in one panel would hide all but the last.
    settings = list(dict.fromkeys(s for s, _, _, _ in rows))
    columns = min(len(settings), 2)
    panel_rows = math.ceil(len(settings) / columns)
    fig, axes = plt.subplots(panel_rows, columns, figsize=(3.4 * columns, 2.5 * panel_rows + 0.5),
                             dpi=100, sharex=True, sharey=True, squeeze=False)
    values = [100 * a for _, _, a, _ in rows] + [100 * p for _, _, _, p in rows if p is not None]
    low = max(0.0, min(min(values) - 5.0, 90.0))
    has_published = any(p is not None for _, _, _, p in rows)
    for i, ax in enumerate(axes.flat):
        if i >= len(settings):
            ax.set_visible(False)
            continue
        s = settings[i]
        pts = sorted((n, a, p) for t, n, a, p in rows if t == s)
        ax.plot([n for n, _, _ in pts], [100 * a for _, a, _ in pts], "-", marker="o",
                color="C0", label="this library")
        published = [(n, p) for n, _, p in pts if p is not None]
        if published:
            ax.plot([n for n, _ in published], [100 * p for _, p in published], linestyle="none",
                    marker="o", markersize=11, markerfacecolor="none", markeredgecolor="C3",
                    label="published")
        _log2_x(ax, [n for _, n, _, _ in rows])
        ax.set_ylim(low, 101.5)
        ax.set_title(s, fontsize=9)
        ax.grid(True, alpha=0.3)
        if i % columns == 0:
            ax.set_ylabel("exact match, %")
        if i >= len(settings) - columns:
            ax.set_xlabel("context length (tokens)")
        if i == 0 and has_published:
            ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("Needle in a haystack", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    _footer(fig, [{"file": os.path.basename(path)} for path in paths])
    _save(fig, out_dir, name, written)


# ------------------------------------------------------------------------------------------
# cluster_scaling.png (bench_cluster host_step/ -> bench/cluster_model.py)
# ------------------------------------------------------------------------------------------

def plot_cluster(paths, out_dir, written):
    name = "cluster_scaling.png"
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.dont_write_bytecode = True  # no __pycache__ in the source tree (the plot test runs here)
    import cluster_model as cm  # noqa: E402  (next to this script)

    runs = cm.load_runs(paths)
    if not any(n.startswith("host_step/") for n in runs):
        return _skip(name, "no host_step/* benchmarks in the --cluster input")
    try:
        measured = cm.MeasuredRates(runs)
    except SystemExit as e:
        return _skip(name, str(e))
    benches, contexts = load_benchmarks(paths)
    gpu = cm.GpuRates()
    links = [(n, lat, bw) for n, lat, bw in cm.LINKS if n in ("1Gbit_50us", "10Gbit_5us", "100Gbit_5us")]
    link_colors = {"1Gbit_50us": "tab:red", "10Gbit_5us": "tab:orange", "100Gbit_5us": "tab:green"}
    L = cm.CONTEXTS[-1]

    fig, axes = plt.subplots(2, 2, figsize=(10.4, 8.0), dpi=100)
    (a_rate, a_cpu), (a_gpu, a_e2e) = axes

    # 1. Measured: one core's rate of each piece against its size.
    for family, label, color in (("host_step/full/group", "full block (4 q / 1 kv, d 128)", "tab:blue"),
                                 ("host_step/causal/group", "causal diagonal", "tab:purple"),
                                 ("host_step/decode/llama", "phase 2, 32-token query (32 / 8)", "tab:green")):
        pts = [(b.args[-1], b.counter("gflops"), _busy(b)) for b in find(benches, family)
               if family != "host_step/decode/llama" or b.args[0] == 32]
        _series(a_rate, pts, label, color)
    pts = [(b.args[-1], b.counter("gflops"), _busy(b)) for b in find(benches, "host_step/decode/llama")
           if b.args[0] == 1]
    _series(a_rate, pts, "phase 2, one decode token", "tab:olive", style="--")
    a_rate.set_xscale("log", base=2)
    a_rate.xaxis.set_major_formatter(FuncFormatter(_tokens_label))
    a_rate.xaxis.set_minor_formatter(NullFormatter())
    a_rate.set_ylim(bottom=0)
    a_rate.set_xlabel("tokens (block n, or cached keys b)")
    a_rate.set_ylabel("GFLOP/s on one core")
    a_rate.set_title("MEASURED: a host's pieces on one core of this machine", fontsize=9.5)
    a_rate.legend(fontsize=7.5)

    # 2-3. Modelled phase 1 ratio against H at L = 1M, measured CPU rates and A100-like rates.
    for ax, rates, what in ((a_cpu, measured, "measured CPU rates"), (a_gpu, gpu, "A100-like rates")):
        for lname, lat, bw in links:
            link = cm.Link(lname, lat, bw)
            plain, zigzag = [], []
            for h in cm.HOSTS:
                shape = cm.llama(rates)
                star = cm.star_phase1(rates, shape, L, h, link)
                plain.append((h, cm.ring_phase1(rates, shape, L, h, link, "plain") / star, False))
                zigzag.append((h, cm.ring_phase1(rates, shape, L, h, link, "zigzag") / star, False))
            _series(ax, plain, f"plain, {lname}", link_colors[lname])
            _series(ax, zigzag, f"zig-zag, {lname}", link_colors[lname], style="--", marker="s")
        ax.plot(cm.HOSTS, [cm.flop_ratio(h, "plain") for h in cm.HOSTS], ":", color="0.3",
                label="FLOP model, plain (2H-1)/3")
        ax.plot(cm.HOSTS, [cm.flop_ratio(h, "zigzag") for h in cm.HOSTS], "-.", color="0.3",
                label="FLOP model, zig-zag H/3")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(list(cm.HOSTS)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{int(v)}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("hosts H")
        ax.set_ylabel("Ring time / Star time")
        ax.grid(True, alpha=0.3)
        ax.set_title(f"MODELLED: phase 1, one layer, L = 1M ({what})", fontsize=9.5)
        ax.legend(fontsize=6.5, ncol=2)

    # 4. Modelled end to end at the paper's points (b = 32K), against the paper.
    groups = sorted(cm.PAPER)
    series = [("CPU, 1Gbit_50us", measured, "1Gbit_50us", "tab:blue"),
              ("CPU, 100Gbit_5us", measured, "100Gbit_5us", "tab:cyan"),
              ("A100-like, 1Gbit_50us", gpu, "1Gbit_50us", "tab:red"),
              ("A100-like, 10Gbit_5us", gpu, "10Gbit_5us", "tab:pink"),
              ("A100-like, 100Gbit_5us", gpu, "100Gbit_5us", "tab:orange")]
    width = 0.8 / (len(series) + 1)
    for i, (label, rates, lname, color) in enumerate(series):
        lat, bw = next((lat, bw) for n, lat, bw in cm.LINKS if n == lname)
        values = []
        for tokens in groups:
            e = cm.end_to_end(rates, tokens, tokens // (32 * cm.KIB), cm.Link(lname, lat, bw))
            values.append(e["ring_plain"] / e["star"])
        xs = [g + (i - len(series) / 2) * width for g in range(len(groups))]
        a_e2e.bar(xs, values, width, color=color, label=label)
        for x, v in zip(xs, values):
            a_e2e.text(x, v, f"{v:.1f}", ha="center", va="bottom", fontsize=6.5)
    xs = [g + (len(series) - len(series) / 2) * width for g in range(len(groups))]
    a_e2e.bar(xs, [cm.PAPER[t] for t in groups], width, color="0.4", label="paper (A100s)")
    for x, t in zip(xs, groups):
        a_e2e.text(x, cm.PAPER[t], f"{cm.PAPER[t]}", ha="center", va="bottom", fontsize=6.5)
    a_e2e.set_xticks(range(len(groups)))
    a_e2e.set_xticklabels([f"L={_tokens_label(t)}, H={t // (32 * cm.KIB)}" for t in groups])
    a_e2e.set_ylabel("Ring plain time / Star time")
    a_e2e.set_title("MODELLED: end to end, Llama-3.1-8B, b = 32K (vs the paper)", fontsize=9.5)
    a_e2e.legend(fontsize=7)
    a_e2e.grid(True, axis="y", alpha=0.3)

    fig.suptitle("Star vs Ring past one machine: measured host steps, modelled cluster "
                 "(bench/cluster_model.py)", fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    _footer(fig, contexts, "hollow points: measured while other processes took > "
            f"{BUSY_CORES:g} cores; links: latency + bytes / bandwidth, K/V in float (CPU) "
            "or bf16 (A100-like)")
    _save(fig, out_dir, name, written)


# ------------------------------------------------------------------------------------------

def main(argv=None):
    global BUSY_CORES
    parser = argparse.ArgumentParser(
        description="Plots of Star's benchmarks from Google Benchmark JSON "
                    "(--benchmark_out=FILE --benchmark_out_format=json).",
        epilog="Each input option may be repeated; files are merged, later ones winning. "
               "Regenerate everything (run the benchmarks, then plot): bench/make_plots.sh")
    parser.add_argument("--kernel", action="append", default=[], metavar="JSON",
                        help="bench_kernel output -> kernel_gflops.png")
    parser.add_argument("--algorithms", action="append", default=[], metavar="JSON",
                        help="bench_algorithms output -> time_vs_context.png")
    parser.add_argument("--mpi", action="append", default=[], metavar="JSON",
                        help="bench_mpi output (rank 0's) -> mpi_phases.png")
    parser.add_argument("--accuracy", action="append", default=[], metavar="FILE",
                        help="needle accuracy, JSON or CSV with setting, length, accuracy -> accuracy.png")
    parser.add_argument("--cluster", action="append", default=[], metavar="JSON",
                        help="bench_cluster output with host_step/* -> cluster_scaling.png")
    parser.add_argument("--out", default="docs/plots", metavar="DIR", help="output directory (default %(default)s)")
    parser.add_argument("--busy", type=float, default=0.5, metavar="CORES",
                        help="draw points hollow when other processes took more cores than this "
                             "(other_cores counter; default %(default)s)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 if a plot whose input was given had to be skipped")
    args = parser.parse_args(argv)
    if not (args.kernel or args.algorithms or args.mpi or args.accuracy or args.cluster):
        parser.error("no input: give at least one of --kernel, --algorithms, --mpi, --accuracy, "
                     "--cluster")
    BUSY_CORES = args.busy
    os.makedirs(args.out, exist_ok=True)

    written, expected = [], 0
    if args.kernel:
        expected += 1
        plot_kernel(*load_benchmarks(args.kernel), args.out, written)
    if args.algorithms:
        expected += 1
        plot_algorithms(*load_benchmarks(args.algorithms), args.out, written)
    if args.mpi:
        expected += 1
        plot_mpi(*load_benchmarks(args.mpi), args.out, written)
    if args.accuracy:
        expected += 1
        plot_accuracy(args.accuracy, args.out, written)
    if args.cluster:
        expected += 1
        plot_cluster(args.cluster, args.out, written)
    if args.strict and len(written) < expected:
        print(f"plot.py: {expected - len(written)} plot(s) skipped (--strict)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
