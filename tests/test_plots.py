"""Tests for divscale.report.plots: every figure function draws from a small fixture table and saves PNG + PDF."""
from __future__ import annotations

import math
import os

import matplotlib
import numpy as np
import pandas as pd
import pytest

from divscale.report import analysis, plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results() -> pd.DataFrame:
    """A small results table: 2 algos x n in {2,3,4} x 5 sizes x 2 seeds, reward rising with d and n."""
    rng = np.random.default_rng(0)
    rows = []
    for algo in ("pro", "sft"):
        for n in (2, 3, 4):
            for k in (60, 80, 120, 160, 240):
                r = 0.6 * k ** -0.25
                for seed in (1, 2):
                    reward = 40 + 0.8 * math.sqrt(k) * r + (n - 2) + rng.normal(0, 0.3)
                    rows.append({"run_id": f"{algo}-{n}-{k}-{seed}", "recipe": "fixture", "algo": algo,
                                 "ranking_len": n, "n_prompts": k, "seed": seed, "d": math.sqrt(k) * r,
                                 "r_unique": r, "reward_global": reward, "status": "ok"})
    return analysis.results_frame(rows)


def check_saved(fig, name, out_dir, min_png_bytes=5000):
    written = plots.save_figure(fig, name, out_dir=out_dir)
    matplotlib.pyplot.close(fig)
    png, pdf = written
    assert [p.name for p in written] == [f"{name}.png", f"{name}.pdf"]
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > min_png_bytes
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 3000
    assert not [f for f in os.listdir(out_dir) if f.endswith(".tmp")]
    return written


@pytest.mark.skipif(bool(os.environ.get("DISPLAY") or os.environ.get("MPLBACKEND")), reason="not headless")
def test_headless_backend():
    assert matplotlib.get_backend().lower() == "agg"


def test_diversity_by_size(tmp_path):
    sizes = [100, 200, 400, 800]
    ours = pd.DataFrame({"size": sizes * 2, "label": ["hh"] * 4 + ["oasst"] * 4,
                         "r_unique": [0.5, 0.42, 0.35, 0.29, 0.6, 0.5, 0.41, 0.33]})
    ours["d"] = np.sqrt(ours["size"]) * ours["r_unique"]
    fig = plots.plot_diversity_by_size(ours, paper=analysis.paper_diversity(), hue="label")
    assert fig.axes[0].get_title() == "(a) 8\u00d7 the prompts, 1.6\u00d7 d (\u221a|X|: 2.8\u00d7) for hh"
    check_saved(fig, "diversity", tmp_path)
    fig = plots.plot_diversity_by_size(ours[ours["label"] == "hh"])
    # the title says from the data how d grows: 5.0 -> 8.2 (1.6x) while |X| grows 8x (sqrt: 2.8x)
    assert fig.axes[0].get_title() == "(a) 8\u00d7 the prompts, 1.6\u00d7 d (\u221a|X|: 2.8\u00d7)"
    check_saved(fig, "diversity_plain", tmp_path)


def _caption_text(fig) -> str:
    return fig._supxlabel.get_text() if getattr(fig, "_supxlabel", None) is not None else ""


def test_reward_vs_diversity(tmp_path, results):
    fits = analysis.fit_lines(results[results["algo"] == "pro"])
    fig = plots.plot_reward_vs_diversity(results, fits, algo="pro")
    ax = fig.axes[0]
    # every run is drawn (2 seeds × 5 sizes per n), and the caption says what dots, bars and bands are
    n_dots = sum(len(c.get_offsets()) for c in ax.collections if c.get_gid() == "runs")
    assert n_dots == 3 * 10
    assert "runs" in _caption_text(fig) and "band" in _caption_text(fig) and "logit" in _caption_text(fig)
    assert "mean MSE" in ax.get_title()                   # in the title, not over the data
    check_saved(fig, "reward_vs_d", tmp_path)
    # the paper's published points with the refit lines (Figure 4(c,d) from published numbers, ×100 scale)
    for algo in ("pro", "sft"):
        fig = plots.plot_reward_vs_diversity(analysis.paper_fig4_points(), analysis.refit_paper(scale=1.0)[f"{algo}_vs_d"],
                                             algo=algo, published=True)
        assert "published points" in fig._suptitle.get_text()
        check_saved(fig, f"paper_fig4_{algo}", tmp_path)
    with pytest.raises(ValueError, match="fits must be"):
        plots.plot_reward_vs_diversity(results, analysis.fit_lines(results, x="d", scale=0.01, by=["algo", "ranking_len"]))
    with pytest.raises(ValueError, match="no rows with algo='dpo'"):
        plots.plot_reward_vs_diversity(results, algo="dpo")


def test_allocation(tmp_path, results):
    low = results.assign(reward_global=(results["reward_global"] - 44).clip(lower=0.1))    # rewards near 0
    fig = plots.plot_allocation(low, budgets=[240, 480])
    for ax in fig.axes[:4]:
        assert ax.get_ylim()[0] >= 0                                          # bounded intervals: nothing below 0
    assert "runs" in _caption_text(fig) and "stays in [0, 100]" in _caption_text(fig)
    check_saved(fig, "allocation", tmp_path)
    paper = analysis.paper_table1_long()
    paper = paper[(paper["model"] == "OPT-1.3B") & (paper["split"] == "Global")]
    check_saved(plots.plot_allocation(paper, budgets=[48000, 6000], y="reward"), "paper_table1", tmp_path)


def test_exponent_fit(tmp_path):
    pts = analysis.paper_fig4_points()
    paper = {a.upper(): analysis.fit_exponent(g, require_positive_slope=False).curve for a, g in pts.groupby("algo")}
    falling = paper["PRO"].assign(min_slope=-1.0)                 # no exponent with every line rising
    fig = plots.plot_exponent_fit({"PRO": falling}, paper_curves=paper)
    labels = [t.get_text() for ax in fig.axes for leg in [ax.get_legend()] if leg for t in leg.get_texts()]
    assert "PRO: no e with every line rising" in labels                 # no "best p" where the rule fails
    assert "PRO: best p = 2.22" in labels and "SFT: best p = 1.82" in labels      # the paper's points
    assert fig.axes[0].get_yscale() == "linear"
    check_saved(fig, "exponent", tmp_path)
    check_saved(plots.plot_exponent_fit(paper["PRO"]), "exponent_one", tmp_path)


def test_rm_report(tmp_path):
    subsets = ["all", "harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled"]
    rows = [{"model": m, "subset": s, "metric": met, "value": v, "ci_lo": v - 0.03, "ci_hi": v + 0.03, "n": 400}
            for m, base in (("RM_train", 0.56), ("RM_test", 0.57)) for s in subsets
            for met, v in (("accuracy", 0.51 if (m, s) == ("RM_test", "harmless-base") else base),
                           ("length_baseline", 0.55), ("oa_accuracy", 0.66), ("oa_agreement", 0.6))]
    frame = plots.rm_plot_frame(pd.DataFrame(rows))
    assert set(frame["model"]) == {"RM_train", "RM_test", "OpenAssistant 6.9B RM", "length baseline"}
    assert len(frame) == 4 * len(subsets)
    fig = plots.plot_rm_report(frame)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "CI contains 0.5" in labels                                   # RM_test at chance on harmless-base
    assert "Wilson" in _caption_text(fig)
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert all(max(len(line) for line in t.split("\n")) <= 18 for t in ticks)     # wrapped, no collisions
    check_saved(fig, "rm_report", tmp_path)


def test_selection_and_augmentation(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for i, strategy in enumerate(["random", "minhash-dedup", "d-greedy", "deita"]):
        for seed in (1, 2, 3):
            rows.append({"strategy": strategy, "method": ["seed only", "+ random", "+ diverse", "+ diverse"][i],
                         "algo": "pro" if seed < 3 else "sft", "seed": seed, "d": 10 + i + rng.normal(0, 0.1),
                         "distinct_2": 0.3 + 0.02 * i, "vendi": 20 + i, "reward_global": 50 + i + rng.normal(0, 0.4)})
    df = pd.DataFrame(rows)
    check_saved(plots.plot_selection(df), "selection", tmp_path)
    check_saved(plots.plot_augmentation(df), "augmentation", tmp_path)


def test_save_figure_is_atomic_and_stable(tmp_path, monkeypatch):
    fig, ax = matplotlib.pyplot.subplots()
    ax.plot([0, 1], [0, 1])
    first = [p.read_bytes() for p in plots.save_figure(fig, "line", out_dir=tmp_path)]
    second = [p.read_bytes() for p in plots.save_figure(fig, "line", out_dir=tmp_path)]
    assert first == second                                   # same figure -> identical bytes

    def boom(*args, **kwargs):
        raise RuntimeError("renderer died")

    monkeypatch.setattr(fig, "savefig", boom)
    with pytest.raises(RuntimeError):
        plots.save_figure(fig, "line", out_dir=tmp_path)
    assert (tmp_path / "line.png").read_bytes() == first[0]
    assert sorted(os.listdir(tmp_path)) == ["line.pdf", "line.png"]
    matplotlib.pyplot.close(fig)


def _png(paths_):
    png = next(p for p in paths_ if p.suffix == ".png")
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
    return png


def test_short_answers_scatter_names_the_within_cell_correlation(tmp_path, results):
    df = results.copy()
    rng = np.random.default_rng(1)
    df["short_answer_share"] = rng.uniform(0, 1, len(df))
    fig = plots.plot_short_answers(df)
    r = analysis.variance_sources(df)["pro"]["short_answer_r"]
    assert fig.axes[0].get_title() == f"PRO: {len(df[df.algo == 'pro'])} runs, within-cell r = {r:+.2f}"
    _png(plots.save_figure(fig, "short", tmp_path))


def test_beta_ablation_figure_draws_every_arm_and_share(tmp_path):
    cell = lambda n, k: {"n": n, "n_prompts": k, "budget": 240, "seeds": [42, 43], "contrasts": {}, "arms": {
        "0": {"mean": 20.0, "ci_lo": 15.0, "ci_hi": 25.0, "runs": 2, "grad_share_rank": 1.0, "beta": 0.0,
              "values": {"42": 19.0, "43": 21.0}},
        "0.05": {"mean": 22.0, "ci_lo": 18.0, "ci_hi": 26.0, "runs": 2, "grad_share_rank": 0.05, "beta": 0.45,
                 "values": {"42": 21.0, "43": 23.0}},
        "sft": {"mean": 21.0, "ci_lo": 17.0, "ci_hi": 25.0, "runs": 2, "values": {"42": 20.5, "43": 21.5}}}}
    beta = {"paper_sft_weight": 0.05, "weights": [0.0, 0.05], "cells": {"240/n2": cell(2, 120), "240/n4": cell(4, 60)}}
    fig = plots.plot_beta_ablation(beta)
    left, right = fig.axes[:2]
    assert len(right.patches) == 4                          # 2 weights x 2 cells (SFT has no gradient share)
    assert sorted(round(p.get_height()) for p in right.patches) == [5, 5, 100, 100]
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["PRO, sft_weight 0", "PRO, sft_weight 0.05 (paper)",
                                                                        "SFT"]
    assert [t.get_text() for t in left.get_xticklabels()] == ["n = 2, 120 prompts\nseeds 42, 43",
                                                              "n = 4, 60 prompts\nseeds 42, 43"]
    assert len([line for line in left.lines if len(line.get_xdata()) == 3]) == 4     # one seed's 3 runs joined
    assert not [c for c in left.collections if type(c).__name__ == "LineCollection" and len(c.get_segments())]

    assert "fewer than 3 seeds" in _caption_text(fig)
    _png(plots.save_figure(fig, "beta", tmp_path))


def test_budget_decomposition_draws_ours_beside_the_paper(tmp_path, results):
    ours = {algo: analysis.budget_decomposition(results[results.algo == algo], 240) for algo in ("pro", "sft")}
    paper = analysis.paper_budget_decomposition()
    fig = plots.plot_budget_decomposition(ours, paper)
    ax, bx = fig.axes[:2]
    assert len(ax.patches) == 3 * len(ours) and len(bx.patches) == 3 * len(paper)
    heights = [p.get_height() for p in bx.patches]
    assert heights[:3] == pytest.approx([paper.iloc[0].total, paper.iloc[0].prompts, paper.iloc[0].length])
    check_saved(fig, "budget_decomposition", tmp_path)


def test_budget_decomposition_of_one_algorithm_names_the_cells(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"algo": "pro", "recipe": "r", "ranking_len": n, "n_prompts": k, "seed": seed, "status": "ok",
             "reward_global": mu + rng.normal(0, 1.0)}
            for (n, k), mu in (((4, 60), 38.0), ((2, 120), 44.0), ((2, 60), 40.0)) for seed in range(42, 50)]
    dec = analysis.primary_decomposition(pd.DataFrame(rows), "pro", 240)
    fig = plots.plot_budget_decomposition({"pro": dec}, pd.DataFrame(dec["paper"]))
    ax, bx = fig.axes[:2]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "equal budget\n(4, 60) − (2, 120)", "fewer prompts\n(2, 60) − (2, 120)", "longer rankings\n(4, 60) − (2, 60)"]
    assert ax.get_ylim() == bx.get_ylim() and len(bx.patches) == 3 * 8
    assert [p.get_height() for p in ax.patches] == pytest.approx([dec[p]["estimate"] for p in ("total", "prompts",
                                                                                               "length")])
    check_saved(fig, "budget_decomposition_one", tmp_path)


def test_allocation_draws_only_the_lengths_present_and_the_initial_policy(tmp_path, results):
    two = results[(results.ranking_len != 3) & (results.algo == "pro")]
    fig = plots.plot_allocation(two, budgets=[240], algo="pro", initial={"reward_global": 41.0, "ci": [40.0, 42.0]})
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["initial policy (95% CI)", "n = 2", "equal budget (n, B/n)", "n = 4"]
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["60", "120"]               # B/4 and B/2 only
    assert any(line.get_ydata()[0] == 41.0 and line.get_linestyle() == "--" for line in ax.lines)
    check_saved(fig, "allocation_two", tmp_path)


def test_budget_crossover_draws_no_extrapolation(tmp_path):
    rows = [{"budget": b, "ranking_len": n, "predicted": 40 + n + b / 1000, "pi_lo": 38 + n, "pi_hi": 42 + n + b / 500,
             "extrapolated": b > 600 if n == 2 else b > 900} for b in range(200, 1201, 100) for n in (2, 4)]
    fig = plots.plot_budget_crossover(pd.DataFrame(rows), [], initial={"reward_global": 39.0, "ci_lo": 37.0,
                                                                      "ci_hi": 41.0})
    ax = fig.axes[0]
    drawn = {line.get_label(): max(line.get_xdata()) for line in ax.lines if line.get_label().startswith("n = ")}
    assert drawn == {"n = 2 (6 of 11 budgets outside the fit's d range, not drawn)": 600,
                     "n = 4 (3 of 11 budgets outside the fit's d range, not drawn)": 900}
    assert not [c for c in ax.collections if type(c).__name__ == "PathCollection"]       # no hollow points
    check_saved(fig, "crossover", tmp_path)


def test_reward_panels_draw_no_interval_on_two_seeds(tmp_path):
    df = pd.DataFrame([{"strategy": s, "algo": "pro", "seed": seed, "d": 1.0 + i, "reward_global": 40 + i + seed,
                        "n_prompts": 60, "prompt_tokens_median": 20.0 * (i + 1)}
                       for i, s in enumerate(["random", "d-greedy"]) for seed in (0, 1)])
    fig = plots.plot_augmentation(df.rename(columns={"strategy": "method"}))
    reward = fig.axes[-1]
    segments = [seg for c in reward.collections if type(c).__name__ == "LineCollection" for seg in c.get_segments()]
    assert all(np.ptp(seg[:, 1]) == 0 for seg in segments)                 # no interval bar has any length
    assert "fewer than 3 seeds" in _caption_text(fig)
    assert [t.get_text() for t in reward.get_xticklabels()][0] == "random\n60 prompts\nmedian 20 tokens"
    check_saved(fig, "augmentation_two", tmp_path)
