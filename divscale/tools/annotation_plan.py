"""An annotation-budget planner: with B annotations, how many responses per prompt?

The paper's two findings (spec §4.3–4.4) combine into a planner. An annotation is one ranked response, so a
budget of B annotations buys ⌊B/n⌋ prompts ranked n-deep (spec §2.4). For each ranking length n:

1. pick ⌊B/n⌋ prompts from the user's pool with a selector of :mod:`divscale.tools.select` (random: a seeded draw,
   and its spread over ``draws`` seeded draws; d-greedy; deita);
2. measure that subset's prompt diversity d (:mod:`divscale.metrics.diversity`, in the fit's tokenizer, N and exponent);
3. read the predicted test reward off the per-n line ``reward = a_n · d + b_n`` (one OLS line per ranking
   length, as Figure 4 fits them), with a 95% prediction interval from statsmodels
   (``get_prediction(...).summary_frame(alpha)``, columns ``obs_ci_lower`` / ``obs_ci_upper``).

The recommended n is the one with the highest predicted reward. What the prediction rests on, and so what the
planner warns about: the per-n lines must hold at the pool's d (a d outside the range a line was fitted on is
an extrapolation); d must be in the fit's tokenizer units (the paper's d is in LLaMA-1 tokens: a different
tokenizer is refused unless ``allow_tokenizer_mismatch``, and then every output says so); and the fit's model,
training recipe and reward model are not the user's.

Fits: ``paper`` = the paper's 8 published points per n (divscale/paper_data: Figure 4 / Table 1, OPT-1.3B,
Global, one point per subset size, i.e. the published means); a results CSV (``results/<recipe>/runs.csv``)
= every ok run of one algorithm (each seed a point, so the interval covers a single training run), with d in
that recipe's :class:`~divscale.config.DiversityConfig` tokenizer. Rewards are on the tables' ×100 scale.

    divscale plan --prompts data/hh-rlhf/harmless-base/test.jsonl.gz --budget 480 --fit results/cpu/runs.csv
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from divscale.config import DiversityConfig
from divscale.io import DataError

PAPER_TOKENIZER = "LLaMA-1 (32k SentencePiece, BOS on, first 512 tokens)"
PAPER_TOKENIZER_ID = "huggyllama/llama-7b"     # recipes/paper-*.yaml: diversity.tokenizer
# d of random HH-RLHF test subsets (1,500 / 2,000 / 3,000 / 6,000 prompts, 5 draws each) in SmolLM2 tokens over the
# paper's LLaMA-1 d of its HH-RLHF train subsets of the same sizes (Figure 4(b)): 13.96/12.7 ... 20.04/17.0
SMOLLM2_OVER_LLAMA1_D = (1.10, 1.18)
# fewer prompts than this make no plan: d of a handful of prompts is mostly noise, and so is a run trained on them
MIN_PROMPTS = 10
HH_HUB = re.compile(r"^(?:hf:)?Anthropic/hh-rlhf(?:/(?P<subset>[\w-]+))?(?::(?P<split>\w+))?$")
SELECTOR_NAMES = ("random", "d-greedy", "deita")


# ------------------------------------------------------------------------------------------ the fit


REWARD_BOUNDS = (0.0, 100.0)   # reward ×100 = 100 · mean sigmoid(RM_test logit)


@dataclasses.dataclass
class RewardFit:
    """One OLS line reward ~ d per ranking length, and where its d values come from."""

    source: str                         # "paper" or the results CSV's path
    algo: str
    y: str                              # reward column (×100 scale)
    tokenizer: str | None               # the tokenizer d is measured in (None: the paper's LLaMA-1)
    diversity: DiversityConfig          # N, exponent, max_tokens of the fit's d
    points: pd.DataFrame                # ranking_len, n_prompts, d, reward: the points each line was fitted on
    point_kind: str                     # "published means" | "runs"
    lines: dict = dataclasses.field(default_factory=dict)   # n -> statsmodels RegressionResults

    def __post_init__(self) -> None:
        import statsmodels.api as sm

        for n, g in self.points.groupby("ranking_len"):
            x, y = g["d"].to_numpy(float), g["reward"].to_numpy(float)
            if len(x) < 3 or np.ptp(x) == 0:
                raise DataError(f"{self.source}: the n={n} line has {len(x)} point(s) with {len(set(x))} distinct d; "
                                "a prediction interval needs at least 3 points and 2 distinct d values")
            self.lines[int(n)] = sm.OLS(y, sm.add_constant(x, has_constant="add")).fit()

    @property
    def lengths(self) -> list[int]:
        return sorted(self.lines)

    def d_range(self, n: int) -> tuple[float, float]:
        d = self.points.loc[self.points["ranking_len"] == n, "d"]
        return float(d.min()), float(d.max())

    def line(self, n: int):
        if n not in self.lines:
            raise ValueError(f"the fit ({self.source}) has no line for ranking length n={n}; it has n in {self.lengths}")
        return self.lines[n]

    def predict(self, n: int, d, alpha: float = 0.05) -> pd.DataFrame:
        """mean, mean_ci_lower/upper (the line) and obs_ci_lower/upper (a new result) at each d.

        Rewards are bounded in [0, 100]: the OLS line and intervals are cut at the bounds (the straight-line fit
        itself knows no bounds; an interval that reaches one says the fit is too loose to plan on)."""
        d = np.atleast_1d(np.asarray(d, dtype=float))
        exog = np.column_stack([np.ones_like(d), d])
        frame = self.line(n).get_prediction(exog).summary_frame(alpha=alpha).reset_index(drop=True)
        bounded = ["mean", "mean_ci_lower", "mean_ci_upper", "obs_ci_lower", "obs_ci_upper"]
        frame[bounded] = frame[bounded].clip(REWARD_BOUNDS[0], REWARD_BOUNDS[1])
        return frame

    def summary(self) -> list[dict]:
        out = []
        for n in self.lengths:
            res, (lo, hi) = self.lines[n], self.d_range(n)
            out.append({"n": n, "slope": float(res.params[1]), "intercept": float(res.params[0]),
                        "r2": float(res.rsquared), "n_points": int(res.nobs), "d_min": lo, "d_max": hi})
        return out

    def describe(self) -> dict:
        return {"source": self.source, "algo": self.algo, "y": self.y, "points": self.point_kind,
                "tokenizer": self.tokenizer or PAPER_TOKENIZER, "ngram": self.diversity.ngram,
                "exponent": self.diversity.exponent, "max_tokens": self.diversity.max_tokens,
                "lines": self.summary()}


def paper_fit(algo: str = "pro") -> RewardFit:
    """The paper's Figure 4 lines (OPT-1.3B, Global, 8 subset sizes per n; d in LLaMA-1 tokens)."""
    from divscale.report.analysis import paper_fig4_points

    pts = paper_fig4_points()
    pts = pts[pts["algo"] == algo.lower()]
    if pts.empty:
        raise ValueError(f"the paper has Figure 4 points for algo 'pro' and 'sft' only, not {algo!r}")
    points = pts.rename(columns={"reward_global": "reward"})[["ranking_len", "n_prompts", "d", "reward"]]
    return RewardFit("paper", algo.lower(), "reward_global", None, DiversityConfig(tokenizer=PAPER_TOKENIZER),
                     points.reset_index(drop=True), "published means")


def results_fit(path, algo: str = "pro", y: str = "reward_global", recipe: str | None = None) -> RewardFit:
    """Refit from a results table: every ok run of ``algo`` is a point; d is in the table's recipe's tokenizer.

    Only the stable columns are read (algo, ranking_len, n_prompts, d or diversity, ``y``, and status and
    recipe when present); any other columns are ignored.
    """
    from divscale.config import load_recipe

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such results table; give results/<recipe>/runs.csv or --fit paper")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV results table ({err})") from None
    if "d" not in df.columns and "diversity" in df.columns:
        df = df.rename(columns={"diversity": "d"})
    missing = [c for c in ("algo", "ranking_len", "n_prompts", "d", y) if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; a results table has algo, ranking_len, n_prompts, "
                        f"d and {y} (columns here: {list(df.columns)})")
    if "status" in df.columns:
        df = df[df["status"].astype(str) == "ok"]
    if recipe is None:
        recipes = sorted(df["recipe"].dropna().astype(str).unique()) if "recipe" in df.columns else []
        if len(recipes) != 1:
            raise DataError(f"{path}: {'no recipe column' if not recipes else f'several recipes {recipes}'}; "
                            "pass --recipe NAME to say whose diversity tokenizer the d column is in")
        recipe = recipes[0]
    elif "recipe" in df.columns:
        df = df[df["recipe"].astype(str) == recipe]
    algos = sorted(df["algo"].dropna().astype(str).unique())
    df = df[df["algo"].astype(str).str.lower() == algo.lower()]
    if df.empty:
        raise DataError(f"{path}: no ok runs of algo {algo!r} (algos here: {algos})")
    for col in ("ranking_len", "n_prompts", "d", y):
        values = pd.to_numeric(df[col], errors="coerce")
        if (values.isna() & df[col].notna()).any():
            raise DataError(f"{path}: column {col!r} must be numeric")
        df = df.assign(**{col: values})
    df = df.dropna(subset=["ranking_len", "n_prompts", "d", y])
    div = load_recipe(recipe).diversity
    points = df.rename(columns={y: "reward"})[["ranking_len", "n_prompts", "d", "reward"]].astype(
        {"ranking_len": int, "n_prompts": int})
    return RewardFit(str(path), algo.lower(), y, div.tokenizer, div, points.reset_index(drop=True), "runs")


def load_fit(spec: str, algo: str = "pro", y: str = "reward_global", recipe: str | None = None) -> RewardFit:
    return paper_fit(algo) if spec == "paper" else results_fit(spec, algo, y, recipe)


# ------------------------------------------------------------------------------------------ the pool


def load_pool(spec: str, field: str | None = None, split: str = "train"):
    """The prompt pool (:class:`divscale.data.formats.Prompts`: prompts as HH text and their row ids): any data
    divscale reads (:func:`divscale.data.formats.load_prompts`: a file, folder or hub id in any format), or
    ``Anthropic/hh-rlhf[/SUBSET][:SPLIT]`` (the local copy first, else the hub; ids ``<subset>:<line>``)."""
    from divscale.data.formats import Prompts, load_prompts

    path = Path(spec)
    m = None if path.exists() else HH_HUB.match(spec)
    if m is None:
        if not path.exists() and (spec.startswith((".", "/", "~")) or spec.endswith((".jsonl", ".json", ".gz"))):
            raise FileNotFoundError(f"{spec}: no such prompt file; give a file or folder of prompts in any format "
                                    "divscale reads, a hub id, or Anthropic/hh-rlhf[/SUBSET][:SPLIT]")
        return load_prompts(spec, split=split, field=field)
    from divscale.data.hh import SUBSETS, load_hh_rlhf

    subsets = (m["subset"],) if m["subset"] else SUBSETS
    rows = load_hh_rlhf(subsets, split=m["split"] or "test")
    if not len(rows):
        raise DataError(f"{spec}: no prompts")
    return Prompts(list(rows["prompt"]), [f"{s}:{line}" for s, line in zip(rows["subset"], rows["line"])], "hh", [],
                   spec)


def read_pool(spec: str, field: str | None = None, split: str = "train") -> tuple[list[str], str]:
    """The pool's prompts and a one-line description of where they came from (:func:`load_pool`)."""
    pool = load_pool(spec, field, split)
    return pool.prompts, f"{pool.name} ({pool.format} format, {len(pool):,} prompts)"


# ------------------------------------------------------------------------------------------ d of subsets


def prompt_counts(budget: int, lengths: Sequence[int], pool_size: int) -> dict[int, int]:
    """⌊B/n⌋ prompts per ranking length; a budget the pool cannot fill (or that buys no prompt) is an error."""
    if not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget must be a positive number of annotations, got {budget!r}")
    lengths = sorted({int(n) for n in lengths})
    if not lengths or lengths[0] < 2:
        raise ValueError(f"ranking lengths must be >= 2, got {lengths}")
    counts = {n: budget // n for n in lengths}
    if counts[lengths[-1]] < 1:
        raise ValueError(f"budget {budget} buys no prompt at n={lengths[-1]} (⌊{budget}/{lengths[-1]}⌋ = 0); "
                         f"the smallest budget is {lengths[-1]}")
    n0 = lengths[0]
    if counts[n0] > pool_size:
        raise ValueError(f"budget {budget} needs ⌊{budget}/{n0}⌋ = {counts[n0]} prompts at n={n0}, but the pool has "
                         f"{pool_size}; the largest budget this pool fills at every n is {pool_size * n0 + n0 - 1}")
    return counts


class SubsetDiversity:
    """d of prompt subsets, each distinct prompt text tokenized once (in the fit's tokenizer and settings)."""

    def __init__(self, prompts: Sequence[str], tokenizer, cfg: DiversityConfig):
        self.prompts, self.tokenizer, self.cfg = prompts, tokenizer, cfg
        self._ids: dict[str, np.ndarray] = {}

    def token_ids(self, indices) -> list[np.ndarray]:
        from divscale.metrics.diversity import tokenize_prompts

        texts = [self.prompts[i] for i in indices]
        new = list(dict.fromkeys(t for t in texts if t not in self._ids))
        if new:
            self._ids.update(zip(new, tokenize_prompts(new, self.tokenizer, max_tokens=self.cfg.max_tokens)))
        return [self._ids[t] for t in texts]

    def prefetch(self, index_lists) -> None:
        """Tokenize the union of several index lists in one call (each call builds the tokenizer's fast path
        anew, so one call for everything a plan needs is much cheaper than one per subset)."""
        self.token_ids(list(dict.fromkeys(i for idx in index_lists for i in idx)))

    def d(self, indices):
        from divscale.metrics.diversity import diversity_from_ids

        return diversity_from_ids(self.token_ids(indices), n=self.cfg.ngram, exponent=self.cfg.exponent)


def selection_order(prompts: Sequence[str], size: int, selector: str, seed: int, div: SubsetDiversity,
                    ctx: dict | None = None, progress: bool = False) -> list[int]:
    """``size`` indices in selection order. Every selector here is sequential, so the first k of them are what
    it picks at budget k: one run serves every n (and, for random, nested subsets as in the paper's grid)."""
    from divscale.tools.select import run_selector

    if selector not in SELECTOR_NAMES:
        raise ValueError(f"unknown selector {selector!r}; choose one of {list(SELECTOR_NAMES)}")
    ctx = dict(ctx or {})
    if selector == "d-greedy":
        ctx.setdefault("token_ids", div.token_ids(range(len(prompts))))
        ctx.setdefault("n", div.cfg.ngram)
        ctx.setdefault("exponent", div.cfg.exponent)
    elif selector == "deita" and "scores" not in ctx:
        ctx |= deita_context(prompts, progress=progress)
    picked = run_selector(selector, list(prompts), size, seed, **ctx)
    return [int(i) for i in getattr(picked, "indices", picked)]   # a Selection, or a plain index list


def deita_context(prompts: Sequence[str], progress: bool = False) -> dict:
    """Deita on a bare prompt pool: the complexity score of each prompt (there are no responses to rate for
    quality) and MiniLM embeddings of the prompts; the scorer and encoder of :class:`SelectConfig`.

    Its cost is one forward pass of the scorer LM per prompt, then one MiniLM pass per prompt: 45 minutes for the
    2,312 prompts of HH-RLHF harmless-base test (356k scorer tokens; 42 min rating, 2.5 min embedding, 22 CPU-minutes
    on one thread of a shared 2-core machine; README, planner paragraph). Both
    are kept in the cache (``cache_dir()/deita/``, keyed by the prompts, the models and their code), so planning the
    same pool again at another budget, n or seed costs nothing. ``progress`` shows a bar for each and says what is
    running."""
    import sys
    import time

    from divscale import paths
    from divscale.config import SelectConfig
    from divscale.io import atomic_path
    from divscale.models.hub import embed_texts
    from divscale.provenance import closure, config_hash, sha256_hex
    from divscale.tools.select import LLMScorer

    cfg = SelectConfig()
    texts = sha256_hex(json.dumps(list(prompts), ensure_ascii=False))
    code = closure("divscale.tools.select:LLMScorer", "divscale.models.hub:embed_texts")
    cache = paths.cache_dir() / "deita" / f"{config_hash(cfg.scorer, cfg.scorer_max_length, cfg.embedder, texts, code, length=16)}.npz"
    if cache.exists():
        with np.load(cache) as saved:
            return {"scores": saved["scores"], "embeddings": saved["embeddings"], "tau": cfg.tau}
    start = time.time()
    if progress:
        print(f"deita: rating the complexity of {len(prompts):,} prompts with {cfg.scorer} (one forward pass each), "
              f"then embedding them with {cfg.embedder}; both are cached for the next plan", file=sys.stderr,
              flush=True)
    scorer = LLMScorer.from_pretrained(cfg.scorer, kind="complexity", batch_size=cfg.scorer_batch_size,
                                       max_length=cfg.scorer_max_length, progress=progress)
    scores = scorer.score(list(prompts))
    embeddings = embed_texts(list(prompts), cfg.embedder, progress=progress)
    with atomic_path(cache, suffix=".npz") as tmp:
        np.savez(tmp, scores=scores, embeddings=embeddings)
    if progress:
        print(f"deita: {len(prompts):,} prompts scored and embedded in {time.time() - start:.0f} s", file=sys.stderr,
              flush=True)
    return {"scores": scores, "embeddings": embeddings, "tau": cfg.tau}


# ------------------------------------------------------------------------------------------ tokenizers


def is_llama1_tokenizer(name: str | None, tokenizer) -> bool:
    """The paper's tokenizer: a LLaMA(-1/2) 32,000-piece SentencePiece vocabulary."""
    try:
        size = len(tokenizer)
    except TypeError:
        return False
    named = "llama" in str(name or "").lower() or "llama" in type(tokenizer).__name__.lower()
    return named and size == 32000


def cached_paper_tokenizer() -> str | None:
    """The folder of the paper's LLaMA-1 tokenizer (:data:`PAPER_TOKENIZER_ID`, the paper recipes' diversity
    tokenizer) when the local Hugging Face cache holds it; None otherwise. Nothing is downloaded."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(PAPER_TOKENIZER_ID, "tokenizer_config.json")
    return str(Path(found).parent) if isinstance(found, str) else None


def resolve_tokenizer(fit: RewardFit, name: str | None, allow_mismatch: bool) -> tuple[str, list[str]]:
    """The tokenizer id (or folder) to measure d in, and the warnings that go with it.

    The paper's fit wants LLaMA-1 tokens: without ``--tokenizer`` that is :data:`PAPER_TOKENIZER_ID` when the
    local cache has it, else (offline, the default case) the project's offline tokenizer, said in a warning
    (:func:`plan` adds the mismatch and its measured size). A results fit wants its recipe's tokenizer; another
    one is refused unless ``allow_mismatch``."""
    if fit.tokenizer is None:                                  # the paper: LLaMA-1 units
        if name is not None:
            return name, []
        cached = cached_paper_tokenizer()
        if cached is not None:
            return cached, []
        fallback = DiversityConfig().tokenizer
        return fallback, [(f"offline default: the paper's LLaMA-1 tokenizer ({PAPER_TOKENIZER_ID}) is not in the local "
                          f"cache, so d is measured in {fallback} tokens; pass --tokenizer with a LLaMA-1 tokenizer "
                          "(local folder or cached hub id) for the paper's units")]
    if name is not None and name != fit.tokenizer:
        if not allow_mismatch:
            raise ValueError(f"the fit's d ({fit.source}) is in {fit.tokenizer} tokens, not {name}; drop --tokenizer "
                             "or pass --allow-tokenizer-mismatch")
        return name, [(f"TOKENIZER MISMATCH: d is measured in {name} tokens but the fit's d is in {fit.tokenizer} "
                      "tokens; the predictions compare numbers on different scales")]
    return fit.tokenizer, []


# ------------------------------------------------------------------------------------------ the plan


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def slope_warnings(fit: RewardFit, lengths: Sequence[int]) -> list[str]:
    """A warning for each line of ``lengths`` whose slope is negative: there the fit predicts *lower* reward for
    more diverse prompts (the paper found the opposite), so the plan favours the less diverse option."""
    negative = [(n, float(fit.line(n).params[1])) for n in lengths if fit.line(n).params[1] < 0]
    if not negative:
        return []
    which = "every line" if len(negative) == len(lengths) else "the line(s) for " + ", ".join(f"n={n}" for n, _ in negative)
    slopes = ", ".join(f"n={n}: {b:+.3g}" for n, b in negative)
    return [(f"NEGATIVE SLOPE: in {which} of this fit reward falls as d rises ({slopes} per unit d), the opposite of "
            "the paper's finding: its predictions favour less diverse prompts (fewer prompts, more responses each). "
            "Check the fit (its runs, seeds and d range) before acting on this plan")]


def few_prompts_warnings(fit: RewardFit, options: list[dict], best: dict) -> list[str]:
    """Warnings for options with fewer prompts than :data:`MIN_PROMPTS` or than the fit's smallest subset, and
    one when the recommended option is such an option."""
    fewest = int(fit.points["n_prompts"].min())
    floor = max(MIN_PROMPTS, fewest)
    out = []
    for o in options:
        if o["n_prompts"] < floor:
            why = (f"below the minimum of {MIN_PROMPTS} prompts a plan needs" if o["n_prompts"] < MIN_PROMPTS
                   else f"fewer than the {fewest:,} of the fit's smallest subset")
            out.append(f"n={o['n']}: {o['n_prompts']:,} prompt(s) is {why}; its d and prediction say little")
    if best["n_prompts"] < floor:
        out.append(f"TOO FEW PROMPTS: the recommended option (n = {best['n']}, {best['n_prompts']:,} prompt(s)) has "
                   f"fewer than {floor:,} prompts; raise the budget to at least {floor * best['n']:,} annotations "
                   "before acting on it")
    return out


def plan(prompts: Sequence[str], budget: int, fit: RewardFit, tokenizer, lengths: Sequence[int] = (2, 3, 4),
         selector: str = "random", seed: int = 0, draws: int = 5, alpha: float = 0.05,
         tokenizer_name: str | None = None, warnings: Sequence[str] = (), selector_ctx: dict | None = None,
         ids: Sequence[str] | None = None, progress: bool = False) -> dict:
    """The options at ``budget`` annotations, the recommended n and the warnings (see the module docstring).

    ``tokenizer`` is the tokenizer object d is measured with (a transformers tokenizer or a callable
    list[str] -> list[list[int]]); ``tokenizer_name`` names it in the output. For a paper fit, a tokenizer that
    is not LLaMA-1's gets a mismatch warning in every output. Each option lists the prompts it picks
    (``prompt_ids``: ``ids`` of the pool, default the pool positions; for random, the first draw's), so a plan can
    be acted on. Warnings also flag a fit whose slopes are negative (it predicts lower reward for more diverse
    prompts) and options with fewer prompts than :data:`MIN_PROMPTS` or than the fit's smallest subset.
    """
    prompts = list(prompts)
    if not prompts:
        raise DataError("the prompt pool is empty")
    ids = [str(i) for i in range(len(prompts))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(prompts):
        raise ValueError(f"{len(ids)} ids for {len(prompts)} prompts")
    if selector not in SELECTOR_NAMES:
        raise ValueError(f"unknown selector {selector!r}; choose one of {list(SELECTOR_NAMES)}")
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    counts = prompt_counts(budget, lengths, len(prompts))
    for n in counts:
        fit.line(n)                                            # every n needs a line
    warnings = list(warnings)
    if fit.tokenizer is None and not is_llama1_tokenizer(tokenizer_name, tokenizer):
        measured = ""
        if tokenizer_name == DiversityConfig().tokenizer:
            lo, hi = SMOLLM2_OVER_LLAMA1_D
            measured = (f" (measured on HH-RLHF prompts: {lo:.2f}-{hi:.2f} x the paper's LLaMA-1 d at 1,500-6,000 "
                        "prompts, so every d here reads further right on the paper's lines than it would in LLaMA-1 "
                        "tokens)")
        warnings.append(f"TOKENIZER MISMATCH: the paper's d is in LLaMA-1 tokens; this d is in {tokenizer_name} "
                        f"tokens, so it is on a different scale{measured} and the paper's lines are applied outside "
                        "their units")
    warnings += slope_warnings(fit, sorted(counts))
    div = SubsetDiversity(prompts, tokenizer, fit.diversity)
    kmax = max(counts.values())
    seeds = [seed + i for i in range(draws)] if selector == "random" else [seed]
    orders = [selection_order(prompts, kmax, selector, s, div, selector_ctx, progress) for s in seeds]
    div.prefetch(orders)
    options = []
    for n, k in counts.items():
        ds = [div.d(order[:k]) for order in orders]
        res = ds[0]
        pred = fit.predict(n, res.d, alpha).iloc[0]
        lo, hi = fit.d_range(n)
        values = np.array([r.d for r in ds])
        opt = {"n": n, "n_prompts": k, "annotations": n * k, "d": res.d, "r_unique": res.r_unique,
               "predicted": float(pred["mean"]), "pi_lo": float(pred["obs_ci_lower"]),
               "pi_hi": float(pred["obs_ci_upper"]), "line_ci_lo": float(pred["mean_ci_lower"]),
               "line_ci_hi": float(pred["mean_ci_upper"]), "fit_d_min": lo, "fit_d_max": hi,
               "extrapolated": not lo <= res.d <= hi, "prompt_ids": [ids[i] for i in orders[0][:k]]}
        if selector == "random":
            opt |= {"draws": draws, "d_mean": float(values.mean()),
                    "d_sd": float(values.std(ddof=1)) if draws > 1 else None,
                    "d_min": float(values.min()), "d_max": float(values.max())}
        options.append(opt)
        if opt["extrapolated"]:
            side = "below" if res.d < lo else "above"
            warnings.append(f"n={n}: the subset's d = {res.d:.2f} lies {side} the range the fit saw "
                            f"(d {lo:.2f}–{hi:.2f}); its prediction is an extrapolation of a straight line")
    for n in counts:
        res = fit.line(n)
        if res.pvalues[1] > alpha:
            warnings.append(f"n={n}: the fit's line has slope {res.params[1]:+.3g} per unit d (p = {res.pvalues[1]:.2f}, "
                            f"R² = {res.rsquared:.2f}): reward is not clearly linear in d there, so the prediction "
                            "rests mostly on the line's mean level")
    best = max(options, key=lambda o: o["predicted"])
    warnings += few_prompts_warnings(fit, options, best)
    for o in options:
        if o is not best and o["pi_lo"] <= best["predicted"] <= o["pi_hi"]:
            warnings.append(f"n={best['n']} is predicted best, but its prediction lies inside the 95% prediction "
                            f"interval of n={o['n']} ({_fmt(o['pi_lo'])}–{_fmt(o['pi_hi'])}): a single training run "
                            "may well come out the other way")
    return {"budget": int(budget), "selector": selector, "seed": seed, "pool_size": len(prompts),
            "tokenizer": tokenizer_name, "fit": fit.describe(), "confidence": 1 - alpha, "options": options,
            "recommended": best["n"], "warnings": warnings}


def crossover_table(prompts: Sequence[str], fit: RewardFit, tokenizer, budgets: Sequence[int],
                    lengths: Sequence[int] = (2, 3, 4), seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Predicted reward and its prediction interval per (budget, n) for a random selector (one seeded, nested
    draw: the prompts at a smaller budget are a prefix of those at a larger one). Columns: budget, ranking_len,
    n_prompts, d, predicted, pi_lo, pi_hi, extrapolated, recommended (the best n at that budget)."""
    budgets = sorted({int(b) for b in budgets})
    if not budgets:
        raise ValueError("no budgets")
    prompt_counts(budgets[-1], lengths, len(prompts))          # the largest must fit the pool
    div = SubsetDiversity(prompts, tokenizer, fit.diversity)
    order = selection_order(prompts, budgets[-1] // min(lengths), "random", seed, div)
    div.prefetch([order])
    rows = []
    for b in budgets:
        for n, k in prompt_counts(b, lengths, len(prompts)).items():
            d = div.d(order[:k]).d
            p = fit.predict(n, d, alpha).iloc[0]
            lo, hi = fit.d_range(n)
            rows.append({"budget": b, "ranking_len": n, "n_prompts": k, "d": d, "predicted": float(p["mean"]),
                         "pi_lo": float(p["obs_ci_lower"]), "pi_hi": float(p["obs_ci_upper"]),
                         "extrapolated": not lo <= d <= hi})
    table = pd.DataFrame(rows)
    best = table.loc[table.groupby("budget")["predicted"].idxmax(), ["budget", "ranking_len"]]
    return table.merge(best.rename(columns={"ranking_len": "recommended"}), on="budget")


def crossovers(table: pd.DataFrame) -> list[dict]:
    """The budgets at which the recommended n changes: {budget (first budget with the new n), previous_budget,
    from_n, to_n}."""
    rec = table.drop_duplicates("budget").sort_values("budget")[["budget", "recommended"]].to_numpy()
    return [{"budget": int(b1), "previous_budget": int(b0), "from_n": int(n0), "to_n": int(n1)}
            for (b0, n0), (b1, n1) in itertools.pairwise(rec) if n0 != n1]


def default_budgets(pool_size: int, lengths: Sequence[int] = (2, 3, 4), count: int = 24,
                    smallest: int | None = None) -> list[int]:
    """``count`` budgets from ``smallest`` (default: 12 prompts at the longest n) to the largest the pool fills."""
    top = pool_size * min(lengths)
    low = smallest or 12 * max(lengths)
    if low > top:
        raise ValueError(f"a pool of {pool_size} prompts is too small for a budget range")
    return sorted(set(np.linspace(low, top, count).round().astype(int).tolist()))


# ------------------------------------------------------------------------------------------ output and CLI


def format_plan(p: dict) -> str:
    fit = p["fit"]
    pct = f"{p['confidence']:.0%}"
    lines = [(f"budget {p['budget']:,} annotations (one annotation = one ranked response); pool {p['pool_size']:,} "
             f"prompts; selector {p['selector']} (seed {p['seed']})"),
             (f"fit: {fit['source']} ({fit['algo']}, {fit['y']} ×100, one OLS line per n on {fit['points']}); "
             f"d in {p['tokenizer']} tokens (the fit's: {fit['tokenizer']})"), "",
             (f"{'n':>3} {'prompts':>8} {'d':>7} {'d range (draws)':>16} {'predicted':>10} {pct + ' PI':>16} "
             f"{'fit saw d':>13}")]
    for o in p["options"]:
        spread = f"{o['d_min']:.2f}–{o['d_max']:.2f}" if "d_min" in o else "-"
        lines.append(f"{o['n']:>3} {o['n_prompts']:>8,} {o['d']:>7.2f} {spread:>16} {o['predicted']:>10.2f} "
                     f"{_fmt(o['pi_lo']) + '–' + _fmt(o['pi_hi']):>16} "
                     f"{_fmt(o['fit_d_min']) + '–' + _fmt(o['fit_d_max']):>13}{'  (extrapolated)' if o['extrapolated'] else ''}")
    best = next(o for o in p["options"] if o["n"] == p["recommended"])
    lines += ["", (f"recommended: n = {p['recommended']} ({best['n_prompts']:,} prompts × {p['recommended']} responses), "
                  f"predicted {best['predicted']:.2f} ({pct} PI {_fmt(best['pi_lo'])}–{_fmt(best['pi_hi'])})")]
    lines.append("(--json lists the prompts of each option: prompt_ids)")
    lines += [f"warning: {w}" for w in p["warnings"]]
    return "\n".join(lines)


def command(args) -> int:
    from divscale.models.hub import load_tokenizer

    if args.selector not in SELECTOR_NAMES:            # before any file is read or model loaded
        raise ValueError(f"unknown selector {args.selector!r}; choose one of {list(SELECTOR_NAMES)}")
    fit = load_fit(args.fit, args.algo, args.y, args.recipe)
    for n in args.lengths:
        fit.line(n)
    pool = load_pool(args.prompts, args.field, args.split)
    prompt_counts(args.budget, args.lengths, len(pool))
    name, warnings = resolve_tokenizer(fit, args.tokenizer, args.allow_tokenizer_mismatch)
    tokenizer = load_tokenizer(name)
    result = plan(pool.prompts, args.budget, fit, tokenizer, args.lengths, args.selector, args.seed, args.draws,
                  tokenizer_name=name, warnings=warnings, ids=pool.ids, progress=True)
    result |= {"prompts": args.prompts, "prompts_format": pool.format}
    if args.json:
        print(json.dumps(result, indent=1, allow_nan=False, ensure_ascii=False, default=_json_default))
    else:
        print(format_plan(result))
    return 0


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(type(x))
