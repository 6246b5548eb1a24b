"""`divscale grid`: cells expanded from the recipe, complete cells skipped, a killed cell redone while the
others are kept, the results table rebuilt atomically; the submitit executor runs the same code path."""
from __future__ import annotations

import json

import nbformat
import pandas as pd
import pytest

from divscale import grid_runner, paths
from divscale.config import load_recipe

FAKE_CELL = '''
import json, os, pathlib
row = {"run_id": f"{algo}-n{ranking_len}-k{n_prompts}-s{seed}", "recipe": recipe, "algo": algo,
       "ranking_len": ranking_len, "n_prompts": n_prompts, "seed": seed, "status": "ok",
       "reward_global": 50.0 + ranking_len + n_prompts / 100 + seed / 1000}
flag = pathlib.Path(os.environ["FAKE_GRID_DIR"]) / "kill-once"
if algo == "pro" and ranking_len == 4 and flag.exists():
    flag.unlink()
    raise SystemExit("killed")
'''


@pytest.fixture()
def fake_notebook(tmp_path, monkeypatch):
    """A stand-in for 04_finetune with the same parameters (papermill injects them), writing the row last."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('recipe = "cpu"\nalgo = "pro"\nranking_len = 2\nn_prompts = 1\nseed = 0\n'
                                       'overrides = "{}"\nresult_path = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(FAKE_CELL),
                nbformat.v4.new_code_cell("pathlib.Path(result_path).write_text(json.dumps(row))")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "fake.ipynb"
    nbformat.write(nb, path)
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(paths, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setenv("FAKE_GRID_DIR", str(tmp_path))
    return path


SMALL = {"train.algos": "[sft, pro]", "train.seeds": "[1]", "data.sizes": "[24, 48]", "data.ranking_lengths": "[2, 4]"}


def test_expand_grid_is_the_full_product_in_a_stable_order():
    recipe = load_recipe("cpu")
    cells = grid_runner.expand_grid(recipe)
    t, d = recipe.train, recipe.data
    assert len(cells) == len(t.algos) * len(t.seeds) * len(d.sizes) * len(d.ranking_lengths)
    assert len({c.cell_id(recipe) for c in cells}) == len(cells)
    assert cells == grid_runner.expand_grid(load_recipe("cpu"))
    assert [c.seed for c in cells] == sorted(c.seed for c in cells)          # one seed of every cell first


def test_cell_id_changes_with_the_recipe():
    a, b = load_recipe("smoke"), load_recipe("smoke", {"train.max_steps": 5})
    cell = grid_runner.expand_grid(a)[0]
    assert cell.cell_id(a) != cell.cell_id(b)


def test_killed_cell_is_redone_and_the_others_kept(fake_notebook, tmp_path):
    (tmp_path / "kill-once").write_text("")
    first = grid_runner.run_grid("smoke", SMALL, jobs=2, notebook=fake_notebook)
    assert first["cells"] == 8 and first["done"] == 7 and len(first["failed"]) == 1    # the killed one
    recipe = load_recipe("smoke", SMALL)
    table = pd.read_csv(tmp_path / "results" / "smoke" / "runs.csv")
    assert len(table) == 7 and set(table["ranking_len"]) == {2, 4}
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs" / "smoke" / "cells").glob("*.json")}
    second = grid_runner.run_grid("smoke", SMALL, jobs=2, notebook=fake_notebook)
    assert second == {"cells": 8, "skipped": 7, "done": 1, "failed": []}
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())            # completed cells untouched
    table = pd.read_csv(tmp_path / "results" / "smoke" / "runs.csv")
    assert len(table) == 8 and table["run_id"].is_unique
    third = grid_runner.run_grid("smoke", SMALL, notebook=fake_notebook)
    assert third["skipped"] == 8 and third["done"] == 0
    for cell in grid_runner.expand_grid(recipe):
        row = json.loads(grid_runner.cell_result_path(recipe, cell).read_text())
        assert row["reward_global"] == pytest.approx(50.0 + cell.ranking_len + cell.n_prompts / 100 + cell.seed / 1000)
    assert not list((tmp_path / "results" / "smoke").glob(".*tmp*"))          # no temporary files left behind


def test_submitit_local_executor_runs_the_same_cells(fake_notebook, tmp_path):
    pytest.importorskip("submitit")
    small = dict(SMALL, **{"data.sizes": "[24]", "data.ranking_lengths": "[2]", "train.algos": "[sft]"})
    summary = grid_runner.run_grid("smoke", small, executor="submitit-local", notebook=fake_notebook)
    assert summary["done"] == 1 and not summary["failed"]
    assert len(pd.read_csv(tmp_path / "results" / "smoke" / "runs.csv")) == 1


def test_cli_lists_cells(capsys):
    from divscale import cli

    assert cli.main(["grid", "--recipe", "smoke", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(grid_runner.expand_grid(load_recipe("smoke")))
