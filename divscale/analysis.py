"""Analysis: the tidy results table, the paper's linear fits, the decay exponent, equal-budget verdicts.

The paper's two findings, and the statistics that test them here:

1. **Reward is linear in prompt diversity d** (Figure 4(c,d)). One OLS line per ranking length n over the
   subset sizes; the paper prints only the mean over the three lines of MSE = SSR / #points
   (that definition, not SSR / dof, reproduces its numbers: see :func:`refit_paper`).
   d = |X|^(1/p) · r_unique with p = 2; :func:`fit_exponent` asks which 1/p makes the lines straightest.
2. **At an equal annotation budget, more responses beat more prompts** (Table 1). Budget = #prompts × n
   (spec §2.4), so the equal-budget cells are (n, budget / n). :func:`more_responses_beat_more_prompts`
   compares them with a confidence interval over training seeds and says plainly whether the claim holds.

Scales: results tables and Table 1 hold rewards ×100 (100 · mean sigmoid of the RM_test logit); the paper's
figures and MSEs use the 0–1 scale, so fits take ``scale=0.01`` to be comparable with the paper.
"""
from __future__ import annotations

import contextlib
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats

from divscale import paths
from divscale.io import DataError, atomic_path

# ---------------------------------------------------------------------------------------------------------
# The results table: one row per training run (tidy), written atomically, upserted by run_id
# ---------------------------------------------------------------------------------------------------------

SUBSETS = ("harmless_base", "helpful_base", "helpful_online", "helpful_rejection")

RESULT_COLUMNS = [
    "run_id",              # unique id of the run (e.g. the run directory's config hash)
    "recipe",              # recipe name (smoke, cpu, paper-opt, ...)
    "algo",                # sft | pro | dpo ...
    "ranking_len",         # n: responses per prompt in the training rankings
    "n_prompts",           # |X|: prompts in the training subset
    "seed",                # training seed
    "budget",              # annotations = n_prompts × ranking_len (spec §2.4)
    "d",                   # prompt diversity of the subset, d = sqrt(|X|) · r_unique
    "r_unique",            # unique / total token bigrams of the subset's prompts
    "reward_global",       # RM_test reward ×100, sample-weighted over the 4 test files
    "reward_global_lo",    # its 95% CI (bootstrap over test prompts)
    "reward_global_hi",
    *[f"reward_{s}" for s in SUBSETS],
    "dev_reward_best",     # best dev reward (RM_train) used to pick the checkpoint
    "best_step",
    "steps",
    "train_seconds",
    "eval_seconds",
    "status",              # ok | failed | ...
    "created",             # ISO-8601 UTC timestamp
]
_STR_COLUMNS = ["run_id", "recipe", "algo", "status", "created"]
_INT_COLUMNS = ["ranking_len", "n_prompts", "seed", "budget", "best_step", "steps"]
_REQUIRED = ["run_id", "recipe", "algo", "ranking_len", "n_prompts", "seed", "budget", "status", "created"]
_FLOAT_COLUMNS = [c for c in RESULT_COLUMNS if c not in _STR_COLUMNS + _INT_COLUMNS]


def _row(i: int) -> str:
    return f"row {i} (CSV line {i + 2})"


def validate_results(df: pd.DataFrame, source: str = "results table") -> pd.DataFrame:
    """Check a results table and return a typed copy (schema columns first, extra columns kept after).

    Every column of ``RESULT_COLUMNS`` must be present. Identity columns (run_id, recipe, algo,
    ranking_len, n_prompts, seed, budget, status, created) must be filled; metrics may be NaN (failed runs).
    Raises :class:`DataError` naming ``source``, the column and the offending row.
    """
    missing = [c for c in RESULT_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; a results table needs all of "
                        f"divscale.analysis.RESULT_COLUMNS (metrics may be empty/NaN)")
    out = df.copy()
    for col in _REQUIRED:
        empty = out[col].isna()
        if empty.any():
            raise DataError(f"{source}: column {col!r} is empty in {_row(int(np.flatnonzero(empty)[0]))}; "
                            f"identity columns {_REQUIRED} must be filled")
    for col in _INT_COLUMNS + _FLOAT_COLUMNS:
        values = pd.to_numeric(out[col], errors="coerce")
        bad = values.isna() & out[col].notna()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{source}: column {col!r} must be numeric, {_row(row)} has {out[col].iloc[row]!r}")
        if col in _INT_COLUMNS:
            fractional = values.notna() & (values != values.round())
            if fractional.any():
                row = int(np.flatnonzero(fractional)[0])
                raise DataError(f"{source}: column {col!r} must hold integers, {_row(row)} has {values.iloc[row]}")
            values = values.round().astype("Int64")
        else:
            values = values.astype("float64")
        out[col] = values
    for col in _STR_COLUMNS:
        out[col] = out[col].astype(str)
    if (out["ranking_len"] < 2).any() or (out["n_prompts"] < 1).any():
        raise DataError(f"{source}: ranking_len must be >= 2 and n_prompts >= 1")
    wrong = out["budget"] != out["n_prompts"] * out["ranking_len"]
    if wrong.any():
        row = int(np.flatnonzero(wrong)[0])
        raise DataError(f"{source}: {_row(row)}: budget {out['budget'].iloc[row]} != n_prompts × ranking_len "
                        f"= {out['n_prompts'].iloc[row] * out['ranking_len'].iloc[row]} (spec §2.4)")
    dup = out["run_id"].duplicated()
    if dup.any():
        raise DataError(f"{source}: run_id {out['run_id'][dup].iloc[0]!r} appears more than once; "
                        "run ids must be unique (append_result replaces a redone run's row)")
    extras = [c for c in out.columns if c not in RESULT_COLUMNS]
    return out[RESULT_COLUMNS + extras].reset_index(drop=True)


def load_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a results CSV."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results table; runs add rows with divscale.analysis.append_result")
    return validate_results(pd.read_csv(path, dtype={c: str for c in _STR_COLUMNS}), source=str(path))


def write_results(path: str | os.PathLike, df: pd.DataFrame) -> Path:
    """Validate ``df`` and write it as CSV atomically (temp file beside ``path``, renamed on success)."""
    path = Path(path)
    df = validate_results(df, source=str(path))
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


@contextlib.contextmanager
def _locked(path: Path):
    """Serialise read-modify-write of ``path`` across processes (grid workers) with an flock'd sidecar."""
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic rename still prevents partial files
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _complete_row(row: dict, where: str) -> dict:
    """Fill ``budget`` and ``created`` when absent and left-out metrics with NaN; identity keys are required."""
    row = dict(row)
    for key in ("run_id", "recipe", "algo", "ranking_len", "n_prompts", "seed", "status"):
        if row.get(key) is None or (isinstance(row[key], float) and math.isnan(row[key])):
            raise DataError(f"{where}: the row has no {key!r}; identity columns are required")
    row.setdefault("budget", int(row["n_prompts"]) * int(row["ranking_len"]))
    row.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return {c: row.get(c, np.nan) for c in RESULT_COLUMNS} | row


def results_frame(rows: list[dict], source: str = "results rows") -> pd.DataFrame:
    """Build a validated results table from per-run dicts (e.g. the grid's cell JSONs), with the same filling
    rules as :func:`append_result`. No rows gives an empty table with the schema's columns."""
    rows = [_complete_row(r, f"{source}[{i}]") for i, r in enumerate(rows)]
    return validate_results(pd.DataFrame(rows, columns=None if rows else RESULT_COLUMNS), source=source)


def append_result(path: str | os.PathLike, row: dict) -> pd.DataFrame:
    """Add one run's row to the results CSV at ``path``, replacing any earlier row with the same run_id.

    ``budget`` (n_prompts × ranking_len) and ``created`` (now, UTC) are filled in when absent; metric
    columns left out become NaN; a missing identity column is an error. Returns the new table.
    """
    path = Path(path)
    new = results_frame([row], source=f"append_result({path})")
    with _locked(path):
        if path.exists():
            old = load_results(path)
            same = old["run_id"] == new["run_id"].iloc[0]
            if same.any():   # redone cell: replace the row where it was
                pos = int(np.flatnonzero(same)[0])
                table = pd.concat([old.iloc[:pos], new, old.iloc[pos + 1:]], ignore_index=True)
            else:
                table = pd.concat([old, new], ignore_index=True)
        else:
            table = new
        write_results(path, table)
    return validate_results(table, source=str(path))


# ---------------------------------------------------------------------------------------------------------
# Confidence intervals over seeds
# ---------------------------------------------------------------------------------------------------------

def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): Student-t interval for the mean of a few values (seeds). NaNs are dropped;
    a single value gives NaN bounds (no spread to estimate)."""
    x = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce").dropna(), dtype=float)
    if len(x) == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if len(x) < 2:
        return (mean, math.nan, math.nan)
    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return (mean, mean - half, mean + half)


# ---------------------------------------------------------------------------------------------------------
# Linear fits: reward = slope · x + intercept, one OLS line per ranking length
# ---------------------------------------------------------------------------------------------------------

def fit_lines(df: pd.DataFrame, x: str = "d", y: str = "reward_global", by: str | list[str] | None = "ranking_len",
              scale: float = 1.0, aggregate: bool = True, confidence: float = 0.95) -> pd.DataFrame:
    """Fit one OLS line ``y·scale ~ x`` per value of ``by`` (a column, a list of columns, or None: one line).

    ``aggregate=True`` first averages y over rows sharing (by, x), i.e. over seeds, as the paper fits one
    point per subset size; ``False`` fits every run. Rows with NaN x or y are dropped. Returns one row per
    group: slope/intercept with standard errors and ``confidence`` intervals, their covariance, R²,
    MSE = SSR / #points (the paper's definition), n_points, residual dof and the slope's p-value.
    """
    keys = [by] if isinstance(by, str) else list(by or [])
    for col in [x, y] + keys:
        if col not in df.columns:
            raise DataError(f"fit_lines: no column {col!r}; columns are {list(df.columns)}")
    data = df[list(dict.fromkeys(keys + [x, y]))].dropna()
    groups = data.groupby(keys, sort=True) if keys else [((), data)]
    rows = []
    for key, g in groups:
        key = dict(zip(keys, key))
        if aggregate:
            g = g.groupby(x, as_index=False)[y].mean()
        xs = g[x].to_numpy(float)
        ys = g[y].to_numpy(float) * scale
        if len(xs) < 2 or np.ptp(xs) == 0:
            raise ValueError(f"fit_lines: group {key} has {len(xs)} point(s) and {len(set(xs))} distinct "
                             f"{x} value(s); a line needs at least two distinct x values")
        res = sm.OLS(ys, sm.add_constant(xs, has_constant="add")).fit()
        ci = res.conf_int(1 - confidence) if res.df_resid > 0 else np.full((2, 2), np.nan)
        cov = res.cov_params() if res.df_resid > 0 else np.full((2, 2), np.nan)
        row = dict(key)
        row.update(x=x, y=y, scale=scale, n_points=len(xs),
                   slope=res.params[1], slope_lo=ci[1][0], slope_hi=ci[1][1], slope_se=np.sqrt(cov[1, 1]),
                   intercept=res.params[0], intercept_lo=ci[0][0], intercept_hi=ci[0][1],
                   intercept_se=np.sqrt(cov[0, 0]), cov_slope_intercept=cov[0, 1], df_resid=res.df_resid,
                   r2=res.rsquared, mse=res.ssr / len(xs),
                   p_slope=res.pvalues[1] if res.df_resid > 0 else np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def mean_mse(fits: pd.DataFrame) -> float:
    """The number the paper prints in Figure 4: the mean over the per-n lines of MSE = SSR / #points."""
    return float(fits["mse"].mean())


def fit_band(fit: pd.Series | dict, xs, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fitted line and its pointwise ``confidence`` band for the mean at ``xs`` (in the fit's y·scale units)."""
    xs = np.asarray(xs, dtype=float)
    yhat = fit["slope"] * xs + fit["intercept"]
    var = fit["intercept_se"] ** 2 + xs ** 2 * fit["slope_se"] ** 2 + 2 * xs * fit["cov_slope_intercept"]
    half = stats.t.ppf(0.5 + confidence / 2, fit["df_resid"]) * np.sqrt(np.maximum(var, 0))
    return yhat, yhat - half, yhat + half


# ---------------------------------------------------------------------------------------------------------
# The paper's own numbers (divscale/paper_data, with provenance) and the refit of Figure 4
# ---------------------------------------------------------------------------------------------------------

def paper_points() -> pd.DataFrame:
    """All published reward cells (Table 1 + Figure 4 read-offs), reward ×100, with a ``source`` column."""
    return pd.read_csv(paths.PAPER_DATA_DIR / "paper_points.csv")


def paper_diversity() -> pd.DataFrame:
    """Figure 4(b): d per subset size, and the implied r_unique = d / sqrt(n_prompts)."""
    div = pd.read_csv(paths.PAPER_DATA_DIR / "paper_diversity.csv")
    div["r_unique"] = div["d"] / np.sqrt(div["n_prompts"])
    return div


def paper_table1_long() -> pd.DataFrame:
    """Table 1 in long form, to set beside ours: algo (lower case), model, split, ranking_len, n_prompts,
    reward (×100), budget = n_prompts × n, ``budget_group`` (48000 or 6000 responses: which half of the
    table the column belongs to) and ``diagonal`` (the equal-budget cells, red in the paper)."""
    t = paper_points()
    t = t[t["source"].str.startswith("Table 1")].copy()
    t["algo"] = t["algo"].str.lower()
    t = t.rename(columns={"reward_x100": "reward"})
    t["budget"] = t["n_prompts"] * t["ranking_len"]
    t["budget_group"] = np.where(t["n_prompts"] >= 12000, 48000, 6000)
    t["diagonal"] = t["budget"] == t["budget_group"]
    return t.reset_index(drop=True)


def paper_fig4_points() -> pd.DataFrame:
    """The 8 sizes × 3 ranking lengths × {pro, sft} points of Figure 4 (OPT-1.3B, Global), shaped like our
    results table: algo, ranking_len, n_prompts, d, r_unique, reward_global (×100), source."""
    t = paper_points()
    t = t[(t["model"] == "OPT-1.3B") & (t["split"] == "Global")].copy()
    t["algo"] = t["algo"].str.lower()
    t = t.rename(columns={"reward_x100": "reward_global"})
    div = paper_diversity()
    t = t.merge(div[["n_prompts", "d", "r_unique"]], on="n_prompts", how="left", validate="many_to_one")
    if t["d"].isna().any() or len(t) != 2 * 3 * 8:
        raise DataError(f"{paths.PAPER_DATA_DIR}: expected 48 Figure 4 points with d, got {len(t)}")
    cols = ["algo", "ranking_len", "n_prompts", "d", "r_unique", "reward_global", "source"]
    return t[cols].sort_values(["algo", "ranking_len", "n_prompts"]).reset_index(drop=True)


def refit_paper() -> dict[str, pd.DataFrame]:
    """Refit Figure 4 on the paper's own points (reward on the 0–1 scale, one OLS line per n).

    Keys: ``pro_vs_samples``, ``pro_vs_d``, ``sft_vs_d``. The mean MSEs reproduce the paper's printed
    1.2e-4 / 2.6e-5 / 9.3e-6 (spec refit: 1.23e-4 / 2.54e-5 / 9.56e-6) — evidence that the d values and
    the fitting procedure are the paper's.
    """
    pts = paper_fig4_points()
    pro, sft = pts[pts["algo"] == "pro"], pts[pts["algo"] == "sft"]
    return {
        "pro_vs_samples": fit_lines(pro, x="n_prompts", scale=0.01),
        "pro_vs_d": fit_lines(pro, x="d", scale=0.01),
        "sft_vs_d": fit_lines(sft, x="d", scale=0.01),
    }


# ---------------------------------------------------------------------------------------------------------
# Which decay exponent makes reward most linear in d?
# ---------------------------------------------------------------------------------------------------------

EXPONENTS = np.linspace(0.1, 1.5, 29)      # e = 1/p from 0.1 to 1.5 in steps of 0.05 (the paper: 0.5)


class ExponentFit(NamedTuple):
    curve: pd.DataFrame        # exponent, p, mean_mse, mean_r2, min_slope (one row per candidate exponent)
    best_exponent: float       # e = 1/p
    best_p: float
    criterion: str             # "mse" (minimised) or "r2" (maximised)


def fit_exponent(table: pd.DataFrame, exponents=EXPONENTS, y: str = "reward_global",
                 by: str | list[str] | None = "ranking_len", criterion: str = "mse", scale: float = 1.0,
                 require_positive_slope: bool = True) -> ExponentFit:
    """Choose the exponent e (= 1/p) of d = |X|^e · r_unique that makes ``y`` most linear in d.

    For each candidate e, recompute d from the per-size ``n_prompts`` and ``r_unique`` columns, fit one line
    per ``by`` group (:func:`fit_lines`) and record the mean MSE, mean R² and the smallest slope; pick the
    best by ``criterion``. The paper fixes e = 0.5 (p = 2); this asks whether the data agree.

    With ``require_positive_slope`` (default) only exponents under which every line rises are eligible: for
    small e, d = |X|^e · r_unique *falls* as the subset grows (r_unique decays faster than |X|^e grows), and
    reward can then be fitted well by a line of negative slope — a good fit of a score that has stopped
    meaning "more diverse is better". The curve keeps every exponent either way.
    """
    if criterion not in ("mse", "r2"):
        raise ValueError(f"criterion must be 'mse' or 'r2', got {criterion!r}")
    for col in ("n_prompts", "r_unique", y):
        if col not in table.columns:
            raise DataError(f"fit_exponent: no column {col!r}; it needs per-run n_prompts, r_unique and {y}")
    rows = []
    for e in np.asarray(exponents, dtype=float):
        t = table.assign(_d=table["n_prompts"].astype(float) ** e * table["r_unique"].astype(float))
        fits = fit_lines(t, x="_d", y=y, by=by, scale=scale)
        rows.append({"exponent": e, "p": 1 / e, "mean_mse": mean_mse(fits), "mean_r2": float(fits["r2"].mean()),
                     "min_slope": float(fits["slope"].min())})
    curve = pd.DataFrame(rows)
    eligible = curve[curve["min_slope"] > 0] if require_positive_slope else curve
    if eligible.empty:
        raise ValueError("fit_exponent: no candidate exponent gives rising lines in every group; "
                         "pass require_positive_slope=False to pick among all of them")
    best = eligible.loc[eligible["mean_mse"].idxmin() if criterion == "mse" else eligible["mean_r2"].idxmax()]
    return ExponentFit(curve, float(best["exponent"]), float(best["p"]), criterion)


# ---------------------------------------------------------------------------------------------------------
# Equal annotation budget: Table 1 and the "more responses beat more prompts" verdict
# ---------------------------------------------------------------------------------------------------------

def _one_setting(df: pd.DataFrame, where: str) -> None:
    """Seeds of one cell may be averaged; different algorithms or recipes may not."""
    for col in ("algo", "recipe"):
        if col in df.columns and df[col].nunique() > 1:
            raise ValueError(f"{where}: the table mixes {col}s {sorted(df[col].astype(str).unique())}; "
                             f"select one first, e.g. df[df['{col}'] == ...]")


def _diagonal_prompts(budget: int, n: int) -> int:
    if budget % n:
        raise ValueError(f"budget {budget} responses is not divisible by ranking length {n}; "
                         "choose budgets that are multiples of 12 so (n, budget/n) exists for n = 2, 3, 4")
    return budget // n


def equal_budget_table(df: pd.DataFrame, budgets, y: str = "reward_global", lengths=(2, 3, 4),
                       confidence: float = 0.95) -> pd.DataFrame:
    """Table 1 analogue: mean ``y`` over seeds with a t-interval per (ranking_len, n_prompts).

    ``budgets`` are in annotations (responses = prompts × n, spec §2.4; a recipe's N is budget / 2). For each
    budget B the table's columns are the prompt counts {B/4, B/3, B/2} (as in the paper); every cell is
    listed once per budget it belongs to, with ``diagonal`` marking the equal-budget cells (n, B/n).
    Cells with no runs are present with n_seeds = 0 and NaN statistics. Rows with NaN ``y`` are ignored.
    """
    _one_setting(df, "equal_budget_table")
    data = df.dropna(subset=[y])
    rows = []
    for budget in sorted(budgets, reverse=True):
        columns = sorted({_diagonal_prompts(budget, n) for n in lengths})
        for n in lengths:
            for prompts in columns:
                cell = data[(data["ranking_len"] == n) & (data["n_prompts"] == prompts)]
                mean, lo, hi = t_interval(cell[y], confidence)
                rows.append({"budget_group": budget, "ranking_len": n, "n_prompts": prompts,
                             "budget": n * prompts, "diagonal": n * prompts == budget,
                             "n_seeds": int(cell[y].notna().sum()), "mean": mean, "ci_lo": lo, "ci_hi": hi,
                             "sd": float(cell[y].std(ddof=1)) if len(cell) > 1 else math.nan})
    return pd.DataFrame(rows)


def mean_difference(a: pd.DataFrame, b: pd.DataFrame, y: str, method: str, confidence: float):
    """Mean difference a − b with a CI: Welch (independent runs) or paired by seed."""
    if method == "paired":
        m = a[["seed", y]].merge(b[["seed", y]], on="seed", suffixes=("_a", "_b"))
        diff = m[f"{y}_a"] - m[f"{y}_b"]
        mean, lo, hi = t_interval(diff, confidence)
        return mean, lo, hi, len(m)
    xa, xb = a[y].to_numpy(float), b[y].to_numpy(float)
    mean = float(xa.mean() - xb.mean())
    if len(xa) < 2 or len(xb) < 2:
        return mean, math.nan, math.nan, min(len(xa), len(xb))
    ci = stats.ttest_ind(xa, xb, equal_var=False).confidence_interval(confidence)
    return mean, float(ci.low), float(ci.high), min(len(xa), len(xb))


def ci_status(lo: float, hi: float) -> str:
    if math.isnan(lo) or math.isnan(hi):
        return "inconclusive (one run per cell: no CI)"
    if lo > 0:
        return "holds"
    if hi < 0:
        return "does not hold"
    return "inconclusive (CI spans 0)"


def more_responses_beat_more_prompts(df: pd.DataFrame, budget: int, y: str = "reward_global",
                                     method: str = "welch", confidence: float = 0.95) -> dict:
    """Does (n=4, B/4 prompts) beat (n=2, B/2 prompts) at an equal budget of B responses? And n=3 vs n=2?

    The CI of each difference is over training seeds. ``method="welch"`` (default) treats the cells' runs
    as independent samples (Welch's t: runs in different cells share only the seed number, not data or
    trajectory); ``method="paired"`` pairs runs by seed (t-interval of per-seed differences), which is
    tighter when something shared across cells per seed (e.g. an evaluation sample) moves them together.
    A comparison "holds" when its CI lies above 0, "does not hold" when below, and is "inconclusive" when
    the CI spans 0 or a cell has a single run. Returns the cells' means, both differences with CIs, a
    status word per comparison and a plain-language ``verdict``.
    """
    if method not in ("welch", "paired"):
        raise ValueError(f"method must be 'welch' or 'paired', got {method!r}")
    _one_setting(df, "more_responses_beat_more_prompts")
    data = df.dropna(subset=[y])
    cells = {n: data[(data["ranking_len"] == n) & (data["n_prompts"] == _diagonal_prompts(budget, n))]
             for n in (2, 3, 4)}
    missing = [f"(n={n}, {_diagonal_prompts(budget, n)} prompts)" for n in (2, 4) if cells[n].empty]
    if missing:
        raise ValueError(f"budget {budget}: no runs for equal-budget cell(s) {', '.join(missing)}")
    out = {"budget": budget, "y": y, "method": method, "confidence": confidence,
           "cells": {n: {"n_prompts": _diagonal_prompts(budget, n), "runs": len(c),
                         "mean": float(c[y].mean()) if len(c) else math.nan} for n, c in cells.items()}}
    parts = []
    for n in (4, 3):
        key = f"{n}_vs_2"
        if cells[n].empty:
            out[f"diff_{key}"], out[f"ci_{key}"], out[f"status_{key}"] = math.nan, (math.nan, math.nan), "missing"
            parts.append(f"n={n} vs n=2: no runs for (n={n}, {_diagonal_prompts(budget, n)} prompts)")
            continue
        mean, lo, hi, k = mean_difference(cells[n], cells[2], y, method, confidence)
        status = ci_status(lo, hi)
        out[f"diff_{key}"], out[f"ci_{key}"], out[f"status_{key}"], out[f"runs_{key}"] = mean, (lo, hi), status, k
        ci_text = "no CI" if math.isnan(lo) else f"{confidence:.0%} CI [{lo:+.2f}, {hi:+.2f}]"
        parts.append(f"n={n} vs n=2: {status} (Δ = {mean:+.2f}, {ci_text})")
    out["verdict"] = (f"More responses beat more prompts at {budget:,} responses "
                      f"({method} interval over seeds): " + "; ".join(parts) + ".")
    return out


def beside_paper(table: pd.DataFrame, algo: str = "pro", model: str = "OPT-1.3B",
                 split: str = "Global") -> pd.DataFrame:
    """Put an :func:`equal_budget_table` beside the paper's Table 1 cells at the same position.

    Our budgets are smaller than the paper's, so cells are matched by position, not by prompt count: the
    largest of our budgets goes with the paper's 48,000, the smallest with its 6,000, and within a budget
    by n and by the column's share of the budget (B/4, B/3, B/2 prompts). A single budget is set beside
    the paper's 6,000 (the small-data regime); budgets between our smallest and largest are left unmatched.
    """
    paper = paper_table1_long()
    paper = paper[(paper["algo"] == algo.lower()) & (paper["model"] == model) & (paper["split"] == split)]
    if paper.empty:
        raise ValueError(f"no Table 1 setting ({algo}, {model}, {split}); see paper_table1_long()")
    ours = table.copy()
    budgets = sorted(ours["budget_group"].unique())
    to_paper = {budgets[0]: 6000} | ({budgets[-1]: 48000} if len(budgets) > 1 else {})
    ours["paper_budget"] = ours["budget_group"].map(to_paper)
    ours["share"] = ours["budget_group"] // ours["n_prompts"]
    paper = paper.assign(share=paper["budget_group"] // paper["n_prompts"])
    merged = ours.merge(paper[["budget_group", "ranking_len", "share", "n_prompts", "reward"]]
                        .rename(columns={"budget_group": "paper_budget", "n_prompts": "paper_n_prompts",
                                         "reward": "paper_reward"}),
                        on=["paper_budget", "ranking_len", "share"], how="left")
    return merged.drop(columns="share")
