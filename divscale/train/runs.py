"""Run folders: one routine trains a grid cell (:func:`train_run`) or anyone's ranked data (:func:`train_ranked`) into
``runs/train/<name>/`` and reloads a run's initial policy (:func:`load_initial_policy`).

A grid cell -- (algorithm, ranking length n, #prompts k, seed) -- follows the paper's protocol (spec §3.4), whatever
the subset size:

- a fixed step budget (4000 steps of 112 prompts): per-device batch x grad accumulation x world size =
  ``train.prompts_per_step``; the per-device batch may depend on how many sequences one prompt puts through the model
  (``train.per_device_batch_by_n``: SFT 1, PRO n, DPO 2 -- the paper halves it for PRO n=4);
- constant LR, AdamW (weight decay 0.01 on every parameter), gradient clipping 1.0, no warmup;
- every ``eval_every`` steps (and at the last step) greedy-decode the dev prompts, score them with RM_train (reward =
  mean sigmoid of the logits) and keep the best step; step 0 is evaluated and logged but cannot be chosen
  (``train.checkpoint: last`` keeps the last step instead).

Algorithms: ``sft`` (top-1 response of each n-ranking, summed NLL: the paper's SFT baseline) and ``pro`` through
:class:`divscale.train.trainer.RankingTrainer`; ``dpo`` -- not in the paper, an extra baseline through TRL's
``DPOTrainer``. TRL has no listwise loss; its maintainers' suggested workaround (trl#1831) is to expand a ranking into
pairs. ``train.dpo_pairs`` picks which: ``best-vs-rest`` (y1 > yi for every i > 1, n-1 pairs; default), ``adjacent``
(yi > yi+1) or ``all`` (n(n-1)/2 pairs). For DPO, ``prompts_per_step`` counts pairs. TRL appends EOS to
``chosen``/``rejected``, so unlike SFT/PRO the DPO policy is also trained to emit EOS. The TrainingArguments of a cell
come from the recipe in one function, :func:`training_arguments`.

Every run folder (``<algo>-n<n>-k<k>-s<seed>-<hash>`` for a cell, ``<loss>-<data>-s<seed>-<hash>`` for own data; the
hash covers everything that determines the result, including the code version) holds::

    config.json      the full configuration that was hashed ("kind": "cell" or "ranked")
    metrics.jsonl    one record per step (loss, loss parts, lr, grad norm) and per dev evaluation
    train.log        the same, human readable
    best/            the kept weights (safetensors) + tokenizer (model_max_length = the model's positions; the base's
                     chat template where it had one)
    result.json      steps, kept step, losses, hash of the final weights, timings, when it finished
    DONE             completion marker

It is built as ``<name>.partial/`` and renamed when complete, so a folder without ``.partial`` is always whole and a
completed run is reused on re-run. A killed run resumes from its last complete Trainer checkpoint (written every
``eval_every`` steps; with the same seed on CPU the final weights are bit-identical to an uninterrupted run). A run
whose loss or gradient norm turns non-finite stops at that step (:class:`divscale.train.trainer.TrainingDiverged`)
and is never marked complete.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, get_args

from transformers import PrinterCallback, ProgressCallback, TrainerCallback

from divscale import io, paths
from divscale.config import Algo, DPOPairs, Recipe
from divscale.io import DataError, atomic_path, atomic_write_json, atomic_write_text
from divscale.provenance import code_version, config_hash, deterministic, sha256_json, weights_sha256
from divscale.train.trainer import (
    RankingCollator,
    RankingConfig,
    RankingTrainer,
    check_trainable_dtype,
    loss_balance_summary,
    model_positions,
    ranked_rows,
    sequence_lengths,
)

ALGOS = get_args(Algo)
DPO_PAIRS = get_args(DPOPairs)
CHECKPOINT_EXTRAS = ("optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin",
                     "latest", "zero_to_fp32.py")


# --------------------------------------------------------------------------- small pure helpers

def sequences_per_prompt(algo: str, ranking_len: int) -> int:
    """How many sequences one training example puts through the model: SFT 1, PRO n, DPO 2."""
    return {"sft": 1, "pro": ranking_len, "dpo": 2}[algo]


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def batch_plan(train_cfg, algo: str, ranking_len: int, world: int | None = None) -> tuple[int, int]:
    """``(per_device_batch, grad_accum)`` with per_device x grad_accum x world = prompts_per_step."""
    world = world_size() if world is None else world
    by_n = {int(k): int(v) for k, v in (train_cfg.per_device_batch_by_n or {}).items()}
    per_device = by_n.get(sequences_per_prompt(algo, ranking_len), train_cfg.per_device_train_batch_size)
    if per_device < 1 or train_cfg.prompts_per_step % (per_device * world):
        raise ValueError(f"train.prompts_per_step={train_cfg.prompts_per_step} is not a multiple of the per-device "
                         f"batch {per_device} x {world} process(es) ({algo}, n={ranking_len}); change "
                         "train.per_device_train_batch_size / per_device_batch_by_n or the number of processes")
    return per_device, train_cfg.prompts_per_step // (per_device * world)


def ranking_pairs(n: int, how: str = "best-vs-rest") -> list[tuple[int, int]]:
    """(chosen, rejected) index pairs of an n-ranking (best first) for DPO."""
    if how == "best-vs-rest":
        return [(0, j) for j in range(1, n)]
    if how == "adjacent":
        return [(i, i + 1) for i in range(n - 1)]
    if how == "all":
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    raise ValueError(f"train.dpo_pairs={how!r}: choose one of {DPO_PAIRS}")


def ranking_record(r: Any) -> dict:
    """A ranking (``divscale.data.hh.Ranking`` or dict) as a plain dict with the fields training uses."""
    def get(name, default=None):
        return r.get(name, default) if isinstance(r, dict) else getattr(r, name, default)

    responses = list(get("responses"))
    rewards = get("rewards") or [None] * len(responses)
    return {"id": str(get("id", "")), "prompt": get("prompt"), "responses": responses,
            "rewards": [math.nan if x is None else float(x) for x in rewards]}


def policy_fingerprint(model, tokenizer, max_params: int = 200_000_000) -> str:
    """Identify an initial policy: its config and vocab, plus its weights when small enough to hash quickly."""
    n = sum(p.numel() for p in model.parameters())
    parts = [model.config.to_json_string(use_diff=False), len(tokenizer), n]
    parts.append(weights_sha256(model) if n <= max_params else getattr(model.config, "_name_or_path", ""))
    return sha256_json(parts)


def policy_texts(pool) -> list[str]:
    """The texts a tiny-gpt policy's tokenizer and warm-up see: each pool dialogue, prompt + " " + chosen."""
    return [p + " " + c for p, c in zip(pool["prompt"], pool["chosen"])]


def tiny_gpt_policy_id(policy_cfg, texts: Sequence[str]) -> str:
    """A cached tiny-gpt policy's identity for run keys: the content hash of its warmed-up weights."""
    from divscale.models.tiny_gpt import policy_cache_path
    from divscale.provenance import file_sha256

    return f"tiny-gpt:{file_sha256(policy_cache_path(policy_cfg, texts) / 'model.safetensors', length=16)}"


def study_policy(recipe: Recipe, progress: bool = False):
    """``((model, tokenizer), policy_id)``: a recipe's initial policy -- its tiny-gpt (tokenizer and warm-up on the
    recipe's pool dialogues, built once and cached) or its hub / local model."""
    from divscale.data.hh import load_splits
    from divscale.models.tiny_gpt import load_policy

    if recipe.policy.model != "tiny-gpt":
        return load_policy(recipe.policy), f"hub:{recipe.policy.model}"
    pool = load_splits(recipe.data)["pool"]
    texts = policy_texts(pool.select_columns(["prompt", "chosen"]).to_dict() if hasattr(pool, "select_columns")
                         else pool)
    policy = load_policy(recipe.policy, texts, progress=progress)
    return policy, tiny_gpt_policy_id(recipe.policy, texts)


# --------------------------------------------------------------------------- logging and dev validation

class RunLog:
    """``metrics.jsonl`` (one JSON record per event) and ``train.log`` (the same, readable) in a run folder."""

    def __init__(self, folder: Path, enabled: bool = True):
        self.metrics, self.text_log, self.enabled = folder / "metrics.jsonl", folder / "train.log", enabled

    def records(self) -> list[dict]:
        if not self.metrics.exists():
            return []
        out = []
        for line in self.metrics.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:      # a torn last line from a killed run
                break
        return out

    def truncate(self, max_step: int) -> None:
        """Keep only records up to ``max_step`` (a resumed run replays the steps after its checkpoint)."""
        if self.enabled:
            kept = [r for r in self.records() if r.get("step", 0) <= max_step]
            atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.metrics, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        shown = " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
        self.text(shown)

    def text(self, line: str) -> None:
        if self.enabled:
            with open(self.text_log, "a", encoding="utf-8") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


class MetricsCallback(TrainerCallback):
    """Write every Trainer log (training loss, loss parts, lr, grad norm) to the run's metrics."""

    def __init__(self, log: RunLog):
        self.log = log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.log.write({"step": state.global_step, **{k: v for k, v in logs.items() if k != "total_flos"}})


class QuietProgress(ProgressCallback):
    """The training bar shows the latest loss; the per-step records go to metrics.jsonl only."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4g}")


def dev_reward(model, tokenizer, prompts: Sequence[str], rm, max_new_tokens: int = 128, max_prompt_tokens: int = 384,
               batch_size: int = 28) -> tuple[float, list[str]]:
    """Greedy responses to the dev prompts and their mean sigmoid(RM_train logit) (the official validation)."""
    import numpy as np
    import torch

    from divscale.models.generation import format_prompt, generate

    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            responses = generate(model, tokenizer, [format_prompt(p, tokenizer) for p in prompts],
                                 max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 max_prompt_tokens=max_prompt_tokens)
    finally:
        model.train(was_training)
    logits = np.asarray(rm.score(list(prompts), responses), dtype=np.float64).reshape(-1)
    if logits.size != len(prompts):
        raise ValueError(f"rm_train.score returned {logits.size} scores for {len(prompts)} dev responses")
    return float(np.mean(1.0 / (1.0 + np.exp(-logits)))), responses


class DevRewardCallback(TrainerCallback):
    """Validate on dev every ``every`` steps and at the last step; record the best step in the Trainer state.

    ``state.best_global_step`` / ``state.best_metric`` are saved with every checkpoint (so a
    resumed run remembers them), and the Trainer's checkpoint rotation never deletes the best
    checkpoint. Step 0 is logged with ``selectable: false``. Under several processes only the main one answers and
    scores (the others wait for its verdict), so only it loads RM_train's weights (an OpenAssistant RM loads them at
    its first score).
    """

    def __init__(self, tokenizer, prompts: Sequence[str], rm, every: int, log: RunLog, max_new_tokens: int = 128,
                 max_prompt_tokens: int = 384, batch_size: int = 28):
        if every < 1:
            raise ValueError(f"train.eval_every must be >= 1, got {every}")
        self.tokenizer, self.prompts, self.rm, self.every, self.log = tokenizer, list(prompts), rm, every, log
        self.gen = {"max_new_tokens": max_new_tokens, "max_prompt_tokens": max_prompt_tokens, "batch_size": batch_size}

    def _evaluate(self, args, state, model, selectable: bool) -> float:
        reward, example = None, ""
        if state.is_world_process_zero:
            start = time.time()
            reward, responses = dev_reward(model, self.tokenizer, self.prompts, self.rm, **self.gen)
            example = responses[0] if responses else ""
            self.log.write({"step": state.global_step, "dev_reward": reward, "selectable": selectable,
                            "n_dev": len(self.prompts), "dev_seconds": round(time.time() - start, 2)})
            self.log.text(f"  dev example @ {state.global_step}: {example[:200]!r}")
        if args.world_size > 1:                       # the other processes wait for the main one's verdict
            from accelerate.utils import broadcast_object_list

            reward = broadcast_object_list([reward])[0]
        return reward

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self._evaluate(args, state, model, selectable=False)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step % self.every and step < state.max_steps:
            return
        reward = self._evaluate(args, state, model, selectable=True)
        if state.best_metric is None or reward > state.best_metric:
            state.best_metric, state.best_global_step = reward, step
        control.should_save = True                    # checkpoint every validated step (the final one too)


# --------------------------------------------------------------------------- a cell's trainer, from the recipe

def cell_lengths(recipe: Recipe, positions: int | None) -> tuple[int, int]:
    """A cell's ``(max_length, max_prompt_length)``: the recipe's, unset ones from the policy's positions."""
    t = recipe.train
    return sequence_lengths(t.max_length, t.max_prompt_length, positions, f"policy {recipe.policy.model}")


def training_arguments(recipe: Recipe, algo: str, ranking_len: int, seed: int, output_dir: str | os.PathLike,
                       positions: int | None = None, progress: bool = False, run_name: str | None = None):
    """The TrainingArguments of one cell, all from the recipe: :class:`RankingConfig` for SFT/PRO (the paper's
    summed NLL, the model's own dropout), TRL's ``DPOConfig`` for DPO. ``positions``: the policy's (for unset
    lengths)."""
    import torch

    t = recipe.train
    per_device, grad_accum = batch_plan(t, algo, ranking_len)
    max_length, max_prompt_length = cell_lengths(recipe, positions)
    lr = t.dpo_learning_rate if (algo == "dpo" and t.dpo_learning_rate is not None) else t.learning_rate
    common = {"output_dir": str(output_dir), "run_name": run_name, "max_steps": t.max_steps,
              "per_device_train_batch_size": per_device, "gradient_accumulation_steps": grad_accum,
              "learning_rate": lr, "weight_decay": t.weight_decay, "max_grad_norm": t.max_grad_norm,
              "lr_scheduler_type": "constant", "warmup_steps": 0, "optim": "adamw_torch", "seed": seed,
              "data_seed": seed, "logging_steps": 1, "logging_nan_inf_filter": False, "save_strategy": "steps",
              "save_steps": t.eval_every, "save_total_limit": 1, "bf16": t.bf16,
              "use_cpu": not torch.cuda.is_available(), "report_to": "none", "disable_tqdm": not progress,
              "ddp_timeout": 5400}
    if algo in ("sft", "pro"):
        return RankingConfig(**common, loss_type=[algo], sft_weight=t.sft_weight,
                             use_temperature=algo == "pro" and t.use_temperature, sft_reduction="sequence_sum",
                             max_length=max_length, max_prompt_length=max_prompt_length, share_prompt=True,
                             disable_dropout=False, remove_unused_columns=False, loss_balance_steps=20)
    from trl import DPOConfig

    return DPOConfig(**common, beta=t.beta, max_length=max_length, precompute_ref_log_probs=False,
                     activation_checkpointing=False)


def build_trainer(recipe: Recipe, algo: str, ranking_len: int, seed: int, model, tokenizer, rankings: list[dict],
                  output_dir: Path, callbacks: Sequence = (), progress: bool = False, run_name: str | None = None):
    """The Trainer for one cell: :class:`RankingTrainer` for SFT/PRO, TRL's ``DPOTrainer`` for DPO."""
    from datasets import Dataset

    from divscale.data.ranked import RANKED_FEATURES

    args = training_arguments(recipe, algo, ranking_len, seed, output_dir, model_positions(model), progress, run_name)
    if algo in ("sft", "pro"):
        data = Dataset.from_list(ranked_rows(rankings, ranking_len), features=RANKED_FEATURES)
        return RankingTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                              callbacks=list(callbacks))

    from trl import DPOTrainer

    from divscale.train.trainer import DivergenceGuard

    class RankingDPOTrainer(DivergenceGuard, DPOTrainer):
        def get_decay_parameter_names(self, model):     # weight decay on every parameter, as for SFT/PRO
            return [name for name, _ in model.named_parameters()]

    check_trainable_dtype(model, args)
    collator = RankingCollator(tokenizer, args.max_length, cell_lengths(recipe, model_positions(model))[1])
    prompts = collator.prompt_texts([r["prompt"] for r in rankings])   # left-truncated as for SFT/PRO
    pairs = [{"prompt": p, "chosen": " " + r["responses"][i], "rejected": " " + r["responses"][j]}
             for p, r in zip(prompts, rankings) for i, j in ranking_pairs(ranking_len, recipe.train.dpo_pairs)]
    ref_model = copy.deepcopy(model)
    return RankingDPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=Dataset.from_list(pairs),
                             processing_class=tokenizer, callbacks=list(callbacks))


# --------------------------------------------------------------------------- one run folder

def last_complete_checkpoint(folder: Path, clean: bool = False) -> Path | None:
    """The newest ``checkpoint-N`` that was fully written (the Trainer writes trainer_state.json last);
    with ``clean``, half-written newer ones (a kill during saving) are removed."""
    if not folder.exists():
        return None
    ckpts = sorted((p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]))
    while ckpts and not (ckpts[-1] / "trainer_state.json").exists():
        broken = ckpts.pop()
        if clean:
            shutil.rmtree(broken, ignore_errors=True)
    return ckpts[-1] if ckpts else None


def _copy_weights(checkpoint: Path, out: Path) -> None:
    """Model weights (safetensors), config and tokenizer files of a Trainer checkpoint; no optimizer state."""
    out.mkdir(parents=True)
    for f in checkpoint.iterdir():
        if f.is_file() and f.name not in CHECKPOINT_EXTRAS and not f.name.startswith("rng_state"):
            shutil.copy2(f, out / f.name)
    if not any(out.glob("*.safetensors")):
        raise RuntimeError(f"{checkpoint}: no safetensors weights to copy into best/")


def _barrier() -> None:
    if world_size() > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def set_model_max_length(folder: Path, positions: int | None) -> None:
    """The saved tokenizer's ``model_max_length`` is the model's positions (a tokenizer trained from scratch says
    10^30); its chat template, if it had one, is saved beside it by the Trainer."""
    path = folder / "tokenizer_config.json"
    if positions is None or not path.exists():
        return
    config = json.loads(path.read_text())
    if config.get("model_max_length") != positions:
        atomic_write_json(path, {**config, "model_max_length": positions})


def execute_run(run_dir: Path, config: dict, build: Callable[[Path, list], Any], start_line: str,
                result: dict, progress: bool = False) -> Path:
    """Train into ``run_dir`` (module docstring: the folder, its files, resume, reuse) and return it.

    ``build(trainer_dir, callbacks)`` returns the Trainer (it loads the policy, so a reused run never does);
    ``result``: run-specific fields of result.json. Two processes asking for the same run (a grid cell and 07's
    base set under ``make -j``) share a lock: one trains, the other reuses the finished run.
    """
    if (run_dir / "DONE").exists():
        return run_dir
    if world_size() > 1:
        return _execute(run_dir, config, build, start_line, result, progress)
    with io.file_lock(run_dir):
        if (run_dir / "DONE").exists():
            return run_dir
        return _execute(run_dir, config, build, start_line, result, progress)


def _execute(run_dir, config, build, start_line, result, progress) -> Path:
    work = run_dir.with_name(run_dir.name + ".partial")
    main = int(os.environ.get("RANK", "0")) == 0
    if (work / "DONE").exists():                       # killed between completion and the final rename
        if main:
            os.replace(work, run_dir)
        _barrier()
        return run_dir
    log = RunLog(work, enabled=main)
    if main:
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_json(work / "config.json", config)
        checkpoint = last_complete_checkpoint(work / "trainer", clean=True)
        log.truncate(int(checkpoint.name.split("-")[-1]) if checkpoint else -1)
        log.text(f"resume from {checkpoint.name}" if checkpoint else f"start {run_dir.name}: {start_line}")
    _barrier()
    checkpoint = last_complete_checkpoint(work / "trainer")

    trainer = build(work / "trainer", [MetricsCallback(log)])
    trainer.remove_callback(PrinterCallback)            # metrics.jsonl / train.log hold every record
    if progress:                                        # a bar with the loss, not one printed dict per step
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(QuietProgress())
    start = time.time()
    with deterministic(1):       # one thread + deterministic kernels: same weights whatever the core count
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    state = trainer.state
    best_step = state.best_global_step
    if not best_step:                                  # no dev validation: the last step, as the official code
        trainer.save_model(str(work / "trainer" / "final"))      # every process (a collective under ZeRO-3)
    _barrier()

    if main:
        with atomic_path(work / "best") as tmp:
            _copy_weights(work / "trainer" / (f"checkpoint-{best_step}" if best_step else "final"), tmp)
            set_model_max_length(Path(tmp), model_positions(trainer.model))
        records = log.records()
        losses = [r["loss"] for r in records if "loss" in r]
        atomic_write_json(work / "result.json", {
            "run": run_dir.name, **result, "steps": state.global_step, "selection": "dev" if best_step else "last",
            "best_step": best_step or state.global_step, "best_dev_reward": state.best_metric,
            "dev_rewards": {r["step"]: r["dev_reward"] for r in records if "dev_reward" in r},
            "first_train_loss": losses[0] if losses else None, "final_train_loss": losses[-1] if losses else None,
            "train_runtime_s": round(time.time() - start, 2), "resumed_from": checkpoint.name if checkpoint else None,
            "n_params": sum(p.numel() for p in trainer.model.parameters()),
            "final_sha256": weights_sha256(trainer.model), "metrics": output.metrics,
            "loss_balance": loss_balance_summary(records),
            "finished": datetime.now(timezone.utc).isoformat(timespec="milliseconds")})
        shutil.rmtree(work / "trainer", ignore_errors=True)        # optimizer states are no longer needed
        atomic_write_text(work / "DONE", "")
        os.replace(work, run_dir)
    _barrier()
    return run_dir


def _initial_policy(policy, copy_policy: bool = True):
    model, tokenizer = policy() if callable(policy) else policy
    if copy_policy and not callable(policy):
        model = copy.deepcopy(model)
    return model, tokenizer


# --------------------------------------------------------------------------- a grid cell

def run_config(recipe: Recipe, algo: str, ranking_len: int, n_prompts: int, seed: int, rankings: list[dict],
               dev_prompts: Sequence[str] | None, policy_id: str, rm_id: str) -> dict:
    """Everything that determines a cell's result (and nothing that merely enumerates the grid)."""
    train = {k: v for k, v in asdict(recipe.train).items() if k not in ("algos", "seeds", "num_processes")}
    data = {k: v for k, v in asdict(recipe.data).items() if k not in ("sizes", "ranking_lengths")}
    return {"kind": "cell", "algo": algo, "ranking_len": ranking_len, "n_prompts": n_prompts, "seed": seed,
            "recipe": recipe.name, "data": data, "ranking": asdict(recipe.ranking),
            "reward": {k: v for k, v in asdict(recipe.reward).items() if k != "test_model"},
            "policy": asdict(recipe.policy), "train": train,
            "inputs": {"rankings_sha256": sha256_json(rankings), "n_rankings": len(rankings),
                       "dev_sha256": sha256_json(list(dev_prompts or [])), "n_dev": len(dev_prompts or []),
                       "policy": policy_id, "rm_train": rm_id},
            "code": code_version("train")}      # the source of the training code (divscale.provenance.STEPS)


def run_name(config: dict) -> str:
    hashed = {k: v for k, v in config.items() if k != "recipe"}    # same settings under another recipe name: same run
    return (f"{config['algo']}-n{config['ranking_len']}-k{config['n_prompts']}-s{config['seed']}-"
            f"{config_hash(hashed, length=12)}")


def train_run(recipe: Recipe, algo: str, ranking_len: int, n_prompts: int, seed: int, grid=None, policy=None,
              rm_train=None, dev_prompts: Sequence[str] | None = None, runs_dir: str | os.PathLike = paths.RUNS_DIR,
              policy_id: str | None = None, copy_policy: bool = True, callbacks: Sequence = (),
              progress: bool = False) -> Path:
    """Train one cell and return its run directory (see the module docstring for its contents).

    ``grid``: ``{(n, k): [rankings]}`` (``divscale.data.subsets.build_grid``) or the cell's list of
    rankings. ``policy``: ``(model, tokenizer)`` or a zero-argument callable returning it (called
    only if the run must actually train; then give ``policy_id``, a string identifying the
    initial weights for the run hash). ``rm_train`` (anything with ``score(prompts, responses)``)
    and ``dev_prompts``: dev validation; without them the last step is kept. The policy is
    deep-copied unless ``copy_policy=False``. ``callbacks``: extra ``TrainerCallback``s.
    """
    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}: choose one of {ALGOS}")
    if ranking_len < (1 if algo == "sft" else 2):
        raise ValueError(f"{algo} needs a ranking length >= {1 if algo == 'sft' else 2}, got {ranking_len}")
    if grid is None or policy is None:
        raise ValueError("train_run needs the cell's rankings (grid=) and the policy (policy=); "
                         "divscale.study.pipeline.train_cell() builds them from the recipe")
    cell = grid.get((ranking_len, n_prompts)) if isinstance(grid, dict) else grid
    if cell is None:
        raise ValueError(f"no grid cell (n={ranking_len}, k={n_prompts}); the grid has {sorted(grid)}")
    rankings = [ranking_record(r) for r in cell]
    if len(rankings) != n_prompts:
        raise ValueError(f"cell (n={ranking_len}, k={n_prompts}) holds {len(rankings)} rankings, expected {n_prompts}")
    for r in rankings:
        if len(r["responses"]) < ranking_len:
            raise DataError(f"ranking {r['id']!r} has {len(r['responses'])} responses; n={ranking_len} needs "
                            f"{ranking_len}")
        if algo == "pro" and recipe.train.use_temperature:
            rewards = r["rewards"][:ranking_len]
            if any(map(math.isnan, rewards)):
                raise DataError(f"ranking {r['id']!r} has no RM_train rewards, which PRO's temperature needs; rank "
                                "the pool with RM_train (divscale rankings) or set train.use_temperature=false")
            if any(a < b - 1e-6 for a, b in itertools.pairwise(rewards)):
                raise DataError(f"ranking {r['id']!r}: rewards {rewards} are not sorted best first")
    batch_plan(recipe.train, algo, ranking_len)            # fail now, not after the run folder exists
    if algo == "dpo":
        ranking_pairs(ranking_len, recipe.train.dpo_pairs)
    if recipe.train.eval_every < 1 or recipe.train.max_steps < 1:
        raise ValueError("train.max_steps and train.eval_every must be >= 1")
    if (rm_train is None) != (not dev_prompts):
        raise ValueError("give both rm_train and dev_prompts (dev validation) or neither (keep the last step)")
    if policy_id is None:
        if callable(policy):
            raise ValueError("a lazily loaded policy needs policy_id= (an identifier of its initial weights)")
        policy_id = policy_fingerprint(*policy)
    rm_id = getattr(rm_train, "fingerprint", None) or type(rm_train).__name__

    config = run_config(recipe, algo, ranking_len, n_prompts, seed, rankings, dev_prompts, policy_id, rm_id)
    run_dir = Path(runs_dir) / "train" / run_name(config)

    def build(trainer_dir: Path, cbs: list):
        model, tokenizer = _initial_policy(policy, copy_policy)
        if rm_train is not None:
            t = recipe.train
            cbs.append(DevRewardCallback(tokenizer, dev_prompts, rm_train, t.eval_every, cbs[0].log,
                                         max_new_tokens=t.dev_max_new_tokens,
                                         max_prompt_tokens=cell_lengths(recipe, model_positions(model))[1],
                                         batch_size=t.dev_batch_size))
        return build_trainer(recipe, algo, ranking_len, seed, model, tokenizer, rankings, trainer_dir,
                             callbacks=[*cbs, *callbacks], progress=progress, run_name=run_dir.name)

    return execute_run(run_dir, config, build, f"{algo} n={ranking_len} k={n_prompts} seed={seed}",
                       {"algo": algo, "ranking_len": ranking_len, "n_prompts": n_prompts, "seed": seed}, progress)


# --------------------------------------------------------------------------- anyone's ranked data

def _slug(text: str) -> str:
    import re

    name = Path(str(text).rstrip("/")).name
    name = re.sub(r"\.(jsonl|json|gz)$", "", re.sub(r"\.(jsonl|json)\.gz$", "", name))
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:40] or "data"


def train_ranked(dataset, loss_type, policy, policy_id: str, seed: int = 42,
                 runs_dir: str | os.PathLike | None = None, data_name: str = "data", progress: bool = False,
                 ref_model=None, callbacks: Sequence = (), positions: int | None = None, model_name: str | None = None,
                 recipe_name: str | None = None, split: str | None = None, limit: int | None = None,
                 held_out_ids: Sequence[str] = (), output_dir: str | os.PathLike | None = None, **options) -> Path:
    """Train ``loss_type`` (a loss name or a list, see :class:`divscale.train.options.RankingOptions`) on a canonical
    ranked ``datasets.Dataset`` into a run folder (module docstring; the contract of ``divscale evaluate --run``)
    and return it.

    ``policy``: ``(model, tokenizer)`` (deep-copied) or a zero-argument callable returning one (called only if the
    run must train; then give ``positions``, the model's positions, for its default lengths); ``policy_id``
    identifies the initial weights in the run hash; ``model_name`` / ``recipe_name``: how
    :func:`load_initial_policy` rebuilds them (``tiny-gpt`` + a recipe, a folder or a hub id). ``split``, ``limit``,
    ``held_out_ids``: recorded in config.json's data section. ``options``: :class:`RankingOptions` /
    TrainingArguments fields (``max_steps``, ``per_device_train_batch_size``, ``learning_rate``, ``beta``, ...).
    """
    from divscale.train.options import RankingOptions, translate_deprecated

    options = translate_deprecated({"loss_type": loss_type, **options})
    if not callable(policy) and positions is None:
        positions = model_positions(policy[0])
    settings = asdict(RankingOptions(**{k: v for k, v in options.items() if k in RankingOptions.__dataclass_fields__}))
    extra = {k: v for k, v in options.items() if k not in RankingOptions.__dataclass_fields__}
    settings.update(extra)
    settings["max_length"], settings["max_prompt_length"] = sequence_lengths(
        settings["max_length"], settings["max_prompt_length"], positions, model_name or policy_id)
    settings["seed"] = seed
    settings.pop("output_dir", None)
    rows = dataset.to_list()
    config = {"kind": "ranked",
              "data": {"source": str(data_name), "split": split, "limit": limit, "held_out_ids": list(held_out_ids),
                       "n_train": len(rows), "rows_sha256": sha256_json(rows)},
              "model": {"name": model_name or policy_id, "recipe": recipe_name, "policy_id": policy_id},
              "train": settings, "seed": seed, "code": code_version("train")}
    losses = "+".join(settings["loss_type"])
    if output_dir is not None:
        run_dir = Path(output_dir)
        if run_dir.exists() and not (run_dir / "DONE").exists():
            raise FileExistsError(f"{run_dir} exists and is not a finished run; give an empty or new output_dir")
        if (run_dir / "DONE").exists() and json.loads((run_dir / "config.json").read_text()) != config:
            raise FileExistsError(f"{run_dir} holds a finished run with other settings; give another output_dir")
    else:
        run_dir = Path(runs_dir or paths.RUNS_DIR) / "train" / (
            f"{losses}-{_slug(data_name)}-s{seed}-{config_hash(config, length=12)}")

    def build(trainer_dir: Path, cbs: list):
        import torch

        model, tokenizer = _initial_policy(policy)
        args = RankingConfig(**{**settings, "output_dir": str(trainer_dir), "run_name": run_dir.name,
                                "data_seed": seed, "save_strategy": "no", "disable_tqdm": not progress,
                                "use_cpu": not torch.cuda.is_available()})
        return RankingTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[*cbs, *callbacks])

    return execute_run(run_dir, config, build, f"{losses} on {data_name} ({len(rows)} rows), seed {seed}",
                       {"loss_type": settings["loss_type"], "data": str(data_name), "n_rows": len(rows), "seed": seed},
                       progress)


# --------------------------------------------------------------------------- a run's initial policy

def load_initial_policy(run_dir: str | os.PathLike, progress: bool = False, device: str | None = "auto"):
    """``(model, tokenizer)``: the policy a run (grid cell or own data) started from, rebuilt from its config.json
    (a tiny-gpt from its recipe's data and policy settings -- checked against the recorded weights hash -- or the
    hub id / folder it named), on ``device`` (:func:`divscale.models.hub.resolve_device`)."""
    from divscale.config import DataConfig, PolicyConfig, build_config, load_recipe
    from divscale.data.hh import load_splits
    from divscale.models.hub import load_causal_lm
    from divscale.models.tiny_gpt import load_policy

    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: not a divscale run folder")
    config = json.loads(path.read_text())
    if config.get("kind") == "ranked":
        model = config["model"]
        if model["name"] != "tiny-gpt":
            return load_causal_lm(model["name"], device=device)
        recipe = load_recipe(model.get("recipe") or "cpu")
        policy_cfg, data_cfg, expected = recipe.policy, recipe.data, model.get("policy_id")
    else:
        policy_cfg = build_config(PolicyConfig, config["policy"], f"{path}", "policy.")
        data_cfg = build_config(DataConfig, config["data"], f"{path}", "data.")
        expected = config.get("inputs", {}).get("policy")
        if policy_cfg.model != "tiny-gpt":
            return load_policy(policy_cfg, device=device)
    pool = load_splits(data_cfg)["pool"]
    texts = policy_texts(pool.select_columns(["prompt", "chosen"]).to_dict())
    policy = load_policy(policy_cfg, texts, progress=progress, device=device)
    found = tiny_gpt_policy_id(policy_cfg, texts)
    if expected and expected.startswith("tiny-gpt:") and expected != found:
        raise DataError(f"{run_dir}: the rebuilt initial policy ({found}) is not the one the run started from "
                        f"({expected}); its data or the tiny-gpt code changed since")
    return policy


# --------------------------------------------------------------------------- launching a cell

DEFAULT_ACCELERATE_CONFIG = "accelerate/ddp.yaml"     # several processes, no DeepSpeed (recipes/accelerate/)


def launches(recipe: Recipe) -> bool:
    """Whether a cell of ``recipe`` trains under ``accelerate launch`` (several processes, or an accelerate config:
    the paper recipes) rather than in this process."""
    return recipe.train.num_processes > 1 or bool(recipe.train.accelerate_config)


def launch_command(recipe: Recipe, recipe_arg: str, algo: str, ranking_len: int, n_prompts: int, seed: int,
                   overrides: Sequence[str] = (), runs_dir: str | os.PathLike | None = None,
                   progress: bool = False) -> list[str]:
    """The command that trains a cell: ``accelerate launch --config_file <recipe's accelerate config> --num_processes
    <train.num_processes> -m divscale.cli train ...`` for a recipe that :func:`launches` (the config defaults to
    :data:`DEFAULT_ACCELERATE_CONFIG`), else ``python -m divscale.cli train ...``."""
    args = ["-m", "divscale.cli", "train", "--recipe", recipe_arg, "--algo", algo, "--ranking-len", str(ranking_len),
            "--prompts", str(n_prompts), "--seed", str(seed), *[x for o in overrides for x in ("--set", o)]]
    if runs_dir is not None:
        args += ["--runs-dir", str(runs_dir)]
    if progress:
        args.append("--progress")
    if launches(recipe):
        cfg = Path(recipe.train.accelerate_config or DEFAULT_ACCELERATE_CONFIG)
        cfg = cfg if cfg.is_absolute() else paths.RECIPES_DIR / cfg
        return ["accelerate", "launch", "--config_file", str(cfg), "--num_processes",
                str(recipe.train.num_processes), *args]
    return [sys.executable, *args]


def launch_cell(recipe: Recipe, algo: str, ranking_len: int, n_prompts: int, seed: int,
                runs_dir: str | os.PathLike = paths.RUNS_DIR, progress: bool = False) -> Path:
    """Train one cell under :func:`launch_command` and return its run directory. The launched processes read the
    recipe from a file written here (``<runs_dir>/launch/<name>-<hash>.yaml``), so they train exactly ``recipe``,
    overrides included; the run directory is the one ``divscale train`` prints."""
    import yaml

    spec = Path(runs_dir) / "launch" / f"{recipe.name}-{recipe.hash()}.yaml"
    spec.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(spec, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    cmd = launch_command(recipe, str(spec), algo, ranking_len, n_prompts, seed, runs_dir=runs_dir, progress=progress)
    if cmd[0] == "accelerate":                    # a free rendezvous port: two launches on a node never collide
        cmd[2:2] = ["--main_process_port", str(_free_port())]
    lines = run_launched(cmd)
    done = [Path(x) for x in reversed(lines) if x.strip() and (Path(x.strip()) / "DONE").exists()]
    if not done:
        raise RuntimeError(f"{' '.join(cmd)} finished without printing a completed run directory; its last lines: "
                           f"{lines[-5:]}")
    return Path(str(done[0]).strip())


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# run in the launched child before it becomes the command: SIGTERM it when the process that launched it dies, however
# that dies (a killed grid or notebook kernel never leaves a training running; Linux's PR_SET_PDEATHSIG survives exec)
_WITH_PARENT = ("import contextlib, ctypes, os, signal, sys\n"
                "with contextlib.suppress(OSError, AttributeError):\n"
                "    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)\n"
                "os.execvp(sys.argv[1], sys.argv[1:])")


def run_launched(cmd: Sequence[str], grace_s: float = 30.0) -> list[str]:
    """Run a launched training command from the project root to its end, its output passed through; return its
    stdout lines. It runs in its own session and dies with this process however this one dies (``_WITH_PARENT``:
    a SIGKILLed kernel too); an interrupt or an error here stops it and all its ranks
    (:func:`divscale.signals.terminate_descendants`) before it propagates, as a SIGINT/SIGTERM of a ``divscale``
    command does. A non-zero exit is a :class:`RuntimeError` naming the command (its own error is in the output
    above)."""
    import shlex
    import subprocess

    cmd = list(cmd)
    if cmd[0] == "accelerate":                      # the accelerate of this interpreter, PATH or not
        beside = Path(sys.executable).parent / "accelerate"
        cmd[0] = str(beside) if beside.exists() else (shutil.which("accelerate") or "accelerate")
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(paths.ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", _WITH_PARENT, *cmd], cwd=paths.ROOT, env=env,
                            stdout=subprocess.PIPE, text=True, bufsize=1, start_new_session=True)
    lines: list[str] = []
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line.rstrip("\n"))
        code = proc.wait()
    except BaseException:
        from divscale.signals import terminate_descendants

        terminate_descendants(grace_s)
        raise
    if code:
        raise RuntimeError(f"{shlex.join(cmd)} exited with code {code} (its error is in the output above)")
    return lines
