"""Shared-prompt completion log-probs (divscale.train.logprobs): values AND gradients equal the naive path, by both
sharing paths (``cache``: the prompt's KV cache; ``packed``: one block-masked sequence per ranking)."""
from __future__ import annotations

import logging

import pytest
import torch

from divscale.train import logprobs as lp_mod
from divscale.train.logprobs import logprobs_from_ids

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


@pytest.mark.parametrize("path", ["cache", "packed"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "opt"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_shared_equals_naive_values_and_gradients(arch, side, path):
    model = tiny_model(arch).train()
    batch = make_batch(side)
    naive, n_counts, n_grads = value_and_grads(model, batch, share=False)
    shared, s_counts, s_grads = value_and_grads(model, batch, share=path)
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


@pytest.mark.parametrize("path", ["cache", "packed"])
def test_positions_stay_within_each_sequence(path):
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
    shared, _, s_grads = value_and_grads(model, batch, share=path)
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


def test_text_is_tokenised_by_the_trainers_collator_and_scored_as_prompt_plus_completion(tiny_tokenizer):
    """Text reaches the scorer through one tokenisation rule, the trainer's (RankingCollator: the prompt's last
    ``max_prompt_length`` tokens, then the completion as tokenised after it); its tensors score as the full
    ``prompt + completion`` sequence does, shared or not."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from divscale.train.trainer import RankingCollator

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    rows = [{"id": str(i), "prompt": p, "completions": cs, "ranks": [0, 1, 2]}
            for i, (p, cs) in enumerate(zip(PROMPTS, COMPLETIONS))]
    tok = lambda s: tiny_tokenizer(s, add_special_tokens=False)["input_ids"]
    for max_prompt_length in (64, 6):                    # whole prompts; prompts cut to their last 6 tokens
        collator = RankingCollator(tiny_tokenizer, max_length=96, max_prompt_length=max_prompt_length)
        batch = collator(rows)
        args = (batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"])
        with torch.no_grad():
            shared, counts = logprobs_from_ids(model, *args, share_prompt=True, pad_token_id=collator.pad_id)
            naive, _ = logprobs_from_ids(model, *args, share_prompt=False, pad_token_id=collator.pad_id)
        assert shared.shape == (3, 3) and (shared - naive).abs().max().item() <= TOL
        for i, (prompt_ids, completions) in enumerate(collator.encode(rows)):
            assert len(prompt_ids) <= max_prompt_length
            if max_prompt_length == 64:
                assert prompt_ids == tok(PROMPTS[i])[:len(prompt_ids)]
            for j, c in enumerate(completions):
                assert counts[i, j].item() == len(c)
                assert shared[i, j].item() == pytest.approx(manual_logprob(model, prompt_ids, c), abs=1e-4)


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


# --------------------------------------------------------------------------- the packed path (GPUs)


@pytest.mark.parametrize("arch,impl", [("gpt2", "eager"), ("opt", "eager"), ("llama", "eager"), ("opt", "sdpa"),
                                       ("llama", "sdpa")])
def test_packed_builds_the_mask_each_attention_implementation_takes(arch, impl):
    """sdpa takes a boolean 4-D mask, eager an additive one: both give naive's values and gradients."""
    model = tiny_model(arch).train()
    model.set_attn_implementation(impl)
    batch = make_batch("left")
    naive, _, n_grads = value_and_grads(model, batch, share=False)
    packed, _, p_grads = value_and_grads(model, batch, share="packed")
    assert (packed - naive).abs().max().item() <= TOL
    assert max((p_grads[k] - g).abs().max().item() for k, g in n_grads.items()) <= TOL


def test_packed_flex_attention_block_mask_values(monkeypatch):
    """FlexAttention (the BlockMask path, for GPUs): on CPU it runs forward only and uncompiled (no backward and no
    inductor here), which is enough to check the mask rule end to end through transformers' flex integration."""
    import transformers.integrations.flex_attention as flex
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    monkeypatch.setattr(flex, "compile_friendly_flex_attention",
                        lambda q, k, v, training=False, **kw: flex_attention(q, k, v, **kw))
    model = tiny_model("llama").eval()        # (OPT's flex path gives the same on this check; one arch: 15 s less)
    model.set_attn_implementation("flex_attention")
    seen = []
    real = lp_mod._flex_block_mask
    monkeypatch.setattr(lp_mod, "_flex_block_mask", lambda seg: seen.append(real(seg)) or seen[-1])
    with torch.no_grad():
        naive, _ = logprobs_from_ids(model, *make_batch("right"), share_prompt=False, pad_token_id=1)
        packed, _ = logprobs_from_ids(model, *make_batch("right"), share_prompt="packed", pad_token_id=1)
    assert seen and isinstance(seen[0], BlockMask)
    assert (packed - naive).abs().max().item() <= TOL


def test_packed_layout_and_mask():
    """One row per ranking: the prompt once, then each completion at positions that continue the prompt; a
    completion sees the prompt and itself, never another completion; logits only where a token is predicted."""
    p_ids = torch.tensor([[0, 11, 12], [21, 0, 0]])
    p_mask = torch.tensor([[0, 1, 1], [1, 0, 0]])                         # left and right padded
    c_ids = torch.tensor([[[31, 32, 0], [41, 0, 0]], [[0, 51, 52], [61, 62, 63]]])
    c_mask = torch.tensor([[[1, 1, 0], [1, 0, 0]], [[0, 1, 1], [1, 1, 1]]])
    lay = lp_mod.packed_layout(p_ids, p_mask, c_ids, c_mask, pad_id=0, multiple=4)
    assert lay["ids"].tolist() == [[11, 12, 31, 32, 41, 0, 0, 0], [21, 51, 52, 61, 62, 63, 0, 0]]
    assert lay["positions"].tolist() == [[0, 1, 2, 3, 2, 0, 0, 0], [0, 1, 2, 1, 2, 3, 0, 0]]
    assert lay["segment"].tolist() == [[0, 0, 1, 1, 2, -1, -1, -1], [0, 1, 1, 2, 2, 2, -1, -1]]
    assert lay["first"].tolist() == [[31, 41], [51, 61]] and lay["lengths"].tolist() == [[2, 1], [2, 3]]
    # kept: the prompt's last position (predicts every first token), then completion positions but the last
    assert lay["keep"][0, :2].tolist() == [1, 2] and lay["keep"][1].tolist() == [0, 1, 3, 4]
    assert lay["target"][1].tolist() == [51, 52, 62, 63] and lay["scored"][1].tolist() == [False, True, True, True]
    mask = lp_mod.block_mask_dense(lay["segment"])[1, 0]
    assert mask[4].tolist() == [True, False, False, True, True, False, False, False]   # 2nd completion: prompt + own
    assert mask[2].tolist() == [True, True, True, False, False, False, False, False]
    assert mask[7].tolist() == [False] * 7 + [True]                                   # a pad attends itself only


def test_packed_runs_one_forward_pass_of_the_packed_width():
    model = tiny_model("gpt2").train()
    batch = make_batch("right")
    seen: list[tuple] = []
    hook = model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)),
                                           with_kwargs=True)
    try:
        logprobs_from_ids(model, *batch, share_prompt="packed", pad_token_id=1)        # first-use check + 1 pass
        seen.clear()
        logprobs_from_ids(model, *batch, share_prompt="packed", pad_token_id=1)
    finally:
        hook.remove()
    width = max(p + sum(c) for p, c in zip(PROMPT_LENS, COMPLETION_LENS))
    assert seen == [(len(PROMPT_LENS), width)]
    assert width * len(PROMPT_LENS) < len(PROMPT_LENS) * 3 * max(p + max(c) for p, c in zip(PROMPT_LENS,
                                                                                         COMPLETION_LENS))


def test_the_path_is_chosen_per_device_and_why_is_logged_once(caplog, monkeypatch):
    model = tiny_model("llama").train()
    assert lp_mod.choose_path(model, "cpu") == ("cache", [])
    assert lp_mod.choose_path(model, "cuda") == ("packed", [])
    model.gradient_checkpointing_enable()                       # no cache in training: CPU packs instead
    path, why = lp_mod.choose_path(model, "cpu")
    assert path == "packed" and "gradient checkpointing" in why[0]
    model.gradient_checkpointing_disable()
    # an attention that takes no custom mask (flash-attention; not run here: it is a hub kernel without flash-attn)
    monkeypatch.setattr(lp_mod, "attention_implementation", lambda m: "flash_attention_2")
    path, why = lp_mod.choose_path(model, "cuda")
    assert path == "naive" and "flash_attention_2" in why[0] and "slower" in why[1]
    real = lp_mod.choose_path
    monkeypatch.setattr(lp_mod, "choose_path", lambda m, d, t=None: real(m, "cuda", t))    # as if on a GPU
    batch = make_batch("right")
    with caplog.at_level(logging.WARNING, logger="divscale.train.logprobs"):
        out, _ = logprobs_from_ids(model, *batch, pad_token_id=1)
        logprobs_from_ids(model, *batch, pad_token_id=1)
    assert caplog.text.count("flash_attention_2") == 1
    naive, _ = logprobs_from_ids(model, *batch, share_prompt=False, pad_token_id=1)
    assert torch.equal(out, naive)


def test_packed_under_gradient_checkpointing_and_deterministic_algorithms():
    model = tiny_model("opt").train()
    batch = make_batch("left")
    naive, _, n_grads = value_and_grads(model, batch, share=False)
    model.gradient_checkpointing_enable()
    torch.use_deterministic_algorithms(True)
    try:
        packed, _, p_grads = value_and_grads(model, batch, share="packed")
    finally:
        torch.use_deterministic_algorithms(False)
        model.gradient_checkpointing_disable()
    assert (packed - naive).abs().max().item() <= TOL
    assert max((p_grads[k] - g).abs().max().item() for k, g in n_grads.items()) <= TOL


def test_share_prompt_names_are_checked():
    with pytest.raises(ValueError, match="share_prompt='kv'"):
        logprobs_from_ids(tiny_model("gpt2"), *make_batch("right"), share_prompt="kv")


@pytest.mark.parametrize("model_id", ["facebook/opt-1.3b", "huggyllama/llama-7b", "Qwen/Qwen2.5-7B-Instruct"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_real_configs_shrunk_share_exactly_in_fp32_and_within_bf16_tolerance(model_id, precision):
    """The paper's policies and the generator from their real config.json (depth and width shrunk, everything else
    real: vocabulary, positions, activations, tying), both paths against naive; bf16 as on the GPU: fp32 master
    weights under bf16 autocast."""
    from transformers import AutoModelForCausalLM

    from divscale.tools.gpu_check import shrunk_config

    config = shrunk_config(model_id)
    config.update({k: 0.0 for k in ("dropout", "attention_dropout", "activation_dropout") if k in config.to_dict()})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).train()
    g = torch.Generator().manual_seed(1)
    vocab = config.vocab_size
    p_ids, p_mask, c_ids, c_mask = make_batch("right")
    p_ids = torch.where(p_mask.bool(), torch.randint(3, vocab, p_ids.shape, generator=g), p_ids)
    c_ids = torch.where(c_mask.bool(), torch.randint(3, vocab, c_ids.shape, generator=g), c_ids)
    batch = (p_ids, p_mask, c_ids, c_mask)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        naive, counts, n_grads = value_and_grads(model, batch, share=False)
        out = {path: value_and_grads(model, batch, share=path) for path in ("cache", "packed")}
    for path, (logps, _, grads) in out.items():
        if precision == "fp32":
            assert (logps - naive).abs().max().item() <= 1e-4, path
            assert max((grads[k] - g).abs().max().item() for k, g in n_grads.items()) <= 1e-4, path
        else:     # bf16 (token log-probs rounded to bf16, ulp 0.06 at -10): VERIFY_TOL_LOW per token, 5% of the grad norm
            assert ((logps - naive).abs() <= lp_mod.VERIFY_TOL_LOW * counts.clamp(min=1)).all(), path
            num = sum(float((grads[k] - g).double().pow(2).sum()) for k, g in n_grads.items()) ** 0.5
            den = sum(float(g.double().pow(2).sum()) for g in n_grads.values()) ** 0.5
            assert num <= 0.05 * den, (path, num / den)
