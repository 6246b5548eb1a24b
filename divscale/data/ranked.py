"""Ranked preference data: one prompt, two or more completions, and an order among them (ties allowed).

The format (one row per prompt), in TRL's naming where TRL has a name::

    prompt       str, or chat messages [{"role": "user", "content": ...}, ...]
    completions  list of >= 2 completions: str, or messages (the assistant message(s) of each)
    scores       list of numbers, higher is better          \\  one of the two
    ranks        list of ints, 0 is best, lower is better   /  (scores win when both are given)
    id           optional; "row <i>" otherwise

:func:`normalize_ranked` turns such rows into the canonical ``datasets.Dataset`` the listwise trainer
reads: ``id``, ``prompt`` (HH text), ``completions`` sorted best first, ``ranks`` (dense, 0 = best,
equal for tied completions), ``scores`` (NaN where unknown) and ``source``.

**Ties.** Completions with equal scores (or equal ranks) share a rank. They are never ordered against
each other: the losses in :mod:`divscale.train.losses` give a tied completion a term only against the
completions ranked strictly below it, and skip pairs of tie-mates. A row whose completions are *all*
tied carries no preference; it "cannot be ranked" and raises (or is dropped with
``drop_unrankable=True``, which logs how many).

**Chat messages** are written as HH text (``"\\n\\nHuman: ...\\n\\nAssistant:"``), the form every divscale
policy is trained on; a policy with a chat template sees them rendered through it again
(:func:`divscale.models.generation.format_prompt`). A system message becomes the first Human turn's preface.

Readers (each returns the canonical Dataset):

- :func:`from_rankings` -- divscale's Ranking JSONL (``divscale.data.hh.save_rankings``): scores = RM rewards
  when every response has one, else the stored order;
- :func:`from_hh_pairs` -- HH-RLHF pairs (``chosen`` / ``rejected`` full dialogues, or rows of
  ``divscale.data.hh.load_hh_rlhf``);
- :func:`from_pro` -- the PRO / ScalingAlignment JSONL (``prefix`` / ``suffix`` / ``reward``);
- :func:`from_ultrafeedback` -- ``openbmb/UltraFeedback``'s layout (``instruction`` and four
  ``completions`` with ``annotations`` ratings and ``fine-grained_score`` / ``overall_score``);
- :func:`from_oasst1` -- OpenAssistant oasst1 message trees (one message per line): every prompter
  message with >= 2 human-ranked assistant replies is one row, the conversation up to it the prompt.

**One-line text for HH-only policies** (:func:`one_line_ranked`). In HH text a newline is turn structure:
``"\n\nHuman:"`` / ``"\n\nAssistant:"``, and a colon closes a role tag, right before the reply. A policy
that has only seen HH text (divscale's tiny GPT, warmed up on HH-RLHF) has learned just that; human-written
markdown (oasst1: most replies have line breaks, and most in-reply colons end a line, ``"Steps:\n1. ..."``)
teaches it "after ':' comes a newline" within a few steps, it then opens every answer after
``"Assistant:"`` with newlines, and its greedy answers come out empty. :func:`one_line_ranked` collapses
every whitespace run inside a turn or completion to one space, keeping the turn markers.

:func:`load_ranked` takes a file, a folder, a list of rows, a ``datasets.Dataset`` or a hub id and picks
the reader from the fields it finds.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import datasets

from divscale.io import DataError, read_jsonl

log = logging.getLogger(__name__)

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
RANKED_FEATURES = datasets.Features({
    "id": datasets.Value("string"), "prompt": datasets.Value("string"),
    "completions": datasets.List(datasets.Value("string")), "ranks": datasets.List(datasets.Value("int64")),
    "scores": datasets.List(datasets.Value("float64")), "source": datasets.Value("string")})
FORMATS = ("ranked", "rankings", "hh", "pro", "ultrafeedback", "oasst1")


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
            raise DataError(f"{where}: message {i} is {m!r}; each message needs 'role' and 'content'")
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


def prompt_text(prompt: Any, where: str) -> str:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise UnrankableRow(f"{where}: empty prompt")
        return prompt
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
    rows = [{**r, "prompt": one_line_prompt(r["prompt"]), "completions": [one_line(c) for c in r["completions"]]}
            for r in ds.to_list()]
    return datasets.Dataset.from_list(rows, features=RANKED_FEATURES)


# --------------------------------------------------------------------------------------------------
# ranks


def dense_ranks(values: Sequence[float], higher_is_better: bool) -> list[int]:
    """0 = best; equal values share a rank; ranks are consecutive (dense)."""
    distinct = sorted(set(values), reverse=higher_is_better)
    where = {v: i for i, v in enumerate(distinct)}
    return [where[v] for v in values]


def normalize_row(row: dict, index: int, source: str = "ranked") -> dict:
    """One row in the ranked format -> the canonical row (sorted best first). Raises :class:`DataError`
    naming the row and why it cannot be ranked."""
    rid = str(row.get("id") if row.get("id") not in (None, "") else f"row {index}")
    where = f"row {index} (id {rid!r})" if row.get("id") not in (None, "") else f"row {index}"
    if "prompt" not in row or "completions" not in row:
        raise DataError(f"{where}: needs 'prompt' and 'completions' (and 'scores' or 'ranks'); "
                        f"fields present: {sorted(row)}")
    completions = row["completions"]
    if not isinstance(completions, (list, tuple)):
        raise DataError(f"{where}: 'completions' must be a list, got {type(completions).__name__}")
    if len(completions) < 2:
        raise UnrankableRow(f"{where}: {len(completions)} completion(s); a ranking needs at least 2")
    texts = [completion_text(c, f"{where}, completion {j}") for j, c in enumerate(completions)]
    scores, ranks = row.get("scores"), row.get("ranks")
    if scores is not None:
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
    return {"id": rid, "prompt": prompt_text(row["prompt"], where), "completions": [texts[j] for j in order],
            "ranks": [dense[j] for j in order], "scores": out_scores, "source": str(row.get("source") or source)}


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
            dropped[str(err).split(": ", 1)[-1].split(" (")[0][:60]] += 1
    if dropped:
        log.warning("dropped %d unrankable row(s): %s", sum(dropped.values()), dict(dropped))
    if not out:
        raise DataError(f"{source}: no rankable rows")
    return datasets.Dataset.from_list(out, features=RANKED_FEATURES)


# --------------------------------------------------------------------------------------------------
# readers


def _rows_of(data) -> list[dict]:
    if isinstance(data, (str, os.PathLike)):
        return [rec for _, rec in read_jsonl(data)]
    return [dict(r) for r in data]


def from_rankings(data, drop_unrankable: bool = False) -> datasets.Dataset:
    """divscale Rankings (a JSONL path, ``Ranking`` objects or their dicts), best first. Scores are the
    RM_train rewards when every response has one; otherwise the stored order is the ranking."""
    from divscale.data.hh import Ranking, load_rankings

    rankings = load_rankings(data) if isinstance(data, (str, os.PathLike)) else \
        [r if isinstance(r, Ranking) else Ranking.from_dict(dict(r)) for r in data]
    rows = []
    for r in rankings:
        scored = all(x is not None for x in r.rewards)
        rows.append({"id": r.id, "prompt": r.prompt, "completions": r.responses,
                     "scores": list(r.rewards) if scored else None,
                     "ranks": None if scored else list(range(r.n))})
    return normalize_ranked(rows, "rankings", drop_unrankable)


def from_hh_pairs(data, drop_unrankable: bool = False) -> datasets.Dataset:
    """HH-RLHF pairs: rows with full ``chosen`` / ``rejected`` dialogues (the hub / jsonl.gz layout), or
    rows of ``divscale.data.hh.load_hh_rlhf`` (``prompt`` + final responses). Identical responses are a tie,
    which cannot be ranked."""
    from divscale.data.hh import split_dialogue

    rows = []
    for i, rec in enumerate(_rows_of(data)):
        if "prompt" in rec and isinstance(rec.get("prompt"), str) and rec["prompt"].endswith(ASSISTANT.strip()):
            prompt, chosen, rejected = rec["prompt"], rec["chosen"], rec["rejected"]
        else:
            try:
                prompt, chosen, rejected = split_dialogue(rec["chosen"], rec["rejected"])
            except (KeyError, TypeError, ValueError) as err:
                err = UnrankableRow(f"row {i}: not an HH-RLHF pair ({type(err).__name__}: {err})")
                if drop_unrankable:
                    log.warning("%s", err)
                    continue
                raise err from None
        rid = rec.get("id") or (f"{rec['subset']}:{rec['line']}" if "subset" in rec and "line" in rec else None)
        tie = chosen.strip() == rejected.strip()
        rows.append({"id": rid, "prompt": prompt, "completions": [chosen, rejected],
                     "ranks": [0, 0] if tie else [0, 1]})
    return normalize_ranked(rows, "hh", drop_unrankable)


def from_pro(path: str | os.PathLike, drop_unrankable: bool = False) -> datasets.Dataset:
    """The PRO / ScalingAlignment JSONL (``prefix``, ``suffix`` best first, ``reward``)."""
    from divscale.data.hh import load_pro_rankings

    rows = []
    for r in load_pro_rankings(path):
        scored = all(x is not None for x in r.rewards)
        rows.append({"id": r.id, "prompt": r.prompt, "completions": r.responses,
                     "scores": list(r.rewards) if scored else None, "ranks": None if scored else list(range(r.n))})
    return normalize_ranked(rows, "pro", drop_unrankable)


UF_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def ultrafeedback_score(completion: dict, score: str) -> float:
    """``fine-grained_score`` (the mean of the four aspect ratings; recomputed from ``annotations`` when
    absent), ``overall_score`` (the critique's 1-10 score) or one aspect's rating."""
    if score in ("fine-grained_score", "overall_score") and completion.get(score) is not None:
        return float(completion[score])
    ann = completion.get("annotations") or {}
    aspects = UF_ASPECTS if score == "fine-grained_score" else (score,)
    ratings = []
    for a in aspects:
        rating = (ann.get(a) or {}).get("Rating") if isinstance(ann.get(a), dict) else None
        if rating in (None, "N/A"):
            continue
        ratings.append(float(rating))
    return sum(ratings) / len(ratings) if ratings else math.nan


def from_ultrafeedback(data, score: str = "fine-grained_score", drop_unrankable: bool = False) -> datasets.Dataset:
    """``openbmb/UltraFeedback`` rows: ``instruction``, ``completions`` (dicts with ``response``,
    ``annotations``, ``fine-grained_score``, ``overall_score``, ``model``). Scores: ``score`` (see
    :func:`ultrafeedback_score`); equal ratings are ties."""
    rows = []
    for i, rec in enumerate(_rows_of(data)):
        comps = rec.get("completions")
        if "instruction" not in rec or not isinstance(comps, list) or \
                not all(isinstance(c, dict) and "response" in c for c in comps):
            raise DataError(f"row {i}: not in UltraFeedback's layout (instruction + completions with "
                            f"'response'); fields present: {sorted(rec)}")
        rows.append({"id": rec.get("id") or rec.get("source", "uf") + ":" + _digest(rec["instruction"]),
                     "prompt": [{"role": "user", "content": rec["instruction"]}],
                     "completions": [c["response"] for c in comps],
                     "scores": [ultrafeedback_score(c, score) for c in comps]})
    return normalize_ranked(rows, "ultrafeedback", drop_unrankable)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def from_oasst1(data, drop_deleted: bool = True, drop_failed_review: bool = False,
                drop_unrankable: bool = True) -> datasets.Dataset:
    """oasst1 message trees (one message per line, the HF schema) -> one row per prompter message with
    >= 2 ranked assistant replies (``rank`` 0 is best; equal ranks are ties). The prompt is the
    conversation from the tree root down to that message, as HH text.

    Skipped, with a logged count: contexts whose history is incomplete (a parent outside the file, e.g.
    a non-English root) and, with the defaults, ``deleted`` replies (``drop_failed_review``: also replies
    with ``review_result`` false). A context left with fewer than 2 ranked replies is not a ranking; with
    ``drop_unrankable=False`` it raises instead of being skipped."""
    messages = _rows_of(data)
    by_id = {}
    for i, m in enumerate(messages):
        missing = [k for k in ("message_id", "parent_id", "role", "text") if k not in m]
        if missing:
            raise DataError(f"oasst1 message {i}: missing field(s) {missing}; expected the OpenAssistant/oasst1 "
                            "schema (message_id, parent_id, role, text, rank, ...)")
        by_id[m["message_id"]] = m
    children = defaultdict(list)
    for m in messages:
        if m["parent_id"] is not None:
            children[m["parent_id"]].append(m)
    rows, skipped = [], defaultdict(int)
    for pid, kids in children.items():
        parent = by_id.get(pid)
        if parent is None or parent["role"] != "prompter":
            continue
        ranked = [k for k in kids if k["role"] == "assistant" and k.get("rank") is not None]
        if len(ranked) < 2:
            continue                                       # not a ranked-responses context
        kept = [k for k in ranked if not (drop_deleted and k.get("deleted"))
                and not (drop_failed_review and k.get("review_result") is False)]
        path, node, complete = [], parent, True
        while node is not None:
            path.append(node)
            if node["parent_id"] is None:
                break
            node = by_id.get(node["parent_id"])
            complete = node is not None
        if not complete:
            skipped["history outside the file"] += 1
            continue
        where = f"oasst1 context {pid}"
        if len(kept) < 2:
            if not drop_unrankable:
                raise UnrankableRow(f"{where}: {len(kept)} ranked reply left after dropping deleted/failed ones")
            skipped["< 2 replies after filtering"] += 1
            continue
        turns = [{"role": "user" if n["role"] == "prompter" else "assistant", "content": n["text"]}
                 for n in reversed(path)]
        kept.sort(key=lambda k: k["rank"])
        rows.append({"id": pid, "prompt": turns, "completions": [k["text"] for k in kept],
                     "ranks": [int(k["rank"]) for k in kept]})
    if skipped:
        log.warning("oasst1: skipped %d context(s): %s", sum(skipped.values()), dict(skipped))
    rows.sort(key=lambda r: r["id"])                      # file order independent
    return normalize_ranked(rows, "oasst1", drop_unrankable)


# --------------------------------------------------------------------------------------------------
# dispatch


def detect_format(record: dict) -> str:
    """Which reader a record's fields call for (one of :data:`FORMATS`)."""
    keys = set(record)
    if {"message_id", "parent_id", "role", "text"} <= keys:
        return "oasst1"
    if {"prefix", "suffix"} <= keys:
        return "pro"
    if "instruction" in keys and isinstance(record.get("completions"), list):
        return "ultrafeedback"
    if {"prompt", "completions"} <= keys:
        return "ranked"
    if {"id", "prompt", "responses", "rewards", "sources"} <= keys:
        return "rankings"
    if {"chosen", "rejected"} <= keys:
        return "hh"
    raise DataError(f"unrecognised record with fields {sorted(keys)}; divscale reads the ranked format "
                    "(prompt, completions, scores|ranks), divscale Rankings, HH-RLHF pairs (chosen, rejected), "
                    "PRO (prefix, suffix), UltraFeedback (instruction, completions) and oasst1 message trees")


def _read(rows: list[dict], fmt: str, drop_unrankable: bool) -> datasets.Dataset:
    if fmt == "ranked":
        return normalize_ranked(rows, "ranked", drop_unrankable)
    if fmt == "rankings":
        return from_rankings(rows, drop_unrankable)
    if fmt == "hh":
        return from_hh_pairs(rows, drop_unrankable)
    if fmt == "ultrafeedback":
        return from_ultrafeedback(rows, drop_unrankable=drop_unrankable)
    if fmt == "oasst1":
        return from_oasst1(rows)
    if fmt == "pro":
        from divscale.data.hh import from_pro_record

        return from_rankings([from_pro_record(r) for r in rows], drop_unrankable)
    raise ValueError(f"format {fmt!r}: choose one of {FORMATS}")


def load_ranked(source, fmt: str | None = None, split: str = "train", drop_unrankable: bool = False,
                limit: int | None = None) -> datasets.Dataset:
    """Ranked data from a JSONL(.gz)/JSON file, a folder of them, rows, a ``datasets.Dataset`` or a hub id
    (``datasets.load_dataset(source, split=split)``). ``fmt``: force a reader (default: detected from the
    first record). ``limit``: keep the first rows only."""
    if isinstance(source, (str, os.PathLike)) and Path(source).expanduser().exists():
        path = Path(source).expanduser()
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json", ".gz")) if path.is_dir() \
            else [path]
        if not files:
            raise DataError(f"{path}: no .jsonl / .json files in this folder")
        rows = [rec for f in files for rec in _file_records(f)]
        where = str(path)
    elif isinstance(source, (str, os.PathLike)):
        name = str(source)
        if name.startswith((".", "/", "~")) or name.endswith((".jsonl", ".json", ".gz")):
            raise DataError(f"{name}: no such file or folder")
        try:
            rows = [dict(r) for r in datasets.load_dataset(name, split=split)]
        except Exception as err:   # the hub raises many types; all mean "not reachable / not there"
            raise DataError(f"could not load {name!r} (split {split!r}) with datasets.load_dataset: "
                            f"{type(err).__name__}: {err}. Pass a local JSONL file or folder instead "
                            "(offline: HF_HUB_OFFLINE=1 allows only the local datasets cache)") from err
        where = name
    else:
        rows, where = [dict(r) for r in source], "rows"
    if not rows:
        raise DataError(f"{where}: no records")
    fmt = fmt or detect_format(rows[0])
    try:
        ds = _read(rows, fmt, drop_unrankable)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None
    return ds.select(range(min(limit, len(ds)))) if limit else ds


def _file_records(path: Path) -> list[dict]:
    if path.suffix == ".json":
        text = path.read_text(encoding="utf-8").strip()
        if text.startswith("["):
            try:
                return list(json.loads(text))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: not valid JSON ({err.msg})") from None
    return [rec for _, rec in read_jsonl(path)]
