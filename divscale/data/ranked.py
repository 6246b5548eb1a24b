"""The canonical ranked format: one prompt, two or more completions, and an order among them (ties allowed).

Every reader of :mod:`divscale.data.formats` turns its format into rows of this shape, in TRL's naming where
TRL has a name::

    prompt       str, or chat messages [{"role": "user", "content": ...}, ...]
    completions  list of >= 2 completions: str, or messages (the assistant message(s) of each)
    scores       list of numbers, higher is better          \\  one of the two
    ranks        list of ints, 0 is best, lower is better   /  (scores win when both are given, unless
                                                               every score is missing / NaN)
    id           optional; "row <i>" otherwise

and :func:`normalize_ranked` turns such rows into the canonical ``datasets.Dataset`` the listwise trainer
reads (:data:`RANKED_FEATURES`): ``id``, ``prompt`` (HH text), ``completions`` sorted best first, ``ranks``
(dense, 0 = best, equal for tied completions), ``scores`` (NaN where unknown), ``source`` (the format read)
and ``prompt_chat`` (the prompt's chat messages when it was given as messages, else empty: what
:mod:`divscale.data.convert` writes back for conversational data).

**Ties.** Completions with equal scores (or equal ranks) share a rank. They are never ordered against
each other: the losses in :mod:`divscale.train.losses` give a tied completion a term only against the
completions ranked strictly below it, and skip pairs of tie-mates. A row whose completions are *all*
tied carries no preference; it "cannot be ranked" and raises (or is dropped with
``drop_unrankable=True``, which logs how many).

**Chat messages** are written as HH text (``"\\n\\nHuman: ...\\n\\nAssistant:"``), the form every divscale
policy is trained on; a policy with a chat template sees them rendered through it again
(:func:`divscale.models.generation.format_prompt`). A system message becomes the first Human turn's preface.

**One-line text for HH-only policies** (:func:`one_line_ranked`). In HH text a newline is turn structure:
``"\\n\\nHuman:"`` / ``"\\n\\nAssistant:"``, and a colon closes a role tag, right before the reply. A policy
that has only seen HH text (divscale's tiny GPT, warmed up on HH-RLHF) has learned just that; human-written
markdown (oasst1: most replies have line breaks, and most in-reply colons end a line, ``"Steps:\\n1. ..."``)
teaches it "after ':' comes a newline" within a few steps, it then opens every answer after
``"Assistant:"`` with newlines, and its greedy answers come out empty. :func:`one_line_ranked` collapses
every whitespace run inside a turn or completion to one space, keeping the turn markers.
"""
from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import datasets

from divscale.io import DataError

log = logging.getLogger(__name__)

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
MESSAGES = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
RANKED_FEATURES = datasets.Features({
    "id": datasets.Value("string"), "prompt": datasets.Value("string"),
    "completions": datasets.List(datasets.Value("string")), "ranks": datasets.List(datasets.Value("int64")),
    "scores": datasets.List(datasets.Value("float64")), "source": datasets.Value("string"),
    "prompt_chat": MESSAGES})
WHERE = "_where"          # a raw row's location for messages ("file.jsonl:12"), set by the readers


class UnrankableRow(DataError):
    """A row that cannot be ranked (the message names the row and why)."""


# --------------------------------------------------------------------------------------------------
# messages -> text


def messages_to_text(messages: Sequence[dict], where: str = "prompt") -> str:
    """Chat messages as HH text ending with ``"\\n\\nAssistant:"`` (the slot the model fills)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise DataError(f"{where}: chat messages must be a non-empty list of {{'role', 'content'}} dicts")
    parts, system = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: message {i} is {m!r:.80}; each message needs 'role' and 'content'")
        role, content = m["role"], str(m["content"]).strip()
        if role == "system":
            system.append(content)
        elif role in ("user", "human", "prompter"):
            parts.append(f"{HUMAN} {content}")
        elif role in ("assistant", "gpt", "bot"):
            parts.append(f"{ASSISTANT} {content}")
        else:
            raise DataError(f"{where}: message {i} has role {role!r}; use system, user or assistant")
    if system:
        if parts and parts[0].startswith(HUMAN):
            parts[0] = f"{HUMAN} " + "\n".join(system) + "\n" + parts[0][len(HUMAN) + 1:]
        else:
            parts.insert(0, f"{HUMAN} " + "\n".join(system))
    if not parts or not parts[0].startswith(HUMAN):
        raise DataError(f"{where}: the conversation must start with a user message")
    if parts[-1].startswith(ASSISTANT):
        raise DataError(f"{where}: the prompt ends with an assistant message; its last message must be the user's")
    return "".join(parts) + ASSISTANT


def is_messages(value: Any) -> bool:
    """A list of ``{role, content}`` dicts (TRL's conversational format; ``trl.is_conversational`` on one value)."""
    return isinstance(value, (list, tuple)) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def prompt_text(prompt: Any, where: str) -> str:
    """A prompt as HH text: a non-empty string as it is, chat messages through :func:`messages_to_text`."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise UnrankableRow(f"{where}: empty prompt; remove the record or fill it in")
        return prompt
    if not isinstance(prompt, (list, tuple)):
        raise DataError(f"{where}: the prompt must be a string or chat messages, got {type(prompt).__name__}")
    return messages_to_text(prompt, f"{where}: prompt")


def completion_text(completion: Any, where: str) -> str:
    """A completion as text: a string, one message, or a list of messages (their assistant contents)."""
    if isinstance(completion, str):
        text = completion
    elif isinstance(completion, dict) and "content" in completion:
        text = str(completion["content"])
    elif isinstance(completion, (list, tuple)) and completion and all(isinstance(m, dict) for m in completion):
        text = "\n".join(str(m.get("content", "")) for m in completion if m.get("role", "assistant") == "assistant")
    else:
        raise DataError(f"{where}: a completion must be a string or assistant message(s), got {completion!r:.80}")
    text = text.strip()
    if not text:
        raise UnrankableRow(f"{where}: empty completion (drop it or give it text)")
    return text


def chat_of(prompt: Any) -> list[dict]:
    """The ``prompt_chat`` column: the prompt's messages (role, content as strings) or [] for a text prompt."""
    if not is_messages(prompt):
        return []
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]


_TURN_MARKER = re.compile(r"(\n\nHuman:|\n\nAssistant:)")


def one_line(text: str) -> str:
    """``text`` with every whitespace run (line breaks included) collapsed to one space, stripped."""
    return " ".join(text.split())


def one_line_prompt(prompt: str) -> str:
    """An HH prompt with each turn's text on one line (:func:`one_line`); the ``"\\n\\nHuman:"`` /
    ``"\\n\\nAssistant:"`` markers, and so the turns and the final ``"\\n\\nAssistant:"``, are kept."""
    pieces = _TURN_MARKER.split(prompt)
    out = [one_line(pieces[0])] if pieces[0].strip() else []
    for marker, body in zip(pieces[1::2], pieces[2::2]):
        body = one_line(body)
        out.append(f"{marker} {body}" if body else marker)
    return "".join(out)


def one_line_ranked(data) -> datasets.Dataset:
    """A canonical ranked dataset (or rows in the ranked format) with every prompt turn and completion on
    one line (see the module docstring: for a policy trained on HH text only). Order, ranks and scores
    are unchanged."""
    ds = data if isinstance(data, datasets.Dataset) and set(data.column_names) == set(RANKED_FEATURES) \
        else normalize_ranked(data)
    rows = [{**r, "prompt": one_line_prompt(r["prompt"]), "completions": [one_line(c) for c in r["completions"]],
             "prompt_chat": [{"role": m["role"], "content": one_line(m["content"])} for m in r["prompt_chat"] or []]}
            for r in ds.to_list()]
    return datasets.Dataset.from_list(rows, features=RANKED_FEATURES)


# --------------------------------------------------------------------------------------------------
# ranks


def dense_ranks(values: Sequence[float], higher_is_better: bool) -> list[int]:
    """0 = best; equal values share a rank; ranks are consecutive (dense)."""
    distinct = sorted(set(values), reverse=higher_is_better)
    where = {v: i for i, v in enumerate(distinct)}
    return [where[v] for v in values]


def _all_missing(values) -> bool:
    return isinstance(values, (list, tuple)) and all(
        v is None or (isinstance(v, float) and math.isnan(v)) for v in values)


def normalize_row(row: dict, index: int, source: str = "ranked") -> dict:
    """One row in the ranked format -> the canonical row (sorted best first). Raises :class:`DataError`
    naming the row and why it cannot be ranked."""
    has_id = row.get("id") not in (None, "")
    rid = str(row["id"]) if has_id else f"row {index}"
    where = row.get(WHERE) or f"row {index}"
    if has_id and not re.fullmatch(r"row \d+", rid):         # a default id says nothing the location does not
        where += f" (id {rid!r})"
    if "prompt" not in row or "completions" not in row:
        raise DataError(f"{where}: needs 'prompt' and 'completions' (and 'scores' or 'ranks'); "
                        f"fields present: {sorted(k for k in row if k != WHERE)}")
    completions = row["completions"]
    if not isinstance(completions, (list, tuple)):
        raise DataError(f"{where}: 'completions' must be a list, got {type(completions).__name__}")
    if len(completions) < 2:
        raise UnrankableRow(f"{where}: {len(completions)} completion(s); a ranking needs at least 2")
    texts = [completion_text(c, f"{where}, completion {j}") for j, c in enumerate(completions)]
    scores, ranks = row.get("scores"), row.get("ranks")
    if scores is not None and not (ranks is not None and _all_missing(scores)):
        key, values = "scores", scores
    elif ranks is not None:
        key, values = "ranks", ranks
    else:
        raise DataError(f"{where}: no 'scores' (higher is better) or 'ranks' (0 is best); give one of them")
    if not isinstance(values, (list, tuple)) or len(values) != len(texts):
        raise DataError(f"{where}: '{key}' must be a list of {len(texts)} numbers (one per completion), "
                        f"got {values!r:.80}")
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise UnrankableRow(f"{where}: '{key}' must be numbers, got {values!r:.80}") from None
    if not all(math.isfinite(v) for v in values):
        raise UnrankableRow(f"{where}: '{key}' {values} has a missing or non-finite value; "
                            "drop that completion or give it a value")
    dense = dense_ranks(values, higher_is_better=key == "scores")
    if max(dense) == 0:
        raise UnrankableRow(f"{where}: all {len(texts)} completions are tied ({key} {values}); "
                            "the row carries no preference")
    order = sorted(range(len(texts)), key=lambda j: dense[j])          # stable: ties keep their input order
    out_scores = [values[j] if key == "scores" else math.nan for j in order]
    chat = row["prompt_chat"] if row.get("prompt_chat") else chat_of(row["prompt"])
    return {"id": rid, "prompt": prompt_text(row["prompt"], where), "completions": [texts[j] for j in order],
            "ranks": [dense[j] for j in order], "scores": out_scores, "source": str(row.get("source") or source),
            "prompt_chat": chat}


def normalize_ranked(rows: Iterable[dict] | datasets.Dataset, source: str = "ranked",
                     drop_unrankable: bool = False) -> datasets.Dataset:
    """Rows in the ranked format -> the canonical ``datasets.Dataset`` (see the module docstring)."""
    out, dropped = [], defaultdict(int)
    for i, row in enumerate(rows):
        try:
            out.append(normalize_row(dict(row), i, source))
        except UnrankableRow as err:
            if not drop_unrankable:
                raise
            dropped[_reason(err)] += 1
    if dropped:
        log.warning("dropped %d unrankable row(s): %s", sum(dropped.values()), dict(dropped))
    if not out:
        raise DataError(f"{source}: no rankable rows" + (f" (dropped: {dict(dropped)})" if dropped else ""))
    return datasets.Dataset.from_list(out, features=RANKED_FEATURES)


def _reason(err: Exception) -> str:
    """The 'why' of an unrankable-row message, without its location (for counting drops)."""
    text = str(err).split(": ", 1)[-1]
    return re.sub(r"\d+(\.\d+)?", "N", text.split(" (")[0])[:60]
