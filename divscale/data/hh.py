"""HH-RLHF -> prompt + responses, rankings, the PRO file format and pool/dev/test splits.

The paper (Song et al. 2024) trains on the four HH-RLHF subsets, preprocessed as in PRO:

- A record is two full dialogues, ``chosen`` and ``rejected``, that share the context and differ
  in the final Assistant turn. The *prompt* is everything up to and including the last shared
  ``"\\n\\nAssistant:"`` (the whole multi-turn context, in the HH text format); the two responses
  are what follows (:func:`split_dialogue`).
- A :class:`Ranking` is one prompt with n responses, best first. Human pairs are 2-rankings
  (:func:`rankings_from_pairs`); ``divscale.reward.rankings`` extends them to 4-rankings ordered by RM_train.
- The official code (PRO, ScalingAlignment) reads JSONL records with ``prefix`` / ``suffix`` /
  ``reward``; :func:`to_pro_record` and :func:`from_pro_record` convert both ways.
- The pool (training prompts), dev and test sets: :func:`load_splits` uses the HH train splits as
  the pool when they are available, as the paper does; otherwise :func:`make_splits` carves all three
  out of the test splits, disjoint by prompt text.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import random
import shutil
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from divscale import paths
from divscale.config import DataConfig, load_recipe, parse_overrides
from divscale.io import DataError, atomic_path, atomic_write_json, atomic_write_jsonl, read_jsonl
from divscale.paths import hub_offline
from divscale.provenance import config_hash, sha256_hex

log = logging.getLogger(__name__)

SUBSETS = tuple(paths.HH_SUBSETS)
HUB_ID = "Anthropic/hh-rlhf"
HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
PROMPTER_TAG = "<|prompter|>"        # PRO's role tags (from OpenAssistant)
ASSISTANT_TAG = "<|assistant|>"
HH_FEATURES = datasets.Features({
    "prompt": datasets.Value("string"), "chosen": datasets.Value("string"),
    "rejected": datasets.Value("string"), "subset": datasets.Value("string"), "line": datasets.Value("int64")})


# --------------------------------------------------------------------------------------------------
# dialogues


def split_dialogue(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split an HH-RLHF pair into ``(prompt, chosen_response, rejected_response)``.

    The prompt is the longest common prefix of the two dialogues, cut back to its last
    ``"\\n\\nAssistant:"`` (a response may itself contain "Assistant:" or "Human:", so splitting at the
    last marker of each dialogue would be wrong for a few records). The prompt keeps the HH format,
    starting with ``"\\n\\nHuman:"`` and ending with ``"\\n\\nAssistant:"``; the responses are stripped.

    Raises ``TypeError`` for non-strings and ``ValueError`` if the dialogues do not start with a Human turn, share no
    ``"\\n\\nAssistant:"``, or if a dialogue continues with a Human turn after its final Assistant
    turn (helpful-online test lines 786 and 1056: ``rejected`` ends with an extra Human turn).
    """
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(text, str):
            raise TypeError(f"{name} must be a string, got {type(text).__name__}")
        if not text.startswith(HUMAN):
            raise ValueError(f"{name} dialogue does not start with {HUMAN!r}: {text[:40]!r}")
    end = chosen.rfind(ASSISTANT) + len(ASSISTANT)
    if end < len(ASSISTANT) or not rejected.startswith(chosen[:end]):
        common = len(os.path.commonprefix([chosen, rejected]))   # rare: a response contains the marker
        end = chosen.rfind(ASSISTANT, 0, common) + len(ASSISTANT)
    if end < len(ASSISTANT):
        raise ValueError(f"chosen and rejected share no {ASSISTANT!r} turn: {chosen[:60]!r} / {rejected[:60]!r}")
    prompt = chosen[:end]
    responses = chosen[end:].strip(), rejected[end:].strip()
    for name, response in zip(("chosen", "rejected"), responses):
        if HUMAN in response:
            raise ValueError(f"the {name} dialogue continues with a Human turn after its final Assistant turn "
                             f"(...{response[response.find(HUMAN):][:60]!r}); it has no final response")
    return prompt, responses[0], responses[1]


# --------------------------------------------------------------------------------------------------
# loading HH-RLHF


def _data_root(data_dir: str | os.PathLike | None) -> tuple[Path | None, bool]:
    """The local copy to read and whether the user pointed at it (argument or ``$DIVSCALE_DATA_DIR``)."""
    explicit = data_dir is not None or bool(os.environ.get("DIVSCALE_DATA_DIR"))
    return paths.hh_data_dir(data_dir), explicit


def _local_file(root: Path | None, subset: str, split: str) -> Path | None:
    if root is None:
        return None
    for name in (f"{split}.jsonl.gz", f"{split}.jsonl"):
        if (root / subset / name).exists():
            return root / subset / name
    return None


def _read_local(path: Path) -> Iterator[tuple[int, Any, Any]]:
    for line, rec in read_jsonl(path, required=("chosen", "rejected")):
        yield line, rec["chosen"], rec["rejected"]


def _read_hub(subset: str, split: str) -> Iterator[tuple[int, Any, Any]]:
    try:
        rows = datasets.load_dataset(HUB_ID, data_dir=subset, split=split)
    except Exception as err:  # the hub raises many types; all mean "not reachable / not there"
        offline = " (HF_HUB_OFFLINE is set)" if hub_offline() else ""
        raise DataError(
            f"could not load {HUB_ID} {subset}/{split} from the Hugging Face hub{offline}: "
            f"{type(err).__name__}: {err}. Link a local copy laid out like anthropics/hh-rlhf "
            f"(<subset>/<split>.jsonl.gz) into {paths.HH_RLHF_DIR}, or set DIVSCALE_DATA_DIR, "
            "or run `divscale data download` while online") from err
    for line, row in enumerate(rows, start=1):
        if "chosen" not in row or "rejected" not in row:
            raise DataError(f"{HUB_ID}/{subset}/{split}:{line}: missing field 'chosen' or 'rejected'")
        yield line, row["chosen"], row["rejected"]


def load_hh_rlhf(subsets: Sequence[str] = SUBSETS, split: str = "test",
                 data_dir: str | os.PathLike | None = None, drop_ties: bool = False) -> datasets.Dataset:
    """Load HH-RLHF pairs as a ``datasets.Dataset`` with columns
    ``prompt``, ``chosen``, ``rejected`` (final responses), ``subset`` and ``line`` (1-based line in the file).

    Sources, in order: ``data_dir``; ``$DIVSCALE_DATA_DIR``; the project's ``data/hh-rlhf/``
    (all laid out like the anthropics/hh-rlhf repo: ``<subset>/<split>.jsonl.gz``); else the hub
    (``Anthropic/hh-rlhf``). A subset missing from a folder you named is an error; missing from the
    project folder, it is fetched from the hub.

    Records that cannot be split (:func:`split_dialogue`) are dropped with a logged warning that
    counts them. Records with identical responses carry no preference; they are kept (as PRO did)
    unless ``drop_ties``. Bad JSON or missing fields raise :class:`DataError` naming file:line.
    """
    if isinstance(subsets, str):
        subsets = (subsets,)
    root, explicit = _data_root(data_dir)
    columns: dict[str, list] = {name: [] for name in HH_FEATURES}
    for subset in subsets:
        path = _local_file(root, subset, split)
        if path is None and explicit:
            raise DataError(f"{root / subset / (split + '.jsonl.gz')}: no such file; the data folder must be laid "
                            f"out like anthropics/hh-rlhf (<subset>/<split>.jsonl.gz, subsets {list(SUBSETS)})")
        where = str(path) if path is not None else f"{HUB_ID}/{subset}/{split}"
        records = _read_local(path) if path is not None else _read_hub(subset, split)
        dropped, ties, total = [], 0, 0
        for line, chosen, rejected in records:
            total += 1
            try:
                prompt, good, bad = split_dialogue(chosen, rejected)
            except TypeError as err:
                raise DataError(f"{where}:{line}: {err}") from None
            except ValueError as err:
                dropped.append(line)
                log.debug("%s:%d: %s", where, line, err)
                continue
            if good == bad:
                ties += 1
                if drop_ties:
                    continue
            for name, value in zip(HH_FEATURES, (prompt, good, bad, subset, line)):
                columns[name].append(value)
        if dropped:
            log.warning("%s: dropped %d of %d records that cannot be split into prompt + final responses "
                        "(lines %s)", where, len(dropped), total, ", ".join(map(str, dropped[:20])))
        if drop_ties and ties:
            log.info("%s: dropped %d records whose two responses are identical", where, ties)
        if len(dropped) == total:
            raise DataError(f"{where}: none of the {total} records could be split into prompt + responses; "
                            "is this an HH-RLHF file (\\n\\nHuman: ... \\n\\nAssistant: ...)?")
    return datasets.Dataset.from_dict(columns, features=HH_FEATURES, split=split)


# --------------------------------------------------------------------------------------------------
# rankings


@dataclass
class Ranking:
    """One prompt with n responses, best first (by human label for pairs, by RM_train for rankings).

    ``rewards`` are the RM_train logits (None when unscored); ``sources`` say where each response came
    from: ``"human-chosen"``, ``"human-rejected"`` or a generator name.
    """
    id: str
    prompt: str
    responses: list[str]
    rewards: list[float | None]
    sources: list[str]
    subset: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"ranking id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"ranking {self.id!r}: empty prompt")
        if not isinstance(self.responses, (list, tuple)) or not self.responses or \
                not all(isinstance(r, str) for r in self.responses):
            raise ValueError(f"ranking {self.id!r}: responses must be a non-empty list of strings")
        self.responses = list(self.responses)
        n = len(self.responses)
        for name in ("rewards", "sources"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != n:
                raise ValueError(f"ranking {self.id!r}: {name} must be a list of {n} entries (one per response), "
                                 f"got {value!r}")
        try:
            self.rewards = [None if r is None else float(r) for r in self.rewards]
        except (TypeError, ValueError):
            raise ValueError(f"ranking {self.id!r}: rewards must be numbers or null, got {self.rewards!r}") from None
        self.sources = [str(s) for s in self.sources]
        if not isinstance(self.meta, dict):
            raise TypeError(f"ranking {self.id!r}: meta must be a mapping, got {type(self.meta).__name__}")

    @property
    def n(self) -> int:
        """The ranking length (number of responses)."""
        return len(self.responses)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Ranking:
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; a ranking has {known}")
        missing = [k for k in known[:5] if k not in d]
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        return cls(**d)


def save_rankings(path: str | os.PathLike, rankings: Iterable[Ranking]) -> Path:
    """Write rankings as JSONL (atomically; byte-identical for identical rankings)."""
    atomic_write_jsonl(path, (r.to_dict() for r in rankings))
    return Path(path)


def load_rankings(path: str | os.PathLike) -> list[Ranking]:
    """Read a rankings JSONL file; a bad line raises :class:`DataError` naming file:line."""
    out = []
    for line, rec in read_jsonl(path, required=("id", "prompt", "responses", "rewards", "sources")):
        try:
            out.append(Ranking.from_dict(rec))
        except (TypeError, ValueError) as err:
            raise DataError(f"{path}:{line}: {err}") from None
    return out


def rankings_from_pairs(dataset) -> list[Ranking]:
    """Human pairs (rows of :func:`load_hh_rlhf`) as 2-rankings: human-chosen first, rewards unknown."""
    return [Ranking(id=f"{row['subset']}:{row['line']}", prompt=row["prompt"],
                    responses=[row["chosen"], row["rejected"]], rewards=[None, None],
                    sources=["human-chosen", "human-rejected"], subset=row["subset"])
            for row in (dataset.to_list() if hasattr(dataset, "to_list") else dataset)]   # Arrow -> rows at once


# --------------------------------------------------------------------------------------------------
# the PRO / ScalingAlignment file format


def pro_turns(dialogue: str, keep_paragraphs: bool = False) -> list[tuple[str, str]]:
    """Parse an HH dialogue into ``[(role_tag, text), ...]`` the way PRO's preprocessing does.

    The text is cut at every ``"\\n\\n"``; a piece starting with "Human:" / "Assistant:" opens a turn
    (the 7 / 11 characters of "Human: " / "Assistant: " removed, text stripped), consecutive pieces of
    the same speaker are merged with ``"\\n"``, and other pieces (the second paragraph of a turn, ...) are
    dropped. ``keep_paragraphs=True`` appends them to the current turn with ``"\\n\\n"`` instead, a
    lossless variant that differs from the official files.
    """
    turns: list[tuple[str, list[str]]] = []
    for piece in dialogue.split("\n\n"):
        if piece.startswith("Human:"):
            tag, text = PROMPTER_TAG, piece[len("Human: "):]
        elif piece.startswith("Assistant:"):
            tag, text = ASSISTANT_TAG, piece[len("Assistant: "):]
        else:
            if keep_paragraphs and turns and piece.strip():
                turns[-1][1][-1] += "\n\n" + piece.strip()
            continue
        if turns and turns[-1][0] == tag:
            turns[-1][1].append(text.strip())
        else:
            turns.append((tag, [text.strip()]))
    return [(tag, "\n".join(lines)) for tag, lines in turns]


def pro_prompt_text(prefix: Sequence[str]) -> str:
    """The prompt string of a PRO ``prefix`` as the paper's diversity code builds it (spec §1.1(1)):
    the turns joined, role tags replaced by ``"\\n\\nHuman: "`` / ``"\\n\\nAssistant: "``, trailing
    whitespace stripped. This is also the HH-format prompt, ending with ``"\\n\\nAssistant:"``."""
    text = "".join(prefix)
    return text.replace(PROMPTER_TAG, "\n\nHuman: ").replace(ASSISTANT_TAG, "\n\nAssistant: ").rstrip()


def to_pro_record(ranking: Ranking, keep_paragraphs: bool = False) -> dict:
    """A ranking as one record of the official JSONL files (PRO ``data.zip``, ScalingAlignment).

    ``prefix``: n identical copies of the context turns ``"<|prompter|>text"`` / ``"<|assistant|>text"``
    plus a final bare ``"<|assistant|>"``; ``suffix``: the responses (best first); ``reward``;
    ``sft_index`` 0 (the top response); ``meta``: the ranking's meta plus ``id``, ``subset``, ``sources``.
    As in PRO, each response is parsed together with the prompt (:func:`pro_turns`), so the official
    quirks are reproduced: only the first paragraph of a multi-paragraph turn survives unless
    ``keep_paragraphs``. Raises ``ValueError`` when a response changes the number of turns (PRO drops
    such records).
    """
    if not (ranking.prompt.startswith(HUMAN) and ranking.prompt.endswith(ASSISTANT)):
        raise ValueError(f"ranking {ranking.id!r}: the prompt must be in HH format, starting with {HUMAN!r} "
                         f"and ending with {ASSISTANT!r}")
    dialogues = [pro_turns(f"{ranking.prompt} {response}", keep_paragraphs) for response in ranking.responses]
    first = dialogues[0]
    for i, turns in enumerate(dialogues):
        if turns[-1][0] != ASSISTANT_TAG or len(turns) != len(first):
            raise ValueError(f"ranking {ranking.id!r}: response {i} changes the dialogue's turns "
                             f"({len(turns)} vs {len(first)}, last {turns[-1][0]}); PRO drops such records")
    prefix = [tag + text for tag, text in first[:-1]] + [ASSISTANT_TAG]
    meta = {**ranking.meta, "id": ranking.id, "subset": ranking.subset, "sources": list(ranking.sources)}
    return {"prefix": [list(prefix) for _ in dialogues], "suffix": [turns[-1][1] for turns in dialogues],
            "reward": list(ranking.rewards), "sft_index": 0, "meta": meta}


def _subset_from_path(path: str) -> str:
    """PRO's ``meta.path`` (``.../hhrlhf/<subset>/dev.jsonl``) -> our subset name."""
    name = Path(str(path)).parent.name
    name = {"helpful-rejection": "helpful-rejection-sampled"}.get(name, name)
    return name if name in SUBSETS else ""


def from_pro_record(rec: dict, sources: Sequence[str] | None = None) -> Ranking:
    """One official JSONL record -> :class:`Ranking` (prompt back in HH format).

    ``id``/``subset``/``sources`` come from ``meta`` when :func:`to_pro_record` wrote them; for the
    PRO files, the subset comes from ``meta.path`` and the id is ``"<subset>:<line_num>"`` (as in
    :func:`rankings_from_pairs`). ``sources`` overrides (PRO's HH test/dev files keep the human order:
    pass ``["human-chosen", "human-rejected"]``); otherwise ``"unknown"``.
    """
    missing = [k for k in ("prefix", "suffix") if k not in rec]
    if missing:
        raise ValueError(f"missing field(s) {missing}; a PRO record has prefix, suffix, reward, sft_index, meta")
    prefix, suffix = rec["prefix"], rec["suffix"]
    if not isinstance(suffix, list) or not suffix:
        raise ValueError("suffix must be a non-empty list of responses")
    if not isinstance(prefix, list) or len(prefix) != len(suffix) or any(p != prefix[0] for p in prefix):
        raise ValueError(f"prefix must be {len(suffix)} identical lists of turns (one per suffix)")
    if not prefix[0] or prefix[0][-1] != ASSISTANT_TAG:
        raise ValueError(f"prefix must end with the bare tag {ASSISTANT_TAG!r}")
    prompt = pro_prompt_text(prefix[0])
    meta = dict(rec.get("meta") or {})
    subset = meta.pop("subset", None) or _subset_from_path(meta.get("path", ""))
    rid = meta.pop("id", None)
    if rid is None:
        rid = (f"{subset}:{meta['line_num']}" if subset and "line_num" in meta
               else "pro:" + sha256_hex(prompt, 12))
    stored_sources = meta.pop("sources", None)
    sources = list(sources or stored_sources or ["unknown"] * len(suffix))
    rewards = rec.get("reward")
    rewards = list(rewards) if rewards is not None else [None] * len(suffix)
    return Ranking(id=rid, prompt=prompt, responses=list(suffix), rewards=rewards, sources=sources,
                   subset=subset, meta=meta)


# --------------------------------------------------------------------------------------------------
# pool / dev / test


def _quotas(available: dict[str, int], total: int) -> dict[str, int]:
    """Split ``total`` over subsets in proportion to ``available`` (largest remainder), giving every
    subset at least one when possible, so a small dev or test set still covers all subsets."""
    n_all = sum(available.values())
    if total >= n_all:
        return dict(available)
    exact = {s: total * a / n_all for s, a in available.items()}
    quota = {s: int(x) for s, x in exact.items()}
    for s in sorted(exact, key=lambda s: quota[s] - exact[s])[:total - sum(quota.values())]:
        quota[s] += 1
    for s, a in available.items():
        donor = max(quota, key=quota.get)
        if quota[s] == 0 and a > 0 and quota[donor] > 1:
            quota[donor] -= 1
            quota[s] += 1
    return quota


def _carve(dataset: datasets.Dataset, plan: list[tuple[str, int | None]], seed: int) -> dict[str, datasets.Dataset]:
    """Split ``dataset`` into named parts of the given numbers of distinct prompts (``None``: all
    that is left), stratified by subset. Every record of a prompt lands in the same part; each part
    keeps the dataset's row order. One ``random.Random(seed)`` shuffles the prompts of each subset."""
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(dataset["prompt"][:]):
        groups.setdefault(prompt, []).append(i)
    subset_col = dataset["subset"][:]
    by_subset: dict[str, list[str]] = {}
    for prompt, rows in groups.items():
        by_subset.setdefault(subset_col[rows[0]], []).append(prompt)
    rng = random.Random(seed)
    for prompts in by_subset.values():
        rng.shuffle(prompts)

    fixed = sum(size for _, size in plan if size is not None)
    for name, size in plan:
        if size is not None and (not isinstance(size, int) or size < 0):
            raise ValueError(f"{name} size must be a non-negative integer, got {size!r}")
    if fixed > len(groups):
        asked = " + ".join(f"{name} {size}" for name, size in plan if size is not None)
        raise ValueError(f"{asked} = {fixed} prompts requested but the data has only {len(groups)} distinct prompts")
    parts = {}
    for name, size in sorted(plan, key=lambda item: item[1] is None):    # fixed sizes first, the rest last
        available = {s: len(p) for s, p in by_subset.items()}
        quota = _quotas(available, sum(available.values()) if size is None else size)
        picked = []
        for s, q in quota.items():
            picked += by_subset[s][:q]
            by_subset[s] = by_subset[s][q:]
        parts[name] = dataset.select(sorted(i for prompt in picked for i in groups[prompt]))
    return {name: parts[name] for name, _ in plan}


def make_splits(dataset: datasets.Dataset, dev_size: int, test_size: int | None = None,
                pool_size: int | None = None, seed: int = 42) -> dict[str, datasets.Dataset]:
    """Carve ``{"pool", "dev", "test"}`` out of one dataset, disjoint by prompt text.

    Sizes count distinct prompts (a prompt with two comparisons brings both records). Each part is
    stratified by subset and keeps the file order. ``None`` means "what is left"; if both
    ``test_size`` and ``pool_size`` are None, what is left after dev is halved between test and pool.
    Deterministic for a given dataset and seed.
    """
    if str(getattr(dataset, "split", None)) != "train":
        warnings.warn("carving the training pool out of the HH-RLHF test splits because no train split is "
                      "available: pool, dev and test are disjoint by prompt, but the pool is not the paper's "
                      "training data (put the train splits into data/hh-rlhf to use them)", stacklevel=2)
    if not isinstance(dev_size, int) or dev_size < 0:
        raise ValueError(f"dev_size must be a non-negative integer, got {dev_size!r}")
    if test_size is None and pool_size is None:
        n_prompts = len(set(dataset["prompt"][:]))
        test_size = max(n_prompts - dev_size, 0) // 2
    parts = _carve(dataset, [("pool", pool_size), ("dev", dev_size), ("test", test_size)], seed)
    for name in ("pool", "test"):
        if len(parts[name]) == 0:
            raise ValueError(f"no prompts left for {name}: dev {dev_size}, test {test_size}, pool {pool_size} "
                             f"of {len(set(dataset['prompt'][:]))} distinct prompts")
    return parts


def train_available(data_cfg: DataConfig) -> bool:
    """Whether the HH train splits can be read: all present locally, or (for the project folder or
    no folder) from the hub unless ``HF_HUB_OFFLINE``."""
    root, explicit = _data_root(data_cfg.data_dir)
    if all(_local_file(root, s, "train") for s in data_cfg.subsets):
        return True
    return not explicit and not hub_offline()


def resolve_split_mode(data_cfg: DataConfig) -> str:
    mode = getattr(data_cfg, "split_mode", "auto")
    if mode not in ("auto", "paper", "carve"):
        raise ValueError(f"data.split_mode must be auto, paper or carve, got {mode!r}")
    if mode == "auto":
        mode = "paper" if train_available(data_cfg) else "carve"
    return mode


def load_splits(data_cfg: DataConfig) -> dict[str, datasets.Dataset]:
    """The pool, dev and test sets a recipe asks for.

    ``paper`` mode (the train splits are available; ``split_mode: auto`` picks it when they are):
    pool = the four train splits, test = the four test splits (8,552 pairs, as in the paper),
    dev = ``dev_size`` prompts held out of train. The paper's dev set (280 prompts) was drawn from
    the *test* splits and so overlaps the test set; we hold dev out of train instead (spec §7 #13).
    Train records whose prompt also occurs in test are removed from pool and dev (logged), so
    the three sets are disjoint by prompt. ``test_size`` / ``pool_size`` subsample (stratified).

    ``carve`` mode (only the test splits, e.g. offline): :func:`make_splits` on the test splits.
    """
    subsets = tuple(data_cfg.subsets)
    drop_ties = getattr(data_cfg, "drop_ties", False)
    if resolve_split_mode(data_cfg) == "carve":
        data = load_hh_rlhf(subsets, "test", data_cfg.data_dir, drop_ties=drop_ties)
        return make_splits(data, data_cfg.dev_size, data_cfg.test_size, data_cfg.pool_size, data_cfg.split_seed)

    train = load_hh_rlhf(subsets, "train", data_cfg.data_dir, drop_ties=drop_ties)
    test = load_hh_rlhf(subsets, "test", data_cfg.data_dir, drop_ties=drop_ties)
    test_prompts = set(test["prompt"][:])
    keep = [i for i, p in enumerate(train["prompt"][:]) if p not in test_prompts]
    if len(keep) < len(train):
        log.info("removed %d train records whose prompt also occurs in the test splits", len(train) - len(keep))
        train = train.select(keep)
    parts = _carve(train, [("pool", data_cfg.pool_size), ("dev", data_cfg.dev_size)], data_cfg.split_seed)
    if data_cfg.test_size is not None:
        test = _carve(test, [("test", data_cfg.test_size), ("rest", None)], data_cfg.split_seed)["test"]
    return {"pool": parts["pool"], "dev": parts["dev"], "test": test}


SPLIT_NAMES = ("pool", "dev", "test")
SPLIT_INPUTS = ("subsets", "data_dir", "split_seed", "dev_size", "test_size", "pool_size", "drop_ties")


def prepare_splits(data_cfg: DataConfig, out_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Write ``{pool,dev,test}.jsonl`` + ``manifest.json`` into ``runs/data/<hash>/`` (atomically) and
    return the folder; the hash covers the data config and the resolved split mode, so an existing
    folder is reused unless ``force``."""
    mode = resolve_split_mode(data_cfg)
    inputs = {k: getattr(data_cfg, k) for k in SPLIT_INPUTS}
    out = Path(out_dir) if out_dir is not None else paths.RUNS_DIR / "data" / config_hash(inputs, mode)
    if (out / "manifest.json").exists() and not force:
        return out
    splits = load_splits(dataclasses.replace(data_cfg, split_mode=mode))
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for name in SPLIT_NAMES:
            atomic_write_jsonl(tmp / f"{name}.jsonl", splits[name].to_list())
        counts = {name: {"records": len(splits[name]), "prompts": len(set(splits[name]["prompt"][:])),
                         "by_subset": {s: splits[name]["subset"][:].count(s) for s in data_cfg.subsets}}
                  for name in SPLIT_NAMES}
        atomic_write_json(tmp / "manifest.json", {"split_mode": mode, "data": inputs, "counts": counts})
    return out


# --------------------------------------------------------------------------------------------------
# the `divscale data` command (and `python -m divscale.data.hh`)


def download(out: str | os.PathLike = paths.HH_RLHF_DIR, subsets: Sequence[str] = SUBSETS,
             splits: Sequence[str] = ("train", "test"), force: bool = False) -> list[Path]:
    """Fetch ``<subset>/<split>.jsonl.gz`` from the hub dataset ``Anthropic/hh-rlhf`` into ``out``,
    in the repository's own layout (what :func:`load_hh_rlhf` reads). Existing files are kept."""
    if hub_offline():
        raise DataError("HF_HUB_OFFLINE is set, so nothing can be downloaded: run `HF_HUB_OFFLINE=0 make data` "
                        f"(or `HF_HUB_OFFLINE=0 divscale data download`), or link a local copy of "
                        f"anthropics/hh-rlhf into {paths.HH_RLHF_DIR}")
    from huggingface_hub import hf_hub_download

    written = []
    for subset in subsets:
        for split in splits:
            target = Path(out) / subset / f"{split}.jsonl.gz"
            if target.exists() and not force:
                continue
            cached = hf_hub_download(HUB_ID, filename=f"{subset}/{split}.jsonl.gz", repo_type="dataset")
            with atomic_path(target) as tmp:
                shutil.copyfile(cached, tmp)
            written.append(target)
            print(target)
    return written


def command(args: argparse.Namespace) -> int:
    if args.data_command == "download":
        download(args.out, args.subsets, args.splits, args.force)
        return 0
    recipe = load_recipe(args.recipe, parse_overrides(args.set))
    if args.data_command == "prepare":
        print(prepare_splits(recipe.data, args.out, force=args.force))
        return 0
    # `divscale data grid` is run by divscale.data.subsets.data_command (cli.COMMANDS): the grid is built above the data
    raise ValueError(f"divscale data {args.data_command}: run it through `divscale data` "
                     "(divscale.data.subsets.data_command handles the grid action)")
