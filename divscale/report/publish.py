"""``divscale summarize``: every number the README and the notebooks quote, in one generated file.

``results/<recipe>/summary.json`` is built from the committed tables and the small files the notebooks
write beside them (nothing is typed by hand):

    runs.csv                      the grid (divscale grid)                                           required
    beta_ablation.csv             the grid's β-ablation cells (divscale grid)                         optional
    augmentation.csv              07_augmentation                                                     optional
    selection.csv                 08_selection                                                        optional
    initial_policy.json           05_allocation (:func:`write_initial_policy`)                        optional
    answers.jsonl                 05_allocation (:func:`divscale.study.pipeline.write_answers`)       optional
    reports/reward_models.csv     03_reward_models (:func:`write_rm_report`)                         optional
    reports/rm_agreement.json     03_reward_models (:func:`write_rm_agreement`)                      optional
    listwise.csv                  09_listwise (:mod:`divscale.study.listwise`, its head-to-head)     optional
    reports/cold_run.json         a timed cold `make figures` (summarize --cold-run)                 optional
    reports/environment.json      the machine that made the runs (:func:`record_environment`)         optional

Top-level keys of summary.json (schema version :data:`SCHEMA_VERSION`); every contrast is an object with
estimate, ci_lo, ci_hi, se, df, mde, test, n_a, n_b, mean_a, mean_b, status, direction (reward ×100):

    schema, recipe, generated_by, scale, inputs {file: sha256[:16]}, missing [inputs not found]
    environment     provenance.environment() of the machine that made the runs (lock hash, library versions,
                    CPU, threads), recorded once per runs.csv (null when not recorded)
    design          sizes, size_ratio, cells, replicates per cell (min/max), verdict cells, redraw_per_seed and
                    the draws in the table, the step budget and its passes, checkpoint rule, the RMs' design,
                    primary (the declaration)
    runs            n_runs, algos, sizes, seeds, eval_keys, reward mean/min/max, cell_spread, pooled_seed_sd {algo}
    initial_policy  reward_global, ci_lo, ci_hi, ci_method                                  (or null)
    primary         the declared primary contrast (recipe grid.primary): declared {algo, budget, n_hi, n_lo,
                    k_hi, k_lo}, cells {n<n>_k<k>: runs, mean, seeds}, total / prompts / length {contrast, part,
                    comparison, paper_sign}, gap (total − the parts), paper [Table 1's split of every setting of the
                    algorithm], paper_signs, paper_range {part: [min, max]}, fine_tuned_vs_initial {cell: contrast}
                    (or null: no declaration, or its cells are not in runs.csv)
    reward_models   overall {model: {metric: {value, ci_lo, ci_hi, n}}}, by_subset {model: {subset: {metric: ...}}},
                    chance_subsets, agreement {held_out_pairs, rankings4} (RM_train vs RM_test): fractions (0–1),
                    Wilson 95% CIs                                                            (or null)
    variance        by_algo {algo: eval_se, seed_sd, short_answer_r}; primary_cells (replicate SD, one run's
                    bootstrap SE and its share eval_se²/sd², per primary cell and pooled)
    mde_reached     {id: MDE}: primary/total, primary/prompts, primary/length, then the secondary contrasts
    fine_tuned_vs_initial  {algo: contrast of the runs' mean reward against the initial policy's (one-sample t)}
    contrasts       the secondary contrasts {id: contrast | role "secondary"}: equal_budget/<algo>/<B>/n<n>-n2 (Welch;
                    not the primary), same_prompts/<algo>/k<k>/n4-n2 (paired by seed; not the primary's length part),
                    augmentation/<algo>/<a> - <b>, selection/<algo>/<strategy> - random (Welch, with the arms'
                    median prompt tokens where the table has them)
    secondary       n_tests (every secondary test with a CI), by_notebook {notebook: n}, note
    paper           equal-budget effect range, Table 1 diagonal cells and cells of the primary's shape, its
                    decomposition (every setting), printed and refit MSEs, d growth
    regression      {algo: {d|n_prompts: mean_mse, mean_r2, slope counts, lines {n: slope, CI, r2, mse, n_points},
                    without_smallest (the counts without the smallest size's runs)}}
    exponent        {ours|paper: {algo: {best_p, best_p_any_slope, rule}}}
    diversity       ours {k: d}, growth, augmentation d by method
    beta_ablation   PRO's sft_weight ablation (beta_ablation.csv): per cell, each arm on the seeds every arm has,
                    paired contrasts with their win counts                                   (or null)
    answers         what answers.jsonl holds (rows, prompts, policies)                        (or null)
    listwise        09's block (:func:`listwise_summary` of listwise.csv, secondary)                    (or null)
    cold_run        wall_s, user_s, system_s, cores, cpu_utilisation, note of a timed cold run (or null)
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

SCHEMA_VERSION = 2
SCALE = "reward ×100 = 100 · mean sigmoid(RM_test logit), in [0, 100]; slopes in points per unit x; MSE in points²"
AUGMENT_PAIRS = [("base + diverse", "base + random"), ("base + diverse", "base only"), ("base + random", "base only")]
SECONDARY_NOTE = ("secondary / exploratory: every test other than the declared primary contrast, reported with its "
                  "CI and MDE and no correction for multiplicity; a CI that excludes 0 here is a hypothesis for a new "
                  "study, not a finding")
# which notebook reports which secondary family
NOTEBOOK_OF = {"equal_budget": "05_allocation", "same_prompts": "05_allocation", "fine_tuned": "05_allocation",
               "beta": "05_allocation", "regression": "06_diversity_regression", "augmentation": "07_augmentation",
               "selection": "08_selection", "listwise": "09_listwise"}

# not tables of runs (no eval_dir): kept out of results/<recipe>/*.csv, which hold only run tables
RM_REPORT = "reports/reward_models.csv"
RM_AGREEMENT = "reports/rm_agreement.json"
COLD_RUN = "reports/cold_run.json"
ENVIRONMENT = "reports/environment.json"
ANSWERS = "answers.jsonl"
# Notebook 09's head-to-head table (divscale.study.listwise): summarize turns it into summary["listwise"]
# (listwise_summary, role "secondary") and counts as secondary tests its contrasts that have a CI.
LISTWISE = "listwise.csv"


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


def write_rm_agreement(recipe: str, held_out_pairs: dict, rankings4: dict | None,
                       out_dir: str | os.PathLike | None = None) -> Path:
    """03_reward_models: RM_train against RM_test, the proxy against the judge
    (:func:`divscale.reward.rm.preference_agreement` on the held-out test pairs,
    :func:`divscale.reward.rm.ranking_agreement` of RM_test on the grid's 4-rankings that RM_train ordered)."""
    for key in ("value", "ci95", "n"):
        if key not in held_out_pairs:
            raise DataError(f"write_rm_agreement: held_out_pairs has no {key!r}; pass preference_agreement's output")
    path = Path(out_dir or results_dir(recipe)) / RM_AGREEMENT
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, _clean({"held_out_pairs": held_out_pairs, "rankings4": rankings4}))
    return path


def record_environment(folder: str | os.PathLike, force: bool = False) -> Path | None:
    """``reports/environment.json``: :func:`divscale.provenance.environment` of this machine, with the sha of the
    runs.csv it describes. Written by the first ``summarize`` after runs.csv changed (the last step of
    ``make figures``, on the machine that made the runs) and kept while runs.csv stays the same, so a summary
    rebuilt elsewhere still names the machine of the runs. None when there is no runs.csv."""
    from divscale.provenance import environment

    folder = Path(folder)
    runs = folder / "runs.csv"
    if not runs.exists():
        return None
    path = folder / ENVIRONMENT
    sha = file_sha256(runs, 16)
    if path.exists() and not force:
        try:
            if json.loads(path.read_text()).get("runs_csv") == sha:
                return path
        except json.JSONDecodeError:
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"runs_csv": sha} | environment())
    return path


# ------------------------------------------------------------------------------------------- building blocks

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
    (fresh clone, empty caches), with the machine's core count and a note on how it was run. The environment
    of that machine is recorded beside it (:func:`record_environment`, replacing an older record)."""
    info = parse_gnu_time(Path(time_report).read_text())
    if info["exit_status"] != 0:
        raise DataError(f"{time_report}: the timed command exited with status {info['exit_status']}; a failed run "
                        "is not a timing")
    info |= {"cores": os.cpu_count(), "note": note}
    folder = Path(out_dir or results_dir(recipe))
    path = folder / COLD_RUN
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, info)
    record_environment(folder, force=True)
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


def _has_ci(c: dict | None) -> bool:
    return bool(c) and not c.get("identical") and c.get("ci_lo") is not None and c.get("ci_hi") is not None \
        and all(math.isfinite(c[k]) for k in ("ci_lo", "ci_hi"))


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


# ------------------------------------------------------------------------------------------- the primary contrast

def primary_declaration(primary) -> dict | None:
    """The recipe's ``grid.primary`` (a :class:`divscale.config.PrimaryContrast` or a dict of its fields) as a
    dict with the three cells' prompt counts; None when nothing is declared."""
    if primary is None:
        return None
    p = primary if isinstance(primary, dict) else {k: getattr(primary, k) for k in ("algo", "budget", "n_hi", "n_lo")}
    if p.get("budget") is None:
        return None
    budget, n_hi, n_lo = int(p["budget"]), int(p["n_hi"]), int(p["n_lo"])
    return {"algo": p["algo"], "budget": budget, "n_hi": n_hi, "n_lo": n_lo, "k_hi": budget // n_hi,
            "k_lo": budget // n_lo}


def primary_block(runs: pd.DataFrame, declared: dict | None, initial: dict | None = None) -> dict | None:
    """The declared primary contrast on the runs: :func:`analysis.primary_decomposition` (total and both parts,
    each with CI, MDE, test and direction against the sign the paper's Table 1 gives it), the range of the
    paper's own split over its settings, and each cell's gain over the initial policy. None when nothing is
    declared or the table lacks one of the three cells (e.g. a table from before the declaration)."""
    if declared is None:
        return None
    try:
        dec = analysis.primary_decomposition(runs, declared["algo"], declared["budget"], declared["n_hi"],
                                             declared["n_lo"])
    except ValueError:
        return None
    paper = pd.DataFrame(dec["paper"])
    dec["paper_range"] = {part: [float(paper[part].min()), float(paper[part].max())] if len(paper) else None
                          for part in analysis.PARTS}
    dec["declared"] = declared
    if initial:
        data = runs[runs["algo"] == declared["algo"]]
        dec["fine_tuned_vs_initial"] = {
            name: fine_tuned_contrast(data[(data["ranking_len"] == n) & (data["n_prompts"] == k)]["reward_global"],
                                      initial)
            for name, (n, k) in _primary_cells(declared).items()}
    return dec


def declaration_markdown(declared: dict | None, recipe: str) -> str:
    """The primary contrast as a reader sees it at the top of 05, generated from the recipe (not typed)."""
    if declared is None:
        return (f"**No primary contrast is declared** in `recipes/{recipe}.yaml` (`grid.primary`): every contrast "
                "below is secondary / exploratory.")
    d = declared
    return (f"**The declared primary contrast** (`recipes/{recipe}.yaml`, `grid.primary`, fixed before the runs): "
            f"{d['algo'].upper()} at an equal budget of {d['budget']:,} responses, the cell (n = {d['n_hi']}, "
            f"{d['k_hi']} prompts) minus the cell (n = {d['n_lo']}, {d['k_lo']} prompts). Its two parts, which add up "
            f"to it: the **prompt-count part** (n = {d['n_lo']}, {d['k_hi']} prompts) minus (n = {d['n_lo']}, "
            f"{d['k_lo']} prompts), and the **ranking-length part** (n = {d['n_hi']}, {d['k_hi']} prompts) minus "
            f"(n = {d['n_lo']}, {d['k_hi']} prompts). Tests: Welch's t for the total and the prompt-count part "
            "(different prompts: independent runs), a paired t by replicate for the ranking-length part (same "
            "prompts, data draw and order); 95% CIs; the MDE at 80% power and α = 0.05 beside each.")


def primary_table(dec: dict) -> pd.DataFrame:
    """The primary contrast and its parts as a table (one row a part): estimate, CI, MDE, test, runs, direction
    against the sign the paper's Table 1 gives the part, and the range of that part over the paper's settings."""
    rows = []
    paper = pd.DataFrame(dec["paper"])
    for part in analysis.PARTS:
        c = dec[part]
        rows.append({"part": PART_NAMES[part], "comparison": c["comparison"], "estimate": c["estimate"],
                     "ci_lo": c["ci_lo"], "ci_hi": c["ci_hi"], "mde": c["mde"], "test": c["test"],
                     "runs": f"{c['n_a']} / {c['n_b']}", "direction": c["direction"],
                     "paper_min": paper[part].min() if len(paper) else None,
                     "paper_max": paper[part].max() if len(paper) else None})
    return pd.DataFrame(rows).set_index("part")


def _primary_cells(declared: dict) -> dict[str, tuple[int, int]]:
    """{"n4_k60": (4, 60), ...} in the order hi, lo, mid: the total's two cells, then the parts' shared one."""
    cells = [(declared["n_hi"], declared["k_hi"]), (declared["n_lo"], declared["k_lo"]),
             (declared["n_lo"], declared["k_hi"])]
    return {f"n{n}_k{k}": (n, k) for n, k in cells}


def fine_tuned_contrast(values, initial: dict) -> dict:
    """Mean fine-tuned reward minus the initial policy's (one-sample t over the runs), with a direction."""
    c = stats.versus_reference(values, initial["reward_global"])
    return c | {"direction": "above the initial policy" if c["estimate"] > 0 else "below the initial policy"}


# ------------------------------------------------------------------------------------------- secondary contrasts

def secondary_contrasts(runs: pd.DataFrame | None, budgets=(), declared: dict | None = None,
                        augmentation: pd.DataFrame | None = None, selection: pd.DataFrame | None = None) -> dict:
    """Every contrast other than the primary's three, each labelled ``role: secondary``: equal-budget n − n_lo
    (Welch: the cells hold different prompts), same-prompts n4 − n2 (paired by seed), augmentation and selection
    arms (Welch, with the arms' median prompt tokens where the tables have them)."""
    out = {}
    p = declared or {}
    for algo, g in (runs.groupby("algo") if runs is not None else []):
        for budget in budgets:
            try:
                welch = analysis.more_responses_beat_more_prompts(g, budget, method="welch")
            except ValueError:
                continue
            for n in (4, 3):
                c = welch[f"contrast_{n}_vs_2"]
                if c is None or (algo == p.get("algo") and budget == p.get("budget") and n == p.get("n_hi")
                                 and p.get("n_lo") == 2):
                    continue
                out[f"equal_budget/{algo}/{budget}/n{n}-n2"] = c | {"algo": algo, "family": "equal_budget"}
        for k in sorted(g["n_prompts"].unique()):
            runs_at = g[g["n_prompts"] == k]["ranking_len"].value_counts()
            if not (runs_at.get(2, 0) >= 2 and runs_at.get(4, 0) >= 2) or (algo == p.get("algo") and int(k) == p.get("k_hi") and p.get("n_hi") == 4
                                      and p.get("n_lo") == 2):
                continue
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
                    extra = {"n_prompts": sizes}
                    if "prompt_tokens_median" in g.columns and g["prompt_tokens_median"].notna().any():
                        extra["prompt_tokens_median"] = {arm: float(g[g[by] == arm]["prompt_tokens_median"].median())
                                                         for arm in (a, b)}
                    out[f"{name}/{algo}/{a} - {b}"] = c | {"algo": algo, "family": name} | extra
    return {cid: c | {"role": "secondary"} for cid, c in out.items()}


def count_tests(contrasts) -> int:
    """How many of ``contrasts`` (dicts or a {id: dict}) are tests: a CI, not identical arms."""
    values = contrasts.values() if isinstance(contrasts, dict) else contrasts
    return sum(1 for c in values if _has_ci(c))


def secondary_tests(summary: dict) -> dict:
    """How many secondary tests the summary reports (a contrast or slope with a CI), in total and by the
    notebook that reports them (:data:`NOTEBOOK_OF`)."""
    by = {}

    def add(family, n=1):
        nb = NOTEBOOK_OF[family]
        by[nb] = by.get(nb, 0) + n

    for c in summary["contrasts"].values():
        if _has_ci(c):
            add(c["family"])
    for r in summary["regression"].values():
        add("regression", sum(1 for line in r["d"]["lines"].values() if line.get("slope_lo") is not None))
    for c in (summary.get("fine_tuned_vs_initial") or {}).values():
        if _has_ci(c):
            add("fine_tuned")
    for c in ((summary.get("primary") or {}).get("fine_tuned_vs_initial") or {}).values():
        if _has_ci(c):
            add("fine_tuned")
    for cell in ((summary.get("beta_ablation") or {}).get("cells") or {}).values():
        for c in cell["contrasts"].values():
            if _has_ci(c):
                add("beta")
    for c in (((summary.get("listwise") or {}).get("contrasts")) or {}).values():
        if _has_ci(c):
            add("listwise")
    by = {nb: by[nb] for nb in sorted(by)}
    return {"n_tests": sum(by.values()), "by_notebook": by, "note": SECONDARY_NOTE}


# ------------------------------------------------------------------------------------------- the other blocks

def regression_block(runs: pd.DataFrame) -> dict:
    """Per algorithm, the per-n lines of reward on d and on #prompts: MSEs, slope counts (also without the smallest
    size's runs) and each line."""
    out = {}
    for algo, g in runs.groupby("algo"):
        out[algo] = {}
        smallest = int(g["n_prompts"].min())
        for x in ("d", "n_prompts"):
            fits = analysis.fit_lines(g, x=x, y="reward_global", by="ranking_len", aggregate=False)
            counts = analysis.slope_counts(fits)
            out[algo][x] = {"mean_mse": analysis.mean_mse(fits), "mean_r2": float(fits["r2"].mean()),
                            "negative_slopes": counts["negative_slopes"],
                            "slope_ci_above_0": counts["slope_ci_above_0"],
                            "slope_ci_below_0": counts["slope_ci_below_0"],
                            "smallest_size": smallest,
                            "runs_at_smallest": int((g["n_prompts"] == smallest).sum()),
                            "without_smallest": analysis.slopes_without_size(g, smallest, x=x),
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


def _paper_block(declared: dict | None) -> dict:
    lo, hi = analysis.paper_effect_range()
    t1 = analysis.paper_table1_long()
    t1 = t1[(t1["model"] == "OPT-1.3B") & (t1["split"] == "Global")]
    refit = analysis.refit_paper(scale=1.0)
    div = analysis.paper_diversity().set_index("n_prompts")["d"]
    n_hi, n_lo = (declared["n_hi"], declared["n_lo"]) if declared else (4, 2)
    decomposition = analysis.paper_budget_decomposition(n_hi, n_lo)
    cells = {f"{r.algo}/{int(r.budget_group)}/n{int(r.ranking_len)}_k{int(r.n_prompts)}": r.reward
             for r in t1.itertuples()}
    return {"equal_budget_effect_range": [lo, hi],
            "table1_diagonal": {f"{r.algo}/{int(r.budget_group)}/n{int(r.ranking_len)}": r.reward
                                for r in t1[t1["diagonal"]].itertuples()},
            "table1_cells": cells,
            "decomposition": decomposition.to_dict("records"),
            "decomposition_signs": analysis.paper_part_signs(n_hi, n_lo),
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


def _metric_block(g: pd.DataFrame) -> dict:
    return {r.metric: {"value": r.value, "ci_lo": r.ci_lo, "ci_hi": r.ci_hi, "n": int(r.n)} for r in g.itertuples()}


def _reward_models(report: pd.DataFrame | None, agreement: dict | None) -> dict | None:
    """The RM validity table: each RM against the human labels (and the length baseline, the 6.9B's agreement
    and the 6.9B's own accuracy on the same pairs) overall and by subset, and RM_train against RM_test."""
    if report is None and agreement is None:
        return None
    out = {"scale": "fraction of held-out test pairs (0–1), Wilson 95% CI", "overall": {}, "by_subset": {},
           "chance_subsets": [], "agreement": agreement}
    if report is not None:
        order = sorted(pd.unique(report["model"]), key=lambda m: (m != "RM_test", m != "RM_train", m))
        for model in order:
            g = report[report["model"] == model]
            out["overall"][model] = _metric_block(g[g["subset"] == "all"])
            out["by_subset"][model] = {s: _metric_block(gs) for s, gs in g[g["subset"] != "all"].groupby("subset")}
        acc = report[(report["metric"] == "accuracy") & (report["subset"] != "all")]
        chance = acc[(acc["ci_lo"] <= 0.5) & (acc["ci_hi"] >= 0.5)]
        out["chance_subsets"] = [{"model": r.model, "subset": r.subset, "accuracy": r.value}
                                 for r in chance.itertuples()]
    return out


def fine_tuned_vs_initial(runs: pd.DataFrame, initial: dict | None) -> dict | None:
    """Per algorithm: the mean fine-tuned test reward over the grid's runs minus the initial policy's."""
    if not initial:
        return None
    return {algo: fine_tuned_contrast(g["reward_global"], initial) for algo, g in runs.groupby("algo")}


def _design(recipe: str, runs: pd.DataFrame, declared: dict | None) -> dict:
    """How the grid spends its runs, from the table: replicates per cell, the size range, the draws, the step
    budget's reach, the RMs' design, and the declaration of the primary contrast."""
    per_cell = runs.groupby(["algo", "ranking_len", "n_prompts"]).size()
    sizes = sorted(int(k) for k in runs["n_prompts"].unique())
    draws = sorted(int(v) for v in runs["draw"].dropna().unique()) if "draw" in runs.columns else []
    out = {"sizes": sizes, "size_ratio": sizes[-1] / sizes[0] if sizes else None,
           "seeds_per_cell_min": int(per_cell.min()), "seeds_per_cell_max": int(per_cell.max()),
           "cells": len(per_cell), "algos": sorted(runs["algo"].unique()),
           "ranking_lengths": sorted(int(n) for n in runs["ranking_len"].unique()),
           "verdict_cells": sorted({f"n{n}-k{k}" for (_, n, k), v in per_cell.items() if v == per_cell.max()}),
           "draws": len(draws), "primary": declared}
    try:
        from divscale.config import load_recipe

        r = load_recipe(recipe)
        t = r.train
        out |= {"max_steps": t.max_steps, "prompts_per_step": t.prompts_per_step, "checkpoint": t.checkpoint,
                "passes_over_largest": t.max_steps * t.prompts_per_step / sizes[-1] if sizes else None,
                "passes": {int(k): t.max_steps * t.prompts_per_step / k for k in sizes},
                "redraw_per_seed": r.data.redraw_per_seed,
                "reward": {"design": r.reward.design, "train_share": getattr(r.reward, "train_share", None)},
                "warmup_steps": r.policy.warmup_steps}
    except (FileNotFoundError, DataError, ValueError):
        pass
    return out


def _mde_reached(primary: dict | None, contrasts: dict) -> dict:
    """The MDE of the primary contrast and its parts, then of each secondary contrast, by id."""
    out = {}
    if primary:
        for part in analysis.PARTS:
            out[f"primary/{part}"] = primary[part].get("mde")
    for cid, c in contrasts.items():
        if c.get("family") in ("equal_budget", "same_prompts") and not c.get("identical"):
            out[cid] = c.get("mde")
    return out


def beta_ablation_summary(folder: Path, runs: pd.DataFrame, budgets) -> dict | None:
    """PRO's β ablation at the equal-budget cells: per cell and sft_weight, the mean reward (bounded t interval)
    and the ranking term's gradient share *on the seeds every arm of the cell has* (a line that averages one arm
    over 2 seeds and another over 16 compares different seeds), beside SFT on the same prompts; contrasts paired
    by seed (same k and seed: same prompts, same order, same initial weights), the paper's β against each other
    weight and against SFT, each with how many of its pairs went which way."""
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
            if cell.empty or cell["sft_weight"].nunique() < 2:
                continue
            groups = [set(g["seed"]) for _, g in cell.groupby("sft_weight")] + ([set(sft["seed"])] if len(sft) else [])
            common = sorted(set.intersection(*groups))
            cell, sft = cell[cell["seed"].isin(common)], sft[sft["seed"].isin(common)]
            arms = {}
            for w, g in cell.groupby("sft_weight"):
                mean, lo, hi = stats.bounded_interval(g["reward_global"])      # inside [0, 100]
                share = g["grad_share_rank"].mean() if "grad_share_rank" in g else math.nan
                g = g.sort_values("seed")
                arms[f"{float(w):g}"] = {"mean": mean, "ci_lo": lo, "ci_hi": hi, "runs": len(g),
                                         "grad_share_rank": share, "beta": float(w) * (n - 1) ** 2,
                                         "values": {int(sd): float(v) for sd, v in zip(g["seed"], g["reward_global"])}}
            if not sft.empty:
                mean, lo, hi = stats.bounded_interval(sft["reward_global"])
                arms["sft"] = {"mean": mean, "ci_lo": lo, "ci_hi": hi, "runs": len(sft),
                               "values": {int(sd): float(v) for sd, v in zip(sft["seed"], sft["reward_global"])}}
            entry = {"n": n, "n_prompts": k, "budget": budget, "seeds": [int(s) for s in common], "arms": arms,
                     "contrasts": {}}
            paper_runs = cell[cell["sft_weight"] == paper_w]
            others = [(f"{paper_w:g} - {float(w):g}", g, "the paper's β") for w, g in cell.groupby("sft_weight")
                      if float(w) != paper_w]
            others += [(f"{paper_w:g} - sft", sft, "PRO with the paper's β")] if not sft.empty else []
            for name, g, what in others:
                if paper_runs.empty:
                    continue
                c = stats.paired_contrast(paper_runs, g, "reward_global")
                entry["contrasts"][name] = c | {"direction": _above(c, what),
                                                "wins": analysis.paired_wins(paper_runs, g)}
            out["cells"][f"{budget}/n{n}"] = entry
    return out if out["cells"] else None


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


def _answers(path: Path) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {"file": ANSWERS, "rows": len(rows), "prompts": len({(r.get("subset"), r.get("index")) for r in rows}),
            "policies": list(dict.fromkeys(r.get("policy") for r in rows))}


def verdicts(summary: dict) -> list[str]:
    """The study's verdicts as sentences, from summary.json alone (what notebooks print, README renders): the
    primary contrast and its parts first, then each secondary contrast, labelled."""
    out = []
    p = summary.get("primary")
    if p:
        d = p["declared"]
        for part, label in (("total", (f"{d['algo'].upper()}, primary, equal budget {d['budget']:,} responses, "
                                      f"(n={d['n_hi']}, k={d['k_hi']}) − (n={d['n_lo']}, k={d['k_lo']})")),
                            ("prompts", (f"primary, prompt-count part (n={d['n_lo']}, k={d['k_hi']}) − "
                                        f"(n={d['n_lo']}, k={d['k_lo']})")),
                            ("length", (f"primary, ranking-length part (n={d['n_hi']}, k={d['k_hi']}) − "
                                       f"(n={d['n_lo']}, k={d['k_hi']})"))):
            lo, hi = p["paper_range"][part] or (None, None)
            out.append(analysis.contrast_sentence(label, _nan(p[part])).rstrip(".")
                       + (f"; the paper's Table 1 gives {lo:+.2f} to {hi:+.2f}." if lo is not None else "."))
    for cid, c in summary["contrasts"].items():
        fam = c.get("family")
        if fam == "equal_budget":
            algo, budget, comp = cid.split("/")[1:]
            label = f"secondary: {algo.upper()}, equal budget {int(budget):,} responses, {comp.replace('-', ' − ')}"
        elif fam == "same_prompts":
            algo, k, comp = cid.split("/")[1:]
            label = f"secondary: {algo.upper()}, same {k[1:]} prompts, {comp.replace('-', ' − ')}"
        else:
            algo, comp = cid.split("/")[1], cid.split("/", 2)[2]
            label = f"secondary: {algo.upper()}, {fam}: {comp.replace(' - ', ' − ')}"
        out.append(analysis.contrast_sentence(label, _nan(c)))
    for algo, r in summary["regression"].items():
        rd, rn = r["d"], r["n_prompts"]
        out.append(f"secondary: {algo.upper()}: {slope_phrase(rd)}; the mean MSE on d ({rd['mean_mse']:.2f} points²) "
                   f"is {'smaller' if rd['mean_mse'] < rn['mean_mse'] else 'larger'} than on #prompts "
                   f"({rn['mean_mse']:.2f}).")
    return out


def slope_phrase(rd: dict) -> str:
    """The per-n slopes of reward on d in words: how many are negative, how many have a CI above and below 0,
    and the same without the smallest size's runs (whether the verdict rests on them)."""
    n = len(rd["lines"])
    text = (f"{rd['negative_slopes']} of {n} per-n slopes of reward on d are negative, {rd['slope_ci_below_0']} with a "
            f"CI below 0 and {rd['slope_ci_above_0']} with a CI above 0")
    w = rd.get("without_smallest")
    if w:
        text += (f"; without the {rd['runs_at_smallest']} run{'s' if rd['runs_at_smallest'] != 1 else ''} at "
                 f"{rd['smallest_size']} prompts: {w['negative_slopes']} negative, {w['slope_ci_below_0']} with a CI "
                 f"below 0, {w['slope_ci_above_0']} above")
    return text


def build_summary(recipe: str, results: str | os.PathLike | None = None, budgets=None, primary=None) -> dict:
    """summary.json's content for ``recipe`` from ``results`` (default results/<recipe>/). ``budgets`` and
    ``primary`` (a PrimaryContrast or a dict) default to the recipe's grid.equal_budgets and grid.primary."""
    folder = Path(results or results_dir(recipe))
    runs_path = folder / "runs.csv"
    runs = _ok(analysis.load_results(runs_path))
    if runs.empty:
        raise DataError(f"{runs_path}: no ok runs to summarize")
    if budgets is None or primary is None:
        from divscale.config import load_recipe

        try:
            grid = load_recipe(recipe).grid
        except (FileNotFoundError, DataError, ValueError):
            grid = None
        if budgets is None:
            budgets = list(grid.equal_budgets) if grid else []
        if primary is None and grid is not None:
            primary = grid.primary
    declared = primary_declaration(primary)
    inputs, missing = {"runs.csv": file_sha256(runs_path, 16)}, []

    def optional(name, read):
        path = folder / name
        if not path.exists():
            missing.append(name)
            return None
        inputs[name] = file_sha256(path, 16)
        return read(path)

    read_json = lambda p: json.loads(p.read_text())
    beta = optional("beta_ablation.csv", lambda p: p)
    augmentation = optional("augmentation.csv", pd.read_csv)
    selection = optional("selection.csv", pd.read_csv)
    initial = optional("initial_policy.json", read_json)
    answers = optional(ANSWERS, _answers)
    report = optional(RM_REPORT, pd.read_csv)
    agreement = optional(RM_AGREEMENT, read_json)
    listwise = optional(LISTWISE, pd.read_csv)
    cold = optional(COLD_RUN, read_json)
    env = optional(ENVIRONMENT, read_json)
    contrasts = secondary_contrasts(runs, budgets, declared, augmentation, selection)
    prim = primary_block(runs, declared, initial)
    summary = {
        "schema": SCHEMA_VERSION, "recipe": recipe, "generated_by": "divscale summarize", "scale": SCALE,
        "inputs": inputs, "missing": missing, "environment": env,
        "design": _design(recipe, runs, declared),
        "runs": _runs_block(runs), "initial_policy": initial, "primary": prim,
        "reward_models": _reward_models(report, agreement), "equal_budgets": list(budgets),
        "variance": {"by_algo": analysis.variance_sources(runs),
                     "primary_cells": (analysis.variance_decomposition(
                         runs[runs["algo"] == declared["algo"]], list(_primary_cells(declared).values()))
                         if prim else None)},
        "mde_reached": _mde_reached(prim, contrasts),
        "fine_tuned_vs_initial": fine_tuned_vs_initial(runs, initial),
        "contrasts": contrasts, "paper": _paper_block(declared),
        "regression": regression_block(runs),
        "exponent": {"ours": {a: exponent_summary(g) for a, g in runs.groupby("algo")},
                     "paper": {a: exponent_summary(g) for a, g in analysis.paper_fig4_points().groupby("algo")}},
        "diversity": _diversity(runs, augmentation),
        "beta_ablation": beta_ablation_summary(folder, runs, budgets) if beta is not None else None,
        "answers": answers,
        "listwise": (listwise_summary(listwise) | {"role": "secondary"}) if listwise is not None else None,
        "cold_run": cold,
    }
    summary = _clean(summary)
    summary["secondary"] = secondary_tests(summary)
    summary["verdicts"] = verdicts(summary)
    return summary


def write_summary(recipe: str, results: str | os.PathLike | None = None, budgets=None) -> Path:
    """Build and write ``results/<recipe>/summary.json`` atomically (temp file renamed on success), after
    recording this machine's environment for a runs.csv that has none yet (:func:`record_environment`)."""
    folder = Path(results or results_dir(recipe))
    record_environment(folder)
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

PART_NAMES = {"total": "equal budget", "prompts": "prompt-count part", "length": "ranking-length part"}


def _f(v, fmt="{:.1f}") -> str:
    return "—" if v is None else fmt.format(v)


def _pct(m: dict | None, n: bool = True) -> str:
    """A proportion with its Wilson CI, in percent: "58.0% [53.1, 62.7] of 400"."""
    if not m or m.get("value") is None:
        return "—"
    ci = f" [{100 * m['ci_lo']:.1f}, {100 * m['ci_hi']:.1f}]" if m.get("ci_lo") is not None else ""
    return f"{100 * m['value']:.1f}%{ci}" + (f" of {m['n']}" if n and m.get("n") is not None else "")


def _est(c: dict) -> str:
    """Estimate [95% CI], MDE: the form every contrast of the README takes."""
    if c.get("identical"):
        return "identical arms (same runs): no CI"
    ci = " (no CI)" if c.get("ci_lo") is None else f" [{c['ci_lo']:+.1f}, {c['ci_hi']:+.1f}]"
    return f"{c['estimate']:+.1f}{ci}" + ("" if c.get("mde") is None else f", MDE {c['mde']:.1f}")


def _excludes_0(c: dict) -> bool:
    return _has_ci(c) and (c["ci_lo"] > 0 or c["ci_hi"] < 0)


def _ci(c: dict) -> str:
    """A secondary contrast: estimate, CI and MDE, then what the CI says; a direction word only where the CI
    excludes 0 (a sign inside a CI that spans 0 is not a direction)."""
    if c.get("identical"):
        return _est(c)
    if not _has_ci(c):
        return _est(c) + ": one run on a side"
    return _est(c) + (f": CI excludes 0, {c['direction']}" if _excludes_0(c) else ": CI spans 0")


def _test(c: dict) -> str:
    t = str(c.get("test", ""))
    if t.startswith("Welch"):
        return f"Welch t, {c['n_a']} + {c['n_b']} runs"
    if t.startswith("paired"):
        return f"paired t by replicate, {c['n_a']} pairs"
    return t


def _cell(n: int, k: int) -> str:
    return f"({n}, {k})"


def primary_rows(s: dict) -> list[str]:
    """The primary contrast's table: ours (estimate, CI, MDE, test, direction) beside the paper's Table 1 split."""
    p, paper = s["primary"], s["paper"]
    d = p["declared"]
    hi, lo, mid = _cell(d["n_hi"], d["k_hi"]), _cell(d["n_lo"], d["k_lo"]), _cell(d["n_lo"], d["k_hi"])
    comps = {"total": f"{hi} − {lo}", "prompts": f"{mid} − {lo}", "length": f"{hi} − {mid}"}
    rows_p = [r for r in paper["decomposition"] if r["algo"] == d["algo"]]
    matched = [r for r in rows_p if r["model"] == "OPT-1.3B" and r["split"] == "Global"]
    budgets = " / ".join(f"{r['budget'] // 1000}k" for r in matched)
    out = [(f"| {d['algo'].upper()}, {d['budget']:,} responses, cells (n, #prompts) | this study: estimate [95% CI], "
           f"MDE (test) | the paper's Table 1: {d['algo'].upper()} OPT-1.3B Global at {budgets} responses; range over "
           f"its {len(rows_p)} {d['algo'].upper()} settings (one run a cell: no CI) |"), "|---|---|---|"]
    for part in analysis.PARTS:
        c = p[part]
        rng = p["paper_range"][part]
        out.append(f"| {PART_NAMES[part]}: {comps[part]} | {_est(c)} ({_test(c)}): "
                   f"{c['direction'] + ', CI excludes 0' if _excludes_0(c) else 'CI spans 0'} | "
                   + " / ".join(f"{r[part]:+.2f}" for r in matched) + f"; {rng[0]:+.2f} to {rng[1]:+.2f} |")
    cells = p["cells"]
    means = " / ".join(f"{cells[f'n{n}_k{k}']['mean']:.1f}" for n, k in
                       ((d["n_hi"], d["k_hi"]), (d["n_lo"], d["k_lo"]), (d["n_lo"], d["k_hi"])))
    runs = " / ".join(str(cells[f"n{n}_k{k}"]["runs"]) for n, k in
                      ((d["n_hi"], d["k_hi"]), (d["n_lo"], d["k_lo"]), (d["n_lo"], d["k_hi"])))
    table1 = paper.get("table1_cells", {})
    paper_means = []
    for r in matched:
        b = r["budget"]
        vals = [table1.get(f"{d['algo']}/{b}/n{n}_k{b // m}") for n, m in
                ((d["n_hi"], d["n_hi"]), (d["n_lo"], d["n_lo"]), (d["n_lo"], d["n_hi"]))]
        if all(v is not None for v in vals):
            paper_means.append(" / ".join(f"{v:.2f}" for v in vals) + f" ({b // 1000}k)")
    ip = s.get("initial_policy")
    out.append(f"| mean reward of {hi} / {lo} / {mid} | {means} ({runs} runs)"
               + (f"; the initial policy {ip['reward_global']:.1f} [{ip['ci_lo']:.1f}, {ip['ci_hi']:.1f}]" if ip else "")
               + f" | {'; '.join(paper_means) or '—'} |")
    gains = p.get("fine_tuned_vs_initial")
    if gains:
        out.append(f"| each cell − the initial policy: {hi} / {lo} / {mid} | "
                   + " / ".join(_est(gains[f"n{n}_k{k}"]) for n, k in
                                ((d["n_hi"], d["k_hi"]), (d["n_lo"], d["k_lo"]), (d["n_lo"], d["k_hi"])))
                   + " (one-sample t over the cell's runs) | — |")
    return out


RM_LABELS = {"RM_test": "RM_test (the judge: scores every test answer)",
             "RM_train": "RM_train (the proxy: orders the training rankings)"}


def rm_rows(s: dict) -> list[str]:
    """The RM validity table: each RM against the human labels and the 6.9B, the length baseline, the 6.9B's own
    accuracy, RM_test by subset; then RM_train against RM_test on the test pairs and the grid's 4-rankings."""
    rm = s.get("reward_models")
    if not rm:
        return ["Reward models: not generated yet (notebook 03 writes their report)."]
    ov, out = rm["overall"], []
    if ov:
        out += [("| reward models on the held-out test pairs (Wilson 95% CI) | agrees with the human label | prefers "
                "the same response as the OpenAssistant 6.9B RM |"), "|---|---|---|"]
        for model, m in ov.items():
            out.append(f"| {RM_LABELS.get(model, model)} | {_pct(m.get('accuracy'))} | {_pct(m.get('oa_agreement'))} |")
        first = next(iter(ov.values()))
        out.append(f"| the longer response (no model) | {_pct(first.get('length_baseline'))} | — |")
        if first.get("oa_accuracy"):
            out.append(f"| the OpenAssistant 6.9B RM itself | {_pct(first.get('oa_accuracy'))} | — |")
        sub = rm["by_subset"].get("RM_test") or {}
        if sub:
            names = list(sub)
            out.append(f"| RM_test by subset: {' / '.join(names)} | "
                       + " / ".join(_pct(sub[n].get("accuracy"), n=False) for n in names) + " | "
                       + " / ".join(_pct(sub[n].get("oa_agreement"), n=False) for n in names) + " |")
            out.append("| the longer response by subset | "
                       + " / ".join(_pct(sub[n].get("length_baseline"), n=False) for n in names) + " | — |")
    a = rm.get("agreement")
    if a:
        h = a["held_out_pairs"]
        line = (f"- RM_train against RM_test: the same preference on {100 * h['value']:.1f}% "
                f"[{100 * h['ci95'][0]:.1f}, {100 * h['ci95'][1]:.1f}] of {h['n']} test pairs"
                + (f" (score r {h['score_r']:.2f})" if h.get("score_r") is not None else ""))
        r4 = a.get("rankings4")
        if r4:
            t1, so, tau = r4["top1"], r4["same_order"], r4["kendall_tau"]
            line += (f"; on the grid's {r4['n_rankings']} 4-rankings that RM_train ordered, RM_test puts the same "
                     f"response first in {100 * t1['value']:.1f}% [{100 * t1['ci95'][0]:.1f}, "
                     f"{100 * t1['ci95'][1]:.1f}] (chance {100 * r4['chance']['top1']:.0f}%) and orders all four "
                     f"alike in {100 * so['value']:.1f}% (chance {100 * r4['chance']['same_order']:.1f}%); mean "
                     f"Kendall τ {_f(tau['value'], '{:.2f}')}")
        out += ["", line + "."]
    return out


def secondary_rows(s: dict) -> list[str]:
    """Everything else, labelled secondary / exploratory with the number of tests."""
    p, runs, con, reg = s["paper"], s["runs"], s["contrasts"], s["regression"]
    sec = s["secondary"]
    per_nb = ", ".join(f"{nb[:2]}: {n}" for nb, n in sec["by_notebook"].items())
    out = [(f"**Secondary / exploratory** ({sec['n_tests']} tests with a CI, by notebook {per_nb}; no correction for "
           "multiplicity: a CI that excludes 0 here is a hypothesis, not a finding):"), "",
           "| | paper | this study |", "|---|---|---|"]
    for algo, r in reg.items():
        key = f"{algo}_vs_d"
        paper = f"{p['printed_mse_points2'][key]:.3f}" if key in p["printed_mse_points2"] else "—"
        if algo == "pro":
            paper += f" vs {p['printed_mse_points2']['pro_vs_samples']:.2f} for ~#prompts"
        pts = " / ".join(f"{line['n_points']}" for line in r["d"]["lines"].values())
        out.append(f"| reward ~ d, mean MSE ({algo.upper()}, points²), one line per n ({pts} runs) | {paper} | "
                   f"{r['d']['mean_mse']:.2f} vs {r['n_prompts']['mean_mse']:.2f} for ~#prompts; "
                   f"{slope_phrase(r['d'])} |")
    rf = p["refit_mse_points2"]
    out.append(f"| our refit of the paper's transcribed points (points²) | {rf['pro_vs_samples']:.2f} / "
               f"{rf['pro_vs_d']:.3f} / {rf['sft_vs_d']:.3f} (printed ×10⁴: "
               f"{p['printed_mse_points2']['pro_vs_samples']:.2f} / {p['printed_mse_points2']['pro_vs_d']:.3f} / "
               f"{p['printed_mse_points2']['sft_vs_d']:.3f}) | — |")
    ep, eo = s["exponent"]["paper"], s["exponent"]["ours"]
    ours = [a for a in runs["algos"] if a in eo]
    out.append("| best p (d = \\|X\\|^(1/p)·r_unique), " + " / ".join(a.upper() for a in ep) + " (paper); "
               + " / ".join(a.upper() for a in ours) + " (ours) | "
               + " / ".join(f"{_f(ep[a]['best_p'], '{:.2f}')}" for a in ep) + " with every line rising; "
               + " / ".join(f"{ep[a]['best_p_any_slope']:.2f}" for a in ep) + " without that rule | "
               + " / ".join(f"{_f(eo[a]['best_p'], '{:.2f}')}" for a in ours) + " with every line rising; "
               + " / ".join(f"{eo[a]['best_p_any_slope']:.2f}" for a in ours) + " without |")
    g, pg = s["diversity"]["growth"], p["d_growth_4x"]
    out.append(f"| d of the nested subsets | {pg['d_from']:.1f} → {pg['d_to']:.1f} (+{100 * pg['growth']:.0f}% over "
               f"{pg['from_prompts']:,} → {pg['to_prompts']:,} prompts, "
               f"{pg['to_prompts'] / pg['from_prompts']:.0f}×; LLaMA tokens) | {g['d_from']:.2f} → {g['d_to']:.2f} "
               f"(+{100 * g['growth']:.0f}% over {g['from_prompts']} → {g['to_prompts']} prompts, "
               f"{g['ratio_prompts']:.0f}×; SmolLM2 tokens) |")
    for cid, c in con.items():
        fam, algo = c.get("family"), cid.split("/")[1]
        if fam == "equal_budget":
            budget, comp = cid.split("/")[2:]
            paper = p["table1_diagonal"]
            n = int(comp[1])
            pv = [paper.get(f"{algo}/6000/n{m}") for m in (n, 2)]
            out.append(f"| equal budget {int(budget):,}, {algo.upper()}, n = {n} − n = 2 | "
                       + (f"{pv[0] - pv[1]:+.2f} (6k)" if None not in pv else "—") + f" | {_ci(c)} |")
        elif fam == "same_prompts":
            out.append(f"| same {cid.split('/')[2][1:]} prompts, {algo.upper()}, n = 4 − n = 2 | — | {_ci(c)} |")
        elif fam in ("augmentation", "selection"):
            comp = cid.split("/", 2)[2]
            sizes = c.get("n_prompts") or {}
            notes = []
            if len(set(sizes.values())) > 1:
                notes.append(" vs ".join(f"{v} prompts" for v in sizes.values()))
            if c.get("prompt_tokens_median"):
                notes.append("median prompt tokens " + " vs ".join(f"{v:.0f}" for v in c["prompt_tokens_median"].values()))
            note = f" ({'; '.join(notes)})" if notes else ""
            out.append(f"| {fam}: {comp.replace(' - ', ' − ')}, {algo.upper()}{note} | "
                       f"{'gain reported (details not recoverable)' if fam == 'augmentation' else '—'} | {_ci(c)} |")
    b = s.get("beta_ablation")
    for cell in (b or {}).get("cells", {}).values():
        arms = cell["arms"]
        txt = "; ".join(f"sft_weight {w} (β = {a['beta']:g}) {a['mean']:.1f}"
                        + (f", ranking term {100 * a['grad_share_rank']:.0f}% of the gradient"
                           if a.get("grad_share_rank") is not None else "") for w, a in arms.items() if w != "sft")
        if "sft" in arms:
            txt += f"; SFT {arms['sft']['mean']:.1f}"
        tests = []
        for name, c in cell["contrasts"].items():
            w = c.get("wins") or {}
            tests.append(f"{name.replace(' - ', ' − ')}: {_ci(c)}"
                         + (f" (higher in {w['a_above']} of {w['pairs']} pairs)" if w else ""))
        out.append(f"| PRO's β at ({cell['n']}, {cell['n_prompts']}), on the seeds every arm has "
                   f"({', '.join(str(x) for x in cell['seeds'])}): {txt} | — | {'; '.join(tests)} |")
    f = s.get("fine_tuned_vs_initial")
    for algo, c in (f or {}).items():
        out.append(f"| fine-tuned − initial policy, {algo.upper()}, all {c['n_a']} runs | — | {_ci(c)} |")
    lw = s.get("listwise")
    for cid, c in ((lw or {}).get("contrasts") or {}).items():
        out.append(f"| listwise: {cid} | — | {_ci(c)} |")
    return out


def _against(c: dict) -> str:
    """What a primary part says, in words: its direction against the paper's sign where its CI excludes 0, and
    only that its CI spans 0 where it does not (a sign inside a CI that spans 0 is not a direction)."""
    if not _excludes_0(c):
        return "its CI spans 0"
    return {"as the paper": "the paper's sign", "against the paper": "against the paper's sign"}.get(
        c["direction"], c["direction"])


def _power_words(c: dict, rng: list[float] | None) -> str:
    """For a part whose CI spans 0: whether effects of the size the paper's settings give it were within reach."""
    if c.get("mde") is None:
        return "it has no MDE"
    if not rng:
        return f"effects smaller than its MDE of {c['mde']:.1f} points could have been missed"
    small, large = sorted(abs(v) for v in rng) if rng[0] * rng[1] > 0 else (0.0, max(abs(v) for v in rng))
    if c["mde"] <= small:
        return (f"its MDE of {c['mde']:.1f} points is below every size the paper's settings give it "
                f"({_range_words(rng)}), so an effect that large would likely have shown")
    if c["mde"] > large:
        return (f"its MDE of {c['mde']:.1f} points is above every size the paper's settings give it "
                f"({_range_words(rng)}), so effects that small could have been missed")
    return (f"its MDE of {c['mde']:.1f} points lies inside the range the paper's settings give it "
            f"({_range_words(rng)}): the larger of those effects would likely have shown, the smaller not")


def reading(s: dict) -> str:
    """The README's "Reading" paragraph, every number from summary.json and every word chosen by the numbers:
    what RM_test is and is not, what the primary contrast and its two parts show beside the paper, and what the
    study cannot resolve."""
    out = []
    rm = s.get("reward_models") or {}
    judge = (rm.get("overall") or {}).get("RM_test")
    design = s.get("design") or {}
    if judge:
        acc, oa, length = judge.get("accuracy"), judge.get("oa_agreement"), judge.get("length_baseline")
        text = "RM_test stands in for the paper's judge, the OpenAssistant 6.9B RM"
        if oa:
            text += (f": on the held-out test pairs it prefers the same response as the 6.9B on {_pct(oa)} "
                     f"({'above' if oa['ci_lo'] > 0.5 else 'not distinguishable from'} the 50% of chance)")
        if acc:
            text += f", and agrees with the human label on {_pct(acc)}"
            if length:
                where = ("above" if acc["ci_lo"] > length["value"] else "below" if acc["ci_hi"] < length["value"]
                         else "not distinguishable from")
                text += f", {where} the {100 * length['value']:.1f}% that answer length alone gives"
            if judge.get("oa_accuracy"):
                text += f" (the 6.9B itself: {_pct(judge['oa_accuracy'], n=False)})"
        chance = [c["subset"] for c in rm.get("chance_subsets", []) if c["model"] == "RM_test"]
        if chance:
            text += f"; on {', '.join(chance)} its CI contains 50%"
        out.append(text + ".")
    proxy = ""
    share = (design.get("reward") or {}).get("train_share")
    if (design.get("reward") or {}).get("design") == "oa-distilled" and share:
        proxy = f" (the same recipe on {100 * share:.0f}% of RM_test's training pairs)"
    agree = ((rm.get("agreement") or {}).get("held_out_pairs"))
    out.append("It is not a human judge: the study is a controlled world, as in Gao et al. (2022), in which RM_test "
               "plays the gold reward and RM_train" + proxy + " the proxy whose rankings the policy is trained on"
               + (f" (they prefer the same response on {100 * agree['value']:.1f}% of test pairs)" if agree else "")
               + "; what it measures is what RM_test rewards in a small policy's answers, not what people prefer.")
    p = s.get("primary")
    if p:
        d, t, pr, ln = p["declared"], p["total"], p["prompts"], p["length"]
        word = ("scored lower than" if t["estimate"] < 0 else "scored higher than") if _excludes_0(t) else \
            "could not be told apart from"
        runs = sorted({c["runs"] for c in p["cells"].values()})
        rng = p["paper_range"]
        out.append(
            f"On the declared primary contrast ({d['algo'].upper()} at {d['budget']:,} responses, "
            f"{' to '.join(str(r) for r in runs)} replicates a cell), longer rankings of fewer prompts "
            f"(n = {d['n_hi']}, {d['k_hi']} prompts) {word} shorter rankings of more prompts (n = {d['n_lo']}, "
            f"{d['k_lo']} prompts): {_est(t)} points, {_against(t)} (the paper's Table 1, its "
            f"{len([r for r in s['paper']['decomposition'] if r['algo'] == d['algo']])} {d['algo'].upper()} settings: "
            f"{rng['total'][0]:+.2f} to {rng['total'][1]:+.2f}). Split in two, the prompt-count part (n = {d['n_lo']}, {d['k_hi']} vs "
            f"{d['k_lo']} prompts) is {_est(pr)}, {_against(pr)} (the paper's: {rng['prompts'][0]:+.2f} to "
            f"{rng['prompts'][1]:+.2f}), and the ranking-length part (n = {d['n_hi']} vs {d['n_lo']} on the same "
            f"{d['k_hi']} prompts) is {_est(ln)}, {_against(ln)} (the paper's: {rng['length'][0]:+.2f} to "
            f"{rng['length'][1]:+.2f}).")
        larger = max(("prompts", "length"), key=lambda part: abs(p[part]["estimate"]))
        if not (_excludes_0(p["prompts"]) or _excludes_0(p["length"])):
            larger = None
        theirs = {max(("prompts", "length"), key=lambda part: abs(r[part])) for r in s["paper"]["decomposition"]
                  if r["algo"] == d["algo"]}
        if larger:
            out.append(f"The larger part here is the {PART_NAMES[larger]}"
                       + (f"; in every {d['algo'].upper()} setting of the paper's Table 1 it is the "
                          f"{PART_NAMES[theirs.pop()]}" if len(theirs) == 1 else "") + ".")
        passes = design.get("passes") or {}
        if str(d["k_hi"]) in passes and str(d["k_lo"]) in passes:
            out.append(f"At the fixed step budget each of the {d['k_hi']} prompts is seen "
                       f"{passes[str(d['k_hi'])]:.0f} times and each of the {d['k_lo']} prompts "
                       f"{passes[str(d['k_lo'])]:.0f} times, so the prompt-count part holds repetition as well as "
                       "fewer distinct prompts.")
        gains = p.get("fine_tuned_vs_initial") or {}
        if gains:
            up = [name for name, c in gains.items() if _excludes_0(c) and c["estimate"] > 0]
            down = [name for name, c in gains.items() if _excludes_0(c) and c["estimate"] < 0]
            fmt = lambda names: ", ".join("(" + n[1:].replace("_k", ", ") + ")" for n in names)
            out.append("Against the policy before fine-tuning, " + (
                f"the reward rose in {fmt(up)}" if up else "no primary cell's reward rose with a CI above 0")
                + (f" and fell in {fmt(down)}" if down else "") + ".")
        unresolved = [part for part in analysis.PARTS if not _excludes_0(p[part])]
        if unresolved:
            out.append("What it cannot resolve: " + "; ".join(
                f"the {PART_NAMES[part]}'s CI spans 0, and {_power_words(p[part], rng.get(part))}"
                for part in unresolved) + ".")
        else:
            out.append("All three CIs exclude 0.")
    else:
        out.append("No primary contrast is declared for this recipe (grid.primary), or its cells are not in the "
                   "results table yet.")
    out.append("Whether the same holds for human preferences, for larger policies or at the paper's scale, this "
               "study cannot say.")
    sec = s.get("secondary")
    if sec:
        out.append(f"Everything else reported here is secondary ({sec['n_tests']} tests).")
    return "**Reading.** " + " ".join(out)


def _range_words(rng: list[float]) -> str:
    return f"{rng[0]:+.2f} to {rng[1]:+.2f}" if rng[0] != rng[1] else f"{rng[0]:+.2f}"


def resolution_lines(s: dict) -> list[str]:
    """What the study can and cannot resolve, from summary.json: design, variance, MDEs, fine-tuning, the cold
    run and the environment."""
    out = []
    d = s.get("design")
    if d:
        out.append(f"- Design: {d['cells']} cells over {d['sizes'][0]}–{d['sizes'][-1]} prompts "
                   f"({d['size_ratio']:.0f}×), {d['seeds_per_cell_min']} replicate"
                   f"{'s' if d['seeds_per_cell_min'] != 1 else ''} a cell and {d['seeds_per_cell_max']} on "
                   f"{', '.join(d['verdict_cells'])}"
                   + (f"; each replicate re-draws the data ({d['draws']} draws in the table)"
                      if d.get("redraw_per_seed") and d.get("draws") else "")
                   + (f"; {d['max_steps']} steps × {d['prompts_per_step']} prompts pass over the largest subset "
                      f"{d['passes_over_largest']:.1f}×; checkpoint: {d['checkpoint']}" if "max_steps" in d else "")
                   + ".")
    v = (s.get("variance") or {}).get("primary_cells")
    if v:
        cells = "; ".join(f"({c['n']}, {c['k']}) SD {_f(c['sd'])}, one run's SE {_f(c['eval_se'])}"
                          for c in v["cells"].values())
        pooled = v["pooled"]
        share = pooled.get("eval_share")
        out.append(f"- Where the variance is (the primary cells): {cells}. Pooled replicate SD {_f(pooled['sd'])}; "
                   f"re-sampling the test prompts alone would give "
                   + (f"{100 * share:.0f}% of that variance" if share is not None else "an unmeasured share of it")
                   + ".")
    m = s.get("mde_reached") or {}
    prim = {k.split("/")[1]: val for k, val in m.items() if k.startswith("primary/") and val is not None}
    if prim:
        p = s["primary"]
        out.append("- MDEs reached (80% power at α = 0.05): " + ", ".join(
            f"{PART_NAMES[part]} {val:.1f}" for part, val in prim.items())
            + " points; the paper's parts in its Table 1: " + ", ".join(
            f"{PART_NAMES[part]} {_range_words(p['paper_range'][part])}" for part in prim) + ".")
    bv = (s.get("variance") or {}).get("by_algo") or {}
    rs = {a: x.get("short_answer_r") for a, x in bv.items() if x.get("short_answer_r") is not None}
    if rs:
        out.append("- Within a cell, the reward " + short_answer_link(list(rs.values()))
                   + " the share of very short answers (r = " + " / ".join(f"{r:+.2f}" for r in rs.values()) + ", "
                   + " / ".join(a.upper() for a in rs) + ").")
    cr = s.get("cold_run")
    if cr:
        out.append(f"- A cold `make figures` ({cr.get('note') or 'fresh clone, empty caches, one uninterrupted run'}) "
                   f"took {cr['wall_s'] / 60:.1f} min wall on {cr['cores']} cores, {(cr['user_s'] + cr['system_s']) / 60:.1f} "
                   f"CPU-min ({100 * cr['cpu_utilisation'] / cr['cores']:.0f}% of the cores), measured with "
                   "`/usr/bin/time -v`.")
    env = s.get("environment")
    if env:
        libs = env.get("libraries") or {}
        th = env.get("threads") or {}
        out.append(f"- Environment of the runs: Python {env.get('python')}, "
                   + ", ".join(f"{k} {libs[k]}" for k in ("torch", "transformers", "trl") if k in libs)
                   + (f", lock sha256 {env['lock_sha256'][:12]}" if env.get("lock_sha256") else ", no lock file")
                   + (f" ({len(env['lock_differs'])} packages differ from it)" if env.get("lock_differs") else "")
                   + f"; {env.get('cpu') or 'unknown CPU'}, {th.get('torch')} torch thread"
                   + f"{'s' if th.get('torch') != 1 else ''} (summary.json: `environment`).")
    ip = s.get("initial_policy")
    runs = s["runs"]
    out.append(f"- On test the fine-tuned runs average {runs['reward_mean']:.1f} (range {runs['reward_min']:.1f}–"
               f"{runs['reward_max']:.1f}), "
               + (f"the policy before fine-tuning {ip['reward_global']:.1f} (CI {ip['ci_lo']:.1f}–{ip['ci_hi']:.1f})."
                  if ip else "the policy before fine-tuning: not generated yet (notebook 05 writes it)."))
    if s.get("answers"):
        a = s["answers"]
        out.append(f"- What the policies write: `results/{s['recipe']}/{a['file']}` holds the greedy answers to "
                   f"{a['prompts']} test prompts of {len(a['policies'])} policies ({'; '.join(str(x) for x in a['policies'])}), "
                   "quoted in notebook 05.")
    return out


def short_answer_link(rs) -> str:
    """How strongly a run's reward follows its share of very short answers, in words, from the within-cell r
    of each algorithm: "follows" (every |r| >= 0.5), "hardly follows" (every |r| < 0.3), else "partly follows"."""
    rs = [abs(r) for r in rs if r is not None and math.isfinite(r)]
    if rs and min(rs) >= 0.5:
        return "follows"
    if rs and max(rs) < 0.3:
        return "hardly follows"
    return "partly follows"


def render_readme_block(s: dict) -> str:
    """The README's results block, from summary.json only (every number here is generated)."""
    out = []
    p = s.get("primary")
    if p:
        d = p["declared"]
        out += [(f"**The primary contrast**, declared in `recipes/{s['recipe']}.yaml` (`grid.primary`) before the runs: "
                f"{d['algo'].upper()}, n = {d['n_hi']} vs n = {d['n_lo']} at an equal budget of {d['budget']:,} "
                f"responses, with its two parts. Rewards ×100 (100 · mean sigmoid of the RM_test logit); MDE: the "
                "true difference a two-sided test at α = 0.05 finds with 80% power; a part is \"the paper's sign\" "
                "when its sign is the one every setting of the paper's Table 1 gives it."), ""]
        out += primary_rows(s) + [""]
    else:
        out += [("**The primary contrast:** none declared for this recipe (grid.primary), or its cells are not in "
                "the results table."), ""]
    out += rm_rows(s) + [""]
    out += [reading(s), ""]
    out += resolution_lines(s) + [""]
    out += secondary_rows(s)
    if "augmentation" in s["diversity"]:
        aug = s["diversity"]["augmentation"]
        out += ["", "- d of the augmentation sets: " + ", ".join(
            f"{m} {v['d']:.2f} ({v['n_prompts']} prompts)" for m, v in aug.items()) + "."]
    return "\n".join(out)


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
