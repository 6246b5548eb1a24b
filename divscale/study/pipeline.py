"""The wiring from a recipe to results: what the notebooks and ``divscale grid`` call.

Each function is one step of the study for one recipe; the heavy steps are cached on disk by the
module that does the work (splits, reward models, generations, runs), and memoised here for the
life of the process so a notebook can call them freely::

    R = load("cpu")
    splits(R)                 pool / dev / test (divscale.data.hh.load_splits)
    reward_models(R)          RM_train, RM_test (divscale.reward.rm.build_reward_models)
    grid_pool(R)              the pool prompts the grid uses: the first max(sizes) of the seeded shuffle
    rankings4(R)              those pairs extended to 4-rankings ordered by RM_train (divscale.reward.rankings)
    grid(R)                   {(n, k): rankings}: nested subsets, same prompts for every n (divscale.data.subsets)
    run_cell(R, algo, n, k, seed)   train -> best checkpoint -> RM_test on the test prompts -> one result row

Only the grid's prompts are extended with the generator (the official code extends the whole pool
and then shuffles; shuffling first and extending the prefix that the largest subset uses gives the
same subsets at a fraction of the generation cost).

On a GPU machine each step holds on the accelerator only the models it uses (:func:`keep_on_device`): the
generator and RM_train while ranking, RM_train while a cell trains in this process (nothing while it trains under
``accelerate launch``: the launched processes need the GPUs), RM_test while evaluating. The OpenAssistant RMs load
their weights at their first score (:class:`divscale.reward.rm.OpenAssistantRM`), so building them for their
fingerprints loads nothing.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from divscale import paths
from divscale.config import Recipe, load_recipe
from divscale.io import DataError, atomic_write_json
from divscale.provenance import config_hash

# --------------------------------------------------------------------------------------------- recipe

_MEMO: dict[tuple, Any] = {}


def load(recipe: str | Recipe, overrides: str | dict | None = None) -> Recipe:
    """A recipe by name/path (``overrides``: dotted keys, as a dict or a JSON string from papermill)."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(overrides, str):
        overrides = json.loads(overrides or "{}")
    return load_recipe(recipe, overrides or {})


def _memo(step: str, R: Recipe, build):
    key = (step, R.hash())
    if key not in _MEMO:
        _MEMO[key] = build()
    return _MEMO[key]


def figures_dir(R: Recipe) -> Path:
    path = paths.FIGURES_DIR / R.name
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir(R: Recipe) -> Path:
    return paths.RESULTS_DIR / R.name


# --------------------------------------------------------------------------------------------- data

def splits(R: Recipe) -> dict:
    """pool / dev / test. What the HH reader says about the files (records it cannot split into prompt + responses)
    is kept for :func:`data_notes` instead of going to stderr, where every notebook would repeat it."""
    from divscale.data.hh import load_splits

    def build():
        with _captured_log("divscale.data.hh") as notes:
            out = load_splits(R.data)
        _MEMO[("data_notes", R.hash())] = notes
        return out

    return _memo("splits", R, build)


def data_notes(R: Recipe) -> list[str]:
    """The HH reader's warnings while :func:`splits` read the files (01_data_construction prints them, once)."""
    splits(R)
    return list(_MEMO.get(("data_notes", R.hash()), []))


class _ListHandler(logging.Handler):
    def __init__(self, sink: list):
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(project_relative_text(record.getMessage()))


@contextlib.contextmanager
def _captured_log(name: str):
    """Warnings of logger ``name`` go to a list for the duration, not to the handlers above it."""
    logger, notes = logging.getLogger(name), []
    handler, propagate = _ListHandler(notes), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield notes
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def project_relative_text(text: str) -> str:
    """``text`` with the project root written as ``.`` (notes and tables hold no machine paths)."""
    return text.replace(str(paths.ROOT) + os.sep, "./").replace(str(paths.ROOT), ".")


def pool_pairs(R: Recipe) -> list:
    """The whole pool as 2-rankings in human order (what the reward models train on)."""
    from divscale.data.hh import rankings_from_pairs

    return _memo("pool_pairs", R, lambda: rankings_from_pairs(splits(R)["pool"]))


def reward_models(R: Recipe):
    """(RM_train, RM_test): different models, trained on disjoint halves of the pool's human pairs."""
    from divscale.reward.rm import build_reward_models

    return _memo("reward_models", R, lambda: build_reward_models(R, splits(R)["pool"]))


REWARD_ROLES = ("rm_train", "rm_test")


def keep_on_device(R: Recipe, *roles: str) -> None:
    """A stage boundary: of the recipe's reward models only ``roles`` (``"rm_train"``, ``"rm_test"``) keep their
    weights (an OpenAssistant RM drops the others' and reloads them at its next score; the in-project RMs live on the
    CPU), and the memory of every model dropped since (a generator, a trained policy) goes back to the accelerator.
    Builds nothing: RMs not built yet stay unbuilt."""
    from divscale.models.hub import free_device_memory

    unknown = set(roles) - set(REWARD_ROLES)
    if unknown:
        raise ValueError(f"keep_on_device: unknown role(s) {sorted(unknown)}; choose from {REWARD_ROLES}")
    built = _MEMO.get(("reward_models", R.hash()))
    for role, rm in zip(REWARD_ROLES, built or ()):
        if role not in roles and hasattr(rm, "release"):
            rm.release()
    free_device_memory()


def grid_pool(R: Recipe) -> list:
    """The pool pairs the grid draws on: the first max(sizes) prompts of the seeded shuffle."""
    from divscale.data.subsets import nested_subsets

    largest = max(R.data.sizes)
    pool = pool_pairs(R)
    if largest > len(pool):
        raise ValueError(f"recipe {R.name}: the largest subset size {largest} exceeds the pool "
                         f"({len(pool)} prompts); lower data.sizes or raise data.pool_size")
    return nested_subsets(pool, [largest], seed=R.data.grid_seed)[largest]


def rankings4(R: Recipe) -> list:
    """The grid prompts' 4-rankings: 2 human + k generated responses, ordered by RM_train."""
    from divscale.data.hh import load_rankings
    from divscale.reward.rankings import build_rankings

    def build():
        rm_train, _ = reward_models(R)
        keep_on_device(R, "rm_train")
        try:
            return load_rankings(build_rankings(R, pool=grid_pool(R), rm_train=rm_train, progress=True))
        finally:
            keep_on_device(R)                  # the generator and RM_train are done

    return _memo("rankings4", R, build)


def grid(R: Recipe, draw: int | None = None) -> dict:
    """{(n, k): rankings} of one data draw (default ``data.grid_seed``): which prompts form each nested size and
    which responses each n-ranking keeps."""
    from divscale.data.subsets import build_grid

    draw = R.data.grid_seed if draw is None else draw
    return _memo(("grid", draw), R, lambda: build_grid(rankings4(R), R.data.sizes, tuple(R.data.ranking_lengths),
                                                       seed=draw))


def cell_draw(R: Recipe, seed: int) -> int:
    """The data draw a grid cell with training seed ``seed`` trains on: the seed itself with
    ``data.redraw_per_seed`` (each replicate re-draws), else ``data.grid_seed``."""
    return int(seed) if R.data.redraw_per_seed else R.data.grid_seed


def grid_budget_table(cells: dict) -> pd.DataFrame:
    """One row per grid cell: ranking length, #prompts and annotation cost (#prompts × n)."""
    return pd.DataFrame([{"ranking_len": n, "n_prompts": k, "annotations": n * k}
                         for (n, k) in sorted(cells)])


def grid_is_nested(cells: dict) -> bool:
    """Subsets nested by size, and the same prompts for every ranking length at a size."""
    by_n: dict[int, list] = {}
    for (n, k) in sorted(cells):
        by_n.setdefault(n, []).append([r.prompt for r in cells[(n, k)]])
    nested = all(set(a) <= set(b) for subsets in by_n.values() for a, b in zip(subsets, subsets[1:]))
    same = len({tuple(tuple(s) for s in subsets) for subsets in by_n.values()}) == 1
    return nested and same


def human_order_kept(rankings: list) -> pd.Series:
    """Share of rankings in which RM_train keeps the human-chosen response above the human-rejected one."""
    kept = [r.sources.index("human-chosen") < r.sources.index("human-rejected") for r in rankings]
    return pd.Series({"rankings": len(kept), "human order kept": sum(kept) / len(kept)})


def dev_prompts(R: Recipe) -> list[str]:
    return list(splits(R)["dev"]["prompt"][:])


def test_prompts(R: Recipe) -> dict[str, list[str]]:
    from divscale.reward.evaluate import recipe_test_prompts

    return _memo("test_prompts", R, lambda: recipe_test_prompts(R, splits(R)))


# --------------------------------------------------------------------------------------------- diversity

def diversity_tokenizer(R: Recipe):
    """The tokenizer d is computed with (the paper: LLaMA's; offline: SmolLM2's byte-level BPE)."""
    from divscale.models.hub import load_tokenizer

    return _memo("div_tok", R, lambda: load_tokenizer(R.diversity.tokenizer))


def subset_prompts(R: Recipe) -> dict[int, list[str]]:
    """The prompts of each subset size (identical for every ranking length)."""
    n0 = min(R.data.ranking_lengths)
    return {k: [r.prompt for r in grid(R)[(n0, k)]] for k in sorted(R.data.sizes)}


def diversity_by_size(R: Recipe) -> pd.DataFrame:
    """d, r_unique and N-gram counts of every subset size (the paper's N and exponent)."""
    from divscale.metrics.diversity import prompt_diversity

    def build():
        tok, cfg = diversity_tokenizer(R), R.diversity
        rows = []
        for k, prompts in subset_prompts(R).items():
            res = prompt_diversity(prompts, tok, n=cfg.ngram, exponent=cfg.exponent, max_tokens=cfg.max_tokens)
            rows.append({"size": k, **res.to_dict()})
        return pd.DataFrame(rows)

    return _memo("div_by_size", R, build)


def diversity_sensitivity(R: Recipe, ns=(1, 2, 3, 4), exponents=(1 / 3, 1 / 2, 1.0)) -> pd.DataFrame:
    from divscale.metrics.diversity import diversity_grid

    return diversity_grid(subset_prompts(R), diversity_tokenizer(R), ns=ns, exponents=exponents)


def measure_sets(R: Recipe, sets: dict[str, list[str]]) -> pd.DataFrame:
    """d and every other diversity measure (embedding ones on the recipe's encoder) per labelled prompt set."""
    from divscale.metrics.diversity import diversity_table
    from divscale.models.hub import embed_texts

    embed = functools.partial(embed_texts, encoder=R.select.embedder)
    table = diversity_table(sets, diversity_tokenizer(R), embed=embed)
    if "label" not in table.columns:
        table = table.reset_index().rename(columns={"index": "label"})
    return table


def diversity_measures(R: Recipe) -> pd.DataFrame:
    """The paper's d beside other diversity measures, one row per subset size."""
    return measure_sets(R, {f"k={k}": prompts for k, prompts in subset_prompts(R).items()})


def measures_across_random_subsets(R: Recipe, draws: int = 100, size: int | None = None,
                                   seed: int = 0) -> pd.DataFrame:
    """Every diversity measure on ``draws`` seeded random subsets of ``size`` prompts (default: the
    smallest grid size) drawn from the grid's largest subset, one row per draw. At one size the measures
    co-vary only through *which* prompts are in a set, so their correlation with d says whether they
    agree on diversity; across the grid's sizes any measure monotone in |X| correlates ±1 with d."""
    import numpy as np

    from divscale.metrics.diversity import diversity_table
    from divscale.models.hub import embed_texts

    prompts = subset_prompts(R)[max(R.data.sizes)]
    size = size or min(R.data.sizes)
    if not 1 < size < len(prompts):
        raise ValueError(f"subset size must be in (1, {len(prompts)}), got {size}")
    rng = np.random.default_rng(seed)
    sets = {f"draw {i}": [prompts[j] for j in rng.choice(len(prompts), size=size, replace=False)]
            for i in range(draws)}
    vectors = dict(zip(prompts, embed_texts(prompts, R.select.embedder)))

    def embed(texts):                                                    # each prompt embedded once
        return np.stack([vectors[t] for t in texts])
    return diversity_table(sets, diversity_tokenizer(R), embed=embed, n=R.diversity.ngram,
                           exponent=R.diversity.exponent, max_tokens=R.diversity.max_tokens)


# --------------------------------------------------------------------------------------------- runs

def policy_texts(R: Recipe) -> list[str]:
    from divscale.train.runs import policy_texts as texts_of

    def build():
        pool = splits(R)["pool"]               # a datasets.Dataset: read its two columns in one Arrow conversion
        return texts_of(pool.select_columns(["prompt", "chosen"]).to_dict() if hasattr(pool, "select_columns") else pool)

    return _memo("policy_texts", R, build)


def train_cell(R: Recipe, algo: str, ranking_len: int, n_prompts: int, seed: int,
               rankings=None, runs_dir: str | Path | None = None, progress: bool = False) -> Path:
    """Train one cell (or another list of rankings, e.g. an augmented or selected subset).

    A recipe whose cells train on several processes (``train.num_processes > 1`` or an accelerate config: the
    paper recipes) launches the grid cell's training as ``accelerate launch ... -m divscale.cli train`` on all of
    them and waits for it (:func:`divscale.train.runs.launch_cell`); inside a launched process (``LOCAL_RANK`` set)
    it trains here. Other rankings than the grid's cannot be handed to a launched command: they train in this
    process, on one device."""
    from divscale.models.tiny_gpt import load_policy
    from divscale.train.runs import launch_cell, launches, train_run

    if R.train.checkpoint not in CHECKPOINT_RULES:
        raise ValueError(f"recipe {R.name}: train.checkpoint={R.train.checkpoint!r}; choose one of "
                         f"{CHECKPOINT_RULES} (best-dev: the paper's best-on-dev rule; last: the last step)")
    if launches(R) and rankings is None and "LOCAL_RANK" not in os.environ:
        keep_on_device(R)                    # the launched processes need every GPU: this one holds nothing
        return launch_cell(R, algo, ranking_len, n_prompts, seed, runs_dir=runs_dir or paths.RUNS_DIR,
                           progress=progress)
    texts = policy_texts(R)
    policy_id = policy_fingerprint(R)        # a content hash of the initial weights, not of their inputs
    rm_train, _ = reward_models(R)
    cell = rankings if rankings is not None else grid(R, cell_draw(R, seed))
    dev = R.train.checkpoint == "best-dev"   # "last": no dev validation, the last step is kept
    keep_on_device(R, "rm_train")            # loaded at the first dev validation, by the main process only
    return train_run(R, algo, ranking_len, n_prompts, seed, grid=cell,
                     policy=lambda: load_policy(R.policy, texts, progress=progress), policy_id=policy_id,
                     rm_train=rm_train if dev else None, dev_prompts=dev_prompts(R) if dev else None,
                     runs_dir=runs_dir or paths.RUNS_DIR, progress=progress)


CHECKPOINT_RULES = ("best-dev", "last")


def train_command(args) -> int:
    """``divscale train`` (parser: ``divscale.cli._train_parser``): one cell of a recipe's grid with its real splits,
    RM_train and policy (prints the run directory), or, with ``--data``, anyone's ranked data
    (:func:`divscale.train.own_data.command`). Under ``accelerate launch`` the main process builds the shared caches
    (splits, RMs, grid) first. A flag that does not apply to the chosen form is an error."""
    from divscale.config import parse_overrides

    if getattr(args, "data", None):                  # your own ranked data, outside the grid
        from divscale.train.own_data import command as own_data_command

        return own_data_command(args)
    from divscale.train.runs import world_size

    data_only = sorted((getattr(args, "_given", None) or {}).values())
    if data_only:
        raise ValueError(f"{data_only[0]} applies to --data runs only; for a grid cell set recipe values with "
                         "--set train.<key>=<value>")
    missing = [f"--{k.replace('_', '-')}" for k in ("recipe", "algo", "ranking_len", "prompts", "seed")
               if getattr(args, k) is None]
    if missing:
        raise ValueError(f"a grid cell needs {' '.join(missing)} (or train on your own ranked data with --data FILE)")
    R = load_recipe(args.recipe, parse_overrides(args.set))
    if world_size() > 1:
        from accelerate import PartialState

        with PartialState().main_process_first():
            grid(R, cell_draw(R, args.seed))
    run = train_cell(R, args.algo, args.ranking_len, args.prompts, args.seed, runs_dir=args.runs_dir,
                     progress=args.progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(run)
    return 0


def policy_fingerprint(R: Recipe) -> str:
    """The initial policy's identity for run keys: the content hash of the warmed-up tiny GPT's weights
    (built and cached on first use), or the hub id of a hub policy."""
    def build():
        if R.policy.model != "tiny-gpt":
            return f"hub:{R.policy.model}"
        from divscale.models.tiny_gpt import load_policy, policy_cache_path
        from divscale.train.runs import tiny_gpt_policy_id

        texts = policy_texts(R)
        if not (policy_cache_path(R.policy, texts) / "model.safetensors").exists():
            load_policy(R.policy, texts)
        return tiny_gpt_policy_id(R.policy, texts)

    return _memo("policy_fingerprint", R, build)


def eval_key(R: Recipe) -> str:
    """``eval-<hash>``: the evaluation's settings, RM_test's fingerprint and the evaluation code's version."""
    from divscale.provenance import code_version
    from divscale.reward.evaluate import EVAL_VERSION

    _, rm_test = reward_models(R)
    return "eval-" + config_hash(R.eval.__dict__, R.reward.test_model, getattr(rm_test, "fingerprint", None),
                                 R.data.__dict__, EVAL_VERSION, code_version("eval"), length=10)


def table_keys(R: Recipe) -> dict:
    """What every row of a results table must share (divscale.provenance.KEY_COLUMNS): the recipe sections
    a run reads, RM_train / RM_test fingerprints, the initial policy's weights, the grid's rankings, the code
    versions of training and evaluation and the evaluation key."""
    from divscale.provenance import code_version, sha256_json
    from divscale.train.runs import ranking_record

    def build():
        rm_train, rm_test = reward_models(R)
        return {"key_recipe": recipe_key(R),
                "key_rm_train": getattr(rm_train, "fingerprint", None) or type(rm_train).__name__,
                "key_rm_test": getattr(rm_test, "fingerprint", None) or type(rm_test).__name__,
                "key_policy": policy_fingerprint(R),
                "key_rankings": sha256_json([ranking_record(r) for r in rankings4(R)])[:16],
                "key_code_train": code_version("train"), "key_code_eval": code_version("eval"),
                "eval_key": eval_key(R)}

    return _memo("table_keys", R, build)


# The recipe sections a run's row depends on (not the grid's enumeration, nor augmentation / selection).
RUN_SECTIONS = ("data", "ranking", "reward", "policy", "train", "eval", "diversity")


def recipe_key(R: Recipe) -> str:
    """``key_recipe``: the hash of the recipe sections a run reads (:data:`RUN_SECTIONS`)."""
    return config_hash({k: v for k, v in R.to_dict().items() if k in RUN_SECTIONS}, length=12)


def evaluate_run(R: Recipe, run_dir: Path, progress: bool = False) -> dict:
    """RM_test on the test prompts for a run's best checkpoint; cached in ``run_dir/eval-<hash>/``
    (:func:`eval_key`), with ``timing.json`` (seconds, finish time) beside ``eval.json``."""
    from divscale.io import atomic_write_json as write_json
    from divscale.provenance import deterministic
    from divscale.reward.evaluate import evaluate_checkpoint

    _, rm_test = reward_models(R)
    out = Path(run_dir) / eval_key(R)
    if not (out / "eval.json").exists():
        keep_on_device(R, "rm_test")         # kept for the next evaluation; dropped when a training starts
        start = time.time()
        with deterministic(1):
            evaluate_checkpoint(Path(run_dir) / "best", R, test_prompts(R), rm_test, out, progress=progress)
        keep_on_device(R, "rm_test")         # the evaluated policy's memory back
        write_json(out / "timing.json", {"seconds": round(time.time() - start, 2),
                                         "finished": _now()})
    timing = json.loads((out / "timing.json").read_text()) if (out / "timing.json").exists() else {}
    finished = timing.get("finished") or _stamp((out / "eval.json").stat().st_mtime)
    return json.loads((out / "eval.json").read_text()) | {"eval_dir": str(out), "eval_key": out.name,
                                                          "seconds": timing.get("seconds", math.nan),
                                                          "finished": finished}


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")


def _now() -> str:
    """A finish time (UTC, milliseconds, so two runs finishing in one second still differ)."""
    return _stamp(time.time())


def result_row(R: Recipe, algo: str, ranking_len: int, n_prompts: int, seed: int, run_dir: Path,
               evaluation: dict, prompts: list[str] | None = None, **extra) -> dict:
    """One tidy row of the results table (divscale.report.analysis.RESULT_COLUMNS) for a finished run."""
    from divscale.metrics.diversity import prompt_diversity

    if prompts is None:
        div = diversity_by_size(R).set_index("size").loc[n_prompts].to_dict()
    else:
        cfg = R.diversity
        div = prompt_diversity(prompts, diversity_tokenizer(R), n=cfg.ngram, exponent=cfg.exponent,
                               max_tokens=cfg.max_tokens).to_dict()
    run = json.loads((Path(run_dir) / "result.json").read_text())
    reward, ci = evaluation["reward"], evaluation["ci"]
    row = {"run_id": Path(run_dir).name, "recipe": R.name, "algo": algo, "ranking_len": ranking_len,
           "n_prompts": n_prompts, "seed": seed, "budget": n_prompts * ranking_len,
           "d": div["d"], "r_unique": div["r_unique"],
           "reward_global": reward["Global"], "reward_global_lo": ci["Global"][0], "reward_global_hi": ci["Global"][1],
           **{f"reward_{col}": reward.get(name, math.nan) for name, col in paths.HH_SUBSETS.items()},
           "dev_reward_best": run.get("best_dev_reward", math.nan), "best_step": run.get("best_step", math.nan),
           "steps": run.get("steps", R.train.max_steps), "train_seconds": run.get("train_runtime_s", math.nan),
           "sft_weight": R.train.sft_weight, "checkpoint": run.get("selection", "dev"),
           **answer_profile(evaluation.get("eval_dir")),
           # PRO's loss balance (NaN for SFT): the ranking term's share of the two terms' gradient norms
           "grad_share_rank": (run.get("loss_balance") or {}).get("mean_grad_share_rank", math.nan),
           "eval_seconds": evaluation.get("seconds", math.nan), "status": "ok",
           # when the run finished (its evaluation's finish time, recorded then: a re-built table keeps it)
           "created": evaluation.get("finished") or _now(),
           "run_dir": paths.project_relative(run_dir),
           "eval_dir": paths.project_relative(evaluation.get("eval_dir", ""))}
    return row | table_keys(R) | {"eval_key": evaluation.get("eval_key") or Path(evaluation.get("eval_dir", "")).name} \
        | extra


SHORT_ANSWER_CHARS = 10    # "very short": e.g. "I’s." -- the tiny policy's terse mode, which RM_test scores high


def answer_profile(eval_dir: str | Path | None) -> dict:
    """Mean answer length (characters) and the share of answers of at most :data:`SHORT_ANSWER_CHARS`
    characters in an evaluation's ``generations.jsonl`` (NaN without one): the run-level trait that the
    run-to-run spread of the reward follows (05)."""
    path = Path(eval_dir) / "generations.jsonl" if eval_dir else None
    if path is None or not path.exists():
        return {"answer_chars_mean": math.nan, "short_answer_share": math.nan}
    lengths = [len(json.loads(line)["response"]) for line in path.read_text().splitlines() if line.strip()]
    if not lengths:
        return {"answer_chars_mean": math.nan, "short_answer_share": math.nan}
    return {"answer_chars_mean": sum(lengths) / len(lengths),
            "short_answer_share": sum(n <= SHORT_ANSWER_CHARS for n in lengths) / len(lengths)}


def run_cell(R: Recipe, algo: str, ranking_len: int, n_prompts: int, seed: int, progress: bool = False) -> dict:
    """Train, pick the best checkpoint on dev, evaluate on test; returns the cell's result row."""
    start = time.time()
    run_dir = train_cell(R, algo, ranking_len, n_prompts, seed, progress=progress)
    evaluation = evaluate_run(R, run_dir, progress=progress)
    draw = cell_draw(R, seed)
    prompts = None if draw == R.data.grid_seed else [r.prompt for r in grid(R, draw)[(ranking_len, n_prompts)]]
    return result_row(R, algo, ranking_len, n_prompts, seed, run_dir, evaluation, prompts=prompts, draw=draw,
                      cell_seconds=round(time.time() - start, 1))


def write_result(row: dict, result_path: str | None) -> None:
    """The last step of ``04_finetune``: the row's file marks the grid cell complete (atomic write)."""
    if result_path:
        atomic_write_json(result_path, row)


def training_curve(run_dir: str | Path) -> pd.DataFrame:
    """Loss and dev reward per step from a run's ``metrics.jsonl``."""
    lines = (paths.project_path(run_dir) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line]
    return pd.DataFrame(records).groupby("step", as_index=False).first()


def run_loss_balance(row: dict) -> pd.Series:
    """One run's PRO loss balance (``result.json``'s ``loss_balance``: mean ranking and weighted SFT terms,
    each one's gradient norm and share) beside its β; empty for SFT runs."""
    run = json.loads((paths.project_path(row["run_dir"]) / "result.json").read_text())
    balance = run.get("loss_balance") or {}
    return pd.Series({"algo": row["algo"], "ranking_len": row["ranking_len"],
                      "sft_weight": row.get("sft_weight")} | balance, dtype=object)


def generations(row: dict) -> pd.DataFrame:
    """The test generations and RM_test scores of a run (its result row's ``eval_dir``)."""
    return pd.read_json(paths.project_path(row["eval_dir"]) / "generations.jsonl", lines=True)


# --------------------------------------------------------------------------------------------- results

def results(R: Recipe) -> pd.DataFrame:
    """The recipe's results table (``results/<recipe>/runs.csv``, built by ``divscale grid``)."""
    from divscale.report.analysis import load_results

    path = results_dir(R) / "runs.csv"
    if not path.exists():
        raise DataError(f"{path}: no results yet; run `divscale grid --recipe {R.name}` "
                        f"(or `make results RECIPE={R.name}`) first")
    df = load_results(path)
    check_keys(df, path, f"run `divscale grid --recipe {R.name}`: it redoes the stale cells")
    return df[df["status"] == "ok"]


def check_keys(df: pd.DataFrame, source, fix: str) -> None:
    """Refuse a results table whose rows were made from different inputs (divscale.provenance.KEY_COLUMNS;
    a table without them is checked on the evaluation folder named in ``eval_dir``)."""
    from divscale.provenance import KEY_COLUMNS, check_table_keys

    rows = df.to_dict("records")
    if "eval_key" not in df.columns and "eval_dir" in df.columns:
        rows = [r | {"eval_key": Path(str(r["eval_dir"])).name} for r in rows]
    check_table_keys(rows, str(source), columns=[c for c in KEY_COLUMNS if rows and c in rows[0]], fix=fix)


def loss_balance(df: pd.DataFrame) -> pd.DataFrame:
    """PRO's two loss terms per run: the ranking term and the β·SFT term, and each one's share of the
    gradient norm (``divscale.train.trainer.LossBalanceCallback`` measures them every ``loss_balance_steps``
    steps into the run's ``result.json``), one row per PRO run of ``df`` (a results table), SFT runs left out."""
    rows = []
    for row in df[df["algo"] == "pro"].itertuples():
        run = json.loads((paths.project_path(row.run_dir) / "result.json").read_text())
        balance = run.get("loss_balance") or {}
        if balance:
            rows.append({"ranking_len": row.ranking_len, "n_prompts": row.n_prompts, "seed": row.seed,
                         "reward_global": row.reward_global} | balance)
    return pd.DataFrame(rows)


def exponent_fit(df: pd.DataFrame):
    """:func:`divscale.report.analysis.fit_exponent` on our runs (PRO if present), and a sentence saying what it found.

    If no exponent makes every per-n line rise, the best exponent among all of them is reported with that
    caveat rather than an error: it is a finding, not a failure."""
    from divscale.report.analysis import fit_exponent

    algo = "pro" if "pro" in set(df["algo"]) else sorted(df["algo"].unique())[0]
    table = df[df["algo"] == algo]
    try:
        fit = fit_exponent(table)
        note = (f"{algo.upper()}: the straightest lines with every slope positive are at p = {fit.best_p:.2f} "
                f"(e = {fit.best_exponent:.2f}).")
    except ValueError:
        fit = fit_exponent(table, require_positive_slope=False)
        note = (f"{algo.upper()}: no exponent makes reward rise with d at every ranking length; among all exponents "
                f"the smallest mean MSE is at p = {fit.best_p:.2f}, with at least one falling line, so this "
                "study gives no support for any particular p.")
    return fit, note


def rm_agreement(R: Recipe) -> dict:
    """RM_train against RM_test, the proxy against the judge: how often they prefer the same response of a
    held-out test pair (:func:`divscale.reward.rm.preference_agreement`; pairs with two different responses), and
    how RM_test orders the grid's 4-rankings that RM_train ordered (:func:`divscale.reward.rm.ranking_agreement`)."""
    from divscale.reward.rm import pair_columns, preference_agreement, ranking_agreement, score_pairs

    def build():
        rm_train, rm_test = reward_models(R)
        test = splits(R)["test"]
        cols = pair_columns(test, ("chosen", "rejected"))
        same = [i for i, (c, r) in enumerate(zip(cols["chosen"], cols["rejected"])) if c != r]
        scores = [tuple(x[same] for x in score_pairs(rm, test)) for rm in (rm_train, rm_test)]
        return {"held_out_pairs": preference_agreement(*scores), "rankings4": ranking_agreement(rankings4(R), rm_test)}

    return _memo("rm_agreement", R, build)


def rm_report_table(R: Recipe) -> pd.DataFrame:
    """Held-out accuracy of RM_train / RM_test vs human labels (and a length baseline), and their agreement
    with the OpenAssistant 6.9B RM, per test subset, as a long table (model, subset, metric, accuracy, CI)."""
    from divscale.reward.rm import rm_report_frame

    rm_train, rm_test = reward_models(R)
    return _memo("rm_report", R, lambda: rm_report_frame({"RM_train": rm_train, "RM_test": rm_test},
                                                         splits(R)["test"]))


# --------------------------------------------------------------------------------------------- augmentation / selection

def candidate_pool(R: Recipe, size: int, exclude: Iterable[str] = ()) -> list:
    """The first ``size`` pool pairs of the grid's seeded pool order, without the ids in ``exclude``: the
    candidates that augmentation (``exclude``: its base set) and selection choose from. The order starts
    with the grid's own prompts, whose 4-rankings 01 has already built, so candidates within the grid's
    ``max(sizes)`` cost no SmolLM2 generation; larger pools continue into the rest of the pool."""
    from divscale.data.subsets import nested_subsets

    skip = set(exclude)
    pool = pool_pairs(R)
    order = nested_subsets(pool, [len(pool)], seed=R.data.grid_seed)[len(pool)]
    rest = [r for r in order if r.id not in skip]
    if size > len(rest):
        raise ValueError(f"recipe {R.name}: {size} candidates asked for, but the pool has only {len(rest)} prompts "
                         f"besides the {len(skip)} excluded; lower the candidate_pool setting or raise data.pool_size")
    return rest[:size]


def extend(R: Recipe, pairs: list) -> list:
    """4-rankings (RM_train order) for any list of pool pairs; generations are cached per prompt."""
    from divscale.data.hh import load_rankings
    from divscale.reward.rankings import build_rankings

    rm_train, _ = reward_models(R)
    keep_on_device(R, "rm_train")
    try:
        return load_rankings(build_rankings(R, pool=pairs, rm_train=rm_train, progress=True))
    finally:
        keep_on_device(R)


def n_rankings(R: Recipe, rankings4_: list, n: int) -> list:
    """The n-rankings of any list of 4-rankings: a grid prompt keeps its grid sub-ranking (so the
    augmentation's base set trains on exactly the grid cell's rankings); any other prompt draws from its
    own stream seeded by (grid_seed, id). A prompt's n-ranking never depends on the list it is in."""
    from divscale.data.subsets import sub_rankings, sub_rankings_by_prompt

    in_grid = {r.id: r for r in _memo("grid_sub_rankings", R,
                                      lambda: sub_rankings(rankings4(R), seed=R.data.grid_seed))[n]}
    others = [r for r in rankings4_ if r.id not in in_grid]
    own = {r.id: r for r in sub_rankings_by_prompt(others, seed=R.data.grid_seed)[n]}
    return [in_grid.get(r.id) or own[r.id] for r in rankings4_]


def _identical_to(sets: dict[str, list]) -> dict[str, str | None]:
    from divscale.tools.select import identical_arms

    return identical_arms({name: [r.id for r in rs] for name, rs in sets.items()})


def train_and_score(R: Recipe, rankings: list, algo: str, n: int, seed: int, **labels) -> dict:
    """Train ``algo`` on an arbitrary list of n-rankings, evaluate, and return a result row with ``labels``."""
    run_dir = train_cell(R, algo, n, len(rankings), seed, rankings=rankings)
    evaluation = evaluate_run(R, run_dir)
    return result_row(R, algo, n, len(rankings), seed, run_dir, evaluation,
                      prompts=[r.prompt for r in rankings], **labels)


def _write_table(R: Recipe, name: str, rows: list[dict]) -> pd.DataFrame:
    from divscale.io import atomic_path

    df = pd.DataFrame(rows)
    out = results_dir(R) / f"{name}.csv"
    check_keys(df, out, "its runs were made from different inputs; rebuild it in one process")
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
    return df


def augmentation_base(R: Recipe) -> list:
    """The augmentation's base set: the 4-rankings of the grid's subset of ``augment.seed_size`` prompts
    (the same seeded shuffle as :func:`divscale.data.subsets.build_grid`, so for a size of the grid it is that cell)."""
    from divscale.data.subsets import nested_subsets

    size = R.augment.seed_size
    return nested_subsets(rankings4(R), [size], seed=R.data.grid_seed)[size]


def augmentation_sets(R: Recipe) -> dict[str, tuple[list, Any]]:
    """The paper's augmentation experiment (spec §5): the base set alone, base + K random, base + K
    diversity-guided (Jaccard-filtered greedy on d). Returns {method: (4-rankings, AugmentResult or None)}."""
    from divscale.tools.augment import augment_rankings

    def build():
        cfg = R.augment
        base4 = augmentation_base(R)
        candidates = candidate_pool(R, cfg.candidate_pool, exclude=[r.id for r in base4])
        tok = diversity_tokenizer(R)
        out = {"base only": (base4, None)}
        for method in ("random", "diverse"):
            _, result = augment_rankings(base4, candidates, tok, cfg, method=method, progress=True,
                                         diversity=R.diversity)
            added = extend(R, [candidates[i] for i in result.indices])
            out[f"base + {method}"] = (base4 + added, result)
        return out

    return _memo("augmentation_sets", R, build)


def augmentation_experiment(R: Recipe) -> pd.DataFrame:
    """Train every algorithm x seed on each augmentation set; ``results/<recipe>/augmentation.csv``."""
    n = R.augment.ranking_len
    sets = augmentation_sets(R)
    same = _identical_to({method: rs for method, (rs, _) in sets.items()})
    lengths = {method: prompt_lengths(R, [r.prompt for r in rs]) for method, (rs, _) in sets.items()}
    rows = [train_and_score(R, n_rankings(R, rs, n), algo, n, seed, method=method, identical_to=same[method],
                            dropped=res.n_dropped if res is not None else 0, **lengths[method])
            for method, (rs, res) in sets.items()
            for algo in R.train.algos for seed in (R.augment.train_seeds or R.train.seeds)]
    return _write_table(R, "augmentation", rows)


def selection_results(R: Recipe) -> dict:
    """Each selector's :class:`divscale.tools.select.Selection` of ``select.budget`` candidate indices, with
    what it removed (same candidate pool for all)."""
    from divscale.tools.select import run_selector, selector_context

    def build():
        cfg = R.select
        candidates = candidate_pool(R, cfg.candidate_pool)
        prompts = [r.prompt for r in candidates]
        out = {}
        for name in cfg.selectors:
            ctx = selector_context(name, candidates, cfg, progress=True, diversity=R.diversity)
            out[name] = run_selector(name, prompts, cfg.budget, seed=cfg.seed, **ctx)
        return out

    return _memo("selections", R, build)


def selections(R: Recipe) -> dict[str, list]:
    """Each selector's chosen prompts (as pool pairs, in selection order)."""
    candidates = candidate_pool(R, R.select.candidate_pool)
    return {name: [candidates[i] for i in res.indices] for name, res in selection_results(R).items()}


def selection_report(R: Recipe) -> pd.DataFrame:
    """One row per selector: what it removed and why, and the arm it is identical to (same prompt set)."""
    same = _identical_to(selections(R))
    return pd.DataFrame([{"strategy": name, "picked": len(res.indices), "pool": res.pool_size,
                          "removed": res.n_removed, "identical_to": same[name], "report": res.summary()}
                         for name, res in selection_results(R).items()])


def pool_jaccard_profile(R: Recipe, thresholds=(0.3, 0.4, 0.5, 0.6, 0.7, 0.8)):
    """The selection candidate pool's N-gram Jaccard distribution (metric tokenizer and N): how many
    near-duplicates there are at each threshold and at ``select.dedup_threshold``
    (:func:`divscale.tools.select.jaccard_profile`)."""
    from divscale.metrics.diversity import tokenize_prompts
    from divscale.tools.augment import ngram_sets
    from divscale.tools.select import jaccard_profile

    candidates = candidate_pool(R, R.select.candidate_pool)
    ids = tokenize_prompts([r.prompt for r in candidates], diversity_tokenizer(R), max_tokens=R.diversity.max_tokens)
    thresholds = sorted({*thresholds, R.select.dedup_threshold})          # always the recipe's own threshold
    return jaccard_profile(ngram_sets(ids, R.diversity.ngram), thresholds)


def selection_diversity(R: Recipe) -> pd.DataFrame:
    """d, the other diversity measures and the prompt lengths (metric tokens) of each selector's prompts,
    with the selector's report (removed, identical_to)."""
    from divscale.metrics.diversity import tokenize_prompts

    sets = {name: [r.prompt for r in chosen] for name, chosen in selections(R).items()}
    table = measure_sets(R, sets).rename(columns={"label": "strategy"})
    tok, cap = diversity_tokenizer(R), R.diversity.max_tokens
    lengths = {name: [len(x) for x in tokenize_prompts(p, tok, max_tokens=cap)] for name, p in sets.items()}
    table["prompt_tokens_mean"] = table["strategy"].map(lambda s: float(sum(lengths[s]) / len(lengths[s])))
    table["prompt_tokens_median"] = table["strategy"].map(lambda s: float(pd.Series(lengths[s]).median()))
    return table.merge(selection_report(R)[["strategy", "removed", "identical_to"]], on="strategy", how="left")


def prompt_lengths(R: Recipe, prompts: list[str]) -> dict:
    """Mean and median length of ``prompts`` in the diversity metric's tokens (its tokenizer and cap): d's
    unique-bigram ratio favours short prompts, so a set's d is read beside its prompts' lengths."""
    from divscale.metrics.diversity import tokenize_prompts

    n = pd.Series([len(x) for x in tokenize_prompts(prompts, diversity_tokenizer(R), max_tokens=R.diversity.max_tokens)])
    return {"prompt_tokens_mean": float(n.mean()), "prompt_tokens_median": float(n.median())}


def selection_experiment(R: Recipe) -> pd.DataFrame:
    """Train on each selection (equal annotation budget: same #prompts, same n); ``selection.csv``.
    ``identical_to`` names an earlier arm with the same prompt set (then the runs compare with themselves)."""
    n = R.select.ranking_len
    chosen_by = selections(R)
    same = _identical_to(chosen_by)
    removed = {name: res.n_removed for name, res in selection_results(R).items()}
    lengths = {name: prompt_lengths(R, [r.prompt for r in chosen]) for name, chosen in chosen_by.items()}
    rows = [train_and_score(R, n_rankings(R, extend(R, chosen), n), algo, n, seed, strategy=name,
                            removed=removed[name], identical_to=same[name], **lengths[name])
            for name, chosen in chosen_by.items() for algo in R.select.algos
            for seed in (R.select.train_seeds or R.train.seeds)]
    return _write_table(R, "selection", rows)


def initial_policy_reward(R: Recipe) -> dict:
    """RM_test reward of the policy *before* fine-tuning (the warmed-up tiny GPT or the hub model), on the
    same test prompts: the reference every fine-tuned cell should beat."""
    from divscale.models.tiny_gpt import load_policy
    from divscale.reward.evaluate import evaluate_policy

    def build():
        _, rm_test = reward_models(R)
        keep_on_device(R, "rm_test")
        model, tokenizer = load_policy(R.policy, policy_texts(R))
        from divscale.provenance import deterministic

        e = R.eval
        with deterministic(1):        # as every run's evaluation (evaluate_run)
            res = evaluate_policy(model, tokenizer, test_prompts(R), rm_test, max_new_tokens=e.max_new_tokens,
                                  batch_size=e.batch_size, max_prompt_tokens=e.max_prompt_tokens,
                                  stop_strings=e.stop_strings, n_boot=e.bootstrap)
        return {"reward_global": res.reward["Global"], "ci": res.ci["Global"], "records": res.records}

    return _memo("initial_reward", R, build)


def policy_command(args) -> int:
    """``divscale policy --recipe R``: build (or load) the recipe's initial policy -- for tiny-gpt the BPE tokenizer
    and the warm-up, the longest single step of a cold run -- and print its fingerprint (``--out``: also write it
    there). ``make figures`` runs it beside 01_data_construction, so the warm-up does not wait for the rankings."""
    from divscale.config import parse_overrides
    from divscale.io import atomic_write_text

    R = load_recipe(args.recipe, parse_overrides(args.set))
    fingerprint = policy_fingerprint(R)
    if args.out:
        atomic_write_text(args.out, fingerprint + "\n")
    print(fingerprint)
    return 0


# --------------------------------------------------------------------------------------------- what the policies write

ANSWER_PROMPTS_PER_SUBSET = 2


def answers_table(R: Recipe, results_df: pd.DataFrame, initial: dict,
                  per_subset: int = ANSWER_PROMPTS_PER_SUBSET) -> pd.DataFrame:
    """Greedy answers to a handful of test prompts (the first ``per_subset`` of each test file, the same for every
    policy), from the policy before fine-tuning (``initial``: :func:`initial_policy_reward`, with its records) and
    from one replicate of each cell of the declared primary contrast (``grid.primary``; the replicate with the
    smallest seed), with RM_test's score (×100) and the keys of the table they come from: what the study's
    numbers are numbers of."""
    from divscale.provenance import KEY_COLUMNS

    p = R.grid.primary
    if not p.declared:
        raise DataError(f"recipe {R.name}: no grid.primary declared, so there are no primary cells to quote")
    keys = {k: v for k, v in table_keys(R).items() if k in KEY_COLUMNS or k == "eval_key"}
    picked = {}
    for rec in sorted(initial["records"], key=lambda r: (r["subset"], r["index"])):
        if sum(1 for s_, _ in picked if s_ == rec["subset"]) < per_subset:
            picked[(rec["subset"], rec["index"])] = rec
    sources = [("initial policy", {"algo": None, "ranking_len": None, "n_prompts": None, "seed": None, "draw": None,
                                   "run_id": "initial"} | keys, {(r["subset"], r["index"]): r
                                                                 for r in initial["records"]})]
    data = results_df[results_df["algo"] == p.algo]
    for n, k in p.cells().values():
        cell = data[(data["ranking_len"] == n) & (data["n_prompts"] == k)].sort_values("seed")
        if cell.empty:
            raise DataError(f"recipe {R.name}: no run of the primary cell (n={n}, k={k}) in the results table; "
                            f"run `divscale grid --recipe {R.name}` first")
        row = cell.iloc[0]
        gens = generations(row.to_dict())
        by_key = {(g["subset"], g["index"]): g for g in gens.to_dict("records")}
        sources.append((f"{p.algo.upper()} n={n} k={k} seed {int(row['seed'])}",
                        {"algo": p.algo, "ranking_len": n, "n_prompts": k, "seed": int(row["seed"]),
                         "draw": None if pd.isna(row.get("draw")) else int(row["draw"]), "run_id": row["run_id"]}
                        | {c: row[c] for c in keys if c in row.index}, by_key))
    rows = []
    for policy, ident, records in sources:
        for key in picked:
            rec = records.get(key)
            if rec is None:
                raise DataError(f"{policy}: no generation for test prompt {key}; its evaluation used other test "
                                "prompts than the initial policy's")
            rows.append({"policy": policy, "subset": key[0], "index": int(key[1]),
                         "prompt": picked[key]["prompt"], "response": rec["response"],
                         "reward": 100.0 * float(rec["score"])} | ident)
    return pd.DataFrame(rows)


def write_answers(R: Recipe, results_df: pd.DataFrame, initial: dict,
                  per_subset: int = ANSWER_PROMPTS_PER_SUBSET) -> pd.DataFrame:
    """:func:`answers_table` written to ``results/<recipe>/answers.jsonl`` (atomically), one answer a line."""
    from divscale.io import atomic_write_jsonl

    table = answers_table(R, results_df, initial, per_subset)
    records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
               for r in table.to_dict("records")]
    atomic_write_jsonl(results_dir(R) / "answers.jsonl", records)
    return table
