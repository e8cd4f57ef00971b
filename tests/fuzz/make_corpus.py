#!/usr/bin/python3
"""Writes the seed corpus of fuzz_star into tests/fuzz/corpus/ (replacing every seed but the
kept fuzzer findings, regression_*).

    /usr/bin/python3 tests/fuzz/make_corpus.py

Each seed holds only configuration bytes, in the order fuzz_star.cpp reads them; the input
values then come from fuzz_star's generator, seeded by a hash of the seed. The encoders
below mirror the decoders of fuzz_star.cpp field by field (decode_common, decode_call, and
each entry's own fields): a change to the byte format there needs the same change here,
then a re-run, and `ctest -L fuzz` checks that every seed still runs.

The seeds cover every entry point, K/V type and policy, and a few configurations that
must be rejected.
"""

import os

ENTRIES = {"attention": 0, "attention_causal": 1, "global_causal": 2, "global_full": 3,
           "ring_plain": 4, "ring_zigzag": 5, "star": 6, "kv_cache": 7, "merge": 8}
KV = {"float": 0, "bf16": 1, "half": 2}
MAGNITUDE = {1 / 32: 0, 1 / 256: 1, 1 / 8: 2, 1 / 2: 3}
BLOCK = {"fixed": 0, "equal": 1}
ANCHOR = {"first": 0, "first_n": 1, "sinks_n": 2, "sinks": 3, "none": 4, "previous": 5}
PARTITION = {"contiguous": 0, "round_robin": 1, "balanced": 2}
MERGE = {"gather": 0, "all_gather": 1, "tree": 2}
TENSOR = {"q": 0, "k": 1, "v": 2, "kv": 3}
DIM = {"tokens": 0, "heads": 1, "head_dim": 2}
DELTA = {-1: 0, 1: 1, -2: 2, 2: 3}
BAD = {"nan": 0, "inf": 1, "-inf": 2}


def u8(value):
    assert 0 <= value <= 255, value
    return bytes([value])


def i8(value):
    assert -128 <= value <= 127, value
    return u8(value & 0xFF)


# long_or_short: bytes 0..242 give 0..80 (as byte % 81), the top 13 these lengths.
LONG_TOKENS = [100, 127, 128, 129, 200, 255, 256, 257, 300, 320, 383, 384, 385]


def tokens_byte(tokens):
    if tokens <= 80:
        assert tokens >= 0
        return u8(tokens)
    return u8(243 + LONG_TOKENS.index(tokens))


def header(entry, kv="float", heads=(4, 2, 8), tokens=16, scale=("default", 0),
           magnitudes=(1 / 32, 1 / 32, 1 / 32), raw=False):
    """decode_common: entry, K/V type, heads (q, kv, d), tokens, scale, magnitudes."""
    hq, hkv, d = heads
    if raw:  # any counts: style 3, then the counts themselves
        shape = u8(3) + u8(hq) + u8(hkv) + u8(d)
    else:  # kv 1..4, q a multiple of it (at most 16), d 1..20 or 21..48
        assert 1 <= hkv <= 4 and hq % hkv == 0 and 1 <= hq // hkv <= 16 // hkv and 1 <= d <= 48
        shape = u8(0) + u8(hq // hkv - 1) + u8(hkv - 1) + u8(d - 1 if d <= 20 else 224 + d - 21)
    kind, parameter = scale
    scale_kind = {"default": 0, "moderate": 1, "extreme": 2, "zero": 3, "negative": 4,
                  "nan": 5, "inf": 6, "-inf": 7}[kind]
    # moderate/negative: 2^((p - 128) / 32); extreme: 1.5 * 2^int8(p)
    scale_byte = i8(parameter) if kind == "extreme" else u8(parameter)
    return (u8(ENTRIES[entry]) + u8(KV[kv]) + shape + tokens_byte(tokens) + u8(scale_kind)
            + scale_byte
            + b"".join(u8(MAGNITUDE[m]) for m in magnitudes))


def call(mutation=None, injection=None):
    """decode_call: mutation (tensor, dim, delta) and injection (tensor, value, position)."""
    out = b""
    if mutation:
        tensor, dim, delta = mutation
        out += u8(7) + u8(TENSOR[tensor] + 4 * DIM[dim] + 12 * DELTA[delta])
    else:
        out += u8(0) + u8(0)
    if injection:
        tensor, value, position = injection
        out += u8(5) + u8(TENSOR[tensor] + 3 * BAD[value]) + u8(position >> 8) + u8(position & 0xFF)
    else:
        out += u8(0) * 4
    return out


def count_parameter(value, tokens):
    """count_parameter: 1..tokens+1 as themselves, then 0 and -1."""
    if value == 0:
        return u8(tokens + 1)
    if value == -1:
        return u8(tokens + 2)
    assert 1 <= value <= tokens + 1
    return u8(value - 1)


def hosts_byte(hosts):
    assert -1 <= hosts <= 9
    return u8(hosts - 1 if hosts >= 1 else (9 if hosts == 0 else 10))


def threads_byte(threads):
    assert -1 <= threads <= 2
    return u8(3 if threads == -1 else threads)


def attention(causal=False, key_tokens=16, check_finite=True, offsets=(0, 0), far=False,
              mutation=None, injection=None, **common):
    entry = "attention_causal" if causal else "attention"
    return (header(entry, **common) + tokens_byte(key_tokens) + u8(0 if check_finite else 3)
            + i8(offsets[0]) + i8(offsets[1]) + u8(3 if far else 0) + call(mutation, injection))


def global_attention(causal=True, mutation=None, injection=None, **common):
    return header("global_causal" if causal else "global_full", **common) + call(mutation, injection)


def ring(zigzag=False, hosts=2, threads=0, mutation=None, injection=None, **common):
    return (header("ring_zigzag" if zigzag else "ring_plain", **common) + hosts_byte(hosts)
            + threads_byte(threads) + call(mutation, injection))


def star(tokens=16, hosts=2, threads=0, block=("fixed", 4), anchor=("first", 1),
         receive=False, partition="contiguous", query_host=None, merge="gather",
         plan_change=None, context=call(), query_tokens=3, query=call(), steps=(),
         **common):
    """decode_star. query_host None is the last host; plan_change: 'hosts', 'more', 'fewer'."""
    block_kind, block_parameter = block
    anchor_kind, anchor_parameter = anchor
    qh = 0 if query_host is None else query_host + 2
    assert 0 < qh <= 12 or query_host is None
    change = {None: 0, "hosts": 13, "more": 14, "fewer": 15}[plan_change]
    assert len(steps) <= 3
    step_calls = list(steps) + [call()] * (3 - len(steps))
    return (header("star", tokens=tokens, **common) + hosts_byte(hosts) + threads_byte(threads)
            + u8(BLOCK[block_kind]) + count_parameter(block_parameter, tokens)
            + u8(ANCHOR[anchor_kind]) + count_parameter(anchor_parameter, tokens)
            + u8(1 if receive else 0) + u8(PARTITION[partition]) + u8(qh) + u8(MERGE[merge])
            + u8(change) + context + u8(query_tokens) + query + u8(len(steps))
            + b"".join(step_calls))


def kv_cache(appends, **common):
    """appends: (tokens, kind, raw heads, raw head_dim, call); kind 0 the header's kv heads and
    head_dim, 1 one more kv head, 2 one more head_dim, 3 the raw counts."""
    assert 1 <= len(appends) <= 4
    out = header("kv_cache", **common) + u8(len(appends) - 1)
    for tokens, kind, heads, head_dim, spec in appends:
        out += u8(tokens) + u8(kind) + u8(heads) + u8(head_dim) + spec
    return out


def merge(parts=2, key_tokens=20, causal=False, query_offset=0, cuts=(0, 0, 0), misshapen=None,
          **common):
    """misshapen: index of the part computed for one query token fewer."""
    return (header("merge", **common) + u8(parts) + u8(key_tokens) + u8(1 if causal else 0)
            + i8(query_offset) + b"".join(u8(c) for c in cuts)
            + (u8(7) + u8(misshapen) if misshapen is not None else u8(0) + u8(0)))


SEEDS = {
    # --- the kernel
    "attention_float_full": attention(tokens=5, key_tokens=70, heads=(4, 2, 8)),
    "attention_bf16_causal_offsets": attention(causal=True, kv="bf16", tokens=30, key_tokens=40,
                                               offsets=(10, -5), heads=(8, 2, 16)),
    "attention_half_causal_far": attention(causal=True, kv="half", tokens=1, key_tokens=80,
                                           far=True, offsets=(79, 0), heads=(8, 1, 20)),
    "attention_unchecked_nan": attention(check_finite=False, tokens=9, key_tokens=9,
                                         injection=("k", "nan", 17)),
    "attention_non_integral_gqa": attention(raw=True, heads=(3, 2, 8)),
    "attention_zero_heads": attention(raw=True, heads=(0, 1, 4)),
    "attention_nan_scale": attention(scale=("nan", 0)),
    "attention_huge_scale": attention(causal=True, tokens=6, key_tokens=6, scale=("extreme", 124),
                                      magnitudes=(1 / 2, 1 / 2, 1 / 32)),
    "attention_many_key_tiles_wide_head": attention(causal=True, kv="bf16", tokens=40,
                                                    key_tokens=300, offsets=(100, -60),
                                                    heads=(2, 1, 40)),
    # several query tiles (64 tokens each at group 4) over three key tiles
    "attention_several_query_tiles": attention(causal=True, tokens=257, key_tokens=257,
                                               heads=(8, 2, 16)),
    # query 0 at the second-to-last key of the first key tile, the last query at the first
    # key of the second
    "attention_diagonal_on_key_tile_edges": attention(causal=True, kv="half", tokens=3,
                                                      key_tokens=255, offsets=(126, 0),
                                                      heads=(4, 4, 8)),
    "attention_group_16_decode_rows": attention(tokens=1, key_tokens=385, heads=(16, 1, 8)),
    "attention_group_16_two_tokens": attention(causal=True, kv="bf16", tokens=2,
                                               key_tokens=129, offsets=(127, 0),
                                               heads=(16, 1, 12)),
    "attention_kv_heads_changed": attention(heads=(4, 2, 8), mutation=("kv", "heads", 2)),
    # --- global attention
    "global_causal_float": global_attention(tokens=33, heads=(6, 3, 16)),
    "global_full_bf16_k_longer": global_attention(causal=False, kv="bf16", tokens=17,
                                                  mutation=("k", "tokens", 1)),
    "global_causal_half_short_q": global_attention(kv="half", tokens=12, mutation=("q", "tokens", -1)),
    "global_full_inf_in_v": global_attention(causal=False, tokens=20, injection=("v", "inf", 3)),
    "global_moderate_scale": global_attention(tokens=25, heads=(2, 2, 4), scale=("moderate", 200)),
    "global_causal_long": global_attention(tokens=300, heads=(8, 2, 16)),
    # --- Ring Attention
    "ring_plain_long_shards": ring(tokens=385, hosts=3, heads=(4, 2, 8)),
    "ring_zigzag_long_group_16": ring(zigzag=True, kv="bf16", tokens=256, hosts=2,
                                      heads=(16, 1, 8)),
    "ring_plain_float": ring(tokens=40, hosts=3),
    "ring_zigzag_bf16_few_tokens": ring(zigzag=True, kv="bf16", tokens=5, hosts=8),
    "ring_plain_zero_hosts": ring(hosts=0),
    "ring_zigzag_empty": ring(zigzag=True, tokens=0),
    "ring_zigzag_half_nine_hosts": ring(zigzag=True, kv="half", tokens=80, hosts=9, threads=1,
                                        heads=(4, 4, 12)),
    "ring_negative_scale": ring(tokens=10, hosts=2, scale=("negative", 128)),
    # --- Star Attention: policies
    "star_fixed_first_contiguous_gather": star(tokens=37, hosts=3, block=("fixed", 8),
                                               query_tokens=5, steps=[call()] * 3),
    "star_equal_first_receive_round_robin_all_gather": star(
        kv="bf16", tokens=50, hosts=4, block=("equal", 4), anchor=("first_n", 6), receive=True,
        partition="round_robin", query_host=0, merge="all_gather", query_tokens=1,
        steps=[call()] * 2),
    "star_fixed_sinks_receive_balanced_tree": star(
        kv="half", tokens=43, hosts=5, block=("fixed", 10), anchor=("sinks_n", 3), receive=True,
        partition="balanced", query_host=1, merge="tree", steps=[call()]),
    "star_default_sinks_more_hosts_than_blocks": star(
        tokens=20, hosts=9, block=("fixed", 16), anchor=("sinks", 1), merge="tree",
        query_tokens=0, steps=[call()] * 3),
    "star_equal_no_anchor_balanced": star(tokens=80, hosts=2, block=("equal", 7),
                                          anchor=("none", 1), partition="balanced"),
    "star_previous_block_round_robin_all_gather": star(
        tokens=31, hosts=6, threads=2, block=("fixed", 5), anchor=("previous", 1),
        partition="round_robin", merge="all_gather", heads=(8, 4, 6)),
    "star_single_token": star(tokens=1, hosts=1, block=("fixed", 1), merge="tree",
                              query_tokens=1, steps=[call()] * 3),
    "star_equal_previous_query_host_2": star(tokens=9, hosts=3, block=("equal", 3),
                                             anchor=("previous", 1), query_host=2, merge="tree"),
    # --- Star Attention: long contexts, blocks of several key tiles
    "star_long_blocks_of_128": star(tokens=385, hosts=3, block=("fixed", 128), query_tokens=12,
                                    steps=[call()] * 3, heads=(8, 2, 8)),
    "star_long_equal_blocks_receive_all_gather": star(
        kv="bf16", tokens=300, hosts=4, block=("equal", 4), anchor=("first_n", 100),
        receive=True, partition="round_robin", merge="all_gather", query_tokens=5,
        steps=[call()]),
    "star_long_group_16_tree": star(kv="half", tokens=257, hosts=2, block=("fixed", 129),
                                    merge="tree", query_tokens=2, steps=[call()] * 2,
                                    heads=(16, 1, 8)),
    # --- Star Attention: rejected configurations
    "star_block_size_zero": star(block=("fixed", 0)),
    "star_anchor_larger_than_context": star(tokens=12, anchor=("first_n", 13)),
    "star_query_host_out_of_range": star(hosts=3, query_host=3),
    "star_plan_for_other_hosts": star(plan_change="hosts"),
    "star_plan_for_other_length": star(plan_change="fewer"),
    "star_query_kv_heads_differ": star(tokens=24, hosts=2, query=call(mutation=("kv", "heads", -1))),
    "star_nan_in_context_then_query": star(tokens=24, hosts=3,
                                           context=call(injection=("q", "nan", 40)),
                                           steps=[call()]),
    "star_rejected_step_then_exact_step": star(tokens=24, hosts=3, merge="tree", steps=[
        call(injection=("v", "-inf", 2)), call()]),
    "star_negative_hosts": star(hosts=-1),
    "star_query_with_other_q_heads": star(tokens=24, heads=(4, 2, 8),
                                          query=call(mutation=("q", "heads", -2))),
    # --- KVCache
    "kv_cache_appends": kv_cache([(3, 0, 0, 0, call()), (2, 1, 0, 0, call()),
                                  (0, 0, 0, 0, call()), (4, 0, 0, 0, call(injection=("k", "nan", 5)))]),
    "kv_cache_raw_shapes": kv_cache([(0, 3, 3, 5, call()), (2, 3, 0, 7, call()),
                                     (1, 3, 2, 7, call(mutation=("v", "tokens", 1))),
                                     (5, 0, 0, 0, call())], kv="bf16"),
    # --- merge and merge_into
    "merge_three_parts": merge(parts=3, key_tokens=30, cuts=(7, 19, 0)),
    "merge_causal_four_parts": merge(parts=4, key_tokens=50, causal=True, query_offset=20,
                                     cuts=(10, 30, 40), kv="half", tokens=30),
    "merge_misshapen_part": merge(parts=3, key_tokens=12, cuts=(4, 8, 0), misshapen=1),
    "merge_no_parts": merge(parts=0),
}


def main():
    corpus = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    os.makedirs(corpus, exist_ok=True)
    # Inputs the fuzzer found and that were kept as regression tests (regression_*) are
    # not generated here: they stay, and must still decode to the case they were kept for.
    for name in os.listdir(corpus):
        if not name.startswith("regression_"):
            os.remove(os.path.join(corpus, name))
    for name, data in sorted(SEEDS.items()):
        with open(os.path.join(corpus, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(SEEDS)} seeds to {corpus}")


if __name__ == "__main__":
    main()
