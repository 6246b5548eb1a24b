"""benchmarks/bench_vs_trl_dpo.py: divscale's listwise step against TRL's DPOTrainer on the same rankings split into
pairs, wall time per epoch as ratios against TRL on all pairs measured in the same process. Here its CPU mode
with --tiny: every arm runs, the counts it prints are what each trainer encodes, and the ratios are computed."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from divscale import paths


@pytest.mark.slow
def test_cpu_mode_times_every_arm_against_trl_all_pairs():
    out = subprocess.run([sys.executable, str(paths.ROOT / "benchmarks" / "bench_vs_trl_dpo.py"), "--tiny", "--json"],
                         capture_output=True, text=True, cwd=paths.ROOT, check=True,
                         env=os.environ | {"PYTHONPATH": str(paths.ROOT), "OMP_NUM_THREADS": "1"}).stdout
    lines = out.strip().splitlines()
    result = json.loads(lines[-1])
    arms = result["arms"]
    assert result["k"] == 4 and result["rows"] == 4 and result["rows_per_step"] == 2
    assert set(arms) == {"pro", "plackett_luce", "lipo_lambda", "all_pairs_dpo", "trl_dpo_all_pairs",
                         "trl_dpo_best_vs_rest", "trl_dpo_all_pairs_same_pairs", "trl_dpo_best_vs_rest_same_pairs"}
    base = arms["trl_dpo_all_pairs"]
    assert base["speed_vs_trl_all_pairs"] == 1.0 and base["epoch_s"] > 0
    # one epoch of 4 rankings: 2 steps a ranking pair for the listwise and same-rankings arms; as many pairs a step as
    # rankings: 4 x 6 pairs / 2 = 12 steps (all pairs), 4 x 3 / 2 = 6 (best vs rest)
    assert [arms[a]["steps"] for a in ("pro", "trl_dpo_all_pairs", "trl_dpo_all_pairs_same_pairs",
                                      "trl_dpo_best_vs_rest_same_pairs")] == [2, 2, 12, 6]
    assert (arms["pro"]["policy_sequences_per_step"], arms["pro"]["reference_sequences_per_step"]) == (8, 0)
    assert (arms["plackett_luce"]["policy_sequences_per_step"], base["policy_sequences_per_step"]) == (8, 24)
    # a listwise epoch encodes each prompt once a ranking, TRL's twice a pair: all pairs encode far more tokens
    assert base["policy_tokens_per_epoch"] > 3 * arms["pro"]["policy_tokens_per_epoch"]
    assert arms["trl_dpo_all_pairs_same_pairs"]["policy_tokens_per_epoch"] == base["policy_tokens_per_epoch"]
    for name, row in arms.items():
        assert row["speed_vs_trl_all_pairs"] == pytest.approx(base["epoch_s"] / row["epoch_s"]), name
        assert row["first_loss"] is not None and row["first_loss"] == row["first_loss"], name      # finite, logged
    assert result["speedup_listwise_min"] == min(arms[a]["speed_vs_trl_all_pairs"] for a in
                                                 ("pro", "plackett_luce", "lipo_lambda", "all_pairs_dpo"))
    assert sum("x TRL DPO all pairs' speed" in line for line in lines) == 8 and lines[-2].startswith("goal")
