"""Figures: seaborn/matplotlib, one function per figure, each taking tidy DataFrames and returning a Figure.

    set_style()                      the house style (call once; every function also calls it)
    save_figure(fig, name)           PNG (dpi 200) + PDF, written atomically, into figures/
    plot_diversity_by_size           Figure 4(b) analogue: d and r_unique vs subset size (+ the paper's curve)
    plot_reward_vs_diversity         Figure 4(c,d) analogue: reward vs d and vs #prompts, one line per n
    plot_allocation                  Table 1 analogue: reward vs #prompts per n, equal-budget cells ringed red
    plot_exponent_fit                which decay exponent e = 1/p makes reward most linear in d
    plot_rm_report                   reward-model accuracies with CIs beside a length baseline
    plot_selection, plot_augmentation   strategies side by side: diversity measures and reward with CIs
    plot_short_answers               run reward against the share of very short answers (the variance's trait)
    plot_beta_ablation               PRO's sft_weight ablation: reward and the ranking term's gradient share

One reward scale everywhere (README, tables, figures): reward ×100 = 100 · mean sigmoid(RM_test logit), the
paper's Table 1 scale (``scale=1``; :data:`REWARD_LABEL`). Intervals of cell means over seeds are bounded
(:func:`divscale.metrics.stats.bounded_interval`: a t-interval on the logit scale, inside [0, 100]); each figure's
caption says what its dots and bars are.
"""
from __future__ import annotations

import os
import sys
import textwrap
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

from divscale import paths
from divscale.io import atomic_path
from divscale.metrics import stats
from divscale.report import analysis

LENGTH_COLORS = {2: "#0173B2", 3: "#DE8F05", 4: "#029E73"}     # seaborn "colorblind", fixed per n
PAPER_COLOR = "0.45"
HIGHLIGHT = "#D55E00"                                         # the paper marks equal-budget cells red
# the columns of divscale.metrics.diversity.diversity_table, in the order they are drawn
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

def _growth_title(div_df: pd.DataFrame) -> str:
    """Panel (a)'s title, from the data: how many times the prompts and d grow from the smallest size to the
    largest, beside the sqrt(|X|) growth d would have if no bigram repeated (a log x hides that d grows slower)."""
    mean = div_df.groupby("n_prompts")["d"].mean().sort_index()
    if len(mean) < 2:
        return "(a) d"
    kx, kd = mean.index[-1] / mean.index[0], mean.iloc[-1] / mean.iloc[0]
    return f"(a) {kx:.0f}\u00d7 the prompts, {kd:.1f}\u00d7 d (\u221a|X|: {kx ** 0.5:.1f}\u00d7)"


def plot_diversity_by_size(div_df: pd.DataFrame, paper: pd.DataFrame | None = None,
                           hue: str | None = None) -> plt.Figure:
    """d and r_unique against the number of prompts (log x), the Figure 4(b) analogue.

    ``div_df``: columns n_prompts (or ``size``), d, r_unique (several rows per size, e.g. shuffles, are averaged with a
    CI band); ``hue`` names an optional column separating curves (tokenizer, dataset). ``paper`` (e.g.
    :func:`divscale.report.analysis.paper_diversity`) adds a third panel comparing the *shape*: d relative to the
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
        ax.set(xlabel="#prompts |X| (log scale)", ylabel=label)
    if hue is None:
        axes[0].set_title(_growth_title(div_df))
    else:                                   # the first curve's growth, named
        first = div_df[hue].iloc[0]
        axes[0].set_title(f"{_growth_title(div_df[div_df[hue] == first])} for {first}", fontsize="small")
    axes[1].set_title("(b) bigrams repeat as |X| grows")
    if paper is not None:
        ax = axes[2]
        ours = div_df.groupby([hue, "n_prompts"] if hue else ["n_prompts"], as_index=False)["d"].mean()
        groups = ours.groupby(hue) if hue else [("ours", ours)]
        # labels written beside the curves' last points, not a legend box (it covered the paper's first points)
        for name, g in groups:
            g = g.sort_values("n_prompts")
            line, = ax.plot(g["n_prompts"], g["d"] / g["d"].iloc[0], marker="o")
            ax.annotate(f"ours ({name})" if hue else "ours", (g["n_prompts"].iloc[-1], g["d"].iloc[-1] / g["d"].iloc[0]),
                        xytext=(6, 0), textcoords="offset points", va="center", color=line.get_color(),
                        fontsize="small")
        p = paper.sort_values("n_prompts")
        ax.plot(p["n_prompts"], p["d"] / p["d"].iloc[0], marker="s", ls="--", color=PAPER_COLOR)
        mid = (len(p) - 1) // 2                             # below the rising curve, right of a middle point
        ax.annotate("paper, Fig. 4(b)", (p["n_prompts"].iloc[mid], p["d"].iloc[mid] / p["d"].iloc[0]),
                    xytext=(8, -10), textcoords="offset points", ha="left", va="top", color=PAPER_COLOR,
                    fontsize="small")
        _size_ticks(ax, list(ours["n_prompts"]) + list(p["n_prompts"]))
        ax.set(xlabel="#prompts |X| (log scale)", ylabel="d / d(smallest subset)", title="(c) shape beside the paper")
    return fig


# ---------------------------------------------------------------------------------------------------------
# Figure 4(c,d): reward vs diversity (and vs #prompts)
# ---------------------------------------------------------------------------------------------------------

REWARD_LABEL = "RM_test reward (×100)"
BOUNDED_NOTE = "95% t-interval over seeds on the logit scale (stays in [0, 100])"


def _caption(fig: plt.Figure, text: str) -> None:
    """What the marks mean, under the panels (a figure copied alone still says what its bars are)."""
    fig.supxlabel(text, fontsize="x-small", color="0.3", wrap=True)


def _seed_summary(df: pd.DataFrame, keys: list[str], y: str, scale: float = 1.0) -> pd.DataFrame:
    """Mean and bounded interval (:func:`divscale.metrics.stats.bounded_interval`) of ``y``·scale per group."""
    rows = []
    upper = 100.0 * scale
    for key, g in df.dropna(subset=[y]).groupby(keys, sort=True):
        mean, lo, hi = stats.bounded_interval(g[y] * scale, 0.0, upper)
        rows.append(dict(zip(keys, key if isinstance(key, tuple) else (key,)))
                    | {"mean": mean, "lo": lo, "hi": hi, "runs": len(g)})
    return pd.DataFrame(rows, columns=keys + ["mean", "lo", "hi", "runs"])


def _intervals(ax, xs, means, lo, hi, color, line: bool = False, label=None, ms: float = 5) -> None:
    """Mean markers with [lo, hi] drawn as capped vertical segments (not ``errorbar``'s ± offsets: the mean of
    a few skewed seeds may lie outside an interval computed on the logit scale, and must still be drawn)."""
    xs, means = np.asarray(xs, float), np.asarray(means, float)
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    ok = np.isfinite(lo) & np.isfinite(hi)
    ax.vlines(xs[ok], lo[ok], hi[ok], color=color, lw=1.2, zorder=4)
    ax.scatter(np.r_[xs[ok], xs[ok]], np.r_[lo[ok], hi[ok]], marker="_", s=40, color=color, lw=1.2, zorder=4)
    ax.plot(xs, means, "-o" if line else "o", color=color, ms=ms, lw=1.2, zorder=4, label=label)


def _lines_panel(ax, df, fits, x, y, scale, dodge: float, published: bool = False) -> None:
    """Runs as small dots, seed means with bounded intervals (or the published points), one OLS line per n
    fitted on the runs with its 95% band; groups of different n dodged by ``dodge`` along x."""
    points = _seed_summary(df, ["ranking_len", x], y, scale)
    for n, fit in fits.set_index("ranking_len").iterrows():
        color = LENGTH_COLORS.get(int(n), None)
        off = (int(n) - 3) * dodge
        p = points[points["ranking_len"] == n]
        runs = df[df["ranking_len"] == n]
        xs = np.linspace(p[x].min(), p[x].max(), 100)
        yhat, lo, hi = analysis.fit_band(fit, xs)
        if np.isfinite(lo).all():
            ax.fill_between(xs, lo, hi, color=color, alpha=0.13, lw=0)
        ax.plot(xs, yhat, color=color, lw=1.4, label=f"n = {int(n)}: slope {fit['slope']:+.2g}, R² {fit['r2']:.2f}")
        if published:
            read = runs["source"].astype(str).str.contains("read-off") if "source" in runs else np.zeros(len(runs), bool)
            ax.scatter(runs.loc[~read, x] + off, runs.loc[~read, y] * scale, color=color, s=26, zorder=4)
            ax.scatter(runs.loc[read, x] + off, runs.loc[read, y] * scale, facecolors="white", edgecolors=color,
                       s=30, lw=1.3, zorder=4)
        else:
            ax.scatter(runs[x] + off - 0.3 * dodge, runs[y] * scale, color=color, s=10, alpha=0.55, lw=0, zorder=3,
                       gid="runs")
            _intervals(ax, p[x] + off, p["mean"], p["lo"], p["hi"], color, ms=4.5)


def plot_reward_vs_diversity(df: pd.DataFrame, fits: pd.DataFrame | None = None, algo: str | None = "pro",
                             y: str = "reward_global", scale: float = 1.0, published: bool = False,
                             title: str | None = None) -> plt.Figure:
    """Reward against d (left) and against #prompts (right): one OLS line per ranking length fitted on every
    run (12 points a line for 4 sizes × 3 seeds), with its 95% confidence band for the fitted mean. Small
    dots: runs; larger dots: mean over seeds with a bounded 95% interval; groups of different n are dodged
    sideways so they do not hide one another. The Figure 4(c,d) analogue: the paper's claim is that the left
    panel is straighter (smaller mean MSE, printed in each panel's title) than the right.

    ``published=True`` draws :func:`divscale.report.analysis.paper_fig4_points` (one published value per point, no
    seeds): filled = Table 1 values, hollow = read off the paper's Figure 4. ``fits`` (optional) must be
    :func:`divscale.report.analysis.fit_lines` output for x="d" on the same ``scale``. Reward ×100 (``scale=1``).
    """
    set_style()
    data = _filter_algo(df, algo)
    if fits is None:
        fits = analysis.fit_lines(data, x="d", y=y, scale=scale)
    elif not ((fits["x"] == "d").all() and np.allclose(fits["scale"], scale)):
        raise ValueError(f"fits must be fit_lines(x='d', scale={scale}) output; got x={set(fits['x'])}, "
                         f"scale={set(fits['scale'])}")
    fits_n = analysis.fit_lines(data, x="n_prompts", y=y, scale=scale)
    fig, axes = plt.subplots(1, 2, figsize=(8.8, 3.9), sharey=True, constrained_layout=True)
    name = algo.upper() if algo else "all runs"
    for ax, f, x, xlabel in [(axes[0], fits, "d", "prompt diversity d"), (axes[1], fits_n, "n_prompts", "#prompts")]:
        _lines_panel(ax, data, f, x, y, scale, dodge=0.022 * np.ptp(data[x]), published=published)
        unit = "points²" if scale == 1 else f"(×{scale:g} scale)²"
        ax.set(xlabel=xlabel, title=f"vs {'d' if x == 'd' else '#prompts'}: mean MSE "
                                    f"{analysis.mean_mse(f):.3g} {unit}")
    axes[0].set_ylabel(REWARD_LABEL if scale == 1 else f"RM_test reward (×{100 * scale:g})")
    panel = {"PRO": " (its Fig. 4(c))", "SFT": " (its Fig. 4(d))"}.get(name, "")
    who = f"the paper's published points{panel}, refit here" if published else "our runs"
    fig.suptitle(title or f"{name}, {who}")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize="small",
               title="lines on d (left panel)", title_fontsize="small")
    if published:
        marks = [plt.Line2D([], [], ls="", marker="o", color="0.3", label="Table 1 value"),
                 plt.Line2D([], [], ls="", marker="o", mfc="white", color="0.3", label="read off Fig. 4 (±0.2)")]
        axes[1].legend(handles=marks, fontsize="x-small", loc="lower right")
        _caption(fig, "One OLS line per ranking length n with its 95% confidence band; points dodged sideways by n.")
    else:
        _caption(fig, "Small dots: runs (seeds). Large dots and bars: mean and " + BOUNDED_NOTE
                 + ". Lines: OLS per n on the runs, band: 95% CI of the fitted mean. Points dodged sideways by n.")
    return fig


# ---------------------------------------------------------------------------------------------------------
# Table 1: the equal-budget allocation
# ---------------------------------------------------------------------------------------------------------

def _initial_line(ax, initial: dict | None) -> None:
    """The policy before fine-tuning as a dashed reference line with its bootstrap CI as a band."""
    if not initial:
        return
    ci = initial.get("ci") or [initial.get("ci_lo"), initial.get("ci_hi")]
    ax.axhline(initial["reward_global"], color="0.35", ls="--", lw=1.1, zorder=1, label="initial policy (95% CI)")
    if ci and ci[0] is not None and np.isfinite(ci[0]):
        ax.axhspan(ci[0], ci[1], color="0.5", alpha=0.12, lw=0, zorder=0)


def plot_allocation(df: pd.DataFrame, budgets, y: str = "reward_global", scale: float = 1.0,
                    algo: str | None = None, initial: dict | None = None) -> plt.Figure:
    """Reward vs #prompts for each ranking length in the table, one panel per budget (and one row per algo), the
    equal-budget cells (n, budget/n) ringed in red as in the paper's Table 1. Small dots: the runs (replicates);
    large dots and bars: the mean and a bounded 95% interval over replicates
    (:func:`divscale.metrics.stats.bounded_interval`; cells with fewer than three runs get no bar: a t-interval on
    one degree of freedom spans ±12.7 SE and would flatten every other cell). ``initial``
    (:func:`divscale.study.pipeline.initial_policy_reward` or initial_policy.json) draws the policy before
    fine-tuning as a dashed line with its CI. ``budgets`` are in annotations (responses = prompts × n)."""
    set_style()
    data = _filter_algo(df, algo)
    algos = sorted(data["algo"].astype(str).unique()) if "algo" in data.columns else [None]
    lengths = tuple(sorted(int(n) for n in data["ranking_len"].unique()))
    budgets = sorted(budgets, reverse=True)
    fig, axes = plt.subplots(len(algos), len(budgets), figsize=(max(5.2, 4.6 * len(budgets)), 3.7 * len(algos) + 1.0),
                             squeeze=False, constrained_layout=True)
    few = False
    for i, a in enumerate(algos):
        sub = _filter_algo(data, a)
        table = analysis.equal_budget_table(sub, budgets, y=y, lengths=lengths)
        for col in ("mean", "ci_lo", "ci_hi"):
            table[col] = table[col] * scale
        thin = table["n_seeds"] < 3
        few |= bool((thin & (table["n_seeds"] > 0)).any())
        table.loc[thin, ["ci_lo", "ci_hi"]] = np.nan
        for j, budget in enumerate(budgets):
            ax, t = axes[i, j], table[table["budget_group"] == budget]
            _initial_line(ax, initial)
            prompts = sorted(t["n_prompts"].unique())
            where = {p: k for k, p in enumerate(prompts)}
            mid = (lengths[0] + lengths[-1]) / 2
            for n, g in t.groupby("ranking_len"):
                g = g.set_index("n_prompts").reindex(prompts).reset_index()
                off = (n - mid) * 0.12
                pos = np.arange(len(prompts)) + off
                runs = sub[(sub["ranking_len"] == n) & sub["n_prompts"].isin(prompts)]
                ax.scatter(runs["n_prompts"].map(where) + off - 0.05, runs[y] * scale, s=10,
                           color=LENGTH_COLORS.get(n), alpha=0.5, lw=0, zorder=3)
                have = g["n_seeds"] > 0
                _intervals(ax, pos[have], g["mean"][have], g["ci_lo"][have], g["ci_hi"][have], LENGTH_COLORS.get(n),
                           line=True, label=f"n = {n}")
                diag = (g["diagonal"].fillna(False) & have).to_numpy(bool)
                ax.scatter(pos[diag], g["mean"][diag], s=170, facecolors="none", edgecolors=HIGHLIGHT,
                           linewidths=1.8, zorder=5, label="equal budget (n, B/n)" if n == lengths[0] else None)
            ax.set_xticks(np.arange(len(prompts)), [f"{p:,}" for p in prompts])
            lo, hi = ax.get_ylim()
            ax.set_ylim(max(lo, 0.0), min(hi, 100.0 * scale))                   # rewards live in [0, 100]
            ax.set(xlabel="#prompts", title=f"{(a or '').upper()} · budget B = {budget:,} responses".strip(" ·"))
            if j == 0:
                ax.set_ylabel(REWARD_LABEL if scale == 1 else f"RM_test reward (×{100 * scale:g})")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=min(len(labels), 4), fontsize="small",
               markerscale=0.8)
    _caption(fig, "Small dots: runs (replicates). Large dots and bars: mean and " + BOUNDED_NOTE
             + (" (no bar where a cell has fewer than 3 runs)" if few else "")
             + ". Ringed: the equal-budget cells. Dashed line and band: the policy before fine-tuning and its 95% CI.")
    return fig


# ---------------------------------------------------------------------------------------------------------
# The decay exponent
# ---------------------------------------------------------------------------------------------------------

def plot_exponent_fit(curves, paper_exponent: float = 0.5, paper_curves: dict | None = None) -> plt.Figure:
    """Mean MSE of the per-n lines (points², linear axis) against the exponent e = 1/p of d = |X|^e · r_unique
    (:func:`divscale.report.analysis.fit_exponent` ``.curve``), for our runs and, in a second panel, for the
    paper's own published points (``paper_curves``), whose curve the paper's choice p = 2 rests on.

    ``curves``: one curve, or {label: curve} (e.g. {"PRO": ..., "SFT": ...}). Filled markers: every per-n
    line rises at that e; hollow: some line falls (d shrinks as |X| grows, or reward falls with d). A star
    marks the smallest MSE among the filled markers, when there is one: a "best p" is drawn only where it
    satisfies that rule. Dashed: the paper's e = 0.5 (p = 2)."""
    set_style()
    if isinstance(curves, pd.DataFrame):
        curves = {"ours": curves}
    panels = [("(a) our runs", curves)] + ([("(b) the paper's published points", paper_curves)] if paper_curves else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False,
                             constrained_layout=True)
    palette = sns.color_palette("colorblind", 8)
    colors = {"PRO": palette[0], "SFT": palette[4], "ours": palette[0]}
    for ax, (title, group) in zip(axes[0], panels):
        for k, (label, curve) in enumerate(group.items()):
            color = colors.get(label, palette[k % 8])
            rises = (curve["min_slope"] > 0).to_numpy() if "min_slope" in curve else np.ones(len(curve), bool)
            ax.plot(curve["exponent"], curve["mean_mse"], color=color, lw=1.2, label=label)
            ax.scatter(curve["exponent"][rises], curve["mean_mse"][rises], color=color, s=16, zorder=3)
            ax.scatter(curve["exponent"][~rises], curve["mean_mse"][~rises], facecolors="white", edgecolors=color,
                       s=16, lw=1, zorder=3)
            if rises.any():
                ok = curve[rises]
                best = ok.loc[ok["mean_mse"].idxmin()]
                ax.scatter([best["exponent"]], [best["mean_mse"]], marker="*", s=150, color=color,
                           edgecolors="k", lw=0.6, zorder=5, label=f"{label}: best p = {best['p']:.2f}")
            else:
                ax.plot([], [], ls="", label=f"{label}: no e with every line rising")
        ax.axvline(paper_exponent, ls="--", color=PAPER_COLOR, lw=1, label=f"paper e = {paper_exponent:g} (p = 2)")
        ax.set(xlabel="exponent e = 1/p", ylabel="mean MSE of the per-n lines (points²)", title=title)
        top = ax.secondary_xaxis("top", functions=(lambda e: 1 / np.maximum(e, 1e-9),
                                                   lambda p: 1 / np.maximum(p, 1e-9)))
        top.set_xlabel("decay index p", fontsize="small")
        top.set_xticks([1, 1.5, 2, 3, 5])
        ax.legend(fontsize="x-small", loc="best")
    _caption(fig, "Filled markers: every per-n line rises at that exponent; hollow: some line falls. "
             "Star: smallest mean MSE among the filled markers. Reward ×100, so MSE in points².")
    return fig


# ---------------------------------------------------------------------------------------------------------
# Reward-model report, selection strategies, augmentation
# ---------------------------------------------------------------------------------------------------------

def rm_plot_frame(report: pd.DataFrame) -> pd.DataFrame:
    """From the long RM report (model, subset, metric, value, ci_lo, ci_hi, n:
    :func:`divscale.reward.rm.rm_report_frame`): human-label accuracy per model and subset, plus the length
    baseline and the OpenAssistant 6.9B RM's accuracy on the same pairs as models of their own."""
    acc = report[report["metric"] == "accuracy"]
    parts = [acc]
    for metric, label in (("oa_accuracy", "OpenAssistant 6.9B RM"), ("length_baseline", "length baseline")):
        extra = report[report["metric"] == metric].drop_duplicates("subset")
        if len(extra):
            parts.append(extra.assign(model=label))
    return (pd.concat(parts).rename(columns={"value": "accuracy", "ci_lo": "accuracy_lo", "ci_hi": "accuracy_hi"})
            .reset_index(drop=True))


def plot_rm_report(report_df: pd.DataFrame, model: str = "model", subset: str = "subset",
                   acc: str = "accuracy", lo: str = "accuracy_lo", hi: str = "accuracy_hi",
                   baseline: str = "length", ci_method: str = "Wilson 95% CI") -> plt.Figure:
    """Pairwise accuracy of reward models per test subset with CIs, beside a length baseline and, when the
    frame has it, the OpenAssistant 6.9B RM on the same pairs (:func:`rm_plot_frame`).

    ``report_df``: one row per (model, subset) with columns ``model``, ``subset``, ``accuracy`` and, if
    known, ``accuracy_lo``/``accuracy_hi`` (names configurable). Models whose name contains ``baseline``
    are drawn as hollow grey diamonds. Dotted line: chance (0.5); an RM whose CI contains 0.5 on a subset
    is circled there ("at chance")."""
    set_style()
    summary = report_df.rename(columns={model: "model", subset: "subset", acc: "mean"})
    summary["lo"] = report_df.get(lo, np.nan)
    summary["hi"] = report_df.get(hi, np.nan)
    summary["subset"] = summary["subset"].astype(str).str.replace("-", "-\n", n=1, regex=False)
    models = list(pd.unique(summary["model"]))
    models = [m for m in models if baseline not in str(m).lower()] + \
             [m for m in models if baseline in str(m).lower()]
    order = list(pd.unique(summary["subset"]))
    fig, ax = plt.subplots(figsize=(max(5.5, 1.45 * len(order) + 2.5), 3.8), constrained_layout=True)
    palette = sns.color_palette("colorblind", 8)
    colors = dict(zip(models, [palette[0], palette[1], palette[2], palette[4]]))
    _dots(ax, summary, "subset", hue="model", order=order, hue_order=models, colors=colors,
          hollow_if=lambda m: baseline in str(m).lower())
    step = 0.7 / max(len(models), 1)
    chance = summary[(summary["lo"] <= 0.5) & (summary["hi"] >= 0.5)
                     & ~summary["model"].astype(str).str.lower().str.contains(baseline)]
    for _, r in chance.iterrows():
        pos = order.index(r["subset"]) + (models.index(r["model"]) - (len(models) - 1) / 2) * step
        ax.scatter([pos], [r["mean"]], s=160, facecolors="none", edgecolors=HIGHLIGHT, lw=1.4, zorder=6)
    ax.axhline(0.5, ls=":", color="0.3", lw=1, label="chance (0.5)")
    if len(chance):
        ax.scatter([], [], s=160, facecolors="none", edgecolors=HIGHLIGHT, lw=1.4, label="CI contains 0.5")
    ax.set(ylabel="pairwise accuracy\n(chosen preferred over rejected)",
           title="Reward models on held-out HH-RLHF test pairs")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    _caption(fig, f"Dots: accuracy on the subset's pairs; bars: {ci_method}. Hollow diamonds: the longer "
             "response wins (no model).")
    return fig


PANELS_PER_ROW = 4

# readable names of the diversity columns, and the two measures that rise when a set is LESS diverse
MEASURE_LABELS = {"d": "d (the paper's metric)", "r_unique": "unique-bigram ratio", "distinct_1": "distinct-1",
                  "distinct_2": "distinct-2", "ngd_4": "n-gram diversity (1-4)",
                  "compression_ratio": "gzip compression ratio", "jaccard": "mean pairwise Jaccard",
                  "vendi": "Vendi score (MiniLM)", "remote_clique": "remote clique (MiniLM)",
                  "chamfer": "chamfer distance (MiniLM)"}
LESS_DIVERSE_WHEN_HIGHER = ("compression_ratio", "jaccard")
REWARD_BARS = "dots: training seeds; bar: mean and " + BOUNDED_NOTE
THIN_BARS = ("small dots: training seeds; large dot: their mean (no interval drawn where an arm has fewer than 3 "
             "seeds: a t-interval on one degree of freedom spans ±12.7 SE; the CIs of the differences are in the table)")


def _arm_labels(df: pd.DataFrame, by: str, order: list, prompts: bool = True, lengths: bool = True) -> dict:
    """Tick label per arm: its name, its #prompts (``prompts=True`` and the table has them), its prompts' median
    length in metric tokens (when the table has ``prompt_tokens_median``: d favours short prompts), and
    '(= other)' for an arm identical to another."""
    labels = {}
    for arm in order:
        rows = df[df[by] == arm]
        text = str(arm)
        if prompts and "n_prompts" in rows.columns and rows["n_prompts"].notna().any():
            text += f"\n{int(rows['n_prompts'].iloc[0])} prompts"
        if lengths and "prompt_tokens_median" in rows.columns and rows["prompt_tokens_median"].notna().any():
            text += f"\nmedian {rows['prompt_tokens_median'].median():.0f} tokens"
        same = rows["identical_to"].dropna() if "identical_to" in rows.columns else pd.Series(dtype=object)
        same = same[same.astype(str).str.len() > 0]
        if len(same):
            text += f"\n(= {same.iloc[0]})"
        labels[arm] = text
    return labels


def _reward_bars(df: pd.DataFrame, by: str) -> str:
    """The reward panel's caption: :data:`THIN_BARS` when some arm has fewer than 3 seeds, else :data:`REWARD_BARS`."""
    keys = [by] + (["algo"] if "algo" in df.columns else [])
    return THIN_BARS if (df.groupby(keys).size() < 3).any() else REWARD_BARS


def _reward_panel(ax, df: pd.DataFrame, by: str, order: list, labels: dict, y: str, scale: float,
                  hue: str | None) -> None:
    """Test reward per arm: every run as a small dot, the mean and its bounded 95% interval over seeds
    (:func:`_seed_summary`) beside it."""
    keys = [by] + ([hue] if hue and hue in df.columns else [])
    summary = _seed_summary(df, keys, y, scale)
    summary.loc[summary["runs"] < 3, ["lo", "hi"]] = np.nan        # df = 1: an interval that says nothing
    hues = list(pd.unique(df[keys[1]])) if len(keys) > 1 else [None]
    colors = dict(zip(hues, sns.color_palette("colorblind", len(hues)))) if len(keys) > 1 else {None: LENGTH_COLORS[2]}
    _dots(ax, summary, by, hue=keys[1] if len(keys) > 1 else None, order=order, hue_order=hues, colors=colors)
    step = 0.7 / max(len(hues), 1)
    for j, h in enumerate(hues):
        part = df if h is None else df[df[keys[1]] == h]
        pos = part[by].map({a: i for i, a in enumerate(order)}) + (j - (len(hues) - 1) / 2) * step - 0.12
        ax.scatter(pos, part[y] * scale, s=12, color=colors[h], alpha=0.55, lw=0, zorder=3)
    ax.set_xticks(np.arange(len(order)), [labels[a] for a in order])
    ax.set_ylabel(REWARD_LABEL if scale == 1 else f"RM_test reward (×{100 * scale:g})")
    if len(keys) > 1:
        ax.legend(fontsize="small", loc="best")


def plot_selection(df: pd.DataFrame, by: str = "strategy", measures=None, y: str = "reward_global",
                   scale: float = 1.0, hue: str | None = None, baseline: str = "random") -> plt.Figure:
    """Selection strategies at an equal budget, in three panels:

    (a) every diversity measure of each selection as its change against ``baseline`` (percent, signed so
        that right = more diverse: compression ratio and mean Jaccard rise for *less* diverse sets, so their
        sign is flipped and their label says so); one shared, readable axis instead of one zoomed axis each;
    (b) the prompt lengths of each selection (mean and median metric tokens, when the table has
        ``prompt_tokens_mean``): d's unique-bigram ratio favours short prompts;
    (c) test reward, every run and the mean with its 95% t-interval over training seeds.

    ``df``: one row per run with the arm's measures (constant per arm) beside ``y``; arms with an
    ``identical_to`` entry are labelled "(= other arm)". ``measures`` defaults to the known columns present.
    """
    set_style()
    if by not in df.columns:
        raise ValueError(f"no column {by!r}; columns are {list(df.columns)}")
    order = list(pd.unique(df[by]))
    labels = _arm_labels(df, by, order, prompts=False, lengths=False)   # equal budget; panel (b) has the lengths
    measures = list(measures) if measures is not None else [m for m in DIVERSITY_MEASURES if m in df.columns]
    per_arm = df.groupby(by, sort=False)[measures + [c for c in ("prompt_tokens_mean", "prompt_tokens_median")
                                                      if c in df.columns]].mean().reindex(order)
    has_len = "prompt_tokens_mean" in per_arm.columns
    ratios = [1.5, 1.0, 1.2] if has_len else [1.5, 1.2]
    fig, axes = plt.subplots(1, len(ratios), figsize=(3.3 * sum(ratios) + 1.5, 0.3 * len(measures) + 3.0),
                             gridspec_kw={"width_ratios": ratios}, constrained_layout=True)
    ax = axes[0]
    base = baseline if baseline in per_arm.index else order[0]
    others = [a for a in order if a != base]
    palette = dict(zip(others, sns.color_palette("colorblind", len(order))[1:]))
    ypos = np.arange(len(measures))[::-1]
    for j, arm in enumerate(others):
        change = 100 * (per_arm.loc[arm, measures] / per_arm.loc[base, measures] - 1)
        sign = np.array([-1.0 if m in LESS_DIVERSE_WHEN_HIGHER else 1.0 for m in measures])
        off = (j - (len(others) - 1) / 2) * 0.22
        ax.scatter(change.to_numpy(dtype=float) * sign, ypos + off, s=36, color=palette[arm], zorder=3,
                   label=labels[arm].replace("\n", " "))
    ax.axvline(0, color="0.3", lw=1)
    ax.set_yticks(ypos, [MEASURE_LABELS.get(m, m) + (" (sign flipped)" if m in LESS_DIVERSE_WHEN_HIGHER else "")
                         for m in measures])
    lim = max(5.0, float(np.nanmax(np.abs(ax.collections[0].get_offsets()[:, 0]))) if others else 5.0)
    for coll in ax.collections[1:]:
        lim = max(lim, float(np.nanmax(np.abs(coll.get_offsets()[:, 0]))))
    ax.set_xlim(-1.15 * lim, 1.15 * lim)
    ax.set_xlabel(f"change against {base} (%)\n← less diverse    more diverse →")
    ax.set_title(f"(a) diversity of each selection vs {base}")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(0, -0.32), ncol=max(len(others), 1), borderaxespad=0)
    ax.grid(axis="y", lw=0.3)
    if has_len:
        ax = axes[1]
        pos = np.arange(len(order))
        ax.bar(pos, per_arm["prompt_tokens_mean"], width=0.6, color=LENGTH_COLORS[2], alpha=0.8, label="mean")
        if "prompt_tokens_median" in per_arm.columns:
            ax.scatter(pos, per_arm["prompt_tokens_median"], marker="_", s=300, color="black", zorder=3, label="median")
        ax.set_xticks(pos, [labels[a] for a in order])
        ax.set_ylim(0, None)
        ax.set_ylabel("prompt length (metric tokens)")
        ax.set_title("(b) prompt length of each selection")
        ax.legend(fontsize="small")
    ax = axes[-1]
    _reward_panel(ax, df, by, order, labels, y, scale, hue)
    ax.set_title("(c) test reward after training")
    for a in axes[1:]:
        a.tick_params(axis="x", labelsize="small")
        plt.setp(a.get_xticklabels(), rotation=30, ha="right", rotation_mode="anchor")
    fig.suptitle("Selection strategies at an equal budget")
    fig.supxlabel(_reward_bars(df, by) + " (panel c)", fontsize="small", wrap=True)
    return fig


def plot_augmentation(df: pd.DataFrame, by: str = "method", y: str = "reward_global", scale: float = 1.0,
                      hue: str | None = "algo", measures=("d",)) -> plt.Figure:
    """Diversity-guided augmentation (spec §5): the base set alone vs base + random vs base + diverse.
    One panel per measure of the training set (d), and test reward per algorithm (every run, the mean and
    its bounded 95% interval over seeds). Tick labels carry each arm's #prompts (``n_prompts``): the base set
    trains on half as many prompts as the augmented sets."""
    set_style()
    if by not in df.columns:
        raise ValueError(f"no column {by!r}; columns are {list(df.columns)}")
    order = list(pd.unique(df[by]))
    labels = _arm_labels(df, by, order)
    measures = [m for m in measures if m in df.columns]
    ratios = [1.3] * len(measures) + [1.6]
    fig, axes = plt.subplots(1, len(ratios), figsize=(1.0 * len(order) * sum(ratios) + 2.5, 3.6),
                             gridspec_kw={"width_ratios": ratios}, squeeze=False, constrained_layout=True)
    axes = axes[0]
    for ax, m in zip(axes, measures):
        per_arm = df.groupby(by, sort=False)[m].mean().reindex(order)
        ax.scatter(np.arange(len(order)), per_arm, s=40, color=LENGTH_COLORS[2], zorder=3)
        ax.set_xticks(np.arange(len(order)), [labels[a] for a in order])
        ax.set_xlim(-0.6, len(order) - 0.4)
        ax.set_ylim(0, 1.15 * float(per_arm.max()))
        ax.set_ylabel(f"{m} of the training set")
    _reward_panel(axes[-1], df, by, order, labels, y, scale, hue)
    for a in axes:
        a.tick_params(axis="x", labelsize="small")
    fig.suptitle("Augmentation: the base set, plus random or diversity-guided prompts")
    fig.supxlabel(_reward_bars(df, by) + " (right)", fontsize="small", wrap=True)
    return fig


def plot_budget_crossover(table: pd.DataFrame, crossovers: list[dict] | None = None, title: str | None = None,
                          confidence: float = 0.95, initial: dict | None = None) -> plt.Figure:
    """The budget planner over a range of budgets: predicted test reward against the annotation budget, one line
    per ranking length n with its prediction-interval band **only where the subset's d lies inside the range the
    fit saw**: budgets outside it (``extrapolated``) are not drawn (the legend counts them; a line fitted on one
    range of d says nothing outside it), and a vertical dashed line marks each budget where the recommended n
    changes. ``initial`` draws the policy
    before fine-tuning as a reference line. ``table``: :func:`divscale.tools.annotation_plan.crossover_table`
    (budget, ranking_len, predicted, pi_lo, pi_hi, extrapolated); ``crossovers``:
    :func:`divscale.tools.annotation_plan.crossovers` (budget, previous_budget, from_n, to_n)."""
    set_style()
    for col in ("budget", "ranking_len", "predicted", "pi_lo", "pi_hi"):
        if col not in table.columns:
            raise ValueError(f"crossover table needs column {col!r}; columns are {list(table.columns)}")
    fig, ax = plt.subplots(figsize=(8.0, 4.2), constrained_layout=True)
    _initial_line(ax, initial)
    for n, g in table.sort_values("budget").groupby("ranking_len"):
        color = LENGTH_COLORS.get(int(n))
        ext = (g["extrapolated"].astype(bool) if "extrapolated" in g.columns else pd.Series(False, index=g.index))
        inside = g[~ext]
        left_out = f" ({int(ext.sum())} of {len(g)} budgets outside the fit's d range, not drawn)" if ext.any() else ""
        if len(inside):
            ax.fill_between(inside["budget"], inside["pi_lo"], inside["pi_hi"], color=color, alpha=0.15, lw=0)
            ax.plot(inside["budget"], inside["predicted"], color=color, lw=1.8, marker="o", ms=3.5,
                    label=f"n = {n}{left_out}")
        else:
            ax.plot([], [], color=color, lw=1.8, label=f"n = {n}: every budget outside the fit's d range")
    for c in crossovers or []:
        at = (c["previous_budget"] + c["budget"]) / 2
        ax.axvline(at, color=HIGHLIGHT, ls="--", lw=1)
        ax.annotate(f"n={c['from_n']}→{c['to_n']}\n≈{at:,.0f}", xy=(at, 1), xycoords=("data", "axes fraction"),
                    ha="center", va="top", fontsize="small", color=HIGHLIGHT,
                    bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 1})
    if not crossovers:
        ax.text(0.99, 0.02, "recommended n does not change over this range", transform=ax.transAxes,
                ha="right", va="bottom", fontsize="small", color="0.3")
    span = table["budget"].max() - table["budget"].min()
    ax.set_xlim(table["budget"].min() - 0.02 * span, table["budget"].max() + 0.02 * span)   # the whole range asked
    ax.xaxis.set_major_formatter(mticker.StrMethodFormatter("{x:,.0f}"))
    ax.set_xlabel("annotation budget B (ranked responses; ⌊B/n⌋ prompts)")
    ax.set_ylabel("predicted test reward (×100)")
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Patch(color="0.6", alpha=0.3))
    labels.append(f"{confidence:.0%} prediction interval")
    ax.legend(handles, labels, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title or "Predicted reward per ranking length at equal budget")
    return fig


def plot_short_answers(df: pd.DataFrame, y: str = "reward_global", x: str = "short_answer_share") -> plt.Figure:
    """Where the run-to-run spread comes from: each run's test reward against its share of very short answers
    (:func:`divscale.study.pipeline.answer_profile`), one panel per algorithm, dots coloured by ranking length, and
    the within-cell correlation (each run minus its cell's mean) in the panel title."""
    set_style()
    data = df.dropna(subset=[x, y])
    algos = sorted(data["algo"].unique())
    fig, axes = plt.subplots(1, max(1, len(algos)), figsize=(4.8 * max(1, len(algos)), 3.8),
                             sharey=True, sharex=True, squeeze=False, constrained_layout=True)
    sources = analysis.variance_sources(data, y)
    top = max(5.0, 105 * float(data[x].max())) if len(data) else 100.0
    for ax, algo in zip(axes[0], algos):
        g = data[data["algo"] == algo]
        for n, gn in g.groupby("ranking_len"):
            ax.scatter(100 * gn[x], gn[y], s=16, alpha=0.75, color=LENGTH_COLORS.get(int(n)), label=f"n = {n}")
        r = sources.get(algo, {}).get("short_answer_r", float("nan"))
        ax.set_title(f"{algo.upper()}: {len(g)} runs, " + (f"within-cell r = {r:+.2f}" if np.isfinite(r)
                                                           else "within-cell r not measurable"))
        ax.set_xlabel("answers ≤ 10 characters (%)")
        ax.set_xlim(-1, min(101.0, top))
    axes[0][0].set_ylabel("test reward (RM_test, ×100)")
    axes[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _caption(fig, "Each dot is one fine-tuned run of the grid; x: the share of its test answers of at most 10 "
                  "characters. r: correlation of reward and that share after subtracting each cell's mean (cells "
                  "with ≥ 2 seeds).")
    return fig


def plot_beta_ablation(beta: dict) -> plt.Figure:
    """PRO's β ablation (:func:`divscale.report.publish.beta_ablation_summary`): per equal-budget cell, each
    sft_weight's runs on the seeds every arm of the cell has, one seed's runs joined by a line (the contrasts are
    paired by seed), the mean as a larger marker and, with three or more seeds, its bounded 95% interval; SFT on
    the same prompts beside it where the grid has it (left); the ranking term's share of the gradient norm per
    sft_weight (right)."""
    set_style()
    cells = list(beta["cells"].values())
    weights = beta["weights"]
    names_all = [f"{w:g}" for w in weights]
    palette = dict(zip(names_all, sns.color_palette("rocket_r", len(weights) + 1)[1:])) | {"sft": (0.55, 0.55, 0.55)}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11.0, 4.4), constrained_layout=True)
    slots = names_all + (["sft"] if any("sft" in c["arms"] for c in cells) else [])
    width = 0.7 / len(slots)
    few = False
    for i, cell in enumerate(cells):
        arms = cell["arms"]
        xs = {name: i + (j - (len(slots) - 1) / 2) * width for j, name in enumerate(slots) if name in arms}
        values = {n: {int(sd): v for sd, v in (a.get("values") or {}).items()} for n, a in arms.items()}
        for sd in sorted({sd for v in values.values() for sd in v}):
            pts = [(xs[n], values[n][sd]) for n in slots if n in arms and sd in values[n]]
            if len(pts) > 1:
                ax.plot(*zip(*pts), color="0.7", lw=0.8, zorder=2)
            ax.scatter(*zip(*pts), s=14, color="0.45", zorder=3)
        for name, x in xs.items():
            a = arms[name]
            label = ("SFT" if name == "sft" else f"PRO, sft_weight {name}"
                     + (" (paper)" if float(name) == beta["paper_sft_weight"] else "")) if i == 0 else None
            thin = a["runs"] < 3
            few |= thin
            _intervals(ax, [x], [a["mean"]], [np.nan if thin else a["ci_lo"]], [np.nan if thin else a["ci_hi"]],
                       palette[name], label=label, ms=8)
            if name != "sft" and a.get("grad_share_rank") is not None and np.isfinite(a["grad_share_rank"]):
                ax2.bar(x, 100 * a["grad_share_rank"], width=width * 0.9, color=palette[name],
                        label=f"sft_weight {name}" if i == 0 else None)
    labels = [f"n = {c['n']}, {c['n_prompts']} prompts\nseeds {', '.join(str(x) for x in c['seeds'])}" for c in cells]
    for a_ in (ax, ax2):
        a_.set_xticks(range(len(cells)), labels)
        a_.set_xlim(-0.6, len(cells) - 0.4)
    ax.set_ylabel("test reward (RM_test, ×100)")
    ax.set_title("Test reward on the seeds every arm has")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(0.0, -0.22), ncol=2)
    ax2.set_ylabel("ranking term's share\nof the gradient norm (%)")
    ax2.set_ylim(0, 105)
    ax2.set_title("What moves the weights")
    _caption(fig, f"Equal-budget cells ({cells[0]['budget']:,} responses). Small grey dots: runs, one seed's runs "
                  "joined; large dots: the mean" + (" (no interval where an arm has fewer than 3 seeds: a t-interval "
                                                     "on one degree of freedom says nothing)" if few else
                                                     ", bars: 95% interval (logit scale)")
                  + f". PRO's loss = ranking term + β·SFT, β = sft_weight·(n−1)²; the paper's sft_weight is "
                  f"{beta['paper_sft_weight']:g}. Share = ‖∇ranking‖ / (‖∇ranking‖ + ‖∇β·SFT‖), mean over the "
                  "measured steps.")
    return fig


PART_LABELS = {"total": "equal budget\n(total)", "prompts": "fewer prompts\n(same n)", "length": "longer rankings\n(same prompts)"}
PART_COLORS = {"total": "0.35", "prompts": "#0173B2", "length": "#029E73"}


def plot_budget_decomposition(ours: dict, paper: pd.DataFrame, budget_label: str = "") -> plt.Figure:
    """The equal-budget contrast and its two parts, ours beside the paper's (:func:`analysis.budget_decomposition`
    or :func:`analysis.primary_decomposition`, :func:`analysis.paper_budget_decomposition`).

    Left: ours, one group of three bars per algorithm (``ours``: {algo: decomposition}), each a point estimate
    with its 95% CI (Welch for the total and the prompt-count part, paired by replicate for the ranking-length part)
    and ± its MDE as dashed ticks. Right: the paper's Table 1 settings (no seeds, so no CIs), one group each. The
    total is the sum of the two parts in both panels; both panels share the y axis."""
    set_style()
    parts = ["total", "prompts", "length"]
    settings = [(r.algo, r.model, r.split, r.budget) for r in paper.itertuples()]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13.0, 5.4), sharey=True, constrained_layout=True,
                                 gridspec_kw={"width_ratios": [max(1, len(ours)) * 1.6 + 1.4,
                                                               len(settings) * 0.55 + 1]})
    single = len(ours) == 1
    width = 0.6 if single else 0.26
    for i, (algo, dec) in enumerate(sorted(ours.items())):
        for j, part in enumerate(parts):
            c = dec[part]
            x = j if single else i + (j - 1) * width
            lo, hi = c["ci_lo"], c["ci_hi"]
            ax.bar(x, c["estimate"], width * 0.9, color=PART_COLORS[part], alpha=0.85,
                   label=PART_LABELS[part].replace("\n", " ") if i == 0 else None)
            if lo is not None and np.isfinite(lo):
                ax.errorbar(x, c["estimate"], yerr=[[c["estimate"] - lo], [hi - c["estimate"]]], fmt="none",
                            ecolor="black", capsize=4, lw=1.2, label="95% CI" if i == 0 and j == 0 else None)
            if c.get("mde") is not None and np.isfinite(c["mde"]):
                for sign in (1, -1):
                    ax.plot([x - width * 0.42, x + width * 0.42], [sign * c["mde"]] * 2, ls="--", lw=1.0, zorder=5,
                            color="0.45", label="± MDE (80% power)" if i == 0 and j == 0 and sign == 1 else None)
    ax.axhline(0, color="black", lw=0.8)
    first = next(iter(ours.values())) if ours else None
    if first and single:
        ticks = [0, 1, 2]
        cells = {"total": f"({first['n_hi']}, {first['k_hi']}) − ({first['n_lo']}, {first['k_lo']})",
                 "prompts": f"({first['n_lo']}, {first['k_hi']}) − ({first['n_lo']}, {first['k_lo']})",
                 "length": f"({first['n_hi']}, {first['k_hi']}) − ({first['n_lo']}, {first['k_hi']})"}
        ax.set_xticks(ticks, [PART_LABELS[p_].split("\n")[0] + "\n" + cells[p_] for p_ in parts], fontsize="small")
        ax.set_xlabel("cells (n, #prompts)", fontsize="small")
    else:
        ax.set_xticks(range(len(ours)), [a.upper() for a in sorted(ours)])
    algo_names = "/".join(a.upper() for a in sorted(ours))
    ax.set_title(f"this study, {algo_names}" + (f", {first['budget']:,} responses" if first else "") + budget_label)
    ax.set_ylabel(f"difference in {REWARD_LABEL}")
    for i in range(len(settings)):
        row = paper.iloc[i]
        for j, part in enumerate(parts):
            bx.bar(i + (j - 1) * 0.26, row[part], 0.26 * 0.9, color=PART_COLORS[part], alpha=0.85)
    bx.axhline(0, color="black", lw=0.8)
    bx.set_xticks(range(len(settings)), [f"{a.upper()} {m}\n{s_} {b // 1000}k" for a, m, s_, b in settings],
                  rotation=50, ha="right", fontsize="x-small")
    bx.set_title("the paper's Table 1, every setting (one run a cell: no CI)")
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=len(labels), fontsize="small")
    _caption(fig, "Total = prompt-count part + ranking-length part, in both panels. Ours: 95% CI (Welch's t for the "
                  "total and the prompt-count part, paired by replicate for the ranking-length part) and ± the MDE, the "
                  "smallest true difference a test finds with 80% power at α = 0.05.")
    return fig


TRAINER_COLORS = {"divscale": "#029E73", "trl": "#CC78BC"}      # colorblind palette: listwise arms, TRL's pairs


def plot_listwise(df: pd.DataFrame, summary: dict) -> plt.Figure:
    """Notebook 09's head-to-head (``listwise.csv`` and :func:`divscale.report.publish.listwise_summary`): per arm the
    test reward (every seed a dot; mean and bounded 95% interval over seeds; the initial policy dashed), the win rate
    over the initial policy (same marks; 50% dashed) and the measured wall time per optimizer step with the sequences
    a step encodes (policy + reference)."""
    set_style()
    arms = summary["arms"]
    order = list(arms)
    runs = df[(df["arm"] != "initial") & (df["status"].astype(str) == "ok")]
    fig, axes = plt.subplots(1, 3, figsize=(13.0, 4.2), gridspec_kw={"width_ratios": [3, 3, 2]})
    panels = ((axes[0], "reward", 1.0, summary["initial"]["reward"]), (axes[1], "win_rate", 100.0, 50.0))
    for ax, column, scale, reference in panels:
        for i, arm in enumerate(order):
            a, color = arms[arm], TRAINER_COLORS[arms[arm]["trainer"]]
            ys = runs[runs["arm"] == arm][column] * scale
            ax.scatter(i - 0.15 + np.linspace(-0.05, 0.05, len(ys)), ys, s=12, color=color, alpha=0.55, lw=0, zorder=3)
            _intervals(ax, [i + 0.05], [a[column] * scale], [a[f"{column}_lo"] * scale], [a[f"{column}_hi"] * scale],
                       color)
        ax.axhline(reference, ls="--", lw=1, color="0.4")
        # labels wrapped to about a column's width, so that neighbours do not run into each other
        ax.set_xticks(range(len(order)), [textwrap.fill(arms[a]["label"], 10, break_long_words=False) for a in order],
                      fontsize="x-small")
    axes[0].set_ylabel(REWARD_LABEL)
    axes[0].set_title("Test reward (dashed: initial policy)")
    axes[1].set_ylabel("win rate over the initial policy (%)")
    axes[1].set_title("Win rate, ties half (dashed: 50%)")
    ax = axes[2]
    steps = [arms[a]["seconds_per_step"] for a in order]
    ax.barh(range(len(order)), steps, color=[TRAINER_COLORS[arms[a]["trainer"]] for a in order], alpha=0.85)
    for i, a in enumerate(order):
        seqs = arms[a]["policy_sequences_per_step"] + arms[a]["reference_sequences_per_step"]
        ax.text(steps[i], i, f" {seqs:g} seq.", va="center", fontsize="x-small")
    ax.set_yticks(range(len(order)), [arms[a]["label"] for a in order], fontsize="x-small")
    ax.invert_yaxis()
    ax.set_xlabel("seconds per optimizer step")
    ax.set_xlim(0, max(steps) * 1.35)
    ax.set_title("Cost (sequences a step: policy + reference)")
    handles = [Patch(color=c, label=t) for t, c in (("divscale, on the rankings", TRAINER_COLORS["divscale"]),
                                                     ("TRL DPOTrainer, on pairs", TRAINER_COLORS["trl"]))]
    axes[0].legend(handles=handles, fontsize="x-small", loc="best")
    d = summary["design"]
    _caption(fig, f"oasst1 human rankings, K = {d['ranking_len']}: {d['steps']} steps × {d['rows_per_step']} rankings "
                  f"({d['n_train']} training rankings, {d['n_test']} test prompts), {len(d['seeds'])} seeds. Dots: "
                  f"seeds; bar: mean and {BOUNDED_NOTE}. Time: mean over seeds, one core.")
    fig.tight_layout()
    return fig
