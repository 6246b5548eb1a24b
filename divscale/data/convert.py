"""``divscale data convert``: rankings to TRL preference pairs, and any data to the ranked format.

TRL has no ranked-list format; its maintainers' answer to "more than one rejected" (huggingface/trl#1831) is to
split a ranking into pairs. :func:`ranked_to_pairs` does that split, so a ranked file can feed TRL's
``DPOTrainer``, and :func:`to_ranked_records` writes any readable data (TRL pairs included) in the ranked format
that ``divscale train --data`` reads.

Pairs (:data:`PAIRINGS`), from a ranking best first, ties never ordered:

- ``best-vs-rest``: each completion of the best rank against each completion ranked below it (n-1 pairs for a
  strict n-ranking: PRO's first softmax term as pairs, and what ``divscale train --algo dpo`` uses);
- ``all``: every pair of completions with different ranks (n(n-1)/2 for a strict n-ranking).

A pair is written in TRL's *standard* format (``prompt`` as HH text, ``chosen`` / ``rejected`` strings with the
leading space divscale joins prompt and completion with, as ``divscale train --algo dpo`` feeds TRL) or, when the
input gave its prompts as chat messages, in TRL's *conversational* format (``prompt`` the messages, ``chosen`` /
``rejected`` one assistant message each); ``--style`` forces one. Each pair keeps its row's ``id`` as ``row_id``,
the pair's ranks and, when the row has scores, ``score_chosen`` / ``score_rejected`` (UltraFeedback-binarized's
names).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from divscale.io import DataError, atomic_write_jsonl

PAIRINGS = ("best-vs-rest", "all")
STYLES = ("auto", "standard", "conversational")


def pair_indices(ranks: list[int], how: str = "best-vs-rest") -> list[tuple[int, int]]:
    """``(chosen, rejected)`` positions of a ranking's pairs (``ranks``: dense, 0 = best); tie-mates are never
    a pair."""
    if how not in PAIRINGS:
        raise ValueError(f"pairs={how!r}: choose one of {PAIRINGS}")
    n = len(ranks)
    if how == "best-vs-rest":
        top = min(ranks)
        return [(i, j) for i in range(n) if ranks[i] == top for j in range(n) if ranks[j] > top]
    return [(i, j) for i in range(n) for j in range(n) if ranks[i] < ranks[j]]


def _conversational(row: dict, style: str) -> bool:
    if style not in STYLES:
        raise ValueError(f"style={style!r}: choose one of {STYLES}")
    return bool(row.get("prompt_chat")) if style == "auto" else style == "conversational"


def _prompt(row: dict, chat: bool):
    if not chat:
        return row["prompt"]
    if row.get("prompt_chat"):
        return list(row["prompt_chat"])
    from divscale.data.hh import pro_turns

    return [{"role": "user" if "prompter" in tag else "assistant", "content": text}
            for tag, text in pro_turns(row["prompt"], keep_paragraphs=True) if text]


def _completion(text: str, chat: bool):
    return [{"role": "assistant", "content": text}] if chat else " " + text


def ranked_to_pairs(rows: Iterable[dict], how: str = "best-vs-rest", style: str = "auto") -> list[dict]:
    """Canonical ranked rows (:mod:`divscale.data.ranked`) -> TRL preference pairs (see the module docstring)."""
    out = []
    for row in rows:
        chat = _conversational(row, style)
        prompt = _prompt(row, chat)
        scores = row.get("scores") or []
        scored = len(scores) == len(row["completions"]) and all(
            s is not None and math.isfinite(s) for s in scores)
        for i, j in pair_indices(list(row["ranks"]), how):
            pair = {"prompt": prompt, "chosen": _completion(row["completions"][i], chat),
                    "rejected": _completion(row["completions"][j], chat), "row_id": row["id"],
                    "rank_chosen": row["ranks"][i], "rank_rejected": row["ranks"][j]}
            if scored:
                pair |= {"score_chosen": scores[i], "score_rejected": scores[j]}
            out.append(pair)
    return out


def to_ranked_records(rows: Iterable[dict], style: str = "auto") -> list[dict]:
    """Canonical ranked rows -> records in the ranked format (``id``, ``prompt``, ``completions``, ``ranks``, and
    ``scores`` when every score is known), as chat messages when the input's prompts were messages."""
    out = []
    for row in rows:
        chat = _conversational(row, style)
        rec = {"id": row["id"], "prompt": _prompt(row, chat),
               "completions": [_completion(c, chat) if chat else c for c in row["completions"]],
               "ranks": list(row["ranks"])}
        scores = row.get("scores") or []
        if scores and all(s is not None and math.isfinite(s) for s in scores):
            rec["scores"] = list(scores)
        out.append(rec)
    return out


def command(args) -> int:
    """``divscale data convert SOURCE --to pairs|ranked --out FILE``."""
    from divscale.data.formats import load_ranked

    if not str(args.out).endswith((".jsonl", ".jsonl.gz")):
        raise DataError(f"--out {args.out}: write a .jsonl (or .jsonl.gz) file")
    if args.to != "pairs" and args.pairs is not None:
        raise ValueError("--pairs applies to --to pairs only")
    how = args.pairs or "best-vs-rest"
    rows = load_ranked(args.source, fmt=args.format, split=args.split, drop_unrankable=args.drop_unrankable,
                       limit=args.limit).to_list()
    records = ranked_to_pairs(rows, how, args.style) if args.to == "pairs" else to_ranked_records(rows, args.style)
    out = Path(args.out)
    atomic_write_jsonl(out, records)
    kind = "conversational" if isinstance(records[0]["prompt"], list) else "standard"
    what = f"{len(records)} TRL preference pairs ({how}, {kind})" if args.to == "pairs" else \
        f"{len(records)} rows in the ranked format ({kind} prompts)"
    print(f"{args.source}: {len(rows)} rankings -> {what} -> {out}")
    return 0
