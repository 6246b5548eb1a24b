"""Shared test fixtures: offline environment, the local HH-RLHF copy, a tiny tokenizer and policy.

Everything here is built from data on disk in seconds; no test touches the network.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gzip
import json
from pathlib import Path

import pytest

from divscale import paths

HH_DIR = paths.DATA_DIR / "hh-rlhf"
PRO_HH_DIR = paths.DATA_DIR / "pro-hh"
OASST_DIR = paths.DATA_DIR / "oasst1"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: link a local copy there (CI links ../shared/data/*; see README)")
    return path


@pytest.fixture(scope="session")
def hh_dir() -> Path:
    """The local HH-RLHF copy (all four test splits), laid out like anthropics/hh-rlhf."""
    return _require(HH_DIR)


@pytest.fixture(scope="session")
def pro_hh_dir() -> Path:
    return _require(PRO_HH_DIR)


@pytest.fixture(scope="session")
def hh_sample_texts(hh_dir) -> list[str]:
    """The first 300 chosen dialogues of harmless-base and helpful-base (for tokenizers etc.)."""
    texts = []
    for subset in ("harmless-base", "helpful-base"):
        with gzip.open(hh_dir / subset / "test.jsonl.gz", "rt", encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if i >= 150:
                    break
                texts.append(json.loads(line)["chosen"])
    return texts


@pytest.fixture(scope="session")
def tiny_tokenizer(hh_sample_texts):
    """A byte-level BPE tokenizer (vocab 512) trained on HH text, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(hh_sample_texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|pad|>")
    return fast


@pytest.fixture()
def tiny_gpt(tiny_tokenizer):
    """A randomly initialised 2-layer GPT-2 (about 0.1M parameters) matching ``tiny_tokenizer``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tiny_tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tiny_tokenizer.bos_token_id, eos_token_id=tiny_tokenizer.eos_token_id,
                        pad_token_id=tiny_tokenizer.pad_token_id)
    return GPT2LMHeadModel(config)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; on a shared 2-core machine two threads thrash (10x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
