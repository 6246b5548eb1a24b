"""divscale summarize: summary.json from the results tables, the README block rendered from it, agreement."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from test_analysis import make_results

from divscale import analysis, paths, summary
from divscale.cli import main

CONTRAST_KEYS = {"estimate", "ci_lo", "ci_hi", "mde", "test", "n_runs", "status", "direction", "identical"}


def _study(tmp_path):
    """A results folder like results/<recipe>/: a grid with sizes 60/80/120/240, augmentation and selection
    tables (with two identical selection arms), an initial-policy file and an RM report."""
    out = tmp_path / "results" / "toy"
    out.mkdir(parents=True)
    runs = make_results(sizes=(60, 80, 120, 240), gain_per_n=1.0, noise=1.0)
    runs["eval_dir"] = "runs/train/x/eval-abc"
    analysis.write_results(out / "runs.csv", runs)
    aug = pd.concat([make_results(sizes=(k,), lengths=(2,), rng=i).assign(method=m)
                     for i, (m, k) in enumerate([("base only", 60), ("base + random", 120),
                                                 ("base + diverse", 120)])], ignore_index=True)
    aug["run_id"] = aug["run_id"] + "-" + aug["method"].str.replace(" ", "")
    aug.to_csv(out / "augmentation.csv", index=False)
    rnd = make_results(sizes=(60,), lengths=(2,), algos=("pro",), rng=7).assign(strategy="random")
    deita = make_results(sizes=(60,), lengths=(2,), algos=("pro",), rng=8).assign(strategy="deita")
    deita["run_id"] += "-deita"
    pd.concat([rnd, rnd.assign(strategy="minhash-dedup"), deita]).to_csv(out / "selection.csv", index=False)
    summary.write_initial_policy("toy", {"reward_global": 13.9, "ci": [13.2, 14.7]}, out)
    report = pd.DataFrame([
        {"model": m, "subset": s, "metric": met, "value": v, "ci_lo": v - 0.05, "ci_hi": v + 0.05, "n": 200}
        for m, base in (("RM_train", 0.57), ("RM_test", 0.56)) for s in ("all", "harmless-base")
        for met, v in (("accuracy", base if s == "all" else 0.51), ("length_baseline", 0.55),
                       ("oa_agreement", 0.6), ("oa_accuracy", 0.66))])
    summary.write_rm_report("toy", report, out)
    return out


def test_summary_schema_and_values(tmp_path):
    out = _study(tmp_path)
    path = summary.write_summary("toy", out, budgets=[240])
    s = json.loads(path.read_text())
    assert {"schema", "recipe", "inputs", "missing", "runs", "initial_policy", "reward_models", "contrasts",
            "paper", "regression", "exponent", "diversity", "verdicts"} <= set(s)
    assert s["missing"] == [] and set(s["inputs"]) == {"runs.csv", "augmentation.csv", "selection.csv",
                                                        "initial_policy.json", "reports/reward_models.csv"}
    assert s["initial_policy"] == {"reward_global": 13.9, "ci_lo": 13.2, "ci_hi": 14.7,
                                   "ci_method": s["initial_policy"]["ci_method"]}
    rm = s["reward_models"]["overall"]
    assert rm["RM_train"]["accuracy"]["value"] == pytest.approx(0.57)
    assert rm["RM_test"]["oa_accuracy"]["value"] == pytest.approx(0.66)
    assert {"model": "RM_train", "subset": "harmless-base", "accuracy": 0.51} in s["reward_models"]["chance_subsets"]
    # every contrast the verdicts use is an object with estimate, CI and MDE
    runs = analysis.load_results(out / "runs.csv")
    for algo in ("pro", "sft"):
        c = s["contrasts"][f"equal_budget/{algo}/240/n4-n2"]
        assert CONTRAST_KEYS <= set(c)
        direct = analysis.more_responses_beat_more_prompts(runs[runs["algo"] == algo], 240)["contrast_4_vs_2"]
        assert c["estimate"] == pytest.approx(direct["estimate"]) and c["mde"] == pytest.approx(direct["mde"])
        assert c["n_runs"] == 6 and c["paper"] == pytest.approx({"pro": 2.15, "sft": 1.46}[algo])
        assert c["welch"]["mde"] > c["mde"]           # pooling over 12 cells buys power
        assert CONTRAST_KEYS <= set(s["contrasts"][f"augmentation/{algo}/base + diverse - base + random"])
        assert s["contrasts"][f"same_prompts/{algo}/k60/n4-n2"]["test"].startswith("paired t by seed")
    same = s["contrasts"]["selection/pro/minhash-dedup - random"]
    assert same["identical"] and same["ci_lo"] is None and same["mde"] is None
    assert not s["contrasts"]["selection/pro/deita - random"]["identical"]
    assert s["regression"]["pro"]["d"]["lines"]["2"]["n_points"] == 12       # runs, not 4 seed means
    assert s["paper"]["equal_budget_effect_range"] == pytest.approx([1.46, 2.43])
    assert s["exponent"]["paper"]["pro"]["best_p"] == pytest.approx(1 / 0.45)
    assert any("identical arms" in v for v in s["verdicts"])
    assert all(not isinstance(v, float) or math.isfinite(v) for v in s["runs"].values())


def test_summary_tolerates_missing_notebook_files_and_extra_columns(tmp_path):
    out = tmp_path / "results" / "toy"
    out.mkdir(parents=True)
    runs = make_results(sizes=(60, 80, 120, 240)).assign(train_seconds=1.0, cell_key="k", extra="x")
    analysis.write_results(out / "runs.csv", runs)
    s = summary.build_summary("toy", out, budgets=[240])
    assert s["initial_policy"] is None and s["reward_models"] is None
    assert set(s["missing"]) == {"augmentation.csv", "selection.csv", "initial_policy.json", "reports/reward_models.csv"}
    assert "not generated yet" in summary.render_readme_block(s)


def test_readme_block_renders_and_check_detects_drift(tmp_path, monkeypatch):
    out = _study(tmp_path)
    s = json.loads(summary.write_summary("toy", out, budgets=[240]).read_text())
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:toy:start -->\nold typed numbers 1.23\n<!-- results:toy:end -->\ntail\n")
    assert not summary.readme_agrees(s, readme)
    assert summary.update_readme(s, readme) and summary.readme_agrees(s, readme)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("tail\n") and "old typed" not in text
    c = s["contrasts"]["equal_budget/pro/240/n4-n2"]
    assert f"{c['estimate']:+.1f}, CI [{c['ci_lo']:+.1f}, {c['ci_hi']:+.1f}], MDE {c['mde']:.1f}" in text
    assert not summary.update_readme(s, readme)                         # idempotent
    s["contrasts"]["equal_budget/pro/240/n4-n2"]["estimate"] += 1.0     # summary moved, README not
    assert not summary.readme_agrees(s, readme)
    with pytest.raises(Exception, match="markers"):
        bare = tmp_path / "bare.md"
        bare.write_text("no markers\n")
        summary.update_readme(s, bare)


def test_cli_summarize_check(tmp_path, monkeypatch, capsys):
    out = _study(tmp_path)
    monkeypatch.setattr(summary, "build_summary",
                        lambda recipe, results=None, budgets=None, _b=summary.build_summary: _b(recipe, results, [240]))
    assert main(["summarize", "--recipe", "toy", "--results", str(out)]) == 0
    assert (out / "summary.json").exists() and not list(out.glob("*.tmp*"))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:toy:start -->\n<!-- results:toy:end -->\n")
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    assert main(["summarize", "--recipe", "toy", "--results", str(out), "--check"]) == 1     # README stale
    assert main(["summarize", "--recipe", "toy", "--results", str(out), "--readme"]) == 0
    assert main(["summarize", "--recipe", "toy", "--results", str(out), "--check"]) == 0
    (out / "runs.csv").write_text((out / "runs.csv").read_text().replace("pro,2,60,1", "pro,2,60,1", 1))
    runs = analysis.load_results(out / "runs.csv")
    runs.loc[0, "reward_global"] += 5
    analysis.write_results(out / "runs.csv", runs)
    assert main(["summarize", "--recipe", "toy", "--results", str(out), "--check"]) == 1     # summary stale


@pytest.mark.parametrize("recipe", ["cpu"])
def test_committed_readme_agrees_with_committed_summary(recipe):
    """The README's results block is what `divscale summarize --readme` renders from summary.json, and
    summary.json is what the committed results tables give."""
    stored = summary.load_summary(recipe)
    assert summary.readme_agrees(stored), \
        f"README results block disagrees with results/{recipe}/summary.json: run divscale summarize --readme"
    assert summary.build_summary(recipe) == stored, \
        f"results/{recipe}/summary.json is stale: run divscale summarize --recipe {recipe}"
