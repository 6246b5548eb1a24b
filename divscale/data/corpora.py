"""Published corpora -> rows in the ranked format (:mod:`divscale.data.ranked`): divscale Rankings, PRO's
files, UltraFeedback and OpenAssistant oasst1 message trees.

- :func:`rankings_rows` -- divscale's Ranking JSONL (``divscale.data.hh.save_rankings``): scores = the RM_train
  rewards when every response has one, else the stored order;
- :func:`pro_rows` -- the PRO / ScalingAlignment JSONL (``prefix`` / ``suffix`` best first / ``reward``);
- :func:`ultrafeedback_rows` -- ``openbmb/UltraFeedback``'s layout (``instruction`` and four ``completions`` with
  ``annotations`` ratings and ``fine-grained_score`` / ``overall_score``);
- :func:`oasst1_rows` -- oasst1 message trees (one message per record): every prompter message with >= 2
  human-ranked assistant replies is one row, the conversation up to it the prompt.

Each reader takes the whole list of records and their locations and returns raw rows for
:func:`divscale.data.ranked.normalize_ranked`.
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence

from divscale.data.ranked import WHERE, UnrankableRow
from divscale.io import DataError
from divscale.provenance import sha256_hex

log = logging.getLogger(__name__)


def _ranking_row(r, where: str, source: str) -> dict:
    scored = all(x is not None for x in r.rewards)
    return {"id": r.id, "prompt": r.prompt, "completions": r.responses, "scores": list(r.rewards) if scored else None,
            "ranks": None if scored else list(range(r.n)), "source": source, WHERE: where}


def rankings_rows(records: Sequence, where: Sequence[str]) -> list[dict]:
    """divscale Rankings (``Ranking`` objects or their dicts), best first."""
    from divscale.data.hh import Ranking

    rows = []
    for i, rec in enumerate(records):
        try:
            r = rec if isinstance(rec, Ranking) else Ranking.from_dict(dict(rec))
        except (TypeError, ValueError) as err:
            raise DataError(f"{where[i]}: {err}") from None
        rows.append(_ranking_row(r, where[i], "rankings"))
    return rows


def pro_rows(records: Sequence[dict], where: Sequence[str]) -> list[dict]:
    """PRO / ScalingAlignment records (``prefix``, ``suffix`` best first, ``reward``)."""
    from divscale.data.hh import from_pro_record

    rows = []
    for i, rec in enumerate(records):
        try:
            r = from_pro_record(rec)
        except (TypeError, ValueError, IndexError) as err:
            raise DataError(f"{where[i]}: not a PRO record ({err})") from None
        rows.append(_ranking_row(r, where[i], "pro"))
    return rows


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


def ultrafeedback_rows(records: Sequence[dict], where: Sequence[str], score: str = "fine-grained_score") -> list[dict]:
    """``openbmb/UltraFeedback`` rows: ``instruction``, ``completions`` (dicts with ``response``,
    ``annotations``, ``fine-grained_score``, ``overall_score``, ``model``). Scores: ``score`` (see
    :func:`ultrafeedback_score`); equal ratings are ties."""
    rows = []
    for i, rec in enumerate(records):
        comps = rec.get("completions")
        if "instruction" not in rec or not isinstance(comps, list) or \
                not all(isinstance(c, dict) and "response" in c for c in comps):
            raise DataError(f"{where[i]}: not in UltraFeedback's layout (instruction + completions with "
                            f"'response'); fields present: {sorted(rec)}")
        rows.append({"id": rec.get("id") or rec.get("source", "uf") + ":" + sha256_hex(rec["instruction"], 12),
                     "prompt": [{"role": "user", "content": rec["instruction"]}],
                     "completions": [c["response"] for c in comps],
                     "scores": [ultrafeedback_score(c, score) for c in comps], "source": "ultrafeedback",
                     WHERE: where[i]})
    return rows


def oasst1_rows(messages: Sequence[dict], where: Sequence[str], drop_deleted: bool = True,
                drop_failed_review: bool = False, drop_unrankable: bool = True) -> list[dict]:
    """oasst1 message trees (one message per record, the HF schema) -> one row per prompter message with
    >= 2 ranked assistant replies (``rank`` 0 is best; equal ranks are ties). The prompt is the
    conversation from the tree root down to that message, as chat messages.

    Skipped, with a logged count: contexts whose history is incomplete (a parent outside the file, e.g.
    a non-English root) and, with the defaults, ``deleted`` replies (``drop_failed_review``: also replies
    with ``review_result`` false). A context left with fewer than 2 ranked replies is not a ranking; with
    ``drop_unrankable=False`` it raises instead of being skipped."""
    by_id, at = {}, {}
    for i, m in enumerate(messages):
        missing = [k for k in ("message_id", "parent_id", "role", "text") if k not in m]
        if missing:
            raise DataError(f"{where[i]}: missing field(s) {missing}; expected the OpenAssistant/oasst1 "
                            "schema (message_id, parent_id, role, text, rank, ...)")
        by_id[m["message_id"]], at[m["message_id"]] = m, where[i]
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
        where_ = f"{at[pid]} (oasst1 context {pid})"
        if len(kept) < 2:
            if not drop_unrankable:
                raise UnrankableRow(f"{where_}: {len(kept)} ranked reply left after dropping deleted/failed ones")
            skipped["< 2 replies after filtering"] += 1
            continue
        turns = [{"role": "user" if n["role"] == "prompter" else "assistant", "content": n["text"]}
                 for n in reversed(path)]
        kept.sort(key=lambda k: k["rank"])
        rows.append({"id": pid, "prompt": turns, "completions": [k["text"] for k in kept],
                     "ranks": [int(k["rank"]) for k in kept], "source": "oasst1", WHERE: where_})
    if skipped:
        log.warning("oasst1: skipped %d context(s): %s", sum(skipped.values()), dict(skipped))
    rows.sort(key=lambda r: r["id"])                      # file order independent
    return rows
