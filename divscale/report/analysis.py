"""Analysis: the tidy results table, the paper's linear fits, the decay exponent, equal-budget verdicts.

The paper's two findings, and the statistics that test them here:

1. **Reward is linear in prompt diversity d** (Figure 4(c,d)). One OLS line per ranking length n over the
   subset sizes; the paper prints only the mean over the three lines of MSE = SSR / #points
   (that definition, not SSR / dof, reproduces its numbers: see :func:`refit_paper`).
   d = |X|^(1/p) · r_unique with p = 2; :func:`fit_exponent` asks which 1/p makes the lines straightest.
2. **At an equal annotation budget, more responses beat more prompts** (Table 1). Budget = #prompts × n
   (spec §2.4), so the equal-budget cells are (n, budget / n). :func:`more_responses_beat_more_prompts`
   compares them in one OLS model over all runs of an algorithm (the cells have different prompts, so
   nothing is paired: see the comment above :func:`variance_sources`), reports the minimum detectable effect beside
   every CI, and says in which direction each estimate points and whether an effect of the paper's size
   could have been seen.

Scale: one reward scale throughout, the paper's Table 1 scale, reward ×100 = 100 · mean sigmoid(RM_test
logit) ∈ [0, 100]; slopes are in reward points per unit of x and MSEs in points². The paper's Figure 4
prints MSEs on the 0–1 scale: :data:`PAPER_PRINTED_MSE` holds them as printed and :func:`paper_mse_points`
converts them (× 10⁴). ``scale=0.01`` in the fitting functions reproduces the paper's own units.
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
from divscale.metrics.stats import bounded_interval, direction, paired_contrast, t_contrast, welch_contrast

# ---------------------------------------------------------------------------------------------------------
# The results table: one row per training run (tidy), written atomically, upserted by run_id
# ---------------------------------------------------------------------------------------------------------

SUBSETS = tuple(paths.HH_SUBSETS.values())        # the subsets' spellings in column names

RESULT_COLUMNS = [
    "run_id",              # unique id of the run (e.g. the run directory's config hash)
    "recipe",              # recipe name (smoke, cpu, paper-opt, ...)
    "algo",                # sft | pro | dpo ...
    "ranking_len",         # n: responses per prompt in the training rankings
    "n_prompts",           # |X|: prompts in the training subset
    "seed",                # training seed
    "draw",                # the data draw (grid seed) of its subsets and sub-rankings (data.redraw_per_seed)
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
_INT_COLUMNS = ["ranking_len", "n_prompts", "seed", "draw", "budget", "best_step", "steps"]
_REQUIRED = ["run_id", "recipe", "algo", "ranking_len", "n_prompts", "seed", "budget", "status", "created"]
_FLOAT_COLUMNS = [c for c in RESULT_COLUMNS if c not in _STR_COLUMNS + _INT_COLUMNS]
OPTIONAL_COLUMNS = ("draw",)     # absent from tables written before it existed: read as empty


def _row(i: int) -> str:
    return f"row {i} (CSV line {i + 2})"


def validate_results(df: pd.DataFrame, source: str = "results table") -> pd.DataFrame:
    """Check a results table and return a typed copy (schema columns first, extra columns kept after).

    Every column of ``RESULT_COLUMNS`` must be present. Identity columns (run_id, recipe, algo,
    ranking_len, n_prompts, seed, budget, status, created) must be filled; metrics may be NaN (failed runs).
    Raises :class:`DataError` naming ``source``, the column and the offending row.
    """
    missing = [c for c in RESULT_COLUMNS if c not in df.columns and c not in OPTIONAL_COLUMNS]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; a results table needs all of "
                        f"divscale.report.analysis.RESULT_COLUMNS (metrics may be empty/NaN)")
    out = df.copy()
    for col in OPTIONAL_COLUMNS:
        if col not in out.columns:
            out[col] = np.nan
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
        raise FileNotFoundError(f"{path}: no results table; runs add rows with divscale.report.analysis.append_result")
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
# Linear fits: reward = slope · x + intercept, one OLS line per ranking length
# ---------------------------------------------------------------------------------------------------------

def fit_lines(df: pd.DataFrame, x: str = "d", y: str = "reward_global", by: str | list[str] | None = "ranking_len",
              scale: float = 1.0, aggregate: bool = False, confidence: float = 0.95) -> pd.DataFrame:
    """Fit one OLS line ``y·scale ~ x`` per value of ``by`` (a column, a list of columns, or None: one line).

    ``aggregate=False`` (default) fits every run: with 4 sizes × 3 seeds a line has 12 points and 10 residual
    dof, where the 4 seed means would leave 2. ``True`` first averages y over rows sharing (by, x), as the
    paper, which has one point per subset size (for its points both give the same line). The runs at one
    size share their prompts, so residuals within a size are not fully independent and the slope's CI is,
    if anything, a little narrow; with 4 sizes a cluster-robust SE is not usable. Rows with NaN x or y are dropped. Returns one row per
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


# Figure 4's printed mean MSEs (0–1 reward scale), as printed in the paper (spec §4.4).
PAPER_PRINTED_MSE = {"pro_vs_samples": 1.2e-4, "pro_vs_d": 2.6e-5, "sft_vs_d": 9.3e-6}


def paper_mse_points(key: str) -> float:
    """A printed Figure 4 MSE converted to this project's scale (reward ×100, so MSE × 10⁴, in points²)."""
    return PAPER_PRINTED_MSE[key] * 1e4


def refit_paper(scale: float = 0.01) -> dict[str, pd.DataFrame]:
    """Refit Figure 4 on the paper's own published points (one OLS line per n).

    Keys: ``pro_vs_samples``, ``pro_vs_d``, ``sft_vs_d``. On the paper's 0–1 scale (``scale=0.01``, default)
    the mean MSEs reproduce its printed 1.2e-4 / 2.6e-5 / 9.3e-6 (spec refit: 1.23e-4 / 2.54e-5 / 9.56e-6) —
    evidence that the d values and the fitting procedure are the paper's. ``scale=1`` gives the same fits on
    the ×100 scale used everywhere else here (MSEs × 10⁴). A refit of transcribed numbers, not a reproduction.
    """
    pts = paper_fig4_points()
    pro, sft = pts[pts["algo"] == "pro"], pts[pts["algo"] == "sft"]
    return {
        "pro_vs_samples": fit_lines(pro, x="n_prompts", scale=scale),
        "pro_vs_d": fit_lines(pro, x="d", scale=scale),
        "sft_vs_d": fit_lines(sft, x="d", scale=scale),
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
# Contrasts: estimate, CI, minimum detectable effect, direction
# ---------------------------------------------------------------------------------------------------------
#
# What is shared between two runs decides the test (see divscale/train/runs.py and divscale/data/subsets.py):
# - every run starts from the same warmed-up policy weights (policy.seed) and is scored on the same test
#   prompts. Both are constants of the study, common to *every* run, so they move no cell against another
#   and justify no pairing (an earlier docstring said otherwise; that was wrong);
# - runs with the same #prompts k and the same seed train on the same prompts (nested subsets, one
#   shuffle for every n) in the same order (the Trainer's seed and data_seed are the run's seed, and the
#   sampler permutes the same k prompts). Only these share something per seed, so only a same-k contrast
#   (n=4 vs n=2 on the *same prompts*) may be paired by seed;
# - the equal-budget cells (n, B/n) have different k, hence different prompt sets and data orders: their
#   runs are independent samples. They are compared in one OLS cell-means model over all runs of an
#   algorithm (statsmodels, reward ~ C(cell) with one mean per (n, k) cell): the contrast of two cell means
#   with the residual variance pooled over all cells (df = runs − cells, 24 for 12 cells × 3 seeds instead
#   of ~2–4 for a Welch test on two cells of 3 runs). It assumes the seed-to-seed variance is the same in
#   every cell; :func:`divscale.metrics.stats.welch_contrast` (no such assumption) is reported beside it.
#
# The tests themselves (Welch, paired, one-sample, the MDE beside every CI, bounded intervals of a cell mean) are
# in :mod:`divscale.metrics.stats`; the contrasts below choose among them.


def variance_sources(df: pd.DataFrame, y: str = "reward_global") -> dict:
    """Where a results table's variance comes from, per algorithm.

    ``eval_se``: the mean standard error of one run's reward over test prompts (from its bootstrap CI,
    width / 3.92); ``seed_sd``: the seed-to-seed SD within a cell, pooled over cells (training: data order);
    ``short_answer_r``: the correlation, within cells, of a run's reward with its share of very short answers
    (``short_answer_share``, :func:`divscale.study.pipeline.answer_profile`), and ``short_answer_r2`` its square:
    the part of the seed variance that this one trait of the policy's outputs accounts for."""
    out = {}
    for algo, g in df.dropna(subset=[y]).groupby("algo"):
        row = {"runs": len(g), "seed_sd": pooled_seed_sd(g, y)}
        if {f"{y}_lo", f"{y}_hi"} <= set(g.columns):
            row["eval_se"] = float(((g[f"{y}_hi"] - g[f"{y}_lo"]) / (2 * stats.norm.ppf(0.975))).mean())
        if "short_answer_share" in g.columns and g["short_answer_share"].notna().sum() > 2:
            cells = ["ranking_len", "n_prompts"]
            res_y = g[y] - g.groupby(cells)[y].transform("mean")
            res_s = g["short_answer_share"] - g.groupby(cells)["short_answer_share"].transform("mean")
            ok = res_y.notna() & res_s.notna() & (g.groupby(cells)[y].transform("size") > 1)
            if ok.sum() > 2 and res_s[ok].std() > 0 and res_y[ok].std() > 0:
                r = float(np.corrcoef(res_y[ok], res_s[ok])[0, 1])
                row |= {"short_answer_r": r, "short_answer_r2": r * r}
        out[algo] = row
    return out


def cell_model(df: pd.DataFrame, y: str = "reward_global"):
    """statsmodels OLS ``y ~ C(cell) − 1``: one mean per (ranking_len, n_prompts) cell, residual variance
    pooled over every run of one algorithm. Returns (fitted model, list of cell labels "n{n}_k{k}")."""
    import statsmodels.formula.api as smf

    _one_setting(df, "cell_model")
    data = df.dropna(subset=[y]).copy()
    data["cell"] = [f"n{n}_k{k}" for n, k in zip(data["ranking_len"], data["n_prompts"])]
    data["_y"] = data[y].astype(float)
    import warnings

    with warnings.catch_warnings():          # one run per cell: no residual dof (reported as "no CI")
        warnings.simplefilter("ignore", RuntimeWarning)
        res = smf.ols("_y ~ C(cell) - 1", data=data).fit()
    return res, [name[len("C(cell)["):-1] for name in res.params.index]


def model_contrast(df: pd.DataFrame, a: tuple[int, int], b: tuple[int, int], y: str = "reward_global",
                   confidence: float = 0.95, fitted=None) -> dict:
    """Cell (n_a, k_a) minus cell (n_b, k_b) in :func:`cell_model`: a t-test of the contrast with the pooled
    residual variance (df = runs − cells). Different k: independent runs, nothing paired."""
    res, cells = fitted or cell_model(df, y)
    la, lb = f"n{a[0]}_k{a[1]}", f"n{b[0]}_k{b[1]}"
    for lab in (la, lb):
        if lab not in cells:
            raise ValueError(f"model_contrast: no runs in cell {lab}; cells are {cells}")
    vec = np.zeros(len(cells))
    vec[cells.index(la)], vec[cells.index(lb)] = 1.0, -1.0
    import warnings

    with warnings.catch_warnings():          # no residual dof: NaN SE, reported as "no CI"
        warnings.simplefilter("ignore", RuntimeWarning)
        t = res.t_test(vec)
    est, se, dfr = float(np.squeeze(t.effect)), float(np.squeeze(t.sd)), float(res.df_resid)
    data = df.dropna(subset=[y])
    n_a = int(((data["ranking_len"] == a[0]) & (data["n_prompts"] == a[1])).sum())
    n_b = int(((data["ranking_len"] == b[0]) & (data["n_prompts"] == b[1])).sum())
    if dfr <= 0:
        return t_contrast(est, math.nan, math.nan, "OLS cell means (no residual df: no CI)", n_a, n_b, confidence,
                         res.params.iloc[cells.index(la)], res.params.iloc[cells.index(lb)])
    return t_contrast(est, se, dfr, f"OLS cell means, df {int(dfr)}", n_a, n_b, confidence,
                     res.params.iloc[cells.index(la)], res.params.iloc[cells.index(lb)],
                     pooled_sd=float(math.sqrt(res.scale)),
                     test_detail=f"statsmodels OLS reward ~ C(cell) over {int(res.nobs)} runs in {len(cells)} "
                                 f"cells; t-test of the contrast with the pooled residual variance")


def seed_blocked_contrast(df: pd.DataFrame, a: tuple[int, int], b: tuple[int, int], y: str = "reward_global",
                          confidence: float = 0.95) -> dict:
    """Cell a minus cell b in OLS ``y ~ C(cell) + C(seed)``: the seeds as blocks.

    Every run of a seed starts from the same initial weights and draws its data order from the same seeded
    generator, whatever its cell; where that makes a seed's runs score alike across cells (a shared "good" or
    "bad" seed), the seed blocks take that out of the residual variance. Valid because the verdict cells are
    crossed with the same seeds (a randomised block design); where seeds have no common effect it only costs
    their degrees of freedom. Reported beside the unblocked OLS contrast, never instead of it; the F-test of the
    seed blocks is in ``seed_block_p``."""
    import warnings

    import statsmodels.formula.api as smf

    _one_setting(df, "seed_blocked_contrast")
    data = df.dropna(subset=[y]).copy()
    data["cell"] = [f"n{n}_k{k}" for n, k in zip(data["ranking_len"], data["n_prompts"])]
    data["_y"], data["_seed"] = data[y].astype(float), data["seed"].astype(str)
    la, lb = f"n{a[0]}_k{a[1]}", f"n{b[0]}_k{b[1]}"
    for lab in (la, lb):
        if lab not in set(data["cell"]):
            raise ValueError(f"seed_blocked_contrast: no runs in cell {lab}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = smf.ols("_y ~ C(cell) + C(_seed) - 1", data=data).fit()
        names = list(res.params.index)
        vec = np.zeros(len(names))
        vec[names.index(f"C(cell)[{la}]")], vec[names.index(f"C(cell)[{lb}]")] = 1.0, -1.0
        t = res.t_test(vec)
        seeds = [n for n in names if n.startswith("C(_seed)")]
        p_block = (float(res.f_test(np.eye(len(names))[[names.index(n) for n in seeds]]).pvalue)
                   if seeds and res.df_resid > 0 else math.nan)
    est, se, dfr = float(np.squeeze(t.effect)), float(np.squeeze(t.sd)), float(res.df_resid)
    n_a, n_b = int((data["cell"] == la).sum()), int((data["cell"] == lb).sum())
    if dfr <= 0:
        return t_contrast(est, math.nan, math.nan, "OLS cell means + seed blocks (no residual df: no CI)", n_a, n_b,
                         confidence)
    return t_contrast(est, se, dfr, f"OLS cell means + seed blocks, df {int(dfr)}", n_a, n_b, confidence,
                     pooled_sd=float(math.sqrt(res.scale)), seed_block_p=p_block)


def pooled_seed_sd(df: pd.DataFrame, y: str = "reward_global") -> float:
    """Seed-to-seed SD pooled over the cells of one algorithm (the residual SD of :func:`cell_model`)."""
    res, _ = cell_model(df, y)
    return float(math.sqrt(res.scale)) if res.df_resid > 0 else math.nan


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


CELL_CI_METHOD = "t-interval over seeds on the logit scale, back-transformed (stays in [0, 100])"


def equal_budget_table(df: pd.DataFrame, budgets, y: str = "reward_global", lengths=(2, 3, 4),
                       confidence: float = 0.95) -> pd.DataFrame:
    """Table 1 analogue: mean ``y`` over seeds with a bounded interval (:func:`bounded_interval`) per
    (ranking_len, n_prompts).

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
                mean, lo, hi = bounded_interval(cell[y], confidence=confidence)
                rows.append({"budget_group": budget, "ranking_len": n, "n_prompts": prompts,
                             "budget": n * prompts, "diagonal": n * prompts == budget,
                             "n_seeds": int(cell[y].notna().sum()), "mean": mean, "ci_lo": lo, "ci_hi": hi,
                             "sd": float(cell[y].std(ddof=1)) if len(cell) > 1 else math.nan,
                             "range": float(np.ptp(cell[y])) if len(cell) > 1 else math.nan})
    return pd.DataFrame(rows)


def paper_effect_range(model: str = "OPT-1.3B", split: str = "Global") -> tuple[float, float]:
    """Smallest and largest Δ(n=4 − n=2) of the paper's equal-budget diagonals (Table 1, PRO and SFT at both
    budgets; OPT-1.3B Global: +1.46 to +2.43): the effect size a study must be able to see."""
    t = paper_table1_long()
    t = t[(t["model"] == model) & (t["split"] == split) & t["diagonal"]]
    piv = t.pivot_table(index=["algo", "budget_group"], columns="ranking_len", values="reward")
    delta = piv[4] - piv[2]
    return float(delta.min()), float(delta.max())


def contrast_sentence(label: str, c: dict, paper_range: tuple[float, float] | None = None,
                      unit: str = "points") -> str:
    """One plain sentence for a contrast: estimate with its direction, CI, MDE, test and power verdict."""
    if c.get("identical"):
        return f"{label}: identical arms ({c.get('reason', 'same runs')}); no difference to estimate."
    est = c["estimate"]
    dirn = {"as the paper": "in the paper's direction", "against the paper": "against the paper's direction",
            "zero": "no difference"}.get(c["direction"], c["direction"])
    ci = "no CI" if math.isnan(c["ci_lo"]) else f"{c['confidence']:.0%} CI [{c['ci_lo']:+.1f}, {c['ci_hi']:+.1f}]"
    text = f"{label}: {est:+.1f} {unit} ({dirn}), {ci}, MDE {c['mde']:.1f} ({c['test']}): {c['status']}"
    if paper_range is not None:
        lo, hi = paper_range
        if math.isnan(c["mde"]):
            text += f"; no MDE, so an effect of the paper's size ({lo:+.1f} to {hi:+.1f}) cannot be judged"
        elif c["mde"] > hi:
            text += (f"; an effect of the paper's size ({lo:+.1f} to {hi:+.1f}) is {c['mde'] / hi:.0f}× smaller "
                     f"than the MDE and could not have been seen")
        else:
            text += f"; an effect of the paper's size ({lo:+.1f} to {hi:+.1f}) could have been seen"
    return text + "."


def more_responses_beat_more_prompts(df: pd.DataFrame, budget: int, y: str = "reward_global",
                                     method: str = "ols", confidence: float = 0.95) -> dict:
    """Does (n=4, B/4 prompts) beat (n=2, B/2 prompts) at an equal budget of B responses? And n=3 vs n=2?

    The cells have different prompt sets (different k), so their runs are independent and nothing is
    paired. ``method="ols"`` (default) tests the difference of cell means in :func:`cell_model`, one OLS
    model over all runs of the algorithm with the seed variance pooled over every cell; ``method="welch"``
    uses only the two cells' runs (Welch's t). Pairing by seed is refused: runs with the same seed but
    different k share neither prompts nor data order (see the comment above :func:`variance_sources`).
    A comparison "holds" when its CI lies above 0, "does not hold" when below, and is "inconclusive" when
    the CI spans 0 or a cell has a single run. Returns the cells' means, both contrasts (dicts with estimate,
    CI, MDE, test, direction: ``contrast_4_vs_2``), the legacy keys diff_/ci_/status_/mde_, and a
    plain-language ``verdict`` that states each estimate's direction, its MDE and whether an effect of the
    paper's size could have been detected.
    """
    if method not in ("ols", "welch"):
        raise ValueError(f"method must be 'ols' or 'welch', got {method!r} (the equal-budget cells have "
                         "different prompts, so pairing them by seed is not valid)")
    _one_setting(df, "more_responses_beat_more_prompts")
    data = df.dropna(subset=[y])
    cells = {n: data[(data["ranking_len"] == n) & (data["n_prompts"] == _diagonal_prompts(budget, n))]
             for n in (2, 3, 4)}
    missing = [f"(n={n}, {_diagonal_prompts(budget, n)} prompts)" for n in (2, 4) if cells[n].empty]
    if missing:
        raise ValueError(f"budget {budget}: no runs for equal-budget cell(s) {', '.join(missing)}")
    fitted = cell_model(data, y) if method == "ols" else None
    paper = paper_effect_range()
    out = {"budget": budget, "y": y, "method": method, "confidence": confidence, "paper_range": paper,
           "cells": {n: {"n_prompts": _diagonal_prompts(budget, n), "runs": len(c),
                         "mean": float(c[y].mean()) if len(c) else math.nan} for n, c in cells.items()}}
    parts = []
    for n in (4, 3):
        key = f"{n}_vs_2"
        if cells[n].empty:
            out[f"diff_{key}"], out[f"ci_{key}"], out[f"status_{key}"] = math.nan, (math.nan, math.nan), "missing"
            out[f"mde_{key}"], out[f"contrast_{key}"] = math.nan, None
            parts.append(f"n={n} vs n=2: no runs for (n={n}, {_diagonal_prompts(budget, n)} prompts)")
            continue
        if method == "ols":
            c = model_contrast(data, (n, _diagonal_prompts(budget, n)), (2, _diagonal_prompts(budget, 2)), y,
                               confidence, fitted=fitted)
        else:
            c = welch_contrast(cells[n][y], cells[2][y], confidence)
        c |= {"comparison": f"n={n} - n=2", "budget": budget}
        out[f"contrast_{key}"] = c
        out[f"diff_{key}"], out[f"ci_{key}"], out[f"status_{key}"] = c["estimate"], (c["ci_lo"], c["ci_hi"]), c["status"]
        out[f"mde_{key}"], out[f"runs_{key}"] = c["mde"], min(c["n_a"], c["n_b"])
        parts.append(contrast_sentence(f"n={n} − n=2", c, paper if n == 4 else None).rstrip("."))
    out["verdict"] = (f"More responses beat more prompts at {budget:,} responses? " + "; ".join(parts) + ".")
    return out


def same_prompts_contrast(df: pd.DataFrame, n_prompts: int, n: int = 4, baseline: int = 2,
                          y: str = "reward_global", confidence: float = 0.95) -> dict:
    """n-rankings vs ``baseline``-rankings on the *same* k prompts (not an equal budget: n=4 costs twice the
    responses). Same k and same seed share the prompts and their order, so runs are paired by seed."""
    _one_setting(df, "same_prompts_contrast")
    data = df.dropna(subset=[y])
    a = data[(data["ranking_len"] == n) & (data["n_prompts"] == n_prompts)]
    b = data[(data["ranking_len"] == baseline) & (data["n_prompts"] == n_prompts)]
    if a.empty or b.empty:
        raise ValueError(f"same_prompts_contrast: no runs for n={n} or n={baseline} at k={n_prompts}")
    return paired_contrast(a, b, y, confidence=confidence) | {"comparison": f"n={n} - n={baseline}",
                                                              "n_prompts": int(n_prompts)}


def arms_identical(df: pd.DataFrame, by: str, a: str, b: str) -> str | None:
    """Why arms ``a`` and ``b`` (values of column ``by``) are one experiment, or None when they are two.

    The package's one rule for "identical arms", asked by every contrast and table of augmentation or selection
    arms: two arms are identical when they trained the same runs (the same set of ``run_id``), or when their
    ``identical_to`` roots coincide. :func:`divscale.tools.select.identical_arms` marks an arm whose prompt set
    equals an earlier arm's with that earlier arm (an unmarked arm is its own root), so two arms that train on
    one prompt set share a root even when neither names the other. A difference between such arms would compare
    runs with themselves."""
    ra, rb = df[df[by] == a], df[df[by] == b]
    if "run_id" in df.columns and len(ra) and set(ra["run_id"]) == set(rb["run_id"]):
        return f"{a!r} and {b!r} trained the same {len(ra)} runs (same run ids)"
    if "identical_to" in df.columns:
        root = {arm: t for arm, t in zip(df[by], df["identical_to"]) if isinstance(t, str) and t}
        if root.get(a, a) == root.get(b, b):
            return f"{a!r} and {b!r} selected the same prompt set (identical_to)"
    return None


def method_contrast(df: pd.DataFrame, by: str, baseline: str, compare: str, y: str = "reward_global",
                    confidence: float = 0.95) -> dict:
    """``compare`` − ``baseline`` (rows labelled in column ``by``, one algorithm) for augmentation / selection
    arms. The arms train on different prompt sets, so their runs are independent: Welch's t. Identical arms
    (:func:`arms_identical`) are reported as ``identical`` with no CI: comparing runs with themselves is not
    evidence of anything."""
    _one_setting(df, "method_contrast")
    a, b = df[df[by] == compare].dropna(subset=[y]), df[df[by] == baseline].dropna(subset=[y])
    if a.empty or b.empty:
        raise ValueError(f"method_contrast: no runs for {compare!r} or {baseline!r} in column {by!r}")
    label = {"comparison": f"{compare} - {baseline}", "by": by}
    why = arms_identical(df, by, compare, baseline)
    if why:
        return {"estimate": 0.0, "ci_lo": None, "ci_hi": None, "mde": None, "test": "none (identical arms)",
                "n_runs": len(a), "n_a": len(a), "n_b": len(b), "identical": True,
                "reason": why, "status": "identical arms", "direction": "zero", **label}
    return welch_contrast(a[y], b[y], confidence) | label


METHOD_TABLE_COLUMNS = ["algo", "comparison", "estimate", "ci_lo", "ci_hi", "mde", "n_a", "n_b", "test", "status"]


def method_table(df: pd.DataFrame, by: str, baseline: str, compare: str | list[str], y: str = "reward_global",
                 confidence: float = 0.95) -> pd.DataFrame:
    """:func:`method_contrast` of each arm in ``compare`` against ``baseline``, per algorithm: one row each (what
    the augmentation and selection notebooks show)."""
    arms = [compare] if isinstance(compare, str) else list(compare)
    rows = [{"algo": algo} | method_contrast(g, by, baseline, arm, y, confidence)
            for arm in arms for algo, g in df.groupby("algo", sort=True)]
    return pd.DataFrame(rows, columns=METHOD_TABLE_COLUMNS)


def regression_sentence(algo: str, fits_d: pd.DataFrame, fits_n: pd.DataFrame | None = None) -> str:
    """Plain statement of the per-n lines of reward on d (and on #prompts): each slope with its sign and CI,
    how many point the paper's way (rising), and whether d fits better than the prompt count."""
    parts = [f"n={int(r.ranking_len)} {r.slope:+.2f} [{r.slope_lo:+.2f}, {r.slope_hi:+.2f}]"
             for r in fits_d.itertuples()]
    neg = int((fits_d["slope"] < 0).sum())
    runs = " / ".join(f"{int(r.n_points)}" for r in fits_d.itertuples())
    text = (f"{algo.upper()}: slopes of reward on d (points per unit d, 95% CI; {runs} runs on the lines "
            f"{' / '.join(f'n={int(r.ranking_len)}' for r in fits_d.itertuples())}): {'; '.join(parts)}. {neg} of {len(fits_d)} are negative (against the paper), "
            f"{int((fits_d['slope_lo'] > 0).sum())} have a CI above 0, {int((fits_d['slope_hi'] < 0).sum())} below")
    if fits_n is not None:
        md, mn = mean_mse(fits_d), mean_mse(fits_n)
        text += (f"; the mean MSE on d, {md:.2f} points², is {'smaller' if md < mn else 'larger'} than on "
                 f"#prompts, {mn:.2f}")
    return text + "."


def cell_spread(df: pd.DataFrame, y: str = "reward_global") -> dict:
    """The largest seed-to-seed spread of one (algo, n, k) cell: its range and SD, and which cell
    (None when no cell has two seeds)."""
    keys = [c for c in ("algo", "ranking_len", "n_prompts") if c in df.columns]
    g = df.dropna(subset=[y]).groupby(keys)[y]
    spread = pd.DataFrame({"range": g.max() - g.min(), "sd": g.std(ddof=1), "runs": g.size()})
    spread = spread[spread["runs"] > 1]
    if spread.empty:          # one seed per cell (e.g. the smoke profile): there is no seed spread to report
        return None
    top = spread["range"].idxmax()
    return {"max_range": float(spread["range"].max()), "sd_of_that_cell": float(spread.loc[top, "sd"]),
            "max_sd": float(spread["sd"].max()), "cell": dict(zip(keys, [v.item() if hasattr(v, "item") else v
                                                                           for v in (top if isinstance(top, tuple)
                                                                                     else (top,))]))}


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


# ---------------------------------------------------------------------------------------------------------
# The equal-budget contrast split into its two parts
# ---------------------------------------------------------------------------------------------------------

def budget_decomposition(df: pd.DataFrame, budget: int, n_hi: int = 4, n_lo: int = 2, y: str = "reward_global",
                         confidence: float = 0.95) -> dict:
    """The equal-budget contrast at ``budget`` responses and its two parts, which add up to it exactly::

        total   = (n_hi, B/n_hi) - (n_lo, B/n_lo)   longer rankings of fewer prompts, at an equal budget
        prompts = (n_lo, B/n_hi) - (n_lo, B/n_lo)   the prompt-count part: fewer prompts, same ranking length
        length  = (n_hi, B/n_hi) - (n_lo, B/n_hi)   the ranking-length part: longer rankings of the same prompts

    At a fixed step budget fewer prompts are also seen more often, so the prompt-count part holds the effect of
    repetition as well as of fewer distinct prompts; the ranking-length part is what the longer rankings buy on
    the same prompts. Tests, pairing only what is paired: ``total`` and ``prompts`` compare different prompt
    sets (independent runs: Welch's t); ``length`` compares the same prompts with the same seeds (same initial
    weights and data order: a paired t by seed). Each part carries its CI and MDE; ``gap`` is total minus the
    sum of the parts' estimates (0 when both cells of the paired part have the same seeds)."""
    _one_setting(df, "budget_decomposition")
    data = df.dropna(subset=[y])
    k_hi, k_lo = _diagonal_prompts(budget, n_hi), _diagonal_prompts(budget, n_lo)

    def cell(n, k):
        c = data[(data["ranking_len"] == n) & (data["n_prompts"] == k)]
        if c.empty:
            raise ValueError(f"budget_decomposition: no runs in cell (n={n}, k={k}); the decomposition of budget "
                             f"{budget} needs (n={n_hi}, k={k_hi}), (n={n_lo}, k={k_lo}) and (n={n_lo}, k={k_hi})")
        return c

    a, b, c = cell(n_hi, k_hi), cell(n_lo, k_hi), cell(n_lo, k_lo)
    total = welch_contrast(a[y], c[y], confidence) | {"comparison": f"(n={n_hi}, k={k_hi}) - (n={n_lo}, k={k_lo})",
                                                      "part": "total"}
    prompts = welch_contrast(b[y], c[y], confidence) | {"comparison": f"(n={n_lo}, k={k_hi}) - (n={n_lo}, k={k_lo})",
                                                        "part": "prompt count"}
    length = paired_contrast(a, b, y, confidence=confidence) | {
        "comparison": f"(n={n_hi}, k={k_hi}) - (n={n_lo}, k={k_hi})", "part": "ranking length"}
    gap = total["estimate"] - prompts["estimate"] - length["estimate"]
    return {"budget": int(budget), "n_hi": n_hi, "n_lo": n_lo, "k_hi": k_hi, "k_lo": k_lo, "y": y,
            "cells": {f"n{n}_k{k}": {"runs": len(x), "mean": float(x[y].mean()),
                                     "seeds": sorted(int(s) for s in x["seed"])}
                      for (n, k), x in (((n_hi, k_hi), a), ((n_lo, k_hi), b), ((n_lo, k_lo), c))},
            "total": total, "prompts": prompts, "length": length, "gap": float(gap)}


def paper_budget_decomposition(n_hi: int = 4, n_lo: int = 2) -> pd.DataFrame:
    """The same split of the paper's Table 1 (one number per cell, no seeds, so no CI): for every setting
    (algo, model, split) and both equal budgets, the total (n_hi, B/n_hi) - (n_lo, B/n_lo) and its prompt-count
    and ranking-length parts. Reward ×100."""
    t = paper_table1_long()
    rows = []
    for (algo, model, split, budget), g in t.groupby(["algo", "model", "split", "budget_group"]):
        r = {(int(n), int(k)): float(v) for n, k, v in zip(g["ranking_len"], g["n_prompts"], g["reward"])}
        k_hi, k_lo = _diagonal_prompts(budget, n_hi), _diagonal_prompts(budget, n_lo)
        need = [(n_hi, k_hi), (n_lo, k_hi), (n_lo, k_lo)]
        if not all(x in r for x in need):
            continue
        rows.append({"algo": algo, "model": model, "split": split, "budget": int(budget), "k_hi": k_hi, "k_lo": k_lo,
                     "total": r[(n_hi, k_hi)] - r[(n_lo, k_lo)], "prompts": r[(n_lo, k_hi)] - r[(n_lo, k_lo)],
                     "length": r[(n_hi, k_hi)] - r[(n_lo, k_hi)]})
    return pd.DataFrame(rows)


PARTS = ("total", "prompts", "length")


def paper_part_signs(n_hi: int = 4, n_lo: int = 2) -> dict[str, int]:
    """The sign of each part of :func:`paper_budget_decomposition` where every Table 1 setting (algorithm, model,
    split, budget) agrees on it, else 0: the direction "as the paper" of our total and of each part."""
    t = paper_budget_decomposition(n_hi, n_lo)
    out = {}
    for part in PARTS:
        signs = set(np.sign(t[part]).astype(int))
        out[part] = signs.pop() if len(signs) == 1 else 0
    return out


def part_direction(estimate: float, paper_sign: int) -> str:
    """"as the paper" / "against the paper" for a part whose sign every Table 1 setting shares; otherwise
    "the paper's settings disagree in sign"."""
    if paper_sign == 0:
        return "the paper's settings disagree in sign"
    return direction(estimate, paper_sign)


def primary_decomposition(df: pd.DataFrame, algo: str, budget: int, n_hi: int = 4, n_lo: int = 2,
                          y: str = "reward_global") -> dict:
    """The declared primary contrast (``grid.primary``) on one algorithm's runs: :func:`budget_decomposition`
    with each part's direction against the sign the paper's Table 1 gives that part (:func:`paper_part_signs`)
    and the paper's own split of every Table 1 setting beside it (``paper``: rows of
    :func:`paper_budget_decomposition` for ``algo``)."""
    data = df[df["algo"] == algo] if "algo" in df.columns else df
    dec = budget_decomposition(data, budget, n_hi, n_lo, y)
    signs = paper_part_signs(n_hi, n_lo)
    for part in PARTS:
        dec[part] = dec[part] | {"direction": part_direction(dec[part]["estimate"], signs[part]),
                                 "paper_sign": signs[part]}
    paper = paper_budget_decomposition(n_hi, n_lo)
    dec["algo"] = algo
    dec["paper"] = paper[paper["algo"] == algo].to_dict("records")
    dec["paper_signs"] = signs
    return dec


def paired_wins(a: pd.DataFrame, b: pd.DataFrame, y: str = "reward_global", on: str = "seed") -> dict:
    """In how many of the pairs matched by ``on`` run a scores above run b (ties count for neither): the
    plain count beside a paired contrast, e.g. "β = 0 beat the paper's β in 4 of 4 pairs"."""
    m = a[[on, y]].merge(b[[on, y]], on=on, suffixes=("_a", "_b")).dropna()
    return {"pairs": len(m), "a_above": int((m[f"{y}_a"] > m[f"{y}_b"]).sum()),
            "b_above": int((m[f"{y}_a"] < m[f"{y}_b"]).sum()), "on": sorted(int(s) for s in m[on])}


def variance_decomposition(df: pd.DataFrame, cells, y: str = "reward_global") -> dict:
    """Where the spread of the replicates of ``cells`` [(n, k), ...] comes from, per cell and pooled.

    ``sd``: the SD between a cell's replicates (training seed and, with ``data.redraw_per_seed``, the data draw);
    ``eval_se``: the mean standard error of one run's reward over its test prompts (its bootstrap 95% interval's
    width / 2z); ``eval_share``: eval_se² / sd², the share of the replicate variance that re-sampling the test
    prompts alone would produce (near 0: the test set is not the noise; near 1: it is all of it);
    ``draws``: the distinct data draws among the replicates. ``pooled``: the same with the variances pooled over
    the cells (weights: replicates − 1)."""
    data, z = df.dropna(subset=[y]), float(stats.norm.ppf(0.975))
    out, num, den, se2 = {}, 0.0, 0, []
    for n, k in cells:
        c = data[(data["ranking_len"] == n) & (data["n_prompts"] == k)]
        if c.empty:
            continue
        sd = float(c[y].std(ddof=1)) if len(c) > 1 else math.nan
        se = (float(((c[f"{y}_hi"] - c[f"{y}_lo"]) / (2 * z)).mean())
              if {f"{y}_lo", f"{y}_hi"} <= set(c.columns) and c[f"{y}_hi"].notna().any() else math.nan)
        draws = sorted(int(v) for v in c["draw"].dropna().unique()) if "draw" in c.columns else []
        out[f"n{n}_k{k}"] = {"n": int(n), "k": int(k), "runs": len(c), "mean": float(c[y].mean()), "sd": sd,
                             "eval_se": se, "eval_share": se * se / (sd * sd) if sd and np.isfinite(sd) else math.nan,
                             "draws": len(draws)}
        if len(c) > 1:
            num += (len(c) - 1) * sd * sd
            den += len(c) - 1
        if np.isfinite(se):
            se2.append(se * se)
    pooled_sd = math.sqrt(num / den) if den else math.nan
    pooled_se = math.sqrt(float(np.mean(se2))) if se2 else math.nan
    return {"cells": out, "pooled": {"sd": pooled_sd, "df": den, "eval_se": pooled_se,
                                     "eval_share": pooled_se ** 2 / pooled_sd ** 2 if den and pooled_sd else math.nan}}


def slope_counts(fits: pd.DataFrame) -> dict:
    """How a set of per-n lines (:func:`fit_lines`) point: slopes below 0, CIs above 0, CIs below 0, and
    the points per line."""
    return {"lines": len(fits), "negative_slopes": int((fits["slope"] < 0).sum()),
            "slope_ci_above_0": int((fits["slope_lo"] > 0).sum()),
            "slope_ci_below_0": int((fits["slope_hi"] < 0).sum()),
            "points": {int(r.ranking_len): int(r.n_points) for r in fits.itertuples()}}


def slopes_without_size(df: pd.DataFrame, size: int, x: str = "d", y: str = "reward_global") -> dict | None:
    """:func:`slope_counts` of the per-n lines refitted without the runs at subset size ``size`` (e.g. the
    smallest, single-replicate size): whether the slopes' verdicts rest on those runs. None when a line would
    be left with fewer than two distinct x values."""
    rest = df[df["n_prompts"] != size]
    try:
        fits = fit_lines(rest, x=x, y=y, by="ranking_len")
    except ValueError:
        return None
    return slope_counts(fits) | {"without_size": int(size)}
