"""The study's environment: the lock (requirements/lock.txt) against pyproject.toml, `make setup` installing from it,
and :func:`divscale.provenance.environment`, which records what produced a study's numbers.

Fast: nothing is installed; the Makefile is read with ``make -n`` (print the commands, run none).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from divscale import provenance

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)\s*(?:;\s*(.*?))?\s*\\?$")


def lock_entries(path: Path = LOCK) -> list[dict]:
    """The lock's entries: name, version, marker (or None) and the sha256 hashes listed under it."""
    entries: list[dict] = []
    for line in path.read_text().splitlines():
        if m := ENTRY.match(line):
            entries.append({"name": canonicalize_name(m[1]), "version": m[2], "marker": m[3], "hashes": []})
        elif line.strip().startswith("--hash=") and entries:
            entries[-1]["hashes"].append(line.strip().rstrip("\\").strip().removeprefix("--hash="))
        elif line.strip() and not line.lstrip().startswith("#"):
            pytest.fail(f"{path}: unexpected line {line!r}; regenerate it with `make lock`")
    return entries


def make_vars() -> dict[str, str]:
    """The Makefile's plain ``NAME ?= value`` / ``NAME := value`` assignments (unexpanded)."""
    text = (ROOT / "Makefile").read_text()
    return {m[1]: m[2].strip() for m in re.finditer(r"^([A-Z_]+)\s*[?:]?=\s*(.*)$", text, re.MULTILINE)}


def dry_run(*args: str) -> str:
    """``make -n ARGS`` in the project: the commands a target would run, none of them run."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEFILES")}
    proc = subprocess.run(["make", "-n", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def applies(entry: dict) -> bool:
    return entry["marker"] is None or Marker(entry["marker"]).evaluate()


# ------------------------------------------------------------------------------------------- the lock


def test_every_lock_entry_is_an_exact_pin_with_sha256_hashes():
    entries = lock_entries()
    assert len(entries) > 50, "the lock lists too few packages: regenerate it with `make lock`"
    for e in entries:
        assert Version(e["version"]), e
        assert e["hashes"], f"{e['name']}=={e['version']} has no hash in {LOCK}"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in e["hashes"]), e
    applying = [e["name"] for e in entries if applies(e)]
    assert len(applying) == len(set(applying)), "two versions of one package apply on this platform"


def test_lock_pins_every_dependency_of_pyproject_and_the_dev_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    here = {e["name"]: e for e in lock_entries() if applies(e)}
    anywhere = {e["name"] for e in lock_entries()}
    torch_version = make_vars()["TORCH_VERSION"]
    for req in requirements:
        name = canonicalize_name(req.name)
        if name == "torch":                 # installed by TORCH_SPEC (CPU or CUDA build), outside the lock
            assert name not in anywhere, "torch is in the lock: `make lock` must leave it to TORCH_SPEC"
            assert req.specifier.contains(torch_version), f"TORCH_VERSION {torch_version} does not satisfy {req}"
            continue
        assert name in here, f"{req} (pyproject.toml) is not in {LOCK.name}: run `make lock`"
        assert req.specifier.contains(here[name]["version"], prereleases=True), \
            f"{LOCK.name} pins {name}=={here[name]['version']}, outside pyproject.toml's {req}: run `make lock`"


def test_lock_is_generated_by_make_lock_from_pyproject_with_hashes():
    assert "make lock" in LOCK.read_text().splitlines()[1], "the lock's header should name `make lock`"
    commands = dry_run("lock", "VENV=/nonexistent-venv").replace("\\\n", " ")
    compile_line = next(line for line in commands.splitlines() if "pip compile" in line)
    for flag in ("pyproject.toml", "--extra dev", "--generate-hashes", "--no-emit-package torch",
                 "-o requirements/lock.txt"):
        assert flag in compile_line, f"`make lock` does not pass {flag!r}: {compile_line}"


# ------------------------------------------------------------------------------------------- make setup


def test_setup_installs_the_lock_with_hashes_then_divscale_without_dependencies(tmp_path):
    commands = dry_run("-B", f"VENV={tmp_path}", f"{tmp_path}/.installed").splitlines()
    installs = [c for c in commands if "pip install" in c]
    lock_install = [c for c in installs if "-r requirements/lock.txt" in c]
    assert lock_install and "--require-hashes" in lock_install[0], installs
    for c in installs:                  # nothing else brings packages in unpinned
        assert (c in lock_install or "--upgrade pip" in c or "--no-deps" in c and c.rstrip().endswith("-e .")
                or "torch==" in c and "-c " in c), f"`make setup` installs outside the lock: {c}"
    assert any(c.rstrip().endswith("-e .") and "--no-deps" in c for c in installs), installs
    assert commands.index(lock_install[0]) < max(i for i, c in enumerate(commands) if "pip check" in c)


def test_a_changed_lock_reinstalls(tmp_path):
    stamp = tmp_path / ".installed"
    stamp.touch()
    future = time.time() + 3600
    os.utime(stamp, (future, future))
    assert "pip install" not in dry_run(f"VENV={tmp_path}", str(stamp)), "an up-to-date stamp reinstalled"
    assert "pip install" in dry_run(f"VENV={tmp_path}", "-W", "requirements/lock.txt", str(stamp)), \
        "`make setup` does not reinstall when requirements/lock.txt changes"


def test_environment_yml_installs_the_lock():
    text = (ROOT / "environment.yml").read_text()
    assert f"python={make_vars()['LOCK_PYTHON']}" in text
    assert "pip install --require-hashes --no-deps -r requirements/lock.txt" in text
    assert f"torch=={make_vars()['TORCH_VERSION']}" in text


# ------------------------------------------------------------------------------------------- environment()


def test_environment_records_lock_versions_cpu_and_threads(tmp_path, monkeypatch):
    import numpy
    import torch

    lock = tmp_path / "lock.txt"
    lock.write_text("# generated\n"
                    f"numpy==0.0.1 \\\n    --hash=sha256:{'0' * 64}\n    # via divscale\n"
                    f"torch==0.1 \\\n    --hash=sha256:{'1' * 64}\n"
                    f"no-such-package-xyz==1.0 \\\n    --hash=sha256:{'2' * 64}\n"
                    f"other-platform-only==1.0 ; sys_platform == 'no-such-os' \\\n    --hash=sha256:{'3' * 64}\n"
                    f"pytest=={pytest.__version__} \\\n    --hash=sha256:{'4' * 64}\n")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: Test\nmodel name\t: Test CPU 9000 @ 3.0GHz\nflags\t: avx\n")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)

    env = provenance.environment(lock, cpuinfo)
    assert env["lock_sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()
    assert env["lock_differs"] == {"numpy": {"locked": "0.0.1", "installed": numpy.__version__},
                                   "no-such-package-xyz": {"locked": "1.0", "installed": "absent"}}
    assert env["libraries"] == provenance.library_versions() and env["libraries"]["numpy"] == numpy.__version__
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["cpu"] == "Test CPU 9000 @ 3.0GHz"
    assert env["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["threads"] == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": None, "torch": torch.get_num_threads()}


def test_environment_without_a_lock(tmp_path):
    env = provenance.environment(tmp_path / "absent.txt", tmp_path / "no-cpuinfo")
    assert env["lock_sha256"] is None and env["lock_differs"] == {}
    assert env["cpu"] is None or isinstance(env["cpu"], str)


def test_environment_names_the_projects_lock():
    assert provenance.LOCK_FILE == LOCK
    assert provenance.environment()["lock_sha256"] == provenance.file_sha256(LOCK)


@pytest.mark.skipif(not (Path(sys.prefix) / ".installed").exists(),
                    reason="this python was not set up by `make setup`")
def test_the_environment_made_by_make_setup_is_the_locks():
    differs = provenance.environment()["lock_differs"]
    assert not differs, f"installed packages differ from {LOCK.name}: {differs}; run `make setup`"
