"""The one ranking trainer: ``RankingConfig``, ``RankingCollator``, ``RankingTrainer`` and the callbacks they use.

``RankingTrainer`` (a ``transformers.Trainer``) trains every loss of :mod:`divscale.train.losses` on rows of ranked
completions -- the study's PRO and SFT on the top-1 (``divscale.train.runs.train_run``) and ``divscale train --data``
(PRO, Plackett-Luce, all-pairs DPO, LiPO-λ, SFT, or a weighted mix, ``loss_type`` + ``loss_weights``). DPO on pairs
stays TRL's ``DPOTrainer`` (``runs.build_trainer``).

**Rows** are the canonical ranked format of :mod:`divscale.data.formats` (``id``, ``prompt``, ``completions`` best
first, ``ranks`` with ties, ``scores``); the study's rankings become such rows with :func:`ranked_rows` (strict order,
scores = RM_train rewards). Rows may have different numbers of completions: the batch is padded and the padding
masked out of every loss.

**One tokenisation and truncation rule** (:class:`RankingCollator`), the paper's (spec §3.2, ``data_manager.py``)
extended to chat templates the way TRL does it:

1. the prompt as the model sees it: an HH-text prompt as is for a tokenizer without a chat template (the paper's
   policies are fine-tuned on exactly that text), else rendered with ``add_generation_prompt=True``
   (:func:`divscale.models.generation.format_prompt`; chat messages through the template directly);
2. the prompt keeps its last ``max_prompt_length`` tokens (BOS included), decoded back to text (template special
   tokens kept);
3. each completion is appended to that text: with a plain-text prompt after one space (the paper's
   ``prompt + " " + response``; no space when the prompt already ends, or the completion already starts, with
   whitespace -- TRL's standard format puts its own space in the completion); after a chat template's generation
   prompt with no joiner, as the template renders the assistant turn (so the turn's end token is scored too, as in
   TRL's conversational DPO);
4. ``BOS + prompt + completion`` (BOS only if the tokenizer adds one; templates carry their own) is tokenised in
   one call and cut at ``max_length`` keeping its start (``truncation_mode="keep_start"``); no EOS is appended to a
   plain-text completion (the paper's rule; TRL's DPO appends one);
5. the prompt is the longest token prefix shared by the prompt alone and every ``prompt + completion`` of the row
   (TRL's rule when tokens merge across the boundary); only the tokens after it are scored.

**One scorer**: :func:`divscale.train.logprobs.logprobs_from_ids`, with the prompt encoded once for its completions
(``share_prompt``, the default) or one full sequence per completion; the same numbers up to float rounding.

Also here: :class:`LossBalanceCallback` (PRO's two terms' gradient norms), :class:`DivergenceGuard` (a non-finite
loss or gradient norm stops training with :class:`TrainingDiverged`, checked once per optimizer step), and
:func:`check_trainable_dtype` (float16 parameters under AdamW are refused before training).
"""
from __future__ import annotations

import copy
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from divscale.io import DataError
from divscale.train.losses import (
    PROLossParts,
    all_pairs_dpo_loss,
    lipo_lambda_loss,
    plackett_luce_loss,
    pro_ranked_loss,
    sft_loss,
    sft_nll_of_best,
)
from divscale.train.options import (
    NEEDS_REFERENCE,
    RankingOptions,
    check_options,
    deprecated,
    losses_of,
    model_positions,
    sequence_lengths,
    translate_deprecated,
)

log = logging.getLogger(__name__)
PREFERENCE_LOSSES = {"plackett_luce": plackett_luce_loss, "all_pairs_dpo": all_pairs_dpo_loss,
                     "lipo_lambda": lipo_lambda_loss}


# --------------------------------------------------------------------------- config

@dataclass
class RankingConfig(RankingOptions, TrainingArguments):
    """``TrainingArguments`` + :class:`divscale.train.options.RankingOptions` (TRL's names; divscale's defaults:
    constant LR, AdamW with weight decay 0.01 on every parameter, clipping 1.0, no warm-up, as the paper)."""

    def __post_init__(self):
        check_options(self)
        TrainingArguments.__post_init__(self)


def ListwiseConfig(**kwargs) -> RankingConfig:            # the old class name, for one release
    """Deprecated: :class:`RankingConfig` (old argument names are translated, with a warning)."""
    deprecated("ListwiseConfig", "RankingConfig")
    return RankingConfig(**translate_deprecated(kwargs))


# --------------------------------------------------------------------------- rows and the collator

def ranked_rows(rankings: Sequence[dict], n: int | None = None) -> list[dict]:
    """The study's rankings (``prompt``, ``responses`` best first, ``rewards``) as canonical ranked rows: the first
    ``n`` responses, in their stored (RM_train) order as a strict ranking, rewards as scores (NaN where missing)."""
    rows = []
    for r in rankings:
        responses = list(r["responses"])[:n]
        rewards = list(r.get("rewards") or [None] * len(responses))[:len(responses)]
        rows.append({"id": str(r.get("id", "")), "prompt": r["prompt"], "completions": responses,
                     "ranks": list(range(len(responses))),
                     "scores": [math.nan if x is None else float(x) for x in rewards], "source": "rankings",
                     "prompt_chat": []})
    return rows


def bos_prefix(tokenizer) -> list[int]:
    """``[bos]`` if the tokenizer adds a BOS token on its own (never EOS), else ``[]``."""
    with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    adds = (tokenizer.bos_token_id is not None and len(with_special) > len(plain)
            and with_special[0] == tokenizer.bos_token_id)
    return [tokenizer.bos_token_id] if adds else []


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class RankingCollator:
    """Ranked rows -> ``prompt_ids``/``prompt_mask`` ``[batch, P]`` and ``completion_ids``/``completion_mask``
    ``[batch, K, L]`` (right-padded; the input of ``logprobs_from_ids``), ``ranks`` / ``present`` / ``scores``
    ``[batch, K]`` (padding: rank -1, not present, NaN), and ``ref_logps`` when the rows carry them. The
    tokenisation and truncation rule is the module docstring's. ``best_only``: each row's first completion only
    (the SFT loss)."""

    def __init__(self, tokenizer, max_length: int, max_prompt_length: int, best_only: bool = False):
        from divscale.models.generation import has_chat_template

        if not 0 < max_prompt_length < max_length:
            raise ValueError(f"need 0 < max_prompt_length ({max_prompt_length}) < max_length ({max_length}): "
                             "the completion needs room after the prompt")
        self.tokenizer, self.max_length, self.max_prompt_length = tokenizer, max_length, max_prompt_length
        self.best_only = best_only
        self.templated = has_chat_template(tokenizer)
        self.prefix = [] if self.templated else bos_prefix(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token to pad with")

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _messages(self, prompt: Any) -> list[dict]:
        from divscale.models.generation import hh_turns

        if isinstance(prompt, str):
            return [{"role": role, "content": text} for role, text in hh_turns(prompt)]
        return [dict(m) for m in ([prompt] if isinstance(prompt, dict) else prompt)]

    def render(self, prompt: Any) -> str:
        """The prompt as the model sees it (step 1 of the rule)."""
        from divscale.data.formats import messages_to_text
        from divscale.models.generation import format_prompt

        if isinstance(prompt, str):
            return format_prompt(prompt, self.tokenizer)
        if self.templated:
            return self.tokenizer.apply_chat_template(self._messages(prompt), add_generation_prompt=True,
                                                      tokenize=False)
        return messages_to_text(self._messages(prompt))

    def truncate(self, texts: list[str]) -> list[str]:
        """Keep the last ``max_prompt_length`` tokens (BOS included) of each rendered prompt, as text (step 2)."""
        budget = self.max_prompt_length - len(self.prefix)
        out = []
        for text, ids in zip(texts, self._ids(texts)):
            if len(ids) > budget:
                text = self.tokenizer.decode(ids[-budget:], skip_special_tokens=not self.templated,
                                             clean_up_tokenization_spaces=False)
            out.append(text)
        return out

    def prompt_texts(self, prompts: Sequence[Any]) -> list[str]:
        """Steps 1-2 for a list of prompts (also what the DPO pairs start from)."""
        return self.truncate([self.render(p) for p in prompts])

    def continuation(self, prompt: Any, prompt_text: str, completion: str) -> str:
        """What follows the prompt text for one completion (step 3)."""
        if not self.templated:
            if prompt_text[-1:].isspace() or completion[:1].isspace():
                return completion
            return " " + completion
        messages = self._messages(prompt)
        head = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        full = self.tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": completion}],
                                                  tokenize=False)
        if full.startswith(head):
            return full[len(head):]
        log.warning("the chat template renders the prompt alone differently from prompt + answer; the completion "
                    "is appended after the generation prompt as it is")
        return completion

    def encode(self, rows: Sequence[dict]) -> list[tuple[list[int], list[list[int]]]]:
        """``(prompt ids, [completion ids, ...])`` of each row (steps 1-5)."""
        from divscale.data.ranked import completion_text

        # a chat template renders the prompt's own messages (``prompt_chat``, kept by the readers) when there are
        # some: the HH text is a lossy rendering of them (a system message becomes the first turn's preface)
        sources = [r.get("prompt_chat") or r["prompt"] if self.templated else r["prompt"] for r in rows]
        prompts = self.prompt_texts(sources)
        texts, where = [], []
        for i, (row, source, p_text) in enumerate(zip(rows, sources, prompts)):
            completions = list(row["completions"])[:1 if self.best_only else None]
            for j, c in enumerate(completions):
                c = c if isinstance(c, str) else completion_text(c, f"row {row.get('id', i)!r}, completion {j}")
                texts.append(p_text + self.continuation(source, p_text, c))
                where.append(i)
        full = [(self.prefix + ids)[:self.max_length] for ids in self._ids(texts)]
        prompt_ids = [self.prefix + ids for ids in self._ids(prompts)]
        out = []
        for i, (row, p_ids) in enumerate(zip(rows, prompt_ids)):
            seqs = [f for f, w in zip(full, where) if w == i]
            if not seqs:
                raise DataError(f"row {row.get('id', i)!r} has no completions")
            cut = min(_common_prefix(p_ids, s) for s in seqs)
            for j, s in enumerate(seqs):
                if len(s) <= cut:
                    raise DataError(f"row {row.get('id', i)!r}, completion {j}: no completion tokens after the "
                                    f"{cut}-token prompt (max_length {self.max_length}); drop empty completions "
                                    "or raise max_length")
            if cut < 1:
                raise DataError(f"row {row.get('id', i)!r}: the prompt has no tokens to predict the completion from")
            out.append((p_ids[:cut], [s[cut:] for s in seqs]))
        return out

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(rows), max(1, max(len(r) for r in rows))), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, r in enumerate(rows):
            if r:
                ids[j, :len(r)], mask[j, :len(r)] = torch.tensor(r), 1
        return ids, mask

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        rows = [dict(r) for r in rows]
        encoded = self.encode(rows)
        width = max(len(cs) for _, cs in encoded)
        p_ids, p_mask = self._pad([p for p, _ in encoded])
        c_ids, c_mask = self._pad([c for _, cs in encoded for c in cs + [[]] * (width - len(cs))])
        ranks, present, scores, refs = [], [], [], []
        for row, (_, cs) in zip(rows, encoded):
            k, pad = len(cs), width - len(cs)
            rk = [int(x) for x in list(row.get("ranks") or range(k))[:k]]
            sc = [math.nan if x is None else float(x) for x in list(row.get("scores") or [math.nan] * k)[:k]]
            ranks.append(rk + [-1] * pad)
            present.append([True] * k + [False] * pad)
            scores.append(sc + [math.nan] * pad)
            if "ref_logps" in row:
                refs.append(list(row["ref_logps"])[:k] + [0.0] * pad)
        batch = len(rows)
        out = {"prompt_ids": p_ids, "prompt_mask": p_mask, "completion_ids": c_ids.view(batch, width, -1),
               "completion_mask": c_mask.view(batch, width, -1), "ranks": torch.tensor(ranks),
               "present": torch.tensor(present), "scores": torch.tensor(scores, dtype=torch.float32)}
        if refs:
            out["ref_logps"] = torch.tensor(refs, dtype=torch.float32)
        return out


# --------------------------------------------------------------------------- a run that diverges stops

class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient norm: training stopped at that step; the run is never marked complete."""


def diverged(args, step: int, what: str, value) -> TrainingDiverged:
    run = getattr(args, "run_name", None) or getattr(args, "output_dir", None) or "this run"
    return TrainingDiverged(
        f"run {run}: the {what} is {value} at step {step}; training stopped and the run is left unfinished. Likely "
        f"causes: a learning rate too high for this model ({getattr(args, 'learning_rate', float('nan')):g}), "
        "float16 parameters or fp16 without loss scaling (train fp32 weights with bf16/fp16 mixed precision), "
        "a bf16 overflow, or a row whose completion has no tokens left after truncation")


class DivergenceGuard:
    """For ``Trainer`` subclasses (listed before the Trainer): a non-finite micro-batch loss or gradient norm raises
    :class:`TrainingDiverged` at its optimizer step, before the optimizer applies it, so the weights never take a
    NaN update and the run is never marked complete.

    Cheap on an accelerator: each micro-batch's loss stays on the device (no host sync per micro-batch), and once per
    optimizer step the step's losses and the gradient norm the Trainer computed for clipping are read in one
    transfer. The norm is the Trainer's own (the total norm before clipping that ``Trainer._get_grad_norm`` returns
    right before every optimizer step, clipping or not; a non-finite gradient anywhere makes it non-finite), not a
    second pass over the gradients; where the Trainer has none (DeepSpeed before its own step) the loss check
    remains."""

    def train(self, *args, **kwargs):
        self._step_losses = []
        return super().train(*args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.__dict__.setdefault("_step_losses", []).append(loss.detach())
        return loss

    def _get_grad_norm(self, model, grad_norm=None):          # the Trainer's hook before each optimizer step
        grad_norm = super()._get_grad_norm(model, grad_norm)
        self.check_step(grad_norm)
        return grad_norm

    def check_step(self, grad_norm=None) -> None:
        """Raise :class:`TrainingDiverged` if a loss of this optimizer step or its gradient norm is not finite; the
        values cross to the host once."""
        losses, self._step_losses = self.__dict__.get("_step_losses", []), []
        values = [x.float().reshape(-1).sum() for x in losses]
        if torch.is_tensor(grad_norm):
            values.append(grad_norm.detach().float().reshape(-1).sum().to(values[0].device if values
                                                                          else grad_norm.device))
        host = torch.stack(values).tolist() if values else []
        norm = host.pop() if torch.is_tensor(grad_norm) else grad_norm
        step = self.state.global_step + 1
        bad = next((x for x in host if not math.isfinite(x)), None)
        if bad is not None:
            raise diverged(self.args, step, "loss", bad)
        if norm is not None and not math.isfinite(float(norm)):
            raise diverged(self.args, step, "gradient norm", float(norm))


def check_trainable_dtype(model, args) -> None:
    """Refuse float16 trainable parameters under AdamW before training (they turn NaN at the first update)."""
    optim = str(getattr(getattr(args, "optim", ""), "value", getattr(args, "optim", "")))
    if "adam" not in optim.lower():
        return
    fp16 = [n for n, p in model.named_parameters() if p.requires_grad and p.dtype == torch.float16]
    if fp16:
        raise ValueError(f"{len(fp16)} trainable parameters are float16 (e.g. {fp16[0]}): AdamW's state underflows "
                         "in float16 (its eps 1e-8 is 0) and the first update turns the weights NaN; load the policy "
                         "in float32 (policy.dtype: float32, torch_dtype=torch.float32 or model.float()) and train "
                         "with bf16=True (or fp16=True) mixed precision")


# --------------------------------------------------------------------------- PRO's loss balance

LOSS_BALANCE_FIELDS = {
    "grad_norm_rank": "||grad L_PRO|| (the ranking term) on the trainable parameters, one micro-batch",
    "grad_norm_sft_weighted": "||grad w(n-1)^2 L_SFT|| (the weighted SFT term), same micro-batch",
    "grad_norm_sum": "||grad (L_PRO + w(n-1)^2 L_SFT)||, same micro-batch (before clipping)",
    "grad_share_rank": "||grad L_PRO|| / (||grad L_PRO|| + ||grad w(n-1)^2 L_SFT||), in [0, 1]",
    "grad_share_sft": "1 - grad_share_rank",
    "grad_cos_rank_sft": "cosine between the two gradients (> 0: they pull the same way)",
    "loss_balance_step": "the global step the gradients were measured at",
}
# also logged every step by the trainer for pro: loss_pro (L_PRO), loss_sft (L_SFT), loss_sft_weighted
# (w(n-1)^2 L_SFT), sft_scale (w(n-1)^2), loss_total, loss_rank_k


def loss_balance(model, parts: PROLossParts) -> dict[str, float]:
    """Gradient norms of the ranking term and of the weighted SFT term on the trainable parameters (see
    :data:`LOSS_BALANCE_FIELDS`). Two ``autograd.grad`` calls that keep the graph: the trainer's own backward
    afterwards, and hence the update, is unchanged."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or not parts.terms:
        return {}
    grads = {}
    for name, term in (("rank", parts.pro), ("sft_weighted", parts.sft_scale * parts.sft)):
        if not term.requires_grad:
            grads[name] = [torch.zeros_like(p) for p in params]
            continue
        gs = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        grads[name] = [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]
    with torch.no_grad():
        def sq(gs):
            return sum(float(g.double().pow(2).sum()) for g in gs)

        dot = sum(float((a.double() * b.double()).sum()) for a, b in zip(grads["rank"], grads["sft_weighted"]))
        nr, ns = math.sqrt(sq(grads["rank"])), math.sqrt(sq(grads["sft_weighted"]))
        out = {"grad_norm_rank": nr, "grad_norm_sft_weighted": ns,
               "grad_norm_sum": math.sqrt(max(nr * nr + ns * ns + 2 * dot, 0.0)),
               "grad_share_rank": nr / (nr + ns) if nr + ns > 0 else math.nan}
        out["grad_share_sft"] = 1.0 - out["grad_share_rank"] if nr + ns > 0 else math.nan
        out["grad_cos_rank_sft"] = dot / (nr * ns) if nr > 0 and ns > 0 else math.nan
    return out


def loss_balance_summary(records: Sequence[dict]) -> dict[str, float] | None:
    """Run-level means of the logged loss balance (metrics.jsonl records), for result.json; None if none."""
    rows = [r for r in records if "grad_share_rank" in r]
    if not rows:
        return None
    keys = ("grad_norm_rank", "grad_norm_sft_weighted", "grad_share_rank", "grad_share_sft", "grad_cos_rank_sft")
    out = {}
    for k in keys:
        vals = [float(r[k]) for r in rows if r.get(k) is not None and math.isfinite(float(r[k]))]
        out[f"mean_{k}"] = sum(vals) / len(vals) if vals else None
    losses = [r for r in records if "loss_pro" in r and "loss_sft_weighted" in r]
    if losses:
        out["mean_loss_pro"] = sum(r["loss_pro"] for r in losses) / len(losses)
        out["mean_loss_sft_weighted"] = sum(r["loss_sft_weighted"] for r in losses) / len(losses)
    out["n_measured_steps"] = len(rows)
    return out


class LossBalanceCallback(TrainerCallback):
    """Every ``every`` steps (and at the last) measure :func:`loss_balance` on that step's first micro-batch and add
    it to the step's log. The trainer hands it each training micro-batch's PRO parts (:meth:`observe`)."""

    def __init__(self, every: int):
        self.every, self.pending, self.measured_step = every, {}, -1

    def observe(self, trainer, model, parts: PROLossParts) -> None:
        step = trainer.state.global_step
        if not parts.terms or not parts.total.requires_grad or step == self.measured_step:
            return
        if trainer.args.world_size > 1 or trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
            return                                  # sharded / all-reduced gradients: not measured here
        if step % self.every and not (trainer.state.max_steps > 0 and step == trainer.state.max_steps - 1):
            return
        self.measured_step = step
        self.pending = loss_balance(model, parts)
        if self.pending:
            self.pending["loss_balance_step"] = step

    def pop(self) -> dict[str, float]:
        out, self.pending = self.pending, {}
        return out


# --------------------------------------------------------------------------- the trainer

class RankingTrainer(DivergenceGuard, Trainer):
    """``Trainer`` with the losses of ``args.loss_type`` over each row's ranked completions (module docstring).

    ``ref_model``: the frozen reference of the DPO-style losses (None: a frozen copy of the initial policy, as TRL);
    with ``args.precompute_ref_log_probs`` its log-probs are computed once over the training set and it is freed.
    """

    loss_is_scaled_for_ga = False      # compute_loss returns a per-micro-batch mean; Trainer divides by GA

    def __init__(self, model=None, args: RankingConfig | None = None, data_collator=None, train_dataset=None,
                 processing_class=None, ref_model=None, callbacks=None, **kwargs):
        from divscale.data.ranked import RANKED_FEATURES, normalize_ranked

        if args is None or not isinstance(args, RankingConfig):
            raise TypeError("RankingTrainer needs args=RankingConfig(...)")
        if processing_class is None:
            raise ValueError("RankingTrainer needs processing_class=<the policy's tokenizer>")
        check_trainable_dtype(model, args)
        self.losses = losses_of(args)
        self.weights = args.loss_weights or [1.0] * len(self.losses)
        self.max_length, self.max_prompt_length = sequence_lengths(args.max_length, args.max_prompt_length,
                                                                   model_positions(model))
        if train_dataset is not None and set(getattr(train_dataset, "column_names", [])) != set(RANKED_FEATURES):
            train_dataset = normalize_ranked(train_dataset)     # any ranked-format rows: sorted, ties ranked
        if train_dataset is not None and args.use_temperature:
            missing = [r["id"] for r in train_dataset if not all(math.isfinite(s) for s in r["scores"])]
            if missing:
                raise DataError(f"use_temperature needs a finite score for every completion; row {missing[0]!r} "
                                f"(and {len(missing) - 1} more) has none: drop those rows or set use_temperature "
                                "false")
        if args.disable_dropout:
            from trl.trainer.utils import disable_dropout_in_model

            disable_dropout_in_model(model)
            if ref_model is not None:
                disable_dropout_in_model(ref_model)
        if data_collator is None:
            data_collator = RankingCollator(processing_class, self.max_length, self.max_prompt_length,
                                            best_only=self.losses == ["sft"])
        callbacks = list(callbacks or [])
        if "pro" in self.losses and args.loss_balance_steps:
            callbacks.append(LossBalanceCallback(args.loss_balance_steps))
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         processing_class=processing_class, callbacks=callbacks, **kwargs)
        self.ref_model = None
        if any(name in NEEDS_REFERENCE for name in self.losses):
            ref = copy.deepcopy(self.model) if ref_model is None else ref_model
            ref.eval()
            for p in ref.parameters():
                p.requires_grad_(False)
            self.ref_model = ref.to(self.args.device)
            if args.precompute_ref_log_probs and self.train_dataset is not None:
                self.train_dataset = self.precompute_reference(self.train_dataset)
                self.ref_model = None
        self._loss_parts: dict[str, list[float]] = defaultdict(list)

    def get_decay_parameter_names(self, model) -> list[str]:
        # The paper: torch.optim.AdamW(model.parameters(), lr) -- weight decay on every parameter.
        return [name for name, _ in model.named_parameters()]

    def score(self, model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed completion log-probs and completion token counts, ``[batch, K]`` (0 for padding)."""
        from divscale.train.logprobs import logprobs_from_ids

        return logprobs_from_ids(model, inputs["prompt_ids"], inputs["prompt_mask"], inputs["completion_ids"],
                                 inputs["completion_mask"], share_prompt=self.args.share_prompt,
                                 pad_token_id=int(self.data_collator.pad_id))

    def reference_logps(self, inputs) -> torch.Tensor:
        if "ref_logps" in inputs:
            return inputs["ref_logps"]
        with torch.no_grad():
            return self.score(self.ref_model, inputs)[0]

    def precompute_reference(self, dataset):
        """The reference model's log-probs of every row's completions, as a ``ref_logps`` column."""
        values, size = [], self.args.per_device_train_batch_size
        for start in range(0, len(dataset), size):
            rows = dataset.select(range(start, min(start + size, len(dataset))))
            batch = self._prepare_inputs(self.data_collator(list(rows)))
            ref = self.reference_logps(batch).cpu()
            values.extend([ref[i, :int(batch["present"][i].sum())].tolist() for i in range(ref.shape[0])])
        return dataset.add_column("ref_logps", values)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps, counts = self.score(model, inputs)
        ranks, present = inputs["ranks"].to(logps.device), inputs["present"].to(logps.device)
        a, parts, total, ref = self.args, {}, None, None
        for name, weight in zip(self.losses, self.weights):
            if name == "sft":
                value = parts["loss_sft"] = sft_loss(logps, counts, ranks, present, a.sft_reduction)
            elif name == "pro":
                pro = self._pro_parts(logps, counts, ranks, present, inputs)
                value = pro.total
                if model.training:
                    for cb in self.callback_handler.callbacks:
                        if isinstance(cb, LossBalanceCallback):
                            cb.observe(self, model, pro)
                parts.update(pro.as_tensors())
            else:
                if ref is None:
                    ref = self.reference_logps(inputs).to(logps.device, logps.dtype)
                value = PREFERENCE_LOSSES[name](logps, ref, a.beta, ranks, present)
                parts[f"loss_{name}"] = value
                with torch.no_grad():                  # TRL's rewards/accuracies: each above every lower one
                    z = a.beta * (logps - ref)
                    below = (ranks[:, None, :] > ranks[:, :, None]) & present[:, :, None] & present[:, None, :]
                    parts["rewards/accuracies"] = ((z[:, :, None] > z[:, None, :])[below]).float().mean()
            value = value if weight == 1.0 else weight * value
            total = value if total is None else total + value
        if len(self.losses) > 1:
            parts["loss_total"] = total
        if model.training:                             # kept on the device until the log step reads them
            for key, value in parts.items():
                self._loss_parts[key].append(value.detach() if torch.is_tensor(value) else value)
        return (total, {"logps": logps.detach()}) if return_outputs else total

    def _pro_parts(self, logps, counts, ranks, present, inputs) -> PROLossParts:
        a = self.args
        scores = logps / counts.clamp(min=1)
        rewards = None
        if a.use_temperature:
            rewards = inputs["scores"].to(logps.device).masked_fill(~present, 0.0)
        if a.sft_reduction == "sequence_sum":
            nll = sft_nll_of_best(logps, ranks, present)
        else:
            nll = sft_loss(logps, counts, ranks, present, "token_mean")
        return pro_ranked_loss(scores, ranks, present, rewards=rewards, sft_nll=nll, sft_weight=a.sft_weight)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._loss_parts:       # training logs: the loss parts (mean over micro-batches)
            logs.update({k: sum(float(x) for x in v) / len(v) for k, v in self._loss_parts.items()})
            self._loss_parts.clear()
        if "loss" in logs:                            # the loss balance of this logging period's measured step
            for cb in self.callback_handler.callbacks:
                if isinstance(cb, LossBalanceCallback):
                    logs.update(cb.pop())
        super().log(logs, start_time)


class ListwiseTrainer(RankingTrainer):
    """Deprecated name of :class:`RankingTrainer` (one release)."""

    def __init__(self, *args, **kwargs):
        deprecated("ListwiseTrainer", "RankingTrainer")
        super().__init__(*args, **kwargs)
