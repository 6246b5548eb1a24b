"""Batched generation from a causal LM, the way the paper decodes (spec §4.2).

The official ``eval_hh/generation.py`` decodes greedily (``num_beams=1, do_sample=False``),
128 new tokens, prompts left-padded and LEFT-truncated to 384 tokens (so the end of the
dialogue, the part being answered, is kept), pad = eos, and cuts every output at the first
"Human:", "human:", "Assistant:" or "assistant:" -- the policy is never trained to emit EOS,
so the stop strings are what keeps the answers to one turn (spec §6.1).

``generate`` does exactly that, in batches sorted by prompt length (less padding), with
the original order restored. It pads by hand, so the tokenizer is never mutated (its
truncation side is switched for the call and restored). Sampling (used to extend rankings,
``divscale.reward.rankings``) draws each row from its own ``torch.Generator`` seeded by
(seed, prompt text, repeat index): a prompt's samples do not depend on the batch size, on the
other prompts in its batch or on the order of the call, so a cached run that is interrupted
and resumed gives the same responses as an uninterrupted one, and the global RNG is untouched.

``format_prompt`` turns an HH prompt ("\\n\\nHuman: ...\\n\\nAssistant:") into model input:
the chat template if the tokenizer has one (an instruction model), else the HH text itself
(the paper fine-tunes on the HH text).
"""
from __future__ import annotations

import hashlib
import re
import weakref
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.stopping_criteria import StopStringCriteria

from divscale.models.hub import model_positions

STOP_STRINGS = ("Human:", "human:", "Assistant:", "assistant:")

_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_ROLE = {"Human": "user", "Assistant": "assistant"}


def hh_turns(prompt: str) -> list[tuple[str, str]]:
    """Parse an HH dialogue into ``[(role, text), ...]`` with roles "user" / "assistant".

    Turns are delimited by "\\n\\nHuman:" / "\\n\\nAssistant:" (also at the very start of the
    text without the blank line). As in PRO's preprocessing (spec §2.1), consecutive turns of
    the same speaker are merged with "\\n". The trailing empty "Assistant:" -- the slot the
    model is asked to fill -- is dropped. Text without any role marker is one user turn.
    """
    matches = list(_TURN.finditer(prompt))
    if not matches:
        text = prompt.strip()
        return [("user", text)] if text else []
    turns: list[tuple[str, str]] = []
    head = prompt[:matches[0].start()].strip()
    if head:
        turns.append(("user", head))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(prompt)
        role, text = _ROLE[m.group(1)], prompt[m.end():end].strip()
        if turns and turns[-1][0] == role:
            turns[-1] = (role, turns[-1][1] + "\n" + text)
        else:
            turns.append((role, text))
    if turns and turns[-1][0] == "assistant" and not turns[-1][1]:
        turns.pop()
    return turns


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(prompt: str, tokenizer) -> str:
    """HH prompt -> model input text.

    With a chat template (an instruction model such as SmolLM2-Instruct), the HH turns become
    user/assistant messages rendered with ``add_generation_prompt=True``. Without one, the HH
    text is returned unchanged: the paper's policies are fine-tuned on exactly that text.
    """
    if not has_chat_template(tokenizer):
        return prompt
    messages = [{"role": role, "content": text} for role, text in hh_turns(prompt)]
    if not messages:
        raise ValueError(f"empty prompt {prompt!r}: nothing to answer")
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def cut_at_stop(text: str, stop_strings: Sequence[str] = STOP_STRINGS) -> str:
    """Cut ``text`` at the earliest occurrence of any stop string, then strip."""
    cut = len(text)
    for stop in stop_strings:
        pos = text.find(stop)
        if 0 <= pos < cut:
            cut = pos
    return text[:cut].strip()


def row_seed(seed: int, text: str, repeat: int = 0) -> int:
    """The sampling seed of one generated row: a hash of (seed, prompt text, repeat index)."""
    digest = hashlib.sha256(f"{seed}\0{repeat}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class RowSampler(LogitsProcessor):
    """Temperature + nucleus sampling with one RNG per batch row.

    HF's own sampling draws the whole batch from the global RNG, so a row's sample depends on
    its batch mates. Here the row's token is drawn with its own generator and every other logit
    is set to -inf; ``generate`` then runs in greedy mode and simply takes that token.
    """

    def __init__(self, seeds: list[int], temperature: float = 1.0, top_p: float = 1.0):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.warpers = [TemperatureLogitsWarper(temperature)]
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        probs = scores.float().softmax(dim=-1).cpu()
        picks = [torch.multinomial(probs[r], 1, generator=g).item() for r, g in enumerate(self.generators)]
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(picks)), torch.tensor(picks, device=scores.device)] = 0.0
        return out


_STOP_CRITERIA: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def stop_criteria(tokenizer, stop_strings: Sequence[str]) -> StopStringCriteria:
    """HF's stop-string criterion (early exit per row), built once per tokenizer and stop set:
    building it scans the whole vocabulary (~1.5 s for a 49k vocab), so it is not rebuilt per batch."""
    key = (len(tokenizer), tuple(stop_strings))
    per_tok = _STOP_CRITERIA.setdefault(tokenizer, {})
    if key not in per_tok:
        per_tok[key] = StopStringCriteria(tokenizer, list(stop_strings))
    return per_tok[key]


def _eos_ids(model, tokenizer) -> list[int]:
    ids = []
    gen_config = getattr(model, "generation_config", None)
    for source in (tokenizer.eos_token_id, getattr(gen_config, "eos_token_id", None)):
        if source is None:
            continue
        ids.extend(source if isinstance(source, (list, tuple)) else [source])
    return sorted({int(i) for i in ids})


def _tokenize_left_truncated(tokenizer, texts: list[str], max_tokens: int,
                             add_special_tokens: bool) -> list[list[int]]:
    old_side = tokenizer.truncation_side
    try:
        tokenizer.truncation_side = "left"
        enc = tokenizer(texts, add_special_tokens=add_special_tokens, truncation=True, max_length=max_tokens)
    finally:
        tokenizer.truncation_side = old_side
    return [list(ids) for ids in enc["input_ids"]]


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 128, batch_size: int = 8,
             max_prompt_tokens: int = 384, stop_strings: Sequence[str] = STOP_STRINGS,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
             progress: bool = False, add_special_tokens: bool | None = None) -> list[str]:
    """Continue each (already formatted) prompt; return the cleaned continuations in input order.

    Prompts are tokenized once, LEFT-truncated to ``max_prompt_tokens`` (further capped so prompt
    + ``max_new_tokens`` fits the model's context), sorted longest first, left-padded with the
    pad id (eos if the tokenizer has no pad) and decoded greedily unless ``do_sample``. Each
    output is cut at the first EOS and at the first stop string, and stripped. With ``do_sample``
    each row is drawn from its own RNG (:class:`RowSampler`), seeded by ``row_seed``.
    ``add_special_tokens`` defaults to True (the paper's tokenizer call adds BOS) except for
    chat-templated tokenizers, whose rendered text already carries its special tokens.
    """
    prompts = list(prompts)
    if not prompts:
        return []
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}")
    if add_special_tokens is None:
        add_special_tokens = not has_chat_template(tokenizer)
    n_pos = model_positions(model)
    if n_pos is not None:
        if n_pos - max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
                             f"{n_pos}-token context; lower max_new_tokens")
        max_prompt_tokens = min(max_prompt_tokens, n_pos - max_new_tokens)
    ids = _tokenize_left_truncated(tokenizer, prompts, max_prompt_tokens, add_special_tokens)
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise ValueError(f"prompt #{empty[0]} tokenizes to nothing ({prompts[empty[0]]!r}); "
                         "drop empty prompts before generating")

    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))   # stable: ties keep input order
    device = next(model.parameters()).device
    gen_kwargs = {"max_new_tokens": max_new_tokens, "num_beams": 1, "do_sample": False, "pad_token_id": pad,
                  "eos_token_id": eos or None}
    seeds: list[int] = []
    if do_sample:
        repeats: dict[str, int] = {}
        for text in prompts:
            seeds.append(row_seed(seed, text, repeats.get(text, 0)))
            repeats[text] = repeats.get(text, 0) + 1
    if stop_strings:
        # early exit for rows that produced a stop string; the text is cut below either way
        gen_kwargs.update(stopping_criteria=StoppingCriteriaList([stop_criteria(tokenizer, stop_strings)]))

    was_training = model.training
    model.eval()
    outputs: list[str] = [""] * len(ids)
    try:
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="generate", disable=not progress, unit="batch"):
            rows = order[start:start + batch_size]
            width = max(len(ids[i]) for i in rows)
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            attention = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                input_ids[r, width - len(ids[i]):] = torch.tensor(ids[i])
                attention[r, width - len(ids[i]):] = 1
            processors = LogitsProcessorList([RowSampler([seeds[i] for i in rows], temperature, top_p)]
                                             if do_sample else [])
            out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                 logits_processor=processors, **gen_kwargs)
            for r, i in enumerate(rows):
                new = out[r, width:].tolist()
                for j, tok in enumerate(new):
                    if tok in eos:
                        new = new[:j]
                        break
                text = tokenizer.decode(new, skip_special_tokens=True)
                outputs[i] = cut_at_stop(text, stop_strings)
    finally:
        model.train(was_training)
    return outputs
