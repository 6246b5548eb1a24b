"""Anyone's preference data, read as it is: one reader for ``divscale train --data``, ``divscale diversity``,
``divscale plan --prompts`` and ``divscale evaluate``.

Sources (:func:`read_records`): a JSONL(.gz) / JSON (an array, or one object per line) / parquet file, a folder of
such files, a folder written by ``datasets``' ``save_to_disk``, rows (dicts or a ``datasets.Dataset``) or a hub id
(``datasets.load_dataset(source, split=split)``; offline, only what the local datasets cache holds).

Formats (:data:`FORMATS`), detected from the first record's fields, tried in this order:

================== ==================================================== =========================================
name               fields                                               read by
================== ==================================================== =========================================
oasst1             message_id, parent_id, role, text (message trees)    :func:`divscale.data.corpora.oasst1_rows`
nemo-rl            context, completions: [{rank, completion}]           :func:`divscale.data.preference.nemo_rows`
pro                prefix, suffix (, reward)                            :func:`divscale.data.corpora.pro_rows`
ultrafeedback      instruction, completions: [{response, ...}]          :func:`divscale.data.corpora.ultrafeedback_rows`
ranked             prompt, completions, scores | ranks                  as it is (:mod:`divscale.data.ranked`)
rankings           id, prompt, responses, rewards, sources (divscale)   :func:`divscale.data.corpora.rankings_rows`
hh                 chosen, rejected: HH-RLHF dialogues (no prompt)      :func:`divscale.data.preference.preference_rows`
preference         (prompt,) chosen, rejected: TRL standard or          :func:`divscale.data.preference.preference_rows`
                   conversational, explicit or implicit prompt
unpaired           prompt, completion, label (TRL / KTO)                :func:`divscale.data.preference.unpaired_rows`
prompt-completion  prompt, completion (TRL; prompts only)               prompts only
prompt-only        prompt (TRL; or ``field=``: prompts only)            prompts only
================== ==================================================== =========================================

:func:`load_ranked` gives the canonical ranked ``datasets.Dataset`` (:mod:`divscale.data.ranked`), :func:`load_prompts`
only the prompts (HH text, with their row ids), which every format has -- also rows that cannot be ranked. A record
in no known format fails naming the file and record, the formats tried and what each expects. Row ids are stable
strings: the record's ``id`` (or ``prompt_id``), else ``"row <i>"`` (its position among the records); a repeated id
gets ``"#2"``, ``"#3"``, ... in order. :func:`load_ranked` and :func:`load_prompts` give a row the same id.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets

from divscale.data import corpora, preference
from divscale.data.corpora import ultrafeedback_score  # noqa: F401  (re-exported)
from divscale.data.ranked import (  # noqa: F401  (re-exported: the canonical format's names)
    RANKED_FEATURES,
    WHERE,
    UnrankableRow,
    dense_ranks,
    messages_to_text,
    normalize_ranked,
    normalize_row,
    one_line,
    one_line_prompt,
    one_line_ranked,
    prompt_text,
)
from divscale.io import DataError, read_jsonl

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".jsonl", ".json", ".gz", ".parquet")


# --------------------------------------------------------------------------------------------------
# the formats


def _ranked_rows(records, where, drop_unrankable=False):
    return [{**rec, "id": preference.record_id(rec, i), "source": "ranked", WHERE: where[i]}
            for i, rec in enumerate(records)]


def _nemo_like(rec: dict) -> bool:
    comps = rec.get("completions")
    return "context" in rec and isinstance(comps, list) and bool(comps) and isinstance(comps[0], dict) \
        and "rank" in comps[0]


@dataclass(frozen=True)
class Format:
    """One data format: how to recognise a record, what it expects (for messages) and its readers.

    ``rows(records, where, drop_unrankable)`` gives raw rows in the ranked format (None: prompts only);
    ``prompts(records, where)`` the rows whose prompts :func:`load_prompts` reads (default: ``rows``'s, with the
    records that hold no ranking at all skipped)."""
    name: str
    expects: str
    matches: Callable[[dict], bool]
    rows: Callable | None
    prompts: Callable | None = None

    def prompt_rows(self, records, where) -> list[dict]:
        if self.prompts is not None:
            return self.prompts(records, where)
        return self.rows(records, where, drop_unrankable=True)


FORMATS: tuple[Format, ...] = (
    Format("oasst1", "message_id, parent_id, role, text: one oasst1 message per record",
           lambda r: {"message_id", "parent_id", "role", "text"} <= set(r),
           lambda recs, where, drop_unrankable=True: corpora.oasst1_rows(recs, where, drop_unrankable=True)),
    Format("nemo-rl", "context + completions: [{rank, completion}]", _nemo_like, preference.nemo_rows),
    Format("pro", "prefix + suffix (+ reward): PRO / ScalingAlignment", lambda r: {"prefix", "suffix"} <= set(r),
           lambda recs, where, drop_unrankable=False: corpora.pro_rows(recs, where)),
    Format("ultrafeedback", "instruction + completions: [{response, annotations, ...}]",
           lambda r: "instruction" in r and isinstance(r.get("completions"), list),
           lambda recs, where, drop_unrankable=False: corpora.ultrafeedback_rows(recs, where)),
    Format("ranked", "prompt + completions + scores (higher is better) or ranks (0 is best)",
           lambda r: {"prompt", "completions"} <= set(r), _ranked_rows),
    Format("rankings", "id, prompt, responses, rewards, sources: divscale Rankings",
           lambda r: {"id", "prompt", "responses", "rewards", "sources"} <= set(r),
           lambda recs, where, drop_unrankable=False: corpora.rankings_rows(recs, where)),
    Format("hh", "chosen + rejected: HH-RLHF dialogues ('\\n\\nHuman: ... \\n\\nAssistant: ...')",
           lambda r: {"chosen", "rejected"} <= set(r) and preference.is_hh_dialogue(r),
           lambda recs, where, drop_unrankable=False: preference.preference_rows(recs, where, drop_unrankable, "hh")),
    Format("preference", "chosen + rejected (+ prompt): TRL preference, standard or conversational, "
           "explicit or implicit prompt", lambda r: {"chosen", "rejected"} <= set(r), preference.preference_rows),
    Format("unpaired", "prompt + completion + label: TRL unpaired", lambda r: {"prompt", "completion", "label"} <= set(r),
           preference.unpaired_rows, lambda recs, where: preference.grouped_prompt_rows(recs, where, labelled=True)),
    Format("prompt-completion", "prompt + completion: TRL prompt-completion (prompts only)",
           lambda r: {"prompt", "completion"} <= set(r), None,
           lambda recs, where: preference.grouped_prompt_rows(recs, where, labelled=False)),
    Format("prompt-only", "prompt: TRL prompt-only (prompts only)", lambda r: "prompt" in r, None,
           preference.prompt_rows),
)
BY_NAME = {f.name: f for f in FORMATS}


def detect_format(record: dict, where: str = "record 0") -> str:
    """The name of the first format of :data:`FORMATS` whose fields ``record`` has; else a one-line
    :class:`DataError` naming the record, the formats tried and what each expects."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    for fmt in FORMATS:
        if fmt.matches(record):
            return fmt.name
    tried = "; ".join(f"{f.name} ({f.expects})" for f in FORMATS)
    raise DataError(f"{where}: no known format fits this record (fields: {sorted(record)}). Formats tried: {tried}")


def get_format(name: str) -> Format:
    if name not in BY_NAME:
        raise ValueError(f"format {name!r}: choose one of {list(BY_NAME)}")
    return BY_NAME[name]


def describe(fmt: str, record: dict) -> str:
    """The format as a reader would name it, e.g. ``"preference (TRL: conversational, implicit prompt)"``."""
    if fmt == "preference":
        return f"preference (TRL: {preference.preference_kind(record)})"
    return fmt


# --------------------------------------------------------------------------------------------------
# records from files, folders, rows and the hub


@dataclass
class Records:
    """Records read from a source, each with its location (``"file.jsonl:12"``), and the source's name."""
    records: list[dict]
    where: list[str]
    name: str


def _file_records(path: Path) -> tuple[list[dict], list[str]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise DataError(f"{path}: not a readable parquet file ({type(err).__name__}: {err})") from None
        return rows, [f"{path} record {i + 1}" for i in range(len(rows))]
    if path.suffix == ".json":
        text = path.read_text(encoding="utf-8").strip()
        if text.startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
            return list(rows), [f"{path} record {i + 1}" for i in range(len(rows))]
    pairs = list(read_jsonl(path))
    return [rec for _, rec in pairs], [f"{path}:{line}" for line, _ in pairs]


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or \
        (path / "state.json").exists()


def read_records(source, split: str = "train") -> Records:
    """The records of a file, a folder, rows or a hub id (see the module docstring)."""
    if isinstance(source, (str, os.PathLike)) and Path(source).expanduser().exists():
        path = Path(source).expanduser()
        if path.is_dir() and _is_saved_dataset(path):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{path}: no split {split!r} (splits: {list(ds)}); pass --split")
                ds = ds[split]
            rows = [dict(r) for r in ds]
            return Records(rows, [f"{path} row {i}" for i in range(len(rows))], str(path))
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in DATA_SUFFIXES) if path.is_dir() \
            else [path]
        if not files:
            raise DataError(f"{path}: no data files in this folder ({', '.join(DATA_SUFFIXES)}); give a file or a "
                            "folder of them")
        if path.is_file() and path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (no records)")
        records, where = [], []
        for f in files:
            recs, locs = _file_records(f)
            records += recs
            where += locs
        return Records(records, where, str(path))
    if isinstance(source, (str, os.PathLike)):
        name = str(source)
        if name.startswith((".", "/", "~")) or name.endswith(DATA_SUFFIXES) or name.count("/") != 1:
            raise DataError(f"{name}: no such file or folder (and not a hub id 'owner/name')")
        try:
            ds = datasets.load_dataset(name, split=split)
        except Exception as err:  # noqa: BLE001 - the hub raises many types, all "not reachable / not there"
            raise DataError(f"could not load {name!r} (split {split!r}) with datasets.load_dataset: "
                            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. Pass a local "
                            "file or folder instead (offline: HF_HUB_OFFLINE=1 allows only the local datasets "
                            "cache)") from None
        rows = [dict(r) for r in ds]
        return Records(rows, [f"{name} ({split}) row {i}" for i in range(len(rows))], name)
    rows = [dict(r) for r in source]
    return Records(rows, [f"row {i}" for i in range(len(rows))], "rows")


def _unique_ids(rows: list[dict]) -> list[dict]:
    """A repeated id gets ``#2``, ``#3``, ... in order of appearance (so every row id names one row)."""
    counts = Counter(r["id"] for r in rows)
    if all(c == 1 for c in counts.values()):
        return rows
    seen: Counter = Counter()
    for r in rows:
        if counts[r["id"]] > 1:
            seen[r["id"]] += 1
            if seen[r["id"]] > 1:
                r["id"] = f"{r['id']}#{seen[r['id']]}"
    return rows


def _resolve(data: Records, fmt: str | None) -> tuple[Format, str]:
    if not data.records:
        raise DataError(f"{data.name}: no records")
    first = data.records[0]
    name = fmt or detect_format(first, data.where[0])
    return get_format(name), describe(name, first) if isinstance(first, dict) else name


# --------------------------------------------------------------------------------------------------
# the two entry points


def load_ranked(source, fmt: str | None = None, split: str = "train", drop_unrankable: bool = False,
                limit: int | None = None) -> datasets.Dataset:
    """The canonical ranked ``datasets.Dataset`` of any source in any ranked format (see the module docstring).
    ``fmt``: force a format (default: detected from the first record). ``drop_unrankable``: skip rows that cannot
    be ranked (logged) instead of failing on the first. ``limit``: keep the first rows only."""
    data = read_records(source, split)
    form, _ = _resolve(data, fmt)
    if form.rows is None:
        preference.refuse_unranked(form.name, data.name)
    rows = _unique_ids(form.rows(data.records, data.where, drop_unrankable=drop_unrankable))
    try:
        ds = normalize_ranked(rows, form.name, drop_unrankable)
    except DataError as err:                     # row errors name their file; "no rankable rows" gets the source
        raise DataError(str(err) if data.name in str(err) else f"{data.name}: {err}") from None
    return ds.select(range(min(limit, len(ds)))) if limit else ds


@dataclass
class Prompts:
    """The prompts of a source (HH text), their row ids, the format read and the records skipped (their
    locations: records that hold no prompt, e.g. HH pairs that cannot be split)."""
    prompts: list[str]
    ids: list[str]
    format: str
    skipped: list[str]
    name: str

    def __len__(self) -> int:
        return len(self.prompts)


def load_prompts(source, fmt: str | None = None, split: str = "train", field: str | None = None,
                 limit: int | None = None) -> Prompts:
    """The prompts of any source in any format (ranked or not), as HH text, with their row ids.
    ``field``: read the prompts from this field of every record (prompt-only data with another name)."""
    data = read_records(source, split)
    if field is not None:
        form, described = BY_NAME["prompt-only"], "prompt-only"
        rows = preference.prompt_rows(data.records, data.where, field)
    else:
        form, described = _resolve(data, fmt)
        rows = form.prompt_rows(data.records, data.where)
    rows = _unique_ids(rows)
    seen = {r[WHERE] for r in rows}                  # hh / preference: one row per record, or none
    skipped = [w for w in data.where if w not in seen] if form.name in ("hh", "preference") else []
    if skipped:
        log.warning("%s: %d record(s) hold no prompt and were skipped (first: %s)", data.name, len(skipped),
                    skipped[0])
    prompts = []
    for r in rows:
        try:
            prompts.append(prompt_text(r["prompt"], r[WHERE]))
        except UnrankableRow as err:            # an empty prompt: an error here, not a row to skip
            raise DataError(str(err)) from None
    if not prompts:
        raise DataError(f"{data.name}: no usable prompts")
    ids = [r["id"] for r in rows]
    if limit:
        prompts, ids = prompts[:limit], ids[:limit]
    return Prompts(prompts, ids, described, skipped, data.name)


# --------------------------------------------------------------------------------------------------
# the readers by name (the API before the split into modules; notebooks and tests call them)


def _read_as(data, name: str, reader: Callable, drop: bool, **kw) -> datasets.Dataset:
    recs = read_records(data)
    return normalize_ranked(_unique_ids(reader(recs.records, recs.where, **kw)), name, drop)


def from_hh_pairs(data, drop_unrankable: bool = False) -> datasets.Dataset:
    """HH-RLHF pairs (full dialogues, or rows of ``divscale.data.hh.load_hh_rlhf``) and TRL preference pairs."""
    return _read_as(data, "hh", preference.preference_rows, drop_unrankable, drop_unrankable=drop_unrankable,
                    source="hh")


def from_ultrafeedback(data, score: str = "fine-grained_score", drop_unrankable: bool = False) -> datasets.Dataset:
    """``openbmb/UltraFeedback`` rows, scored by ``score`` (:func:`divscale.data.corpora.ultrafeedback_score`)."""
    return _read_as(data, "ultrafeedback", corpora.ultrafeedback_rows, drop_unrankable, score=score)


def from_oasst1(data, drop_deleted: bool = True, drop_failed_review: bool = False,
                drop_unrankable: bool = True) -> datasets.Dataset:
    """oasst1 message trees (:func:`divscale.data.corpora.oasst1_rows`)."""
    return _read_as(data, "oasst1", corpora.oasst1_rows, drop_unrankable, drop_deleted=drop_deleted,
                    drop_failed_review=drop_failed_review, drop_unrankable=drop_unrankable)
