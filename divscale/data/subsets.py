"""The paper's training grid: sub-rankings, nested subsets and equal annotation budgets (spec §2.2-2.4).

Rules of the official code (F2-Song/ScalingAlignment ``data_preprocess/split.py`` and ``sample.py``):

- **Sub-rankings.** From each 4-ranking (2 human + 2 LLM responses, ordered by RM_train) pick 3 of
  the 4 responses at random and re-sort them by the stored reward; from each 3-ranking pick 2 of its
  3 and re-sort. One random generator seeded 42 serves all prompts, 4->3 first, then 3->2. So the
  prompts are the same, in the same order, at every length, and the 2-ranking is *not* the human pair.
- **Nested subsets.** Shuffle each length's list once with seed 42 (the lists have the same length,
  so the permutation is the same for every n) and keep the first k for every size k. Subsets are
  nested (1500 ⊂ 2000 ⊂ ...) and a size has the same prompts at every ranking length, which is why
  the diversity d depends on the size only.
- **Budget.** One annotation = one response placed in a ranking, so a cell costs prompts × n and
  an equal budget B gives the cells (2, B/2), (3, B/3), (4, B/4).
"""
from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from divscale.data.hh import Ranking, load_rankings, save_rankings
from divscale.io import atomic_path, atomic_write_json
from divscale.provenance import file_sha256

PAPER_LENGTHS = (2, 3, 4)

T = TypeVar("T")


def _subsample(ranking: Ranking, k: int, rng: random.Random) -> Ranking:
    """k of the ranking's responses picked at random, re-sorted by stored reward (best first; the sort
    is stable, like numpy's argsort on these short arrays, so equal rewards keep the drawn order)."""
    picked = rng.sample(range(ranking.n), k)
    picked = sorted(picked, key=lambda i: -ranking.rewards[i])
    origin = ranking.meta.get("from_len4", list(range(ranking.n)))
    meta = {**ranking.meta, "from_len4": [origin[i] for i in picked]}
    return Ranking(id=ranking.id, prompt=ranking.prompt, responses=[ranking.responses[i] for i in picked],
                   rewards=[ranking.rewards[i] for i in picked], sources=[ranking.sources[i] for i in picked],
                   subset=ranking.subset, meta=meta)


def sub_rankings(rankings4: Sequence[Ranking], seed: int = 42) -> dict[int, list[Ranking]]:
    """``{4: rankings4, 3: [...], 2: [...]}`` by the official rule (module docstring).

    Every input must be a 4-ranking with rewards, best first. Each shorter ranking records in
    ``meta["from_len4"]`` the positions of its responses in the 4-ranking.
    """
    for r in rankings4:
        if r.n != 4:
            raise ValueError(f"ranking {r.id!r} has {r.n} responses; sub-rankings are drawn from 4-rankings "
                             "(2 human + 2 generated, ordered by RM_train: see divscale.reward.rankings)")
        if any(x is None for x in r.rewards):
            raise ValueError(f"ranking {r.id!r} has no reward for some response ({r.rewards}); score it with "
                             "RM_train first (divscale.reward.rankings)")
        if any(a < b for a, b in zip(r.rewards, r.rewards[1:])):
            raise ValueError(f"ranking {r.id!r} is not sorted by reward, best first: {r.rewards}")
    rng = random.Random(seed)
    len3 = [_subsample(r, 3, rng) for r in rankings4]
    len2 = [_subsample(r, 2, rng) for r in len3]
    return {4: list(rankings4), 3: len3, 2: len2}


def sub_rankings_by_prompt(rankings4: Sequence[Ranking], seed: int = 42) -> dict[int, list[Ranking]]:
    """:func:`sub_rankings` with one generator per prompt, seeded by ``(seed, id)``: a prompt's 3- and
    2-ranking do not depend on which other prompts are in the list or where. For sets assembled outside
    the grid (augmentation, selection), whose lists differ in length; the grid keeps the official stream."""
    out: dict[int, list[Ranking]] = {4: list(rankings4), 3: [], 2: []}
    for r in rankings4:
        one = sub_rankings([r], seed=f"{seed}:{r.id}")       # random.Random hashes a str seed (sha512)
        out[3].append(one[3][0])
        out[2].append(one[2][0])
    return out


def nested_subsets(items: Sequence[T], sizes: Sequence[int], seed: int = 42) -> dict[int, list[T]]:
    """``{k: first k of one seeded shuffle}`` for every size k: nested, deterministic."""
    for k in sizes:
        if not isinstance(k, int) or k <= 0:
            raise ValueError(f"subset sizes must be positive integers, got {k!r}")
    too_big = [k for k in sizes if k > len(items)]
    if too_big:
        raise ValueError(f"subset size(s) {too_big} exceed the {len(items)} items available "
                         f"(largest possible size: {len(items)})")
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    return {k: shuffled[:k] for k in sizes}


def build_grid(rankings4: Sequence[Ranking], sizes: Sequence[int], lengths: Sequence[int] = PAPER_LENGTHS,
               seed: int = 42) -> dict[tuple[int, int], list[Ranking]]:
    """``{(n, k): rankings}`` for every ranking length n and size k: the same permutation for every n,
    so a size has the same prompts at every length and smaller subsets are inside larger ones."""
    bad = [n for n in lengths if n not in PAPER_LENGTHS]
    if bad:
        raise ValueError(f"ranking lengths must be among {PAPER_LENGTHS}, got {bad}")
    nested_subsets(rankings4, sizes)                       # size errors before any work
    by_length = sub_rankings(rankings4, seed)
    grid = {}
    for n in sorted(set(lengths)):
        for k, subset in nested_subsets(by_length[n], sizes, seed).items():
            grid[(n, k)] = subset
    return dict(sorted(grid.items()))


@dataclass(frozen=True)
class Cell:
    """One equal-budget cell: ranking length n, number of prompts, cost in annotations (prompts × n)."""
    n: int
    prompts: int
    cost: int


def equal_budget_cells(budget: int, lengths: Sequence[int] = PAPER_LENGTHS,
                       pool_size: int | None = None) -> list[Cell]:
    """The cells that spend ``budget`` annotations at each ranking length: prompts = budget / n.

    E.g. 48000 -> (2, 24000), (3, 16000), (4, 12000) and 6000 -> (2, 3000), (3, 2000), (4, 1500)
    (Table 1 of the paper).
    """
    if not isinstance(budget, int) or budget <= 0:
        raise ValueError(f"budget must be a positive integer number of annotations, got {budget!r}")
    lengths = sorted(set(lengths))
    step = math.lcm(*lengths)
    indivisible = [n for n in lengths if budget % n]
    if indivisible:
        lower, upper = budget // step * step, (budget // step + 1) * step
        nearest = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(f"budget {budget} is not divisible by n={indivisible}: a cell costs prompts × n, so an "
                         f"equal budget over n={lengths} must be a multiple of {step} (e.g. {nearest})")
    cells = [Cell(n=n, prompts=budget // n, cost=budget) for n in lengths]
    if pool_size is not None:
        for cell in cells:
            if cell.prompts > pool_size:
                largest = pool_size * lengths[0] // step * step
                raise ValueError(f"budget {budget} needs {cell.prompts} prompts at n={cell.n} but the pool has "
                                 f"{pool_size}; largest realisable budget is {largest}")
    return cells


def cell_file(n: int, k: int) -> str:
    return f"len{n}_{k}.jsonl"


def write_grid(grid: dict[tuple[int, int], list[Ranking]], out_dir: str | os.PathLike,
               seed: int | None = None, meta: dict | None = None) -> Path:
    """Write one rankings JSONL per cell (``len{n}_{k}.jsonl``) plus ``manifest.json`` (sizes, lengths,
    seed, counts, sha256 of each file). The folder is replaced atomically; same grid, same bytes."""
    out_dir = Path(out_dir)
    cells = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for (n, k), rankings in sorted(grid.items()):
            path = save_rankings(tmp / cell_file(n, k), rankings)
            cells[cell_file(n, k)] = {"n": n, "k": k, "count": len(rankings), "sha256": file_sha256(path)}
        manifest = {"sizes": sorted({k for _, k in grid}), "lengths": sorted({n for n, _ in grid}),
                    "seed": seed, "cells": cells, **(meta or {})}
        atomic_write_json(tmp / "manifest.json", manifest)
    return out_dir


# --------------------------------------------------------------------------------------------- CLI

def data_command(args) -> int:
    """``divscale data ACTION`` (parser: :mod:`divscale.cli`): the ``grid`` action writes
    the nested subsets of a 4-ranking file (``len{n}_{k}.jsonl`` + manifest); the other actions are
    :func:`divscale.data.hh.command`'s. The grid is built here, above the data, so data never imports grid."""
    from divscale import paths
    from divscale.config import load_recipe, parse_overrides
    from divscale.data import hh as data
    from divscale.provenance import config_hash

    if args.data_command != "grid":
        return data.command(args)
    cfg = load_recipe(args.recipe, parse_overrides(args.set)).data
    out = Path(args.out) if args.out else paths.RUNS_DIR / "data" / ("grid-" + config_hash(
        cfg.sizes, cfg.ranking_lengths, cfg.grid_seed, file_sha256(args.rankings)))
    grid = build_grid(load_rankings(args.rankings), cfg.sizes, cfg.ranking_lengths, cfg.grid_seed)
    print(write_grid(grid, out, seed=cfg.grid_seed, meta={"rankings": str(args.rankings)}))
    return 0
