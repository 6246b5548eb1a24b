"""A stop stops everything (divscale.signals): SIGTERM on a divscale command mid-notebook leaves no process of the
run behind -- not the kernel (in its own session), not the multiprocessing worker the notebook started."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigterm_mid_notebook_stops_the_kernel_and_its_workers(tmp_path):
    import jupytext

    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    pids = tmp_path / "pids.json"
    code = ('# %% tags=["parameters"]\nrecipe = "cpu"\noverrides = "{}"\n\n'
            "# %%\nimport json, multiprocessing, os, time\n"
            "worker = multiprocessing.get_context('spawn').Process(target=time.sleep, args=(600,))\n"
            "worker.start()\n"
            "json.dump({'kernel': os.getpid(), 'worker': worker.pid}, open(os.environ['PROBE_PIDS'], 'w'))\n"
            "time.sleep(600)\n")
    nb = jupytext.reads(code, fmt="py:percent")
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    jupytext.write(nb, root / "notebooks" / "99_probe.ipynb", fmt="ipynb")
    env = os.environ | {"DIVSCALE_ROOT": str(root), "PROBE_PIDS": str(pids)}
    # its own process group, as `timeout make figures` gives make and its children: SIGTERM goes to that group
    proc = subprocess.Popen([sys.executable, "-m", "divscale.cli", "notebook", "run", "99_probe", "--recipe", "smoke"],
                            env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (pids.exists() and pids.read_text().strip()) and time.time() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.5)
        started = json.loads(pids.read_text())
        assert _alive(started["kernel"]) and _alive(started["worker"])
        assert psutil.Process(started["kernel"]).ppid() == proc.pid         # the kernel is the command's child ...
        assert os.getsid(started["kernel"]) != os.getsid(proc.pid)          # ... in a session of its own
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert "stopping every process" in err
        deadline = time.time() + 15
        while any(_alive(p) for p in started.values()) and time.time() < deadline:
            time.sleep(0.2)
        assert not [name for name, p in started.items() if _alive(p)]
        assert not (root / "runs" / "smoke" / "notebooks" / "99_probe.ipynb").exists()    # nothing half-written
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if pids.exists() and pids.read_text().strip():
            for pid in json.loads(pids.read_text()).values():
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)


def test_without_the_handler_the_kernel_would_survive(tmp_path):
    """The premise: a kernel sits in a session of its own, so killing the command's process group misses it
    (this is what left 01's workers running with parent 1)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        assert os.getsid(child.pid) != os.getsid(0)
        assert os.getpgid(child.pid) != os.getpgid(0)
    finally:
        child.kill()
        child.wait()
