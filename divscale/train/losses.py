"""Every training loss on rankings, as pure functions of per-completion log-probs ``(batch, K)``, best first.

Every loss takes ``ranks`` (batch, K) ints, 0 = best, equal = tied (default ``0, 1, ..., K-1``, a strict order) and
``mask`` (batch, K) bools, False on padding when rows have fewer than K completions (default ``ranks >= 0``, so
padding may also be marked with rank -1). Rows are sorted best first (as :mod:`divscale.data.formats` writes them),
which only matters for PRO. With z_i = beta * (log pi(y_i|x) - log pi_ref(y_i|x)) (DPO's implicit reward):

- :func:`pro_loss_parts` -- **PRO** (Song et al., AAAI 2024; the scaling paper's loss, spec §3.3). For an n-ranking
  with length-normalised scores s_i = (1/|y^i|) sum_t log pi(y^i_t | x, y^i_<t) and rewards r_1 >= ... >= r_n::

      L_k   = -log exp(s_k t_k^k) / (exp(s_k t_k^k) + sum_{i>k} exp(s_i t_k^i))
      t_k^i = r_k - r_i  (i > k),   t_k^k = max_{i>k} (r_k - r_i)         reward-gap "temperatures" 1/T
      L_PRO = sum_{k=1}^{n-1} mean_batch(L_k)                              summed over k, not averaged
      L     = L_PRO + w (n-1)^2 L_SFT,   L_SFT = mean_batch(-sum_t log pi(y^1_t | ...))

  As the official code (``process_manager.py``), eps = 1e-10 sits inside the log, evaluated as
  ``logsumexp([log eps, ...])`` (identical, cannot underflow). n = 1 is the paper's SFT baseline (weight 1).
  :func:`pro_ranked_loss` applies it to ranked rows: rows without ties or padding go through :func:`pro_loss_parts`
  itself; otherwise each completion's term runs over itself and the completions strictly below it.
- :func:`plackett_luce_loss` -- listwise DPO (Rafailov et al. 2023, appendix A.3): ``-sum_k log softmax_{i ranked
  >= k}(z)_k``, mean over rows. **Ties**: a completion's term runs over itself and the completions ranked *strictly
  below* it; tie-mates are left out of its denominator and the last tie group has no term, so tied completions are
  never ordered against each other. K = 2 is DPO's sigmoid loss ``-log sigmoid(z_1 - z_2)``.
- :func:`all_pairs_dpo_loss` -- the "split the ranking into pairs" baseline (TRL #1831): DPO's sigmoid loss on every
  ordered pair, tie pairs skipped, mean over all pairs of the batch (what DPO on the expanded pairs optimises).
- :func:`lipo_lambda_loss` -- **LiPO-λ** (Liu et al. 2024, arXiv 2402.01878, eq. 4): ``-sum_{psi_i > psi_j} Delta_ij
  log sigmoid(z_i - z_j)`` per row, mean over rows, with the LambdaRank weight ``Delta_ij = |G_i - G_j| |1/D(tau_i) -
  1/D(tau_j)|``: gain ``G_i = 2^psi_i - 1``, discount ``D(tau) = log2(1 + tau)``, tau_i the 1-based position of y_i
  when the row is sorted by z (descending; the policy's current ranking, not differentiated). The labels psi are the
  row's relevance grades from its dense ranks, ``psi_i = max rank - rank_i`` (worst 0), so scores of any scale and
  rank-only data give the same weights; ties have no pair. K = 2 is DPO's sigmoid loss times the constant
  ``Delta = 1 - 1/log2(3) = 0.369``.
- :func:`sft_loss` -- the best completion's NLL: ``sequence_sum`` (summed per completion, mean over rows: the
  paper's SFT and PRO's L_SFT) or ``token_mean`` (summed over the batch's tokens / their count: TRL's SFT).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from divscale.train.options import LOSSES

__all__ = [
    "EPS", "LOSSES", "PROLossParts", "all_pairs_dpo_loss", "default_ranks", "has_ties", "lipo_lambda_loss",
    "plackett_luce_loss", "pro_loss", "pro_loss_parts", "pro_ranked_loss", "sft_loss", "sft_nll_of_best",
]

EPS = 1e-10          # PRO: inside the log, as in the official code


# --------------------------------------------------------------------------- PRO (the paper's loss)

@dataclass
class PROLossParts:
    """The pieces of the PRO objective, for logging: ``total = pro + sft_scale * sft``."""
    total: torch.Tensor
    pro: torch.Tensor              # L_PRO = sum_k terms[k]
    sft: torch.Tensor              # L_SFT (the top response's NLL, batch mean); 0 if not given
    terms: list[torch.Tensor]      # mean_batch(L_k), k = 1 .. n-1
    sft_scale: float               # weight of L_SFT: sft_weight * (n-1)^2, or 1 for the SFT baseline (n = 1)

    def as_tensors(self) -> dict[str, torch.Tensor | float]:
        """The parts as detached tensors (no host sync: a trainer reads them when it logs) and ``sft_scale``."""
        out = {"loss_total": self.total.detach(), "loss_pro": self.pro.detach(), "loss_sft": self.sft.detach(),
               "loss_sft_weighted": self.sft.detach().double() * self.sft_scale, "sft_scale": self.sft_scale}
        out.update({f"loss_rank_{k + 1}": t.detach() for k, t in enumerate(self.terms)})
        return out


def pro_loss_parts(scores: torch.Tensor, rewards: torch.Tensor | None = None,
                   sft_nll: torch.Tensor | float | None = None, sft_weight: float = 0.05) -> PROLossParts:
    """PRO loss with its parts. ``scores`` [batch, n]: length-normalised log-likelihoods, best first.
    ``rewards`` [batch, n] sorted descending (None: no temperature, every t = 1). ``sft_nll``:
    the top-1 response's NLL, [batch] (or its batch mean)."""
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
    scale = sft_weight * (n - 1) ** 2 if n > 1 else 1.0
    return PROLossParts(total=pro + scale * sft, pro=pro, sft=sft, terms=terms, sft_scale=scale)


def pro_loss(scores: torch.Tensor, rewards: torch.Tensor | None = None,
             sft_nll: torch.Tensor | float | None = None, sft_weight: float = 0.05) -> torch.Tensor:
    """The PRO training loss L_PRO + sft_weight*(n-1)^2*L_SFT (see :func:`pro_loss_parts`)."""
    return pro_loss_parts(scores, rewards, sft_nll, sft_weight).total


# --------------------------------------------------------------------------- ranks and masks

def default_ranks(like: torch.Tensor) -> torch.Tensor:
    """``0, 1, ..., K-1`` per row: a strict order, best first."""
    batch, k = like.shape
    return torch.arange(k, device=like.device).expand(batch, k)


def _prepare(logps: torch.Tensor, ranks, mask, least: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    if logps.dim() != 2:
        raise ValueError(f"log-probs must be (batch, K), got shape {tuple(logps.shape)}")
    ranks = default_ranks(logps) if ranks is None else torch.as_tensor(ranks, device=logps.device)
    if ranks.shape != logps.shape:
        raise ValueError(f"ranks {tuple(ranks.shape)} must match the log-probs {tuple(logps.shape)}")
    mask = (ranks >= 0) if mask is None else torch.as_tensor(mask, device=logps.device).bool()
    if mask.shape != logps.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must match the log-probs {tuple(logps.shape)}")
    if (mask.sum(1) < least).any():
        raise ValueError(f"every row needs at least {least} (unmasked) completion(s)")
    return ranks, mask


def has_ties(ranks: torch.Tensor, mask: torch.Tensor | None = None) -> bool:
    mask = (ranks >= 0) if mask is None else mask.bool()
    same = (ranks[:, :, None] == ranks[:, None, :]) & mask[:, :, None] & mask[:, None, :]
    return bool((same.sum((1, 2)) > mask.sum(1)).any())


def _below(ranks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(batch, K, K): ``[b, i, j]`` True when completion j is ranked strictly below completion i."""
    return (ranks[:, None, :] > ranks[:, :, None]) & mask[:, :, None] & mask[:, None, :]


def _implicit_reward(policy_logps: torch.Tensor, ref_logps: torch.Tensor | None, beta: float) -> torch.Tensor:
    return beta * (policy_logps - (0.0 if ref_logps is None else ref_logps))


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


# --------------------------------------------------------------------------- the losses

def plackett_luce_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor | None, beta: float = 0.1,
                       ranks: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Listwise DPO (Plackett-Luce) loss, mean over the batch; see the module docstring for ties.
    ``ref_logps`` None: a reference of zeros (reference-free)."""
    ranks, mask = _prepare(policy_logps, ranks, mask)
    terms, _ = _listwise_terms(_implicit_reward(policy_logps, ref_logps, beta), ranks, mask)
    return terms.sum(1).mean()


def all_pairs_dpo_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor | None, beta: float = 0.1,
                       ranks: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """DPO's sigmoid loss averaged over every ordered pair (i ranked strictly above j) in the batch."""
    ranks, mask = _prepare(policy_logps, ranks, mask)
    z = _implicit_reward(policy_logps, ref_logps, beta)
    pairs = _below(ranks, mask)
    if not pairs.any():
        raise ValueError("no ordered pair in the batch: every row is all ties")
    margins = z[:, :, None] - z[:, None, :]
    return -F.logsigmoid(margins[pairs]).mean()


def lipo_lambda_weights(z: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(batch, K, K) LiPO-λ weights ``Delta_ij`` (module docstring), 0 where j is not ranked strictly below i."""
    worst = ranks.masked_fill(~mask, -1).max(1, keepdim=True).values
    gain = torch.pow(2.0, (worst - ranks).to(z.dtype)) - 1.0
    with torch.no_grad():                                  # tau: positions in the policy's own order, 1-based
        order = z.detach().masked_fill(~mask, -math.inf).argsort(dim=1, descending=True, stable=True)
        tau = torch.empty_like(order)
        tau.scatter_(1, order, torch.arange(1, z.shape[1] + 1, device=z.device).expand_as(order))
    inv_discount = 1.0 / torch.log2(1.0 + tau.to(z.dtype))
    delta = (gain[:, :, None] - gain[:, None, :]).abs() * (inv_discount[:, :, None] - inv_discount[:, None, :]).abs()
    return delta.masked_fill(~_below(ranks, mask), 0.0)


def lipo_lambda_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor | None, beta: float = 0.1,
                     ranks: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """LiPO-λ (arXiv 2402.01878): lambda-weighted pairwise logistic loss on DPO's implicit rewards, summed over a
    row's ordered pairs, mean over rows (module docstring)."""
    ranks, mask = _prepare(policy_logps, ranks, mask)
    z = _implicit_reward(policy_logps, ref_logps, beta)
    pairs = _below(ranks, mask)
    if not pairs.any():
        raise ValueError("no ordered pair in the batch: every row is all ties")
    weights = lipo_lambda_weights(z, ranks, mask)
    per_pair = -F.logsigmoid(z[:, :, None] - z[:, None, :])
    return (weights * per_pair).masked_fill(~pairs, 0.0).sum((1, 2)).mean()


def _top_group(ranks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    best = ranks.masked_fill(~mask, torch.iinfo(ranks.dtype).max).min(1, keepdim=True).values
    return (ranks == best) & mask


def sft_nll_of_best(logps: torch.Tensor, ranks: torch.Tensor | None = None,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per row: the summed NLL of the best completion (the mean over the top tie group when it is tied)."""
    ranks, mask = _prepare(logps, ranks, mask, least=1)
    top = _top_group(ranks, mask)
    return -(logps * top).sum(1) / top.sum(1)


def sft_loss(logps: torch.Tensor, counts: torch.Tensor, ranks: torch.Tensor | None = None,
             mask: torch.Tensor | None = None, reduction: str = "sequence_sum") -> torch.Tensor:
    """The best completion's NLL (module docstring): ``sequence_sum`` = mean over rows of its summed NLL,
    ``token_mean`` = its NLL summed over the batch's tokens / their count (a tied top group counts whole)."""
    if reduction == "sequence_sum":
        return sft_nll_of_best(logps, ranks, mask).mean()
    if reduction != "token_mean":
        raise ValueError(f"sft reduction {reduction!r}: choose sequence_sum or token_mean")
    ranks, mask = _prepare(logps, ranks, mask, least=1)
    top = _top_group(ranks, mask)
    return -(logps * top).sum() / (counts * top).sum().clamp(min=1)


def pro_ranked_loss(scores: torch.Tensor, ranks: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                    rewards: torch.Tensor | None = None, sft_nll: torch.Tensor | float | None = None,
                    sft_weight: float = 0.05) -> PROLossParts:
    """PRO on ranked rows (module docstring). ``scores``: length-normalised log-likelihoods (batch, K), best
    first; ``rewards``: optional (batch, K) rewards for PRO's temperatures; ``sft_nll``: (batch,) or a scalar.
    Without ties and padding this *is* :func:`pro_loss_parts`."""
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
    return PROLossParts(total=pro + weighted, pro=pro, sft=sft, terms=per_k, sft_scale=float(weight_rows.mean()))
