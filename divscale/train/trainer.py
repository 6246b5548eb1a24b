"""Listwise preference training on anyone's ranked data: ``ListwiseConfig``, ``ListwiseTrainer`` and
``divscale train --data``.

``ListwiseTrainer`` is a ``transformers.Trainer`` whose ``compute_loss`` scores every completion of a row
(:func:`divscale.train.logprobs.completion_logprobs`, which encodes the prompt once for its K completions; a
naive one-sequence-per-completion path when that module is absent) and applies one of the losses of
:mod:`divscale.train.losses`:

- ``pro``: the paper's PRO (length-normalised scores; reward temperatures only with ``use_temperature`` and
  finite scores in every row), plus ``sft_weight * (n-1)^2 * L_SFT``;
- ``plackett_luce``: listwise DPO against a frozen reference model;
- ``all_pairs_dpo``: DPO averaged over every ordered pair (the "split into pairs" baseline);
- ``sft``: summed NLL of the best completion (the paper's SFT baseline).

For the DPO-style losses the reference model's log-probs are computed once per batch under
``torch.no_grad()`` (``ref_model=None``: a frozen copy of the initial policy, as TRL does).
``sft_weight`` (default: 0.05 for PRO, 0 otherwise) adds the best completion's summed NLL to the DPO-style
losses (unscaled) -- an RPO-style anchor.

Rows are read by :mod:`divscale.data.formats` (sorted best first, ties share a rank); rows with fewer
completions than the batch's widest are padded (``ranks`` -1, ``completion_mask`` False) and masked out of the
loss. Each completion is scored as ``prompt + " " + completion`` (the paper's joiner), no EOS.

``divscale train --data FILE_OR_HUB_ID --loss pro|plackett_luce|all_pairs_dpo|sft --model ID ...`` trains one
run outside the study's grid, into ``runs/train/<loss>-<data>-s<seed>-<hash>/`` laid out like the grid's
runs (``config.json``, ``metrics.jsonl``, ``train.log``, ``best/`` safetensors + tokenizer, ``result.json``,
``DONE``; built as ``.partial`` and renamed when complete; a complete run is not redone). The last step
is kept (there is no dev reward model for arbitrary data). ``--model tiny-gpt`` builds the project's small
GPT (tokenizer and warm-up on the data's own prompt + best completion texts, sized by ``--recipe``'s
policy section); any local folder or cached hub id works too.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import re
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import ProgressCallback, Trainer, TrainingArguments

from divscale.data.formats import RANKED_FEATURES, normalize_ranked
from divscale.train.losses import (
    LOSSES,
    all_pairs_dpo_loss,
    plackett_luce_loss,
    pro_ranked_loss,
    sft_nll_of_best,
)

log = logging.getLogger(__name__)
NEEDS_REF = ("plackett_luce", "all_pairs_dpo")


# --------------------------------------------------------------------------- log-probs

def _tokenize_pairs(tokenizer, prompts: list[str], completions: list[list[str]], max_prompt_length: int | None,
                    max_completion_length: int | None):
    with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if (tokenizer.bos_token_id is not None and len(with_special) > len(plain)
                                       and with_special[0] == tokenizer.bos_token_id) else []
    prompt_ids = []
    for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]:
        if max_prompt_length:
            ids = ids[-max(1, max_prompt_length - len(bos)):]        # keep the end of the conversation
        prompt_ids.append(bos + ids)
    flat = [c for cs in completions for c in cs]
    comp_ids = tokenizer(flat, add_special_tokens=False)["input_ids"]
    if max_completion_length:
        comp_ids = [ids[:max_completion_length] for ids in comp_ids]
    return prompt_ids, comp_ids


def naive_completion_logprobs(model, tokenizer, prompts: list[str], completions: list[list[str]],
                              max_prompt_length: int | None = None, max_completion_length: int | None = None):
    """(batch, K) summed completion log-probs and token counts, one full prompt+completion sequence per
    completion (all in one forward pass). Completion lists must all have length K."""
    from divscale.train.pro import sequence_logprobs

    k = len(completions[0])
    if any(len(cs) != k for cs in completions):
        raise ValueError("naive_completion_logprobs needs the same number of completions in every row")
    prompt_ids, comp_ids = _tokenize_pairs(tokenizer, prompts, completions, max_prompt_length,
                                           max_completion_length)
    seqs = [(prompt_ids[j // k], comp_ids[j]) for j in range(len(comp_ids))]
    if any(not c for _, c in seqs):
        raise ValueError("a completion has no tokens; drop empty completions")
    length = max(len(p) + len(c) for p, c in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(seqs), length), pad, dtype=torch.long)
    attn = torch.zeros_like(ids)
    resp = torch.zeros_like(ids)
    for j, (p, c) in enumerate(seqs):
        ids[j, :len(p) + len(c)] = torch.tensor(p + c)
        attn[j, :len(p) + len(c)] = 1
        resp[j, len(p):len(p) + len(c)] = 1
    device = next(model.parameters()).device
    logps, counts = sequence_logprobs(model, ids.to(device), attn.to(device), resp.to(device))
    return logps.view(len(prompts), k), counts.view(len(prompts), k)


def completion_logprobs(model, tokenizer, prompts, completions, share_prompt: bool = True,
                        max_prompt_length: int | None = None, max_completion_length: int | None = None):
    """``(logps, counts)``, each (batch, K) with K the longest row (shorter rows: 0 where they have no
    completion): :func:`divscale.train.logprobs.completion_logprobs` (the prompt encoded once per row) when that
    module is importable, else :func:`naive_completion_logprobs`."""
    try:
        from divscale.train.logprobs import completion_logprobs as shared
    except ImportError:
        shared = None
    if shared is not None:
        out = shared(model, tokenizer, prompts, completions, share_prompt=share_prompt,
                     max_prompt_length=max_prompt_length, max_completion_length=max_completion_length,
                     return_counts=True)
        logps, counts = out if isinstance(out, (tuple, list)) else (out, None)
        if counts is None:
            _, comp_ids = _tokenize_pairs(tokenizer, prompts, completions, max_prompt_length, max_completion_length)
            counts = torch.tensor([len(c) for c in comp_ids], device=logps.device).view(logps.shape)
        return logps, counts.to(logps.dtype)
    k = max(len(cs) for cs in completions)
    padded = [list(cs) + [cs[-1]] * (k - len(cs)) for cs in completions]       # copies, zeroed below
    logps, counts = naive_completion_logprobs(model, tokenizer, prompts, padded, max_prompt_length,
                                              max_completion_length)
    real = torch.tensor([[j < len(cs) for j in range(k)] for cs in completions], device=logps.device)
    return logps * real, counts * real


# --------------------------------------------------------------------------- collator

class ListwiseCollator:
    """Canonical ranked rows (:mod:`divscale.data.formats`) -> prompts (through the chat template when the
    tokenizer has one), completions padded to the batch's widest row, ``ranks`` / ``mask`` / ``scores``."""

    def __init__(self, tokenizer, loss: str = "plackett_luce"):
        self.tokenizer, self.loss = tokenizer, loss

    def __call__(self, rows):
        from divscale.models.generation import format_prompt

        width = 1 if self.loss == "sft" else max(len(r["completions"]) for r in rows)
        prompts, completions, ranks, mask, scores = [], [], [], [], []
        for r in rows:
            cs, rk = list(r["completions"]), list(r["ranks"])
            sc = [math.nan if s is None else float(s) for s in (r.get("scores") or [math.nan] * len(cs))]
            if self.loss == "sft":                   # the best completion only (the first of a tied top group)
                cs, rk, sc = cs[:1], rk[:1], sc[:1]
            pad = width - len(cs)
            prompts.append(format_prompt(r["prompt"], self.tokenizer))
            completions.append([" " + c for c in cs])             # ragged: K varies across rows
            ranks.append(rk + [-1] * pad)
            mask.append([True] * len(cs) + [False] * pad)
            scores.append(sc + [math.nan] * pad)
        return {"prompts": prompts, "completions": completions, "ranks": torch.tensor(ranks),
                "completion_mask": torch.tensor(mask), "scores": torch.tensor(scores, dtype=torch.float32)}


# --------------------------------------------------------------------------- config and trainer

@dataclass
class ListwiseConfig(TrainingArguments):
    """``TrainingArguments`` plus the listwise settings, with TRL's argument names where TRL has them
    (``beta``, ``max_prompt_length``, ``max_completion_length``). Optimiser defaults follow the paper
    (constant LR, AdamW, weight decay 0.01, clipping 1.0)."""
    loss: str = field(default="plackett_luce", metadata={"help": f"one of {LOSSES}"})
    beta: float = field(default=0.1, metadata={"help": "DPO temperature of the implicit reward (TRL default 0.1)"})
    sft_weight: float | None = field(default=None, metadata={
        "help": "weight of the best completion's NLL: None = 0.05 for pro (times (n-1)^2, the paper), 0 otherwise"})
    use_temperature: bool = field(default=False, metadata={
        "help": "pro: reward-gap temperatures from the rows' scores (only when every score is finite)"})
    share_prompt: bool = field(default=True, metadata={"help": "encode each prompt once for its completions"})
    max_prompt_length: int | None = field(default=384, metadata={"help": "prompt tokens kept (from the end)"})
    max_completion_length: int | None = field(default=128, metadata={"help": "completion tokens kept"})
    disable_dropout: bool = field(default=True, metadata={
        "help": "as TRL's DPOConfig: no dropout in the policy (and reference), so z = 0 at the start"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "the collator needs the raw columns"})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "the paper: constant LR"})
    weight_decay: float = field(default=0.01, metadata={"help": "torch AdamW's default, as the paper"})
    optim: str = field(default="adamw_torch", metadata={"help": "torch.optim.AdamW"})
    report_to: str | list[str] = field(default="none", metadata={"help": "no trackers by default"})

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}: choose one of {LOSSES}")
        if self.sft_weight is None:
            self.sft_weight = 0.05 if self.loss == "pro" else 0.0
        super().__post_init__()


class ListwiseTrainer(Trainer):
    """``Trainer`` with a listwise loss over each row's K completions (see the module docstring)."""

    loss_is_scaled_for_ga = False      # compute_loss returns a per-micro-batch mean; Trainer divides by GA

    def __init__(self, model=None, ref_model=None, args: ListwiseConfig | None = None, data_collator=None,
                 train_dataset=None, processing_class=None, **kwargs):
        if args is None or not isinstance(args, ListwiseConfig):
            raise TypeError("ListwiseTrainer needs args=ListwiseConfig(...)")
        if processing_class is None:
            raise ValueError("ListwiseTrainer needs processing_class=<the policy's tokenizer>")
        if data_collator is None:
            data_collator = ListwiseCollator(processing_class, args.loss)
        if train_dataset is not None and set(getattr(train_dataset, "column_names", [])) != set(RANKED_FEATURES):
            train_dataset = normalize_ranked(train_dataset)     # any ranked-format rows: sorted, ties ranked
        if args.disable_dropout:
            from trl.trainer.utils import disable_dropout_in_model

            disable_dropout_in_model(model)
            if ref_model is not None:
                disable_dropout_in_model(ref_model)
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         processing_class=processing_class, **kwargs)
        self.ref_model = None
        if args.loss in NEEDS_REF:
            ref = copy.deepcopy(self.model) if ref_model is None else ref_model
            ref.eval()
            for p in ref.parameters():
                p.requires_grad_(False)
            self.ref_model = ref.to(self.args.device)
        self._loss_parts: dict[str, list[float]] = defaultdict(list)

    def get_decay_parameter_names(self, model) -> list[str]:
        return [name for name, _ in model.named_parameters()]      # the paper: decay on every parameter

    def _logps(self, model, inputs):
        a = self.args
        return completion_logprobs(model, self.processing_class, inputs["prompts"], inputs["completions"],
                                   share_prompt=a.share_prompt, max_prompt_length=a.max_prompt_length,
                                   max_completion_length=a.max_completion_length)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        a = self.args
        logps, counts = self._logps(model, inputs)
        ranks, mask = inputs["ranks"].to(logps.device), inputs["completion_mask"].to(logps.device)
        parts: dict[str, torch.Tensor] = {}
        if a.loss == "sft":
            loss = parts["loss_sft"] = (-logps[:, 0]).mean()
        elif a.loss == "pro":
            scores = logps / counts.clamp(min=1)
            rewards = inputs["scores"].to(logps.device)
            use_t = a.use_temperature and bool(torch.isfinite(rewards[mask]).all())
            pro = pro_ranked_loss(scores, ranks, mask, rewards=rewards.masked_fill(~mask, 0.0) if use_t else None,
                                  sft_nll=sft_nll_of_best(logps, ranks, mask), sft_weight=a.sft_weight)
            loss, parts["loss_pro"], parts["loss_sft"] = pro.total, pro.pro, pro.sft
        else:
            with torch.no_grad():
                ref_logps, _ = self._logps(self.ref_model, inputs)
            fn = plackett_luce_loss if a.loss == "plackett_luce" else all_pairs_dpo_loss
            pref = fn(logps, ref_logps.to(logps.dtype), a.beta, ranks, mask)
            parts[f"loss_{a.loss}"] = pref
            loss = pref
            if a.sft_weight:
                sft = sft_nll_of_best(logps, ranks, mask).mean()
                parts["loss_sft"] = sft
                loss = pref + a.sft_weight * sft
            with torch.no_grad():                      # TRL's rewards/accuracies: best above every lower one
                z = a.beta * (logps - ref_logps)
                below = (ranks[:, None, :] > ranks[:, :, None]) & mask[:, :, None] & mask[:, None, :]
                parts["rewards/accuracies"] = ((z[:, :, None] > z[:, None, :])[below]).float().mean()
        if model.training:
            for key, value in parts.items():
                self._loss_parts[key].append(float(value.detach()))
        return (loss, {"logps": logps.detach()}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._loss_parts:
            logs.update({k: sum(v) / len(v) for k, v in self._loss_parts.items()})
            self._loss_parts.clear()
        super().log(logs, start_time)


# --------------------------------------------------------------------------- one run directory

def _slug(text: str) -> str:
    name = Path(str(text).rstrip("/")).name
    name = re.sub(r"\.(jsonl|json|gz)$", "", re.sub(r"\.(jsonl|json)\.gz$", "", name))
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:40] or "data"


class _QuietProgress(ProgressCallback):
    """The training bar shows the latest loss; the per-step records go to metrics.jsonl only."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4g}")


def train_ranked(dataset, loss: str, policy, policy_id: str, seed: int = 42, runs_dir: str | os.PathLike | None = None,
                 data_name: str = "data", progress: bool = False, ref_model=None, callbacks: Sequence = (),
                 **config) -> Path:
    """Train ``loss`` on a canonical ranked ``datasets.Dataset`` into a run directory and return it.

    ``policy``: ``(model, tokenizer)`` (deep-copied) or a zero-argument callable returning one (called only
    if the run must train); ``policy_id`` identifies the initial weights in the run hash. ``config``:
    ``ListwiseConfig`` fields (``max_steps``, ``per_device_train_batch_size``, ``learning_rate``, ``beta``, ...).
    """
    from transformers import PrinterCallback

    from divscale import paths
    from divscale.config import config_hash
    from divscale.io import atomic_path, atomic_write_json, atomic_write_text
    from divscale.train.runs import MetricsCallback, RunLog, sha256_json, weights_sha256

    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r}: choose one of {LOSSES}")
    settings = {"max_steps": 100, "per_device_train_batch_size": 4, "learning_rate": 5e-5, "max_grad_norm": 1.0,
                "logging_steps": 1, **config}
    rows = dataset.to_list()
    cfg = {"kind": "listwise", "loss": loss, "seed": seed, "data": data_name,
           "inputs": {"rows_sha256": sha256_json(rows), "n_rows": len(rows), "policy": policy_id},
           "train": settings}
    run_dir = Path(runs_dir or paths.RUNS_DIR) / "train" / (
        f"{loss}-{_slug(data_name)}-s{seed}-{config_hash(cfg, length=12)}")
    if (run_dir / "DONE").exists():
        return run_dir
    work = run_dir.with_name(run_dir.name + ".partial")
    if (work / "DONE").exists():
        os.replace(work, run_dir)
        return run_dir
    shutil.rmtree(work, ignore_errors=True)             # no resume for these short runs: start clean
    work.mkdir(parents=True)
    atomic_write_json(work / "config.json", cfg)
    runlog = RunLog(work)
    runlog.text(f"start {run_dir.name}: {loss} on {data_name} ({len(rows)} rows), seed {seed}")
    model, tokenizer = policy() if callable(policy) else policy
    if not callable(policy):
        model = copy.deepcopy(model)
    args = ListwiseConfig(output_dir=str(work / "trainer"), loss=loss, seed=seed, data_seed=seed,
                          save_strategy="no", use_cpu=not torch.cuda.is_available(), disable_tqdm=not progress,
                          **settings)
    trainer = ListwiseTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[MetricsCallback(runlog), *callbacks])
    trainer.remove_callback(PrinterCallback)            # metrics.jsonl / train.log hold every record
    if progress:                                        # a bar with the loss, not one printed dict per step
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(_QuietProgress())
    start = time.time()
    output = trainer.train()
    with atomic_path(work / "best") as tmp:
        trainer.save_model(str(tmp))                    # safetensors + tokenizer
        (Path(tmp) / "training_args.bin").unlink(missing_ok=True)     # a pickle; config.json holds the settings
        if not any(Path(tmp).glob("*.safetensors")):
            raise RuntimeError(f"{tmp}: no safetensors weights were written")
    losses = [r["loss"] for r in runlog.records() if "loss" in r]
    atomic_write_json(work / "result.json", {
        "run": run_dir.name, "loss": loss, "data": data_name, "n_rows": len(rows), "seed": seed,
        "steps": trainer.state.global_step, "selection": "last", "best_step": trainer.state.global_step,
        "final_train_loss": losses[-1] if losses else None, "first_train_loss": losses[0] if losses else None,
        "train_runtime_s": round(time.time() - start, 2), "n_params": sum(p.numel() for p in trainer.model.parameters()),
        "final_sha256": weights_sha256(trainer.model), "metrics": output.metrics})
    shutil.rmtree(work / "trainer", ignore_errors=True)
    atomic_write_text(work / "DONE", "")
    os.replace(work, run_dir)
    return run_dir


def data_policy(model: str, dataset, recipe: str = "cpu"):
    """``((model, tokenizer), policy_id)``: ``tiny-gpt`` (built on the data's prompt + best completion texts,
    sized by the recipe's policy section) or a local folder / cached hub id (``load_causal_lm``)."""
    from divscale.config import load_recipe
    from divscale.models.hub import load_causal_lm
    from divscale.models.tiny_gpt import load_policy, texts_hash

    if model == "tiny-gpt":
        texts = [p + " " + cs[0] for p, cs in zip(dataset["prompt"], dataset["completions"])]
        policy_cfg = load_recipe(recipe).policy
        return load_policy(policy_cfg, texts, progress=True), \
            f"tiny-gpt:{texts_hash(texts)}:{sorted(asdict(policy_cfg).items())}"
    return load_causal_lm(model), f"model:{Path(model).resolve() if Path(model).exists() else model}"


# --------------------------------------------------------------------------- CLI (divscale train --data ...)


def command(args) -> int:
    from divscale.data.formats import load_ranked

    dataset = load_ranked(args.data, split=args.split, drop_unrankable=not args.keep_unrankable, limit=args.limit)
    sizes = [len(c) for c in dataset["completions"]]
    print(f"{args.data}: {len(dataset)} ranked prompts, {min(sizes)}-{max(sizes)} completions each "
          f"({sum(sizes)} in all)", flush=True)
    policy, policy_id = data_policy(args.model, dataset, args.recipe or "cpu")
    run = train_ranked(dataset, args.loss, policy, policy_id, seed=42 if args.seed is None else args.seed,
                       runs_dir=args.runs_dir, data_name=str(args.data), progress=True,
                       max_steps=args.steps, per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
                       beta=args.beta, sft_weight=args.sft_weight, max_prompt_length=args.max_prompt_length,
                       max_completion_length=args.max_completion_length, share_prompt=not args.no_share_prompt)
    import json

    result = json.loads((run / "result.json").read_text())
    print(f"{args.loss}: {result['steps']} steps, train loss {result['first_train_loss']:.4g} -> "
          f"{result['final_train_loss']:.4g} in {result['train_runtime_s']:.0f} s")
    print(run)
    return 0


# --------------------------------------------------------------------------- helpers for experiments (09_listwise)

def split_ranked(dataset, n_test: int, seed: int = 42):
    """``(train, test)``: a seeded shuffle of the rows, the first ``n_test`` held out."""
    import random

    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    if not 0 < n_test < len(order):
        raise ValueError(f"n_test={n_test}: need 0 < n_test < {len(order)} rows")
    return dataset.select(order[n_test:]), dataset.select(order[:n_test])


def sub_ranked(dataset, n: int, seed: int = 42):
    """Each row cut to ``n`` of its completions, picked at random and kept in rank order (the paper's
    sub-ranking rule, divscale.data.subsets); rows with fewer than ``n`` are an error. Rows whose ``n`` picks are
    all tied cannot be ranked and raise."""
    import random

    from divscale.data.formats import normalize_ranked

    rng = random.Random(seed)
    rows = []
    for r in dataset:
        if len(r["completions"]) < n:
            raise ValueError(f"row {r['id']!r} has {len(r['completions'])} completions; n={n} needs {n}")
        picked = sorted(rng.sample(range(len(r["completions"])), n))
        rows.append({"id": r["id"], "prompt": r["prompt"], "completions": [r["completions"][i] for i in picked],
                     "ranks": [r["ranks"][i] for i in picked], "source": r["source"]})
    return normalize_ranked(rows, "sub-ranked")
