"""Figures: seaborn/matplotlib, one function per figure, each taking tidy DataFrames and returning a Figure.

    set_style()                      the house style (call once; every function also calls it)
    save_figure(fig, name)           PNG (dpi 200) + PDF, written atomically, into figures/
    plot_diversity_by_size           Figure 4(b) analogue: d and r_unique vs subset size (+ the paper's curve)
    plot_reward_vs_diversity         Figure 4(c,d) analogue: reward vs d and vs #prompts, one line per n
    plot_allocation                  Table 1 analogue: reward vs #prompts per n, equal-budget cells ringed red
    plot_exponent_fit                which decay exponent e = 1/p makes reward most linear in d
    plot_rm_report                   reward-model accuracies with CIs beside a length baseline
    plot_selection, plot_augmentation   strategies side by side: diversity measures and reward with CIs

Rewards are drawn on the paper's figure scale (0–1: pass results ×100 with ``scale=0.01``); CIs are
Student-t intervals over seeds (:func:`divscale.analysis.t_interval`) unless the table carries its own.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib

# Headless scripts and tests get Agg; a notebook (ipykernel sets MPLBACKEND to its inline backend), an
# explicit MPLBACKEND or an already-imported pyplot keep whatever backend they chose.
if ("matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND")
        and "ipykernel" not in sys.modules and "IPython" not in sys.modules
        and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import Patch

from divscale import analysis, paths
from divscale.io import atomic_path

LENGTH_COLORS = {2: "#0173B2", 3: "#DE8F05", 4: "#029E73"}     # seaborn "colorblind", fixed per n
PAPER_COLOR = "0.45"
HIGHLIGHT = "#D55E00"                                         # the paper marks equal-budget cells red
# the columns of divscale.diversity.diversity_table, in the order they are drawn
DIVERSITY_MEASURES = ("d", "r_unique", "distinct_1", "distinct_2", "ngd_4", "compression_ratio", "jaccard",
                      "vendi", "remote_clique", "chamfer")


def set_style() -> None:
    """Seaborn 'paper' theme with a few publication settings (TrueType fonts in PDFs, no top/right spines)."""
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.15, rc={
        "axes.spines.top": False, "axes.spines.right": False, "axes.titlesize": "medium",
        "figure.dpi": 110, "savefig.bbox": "tight", "savefig.pad_inches": 0.05,
        "pdf.fonttype": 42, "ps.fonttype": 42, "legend.frameon": False, "grid.linewidth": 0.6,
    })


def save_figure(fig: plt.Figure, name: str, out_dir: str | os.PathLike | None = None,
                formats=("png", "pdf"), dpi: int = 200) -> list[Path]:
    """Save ``fig`` as ``out_dir/name.png`` (dpi 200) and ``.pdf``, each written to a temp file and renamed."""
    out_dir = Path(out_dir) if out_dir is not None else paths.FIGURES_DIR
    written = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        metadata = {"CreationDate": None} if fmt == "pdf" else None   # byte-stable PDFs across runs
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------------------
# small shared helpers
# ---------------------------------------------------------------------------------------------------------

def _summarise(df: pd.DataFrame, keys: list[str], y: str, scale: float = 1.0) -> pd.DataFrame:
    """Mean and t-interval of ``y``·scale over the rows (seeds) of each ``keys`` group."""
    rows = []
    for key, g in df.dropna(subset=[y]).groupby(keys, sort=True):
        mean, lo, hi = analysis.t_interval(g[y] * scale)
        rows.append(dict(zip(keys, key)) | {"mean": mean, "lo": lo, "hi": hi, "runs": len(g)})
    return pd.DataFrame(rows, columns=keys + ["mean", "lo", "hi", "runs"])


def _yerr(summary: pd.DataFrame) -> np.ndarray:
    lo = (summary["mean"] - summary["lo"]).fillna(0).to_numpy()
    hi = (summary["hi"] - summary["mean"]).fillna(0).to_numpy()
    return np.vstack([lo, hi])


def _dots(ax, summary: pd.DataFrame, x: str, hue: str | None = None, order=None, hue_order=None,
          colors=None, hollow_if=None) -> None:
    """Dot-and-whisker chart of summary['mean'] with [lo, hi] intervals: x categories, optional hue groups
    dodged side by side (dots, not bars, so a zoomed y axis does not mislead)."""
    order = list(order if order is not None else pd.unique(summary[x]))
    hues = list(hue_order if hue_order is not None else (pd.unique(summary[hue]) if hue else [None]))
    colors = colors or dict(zip(hues, sns.color_palette("colorblind", len(hues))))
    step = 0.7 / max(len(hues), 1)
    for j, h in enumerate(hues):
        part = summary if hue is None else summary[summary[hue] == h]
        part = part.set_index(x).reindex(order).reset_index()
        pos = np.arange(len(order)) + (j - (len(hues) - 1) / 2) * step
        hollow = hollow_if(h) if hollow_if else False
        color = "0.35" if hollow else colors[h]
        ax.errorbar(pos, part["mean"], yerr=_yerr(part), fmt="D" if hollow else "o", ms=6, capsize=3,
                    color=color, mfc="white" if hollow else color, mew=1.4, lw=1.4,
                    label=None if h is None else str(h))
    ax.set_xticks(np.arange(len(order)), [str(o) for o in order])
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_xlabel("")


def _size_ticks(ax, sizes) -> None:
    """Log-x axis labelled at the subset sizes themselves (1.5k, 2k, ... 36k) instead of 10^k."""
    sizes = sorted({int(v) for v in sizes})
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(mticker.NullFormatter())
    if len(sizes) > 8:    # too many to label one by one: decades
        ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        return
    ax.set_xticks(sizes, [f"{v / 1000:g}k" if v >= 1000 else f"{v:g}" for v in sizes],
                  rotation=45 if len(sizes) > 5 else 0)


def _filter_algo(df: pd.DataFrame, algo: str | None) -> pd.DataFrame:
    if algo is None or "algo" not in df.columns:
        return df
    out = df[df["algo"].astype(str).str.lower() == algo.lower()]
    if out.empty:
        raise ValueError(f"no rows with algo={algo!r}; algos present: {sorted(df['algo'].unique())}")
    return out


# ---------------------------------------------------------------------------------------------------------
# Figure 4(b): diversity vs subset size
# ---------------------------------------------------------------------------------------------------------

def plot_diversity_by_size(div_df: pd.DataFrame, paper: pd.DataFrame | None = None,
                           hue: str | None = None) -> plt.Figure:
    """d and r_unique against the number of prompts (log x), the Figure 4(b) analogue.

    ``div_df``: columns n_prompts (or ``size``), d, r_unique (several rows per size, e.g. shuffles, are averaged with a
    CI band); ``hue`` names an optional column separating curves (tokenizer, dataset). ``paper`` (e.g.
    :func:`divscale.analysis.paper_diversity`) adds a third panel comparing the *shape*: d relative to the
    smallest size, since absolute d depends on the tokenizer and the prompts.
    """
    set_style()
    if "n_prompts" not in div_df.columns and "size" in div_df.columns:    # diversity.diversity_grid output
        div_df = div_df.rename(columns={"size": "n_prompts"})
    ncols = 3 if paper is not None else 2
    fig, axes = plt.subplots(1, ncols, figsize=(3.6 * ncols, 3.2), constrained_layout=True)
    for ax, col, label in [(axes[0], "d", r"diversity $d=\sqrt{|X|}\,r_{unique}$"),
                           (axes[1], "r_unique", r"$r_{unique}$ (unique / all bigrams)")]:
        sns.lineplot(data=div_df, x="n_prompts", y=col, hue=hue, marker="o", errorbar=("ci", 95), ax=ax,
                     color=None if hue else LENGTH_COLORS[2])
        _size_ticks(ax, div_df["n_prompts"])
        ax.set(xlabel="#prompts |X|", ylabel=label)
    axes[0].set_title("(a) d grows with diminishing returns")
    axes[1].set_title("(b) bigrams repeat as |X| grows")
    if paper is not None:
        ax = axes[2]
        ours = div_df.groupby([hue, "n_prompts"] if hue else ["n_prompts"], as_index=False)["d"].mean()
        groups = ours.groupby(hue) if hue else [("ours", ours)]
        for name, g in groups:
            g = g.sort_values("n_prompts")
            ax.plot(g["n_prompts"], g["d"] / g["d"].iloc[0], marker="o", label=f"ours ({name})" if hue else "ours")
        p = paper.sort_values("n_prompts")
        ax.plot(p["n_prompts"], p["d"] / p["d"].iloc[0], marker="s", ls="--", color=PAPER_COLOR,
                label="paper, Fig. 4(b)")
        _size_ticks(ax, list(ours["n_prompts"]) + list(p["n_prompts"]))
        ax.set(xlabel="#prompts |X|", ylabel="d / d(smallest subset)", title="(c) shape beside the paper")
        ax.legend(loc="lower right")
    return fig


# ---------------------------------------------------------------------------------------------------------
# Figure 4(c,d): reward vs diversity (and vs #prompts)
# ---------------------------------------------------------------------------------------------------------

def _lines_panel(ax, df, fits, x, y, scale, log_x=False) -> None:
    points = _summarise(df, ["ranking_len", x], y, scale)
    for n, fit in fits.set_index("ranking_len").iterrows():
        color = LENGTH_COLORS.get(int(n), None)
        p = points[points["ranking_len"] == n]
        ax.errorbar(p[x], p["mean"], yerr=_yerr(p), fmt="o", color=color, ms=4.5, capsize=2,
                    label=f"n = {int(n)}  (R² {fit['r2']:.2f})")
        xs = np.linspace(p[x].min(), p[x].max(), 100)
        yhat, lo, hi = analysis.fit_band(fit, xs)
        ax.plot(xs, yhat, color=color, lw=1.4)
        if np.isfinite(lo).all():
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)
    if log_x:
        ax.set_xscale("log")
    ax.text(0.98, 0.04, f"mean MSE = {analysis.mean_mse(fits):.2e}", transform=ax.transAxes,
            ha="right", va="bottom")
    ax.legend(loc="upper left", fontsize="small")


def plot_reward_vs_diversity(df: pd.DataFrame, fits: pd.DataFrame | None = None, algo: str | None = "pro",
                             y: str = "reward_global", scale: float = 0.01) -> plt.Figure:
    """Reward against d (left) and against #prompts (right): one OLS line per ranking length with its 95%
    band, points = mean over seeds with t-CIs. The Figure 4(c,d) analogue; the paper's claim is that the
    left panel is straighter (smaller mean MSE) than the right.

    ``df``: results rows (or :func:`divscale.analysis.paper_fig4_points`) with algo, ranking_len, n_prompts,
    d and ``y``. ``fits`` (optional) must be :func:`divscale.analysis.fit_lines` output for x="d" on the same
    ``scale``; by default both panels are fitted here.
    """
    set_style()
    data = _filter_algo(df, algo)
    if fits is None:
        fits = analysis.fit_lines(data, x="d", y=y, scale=scale)
    elif not ((fits["x"] == "d").all() and np.allclose(fits["scale"], scale)):
        raise ValueError(f"fits must be fit_lines(x='d', scale={scale}) output; got x={set(fits['x'])}, "
                         f"scale={set(fits['scale'])}")
    fits_n = analysis.fit_lines(data, x="n_prompts", y=y, scale=scale)
    fig, axes = plt.subplots(1, 2, figsize=(8.6, 3.4), sharey=True, constrained_layout=True)
    _lines_panel(axes[0], data, fits, "d", y, scale)
    _lines_panel(axes[1], data, fits_n, "n_prompts", y, scale)
    name = algo.upper() if algo else "all runs"
    axes[0].set(xlabel="prompt diversity d", ylabel="test reward" + (" (0–1)" if scale == 0.01 else ""),
                title=f"{name}: reward vs diversity")
    axes[1].set(xlabel="#prompts", title=f"{name}: reward vs #prompts")
    return fig


# ---------------------------------------------------------------------------------------------------------
# Table 1: the equal-budget allocation
# ---------------------------------------------------------------------------------------------------------

def plot_allocation(df: pd.DataFrame, budgets, y: str = "reward_global", scale: float = 0.01,
                    algo: str | None = None) -> plt.Figure:
    """Reward vs #prompts for each ranking length, one panel per budget (and one row per algo), the
    equal-budget cells (n, budget/n) ringed in red as in the paper's Table 1. Error bars: t-CI over seeds.
    ``budgets`` are in annotations (responses = prompts × n)."""
    set_style()
    data = _filter_algo(df, algo)
    algos = sorted(data["algo"].astype(str).unique()) if "algo" in data.columns else [None]
    budgets = sorted(budgets, reverse=True)
    fig, axes = plt.subplots(len(algos), len(budgets), figsize=(3.7 * len(budgets), 3.1 * len(algos)),
                             squeeze=False, constrained_layout=True)
    for i, a in enumerate(algos):
        table = analysis.equal_budget_table(_filter_algo(data, a), budgets, y=y)
        for col in ("mean", "ci_lo", "ci_hi"):
            table[col] = table[col] * scale
        for j, budget in enumerate(budgets):
            ax, t = axes[i, j], table[table["budget_group"] == budget]
            prompts = sorted(t["n_prompts"].unique())
            for n, g in t.groupby("ranking_len"):
                g = g.set_index("n_prompts").reindex(prompts).reset_index()
                pos = np.arange(len(prompts)) + (n - 3) * 0.06
                err = np.vstack([(g["mean"] - g["ci_lo"]).fillna(0), (g["ci_hi"] - g["mean"]).fillna(0)])
                ax.errorbar(pos, g["mean"], yerr=err, marker="o", ms=4.5, capsize=2.5,
                            color=LENGTH_COLORS.get(n), label=f"n = {n}")
                diag = g["diagonal"].fillna(False).to_numpy(bool)
                ax.scatter(pos[diag], g["mean"][diag], s=150, facecolors="none", edgecolors=HIGHLIGHT,
                           linewidths=1.8, zorder=5, label="equal budget" if n == 2 else None)
            ax.set_xticks(np.arange(len(prompts)), [f"{p:,}" for p in prompts])
            ax.set(xlabel="#prompts", title=f"{(a or '').upper()} · budget {budget:,} responses".strip(" ·"))
            if j == 0:
                ax.set_ylabel("test reward" + (" (0–1)" if scale == 0.01 else ""))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    return fig


# ---------------------------------------------------------------------------------------------------------
# The decay exponent
# ---------------------------------------------------------------------------------------------------------

def plot_exponent_fit(curve: pd.DataFrame, best_exponent: float | None = None,
                      paper_exponent: float = 0.5) -> plt.Figure:
    """Mean MSE (log) and mean R² of the per-n lines against the exponent e = 1/p of d = |X|^e · r_unique
    (:func:`divscale.analysis.fit_exponent` ``.curve``). Shaded: exponents under which some line falls
    (d decreasing with subset size); dashed: the paper's e = 0.5; solid: the best e."""
    set_style()
    if best_exponent is None:
        ok = curve[curve["min_slope"] > 0] if "min_slope" in curve else curve
        best_exponent = float(ok.loc[ok["mean_mse"].idxmin(), "exponent"])
    fig, axes = plt.subplots(1, 2, figsize=(8.2, 3.2), sharex=True, constrained_layout=True)
    for ax, col, label in [(axes[0], "mean_mse", "mean MSE of the per-n lines"),
                           (axes[1], "mean_r2", "mean R² of the per-n lines")]:
        ax.plot(curve["exponent"], curve[col], marker="o", ms=3.5, color=LENGTH_COLORS[2])
        falls = curve.loc[curve["min_slope"] <= 0, "exponent"] if "min_slope" in curve else []
        half = np.diff(curve["exponent"]).min() / 2 if len(curve) > 1 else 0.025
        for e in falls:
            ax.axvspan(e - half, e + half, color="0.88", lw=0)
        ax.axvline(paper_exponent, ls="--", color=PAPER_COLOR, label=f"paper e = {paper_exponent:g} (p = 2)")
        ax.axvline(best_exponent, color=HIGHLIGHT, label=f"best e = {best_exponent:.2f} (p = {1 / best_exponent:.2f})")
        ax.set(xlabel="exponent e = 1/p", ylabel=label)
        top = ax.secondary_xaxis("top", functions=(lambda e: 1 / np.maximum(e, 1e-9),
                                                   lambda p: 1 / np.maximum(p, 1e-9)))
        top.set_xlabel("decay index p")
        top.set_xticks([1, 1.5, 2, 3, 5])
    axes[0].set_yscale("log")
    handles, labels = axes[0].get_legend_handles_labels()
    if "min_slope" in curve and (curve["min_slope"] <= 0).any():
        handles.append(Patch(color="0.88"))
        labels.append("some line falls (d shrinks as |X| grows)")
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize="small")
    return fig


# ---------------------------------------------------------------------------------------------------------
# Reward-model report, selection strategies, augmentation
# ---------------------------------------------------------------------------------------------------------

def plot_rm_report(report_df: pd.DataFrame, model: str = "model", subset: str = "subset",
                   acc: str = "accuracy", lo: str = "accuracy_lo", hi: str = "accuracy_hi",
                   baseline: str = "length") -> plt.Figure:
    """Pairwise accuracy of reward models per test subset with CIs, beside a length baseline.

    ``report_df``: one row per (model, subset) with columns ``model``, ``subset``, ``accuracy`` and, if
    known, ``accuracy_lo``/``accuracy_hi`` (names configurable). Models whose name contains ``baseline``
    (e.g. "length: longer response wins") are drawn as hollow grey diamonds. Dotted line: chance (0.5).
    """
    set_style()
    summary = report_df.rename(columns={model: "model", subset: "subset", acc: "mean"})
    summary["lo"] = report_df.get(lo, np.nan)
    summary["hi"] = report_df.get(hi, np.nan)
    models = list(pd.unique(summary["model"]))
    models = [m for m in models if baseline not in str(m).lower()] + \
             [m for m in models if baseline in str(m).lower()]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * summary["subset"].nunique() + 2), 3.3),
                           constrained_layout=True)
    _dots(ax, summary, "subset", hue="model", hue_order=models,
          hollow_if=lambda m: baseline in str(m).lower())
    ax.axhline(0.5, ls=":", color="0.3", lw=1, label="chance")
    ax.set(ylabel="pairwise accuracy (chosen > rejected)", title="Reward models on HH-RLHF test")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


PANELS_PER_ROW = 4


def _strategy_figure(df: pd.DataFrame, by: str, measures: list[str], y: str, scale: float,
                     hue: str | None, title: str) -> plt.Figure:
    set_style()
    if by not in df.columns:
        raise ValueError(f"no column {by!r}; columns are {list(df.columns)}")
    order = list(pd.unique(df[by]))
    panels = [(m, m, 1.0, None) for m in measures] + [(y, "test reward" + (" (0–1)" if scale == 0.01 else ""),
                                                        scale, hue)]
    ncols = min(len(panels), PANELS_PER_ROW)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(3.0, 0.55 * len(order) + 1.6) * ncols, 3.3 * nrows),
                             squeeze=False, constrained_layout=True)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (col, label, s, h) in zip(axes.flat, panels):
        keys = [by] + ([h] if h and h in df.columns else [])
        summary = _summarise(df, keys, col, s)
        _dots(ax, summary, by, hue=keys[1] if len(keys) > 1 else None, order=order,
              colors=None if len(keys) > 1 else {None: LENGTH_COLORS[2]})
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=30)
        if len(keys) > 1:
            ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig


def plot_selection(df: pd.DataFrame, by: str = "strategy", measures=None, y: str = "reward_global",
                   scale: float = 0.01, hue: str | None = None) -> plt.Figure:
    """Selection strategies side by side (random, MinHash dedup, d-greedy, Deita, ...): one panel per
    diversity measure of the selected subset, and a last panel with the test reward (t-CI over seeds).
    ``measures`` defaults to the known diversity columns present (d, r_unique, distinct_n, vendi, ...)."""
    measures = list(measures) if measures is not None else [m for m in DIVERSITY_MEASURES if m in df.columns]
    return _strategy_figure(df, by, measures, y, scale, hue, "Selection strategies at equal budget")


def plot_augmentation(df: pd.DataFrame, by: str = "method", y: str = "reward_global", scale: float = 0.01,
                      hue: str | None = "algo", measures=("d",)) -> plt.Figure:
    """Diversity-guided augmentation (spec §5): seed only vs seed + random vs seed + diverse, d of the
    training set and test reward per algorithm (t-CI over seeds)."""
    measures = [m for m in measures if m in df.columns]
    return _strategy_figure(df, by, measures, y, scale, hue, "Augmentation: random vs diversity-guided")
