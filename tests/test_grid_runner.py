"""`divscale grid`: cells expanded from the recipe, complete cells skipped, a killed cell redone while the
others are kept, the results table rebuilt atomically; the submitit executor runs the same code path."""
from __future__ import annotations

import json
from collections import Counter

import nbformat
import pandas as pd
import pytest

from divscale import paths
from divscale.config import load_recipe
from divscale.study import grid as grid_runner

FAKE_CELL = '''
import json, os, pathlib
row = {"run_id": f"{algo}-n{ranking_len}-k{n_prompts}-s{seed}", "recipe": recipe, "algo": algo,
       "ranking_len": ranking_len, "n_prompts": n_prompts, "seed": seed, "status": "ok",
       "reward_global": 50.0 + ranking_len + n_prompts / 100 + seed / 1000}
# what the real notebook's row carries (divscale.study.pipeline.table_keys): the RMs, policy, code it was made from
row.update(json.loads((pathlib.Path(os.environ["FAKE_GRID_DIR"]) / "keys.json").read_text()))
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
    set_keys(tmp_path, KEYS)
    return path


# stand-ins for divscale.study.pipeline.table_keys (the real ones build both RMs, the rankings and the policy)
KEYS = {"key_recipe": "r1", "key_rm_train": "rmtrain-a", "key_rm_test": "rmtest-a", "key_policy": "pol-a",
        "key_rankings": "rank-a", "key_code_train": "code-a", "key_code_eval": "code-a", "eval_key": "eval-a"}


def set_keys(folder, keys: dict) -> None:
    """What the fake notebook (i.e. the current RMs, policy and code) writes into its rows."""
    (folder / "keys.json").write_text(json.dumps(keys))


@pytest.fixture(autouse=True)
def fixed_keys(monkeypatch):
    """``cell_keys`` without building anything; a test changes it (e.g. a new RM_test) with ``.update``."""
    keys = dict(KEYS)
    monkeypatch.setattr(grid_runner, "cell_keys", lambda recipe: dict(keys))
    return keys


SMALL = {"train.algos": "[sft, pro]", "train.seeds": "[1]", "data.sizes": "[24, 48]", "data.ranking_lengths": "[2, 4]",
         "grid.verdict_seeds": "[]", "grid.beta_ablation": "[]"}


def test_expand_grid_is_the_full_product_in_a_stable_order():
    recipe = load_recipe("cpu", {"grid.verdict_seeds": "[]"})
    cells = grid_runner.expand_grid(recipe)
    t, d = recipe.train, recipe.data
    assert len(cells) == len(t.algos) * len(t.seeds) * len(d.sizes) * len(d.ranking_lengths)
    assert len({c.cell_id(recipe, KEYS) for c in cells}) == len(cells)
    assert cells == grid_runner.expand_grid(load_recipe("cpu", {"grid.verdict_seeds": "[]"}))
    assert [c.seed for c in cells] == sorted(c.seed for c in cells)          # one seed of every cell first


def test_verdict_cells_get_the_extra_seeds_and_only_they():
    recipe = load_recipe("cpu", {"data.sizes": "[12, 60, 80, 120, 240]", "grid.equal_budgets": "[240]",
                                 "grid.contrast_sizes": "[60]", "train.seeds": "[1, 2]",
                                 "grid.verdict_seeds": "[2, 3, 4]", "data.ranking_lengths": "[2, 3, 4]",
                                 "train.algos": "[sft, pro]"})
    cells = grid_runner.expand_grid(recipe)
    per_cell = Counter((c.algo, c.ranking_len, c.n_prompts) for c in cells)
    verdict = {(2, 120), (3, 80), (4, 60), (2, 60)}
    assert set(grid_runner.verdict_cells(recipe)) == verdict
    for (algo, n, k), count in per_cell.items():
        assert count == (4 if (n, k) in verdict else 2), (algo, n, k, count)   # seed 2 is not added twice
    assert len(per_cell) == 2 * 3 * 5
    assert len({c.cell_id(recipe, KEYS) for c in cells}) == len(cells)
    with pytest.raises(ValueError, match="not in data.sizes"):
        grid_runner.expand_grid(load_recipe("cpu", {"grid.contrast_sizes": "[30]", "grid.verdict_seeds": "[9]",
                                                    "grid.primary.budget": "null"}))    # no declaration to check


def test_beta_ablation_cells_override_sft_weight_and_are_keyed_apart():
    recipe = load_recipe("cpu", {"grid.beta_ablation": "[0.0, 0.01, 0.05]", "grid.beta_seeds": "[7]",
                                 "train.sft_weight": 0.05, "data.ranking_lengths": "[2, 3, 4]",
                                 "data.sizes": "[12, 60, 80, 120, 240]"})
    cells = grid_runner.expand_ablation(recipe)
    assert {c.sft_weight for c in cells} == {0.0, 0.01}                     # the recipe's own β is the grid
    assert {(c.ranking_len, c.n_prompts) for c in cells} == {(2, 120), (3, 80), (4, 60)}
    assert all(c.algo == "pro" and c.seed == 7 for c in cells)
    params = cells[0].parameters("cpu", {"eval.bootstrap": 10})
    assert json.loads(params["overrides"]) == {"eval.bootstrap": 10, "train.sft_weight": cells[0].sft_weight}
    base = grid_runner.GridCell("pro", cells[0].ranking_len, cells[0].n_prompts, 7)
    assert base.cell_id(recipe, KEYS) != cells[0].cell_id(recipe, KEYS)
    # the key a β cell's row must carry is the recipe key of its own (overridden) recipe
    from divscale.provenance import config_hash
    from divscale.study import pipeline

    other = load_recipe("cpu", {"grid.beta_ablation": "[0.0, 0.01, 0.05]", "grid.beta_seeds": "[7]",
                                "train.sft_weight": cells[0].sft_weight, "data.ranking_lengths": "[2, 3, 4]",
                                "data.sizes": "[12, 60, 80, 120, 240]"})
    sections = {k: v for k, v in other.to_dict().items() if k in pipeline.RUN_SECTIONS}
    keys = grid_runner.ablation_keys(recipe, cells[0].sft_weight, dict(KEYS))
    assert keys["key_recipe"] == config_hash(sections, length=12)
    assert {k: v for k, v in keys.items() if k != "key_recipe"} == {k: v for k, v in KEYS.items() if k != "key_recipe"}


def test_cell_id_changes_with_the_recipe():
    a, b = load_recipe("smoke"), load_recipe("smoke", {"train.max_steps": 5})
    cell = grid_runner.expand_grid(a)[0]
    assert cell.cell_id(a, KEYS) != cell.cell_id(b, KEYS)


def test_killed_cell_is_redone_and_the_others_kept(fake_notebook, tmp_path):
    (tmp_path / "kill-once").write_text("")
    first = grid_runner.run_grid("smoke", SMALL, jobs=2, notebook=fake_notebook)
    assert first["cells"] == 8 and first["done"] == 7 and len(first["failed"]) == 1    # the killed one
    recipe = load_recipe("smoke", SMALL)
    table = pd.read_csv(tmp_path / "results" / "smoke" / "runs.csv")
    assert len(table) == 7 and set(table["ranking_len"]) == {2, 4}
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs" / "smoke" / "cells").glob("*.json")}
    second = grid_runner.run_grid("smoke", SMALL, jobs=2, notebook=fake_notebook)
    assert second == {"cells": 8, "skipped": 7, "done": 1, "failed": [], "stale": 0}
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
    small = dict(SMALL, **{"data.sizes": "[24]", "data.ranking_lengths": "[2]", "train.algos": "[sft]",
                           "grid.primary.budget": "null"})
    summary = grid_runner.run_grid("smoke", small, executor="submitit-local", notebook=fake_notebook)
    assert summary["done"] == 1 and not summary["failed"]
    assert len(pd.read_csv(tmp_path / "results" / "smoke" / "runs.csv")) == 1


def test_cli_lists_cells(capsys):
    from divscale import cli

    assert cli.main(["grid", "--recipe", "smoke", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(grid_runner.all_cells(load_recipe("smoke")))


def test_cell_id_changes_with_every_key_component():
    recipe = load_recipe("smoke")
    cell = grid_runner.expand_grid(recipe)[0]
    ids = {cell.cell_id(recipe, KEYS)} | {cell.cell_id(recipe, KEYS | {k: "other"}) for k in KEYS}
    assert len(ids) == len(KEYS) + 1


def test_new_rm_test_makes_every_cell_stale_and_the_table_holds_one_eval_key(fake_notebook, tmp_path, fixed_keys):
    """The committed bug: cells scored by an older RM_test counted as complete and runs.csv mixed two evaluations."""
    small = dict(SMALL, **{"train.algos": "[sft]", "grid.primary.budget": "null"})
    first = grid_runner.run_grid("smoke", small, notebook=fake_notebook)
    assert first["done"] == 4 and not first["failed"]
    new = {"key_rm_test": "rmtest-b", "eval_key": "eval-b"}
    fixed_keys.update(new)                                       # RM_test re-trained: a new fingerprint
    set_keys(tmp_path, KEYS | new)
    second = grid_runner.run_grid("smoke", small, notebook=fake_notebook)
    assert second["skipped"] == 0 and second["done"] == 4        # every cell redone, none kept
    table = pd.read_csv(tmp_path / "results" / "smoke" / "runs.csv")
    assert len(table) == 4 and set(table["eval_key"]) == {"eval-b"} and set(table["key_rm_test"]) == {"rmtest-b"}


def test_a_stale_row_in_a_cell_file_is_refused_by_name_and_redone(fake_notebook, tmp_path, fixed_keys):
    small = dict(SMALL, **{"train.algos": "[sft]", "data.ranking_lengths": "[2]", "grid.primary.budget": "null"})
    assert grid_runner.run_grid("smoke", small, notebook=fake_notebook)["done"] == 2
    recipe = load_recipe("smoke", small)
    cell = grid_runner.expand_grid(recipe)[0]
    path = grid_runner.cell_result_path(recipe, cell, fixed_keys)
    row = json.loads(path.read_text())
    path.write_text(json.dumps(row | {"key_rm_test": "rmtest-old", "eval_key": "eval-old"}))   # scored by an old RM
    with pytest.raises(ValueError, match=r"1 of 2 rows.*sft-n2-k24-s1.*key_rm_test=rmtest-old"):
        grid_runner.collect_results(recipe)
    assert grid_runner.cell_status(recipe, cell, fixed_keys) == "stale"
    again = grid_runner.run_grid("smoke", small, notebook=fake_notebook)
    assert again["stale"] == 1 and again["done"] == 1 and again["skipped"] == 1
    table = pd.read_csv(tmp_path / "results" / "smoke" / "runs.csv")
    assert set(table["eval_key"]) == {"eval-a"} and len(table) == 2


def test_rows_that_disagree_among_themselves_are_refused():
    from divscale.provenance import StaleResultsError, check_table_keys

    rows = [{"run_id": f"r{i}", "eval_key": "eval-c52520b0e7"} for i in range(3)] + \
        [{"run_id": "sft-n2-k60-s42", "eval_key": "eval-583055e0db"}]
    with pytest.raises(StaleResultsError, match="sft-n2-k60-s42: eval_key=eval-583055e0db"):
        check_table_keys(rows, "runs.csv")
    check_table_keys(rows[:3], "runs.csv")


def test_a_table_without_key_columns_is_checked_on_its_eval_folders(tmp_path):
    """The committed cpu table: 2 rows point at eval-583055e0db, 70 at eval-c52520b0e7."""
    from divscale.provenance import StaleResultsError
    from divscale.study.pipeline import check_keys

    df = pd.DataFrame({"run_id": [f"pro-{i}" for i in range(4)] + ["sft-n2-k80-s42-83a306b8eb33"],
                       "eval_dir": [f"runs/train/pro-{i}/eval-c52520b0e7" for i in range(4)]
                       + ["runs/train/sft-n2-k80-s42-83a306b8eb33/eval-583055e0db"]})
    with pytest.raises(StaleResultsError, match=r"1 of 5 rows.*sft-n2-k80-s42-83a306b8eb33: eval_key=eval-583055e0db"):
        check_keys(df, tmp_path / "runs.csv", "rerun")
    check_keys(df.iloc[:4], tmp_path / "runs.csv", "rerun")


def test_json_or_measured_without_plan_is_refused_and_runs_nothing(monkeypatch, capsys):
    """`divscale grid --recipe paper-opt-1.3b --json` reads as 'print the plan' but used to start the whole grid."""
    from divscale import cli

    monkeypatch.setattr(grid_runner, "run_grid", lambda *a, **k: pytest.fail("the grid started"))
    for flag in (["--json"], ["--measured", "m.json"]):
        assert cli.main(["grid", "--recipe", "paper-opt-1.3b", *flag]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{flag[0]} goes with --plan" in err and "Fix: add --plan" in err


def test_list_builds_nothing_and_reads_the_cell_files(tmp_path, monkeypatch, capsys):
    """`divscale grid --list` ("runs nothing") keyed every cell by building the splits, RMs, rankings and policy;
    now it reads the files that exist: todo / unverified (current by the keys it can check without building) /
    stale (the recipe's sections or the code changed)."""
    from divscale import cli
    from divscale.provenance import code_version
    from divscale.study import pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("built a shared artifact")

    for name in ("table_keys", "reward_models", "splits", "rankings4", "policy_fingerprint"):
        monkeypatch.setattr(pipeline, name, refuse)
    monkeypatch.setattr(grid_runner, "cell_keys", refuse)
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path / "runs")
    recipe = load_recipe("smoke")
    cells = grid_runner.all_cells(recipe)
    folder = grid_runner.recipe_dirs(recipe)["cells"]
    folder.mkdir(parents=True)
    keys = {"key_recipe": pipeline.recipe_key(recipe), "key_code_train": code_version("train"),
            "key_code_eval": code_version("eval"), "created": "2026-12-01"}
    (folder / f"{cells[0].tag()}-0a1b2c3d.json").write_text(json.dumps(keys))
    (folder / f"{cells[1].tag()}-0a1b2c3e.json").write_text(json.dumps(keys | {"key_recipe": "old"}))
    assert cli.main(["grid", "--recipe", "smoke", "--list"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == len(cells)
    assert lines[0][:2] == ["unverified", f"{cells[0].tag()}-0a1b2c3d"] and "not checked" in lines[0][2]
    assert lines[1][0] == "stale" and "key_recipe=old" in lines[1][2]
    assert {line[0] for line in lines[2:]} == {"todo"}
