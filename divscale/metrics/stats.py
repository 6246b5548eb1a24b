"""The statistics every part of the study uses, in one module.

- **Intervals of a score over test prompts**: :func:`bootstrap_ci` (percentile bootstrap of any statistic),
  :func:`stratified_bootstrap_ci` (of a weighted mean of strata, the test files: "Global" in
  :mod:`divscale.reward.evaluate`), :func:`paired_win_rate` (two policies on the same prompts).
- **Proportions**: :func:`wilson_ci` (reward-model accuracies, win rates: unlike a percentile bootstrap it does not
  shrink to a point when every case goes one way); :func:`sigmoid` maps an RM logit to the paper's reward scale.
- **Contrasts over training runs** (seeds): :func:`welch_contrast` (independent runs), :func:`paired_contrast` (runs
  matched by seed), :func:`versus_reference` (one-sample, against a fixed number), each a dict built by
  :func:`t_contrast` with its t interval, its minimum detectable effect (:func:`mde`), a status
  (:func:`ci_status`) and a direction against the paper's claim (:func:`direction`);
  :func:`bounded_interval` for the mean of a few bounded scores (a t interval on the logit scale).

Which test fits which comparison (what two runs share) is the study's question and is answered in
:mod:`divscale.report.analysis`; this module only computes.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

# ---------------------------------------------------------------------------------------------------------
# Bootstrap intervals over test prompts
# ---------------------------------------------------------------------------------------------------------


def bootstrap_ci(values, n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
                 stat: Callable = np.mean) -> tuple[float, float]:
    """Percentile-bootstrap CI of ``stat(values)``: resample with replacement ``n_boot`` times.

    Vectorised: ``stat`` is called with ``axis=1`` on a (chunk, n) matrix of resamples
    (numpy reductions such as ``np.mean``/``np.median`` accept it).
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    rng = np.random.default_rng(seed)
    n = values.size
    chunk = max(1, min(n_boot, 4_000_000 // n))          # bound memory to ~32 MB of resamples
    stats = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        stats.append(np.asarray(stat(values[idx], axis=1), dtype=np.float64))
    stats = np.concatenate(stats)
    alpha = (1.0 - ci) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return float(lo), float(hi)


def stratified_bootstrap_ci(groups: dict[str, Sequence[float]], weights: dict[str, float], n_boot: int = 1000,
                            ci: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap CI of the weighted mean ``sum_s weights[s] * mean(groups[s])``.

    Each replicate resamples every group with replacement *within* the group (its own size), keeping
    the weights fixed: the strata (test files) are part of the design, not random. The interval of a
    weighted mean of values in [a, b] stays in [a, b]."""
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if not groups:
        raise ValueError("stratified_bootstrap_ci needs at least one group")
    rng = np.random.default_rng(seed)
    total = np.zeros(n_boot)
    for name in sorted(groups):                     # fixed order: the same draws whatever the dict order
        values = np.asarray(groups[name], dtype=np.float64).reshape(-1)
        if values.size == 0:
            raise ValueError(f"group {name!r} is empty")
        n = values.size
        chunk = max(1, min(n_boot, 4_000_000 // n))
        means = [values[rng.integers(0, n, size=(min(chunk, n_boot - start), n))].mean(axis=1)
                 for start in range(0, n_boot, chunk)]
        total += weights[name] * np.concatenate(means)
    alpha = (1.0 - ci) / 2
    lo, hi = np.quantile(total, [alpha, 1 - alpha])
    return float(lo), float(hi)


def paired_win_rate(scores_a, scores_b, n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
                    tie_tol: float = 0.0) -> dict:
    """Compare two policies prompt by prompt (same prompts, same order).

    A prompt is a win for A if ``a - b > tie_tol``, a loss if ``b - a > tie_tol``, else a tie.
    Returns the win/tie/lose fractions and ``win_rate`` = win + tie/2 with a bootstrap CI.
    """
    a = np.asarray(scores_a, dtype=np.float64).reshape(-1)
    b = np.asarray(scores_b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same prompts: {a.size} vs {b.size} scores")
    if a.size == 0:
        raise ValueError("paired_win_rate needs at least one prompt")
    diff = a - b
    outcome = np.where(diff > tie_tol, 1.0, np.where(diff < -tie_tol, 0.0, 0.5))
    return _outcome_summary(outcome, n_boot, seed, ci)


def _outcome_summary(outcome: np.ndarray, n_boot: int, seed: int, ci: float) -> dict:
    lo, hi = bootstrap_ci(outcome, n_boot=n_boot, ci=ci, seed=seed)
    return {"n": int(outcome.size), "win": float(np.mean(outcome == 1.0)),
            "tie": float(np.mean(outcome == 0.5)), "lose": float(np.mean(outcome == 0.0)),
            "win_rate": float(outcome.mean()), "ci": [lo, hi]}


# ---------------------------------------------------------------------------------------------------------
# Proportions and the reward scale
# ---------------------------------------------------------------------------------------------------------

def wilson_ci(successes: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a proportion (95% by default). Half-counted ties give a fractional count."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function 1 / (1 + e^-x), in float64 (written with tanh: no overflow for large |x|)."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))


# ---------------------------------------------------------------------------------------------------------
# t intervals and contrasts over training runs
# ---------------------------------------------------------------------------------------------------------

# Every contrast carries its minimum detectable effect (MDE): the true difference that a two-sided test at
# α = 0.05 detects with 80% power given the observed standard error, MDE = (t_{1−α/2, df} + t_{power, df})·SE.
# Rewards are 100 × mean sigmoid(logit) ∈ [0, 100]; a *difference* of two such means lies in [−100, 100],
# far from where its t-interval ends, so difference CIs stay on the reward scale, while intervals of a cell
# mean use :func:`bounded_interval`.

ALPHA = 0.05
POWER = 0.8


def mde(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable effect of a t-test: (t_{1−α/2, df} + t_{power, df}) · SE.

    The smallest true difference that a two-sided level-α test with standard error ``se`` and ``df``
    degrees of freedom detects with probability ``power`` (normal approximation of the non-central t)."""
    if not (np.isfinite(se) and np.isfinite(df) and df > 0):
        return math.nan
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se)


def bounded_interval(values, lower: float = 0.0, upper: float = 100.0,
                     confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi) for the mean of a few values of a score bounded in [lower, upper] (seeds' rewards ×100).

    The interval is a Student-t interval on the logit scale, logit((x − lower) / (upper − lower)),
    back-transformed, so it never leaves [lower, upper] (a plain t-interval of three rewards near 0 reaches
    below 0). It is an interval for the back-transformed logit mean; the point returned is the arithmetic
    mean of the values, which for very skewed seeds can lie outside it (figures draw both as they are).
    Values on a bound are moved 0.1% of the range inside it. NaNs are dropped; fewer than two values give NaN bounds."""
    x = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce").dropna(), dtype=float)
    if len(x) == 0:
        return (math.nan, math.nan, math.nan)
    if (x < lower).any() or (x > upper).any():
        raise ValueError(f"bounded_interval: values outside [{lower}, {upper}]: {x[(x < lower) | (x > upper)]}")
    mean = float(x.mean())
    if len(x) < 2:
        return (mean, math.nan, math.nan)
    width = upper - lower
    u = np.clip((x - lower) / width, 1e-3, 1 - 1e-3)
    z = np.log(u / (1 - u))
    half = stats.t.ppf(0.5 + confidence / 2, len(z) - 1) * z.std(ddof=1) / math.sqrt(len(z))
    back = lambda v: lower + width / (1 + math.exp(-v))
    return (mean, back(z.mean() - half), back(z.mean() + half))


def ci_status(lo: float, hi: float) -> str:
    """A claim "a > b" judged by the CI of a − b: holds (CI above 0), does not hold (below), inconclusive."""
    if math.isnan(lo) or math.isnan(hi):
        return "inconclusive (one run per cell: no CI)"
    if lo > 0:
        return "holds"
    if hi < 0:
        return "does not hold"
    return "inconclusive (CI spans 0)"


def direction(estimate: float, expected_sign: int = 1) -> str:
    """Whether an estimate points the way the paper predicts (``expected_sign``: +1 "higher is the claim")."""
    if not np.isfinite(estimate):
        return "unknown"
    if estimate == 0:
        return "zero"
    return "as the paper" if np.sign(estimate) == expected_sign else "against the paper"


def t_contrast(estimate, se, df, test, n_a, n_b, confidence, mean_a=math.nan, mean_b=math.nan,
               ci=None, **extra) -> dict:
    """The dict every contrast returns: the estimate with its ``confidence`` t interval (from ``se`` and ``df``,
    or ``ci`` when the test gives its own), its MDE, the test's name, the runs on each side, their means, the
    :func:`ci_status` and the :func:`direction`; ``extra`` keys are added. No ``se`` (one run on a side): NaN
    interval and MDE."""
    if ci is None:
        half = stats.t.ppf(0.5 + confidence / 2, df) * se if np.isfinite(se) and df > 0 else math.nan
        ci = (estimate - half, estimate + half)
    lo, hi = (float(ci[0]), float(ci[1])) if np.isfinite(ci[0]) else (math.nan, math.nan)
    return {"estimate": float(estimate), "ci_lo": lo, "ci_hi": hi, "se": float(se), "df": float(df),
            "mde": mde(se, df), "confidence": confidence, "alpha": ALPHA, "power": POWER, "test": test,
            "n_runs": int(n_a + n_b), "n_a": int(n_a), "n_b": int(n_b), "mean_a": float(mean_a),
            "mean_b": float(mean_b), "status": ci_status(lo, hi), "direction": direction(estimate),
            "identical": False, **extra}


def welch_contrast(a, b, confidence: float = 0.95) -> dict:
    """mean(a) − mean(b) for independent runs: Welch's t (unequal variances, Welch–Satterthwaite df)."""
    xa = np.asarray(pd.Series(a).dropna(), dtype=float)
    xb = np.asarray(pd.Series(b).dropna(), dtype=float)
    if len(xa) == 0 or len(xb) == 0:
        raise ValueError("welch_contrast needs at least one run on each side")
    est = float(xa.mean() - xb.mean())
    if len(xa) < 2 or len(xb) < 2:
        return t_contrast(est, math.nan, math.nan, "Welch t (one run on a side: no CI)", len(xa), len(xb),
                          confidence, xa.mean(), xb.mean())
    res = stats.ttest_ind(xa, xb, equal_var=False)
    ci = res.confidence_interval(confidence)
    se = math.sqrt(xa.var(ddof=1) / len(xa) + xb.var(ddof=1) / len(xb))
    return t_contrast(est, se, float(res.df), "Welch t (independent runs)", len(xa), len(xb), confidence,
                      xa.mean(), xb.mean(), ci=(ci.low, ci.high))


def paired_contrast(a: pd.DataFrame, b: pd.DataFrame, y: str, on: str = "seed", confidence: float = 0.95) -> dict:
    """mean(a − b) over runs matched by ``on`` (seed): a paired t-test. Valid only where the two runs of a
    pair share something per seed (same prompts in the same order: a same-k contrast)."""
    m = a[[on, y]].merge(b[[on, y]], on=on, suffixes=("_a", "_b")).dropna()
    diff = (m[f"{y}_a"] - m[f"{y}_b"]).to_numpy(float)
    if len(diff) == 0:
        raise ValueError(f"paired_contrast: no {on} in common")
    if len(diff) < 2:
        return t_contrast(float(diff.mean()), math.nan, math.nan, f"paired t by {on} (one pair: no CI)",
                          len(diff), len(diff), confidence, m[f"{y}_a"].mean(), m[f"{y}_b"].mean())
    se = float(diff.std(ddof=1) / math.sqrt(len(diff)))
    return t_contrast(float(diff.mean()), se, len(diff) - 1, f"paired t by {on} ({len(diff)} pairs)",
                      len(diff), len(diff), confidence, m[f"{y}_a"].mean(), m[f"{y}_b"].mean())


def versus_reference(values, reference: float, confidence: float = 0.95) -> dict:
    """mean(values) − ``reference`` with a one-sample t interval over the runs: e.g. fine-tuned runs against
    the policy before fine-tuning, evaluated on the same test prompts. The test set is held fixed (as in
    every seed CI here), so the interval is over training runs; the reference's own bootstrap CI over
    prompts is reported beside it, not folded in."""
    x = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce").dropna(), dtype=float) - float(reference)
    if len(x) < 2:
        return t_contrast(float(x.mean()) if len(x) else math.nan, math.nan, math.nan,
                          "one-sample t over runs (fewer than 2 runs: no CI)", len(x), 0, confidence)
    se = float(x.std(ddof=1) / math.sqrt(len(x)))
    return t_contrast(float(x.mean()), se, len(x) - 1, f"one-sample t over {len(x)} runs vs a fixed reference",
                      len(x), 0, confidence, float(x.mean() + reference), float(reference))
