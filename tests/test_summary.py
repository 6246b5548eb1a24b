"""divscale summarize: summary.json from the results tables, the README block rendered from it, agreement."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from study_fixture import AGAINST, AS_PAPER, PRIMARY, write_study
from test_analysis import make_results

from divscale import paths
from divscale.cli import main
from divscale.report import analysis
from divscale.report import publish as summary

CONTRAST_KEYS = {"estimate", "ci_lo", "ci_hi", "mde", "test", "n_runs", "status", "direction", "identical"}


def _study(tmp_path, means=AGAINST, replicates=16):
    """A results folder like results/<recipe>/ for the cpu design (tests/study_fixture.py)."""
    out = tmp_path / "results" / "toy"
    write_study(out, means, replicates)
    return out


def _summary(out, **kw):
    return summary.build_summary("toy", out, budgets=[240], primary=PRIMARY, **kw)


def test_summary_schema_and_values(tmp_path):
    out = _study(tmp_path)
    summary.write_summary("toy", out, budgets=[240])                   # records the environment
    s = _summary(out)
    assert s["schema"] == 2
    assert {"environment", "design", "runs", "initial_policy", "primary", "reward_models", "variance", "mde_reached",
            "fine_tuned_vs_initial", "contrasts", "secondary", "paper", "regression", "exponent", "diversity",
            "beta_ablation", "answers", "listwise", "cold_run", "verdicts"} <= set(s)
    assert s["missing"] == [summary.LISTWISE, summary.COLD_RUN]
    assert s["environment"]["runs_csv"] == s["inputs"]["runs.csv"] and s["environment"]["lock_sha256"]
    # the primary contrast: what analysis.budget_decomposition gives on the algorithm's runs, with the paper beside
    runs = analysis.load_results(out / "runs.csv")
    direct = analysis.budget_decomposition(runs, 240)
    p = s["primary"]
    assert p["declared"] == {"algo": "pro", "budget": 240, "n_hi": 4, "n_lo": 2, "k_hi": 60, "k_lo": 120}
    for part in ("total", "prompts", "length"):
        assert CONTRAST_KEYS <= set(p[part])
        assert p[part]["estimate"] == pytest.approx(direct[part]["estimate"])
        assert p[part]["mde"] == pytest.approx(direct[part]["mde"])
        assert p[part]["n_a"] == 16 and p[part]["n_b"] == 16
    assert p["total"]["test"].startswith("Welch") and p["length"]["test"].startswith("paired t by seed (16 pairs)")
    assert p["total"]["direction"] == "against the paper" and p["prompts"]["direction"] == "as the paper"
    assert p["paper_signs"] == {"total": 1, "prompts": -1, "length": 1}
    assert p["paper_range"]["total"] == pytest.approx([1.29, 2.36], abs=0.01) and len(p["paper"]) == 8
    assert set(p["fine_tuned_vs_initial"]) == {"n4_k60", "n2_k120", "n2_k60"}
    assert [s["mde_reached"][f"primary/{x}"] for x in ("total", "prompts", "length")] == \
        pytest.approx([p[x]["mde"] for x in ("total", "prompts", "length")])
    # the primary's contrasts are not counted again among the secondary ones
    assert "equal_budget/pro/240/n4-n2" not in s["contrasts"] and "same_prompts/pro/k60/n4-n2" not in s["contrasts"]
    assert all(c["role"] == "secondary" for c in s["contrasts"].values())
    sec = s["secondary"]
    assert sec["by_notebook"] == {"05_allocation": 6, "06_diversity_regression": 2, "07_augmentation": 3,
                                  "08_selection": 2} and sec["n_tests"] == 13
    # the RM validity table and RM_train vs RM_test
    rm = s["reward_models"]
    assert list(rm["overall"]) == ["RM_test", "RM_train"]
    assert rm["overall"]["RM_test"]["oa_agreement"]["value"] == pytest.approx(0.672)
    assert rm["by_subset"]["RM_test"]["harmless-base"]["accuracy"]["value"] == pytest.approx(0.52)
    assert {"model": "RM_test", "subset": "harmless-base", "accuracy": 0.52} in rm["chance_subsets"]
    assert rm["agreement"]["held_out_pairs"]["value"] == pytest.approx(0.753)
    assert rm["agreement"]["rankings4"]["top1"]["value"] == pytest.approx(0.525)
    # the variance decomposition of the primary cells
    v = s["variance"]["primary_cells"]
    assert set(v["cells"]) == {"n4_k60", "n2_k120", "n2_k60"} and v["pooled"]["df"] == 45
    assert v["cells"]["n4_k60"]["eval_se"] == pytest.approx(1.2, rel=1e-4) and v["cells"]["n4_k60"]["draws"] == 16
    # secondary contrasts carry each arm's prompt length
    sel = s["contrasts"]["selection/pro/d-greedy - random"]
    assert sel["prompt_tokens_median"] == {"d-greedy": 24.5, "random": 113.0}
    assert s["regression"]["pro"]["d"]["lines"]["2"]["n_points"] == 34       # 1 + 16 + 16 + 1 runs
    assert s["regression"]["pro"]["d"]["without_smallest"]["without_size"] == 12
    assert s["answers"] == {"file": "answers.jsonl", "rows": 4, "prompts": 2,
                            "policies": ["initial policy", "PRO n=4 k=60 seed 42"]}
    assert s["verdicts"][0].startswith("PRO, primary, equal budget 240 responses")
    assert all(not isinstance(v, float) or math.isfinite(v) for v in s["runs"].values())


def test_the_beta_line_compares_arms_on_the_same_seeds_and_counts_the_pairs(tmp_path):
    out = _study(tmp_path)
    b = _summary(out)["beta_ablation"]
    cell = b["cells"]["240/n4"]
    assert cell["seeds"] == [42, 43]
    assert cell["arms"]["0.05"]["runs"] == 2 and cell["arms"]["0"]["runs"] == 2         # not 16 vs 2
    assert set(cell["arms"]["0.05"]["values"]) == {"42", "43"}
    runs = analysis.load_results(out / "runs.csv")
    paper = runs[(runs.ranking_len == 4) & (runs.n_prompts == 60) & runs.seed.isin([42, 43])]
    assert cell["arms"]["0.05"]["mean"] == pytest.approx(paper.reward_global.mean())
    c = cell["contrasts"]["0.05 - 0"]
    assert c["test"] == "paired t by seed (2 pairs)" and c["wins"]["pairs"] == 2
    assert c["wins"]["a_above"] + c["wins"]["b_above"] == 2


def test_summary_without_a_declaration_or_notebook_files(tmp_path):
    out = tmp_path / "results" / "toy"
    out.mkdir(parents=True)
    runs = make_results(sizes=(60, 80, 120, 240)).assign(train_seconds=1.0, cell_key="k", extra="x")
    analysis.write_results(out / "runs.csv", runs)
    s = summary.build_summary("toy", out, budgets=[240], primary={"algo": "pro", "budget": None, "n_hi": 4, "n_lo": 2})
    assert s["initial_policy"] is None and s["reward_models"] is None and s["primary"] is None
    assert set(s["missing"]) == {"beta_ablation.csv", "augmentation.csv", "selection.csv", "initial_policy.json",
                                 summary.ANSWERS, summary.RM_REPORT, summary.RM_AGREEMENT, summary.LISTWISE,
                                 summary.COLD_RUN, summary.ENVIRONMENT}
    block = summary.render_readme_block(s)
    assert "none declared" in block and "not generated yet" in block
    assert "equal_budget/pro/240/n4-n2" in s["contrasts"]              # undeclared: every contrast is secondary


def test_a_listwise_block_is_read_labelled_and_counted(tmp_path):
    from test_listwise_study import table

    from divscale.study import listwise

    out = _study(tmp_path)
    table().to_csv(out / listwise.TABLE, index=False)
    s = _summary(out)
    n = len(s["listwise"]["contrasts"])
    assert s["listwise"]["role"] == "secondary" and n > 0 and s["secondary"]["by_notebook"]["09_listwise"] == n
    assert "listwise: pro - trl_dpo_all_pairs" in summary.render_readme_block(s)


def _numbers_given(block: str, s: dict) -> list[str]:
    """The numbers of a rendered block that summary.json (or the conventions) does not give."""
    from test_notebook_text import CONVENTIONS, _leaves, stale_numbers

    return stale_numbers(block, sorted(abs(v) for v in set(_leaves(s)) | CONVENTIONS))


@pytest.mark.parametrize("means,word,total,length", [
    (AGAINST, "scored lower than", "against the paper's sign", "against the paper's sign"),
    (AS_PAPER, "scored higher than", "the paper's sign", "the paper's sign")])
def test_the_reading_follows_the_numbers(tmp_path, means, word, total, length):
    s = _summary(_study(tmp_path, means))
    text = summary.reading(s)
    p = s["primary"]
    assert f"longer rankings of fewer prompts (n = 4, 60 prompts) {word} shorter rankings" in text
    assert f"{summary._est(p['total'])} points, {total} (the paper's Table 1, its 8 PRO settings" in text
    assert f"ranking-length part (n = 4 vs 2 on the same 60 prompts) is {summary._est(p['length'])}, {length}" in text
    assert "controlled world, as in Gao et al. (2022)" in text and "not what people prefer" in text
    assert "agrees with the human label on 58.0% [53.0, 63.0] of 400, not distinguishable from the 55.0%" in text
    block = summary.render_readme_block(s)
    for part in ("total", "prompts", "length"):                  # MDE beside every CI of the primary
        assert summary._est(p[part]) in block and ", MDE " in summary._est(p[part])
    assert _numbers_given(block, s) == []


def test_a_part_whose_ci_spans_0_is_not_given_a_direction(tmp_path):
    s = _summary(_study(tmp_path, {(4, 60): 40.0, (2, 120): 40.0, (2, 60): 40.0}))
    text = summary.reading(s)
    assert "could not be told apart from" in text
    assert "its CI spans 0" in text and "the paper's sign" not in text.split("What it cannot resolve")[0]
    assert "What it cannot resolve: the equal budget's CI spans 0" in text
    p = s["primary"]
    assert f"its MDE of {p['length']['mde']:.1f} points lies inside the range the paper's settings give it" in text
    assert "The larger part" not in text                         # no part stands out from 0: no "larger" one


def test_readme_block_renders_and_check_detects_drift(tmp_path, monkeypatch):
    out = _study(tmp_path)
    s = _summary(out)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:toy:start -->\nold typed numbers 1.23\n<!-- results:toy:end -->\ntail\n")
    assert not summary.readme_agrees(s, readme)
    assert summary.update_readme(s, readme) and summary.readme_agrees(s, readme)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("tail\n") and "old typed" not in text
    c = s["primary"]["total"]
    assert f"{c['estimate']:+.1f} [{c['ci_lo']:+.1f}, {c['ci_hi']:+.1f}], MDE {c['mde']:.1f}" in text
    assert "**Secondary / exploratory** (13 tests" in text
    assert not summary.update_readme(s, readme)                         # idempotent
    s["primary"]["total"]["estimate"] += 1.0                            # summary moved, README not
    assert not summary.readme_agrees(s, readme)
    with pytest.raises(Exception, match="markers"):
        bare = tmp_path / "bare.md"
        bare.write_text("no markers\n")
        summary.update_readme(s, bare)


def test_cli_summarize_check(tmp_path, monkeypatch, capsys):
    out = _study(tmp_path)
    monkeypatch.setattr(summary, "build_summary",
                        lambda recipe, results=None, budgets=None, primary=None, _b=summary.build_summary:
                        _b(recipe, results, [240], PRIMARY))
    assert main(["summarize", "--recipe", "toy", "--results", str(out)]) == 0
    assert (out / "summary.json").exists() and not list(out.glob("*.tmp*"))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:toy:start -->\n<!-- results:toy:end -->\n")
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    assert main(["summarize", "--recipe", "toy", "--results", str(out), "--check"]) == 1     # README stale
    assert main(["summarize", "--recipe", "toy", "--results", str(out), "--readme"]) == 0
    assert main(["summarize", "--recipe", "toy", "--results", str(out), "--check"]) == 0
    runs = analysis.load_results(out / "runs.csv")
    runs.loc[0, "reward_global"] += 5
    analysis.write_results(out / "runs.csv", runs)
    env = (out / summary.ENVIRONMENT).read_text()
    assert main(["summarize", "--recipe", "toy", "--results", str(out), "--check"]) == 1     # summary stale
    assert (out / summary.ENVIRONMENT).read_text() == env                                  # --check writes nothing


def test_the_environment_is_recorded_once_per_runs_table(tmp_path, monkeypatch):
    from divscale import provenance

    out = _study(tmp_path)
    calls = []
    monkeypatch.setattr(provenance, "environment", lambda: calls.append(1) or {"cpu": f"machine {len(calls)}"})
    summary.write_summary("toy", out, budgets=[240])
    summary.write_summary("toy", out, budgets=[240])                    # same runs.csv: the record stays
    assert json.loads((out / summary.ENVIRONMENT).read_text())["cpu"] == "machine 1" and len(calls) == 1
    runs = analysis.load_results(out / "runs.csv")
    runs.loc[0, "reward_global"] += 1
    analysis.write_results(out / "runs.csv", runs)
    summary.write_summary("toy", out, budgets=[240])                    # new runs: recorded again
    assert json.loads((out / summary.ENVIRONMENT).read_text())["cpu"] == "machine 2"
    s = json.loads((out / "summary.json").read_text())
    assert s["environment"]["cpu"] == "machine 2"
    assert any("machine 2" in line for line in summary.resolution_lines(s))


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


def test_summary_reports_design_variance_mdes_and_resolution_lines(tmp_path):
    out = _study(tmp_path)
    s = _summary(out)
    assert s["design"]["size_ratio"] == pytest.approx(20.0) and s["design"]["seeds_per_cell_min"] == 1
    assert s["design"]["seeds_per_cell_max"] == 16 and s["design"]["draws"] == 16
    assert s["design"]["verdict_cells"] == ["n2-k120", "n2-k60", "n4-k60"]
    assert s["fine_tuned_vs_initial"]["pro"]["n_a"] == len(analysis.load_results(out / "runs.csv"))
    lines = "\n".join(summary.resolution_lines(s))
    assert "Where the variance is (the primary cells)" in lines and "MDEs reached" in lines and "Design:" in lines
    v = s["variance"]["primary_cells"]["pooled"]
    assert f"Pooled replicate SD {v['sd']:.1f}" in lines and f"{100 * v['eval_share']:.0f}% of that variance" in lines
    assert "What the policies write" in lines
    # the sentence about short answers says what the measured r says, not a fixed claim
    assert summary.short_answer_link([0.68, 0.71]) == "follows"
    assert summary.short_answer_link([0.18, -0.07]) == "hardly follows"
    assert summary.short_answer_link([0.6, 0.1]) == "partly follows" == summary.short_answer_link([None, None])


def test_regression_counts_slopes_both_ways_and_without_the_smallest_size(tmp_path):
    runs = make_results(sizes=(12, 60, 120, 240), lengths=(2, 4), algos=("pro",), seeds=(1, 2, 3, 4), noise=0.05)
    runs.loc[runs.n_prompts == 12, "reward_global"] += 30             # the smallest size alone makes the slopes fall
    reg = summary.regression_block(runs)["pro"]["d"]
    assert reg["negative_slopes"] == 2 and reg["slope_ci_below_0"] == 2 and reg["slope_ci_above_0"] == 0
    assert reg["without_smallest"]["negative_slopes"] == 0 and reg["without_smallest"]["slope_ci_above_0"] == 2
    phrase = summary.slope_phrase(reg)
    assert phrase.startswith("2 of 2 per-n slopes of reward on d are negative, 2 with a CI below 0 and 0 with a CI")
    assert "without the 8 runs at 12 prompts: 0 negative, 0 with a CI below 0, 2 above" in phrase


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
    s = _summary(out)
    assert s["cold_run"]["wall_s"] == pytest.approx(3243.1) and summary.COLD_RUN in s["inputs"]
    assert summary.ENVIRONMENT in s["inputs"]                          # the cold run's machine is recorded with it
    assert any("54.1 min wall" in line for line in summary.resolution_lines(s))
    report.write_text(GNU_TIME.replace("Exit status: 0", "Exit status: 2"))
    with pytest.raises(Exception, match="status 2"):
        summary.write_cold_run("toy", report, "", out)
    report.write_text("real 1m\n")
    with pytest.raises(Exception, match="GNU"):
        summary.write_cold_run("toy", report, "", out)
