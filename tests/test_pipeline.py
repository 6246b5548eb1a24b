"""divscale.study.pipeline: the small table helpers the notebooks call (the heavy steps are tested in their modules
and end to end by test_notebooks)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from divscale.config import load_recipe
from divscale.data.hh import Ranking
from divscale.study import pipeline


def _r(i, sources=("human-chosen", "human-rejected", "gen", "gen")):
    return Ranking(id=f"x:{i}", prompt=f"\n\nHuman: q{i}\n\nAssistant:", responses=[f"a{j}" for j in range(len(sources))],
                   rewards=[4.0 - j for j in range(len(sources))], sources=list(sources), subset="x")


def test_grid_budget_table_and_nesting():
    rs = [_r(i) for i in range(6)]
    cells = {(2, 3): rs[:3], (2, 6): rs, (4, 3): rs[:3], (4, 6): rs}
    table = pipeline.grid_budget_table(cells)
    assert table.to_dict("records")[0] == {"ranking_len": 2, "n_prompts": 3, "annotations": 6}
    assert table["annotations"].tolist() == [6, 12, 12, 24]
    assert pipeline.grid_is_nested(cells)
    assert not pipeline.grid_is_nested({**cells, (4, 3): rs[3:]})          # other prompts at n=4
    assert not pipeline.grid_is_nested({(2, 3): rs[3:], (2, 6): rs[:5] + [_r(9)]})


def test_human_order_kept():
    kept = _r(0)
    flipped = _r(1, sources=("gen", "human-rejected", "human-chosen", "gen"))
    out = pipeline.human_order_kept([kept, flipped, kept, kept])
    assert out["rankings"] == 4 and out["human order kept"] == 0.75


def test_write_result_is_atomic_and_optional(tmp_path):
    path = tmp_path / "cells" / "c.json"
    pipeline.write_result({"a": 1}, str(path))
    assert json.loads(path.read_text()) == {"a": 1}
    pipeline.write_result({"a": 2}, "")                  # no path (an interactive run): nothing written
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["c.json"]


def test_load_accepts_json_overrides_from_papermill():
    R = pipeline.load("smoke", '{"train.max_steps": 7, "data.sizes": [24], "grid.primary.budget": null}')
    assert R.train.max_steps == 7 and R.data.sizes == [24]
    assert pipeline.load(R) is R


def test_exponent_fit_reports_instead_of_failing_when_no_exponent_gives_rising_lines():
    rows = []
    for n in (2, 4):
        for k, r in ((60, 0.30), (120, 0.24), (240, 0.19)):
            rows.append({"algo": "pro", "ranking_len": n, "n_prompts": k, "r_unique": r,   # rises with k at n=2,
                         "reward_global": 50 + (k if n == 2 else -k) / 100})           # falls at n=4
    fit, note = pipeline.exponent_fit(pd.DataFrame(rows))
    assert "no exponent makes reward rise" in note and fit.best_p > 0
    rising = pd.DataFrame([dict(r, reward_global=40 + r["n_prompts"] ** 0.5 * r["r_unique"]) for r in rows])
    fit, note = pipeline.exponent_fit(rising)
    assert "every slope positive" in note and fit.best_exponent == pytest.approx(0.5, abs=0.06)


def test_result_paths_are_project_relative():
    from divscale import paths

    assert paths.project_relative(paths.ROOT / "runs" / "train" / "x") == "runs/train/x"
    assert paths.project_path("runs/train/x") == paths.ROOT / "runs" / "train" / "x"
    assert paths.project_relative("/elsewhere/x") == "/elsewhere/x" and paths.project_relative("") == ""


def test_checkpoint_rule_decides_whether_the_run_validates_on_dev(monkeypatch):
    """best-dev (the paper's rule) hands RM_train and the dev prompts to the run; last hands neither, so the
    run keeps its last step; anything else is refused with the choices named."""
    import divscale.models.tiny_gpt
    import divscale.train.runs

    seen = {}

    def fake_train_run(R, algo, n, k, seed, **kw):
        seen.update(kw)
        return "run"

    monkeypatch.setattr(divscale.train.runs, "train_run", fake_train_run)
    monkeypatch.setattr(divscale.models.tiny_gpt, "load_policy", lambda *a, **k: None)
    monkeypatch.setattr(pipeline, "policy_texts", lambda R: ["x"])
    monkeypatch.setattr(pipeline, "policy_fingerprint", lambda R: "pol")
    monkeypatch.setattr(pipeline, "reward_models", lambda R: ("rm_train", "rm_test"))
    monkeypatch.setattr(pipeline, "dev_prompts", lambda R: ["dev prompt"])
    rankings = [Ranking(id="a", prompt="p", responses=["x", "y"], rewards=[1.0, 0.0], sources=["h", "h"])]
    pipeline.train_cell(load_recipe("smoke", {"train.checkpoint": "best-dev"}), "sft", 2, 1, 1, rankings=rankings)
    assert seen["rm_train"] == "rm_train" and seen["dev_prompts"] == ["dev prompt"]
    pipeline.train_cell(load_recipe("smoke", {"train.checkpoint": "last"}), "sft", 2, 1, 1, rankings=rankings)
    assert seen["rm_train"] is None and seen["dev_prompts"] is None
    with pytest.raises(ValueError, match="best-dev"):
        pipeline.train_cell(load_recipe("smoke", {"train.checkpoint": "best"}), "sft", 2, 1, 1, rankings=rankings)
    assert load_recipe("cpu").train.checkpoint == "last" and load_recipe("paper-opt-1.3b").train.checkpoint == "best-dev"


class _DeviceRM:
    """An RM whose weights are in memory or not (as OpenAssistantRM's)."""

    def __init__(self):
        self.loaded = True

    def release(self):
        self.loaded = False


def test_each_stage_keeps_only_its_reward_model_on_the_device(monkeypatch, tmp_path):
    """Ranking holds RM_train (then nothing), a launched cell nothing in this process (its processes need the GPUs),
    an in-process cell RM_train only, an evaluation RM_test only (kept for the next one); RMs not built stay
    unbuilt."""
    import divscale.data.hh
    import divscale.models.hub
    import divscale.reward.evaluate
    import divscale.reward.rankings
    import divscale.train.runs

    monkeypatch.setattr(pipeline, "_MEMO", {})
    R = load_recipe("smoke", {"train.num_processes": 2})                  # its cells train under accelerate launch
    pipeline.keep_on_device(R)                                           # nothing built: nothing built now
    assert pipeline._MEMO == {}
    rm_train, rm_test = _DeviceRM(), _DeviceRM()
    pipeline._MEMO[("reward_models", R.hash())] = (rm_train, rm_test)
    freed, seen = [], {}
    monkeypatch.setattr(divscale.models.hub, "free_device_memory", lambda: freed.append(1))

    def loaded(stage):
        seen[stage] = (rm_train.loaded, rm_test.loaded)

    monkeypatch.setattr(pipeline, "grid_pool", lambda R: [])
    monkeypatch.setattr(divscale.reward.rankings, "build_rankings", lambda *a, **k: loaded("ranking") or "r.jsonl")
    monkeypatch.setattr(divscale.data.hh, "load_rankings", lambda path: [])
    pipeline.rankings4(R)
    assert seen["ranking"] == (True, False) and (rm_train.loaded, rm_test.loaded) == (False, False)

    rm_train.loaded = rm_test.loaded = True
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(divscale.train.runs, "launch_cell", lambda *a, **k: loaded("launched") or tmp_path)
    pipeline.train_cell(R, "pro", 4, 24, 42, runs_dir=tmp_path)
    assert seen["launched"] == (False, False)

    rm_train.loaded = rm_test.loaded = True
    monkeypatch.setenv("LOCAL_RANK", "0")                                # inside a launched process: trains here
    for name, value in (("policy_texts", ["x"]), ("policy_fingerprint", "pol"), ("dev_prompts", ["d"])):
        monkeypatch.setattr(pipeline, name, lambda R, value=value: value)
    monkeypatch.setattr(divscale.train.runs, "train_run", lambda *a, **k: loaded("training") or tmp_path)
    pipeline.train_cell(R, "pro", 4, 1, 42, rankings=[_r(0)])
    assert seen["training"] == (True, False)

    rm_train.loaded = rm_test.loaded = True
    monkeypatch.setattr(pipeline, "eval_key", lambda R: "eval-test")
    monkeypatch.setattr(pipeline, "test_prompts", lambda R: {"helpful-base": ["p"]})

    def fake_evaluation(checkpoint, R, prompts, rm, out, progress=False):
        loaded("evaluation")
        assert rm is rm_test
        out.mkdir(parents=True)
        (out / "eval.json").write_text("{}")

    monkeypatch.setattr(divscale.reward.evaluate, "evaluate_checkpoint", fake_evaluation)
    pipeline.evaluate_run(R, tmp_path / "run")
    assert seen["evaluation"] == (False, True) and rm_test.loaded and len(freed) == 6
    with pytest.raises(ValueError, match="unknown role"):
        pipeline.keep_on_device(R, "rm_dev")


def test_candidates_start_with_the_grids_own_prompts_and_skip_the_base_set():
    """07 and 08 choose from the grid's seeded pool order: on the cpu recipe every candidate is a grid prompt,
    already ranked in 01 (no SmolLM2 generation in 07/08), and 07's candidates never include its base set."""
    from divscale.data.subsets import nested_subsets

    R = load_recipe("cpu")
    grid_ids = [r.id for r in pipeline.grid_pool(R)]
    chosen_from = [r.id for r in pipeline.candidate_pool(R, R.select.candidate_pool)]
    assert chosen_from == grid_ids                                   # 240 candidates = the grid's 240, in order
    base = [r.id for r in nested_subsets(pipeline.grid_pool(R), [R.augment.seed_size], seed=R.data.grid_seed)
            [R.augment.seed_size]]
    added_from = [r.id for r in pipeline.candidate_pool(R, R.augment.candidate_pool, exclude=base)]
    assert set(added_from) == set(grid_ids) - set(base) and len(added_from) == R.augment.candidate_pool
    more = [r.id for r in pipeline.candidate_pool(R, 300, exclude=base)]
    k = len(added_from)
    assert more[:k] == added_from and not set(more[k:]) & set(grid_ids)      # beyond the grid: the rest of the pool
    with pytest.raises(ValueError, match="candidate_pool"):
        pipeline.candidate_pool(R, 10**6)


def test_each_replicate_redraws_the_data_with_redraw_per_seed(monkeypatch):
    """data.redraw_per_seed: the cell of training seed s trains on the grid drawn with grid seed s (other prompts at
    k < max, other sub-rankings); without it every seed trains on grid_seed's draw."""
    import divscale.models.tiny_gpt
    import divscale.train.runs

    seen = {}
    monkeypatch.setattr(divscale.train.runs, "train_run", lambda R, algo, n, k, seed, **kw: seen.setdefault(seed, kw["grid"]))
    monkeypatch.setattr(divscale.models.tiny_gpt, "load_policy", lambda *a, **k: None)
    monkeypatch.setattr(pipeline, "policy_texts", lambda R: ["x"])
    monkeypatch.setattr(pipeline, "policy_fingerprint", lambda R: "pol")
    monkeypatch.setattr(pipeline, "reward_models", lambda R: ("rm_train", "rm_test"))
    four = [Ranking(id=f"r{i}", prompt=f"prompt {i}", responses=[f"a{i}", f"b{i}", f"c{i}", f"d{i}"],
                    rewards=[3.0, 2.0, 1.0, 0.0], sources=["h"] * 4) for i in range(40)]
    monkeypatch.setattr(pipeline, "rankings4", lambda R: four)
    prompts = {}
    for redraw in (False, True):
        R = load_recipe("smoke", {"data.redraw_per_seed": redraw, "data.sizes": [10, 40], "train.checkpoint": "last",
                                     "grid.primary.budget": None})
        seen.clear()
        for seed in (42, 43):
            pipeline.train_cell(R, "pro", 2, 10, seed)
        prompts[redraw] = {seed: [r.prompt for r in grid[(2, 10)]] for seed, grid in seen.items()}
        assert pipeline.cell_draw(R, 43) == (43 if redraw else R.data.grid_seed)
    assert prompts[False][42] == prompts[False][43]                   # one draw for every seed
    assert prompts[True][42] == prompts[False][42]                    # seed 42 is grid_seed's draw
    assert prompts[True][43] != prompts[True][42]                     # another seed, another draw
