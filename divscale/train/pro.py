"""PRO: Preference Ranking Optimization (Song et al., AAAI 2024), the loss the scaling paper trains with.

A ranking y^1 > y^2 > ... > y^n of responses to one prompt (ordered by RM_train, rewards
r_1 >= ... >= r_n) is turned into n-1 softmax ("Plackett-Luce") terms. At step k the k-th
response is the positive and every lower-ranked one a negative (spec §3.3):

    s_i   = (1/|y^i|) sum_t log pi(y^i_t | x, y^i_<t)                 length-normalised score
    L_k   = -log  exp(s_k t_k^k) / (exp(s_k t_k^k) + sum_{i>k} exp(s_i t_k^i))
    t_k^i = r_k - r_i  (i > k),   t_k^k = max_{i>k} (r_k - r_i)        reward-gap "temperatures" 1/T
    L_PRO = sum_{k=1}^{n-1} mean_batch(L_k)                             summed over k, not averaged
    L     = L_PRO + sft_weight * (n-1)^2 * L_SFT,  L_SFT = mean_batch(-sum_t log pi(y^1_t | ...))

As in the official code (``process_manager.py``) eps = 1e-10 sits inside the log,
``log(eps + exp(.) + sum exp(.)) - s_k t_k^k``; we evaluate that same expression as
``logsumexp([log eps, ...])``, which is identical but cannot underflow. The SFT baseline is
the same collator with one candidate (the RM_train-best response) and weight 1 on L_SFT.

Sequences (spec §3.2, ``data_manager.py``): the prompt (the HH text; a policy with a chat template
gets it rendered through the template, as ``divscale.models.generation`` does) is left-truncated to
``max_prompt_tokens`` (= block_size - 128) tokens and decoded back to text; the training text
is ``prompt + " " + response`` with BOS (if the tokenizer adds one), right-truncated to
``block_size``, no EOS. Only response tokens are scored. One deliberate difference: the
official mask also scores the prediction of the first padding token after every response that
is shorter than the longest in the batch (an artifact of masking before the label shift); we
score response tokens only, so a sequence's score never depends on its batch-mates.

With ``share_prompt`` (the default) each prompt is encoded once and its key/value cache serves
its n candidates (:mod:`divscale.train.logprobs`); the collator hands over the prompt and the response
tokens of the same joint ``prompt + " " + response`` tokenisation, so the scored tokens, the
truncation and the loss are unchanged, and values and gradients equal the full-sequence path up to
float rounding (``tests/test_logprobs.py``, ``tests/test_pro.py``). Without it, all n candidates
of a batch are scored in ONE forward pass of full sequences ([b, n, s] -> [b*n, s]); the official
code runs n passes, which gives the same numbers (``benchmarks/bench_train.py``).

Loss balance (logged every ``loss_balance_steps`` steps, n >= 2): the norms of the gradients of
the ranking term L_PRO and of the weighted SFT term beta*L_SFT on the trainable parameters
(``torch.autograd.grad`` on that step's first micro-batch; the update itself is untouched), their
shares and cosine. See :data:`LOSS_BALANCE_FIELDS`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from divscale.io import DataError

EPS = 1e-10          # inside the log, as in the official code


@dataclass
class PROLossParts:
    """The pieces of the PRO objective, for logging: ``total = pro + beta * sft``."""
    total: torch.Tensor
    pro: torch.Tensor              # L_PRO = sum_k terms[k]
    sft: torch.Tensor              # L_SFT (summed token NLL of the top response, batch mean); 0 if not given
    terms: list[torch.Tensor]      # mean_batch(L_k), k = 1 .. n-1
    beta: float                    # weight of L_SFT: sft_weight * (n-1)^2, or 1 for the SFT baseline (n = 1)

    def as_floats(self) -> dict[str, float]:
        out = {"loss_total": self.total.item(), "loss_pro": self.pro.item(), "loss_sft": self.sft.item(),
               "loss_sft_weighted": self.beta * self.sft.item(), "sft_beta": self.beta}
        out.update({f"loss_rank_{k + 1}": t.item() for k, t in enumerate(self.terms)})
        return out


def pro_loss_parts(scores: torch.Tensor, rewards: torch.Tensor | None = None,
                   sft_nll: torch.Tensor | float | None = None, sft_weight: float = 0.05) -> PROLossParts:
    """PRO loss with its parts. ``scores`` [batch, n]: length-normalised log-likelihoods, best first.
    ``rewards`` [batch, n] sorted descending (None: no temperature, every t = 1). ``sft_nll``:
    the summed token NLL of each top-1 response, [batch] (or its batch mean)."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be [batch, n], got shape {tuple(scores.shape)}")
    batch, n = scores.shape
    if rewards is not None:
        if rewards.shape != scores.shape:
            raise ValueError(f"rewards {tuple(rewards.shape)} must match scores {tuple(scores.shape)}")
        rewards = rewards.to(scores.dtype)
        if n > 1 and torch.isnan(rewards).any():
            raise ValueError("rankings without rewards: PRO's temperature needs RM_train rewards "
                             "(set train.use_temperature: false to train without it)")
        if n > 1 and (rewards[:, 1:] - rewards[:, :-1] > 1e-6).any():
            raise ValueError("rewards must be sorted descending (best response first) within each ranking")
    log_eps = torch.full((batch, 1), math.log(EPS), dtype=scores.dtype, device=scores.device)
    terms = []
    for k in range(n - 1):
        pos, neg = scores[:, k], scores[:, k + 1:]
        if rewards is not None:
            gaps = rewards[:, k:k + 1] - rewards[:, k + 1:]          # 1/T_k^i = r_k - r_i   (i > k)
            pos = pos * gaps.max(dim=1).values                        # 1/T_k^k = max_i (r_k - r_i)
            neg = neg * gaps
        logits = torch.cat([log_eps, pos[:, None], neg], dim=1)
        terms.append((torch.logsumexp(logits, dim=1) - pos).mean())
    pro = torch.stack(terms).sum() if terms else scores.new_zeros(())
    if sft_nll is None:
        sft = scores.new_zeros(())
    else:
        sft = torch.as_tensor(sft_nll, dtype=scores.dtype, device=scores.device).mean()
    beta = sft_weight * (n - 1) ** 2 if n > 1 else 1.0
    return PROLossParts(total=pro + beta * sft, pro=pro, sft=sft, terms=terms, beta=beta)


def pro_loss(scores: torch.Tensor, rewards: torch.Tensor | None = None,
             sft_nll: torch.Tensor | float | None = None, sft_weight: float = 0.05) -> torch.Tensor:
    """The PRO training loss L_PRO + sft_weight*(n-1)^2*L_SFT (see :func:`pro_loss_parts`)."""
    return pro_loss_parts(scores, rewards, sft_nll, sft_weight).total


# --------------------------------------------------------------------------- sequences

def record_field(record: Any, name: str, default: Any = None) -> Any:
    if isinstance(record, dict):
        return record.get(name, default)
    return getattr(record, name, default)


class RankingCollator:
    """Tokenise rankings into ``[batch, n, seq]`` tensors the way the official collator does.

    Takes records with ``prompt``, ``responses`` (best first) and optionally ``rewards`` and
    ``id`` (dicts or ``divscale.data.hh.Ranking``) and returns ``input_ids``, ``attention_mask``,
    ``response_mask`` (1 on response tokens only) [batch, n, seq], right-padded to the longest
    of all batch*n sequences, and ``rewards`` [batch, n] (NaN where a ranking has none).
    The first n responses of each ranking are used; n = 1 is the SFT baseline (top-1 only).
    """

    def __init__(self, tokenizer, n: int, block_size: int = 512, max_prompt_tokens: int | None = None):
        if n < 1:
            raise ValueError(f"ranking length n must be >= 1, got {n}")
        max_prompt_tokens = block_size - 128 if max_prompt_tokens is None else max_prompt_tokens
        if not 0 < max_prompt_tokens < block_size:
            raise ValueError(f"need 0 < max_prompt_tokens ({max_prompt_tokens}) < block_size ({block_size}): "
                             "the response needs room after the prompt")
        self.tokenizer, self.n = tokenizer, n
        self.block_size, self.max_prompt_tokens = block_size, max_prompt_tokens
        with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
        plain = tokenizer("x", add_special_tokens=False)["input_ids"]
        adds_bos = (tokenizer.bos_token_id is not None and len(with_special) > len(plain)
                    and with_special[0] == tokenizer.bos_token_id)
        self.prefix = [tokenizer.bos_token_id] if adds_bos else []     # BOS if the tokenizer adds one; never EOS
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token to pad with")

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def prompt_texts(self, prompts: list[str]) -> list[str]:
        """The model's view of each HH prompt: ``format_prompt`` (the HH text itself for a tokenizer
        without a chat template, as in the paper; the chat template otherwise, as at generation time),
        left-truncated."""
        from divscale.models.generation import format_prompt

        return self.truncate_prompts([format_prompt(p, self.tokenizer) for p in prompts])

    def truncate_prompts(self, prompts: list[str]) -> list[str]:
        """Keep the last ``max_prompt_tokens`` tokens (BOS included) of each prompt, as text."""
        budget = self.max_prompt_tokens - len(self.prefix)
        out = []
        for prompt, ids in zip(prompts, self._ids(prompts)):
            if len(ids) > budget:
                prompt = self.tokenizer.decode(ids[-budget:], skip_special_tokens=True,
                                               clean_up_tokenization_spaces=False)
            out.append(prompt)
        return out

    def encode(self, records: Sequence[Any]) -> list[tuple[list[int], int]]:
        """``(token ids, prompt length P)`` for each (record, candidate), record-major."""
        prompts, responses, where = [], [], []
        for i, rec in enumerate(records):
            cands = list(record_field(rec, "responses") or [])
            rid = record_field(rec, "id", i)
            if len(cands) < self.n:
                raise DataError(f"ranking {rid!r} has {len(cands)} response(s); this run needs {self.n}")
            prompts.append(record_field(rec, "prompt"))
            responses.append(cands[:self.n])
            where.append(rid)
        prompts = self.prompt_texts(prompts)
        prompt_lens = [len(self.prefix) + len(ids) for ids in self._ids(prompts)]
        texts = [p + " " + r for p, rs in zip(prompts, responses) for r in rs]
        out = []
        for j, ids in enumerate(self._ids(texts)):
            i = j // self.n
            full = (self.prefix + ids)[:self.block_size]
            if len(full) <= prompt_lens[i]:
                raise DataError(f"ranking {where[i]!r}, response {j % self.n}: no response tokens after the "
                                f"{prompt_lens[i]}-token prompt (block_size {self.block_size}); "
                                "drop empty responses when building rankings")
            out.append((full, prompt_lens[i]))
        return out

    def __call__(self, records: Sequence[Any]) -> dict[str, torch.Tensor]:
        encoded = self.encode(records)
        batch, n = len(records), self.n
        seq = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((batch * n, seq), self.pad_id, dtype=torch.long)
        attention = torch.zeros((batch * n, seq), dtype=torch.long)
        response = torch.zeros((batch * n, seq), dtype=torch.long)
        for j, (ids, p) in enumerate(encoded):
            input_ids[j, :len(ids)] = torch.tensor(ids)
            attention[j, :len(ids)] = 1
            response[j, p:len(ids)] = 1
        rewards = []
        for rec in records:
            row = [math.nan if r is None else float(r) for r in list(record_field(rec, "rewards") or [])[:n]]
            rewards.append(row + [math.nan] * (n - len(row)))
        out = {"input_ids": input_ids.view(batch, n, seq), "attention_mask": attention.view(batch, n, seq),
               "response_mask": response.view(batch, n, seq), "rewards": torch.tensor(rewards, dtype=torch.float32)}
        out.update(self.split_prompt(encoded, batch))
        return out

    def split_prompt(self, encoded: list[tuple[list[int], int]], batch: int) -> dict[str, torch.Tensor]:
        """The same tokens as prompt ``[batch, P]`` + responses ``[batch, n, L]`` (right-padded) for the
        shared-prompt scorer; ``{}`` if some ranking's candidates do not share their first P tokens (a
        tokenizer merging across the prompt/response boundary), so that batch runs full sequences."""
        n = self.n
        prompts, responses = [], []
        for i in range(batch):
            group = encoded[i * n:(i + 1) * n]
            p = group[0][1]
            head = group[0][0][:p]
            if any(ids[:p] != head for ids, _ in group):
                return {}
            prompts.append(head)
            responses.extend(ids[p:] for ids, _ in group)

        def pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
            ids = torch.full((len(rows), max(len(r) for r in rows)), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, r in enumerate(rows):
                ids[j, :len(r)], mask[j, :len(r)] = torch.tensor(r), 1
            return ids, mask

        p_ids, p_mask = pad(prompts)
        c_ids, c_mask = pad(responses)
        return {"prompt_ids": p_ids, "prompt_mask": p_mask, "completion_ids": c_ids.view(batch, n, -1),
                "completion_mask": c_mask.view(batch, n, -1)}


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of the response tokens and their count, per sequence.

    Inputs are ``[..., seq]`` (e.g. [batch, n, seq]); all sequences go through the model in one
    forward pass. Returns two float tensors of shape ``[...]``.
    """
    from trl.trainer.utils import selective_log_softmax  # memory-efficient log_softmax + gather

    lead, seq = input_ids.shape[:-1], input_ids.shape[-1]
    ids = input_ids.reshape(-1, seq)
    logits = model(input_ids=ids, attention_mask=attention_mask.reshape(-1, seq), use_cache=False).logits
    token_logps = selective_log_softmax(logits[:, :-1], ids[:, 1:]).float()
    mask = response_mask.reshape(-1, seq)[:, 1:].to(token_logps.dtype)   # position t predicts token t+1
    return (token_logps * mask).sum(-1).reshape(lead), mask.sum(-1).reshape(lead)


# --------------------------------------------------------------------------- loss balance

LOSS_BALANCE_FIELDS = {
    "grad_norm_rank": "||grad L_PRO|| (the ranking term) on the trainable parameters, one micro-batch",
    "grad_norm_sft_weighted": "||grad beta*L_SFT|| (the weighted SFT term), same micro-batch",
    "grad_norm_sum": "||grad (L_PRO + beta*L_SFT)||, same micro-batch (before clipping)",
    "grad_share_rank": "||grad L_PRO|| / (||grad L_PRO|| + ||grad beta*L_SFT||), in [0, 1]",
    "grad_share_sft": "1 - grad_share_rank",
    "grad_cos_rank_sft": "cosine between the two gradients (> 0: they pull the same way)",
    "loss_balance_step": "the global step the gradients were measured at",
}
# also logged every step by the trainer: loss_pro (L_PRO), loss_sft (L_SFT), loss_sft_weighted (beta*L_SFT),
# sft_beta (beta), loss_total, loss_rank_k


def loss_balance(model, parts: PROLossParts) -> dict[str, float]:
    """Gradient norms of the ranking term and of beta*L_SFT on the trainable parameters (see
    :data:`LOSS_BALANCE_FIELDS`). Two ``autograd.grad`` calls that keep the graph: the trainer's
    own backward afterwards, and hence the update, is unchanged."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or not parts.terms:
        return {}
    out = {}
    grads = {}
    for name, term in (("rank", parts.pro), ("sft_weighted", parts.beta * parts.sft)):
        if not term.requires_grad:
            grads[name] = [torch.zeros_like(p) for p in params]
            continue
        gs = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        grads[name] = [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]
    with torch.no_grad():
        sq = lambda gs: sum(float(g.double().pow(2).sum()) for g in gs)
        dot = sum(float((a.double() * b.double()).sum()) for a, b in zip(grads["rank"], grads["sft_weighted"]))
        nr, ns = math.sqrt(sq(grads["rank"])), math.sqrt(sq(grads["sft_weighted"]))
        out["grad_norm_rank"], out["grad_norm_sft_weighted"] = nr, ns
        out["grad_norm_sum"] = math.sqrt(max(nr * nr + ns * ns + 2 * dot, 0.0))
        out["grad_share_rank"] = nr / (nr + ns) if nr + ns > 0 else math.nan
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


# --------------------------------------------------------------------------- trainer

@dataclass
class PROConfig(TrainingArguments):
    """``TrainingArguments`` plus PRO's own settings. Defaults follow the paper's code (spec §3.4):
    constant LR, no warmup, AdamW with weight decay 0.01, gradient clipping 1.0."""
    ranking_len: int = field(default=2, metadata={"help": "candidates per prompt n (1 = SFT on the top-1)"})
    sft_weight: float = field(default=0.05, metadata={"help": "beta = sft_weight * (n-1)^2"})
    use_temperature: bool = field(default=True, metadata={"help": "reward-gap temperatures (needs rewards)"})
    block_size: int = field(default=512, metadata={"help": "max tokens of prompt + response"})
    max_prompt_tokens: int = field(default=384, metadata={"help": "prompt left-truncation (block - 128)"})
    share_prompt: bool = field(default=True, metadata={"help": "encode each prompt once for its n candidates "
                                                               "(same numbers up to float rounding)"})
    loss_balance_steps: int = field(default=20, metadata={
        "help": "every this many steps (and at the last) log the gradient norms of L_PRO and beta*L_SFT; 0: never"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "the collator needs the raw columns"})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "the paper: constant LR"})
    weight_decay: float = field(default=0.01, metadata={"help": "torch AdamW's default, as the paper"})
    optim: str = field(default="adamw_torch", metadata={"help": "torch.optim.AdamW"})
    report_to: str | list[str] = field(default="none", metadata={"help": "no trackers by default"})


class PROTrainer(Trainer):
    """``transformers.Trainer`` with PRO's loss: each prompt encoded once for its n candidates
    (``args.share_prompt``, the default), else all n full sequences in one forward pass.

    The train dataset holds rankings (``prompt``, ``responses`` best first, ``rewards``); the
    collator is :class:`RankingCollator`. With ``args.ranking_len == 1`` this is the paper's
    SFT baseline (summed NLL of the top-1 response, weight 1).
    """

    loss_is_scaled_for_ga = False      # compute_loss returns a per-micro-batch mean; Trainer divides by GA

    def __init__(self, model=None, args: PROConfig | None = None, data_collator=None, train_dataset=None,
                 processing_class=None, **kwargs):
        if args is None or not isinstance(args, PROConfig):
            raise TypeError("PROTrainer needs args=PROConfig(...)")
        if processing_class is None:
            raise ValueError("PROTrainer needs processing_class=<the policy's tokenizer>")
        if data_collator is None:
            data_collator = RankingCollator(processing_class, args.ranking_len, args.block_size,
                                            args.max_prompt_tokens)
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         processing_class=processing_class, **kwargs)
        self._loss_parts: dict[str, list[float]] = defaultdict(list)
        self._balance: dict[str, float] = {}
        self._balance_step = -1
        self._warned_no_split = False

    def get_decay_parameter_names(self, model) -> list[str]:
        # The paper: torch.optim.AdamW(model.parameters(), lr) -- weight decay on every parameter.
        return [name for name, _ in model.named_parameters()]

    def score(self, model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed response log-probs and response token counts, [batch, n]: the prompt encoded once
        (``args.share_prompt``, :func:`divscale.train.logprobs.logprobs_from_ids`) or n full sequences."""
        if self.args.share_prompt and "prompt_ids" in inputs:
            from divscale.train.logprobs import logprobs_from_ids

            return logprobs_from_ids(model, inputs["prompt_ids"], inputs["prompt_mask"], inputs["completion_ids"],
                                     inputs["completion_mask"], share_prompt=True,
                                     pad_token_id=int(getattr(self.data_collator, "pad_id", 0) or 0))
        if self.args.share_prompt and not self._warned_no_split:
            self._warned_no_split = True
            logging.getLogger(__name__).warning(
                "share_prompt: a batch's candidates do not share their prompt tokens (the tokenizer merges across "
                "the prompt/response boundary); such batches run one full sequence per candidate")
        return sequence_logprobs(model, inputs["input_ids"], inputs["attention_mask"], inputs["response_mask"])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logp_sum, n_tokens = self.score(model, inputs)
        scores = logp_sum / n_tokens
        rewards = inputs["rewards"] if self.args.use_temperature else None
        parts = pro_loss_parts(scores, rewards, sft_nll=-logp_sum[:, 0], sft_weight=self.args.sft_weight)
        if model.training:
            with torch.no_grad():
                floats = parts.as_floats()
            for key, value in floats.items():
                self._loss_parts[key].append(value)
            if self._balance_due(parts):
                self._balance = loss_balance(model, parts)
                if self._balance:
                    self._balance["loss_balance_step"] = self.state.global_step
                self._balance_step = self.state.global_step
        return (parts.total, {"scores": scores.detach()}) if return_outputs else parts.total

    def _balance_due(self, parts: PROLossParts) -> bool:
        every, step = self.args.loss_balance_steps, self.state.global_step
        if not every or not parts.terms or not parts.total.requires_grad or step == self._balance_step:
            return False
        if self.args.world_size > 1 or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return False                                # sharded / all-reduced gradients: not measured here
        return step % every == 0 or (self.state.max_steps > 0 and step == self.state.max_steps - 1)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._loss_parts:       # training logs: add the loss parts (mean over micro-batches)
            logs.update({k: sum(v) / len(v) for k, v in self._loss_parts.items()})
            self._loss_parts.clear()
        if "loss" in logs and self._balance:          # the loss balance of this logging period's measured step
            logs.update(self._balance)
            self._balance = {}
        super().log(logs, start_time)


class SFTRankTrainer(PROTrainer):
    """The paper's SFT baseline: :class:`PROTrainer` with one candidate (the RM_train-best response)."""

    def __init__(self, *args, **kwargs):
        cfg = kwargs.get("args")
        if cfg is not None and cfg.ranking_len != 1:
            kwargs["args"] = dataclasses.replace(cfg, ranking_len=1)
        super().__init__(*args, **kwargs)
