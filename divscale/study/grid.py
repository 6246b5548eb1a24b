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
runs the same code path in tests). A recipe whose cells train on several processes
(``train.num_processes > 1`` or an accelerate config: the ``paper-*`` recipes) runs one cell at a
time on a node and the notebook launches its training on all the node's GPUs with ``accelerate
launch --config_file recipes/accelerate/... -m divscale.cli train`` (:func:`divscale.study.pipeline.train_cell`),
then evaluates in the notebook; under ``--executor slurm`` each such cell is one job holding
``train.num_processes`` GPUs of a node. Stopping the grid (Ctrl-C, SIGTERM: :mod:`divscale.signals`) stops
the notebooks and the trainings they launched, and a training dies with the kernel that launched it however
that dies (:func:`divscale.train.runs.run_launched`).

``--list`` builds nothing: it reads the cell files that exist and checks what can be checked without
the shared artifacts (the recipe's sections, the code versions); a cell whose row is not stale by those
is listed as ``unverified`` (its RM, policy and rankings keys need the artifacts: ``divscale grid``
checks them before it runs anything).
"""
from __future__ import annotations

import itertools
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from divscale import paths
from divscale.config import Recipe, load_recipe, parse_overrides
from divscale.provenance import config_hash

FINETUNE_NOTEBOOK = "04_finetune.ipynb"
CELL_SECTIONS = ("data", "ranking", "reward", "policy", "train", "eval", "diversity")   # = pipeline.RUN_SECTIONS


@dataclass(frozen=True)
class GridCell:
    algo: str
    ranking_len: int
    n_prompts: int
    seed: int
    sft_weight: float | None = None     # set: a β-ablation cell (train.sft_weight overridden), beta_ablation.csv

    def tag(self) -> str:
        """The readable part of :meth:`cell_id`: ``<algo>-n<n>-k<k>-s<seed>[-beta<b>]``."""
        tag = f"{self.algo}-n{self.ranking_len}-k{self.n_prompts}-s{self.seed}"
        return tag + (f"-beta{self.sft_weight:g}" if self.sft_weight is not None else "")

    def cell_id(self, recipe: Recipe, keys: dict | None = None) -> str:
        """Readable tag + a hash of everything that changes the cell's row: the recipe sections it reads (not
        the grid's enumeration, nor the augmentation/selection sections) and ``keys``
        (:func:`divscale.study.pipeline.table_keys`: RM_train / RM_test fingerprints, the initial policy's weights,
        the grid's rankings, the code versions of training and evaluation). ``None`` builds them."""
        tag = self.tag()
        sections = {k: v for k, v in recipe.to_dict().items() if k in CELL_SECTIONS}
        keys = cell_keys(recipe) if keys is None else keys
        return f"{tag}-{config_hash(sections, asdict(self), keys, length=8)}"

    def parameters(self, recipe_name: str, overrides: dict | None = None) -> dict:
        overrides = dict(overrides or {})
        if self.sft_weight is not None:
            overrides["train.sft_weight"] = self.sft_weight
        return {"recipe": recipe_name, "algo": self.algo, "ranking_len": self.ranking_len,
                "n_prompts": self.n_prompts, "seed": self.seed,
                "overrides": json.dumps(overrides, sort_keys=True)}


def verdict_cells(recipe: Recipe) -> list[tuple[int, int]]:
    """(n, k) of the cells the verdicts read: each equal budget's (n, B/n) and, for each k of
    ``grid.contrast_sizes``, the same-prompts pair (2, k) and (max n, k)."""
    lengths = sorted(recipe.data.ranking_lengths)
    cells = [(n, budget // n) for budget in recipe.grid.equal_budgets for n in lengths]
    cells += [(n, k) for k in recipe.grid.contrast_sizes for n in (lengths[0], lengths[-1])]
    missing = [(n, k) for n, k in cells if k not in recipe.data.sizes]
    if missing:
        raise ValueError(f"recipe {recipe.name}: verdict cells {missing} use sizes not in data.sizes "
                         f"{recipe.data.sizes}; add them or change grid.equal_budgets / grid.contrast_sizes")
    return list(dict.fromkeys(cells))


def expand_grid(recipe: Recipe) -> list[GridCell]:
    """Sizes x ranking lengths x algorithms x ``train.seeds``, in a stable order (seed last, so the first pass
    over the grid gives one seed of every cell), then ``grid.verdict_seeds`` on :func:`verdict_cells` only."""
    cells = [GridCell(algo, n, k, seed)
             for seed, algo, n, k in itertools.product(recipe.train.seeds, recipe.train.algos,
                                                       recipe.data.ranking_lengths, recipe.data.sizes)]
    extra = [s for s in recipe.grid.verdict_seeds if s not in recipe.train.seeds]
    if extra:
        targets = verdict_cells(recipe)
        cells += [GridCell(algo, n, k, seed) for seed in extra for algo in recipe.train.algos
                  for n, k in targets]
    return cells


def expand_ablation(recipe: Recipe) -> list[GridCell]:
    """PRO at the equal-budget cells with each β of ``grid.beta_ablation`` (train.sft_weight) other than the
    recipe's, for ``grid.beta_seeds`` (default ``train.seeds``)."""
    if "pro" not in recipe.train.algos:
        return []
    betas = [b for b in recipe.grid.beta_ablation if b != recipe.train.sft_weight]
    seeds = recipe.grid.beta_seeds or recipe.train.seeds
    lengths = sorted(recipe.data.ranking_lengths)
    return [GridCell("pro", n, budget // n, seed, sft_weight=float(beta))
            for seed in seeds for beta in betas for budget in recipe.grid.equal_budgets for n in lengths]


def all_cells(recipe: Recipe) -> list[GridCell]:
    """What ``divscale grid`` runs: the grid (runs.csv) and the β ablation (beta_ablation.csv)."""
    return expand_grid(recipe) + expand_ablation(recipe)


def cell_keys(recipe: Recipe) -> dict:
    """The key columns every row of the recipe's table must carry now (:func:`divscale.study.pipeline.table_keys`;
    builds or loads the splits, both RMs, the rankings and the initial policy: the steps every cell shares,
    done once here rather than raced by parallel cells)."""
    from divscale.study import pipeline

    return pipeline.table_keys(recipe)


def stale_keys(row: dict, keys: dict) -> list[str]:
    """The key columns in which a cell's row differs from ``keys`` (empty: the row is current)."""
    return [f"{k}={row.get(k)} (now {v})" for k, v in keys.items() if row.get(k) != v]


def recipe_dirs(recipe: Recipe) -> dict[str, Path]:
    """Where a recipe's build products go."""
    base = paths.RUNS_DIR / recipe.name
    return {"base": base, "cells": base / "cells", "notebooks": base / "notebooks",
            "results": paths.RESULTS_DIR / recipe.name, "figures": paths.FIGURES_DIR / recipe.name}


def cell_result_path(recipe: Recipe, cell: GridCell, keys: dict | None = None) -> Path:
    return recipe_dirs(recipe)["cells"] / f"{cell.cell_id(recipe, keys)}.json"


def cell_status(recipe: Recipe, cell: GridCell, keys: dict) -> str:
    """``done`` (a current row), ``stale`` (a row made from other inputs than ``keys``) or ``todo``."""
    path = cell_result_path(recipe, cell, keys)
    if not path.exists():
        return "todo"
    return "stale" if stale_keys(json.loads(path.read_text()), expected_keys(recipe, cell, keys)) else "done"


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


def collect_results(recipe: Recipe, keys: dict | None = None) -> Path:
    """Rebuild ``results/<recipe>/runs.csv`` from the recipe's completed cells (atomic); result files of
    cells that are no longer in the grid (an edited recipe, older RMs, policy or code) stay on disk but are
    left out. Refuses (:class:`divscale.provenance.StaleResultsError`, naming the stale cells) when a row
    disagrees with ``keys`` (default: the current :func:`cell_keys`) or with the other rows."""
    from divscale.provenance import check_table_keys
    from divscale.report.analysis import results_frame, write_results

    keys = cell_keys(recipe) if keys is None else keys
    dirs = recipe_dirs(recipe)

    def rows_of(cells, expected, table):
        done = [cell_result_path(recipe, c, keys) for c in cells]
        rows = [json.loads(p.read_text()) for p in done if p.exists()]      # this grid's cells only
        check_table_keys(rows, f"{dirs['results'] / table} (from {dirs['cells']})", expected=expected,
                         columns=list(expected),
                         fix=f"Run `divscale grid --recipe {recipe.name}`: it redoes stale cells.")
        for row in rows:                   # results tables hold project-relative paths, not machine paths
            for key in ("run_dir", "eval_dir"):
                if key in row:
                    row[key] = paths.project_relative(row[key])
        return rows

    out = dirs["results"] / "runs.csv"
    write_results(out, results_frame(rows_of(expand_grid(recipe), keys, "runs.csv")))
    ablation = expand_ablation(recipe)
    if ablation:
        # a β cell's row is keyed by its own recipe (train.sft_weight differs): one key set per β
        rows = []
        for beta in sorted({c.sft_weight for c in ablation}):
            expected = ablation_keys(recipe, beta, keys)
            rows += rows_of([c for c in ablation if c.sft_weight == beta], expected, BETA_TABLE)
        write_results(dirs["results"] / BETA_TABLE, results_frame(rows))
    return out


BETA_TABLE = "beta_ablation.csv"


def ablation_keys(recipe: Recipe, beta: float, keys: dict) -> dict:
    """The key columns of a β-ablation row: the grid's, with the recipe key of train.sft_weight = β."""
    from divscale.study.pipeline import recipe_key

    return keys | {"key_recipe": recipe_key(_with_beta(recipe, beta))}


def expected_keys(recipe: Recipe, cell: GridCell, keys: dict) -> dict:
    """The key columns ``cell``'s row must carry: ``keys`` for a grid cell, :func:`ablation_keys` for a β cell."""
    return keys if cell.sft_weight is None else ablation_keys(recipe, cell.sft_weight, keys)


def _with_beta(recipe: Recipe, beta: float) -> Recipe:
    import copy

    other = copy.deepcopy(recipe)
    other.train.sft_weight = float(beta)
    return other


def run_grid(recipe_name: str, overrides: dict | None = None, jobs: int = 1, executor: str = "local",
             cells: list[GridCell] | None = None, notebook: Path | None = None,
             slurm_options: dict | None = None, keys: dict | None = None) -> dict:
    """Run all missing and stale cells; returns counts of done / skipped / stale / failed cells.

    ``keys``: what the rows must be made from (default :func:`cell_keys`, built here once before any cell
    starts). A cell whose result file holds a row made from other inputs is stale: its file is removed and the
    cell redone."""
    from tqdm.auto import tqdm

    from divscale.train.runs import launches

    overrides = overrides or {}
    recipe = load_recipe(recipe_name, overrides)
    if launches(recipe) and executor == "local" and jobs > 1:
        raise ValueError(f"recipe {recipe.name} trains each cell on {recipe.train.num_processes} processes (all of a "
                         f"node's GPUs): run one cell at a time (-j 1), or --executor slurm for one node per cell")
    keys = cell_keys(recipe) if keys is None else keys
    cells = cells if cells is not None else all_cells(recipe)
    status = {c: cell_status(recipe, c, keys) for c in cells}
    todo = [c for c in cells if status[c] != "done"]
    for c in todo:
        if status[c] == "stale":
            cell_result_path(recipe, c, keys).unlink()
    result_paths = {c: cell_result_path(recipe, c, keys) for c in todo}
    notebook = Path(notebook or paths.NOTEBOOKS_DIR / FINETUNE_NOTEBOOK)
    outs = {c: recipe_dirs(recipe)["notebooks"] / f"{c.cell_id(recipe, keys)}.ipynb" for c in todo}
    summary = {"cells": len(cells), "skipped": len(cells) - len(todo), "done": 0, "failed": [],
               "stale": sum(1 for c in todo if status[c] == "stale")}
    if not todo:
        collect_results(recipe, keys)
        return summary

    if executor == "slurm" or executor == "submitit-local":
        import submitit

        folder = recipe_dirs(recipe)["base"] / "submitit"
        ex = submitit.AutoExecutor(folder=folder, cluster="local" if executor == "submitit-local" else None)
        ex.update_parameters(**(slurm_options or slurm_defaults(recipe, jobs)))
        jobs_ = ex.map_array(execute_cell, [recipe_name] * len(todo), [overrides] * len(todo), todo,
                             [notebook] * len(todo), [result_paths[c] for c in todo],
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
            futures = {pool.submit(execute_cell, recipe_name, overrides, c, notebook, result_paths[c],
                                   outs[c]): c for c in todo}
            for fut in as_completed(futures):
                cell = futures[fut]
                try:
                    fut.result()
                    summary["done"] += 1
                except Exception as err:  # noqa: BLE001 - reported, others continue
                    summary["failed"].append((cell, str(err).strip().splitlines()[-1] if str(err) else repr(err)))
                bar.update(1)
                _collect_quietly(recipe, keys, summary)
    _collect_quietly(recipe, keys, summary)
    return summary


def slurm_defaults(recipe: Recipe, jobs: int) -> dict:
    """submitit parameters of a cell's job: a day, ``jobs`` at once; a recipe whose cells launch on several
    processes gets one task holding ``train.num_processes`` GPUs of a node (the notebook launches on all of them)."""
    from divscale.train.runs import launches

    out = {"timeout_min": 24 * 60, "slurm_array_parallelism": jobs}
    if launches(recipe):
        out.update(nodes=1, tasks_per_node=1, gpus_per_node=recipe.train.num_processes)
    return out


def _collect_quietly(recipe: Recipe, keys: dict, summary: dict) -> None:
    """Rebuild the table; a cell whose notebook wrote a row from other inputs than ``keys`` (e.g. an RM
    rebuilt meanwhile) is reported as failed and its file removed, so the next run redoes it."""
    from divscale.provenance import StaleResultsError

    try:
        collect_results(recipe, keys)
    except StaleResultsError:
        for cell in all_cells(recipe):
            path = cell_result_path(recipe, cell, keys)
            row = json.loads(path.read_text()) if path.exists() else None
            why = stale_keys(row, expected_keys(recipe, cell, keys)) if row is not None else []
            if why:
                path.unlink()
                summary["failed"].append((cell, "its row was made from other inputs than the grid's: "
                                          + "; ".join(why)))
        collect_results(recipe, keys)


def artifact_fingerprints(recipe: Recipe) -> dict:
    """Content hashes of every artifact the grid's cells share, in pipeline order, beside what the machine
    is (CPU capability, threads, library versions): MiniLM embeddings of the grid prompts' responses, the RM
    heads, SmolLM2's generations, the RM_train-ordered rankings, the warmed-up policy, and the code versions.
    Two builds agree on one machine kind; where they differ across machines, the first differing entry is
    the step that diverged."""
    import platform

    import torch

    from divscale.provenance import STEPS, code_version, library_versions, sha256_hex, sha256_json
    from divscale.study import pipeline
    from divscale.train.runs import ranking_record

    rm_train, rm_test = pipeline.reward_models(recipe)
    ranked = pipeline.rankings4(recipe)
    out: dict = {"recipe": recipe.name,
                 "machine": {"cpu": torch.backends.cpu.get_cpu_capability(), "arch": platform.machine(),
                             "torch_threads": torch.get_num_threads(), "libraries": library_versions()},
                 "code": {step: code_version(step) for step in STEPS}}
    cache = getattr(rm_train, "cache", None)
    if cache is not None:
        texts = sorted({x for r in ranked for x in r.responses})
        out["embeddings"] = sha256_hex(cache.encode(texts).tobytes(), 16)
    out["rm_train"] = getattr(rm_train, "fingerprint", None)
    out["rm_test"] = getattr(rm_test, "fingerprint", None)
    generated = [[r.id, sorted(x for x, src in zip(r.responses, r.sources) if not src.startswith("human"))]
                 for r in sorted(ranked, key=lambda r: r.id)]
    out["generations"] = sha256_json(generated)[:16]
    out["rankings"] = sha256_json([ranking_record(r) for r in ranked])[:16]
    out["policy"] = pipeline.policy_fingerprint(recipe)
    out["eval_key"] = pipeline.eval_key(recipe)
    return out


def _fingerprint_in(recipe_name: str, overrides: list[str], folder: Path, env: dict, warm: list[str] = ()) -> dict:
    """``divscale grid --fingerprint`` in a subprocess with its own empty cache and runs folder (the model
    files converted from wheels are linked in: they are inputs, not products); ``warm``: overrides of a first
    build into the same cache, so that it starts pre-warmed differently (as `make test` warms it)."""
    import os
    import subprocess

    from divscale.paths import cache_dir

    cache = folder / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("models", "wheels"):
        src = cache_dir() / name
        if src.exists() and not (cache / name).exists():
            (cache / name).symlink_to(src)
    env = os.environ | {"DIVSCALE_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "false"} | env

    def run(sets: list[str]) -> dict:
        cmd = [sys.executable, "-m", "divscale.cli", "grid", "--recipe", recipe_name, "--fingerprint",
               "--runs-dir", str(folder / "runs"), *[x for o in sets for x in ("--set", o)]]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout[proc.stdout.index("{"):])

    if warm:
        run(list(overrides) + list(warm))
    return run(list(overrides))


def verify_builds(recipe_name: str, overrides: list[str] = (), workdir: str | Path | None = None,
                  warm: list[str] = ("reward.max_pairs=40", "data.sizes=[12]", "grid.primary.budget=null")) -> dict:
    """Build the shared artifacts twice from empty caches and compare their hashes: build ``a`` pre-warmed by
    a different build (fewer RM pairs, fewer grid prompts: embeddings and generations cached in other batches)
    on one thread, build ``b`` cold on two threads (the warm build declares no primary contrast: its grid is too
    small for one, and the grid section is not part of any artifact's key). Returns ``{"a": ..., "b": ..., "differ": [keys]}``."""
    import tempfile

    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="divscale-verify-"))
    a = _fingerprint_in(recipe_name, list(overrides), root / "a", {"OMP_NUM_THREADS": "1"}, list(warm))
    b = _fingerprint_in(recipe_name, list(overrides), root / "b", {"OMP_NUM_THREADS": "2"})
    skip = {"machine"}
    differ = [k for k in a if k not in skip and a[k] != b.get(k)]
    return {"a": a, "b": b, "differ": differ, "workdir": str(root)}


def list_cells(recipe: Recipe) -> list[tuple[str, str, str]]:
    """``(status, cell, detail)`` per cell from the cell files that exist, building nothing (see the module
    docstring): ``todo`` (no file for the cell), ``stale`` (a file whose recipe or code keys differ from now) or
    ``unverified`` (a file current by those; its RM, policy and rankings keys are checked when the grid runs)."""
    from divscale.provenance import code_version
    from divscale.study.pipeline import recipe_key

    folder = recipe_dirs(recipe)["cells"]
    code = {"key_code_train": code_version("train"), "key_code_eval": code_version("eval")}
    recipe_keys: dict = {}
    out = []
    for cell in all_cells(recipe):
        tag = cell.tag()
        beta = cell.sft_weight
        if beta not in recipe_keys:
            recipe_keys[beta] = recipe_key(recipe if beta is None else _with_beta(recipe, beta))
        want = code | {"key_recipe": recipe_keys[beta]}
        files = sorted(folder.glob(f"{tag}-*.json"), key=lambda f: f.stat().st_mtime, reverse=True) \
            if folder.exists() else []
        files = [f for f in files if f.stem[len(tag) + 1:].isalnum() and len(f.stem) == len(tag) + 9]
        if not files:
            out.append(("todo", tag, "no result yet"))
            continue
        rows = [(f, json.loads(f.read_text())) for f in files]
        current = [(f, row) for f, row in rows if not stale_keys(row, want)]
        if current:
            f, row = current[0]
            more = f" ({len(files) - 1} other file(s) for this cell)" if len(files) > 1 else ""
            detail = (f"result of {row.get('created', '?')}; RM/policy/rankings keys not checked without "
                      f"building them{more}")
            out.append(("unverified", f.stem, detail))
        else:
            f, row = rows[0]
            out.append(("stale", f.stem, "; ".join(stale_keys(row, want))))
    return out


def command(args) -> int:
    if (args.json or args.measured) and not args.plan:
        flag = "--json" if args.json else "--measured"
        raise ValueError(f"{flag} goes with --plan; without --plan `divscale grid` runs the whole grid. Fix: add "
                         f"--plan (or drop {flag} to run the grid)")
    overrides = parse_overrides(args.set)
    recipe = load_recipe(args.recipe, overrides)
    if args.plan:
        from divscale.tools.gpu_plan import print_plan

        measured = None
        if args.measured:
            try:
                measured = json.loads(Path(args.measured).read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"--measured {args.measured}: not a readable JSON file ({type(err).__name__}: "
                                 f"{err}). Fix: pass the JSON `make gpu-check` wrote") from None
        print_plan(recipe, all_cells(recipe), as_json=args.json, measured=measured)
        return 0
    if args.verify:
        report = verify_builds(args.recipe, args.set)
        print(json.dumps(report, indent=2))
        if report["differ"]:
            print(f"verify {recipe.name}: the builds differ in {report['differ']}", file=sys.stderr)
            return 1
        print(f"verify {recipe.name}: two builds from empty caches agree on every artifact "
              f"({', '.join(k for k in report['a'] if k != 'machine')})", file=sys.stderr)
        return 0
    if args.fingerprint:
        if args.runs_dir:
            paths.RUNS_DIR = Path(args.runs_dir)
        print(json.dumps(artifact_fingerprints(recipe), indent=2))
        return 0
    if args.list:
        for status, cell, detail in list_cells(recipe):
            print(f"{status}\t{cell}\t{detail}")
        return 0
    start = time.time()
    summary = run_grid(args.recipe, overrides, jobs=args.jobs, executor=args.executor)
    print(f"grid {recipe.name}: {summary['cells']} cells, {summary['skipped']} already complete, "
          f"{summary['done']} run ({summary['stale']} of them stale), {len(summary['failed'])} failed in {time.time() - start:.0f} s; "
          f"results: {recipe_dirs(recipe)['results'] / 'runs.csv'}")
    for cell, msg in summary["failed"]:
        print(f"  FAILED {cell}: {msg}", file=sys.stderr)
    return 1 if summary["failed"] else 0
