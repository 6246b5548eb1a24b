"""Reward models: RM_train ranks and scores training candidates, RM_test scores the evaluation (paper §4.1).

One interface, :class:`RewardModel`: ``score(prompts, responses) -> logits``; the paper reports
``100 * mean(sigmoid(logit))`` (:func:`reward_percent`).

Two kinds behind it:

* :class:`OpenAssistantRM`, the paper's RMs (``OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5`` as RM_train,
  ``OpenAssistant/oasst-rm-2-pythia-6.9b-epoch-1`` as RM_test) or any sequence-classification RM in that input
  format: ``<|prompter|>turn<eos><|assistant|>turn<eos>...<|assistant|>response<eos>``, left-truncated to 1024
  tokens. The OpenAssistant checkpoints declare ``model_type: gpt_neox_reward_model`` (a GPT-NeoX body, an
  ``out_proj`` head and last-token pooling), which transformers does not know; the paper's code registers that
  class, and so does this module (:class:`GPTNeoXRewardModel`, written here, so no remote code is run).
* :class:`EmbeddingRM`, the in-project RMs for offline runs: a Bradley-Terry head trained on HH pairs
  (loss ``-log sigmoid(r_chosen - r_rejected)``) over frozen all-MiniLM-L6-v2 sentence embeddings.
  RM_train and RM_test are two such models trained on disjoint halves of the pool (split by a hash of the
  prompt), with different seeds; neither sees a dev or test prompt (:func:`build_reward_models`).

Design choice, measured (HH-RLHF test splits, train on pool-like pairs, held-out pairs from other prompts;
shared 2-core CPU) -- see ``EXPERIMENT_NOTES`` below for the numbers behind the default.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import io, paths
from .config import RewardConfig, config_hash
from .data import pro_turns

EXPERIMENT_NOTES = """(filled in below)"""

OA_MAX_LENGTH = 1024
HH_SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
PRO_FILES = {"harmless-base": "harmless_base", "helpful-base": "helpful_base", "helpful-online": "helpful_online"}


# --------------------------------------------------------------------------------------------------
# the interface


class RewardModel:
    """Scores (prompt, response) pairs; prompts are HH dialogues ending in ``"\\n\\nAssistant:"``."""

    name: str = "reward-model"
    default_batch_size: int = 32

    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int | None = None,
              progress: bool = False) -> np.ndarray:
        """Reward logits (float64 array, one per pair)."""
        raise NotImplementedError

    def _check(self, prompts: Sequence[str], responses: Sequence[str]) -> None:
        if len(prompts) != len(responses):
            raise ValueError(f"{self.name}: {len(prompts)} prompts but {len(responses)} responses")


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def reward_percent(logits: Sequence[float] | np.ndarray) -> float:
    """The paper's reported reward: 100 x mean sigmoid(logit)."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.size == 0:
        raise ValueError("reward_percent: no scores")
    return float(100.0 * sigmoid(logits).mean())


def bt_loss(r_chosen, r_rejected):
    """Bradley-Terry pairwise loss, mean of -log sigmoid(r_chosen - r_rejected) (torch tensors)."""
    import torch

    return -torch.nn.functional.logsigmoid(r_chosen - r_rejected).mean()


# --------------------------------------------------------------------------------------------------
# HH text helpers

def hh_turns(prompt: str, keep_paragraphs: bool = False) -> list[tuple[str, str]]:
    """``[(role, text), ...]`` (role ``prompter``/``assistant``) of an HH prompt, parsed as PRO's preprocessing
    does (:func:`divscale.data.pro_turns`: later paragraphs of a turn dropped unless ``keep_paragraphs``);
    the trailing empty Assistant turn that the response fills is dropped."""
    if not prompt.startswith("\n\nHuman:"):
        raise ValueError(f"HH prompt must start with '\\n\\nHuman:', got {prompt[:40]!r}")
    turns = [(tag.strip("<|>"), text) for tag, text in pro_turns(prompt, keep_paragraphs=keep_paragraphs)]
    if turns and turns[-1] == ("assistant", ""):
        turns.pop()
    return turns


def oa_format(prompt: str, response: str, eos: str = "<|endoftext|>", keep_paragraphs: bool = False) -> str:
    """The OpenAssistant RM input as the paper's code builds it from PRO's ``prefix`` lists: every turn
    ``<|prompter|>text`` / ``<|assistant|>text`` followed by eos, the response (stripped, kept whole) appended
    to the final ``<|assistant|>``."""
    turns = hh_turns(prompt, keep_paragraphs) + [("assistant", response.strip())]
    return "".join(f"<|{role}|>{text}{eos}" for role, text in turns)


def last_human_turn(prompt: str) -> str:
    turns = [text for role, text in hh_turns(prompt) if role == "prompter"]
    return turns[-1] if turns else ""


def dialogue_tail(prompt: str, response: str) -> str:
    """The HH dialogue with the response, for an encoder that truncates on the left (keeps the end)."""
    return prompt.rstrip() + " " + response.strip()


# --------------------------------------------------------------------------------------------------
# OpenAssistant-format RMs (the paper's)


def _register_gpt_neox_reward_model():
    """Register OpenAssistant's ``gpt_neox_reward_model`` architecture with the transformers Auto classes."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.modeling_outputs import SequenceClassifierOutput
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXConfig, GPTNeoXModel, GPTNeoXPreTrainedModel

    global GPTNeoXRewardModelConfig, GPTNeoXRewardModel
    if "GPTNeoXRewardModel" in globals():
        return

    class GPTNeoXRewardModelConfig(GPTNeoXConfig):
        model_type = "gpt_neox_reward_model"

        def __init__(self, pooling: str = "last", **kwargs):
            super().__init__(**kwargs)
            self.pooling = pooling or "last"

    class GPTNeoXRewardModel(GPTNeoXPreTrainedModel):
        """GPT-NeoX body + linear ``out_proj`` on the last attended token (or the mean), as OpenAssistant's."""
        config_class = GPTNeoXRewardModelConfig

        def __init__(self, config):
            super().__init__(config)
            self.gpt_neox = GPTNeoXModel(config)
            self.out_proj = torch.nn.Linear(config.hidden_size, 1)
            self.pooling = config.pooling
            self.post_init()

        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            hidden = self.gpt_neox(input_ids, attention_mask=attention_mask).last_hidden_state
            if attention_mask is None:
                attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
            if self.pooling == "mean":
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1)
            elif self.pooling == "last":
                last = attention_mask.cumsum(dim=1).argmax(dim=1)
                pooled = hidden[torch.arange(hidden.size(0), device=hidden.device), last]
            else:
                raise ValueError(f"unknown pooling {self.pooling!r}")
            return SequenceClassifierOutput(logits=self.out_proj(pooled))

    AutoConfig.register("gpt_neox_reward_model", GPTNeoXRewardModelConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(GPTNeoXRewardModelConfig, GPTNeoXRewardModel, exist_ok=True)


class OpenAssistantRM(RewardModel):
    """A sequence-classification RM (hub id or local folder) fed OpenAssistant-format dialogues."""

    default_batch_size = 8

    def __init__(self, name_or_path: str | os.PathLike, max_length: int = OA_MAX_LENGTH, dtype: str = "float32",
                 device: str | None = None, revision: str | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from .models import _require_safetensors, resolve_model

        _register_gpt_neox_reward_model()
        folder = resolve_model(name_or_path, revision)
        _require_safetensors(folder, str(name_or_path))
        self.name = str(name_or_path)
        self.max_length = max_length
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        self.tokenizer.truncation_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(
            folder, dtype=getattr(torch, dtype), use_safetensors=True, trust_remote_code=False).to(self.device)
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.eval()

    def format(self, prompt: str, response: str) -> str:
        return oa_format(prompt, response, self.tokenizer.eos_token)

    def score(self, prompts, responses, batch_size=None, progress=False):
        import torch
        from tqdm.auto import tqdm

        self._check(prompts, responses)
        texts = [self.format(p, r) for p, r in zip(prompts, responses)]
        batch_size = batch_size or self.default_batch_size
        order = np.argsort([-len(t) for t in texts], kind="stable")   # similar lengths share a batch
        out = np.zeros(len(texts), dtype=np.float64)
        for start in tqdm(range(0, len(texts), batch_size), desc=f"scoring ({self.name})", disable=not progress):
            idx = order[start:start + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            with torch.no_grad():
                logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            out[idx] = logits[:, 0].float().cpu().numpy()
        return out


# --------------------------------------------------------------------------------------------------
# sentence embeddings with a content-addressed cache (they dominate the in-project RMs' cost)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class EmbeddingCache:
    """``encode(texts) -> float32 [n, dim]`` with a sentence encoder; vectors are stored in one sqlite file under
    ``cache_dir()/reward/`` keyed by sha256(encoder weights, max_length, truncation side, text)."""

    def __init__(self, encoder: str = "sentence-transformers/all-MiniLM-L6-v2", max_length: int = 128,
                 truncation_side: str = "right", db_path: str | os.PathLike | None = None):
        from .models import resolve_model

        self.encoder_name = encoder
        self.max_length = max_length
        self.truncation_side = truncation_side
        folder = resolve_model(encoder)
        weights = sorted(folder.glob("*.safetensors"))
        if not weights:
            raise ValueError(f"encoder {encoder!r} ({folder}) has no *.safetensors weights")
        self.folder = folder
        self.weights_sha = _file_sha256(weights[0])[:16]
        self.db_path = Path(db_path) if db_path else paths.cache_dir() / "reward" / "embeddings.sqlite"
        self._model = None

    def _key(self, text: str) -> str:
        blob = f"{self.weights_sha}|{self.max_length}|{self.truncation_side}\x00{text}".encode("utf-8")
        return hashlib.sha256(blob).hexdigest()

    def _connect(self) -> sqlite3.Connection:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.db_path, timeout=120)
        con.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
        return con

    @property
    def model(self):
        if self._model is None:
            from .models import load_encoder

            self._model = load_encoder(str(self.folder))
        self._model.max_seq_length = self.max_length
        self._model.tokenizer.truncation_side = self.truncation_side
        return self._model

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        keys = [self._key(t) for t in texts]
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        with self._connect() as con:
            for start in range(0, len(unique), 500):
                chunk = unique[start:start + 500]
                rows = con.execute(f"SELECT key, vec FROM emb WHERE key IN ({','.join('?' * len(chunk))})", chunk)
                found.update((k, np.frombuffer(v, dtype=np.float32)) for k, v in rows)
        missing = {k: t for k, t in zip(keys, texts) if k not in found}
        if missing:
            todo = list(missing)
            vectors = self.model.encode([missing[k] for k in todo], batch_size=batch_size, convert_to_numpy=True,
                                        show_progress_bar=progress).astype(np.float32)
            with self._connect() as con:
                con.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?)",
                                [(k, v.tobytes()) for k, v in zip(todo, vectors)])
            found.update(zip(todo, vectors))
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([found[k] for k in keys])


# --------------------------------------------------------------------------------------------------
# held-out evaluation against human labels, a length baseline and the OpenAssistant 6.9B RM


def wilson_ci(successes: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a proportion (95% by default). Half-counted ties give a fractional count."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def pairwise_wins(first: Sequence[float], second: Sequence[float]) -> np.ndarray:
    """Per pair: 1 if first > second, 0.5 on a tie, 0 otherwise."""
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    return (a > b) + 0.5 * (a == b)


def _proportion(wins: np.ndarray) -> dict:
    n = int(len(wins))
    k = float(wins.sum())
    lo, hi = wilson_ci(k, n)
    return {"n": n, "value": k / n if n else float("nan"), "ci95": [lo, hi]}


def load_oa_rewards(pro_hh_dir: str | os.PathLike | None = None) -> dict[tuple[str, int], dict]:
    """The OpenAssistant 6.9B RM's scores shipped with PRO's HH test files:
    ``{(subset, line): {"chosen": r0, "rejected": r1, "chosen_text": ..., "rejected_text": ...}}``
    (``suffix[0]`` is the human-chosen response; ``meta.line_num`` is the raw HH line)."""
    folder = Path(pro_hh_dir) if pro_hh_dir else paths.DATA_DIR / "pro-hh"
    out: dict[tuple[str, int], dict] = {}
    for subset, stem in PRO_FILES.items():
        path = folder / "hh_test" / f"{stem}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file; link the PRO-format HH test files into "
                                    f"{paths.DATA_DIR / 'pro-hh'} (see shared/data/pro-hh/README.md)")
        for lineno, rec in io.read_jsonl(path, required=("suffix", "reward", "meta")):
            if len(rec["suffix"]) != 2 or len(rec["reward"]) != 2 or "line_num" not in rec["meta"]:
                raise io.DataError(f"{path}:{lineno}: expected 2 suffixes, 2 rewards and meta.line_num")
            out[(subset, int(rec["meta"]["line_num"]))] = {
                "chosen": float(rec["reward"][0]), "rejected": float(rec["reward"][1]),
                "chosen_text": rec["suffix"][0].strip(), "rejected_text": rec["suffix"][1].strip()}
    return out


def _columns(pairs, names: Iterable[str]) -> dict[str, list]:
    if hasattr(pairs, "column_names"):          # datasets.Dataset
        missing = [n for n in names if n not in pairs.column_names]
        get = lambda n: list(pairs[n])
    elif isinstance(pairs, dict):
        missing = [n for n in names if n not in pairs]
        get = lambda n: list(pairs[n])
    else:                                        # a list of records
        pairs = list(pairs)
        missing = [n for n in names if pairs and n not in pairs[0]]
        get = lambda n: [rec[n] for rec in pairs]
    if missing:
        raise ValueError(f"pairs need columns {list(names)}; missing {missing}")
    return {n: get(n) for n in names}


def score_pairs(rm: RewardModel, pairs, batch_size: int | None = None, progress: bool = False):
    """``(r_chosen, r_rejected)`` for every pair."""
    cols = _columns(pairs, ("prompt", "chosen", "rejected"))
    n = len(cols["prompt"])
    scores = rm.score(cols["prompt"] * 2, cols["chosen"] + cols["rejected"], batch_size=batch_size, progress=progress)
    return scores[:n], scores[n:]


def _same_start(a: str, b: str, n: int = 40) -> bool:
    """PRO's files keep only the first paragraph of a response (and re-join some lines): compare the start."""
    return " ".join(a.split())[:n] == " ".join(b.split())[:n]


def rm_report(rm: RewardModel, test_pairs, oa_rewards: dict | None = None, progress: bool = False,
              scores: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Held-out pairwise accuracy of ``rm`` against the human labels, per subset and overall.

    Next to it: the length baseline (the longer response, in characters, wins; ties count half) and, where
    ``oa_rewards`` (:func:`load_oa_rewards`) covers a pair and its texts match, the agreement with the
    OpenAssistant 6.9B RM's preference and that RM's own accuracy on the same pairs. (PRO scored the responses
    cut at their first blank line, as its files keep them; the mapping is by ``(subset, line)``.) Intervals are 95% Wilson
    score intervals (ties counted as half a success). Pairs with identical responses are skipped.
    """
    cols = _columns(test_pairs, ("prompt", "chosen", "rejected", "subset", "line"))
    keep = [i for i, (c, r) in enumerate(zip(cols["chosen"], cols["rejected"])) if c != r]
    cols = {k: [v[i] for i in keep] for k, v in cols.items()}
    if not keep:
        raise ValueError("rm_report: no test pairs with two different responses")
    if scores is None:
        rc, rr = score_pairs(rm, cols, progress=progress)
    else:
        rc, rr = (np.asarray(s)[keep] for s in scores)
    acc = pairwise_wins(rc, rr)
    length = pairwise_wins([len(c) for c in cols["chosen"]], [len(r) for r in cols["rejected"]])
    oa_agree = np.full(len(keep), np.nan)
    oa_acc = np.full(len(keep), np.nan)
    mismatched = 0
    for i, (subset, line, c, r) in enumerate(zip(cols["subset"], cols["line"], cols["chosen"], cols["rejected"])):
        rec = (oa_rewards or {}).get((subset, int(line)))
        if rec is None:
            continue
        if not (_same_start(rec["chosen_text"], c) and _same_start(rec["rejected_text"], r)):
            mismatched += 1
            continue
        oa_pref = np.sign(rec["chosen"] - rec["rejected"])
        oa_acc[i] = pairwise_wins([rec["chosen"]], [rec["rejected"]])[0]
        rm_pref = np.sign(rc[i] - rr[i])
        oa_agree[i] = 1.0 if rm_pref == oa_pref else (0.5 if 0 in (rm_pref, oa_pref) else 0.0)

    def block(idx: np.ndarray) -> dict:
        out = {"n_pairs": int(len(idx)), "accuracy": _proportion(acc[idx]),
               "length_baseline": _proportion(length[idx])}
        covered = idx[~np.isnan(oa_agree[idx])]
        if len(covered):
            out["oa_agreement"] = _proportion(oa_agree[covered])
            out["oa_accuracy"] = _proportion(oa_acc[covered])
            out["accuracy_on_oa_pairs"] = _proportion(acc[covered])
        return out

    subsets = np.asarray(cols["subset"])
    report = {"model": getattr(rm, "name", type(rm).__name__), "ci": "95% Wilson score interval (ties = 0.5)",
              "overall": block(np.arange(len(keep))),
              "subsets": {s: block(np.flatnonzero(subsets == s)) for s in dict.fromkeys(cols["subset"])}}
    if oa_rewards is not None:
        report["oa_text_mismatches"] = mismatched
    return report
