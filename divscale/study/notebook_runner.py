"""Execute the study's notebooks with papermill, and keep the jupytext pairs in sync.

The ``py:percent`` files in ``notebooks/`` are the reviewed sources; their paired ``.ipynb`` files are
what papermill executes (pairing declared in ``jupytext.toml``). Executed copies are build products:
``runs/<recipe>/notebooks/<name>.ipynb``, written to a temporary name and renamed when the whole
notebook has run, so a failed or killed execution never looks complete.

    divscale notebook run 02_prompt_diversity --recipe smoke
    divscale notebook check            # every pair exists and .py / .ipynb hold the same cells
    divscale notebook sync             # rewrite each .ipynb from its .py (make notebooks)
    divscale notebook lab              # JupyterLab on the notebooks, .py sources opened as notebooks (make lab)
    divscale notebook export --recipe cpu   # cleaned copies of the executed figure notebooks -> results/cpu/notebooks/

Executed notebooks are written lean and free of machine details (:func:`clean_notebook`): the kernel runs
with progress bars off (tqdm, huggingface / transformers), so no progress lines are saved; absolute paths of
the checkout, the virtual environment and the home directory are rewritten in every text output; papermill's
timings and input/output paths are dropped from the metadata. The committed copies in
``results/<recipe>/notebooks/`` (the figure notebooks, not the per-cell 04 runs) are what a reader opens in a
notebook viewer.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path

from divscale import paths
from divscale.io import atomic_path

ORDER = ("01_data_construction", "02_prompt_diversity", "03_reward_models", "04_finetune",
         "05_allocation", "06_diversity_regression", "07_augmentation", "08_selection", "09_listwise", "10_budget_planner")


def notebook_names() -> list[str]:
    return sorted(p.stem for p in paths.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.py"))


def executed_path(name: str, recipe: str) -> Path:
    return paths.RUNS_DIR / recipe / "notebooks" / f"{name}.ipynb"


# The kernel's environment while papermill executes a notebook: no progress bars by default (tqdm >= 4.66 reads
# TQDM_DISABLE; huggingface_hub, datasets and transformers read HF_HUB_DISABLE_PROGRESS_BARS), no ANSI colours.
# Code that asks for a bar explicitly (tqdm(..., disable=False)) still draws one: clean_text strips those lines.
QUIET_KERNEL_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "TOKENIZERS_PARALLELISM": "false", "NO_COLOR": "1"}
# Warnings every notebook would repeat, which 01_data_construction states once, in words, instead
# (the pool carved out of the HH-RLHF test splits when no train split is available).
SAID_ONCE_WARNINGS = ("ignore:carving the training pool out of the HH-RLHF test splits:UserWarning",
                      # tqdm.auto without ipywidgets: bars are off or stripped anyway, so its advice is noise
                      "ignore:IProgress not found")


def _kernel_env() -> dict:
    previous = os.environ.get("PYTHONWARNINGS", "")
    return QUIET_KERNEL_ENV | {"PYTHONWARNINGS": ",".join([w for w in [previous] if w] + list(SAID_ONCE_WARNINGS))}

# a progress-bar line: "desc:  45%|####5     | 9/20 [00:01<00:02, 5.1it/s]" (tqdm's text fallback)
_PROGRESS = re.compile(r"\d+%\|.*\|\s*\d+/\d*|\|\s*\d+/\d+\s*\[\d")
# transformers' advice to pass an attention mask, which GPT-2's forward gives during generate's decode steps when a
# finished row's next token is the pad token, although divscale passes the mask (models.generation.generate); that
# padded rows generate what they generate alone is tested (tests/test_generation.py::
# test_batched_equals_unbatched_and_order_restored), so the line is a false alarm a reader cannot act on;
# and transformers' note that checkpoint mtimes lie less than 1 s apart (trainer_utils.sort_checkpoints), which a
# small model saving every few steps (save_total_limit=1) gives on any filesystem: transformers then orders the
# checkpoints by step number, which is right, so the note depends on timing, not on anything a reader can fix
_FALSE_ALARMS = re.compile(r"We strongly recommend passing in an `attention_mask` since your input_ids may be padded"
                           r"|mtime may not be reliable on this filesystem, falling back to numerical ordering")


@contextlib.contextmanager
def _environ(values: dict):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _machine_paths() -> list[tuple[str, str]]:
    """(absolute prefix, what a reader sees instead), longest first: the checkout, the interpreter's
    environment (``.venv`` or a conda prefix), the base interpreter and the home directory."""
    pairs = {str(paths.ROOT): ".", sys.prefix: "<venv>", sys.base_prefix: "<python>", str(Path.home()): "~"}
    for prefix, name in list(pairs.items()):
        real = os.path.realpath(prefix)
        pairs.setdefault(real, name)
    return sorted(((k.rstrip("/"), v) for k, v in pairs.items() if k and k != "/"), key=lambda kv: -len(kv[0]))


def clean_text(text: str, replacements: list[tuple[str, str]] | None = None) -> str:
    """One output text, cleaned: carriage-return rewrites collapsed to their final state, progress-bar lines and
    the known false alarms (:data:`_FALSE_ALARMS`: two library lines a reader cannot act on) dropped, absolute
    machine paths rewritten (checkout -> ``.``, environment -> ``<venv>``, home -> ``~``)."""
    lines = []
    for line in text.split("\n"):
        line = line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
        if _PROGRESS.search(line) or _FALSE_ALARMS.search(line):
            continue
        lines.append(line)
    text = "\n".join(lines)
    for prefix, name in replacements if replacements is not None else _machine_paths():
        text = text.replace(prefix + "/", name + "/").replace(prefix, name)
    return text


def clean_notebook(nb):
    """An executed notebook made lean and machine-free, in place (and returned): every text output goes
    through :func:`clean_text` (stream outputs left empty are removed); papermill's per-cell timings and
    its input/output paths go; the parameters papermill injected stay."""
    replacements = _machine_paths()
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        outputs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                out["text"] = clean_text(out.get("text", ""), replacements)
                if not out["text"].strip():
                    continue
            elif out.get("output_type") == "error":
                out["traceback"] = [clean_text(t, replacements) for t in out.get("traceback", [])]
                out["evalue"] = clean_text(out.get("evalue", ""), replacements)
            for mime in ("text/plain", "text/html", "text/markdown"):
                data = out.get("data", {})
                if mime in data:
                    value = data[mime]
                    data[mime] = (clean_text(value, replacements) if isinstance(value, str)
                                  else [clean_text(v, replacements) for v in value])
            outputs.append(out)
        if "outputs" in cell:
            cell.outputs = outputs
    pm = nb.metadata.get("papermill")
    if pm is not None:
        nb.metadata["papermill"] = {"parameters": pm.get("parameters", {})}
    return nb


def run_notebook(name: str, recipe: str, overrides: dict | None = None, out: str | os.PathLike | None = None,
                 extra_parameters: dict | None = None) -> Path:
    """Execute ``notebooks/<name>.ipynb`` with ``recipe`` (and overrides) into ``out`` atomically, with
    progress bars off in the kernel, and clean the result (:func:`clean_notebook`)."""
    import nbformat
    import papermill

    source = paths.NOTEBOOKS_DIR / f"{name}.ipynb"
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such notebook; available: {notebook_names()}")
    out = Path(out) if out is not None else executed_path(name, recipe)
    params = {"recipe": recipe, "overrides": json.dumps(overrides or {}, sort_keys=True), **(extra_parameters or {})}
    with atomic_path(out, suffix=".ipynb") as tmp, _environ(_kernel_env()):
        papermill.execute_notebook(str(source), str(tmp), parameters=params, cwd=str(paths.NOTEBOOKS_DIR),
                                   kernel_name="python3", progress_bar=False)
        nbformat.write(clean_notebook(nbformat.read(tmp, as_version=4)), tmp)
    return out


def figure_notebooks() -> list[str]:
    """The notebooks whose executed copies are committed: all but the per-cell ``04_finetune``."""
    return [n for n in notebook_names() if n != "04_finetune"]


def export_executed(recipe: str, names: list[str] | None = None, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Copy the executed notebooks ``runs/<recipe>/notebooks/<name>.ipynb`` (cleaned once more) into
    ``results/<recipe>/notebooks/``, the copies a reader opens. A missing executed notebook is an error."""
    import nbformat

    names = list(names) if names else figure_notebooks()
    out_dir = Path(out_dir) if out_dir is not None else paths.RESULTS_DIR / recipe / "notebooks"
    missing = [n for n in names if not executed_path(n, recipe).exists()]
    if missing:
        raise FileNotFoundError(f"not executed yet for recipe {recipe!r}: {missing} "
                                f"(run `make figures RECIPE={recipe}` or `divscale notebook run NAME --recipe {recipe}`)")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        nb = clean_notebook(nbformat.read(executed_path(name, recipe), as_version=4))
        target = out_dir / f"{name}.ipynb"
        with atomic_path(target, suffix=".ipynb") as tmp:
            nbformat.write(nb, tmp)
        written.append(target)
    return written


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def out_of_sync() -> list[str]:
    """Names whose .py and .ipynb differ in cells (or lack a partner)."""
    import jupytext

    problems = []
    py = {p.stem for p in paths.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.py")}
    ipynb = {p.stem for p in paths.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb")}
    problems += [f"{n}.py has no paired .ipynb" for n in sorted(py - ipynb)]
    problems += [f"{n}.ipynb has no paired .py" for n in sorted(ipynb - py)]
    for name in sorted(py & ipynb):
        a = jupytext.read(paths.NOTEBOOKS_DIR / f"{name}.py")
        b = jupytext.read(paths.NOTEBOOKS_DIR / f"{name}.ipynb")
        if _cells(a) != _cells(b):
            problems.append(f"{name}: .py and .ipynb differ (run `make notebooks`)")
        tags = [c.metadata.get("tags", []) for c in b.cells]
        if sum("parameters" in t for t in tags) != 1:
            problems.append(f"{name}.ipynb: needs exactly one cell tagged 'parameters'")
    return problems


def sync() -> list[Path]:
    """Rewrite every .ipynb from its .py source (outputs are not kept in the sources)."""
    import jupytext

    written = []
    for src in sorted(paths.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.py")):
        nb = jupytext.read(src)
        nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
        target = src.with_suffix(".ipynb")
        with atomic_path(target, suffix=".ipynb") as tmp:
            jupytext.write(nb, tmp, fmt="ipynb")
        written.append(target)
    return written


def lab_argv(port: int = 8888, token: str | None = None, browser: bool = True, port_retries: int = 50) -> list[str]:
    """The JupyterLab command of ``make lab``: this interpreter's (``.venv``) JupyterLab on 127.0.0.1 only, rooted
    at the project so ``results/`` and ``figures/`` are browsable beside ``notebooks/``, with its ``python3``
    kernel (the same interpreter, the one papermill uses). jupytext's contents manager (enabled in the
    environment by the jupytext wheel) opens the ``py:percent`` sources as notebooks and keeps them paired with
    their ``.ipynb`` (``jupytext.toml``). ``token``: None lets the server draw one and print the URL."""
    argv = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={paths.ROOT}", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}", f"--ServerApp.port_retries={port_retries}",
            f"--ServerApp.open_browser={browser}", "--ContentsManager.preferred_dir=notebooks",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--MultiKernelManager.default_kernel_name=python3"]
    if token is not None:
        argv.append(f"--IdentityProvider.token={token}")
    if hasattr(os, "geteuid") and os.geteuid() == 0:              # containers: the server refuses root otherwise
        argv.append("--ServerApp.allow_root=True")
    return argv


def command(args) -> int:
    from divscale.config import parse_overrides

    if args.action == "run":
        print(run_notebook(args.name, args.recipe, parse_overrides(args.set), args.out))
        return 0
    if args.action == "export":
        for path in export_executed(args.recipe, args.names):
            print(path)
        return 0
    if args.action == "lab":
        argv = lab_argv(port=args.port, browser=not args.no_browser)
        os.execv(argv[0], argv)                                   # Ctrl-C goes straight to the server
    if args.action == "check":
        problems = out_of_sync()
        for p in problems:
            print(p)
        return 1 if problems else 0
    for path in sync():
        print(path)
    return 0
