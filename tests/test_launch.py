"""Cells that train on several processes: the launch command, and that stopping whatever launched it (a killed
notebook kernel, a stopped grid) stops the launched processes too. `accelerate launch` with 2 CPU processes (gloo)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import nbformat
import psutil
import pytest

from divscale import paths
from divscale.config import load_recipe
from divscale.study import grid as grid_runner
from divscale.train import runs as train

DDP = paths.RECIPES_DIR / "accelerate" / "ddp.yaml"
SLEEPER = textwrap.dedent("""
    import os, pathlib, sys, time
    pathlib.Path(sys.argv[1], f"rank{os.environ['RANK']}.pid").write_text(str(os.getpid()))
    time.sleep(600)
""")


def test_launch_command_of_a_recipe_on_several_processes():
    two = load_recipe("smoke", {"train.num_processes": 2})
    cmd = train.launch_command(two, "smoke", "pro", 4, 24, 42, runs_dir="/r", progress=True)
    assert cmd[:6] == ["accelerate", "launch", "--config_file", str(DDP), "--num_processes", "2"]   # default: DDP
    assert cmd[6:9] == ["-m", "divscale.cli", "train"] and cmd[-3:] == ["--runs-dir", "/r", "--progress"]
    assert train.launches(two) and train.launches(load_recipe("paper-opt-1.3b"))
    assert not train.launches(load_recipe("smoke")) and train.launch_command(load_recipe("smoke"), "smoke", "sft", 2,
                                                                            24, 42)[0] == sys.executable


def test_a_launched_recipe_runs_one_cell_at_a_time_and_asks_slurm_for_its_gpus(monkeypatch):
    with pytest.raises(ValueError, match=r"on 2 processes .* one cell at a time \(-j 1\)"):
        grid_runner.run_grid("smoke", {"train.num_processes": 2}, jobs=2, keys={})
    assert grid_runner.slurm_defaults(load_recipe("paper-llama-7b"), 3) == {
        "timeout_min": 1440, "slurm_array_parallelism": 3, "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 7}
    assert "gpus_per_node" not in grid_runner.slurm_defaults(load_recipe("smoke"), 1)
    submitit = pytest.importorskip("submitit")
    asked = {}

    class Recorder:
        def __init__(self, folder, cluster=None):
            pass

        def update_parameters(self, **kwargs):
            asked.update(kwargs)
            raise RuntimeError("recorded")

    monkeypatch.setattr(submitit, "AutoExecutor", Recorder)
    monkeypatch.setattr(paths, "RUNS_DIR", paths.ROOT / "runs" / ".test-launch")
    with pytest.raises(RuntimeError, match="recorded"):
        grid_runner.run_grid("smoke", {"train.num_processes": 2, "data.sizes": "[24]", "data.ranking_lengths": "[2]",
                                       "train.algos": "[sft]", "grid.verdict_seeds": "[]", "grid.beta_ablation": "[]",
                                       "grid.primary.budget": "null"},
                             executor="slurm", keys={})
    assert asked["gpus_per_node"] == 2 and asked["tasks_per_node"] == 1


def _wait_for(files, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if all(f.exists() and f.read_text() for f in files):
            return [int(f.read_text()) for f in files]
        time.sleep(0.5)
    raise AssertionError(f"{files} never appeared")


def _gone(pids, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(0.5)
    return alive


def _sleeper_command(tmp_path):
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    return ["accelerate", "launch", "--config_file", str(DDP), "--num_processes", "2",
            "--main_process_port", str(train._free_port()), str(tmp_path / "sleeper.py"), str(tmp_path)]


@pytest.mark.slow
def test_a_launched_training_dies_with_the_process_that_launched_it(tmp_path):
    """SIGKILL (no cleanup at all) of the process that called run_launched: the launcher gets SIGTERM from the
    kernel (PR_SET_PDEATHSIG) and torchrun's agent stops both workers."""
    cmd = _sleeper_command(tmp_path)
    code = f"from divscale.train.runs import run_launched; run_launched({cmd!r})"
    driver = subprocess.Popen([sys.executable, "-c", code], cwd=paths.ROOT)
    workers = _wait_for([tmp_path / "rank0.pid", tmp_path / "rank1.pid"])
    launcher = [p.pid for p in psutil.Process(driver.pid).children(recursive=True)]
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    assert _gone(workers + launcher) == []


@pytest.mark.slow
def test_stopping_the_grid_stops_the_notebook_and_what_it_launched(tmp_path):
    """SIGTERM to a running grid whose cell (a notebook, as 04_finetune) launched a 2-process training: the kernel,
    the launcher and both ranks (torchrun starts them in sessions of their own) all stop."""
    cmd = _sleeper_command(tmp_path)
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('recipe = "smoke"\nalgo = "sft"\nranking_len = 2\nn_prompts = 24\nseed = 42\n'
                                       'overrides = "{}"\nresult_path = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(f"from divscale.train.runs import run_launched\n"
                                                  f"run_launched({cmd!r})")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "cell.ipynb")
    small = {"data.sizes": "[24]", "data.ranking_lengths": "[2]", "train.algos": "[sft]", "grid.verdict_seeds": "[]",
             "grid.beta_ablation": "[]", "grid.primary.budget": "null"}
    script = (f"import pathlib\nfrom divscale import paths\nfrom divscale.signals import stop_children_on_signal\n"
              f"from divscale.study import grid\n"
              f"paths.RUNS_DIR = pathlib.Path({str(tmp_path / 'runs')!r})\n"
              f"paths.RESULTS_DIR = pathlib.Path({str(tmp_path / 'results')!r})\n"
              f"with stop_children_on_signal():                 # what every divscale command runs in\n"
              f"    grid.run_grid('smoke', {small!r}, notebook=pathlib.Path({str(tmp_path / 'cell.ipynb')!r}), "
              f"keys={{}})\n")
    env = os.environ | {"PYTHONPATH": str(paths.ROOT)}     # the kernel imports this checkout's divscale
    driver = subprocess.Popen([sys.executable, "-c", script], cwd=paths.ROOT, stderr=subprocess.PIPE, text=True,
                              env=env)
    workers = _wait_for([tmp_path / "rank0.pid", tmp_path / "rank1.pid"], timeout=180)
    tree = [p.pid for p in psutil.Process(driver.pid).children(recursive=True)]    # the kernel, accelerate, ...
    driver.send_signal(signal.SIGTERM)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 128 + signal.SIGTERM and "SIGTERM: stopping every process" in err
    assert _gone(workers + tree) == []
    assert not list((tmp_path / "runs").rglob("cells/*.json"))                  # the cell is not marked done


def test_launch_cell_hands_the_exact_recipe_to_the_launched_processes(tmp_path, monkeypatch):
    """The launched `divscale train` reads the recipe from a file: the same recipe (overrides included, same hash,
    so the same caches and run key), with a free rendezvous port; the run directory is the one it prints."""
    recipe = load_recipe("paper-opt-1.3b", {"train.max_steps": 7, "data.sizes": "[12]", "train.learning_rate": "3e-5"})
    seen = {}
    done = tmp_path / "runs" / "train" / "pro-n4-k12-s42-abc"
    done.mkdir(parents=True)
    (done / "DONE").write_text("")

    def fake_run(cmd):
        seen["cmd"] = cmd
        return ["some log line", str(done), ""]

    monkeypatch.setattr(train, "run_launched", fake_run)
    assert train.launch_cell(recipe, "pro", 4, 12, 42, runs_dir=tmp_path / "runs") == done
    cmd = seen["cmd"]
    assert cmd[:4] == ["accelerate", "launch", "--main_process_port", cmd[3]] and int(cmd[3]) > 0
    assert cmd[cmd.index("--config_file") + 1] == str(paths.RECIPES_DIR / "accelerate" / "zero2.yaml")
    spec = cmd[cmd.index("--recipe") + 1]
    again = load_recipe(spec)
    assert again.hash() == recipe.hash() and again.name == "paper-opt-1.3b" and again.train.max_steps == 7
    monkeypatch.setattr(train, "run_launched", lambda cmd: ["no run directory here"])
    with pytest.raises(RuntimeError, match="without printing a completed run directory"):
        train.launch_cell(recipe, "pro", 4, 12, 42, runs_dir=tmp_path / "runs")
