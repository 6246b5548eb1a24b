"""Listwise preference losses: pure functions of per-completion summed log-probs, shape (batch, K), best first.

Every loss takes ``ranks`` (batch, K) ints, 0 = best, equal = tied (default: ``0, 1, ..., K-1``, a strict
order) and ``mask`` (batch, K) bools, False on padding when rows have fewer than K completions (default:
``ranks >= 0``, so padding may also be marked with rank -1). Rows must be sorted best first (as
:mod:`divscale.data.formats` writes them), which only matters for :func:`pro_loss`.

With z_i = beta * (log pi(y_i|x) - log pi_ref(y_i|x)) (DPO's implicit reward):

- :func:`plackett_luce_loss` (listwise DPO; Rafailov et al. 2023, appendix A.3):
  ``-sum_k log softmax_{i ranked >= k}(z)_k``, mean over the batch. **Ties**: a completion's term runs
  over itself and the completions ranked *strictly below* it; its tie-mates are left out of its
  denominator, and a completion with nothing below it (the last tie group) has no term. So tied
  completions are never ordered against each other, and with no ties this is the usual
  Plackett-Luce likelihood. For K = 2 it is DPO's sigmoid loss ``-log sigmoid(z_1 - z_2)``.
- :func:`all_pairs_dpo_loss`: the "split the ranking into pairs" baseline (TRL #1831): DPO's sigmoid loss on
  every ordered pair (i better than j), tie pairs skipped, **mean over all pairs of the batch** (what
  training DPO on the expanded pair dataset optimises).
- :func:`pro_loss`: the paper's PRO loss (spec §3.3), unchanged, from :mod:`divscale.train.pro` (length-normalised
  scores, optional reward temperatures, SFT term). :func:`pro_ranked_loss` applies it to ranked rows:
  rows without ties or padding go through :func:`pro_loss` itself; otherwise each completion's softmax
  term runs over itself and the completions strictly below it (the same tie rule as above), terms
  summed over positions and averaged over the rows that have them, as PRO's ``sum_k mean_batch(L_k)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from divscale.train.pro import EPS, PROLossParts, pro_loss, pro_loss_parts

__all__ = [
    "LOSSES",
    "all_pairs_dpo_loss",
    "default_ranks",
    "has_ties",
    "plackett_luce_loss",
    "pro_loss",
    "pro_loss_parts",
    "pro_ranked_loss",
    "sft_nll_of_best",
]

LOSSES = ("pro", "plackett_luce", "all_pairs_dpo", "sft")


def default_ranks(like: torch.Tensor) -> torch.Tensor:
    """``0, 1, ..., K-1`` per row: a strict order, best first."""
    batch, k = like.shape
    return torch.arange(k, device=like.device).expand(batch, k)


def _prepare(logps: torch.Tensor, ranks, mask) -> tuple[torch.Tensor, torch.Tensor]:
    if logps.dim() != 2:
        raise ValueError(f"log-probs must be (batch, K), got shape {tuple(logps.shape)}")
    ranks = default_ranks(logps) if ranks is None else torch.as_tensor(ranks, device=logps.device)
    if ranks.shape != logps.shape:
        raise ValueError(f"ranks {tuple(ranks.shape)} must match the log-probs {tuple(logps.shape)}")
    mask = (ranks >= 0) if mask is None else torch.as_tensor(mask, device=logps.device).bool()
    if mask.shape != logps.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must match the log-probs {tuple(logps.shape)}")
    if (mask.sum(1) < 2).any():
        raise ValueError("every row needs at least 2 (unmasked) completions")
    return ranks, mask


def has_ties(ranks: torch.Tensor, mask: torch.Tensor | None = None) -> bool:
    mask = (ranks >= 0) if mask is None else mask.bool()
    same = (ranks[:, :, None] == ranks[:, None, :]) & mask[:, :, None] & mask[:, None, :]
    return bool((same.sum((1, 2)) > mask.sum(1)).any())


def _below(ranks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(batch, K, K): ``[b, i, j]`` True when completion j is ranked strictly below completion i."""
    return (ranks[:, None, :] > ranks[:, :, None]) & mask[:, :, None] & mask[:, None, :]


def _listwise_terms(z: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor, temperatures=None,
                    log_eps: float | None = None):
    """Per-completion softmax terms ``-log exp(z_i t_ii) / (exp(z_i t_ii) + sum_{j below i} exp(z_j t_ij))``
    and which of them exist (a completion with nothing below it has none). ``temperatures`` (batch, K, K)
    multiplies the logits (PRO's reward gaps); None: all 1. ``log_eps``: PRO's eps inside the log."""
    below = _below(ranks, mask)
    k = z.shape[1]
    eye = torch.eye(k, dtype=torch.bool, device=z.device)[None]
    logits = z[:, None, :].expand(-1, k, -1)
    if temperatures is not None:
        logits = logits * temperatures
    members = below | (eye & mask[:, :, None])
    lse = torch.logsumexp(logits.masked_fill(~members, -math.inf), dim=2)
    if log_eps is not None:
        lse = torch.logaddexp(lse, torch.full_like(lse, log_eps))
    own = torch.diagonal(logits, dim1=1, dim2=2)
    exists = below.any(2)
    return (lse - own).masked_fill(~exists, 0.0), exists


def plackett_luce_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor | None, beta: float = 0.1,
                       ranks: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Listwise DPO (Plackett-Luce) loss, mean over the batch; see the module docstring for ties.
    ``ref_logps`` None: a reference of zeros (reference-free)."""
    ranks, mask = _prepare(policy_logps, ranks, mask)
    z = beta * (policy_logps - (0.0 if ref_logps is None else ref_logps))
    terms, _ = _listwise_terms(z, ranks, mask)
    return terms.sum(1).mean()


def all_pairs_dpo_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor | None, beta: float = 0.1,
                       ranks: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """DPO's sigmoid loss averaged over every ordered pair (i ranked strictly above j) in the batch."""
    ranks, mask = _prepare(policy_logps, ranks, mask)
    z = beta * (policy_logps - (0.0 if ref_logps is None else ref_logps))
    pairs = _below(ranks, mask)
    if not pairs.any():
        raise ValueError("no ordered pair in the batch: every row is all ties")
    margins = z[:, :, None] - z[:, None, :]
    return -F.logsigmoid(margins[pairs]).mean()


def sft_nll_of_best(logps: torch.Tensor, ranks: torch.Tensor | None = None,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per row: the summed NLL of the best completion (the mean over the top tie group when it is tied)."""
    ranks, mask = _prepare(logps, ranks, mask)
    best = ranks.masked_fill(~mask, torch.iinfo(ranks.dtype).max).min(1, keepdim=True).values
    top = (ranks == best) & mask
    return -(logps * top).sum(1) / top.sum(1)


def pro_ranked_loss(scores: torch.Tensor, ranks: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                    rewards: torch.Tensor | None = None, sft_nll: torch.Tensor | None = None,
                    sft_weight: float = 0.05) -> PROLossParts:
    """PRO on ranked rows (module docstring). ``scores``: length-normalised log-likelihoods (batch, K), best
    first; ``rewards``: optional (batch, K) RM rewards for PRO's temperatures; ``sft_nll``: (batch,).
    Without ties and padding this *is* :func:`divscale.train.pro.pro_loss_parts`."""
    ranks, mask = _prepare(scores, ranks, mask)
    n_rows = mask.sum(1)
    sorted_best_first = bool((ranks[:, 1:] >= ranks[:, :-1]).logical_or(~mask[:, 1:]).all())
    if not sorted_best_first:
        raise ValueError("PRO needs each row sorted best first (ranks non-decreasing)")
    if bool(mask.all()) and not has_ties(ranks, mask):
        return pro_loss_parts(scores, rewards, sft_nll=sft_nll, sft_weight=sft_weight)
    temps = None
    if rewards is not None:
        rewards = rewards.to(scores.dtype)
        below = _below(ranks, mask)
        gaps = (rewards[:, :, None] - rewards[:, None, :]).masked_fill(~below, 0.0)     # 1/T_i^j = r_i - r_j
        pos = gaps.max(2).values                                                        # 1/T_i^i
        temps = gaps.clone()
        idx = torch.arange(scores.shape[1], device=scores.device)
        temps[:, idx, idx] = pos
    terms, exists = _listwise_terms(scores, ranks, mask, temps, log_eps=math.log(EPS))
    per_k = [terms[exists[:, k], k].mean() for k in range(scores.shape[1]) if exists[:, k].any()]
    pro = torch.stack(per_k).sum()
    weight_rows = sft_weight * (n_rows.to(scores.dtype) - 1) ** 2
    sft = scores.new_zeros(()) if sft_nll is None else torch.as_tensor(sft_nll, dtype=scores.dtype).mean()
    weighted = scores.new_zeros(()) if sft_nll is None else (weight_rows * sft_nll).mean()
    beta = float(weight_rows.mean())
    return PROLossParts(total=pro + weighted, pro=pro, sft=sft, terms=per_k, beta=beta)

