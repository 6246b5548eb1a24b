"""Tests for divscale.report.analysis: the results table, the paper's numbers and refit, fits, exponent, verdicts."""
from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

from divscale.io import DataError
from divscale.metrics import stats as dstats
from divscale.report import analysis

# ---------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------

SIZES = (60, 80, 120, 160, 240)       # holds the equal-budget cells of budgets 240 and 480 responses


def make_results(sizes=SIZES, lengths=(2, 3, 4), seeds=(1, 2, 3), algos=("pro", "sft"), gain_per_n=1.0,
                 noise=0.3, rng=0) -> pd.DataFrame:
    """A synthetic results table: reward ×100 = 40 + 0.8·d + gain_per_n·(n − 2) + noise."""
    rng = np.random.default_rng(rng)
    rows = []
    for algo in algos:
        for n in lengths:
            for k in sizes:
                r = 0.6 * k ** -0.25
                d = math.sqrt(k) * r
                for s in seeds:
                    reward = 40 + 0.8 * d + gain_per_n * (n - 2) + rng.normal(0, noise)
                    rows.append({"run_id": f"{algo}-n{n}-k{k}-s{s}", "recipe": "test", "algo": algo,
                                 "ranking_len": n, "n_prompts": k, "seed": s, "budget": n * k, "d": d,
                                 "r_unique": r, "reward_global": reward, "reward_global_lo": reward - 1,
                                 "reward_global_hi": reward + 1, "reward_harmless_base": reward,
                                 "reward_helpful_base": reward, "reward_helpful_online": reward,
                                 "reward_helpful_rejection": reward, "dev_reward_best": reward,
                                 "best_step": 10, "steps": 20, "train_seconds": 1.5, "eval_seconds": 0.5,
                                 "status": "ok", "created": "2024-01-01T00:00:00+00:00"})
    return pd.DataFrame(rows)


def one_row(**kw) -> dict:
    row = make_results(sizes=(60,), lengths=(2,), seeds=(1,), algos=("pro",)).iloc[0].to_dict()
    row.update(kw)
    return row


# ---------------------------------------------------------------------------------------------------------
# the paper's numbers (divscale/paper_data)
# ---------------------------------------------------------------------------------------------------------

def test_paper_points_carry_provenance():
    pts = analysis.paper_points()
    assert set(pts.columns) == {"algo", "model", "split", "ranking_len", "n_prompts", "reward_x100", "source"}
    counts = pts["source"].value_counts().to_dict()
    assert counts == {"Table 1 (pics/quantitative.png)": 108, "Figure 4 read-off ±0.002": 12}
    div = analysis.paper_diversity()
    assert (div["source"] == "Figure 4(b) read-off ±0.1").all()
    assert div["n_prompts"].tolist() == [1500, 2000, 3000, 6000, 12000, 16000, 24000, 36000]
    # the rounded r_unique column of the spec agrees with d / sqrt(n)
    np.testing.assert_allclose(div["r_unique"], div["r_unique_implied"], atol=6e-4)


# spec §4.3 "Equal-budget summary (derived)": n=2 / n=3 / n=4 and Δ(4 vs 2), for 48k and 6k responses
SPEC_SUMMARY = [
    ("pro", "OPT-1.3B", "Harmless", (57.01, 57.29, 59.24), 2.23, (53.65, 54.80, 55.36), 1.71),
    ("pro", "OPT-1.3B", "Helpful", (50.06, 51.00, 51.35), 1.29, (46.49, 47.01, 48.85), 2.36),
    ("pro", "OPT-1.3B", "Global", (53.78, 54.67, 55.30), 1.52, (50.13, 50.76, 52.28), 2.15),
    ("sft", "OPT-1.3B", "Global", (52.63, 54.18, 55.06), 2.43, (50.47, 51.26, 51.93), 1.46),
    ("pro", "LLaMA-7B", "Global", (55.16, 55.89, 57.50), 2.34, (53.31, 53.00, 55.25), 1.94),
    ("sft", "LLaMA-7B", "Global", (54.63, 55.53, 56.13), 1.50, (53.80, 53.74, 55.05), 1.25),
]


@pytest.mark.parametrize("algo,model,split,big,dbig,small,dsmall", SPEC_SUMMARY)
def test_equal_budget_summary_rederived_from_csv(algo, model, split, big, dbig, small, dsmall):
    t = analysis.paper_table1_long()
    t = t[(t["algo"] == algo) & (t["model"] == model) & (t["split"] == split)]
    assert len(t) == 18
    table = analysis.equal_budget_table(t, budgets=[48000, 6000], y="reward")
    for budget, expected, delta in [(48000, big, dbig), (6000, small, dsmall)]:
        diag = table[(table["budget_group"] == budget) & table["diagonal"]].sort_values("ranking_len")
        assert diag["n_prompts"].tolist() == [budget // 2, budget // 3, budget // 4]
        np.testing.assert_allclose(diag["mean"], expected, atol=1e-9)
        assert round(diag["mean"].iloc[2] - diag["mean"].iloc[0], 2) == pytest.approx(delta)
        # the diagonal flags in the long table agree with the equal-budget table
        flagged = t[t["diagonal"] & (t["budget_group"] == budget)].sort_values("ranking_len")
        np.testing.assert_allclose(flagged["reward"], expected)


def test_paper_claim_n4_beats_n2_in_every_row_and_n3_fails_twice():
    """Spec §4.3: n=4 > n=2 in all 12 (setting, budget) pairs; n=3 > n=2 in all but PRO/SFT-LLaMA at 6k."""
    t = analysis.paper_table1_long()
    d = t[t["diagonal"]].pivot_table(index=["algo", "model", "split", "budget_group"], columns="ranking_len",
                                     values="reward")
    assert len(d) == 12 and ((d[4] - d[2]) > 0).all()
    fails = d[(d[3] - d[2]) <= 0].index.tolist()
    assert sorted(fails) == [("pro", "LLaMA-7B", "Global", 6000), ("sft", "LLaMA-7B", "Global", 6000)]


def test_refit_paper_reproduces_mean_mse():
    fits = analysis.refit_paper()
    spec_refit = {"pro_vs_samples": 1.23e-4, "pro_vs_d": 2.54e-5, "sft_vs_d": 9.56e-6}
    paper_printed = {"pro_vs_samples": 1.2e-4, "pro_vs_d": 2.6e-5, "sft_vs_d": 9.3e-6}
    for key, value in spec_refit.items():
        got = analysis.mean_mse(fits[key])
        assert got == pytest.approx(value, rel=0.03), key
        assert got == pytest.approx(paper_printed[key], rel=0.05), key
        assert (fits[key]["n_points"] == 8).all()
    # diversity explains reward better than raw prompt count, the paper's point
    assert analysis.mean_mse(fits["pro_vs_d"]) < analysis.mean_mse(fits["pro_vs_samples"]) / 4


# spec §4.4 table: (algo, n, slope, intercept, R²)
SPEC_LINES = [("pro_vs_d", 2, 0.0074, 0.388, 0.97), ("pro_vs_d", 3, 0.0065, 0.421, 0.89),
              ("pro_vs_d", 4, 0.0043, 0.472, 0.91), ("sft_vs_d", 2, 0.0047, 0.435, 0.95),
              ("sft_vs_d", 3, 0.0045, 0.452, 0.93), ("sft_vs_d", 4, 0.0054, 0.450, 0.98)]


@pytest.mark.parametrize("key,n,slope,intercept,r2", SPEC_LINES)
def test_refit_paper_lines_match_spec_table(key, n, slope, intercept, r2):
    fit = analysis.refit_paper()[key].set_index("ranking_len").loc[n]
    assert fit["slope"] == pytest.approx(slope, abs=0.5e-4 + 1e-9)
    # one unit of the last printed digit: the spec prints 0.388 for our (and its lstsq's) 0.38745
    assert fit["intercept"] == pytest.approx(intercept, abs=1e-3)
    assert fit["r2"] == pytest.approx(r2, abs=0.005 + 1e-9)
    assert fit["slope_lo"] < fit["slope"] < fit["slope_hi"] and fit["p_slope"] < 0.001


def test_refit_paper_vs_samples_lines():
    fit = analysis.refit_paper()["pro_vs_samples"].set_index("ranking_len")
    np.testing.assert_allclose(fit["slope"], [1.5e-6, 1.4e-6, 0.9e-6], atol=0.06e-6)
    np.testing.assert_allclose(fit["r2"], [0.66, 0.67, 0.59], atol=0.005)


# ---------------------------------------------------------------------------------------------------------
# fit_lines
# ---------------------------------------------------------------------------------------------------------

def test_fit_lines_exact_line():
    df = pd.DataFrame({"g": [1] * 5, "x": np.arange(5.0), "y": 2 * np.arange(5.0) + 1})
    fit = analysis.fit_lines(df, x="x", y="y", by="g").iloc[0]
    assert fit["slope"] == pytest.approx(2) and fit["intercept"] == pytest.approx(1)
    assert fit["r2"] == pytest.approx(1) and fit["mse"] == pytest.approx(0, abs=1e-20)


def test_fit_lines_matches_polyfit_and_statsmodels():
    rng = np.random.default_rng(3)
    x = np.linspace(10, 20, 9)
    frames = [pd.DataFrame({"n": n, "x": x, "y": 0.5 + 0.01 * n * x + rng.normal(0, 0.02, x.size)})
              for n in (2, 3)]
    df = pd.concat(frames, ignore_index=True)
    fits = analysis.fit_lines(df, x="x", y="y", by="n").set_index("n")
    for n, g in df.groupby("n"):
        a, b = np.polyfit(g["x"], g["y"], 1)
        resid = g["y"] - (a * g["x"] + b)
        assert fits.loc[n, "slope"] == pytest.approx(a) and fits.loc[n, "intercept"] == pytest.approx(b)
        assert fits.loc[n, "mse"] == pytest.approx(np.mean(resid ** 2))          # SSR / n, the paper's
        assert fits.loc[n, "r2"] == pytest.approx(np.corrcoef(g["x"], g["y"])[0, 1] ** 2)
        se = math.sqrt(np.sum(resid ** 2) / (len(g) - 2) / np.sum((g["x"] - g["x"].mean()) ** 2))
        half = stats.t.ppf(0.975, len(g) - 2) * se
        assert fits.loc[n, "slope_lo"] == pytest.approx(a - half)
        assert fits.loc[n, "slope_hi"] == pytest.approx(a + half)
        p = sm.OLS(g["y"].to_numpy(), sm.add_constant(g["x"].to_numpy())).fit().pvalues[1]
        assert fits.loc[n, "p_slope"] == pytest.approx(p)
    assert analysis.mean_mse(fits) == pytest.approx(fits["mse"].mean())


def test_fit_lines_averages_seeds_and_scales():
    df = pd.DataFrame({"x": [1, 1, 2, 2, 3, 3.0], "y": [9, 11, 19, 21, 29, 31.0]})
    fit = analysis.fit_lines(df, x="x", y="y", by=None, scale=0.1, aggregate=True).iloc[0]
    assert fit["n_points"] == 3 and fit["slope"] == pytest.approx(1.0) and fit["mse"] == pytest.approx(0, abs=1e-20)
    every_run = analysis.fit_lines(df, x="x", y="y", by=None).iloc[0]          # default: every run
    assert every_run["n_points"] == 6 and every_run["mse"] == pytest.approx(1.0)
    yhat, lo, hi = analysis.fit_band(every_run, [2.0])
    assert yhat[0] == pytest.approx(20) and lo[0] < yhat[0] < hi[0]


def test_fit_lines_rejects_bad_input():
    with pytest.raises(ValueError, match="distinct"):
        analysis.fit_lines(pd.DataFrame({"x": [1.0, 1.0], "y": [1.0, 2.0]}), by=None, x="x", y="y")
    with pytest.raises(DataError, match="no column 'd'"):
        analysis.fit_lines(pd.DataFrame({"x": [1.0], "y": [1.0]}), y="y")


# ---------------------------------------------------------------------------------------------------------
# fit_exponent
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("planted", [0.35, 0.5, 0.8])
def test_fit_exponent_recovers_planted_exponent(planted):
    rng = np.random.default_rng(0)
    sizes = np.array([500, 1000, 2000, 4000, 8000, 16000, 32000])
    r_unique = 0.9 / (1 + 0.25 * np.log(sizes))            # decays, not a power law
    rows = []
    for n, (slope, icpt) in {2: (0.004, 0.40), 3: (0.003, 0.43), 4: (0.002, 0.46)}.items():
        d = sizes ** planted * r_unique
        y = icpt + slope * d / d.max() * 20 + rng.normal(0, 1e-4, sizes.size)
        rows.append(pd.DataFrame({"ranking_len": n, "n_prompts": sizes, "r_unique": r_unique, "reward_global": y}))
    table = pd.concat(rows, ignore_index=True)
    result = analysis.fit_exponent(table)
    assert result.best_exponent == pytest.approx(planted, abs=0.026)
    assert result.best_p == pytest.approx(1 / result.best_exponent)
    assert len(result.curve) == 29 and {"exponent", "p", "mean_mse", "mean_r2", "min_slope"} <= set(result.curve)
    assert analysis.fit_exponent(table, criterion="r2").best_exponent == pytest.approx(planted, abs=0.026)


def test_fit_exponent_on_paper_points_is_consistent_with_refit():
    pts = analysis.paper_fig4_points()
    pro = pts[pts["algo"] == "pro"]
    result = analysis.fit_exponent(pro, exponents=[0.5], scale=0.01)
    assert result.curve["mean_mse"].iloc[0] == pytest.approx(analysis.mean_mse(analysis.refit_paper()["pro_vs_d"]))
    curve = analysis.fit_exponent(pro, scale=0.01).curve
    assert (curve.loc[curve["exponent"] < 0.3, "min_slope"] < 0).all()     # d falls with size there
    with pytest.raises(ValueError, match="criterion"):
        analysis.fit_exponent(pro, criterion="aic")


# ---------------------------------------------------------------------------------------------------------
# equal budget
# ---------------------------------------------------------------------------------------------------------

def test_equal_budget_table_marks_diagonal_and_ci():
    df = make_results(algos=("pro",))
    table = analysis.equal_budget_table(df, budgets=[240, 480])
    assert len(table) == 2 * 9
    diag = table[table["diagonal"]]
    assert sorted(zip(diag["budget_group"], diag["ranking_len"], diag["n_prompts"])) == [
        (240, 2, 120), (240, 3, 80), (240, 4, 60), (480, 2, 240), (480, 3, 160), (480, 4, 120)]
    assert (diag["budget"] == diag["budget_group"]).all()
    cell = table[(table["budget_group"] == 240) & (table["ranking_len"] == 3) & (table["n_prompts"] == 80)].iloc[0]
    values = df[(df["ranking_len"] == 3) & (df["n_prompts"] == 80)]["reward_global"]
    # bounded interval: t-interval of logit(reward / 100), back-transformed
    z = np.log(values / 100 / (1 - values / 100))
    zlo, zhi = stats.t.interval(0.95, len(z) - 1, loc=z.mean(), scale=stats.sem(z))
    lo, hi = 100 / (1 + np.exp(-zlo)), 100 / (1 + np.exp(-zhi))
    assert cell["n_seeds"] == 3 and cell["mean"] == pytest.approx(values.mean())
    assert (cell["ci_lo"], cell["ci_hi"]) == pytest.approx((lo, hi))
    # budget 960: columns 240 / 320 / 480 prompts; 320 and 480 have no runs -> listed, empty
    big = analysis.equal_budget_table(df, budgets=[960])
    assert big["n_prompts"].unique().tolist() == [240, 320, 480]
    empty = big[big["n_prompts"] > 240]
    assert (empty["n_seeds"] == 0).all() and empty["mean"].isna().all() and len(empty) == 6
    with pytest.raises(ValueError, match="mixes algos"):
        analysis.equal_budget_table(make_results(), budgets=[240])
    with pytest.raises(ValueError, match="multiples of 12"):
        analysis.equal_budget_table(df, budgets=[250])


def test_verdict_holds_does_not_hold_inconclusive():
    up = analysis.more_responses_beat_more_prompts(make_results(algos=("pro",), gain_per_n=3.0, noise=0.2), budget=240)
    assert up["status_4_vs_2"] == "holds" and up["status_3_vs_2"] == "holds"
    assert up["verdict"].startswith("More responses beat more prompts at 240 responses")
    assert "in the paper's direction" in up["verdict"] and up["ci_4_vs_2"][0] > 0
    assert up["cells"][4]["n_prompts"] == 60 and up["cells"][2]["n_prompts"] == 120
    # noise 0.2 over 36 runs: MDE ≈ 2.9 · 0.2 · sqrt(2/3) ≈ 0.48, well under the paper's +1.46
    assert up["mde_4_vs_2"] < 1 and "could have been seen" in up["verdict"]

    down = analysis.more_responses_beat_more_prompts(make_results(algos=("pro",), gain_per_n=-3.0, noise=0.2), budget=240)
    assert down["status_4_vs_2"] == "does not hold" and "against the paper's direction" in down["verdict"]
    assert down["contrast_4_vs_2"]["direction"] == "against the paper"

    flat = analysis.more_responses_beat_more_prompts(
        make_results(algos=("pro",), gain_per_n=0.0, noise=3.0, rng=5), budget=240)
    assert flat["status_4_vs_2"] == "inconclusive (CI spans 0)"
    assert flat["ci_4_vs_2"][0] < 0 < flat["ci_4_vs_2"][1]
    assert flat["mde_4_vs_2"] > 2.43 and "could not have been seen" in flat["verdict"]

    single = analysis.more_responses_beat_more_prompts(make_results(algos=("pro",), gain_per_n=3.0, seeds=(1,)), budget=240)
    assert single["status_4_vs_2"].startswith("inconclusive (one run per cell")
    assert single["diff_4_vs_2"] > 0 and math.isnan(single["mde_4_vs_2"])
    with pytest.raises(ValueError, match="mixes algos"):
        analysis.more_responses_beat_more_prompts(make_results(), budget=240)
    with pytest.raises(ValueError, match="pairing them by seed is not valid"):
        analysis.more_responses_beat_more_prompts(make_results(algos=("pro",)), 240, method="paired")


def test_equal_budget_ols_and_welch_intervals():
    df = make_results(algos=("pro",), gain_per_n=1.0, noise=0.5, rng=2)
    a = df[(df["ranking_len"] == 4) & (df["n_prompts"] == 60)]["reward_global"].to_numpy()
    b = df[(df["ranking_len"] == 2) & (df["n_prompts"] == 120)]["reward_global"].to_numpy()
    welch = analysis.more_responses_beat_more_prompts(df, 240, method="welch")
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert welch["diff_4_vs_2"] == pytest.approx(a.mean() - b.mean())
    assert welch["ci_4_vs_2"] == pytest.approx((ci.low, ci.high))
    # OLS cell means: the same estimate; SE from the residual variance pooled over all 15 cells (45 runs)
    ols = analysis.more_responses_beat_more_prompts(df, 240)
    cells = df.groupby(["ranking_len", "n_prompts"])["reward_global"]
    pooled_var = (cells.var(ddof=1) * (cells.size() - 1)).sum() / (len(df) - cells.ngroups)
    se = math.sqrt(pooled_var * (1 / len(a) + 1 / len(b)))
    dfr = len(df) - cells.ngroups
    half = stats.t.ppf(0.975, dfr) * se
    c = ols["contrast_4_vs_2"]
    assert c["estimate"] == pytest.approx(a.mean() - b.mean())
    assert (c["ci_lo"], c["ci_hi"]) == pytest.approx((c["estimate"] - half, c["estimate"] + half))
    assert c["df"] == dfr and c["mde"] == pytest.approx(dstats.mde(se, dfr))
    assert c["test"].startswith("OLS cell means")
    no3 = analysis.more_responses_beat_more_prompts(df[df["ranking_len"] != 3], 240)
    assert no3["status_3_vs_2"] == "missing" and "no runs for (n=3" in no3["verdict"]
    with pytest.raises(ValueError, match=r"n=4, 60 prompts"):
        analysis.more_responses_beat_more_prompts(df[df["ranking_len"] != 4], 240)


def test_equal_budget_table_intervals_stay_in_bounds():
    """The table's cell intervals (divscale.metrics.stats.bounded_interval) never leave [0, 100]."""
    df = make_results(algos=("pro",), noise=3.0)
    df["reward_global"] = (df["reward_global"] - 44).clip(lower=0.05)
    table = analysis.equal_budget_table(df, budgets=[240])
    assert (table["ci_lo"] >= 0).all() and (table["ci_hi"] <= 100).all()


def test_same_prompts_contrast_pairs_by_seed():
    df = make_results(algos=("pro",), gain_per_n=1.0, noise=0.5, rng=4)
    a = df[(df["ranking_len"] == 4) & (df["n_prompts"] == 80)].sort_values("seed")["reward_global"].to_numpy()
    b = df[(df["ranking_len"] == 2) & (df["n_prompts"] == 80)].sort_values("seed")["reward_global"].to_numpy()
    c = analysis.same_prompts_contrast(df, 80)
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (c["ci_lo"], c["ci_hi"]) == pytest.approx((ci.low, ci.high)) and c["df"] == 2
    assert c["test"].startswith("paired t by seed")


def test_method_contrast_identical_arms_and_welch():
    base = make_results(algos=("pro",), sizes=(60,), lengths=(2,), noise=2.0)
    random_arm = base.assign(strategy="random")
    dedup = random_arm.assign(strategy="minhash-dedup")                       # the same runs
    other = make_results(algos=("pro",), sizes=(60,), lengths=(2,), noise=2.0, rng=9).assign(strategy="deita")
    other["run_id"] = other["run_id"] + "-deita"
    df = pd.concat([random_arm, dedup, other], ignore_index=True)
    same = analysis.method_contrast(df, "strategy", baseline="random", compare="minhash-dedup")
    assert same["identical"] and same["ci_lo"] is None and same["mde"] is None
    assert "identical arms" in analysis.contrast_sentence("dedup − random", same)
    # an arm marked as the same selected set (identical_to) is identical even under other run ids
    marked = df.assign(identical_to="")
    marked.loc[marked["strategy"] == "minhash-dedup", ["identical_to", "run_id"]] = ["random", "other-id"]
    assert analysis.method_contrast(marked, "strategy", "random", "minhash-dedup")["identical"]
    diff = analysis.method_contrast(df, "strategy", baseline="random", compare="deita")
    a, b = other["reward_global"].to_numpy(), random_arm["reward_global"].to_numpy()
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert not diff["identical"] and (diff["ci_lo"], diff["ci_hi"]) == pytest.approx((ci.low, ci.high))
    assert np.isfinite(diff["mde"]) and diff["mde"] > 0


def test_one_rule_for_identical_arms_and_the_notebooks_table():
    """Arms are identical when their identical_to roots coincide, also when neither names the other (both marked
    with a third arm: the case the old rule of method_contrast missed), or when they trained the same runs; the
    table of notebooks 07/08 asks the same rule through method_contrast."""
    rows = [{"algo": algo, "strategy": s, "seed": k, "run_id": f"{algo}-{s}-{k}", "reward_global": r + k,
             "identical_to": t}
            for algo in ("pro", "sft")
            for s, r, t in [("random", 10.0, None), ("minhash-dedup", 10.0, "random"), ("deita", 10.0, "random"),
                            ("d-greedy", 15.0, None)] for k in range(3)]
    df = pd.DataFrame(rows)
    assert analysis.arms_identical(df, "strategy", "minhash-dedup", "deita") == \
        "'minhash-dedup' and 'deita' selected the same prompt set (identical_to)"
    assert analysis.arms_identical(df, "strategy", "random", "deita") is not None
    assert analysis.arms_identical(df, "strategy", "d-greedy", "random") is None
    same_runs = df.drop(columns="identical_to")
    same_runs.loc[same_runs["strategy"] == "deita", "run_id"] = same_runs.loc[same_runs["strategy"] == "random",
                                                                              "run_id"].to_numpy()
    assert "same run ids" in analysis.arms_identical(same_runs, "strategy", "deita", "random")
    pro = df[df["algo"] == "pro"]
    assert analysis.method_contrast(pro, "strategy", baseline="minhash-dedup", compare="deita")["identical"]
    table = analysis.method_table(df, "strategy", baseline="random", compare=["minhash-dedup", "d-greedy"])
    assert list(table.columns) == analysis.METHOD_TABLE_COLUMNS and len(table) == 4
    assert (table[table["comparison"] == "minhash-dedup - random"]["status"] == "identical arms").all()
    greedy = table[table["comparison"] == "d-greedy - random"]
    assert greedy["estimate"].tolist() == pytest.approx([5.0, 5.0]) and (greedy["status"] == "holds").all()
    with pytest.raises(ValueError, match="no runs for 'zzz'"):
        analysis.method_table(df, "strategy", baseline="random", compare="zzz")


def test_paper_effect_range_from_table1():
    # OPT-1.3B Global diagonals: PRO +1.52 (48k) / +2.15 (6k), SFT +2.43 / +1.46 (spec §4.3)
    assert analysis.paper_effect_range() == pytest.approx((1.46, 2.43))


def test_cell_spread_and_pooled_sd():
    df = make_results(algos=("pro",), sizes=(60, 80), lengths=(2,), seeds=(1, 2, 3), noise=0.0)
    df.loc[df["n_prompts"] == 60, "reward_global"] += [0.0, 4.0, 8.0]       # range 8, SD 4
    spread = analysis.cell_spread(df)
    assert spread["max_range"] == pytest.approx(8.0) and spread["sd_of_that_cell"] == pytest.approx(4.0)
    assert spread["cell"]["n_prompts"] == 60
    # pooled over the two cells (variances 16 and 0, 2 dof each): sqrt(16 / 2) = 2.83
    assert analysis.pooled_seed_sd(df) == pytest.approx(math.sqrt(8.0))


def test_beside_paper_matches_positions():
    table = analysis.equal_budget_table(make_results(algos=("pro",)), budgets=[240, 480])
    both = analysis.beside_paper(table, algo="pro")
    row = both[(both["budget_group"] == 240) & (both["ranking_len"] == 4) & (both["n_prompts"] == 60)].iloc[0]
    assert row["paper_n_prompts"] == 1500 and row["paper_reward"] == pytest.approx(52.28)
    row = both[(both["budget_group"] == 480) & (both["ranking_len"] == 2) & (both["n_prompts"] == 240)].iloc[0]
    assert row["paper_n_prompts"] == 24000 and row["paper_reward"] == pytest.approx(53.78)


# ---------------------------------------------------------------------------------------------------------
# results table
# ---------------------------------------------------------------------------------------------------------

def test_validate_results_types_and_errors():
    df = make_results(sizes=(60,), seeds=(1,))
    ok = analysis.validate_results(df)
    assert list(ok.columns[: len(analysis.RESULT_COLUMNS)]) == analysis.RESULT_COLUMNS
    assert str(ok["ranking_len"].dtype) == "Int64" and ok["reward_global"].dtype == np.float64
    with pytest.raises(DataError, match="missing column.*'d'"):
        analysis.validate_results(df.drop(columns=["d"]))
    with pytest.raises(DataError, match=r"'ranking_len' must be numeric, row 0 \(CSV line 2\) has 'two'"):
        analysis.validate_results(df.assign(ranking_len=["two"] + df["ranking_len"].tolist()[1:]))
    with pytest.raises(DataError, match="'seed' must hold integers"):
        analysis.validate_results(df.assign(seed=1.5))
    with pytest.raises(DataError, match="budget"):
        analysis.validate_results(df.assign(budget=1))
    with pytest.raises(DataError, match="appears more than once"):
        analysis.validate_results(df.assign(run_id="same"))
    with pytest.raises(DataError, match="'algo' is empty in row 0"):
        analysis.validate_results(df.assign(algo=None))
    # metrics may be NaN (a failed run)
    failed = analysis.validate_results(df.assign(reward_global=np.nan, best_step=np.nan, status="failed"))
    assert failed["best_step"].isna().all()


def test_append_result_upserts_and_roundtrips(tmp_path):
    path = tmp_path / "results" / "cpu.csv"
    analysis.append_result(path, one_row(run_id="a", reward_global=50.0))
    row = one_row(run_id="b", reward_global=51.0)
    for key in ("budget", "created", "d", "best_step"):
        row.pop(key)
    analysis.append_result(path, row)
    table = analysis.append_result(path, one_row(run_id="a", reward_global=55.0, seed=7))   # redone cell
    assert table["run_id"].tolist() == ["a", "b"]
    loaded = analysis.load_results(path)
    assert loaded["reward_global"].tolist() == [55.0, 51.0] and loaded["seed"].tolist() == [7, 1]
    assert loaded.loc[1, "budget"] == 120 and loaded.loc[1, "created"].endswith("+00:00")
    assert np.isnan(loaded.loc[1, "d"]) and pd.isna(loaded.loc[1, "best_step"])
    pd.testing.assert_frame_equal(loaded, table)
    with pytest.raises(DataError, match="no 'algo'"):
        analysis.append_result(path, {k: v for k, v in one_row(run_id="c").items() if k != "algo"})
    assert len(analysis.load_results(path)) == 2


def test_append_result_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "cpu.csv"
    analysis.append_result(path, one_row(run_id="a"))
    before = path.read_bytes()
    real_to_csv = pd.DataFrame.to_csv

    def crash_midway(self, target, *args, **kwargs):
        real_to_csv(self.head(1), target, *args, **kwargs)     # a partial file...
        raise OSError("disk full")                             # ...then the write dies

    monkeypatch.setattr(pd.DataFrame, "to_csv", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        analysis.append_result(path, one_row(run_id="b"))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["cpu.csv", "cpu.csv.lock"]   # no temp file left behind
    with pytest.raises(FileNotFoundError, match="append_result"):
        analysis.load_results(tmp_path / "missing.csv")


def test_results_frame_from_cell_dicts():
    row = {"run_id": "x", "recipe": "cpu", "algo": "pro", "ranking_len": 3, "n_prompts": 40, "seed": 1,
           "status": "ok", "reward_global": 51.2}
    table = analysis.results_frame([row])
    assert table.loc[0, "budget"] == 120 and np.isnan(table.loc[0, "d"])
    assert list(analysis.results_frame([]).columns) == analysis.RESULT_COLUMNS
    with pytest.raises(DataError, match=r"cells\[0\]: the row has no 'seed'"):
        analysis.results_frame([{k: v for k, v in row.items() if k != "seed"}], source="cells")


def test_seed_blocked_contrast_removes_a_shared_seed_effect_and_costs_little_without_one():
    rng = np.random.default_rng(4)
    rows = []
    seed_effect = {s: rng.normal(0, 6) for s in range(6)}
    for n, k in ((2, 120), (3, 80), (4, 60)):
        for s in range(6):
            rows.append({"algo": "pro", "recipe": "t", "ranking_len": n, "n_prompts": k, "seed": s,
                         "reward_global": 20 + (n - 2) + seed_effect[s] + rng.normal(0, 1)})
    df = pd.DataFrame(rows)
    plain = analysis.model_contrast(df, (4, 60), (2, 120))
    blocked = analysis.seed_blocked_contrast(df, (4, 60), (2, 120))
    assert blocked["mde"] < plain["mde"] / 2 and blocked["seed_block_p"] < 0.01
    assert blocked["estimate"] == pytest.approx(plain["estimate"])            # balanced: same point estimate
    assert blocked["ci_lo"] < 2 < blocked["ci_hi"]
    df["reward_global"] = 20 + (df["ranking_len"] - 2) + rng.normal(0, 1, len(df))   # no seed effect
    plain, blocked = analysis.model_contrast(df, (4, 60), (2, 120)), analysis.seed_blocked_contrast(df, (4, 60), (2, 120))
    assert blocked["mde"] < 1.5 * plain["mde"] and blocked["seed_block_p"] > 0.01
    with pytest.raises(ValueError, match="no runs in cell"):
        analysis.seed_blocked_contrast(df, (4, 30), (2, 120))


def test_budget_decomposition_adds_up_and_pairs_only_the_paired_part():
    rng = np.random.default_rng(0)
    rows = []
    for n, k, mu in ((4, 60, 30.0), (2, 60, 28.0), (2, 120, 25.0)):
        for seed in range(42, 48):
            rows.append({"algo": "pro", "recipe": "r", "ranking_len": n, "n_prompts": k, "seed": seed,
                         "reward_global": mu + rng.normal(0, 1.0) + 0.5 * (seed - 44)})
    df = pd.DataFrame(rows)
    dec = analysis.budget_decomposition(df, 240)
    a, b, c = (df[(df.ranking_len == n) & (df.n_prompts == k)].reward_global.mean() for n, k in ((4, 60), (2, 60), (2, 120)))
    assert dec["total"]["estimate"] == pytest.approx(a - c) and dec["prompts"]["estimate"] == pytest.approx(b - c)
    assert dec["length"]["estimate"] == pytest.approx(a - b) and dec["gap"] == pytest.approx(0.0, abs=1e-9)
    assert dec["total"]["test"].startswith("Welch") and dec["prompts"]["test"].startswith("Welch")
    assert dec["length"]["test"].startswith("paired t by seed")
    # the seed effect (0.5 per seed) is shared by the paired cells: pairing removes it, Welch does not
    welch_length = dstats.welch_contrast(df[(df.ranking_len == 4) & (df.n_prompts == 60)].reward_global,
                                           df[(df.ranking_len == 2) & (df.n_prompts == 60)].reward_global)
    assert dec["length"]["mde"] < welch_length["mde"]
    with pytest.raises(ValueError, match=r"no runs in cell \(n=2, k=60\)"):
        analysis.budget_decomposition(df[~((df.ranking_len == 2) & (df.n_prompts == 60))], 240)


def test_paper_decomposition_reproduces_the_issue_arithmetic():
    """PRO OPT-1.3B Global at 48,000 responses: n4@12k - n2@24k = +1.52 = (n2@12k - n2@24k) -1.00 +
    (n4@12k - n2@12k) +2.52 (Table 1)."""
    t = analysis.paper_budget_decomposition()
    row = t[(t.algo == "pro") & (t.model == "OPT-1.3B") & (t.split == "Global") & (t.budget == 48000)].iloc[0]
    assert (row.total, row.prompts, row.length) == pytest.approx((1.52, -1.00, 2.52), abs=1e-9)
    assert np.allclose(t.total, t.prompts + t.length)
    assert len(t) == 2 * len(t.groupby(["algo", "model", "split"]))


def _three_cells(means, sd=1.0, seeds=range(42, 50), rng=0):
    g = np.random.default_rng(rng)
    return pd.DataFrame([{"algo": "pro", "recipe": "r", "ranking_len": n, "n_prompts": k, "seed": s, "draw": s,
                          "reward_global": mu + g.normal(0, sd), "reward_global_lo": mu - 1.96,
                          "reward_global_hi": mu + 1.96}
                         for (n, k), mu in means.items() for s in seeds])


def test_paper_part_signs_are_the_ones_every_table1_setting_shares():
    assert analysis.paper_part_signs() == {"total": 1, "prompts": -1, "length": 1}
    assert analysis.part_direction(-5.0, 1) == "against the paper" and analysis.part_direction(-5.0, -1) == "as the paper"
    assert analysis.part_direction(1.0, 0) == "the paper's settings disagree in sign"


def test_primary_decomposition_reads_each_part_against_the_papers_sign():
    df = _three_cells({(4, 60): 38.0, (2, 120): 44.0, (2, 60): 40.0})
    sft = df.assign(algo="sft", reward_global=df.reward_global + 50)          # another algorithm: ignored
    dec = analysis.primary_decomposition(pd.concat([df, sft]), "pro", 240)
    assert dec["total"]["estimate"] == pytest.approx(analysis.budget_decomposition(df, 240)["total"]["estimate"])
    assert dec["total"]["direction"] == "against the paper"                   # the paper: n = 4 wins
    assert dec["prompts"]["direction"] == "as the paper"                      # the paper: fewer prompts lose
    assert dec["length"]["direction"] == "against the paper"                  # the paper: longer rankings win
    assert {r["algo"] for r in dec["paper"]} == {"pro"} and len(dec["paper"]) == 8


def test_variance_decomposition_per_cell_and_pooled():
    df = _three_cells({(4, 60): 38.0, (2, 60): 40.0}, sd=2.0, seeds=range(10))
    v = analysis.variance_decomposition(df, [(4, 60), (2, 60), (2, 999)])
    cell = v["cells"]["n4_k60"]
    sd = df[df.ranking_len == 4].reward_global.std(ddof=1)
    assert cell["sd"] == pytest.approx(sd) and cell["runs"] == 10 and cell["draws"] == 10
    assert cell["eval_se"] == pytest.approx(1.0, rel=1e-3) and cell["eval_share"] == pytest.approx(cell["eval_se"] ** 2 / sd ** 2)
    pooled = math.sqrt((df.groupby("ranking_len").reward_global.var(ddof=1) * 9).sum() / 18)
    assert v["pooled"]["sd"] == pytest.approx(pooled) and v["pooled"]["df"] == 18
    assert "n2_k999" not in v["cells"]                                        # a cell without runs is left out


def test_paired_wins_counts_each_pair_once():
    a = pd.DataFrame({"seed": [1, 2, 3, 4], "reward_global": [5.0, 1.0, 3.0, 2.0]})
    b = pd.DataFrame({"seed": [1, 2, 3, 9], "reward_global": [4.0, 2.0, 3.0, 0.0]})
    assert analysis.paired_wins(a, b) == {"pairs": 3, "a_above": 1, "b_above": 1, "on": [1, 2, 3]}


def test_slopes_without_the_smallest_size():
    df = make_results(sizes=(12, 60, 120, 240), lengths=(2, 4), algos=("pro",), seeds=(1, 2), noise=0.01)
    fits = analysis.fit_lines(df, x="d")
    assert analysis.slope_counts(fits) == {"lines": 2, "negative_slopes": 0, "slope_ci_above_0": 2,
                                           "slope_ci_below_0": 0, "points": {2: 8, 4: 8}}
    assert analysis.slopes_without_size(df, 12)["points"] == {2: 6, 4: 6}
    assert analysis.slopes_without_size(df[df.n_prompts.isin([12, 60])], 12) is None    # one size left: no line


def test_regression_sentence_states_each_lines_run_count():
    df = make_results(sizes=(60, 120, 240), lengths=(2, 4), algos=("pro",), seeds=(1, 2, 3))
    df = df[~((df.ranking_len == 4) & (df.seed > 1))]                   # n=4 on one replicate: 3 points
    fits = analysis.fit_lines(df, x="d")
    assert "9 / 3 runs on the lines n=2 / n=4" in analysis.regression_sentence("pro", fits)
