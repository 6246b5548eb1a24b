"""The project's own small policy (``policy.model: tiny-gpt``): a byte-level BPE tokenizer trained on pool dialogues,
a small GPT-2 sized by ``PolicyConfig``, and a short causal-LM warm-up so the policy writes HH-like text before
SFT/PRO. Each is cached under ``cache_dir()/policies/<hash of texts + config + code>/``; the same texts, config and
seed give the same weights on the same machine. Any other ``policy.model`` is loaded from the hub or a local folder
(:func:`divscale.models.hub.load_causal_lm`).
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from divscale import io, paths
from divscale.config import PolicyConfig
from divscale.models.hub import kernel_kwargs, load_causal_lm, place, resolve_device
from divscale.provenance import config_hash, texts_hash

DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")   # eos (= bos, as GPT-2/OPT) and pad


def tokenizer_cache_path(texts: Sequence[str], vocab_size: int,
                         special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS) -> Path:
    from divscale.provenance import code_version

    key = config_hash("bpe-v1", texts_hash(texts), vocab_size, list(special_tokens), code_version("bpe"), length=16)
    return paths.cache_dir() / "policies" / f"tokenizer-{key}"


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int,
                        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS, cache: bool = True):
    """A byte-level BPE tokenizer trained on ``texts`` (a transformers fast tokenizer).

    The first special token is eos and bos (as GPT-2 and OPT), the second pad. Like OPT's tokenizer it
    prepends bos when ``add_special_tokens=True`` (the paper tokenizes training text "with BOS").
    Cached by a hash of (texts, vocab size, special tokens): the same inputs load the saved files.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("train_bpe_tokenizer: no texts to train on")
    if len(special_tokens) < 2:
        raise ValueError("train_bpe_tokenizer: special_tokens needs at least (eos, pad)")
    eos, pad = special_tokens[0], special_tokens[1]
    folder = tokenizer_cache_path(texts, vocab_size, special_tokens)
    if cache and (folder / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(folder)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{eos} $A", pair=f"{eos} $A {eos} $B", special_tokens=[(eos, tok.token_to_id(eos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos, pad_token=pad,
                                   model_max_length=1_000_000)
    if cache:
        with io.atomic_path(folder) as out:
            fast.save_pretrained(out)
        return PreTrainedTokenizerFast.from_pretrained(folder)
    return fast


def build_tiny_gpt(policy_cfg: PolicyConfig, tokenizer, seed: int | None = None):
    """A randomly initialised GPT-2 sized by ``policy_cfg`` (no dropout, so CPU training is deterministic)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    if policy_cfg.n_embd % policy_cfg.n_head:
        raise ValueError(f"policy.n_embd={policy_cfg.n_embd} must be divisible by policy.n_head={policy_cfg.n_head}")
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=policy_cfg.block_size, n_embd=policy_cfg.n_embd,
                        n_layer=policy_cfg.n_layer, n_head=policy_cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(policy_cfg.seed if seed is None else seed)
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _token_stream(tokenizer, texts: Sequence[str]):
    import numpy as np

    ids = []
    for enc in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids.append(tokenizer.bos_token_id)
        ids.extend(enc)
    ids.append(tokenizer.eos_token_id)
    return np.asarray(ids, dtype=np.int64)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run a block with ``n`` torch threads (None: unchanged). Small models train several times faster on one
    thread on a shared CPU (measured: 1.3 s vs 5.8 s per step for a 1M-parameter GPT), and one thread makes
    the floating-point reductions, hence the weights, the same on every machine."""
    import torch

    saved = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def warm_up(model, tokenizer, texts: Sequence[str], steps: int, batch_size: int, lr: float, seed: int = 0,
            block_size: int | None = None, progress: bool = False, threads: int | None = 1) -> list[float]:
    """Short causal-LM training on ``texts`` (packed into blocks, random windows); returns the loss per step.

    AdamW, 10% linear warm-up then cosine decay, gradient clipping 1.0. Deterministic on CPU for a seed
    (on ``threads`` torch threads; 1 by default, see :func:`torch_threads`).
    """
    import numpy as np
    import torch
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    if steps <= 0:
        return []
    block = block_size or model.config.n_positions
    stream = _token_stream(tokenizer, texts)
    if len(stream) < block + 1:
        block = len(stream) - 1
    if block < 2:
        raise ValueError("warm_up: texts are too short to train on")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 10), steps)
    model.train()
    losses = []
    with torch_threads(threads):
        for _ in tqdm(range(steps), desc="warm-up", disable=not progress):
            starts = rng.integers(0, len(stream) - block, size=batch_size)
            batch = torch.from_numpy(np.stack([stream[s:s + block + 1] for s in starts]))
            logits = model(input_ids=batch[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
    model.eval()
    return losses


def policy_cache_path(policy_cfg: PolicyConfig, texts: Sequence[str]) -> Path:
    from divscale.provenance import code_version

    cfg = {k: v for k, v in dataclasses.asdict(policy_cfg).items() if k not in ("dtype", "hub_kernels")}
    return paths.cache_dir() / "policies" / config_hash("tiny-gpt-v1", texts_hash(texts), cfg,
                                                        code_version("policy"), length=16)


def load_policy(policy_cfg: PolicyConfig, texts: Sequence[str] = (), progress: bool = False,
                device: str | None = "auto"):
    """``(model, tokenizer)``: the recipe's policy before fine-tuning, in eval mode on ``device``
    (:func:`divscale.models.hub.resolve_device`: this process's GPU when there is one, else the CPU).

    ``model: tiny-gpt`` trains a BPE tokenizer on ``texts`` (pool dialogues), builds the GPT and warms it up (on the
    CPU), all cached by a hash of the texts and the config; anything else is loaded with ``load_causal_lm``.
    """
    import torch
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    if policy_cfg.model != "tiny-gpt":
        return load_causal_lm(policy_cfg.model, dtype=policy_cfg.dtype, hub_kernels=policy_cfg.hub_kernels,
                              device=device)
    device = resolve_device(device)
    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("load_policy: the tiny-gpt policy needs texts (pool dialogues) to train its tokenizer")
    folder = policy_cache_path(policy_cfg, texts)
    if not (folder / "model.safetensors").exists():
        with io.file_lock(folder):          # under `make -j` the grid and 07 need it at once: one warms it up
            if not (folder / "model.safetensors").exists():
                _build_policy(policy_cfg, texts, folder, progress)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    model = GPT2LMHeadModel.from_pretrained(folder, use_safetensors=True, dtype=getattr(torch, policy_cfg.dtype),
                                            **kernel_kwargs(policy_cfg.hub_kernels))
    model.eval()
    return place(model, device), tokenizer


def _build_policy(policy_cfg: PolicyConfig, texts: list[str], folder: Path, progress: bool) -> None:
    """Train the BPE tokenizer, build the GPT, warm it up and write it to ``folder`` (atomically)."""
    tokenizer = train_bpe_tokenizer(texts, policy_cfg.vocab_size)
    model = build_tiny_gpt(policy_cfg, tokenizer)
    losses = warm_up(model, tokenizer, texts, policy_cfg.warmup_steps, policy_cfg.warmup_batch_size,
                     policy_cfg.warmup_lr, seed=policy_cfg.seed, progress=progress)
    with io.atomic_path(folder) as out:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        io.atomic_write_json(out / "warmup.json", {
            "policy": dataclasses.asdict(policy_cfg), "n_texts": len(texts), "texts_sha256": texts_hash(texts),
            "n_params": sum(p.numel() for p in model.parameters()), "losses": losses})


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
