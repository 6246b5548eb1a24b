"""The notebooks: jupytext pairs in sync, and every notebook executed with papermill at the smoke profile,
in the order `make figures` runs them (the grid runs 04_finetune once per cell)."""
from __future__ import annotations

import json

import nbformat
import pytest

from divscale import grid_runner, notebooks, paths
from divscale.config import load_recipe


def test_every_notebook_is_paired_and_in_sync():
    assert notebooks.out_of_sync() == []
    assert notebooks.notebook_names() == list(notebooks.ORDER)


def test_each_notebook_has_one_parameters_cell_with_recipe():
    for name in notebooks.notebook_names():
        nb = nbformat.read(paths.NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, name
        assert 'recipe = "cpu"' in params[0].source, name
        assert nb.metadata["kernelspec"]["name"] == "python3"
        # no secrets as parameters: they would be saved into every executed notebook
        assert "key" not in params[0].source.lower() and "token" not in params[0].source.lower()


@pytest.mark.notebooks
@pytest.mark.slow
def test_smoke_profile_executes_every_notebook_and_draws_every_figure():
    recipe = load_recipe("smoke")
    figures = paths.FIGURES_DIR / recipe.name
    for name in ("01_data_construction", "02_prompt_diversity", "03_reward_models"):
        notebooks.run_notebook(name, "smoke")
    summary = grid_runner.run_grid("smoke", jobs=2)
    assert not summary["failed"], summary["failed"]
    cells = grid_runner.expand_grid(recipe)
    assert all(grid_runner.cell_result_path(recipe, c).exists() for c in cells)
    table = (paths.RESULTS_DIR / "smoke" / "runs.csv").read_text().splitlines()
    assert len(table) == 1 + len(cells)
    for name in ("05_allocation", "06_diversity_regression", "07_augmentation", "08_selection"):
        notebooks.run_notebook(name, "smoke")
    for fig in ("diversity_by_size", "reward_models", "allocation_pro", "allocation_sft", "reward_vs_diversity_pro",
                "exponent_fit", "paper_refit_pro", "augmentation", "selection"):
        for ext in ("png", "pdf"):
            path = figures / f"{fig}.{ext}"
            assert path.exists() and path.stat().st_size > 2000, path
    executed = nbformat.read(notebooks.executed_path("06_diversity_regression", "smoke"), as_version=4)
    text = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert "mean MSE" in text and "Error" not in text
