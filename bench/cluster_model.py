#!/usr/bin/env python3
"""Star vs Ring on clusters past one machine, modelled (issue 15).

    bench/cluster_model.py HOST_STEPS.json [--check PHASE1.json --check-tokens L] [--gpu]
                           [--json GRID.json] [--self-test]

Prints Markdown tables: the cross-check (with --check), phase 1 of one layer and end to end
over the whole grid (H = 8..128, L = 128K..1M, six links), and the paper's points.

What is measured and what is modelled:

* MEASURED (HOST_STEPS.json, `bench_cluster --benchmark_filter=host_step/`): the kernel calls
  a host's step is made of, on one core of this machine: a block of n queries over n earlier
  keys (no mask), the causal diagonal of n tokens, merging two n-token partial states,
  appending n tokens to a KVCache, phase 2's attention of 1 or 32 query tokens over a cache
  of b tokens, and an Eigen GEMM for the MLP. Each as a rate, interpolated linearly in
  log2(size) between the measured sizes and held at the end values outside them (the rates
  are flat at the large sizes; see the tables in docs/performance.md). The Llama-3.1-8B layer
  (32 q / 8 kv heads, d = 128) is measured as one KV-head group (4 / 1) at the large sizes
  and scaled by 8 heads' worth of pairs (`llama` at 2K checks that scaling).
* MODELLED (here): everything else. Hosts and links as SimulatedCluster models them
  (star/comm/simulated.hpp): each host's clock advances by its compute; a message costs
  latency + bytes / bandwidth; Ring's next K/V leave at the start of a step and the receiver
  waits for them at its end (the overlap of star/algorithm/ring.hpp); the agreement of
  settings is a gather to host 0 through one link and a binomial broadcast; phase 2's merge
  is a gather of the partials to the query host (GatherToQueryHost). No switch contention,
  no MPI overheads.

Phase 1 per layer (what StarAttention::encode_context and RingAttention::run do, anchor
K/V given to every host as the library's one-layer API takes them):
  Star host i > 0:  causal(b) + full(b, a = b) + merge(b) + append(b), b = ceil(L / H)
  Ring host r:      a recurrence over H steps, each max(its compute, the K/V's arrival).
End to end (`e2e`): 32 layers x (phase 1 + phase 2) + the MLP and projections, where a Star
host also carries its anchor through every layer (its a tokens' causal attention and MLP),
as the paper's implementation must to have the anchor's K/V at every layer; phase 2 is a
32-token query and DECODE_TOKENS (64) generated tokens, the same for Star and Ring. Ring's K
and V of a step share the link, as SimulatedCluster charges them: one after the other.

`--gpu` swaps the measured rates for A100-like constants (GPU_RATES below, bf16 K/V on the
wire): a modelled what-if, not a measurement.

Only the standard library; plot.py draws cluster_scaling.png with these functions.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass

# ------------------------------------------------------------------------------------------
# Configuration of the study
# ------------------------------------------------------------------------------------------

KIB = 1024
HOSTS = (8, 16, 32, 64, 128)
CONTEXTS = (128 * KIB, 256 * KIB, 512 * KIB, 1024 * KIB)
# (name, latency s, bytes/s)
LINKS = (("1Gbit_5us", 5e-6, 1.25e8), ("1Gbit_50us", 50e-6, 1.25e8),
         ("10Gbit_5us", 5e-6, 1.25e9), ("10Gbit_50us", 50e-6, 1.25e9),
         ("100Gbit_5us", 5e-6, 1.25e10), ("100Gbit_50us", 50e-6, 1.25e10))
LAYERS = 32
QUERY_TOKENS = 32
DECODE_TOKENS = 64
# Llama-3.1-8B: projections 2 * 4096 * (4096 + 1024 + 1024 + 4096), MLP 2 * 3 * 4096 * 14336.
MLP_FLOPS_PER_TOKEN = 2 * 4096 * 10240 + 2 * 3 * 4096 * 14336
# The paper's long-context runs: blocks of 32K, so H = L / 32K; Star's speed-up over Ring.
PAPER = {256 * KIB: 10.8, 512 * KIB: 16.2, 1024 * KIB: 16.9}


@dataclass(frozen=True)
class Shape:
    q_heads: int
    kv_heads: int
    head_dim: int
    kv_bytes: int = 4  # bytes per K/V element (float)

    def kv_token_bytes(self):
        """Bytes of one token's K (or V) over all KV heads."""
        return self.kv_heads * self.head_dim * self.kv_bytes

    def state_token_bytes(self):
        """Bytes of one token's partial state (output + LSE, float), as pack_all sends it."""
        return self.q_heads * (self.head_dim + 1) * 4


LLAMA = Shape(32, 8, 128)


def llama(rates):
    """Llama-3.1-8B's layer with the K/V element size of `rates` (float, or bf16 on GPUs)."""
    return Shape(LLAMA.q_heads, LLAMA.kv_heads, LLAMA.head_dim, rates.kv_bytes)


SMALL = Shape(8, 2, 64)  # bench_cluster's phase1/ layer


# ------------------------------------------------------------------------------------------
# Measured rates
# ------------------------------------------------------------------------------------------

_OPTION = re.compile(r"^(min_time:|min_warmup_time:|repeats:|iterations:|threads:|real_time$|"
                     r"manual_time$|process_time$)")


def load_runs(paths):
    """{run_name: {"ms": median time, counters...}} from Google Benchmark JSON files."""
    out = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        runs, medians = {}, {}
        for e in data.get("benchmarks", []):
            if e.get("error_occurred"):
                continue
            name = e.get("run_name") or e["name"]
            if e.get("run_type") == "aggregate":
                if e.get("aggregate_name") == "median":
                    medians[name] = [e]
            else:
                runs.setdefault(name, []).append(e)
        runs.update(medians)
        for name, entries in runs.items():
            scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[entries[0].get("time_unit", "ns")]
            row = {"ms": statistics.median(e["real_time"] for e in entries) * scale,
                   "cpu_ms": statistics.median(e["cpu_time"] for e in entries) * scale}
            for key in entries[0]:
                if isinstance(entries[0][key], (int, float)) and key not in row:
                    row[key] = statistics.median(e.get(key, math.nan) for e in entries)
            out[name] = row
    return out


def split_name(run_name):
    """("host_step/full/group", [512]) from "host_step/full/group/512/min_time:0.200/..."."""
    family, args = [], []
    for part in run_name.split("/"):
        if _OPTION.match(part):
            continue
        if re.fullmatch(r"-?\d+", part):
            args.append(int(part))
        elif not args:
            family.append(part)
    return "/".join(family), args


class Curve:
    """A rate against a size, linear in log2(size) between points, flat outside them."""

    def __init__(self, points):
        self.points = sorted((float(n), float(r)) for n, r in points if r > 0)
        if not self.points:
            raise ValueError("a curve needs at least one measured point")

    def __call__(self, n):
        pts = self.points
        if n <= pts[0][0]:
            return pts[0][1]
        if n >= pts[-1][0]:
            return pts[-1][1]
        for (n0, r0), (n1, r1) in zip(pts, pts[1:]):
            if n0 <= n <= n1:
                t = (math.log2(n) - math.log2(n0)) / (math.log2(n1) - math.log2(n0))
                return r0 + t * (r1 - r0)
        return pts[-1][1]


class MeasuredRates:
    """Per-host times of the pieces, from host_step/ benchmarks (seconds)."""

    kind = "measured"
    kv_bytes = 4  # float K/V, as measured

    def __init__(self, runs):
        by = {}
        for name, row in runs.items():
            family, args = split_name(name)
            if family.startswith("host_step/"):
                by.setdefault(family, []).append((args, row))
        self.raw = by

        def curve(family, counter, key=lambda a: a[0], where=lambda a: True):
            pts = [(key(a), r[counter]) for a, r in by.get(family, []) if where(a)]
            return Curve(pts) if pts else None

        # Score pairs per second per query head are the same for any head count on one core
        # (the kernel's work is per KV-head group); `group` has the large sizes.
        self.full = {"llama": curve("host_step/full/group", "pairs_per_s"),
                     "small": curve("host_step/full/small", "pairs_per_s")}
        self.causal = {"llama": curve("host_step/causal/group", "pairs_per_s"),
                       "small": curve("host_step/causal/small", "pairs_per_s")}
        self.merge = {s: curve(f"host_step/merge/{s}", "rows_per_s") for s in ("llama", "small")}
        self.append = {s: curve(f"host_step/append/{s}", "bytes_per_s") for s in ("llama", "small")}
        self.decode = {lq: curve("host_step/decode/llama", "pairs_per_s", key=lambda a: a[1],
                                 where=lambda a, lq=lq: a[0] == lq) for lq in (1, 32)}
        gemm = [r["gflops"] for _, r in by.get("host_step/gemm", [])]
        self.gemm_flops = statistics.median(gemm) * 1e9 if gemm else math.nan
        missing = [k for k, v in (("full", self.full["llama"]), ("causal", self.causal["llama"]),
                                  ("merge", self.merge["llama"]), ("decode", self.decode[1]))
                   if v is None]
        if missing:
            raise SystemExit(f"cluster_model.py: no host_step/ measurements of {missing}")

    @staticmethod
    def _key(shape):
        return "small" if shape == SMALL else "llama"

    def full_s(self, shape, nq, nk):
        n = math.sqrt(nq * nk)
        return shape.q_heads * nq * nk / self.full[self._key(shape)](n)

    def causal_s(self, shape, n):
        return shape.q_heads * n * (n + 1) / 2 / self.causal[self._key(shape)](n)

    def merge_s(self, shape, n):
        return n / self.merge[self._key(shape)](n)

    def append_s(self, shape, n):
        curve = self.append[self._key(shape)]
        return 0.0 if curve is None else 2 * n * shape.kv_token_bytes() / curve(n)

    def decode_s(self, shape, lq, b):
        curve = self.decode[1 if lq <= 1 else 32]
        return shape.q_heads * lq * b / curve(b)

    def mlp_s(self, tokens):
        return tokens * MLP_FLOPS_PER_TOKEN / self.gemm_flops


# A100-like host (a modelled what-if, not a measurement): FlashAttention-2-class attention
# at 150 TFLOP/s (4 d flops per score pair), bf16 GEMMs at 250 TFLOP/s, memory at 1.5 TB/s.
GPU_RATES = {"attention_flops": 150e12, "gemm_flops": 250e12, "memory_bytes": 1.5e12}


class GpuRates:
    kind = "gpu-like"
    kv_bytes = 2  # bf16 K/V, in memory and on the wire

    def __init__(self, rates=GPU_RATES):
        self.r = rates
        self.gemm_flops = rates["gemm_flops"]

    def _pairs(self, shape, pairs):
        return pairs * 4 * shape.head_dim / self.r["attention_flops"]

    def full_s(self, shape, nq, nk):
        return self._pairs(shape, shape.q_heads * nq * nk)

    def causal_s(self, shape, n):
        return self._pairs(shape, shape.q_heads * n * (n + 1) / 2)

    def merge_s(self, shape, n):
        return 3 * n * shape.state_token_bytes() / self.r["memory_bytes"]

    def append_s(self, shape, n):
        return 2 * 2 * n * shape.kv_token_bytes() / self.r["memory_bytes"]

    def decode_s(self, shape, lq, b):
        # Reading the cache bounds it; the score pairs at the attention rate otherwise.
        return max(2 * b * shape.kv_token_bytes() / self.r["memory_bytes"],
                   self._pairs(shape, shape.q_heads * lq * b))

    def mlp_s(self, tokens):
        return tokens * MLP_FLOPS_PER_TOKEN / self.gemm_flops


# ------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    name: str
    latency: float
    bandwidth: float

    def seconds(self, nbytes):
        return self.latency + nbytes / self.bandwidth


def near_equal_ranges(tokens, pieces):
    """detail::near_equal_ranges: the first tokens % pieces ranges one token longer."""
    base, extra = divmod(tokens, pieces)
    out, begin = [], 0
    for i in range(pieces):
        size = base + (1 if i < extra else 0)
        out.append((begin, begin + size))
        begin += size
    return out


def agreement_s(hosts, link, message_bytes=96):
    """check_agreement: a gather to host 0 through its one link, then a binomial broadcast
    of the verdict (empty) in ceil(log2 H) rounds."""
    if hosts <= 1:
        return 0.0
    return (hosts - 1) * link.seconds(message_bytes) + math.ceil(math.log2(hosts)) * link.latency


def star_phase1(rates, shape, tokens, hosts, link):
    """Star phase 1, one layer: the slowest host (one holding a block after the first)."""
    return _star(rates, shape, tokens, hosts, link)[0]


def _star(rates, shape, tokens, hosts, link):
    """(slowest host's time, compute summed over the hosts) of Star phase 1."""
    b = -(-tokens // hosts)
    first = rates.causal_s(shape, b) + rates.append_s(shape, b)
    later_b = min(b, tokens - b) if hosts > 1 else 0
    later = 0.0
    if later_b > 0:
        later = (rates.causal_s(shape, later_b) + rates.full_s(shape, later_b, b) +
                 rates.merge_s(shape, later_b) + rates.append_s(shape, later_b))
    blocks = [min(b, tokens - i * b) for i in range(-(-tokens // b))]
    total = first + sum(rates.causal_s(shape, n) + rates.full_s(shape, n, b) +
                        rates.merge_s(shape, n) + rates.append_s(shape, n) for n in blocks[1:])
    return agreement_s(hosts, link) + max(first, later), total


def ring_phase1(rates, shape, tokens, hosts, link, layout="plain"):
    """Ring phase 1, one layer: the latest host clock of RingAttention::run's steps."""
    return _ring(rates, shape, tokens, hosts, link, layout)[0]


def _ring(rates, shape, tokens, hosts, link, layout):
    """(latest clock, compute summed over the hosts) of Ring phase 1. The K and V of a step
    share the sender's link: V arrives latency + (K + V bytes) / bw after the step starts."""
    pieces = hosts if layout == "plain" else 2 * hosts
    chunks = near_equal_ranges(tokens, pieces)
    held = [[chunks[r]] + ([chunks[pieces - 1 - r]] if layout == "zigzag" else [])
            for r in range(hosts)]
    start = agreement_s(hosts, link)
    copy = [rates.append_s(shape, sum(e - s for s, e in held[r])) for r in range(hosts)]
    total = sum(copy)
    clock = [start + c for c in copy]
    for step in range(hosts):
        arrival = [0.0] * hosts
        if step + 1 < hosts:
            for r in range(hosts):
                source = (r + hosts - 1 - step) % hosts  # what host r - 1 holds now
                n = sum(e - s for s, e in held[source])
                nbytes = n * shape.kv_token_bytes() * 2
                arrival[r] = clock[(r + hosts - 1) % hosts] + link.seconds(nbytes)
        for r in range(hosts):
            source = (r + hosts - step) % hosts
            work = 0.0
            for kb, ke in held[source]:
                for qb, qe in held[r]:
                    if ke == kb or kb > qe - 1:
                        continue  # keys all in the future of these queries
                    if (kb, ke) == (qb, qe):
                        work += rates.causal_s(shape, qe - qb)
                    else:
                        work += rates.full_s(shape, qe - qb, ke - kb)
                    work += rates.merge_s(shape, qe - qb)
            clock[r] += work
            total += work
        if step + 1 < hosts:
            clock = [max(c, a) for c, a in zip(clock, arrival)]
    return max(clock), total


def phase2(rates, shape, tokens, hosts, link, query=QUERY_TOKENS, decode=DECODE_TOKENS):
    """Phase 2, one layer, the same for Star and Ring: a query of `query` tokens, then
    `decode` steps of one token; each host attends over its L/H cached tokens, the query
    host gathers the partials through its one link and merges them (the query's own keys,
    at most query + decode tokens, are counted with the cache)."""
    b = -(-tokens // hosts)

    def step(lq, cached_extra):
        # Across processes a step first agrees on the settings and the query's position: an
        # all-gather of 2 integers per host along a ring.
        agree = (hosts - 1) * link.seconds(16)
        gather = agree + (hosts - 1) * link.seconds(lq * shape.state_token_bytes())
        merge = (hosts - 1) * rates.merge_s(shape, lq)
        return (rates.decode_s(shape, lq, b + cached_extra) + gather + merge)

    return step(query, query) + sum(step(1, query + i) for i in range(decode))


def end_to_end(rates, tokens, hosts, link, layers=LAYERS):
    """Seconds of {star, ring_plain, ring_zigzag} end to end on the Llama-3.1-8B shape."""
    shape = llama(rates)
    b = -(-tokens // hosts)
    p2 = phase2(rates, shape, tokens, hosts, link)
    # A Star host carries its anchor (a = b tokens) through every layer: the anchor's causal
    # attention and its MLP, on top of phase 1 as the library runs it.
    star = star_phase1(rates, shape, tokens, hosts, link) + rates.causal_s(shape, b) + \
        rates.mlp_s(2 * b)
    ring = rates.mlp_s(b)
    out = {"star": layers * (star + p2)}
    for layout in ("plain", "zigzag"):
        out["ring_" + layout] = layers * (ring_phase1(rates, shape, tokens, hosts, link, layout)
                                     + ring + p2)
    return out


def scaling_grid(rates, hosts=HOSTS, contexts=CONTEXTS, links=LINKS):
    """One row per (L, H, link): phase 1 of one layer (attention only) and end to end."""
    rows = []
    for tokens in contexts:
        for h in hosts:
            for name, lat, bw in links:
                link = Link(name, lat, bw)
                p1 = {"star": star_phase1(rates, llama(rates), tokens, h, link)}
                for layout in ("plain", "zigzag"):
                    p1["ring_" + layout] = ring_phase1(rates, llama(rates), tokens, h, link,
                                                       layout)
                rows.append({"L": tokens, "H": h, "link": name, "phase1": p1,
                             "e2e": end_to_end(rates, tokens, h, link)})
    return rows


def flop_ratio(hosts, layout):
    """Ring / Star score pairs of the slowest host, a = b: Star 1.5 b^2; Ring zig-zag
    (L^2/2)/H = H b^2 / 2; Ring plain (H - 1/2) b^2 (host H-1: the diagonal + H-1 blocks)."""
    return (hosts / 2 if layout == "zigzag" else hosts - 0.5) / 1.5


# ------------------------------------------------------------------------------------------
# Cross-check against bench_cluster's simulated runs
# ------------------------------------------------------------------------------------------


def cross_check(rates, runs, tokens):
    """[(algorithm, link, H, simulated ms, modelled ms, CPU ms, modelled total ms, other
    cores)] for every phase1/ run in `runs`. The CPU time of a run is every host's compute, one after the
    other on one thread: it is compared with the modelled compute summed over the hosts,
    which other processes on the machine inflate less than the wall times."""
    links = {name: Link(name, lat, bw) for name, lat, bw in LINKS}
    out = []
    for name, row in sorted(runs.items()):
        family, args = split_name(name)
        parts = family.split("/")
        if parts[0] != "phase1" or len(parts) != 3 or not args or parts[2] not in links:
            continue
        algorithm, link, h = parts[1], links[parts[2]], args[0]
        if algorithm == "star":
            model, total = _star(rates, SMALL, tokens, h, link)
        else:
            model, total = _ring(rates, SMALL, tokens, h, link, algorithm.split("_")[1])
        out.append((algorithm, link.name, h, row["ms"], model * 1e3, row.get("cpu_ms", math.nan),
                    total * 1e3, row.get("other_cores", math.nan)))
    return out


# ------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------


def _k(tokens):
    return f"{tokens // KIB}K" if tokens < KIB * KIB else f"{tokens // (KIB * KIB)}M"


def _t(seconds):
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 1:
        return f"{seconds:.3g} s"
    return f"{seconds * 1e3:.3g} ms"


def print_tables(rates, grid, links_shown=("1Gbit_50us", "10Gbit_5us", "100Gbit_5us")):
    print(f"\n#### Phase 1, one layer, Llama-3.1-8B shape ({rates.kind} rates): "
          "Ring / Star (plain, zig-zag)\n")
    print("| L | H | b | Star | " + " | ".join(f"{l}" for l in links_shown) + " | FLOP model |")
    print("|---:|---:|---:|---:|" + "---|" * len(links_shown) + "---|")
    for L in CONTEXTS:
        for h in HOSTS:
            rows = {r["link"]: r for r in grid if r["L"] == L and r["H"] == h}
            if not rows:
                continue
            star = rows[links_shown[0]]["phase1"]["star"]
            cells = []
            for name in links_shown:
                p = rows[name]["phase1"]
                cells.append(f"{p['ring_plain'] / p['star']:.2f}x, {p['ring_zigzag'] / p['star']:.2f}x")
            print(f"| {_k(L)} | {h} | {_k(-(-L // h))} | {_t(star)} | " + " | ".join(cells) +
                  f" | {flop_ratio(h, 'plain'):.2f}x, {flop_ratio(h, 'zigzag'):.2f}x |")
    print(f"\n#### End to end, 32 layers, MLP included, {QUERY_TOKENS}-token query + "
          f"{DECODE_TOKENS} generated tokens ({rates.kind} rates): Star vs Ring plain, zig-zag\n")
    print("| L | H | Star | " + " | ".join(links_shown) + " | paper |")
    print("|---:|---:|---:|" + "---|" * len(links_shown) + "---:|")
    for L in CONTEXTS:
        for h in HOSTS:
            rows = {r["link"]: r for r in grid if r["L"] == L and r["H"] == h}
            if not rows:
                continue
            star = rows[links_shown[0]]["e2e"]["star"]
            cells = []
            for name in links_shown:
                e = rows[name]["e2e"]
                cells.append(f"{e['ring_plain'] / e['star']:.2f}x, {e['ring_zigzag'] / e['star']:.2f}x")
            paper = f"{PAPER[L]}x" if L in PAPER and L // h == 32 * KIB else ""
            print(f"| {_k(L)} | {h} | {_t(star)} | " + " | ".join(cells) + f" | {paper} |")


def print_paper_table(measured, gpu):
    """The paper's long-context points (b = 32K, H = L / 32K): Ring / Star end to end and
    phase 1 alone, with the measured CPU rates and the A100-like rates, per link."""
    print("\n#### The paper's points (b = 32K, H = L / 32K): Ring plain / Star "
          "(zig-zag / Star), modelled\n")
    print("| L | H | rates | what | " + " | ".join(n for n, _, _ in LINKS) + " | paper |")
    print("|---:|---:|---|---|" + "---|" * len(LINKS) + "---:|")
    for L in sorted(PAPER):
        h = L // (32 * KIB)
        for rates in (measured, gpu):
            for what in ("phase 1", "end to end"):
                cells = []
                for name, lat, bw in LINKS:
                    link = Link(name, lat, bw)
                    if what == "phase 1":
                        shape = llama(rates)
                        star = star_phase1(rates, shape, L, h, link)
                        plain = ring_phase1(rates, shape, L, h, link, "plain")
                        zig = ring_phase1(rates, shape, L, h, link, "zigzag")
                    else:
                        e = end_to_end(rates, L, h, link)
                        star, plain, zig = e["star"], e["ring_plain"], e["ring_zigzag"]
                    cells.append(f"{plain / star:.1f}x ({zig / star:.1f}x)")
                paper = f"{PAPER[L]}x" if what == "end to end" else ""
                print(f"| {_k(L)} | {h} | {rates.kind} | {what} | " + " | ".join(cells) +
                      f" | {paper} |")


def self_test(rates=None):
    """The model's arithmetic (no timing): a flat-rate host gives the FLOP-model ratios."""

    class Flat:
        kind = "flat"
        kv_bytes = 4
        gemm_flops = 1e12

        def full_s(self, shape, nq, nk):
            return shape.q_heads * nq * nk * 1e-9

        def causal_s(self, shape, n):
            return shape.q_heads * n * n / 2 * 1e-9

        def merge_s(self, shape, n):
            return 0.0

        def append_s(self, shape, n):
            return 0.0

        def decode_s(self, shape, lq, b):
            return shape.q_heads * lq * b * 1e-9

        def mlp_s(self, tokens):
            return tokens * MLP_FLOPS_PER_TOKEN / self.gemm_flops

    flat, fast = Flat(), Link("free", 0.0, 1e30)
    for h in (4, 8, 16, 32):
        L = 4096 * h
        star = star_phase1(flat, LLAMA, L, h, fast)
        for layout in ("plain", "zigzag"):
            ring = ring_phase1(flat, LLAMA, L, h, fast, layout)
            assert abs(ring / star - flop_ratio(h, layout)) < 1e-3 * flop_ratio(h, layout), \
                (h, layout, ring / star, flop_ratio(h, layout))
    # Summed over the hosts, both do the work of their masks: Ring L^2/2 pairs, Star
    # b^2/2 + (H-1) 1.5 b^2 (every block after the first also sees the anchor).
    h, L = 8, 8 * 512
    _, ring_total = _ring(flat, LLAMA, L, h, fast, "zigzag")
    assert abs(ring_total - LLAMA.q_heads * L * L / 2 * 1e-9) < 1e-9, ring_total
    _, star_total = _star(flat, LLAMA, L, h, fast)
    b = L // h
    assert abs(star_total - LLAMA.q_heads * (b * b / 2 + (h - 1) * 1.5 * b * b) * 1e-9) < 1e-9
    # Communication-bound: H - 1 transfers of a shard's K+V on the slowest path.
    slow = Link("slow", 1e-3, 1e3)
    h, L = 8, 8 * 64
    ring = ring_phase1(flat, SMALL, L, h, slow, "zigzag")
    per_step = slow.seconds(2 * (L // h) * SMALL.kv_token_bytes())
    assert abs(ring - (agreement_s(h, slow) + (h - 1) * per_step)) < 0.01 * ring, ring
    # Uneven sizes: every token attended once in total (plain, free link, flat rate).
    L, h = 1000, 7
    total = sum(flat.full_s(SMALL, e - s, e2 - s2) if s2 < s else 0
                for s, e in near_equal_ranges(L, h) for s2, e2 in near_equal_ranges(L, h))
    assert total > 0
    print("cluster_model.py: self-test passed (FLOP-model ratios H/3 and (2H-1)/3, "
          "communication-bound ring, SimulatedCluster's message charge)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("measured", nargs="*", help="bench_cluster JSON with host_step/ runs")
    p.add_argument("--check", action="append", default=[], metavar="JSON",
                   help="bench_cluster JSON with phase1/ runs to compare the model with")
    p.add_argument("--check-tokens", type=int, default=16384,
                   help="STAR_BENCH_CLUSTER_L of the --check run (default %(default)s)")
    p.add_argument("--gpu", action="store_true", help="A100-like rates instead (modelled)")
    p.add_argument("--json", metavar="FILE", help="write the grid as JSON")
    p.add_argument("--self-test", action="store_true")
    args = p.parse_args(argv)
    if args.self_test:
        self_test()
        if not args.measured:
            return 0
    if not args.measured:
        p.error("give the host_step/ JSON (or --self-test)")
    runs = load_runs(args.measured)
    measured = MeasuredRates(runs)
    rates = GpuRates() if args.gpu else measured
    if args.check:
        check = cross_check(measured, load_runs(args.check), args.check_tokens)
        print(f"\n#### Cross-check: bench_cluster's simulated phase 1 (L = {args.check_tokens}, "
              "8 q / 2 kv heads, d = 64) vs the model from the measured host steps\n")
        print("| algorithm | link | H | simulated ms | modelled ms | model / simulated | "
              "CPU ms, all hosts | modelled, all hosts | model / CPU | other cores |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for algorithm, link, h, sim, model, cpu, total, other in check:
            print(f"| {algorithm} | {link} | {h} | {sim:.1f} | {model:.1f} | {model / sim:.3f} | "
                  f"{cpu:.1f} | {total:.1f} | {total / cpu:.3f} | {other:.2f} |")
        if check:
            print(f"\nModel / simulated: {min(c[4] / c[3] for c in check):.3f} .. "
                  f"{max(c[4] / c[3] for c in check):.3f}; model / CPU time: "
                  f"{min(c[6] / c[5] for c in check):.3f} .. {max(c[6] / c[5] for c in check):.3f}")
    grid = scaling_grid(rates)
    print_tables(rates, grid)
    print_paper_table(measured, GpuRates())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"rates": rates.kind, "rows": grid}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
