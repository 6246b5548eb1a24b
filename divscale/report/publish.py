"""``divscale summarize``: every number the README and the notebooks quote, in one generated file.

``results/<recipe>/summary.json`` is built from the committed tables and the small files the notebooks
write beside them (nothing is typed by hand):

    results/<recipe>/runs.csv            the grid (divscale grid)                        required
    results/<recipe>/augmentation.csv    07_augmentation                                 optional
    results/<recipe>/selection.csv       08_selection                                    optional
    results/<recipe>/initial_policy.json 05_allocation (:func:`write_initial_policy`)    optional
    results/<recipe>/reports/reward_models.csv   03_reward_models (:func:`write_rm_report`)      optional
    results/<recipe>/beta_ablation.csv   the grid's β-ablation cells (divscale grid)     optional
    results/<recipe>/reports/cold_run.json  a timed cold `make figures` (summarize --cold-run) optional

Top-level keys of summary.json (schema version :data:`SCHEMA_VERSION`):

    schema, recipe, generated_by, scale, inputs {file: sha256}, missing [inputs not found]
    runs            n_runs, eval_keys, reward mean/min/max, dev_reward_best_mean (×100), cell_spread,
                    pooled_seed_sd {algo}
    initial_policy  reward_global, ci_lo, ci_hi, ci_method                          (or null)
    reward_models   {model: {accuracy, length_baseline, oa_agreement, oa_accuracy: {value, ci_lo, ci_hi, n}}}
                    on the 0–1 scale of a fraction of pairs, plus chance_subsets (CI containing 0.5)
    contrasts       {id: {estimate, ci_lo, ci_hi, mde, se, df, test, n_runs, n_a, n_b, status, direction,
                          identical, paper?}}  ids: equal_budget/<algo>/<budget>/n4-n2, .../n3-n2 (OLS cell
                    means; welch/... beside them), same_prompts/<algo>/k<k>/n4-n2 (paired by seed),
                    augmentation/<algo>/<a> - <b>, selection/<algo>/<strategy> - random
    paper           equal_budget_effect_range, table1 diagonal cells, printed and refit MSEs, d growth
    regression      {algo: {d|n_prompts: {mean_mse, mean_r2, lines {n: slope, slope_lo, slope_hi, r2, mse,
                    n_points}}}} on runs (12 points a line), MSE in points²
    exponent        {ours|paper: {algo: {best_p, best_p_any_slope, rule}}}
    diversity       ours {k: d}, growth over 4×, paper growth over 4×, augmentation d by method
    design          sizes, size_ratio, seeds per cell (min/max), verdict cells, step budget and its passes
                    over the largest subset, checkpoint rule
    variance        {algo: eval_se (one run's SE over test prompts), seed_sd (pooled within cells),
                    short_answer_r / _r2 (within-cell correlation of reward with the share of very short answers)}
    fine_tuned_vs_initial  {algo: contrast of the runs' mean reward against the initial policy's (one-sample t)}
    cold_run        wall_s, user_s, system_s, cores, cpu_utilisation, note of a timed cold run (or null)
    mde_reached     {contrast id: MDE} of the equal-budget and same-prompts contrasts
    beta_ablation   PRO's sft_weight ablation at the equal-budget cells (beta_ablation.csv, optional): per cell
                    mean / bounded CI / gradient share of the ranking term per weight, SFT beside, paired contrasts
    verdicts        sentences (what the notebooks print and the README renders)

``divscale summarize --recipe R --readme`` also re-renders the README block between
``<!-- results:R:start -->`` and ``<!-- results:R:end -->``; ``--check`` fails when the README block and
summary.json disagree (what a test does too).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from divscale import paths
from divscale.io import DataError, atomic_write_json, atomic_write_text
from divscale.metrics import stats
from divscale.provenance import file_sha256
from divscale.report import analysis

SCHEMA_VERSION = 1
SCALE = "reward ×100 = 100 · mean sigmoid(RM_test logit), in [0, 100]; slopes in points per unit x; MSE in points²"
AUGMENT_PAIRS = [("base + diverse", "base + random"), ("base + diverse", "base only"), ("base + random", "base only")]


# not a table of runs (no eval_dir): kept out of results/<recipe>/*.csv, which hold only run tables
RM_REPORT = "reports/reward_models.csv"

def results_dir(recipe: str) -> Path:
    return paths.RESULTS_DIR / recipe


# ------------------------------------------------------------------------------------------- notebook outputs

def write_initial_policy(recipe: str, initial: dict, out_dir: str | os.PathLike | None = None) -> Path:
    """05_allocation: the policy before fine-tuning (``pipeline.initial_policy_reward``) as a small JSON."""
    ci = initial.get("ci") or [initial.get("ci_lo"), initial.get("ci_hi")]
    path = Path(out_dir or results_dir(recipe)) / "initial_policy.json"
    atomic_write_json(path, {"reward_global": float(initial["reward_global"]), "ci_lo": float(ci[0]),
                             "ci_hi": float(ci[1]),
                             "ci_method": initial.get("ci_method", "percentile bootstrap over test prompts, "
                                                                   "stratified by test file")})
    return path


def write_rm_report(recipe: str, report: pd.DataFrame, out_dir: str | os.PathLike | None = None) -> Path:
    """03_reward_models: the long RM report (model, subset, metric, value, ci_lo, ci_hi, n) as CSV."""
    need = {"model", "subset", "metric", "value", "ci_lo", "ci_hi", "n"}
    if not need <= set(report.columns):
        raise DataError(f"write_rm_report: the report needs columns {sorted(need)}, has {list(report.columns)}")
    from divscale.io import atomic_path

    path = Path(out_dir or results_dir(recipe)) / RM_REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        report[sorted(need, key=["model", "subset", "metric", "value", "ci_lo", "ci_hi", "n"].index)] \
            .to_csv(tmp, index=False)
    return path


# ------------------------------------------------------------------------------------------- building blocks

COLD_RUN = "reports/cold_run.json"


def parse_gnu_time(text: str) -> dict:
    """The numbers of a GNU ``/usr/bin/time -v`` report: wall, user and system seconds, peak RSS, exit status."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.strip().rpartition(": ")
        if sep:
            fields[key.strip()] = value.strip()
    need = ("Elapsed (wall clock) time (h:mm:ss or m:ss)", "User time (seconds)", "System time (seconds)")
    missing = [k for k in need if k not in fields]
    if missing:
        raise DataError(f"not a GNU `/usr/bin/time -v` report: no {missing[0]!r} line; run the command as "
                        "`/usr/bin/time -v -o FILE make figures` and pass FILE")
    wall = 0.0
    for part in fields[need[0]].split(":"):
        wall = wall * 60 + float(part)
    out = {"wall_s": wall, "user_s": float(fields[need[1]]), "system_s": float(fields[need[2]]),
           "max_rss_kb": int(fields.get("Maximum resident set size (kbytes)", 0)),
           "exit_status": int(fields.get("Exit status", 0)), "command": fields.get("Command being timed", "").strip('"')}
    out["cpu_utilisation"] = (out["user_s"] + out["system_s"]) / wall if wall else math.nan
    return out


def write_cold_run(recipe: str, time_report: str | os.PathLike, note: str = "",
                   out_dir: str | os.PathLike | None = None) -> Path:
    """``results/<recipe>/reports/cold_run.json`` from a ``/usr/bin/time -v`` report of a cold ``make figures``
    (fresh clone, empty caches), with the machine's core count and a note on how it was run."""
    info = parse_gnu_time(Path(time_report).read_text())
    if info["exit_status"] != 0:
        raise DataError(f"{time_report}: the timed command exited with status {info['exit_status']}; a failed run "
                        "is not a timing")
    info |= {"cores": os.cpu_count(), "note": note}
    path = Path(out_dir or results_dir(recipe)) / COLD_RUN
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, info)
    return path


def _clean(obj):
    """JSON-safe: numpy scalars to Python, NaN to None, tuples to lists, keys to str."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"].astype(str) == "ok"] if "status" in df.columns else df


def _runs_block(runs: pd.DataFrame) -> dict:
    eval_keys = sorted({Path(str(p)).name for p in runs.get("eval_dir", pd.Series(dtype=str)).dropna()})
    return {"n_runs": len(runs), "algos": sorted(runs["algo"].unique()),
            "sizes": sorted(int(k) for k in runs["n_prompts"].unique()),
            "seeds": sorted(int(s) for s in runs["seed"].unique()), "eval_keys": eval_keys,
            "reward_mean": runs["reward_global"].mean(), "reward_min": runs["reward_global"].min(),
            "reward_max": runs["reward_global"].max(),
            "dev_reward_best_mean": (100 * runs["dev_reward_best"].mean()
                                     if "dev_reward_best" in runs and runs["dev_reward_best"].notna().any() else None),
            "cell_spread": analysis.cell_spread(runs),
            "pooled_seed_sd": {a: analysis.pooled_seed_sd(g) for a, g in runs.groupby("algo")}}


def _contrasts(runs: pd.DataFrame, budgets, augmentation: pd.DataFrame | None,
               selection: pd.DataFrame | None) -> dict:
    out = {}
    paper = analysis.paper_table1_long()
    paper = paper[(paper["model"] == "OPT-1.3B") & (paper["split"] == "Global") & paper["diagonal"]]
    for algo, g in runs.groupby("algo"):
        for budget in budgets:
            ols = analysis.more_responses_beat_more_prompts(g, budget, method="ols")
            welch = analysis.more_responses_beat_more_prompts(g, budget, method="welch")
            for n in (4, 3):
                c = ols[f"contrast_{n}_vs_2"]
                if c is None:
                    continue
                w = welch[f"contrast_{n}_vs_2"]
                p = paper[(paper["algo"] == algo) & (paper["budget_group"] == 6000)].set_index("ranking_len")["reward"]
                blocked = analysis.seed_blocked_contrast(g, (n, budget // n), (2, budget // 2))
                out[f"equal_budget/{algo}/{budget}/n{n}-n2"] = c | {
                    "algo": algo, "family": "equal_budget",
                    "paper": float(p[n] - p[2]) if {n, 2} <= set(p.index) else None,
                    "welch": {k: w[k] for k in ("estimate", "ci_lo", "ci_hi", "mde", "df", "test")},
                    "seed_blocked": {k: blocked.get(k) for k in ("estimate", "ci_lo", "ci_hi", "mde", "df", "test",
                                                                 "seed_block_p")}}
        for k in sorted(g["n_prompts"].unique()):
            have = set(g[g["n_prompts"] == k]["ranking_len"])
            if {2, 4} <= have:
                out[f"same_prompts/{algo}/k{int(k)}/n4-n2"] = analysis.same_prompts_contrast(g, int(k)) | {
                    "algo": algo, "family": "same_prompts"}
    for name, df, by, pairs in [
            ("augmentation", augmentation, "method", AUGMENT_PAIRS),
            ("selection", selection, "strategy", None)]:
        if df is None or by not in df.columns:
            continue
        for algo, g in _ok(df).groupby("algo"):
            arms = list(pd.unique(g[by]))
            todo = pairs if pairs else [(s, "random") for s in arms if s != "random"]
            for a, b in todo:
                if pairs and not {a, b} <= set(arms):
                    raise DataError(f"{name}.csv ({algo}): arms {sorted(arms)} lack {sorted({a, b} - set(arms))}; "
                                    f"rebuild it with its notebook (07_augmentation) or update AUGMENT_PAIRS")
                if a in arms and b in arms:
                    c = analysis.method_contrast(g, by, baseline=b, compare=a)
                    if name == "selection" and not c.get("identical"):     # the paper makes no claim here
                        c["direction"] = f"{'above' if c['estimate'] > 0 else 'below'} {b}"
                    sizes = {arm: int(g[g[by] == arm]["n_prompts"].iloc[0]) for arm in (a, b)}
                    out[f"{name}/{algo}/{a} - {b}"] = c | {"algo": algo, "family": name, "n_prompts": sizes}
    return out


def _regression(runs: pd.DataFrame) -> dict:
    out = {}
    for algo, g in runs.groupby("algo"):
        out[algo] = {}
        for x in ("d", "n_prompts"):
            fits = analysis.fit_lines(g, x=x, y="reward_global", by="ranking_len", aggregate=False)
            out[algo][x] = {"mean_mse": analysis.mean_mse(fits), "mean_r2": float(fits["r2"].mean()),
                            "negative_slopes": int((fits["slope"] < 0).sum()),
                            "slope_ci_above_0": int((fits["slope_lo"] > 0).sum()),
                            "slope_ci_below_0": int((fits["slope_hi"] < 0).sum()),
                            "lines": {int(r.ranking_len): {"slope": r.slope, "slope_lo": r.slope_lo,
                                                           "slope_hi": r.slope_hi, "intercept": r.intercept,
                                                           "r2": r.r2, "mse": r.mse, "n_points": int(r.n_points)}
                                      for r in fits.itertuples()}}
    return out


def exponent_summary(table: pd.DataFrame) -> dict:
    """Best p of d = |X|^(1/p)·r_unique: under the positive-slope rule (every per-n line rises) and without it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # an exponent at which d is constant across sizes: no line
        free = analysis.fit_exponent(table, require_positive_slope=False)
    rising = free.curve[free.curve["min_slope"] > 0]       # the same rule as fit_exponent's default
    if rising.empty:
        best, rule = None, "no exponent makes every per-n line rise"
    else:
        best, rule = float(rising.loc[rising["mean_mse"].idxmin(), "p"]), "every per-n line rises"
    return {"best_p": best, "best_p_any_slope": free.best_p, "rule": rule}


def _paper_block() -> dict:
    lo, hi = analysis.paper_effect_range()
    t1 = analysis.paper_table1_long()
    t1 = t1[(t1["model"] == "OPT-1.3B") & (t1["split"] == "Global") & t1["diagonal"]]
    refit = analysis.refit_paper(scale=1.0)
    div = analysis.paper_diversity().set_index("n_prompts")["d"]
    return {"equal_budget_effect_range": [lo, hi],
            "table1_diagonal": {f"{r.algo}/{int(r.budget_group)}/n{int(r.ranking_len)}": r.reward
                                for r in t1.itertuples()},
            "printed_mse_0_1_scale": dict(analysis.PAPER_PRINTED_MSE),
            "printed_mse_points2": {k: analysis.paper_mse_points(k) for k in analysis.PAPER_PRINTED_MSE},
            "refit_mse_points2": {k: analysis.mean_mse(f) for k, f in refit.items()},
            "d_growth_4x": {"from_prompts": 1500, "to_prompts": 6000, "d_from": div[1500], "d_to": div[6000],
                            "growth": div[6000] / div[1500] - 1}}


def _diversity(runs: pd.DataFrame, augmentation: pd.DataFrame | None) -> dict:
    d = runs.groupby("n_prompts")["d"].mean()
    lo, hi = int(d.index.min()), int(d.index.max())
    out = {"ours": {int(k): v for k, v in d.items()},
           "growth": {"from_prompts": lo, "to_prompts": hi, "ratio_prompts": hi / lo, "d_from": d[lo],
                      "d_to": d[hi], "growth": d[hi] / d[lo] - 1}}
    if augmentation is not None and "method" in augmentation.columns:
        aug = _ok(augmentation).groupby("method")[["d", "n_prompts"]].mean()
        out["augmentation"] = {m: {"d": r.d, "n_prompts": int(r.n_prompts)} for m, r in aug.iterrows()}
    return out


def _reward_models(report: pd.DataFrame | None) -> dict | None:
    if report is None:
        return None
    out = {}
    overall = report[report["subset"] == "all"]
    for model, g in overall.groupby("model"):
        out[model] = {m: {"value": r.value, "ci_lo": r.ci_lo, "ci_hi": r.ci_hi, "n": int(r.n)}
                      for m, r in g.set_index("metric").iterrows()}
    acc = report[(report["metric"] == "accuracy") & (report["subset"] != "all")]
    chance = acc[(acc["ci_lo"] <= 0.5) & (acc["ci_hi"] >= 0.5)]
    return {"overall": out, "scale": "fraction of held-out human pairs (0–1), Wilson 95% CI",
            "chance_subsets": [{"model": r.model, "subset": r.subset, "accuracy": r.value}
                               for r in chance.itertuples()]}


def verdicts(summary: dict) -> list[str]:
    """The study's verdicts as sentences, from summary.json alone (what notebooks print, README renders)."""
    out = []
    rng = tuple(summary["paper"]["equal_budget_effect_range"])
    for cid, c in summary["contrasts"].items():
        fam = c.get("family")
        if fam == "equal_budget":
            algo, budget, comp = cid.split("/")[1:]
            label = f"{algo.upper()}, equal budget {int(budget):,} responses, {comp.replace('-', ' − ')}"
            out.append(analysis.contrast_sentence(label, _nan(c), rng if comp == "n4-n2" else None))
        elif fam in ("augmentation", "selection"):
            algo, comp = cid.split("/")[1], cid.split("/", 2)[2]
            out.append(analysis.contrast_sentence(f"{algo.upper()}, {fam}: {comp.replace(' - ', ' − ')}", _nan(c)))
    # the paper's claims: n=4 and n=3 beat n=2 at an equal budget, diverse beats random augmentation,
    # reward rises with d (every per-n slope positive)
    claims = [c for cid, c in summary["contrasts"].items()
              if c.get("family") == "equal_budget" or cid.endswith("/base + diverse - base + random")]
    slopes = [line["slope"] for r in summary["regression"].values() for line in r["d"]["lines"].values()]
    n_against = sum(c["direction"] == "against the paper" for c in claims) + sum(v < 0 for v in slopes)
    favour = sum(c["status"] == "holds" for c in claims) + \
        sum(r["d"]["slope_ci_above_0"] for r in summary["regression"].values())
    out.append(f"{n_against} of the {len(claims) + len(slopes)} estimates that test the paper's claims point against "
               f"it ({len(claims)} equal-budget and diverse − random contrasts, {len(slopes)} per-n slopes of reward "
               f"on d); {favour} of them {'has' if favour == 1 else 'have'} a CI that excludes 0 in the paper's "
               f"favour.")
    for algo, r in summary["regression"].items():
        rd, rn = r["d"], r["n_prompts"]
        out.append(f"{algo.upper()}: {rd['negative_slopes']} of {len(rd['lines'])} per-n slopes of reward on d are "
                   f"negative ({rd['slope_ci_above_0']} with a CI above 0, {rd['slope_ci_below_0']} below); the "
                   f"mean MSE on d ({rd['mean_mse']:.2f} points²) is "
                   f"{'smaller' if rd['mean_mse'] < rn['mean_mse'] else 'larger'} than on #prompts "
                   f"({rn['mean_mse']:.2f}).")
    return out


def fine_tuned_vs_initial(runs: pd.DataFrame, initial: dict | None) -> dict | None:
    """Per algorithm: the mean fine-tuned test reward over the grid's runs minus the initial policy's."""
    if not initial:
        return None
    out = {}
    for algo, g in runs.groupby("algo"):
        c = stats.versus_reference(g["reward_global"], initial["reward_global"])
        out[algo] = c | {"direction": "above the initial policy" if c["estimate"] > 0 else "below the initial policy"}
    return out


def _design(recipe: str, runs: pd.DataFrame) -> dict:
    """How the grid spends its runs, from the table: seeds per cell, the size range, the step budget's reach."""
    per_cell = runs.groupby(["algo", "ranking_len", "n_prompts"]).size()
    sizes = sorted(int(k) for k in runs["n_prompts"].unique())
    out = {"sizes": sizes, "size_ratio": sizes[-1] / sizes[0] if sizes else None,
           "seeds_per_cell_min": int(per_cell.min()), "seeds_per_cell_max": int(per_cell.max()),
           "cells": len(per_cell),
           "verdict_cells": sorted({f"n{n}-k{k}" for (_, n, k), v in per_cell.items() if v == per_cell.max()})}
    try:
        from divscale.config import load_recipe

        t = load_recipe(recipe).train
        out |= {"max_steps": t.max_steps, "prompts_per_step": t.prompts_per_step, "checkpoint": t.checkpoint,
                "passes_over_largest": t.max_steps * t.prompts_per_step / sizes[-1] if sizes else None}
    except (FileNotFoundError, DataError, ValueError):
        pass
    return out


def _mde_reached(contrasts: dict) -> dict:
    """The MDE of each verdict contrast (equal budget n=4/3 − n=2, same prompts n=4 − n=2), by id; the equal-budget
    ones also with seed blocks (``<id> seed-blocked``)."""
    out = {}
    for cid, c in contrasts.items():
        if c.get("family") in ("equal_budget", "same_prompts"):
            out[cid] = c.get("mde")
            if c.get("seed_blocked"):
                out[f"{cid} seed-blocked"] = c["seed_blocked"].get("mde")
    return out


def beta_ablation_summary(folder: Path, runs: pd.DataFrame, budgets) -> dict | None:
    """PRO's β ablation at the equal-budget cells: mean reward (t CI over seeds) and the ranking term's gradient
    share per sft_weight, beside SFT; contrasts paired by seed (same k and seed: same prompts, same order, same
    initial weights), the paper's β against β = 0 and against SFT."""
    path = folder / "beta_ablation.csv"
    if not path.exists():
        return None
    extra = _ok(pd.read_csv(path))
    pro = runs[runs["algo"] == "pro"]
    both = pd.concat([pro, extra], ignore_index=True)
    if "sft_weight" not in both.columns or both["sft_weight"].isna().all():
        return None
    paper_w = float(pro["sft_weight"].dropna().iloc[0]) if pro["sft_weight"].notna().any() else None
    out = {"paper_sft_weight": paper_w, "weights": sorted(float(w) for w in both["sft_weight"].dropna().unique()),
           "cells": {}}
    for budget in budgets:
        for n in (2, 3, 4):
            k = budget // n
            cell = both[(both["ranking_len"] == n) & (both["n_prompts"] == k)]
            sft = runs[(runs["algo"] == "sft") & (runs["ranking_len"] == n) & (runs["n_prompts"] == k)]
            if cell.empty:
                continue
            arms = {}
            for w, g in cell.groupby("sft_weight"):
                mean, lo, hi = stats.bounded_interval(g["reward_global"])      # inside [0, 100]
                share = g["grad_share_rank"].mean() if "grad_share_rank" in g else math.nan
                arms[f"{float(w):g}"] = {"mean": mean, "ci_lo": lo, "ci_hi": hi, "runs": len(g),
                                         "grad_share_rank": share, "beta": float(w) * (n - 1) ** 2}
            if not sft.empty:
                mean, lo, hi = stats.bounded_interval(sft["reward_global"])
                arms["sft"] = {"mean": mean, "ci_lo": lo, "ci_hi": hi, "runs": len(sft)}
            entry = {"n": n, "n_prompts": k, "budget": budget, "arms": arms, "contrasts": {}}
            paper_runs = cell[cell["sft_weight"] == paper_w]
            for w, g in cell.groupby("sft_weight"):
                if float(w) != paper_w and not paper_runs.empty:
                    c = stats.paired_contrast(paper_runs, g, "reward_global")
                    entry["contrasts"][f"{paper_w:g} - {float(w):g}"] = c | {"direction": _above(c, "the paper's β")}
            if not sft.empty and not paper_runs.empty:
                c = stats.paired_contrast(paper_runs, sft, "reward_global")
                entry["contrasts"][f"{paper_w:g} - sft"] = c | {"direction": _above(c, "PRO with the paper's β")}
            out["cells"][f"{budget}/n{n}"] = entry
    return out


def listwise_summary(df: pd.DataFrame | None) -> dict | None:
    """Notebook 09's head-to-head (``results/<recipe>/listwise.csv``, :mod:`divscale.study.listwise`): per arm the
    test reward (mean over seeds, bounded 95% t-interval), its gain over the initial policy (one-sample t over
    seeds), the win rate over the initial policy (mean over seeds, bounded interval), the share of empty answers,
    the wall time and sequences per step; every divscale arm against every TRL arm, paired by seed (same initial
    weights, same rankings in the same steps), with CI and MDE. None without a table. A table whose rows disagree on
    a key column is refused (:func:`divscale.provenance.check_table_keys`)."""
    from divscale.provenance import KEY_COLUMNS, check_table_keys

    if df is None or df.empty:
        return None
    rows = df.to_dict("records")
    check_table_keys(rows, "listwise.csv", columns=[c for c in KEY_COLUMNS if c in df.columns],
                     fix="rerun notebook 09: it rebuilds the table from the current inputs")
    ok = _ok(df)
    initial = ok[ok["arm"] == "initial"]
    runs = ok[ok["arm"] != "initial"]
    if initial.empty or runs.empty:
        raise DataError("listwise.csv needs the initial policy's row and at least one run; rerun notebook 09")
    init = initial.iloc[0]
    base = "trl_dpo_all_pairs"
    base_step = runs[runs["arm"] == base]["seconds_per_step"].mean() if base in set(runs["arm"]) else math.nan
    arms = {}
    for arm, g in runs.groupby("arm", sort=False):
        mean, lo, hi = stats.bounded_interval(g["reward"])
        win, win_lo, win_hi = stats.bounded_interval(100 * g["win_rate"])
        step = float(g["seconds_per_step"].mean())
        first = g.iloc[0]
        arms[arm] = {"label": first["label"], "trainer": first["trainer"], "loss": first["loss"],
                     "pairs": first["pairs"] if isinstance(first["pairs"], str) and first["pairs"] else None,
                     "runs": len(g), "seeds": sorted(int(s) for s in g["seed"]),
                     "reward": mean, "reward_lo": lo, "reward_hi": hi,
                     "seed_sd": float(g["reward"].std(ddof=1)) if len(g) > 1 else math.nan,
                     "vs_initial": stats.versus_reference(g["reward"], float(init["reward"])),
                     "win_rate": win / 100, "win_rate_lo": win_lo / 100, "win_rate_hi": win_hi / 100,
                     "empty_share": float(g["empty_share"].mean()), "answer_chars": float(g["answer_chars_mean"].mean()),
                     "seconds_per_step": step, "speed_vs_trl_all_pairs": base_step / step,
                     "policy_sequences_per_step": float(first["policy_sequences_per_step"]),
                     "reference_sequences_per_step": float(first["reference_sequences_per_step"]),
                     "pairs_per_step": None if pd.isna(first["pairs_per_step"]) else float(first["pairs_per_step"])}
    ours = [a for a, v in arms.items() if v["trainer"] == "divscale"]
    theirs = [a for a, v in arms.items() if v["trainer"] == "trl"]
    contrasts = {}
    for a in ours:
        for b in theirs:
            c = stats.paired_contrast(runs[runs["arm"] == a], runs[runs["arm"] == b], "reward")
            contrasts[f"{a} - {b}"] = c | {"family": "listwise_vs_pairs", "direction": _above(c, arms[a]["label"])}
    first = runs.iloc[0]
    design = {"steps": int(first["steps"]), "rows_per_step": int(first["rows_per_step"]),
              "ranking_len": int(first["ranking_len"]), "n_train": int(first["n_train"]),
              "n_test": int(first["n_test"]), "seeds": sorted(int(s) for s in runs["seed"].unique()),
              "equal": "initial weights, training rankings, optimizer, steps, rankings per step (a pairs arm: their "
                       "pairs), lengths; beta 0.1",
              "paired": "by seed: the same rankings in the same steps from the same weights"}
    return {"design": design, "initial": {"reward": float(init["reward"]), "ci_lo": float(init["reward_lo"]),
                                          "ci_hi": float(init["reward_hi"]),
                                          "empty_share": float(init["empty_share"])},
            "arms": arms, "contrasts": contrasts, "baseline": base}


def _above(c: dict, what: str) -> str:
    """A direction for contrasts the paper makes no claim about."""
    return f"{what} {'above' if c['estimate'] > 0 else 'below' if c['estimate'] < 0 else 'level'}"


def _nan(c: dict) -> dict:
    return {k: (math.nan if v is None and k in ("ci_lo", "ci_hi", "mde", "se", "df") else v) for k, v in c.items()}


def build_summary(recipe: str, results: str | os.PathLike | None = None, budgets=None) -> dict:
    """summary.json's content for ``recipe`` from ``results`` (default results/<recipe>/)."""
    folder = Path(results or results_dir(recipe))
    runs_path = folder / "runs.csv"
    runs = _ok(analysis.load_results(runs_path))
    if runs.empty:
        raise DataError(f"{runs_path}: no ok runs to summarize")
    if budgets is None:
        from divscale.config import load_recipe

        try:
            budgets = list(load_recipe(recipe).grid.equal_budgets)
        except (FileNotFoundError, DataError, ValueError):
            budgets = []
    inputs, missing = {"runs.csv": file_sha256(runs_path, 16)}, []

    def optional(name, read):
        path = folder / name
        if not path.exists():
            missing.append(name)
            return None
        inputs[name] = file_sha256(path, 16)
        return read(path)

    augmentation = optional("augmentation.csv", pd.read_csv)
    selection = optional("selection.csv", pd.read_csv)
    initial = optional("initial_policy.json", lambda p: json.loads(p.read_text()))
    report = optional(RM_REPORT, pd.read_csv)
    cold = optional(COLD_RUN, lambda p: json.loads(p.read_text()))
    summary = {
        "schema": SCHEMA_VERSION, "recipe": recipe, "generated_by": "divscale summarize", "scale": SCALE,
        "inputs": inputs, "missing": missing, "runs": _runs_block(runs), "initial_policy": initial,
        "reward_models": _reward_models(report), "equal_budgets": list(budgets),
        "contrasts": _contrasts(runs, budgets, augmentation, selection), "paper": _paper_block(),
        "regression": _regression(runs),
        "exponent": {"ours": {a: exponent_summary(g) for a, g in runs.groupby("algo")},
                     "paper": {a: exponent_summary(g) for a, g in analysis.paper_fig4_points().groupby("algo")}},
        "diversity": _diversity(runs, augmentation),
        "design": _design(recipe, runs),
        "variance": analysis.variance_sources(runs),
        "fine_tuned_vs_initial": fine_tuned_vs_initial(runs, initial),
        "cold_run": cold,
    }
    summary["mde_reached"] = _mde_reached(summary["contrasts"])
    if (folder / "beta_ablation.csv").exists():
        inputs["beta_ablation.csv"] = file_sha256(folder / "beta_ablation.csv", 16)
    summary["beta_ablation"] = beta_ablation_summary(folder, runs, budgets)
    if (folder / "listwise.csv").exists():              # notebook 09's head-to-head (absent: no key)
        inputs["listwise.csv"] = file_sha256(folder / "listwise.csv", 16)
        summary["listwise"] = listwise_summary(pd.read_csv(folder / "listwise.csv"))
    summary = _clean(summary)
    summary["verdicts"] = verdicts(summary)
    return summary


def write_summary(recipe: str, results: str | os.PathLike | None = None, budgets=None) -> Path:
    """Build and write ``results/<recipe>/summary.json`` atomically (temp file renamed on success)."""
    folder = Path(results or results_dir(recipe))
    summary = build_summary(recipe, folder, budgets)
    path = folder / "summary.json"
    atomic_write_json(path, summary)
    return path


def load_summary(recipe: str, results: str | os.PathLike | None = None) -> dict:
    path = Path(results or results_dir(recipe)) / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no summary; run `divscale summarize --recipe {recipe}`")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------- the README block

def _f(v, fmt="{:.1f}") -> str:
    return "—" if v is None else fmt.format(v)


def _ci(c: dict) -> str:
    if c.get("identical"):
        return "identical arms (same runs): no CI"
    ci = "no CI" if c["ci_lo"] is None else f"CI [{c['ci_lo']:+.1f}, {c['ci_hi']:+.1f}]"
    mde = "" if c["mde"] is None else f", MDE {c['mde']:.1f}"
    return f"{c['estimate']:+.1f}, {ci}{mde} ({c['direction']})"


def render_readme_block(s: dict) -> str:
    """The README's results table and reading, from summary.json only (every number here is generated)."""
    p, runs, con, reg = s["paper"], s["runs"], s["contrasts"], s["regression"]
    lo, hi = p["equal_budget_effect_range"]
    rows = ["| | paper (OPT-1.3B, Global, ×100) | this study (×100) |", "|---|---|---|"]
    for budget in s["equal_budgets"]:
        for algo in runs["algos"]:
            means = []
            for n in (2, 3, 4):
                c = con.get(f"equal_budget/{algo}/{budget}/n{n}-n2")
                if n == 2:
                    c = con.get(f"equal_budget/{algo}/{budget}/n4-n2")
                    means.append(_f(c["mean_b"]) if c else "—")
                else:
                    means.append(_f(c["mean_a"]) if c else "—")
            paper = " / ".join(_f(p["table1_diagonal"].get(f"{algo}/6000/n{n}"), "{:.2f}") for n in (2, 3, 4))
            rows.append(f"| equal budget, {algo.upper()}, n = 2 / 3 / 4 | {paper} (6k responses) | "
                        f"{' / '.join(means)} ({budget:,} responses, mean of seeds) |")
            for n in (4, 3):
                c = con.get(f"equal_budget/{algo}/{budget}/n{n}-n2")
                if c:
                    rows.append(f"| n = {n} − n = 2, {algo.upper()} | {c['paper']:+.2f} | {_ci(c)} |")
    for algo, r in reg.items():
        key = f"{algo}_vs_d"
        paper = f"{p['printed_mse_points2'][key]:.3f}" if key in p["printed_mse_points2"] else "—"
        if algo == "pro":
            paper += f" vs {p['printed_mse_points2']['pro_vs_samples']:.2f} for ~#prompts"
        rows.append(f"| reward ~ d, mean MSE ({algo.upper()}, points²) | {paper} | {r['d']['mean_mse']:.2f} vs "
                    f"{r['n_prompts']['mean_mse']:.2f} for ~#prompts; {r['d']['negative_slopes']} of "
                    f"{len(r['d']['lines'])} slopes negative, {r['d']['slope_ci_above_0']} with CI above 0 |")
    rf = p["refit_mse_points2"]
    rows.append(f"| our refit of the paper's transcribed points (points²) | {rf['pro_vs_samples']:.2f} / "
                f"{rf['pro_vs_d']:.3f} / {rf['sft_vs_d']:.3f} (printed ×10⁴: "
                f"{p['printed_mse_points2']['pro_vs_samples']:.2f} / {p['printed_mse_points2']['pro_vs_d']:.3f} / "
                f"{p['printed_mse_points2']['sft_vs_d']:.3f}) | — |")
    ep, eo = s["exponent"]["paper"], s["exponent"]["ours"]
    rows.append("| best p (d = \\|X\\|^(1/p)·r_unique), PRO / SFT | "
                + " / ".join(f"{_f(ep[a]['best_p'], '{:.2f}')}" for a in ("pro", "sft"))
                + " with every line rising; " + " / ".join(f"{ep[a]['best_p_any_slope']:.2f}" for a in ("pro", "sft"))
                + " without that rule | "
                + " / ".join(f"{_f(eo[a]['best_p'], '{:.2f}')}" for a in runs["algos"] if a in eo)
                + " with every line rising; "
                + " / ".join(f"{eo[a]['best_p_any_slope']:.2f}" for a in runs["algos"] if a in eo) + " without |")
    g, pg = s["diversity"]["growth"], p["d_growth_4x"]
    rows.append(f"| d of the nested subsets | {pg['d_from']:.1f} → {pg['d_to']:.1f} (+{100 * pg['growth']:.0f}% over "
                f"{pg['from_prompts']:,} → {pg['to_prompts']:,} prompts, 4×; LLaMA tokens) | {g['d_from']:.2f} → "
                f"{g['d_to']:.2f} (+{100 * g['growth']:.0f}% over {g['from_prompts']} → {g['to_prompts']} prompts, "
                f"{g['ratio_prompts']:.0f}×; SmolLM2 tokens) |")
    for cid, c in con.items():
        if c.get("family") in ("augmentation", "selection"):
            algo, comp = cid.split("/")[1], cid.split("/", 2)[2]
            sizes = c.get("n_prompts") or {}
            size_note = ("" if len(set(sizes.values())) <= 1 else
                         " (" + " vs ".join(f"{v} prompts" for v in sizes.values()) + ")")
            rows.append(f"| {c['family']}: {comp.replace(' - ', ' − ')}, {algo.upper()}{size_note} | "
                        f"{'gain reported (details not recoverable)' if c['family'] == 'augmentation' else '—'} | "
                        f"{_ci(c)} |")
    ip = s.get("initial_policy")
    spread = runs["cell_spread"]
    mdes = [c["mde"] for cid, c in con.items()
            if cid.endswith("n4-n2") and c.get("family") == "equal_budget" and c.get("mde") is not None]
    reading = [
        "",
        ("Estimates are differences of mean reward ×100 with 95% CIs and the minimum detectable effect (MDE: the "
         "true difference a test at α = 0.05 finds with 80% power). Equal-budget contrasts: one OLS model per "
         "algorithm over all its runs (the cells have different prompts, so nothing is paired); augmentation and "
         f"selection: Welch's t. The paper's n = 4 − n = 2 effects are {lo:+.2f} to {hi:+.2f}."),
        "",
        "**Reading.** " + " ".join(v for v in s["verdicts"] if "point against" in v)
        + " At this scale the study cannot confirm or refute the paper: see the MDEs.",
        "",
        ("- Each cell has one seed: there is no seed-to-seed spread" if spread is None else
         f"- The largest seed-to-seed range of one cell is {spread['max_range']:.1f} points (SD "
         f"{spread['sd_of_that_cell']:.1f})")
        + "; the seed SD pooled over cells is "
        + " / ".join(f"{v:.1f} ({a.upper()})" for a, v in runs["pooled_seed_sd"].items())
        + ", so the equal-budget MDEs are " + " / ".join(f"{m:.1f}" for m in mdes)
        + f" points against the paper's {lo:.1f}–{hi:.1f}: an effect of the paper's size "
        + ("could not have been seen." if mdes and min(mdes) > hi else
           "could have been seen." if mdes and max(mdes) <= lo else "could have been seen only in part."),
        ("- Checkpoint: the last step of each run (no dev validation); " if runs.get("dev_reward_best_mean") is None else
         f"- The best dev reward (RM_train, the checkpoint criterion) averages {_f(runs['dev_reward_best_mean'])}; ")
        + f"on test the fine-tuned runs average {runs['reward_mean']:.1f} (range {runs['reward_min']:.1f}–"
        f"{runs['reward_max']:.1f}), "
        + (f"the policy before fine-tuning {ip['reward_global']:.1f} (CI {ip['ci_lo']:.1f}–{ip['ci_hi']:.1f})."
           if ip else "the policy before fine-tuning: not generated yet (notebook 05 writes it)."),
    ]
    reading += resolution_lines(s)
    rm = s.get("reward_models")
    if rm:
        ov = rm["overall"]
        accs = " / ".join(f"{m} {100 * v['accuracy']['value']:.0f}%" for m, v in ov.items() if "accuracy" in v)
        first = next(iter(ov.values()))
        extra = ""
        if "length_baseline" in first:
            extra += f"; length baseline {100 * first['length_baseline']['value']:.0f}%"
        if "oa_accuracy" in first:
            extra += f"; the OpenAssistant 6.9B RM {100 * first['oa_accuracy']['value']:.0f}% on the same pairs"
        reading.append(f"- Held-out pairwise accuracy against the human labels: {accs}{extra}.")
    else:
        reading.append("- Reward-model accuracies: not generated yet (notebook 03 writes them).")
    if "augmentation" in s["diversity"]:
        aug = s["diversity"]["augmentation"]
        reading.append("- d of the augmentation sets: " + ", ".join(
            f"{m} {v['d']:.2f} ({v['n_prompts']} prompts)" for m, v in aug.items()) + ".")
    return "\n".join(rows + reading)


def short_answer_link(rs) -> str:
    """How strongly a run's reward follows its share of very short answers, in words, from the within-cell r
    of each algorithm: "follows" (every |r| >= 0.5), "hardly follows" (every |r| < 0.3), else "partly follows"."""
    rs = [abs(r) for r in rs if r is not None and math.isfinite(r)]
    if rs and min(rs) >= 0.5:
        return "follows"
    if rs and max(rs) < 0.3:
        return "hardly follows"
    return "partly follows"


def resolution_lines(s: dict) -> list[str]:
    """What the study can and cannot resolve, from summary.json: design, variance, MDEs, fine-tuning, β."""
    out = []
    lo, hi = s["paper"]["equal_budget_effect_range"]
    d = s.get("design")
    if d:
        out.append(f"- Design: {d['cells']} cells over {d['sizes'][0]}–{d['sizes'][-1]} prompts "
                   f"({d['size_ratio']:.0f}×), {d['seeds_per_cell_min']} seed{'s' if d['seeds_per_cell_min'] != 1 else ''} a cell and "
                   f"{d['seeds_per_cell_max']} on the verdict cells ({', '.join(d['verdict_cells'])}); "
                   + (f"{d['max_steps']} steps × {d['prompts_per_step']} prompts pass over the largest subset "
                      f"{d['passes_over_largest']:.1f}×; checkpoint: {d['checkpoint']}." if "max_steps" in d else ""))
    v = s.get("variance") or {}
    if v:
        out.append("- Where the variance is: one run's SE over test prompts "
                   + " / ".join(f"{x.get('eval_se', math.nan):.1f}" for x in v.values())
                   + " against a seed SD of " + " / ".join(f"{x['seed_sd']:.1f}" for x in v.values())
                   + f" ({' / '.join(a.upper() for a in v)}); within a cell the reward "
                   + short_answer_link([x.get("short_answer_r") for x in v.values()])
                   + " the share of very short answers (r = "
                   + " / ".join(f"{x.get('short_answer_r', math.nan):+.2f}" for x in v.values())
                   + "): training, not evaluation, sets the noise.")
    m = s.get("mde_reached") or {}
    if m:
        parts = [f"{cid.replace('equal_budget/', 'equal budget ').replace('same_prompts/', 'same prompts ')} "
                 f"{_f(val)}" for cid, val in m.items()
                 if val is not None and (cid.endswith("n4-n2") or cid.endswith("n4-n2 seed-blocked"))]
        best = min((val for cid, val in m.items() if val is not None and "n4-n2" in cid), default=math.nan)
        verdict = ("so an effect of the paper's size cannot be resolved here" if best > hi else
                   "so effects of the paper's size are within reach" if best <= lo else
                   "so only the largest of the paper's effects could be seen")
        out.append(f"- Minimum detectable n = 4 − n = 2 effects reached (points): {'; '.join(parts)}; the paper's "
                   f"are {lo:.1f}–{hi:.1f}, {verdict}.")
    f = s.get("fine_tuned_vs_initial")
    if f:
        out.append("- Does fine-tuning help? Mean fine-tuned − initial policy: " + "; ".join(
            f"{a.upper()} {_ci(c)}" for a, c in f.items()) + ".")
    cr = s.get("cold_run")
    if cr:
        out.append(f"- A cold `make figures` ({cr.get('note') or 'fresh clone, empty caches, one uninterrupted run'}) "
                   f"took {cr['wall_s'] / 60:.1f} min wall on {cr['cores']} cores, {(cr['user_s'] + cr['system_s']) / 60:.1f} "
                   f"CPU-min ({100 * cr['cpu_utilisation'] / cr['cores']:.0f}% of the cores), measured with "
                   "`/usr/bin/time -v`.")
    b = s.get("beta_ablation")
    if b:
        for cell in b["cells"].values():
            if cell["n"] != 4:
                continue
            arms = cell["arms"]
            txt = ", ".join(f"w = {w} (β = {a['beta']:g}) {a['mean']:.1f} [ranking-term gradient share "
                            f"{100 * a['grad_share_rank']:.0f}%]" for w, a in arms.items() if w != "sft")
            if "sft" in arms:
                txt += f", SFT {arms['sft']['mean']:.1f}"
            con = "; ".join(f"{name}: {_ci(c)}" for name, c in cell["contrasts"].items())
            out.append(f"- PRO's β at n = 4, {cell['n_prompts']} prompts (mean reward of seeds): {txt}. Paired by "
                       f"seed (sft_weight a − b): {con}.")
    return out


def _markers(recipe: str) -> tuple[str, str]:
    return f"<!-- results:{recipe}:start -->", f"<!-- results:{recipe}:end -->"


def readme_block(text: str, recipe: str) -> str | None:
    start, end = _markers(recipe)
    if start not in text or end not in text:
        return None
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")


def update_readme(summary: dict, readme: str | os.PathLike | None = None) -> bool:
    """Re-render the README block of ``summary['recipe']``; True when the file changed."""
    path = Path(readme or paths.ROOT / "README.md")
    text = path.read_text()
    start, end = _markers(summary["recipe"])
    if readme_block(text, summary["recipe"]) is None:
        raise DataError(f"{path}: no {start} … {end} markers to render the results into")
    new = text.split(start, 1)[0] + start + "\n" + render_readme_block(summary) + "\n" + end + \
        text.split(end, 1)[1]
    if new != text:
        atomic_write_text(path, new)
    return new != text


def readme_agrees(summary: dict, readme: str | os.PathLike | None = None) -> bool:
    path = Path(readme or paths.ROOT / "README.md")
    return readme_block(path.read_text(), summary["recipe"]) == render_readme_block(summary)


# ------------------------------------------------------------------------------------------- the command


def command(args: argparse.Namespace) -> int:
    recipe = Path(args.recipe).stem
    if args.check:
        fresh = build_summary(recipe, args.results)
        stored = load_summary(recipe, args.results)
        if fresh != stored:
            print(f"summary.json of {recipe} is out of date: run `divscale summarize --recipe {recipe}`")
            return 1
        if not readme_agrees(stored):
            print(f"README results block of {recipe} disagrees with summary.json: run with --readme")
            return 1
        print(f"summary.json and README agree ({recipe})")
        return 0
    if args.cold_run:
        print(write_cold_run(recipe, args.cold_run, args.cold_run_note, args.results))
    path = write_summary(recipe, args.results)
    print(path)
    if args.readme:
        changed = update_readme(json.loads(path.read_text()))
        print("README.md " + ("updated" if changed else "unchanged"))
    return 0
