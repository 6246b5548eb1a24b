"""Benchmark of the budget planner (divscale.tools.annotation_plan), each part against a baseline in the same run.

(1) ``prompt_diversity`` with a plain callable tokenizer on pre-tokenized ids (the real HH-RLHF test prompts
    tokenized with MiniLM's fast tokenizer, replicated with 10% of the tokens of every later copy replaced, as
    in bench_diversity.py part (1): >= 5M tokens; the callable looks each text's ids up in a dict), against
    the plain-Python reference (a set of N-gram tuples), and against the old ``plain_call`` (which copied every
    token list twice: ``list(ids)[:max_tokens]``), reproduced by a wrapper that makes the same copies.
    Target: >= 5x the reference, identical counts.
(2) ``divscale plan`` end to end (reading the pool file, the cpu study's fit, the SmolLM2 tokenizer, the random
    selector, d of the three subsets at n = 2, 3, 4) on a pool of 1M synthetic prompts, against a hand-written
    baseline on a 10% pool (each subset tokenized with the tokenizer's own ``__call__`` and counted with a
    Python set of bigram tuples; the planner on the same 10% pool). Target: 1M prompts in <= 120 s on 2 cores.

    Synthetic prompts: HH-shaped ("\\n\\nHuman: ... \\n\\nAssistant:"), 1-3 turns of 6-40 words, each word
    drawn independently (seeded) from the word types of the real HH-RLHF test prompts at their observed
    frequencies, so the text tokenizes like English and subsets share many bigrams, but no two prompts are
    alike; written as JSONL {"prompt": ...} to a temp file.

    .venv/bin/python benchmarks/bench_plan.py            # full (1M prompts; a few minutes)
    .venv/bin/python benchmarks/bench_plan.py --quick    # 100k prompts, ~1.2M tokens in part (1)
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np

from divscale import paths
from divscale.metrics import diversity as dv
from divscale.tools import annotation_plan as bp

HERE = Path(__file__).resolve().parent


def _bench_diversity():
    spec = importlib.util.spec_from_file_location("bench_diversity", HERE / "bench_diversity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def reference_counts(lists, n: int = 2, max_tokens: int = 512) -> tuple[int, int]:
    grams: set = set()
    total = 0
    for ids in lists:
        ids = ids[:max_tokens]
        if len(ids) >= n:
            grams.update(zip(*(ids[k:] for k in range(n))))
            total += len(ids) - n + 1
    return len(grams), total


def part1(quick: bool, repeats: int) -> bool:
    bd = _bench_diversity()
    from divscale.data.hh import load_hh_rlhf
    from divscale.models.hub import load_tokenizer

    tok = load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")
    prompts = list(load_hh_rlhf(split="test")["prompt"])
    arrays = bd.varied_token_copies(dv.tokenize_prompts(prompts, tok), 1_000_000 if quick else 5_000_000, len(tok))
    lists = [a.tolist() for a in arrays]
    texts = [f"t{i}" for i in range(len(arrays))]
    n_tokens = sum(a.size for a in arrays)
    t_ref, ref = bd.timed(lambda: reference_counts(lists), repeats)
    print(f"(1) prompt_diversity with a plain callable on {len(arrays):,} pre-tokenized prompts / {n_tokens:,} "
          f"tokens (best of {repeats})")
    print(f"    {'variant':<46}{'seconds':>9}{'vs set of tuples':>18}  same counts")
    print(f"    {'python set of tuples (reference)':<46}{t_ref:>9.2f}{1.0:>17.1f}x")
    ok = True
    for kind, source in (("lists", lists), ("int arrays", arrays)):
        table = dict(zip(texts, source))

        def lookup(batch, table=table):
            return [table[t] for t in batch]

        def old_style(batch, table=table):        # what plain_call did before: two copies per token list
            return [list(table[t])[:512] for t in batch]

        for label, fn in ((f"callable -> {kind}, old plain_call copies", old_style),
                          (f"callable -> {kind}, now", lookup)):
            t, res = bd.timed(lambda fn=fn: dv.prompt_diversity(texts, fn), repeats)
            same = (res.unique_ngrams, res.total_ngrams) == ref
            ok &= same
            print(f"    {label:<46}{t:>9.2f}{t_ref / t:>17.1f}x  {same}")
    print("    target: 'now' >= 5x the reference")
    return ok


def hh_word_frequencies() -> tuple[np.ndarray, np.ndarray]:
    """The word types of the real HH-RLHF test prompts (role tags removed) and their relative frequencies."""
    from collections import Counter

    from divscale.data.hh import load_hh_rlhf

    counts = Counter(w for p in load_hh_rlhf(split="test")["prompt"]
                     for w in p.replace("\n\nHuman:", " ").replace("\n\nAssistant:", " ").split())
    words = np.array(sorted(counts), dtype=object)
    freq = np.array([counts[w] for w in words], dtype=float)
    return words, freq / freq.sum()


def synthetic_pool(path: Path, size: int, seed: int = 0, vocab=None) -> None:
    rng = np.random.default_rng(seed)
    vocab, freq = vocab if vocab is not None else hh_word_frequencies()
    n_turns = rng.integers(1, 4, size)                     # 1-3 turns; a prompt always ends on a human turn
    turn_len = rng.integers(6, 41, int(n_turns.sum()))
    words = vocab[rng.choice(len(vocab), size=int(turn_len.sum()), p=freq)]
    ends = np.cumsum(turn_len)
    turns = [" ".join(words[e - k:e]) for e, k in zip(ends.tolist(), turn_len.tolist())]
    tags = ("\n\nHuman: ", "\n\nAssistant: ")
    with open(path, "w") as fh:
        t = 0
        for k in n_turns.tolist():
            parts = [tags[j % 2] + turns[t + j] for j in range(k)]
            if k % 2 == 0:
                parts.append(tags[0] + turns[t + k - 1].split(" ", 1)[0])
            t += k
            fh.write(json.dumps({"prompt": "".join(parts) + "\n\nAssistant:"}) + "\n")


def plan_end_to_end(pool_file: Path, budget: int, fit_csv: Path) -> tuple[float, dict]:
    from divscale.metrics.diversity import _load_tokenizer

    t0 = time.perf_counter()
    fit = bp.results_fit(fit_csv)
    prompts, _ = bp.read_pool(str(pool_file))
    tok = _load_tokenizer(fit.tokenizer)
    out = bp.plan(prompts, budget, fit, tok, draws=1, tokenizer_name=fit.tokenizer)
    return time.perf_counter() - t0, out


def baseline(pool_file: Path, budget: int, fit_csv: Path) -> tuple[float, list[float]]:
    """By hand: read the file, draw each subset, tokenizer(subset) and a Python set of bigram tuples."""
    import math

    from divscale.models.hub import load_tokenizer

    t0 = time.perf_counter()
    fit = bp.results_fit(fit_csv)
    with open(pool_file) as fh:
        prompts = [json.loads(line)["prompt"] for line in fh]
    tok = load_tokenizer(fit.tokenizer)
    order = np.random.default_rng(0).permutation(len(prompts))[: budget // 2]   # select_random's draw, seed 0
    ds = []
    for n in (2, 3, 4):
        subset = [prompts[i] for i in order[: budget // n]]
        ids = tok(subset, truncation=True, max_length=512)["input_ids"]
        unique, total = reference_counts(ids)
        ds.append(math.sqrt(len(subset)) * unique / total)
    return time.perf_counter() - t0, ds


def part2(quick: bool) -> bool:
    fit_csv = paths.RESULTS_DIR / "cpu" / "runs.csv"
    full = 100_000 if quick else 1_000_000
    small = full // 10
    with tempfile.TemporaryDirectory() as tmp:
        big_file, small_file = Path(tmp) / "pool_big.jsonl", Path(tmp) / "pool_small.jsonl"
        t = time.perf_counter()
        vocab = hh_word_frequencies()
        synthetic_pool(big_file, full, vocab=vocab)
        synthetic_pool(small_file, small, seed=1, vocab=vocab)
        print(f"\n(2) divscale plan, random selector, d of 3 subsets (n = 2, 3, 4); synthetic pools written in "
              f"{time.perf_counter() - t:.0f} s (not timed)")
        budget_small, budget_big = int(0.6 * small), int(0.6 * full)
        t_base, d_base = baseline(small_file, budget_small, fit_csv)
        t_small, out_small = plan_end_to_end(small_file, budget_small, fit_csv)
        d_small = [o["d"] for o in out_small["options"]]
        close = np.allclose(d_base, d_small, rtol=1e-9)   # the same draw, so the same d
        print(f"    {small:,}-prompt pool, budget {budget_small:,}: baseline {t_base:.1f} s, planner {t_small:.1f} s "
              f"-> {t_base / t_small:.1f}x; d baseline {np.round(d_base, 2).tolist()} vs planner "
              f"{np.round(d_small, 2).tolist()} (same draw; equal: {close})")
        c0 = os.times()
        t_big, out_big = plan_end_to_end(big_file, budget_big, fit_csv)
        c1 = os.times()
        cpu = (c1.user - c0.user) + (c1.system - c0.system)
        sizes = [o["n_prompts"] for o in out_big["options"]]
        print(f"    {full:,}-prompt pool, budget {budget_big:,} (subsets {sizes}): planner {t_big:.1f} s wall, "
              f"{cpu:.1f} s CPU (target <= 120 s on 2 cores); recommended n = {out_big['recommended']}")
    return close and (quick or t_big <= 120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--only", choices=["1", "2"], default=None)
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    print(f"load average at start {load:.1f} on {os.cpu_count()} CPUs (shared machine)")
    ok = True
    if args.only in (None, "1"):
        ok &= part1(args.quick, args.repeats)
    if args.only in (None, "2"):
        ok &= part2(args.quick)
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
