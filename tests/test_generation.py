"""Generation mechanics with a tiny random GPT (gibberish text, but padding, truncation,
stop strings, ordering and determinism are all checkable) and one overfit on a known dialogue."""
from __future__ import annotations

import copy

import pytest
import torch

from divscale.models.generation import cut_at_stop, format_prompt, generate, hh_turns

PROMPTS = [
    "\n\nHuman: How do I bake bread?\n\nAssistant:",
    "\n\nHuman: hi\n\nAssistant:",
    ("\n\nHuman: What is the capital of France? I need it for a quiz tomorrow.\n\nAssistant: Paris."
     "\n\nHuman: And of Germany?\n\nAssistant:"),
    "\n\nHuman: Tell me a joke about cats\n\nAssistant:",
    "\n\nHuman: ok\n\nAssistant:",
]
SIMPLE_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"
                   "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture()
def overfit_gpt(tiny_gpt, tiny_tokenizer):
    """The tiny GPT memorises one dialogue, so greedy output is known text."""
    seq = "\n\nHuman: say hi\n\nAssistant: hi there friend\n\nHuman: bye<|endoftext|>"
    ids = torch.tensor([tiny_tokenizer(seq)["input_ids"]])
    opt = torch.optim.Adam(tiny_gpt.parameters(), lr=1e-2)
    for _ in range(80):
        loss = tiny_gpt(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tiny_gpt


def test_hh_turns_parses_and_merges():
    prompt = ("\n\nHuman: first\n\nline two\n\nAssistant: reply\n\nHuman: a\n\nHuman: b\n\nAssistant:")
    assert hh_turns(prompt) == [("user", "first\n\nline two"), ("assistant", "reply"), ("user", "a\nb")]
    assert hh_turns("just a question") == [("user", "just a question")]
    assert hh_turns("") == []


def test_format_prompt_without_template_is_identity(tiny_tokenizer):
    assert format_prompt(PROMPTS[2], tiny_tokenizer) == PROMPTS[2]


def test_format_prompt_uses_chat_template(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = SIMPLE_TEMPLATE
    text = format_prompt(PROMPTS[2], tok)
    assert text == ("<|user|>What is the capital of France? I need it for a quiz tomorrow.<|endoftext|>"
                    "<|assistant|>Paris.<|endoftext|><|user|>And of Germany?<|endoftext|><|assistant|>")
    assert not getattr(tiny_tokenizer, "chat_template", None)   # the original is untouched


def test_batched_equals_unbatched_and_order_restored(tiny_gpt, tiny_tokenizer):
    kw = {"max_new_tokens": 12, "max_prompt_tokens": 64, "stop_strings": ()}
    batched = generate(tiny_gpt, tiny_tokenizer, PROMPTS, batch_size=3, **kw)
    single = [generate(tiny_gpt, tiny_tokenizer, [p], batch_size=1, **kw)[0] for p in PROMPTS]
    assert batched == single
    assert len(set(single)) > 1          # different prompts -> different continuations (order is checked)
    reversed_out = generate(tiny_gpt, tiny_tokenizer, PROMPTS[::-1], batch_size=2, **kw)
    assert reversed_out == single[::-1]


def test_tokenizer_and_model_state_not_leaked(tiny_gpt, tiny_tokenizer):
    tiny_gpt.train()
    sides = (tiny_tokenizer.padding_side, tiny_tokenizer.truncation_side, tiny_tokenizer.pad_token)
    generate(tiny_gpt, tiny_tokenizer, PROMPTS[:2], max_new_tokens=3, max_prompt_tokens=8)
    assert tiny_gpt.training
    assert (tiny_tokenizer.padding_side, tiny_tokenizer.truncation_side, tiny_tokenizer.pad_token) == sides


def test_left_truncation_keeps_the_end(tiny_gpt, tiny_tokenizer):
    tail = "\n\nHuman: What should I cook tonight for dinner with my family?\n\nAssistant:"
    a, b = "\n\nHuman: apples and pears " * 6 + tail, "\n\nHuman: totally different words here " * 5 + tail
    n = 10
    ids_a, ids_b = tiny_tokenizer(a)["input_ids"], tiny_tokenizer(b)["input_ids"]
    assert ids_a[-n:] == ids_b[-n:] and ids_a[:n] != ids_b[:n]
    kw = {"max_new_tokens": 10, "max_prompt_tokens": n, "stop_strings": ()}
    assert generate(tiny_gpt, tiny_tokenizer, [a], **kw) == generate(tiny_gpt, tiny_tokenizer, [b], **kw)
    # untruncated the prefixes matter (checks that truncation, not luck, made them equal)
    full = dict(kw, max_prompt_tokens=200)
    out_a, out_b = (generate(tiny_gpt, tiny_tokenizer, [x], **full)[0] for x in (a, b))
    kept = generate(tiny_gpt, tiny_tokenizer, [tiny_tokenizer.decode(ids_a[-n:])], **kw)[0]
    assert kept == generate(tiny_gpt, tiny_tokenizer, [a], **kw)[0]
    assert (out_a, out_b) != (kept, kept)


def test_prompt_capped_by_model_context(tiny_gpt, tiny_tokenizer):
    long_prompt = "\n\nHuman: " + "word " * 400 + "\n\nAssistant:"
    out = generate(tiny_gpt, tiny_tokenizer, [long_prompt], max_new_tokens=8, max_prompt_tokens=384)
    assert isinstance(out[0], str)          # 256-position model: prompt capped at 248 tokens, no crash
    with pytest.raises(ValueError, match="no room"):
        generate(tiny_gpt, tiny_tokenizer, [long_prompt], max_new_tokens=300)


def test_stop_strings_and_eos_cut(overfit_gpt, tiny_tokenizer):
    prompt = "\n\nHuman: say hi\n\nAssistant:"
    raw = generate(overfit_gpt, tiny_tokenizer, [prompt], max_new_tokens=20, stop_strings=())
    assert raw == ["hi there friend\n\nHuman: bye"]          # cut at EOS only, stripped
    assert generate(overfit_gpt, tiny_tokenizer, [prompt], max_new_tokens=20) == ["hi there friend"]
    assert cut_at_stop(" a assistant: b Human: c ") == "a"


def test_greedy_and_sampling_deterministic(tiny_gpt, tiny_tokenizer):
    kw = {"max_new_tokens": 10, "max_prompt_tokens": 64, "stop_strings": (), "batch_size": 2}
    greedy = generate(tiny_gpt, tiny_tokenizer, PROMPTS, **kw)
    assert generate(tiny_gpt, tiny_tokenizer, PROMPTS, **kw) == greedy
    skw = dict(kw, do_sample=True, temperature=1.0, top_p=1.0, seed=7)
    torch.manual_seed(123)
    s1 = generate(tiny_gpt, tiny_tokenizer, PROMPTS, **skw)
    after = torch.rand(1)
    torch.manual_seed(123)
    s2 = generate(tiny_gpt, tiny_tokenizer, PROMPTS, **skw)
    assert s1 == s2
    assert torch.equal(after, torch.rand(1))                 # the global RNG was not consumed
    repeated = generate(tiny_gpt, tiny_tokenizer, [PROMPTS[0]] * 4, **skw)
    assert len(set(repeated)) > 1                            # samples of one prompt differ
    assert generate(tiny_gpt, tiny_tokenizer, PROMPTS, **dict(skw, seed=8)) != s1


def test_empty_prompt_rejected(tiny_gpt, tiny_tokenizer):
    assert generate(tiny_gpt, tiny_tokenizer, []) == []
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        generate(tiny_gpt, tiny_tokenizer, ["ok", ""], max_new_tokens=2)


def test_sampling_independent_of_batching(tiny_gpt, tiny_tokenizer):
    """Each row has its own RNG: a prompt's samples don't depend on batch size or batch mates."""
    kw = {"max_new_tokens": 8, "max_prompt_tokens": 64, "stop_strings": (), "do_sample": True, "temperature": 0.7,
          "top_p": 0.9, "seed": 3}
    prompts = [p for p in PROMPTS for _ in range(2)]
    together = generate(tiny_gpt, tiny_tokenizer, prompts, batch_size=4, **kw)
    alone = generate(tiny_gpt, tiny_tokenizer, prompts[4:6], batch_size=1, **kw)
    assert together[4:6] == alone
    assert together[4] != together[5]        # the two samples of one prompt differ
