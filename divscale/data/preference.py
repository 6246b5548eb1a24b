"""Trainer formats -> rows in the ranked format (:mod:`divscale.data.ranked`): TRL's preference, unpaired,
prompt-completion and prompt-only data, HH-RLHF dialogues and NeMo-RL's ranked completions.

TRL's dataset formats (``docs/source/dataset_formats.md`` of TRL; the pinned 1.16):

- **preference** ``prompt`` / ``chosen`` / ``rejected``, each *standard* (strings) or *conversational* (lists of
  ``{role, content}`` messages), with an *explicit* prompt or an *implicit* one (no ``prompt``: the prompt is the
  shared start of ``chosen`` and ``rejected``). Read with TRL's own ``maybe_extract_prompt`` (which also treats a
  string ``prompt`` beside conversational ``chosen`` / ``rejected`` as implicit, as TRL's trainers do). One row per
  pair (K = 2; identical completions are a tie, which cannot be ranked). Pairs that share a prompt stay separate
  rows: two pairs do not make a ranking.
- **HH-RLHF** (``Anthropic/hh-rlhf``) is the standard implicit layout with HH role markers; its prompt is cut at the
  final shared ``"\\n\\nAssistant:"`` (:func:`divscale.data.hh.split_dialogue`, the paper's rule) rather than at
  TRL's character-level common prefix, which would cut into the first word both answers share.
- **unpaired** ``prompt`` / ``completion`` / ``label`` (KTO's format; ``trl.unpair_preference_dataset`` writes it):
  the completions of one prompt (same text, or same messages) form one row, label true above label false
  (completions with the same label are tied). A prompt needs completions with both labels to be a ranking; a file
  where no prompt has both is refused (it is KTO data, not a ranking).
- **prompt-completion** (``prompt`` / ``completion``, SFT data) and **prompt-only** (``prompt``): prompts, no
  preference. ``divscale diversity`` and ``divscale plan`` read their prompts; training on them is refused.

NeMo-RL's preference data: ``context`` (messages, or a string) and ``completions: [{"rank": int, "completion":
messages}]`` (lower rank is better; NeMo-RL's DPO uses two, the format allows more).

Every reader takes the whole list of records and their locations (``"file.jsonl:12"``, for messages) and returns
raw rows for :func:`divscale.data.ranked.normalize_ranked`; ``drop_unrankable`` skips (and counts) records that
hold no ranking at all instead of raising.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from divscale.data.ranked import ASSISTANT, HUMAN, WHERE, UnrankableRow, is_messages
from divscale.io import DataError

log = logging.getLogger(__name__)


def record_id(rec: dict, index: int) -> str:
    """A record's own id (``id``, ``prompt_id``), else ``"row <index>"`` (its position among the records: stable
    for the same file, whatever rows are dropped later)."""
    for key in ("id", "prompt_id"):
        if rec.get(key) not in (None, ""):
            return str(rec[key])
    return f"row {index}"


def _drop(err: UnrankableRow, drop_unrankable: bool, dropped: list) -> None:
    if not drop_unrankable:
        raise err
    dropped.append(str(err))


def _log_dropped(what: str, dropped: list) -> None:
    if dropped:
        log.warning("%s: skipped %d record(s) that hold no ranking (first: %s)", what, len(dropped), dropped[0])


# --------------------------------------------------------------------------------------------------
# TRL preference pairs and HH-RLHF dialogues


def is_hh_dialogue(rec: dict) -> bool:
    """HH-RLHF's layout: no ``prompt``, ``chosen`` a string of ``"\\n\\nHuman:"`` / ``"\\n\\nAssistant:"`` turns."""
    chosen = rec.get("chosen")
    return "prompt" not in rec and isinstance(chosen, str) and chosen.lstrip().startswith(HUMAN.strip()) \
        and ASSISTANT in chosen


def preference_kind(rec: dict) -> str:
    """What TRL calls a preference record: ``"standard"`` or ``"conversational"``, ``"explicit"`` or
    ``"implicit"`` prompt (through ``trl.data_utils.is_conversational`` and ``maybe_extract_prompt``'s rule)."""
    from trl.data_utils import is_conversational

    conversational = is_conversational({"chosen": rec.get("chosen")})
    explicit = "prompt" in rec and is_conversational({"prompt": rec["prompt"]}) == conversational
    return f"{'conversational' if conversational else 'standard'}, {'explicit' if explicit else 'implicit'} prompt"


def split_pair(rec: dict, where: str) -> tuple:
    """``(prompt, chosen, rejected)`` of one preference record: HH dialogues at their final shared Assistant turn,
    anything else by TRL's ``maybe_extract_prompt``."""
    from trl.data_utils import maybe_extract_prompt

    chosen, rejected = rec["chosen"], rec["rejected"]
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not (isinstance(value, str) or is_messages(value)):
            raise DataError(f"{where}: '{name}' must be strings or chat messages ([{{role, content}}, ...]), "
                            f"got {type(value).__name__}")
    if is_messages(chosen) != is_messages(rejected):
        raise DataError(f"{where}: 'chosen' and 'rejected' must both be strings or both chat messages")
    if is_hh_dialogue(rec):
        from divscale.data.hh import split_dialogue

        if not isinstance(rejected, str):
            raise DataError(f"{where}: 'chosen' and 'rejected' must be strings (an HH-RLHF pair)")
        try:
            return split_dialogue(chosen, rejected)
        except ValueError as err:
            raise UnrankableRow(f"{where}: not a splittable HH-RLHF pair ({err})") from None
    if chosen == rejected and "prompt" not in rec:
        raise UnrankableRow(f"{where}: 'chosen' and 'rejected' are identical; the pair carries no preference")
    example = {"chosen": chosen, "rejected": rejected} | ({"prompt": rec["prompt"]} if "prompt" in rec else {})
    out = maybe_extract_prompt(example)
    return out["prompt"], out["chosen"], out["rejected"]


def preference_rows(records: Sequence[dict], where: Sequence[str], drop_unrankable: bool = False,
                    source: str = "preference") -> list[dict]:
    """TRL preference pairs (standard / conversational, explicit / implicit prompt) and HH-RLHF pairs (also rows
    of :func:`divscale.data.hh.load_hh_rlhf`: ``prompt`` + final responses): one row per pair."""
    rows, dropped = [], []
    for i, rec in enumerate(records):
        missing = [k for k in ("chosen", "rejected") if k not in rec]
        if missing:
            raise DataError(f"{where[i]}: missing field(s) {missing} (read as {source}: prompt, chosen, rejected); "
                            f"fields present: {sorted(rec)}")
        try:
            prompt, chosen, rejected = split_pair(rec, where[i])
        except UnrankableRow as err:
            _drop(err, drop_unrankable, dropped)
            continue
        rid = f"{rec['subset']}:{rec['line']}" if "subset" in rec and "line" in rec else record_id(rec, i)
        tie = _same(chosen, rejected)
        rows.append({"id": rid, "prompt": prompt, "completions": [chosen, rejected], "ranks": [0, 0] if tie else [0, 1],
                     "source": source, WHERE: where[i]})
    _log_dropped(source, dropped)
    return rows


def _same(a, b) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    return a == b


# --------------------------------------------------------------------------------------------------
# TRL unpaired (KTO) data


def _label(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    raise DataError(f"{where}: 'label' must be true or false (desirable or not), got {value!r:.40}")


def _by_prompt(records: Sequence[dict], where: Sequence[str], fields: tuple[str, ...]) -> dict[str, dict]:
    """Records grouped by prompt (same text, or same messages), in order of first appearance."""
    groups: dict[str, dict] = {}
    for i, rec in enumerate(records):
        missing = [k for k in fields if k not in rec]
        if missing:
            raise DataError(f"{where[i]}: missing field(s) {missing} (read as TRL {'unpaired' if 'label' in fields else 'prompt-completion'}: "
                            f"{', '.join(fields)}); fields present: {sorted(rec)}")
        key = json.dumps(rec["prompt"], sort_keys=True, ensure_ascii=False)
        group = groups.setdefault(key, {"first": i, "prompt": rec["prompt"], "completions": [], "labels": []})
        group["completions"].append(rec.get("completion"))
        if "label" in fields:
            group["labels"].append(_label(rec["label"], where[i]))
    return groups


def unpaired_rows(records: Sequence[dict], where: Sequence[str], drop_unrankable: bool = False) -> list[dict]:
    """TRL's unpaired format: the completions of each prompt in one row, label true ranked above label false."""
    groups = _by_prompt(records, where, ("prompt", "completion", "label"))
    if not any(len(set(g["labels"])) == 2 for g in groups.values()):
        sizes = sorted({len(g["labels"]) for g in groups.values()})
        raise DataError(f"{where[0]}: TRL unpaired data (prompt, completion, label) with no prompt "
                        f"that has both a desirable (label true) and an undesirable (false) completion ({len(groups)} "
                        f"prompts, {'/'.join(map(str, sizes))} completion(s) each): a ranking needs both for the same "
                        "prompt. This is KTO data; train it with TRL's KTOTrainer, or give each prompt labelled "
                        "completions of both kinds")
    rows, dropped = [], []
    for g in groups.values():
        i = g["first"]
        if len(set(g["labels"])) < 2:
            _drop(UnrankableRow(f"{where[i]}: the prompt's {len(g['labels'])} completion(s) all have label "
                                f"{g['labels'][0]}; a ranking needs both labels"), drop_unrankable, dropped)
            continue
        rows.append({"id": record_id(records[i], i), "prompt": g["prompt"], "completions": g["completions"],
                     "ranks": [0 if label else 1 for label in g["labels"]], "source": "unpaired",
                     WHERE: f"{where[i]} (the prompt of {len(g['labels'])} records)"})
    _log_dropped("unpaired", dropped)
    return rows


# --------------------------------------------------------------------------------------------------
# prompts only (prompt-completion and prompt-only data; the prompts of unpaired data)


def prompt_rows(records: Sequence[dict], where: Sequence[str], field: str = "prompt") -> list[dict]:
    """Rows with a prompt and no ranking (TRL prompt-only data, or any ``field``): one per record."""
    rows = []
    for i, rec in enumerate(records):
        if field not in rec:
            raise DataError(f"{where[i]}: missing field(s) ['{field}'] (read as prompts: '{field}'); "
                            f"fields present: {sorted(rec)}")
        rows.append({"id": record_id(rec, i), "prompt": rec[field], WHERE: where[i]})
    return rows


def grouped_prompt_rows(records: Sequence[dict], where: Sequence[str], labelled: bool) -> list[dict]:
    """The distinct prompts of prompt-completion (or unpaired) data, with the ids :func:`unpaired_rows` gives."""
    fields = ("prompt", "completion", "label") if labelled else ("prompt", "completion")
    return [{"id": record_id(records[g["first"]], g["first"]), "prompt": g["prompt"], WHERE: where[g["first"]]}
            for g in _by_prompt(records, where, fields).values()]


def refuse_unranked(kind: str, where: str) -> None:
    raise DataError(f"{where}: {kind} data has prompts but no preference among completions; divscale trains on "
                    "rankings (a ranked, preference, unpaired, NeMo-RL, UltraFeedback, oasst1, HH or PRO file). "
                    "Its prompts can still be measured (divscale diversity) and planned (divscale plan)")


# --------------------------------------------------------------------------------------------------
# NeMo-RL


def nemo_rows(records: Sequence[dict], where: Sequence[str], drop_unrankable: bool = False) -> list[dict]:
    """NeMo-RL's ``context`` + ``completions: [{rank, completion}]`` (lower rank is better)."""
    rows = []
    for i, rec in enumerate(records):
        comps = rec.get("completions")
        if "context" not in rec or not isinstance(comps, list) or \
                not all(isinstance(c, dict) and "rank" in c and "completion" in c for c in comps):
            raise DataError(f"{where[i]}: not in NeMo-RL's layout (context + completions: [{{rank, completion}}]); "
                            f"fields present: {sorted(rec)}")
        rows.append({"id": record_id(rec, i), "prompt": rec["context"], "completions": [c["completion"] for c in comps],
                     "ranks": [c["rank"] for c in comps], "source": "nemo-rl", WHERE: where[i]})
    return rows
