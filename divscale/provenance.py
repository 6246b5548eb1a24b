"""What a cached artifact or a result row was made from: code versions, content hashes, determinism.

Every cache key and every result row of the study carries

* the **code version of its step**: a hash of the code the step executes -- the normalised source (no comments,
  docstrings or formatting) of every function and class reachable from the step's declared roots
  (:data:`STEPS`), named by qualified name, not by module or file -- plus the versions of the libraries whose
  kernels shape the numbers. Editing ``analysis.py`` or ``plots.py`` therefore leaves every training run valid,
  editing the PRO loss re-trains and editing the embedding code re-embeds, while moving a function to another
  module, rewording a docstring or deleting code that no step reaches changes no key;
* **content hashes** of its inputs (RM weights, the policy's initial weights, the grid's rankings), so a row
  scored by an older RM_test can never pass for a current one (:func:`check_table_keys`).

:func:`deterministic` pins what torch lets us pin: one intra-op thread and ``use_deterministic_algorithms``.
Bit-exactness holds on one machine (same CPU kind, same libraries); across CPU kinds the BLAS kernels differ
(AVX2 vs AVX-512 blocking changes float sums), so artifacts can differ in their last bits there: ``divscale grid
--recipe R --fingerprint`` (:func:`divscale.study.grid.artifact_fingerprints`) prints the hash of every artifact
and the machine's CPU capability, so the spread can be measured and the first differing step named.
"""
from __future__ import annotations

import ast
import contextlib
import copy
import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import re
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

# Step -> the code it runs, as roots ("module:qualname" of a function or class). A step's code is the closure of
# its roots: every divscale function and class that their source names (module globals, imports inside functions,
# ``module.attribute``), and the simple module-level constants they read, followed transitively (:func:`closure`).
# Steps include the steps whose outputs they consume only through content hashes (e.g. training sees RM_train
# through its fingerprint), so the roots name only the code that runs inside the step itself.
STEPS: dict[str, tuple[str, ...]] = {
    # MiniLM sentence embeddings (the in-project RMs' features)
    "embed": ("divscale.reward.rm:EmbeddingCache", "divscale.models.hub:load_encoder", "divscale.models.hub:minilm_from_wheel"),
    # the in-project RM heads (features + Bradley-Terry training)
    "reward": ("divscale.reward.rm:embedding_features", "divscale.reward.rm:BTHead", "divscale.reward.rm:EmbeddingRM",
               "divscale.reward.rm:train_reward_model", "divscale.reward.rm:reward_pairs", "divscale.reward.rm:pair_records",
               "divscale.reward.rm:prompt_half", "divscale.reward.rm:_query", "divscale.reward.rm:last_human_turn",
               "divscale.reward.rm:hh_turns", "divscale.reward.rm:bt_loss", "divscale.reward.rm:_oa_targets",
               "divscale.data.hh:pro_turns"),
    # SmolLM2's sampled extensions of the rankings
    "generate": ("divscale.reward.rankings:extend_rankings", "divscale.reward.rankings:_sample_prompt",
                 "divscale.models.hub:load_causal_lm", "divscale.models.hub:smollm2_from_wheel"),
    # RM_train's ordering of the 4-rankings
    "rankings": ("divscale.reward.rankings:extend_rankings", "divscale.reward.rankings:build_rankings", "divscale.data.hh:Ranking"),
    # the tiny-gpt policy's BPE tokenizer (cached on its own)
    "bpe": ("divscale.models.tiny_gpt:train_bpe_tokenizer",),
    # the tiny-gpt policy: BPE tokenizer, initial weights, causal-LM warm-up
    "policy": ("divscale.models.tiny_gpt:train_bpe_tokenizer", "divscale.models.tiny_gpt:build_tiny_gpt", "divscale.models.tiny_gpt:warm_up",
               "divscale.models.tiny_gpt:load_policy", "divscale.models.tiny_gpt:_build_policy", "divscale.models.hub:set_pad_token"),
    # fine-tuning one cell (SFT / PRO / DPO) with dev validation
    "train": ("divscale.train.runs:train_run", "divscale.models.hub:load_causal_lm", "divscale.provenance:deterministic"),
    # greedy test generations scored by RM_test
    "eval": ("divscale.reward.evaluate:evaluate_checkpoint", "divscale.reward.evaluate:recipe_test_prompts",
             "divscale.models.hub:load_causal_lm", "divscale.provenance:deterministic"),
}

LIBRARIES = ("torch", "transformers", "sentence_transformers", "tokenizers", "trl", "numpy")

# Modules whose code never shapes a number: where files go, how they are written, the recipe's data classes (their
# values are hashed with every run's configuration), this module, the command line. The closure does not follow
# into them (a root may still name one of their functions, as "train" names deterministic).
NOT_FOLLOWED = ("divscale.paths", "divscale.io", "divscale.config", "divscale.provenance", "divscale.cli")
# ... except the content hashes a step records in what it writes (a run's result.json: its rankings, dev prompts and
# final weights; a policy's warmup.json: its texts): they are part of the step's output, so part of its code. The
# hashes that only name a cache (config_hash, file_sha256) are not: changing one moves every cache it names anyway.
RECORDED_HASHES = ("sha256_json", "texts_hash", "weights_sha256")
SIMPLE = (bool, int, float, str, bytes, type(None))


def _resolve(entry: str):
    module_name, _, qualname = entry.partition(":")
    obj = importlib.import_module(module_name)
    for part in filter(None, qualname.split(".")):
        obj = getattr(obj, part, None)
        if obj is None:
            raise KeyError(f"{entry}: no such function or class; fix divscale.provenance.STEPS")
    return obj


def _is_simple(value, depth: int = 0) -> bool:
    if isinstance(value, SIMPLE) or isinstance(value, re.Pattern) or type(value).__module__ == "numpy":
        return True
    if depth < 3 and isinstance(value, (tuple, list, frozenset, set)):
        return all(_is_simple(v, depth + 1) for v in value)
    if depth < 3 and isinstance(value, dict):
        return all(_is_simple(k, depth + 1) and _is_simple(v, depth + 1) for k, v in value.items())
    return False


def _constant(name: str, value) -> bool:
    """A module-level constant that shapes results: an UPPER_CASE name bound to plain data. Mutable containers count
    only under public names: ``_CACHE = {}``-style module state changes while the code runs and is not code."""
    if not name.isupper() or value is None or not _is_simple(value):
        return False
    return not (name.startswith("_") and isinstance(value, (list, dict, set)) or
                name.startswith("_") and type(value).__name__ == "ndarray")


def _ours(obj, package: str) -> bool:
    module = getattr(obj, "__module__", None) or ""
    if module == __name__ and getattr(obj, "__qualname__", "") in RECORDED_HASHES:
        return True
    return (module == package or module.startswith(package + ".")) and not module.startswith(NOT_FOLLOWED)


@functools.cache
def _module_syntax(module_name: str) -> tuple[dict[str, ast.AST], frozenset[str]]:
    """A module parsed once: its functions and classes by ``__qualname__``, and the names its functions rebind
    with ``global`` (module state, not constants)."""
    tree = ast.parse(inspect.getsource(sys.modules[module_name]))
    defs: dict[str, ast.AST] = {}
    rebound: set[str] = set()

    def visit(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                defs.setdefault(name, child)
                visit(child, name + (".<locals>." if not isinstance(child, ast.ClassDef) else "."))
            elif isinstance(child, ast.Global):
                rebound.update(child.names)
            else:
                visit(child, prefix)

    visit(tree, "")
    return defs, frozenset(rebound)


def _syntax(obj) -> ast.AST | None:
    """The syntax tree of a function or class; None for one made at run time (``type(...)``, or a ``class``
    statement run inside a function, as the OpenAssistant RM classes are registered), which has no source of its
    own: the code that makes it is hashed where a step reaches it, and the made object is left out (whether it
    exists yet depends on what ran before, which must not move a key)."""
    obj = inspect.unwrap(obj)
    node = _module_syntax(obj.__module__)[0].get(obj.__qualname__)
    if node is not None:
        return node
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(obj))).body[0]
    except (OSError, TypeError, SyntaxError):
        return None


class _Normalize(ast.NodeTransformer):
    """Docstrings out; an import of the package's own code inside a function kept as the name it binds only
    (``from divscale.models.generation import generate`` -> ``import generate``): where that code lives is not
    what it does, and the imported function is hashed by its own name and source."""

    def __init__(self, module: str, package: str):
        self.module, self.package = module, package

    def _docless(self, node):
        self.generic_visit(node)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and \
                isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _docless

    def visit_ImportFrom(self, node):
        base = importlib.util.resolve_name("." * node.level + (node.module or ""), sys.modules[self.module].__package__) \
            if node.level else (node.module or "")
        if base == self.package or base.startswith(self.package + "."):
            return ast.Import(names=[ast.alias(name=a.asname or a.name) for a in node.names])
        return node


@functools.cache
def _normalized(obj, package: str) -> str:
    node = _Normalize(obj.__module__, package).visit(copy.deepcopy(_syntax(obj)))
    return ast.unparse(node)


def normalized_source(obj, package: str = "divscale") -> str:
    """The source of a function or class without comments, docstrings or formatting (``ast.unparse``), and with
    its imports of the package's own code reduced to the names they bind, so that moving code between modules,
    rewording a docstring or re-wrapping a line leaves a key unchanged while any change to the code moves it."""
    return _normalized(inspect.unwrap(obj), package)


@functools.cache
def _references(obj, package: str) -> tuple[tuple, tuple]:
    """What ``obj``'s source names: divscale functions/classes (followed) and simple constants (name, repr)."""
    module = sys.modules[obj.__module__]
    tree = _syntax(obj)
    local: dict[str, object] = {}
    for node in ast.walk(tree):                      # imports inside the function or class bind names too
        try:
            if isinstance(node, ast.ImportFrom):
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), module.__package__) \
                    if node.level else node.module
                if not (base == package or base.startswith(package + ".")):
                    continue                         # only divscale code is followed: no library imported here
                source = importlib.import_module(base)
                for alias in node.names:
                    value = getattr(source, alias.name, None)
                    if value is None:
                        value = importlib.import_module(f"{base}.{alias.name}")
                    local[alias.asname or alias.name] = value
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname and alias.name.startswith(package + "."):
                        local[alias.asname] = importlib.import_module(alias.name)
        except ImportError:                          # an optional dependency (e.g. deepspeed) absent here
            continue
    namespace = {**vars(module), **local}
    state = _module_syntax(obj.__module__)[1]
    found, constants = [], {}

    def add(name: str, value) -> None:
        if inspect.isfunction(value) or inspect.isclass(value) or isinstance(value, functools._lru_cache_wrapper):
            if _ours(inspect.unwrap(value), package):
                found.append(inspect.unwrap(value))
        elif name not in state and _constant(name, value):
            constants[name] = repr(value)

    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in namespace:
            add(node.id, namespace[node.id])
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            chain, base = [node.attr], node.value
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if not isinstance(base, ast.Name) or base.id not in namespace:
                continue
            value = namespace[base.id]
            for attr in reversed(chain):
                if not inspect.ismodule(value):
                    break
                value = getattr(value, attr, None)
                add(attr, value)
    return tuple(found), tuple(sorted(constants.items()))


@functools.cache
def closure(*roots: str, package: str = "divscale") -> tuple[tuple[str, str], ...]:
    """``(name, normalized source)`` of every function and class the roots reach, and ``(NAME, repr)`` of the
    constants they read, sorted. Entries are named by qualified name alone, never by module or file: moving a
    function to another module, or deleting code that no root reaches, leaves the closure unchanged."""
    seen: dict[int, object] = {}
    todo = [inspect.unwrap(_resolve(r)) for r in roots]
    entries: set[tuple[str, str]] = set()
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen[id(obj)] = obj
        if _syntax(obj) is None:
            continue
        entries.add((obj.__qualname__, normalized_source(obj, package)))
        found, constants = _references(obj, package)
        entries.update(constants)
        todo.extend(f for f in found if id(f) not in seen)
    return tuple(sorted(entries))


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
    """Hash of the code ``steps`` run (the :func:`closure` of their :data:`STEPS` roots) and of the library
    versions whose kernels shape the numbers."""
    h = hashlib.sha256()
    for step in steps:
        if step not in STEPS:
            raise KeyError(f"unknown step {step!r}; declare its code in divscale.provenance.STEPS ({sorted(STEPS)})")
        for name, source in closure(*STEPS[step]):
            h.update(name.encode() + b"\0" + source.encode("utf-8") + b"\0")
    h.update(json.dumps(library_versions(), sort_keys=True).encode())
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


# ------------------------------------------------------------------------------------------- content hashes
# Every content hash of the package is made by these helpers: cache and run-folder keys (:func:`config_hash`), the
# hashes a step records in what it writes (a run's rankings / dev prompts / final weights, a policy's texts), file
# and weight fingerprints. Each was moved here with its output unchanged (tests/test_provenance.py pins the values on
# fixed inputs), so no cache key and no recorded hash moved.

def sha256_hex(data: bytes | str, length: int | None = None) -> str:
    """The sha256 of bytes (of a text: its UTF-8 bytes) in hex, cut to ``length`` characters if given."""
    digest = hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()
    return digest[:length] if length else digest


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_hash(*objs: Any, length: int = 12) -> str:
    """The key of a cache entry or a run folder: :func:`sha256_json` of ``objs`` (keys sorted, anything that JSON
    cannot write as its ``str``), cut to ``length`` characters."""
    return sha256_json(objs)[:length]


def texts_hash(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def weights_sha256(model) -> str:
    """Hash of a model's parameters and buffers (name, dtype, shape, bytes), in name order."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | Path, length: int | None = None) -> str:
    """The sha256 of a file's bytes (read in 1 MiB blocks), cut to ``length`` characters if given."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length] if length else h.hexdigest()


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


# ------------------------------------------------------------------------------------------- the environment

# The study's lock (`make lock`, installed by `make setup`); absent where divscale is installed as a library.
LOCK_FILE = Path(__file__).resolve().parent.parent / "requirements" / "lock.txt"


def environment(lock: str | Path = LOCK_FILE, cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """What produced a study's numbers besides its code and data, to be stored with the results (summary.json):

    * ``lock_sha256``: the sha256 of the lock file (every package's exact version and hashes; ``None`` without one)
      and ``lock_differs``: the locked packages (those whose markers apply here) installed at another version than
      the lock's, ``{name: {"locked": v, "installed": w or "absent"}}`` -- empty when the environment is the lock's;
    * ``python`` and ``libraries``: the installed versions of :data:`LIBRARIES`, the ones every code key hashes
      (torch is installed outside the lock, CPU or CUDA build, so its version is here and not in the lock's hash);
    * ``cpu`` (``model name`` of /proc/cpuinfo, else :func:`platform.processor`), ``arch`` and
      ``torch_cpu_capability`` (AVX2 or AVX-512 kernels sum floats in different orders: the last bits of a number
      can differ across CPU kinds, see the module docstring);
    * ``threads``: ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` as set (``None`` when unset) and
      ``torch.get_num_threads()`` in this process.
    """
    import os
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch
    from packaging.markers import Marker
    from packaging.utils import canonicalize_name

    lock, differs, lock_sha = Path(lock), {}, None
    if lock.is_file():
        lock_sha = file_sha256(lock)
        pin = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]*?))?\s*\\?$")
        for line in lock.read_text().splitlines():
            m = pin.match(line)
            if not m or (m[3] and not Marker(m[3]).evaluate()):
                continue
            try:
                installed = version(m[1])
            except PackageNotFoundError:
                installed = "absent"
            if canonicalize_name(m[1]) != "torch" and installed != m[2]:
                differs[m[1]] = {"locked": m[2], "installed": installed}
    cpu = None
    if Path(cpuinfo).is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in Path(cpuinfo).read_text().splitlines()
                    if line.startswith("model name")), None)
    return {"lock_sha256": lock_sha, "lock_differs": differs, "python": platform.python_version(),
            "libraries": dict(library_versions()), "cpu": cpu or platform.processor() or None,
            "arch": platform.machine(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"), "torch": torch.get_num_threads()}}
