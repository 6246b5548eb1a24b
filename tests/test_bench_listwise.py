"""benchmarks/bench_listwise.py --model MODEL --device DEVICE: the naive vs prompt-sharing table on a real config
(random weights). On a GPU it is the issue's table at the paper's shape; here its CPU mode with --tiny."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from divscale import paths


@pytest.mark.slow
def test_the_table_mode_runs_on_cpu_and_reports_every_path():
    out = subprocess.run([sys.executable, str(paths.ROOT / "benchmarks" / "bench_listwise.py"), "--model",
                          "facebook/opt-1.3b", "--device", "cpu", "--tiny", "--json"], capture_output=True, text=True,
                         cwd=paths.ROOT, check=True, env=os.environ | {"PYTHONPATH": str(paths.ROOT)}).stdout
    lines = out.strip().splitlines()
    table = json.loads(lines[-1])
    assert "prompt sharing on facebook/opt-1.3b" in lines[0] and table["model"] == "facebook/opt-1.3b"
    assert table["default_path_here"] == "cache" and table["bf16"] is False
    rows = {(r["n"], r["path"]): r for r in table["rows"]}
    assert sorted({n for n, _ in rows}) == [2, 3, 4]
    for n in (2, 3, 4):
        assert rows[(n, "naive")]["speed_vs_naive"] == 1.0 and rows[(n, "naive")]["median_s"] > 0
        for path in ("cache", "packed"):
            row = rows[(n, path)]
            assert row["speed_vs_naive"] > 0 and row["max_abs_logp_diff_per_token"] < 1e-4
            assert row["grad_rel_l2_diff"] < 1e-4 and abs(row["loss"] - rows[(n, "naive")]["loss"]) < 1e-3
    assert "no backward on CPU" in rows[(4, "packed-flex")]["error"]        # listed at n = 4, and why not here
    assert sum(line.split()[1:2] == ["packed"] for line in lines) == 3          # the printed table: n = 2, 3, 4
