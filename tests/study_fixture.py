"""A synthetic results folder shaped like the cpu study's (issue 19): PRO only, n in {2, 4}, sizes 12/60/120/240,
``replicates`` on the primary cells (4, 60) (2, 120) (2, 60) and one elsewhere, each replicate its own data draw,
a β = 0 arm on two seeds, augmentation and selection tables with two seeds an arm, the initial policy, the RM report
and RM_train-vs-RM_test agreement. ``means`` plants the three primary cells' means, so a test (or a reader trying
the README's wording) can put the primary contrast on either side of the paper."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from divscale.report import analysis
from divscale.report import publish as summary

PRIMARY = {"algo": "pro", "budget": 240, "n_hi": 4, "n_lo": 2}
AGAINST = {(4, 60): 38.7, (2, 120): 44.3, (2, 60): 40.3}      # the screens' direction: more prompts win
AS_PAPER = {(4, 60): 46.0, (2, 120): 41.0, (2, 60): 40.5}     # longer rankings win, mostly the length part


def _row(algo, n, k, seed, reward, rng, **extra) -> dict:
    r = 0.6 * k ** -0.25
    d = math.sqrt(k) * r * (1 + 0.01 * rng.normal())
    se = 1.2
    return {"run_id": f"{algo}-n{n}-k{k}-s{seed}{extra.pop('tag', '')}", "recipe": "toy", "algo": algo,
            "ranking_len": n, "n_prompts": k, "seed": seed, "draw": seed, "budget": n * k, "d": d, "r_unique": r,
            "reward_global": reward, "reward_global_lo": reward - 1.96 * se, "reward_global_hi": reward + 1.96 * se,
            **{f"reward_{s}": reward for s in analysis.SUBSETS}, "dev_reward_best": math.nan, "best_step": 60,
            "steps": 60, "train_seconds": 20.0, "eval_seconds": 5.0, "status": "ok",
            "created": "2024-01-01T00:00:00+00:00", "eval_dir": f"runs/train/{algo}-n{n}-k{k}-s{seed}/eval-abc",
            "sft_weight": 0.05, "grad_share_rank": 0.1 if n == 4 else 0.2,
            "short_answer_share": abs(rng.normal(0.02, 0.01)), **extra}


def cpu_like_runs(means=AGAINST, replicates: int = 16, sd: float = 1.8, rng: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(rng)
    rows = []
    seeds = list(range(42, 42 + replicates))
    for n in (2, 4):
        for k in (12, 60, 120, 240):
            base = means.get((n, k), 40.0 + 0.01 * k)
            for seed in (seeds if (n, k) in means else seeds[:1]):
                rows.append(_row("pro", n, k, seed, base + rng.normal(0, sd), rng))
    return pd.DataFrame(rows)


def write_study(folder, means=AGAINST, replicates: int = 16, rng: int = 0, initial: float = 39.2):
    """Write the synthetic study into ``folder`` (like results/<recipe>/) and return its runs table."""
    folder.mkdir(parents=True, exist_ok=True)
    runs = cpu_like_runs(means, replicates, rng=rng)
    analysis.write_results(folder / "runs.csv", runs)
    g = np.random.default_rng(rng + 1)
    beta = pd.DataFrame([_row("pro", n, k, s, means[(n, k)] + 2.0 + g.normal(0, 1.0), g, tag="-beta0",
                              sft_weight=0.0, grad_share_rank=1.0)
                         for n, k in ((2, 120), (4, 60)) for s in (42, 43)])
    beta.to_csv(folder / "beta_ablation.csv", index=False)
    aug = pd.DataFrame([_row("pro", 2, k, s, 40 + g.normal(0, 3), g, tag=f"-{m.replace(' ', '')}", method=m,
                             prompt_tokens_median=med)
                        for m, k, med in (("base only", 60, 90.0), ("base + random", 120, 95.0),
                                          ("base + diverse", 120, 40.0)) for s in (42, 43)])
    aug.to_csv(folder / "augmentation.csv", index=False)
    sel = pd.DataFrame([_row("pro", 2, 60, s, 40 + g.normal(0, 3), g, tag=f"-{m}", strategy=m,
                             prompt_tokens_median=med)
                        for m, med in (("random", 113.0), ("d-greedy", 24.5), ("deita", 150.0)) for s in (42, 43)])
    sel.to_csv(folder / "selection.csv", index=False)
    summary.write_initial_policy("toy", {"reward_global": initial, "ci": [initial - 3.2, initial + 3.1]}, folder)
    report = pd.DataFrame([
        {"model": m, "subset": s, "metric": met, "value": v, "ci_lo": v - 0.05, "ci_hi": v + 0.05,
         "n": 400 if s == "all" else 100}
        for m, acc, oa in (("RM_test", 0.58, 0.672), ("RM_train", 0.568, 0.579))
        for s in ("all", "harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
        for met, v in (("accuracy", acc if s == "all" else (0.52 if s == "harmless-base" else 0.6)),
                       ("length_baseline", 0.55), ("oa_agreement", oa), ("oa_accuracy", 0.664))
        if not (s == "helpful-rejection-sampled" and met.startswith("oa"))])
    summary.write_rm_report("toy", report, folder)
    summary.write_rm_agreement("toy", {"n": 400, "value": 0.753, "ci95": [0.708, 0.792], "score_r": 0.691},
                               {"n_rankings": 240, "model": "RM_test",
                                "kendall_tau": {"value": 0.478, "ci95": [0.396, 0.56], "n": 240, "undefined": 0},
                                "top1": {"n": 240, "value": 0.525, "ci95": [0.46, 0.59]},
                                "same_order": {"n": 240, "value": 0.208, "ci95": [0.16, 0.26]},
                                "chance": {"top1": 0.25, "same_order": 1 / 24, "kendall_tau": 0.0}}, folder)
    answers = [{"policy": p, "subset": "harmless-base", "index": i, "prompt": "\n\nHuman: hi\n\nAssistant:",
                "response": "Hello.", "reward": 40.0} for p in ("initial policy", "PRO n=4 k=60 seed 42")
               for i in (0, 1)]
    (folder / summary.ANSWERS).write_text("".join(json.dumps(a) + "\n" for a in answers))
    return runs
