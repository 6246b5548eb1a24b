"""divscale.metrics.stats: the study's statistics (bootstrap, Wilson, sigmoid, t contrasts and MDE), in one module."""
from __future__ import annotations

import ast
import math

import numpy as np
import pytest
from scipy import stats as sps

from divscale import paths
from divscale.metrics import stats


def test_the_statistics_are_defined_in_stats_only():
    """One place: no other module of the package defines a function of the same name."""
    names = {n for n, v in vars(stats).items() if callable(v) and getattr(v, "__module__", "") == stats.__name__}
    assert {"bootstrap_ci", "stratified_bootstrap_ci", "wilson_ci", "sigmoid", "mde", "welch_contrast",
            "paired_contrast", "versus_reference", "bounded_interval", "t_contrast"} <= names
    elsewhere = sorted(f"{p.relative_to(paths.ROOT)}: {node.name}"
                       for p in (paths.ROOT / "divscale").rglob("*.py") if p.name != "stats.py"
                       for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.FunctionDef)
                       and node.name in names)
    assert not elsewhere, elsewhere


def test_sigmoid():
    x = np.array([-1000.0, -2.0, 0.0, 3.0, 1000.0])
    assert stats.sigmoid(x) == pytest.approx(1 / (1 + np.exp(-np.clip(x, -700, 700))))
    assert stats.sigmoid(0.0) == 0.5 and stats.sigmoid(np.log(3)) == pytest.approx(0.75)


def test_bootstrap_ci_contains_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 500, 5000):
        x = rng.normal(0.5, 0.2, size=n)
        lo, hi = stats.bootstrap_ci(x, n_boot=1000, seed=1)
        assert lo < x.mean() < hi
        # the percentile CI of a mean is close to the normal-theory one
        half = 1.96 * x.std(ddof=1) / np.sqrt(n)
        assert (hi - lo) == pytest.approx(2 * half, rel=0.15)
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert stats.bootstrap_ci(x, seed=3) == stats.bootstrap_ci(x, seed=3)
    lo, hi = stats.bootstrap_ci([1.0, 2.0, 100.0, 3.0, 2.5], stat=np.median, seed=0)
    assert 1.0 <= lo <= 2.5 <= hi <= 100.0
    assert stats.bootstrap_ci([4.2]) == (4.2, 4.2)
    with pytest.raises(ValueError):
        stats.bootstrap_ci([])


def test_paired_win_rate_known_inputs():
    a, b = [1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 5.0, 1.0]
    res = stats.paired_win_rate(a, b, n_boot=500, seed=0)
    assert (res["win"], res["tie"], res["lose"]) == (0.5, 0.25, 0.25)
    assert res["win_rate"] == pytest.approx(0.625)
    assert res["ci"][0] <= 0.625 <= res["ci"][1]
    swapped = stats.paired_win_rate(b, a, n_boot=500, seed=0)
    assert swapped["win"] == res["lose"] and swapped["win_rate"] == pytest.approx(0.375)
    assert stats.paired_win_rate([1, 2], [1.05, 1.0], tie_tol=0.1)["tie"] == 0.5
    with pytest.raises(ValueError, match="same prompts"):
        stats.paired_win_rate([1, 2], [1])


def test_wilson_interval():
    lo, hi = stats.wilson_ci(60, 100)
    assert lo < 0.6 < hi and lo == pytest.approx(0.502, abs=1e-3) and hi == pytest.approx(0.691, abs=1e-3)
    assert stats.wilson_ci(0, 10)[0] == 0.0 and stats.wilson_ci(10, 10)[1] == pytest.approx(1.0)


def test_mde_hand_worked():
    # Welch case worked by hand: a = 10, 12, 14 (mean 12, var 4), b = 9, 10, 11 (mean 10, var 1).
    # SE = sqrt(4/3 + 1/3) = sqrt(5/3) = 1.29099; Welch–Satterthwaite df = (5/3)² / ((4/3)²/2 + (1/3)²/2)
    # = (25/9) / (17/18) = 50/17 = 2.9412; t_{0.975, 2.9412} = 3.2188, t_{0.80, 2.9412} = 0.9816, so
    # MDE = (3.2188 + 0.9816) · 1.29099 = 5.4226.
    c = stats.welch_contrast([10.0, 12.0, 14.0], [9.0, 10.0, 11.0])
    assert c["estimate"] == pytest.approx(2.0)
    assert c["se"] == pytest.approx(math.sqrt(5 / 3)) and c["df"] == pytest.approx(50 / 17)
    assert c["mde"] == pytest.approx(5.4226, abs=1e-3)
    # se = 2, df = 10: t_{0.975,10} = 2.2281, t_{0.80,10} = 0.8791 -> MDE = 2 · 3.1072 = 6.2144
    assert stats.mde(2.0, 10) == pytest.approx(6.2144, abs=1e-3)
    # the MDE is what it claims: a true effect of MDE·SE-units has ~80% power (non-central t, df 24)
    m, crit = stats.mde(1.0, 24), sps.t.ppf(0.975, 24)
    assert 1 - sps.nct.cdf(crit, 24, m) + sps.nct.cdf(-crit, 24, m) == pytest.approx(0.80, abs=0.01)
    assert math.isnan(stats.mde(math.nan, 3)) and math.isnan(stats.mde(1.0, 0))


def test_bounded_interval_stays_in_bounds():
    # three rewards near 0: a plain t-interval is 0.867 ± 4.303 · 1.0017 / sqrt(3) = 0.867 ± 2.488, below 0
    values = [0.1, 0.5, 2.0]
    t_lo = np.mean(values) - sps.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3)
    assert t_lo == pytest.approx(0.867 - 2.488, abs=1e-3) and t_lo < 0
    mean, lo, hi = stats.bounded_interval(values)
    assert mean == pytest.approx(np.mean(values))
    assert 0 <= lo < hi <= 100 and lo <= mean <= hi
    mean, lo, hi = stats.bounded_interval([99.0, 99.9, 97.0])
    assert 0 <= lo <= mean <= hi <= 100
    assert stats.bounded_interval([0.0, 0.0, 0.0])[1] >= 0          # on the bound: still inside
    with pytest.raises(ValueError, match="outside"):
        stats.bounded_interval([-1.0, 5.0])
