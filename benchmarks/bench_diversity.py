"""Benchmark of the prompt-diversity metric (divscale.metrics.diversity), baseline measured in the same run.

(1) Counting path: ``diversity_from_ids`` on >= 5M pre-tokenized tokens (the real HH-RLHF test
    prompts tokenized with a fast tokenizer, replicated; every copy after the first has 10% of its
    tokens replaced by random ids, so the copies add new N-grams) against a plain-Python reference
    (a set of N-gram tuples, built with zip, on the same ids as Python lists). Target: >= 5x, with
    identical counts.
(2) End to end: ``prompt_diversity`` on 1M prompt texts (the real prompts replicated; every copy
    after the first swaps 10% of the word types for other words, so no two texts are identical),
    tokenization included. Reports wall time, process CPU time (user+sys, all threads) and peak
    memory = peak RSS during the call (Linux VmHWM after resetting it via /proc/self/clear_refs;
    else the ru_maxrss delta) minus the RSS before it. Targets: <= 120 s and <= 4 GB.

    .venv/bin/python benchmarks/bench_diversity.py            # full run (several minutes)
    .venv/bin/python benchmarks/bench_diversity.py --quick    # ~1.2M tokens, 50k prompts
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np

from divscale.metrics import diversity as dv


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            m = re.search(rf"^{key}:\s+(\d+) kB", fh.read(), re.MULTILINE)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def reset_peak() -> str:
    """Reset the peak-RSS counter if the kernel lets us; return the method used."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return "VmHWM (reset before the call) - VmRSS before"
    except OSError:
        return "ru_maxrss delta (may undercount if an earlier peak was higher)"


def rss_kb() -> int:
    return _status_kb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_kb() -> int:
    return _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reference_counts(lists: list[list[int]], n: int) -> tuple[int, int]:
    """Plain Python: a set of N-gram tuples, N-grams built inside each prompt."""
    grams: set = set()
    total = 0
    for ids in lists:
        if len(ids) >= n:
            grams.update(zip(*(ids[k:] for k in range(n))))
            total += len(ids) - n + 1
    return len(grams), total


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def varied_token_copies(arrays: list[np.ndarray], min_tokens: int, vocab: int,
                        seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = sum(a.size for a in arrays)
    copies = max(1, -(-min_tokens // tokens))
    out = list(arrays)
    for _ in range(1, copies):
        for a in arrays:
            b = a.astype(np.int64)
            hit = rng.random(b.size) < 0.10
            b[hit] = rng.integers(0, vocab, int(hit.sum()))
            out.append(b)
    return out


def varied_text_copies(prompts: list[str], n_prompts: int, seed: int = 0) -> list[str]:
    """``n_prompts`` texts: the real prompts, then copies in which 10% of the word types are swapped."""
    rng = np.random.default_rng(seed)
    split = [p.split(" ") for p in prompts]
    types = sorted({w for words in split for w in words if "Human:" not in w and "Assistant:" not in w})
    out = list(prompts[:n_prompts])
    while len(out) < n_prompts:
        pick = rng.random(len(types)) < 0.10
        src = [t for t, p in zip(types, pick) if p]
        dst = rng.choice(len(types), size=len(src))
        swap = {s: types[d] for s, d in zip(src, dst)}
        for words in split[: n_prompts - len(out)]:
            out.append(" ".join([swap.get(w, w) for w in words]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~1.2M tokens and 50k prompts")
    ap.add_argument("--tokenizer", default="sentence-transformers/all-MiniLM-L6-v2",
                    help="a fast tokenizer (resolved offline by divscale.models.hub)")
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="best of R runs for part (1), both sides")
    args = ap.parse_args(argv)
    min_tokens = 1_000_000 if args.quick else 5_000_000
    n_big = 50_000 if args.quick else 1_000_000

    from divscale.data.hh import load_hh_rlhf
    from divscale.models.hub import load_tokenizer

    load0 = os.getloadavg()
    tok = load_tokenizer(args.tokenizer)
    prompts = list(load_hh_rlhf(split="test")["prompt"])
    print(f"tokenizer {args.tokenizer} ({type(tok).__name__}, vocab {len(tok)}); "
          f"{len(prompts)} real HH-RLHF test prompts; N={args.n}; load average at start {load0[0]:.1f} "
          f"on {os.cpu_count()} CPUs (shared machine)")

    # (1) counting path on pre-tokenized ids
    base = dv.tokenize_prompts(prompts, tok)
    arrays = varied_token_copies(base, min_tokens, len(tok))
    lists = [a.tolist() for a in arrays]
    n_tokens = sum(a.size for a in arrays)
    t_fast, res = timed(lambda: dv.diversity_from_ids(arrays, n=args.n), args.repeats)
    t_ref, (u_ref, tot_ref) = timed(lambda: reference_counts(lists, args.n), args.repeats)
    same = (res.unique_ngrams, res.total_ngrams) == (u_ref, tot_ref)

    # (2) end to end on n_big texts, tokenization included
    texts = varied_text_copies(prompts, n_big)
    distinct_texts = len(set(texts))
    method = reset_peak()
    rss0, c0, t0 = rss_kb(), cpu_seconds(), time.perf_counter()
    big = dv.prompt_diversity(texts, tok, n=args.n)
    wall, cpu, peak = time.perf_counter() - t0, cpu_seconds() - c0, peak_kb()
    big_tokens = big.total_ngrams + (args.n - 1) * big.n_prompts   # every prompt has >= n tokens here
    load1 = os.getloadavg()

    print()
    print(f"(1) counting path, {len(arrays):,} prompts / {n_tokens:,} tokens (best of {args.repeats})")
    print(f"    {'method':<34}{'seconds':>9}{'Mtok/s':>9}{'unique':>12}{'total':>12}")
    print(f"    {'divscale diversity_from_ids':<34}{t_fast:>9.3f}{n_tokens / t_fast / 1e6:>9.1f}"
          f"{res.unique_ngrams:>12,}{res.total_ngrams:>12,}")
    print(f"    {'python set of tuples (reference)':<34}{t_ref:>9.3f}{n_tokens / t_ref / 1e6:>9.1f}"
          f"{u_ref:>12,}{tot_ref:>12,}")
    print(f"    speed-up {t_ref / t_fast:.1f}x (target >= 5x); identical counts: {same}")
    print()
    print(f"(2) prompt_diversity end to end, {big.n_prompts:,} prompts ({distinct_texts:,} distinct texts), "
          f"~{big_tokens:,} tokens, tokenization included")
    print(f"    wall {wall:.1f} s (target <= 120 s) | CPU {cpu:.1f} s | "
          f"peak memory {(peak - rss0) / 2**20:.2f} GB (target <= 4 GB; "
          f"absolute peak RSS {peak / 2**20:.2f} GB)")
    print(f"    of which N-gram counting ~{big_tokens / (n_tokens / t_fast):.1f} s (at the part-(1) rate); "
          f"the rest is the tokenizer (Rust, both cores)")
    print(f"    memory method: {method}")
    print(f"    d = {big.d:.2f}, r_unique = {big.r_unique:.4f}, "
          f"unique {big.unique_ngrams:,} / total {big.total_ngrams:,}")
    print(f"load average at end {load1[0]:.1f} (1 min), {load1[1]:.1f} (5 min)")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
