"""Shared-prompt completion log-probs (divscale.train.logprobs): values AND gradients equal the naive path."""
from __future__ import annotations

import logging

import pytest
import torch

from divscale.train import logprobs as lp_mod
from divscale.train.logprobs import completion_logprobs, encode_completions, logprobs_from_ids

V = 64
TOL = 1e-5          # fp32, the bound, absolute


def tiny_model(arch: str, vocab: int = V):
    """Randomly initialised 2-layer models, no dropout (so train-mode passes are deterministic)."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        OPTConfig,
        OPTForCausalLM,
    )

    torch.manual_seed(0)
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                                          eos_token_id=0, pad_token_id=1))
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                            bos_token_id=0, eos_token_id=0, pad_token_id=1))
    if arch == "opt":
        return OPTForCausalLM(OPTConfig(vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=128, word_embed_proj_dim=32,
                                        dropout=0.0, attention_dropout=0.0, bos_token_id=0, eos_token_id=0,
                                        pad_token_id=1))
    raise ValueError(arch)


PROMPT_LENS = [5, 1, 9, 2]                                   # different lengths, one of a single token
COMPLETION_LENS = [[3, 4, 1], [6, 1, 2], [2, 5, 5], [0, 3, 6]]   # an empty completion too


def make_batch(side: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, k, lp, lc = len(PROMPT_LENS), 3, max(PROMPT_LENS) + 2, 7          # extra width: all-padding columns
    p_ids, p_mask = torch.full((b, lp), 1), torch.zeros((b, lp), dtype=torch.long)
    c_ids, c_mask = torch.full((b, k, lc), 1), torch.zeros((b, k, lc), dtype=torch.long)
    for i, n in enumerate(PROMPT_LENS):
        sl = slice(lp - n, lp) if side == "left" else slice(0, n)
        p_ids[i, sl], p_mask[i, sl] = torch.randint(2, V, (n,), generator=g), 1
        for j, m in enumerate(COMPLETION_LENS[i]):
            sl = slice(lc - m, lc) if side == "left" else slice(0, m)
            c_ids[i, j, sl], c_mask[i, j, sl] = torch.randint(2, V, (m,), generator=g), 1
    return p_ids, p_mask, c_ids, c_mask


def value_and_grads(model, batch, share: bool):
    model.zero_grad(set_to_none=True)
    logps, counts = logprobs_from_ids(model, *batch, share_prompt=share, pad_token_id=1)
    weights = torch.randn(logps.shape, generator=torch.Generator().manual_seed(7))
    (logps * weights).sum().backward()                 # a generic loss: every completion's gradient counts
    return logps.detach(), counts, {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def manual_logprob(model, prompt: list[int], completion: list[int]) -> float:
    ids = torch.tensor(prompt + completion)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[None]).logits[0].double(), -1)
    return sum(logp[t - 1, ids[t]].item() for t in range(len(prompt), len(ids)))


@pytest.fixture(autouse=True)
def fresh_checks():
    lp_mod._VERIFIED.clear()
    lp_mod._LOGGED.clear()
    yield


@pytest.mark.parametrize("arch", ["gpt2", "llama", "opt"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_shared_equals_naive_values_and_gradients(arch, side):
    model = tiny_model(arch).train()
    batch = make_batch(side)
    naive, n_counts, n_grads = value_and_grads(model, batch, share=False)
    shared, s_counts, s_grads = value_and_grads(model, batch, share=True)
    assert torch.equal(n_counts, s_counts)
    assert n_counts.tolist() == [[float(m) for m in row] for row in COMPLETION_LENS]
    assert naive[3, 0] == 0 and shared[3, 0] == 0                    # empty completion: 0 with count 0
    assert (naive[n_counts > 0] < -1).all()                          # real, non-trivial log-probs
    assert (shared - naive).abs().max().item() <= TOL
    for name, g in n_grads.items():
        assert g.abs().max() > 0 or "position" in name or "wpe" in name, name
        assert (s_grads[name] - g).abs().max().item() <= TOL, name


@pytest.mark.parametrize("arch", ["gpt2", "llama", "opt"])
def test_naive_path_is_exact_per_sequence(arch):
    """The reference itself: each (prompt, completion) alone, unpadded, in float64 log-softmax."""
    model = tiny_model(arch).eval()
    p_ids, p_mask, c_ids, c_mask = batch = make_batch("left")
    with torch.no_grad():
        shared, _ = logprobs_from_ids(model, *batch, share_prompt=True, pad_token_id=1)
    for i in range(len(PROMPT_LENS)):
        prompt = p_ids[i][p_mask[i].bool()].tolist()
        for j in range(3):
            completion = c_ids[i, j][c_mask[i, j].bool()].tolist()
            assert shared[i, j].item() == pytest.approx(manual_logprob(model, prompt, completion), abs=1e-4)


def test_positions_stay_within_each_sequence():
    """A short prompt with a long completion beside a long prompt with a short one: with exactly as many learned
    positions as the longest prompt + completion, padding slots must not ask for a position past it."""
    p_ids, p_mask = torch.full((2, 12), 1), torch.zeros((2, 12), dtype=torch.long)
    c_ids, c_mask = torch.full((2, 2, 12), 1), torch.zeros((2, 2, 12), dtype=torch.long)
    g = torch.Generator().manual_seed(3)
    for i, (p, cs) in enumerate([(2, (12, 3)), (12, (2, 1))]):       # totals 14 and 14
        p_ids[i, :p], p_mask[i, :p] = torch.randint(2, V, (p,), generator=g), 1
        for j, c in enumerate(cs):
            c_ids[i, j, :c], c_mask[i, j, :c] = torch.randint(2, V, (c,), generator=g), 1
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=14, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
                                       embd_pdrop=0.0, attn_pdrop=0.0)).train()
    batch = (p_ids, p_mask, c_ids, c_mask)
    naive, _, n_grads = value_and_grads(model, batch, share=False)
    shared, _, s_grads = value_and_grads(model, batch, share=True)
    assert (shared - naive).abs().max().item() <= TOL
    assert max((s_grads[k] - g).abs().max().item() for k, g in n_grads.items()) <= TOL


def test_padding_side_does_not_matter():
    model = tiny_model("llama").eval()
    with torch.no_grad():
        left, _ = logprobs_from_ids(model, *make_batch("left"), pad_token_id=1)
        right, _ = logprobs_from_ids(model, *make_batch("right"), pad_token_id=1)
    assert (left - right).abs().max().item() <= TOL


def test_the_prompt_really_runs_once():
    """Count the tokens each path feeds the model: the shared path reads each prompt once."""
    model = tiny_model("gpt2").train()
    batch = make_batch("right")
    seen: list[int] = []
    hook = model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["input_ids"].numel()),
                                           with_kwargs=True)
    try:
        logprobs_from_ids(model, *batch, share_prompt=True, pad_token_id=1)
        shared_calls, shared_tokens = len(seen), sum(seen)
        seen.clear()
        logprobs_from_ids(model, *batch, share_prompt=False, pad_token_id=1)
        naive_calls, naive_tokens = len(seen), sum(seen)
        seen.clear()
        logprobs_from_ids(model, *batch, share_prompt=True, pad_token_id=1)     # checked already: two passes
        again = list(seen)
    finally:
        hook.remove()
    b, lp = len(PROMPT_LENS), max(PROMPT_LENS)
    # shared: first-use check (1 naive + 2 shared on one prompt) + prompt pass + completion pass
    assert shared_calls == 2 + 3 and naive_calls == 1
    width = max(PROMPT_LENS[i] + max(COMPLETION_LENS[i]) for i in range(b))
    assert naive_tokens == b * 3 * width
    assert shared_tokens < naive_tokens
    assert len(again) == 2 and again[0] == b * (lp - 1)
    assert again[1] == b * 3 * max(max(c) for c in COMPLETION_LENS)


def test_falls_back_with_a_log_line_when_the_cache_is_off(caplog):
    model = tiny_model("gpt2").train()
    model.gradient_checkpointing_enable()
    batch = make_batch("right")
    with caplog.at_level(logging.WARNING, logger="divscale.train.logprobs"):
        shared, _ = logprobs_from_ids(model, *batch, share_prompt=True, pad_token_id=1)
    assert "gradient checkpointing" in caplog.text
    model.gradient_checkpointing_disable()
    naive, _ = logprobs_from_ids(model, *batch, share_prompt=False, pad_token_id=1)
    assert (shared - naive).abs().max().item() <= TOL


def test_falls_back_when_the_shared_result_disagrees(monkeypatch, caplog):
    model = tiny_model("gpt2").eval()
    batch = make_batch("right")
    real = lp_mod._shared

    def wrong(*args):
        logps, counts = real(*args)
        return logps + 1.0, counts

    monkeypatch.setattr(lp_mod, "_shared", wrong)
    with caplog.at_level(logging.WARNING, logger="divscale.train.logprobs"), torch.no_grad():
        out, _ = logprobs_from_ids(model, *batch, share_prompt=True, pad_token_id=1)
        naive, _ = logprobs_from_ids(model, *batch, share_prompt=False, pad_token_id=1)
    assert "differs" in caplog.text
    assert torch.equal(out, naive)


def test_input_errors():
    model = tiny_model("gpt2")
    p_ids, p_mask, c_ids, c_mask = make_batch("right")
    p_mask = p_mask.clone()
    p_mask[1] = 0
    with pytest.raises(ValueError, match="at least one token"):
        logprobs_from_ids(model, p_ids, p_mask, c_ids, c_mask)
    holes = make_batch("right")[3].clone()
    holes[2, 1, 1] = 0                                         # 2 real, hole, 2 real
    with pytest.raises(ValueError, match="holes"):
        logprobs_from_ids(model, p_ids, make_batch("right")[1], c_ids, holes)


# --------------------------------------------------------------------------- the string interface

PROMPTS = ["\n\nHuman: How do I bake bread?\n\nAssistant:",
           "\n\nHuman: Hi\n\nAssistant:",
           "\n\nHuman: What is the capital of France, and why is it that one?\n\nAssistant:"]
COMPLETIONS = [[" Mix flour, water and yeast.", " Buy some.", " No."],
               [" Hello there, how can I help?", " Hi.", " Go away, I am busy today."],
               [" Paris.", " It is Paris, for historical reasons.", " Lyon."]]


@pytest.mark.parametrize("side", ["left", "right"])
def test_completion_logprobs_strings(tiny_tokenizer, side):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    tiny_tokenizer.padding_side = side
    try:
        with torch.no_grad():
            shared, counts = completion_logprobs(model, tiny_tokenizer, PROMPTS, COMPLETIONS, return_counts=True)
            naive = completion_logprobs(model, tiny_tokenizer, PROMPTS, COMPLETIONS, share_prompt=False)
            cut = completion_logprobs(model, tiny_tokenizer, PROMPTS, COMPLETIONS, max_prompt_length=6,
                                      max_completion_length=3)
    finally:
        tiny_tokenizer.padding_side = "right"
    assert shared.shape == (3, 3) and (shared - naive).abs().max().item() <= TOL
    tok = lambda s: tiny_tokenizer(s, add_special_tokens=False)["input_ids"]
    for i, p in enumerate(PROMPTS):
        for j, c in enumerate(COMPLETIONS[i]):
            assert counts[i, j].item() == len(tok(c))
            assert shared[i, j].item() == pytest.approx(manual_logprob(model, tok(p), tok(c)), abs=1e-4)
            # left-truncated prompt (its last 6 tokens), right-truncated completion (its first 3)
            assert cut[i, j].item() == pytest.approx(manual_logprob(model, tok(p)[-6:], tok(c)[:3]), abs=1e-4)


def test_encode_completions_ragged_and_max_length(tiny_tokenizer):
    comps = [COMPLETIONS[0], COMPLETIONS[1][:2]]
    full = encode_completions(tiny_tokenizer, PROMPTS[:2], comps, max_prompt_length=None, max_completion_length=None)
    limit = int(full["prompt_mask"].sum(-1).max()) + 3
    enc = encode_completions(tiny_tokenizer, PROMPTS[:2], comps, max_prompt_length=None, max_completion_length=None,
                             max_length=limit)
    assert enc["completion_ids"].shape[:2] == (2, 3)
    assert enc["completion_mask"][1, 2].sum() == 0 and full["completion_mask"][1, 2].sum() == 0   # missing: empty
    total = enc["prompt_mask"].sum(-1, keepdim=True) + enc["completion_mask"].sum(-1)
    assert (total <= limit).all()
    want = torch.minimum(full["completion_mask"].sum(-1), limit - full["prompt_mask"].sum(-1, keepdim=True))
    assert torch.equal(enc["completion_mask"].sum(-1), want)          # cut to fit, never more
    assert (want < full["completion_mask"].sum(-1)).any()


def test_a_ddp_style_wrapper_still_shares(caplog):
    """DDP / DeepSpeed wrap the model in ``.module`` with a ``forward(*args, **kwargs)``: still shared, same values."""
    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    inner = tiny_model("llama").train()
    wrapped = Wrapper(inner)
    batch = make_batch("left")
    calls: list[int] = []
    hook = inner.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(kwargs["input_ids"].shape[1]),
                                           with_kwargs=True)
    try:
        with caplog.at_level(logging.WARNING, logger="divscale.train.logprobs"):
            shared, _ = logprobs_from_ids(wrapped, *batch, share_prompt=True, pad_token_id=1)
    finally:
        hook.remove()
    assert "cannot share" not in caplog.text
    assert calls[-2:] == [max(PROMPT_LENS) - 1, max(max(c) for c in COMPLETION_LENS)]   # prompt pass, then completions
    naive, _ = logprobs_from_ids(inner, *batch, share_prompt=False, pad_token_id=1)
    assert (shared.detach() - naive.detach()).abs().max().item() <= TOL
