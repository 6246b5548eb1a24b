"""What a cached artifact or a result row was made from: code versions, content hashes, determinism.

Every cache key and every result row of the study carries

* the **code version of its step**: a hash of the source of the functions and modules that the step actually
  runs (:data:`STEPS`, a short declared list per step, not the whole package), plus the versions of the
  libraries whose kernels shape the numbers. Editing ``analysis.py`` or ``plots.py`` therefore leaves every
  training run valid, while editing ``pro.py`` re-trains and editing the embedding code re-embeds;
* **content hashes** of its inputs (RM weights, the policy's initial weights, the grid's rankings), so a row
  scored by an older RM_test can never pass for a current one (:func:`check_table_keys`).

:func:`deterministic` pins what torch lets us pin: one intra-op thread and ``use_deterministic_algorithms``.
Bit-exactness holds on one machine (same CPU kind, same libraries); across CPU kinds the BLAS kernels differ
(AVX2 vs AVX-512 blocking changes float sums), so artifacts can differ in their last bits there: ``divscale grid
--recipe R --fingerprint`` (:func:`divscale.grid_runner.artifact_fingerprints`) prints the hash of every artifact
and the machine's CPU capability, so the spread can be measured and the first differing step named.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import inspect
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

# Step -> the code it runs ("module" = the whole file, "module:qualname" = one function or class). Steps
# include the steps whose outputs they consume only through content hashes (e.g. training sees RM_train
# through its fingerprint), so the lists name only the code that runs inside the step itself.
STEPS: dict[str, tuple[str, ...]] = {
    # MiniLM sentence embeddings (the in-project RMs' features)
    "embed": ("divscale.reward:EmbeddingCache", "divscale.models:load_encoder", "divscale.models:minilm_from_wheel"),
    # the in-project RM heads (features + Bradley-Terry training)
    "reward": ("divscale.reward:embedding_features", "divscale.reward:BTHead", "divscale.reward:EmbeddingRM",
               "divscale.reward:train_reward_model", "divscale.reward:reward_pairs", "divscale.reward:pair_records",
               "divscale.reward:prompt_half", "divscale.reward:_query", "divscale.reward:last_human_turn",
               "divscale.reward:hh_turns", "divscale.reward:bt_loss", "divscale.reward:_oa_targets",
               "divscale.data:pro_turns"),
    # SmolLM2's sampled extensions of the rankings
    "generate": ("divscale.generation", "divscale.rankings:extend_rankings", "divscale.rankings:_sample_prompt",
                 "divscale.models:load_causal_lm", "divscale.models:smollm2_from_wheel"),
    # RM_train's ordering of the 4-rankings
    "rankings": ("divscale.rankings:extend_rankings", "divscale.rankings:build_rankings", "divscale.data:Ranking"),
    # the tiny-gpt policy's BPE tokenizer (cached on its own)
    "bpe": ("divscale.models:train_bpe_tokenizer",),
    # the tiny-gpt policy: BPE tokenizer, initial weights, causal-LM warm-up
    "policy": ("divscale.models:train_bpe_tokenizer", "divscale.models:build_tiny_gpt", "divscale.models:warm_up",
               "divscale.models:_token_stream", "divscale.models:load_policy", "divscale.models:_build_policy",
               "divscale.models:set_pad_token"),
    # fine-tuning one cell (SFT / PRO / DPO) with dev validation
    "train": ("divscale.train", "divscale.pro", "divscale.logprobs", "divscale.grid", "divscale.generation",
              "divscale.models:load_causal_lm"),
    # greedy test generations scored by RM_test
    "eval": ("divscale.evaluate", "divscale.generation", "divscale.models:load_causal_lm"),
}

LIBRARIES = ("torch", "transformers", "sentence_transformers", "tokenizers", "trl", "numpy")


def _source(entry: str) -> str:
    module_name, _, qualname = entry.partition(":")
    module = importlib.import_module(module_name)
    obj = module
    for part in filter(None, qualname.split(".")):
        obj = getattr(obj, part, None)
        if obj is None:       # a declared piece that no longer exists: hash its absence (and fix STEPS)
            return f"<missing {entry}>"
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return f"<no source {entry}>"


@functools.cache
def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in LIBRARIES:
        try:
            out[name] = version(name.replace("_", "-"))
        except PackageNotFoundError:
            out[name] = "absent"
    return out


@functools.cache
def code_version(*steps: str, length: int = 12) -> str:
    """Hash of the source of the code ``steps`` run (:data:`STEPS`) and of the library versions."""
    h = hashlib.sha256()
    for step in steps:
        if step not in STEPS:
            raise KeyError(f"unknown step {step!r}; declare its code in divscale.provenance.STEPS ({sorted(STEPS)})")
        for entry in STEPS[step]:
            h.update(entry.encode() + b"\0" + _source(entry).encode("utf-8") + b"\0")
    h.update(json.dumps(library_versions(), sort_keys=True).encode())
    return h.hexdigest()[:length]


def file_sha256(path: str | Path, length: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length] if length else h.hexdigest()


def files_sha256(paths: Iterable[str | Path], length: int = 16) -> str:
    """One hash over several files' contents (sorted by name), e.g. a model folder's weights."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update(p.name.encode() + b"\0" + file_sha256(p).encode())
    return h.hexdigest()[:length]


@contextlib.contextmanager
def deterministic(threads: int = 1) -> Iterator[None]:
    """Run a block on ``threads`` torch intra-op threads with ``torch.use_deterministic_algorithms(True)``
    (on CPU it mostly guards against nondeterministic scatter/index kernels); both restored afterwards."""
    import torch

    saved_threads, saved_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        torch.use_deterministic_algorithms(saved_det)


# ------------------------------------------------------------------------------------------- result tables

# Columns of a result row that name what produced it; every row of one table must agree on all of them.
KEY_COLUMNS = ("key_recipe", "key_rm_train", "key_rm_test", "key_policy", "key_rankings", "key_code_train",
               "key_code_eval", "eval_key")


class StaleResultsError(ValueError):
    """A results table whose rows were produced from different inputs (reward models, policy, code...)."""


def check_table_keys(rows: Sequence[dict], source: str, expected: dict | None = None,
                     columns: Sequence[str] = KEY_COLUMNS, fix: str = "") -> None:
    """Refuse rows that disagree on a key column (or with ``expected``): names the stale rows and the fix.

    Without ``expected`` the majority value of each column is taken as current."""
    stale: dict[str, list[str]] = {}
    for col in columns:
        values = [r.get(col) for r in rows]
        if expected is not None and col in expected:
            want = expected[col]
        else:
            present = [v for v in values if v is not None]
            if not present:
                continue
            want = max(set(present), key=lambda v: (present.count(v), str(v)))
        for r, v in zip(rows, values):
            if v != want:
                stale.setdefault(str(r.get("run_id", r.get("cell_id", "?"))), []).append(f"{col}={v} (want {want})")
    if stale:
        lines = "; ".join(f"{name}: {', '.join(why)}" for name, why in sorted(stale.items()))
        raise StaleResultsError(f"{source}: {len(stale)} of {len(rows)} rows were produced from other inputs "
                                f"than the rest: {lines}. {fix or 'Re-run those cells on the current inputs.'}")
