"""Execute the study's notebooks with papermill, and keep the jupytext pairs in sync.

The ``py:percent`` files in ``notebooks/`` are the reviewed sources; their paired ``.ipynb`` files are
what papermill executes (pairing declared in ``jupytext.toml``). Executed copies are build products:
``runs/<recipe>/notebooks/<name>.ipynb``, written to a temporary name and renamed when the whole
notebook has run, so a failed or killed execution never looks complete.

    divscale notebook run 02_prompt_diversity --recipe smoke
    divscale notebook check            # every pair exists and .py / .ipynb hold the same cells
    divscale notebook sync             # rewrite each .ipynb from its .py (make notebooks)
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from . import paths
from .io import atomic_path

ORDER = ("01_data_construction", "02_prompt_diversity", "03_reward_models", "04_finetune",
         "05_allocation", "06_diversity_regression", "07_augmentation", "08_selection")


def notebook_names() -> list[str]:
    return sorted(p.stem for p in paths.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.py"))


def executed_path(name: str, recipe: str) -> Path:
    return paths.RUNS_DIR / recipe / "notebooks" / f"{name}.ipynb"


def run_notebook(name: str, recipe: str, overrides: dict | None = None, out: str | os.PathLike | None = None,
                 extra_parameters: dict | None = None) -> Path:
    """Execute ``notebooks/<name>.ipynb`` with ``recipe`` (and overrides) into ``out`` atomically."""
    import papermill

    source = paths.NOTEBOOKS_DIR / f"{name}.ipynb"
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such notebook; available: {notebook_names()}")
    out = Path(out) if out is not None else executed_path(name, recipe)
    params = {"recipe": recipe, "overrides": json.dumps(overrides or {}, sort_keys=True), **(extra_parameters or {})}
    with atomic_path(out, suffix=".ipynb") as tmp:
        papermill.execute_notebook(str(source), str(tmp), parameters=params, cwd=str(paths.NOTEBOOKS_DIR),
                                   kernel_name="python3", progress_bar=False)
    return out


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


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="execute one notebook with papermill")
    run.add_argument("name", help=f"notebook name, one of {list(ORDER)}")
    run.add_argument("--recipe", required=True)
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--out", default=None)
    sub.add_parser("check", help="check that every .py/.ipynb pair is in sync")
    sub.add_parser("sync", help="rewrite each .ipynb from its .py")


def command(args) -> int:
    from .config import parse_overrides

    if args.action == "run":
        print(run_notebook(args.name, args.recipe, parse_overrides(args.set), args.out))
        return 0
    if args.action == "check":
        problems = out_of_sync()
        for p in problems:
            print(p)
        return 1 if problems else 0
    for path in sync():
        print(path)
    return 0
