"""Summed completion log-probabilities for K completions of each prompt, the prompt encoded once.

A listwise loss (PRO, Plackett-Luce, all-pairs DPO) needs ``log pi(y_k | x)`` for K completions of
the same prompt x. The naive way runs K full ``prompt + completion`` sequences; at the paper's shape
(prompt <= 384 tokens, completion 128) K = 4 spends about three times the tokens on prompts.
Two ways to run the prompt once, chosen per device (:func:`choose_path`):

``cache`` (CPU). The prompt runs once; its key/value cache (a transformers ``DynamicCache``) is
repeated K times along the batch (``Cache.batch_repeat_interleave``) and serves the K completions in
a second pass, with gradients flowing through both passes. Details that keep the numbers equal to the
naive path:

- prompts are re-laid out left-padded (whatever padding they came with) and the cache holds the
  prompt *without its last token*; the completion pass starts with that last token, so its
  logits predict every completion token and no logits are computed over the prompt;
- position ids are explicit: 0 .. P-2 for the prompt's real tokens, P-1, P, ... for the last
  prompt token and the completion, so a completion sits exactly where it does in ``prompt +
  completion`` whatever the prompt's padding;
- padding keys (left pads in the cache, right pads of completions) are masked out.

On a GPU this path is slower than naive (measured on an H200, OPT-1.3B at the paper's shape: 0.48-0.62x):
two passes, K copies of every layer's cache and a masked attention over them.

``packed`` (GPUs). One sequence per ranking: the prompt once, then its K completions back to back
(``[x, y_1, ..., y_K]``, as arXiv 2410.20305 and li-plus/flash-preference do for pairs), one forward pass:

- a block attention mask: a prompt token sees the prompt before it, a completion token the whole prompt
  and its own completion before it, never another completion; the model's own mask format is built for
  it: a boolean 4-D mask for ``sdpa``, an additive one for ``eager``, a FlexAttention ``BlockMask`` for
  ``flex_attention`` (a model whose attention takes no custom mask, e.g. flash-attention, cannot pack);
- explicit position ids: the prompt 0 .. P-1, each completion P, P+1, ... (it continues the prompt,
  as in ``prompt + completion``);
- logits only where a completion token is predicted (``logits_to_keep`` with per-row positions): the
  prompt's last position (shared by the K first tokens) and each completion's positions but its last;
- no atomics (sums are one-hot contractions), so it runs under ``torch.use_deterministic_algorithms``.

It needs no cache, so it also runs under gradient checkpointing.

Where the prompt cannot be shared (an encoder-decoder, no ``position_ids`` argument, a sliding window
shorter than the sequence, for ``cache`` a model that returns no cache -- e.g. gradient checkpointing in
training --, for ``packed`` an attention implementation without custom masks, or a path whose result
disagrees with the naive one on a first, no-grad check) the naive path is used and a line is logged once
per reason.

Entry point: :func:`logprobs_from_ids` (token tensors in). Text is tokenised in one place, by the trainer's rule
(:class:`divscale.train.trainer.RankingCollator`, whose output this takes as it is).
"""
from __future__ import annotations

import inspect
import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

_LOGGED: set[str] = set()
_VERIFIED: dict[str, bool] = {}       # model class + attention implementation -> shared path agrees with naive
VERIFY_TOL = 1e-3                     # the first-use check (no grad): max |shared - naive| per completion token
VERIFY_TOL_LOW = 5e-2                 # ... for half-precision weights or autocast


def _log_once(key: str, message: str) -> None:
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.warning(message)


# --------------------------------------------------------------------------- tensors

def _token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from trl.trainer.utils import selective_log_softmax  # memory-efficient log_softmax + gather

    return selective_log_softmax(logits, targets).float()


def _left_align(ids: torch.Tensor, mask: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same rows left-padded (real tokens at the end), width = longest row."""
    lengths = mask.sum(-1)
    width = int(lengths.max()) if lengths.numel() else 0
    out_ids = ids.new_full((ids.shape[0], width), pad_id)
    out_mask = mask.new_zeros((ids.shape[0], width))
    for i in range(ids.shape[0]):
        n = int(lengths[i])
        if n:
            out_ids[i, width - n:] = ids[i][mask[i].bool()]
            out_mask[i, width - n:] = 1
    return out_ids, out_mask


def _right_align(ids: torch.Tensor, mask: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same rows right-padded (real tokens first), width = longest row (at least 1)."""
    lengths = mask.sum(-1)
    width = max(int(lengths.max()) if lengths.numel() else 0, 1)
    out_ids = ids.new_full((ids.shape[0], width), pad_id)
    out_mask = mask.new_zeros((ids.shape[0], width))
    for i in range(ids.shape[0]):
        n = int(lengths[i])
        if n:
            out_ids[i, :n] = ids[i][mask[i].bool()]
            out_mask[i, :n] = 1
    return out_ids, out_mask


def _check_contiguous(mask: torch.Tensor, what: str) -> None:
    """Real tokens must form one run per row (left or right padding, not holes)."""
    m = mask.reshape(-1, mask.shape[-1]).to(torch.int8)
    if m.shape[-1] > 1 and ((m[:, 1:] - m[:, :-1]).abs().sum(-1) > 2).any():
        raise ValueError(f"{what}: the attention mask has holes; pad on the left or the right only")


def _inner(model):
    """The model under a DDP / DeepSpeed wrapper (``.module``), for signatures and config; calls go to the wrapper."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _forward_params(model):
    return inspect.signature(_inner(model).forward).parameters


def _cache_arg(model) -> str | None:
    """The name of the forward's cache argument: ``cache`` (transformers >= 5) or ``past_key_values``."""
    params = _forward_params(model)
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def _naive(model, prompt_ids, prompt_mask, completion_ids, completion_mask, pad_id):
    """One ``prompt + completion`` sequence per completion, right-padded, positions from 0."""
    batch, k, lc = completion_ids.shape
    p_ids, p_mask = _right_align(prompt_ids, prompt_mask, pad_id)
    p_len = p_mask.sum(-1)
    c_ids, c_mask = completion_ids.reshape(batch * k, lc), completion_mask.reshape(batch * k, lc)
    c_len = c_mask.sum(-1)
    rows = batch * k
    total = (p_len.repeat_interleave(k) + c_len)
    width = int(total.max())
    ids = prompt_ids.new_full((rows, width), pad_id)
    att = prompt_mask.new_zeros((rows, width))
    score = torch.zeros((rows, width), dtype=torch.bool, device=ids.device)
    for r in range(rows):
        b, p, c = r // k, int(p_len[r // k]), int(c_len[r])
        ids[r, :p] = p_ids[b, :p]
        ids[r, p:p + c] = c_ids[r][c_mask[r].bool()]
        att[r, :p + c] = 1
        score[r, p:p + c] = True
    logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits
    token_logps = _token_logps(logits[:, :-1], ids[:, 1:])
    mask = score[:, 1:].to(token_logps.dtype)          # position t predicts token t+1
    return (token_logps * mask).sum(-1).reshape(batch, k), mask.sum(-1).reshape(batch, k)


def _shared(model, prompt_ids, prompt_mask, completion_ids, completion_mask, pad_id, cache_arg):
    """The prompt once (minus its last token) into a KV cache, repeated K times; then the completions."""
    batch, k, lc = completion_ids.shape
    p_ids, p_mask = _left_align(prompt_ids, prompt_mask, pad_id)
    p_len = p_mask.sum(-1)                                             # P_b >= 1
    last = p_ids[:, -1]                                                # the last real prompt token
    prefix_ids, prefix_mask = p_ids[:, :-1], p_mask[:, :-1]            # left-padded, P_b - 1 real tokens
    c_ids, c_mask = _right_align(completion_ids.reshape(batch * k, lc), completion_mask.reshape(batch * k, lc),
                                 pad_id)
    lc = c_ids.shape[1]
    # the completion pass reads [last prompt token, c_1 .. c_{L-1}] and predicts [c_1 .. c_L]
    step_ids = torch.cat([last.repeat_interleave(k)[:, None], c_ids[:, :-1]], dim=1)
    step_mask = torch.cat([torch.ones_like(c_mask[:, :1]), c_mask[:, :-1]], dim=1)
    start = (p_len - 1).repeat_interleave(k)                            # position of the last prompt token
    # padding slots repeat the row's last real position: never past prompt + completion (learned position
    # tables have only that many rows)
    real = step_mask.sum(-1, keepdim=True)
    positions = start[:, None] + torch.minimum(torch.arange(lc, device=c_ids.device)[None], real - 1)
    kwargs: dict[str, Any] = {}
    if prefix_ids.shape[1] > 0:
        prefix_pos = (prefix_mask.long().cumsum(-1) - 1).clamp(min=0)
        fwd = {"input_ids": prefix_ids, "attention_mask": prefix_mask, "position_ids": prefix_pos, "use_cache": True}
        if "logits_to_keep" in _forward_params(model):
            fwd["logits_to_keep"] = 1                                   # the prompt's logits are never needed
        out = model(**fwd)
        cache = getattr(out, cache_arg, None)
        if cache is None:
            return None
        if hasattr(cache, "batch_repeat_interleave"):
            cache.batch_repeat_interleave(k)
        elif isinstance(cache, (tuple, list)):                         # legacy tuple-of-tuples caches
            cache = tuple(tuple(t.repeat_interleave(k, dim=0) for t in layer) for layer in cache)
        else:
            return None
        kwargs[cache_arg] = cache
        att = torch.cat([prefix_mask.repeat_interleave(k, dim=0), step_mask], dim=1)
    else:
        att = step_mask
    logits = model(input_ids=step_ids, attention_mask=att, position_ids=positions, use_cache=bool(kwargs),
                   **kwargs).logits
    mask = c_mask.to(torch.float32)
    token_logps = _token_logps(logits, c_ids)
    return (token_logps * mask).sum(-1).reshape(batch, k), mask.sum(-1).reshape(batch, k)


def _starts(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's first real token (rows are contiguous runs: left or right padding)."""
    return (mask.cumsum(-1) == 0).sum(-1)


def packed_layout(prompt_ids, prompt_mask, completion_ids, completion_mask, pad_id: int, multiple: int = 1) -> dict:
    """One row per ranking, ``[prompt, completion_1, ..., completion_K, pads]``, built by gathers (no python loop
    over rows, no scatter). Returns ``ids``, ``positions``, ``segment`` ``(B, S)`` (segment -1 pad, 0 prompt,
    k + 1 completion k), ``keep`` ``(B, Kp)`` (the positions whose logits are needed: the prompt's last, then
    every completion position but its last), ``target``/``scored``/``owner`` ``(B, Kp)`` (the token each kept
    position predicts, whether it is a completion token after the first, and its completion), ``first`` ``(B, K)``
    (each completion's first token, predicted by the prompt's last position) and ``lengths`` ``(B, K)``.
    ``multiple``: S rounded up to it (aligned widths for GPU attention kernels)."""
    batch, k, lc = completion_ids.shape
    device = prompt_ids.device
    p_len = prompt_mask.sum(-1)                                              # (B,)
    c_len = completion_mask.sum(-1)                                          # (B, K)
    p_start, c_start = _starts(prompt_mask), _starts(completion_mask)
    c_end = p_len[:, None] + c_len.cumsum(-1)                                # (B, K) exclusive ends
    c_off = c_end - c_len
    total = c_end[:, -1]
    width = int(total.max())
    width = -(-width // multiple) * multiple
    col = torch.arange(width, device=device)[None]                           # (1, S)
    in_prompt = col < p_len[:, None]
    real = col < total[:, None]
    which = (col[:, :, None] >= c_end[:, None, :]).sum(-1).clamp(max=k - 1)   # (B, S) completion of a column
    off = c_off.gather(1, which)
    local = col - off                                                        # index inside its completion
    p_src = (p_start[:, None] + col).clamp(max=prompt_ids.shape[1] - 1)
    c_src = which * lc + (c_start.gather(1, which) + local).clamp(0, lc - 1)
    ids = torch.where(in_prompt, prompt_ids.gather(1, p_src),
                      completion_ids.reshape(batch, k * lc).gather(1, c_src))
    ids = torch.where(real, ids, torch.full_like(ids, pad_id))
    positions = torch.where(in_prompt, col, p_len[:, None] + local)
    positions = torch.where(real, positions, torch.zeros_like(positions))
    segment = torch.where(in_prompt, torch.zeros_like(col), which + 1)
    segment = torch.where(real, segment, torch.full_like(segment, -1))
    # kept positions, in column order: the last prompt token, then each completion's tokens but its last
    length_here = c_len.gather(1, which)
    scored = (~in_prompt) & real & (local < length_here - 1)
    wanted = scored | (col == (p_len - 1)[:, None])
    n_kept = wanted.sum(-1)
    order = torch.sort(torch.where(wanted, col, col + width), dim=-1, stable=True).values % width
    keep = order[:, :int(n_kept.max())]
    valid = torch.arange(keep.shape[1], device=device)[None] < n_kept[:, None]
    keep = torch.where(valid, keep, (p_len - 1)[:, None])                   # filler slots: any real column
    nxt = torch.cat([ids[:, 1:], ids[:, -1:]], dim=1)
    first = completion_ids.reshape(batch, k * lc).gather(
        1, (torch.arange(k, device=device)[None] * lc + c_start.clamp(max=lc - 1)))
    return {"ids": ids, "positions": positions, "segment": segment, "keep": keep,
            "target": nxt.gather(1, keep), "scored": scored.gather(1, keep) & valid,
            "owner": (segment.gather(1, keep) - 1).clamp(min=0), "first": first, "lengths": c_len}


def block_mask_dense(segment: torch.Tensor) -> torch.Tensor:
    """``(B, 1, S, S)`` bool: query q may attend key kv (see :func:`packed_layout`); a padding slot attends itself
    only, so no row of the softmax is empty."""
    q = torch.arange(segment.shape[1], device=segment.device)
    sq, sk = segment[:, :, None], segment[:, None, :]
    allowed = (q[None, None, :] <= q[None, :, None]) & ((sk == 0) | (sk == sq)) & (sq >= 0) & (sk >= 0)
    return (allowed | torch.eye(len(q), dtype=torch.bool, device=q.device)[None])[:, None]


def _flex_block_mask(segment: torch.Tensor):
    """The same rule as :func:`block_mask_dense` as a FlexAttention ``BlockMask`` (blocks no query needs are
    skipped, not computed and masked)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def rule(b, h, q, kv):
        sq, sk = segment[b, q], segment[b, kv]
        return ((kv <= q) & ((sk == 0) | (sk == sq)) & (sq >= 0) & (sk >= 0)) | (q == kv)

    batch, width = segment.shape
    return create_block_mask(rule, batch, None, width, width, device=segment.device)


PACKED_ATTENTION = ("sdpa", "eager", "flex_attention")     # implementations that take a custom mask


def attention_implementation(model) -> str:
    """The model's attention implementation (``config._attn_implementation``: sdpa, eager, flex_attention, ...)."""
    return str(getattr(getattr(_inner(model), "config", None), "_attn_implementation", None) or "eager")


def _packed(model, prompt_ids, prompt_mask, completion_ids, completion_mask, pad_id):
    """One packed sequence per ranking (see the module docstring), one forward pass."""
    k = completion_ids.shape[1]
    impl = attention_implementation(model)
    lay = packed_layout(prompt_ids, prompt_mask, completion_ids, completion_mask, pad_id,
                        multiple=16 if prompt_ids.device.type == "cuda" else 1)
    if impl == "flex_attention":
        mask = _flex_block_mask(lay["segment"])
    else:
        mask = block_mask_dense(lay["segment"])
        if impl == "eager":                               # eager adds the mask to the scores
            dtype = _inner(model).get_input_embeddings().weight.dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    fwd = {"input_ids": lay["ids"], "attention_mask": mask, "position_ids": lay["positions"], "use_cache": False}
    if "logits_to_keep" in _forward_params(model):
        logits = model(**fwd, logits_to_keep=lay["keep"]).logits               # (B, Kp, V)
    else:
        logits = model(**fwd).logits
        logits = torch.take_along_dim(logits, lay["keep"][..., None], dim=1)
    first = torch.log_softmax(logits[:, 0].float(), dim=-1).gather(1, lay["first"])          # (B, K)
    has = lay["lengths"] > 0
    token = _token_logps(logits, lay["target"]) * lay["scored"]                  # (B, Kp)
    one_hot = torch.nn.functional.one_hot(lay["owner"], k).to(token.dtype)      # (B, Kp, K)
    rest = torch.einsum("bp,bpk->bk", token, one_hot)
    return torch.where(has, first, torch.zeros_like(first)) + rest, lay["lengths"].to(torch.float32)


def can_share_prompt(model, total_length: int | None = None) -> str | None:
    """``None`` if the prompt's cache can serve its completions (the ``cache`` path), else the reason it cannot."""
    reason = _common_reason(model, total_length)
    if reason:
        return reason
    inner = _inner(model)
    if _cache_arg(model) is None:
        return "its forward takes no cache argument"
    checkpointing = getattr(inner, "is_activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = getattr(inner, "is_gradient_checkpointing", False)
    if checkpointing and model.training:
        return "gradient checkpointing disables the cache in training"
    return None


def can_pack(model, total_length: int | None = None) -> str | None:
    """``None`` if the model can score a packed ranking (the ``packed`` path), else the reason it cannot."""
    reason = _common_reason(model, total_length)
    if reason:
        return reason
    impl = attention_implementation(model)
    if impl not in PACKED_ATTENTION:
        return f"its attention implementation {impl!r} takes no custom mask (packing needs one of {PACKED_ATTENTION})"
    return None


def _common_reason(model, total_length: int | None) -> str | None:
    config = getattr(_inner(model), "config", None)
    if config is not None and getattr(config, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    if "position_ids" not in _forward_params(model):
        return "its forward takes no position_ids"
    window = getattr(config, "sliding_window", None) if config is not None else None
    if window and (getattr(config, "use_sliding_window", True) is not False) and total_length is not None \
            and int(window) < total_length:
        return f"a sliding window ({window}) shorter than the sequences ({total_length})"
    return None


SHARE_PATHS = ("naive", "cache", "packed")
_PATH_FUNCTIONS = {"cache": "_shared", "packed": "_packed"}


def choose_path(model, device_type: str, total_length: int | None = None) -> tuple[str, list[str]]:
    """The fastest path that can serve ``model`` on ``device_type``, and why the faster ones cannot.

    CPU: ``cache`` (2.5x naive at n = 4 on one core), else ``packed``; any accelerator: ``packed`` (the ``cache``
    path measured slower than naive on an H200), else ``naive``."""
    order = ("cache", "packed") if device_type == "cpu" else ("packed",)
    reasons = []
    for path in order:
        reason = (can_share_prompt if path == "cache" else can_pack)(model, total_length)
        if reason is None:
            return path, reasons
        reasons.append(f"{path}: {reason}")
    if device_type != "cpu":
        reasons.append("cache: slower than one sequence per completion on GPUs")
    return "naive", reasons


def logprobs_from_ids(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                      completion_mask: torch.Tensor, share_prompt: bool | str = True,
                      pad_token_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of the completion tokens and their counts, both ``(batch, K)``.

    ``prompt_ids``/``prompt_mask`` ``(batch, Lp)``, left- or right-padded (rows may differ in
    length; each needs >= 1 real token). ``completion_ids``/``completion_mask`` ``(batch, K, Lc)``,
    left- or right-padded; an empty completion scores 0 with count 0. ``share_prompt``: ``True`` encodes
    each prompt once by the device's path (:func:`choose_path`), ``"cache"`` / ``"packed"`` by that path
    (the benchmarks), ``False`` (or ``"naive"``) runs K full sequences. With K = 1 there is nothing to share
    and the naive path runs. Values and gradients equal the naive path's up to float rounding.
    """
    if prompt_ids.dim() != 2 or completion_ids.dim() != 3 or completion_ids.shape[0] != prompt_ids.shape[0]:
        raise ValueError(f"need prompt_ids (batch, Lp) and completion_ids (batch, K, Lc); got "
                         f"{tuple(prompt_ids.shape)} and {tuple(completion_ids.shape)}")
    if share_prompt not in (True, False, *SHARE_PATHS):
        raise ValueError(f"share_prompt={share_prompt!r}: give True (the device's path), False or one of {SHARE_PATHS}")
    if (prompt_mask.sum(-1) < 1).any():
        raise ValueError("every prompt needs at least one token (e.g. BOS) to predict its completion from")
    _check_contiguous(prompt_mask, "prompt_mask")
    _check_contiguous(completion_mask, "completion_mask")
    k = completion_ids.shape[1]
    args = (model, prompt_ids, prompt_mask, completion_ids, completion_mask, pad_token_id)
    if share_prompt in (False, "naive") or k < 2:
        return _naive(*args)
    name = type(_inner(model)).__name__
    total = int(prompt_mask.sum(-1).max() + completion_mask.sum(-1).max())
    if share_prompt is True:
        path, reasons = choose_path(model, prompt_ids.device.type, total)
        for reason in reasons:
            _log_once(f"{name}:{reason}", f"share_prompt: {name} on {prompt_ids.device.type} does not use the "
                      f"{reason}")
        if path == "naive":
            return _naive(*args)
    else:
        path = share_prompt
        reason = (can_share_prompt if path == "cache" else can_pack)(model, total)
        if reason is not None:
            _log_once(f"{name}:{path}:{reason}", f"share_prompt: {name} cannot share the prompt by the {path} path "
                      f"({reason}); using one full sequence per completion")
            return _naive(*args)
    reason = _verify(model, path, *args[1:])
    if reason is not None:
        _log_once(f"{name}:{path}:{reason}", f"share_prompt: {name} cannot share the prompt by the {path} path "
                  f"({reason}); using one full sequence per completion")
        return _naive(*args)
    out = _run(path, *args)
    if out is None:
        _log_once(f"{name}:nocache", f"share_prompt: {name} returned no cache; using one full sequence per completion")
        return _naive(*args)
    return out


def _run(path: str, model, prompt_ids, prompt_mask, completion_ids, completion_mask, pad_id):
    function = globals()[_PATH_FUNCTIONS[path]]          # looked up at call time (tests replace them)
    if path == "cache":
        return function(model, prompt_ids, prompt_mask, completion_ids, completion_mask, pad_id, _cache_arg(model))
    return function(model, prompt_ids, prompt_mask, completion_ids, completion_mask, pad_id)


def _verify(model, path: str, prompt_ids, prompt_mask, completion_ids, completion_mask, pad_id) -> str | None:
    """Once per model class, attention implementation and path: that path and the naive one agree (no grad, eval
    mode) on the first prompt of a batch."""
    inner = _inner(model)
    key = f"{type(inner).__module__}.{type(inner).__name__}:{attention_implementation(model)}:{path}"
    if key not in _VERIFIED:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                args = (prompt_ids[:1], prompt_mask[:1], completion_ids[:1], completion_mask[:1], pad_id)
                naive, counts = _naive(model, *args)
                shared = _run(path, model, *args)
                low = any(p.dtype in (torch.float16, torch.bfloat16) for p in inner.parameters()) or \
                    torch.is_autocast_enabled(prompt_ids.device.type)
                tol = VERIFY_TOL_LOW if low else VERIFY_TOL          # per completion token
                _VERIFIED[key] = shared is not None and bool(
                    ((shared[0] - naive).abs() <= tol * counts.clamp(min=1)).all())
                if not _VERIFIED[key]:
                    log.warning("share_prompt check: max |shared - naive| = %s on %s",
                                None if shared is None else float((shared[0] - naive).abs().max()), key)
        finally:
            model.train(was_training)
    return None if _VERIFIED[key] else "its shared-prompt result differs from the full sequences"
