"""The declared primary contrast (recipe grid.primary): checked when the recipe is built, shown from the recipe."""
from __future__ import annotations

import pytest

from divscale.config import RecipeError, load_recipe
from divscale.report import publish as summary
from divscale.study import grid as grid_runner


@pytest.mark.parametrize("name,cells", [("cpu", {"hi": (4, 60), "lo": (2, 120), "mid": (2, 60)}),
                                        ("smoke", {"hi": (4, 24), "lo": (2, 48), "mid": (2, 24)})])
def test_the_study_recipes_declare_their_primary_contrast(name, cells):
    r = load_recipe(name)
    assert r.grid.primary.declared and r.grid.primary.algo == "pro" and r.grid.primary.cells() == cells
    trained = {(c.ranking_len, c.n_prompts) for c in grid_runner.expand_grid(r) if c.seed in r.grid.verdict_seeds}
    assert set(cells.values()) <= trained                     # every primary cell gets the verdict seeds


@pytest.mark.parametrize("overrides,message", [
    ({"grid.primary.budget": 200}, "grid.primary.budget=200 is not in grid.equal_budgets [240]"),
    ({"grid.primary.algo": "sft"}, "grid.primary.algo=sft is not in train.algos ['pro']"),
    ({"grid.primary.n_hi": 3}, "grid.primary's n [3] not in data.ranking_lengths [2, 4]"),
    ({"grid.primary.n_hi": 2}, "grid.primary needs n_hi > n_lo >= 2"),
    ({"grid.contrast_sizes": []}, "grid.primary's cell(s) [(2, 60)] get no grid.verdict_seeds (one run: no CI); "
                                  "add [60] to grid.contrast_sizes"),
    ({"data.sizes": [12, 120, 240], "grid.contrast_sizes": []}, "grid.primary's cells need sizes [60], not in data.sizes"),
])
def test_a_declaration_that_does_not_fit_the_grid_is_a_one_line_error(overrides, message):
    with pytest.raises(RecipeError) as err:
        load_recipe("cpu", overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_key_of_the_declaration_is_refused():
    with pytest.raises(RecipeError, match=r"unknown key\(s\) \['grid.primary.n_high'\]"):
        load_recipe("cpu", {"grid.primary.n_high": 4})


def test_no_declaration_is_allowed_and_changes_no_cell():
    plain = load_recipe("cpu", {"grid.primary.budget": None})
    assert not plain.grid.primary.declared and summary.primary_declaration(plain.grid.primary) is None
    assert "No primary contrast is declared" in summary.declaration_markdown(None, "cpu")
    declared = load_recipe("cpu")
    keys = {"k": "v"}                                          # the grid section is not part of a cell's identity
    cell = grid_runner.expand_grid(declared)[0]
    assert cell.cell_id(declared, keys) == cell.cell_id(plain, keys)


def test_the_declaration_shown_in_05_comes_from_the_recipe():
    d = summary.primary_declaration(load_recipe("cpu").grid.primary)
    assert d == {"algo": "pro", "budget": 240, "n_hi": 4, "n_lo": 2, "k_hi": 60, "k_lo": 120}
    text = summary.declaration_markdown(d, "cpu")
    assert "PRO at an equal budget of 240 responses, the cell (n = 4, 60 prompts) minus the cell (n = 2, 120 " \
           "prompts)" in text and "(n = 2, 60 prompts) minus (n = 2, 120 prompts)" in text
    other = summary.declaration_markdown(summary.primary_declaration(
        load_recipe("cpu", {"grid.equal_budgets": [480], "grid.primary.budget": 480, "data.sizes": [12, 60, 120, 240],
                            "grid.contrast_sizes": [120]}).grid.primary), "cpu")
    assert "480 responses, the cell (n = 4, 120 prompts) minus the cell (n = 2, 240 prompts)" in other
