"""Fine-tune one grid cell -- (algorithm, ranking length n, #prompts k, seed) -- into a run directory.

The paper's protocol (spec §3.4), whatever the subset size:

- a fixed step budget (4000 steps of 112 prompts): per-device batch x grad accumulation x
  world size = ``train.prompts_per_step``; the per-device batch may depend on how many
  sequences one prompt puts through the model (``train.per_device_batch_by_n``: SFT 1, PRO n,
  DPO 2 -- the paper halves it for PRO n=4);
- constant LR, AdamW (weight decay 0.01 on every parameter), gradient clipping 1.0, no warmup;
- every ``eval_every`` steps (and at the last step) greedy-decode the dev prompts, score them
  with RM_train (reward = mean sigmoid of the logits) and keep the best step; step 0 is
  evaluated and logged but cannot be chosen. The best weights end up in ``best/`` (safetensors
  + tokenizer), which is what gets evaluated on the test set.

Algorithms: ``sft`` (top-1 response of each n-ranking, summed NLL: the paper's SFT baseline),
``pro`` (:mod:`divscale.train.pro`), and ``dpo`` -- not in the paper, an extra baseline through TRL's
``DPOTrainer``. TRL has no listwise loss; its maintainers' suggested workaround (trl#1831) is to
expand a ranking into pairs. ``train.dpo_pairs`` picks which: ``best-vs-rest`` (y1 > yi for
every i > 1, n-1 pairs, PRO's first softmax term as pairs; default), ``adjacent`` (yi > yi+1)
or ``all`` (n(n-1)/2 pairs). For DPO, ``prompts_per_step`` counts pairs. TRL appends EOS to
``chosen``/``rejected``, so unlike SFT/PRO the DPO policy is also trained to emit EOS.

Run directory ``runs/train/<algo>-n<n>-k<k>-s<seed>-<hash>/``, keyed by a hash of everything
that determines the result (recipe sections data/ranking/reward/policy/train, the cell, and
content hashes of the cell's rankings, the dev prompts and the initial policy)::

    config.json      the full configuration that was hashed
    metrics.jsonl    one record per step (loss, loss parts, lr, grad norm) and per dev evaluation
    train.log        the same, human readable
    best/            best-on-dev weights (safetensors) + tokenizer
    result.json      best step / dev reward, final loss, hash of the final weights, timings
    DONE             completion marker

It is built as ``<name>.partial/`` and renamed when complete, so a run directory without
``.partial`` is always whole, and a completed run is skipped on re-run. A killed run resumes
from its last complete Trainer checkpoint (written every ``eval_every`` steps; with the same
seed on CPU the final weights are bit-identical to an uninterrupted run).
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from transformers import PrinterCallback, TrainerCallback

from divscale import io, paths
from divscale.config import Recipe, config_hash
from divscale.io import DataError, atomic_path, atomic_write_json, atomic_write_text
from divscale.provenance import code_version, deterministic
from divscale.train.pro import loss_balance_summary, record_field

ALGOS = ("sft", "pro", "dpo")
DPO_PAIRS = ("best-vs-rest", "adjacent", "all")
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
    per_device = by_n.get(sequences_per_prompt(algo, ranking_len), train_cfg.per_device_batch)
    if per_device < 1 or train_cfg.prompts_per_step % (per_device * world):
        raise ValueError(f"train.prompts_per_step={train_cfg.prompts_per_step} is not a multiple of the per-device "
                         f"batch {per_device} x {world} process(es) ({algo}, n={ranking_len}); change "
                         "train.per_device_batch(_by_n) or the number of processes")
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
    responses = list(record_field(r, "responses"))
    rewards = record_field(r, "rewards") or [None] * len(responses)
    return {"id": str(record_field(r, "id", "")), "prompt": record_field(r, "prompt"), "responses": responses,
            "rewards": [math.nan if x is None else float(x) for x in rewards]}


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def weights_sha256(model) -> str:
    """Hash of a model's parameters and buffers (name, dtype, shape, bytes), in name order."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def policy_fingerprint(model, tokenizer, max_params: int = 200_000_000) -> str:
    """Identify an initial policy: its config and vocab, plus its weights when small enough to hash quickly."""
    n = sum(p.numel() for p in model.parameters())
    parts = [model.config.to_json_string(use_diff=False), len(tokenizer), n]
    parts.append(weights_sha256(model) if n <= max_params else getattr(model.config, "_name_or_path", ""))
    return sha256_json(parts)


def policy_texts(pool) -> list[str]:
    """The texts a tiny-gpt policy's tokenizer and warm-up see: each pool dialogue, prompt + " " + chosen."""
    return [p + " " + c for p, c in zip(pool["prompt"], pool["chosen"])]


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
    """Write every Trainer log (training loss, PRO parts, lr, grad norm) to the run's metrics."""

    def __init__(self, log: RunLog):
        self.log = log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.log.write({"step": state.global_step, **{k: v for k, v in logs.items() if k != "total_flos"}})


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
    checkpoint. Step 0 is logged with ``selectable: false``.
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


# --------------------------------------------------------------------------- trainers

def _training_kwargs(recipe: Recipe, algo: str, ranking_len: int, seed: int, output_dir: Path,
                     progress: bool) -> dict:
    import torch

    t = recipe.train
    per_device, grad_accum = batch_plan(t, algo, ranking_len)
    lr = t.dpo_lr if (algo == "dpo" and t.dpo_lr is not None) else t.lr
    return {"output_dir": str(output_dir), "max_steps": t.max_steps, "per_device_train_batch_size": per_device,
            "gradient_accumulation_steps": grad_accum, "learning_rate": lr, "weight_decay": t.weight_decay,
            "max_grad_norm": t.max_grad_norm, "lr_scheduler_type": "constant", "warmup_steps": 0,
            "optim": "adamw_torch", "seed": seed, "data_seed": seed, "logging_steps": 1, "save_strategy": "steps",
            "save_steps": t.eval_every, "save_total_limit": 1, "bf16": t.bf16,
            "use_cpu": not torch.cuda.is_available(), "report_to": "none", "disable_tqdm": not progress,
            "ddp_timeout": 5400, "remove_unused_columns": False}


def build_trainer(recipe: Recipe, algo: str, ranking_len: int, seed: int, model, tokenizer, rankings: list[dict],
                  output_dir: Path, callbacks: Sequence = (), progress: bool = False):
    """The Trainer for one cell: :class:`divscale.train.pro.PROTrainer` for SFT/PRO, TRL's ``DPOTrainer`` for DPO."""
    from datasets import Dataset

    from divscale.train.pro import PROConfig, PROTrainer, RankingCollator

    t = recipe.train
    kwargs = _training_kwargs(recipe, algo, ranking_len, seed, output_dir, progress)
    if algo in ("sft", "pro"):
        args = PROConfig(**kwargs, ranking_len=1 if algo == "sft" else ranking_len, sft_weight=t.sft_weight,
                         use_temperature=t.use_temperature, block_size=t.block_size,
                         max_prompt_tokens=t.max_prompt_tokens)
        data = Dataset.from_list(rankings)
        return PROTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                          callbacks=list(callbacks))

    from trl import DPOConfig, DPOTrainer

    class RankingDPOTrainer(DPOTrainer):
        def get_decay_parameter_names(self, model):     # weight decay on every parameter, as for SFT/PRO
            return [name for name, _ in model.named_parameters()]

    collator = RankingCollator(tokenizer, 1, t.block_size, t.max_prompt_tokens)
    prompts = collator.prompt_texts([r["prompt"] for r in rankings])   # left-truncated as for SFT/PRO
    pairs = [{"prompt": p, "chosen": " " + r["responses"][i], "rejected": " " + r["responses"][j]}
             for p, r in zip(prompts, rankings) for i, j in ranking_pairs(ranking_len, t.dpo_pairs)]
    kwargs.pop("remove_unused_columns")
    args = DPOConfig(**kwargs, beta=t.dpo_beta, max_length=t.block_size, precompute_ref_log_probs=False,
                     activation_checkpointing=False)
    ref_model = copy.deepcopy(model)
    return RankingDPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=Dataset.from_list(pairs),
                             processing_class=tokenizer, callbacks=list(callbacks))


# --------------------------------------------------------------------------- run directories

def run_config(recipe: Recipe, algo: str, ranking_len: int, n_prompts: int, seed: int, rankings: list[dict],
               dev_prompts: Sequence[str] | None, policy_id: str, rm_id: str) -> dict:
    """Everything that determines a run's result (and nothing that merely enumerates the grid)."""
    train = {k: v for k, v in asdict(recipe.train).items() if k not in ("algos", "seeds", "num_processes")}
    data = {k: v for k, v in asdict(recipe.data).items() if k not in ("sizes", "ranking_lengths")}
    return {"algo": algo, "ranking_len": ranking_len, "n_prompts": n_prompts, "seed": seed,
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
    if (run_dir / "DONE").exists():
        return run_dir
    if world_size() == 1:
        # two processes asking for the same run (a grid cell and 07's base set, under `make -j`): one trains,
        # the other waits for it and reuses the finished run
        with _run_lock(run_dir):
            if (run_dir / "DONE").exists():
                return run_dir
            return _train(recipe, algo, ranking_len, n_prompts, seed, rankings, config, run_dir, policy, rm_train,
                          dev_prompts, copy_policy, callbacks, progress)
    return _train(recipe, algo, ranking_len, n_prompts, seed, rankings, config, run_dir, policy, rm_train,
                  dev_prompts, copy_policy, callbacks, progress)


def _run_lock(run_dir: Path):
    """An exclusive ``flock`` on ``<run_dir>.lock`` for the life of the block (released if the process dies)."""
    return io.file_lock(run_dir)


def _train(recipe, algo, ranking_len, n_prompts, seed, rankings, config, run_dir, policy, rm_train, dev_prompts,
           copy_policy, callbacks, progress) -> Path:
    """The body of :func:`train_run` once the run's folder is decided (and, on one process, locked)."""
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
        log.text(f"resume from {checkpoint.name}" if checkpoint else
                 f"start {run_dir.name}: {algo} n={ranking_len} k={n_prompts} seed={seed}")
    _barrier()
    checkpoint = last_complete_checkpoint(work / "trainer")

    model, tokenizer = policy() if callable(policy) else policy
    if copy_policy and not callable(policy):
        model = copy.deepcopy(model)
    cbs = [MetricsCallback(log)]
    if rm_train is not None:
        t = recipe.train
        cbs.append(DevRewardCallback(tokenizer, dev_prompts, rm_train, t.eval_every, log,
                                     max_new_tokens=t.dev_max_new_tokens, max_prompt_tokens=t.max_prompt_tokens,
                                     batch_size=t.dev_batch_size))
    trainer = build_trainer(recipe, algo, ranking_len, seed, model, tokenizer, rankings, work / "trainer",
                            callbacks=[*cbs, *callbacks], progress=progress)
    if not progress:
        trainer.remove_callback(PrinterCallback)       # the run's own log has every record
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
        losses = [r["loss"] for r in log.records() if "loss" in r]
        dev = {r["step"]: r["dev_reward"] for r in log.records() if "dev_reward" in r}
        atomic_write_json(work / "result.json", {
            "run": run_dir.name, "algo": algo, "ranking_len": ranking_len, "n_prompts": n_prompts, "seed": seed,
            "steps": state.global_step, "selection": "dev" if best_step else "last",
            "best_step": best_step or state.global_step, "best_dev_reward": state.best_metric,
            "dev_rewards": dev, "final_train_loss": losses[-1] if losses else None,
            "train_runtime_s": round(time.time() - start, 2), "resumed_from": checkpoint.name if checkpoint else None,
            "n_params": sum(p.numel() for p in trainer.model.parameters()),
            "final_sha256": weights_sha256(trainer.model), "metrics": output.metrics,
            "loss_balance": loss_balance_summary(log.records())})
        shutil.rmtree(work / "trainer", ignore_errors=True)        # optimizer states are no longer needed
        atomic_write_text(work / "DONE", "")
        os.replace(work, run_dir)
    _barrier()
    return run_dir


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
