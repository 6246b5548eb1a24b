"""divscale summarize: summary.json from the results tables, the README block rendered from it, agreement."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from test_analysis import make_results

from divscale import paths
from divscale.cli import main
from divscale.report import analysis
from divscale.report import publish as summary

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
    assert s["missing"] == [summary.COLD_RUN] and set(s["inputs"]) == {"runs.csv", "augmentation.csv", "selection.csv",
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
    assert set(s["missing"]) == {"augmentation.csv", "selection.csv", "initial_policy.json", "reports/reward_models.csv",
                                 summary.COLD_RUN}
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


def test_fine_tuned_vs_initial_is_a_one_sample_t_over_runs():
    runs = make_results(sizes=(60, 120), seeds=(1, 2, 3), noise=2.0)
    got = summary.fine_tuned_vs_initial(runs, {"reward_global": 41.0})
    for algo, g in runs.groupby("algo"):
        diff = g["reward_global"] - 41.0
        half = analysis.stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / math.sqrt(len(diff))
        c = got[algo]
        assert c["estimate"] == pytest.approx(diff.mean()) and c["n_a"] == len(g)
        assert (c["ci_lo"], c["ci_hi"]) == pytest.approx((diff.mean() - half, diff.mean() + half))
        assert c["direction"] == ("above the initial policy" if diff.mean() > 0 else "below the initial policy")
    # a reference far above every run: the CI lies below 0
    low = summary.fine_tuned_vs_initial(runs, {"reward_global": 99.0})["pro"]
    assert low["ci_hi"] < 0 and low["status"] == "does not hold"
    assert summary.fine_tuned_vs_initial(runs, None) is None


def test_variance_sources_separates_evaluation_from_seed_noise_and_finds_the_short_answer_trait():
    rng = np.random.default_rng(0)
    runs = make_results(sizes=(60, 120), seeds=tuple(range(8)), noise=0.0)
    share = rng.uniform(0, 1, len(runs))
    runs["short_answer_share"] = share
    runs["reward_global"] += 20 * share                    # the seed spread is all short answers
    runs["reward_global_lo"], runs["reward_global_hi"] = runs["reward_global"] - 0.98, runs["reward_global"] + 0.98
    v = analysis.variance_sources(runs)
    for algo in ("pro", "sft"):
        assert v[algo]["eval_se"] == pytest.approx(0.5, rel=1e-3)            # width 1.96 -> SE 0.5
        assert v[algo]["seed_sd"] > 4
        assert v[algo]["short_answer_r"] == pytest.approx(1.0) and v[algo]["short_answer_r2"] == pytest.approx(1.0)
    runs["reward_global"] = runs["reward_global"] - 20 * share + rng.normal(0, 5, len(runs))   # unrelated now
    assert abs(analysis.variance_sources(runs)["pro"]["short_answer_r"]) < 0.4


def test_beta_ablation_summary_pairs_by_seed_and_reads_the_gradient_share(tmp_path):
    runs = make_results(sizes=(60, 80, 120), seeds=(1, 2, 3), noise=0.5).assign(sft_weight=0.05,
                                                                                 grad_share_rank=0.1)
    beta = make_results(sizes=(60, 80, 120), seeds=(1, 2, 3), algos=("pro",), noise=0.5, rng=3)
    beta = beta[beta["n_prompts"] * beta["ranking_len"] == 240].assign(sft_weight=0.0, grad_share_rank=1.0)
    beta["reward_global"] -= 5.0
    beta.to_csv(tmp_path / "beta_ablation.csv", index=False)
    got = summary.beta_ablation_summary(tmp_path, runs, [240])
    assert got["paper_sft_weight"] == 0.05 and got["weights"] == [0.0, 0.05]
    cell = got["cells"]["240/n4"]
    assert (cell["n"], cell["n_prompts"]) == (4, 60)
    assert cell["arms"]["0"]["grad_share_rank"] == 1.0 and cell["arms"]["0.05"]["beta"] == pytest.approx(0.45)
    assert set(cell["arms"]) == {"0", "0.05", "sft"}
    c = cell["contrasts"]["0.05 - 0"]
    assert c["test"].startswith("paired t by seed") and c["estimate"] == pytest.approx(5.0, abs=1.5)
    assert "0.05 - sft" in cell["contrasts"]
    assert summary.beta_ablation_summary(tmp_path / "none", runs, [240]) is None


def test_summary_reports_design_mdes_and_resolution_lines(tmp_path):
    out = _study(tmp_path)
    s = summary.build_summary("toy", out, budgets=[240])
    assert s["design"]["size_ratio"] == pytest.approx(4.0) and s["design"]["seeds_per_cell_min"] == 3
    verdict = {cid for cid, c in s["contrasts"].items() if c.get("family") in ("equal_budget", "same_prompts")}
    assert set(s["mde_reached"]) == verdict | {f"{cid} seed-blocked" for cid in verdict
                                               if cid.startswith("equal_budget")}
    assert s["fine_tuned_vs_initial"]["pro"]["estimate"] > 0
    lines = "\n".join(summary.resolution_lines(s))
    assert "Minimum detectable" in lines and "Does fine-tuning help?" in lines and "Design:" in lines
    # the sentence about short answers says what the measured r says, not a fixed claim
    assert summary.short_answer_link([0.68, 0.71]) == "follows"
    assert summary.short_answer_link([0.18, -0.07]) == "hardly follows"
    assert summary.short_answer_link([0.6, 0.1]) == "partly follows" == summary.short_answer_link([None, None])
    assert "β" not in lines                                  # no ablation table in this study


GNU_TIME = """\tCommand being timed: "make figures"
\tUser time (seconds): 5400.50
\tSystem time (seconds): 120.25
\tPercent of CPU this job got: 170%
\tElapsed (wall clock) time (h:mm:ss or m:ss): 0:54:03.10
\tMaximum resident set size (kbytes): 3145728
\tExit status: 0
"""


def test_cold_run_report_is_parsed_recorded_and_rendered(tmp_path):
    report = tmp_path / "time.txt"
    report.write_text(GNU_TIME)
    out = _study(tmp_path)
    path = summary.write_cold_run("toy", report, "after make setup", out)
    got = json.loads(path.read_text())
    assert got["wall_s"] == pytest.approx(54 * 60 + 3.1) and got["user_s"] == pytest.approx(5400.5)
    assert got["command"] == "make figures" and got["note"] == "after make setup"
    s = summary.build_summary("toy", out, budgets=[240])
    assert s["cold_run"]["wall_s"] == pytest.approx(3243.1) and summary.COLD_RUN in s["inputs"]
    assert any("54.1 min wall" in line for line in summary.resolution_lines(s))
    report.write_text(GNU_TIME.replace("Exit status: 0", "Exit status: 2"))
    with pytest.raises(Exception, match="status 2"):
        summary.write_cold_run("toy", report, "", out)
    report.write_text("real 1m\n")
    with pytest.raises(Exception, match="GNU"):
        summary.write_cold_run("toy", report, "", out)
