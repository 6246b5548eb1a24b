"""Run every cell of a recipe's grid by executing ``notebooks/04_finetune.ipynb`` with papermill.

One cell = (algo, ranking length n, #prompts k, seed). For each cell the runner

1. skips it if ``runs/<recipe>/cells/<cell_id>.json`` exists (the notebook writes that file,
   atomically, as its very last step, so its presence means the cell is complete);
2. otherwise executes the notebook with the cell's parameters into
   ``runs/<recipe>/notebooks/<cell_id>.ipynb`` (papermill writes the executed notebook as it
   goes; a killed cell leaves no result file and is simply redone next time, while the
   training run inside resumes from its last checkpoint);
3. rebuilds the tidy results table ``results/<recipe>/runs.csv`` from all cell files
   (atomically), so the table is always consistent with the completed cells.

Past one machine the same cells go to an existing engine rather than a home-made one:
``--executor slurm`` submits them as a job array through ``submitit`` (its ``local`` cluster
runs the same code path in tests), and a ``paper-*`` recipe's cells launch training with
``accelerate launch`` (see ``recipes/accelerate/``) from inside the notebook.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from . import paths
from .config import Recipe, config_hash, load_recipe, parse_overrides

FINETUNE_NOTEBOOK = "04_finetune.ipynb"
CELL_SECTIONS = ("data", "ranking", "reward", "policy", "train", "eval", "diversity")


@dataclass(frozen=True)
class GridCell:
    algo: str
    ranking_len: int
    n_prompts: int
    seed: int

    def cell_id(self, recipe: Recipe) -> str:
        """Readable tag + a hash of the recipe sections a cell's result depends on (not the grid's
        enumeration, nor the augmentation/selection sections)."""
        tag = f"{self.algo}-n{self.ranking_len}-k{self.n_prompts}-s{self.seed}"
        sections = {k: v for k, v in recipe.to_dict().items() if k in CELL_SECTIONS}
        return f"{tag}-{config_hash(sections, asdict(self), length=8)}"

    def parameters(self, recipe_name: str, overrides: dict | None = None) -> dict:
        return {"recipe": recipe_name, "algo": self.algo, "ranking_len": self.ranking_len,
                "n_prompts": self.n_prompts, "seed": self.seed,
                "overrides": json.dumps(overrides or {}, sort_keys=True)}


def expand_grid(recipe: Recipe) -> list[GridCell]:
    """Sizes x ranking lengths x algorithms x seeds, in a stable order (seed last, so the
    first pass over the grid gives one seed of every cell)."""
    cells = [GridCell(algo, n, k, seed)
             for seed, algo, n, k in itertools.product(recipe.train.seeds, recipe.train.algos,
                                                       recipe.data.ranking_lengths, recipe.data.sizes)]
    return cells


def recipe_dirs(recipe: Recipe) -> dict[str, Path]:
    """Where a recipe's build products go."""
    base = paths.RUNS_DIR / recipe.name
    return {"base": base, "cells": base / "cells", "notebooks": base / "notebooks",
            "results": paths.RESULTS_DIR / recipe.name, "figures": paths.FIGURES_DIR / recipe.name}


def cell_result_path(recipe: Recipe, cell: GridCell) -> Path:
    return recipe_dirs(recipe)["cells"] / f"{cell.cell_id(recipe)}.json"


def execute_cell(recipe_name: str, overrides: dict, cell: GridCell, notebook: Path, result: Path, out: Path) -> Path:
    """Execute the fine-tuning notebook for one cell into ``out``; the notebook writes ``result`` last.

    Every path is decided by the caller, so the same call runs in a thread, a local process or a
    Slurm job (submitit) without relying on the worker's environment.
    """
    import papermill

    if result.exists():
        return result
    out.parent.mkdir(parents=True, exist_ok=True)
    result.parent.mkdir(parents=True, exist_ok=True)
    params = cell.parameters(recipe_name, overrides) | {"result_path": str(result)}
    papermill.execute_notebook(str(notebook), str(out), parameters=params, cwd=str(Path(notebook).parent),
                               progress_bar=False, kernel_name="python3")
    if not result.exists():
        raise RuntimeError(f"{out}: the notebook finished without writing {result}")
    return result


def collect_results(recipe: Recipe) -> Path:
    """Rebuild ``results/<recipe>/runs.csv`` from the recipe's completed cells (atomic); result files of
    cells that are no longer in the grid (an edited recipe) stay on disk but are left out."""
    from .analysis import results_frame, write_results

    dirs = recipe_dirs(recipe)
    done = [cell_result_path(recipe, c) for c in expand_grid(recipe)]
    rows = [json.loads(p.read_text()) for p in done if p.exists()]      # this grid's cells only
    from .pipeline import project_relative

    for row in rows:                       # results tables hold project-relative paths, not machine paths
        for key in ("run_dir", "eval_dir"):
            if key in row:
                row[key] = project_relative(row[key])
    out = dirs["results"] / "runs.csv"
    write_results(out, results_frame(rows))
    return out


def run_grid(recipe_name: str, overrides: dict | None = None, jobs: int = 1, executor: str = "local",
             cells: list[GridCell] | None = None, notebook: Path | None = None,
             slurm_options: dict | None = None) -> dict:
    """Run all missing cells; returns counts of done / skipped / failed cells."""
    from tqdm.auto import tqdm

    overrides = overrides or {}
    recipe = load_recipe(recipe_name, overrides)
    cells = cells if cells is not None else expand_grid(recipe)
    todo = [c for c in cells if not cell_result_path(recipe, c).exists()]
    notebook = Path(notebook or paths.NOTEBOOKS_DIR / FINETUNE_NOTEBOOK)
    outs = {c: recipe_dirs(recipe)["notebooks"] / f"{c.cell_id(recipe)}.ipynb" for c in todo}
    summary = {"cells": len(cells), "skipped": len(cells) - len(todo), "done": 0, "failed": []}
    if not todo:
        collect_results(recipe)
        return summary

    if executor == "slurm" or executor == "submitit-local":
        import submitit

        folder = recipe_dirs(recipe)["base"] / "submitit"
        ex = submitit.AutoExecutor(folder=folder, cluster="local" if executor == "submitit-local" else None)
        ex.update_parameters(**(slurm_options or {"timeout_min": 24 * 60, "slurm_array_parallelism": jobs}))
        jobs_ = ex.map_array(execute_cell, [recipe_name] * len(todo), [overrides] * len(todo), todo,
                             [notebook] * len(todo), [cell_result_path(recipe, c) for c in todo],
                             [outs[c] for c in todo])
        for cell, job in tqdm(list(zip(todo, jobs_)), desc=f"grid {recipe.name}", unit="cell"):
            try:
                job.result()
                summary["done"] += 1
            except Exception as err:  # noqa: BLE001 - reported, others continue
                summary["failed"].append((cell, str(err).splitlines()[-1] if str(err) else repr(err)))
    else:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool, \
                tqdm(total=len(todo), desc=f"grid {recipe.name}", unit="cell") as bar:
            futures = {pool.submit(execute_cell, recipe_name, overrides, c, notebook, cell_result_path(recipe, c),
                                   outs[c]): c for c in todo}
            for fut in as_completed(futures):
                cell = futures[fut]
                try:
                    fut.result()
                    summary["done"] += 1
                except Exception as err:  # noqa: BLE001 - reported, others continue
                    summary["failed"].append((cell, str(err).strip().splitlines()[-1] if str(err) else repr(err)))
                bar.update(1)
                collect_results(recipe)
    collect_results(recipe)
    return summary


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe name (recipes/<name>.yaml) or path")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="cells run at once (local executor)")
    parser.add_argument("--executor", choices=["local", "slurm", "submitit-local"], default="local")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set train.max_steps=10")
    parser.add_argument("--list", action="store_true", help="list the cells and their status, run nothing")


def command(args) -> int:
    overrides = parse_overrides(args.set)
    recipe = load_recipe(args.recipe, overrides)
    if args.list:
        for cell in expand_grid(recipe):
            status = "done" if cell_result_path(recipe, cell).exists() else "todo"
            print(f"{status}\t{cell.cell_id(recipe)}")
        return 0
    start = time.time()
    summary = run_grid(args.recipe, overrides, jobs=args.jobs, executor=args.executor)
    print(f"grid {recipe.name}: {summary['cells']} cells, {summary['skipped']} already complete, "
          f"{summary['done']} run, {len(summary['failed'])} failed in {time.time() - start:.0f} s; "
          f"results: {recipe_dirs(recipe)['results'] / 'runs.csv'}")
    for cell, msg in summary["failed"]:
        print(f"  FAILED {cell}: {msg}", file=sys.stderr)
    return 1 if summary["failed"] else 0
