"""The notebooks: jupytext pairs in sync, and every notebook executed with papermill at the smoke profile,
in the order `make figures` runs them (the grid runs 04_finetune once per cell)."""
from __future__ import annotations

import json

import nbformat
import pytest

from divscale import paths
from divscale.config import load_recipe
from divscale.study import grid as grid_runner
from divscale.study import notebook_runner as notebooks


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
    ablation = grid_runner.expand_ablation(recipe)          # β cells: their own table, keyed by their own recipe
    assert ablation and all(grid_runner.cell_status(recipe, c, grid_runner.cell_keys(recipe)) == "done"
                            for c in ablation)
    beta = (paths.RESULTS_DIR / "smoke" / grid_runner.BETA_TABLE).read_text().splitlines()
    assert len(beta) == 1 + len(ablation)
    for name in ("05_allocation", "06_diversity_regression", "07_augmentation", "08_selection", "09_listwise",
                 "10_budget_planner"):
        notebooks.run_notebook(name, "smoke")
    for fig in ("diversity_by_size", "reward_models", "allocation_pro", "allocation_sft", "reward_vs_diversity_pro",
                "exponent_fit", "paper_refit_pro", "augmentation", "selection", "listwise", "budget_crossover",
                "variance_short_answers", "beta_ablation", "budget_decomposition"):
        for ext in ("png", "pdf"):
            path = figures / f"{fig}.{ext}"
            assert path.exists() and path.stat().st_size > 2000, path
    executed = nbformat.read(notebooks.executed_path("06_diversity_regression", "smoke"), as_version=4)
    text = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert "mean MSE" in text and "Error" not in text
    answers = (paths.RESULTS_DIR / "smoke" / "answers.jsonl").read_text().splitlines()
    assert {json.loads(line)["policy"] for line in answers} >= {"initial policy"}
    for name in ("01_data_construction", "02_prompt_diversity", "03_reward_models", "05_allocation",
                 "06_diversity_regression", "07_augmentation", "08_selection", "10_budget_planner"):
        assert output_clutter(nbformat.read(notebooks.executed_path(name, "smoke"), as_version=4)) == [], name


def output_clutter(nb) -> list[str]:
    """What an executed notebook shows that a reader should not see: anything on stderr (warnings, the HH reader's
    notes, progress lines) and a cell's echoed return value that is a list of saved paths."""
    out = []
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            if o.get("name") == "stderr":
                out.append(f"cell {i} stderr: {o.get('text', '')[:120]!r}")
            plain = o.get("data", {}).get("text/plain", "")
            if "PosixPath(" in plain:
                out.append(f"cell {i} echoes paths: {plain[:120]!r}")
    return out


# committed executed notebooks that are known to show clutter still (none)
CLUTTER_NOT_YET: dict[str, str] = {}


@pytest.mark.parametrize("name", [n for n in notebooks.ORDER if n != "04_finetune"])
def test_committed_executed_notebooks_show_no_stderr_or_echoed_paths(name, request):
    """results/cpu/notebooks/ (what `make figures` exports and a reader opens): no warnings, no progress lines,
    no "dropped 2 of 1137 records" in every notebook (01 says it once, on stdout), no echoed PosixPath lists."""
    if name in CLUTTER_NOT_YET:
        request.applymarker(pytest.mark.xfail(reason=CLUTTER_NOT_YET[name], strict=False))
    path = paths.RESULTS_DIR / "cpu" / "notebooks" / f"{name}.ipynb"
    assert output_clutter(nbformat.read(path, as_version=4)) == []


def test_the_clutter_check_sees_stderr_and_echoed_paths():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text="./data/x.gz: dropped 2 of 1137 records\n"),
        nbformat.v4.new_output("execute_result", data={"text/plain": "[PosixPath('./figures/cpu/a.png')]"}),
        nbformat.v4.new_output("stream", name="stdout", text="fine\n")])])
    assert len(output_clutter(nb)) == 2


def test_clean_text_drops_progress_lines_and_machine_paths():
    root = str(paths.ROOT)
    text = (f"loading\nGGUF:   0%|          | 0/272 [00:00<?, ?it/s]\rGGUF: 100%|##########| 272/272 [00:08<00:00]\n"
            f"{root}/divscale/data/hh.py:480: UserWarning: x\n  at {root}/.venv/lib/site-packages/tqdm/auto.py\n"
            "augment:  50%|#####     | 30/60 [00:02<00:02, 14.2it/s]\ndone: 5/10 prompts kept\n")
    got = notebooks.clean_text(text, [(root + "/.venv", "<venv>"), (root, ".")])
    assert got == ("loading\n./divscale/data/hh.py:480: UserWarning: x\n  at <venv>/lib/site-packages/tqdm/auto.py\n"
                   "done: 5/10 prompts kept\n")
    assert notebooks.clean_text("a\rb\rfinal\n") == "final\n"
    mask = ("[transformers] We strongly recommend passing in an `attention_mask` since your input_ids may be padded. "
            "See https://huggingface.co/docs/transformers/troubleshooting\n")
    assert notebooks.clean_text("before\n" + mask + "the attention_mask is fine\n") == "before\nthe attention_mask is fine\n"
    mtime = "[transformers] mtime may not be reliable on this filesystem, falling back to numerical ordering\n"
    assert notebooks.clean_text("saved\n" + mtime + "mtime of results.csv\n") == "saved\nmtime of results.csv\n"


def test_run_notebook_writes_a_lean_machine_free_notebook(tmp_path, monkeypatch):
    """A notebook that warns the split warning, drives a tqdm bar and prints the checkout path comes out with
    none of them: progress bars are off in the kernel, the said-once warning is filtered, paths rewritten."""
    import jupytext

    src = tmp_path / "nb"
    src.mkdir()
    code = ('# %% tags=["parameters"]\nrecipe = "cpu"\noverrides = "{}"\n\n'
            '# %%\nimport warnings\nfrom tqdm.auto import tqdm\nfrom divscale import paths\n'
            'warnings.warn("carving the training pool out of the HH-RLHF test splits because no train split")\n'
            'warnings.warn("another warning stays")\n'
            'for _ in tqdm(range(50)):\n    pass\n'
            'for _ in tqdm(range(50), disable=False, mininterval=0):\n    pass\n'      # a bar asked for explicitly
            'print(paths.ROOT / "results")\n')
    nb = jupytext.reads(code, fmt="py:percent")
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    jupytext.write(nb, src / "99_probe.ipynb", fmt="ipynb")
    monkeypatch.setattr(paths, "NOTEBOOKS_DIR", src)
    out = notebooks.run_notebook("99_probe", "smoke", out=tmp_path / "out.ipynb")
    text = out.read_text()
    executed = nbformat.read(out, as_version=4)
    streams = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "./results" in streams and "another warning stays" in streams
    assert "carving the training pool" not in streams
    assert "it/s" not in text and "%|" not in text and "IProgress" not in text
    assert str(paths.ROOT) not in text and "start_time" not in text and "input_path" not in text
    assert executed.metadata["papermill"]["parameters"]["recipe"] == "smoke"


def test_export_copies_only_the_figure_notebooks(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path / "runs")
    for name in notebooks.notebook_names():
        path = notebooks.executed_path(name, "probe")
        path.parent.mkdir(parents=True, exist_ok=True)
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1", outputs=[
            nbformat.v4.new_output("stream", name="stdout", text=f"{paths.ROOT}/figures\n")])])
        nbformat.write(nb, path)
    written = notebooks.export_executed("probe", out_dir=tmp_path / "results")
    assert [p.stem for p in written] == [n for n in notebooks.notebook_names() if n != "04_finetune"]
    assert all(str(paths.ROOT) not in p.read_text() for p in written)
    with pytest.raises(FileNotFoundError, match="not executed yet"):
        notebooks.export_executed("nothing-here", out_dir=tmp_path / "x")


def test_make_figures_builds_every_figure_notebook_once():
    """BUILD_ORDER (the order `make figures` starts the notebooks in) holds the same notebooks as FIGURE_NOTEBOOKS
    (the ones it exports), each once."""
    import re

    text = (paths.ROOT / "Makefile").read_text().replace("\\\n", " ")
    lists = {name: re.search(rf"^{name} := (.*)$", text, re.M).group(1).split()
             for name in ("FIGURE_NOTEBOOKS", "BUILD_ORDER")}
    assert sorted(lists["BUILD_ORDER"]) == sorted(lists["FIGURE_NOTEBOOKS"])
    assert len(set(lists["BUILD_ORDER"])) == len(lists["BUILD_ORDER"])
    assert set(lists["FIGURE_NOTEBOOKS"]) == set(notebooks.ORDER) - {"04_finetune"}
