"""Tests for divscale.plots: every figure function draws from a small fixture table and saves PNG + PDF."""
from __future__ import annotations

import math
import os

import matplotlib
import numpy as np
import pandas as pd
import pytest

from divscale import analysis, plots

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
    check_saved(plots.plot_diversity_by_size(ours, paper=analysis.paper_diversity(), hue="label"),
                "diversity", tmp_path)
    check_saved(plots.plot_diversity_by_size(ours[ours["label"] == "hh"]), "diversity_plain", tmp_path)


def test_reward_vs_diversity(tmp_path, results):
    fits = analysis.fit_lines(results[results["algo"] == "pro"], scale=0.01)
    check_saved(plots.plot_reward_vs_diversity(results, fits, algo="pro"), "reward_vs_d", tmp_path)
    # the paper's own points with the refit lines (Figure 4(c) from published numbers)
    check_saved(plots.plot_reward_vs_diversity(analysis.paper_fig4_points(), analysis.refit_paper()["pro_vs_d"],
                                               algo="pro"), "paper_fig4c", tmp_path)
    with pytest.raises(ValueError, match="fits must be"):
        plots.plot_reward_vs_diversity(results, analysis.fit_lines(results, x="n_prompts", by=["algo", "ranking_len"]))
    with pytest.raises(ValueError, match="no rows with algo='dpo'"):
        plots.plot_reward_vs_diversity(results, algo="dpo")


def test_allocation(tmp_path, results):
    check_saved(plots.plot_allocation(results, budgets=[240, 480]), "allocation", tmp_path)
    paper = analysis.paper_table1_long()
    paper = paper[(paper["model"] == "OPT-1.3B") & (paper["split"] == "Global")]
    check_saved(plots.plot_allocation(paper, budgets=[48000, 6000], y="reward"), "paper_table1", tmp_path)


def test_exponent_fit(tmp_path):
    pts = analysis.paper_fig4_points()
    fit = analysis.fit_exponent(pts, by=["algo", "ranking_len"], scale=0.01)
    check_saved(plots.plot_exponent_fit(fit.curve, fit.best_exponent), "exponent", tmp_path)


def test_rm_report(tmp_path):
    report = pd.DataFrame({
        "model": ["bt-tiny"] * 4 + ["oasst-rm"] * 4 + ["length (longer wins)"] * 4,
        "subset": ["harmless_base", "helpful_base", "helpful_online", "helpful_rejection"] * 3,
        "accuracy": [0.55, 0.6, 0.58, 0.61, 0.68, 0.7, 0.66, 0.69, 0.45, 0.57, 0.55, 0.58]})
    report["accuracy_lo"], report["accuracy_hi"] = report["accuracy"] - 0.03, report["accuracy"] + 0.03
    check_saved(plots.plot_rm_report(report), "rm_report", tmp_path)


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
