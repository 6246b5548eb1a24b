"""Benchmark of the Jaccard filter behind the augmentation (divscale.tools.augment): MinHash vs exact.

Inputs are built from the real HH-RLHF test prompts (all 8,552, tokenized with the metric's
tokenizer, first 512 tokens, bigram sets). To reach the target sizes with near-duplicates at every
Jaccard level, prompts are replicated with perturbations: each copy gets a perturbation rate r, and
each token is, with probability r, dropped or replaced by a random token id (half and half).

- support set: 5,000 real prompts + 5,000 perturbed copies of them (r ~ U(0, 0.3)) = 10,000 sets
- candidates:  100,000 perturbed copies (r ~ U(0, 0.5)) of prompts drawn from all 8,552, so some are
  near-duplicates of the support set (at Jaccard levels from 1 down to ~0.1) and some are not

Both backends answer "max Jaccard to the support set >= tau?" for every candidate (fit + query
timed). Targets: MinHash path <= 60 s, >= 95% agreement of keep/drop decisions with the exact
backend. The exact time is reported as the baseline (ratio = exact / MinHash). A short greedy
augmentation run (diverse vs random) with each backend is timed at the end.

    .venv/bin/python benchmarks/bench_augment.py            # full run (a few minutes)
    .venv/bin/python benchmarks/bench_augment.py --quick    # 1k support, 10k candidates
"""
from __future__ import annotations

import argparse
import itertools
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from divscale.data.hh import load_hh_rlhf
from divscale.metrics.diversity import tokenize_prompts
from divscale.models.hub import load_tokenizer
from divscale.tools import augment as ag


def perturb(rng: np.random.Generator, ids: np.ndarray, rate: float, vocab: int) -> np.ndarray:
    hit = rng.random(len(ids)) < rate
    sub = rng.random(len(ids)) < 0.5
    out = ids.copy()
    out[hit & sub] = rng.integers(0, vocab, int((hit & sub).sum()))
    out = out[~(hit & ~sub)]
    return out if len(out) >= 2 else ids[:2].copy()


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1k support sets, 10k candidates")
    ap.add_argument("--tokenizer", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    ap.add_argument("--tau", type=float, default=0.5)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--lsh-threshold", type=float, default=None, help="default: tau")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n_real, n_support, n_cand = (500, 1_000, 10_000) if args.quick else (5_000, 10_000, 100_000)

    rng = np.random.default_rng(args.seed)
    tokenizer = load_tokenizer(args.tokenizer)
    prompts = load_hh_rlhf()["prompt"]
    ids, t_tok = timed(lambda: tokenize_prompts(prompts, tokenizer, max_tokens=512))
    vocab = len(tokenizer)
    order = rng.permutation(len(ids))
    real = [ids[i] for i in order[:n_real]]
    support_ids = real + [perturb(rng, real[j], rng.uniform(0, 0.3), vocab)
                          for j in rng.integers(0, n_real, n_support - n_real)]
    src = rng.integers(0, len(ids), n_cand)
    rates = rng.uniform(0, 0.5, n_cand)
    cand_ids = [perturb(rng, ids[i], r, vocab) for i, r in zip(src, rates)]
    (support, cands), t_sets = timed(lambda: (ag.ngram_sets(support_ids, args.n), ag.ngram_sets(cand_ids, args.n)))
    print(f"inputs: {len(prompts)} HH test prompts tokenized with {args.tokenizer} in {t_tok:.1f} s "
          f"(mean {np.mean([len(x) for x in ids]):.0f} tokens); {len(support)} support sets, {len(cands)} "
          f"candidates; {args.n}-gram sets built in {t_sets:.1f} s (mean size "
          f"{np.mean([len(s) for s in cands]):.0f}); tau = {args.tau}")

    exact = ag.ExactJaccard(args.tau)
    _, t_efit = timed(lambda: exact.fit(support))
    keep_e, t_eq = timed(lambda: exact.keep_mask(cands))
    mh = ag.MinHashJaccard(args.tau, num_perm=args.num_perm, seed=1, lsh_threshold=args.lsh_threshold)
    _, t_mfit = timed(lambda: mh.fit(support))
    keep_m, t_mq = timed(lambda: mh.keep_mask(cands))
    t_exact, t_mh = t_efit + t_eq, t_mfit + t_mq

    agree = float((keep_e == keep_m).mean())
    print(f"exact   : fit {t_efit:6.1f} s  query {t_eq:6.1f} s  total {t_exact:6.1f} s  dropped {1 - keep_e.mean():.1%}")
    print(f"minhash : fit {t_mfit:6.1f} s  query {t_mq:6.1f} s  total {t_mh:6.1f} s  dropped {1 - keep_m.mean():.1%}"
          f"  (num_perm={args.num_perm}, LSH threshold={mh.lsh_threshold}, bands x rows = {mh._lsh.b} x {mh._lsh.r})")
    print(f"ratio exact / minhash time: {t_exact / t_mh:.2f}x")
    print(f"agreement of keep/drop decisions: {agree:.2%}  (minhash keeps a true near-duplicate: "
          f"{int((keep_m & ~keep_e).sum())}; minhash drops a true keeper: {int((~keep_m & keep_e).sum())})")
    edges = [0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5]
    cells = []
    for lo, hi in itertools.pairwise(edges):
        m = (rates >= lo) & (rates < hi)
        cells.append(f"[{lo:.2f},{hi:.2f}) drop {1 - keep_e[m].mean():.0%} agree {(keep_e[m] == keep_m[m]).mean():.1%}")
    print("by perturbation rate r (exact drop share, agreement):\n  " + "\n  ".join(cells))
    target_time = 60.0 if not args.quick else 6.0
    print(f"TARGET minhash <= {target_time:.0f} s: {'PASS' if t_mh <= target_time else 'FAIL'} ({t_mh:.1f} s); "
          f"agreement >= 95%: {'PASS' if agree >= 0.95 else 'FAIL'} ({agree:.2%})")

    # a short greedy augmentation on real prompts: seed 1,500, add K from the other prompts
    k = 100 if args.quick else 300
    seed_ids, pool_ids = [ids[i] for i in order[:1500]], [ids[i] for i in order[1500:]]
    for backend in ("exact", "minhash"):
        res, t = timed(lambda b=backend: ag.diverse_augment(seed_ids, pool_ids, k, m=50, tau=args.tau, n=args.n,
                                                            backend=b, seed=args.seed))
        print(f"diverse_augment ({backend:7s}): seed 1500 + K={k} in {t:5.1f} s; d {res.d_seed:.3f} -> "
              f"{res.d_final:.3f}; {res.n_dropped} candidates dropped")
    rnd, t = timed(lambda: ag.random_augment(seed_ids, pool_ids, k, seed=args.seed, n=args.n))
    print(f"random_augment           : seed 1500 + K={k} in {t:5.1f} s; d {rnd.d_seed:.3f} -> {rnd.d_final:.3f}")


if __name__ == "__main__":
    main()
