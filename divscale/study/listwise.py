"""Notebook 09's experiment: listwise losses on human rankings against TRL's ``DPOTrainer`` on the same rankings
split into pairs -- the answer TRL's maintainers give to "more than one rejected" (huggingface/trl#1831).

**Data.** OpenAssistant oasst1's English validation contexts: volunteers ranked 2-5 sibling replies
(:func:`divscale.data.formats.from_oasst1`), each turn written on one line (:func:`divscale.data.ranked.one_line_ranked`:
the recipe's policy has seen HH text only, where a line break is turn structure). ``n_test`` contexts, drawn with the
recipe's ``data.grid_seed``, are held out; their prompts are the test prompts. The training rows are the other
contexts with at least :data:`RANKING_LEN` replies and strictly ranked, cut to that many (three of a longer ranking
drawn at random and kept in rank order, :func:`divscale.train.own_data.sub_ranked`). Three, because most contexts
have three replies and few have four (the notebook prints the counts); one K for every row makes "the same rows per
step" exact for the pairs arms, every row having the same number of pairs.

**Arms** (:data:`ARMS`). divscale's :class:`~divscale.train.trainer.RankingTrainer` on the rankings with PRO,
Plackett-Luce, LiPO-lambda and all-pairs DPO (DPO's sigmoid loss averaged over the ranking's ordered pairs), and
TRL's own ``DPOTrainer`` (loss ``sigmoid``) on the same rankings split into pairs by
:func:`divscale.data.convert.ranked_to_pairs` (``divscale data convert --to pairs``): best-vs-rest (K-1 pairs a
ranking) and all pairs (K(K-1)/2).

**What is equal.** The initial weights (the recipe's policy), the training rows, the optimizer (AdamW with the
recipe's learning rate, weight decay on every parameter, clipping, constant schedule), the number of optimizer steps
(``train.max_steps``), the rankings per step (``train.prompts_per_step``), the sequence lengths (the policy's
positions, the prompt keeping its last ``train.max_prompt_length`` tokens), no dropout, and beta = 0.1 (TRL's
default) wherever a loss uses DPO's implicit reward. The data order: for seed s a seeded permutation of the training
rows, read in that order by every arm (``train_sampling_strategy="sequential"``, the same order again in a second
epoch); a pairs arm reads the pairs of those rows in the same order, ``rows_per_step x pairs per row`` pairs a step,
so **step t of every arm sees the same rankings**. "Equal steps" for pairs therefore means the same rows per step,
hence more pairs per step; the other reading -- as many pairs per step as rows (a TRL user's batch counts pairs) --
sees a third (all pairs, K = 3) of the rankings in the same steps; its cost per step and per epoch is reported
beside (:func:`cost_per_step`, ``benchmarks/bench_vs_trl_dpo.py`` measures both).

**What is paired.** The runs of one seed, whatever the arm, start from the same weights and see the same rankings in
the same steps; contrasts between arms are paired by seed (a paired t over seeds). What differs besides the loss:
TRL appends EOS to every chosen and rejected reply (so its policy also learns to stop), divscale's trainer does not
(the paper's rule); PRO has no reference model; the pairs arms encode a prompt once per pair, the listwise arms once
per ranking.

**Measured.** Each run's greedy answers to the test prompts scored by RM_test (100 x mean sigmoid, bootstrap CI over
prompts), the win rate over the initial policy on the same prompts (ties half, Wilson CI) and the share of empty
answers -- all by :func:`divscale.reward.evaluate.evaluate_run`, the code of ``divscale evaluate --run``, so every
run folder here can also be evaluated from the command line -- and the training's wall time per step. The rows go to
``results/<recipe>/listwise.csv`` (:func:`experiment`), keyed like runs.csv; :func:`divscale.report.publish.listwise_summary`
turns them into the arms, contrasts and costs that notebook 09 prints and summary.json holds.
"""
from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from divscale import paths
from divscale.config import Recipe
from divscale.io import DataError
from divscale.provenance import config_hash, sha256_json

RANKING_LEN = 3          # K of every training ranking (module docstring)
BETA = 0.1               # DPO's temperature (TRL's default), for every loss on DPO's implicit reward
N_SEEDS = 4              # replicates per arm (the notebook's time budget; MDEs in its output)
TEST_CONTEXTS = 120      # held-out oasst1 contexts (at most; the grid's cpu evaluation also scores 120 prompts)
OASST1 = "oasst1/en-validation.jsonl"
TABLE = "listwise.csv"


@dataclass(frozen=True)
class Arm:
    """One way of training on the rankings: divscale's RankingTrainer with a listwise ``loss``, or TRL's DPOTrainer
    on the rankings split into ``pairs``."""
    name: str
    label: str
    trainer: str                 # "divscale" | "trl"
    loss: str                    # RankingTrainer's loss_type, or TRL's DPO loss_type
    pairs: str | None = None     # trl: "best-vs-rest" | "all" (divscale.data.convert.PAIRINGS)


ARMS = (Arm("pro", "PRO", "divscale", "pro"),
        Arm("plackett_luce", "Plackett–Luce", "divscale", "plackett_luce"),
        Arm("lipo_lambda", "LiPO-λ", "divscale", "lipo_lambda"),
        Arm("all_pairs_dpo", "all-pairs DPO (divscale)", "divscale", "all_pairs_dpo"),
        Arm("trl_dpo_best_vs_rest", "TRL DPO (best vs rest)", "trl", "sigmoid", "best-vs-rest"),
        Arm("trl_dpo_all_pairs", "TRL DPO (all pairs)", "trl", "sigmoid", "all"))
BASELINE = "trl_dpo_all_pairs"          # TRL's answer at its fullest: every pair of the ranking
INITIAL = "initial"                     # the table's row for the policy before training


def arm(name: str) -> Arm:
    found = [a for a in ARMS if a.name == name]
    if not found:
        raise ValueError(f"unknown arm {name!r}: choose one of {[a.name for a in ARMS]}")
    return found[0]


# --------------------------------------------------------------------------------------------- design

@dataclass(frozen=True)
class Design:
    """The settings every arm shares (module docstring), all from the recipe but K, beta, the seeds and n_test."""
    recipe: str
    seeds: tuple[int, ...]
    steps: int
    rows_per_step: int
    ranking_len: int
    learning_rate: float
    weight_decay: float
    max_grad_norm: float
    max_length: int
    max_prompt_length: int
    beta: float
    sft_weight: float
    n_test: int
    data_seed: int

    def pairs_per_row(self, how: str) -> int:
        k = self.ranking_len
        return k - 1 if how == "best-vs-rest" else k * (k - 1) // 2


def design(R: Recipe, n_seeds: int = N_SEEDS) -> Design:
    """The experiment's settings for recipe ``R``: its steps, rankings per step, learning rate, weight decay,
    clipping, lengths and PRO's SFT weight; the first ``n_seeds`` of its ``train.seeds`` + ``grid.verdict_seeds``."""
    from divscale.train.options import sequence_lengths

    t = R.train
    pool = list(dict.fromkeys([*t.seeds, *R.grid.verdict_seeds]))
    if n_seeds < 1:
        raise ValueError(f"n_seeds={n_seeds}: give at least one seed")
    max_length, max_prompt = sequence_lengths(t.max_length, t.max_prompt_length, R.policy.block_size
                                              if R.policy.model == "tiny-gpt" else None, f"policy {R.policy.model}")
    return Design(recipe=R.name, seeds=tuple(pool[:n_seeds]), steps=t.max_steps, rows_per_step=t.prompts_per_step,
                  ranking_len=RANKING_LEN, learning_rate=t.learning_rate, weight_decay=t.weight_decay,
                  max_grad_norm=t.max_grad_norm, max_length=max_length, max_prompt_length=max_prompt, beta=BETA,
                  sft_weight=t.sft_weight, n_test=min(TEST_CONTEXTS, 4 * R.eval.test_prompts_per_subset),
                  data_seed=R.data.grid_seed)


def cost_per_step(d: Design, a: Arm, same: str = "rows") -> dict:
    """What one optimizer step puts through the model: rankings, pairs, and sequences encoded by the policy (with
    gradients) and by the frozen reference. A listwise step encodes each completion once and each prompt once per
    ranking (its prompt is shared: ``share_prompt``); a pairs step encodes ``prompt + chosen`` and ``prompt +
    rejected`` for every pair, so each completion once per pair it is in. ``same``: "rows" (the experiment: the
    same rankings per step) or "pairs" (as many pairs per step as rankings)."""
    k, b = d.ranking_len, d.rows_per_step
    from divscale.train.options import NEEDS_REFERENCE

    if a.trainer == "divscale":
        ref = b * k if a.loss in NEEDS_REFERENCE else 0
        return {"rankings": b, "pairs": None, "policy_sequences": b * k, "prompt_encodings": b,
                "reference_sequences": ref}
    p = d.pairs_per_row(a.pairs)
    pairs = b * p if same == "rows" else b
    return {"rankings": b if same == "rows" else b / p, "pairs": pairs, "policy_sequences": 2 * pairs,
            "prompt_encodings": 2 * pairs, "reference_sequences": 2 * pairs}


# --------------------------------------------------------------------------------------------- data

_MEMO: dict = {}


@dataclass(frozen=True)
class Data:
    """The experiment's rankings: ``train`` (K-rankings), ``test`` (held-out contexts as they are), the file
    holding both (the run folders' ``data.source``, recorded project-relative so that run ids do not depend on where
    the project is checked out: ``divscale evaluate --run`` finds the held-out prompts there),
    its content hash and the counts the notebook prints."""
    train: object
    test: object
    source: Path
    sha: str
    counts: dict


def oasst1_data(R: Recipe, d: Design) -> Data:
    """:class:`Data` for the design (module docstring), built once per process; the data file is written under
    ``runs/listwise/`` (atomically; named by its content)."""
    from collections import Counter

    from divscale.data.convert import to_ranked_records
    from divscale.data.formats import from_oasst1
    from divscale.data.ranked import one_line_ranked
    from divscale.io import atomic_write_jsonl
    from divscale.train.own_data import split_ranked, sub_ranked

    key = ("data", d.n_test, d.ranking_len, d.data_seed, str(paths.RUNS_DIR))
    if key in _MEMO:
        return _MEMO[key]
    path = paths.DATA_DIR / OASST1
    if not path.exists():
        raise DataError(f"{path}: not found; link the shared data (data/oasst1 -> ../shared/data/oasst1) or run "
                        "`make setup`")
    rows = one_line_ranked(from_oasst1(path))
    train, test = split_ranked(rows, d.n_test, seed=d.data_seed)
    k = d.ranking_len
    long_enough = [i for i, c in enumerate(train["completions"]) if len(c) >= k]
    strict = [i for i in long_enough if len(set(train[i]["ranks"])) == len(train[i]["ranks"])]
    train_k = sub_ranked(train.select(strict), k, seed=d.data_seed)
    counts = {"contexts": len(rows), "replies": dict(sorted(Counter(len(c) for c in rows["completions"]).items())),
              "test": len(test), "train_contexts": len(train), "with_k": len(long_enough),
              "ties_dropped": len(long_enough) - len(strict), "train": len(train_k)}
    records = (to_ranked_records(train_k.to_list(), style="standard")
               + to_ranked_records(test.to_list(), style="standard"))
    sha = sha256_json(records)[:16]
    source = paths.RUNS_DIR / "listwise" / f"oasst1-en-validation-k{k}-{sha}.jsonl"
    if not source.exists():
        source.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_jsonl(source, records)
    out = _MEMO[key] = Data(train_k, test, source, sha, counts)
    return out


def data_order(train, seed: int):
    """The training rows in seed ``seed``'s order: what every arm of that seed reads, in order."""
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    return train.select(order)


# --------------------------------------------------------------------------------------------- runs

def shared_options(d: Design, seed: int) -> dict:
    """The TrainingArguments every arm of seed ``seed`` shares (divscale's RankingConfig and TRL's DPOConfig alike):
    steps, optimizer, lengths, no dropout, and the data read in order (the order :func:`data_order` made)."""
    return {"max_steps": d.steps, "learning_rate": d.learning_rate, "weight_decay": d.weight_decay,
            "max_grad_norm": d.max_grad_norm, "max_length": d.max_length, "seed": seed,
            "train_sampling_strategy": "sequential", "lr_scheduler_type": "constant", "warmup_steps": 0,
            "disable_dropout": True, "bf16": False}


def train_listwise(R: Recipe, d: Design, a: Arm, seed: int, data: Data, policy, policy_id: str) -> Path:
    """One divscale arm's run folder (:func:`divscale.train.runs.train_ranked`; reused when it exists)."""
    from divscale.train.runs import train_ranked

    extra = {"sft_weight": d.sft_weight, "sft_reduction": "sequence_sum"} if a.loss == "pro" else {}
    return train_ranked(data_order(data.train, seed), a.loss, policy, policy_id, seed=seed,
                        data_name=paths.project_relative(data.source), model_name=R.policy.model, recipe_name=R.name,
                        split="train",
                        held_out_ids=list(data.test["id"]), per_device_train_batch_size=d.rows_per_step,
                        max_prompt_length=d.max_prompt_length, beta=d.beta, loss_balance_steps=0,
                        **{k: v for k, v in shared_options(d, seed).items() if k != "seed"}, **extra)


def dpo_trainer_class():
    """TRL's ``DPOTrainer`` with divscale's two run rules: a non-finite loss stops the run
    (:class:`~divscale.train.trainer.DivergenceGuard`), and weight decay applies to every parameter, as in
    :class:`~divscale.train.trainer.RankingTrainer` (TRL exempts biases and norms), so the optimizers are equal."""
    from trl import DPOTrainer

    from divscale.train.trainer import DivergenceGuard

    class DPOOnPairs(DivergenceGuard, DPOTrainer):
        def get_decay_parameter_names(self, model):
            return [name for name, _ in model.named_parameters()]

    return DPOOnPairs


def ranking_pairs(rows, tokenizer, max_length: int, max_prompt_length: int, how: str) -> list[dict]:
    """TRL standard-format pairs of ``rows`` in row order (:func:`divscale.data.convert.ranked_to_pairs`), each
    prompt first cut to its last ``max_prompt_length`` tokens by the ranking trainer's own rule
    (:meth:`~divscale.train.trainer.RankingCollator.prompt_texts`): TRL has no prompt budget and would cut the
    completion instead."""
    from divscale.data.convert import ranked_to_pairs
    from divscale.train.trainer import RankingCollator

    rows = rows.to_list() if hasattr(rows, "to_list") else list(rows)
    prompts = RankingCollator(tokenizer, max_length, max_prompt_length).prompt_texts([r["prompt"] for r in rows])
    pairs = ranked_to_pairs([r | {"prompt": p} for r, p in zip(rows, prompts)], how, style="standard")
    return [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]


def code_key() -> str:
    """The code version of these runs: the training step's (divscale.provenance.STEPS) and this module's."""
    from divscale.provenance import closure, code_version

    own = closure("divscale.study.listwise:train_listwise", "divscale.study.listwise:train_pairs")
    return f"{code_version('train')}-{config_hash(own, length=8)}"


def train_pairs(R: Recipe, d: Design, a: Arm, seed: int, data: Data, policy, policy_id: str) -> Path:
    """One TRL arm's run folder: TRL's ``DPOTrainer`` on the pairs of seed ``seed``'s rows, in their order,
    ``rows_per_step x pairs per row`` pairs a step, written by :func:`divscale.train.runs.execute_run` (the own-data
    run folder of docs/architecture.md, "Run folders": ``divscale evaluate --run`` reads it); reused when it exists."""
    import torch
    import trl
    from datasets import Dataset

    from divscale.train.runs import execute_run

    model, tokenizer = policy
    rows = data_order(data.train, seed)
    pairs = ranking_pairs(rows, tokenizer, d.max_length, d.max_prompt_length, a.pairs)
    if len(pairs) != d.pairs_per_row(a.pairs) * len(rows):
        raise DataError(f"{len(pairs)} {a.pairs} pairs from {len(rows)} rankings; each must give "
                        f"{d.pairs_per_row(a.pairs)}")
    per_step = d.rows_per_step * d.pairs_per_row(a.pairs)
    settings = {"trainer": f"trl.DPOTrainer {trl.__version__}", "loss_type": [a.loss], "beta": d.beta,
                "pairs": a.pairs, "per_device_train_batch_size": per_step, "gradient_accumulation_steps": 1,
                "truncation_mode": "keep_start", "precompute_ref_log_probs": False, "activation_checkpointing": False,
                **shared_options(d, seed), "max_prompt_length": d.max_prompt_length}
    config = {"kind": "ranked",
              "data": {"source": paths.project_relative(data.source), "split": "train", "limit": None,
                       "held_out_ids": list(data.test["id"]), "n_train": len(rows),
                       "rows_sha256": sha256_json(rows.to_list()), "pairs_sha256": sha256_json(pairs)},
              "model": {"name": R.policy.model, "recipe": R.name, "policy_id": policy_id},
              "train": settings, "seed": seed, "code": code_key()}
    name = f"trl-dpo-{a.pairs}-{data.source.stem}-s{seed}-{config_hash(config, length=12)}"
    run_dir = paths.RUNS_DIR / "train" / name

    def build(trainer_dir: Path, callbacks: list):
        from trl import DPOConfig

        args = DPOConfig(**{k: v for k, v in settings.items() if k not in ("trainer", "pairs", "max_prompt_length")},
                         output_dir=str(trainer_dir), run_name=name, data_seed=seed, save_strategy="no",
                         logging_steps=1, logging_nan_inf_filter=False, optim="adamw_torch", report_to="none",
                         disable_tqdm=True, use_cpu=not torch.cuda.is_available())
        start = copy.deepcopy(model)
        trainer = dpo_trainer_class()(model=start, ref_model=copy.deepcopy(start), args=args,
                                      train_dataset=Dataset.from_list(pairs), processing_class=tokenizer,
                                      callbacks=callbacks)
        if len(trainer.train_dataset) != len(pairs):     # TRL drops a pair whose prompt fills max_length
            raise DataError(f"TRL kept {len(trainer.train_dataset)} of {len(pairs)} pairs; the steps would no longer "
                            "hold the same rankings as the listwise arms'")
        return trainer

    return execute_run(run_dir, config, build, f"TRL DPO ({a.pairs} pairs) on {len(rows)} rankings, seed {seed}",
                       {"loss_type": [a.loss], "pairs": a.pairs, "n_rows": len(rows), "n_pairs": len(pairs),
                        "seed": seed}, False)


def train_arm(R: Recipe, d: Design, a: Arm, seed: int, data: Data, policy, policy_id: str) -> Path:
    """The run folder of one arm and seed (trained unless it exists)."""
    return (train_listwise if a.trainer == "divscale" else train_pairs)(R, d, a, seed, data, policy, policy_id)


# --------------------------------------------------------------------------------------------- evaluation

def answer_profile(records: list[dict]) -> dict:
    """Share of empty greedy answers and mean answer length (characters) of an evaluation's records."""
    answers = [r["response"] for r in records]
    return {"empty_share": sum(not a.strip() for a in answers) / len(answers),
            "answer_chars_mean": sum(len(a) for a in answers) / len(answers)}


def evaluate(R: Recipe, run_dir: Path, overrides: dict | None = None) -> dict:
    """``divscale evaluate --run`` on one run (:func:`divscale.reward.evaluate.evaluate_run`): RM_test on its greedy
    answers to the held-out prompts, the initial policy's answers beside them, the win rate; cached in the run."""
    from divscale.reward.evaluate import evaluate_run
    from divscale.train.runs import load_initial_policy

    res = evaluate_run(run_dir, initial_policy=_initial_policy_of(load_initial_policy), recipe=R.name,
                       overrides=overrides)
    records = [json.loads(line) for line in (Path(res["eval_dir"]) / "generations.jsonl").read_text().splitlines()
               if line.strip()]
    return res | {"records": records}


def _initial_policy_of(loader):
    """``loader`` memoised per process: every run of the experiment starts from the same policy."""
    def load(run):
        config = json.loads((Path(run) / "config.json").read_text())
        key = ("initial", config["model"]["policy_id"])
        if key not in _MEMO:
            _MEMO[key] = loader(run)
        return _MEMO[key]
    return load


def table_keys(R: Recipe, data: Data) -> dict:
    """The key columns (divscale.provenance.KEY_COLUMNS) every row of listwise.csv shares, but ``eval_key``: each
    row takes that from its evaluation's folder (:func:`divscale.reward.evaluate.run_eval_key`), so rows
    evaluated otherwise do not pass for one evaluation."""
    from divscale.provenance import closure
    from divscale.study import pipeline

    _, rm_test = pipeline.reward_models(R)
    return {"key_recipe": pipeline.recipe_key(R),
            "key_rm_test": getattr(rm_test, "fingerprint", None) or type(rm_test).__name__,
            "key_policy": pipeline.policy_fingerprint(R), "key_rankings": data.sha, "key_code_train": code_key(),
            "key_code_eval": config_hash(closure("divscale.reward.evaluate:evaluate_run"), length=12)}


def result_row(R: Recipe, d: Design, a: Arm, seed: int, run_dir: Path, evaluation: dict, keys: dict,
               n_train: int) -> dict:
    """One row of listwise.csv for a finished, evaluated run."""

    run = json.loads((run_dir / "result.json").read_text())
    trained, win = evaluation["trained"], evaluation["win_rate"]["Global"]
    cost = cost_per_step(d, a)
    steps = run["steps"]
    return {"run_id": run_dir.name, "recipe": R.name, "arm": a.name, "label": a.label, "trainer": a.trainer,
            "loss": a.loss, "pairs": a.pairs or "", "seed": seed, "ranking_len": d.ranking_len,
            "n_train": n_train, "steps": steps,
            "rows_per_step": d.rows_per_step, "pairs_per_step": cost["pairs"],
            "policy_sequences_per_step": cost["policy_sequences"],
            "reference_sequences_per_step": cost["reference_sequences"],
            "reward": trained["reward"]["Global"], "reward_lo": trained["ci"]["Global"][0],
            "reward_hi": trained["ci"]["Global"][1],
            "reward_minus_initial": evaluation["difference"]["reward"]["Global"],
            "win_rate": win["win_rate"], "win_rate_lo": win["ci_wilson"][0], "win_rate_hi": win["ci_wilson"][1],
            **answer_profile(evaluation["records"]), "n_test": trained["n"]["Global"],
            "train_seconds": run["train_runtime_s"], "seconds_per_step": run["train_runtime_s"] / steps,
            "first_train_loss": run.get("first_train_loss"), "final_train_loss": run.get("final_train_loss"),
            "eval_seconds": evaluation.get("seconds", math.nan), "status": "ok", "created": run.get("finished"),
            "run_dir": paths.project_relative(run_dir), **keys, **evaluation_columns(evaluation)}


def evaluation_columns(evaluation: dict) -> dict:
    """``eval_dir`` (project-relative) and ``eval_key`` (its folder name) of a row made from ``evaluation``."""
    return {"eval_dir": paths.project_relative(evaluation["eval_dir"]), "eval_key": Path(evaluation["eval_dir"]).name}


def initial_row(R: Recipe, d: Design, evaluation: dict, keys: dict) -> dict:
    """The initial policy's row (arm ``initial``): its reward on the same prompts, from any run's evaluation (its
    ``eval_dir``: the initial answers are in that folder's generations, beside the run's)."""
    initial = evaluation["initial"]
    records = [{"response": r["initial_response"]} for r in evaluation["records"]]
    return {"run_id": INITIAL, "recipe": R.name, "arm": INITIAL, "label": "initial policy", "trainer": "",
            "loss": "", "pairs": "", "seed": math.nan, "ranking_len": d.ranking_len,
            "reward": initial["reward"]["Global"], "reward_lo": initial["ci"]["Global"][0],
            "reward_hi": initial["ci"]["Global"][1], "reward_minus_initial": 0.0, "win_rate": math.nan,
            **answer_profile(records), "n_test": initial["n"]["Global"], "status": "ok", "created": None, **keys,
            **evaluation_columns(evaluation)}


# --------------------------------------------------------------------------------------------- the experiment

def experiment(R: Recipe, d: Design | None = None, arms=ARMS, overrides: dict | None = None,
               progress: bool = True) -> pd.DataFrame:
    """Train and evaluate every arm x seed of the design (runs and evaluations are reused when they exist), write
    ``results/<recipe>/listwise.csv`` (one row per run plus the initial policy's; refused if its rows disagree on
    a key column) and return it."""
    from divscale.train.runs import study_policy

    d = d or design(R)
    data = oasst1_data(R, d)
    policy, policy_id = study_policy(R)
    keys = table_keys(R, data)
    rows, first = [], None
    for seed in d.seeds:
        for a in arms:
            start = time.time()
            run = train_arm(R, d, a, seed, data, policy, policy_id)
            evaluation = evaluate(R, run, overrides)
            first = first or evaluation
            rows.append(result_row(R, d, a, seed, run, evaluation, keys, len(data.train)))
            if progress:
                r = rows[-1]
                print(f"{a.name:>22} seed {seed}: reward {r['reward']:.2f}, win rate {r['win_rate']:.2f}, "
                      f"empty {r['empty_share']:.0%}, {r['seconds_per_step']:.2f} s/step "
                      f"({time.time() - start:.0f} s)", flush=True)
    rows.insert(0, initial_row(R, d, first, keys))
    return write_table(R, rows)


def write_table(R: Recipe, rows: list[dict]) -> pd.DataFrame:
    """``results/<recipe>/listwise.csv``, written atomically; rows that disagree on a key column are refused."""
    from divscale.io import atomic_path
    from divscale.study.pipeline import check_keys, results_dir

    df = pd.DataFrame(rows)
    out = results_dir(R) / TABLE
    check_keys(df, out, "its runs were made from different inputs; rerun notebook 09 in one process")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
    return df


def load_table(path: str | Path) -> pd.DataFrame:
    """listwise.csv, refused when its rows disagree on a key column."""
    from divscale.study.pipeline import check_keys

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no listwise results; run notebook 09 (`divscale notebook run 09_listwise`)")
    df = pd.read_csv(path)
    check_keys(df, path, "rerun notebook 09: it rebuilds the table from the current inputs")
    return df


# --------------------------------------------------------------------------------------------- what the notebook shows

def cost_table(d: Design, arms=ARMS) -> pd.DataFrame:
    """Per arm, what a step encodes under both readings of "equal steps" for the pairs arms (:func:`cost_per_step`),
    and per epoch of the training rankings (the same for both readings: the same pairs)."""
    rows = []
    for a in arms:
        for same in (("rows", "pairs") if a.trainer == "trl" else ("rows",)):
            c = cost_per_step(d, a, same)
            per_epoch = c["policy_sequences"] / c["rankings"]
            rows.append({"arm": a.name, "equal steps as": "same rankings a step" if same == "rows" else
                         "same pairs a step as rankings", "rankings a step": c["rankings"],
                         "pairs a step": c["pairs"], "policy sequences a step": c["policy_sequences"],
                         "prompt encodings a step": c["prompt_encodings"],
                         "reference sequences a step": c["reference_sequences"],
                         "policy sequences a ranking": per_epoch})
    return pd.DataFrame(rows).set_index(["arm", "equal steps as"])


def quality_table(summary: dict) -> pd.DataFrame:
    """Per arm: reward, gain over the initial policy, win rate, empty answers (:func:`listwise_summary`'s arms)."""
    rows = {}
    for a in summary["arms"].values():
        g = a["vs_initial"]
        rows[a["label"]] = {"runs": a["runs"], "reward": a["reward"], "CI lo": a["reward_lo"], "CI hi": a["reward_hi"],
                            "seed SD": a["seed_sd"], "− initial": g["estimate"], "− initial CI lo": g["ci_lo"],
                            "− initial CI hi": g["ci_hi"], "win rate": a["win_rate"], "win CI lo": a["win_rate_lo"],
                            "win CI hi": a["win_rate_hi"], "empty answers": a["empty_share"],
                            "answer chars": a["answer_chars"]}
    i = summary["initial"]
    rows["initial policy"] = {"reward": i["reward"], "CI lo": i["ci_lo"], "CI hi": i["ci_hi"],
                              "empty answers": i["empty_share"]}
    return pd.DataFrame(rows).T


def measured_cost_table(summary: dict) -> pd.DataFrame:
    """Per arm: sequences a step and the measured wall time per step, against TRL DPO on all pairs."""
    return pd.DataFrame({a["label"]: {"pairs a step": a["pairs_per_step"],
                                      "policy sequences a step": a["policy_sequences_per_step"],
                                      "reference sequences a step": a["reference_sequences_per_step"],
                                      "s a step": a["seconds_per_step"],
                                      "speed vs TRL DPO all pairs": a["speed_vs_trl_all_pairs"]}
                         for a in summary["arms"].values()}).T


def contrast_table(summary: dict) -> pd.DataFrame:
    """Every divscale arm − every TRL arm: paired difference of reward, 95% CI, MDE, verdict."""
    return pd.DataFrame({cid: {"difference": c["estimate"], "CI lo": c["ci_lo"], "CI hi": c["ci_hi"], "MDE": c["mde"],
                               "pairs (seeds)": c["n_a"], "status": c["status"]}
                         for cid, c in summary["contrasts"].items()}).T


def sentences(summary: dict) -> list[str]:
    """The head-to-head's findings as sentences, from the summary alone."""
    from divscale.report.analysis import contrast_sentence

    arms, out = summary["arms"], []
    for cid, c in summary["contrasts"].items():
        a, b = cid.split(" - ")
        out.append(contrast_sentence(f"{arms[a]['label']} − {arms[b]['label']}", c))
    base = summary["baseline"]
    if base in arms:
        speed = ", ".join(f"{a['label']} {a['speed_vs_trl_all_pairs']:.1f}x" for n, a in arms.items() if n != base)
        out.append(f"Wall time per step against {arms[base]['label']} (same rankings per step, one core): {speed}.")
    return out
